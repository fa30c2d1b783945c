//! The status page in a real browser (Debian's headless Chromium): `sluice run --devnet` is
//! started, and the page at `/`, once its script has run, shows the same repo and record counts
//! as `getStats`, with no script error; the page as served (what a browser without scripts
//! shows) says the same. Indexes added by a save show with their state and entries, as
//! `describeIndexes` says. A refused save of the filter file shows on the page with its reason. `sluice status` prints the
//! same figures in the terminal. A screenshot of the page is saved under the test's output
//! (`target/tmp/status-page.png`).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::units::count;
use sluice_testkit::{self as testkit, Chromium, free_port};

/// A run of a child ends within this.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// How long the page's scripts run (the page's own time) before its DOM is read.
const SCRIPT_MS: u64 = 3000;

/// The page's `data-k` value at `path`, as the DOM holds it.
fn shown<'a>(dom: &'a str, path: &str) -> &'a str {
    let marker = format!(r#"data-k="{path}""#);
    let at = dom.find(&marker).unwrap_or_else(|| panic!("no {path} on the page:\n{dom}"));
    let rest = &dom[at..];
    let text = &rest[rest.find('>').unwrap() + 1..];
    &text[..text.find('<').unwrap()]
}

/// Checks that `dom` shows `stats`' repos by status and records by collection, and the total.
fn assert_counts_match(dom: &str, stats: &Value, how: &str) {
    for (status, n) in stats["repos"].as_object().unwrap() {
        let row = format!("<td>{status}</td><td>{}</td>", count(n.as_u64().unwrap()));
        assert!(dom.contains(&row), "{how}: the page lacks {row}:\n{dom}");
    }
    let records = stats["records"].as_object().unwrap();
    assert!(!records.is_empty());
    for (collection, n) in records {
        let row = format!("<td>{collection}</td><td>{}</td>", count(n.as_u64().unwrap()));
        assert!(dom.contains(&row), "{how}: the page lacks {row}:\n{dom}");
    }
    let total: u64 = records.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(shown(dom, "records_total"), count(total), "{how}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_get_stats_says_and_a_refused_filter_in_a_browser() {
    let chromium = Chromium::find();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let (_sluice, log) = testkit::run_devnet(env!("CARGO_BIN_EXE_sluice"), dir.path(), port);
    let http = testkit::http();

    // The devnet indexed and quiet: the counts hold still while the browser reads them.
    let stats_url = format!("{server}/xrpc/dev.sluice.getStats");
    let stats = testkit::poll_json(&http, &stats_url, &log, "the backfill of the devnet", RUN_LIMIT, |s| {
        s["repos"]["synced"] == json!(20) && s["events"]["last"] == json!(1000)
    })
    .await;

    let status_url = format!("{server}/status.json");
    testkit::poll_json(&http, &status_url, &log, "the firehose to connect", RUN_LIMIT, |s| {
        s["live"]["connected"] == json!(true)
    })
    .await;

    let metrics = testkit::metrics(&server).await.unwrap();
    assert_eq!(testkit::metric(&metrics, "sluice_firehose_connected"), Some(1.0), "/metrics says so too");

    let page = format!("{server}/");
    let rendered = tokio::task::spawn_blocking({
        let (chromium, page) = (Chromium::find(), page.clone());
        move || chromium.render(&page, SCRIPT_MS)
    })
    .await
    .unwrap();
    let dom = &rendered.dom;
    assert!(dom.contains("data-refreshed="), "the script ran and filled the page from /status.json:\n{dom}");
    assert_eq!(rendered.script_errors(), Vec::<&str>::new(), "no script errors; the browser said:\n{}", rendered.log);
    assert_counts_match(dom, &stats, "after the script ran");
    assert_eq!((shown(dom, "backfill.done"), shown(dom, "backfill.total")), ("20", "20"));
    assert_eq!(shown(dom, "live.connected"), "yes", "live ingestion follows the devnet's relay");
    assert!(dom.contains(r#"data-show="filter.refusal" hidden"#), "no refusal yet, and none shown:\n{dom}");

    // Without scripts the page is the HTML as served, which holds the same figures.
    let served = http.get(&page).send().await.unwrap().text().await.unwrap();
    assert!(!served.contains("data-refreshed="));
    assert_counts_match(&served, &stats, "as served, before any script runs");

    // Indexes declared by a save: once built, the page lists each with its state and entries,
    // as `describeIndexes` gives them.
    let filter = dir.path().join("filter.toml");
    let indexes = std::fs::read_to_string(testkit::root().join("filters/indexes.toml")).unwrap();
    std::fs::write(&filter, format!("mode = \"full\"\n{indexes}")).unwrap();
    let describe_url = format!("{server}/xrpc/dev.sluice.describeIndexes");
    let described = testkit::poll_json(&http, &describe_url, &log, "the saved indexes to be built", RUN_LIMIT, |d| {
        d["indexes"].as_array().is_some_and(|ix| ix.len() == 3 && ix.iter().all(|i| i["state"] == json!("ready")))
    })
    .await;
    let rendered = tokio::task::spawn_blocking({
        let (chromium, page) = (Chromium::find(), page.clone());
        move || chromium.render(&page, SCRIPT_MS)
    })
    .await
    .unwrap();
    for ix in described["indexes"].as_array().unwrap() {
        let row = format!(
            "<td>{}</td><td>{}</td><td>ready</td><td>{}</td><td>{}</td>",
            ix["name"].as_str().unwrap(),
            ix["collection"].as_str().unwrap(),
            count(ix["entries"].as_u64().unwrap()),
            count(ix["skipped"].as_u64().unwrap())
        );
        assert!(rendered.dom.contains(&row), "the page lacks {row}:\n{}", rendered.dom);
    }
    let likes = &described["indexes"].as_array().unwrap().iter().find(|i| i["name"] == json!("likes_by_subject"));
    assert!(likes.is_some_and(|l| l["entries"].as_u64() > Some(0)), "the devnet's likes are indexed: {described}");

    // A bad save of the filter: refused with its line, the old filter in force, on the page.
    std::fs::write(&filter, "mode = \"full\"\ncollections = [\"not an nsid\"]\n").unwrap();
    let health_url = format!("{server}/health");
    let health = testkit::poll_json(&http, &health_url, &log, "the bad save to be refused", RUN_LIMIT, |h| {
        h["filter"]["error"].is_string()
    })
    .await;
    let reason = health["filter"]["error"].as_str().unwrap().to_string();
    assert!(reason.contains("filter.toml:2"), "{reason}");
    let rendered = tokio::task::spawn_blocking(move || chromium.render(&page, SCRIPT_MS)).await.unwrap();
    let refusal = rendered
        .dom
        .split(r#"class="refusal""#)
        .nth(1)
        .unwrap_or_else(|| panic!("no refusal part on the page:\n{}", rendered.dom));
    let refusal = &refusal[..refusal.find("</div>").unwrap()];
    assert!(refusal.starts_with(r#" data-show="filter.refusal">"#), "the refusal is shown: {refusal}");
    let escaped = reason.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    assert!(refusal.contains(&escaped), "the page gives the reason {reason:?}: {refusal}");
    assert_eq!(rendered.script_errors(), Vec::<&str>::new(), "{}", rendered.log);

    // `sluice status` says the same in the terminal.
    let status =
        testkit::sluice_command(env!("CARGO_BIN_EXE_sluice")).args(["status", "--server", &server]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let likes_line = "index likes_by_subject (app.bsky.feed.like): ready, ";
    for want in
        ["repos: 20 synced; records: 1,000", "backfill: 20 of 20 repos done", "live: connected", likes_line, &reason]
    {
        assert!(text.contains(want), "{want} missing from sluice status:\n{text}");
    }
    let unreachable = testkit::sluice_command(env!("CARGO_BIN_EXE_sluice"))
        .args(["status", "--server", &format!("http://127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("is sluice running there?"));

    // A picture of the page, for the README and whoever reads the test's output.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("{server}/");
    tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || Chromium::find().screenshot(&url, &shot, (1200, 1500), SCRIPT_MS)
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a picture of the page: {} bytes", png.len());
    eprintln!("screenshot: {}", shot.display());
}
