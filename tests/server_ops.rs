//! Operations endpoints: `/`, `/health`, `/metrics` (their numbers follow what is indexed) and
//! unknown XRPC methods. (`sluice tail`, the stream's command-line client: cli/tests/tail.rs.)

use sluice::{Filter, Sluice};
use sluice_testkit as testkit;
use sluice_testkit::server::serving;

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_follow_what_is_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::builder()
        .data_dir(dir.path().join("data"))
        .filter(Filter::from_toml("mode = \"full\"\n", "t").unwrap())
        .open()
        .unwrap();
    let (base, _state) = serving(&sluice).await;
    let health: serde_json::Value =
        testkit::http().get(format!("{base}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!((health["status"].as_str(), health["events"].as_u64()), (Some("ok"), Some(0)));

    sluice.index_car(&testkit::read_fixture("car/little.car"), &Default::default()).unwrap();
    let response = testkit::http().get(format!("{base}/metrics")).send().await.unwrap();
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    assert_eq!(metric(&text, "sluice_events_total{kind=\"record\",action=\"create\"}"), 278.0);
    assert_eq!(metric(&text, "sluice_event_log_head"), 278.0);
    assert_eq!(metric(&text, "sluice_event_log_oldest"), 1.0);
    assert_eq!(metric(&text, "sluice_repos{status=\"synced\"}"), 1.0);
    assert_eq!(metric(&text, "sluice_stream_clients"), 0.0);
    assert!(metric(&text, "sluice_resident_memory_bytes") > 0.0);
    let cached = metric(&text, "sluice_block_cache_bytes");
    assert!((0.0..=(sluice::config::StorageConfig::default().cache_mb << 20) as f64).contains(&cached), "{cached}");
    for family in ["sluice_events_total", "sluice_repos", "sluice_stream_clients", "sluice_filter_saves_total"] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} has its TYPE line");
    }
    assert_eq!(metric(&text, "sluice_filter_save_refused"), 0.0);
    assert_eq!(health["filter"]["mode"], "full");
    assert!(health["filter"]["error"].is_null());
}

/// A refused save of the filter file shows in `/health` (with its reason) and `/metrics`
/// (for an alert) until a good save clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_filter_save_shows_in_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::builder()
        .data_dir(dir.path().join("data"))
        .filter(Filter::from_toml("mode = \"full\"\n", "t").unwrap())
        .open()
        .unwrap();
    let (base, _state) = serving(&sluice).await;
    let refusal = Filter::from_toml("mode = \"fulll\"\n", "filters/mine.toml").unwrap_err();
    sluice.pipeline().filter().record_save(Err(refusal));
    let health: serde_json::Value =
        testkit::http().get(format!("{base}/health")).send().await.unwrap().json().await.unwrap();
    assert!(health["filter"]["error"].as_str().unwrap().starts_with("filters/mine.toml:1: mode"), "{health}");
    let text = testkit::http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text, "sluice_filter_save_refused"), 1.0);
    assert_eq!(metric(&text, "sluice_filter_saves_total{result=\"refused\"}"), 1.0);

    sluice.pipeline().filter().record_save(Ok(()));
    let text = testkit::http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text, "sluice_filter_save_refused"), 0.0);
    assert_eq!(metric(&text, "sluice_filter_saves_total{result=\"accepted\"}"), 1.0);
    let health: serde_json::Value =
        testkit::http().get(format!("{base}/health")).send().await.unwrap().json().await.unwrap();
    assert!(health["filter"]["error"].is_null(), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_page_names_the_endpoints_and_unknown_methods_answer_as_xrpc() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::builder()
        .data_dir(dir.path().join("data"))
        .filter(Filter::from_toml("mode = \"full\"\n", "t").unwrap())
        .open()
        .unwrap();
    let (base, _state) = serving(&sluice).await;
    let root = testkit::http().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(root.status(), 200);
    let text = root.text().await.unwrap();
    for endpoint in ["/health", "/metrics", "/xrpc/dev.sluice.subscribeEvents", "/subscribe", "getRecord"] {
        assert!(text.contains(endpoint), "the root page names {endpoint}:\n{text}");
    }

    let unknown = testkit::http().get(format!("{base}/xrpc/com.example.nothing?x=1")).send().await.unwrap();
    assert_eq!(unknown.status(), 501);
    let body: serde_json::Value = unknown.json().await.unwrap();
    assert_eq!(body["error"], "MethodNotImplemented");
    assert!(body["message"].as_str().unwrap().contains("com.example.nothing"), "{body}");

    // Methods with routes of their own still answer as themselves.
    let stats = testkit::http().get(format!("{base}/xrpc/dev.sluice.getStats")).send().await.unwrap();
    assert_eq!(stats.status(), 200);
    let stream = testkit::http().get(format!("{base}/xrpc/dev.sluice.subscribeEvents")).send().await.unwrap();
    assert_ne!(stream.status(), 501, "the event stream is routed (a plain GET is refused as a websocket would be)");
}
