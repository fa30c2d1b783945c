//! `sluice run` with `[events] retention_hours`: the log's oldest pages are removed while it
//! serves, a client (and `sluice tail`) asking for them is told and gets the events left, and
//! `sluice stats` and `sluice events` say where the log now starts.

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_testkit as testkit;
use sluice_testkit::server::{LIMIT, indexed, next_json, read_until};

/// Starts `sluice run` on the data in `dir/data` with no network (no backfill, no firehose),
/// serving on a free port, with `extra` TOML sections; returns the child, its address and
/// its log file.
fn serve_offline(dir: &std::path::Path, extra: &str) -> (std::process::Child, String, std::path::PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let filter = dir.join("filter.toml");
    std::fs::write(&filter, "mode = \"full\"\n").unwrap();
    let config = dir.join("config.toml");
    let text = format!(
        "[storage]\npath = {:?}\n[filter]\npath = {:?}\n[network]\nrelay = \"http://127.0.0.1:9\"\n\
         plc = \"http://127.0.0.1:9/\"\nhandle_resolver = \"http://127.0.0.1:9\"\n\
         [backfill]\ndays = 0\n[firehose]\nenabled = false\n[server]\nlisten = \"127.0.0.1:{port}\"\n{extra}",
        dir.join("data"),
        filter
    );
    std::fs::write(&config, text).unwrap();
    let log = dir.join("sluice.log");
    (testkit::spawn_sluice(env!("CARGO_BIN_EXE_sluice"), &config, "run", &log), format!("127.0.0.1:{port}"), log)
}

/// `sluice run` with `[events] retention_hours` set: its retention pass removes the old pages
/// (all but the newest), and a client asking for them is told, then gets the events left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_the_retention_are_removed_and_an_old_cursor_is_told() {
    let dir = tempfile::tempdir().unwrap();
    // calabro's 4,347 events fill 9 pages; little's 278 are the newest page, which stays.
    let head = {
        let sluice = indexed(dir.path(), &["car/calabro.car", "car/little.car"], |_| {});
        sluice.store().next_event_id() - 1
    };
    let (mut child, addr, log) =
        serve_offline(dir.path(), "[events]\nretention_hours = 0.0003\nretention_check_secs = 1\n");
    let oldest = head - 277;
    // The retention pass has run once /metrics says where the log starts now.
    let deadline = Instant::now() + LIMIT;
    while testkit::metrics(&format!("http://{addr}")).await.and_then(|m| testkit::metric(&m, "sluice_event_log_oldest"))
        != Some(oldest as f64)
    {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the old pages were not removed in time; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/xrpc/dev.sluice.subscribeEvents?cursor=0"))
            .await
            .unwrap();
    let first = next_json(&mut socket).await.expect("a first message");
    assert_eq!(first["info"], "OutdatedCursor", "{first}");
    assert!(first["message"].as_str().unwrap().contains(&format!("goes on from {oldest}")), "{first}");
    let ids = read_until(&mut socket, head).await;
    let mut tailed = Vec::new();
    sluice::tail::tail(&format!("http://{addr}"), Some(0), Some(2), |text| {
        tailed.push(serde_json::from_str::<Value>(text).unwrap()["id"].as_u64());
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(tailed, vec![Some(oldest), Some(oldest + 1)], "sluice tail logs the notice and counts only events");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(ids, (oldest..=head).collect::<Vec<_>>(), "the newest page is left whole");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("removed events past the retention"), "{log}");
    let stats = testkit::sluice_command(env!("CARGO_BIN_EXE_sluice"))
        .args(["stats", "--json", "--data"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!((stats["oldest_event"].as_u64(), stats["events"].as_u64()), (Some(oldest), Some(head)), "{stats}");
    let events = testkit::sluice_command(env!("CARGO_BIN_EXE_sluice"))
        .args(["events", "--cursor", "1", "--limit", "1", "--data"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let first: Value = serde_json::from_slice(&events.stdout).unwrap();
    assert_eq!(first["id"].as_u64(), Some(oldest));
    assert!(String::from_utf8_lossy(&events.stderr).contains("past the retention"), "the CLI says so too");
    let store = sluice::store::Store::open(&dir.path().join("data")).unwrap();
    assert_eq!(store.next_event_id(), head + 1, "ids go on after the trim");
}
