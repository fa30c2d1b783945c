//! `sluice run --devnet`: a working indexer with no network. The binary starts a devnet in its
//! own process, backfills it, serves `/health`, XRPC and the event stream on the configured
//! address, follows the devnet's firehose live (a record written through the walkthrough's
//! PDS becomes an event), and on SIGTERM stops within bounded time with exit 0 and a store
//! that holds what it served.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::store::{RepoStatus, Store};
use sluice_testkit::{self as testkit, exit_within, free_port, get_json};

/// A run of a child ends within this.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What `run --devnet` creates: 20 accounts of 50 records each.
const RECORDS: u64 = 20 * 50;

/// Polls `GET url` until its JSON answer satisfies `done` (see [`testkit::poll_json`]).
async fn poll_json(http: &reqwest::Client, url: &str, log: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    testkit::poll_json(http, url, log, what, RUN_LIMIT, done).await
}

/// The text after `marker` on the first line of `printed` that has it, up to `end`.
fn after<'a>(printed: &'a str, marker: &str, end: char) -> &'a str {
    let line = printed.lines().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("no {marker:?} in {printed}"));
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    rest.split(end).next().unwrap()
}

/// `sluice tail --server SERVER --cursor 0 --limit N`, to its end: the events it printed.
async fn tail(server: &str, limit: u64, dir: &Path) -> Vec<Value> {
    let out = dir.join("tail.out");
    let mut child = testkit::sluice_command(env!("CARGO_BIN_EXE_sluice"))
        .args(["tail", "--server", server, "--cursor", "0", "--limit", &limit.to_string()])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.join("tail.err")).unwrap())
        .spawn()
        .unwrap();
    let status = exit_within(&mut child, RUN_LIMIT).await.expect("sluice tail ends at its limit");
    assert!(status.success(), "sluice tail: {status}; {}", std::fs::read_to_string(dir.join("tail.err")).unwrap());
    std::fs::read_to_string(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_devnet_indexes_serves_follows_live_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let (data, filter) = (dir.path().join("data"), dir.path().join("filter.toml"));
    let printed = dir.path().join("stdout");
    let (mut sluice, log) = testkit::run_devnet(env!("CARGO_BIN_EXE_sluice"), dir.path(), port);
    let http = testkit::http();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // Up and healthy, with the backfill and live ingestion running.
    let health_url = format!("{server}/health");
    let health = poll_json(&http, &health_url, &log, "/health to answer", |_| true).await;
    assert_eq!(health["status"], json!("ok"), "{health}");
    assert_eq!(health["backfill"], json!(true), "{health}");
    assert!(health["firehose"].is_object(), "live ingestion runs: {health}");
    assert_eq!(health["filter"]["mode"], json!("full"), "the filter it wrote: {health}");
    assert!(filter.exists(), "the default filter was written where the config says");

    // The whole devnet indexed: every repo synced, every record an event.
    let stats_url = format!("{server}/xrpc/dev.sluice.getStats");
    let stats = poll_json(&http, &stats_url, &log, "the backfill of the devnet", |stats| {
        stats["repos"]["synced"] == json!(20) && stats["events"]["last"] == json!(RECORDS)
    })
    .await;
    assert_eq!(stats["repos"]["pending"], json!(0), "{stats}");

    // The event stream serves them, in order, to `sluice tail`.
    let events = tail(&server, RECORDS, dir.path()).await;
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=RECORDS).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e["type"] == json!("record") && e["record"]["live"] == json!(false)));
    let dids: std::collections::BTreeSet<&str> = events.iter().map(|e| e["record"]["did"].as_str().unwrap()).collect();
    assert_eq!(dids.len(), 20, "every account's records");

    // The walkthrough names this server, an account and its PDS; a record written there as
    // it says comes through live.
    let text = std::fs::read_to_string(&printed).unwrap();
    assert!(text.contains(&format!("sluice tail --server {server} --cursor 0")), "{text}");
    let did = after(&text, "listRecords?repo=", '&').to_string();
    let pds = after(&text, "curl -X POST ", ' ').to_string();
    assert!(dids.contains(did.as_str()), "the walkthrough's account {did} is indexed");
    let record = json!({"repo": did, "collection": "app.bsky.feed.post",
        "record": {"$type": "app.bsky.feed.post", "text": "live", "createdAt": "2026-11-01T00:00:00.000Z"}});
    let created = http.post(&pds).json(&record).send().await.unwrap();
    assert!(created.status().is_success(), "{pds}: {}", created.text().await.unwrap());
    let created: Value = created.json().await.unwrap();
    poll_json(&http, &stats_url, &log, "the live write to become an event", |s| {
        s["events"]["last"] == json!(RECORDS + 1)
    })
    .await;
    let live = tail(&server, RECORDS + 1, dir.path()).await.pop().unwrap();
    assert_eq!(
        (&live["record"]["live"], &live["record"]["did"], &live["record"]["action"]),
        (&json!(true), &json!(did), &json!("create")),
        "{live}"
    );
    assert_eq!(live["record"]["cid"], created["cid"], "{live}");

    // SIGTERM: a clean stop, in bounded time, with where the repos stand.
    let stopping = Instant::now();
    assert_eq!(unsafe { libc::kill(sluice.0.id() as i32, libc::SIGTERM) }, 0);
    let status = exit_within(&mut sluice.0, RUN_LIMIT).await;
    let status = status.unwrap_or_else(|| panic!("still running {RUN_LIMIT:?} after SIGTERM; log:\n{}", log_text()));
    assert!(status.success(), "exit {status} after SIGTERM; log:\n{}", log_text());
    eprintln!("stopped {:?} after SIGTERM", stopping.elapsed());
    let text = std::fs::read_to_string(&printed).unwrap();
    assert_eq!(text.lines().last(), Some(format!("repos: 20 synced; events: {}", RECORDS + 1).as_str()), "{text}");
    assert!(get_json(&http, &health_url).await.is_none(), "the server stopped with it");

    // What it served is what it kept.
    let store = Store::open(&data).unwrap();
    assert_eq!(store.repo_count(RepoStatus::Synced), 20);
    assert_eq!(store.next_event_id(), RECORDS + 2);
}
