//! `sluice backfill --recrawl`: once a backfill has listed the relay to its end (the `crawler`
//! cursor is `done`), a plain run lists nothing again and misses the accounts created since;
//! `--recrawl` lists the relay again from the start, picks them up, and fetches no repo it
//! already holds.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use sluice::store::{RepoStatus, Store};
use sluice_devnet::{AccountSpec, Devnet, DevnetOptions};
use sluice_testkit as testkit;

/// A run of the binary ends within this.
const RUN_LIMIT: Duration = Duration::from_secs(120);

const POST: &str = "app.bsky.feed.post";

/// `sluice --config CONFIG backfill ARGS` to its end: its exit status and what it printed on
/// stdout (its log goes to `dir/sluice.log`). Killed, and the test failed, past [`RUN_LIMIT`].
async fn backfill(dir: &Path, config: &Path, args: &[&str]) -> (ExitStatus, String) {
    let stdout = dir.join("stdout");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("sluice.log")).unwrap();
    let mut child = testkit::sluice_command(env!("CARGO_BIN_EXE_sluice"))
        .args(["--config", config.to_str().unwrap(), "backfill"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("backfill {args:?} did not end within {RUN_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (status, std::fs::read_to_string(stdout).unwrap())
}

/// A new account with `n` posts.
fn account(net: &Devnet, seed: u64, n: usize) -> String {
    let did = net.create_account(AccountSpec { seed, ..Default::default() });
    for i in 0..n {
        let post = serde_json::json!({"$type": POST, "text": "hi", "createdAt": "2026-11-01T00:00:00.000Z"});
        net.put_record(&did, POST, &format!("3l{seed:05}{i:06}"), post).unwrap();
    }
    did
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recrawl_lists_the_relay_again_and_picks_up_accounts_created_since() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let first: Vec<String> = (0..3).map(|i| account(&net, 100 + i, 2)).collect();
    let dir = tempfile::tempdir().unwrap();
    let config = testkit::devnet_config_file(dir.path(), &net, "[backfill]\nretry_min_ms = 50\nretry_max_ms = 100\n");
    let data = dir.path().join("data");
    let count = |method: &str| net.request_count(method);
    let lists = || count("com.atproto.sync.listRepos");

    let (status, out) = backfill(dir.path(), &config, &[]).await;
    assert!(status.success(), "the first backfill: {status}; {out}");
    assert!(out.contains("repos: 3 synced; events: 6"), "{out}");
    let listed_once = lists();
    assert!(listed_once >= 1, "the first run listed the relay");
    {
        let store = Store::open(&data).unwrap();
        assert_eq!(store.cursors().get("crawler").unwrap().as_deref(), Some("done"), "the crawl finished");
    }

    // Accounts created after the crawl finished.
    let later: Vec<String> = (0..2).map(|i| account(&net, 200 + i, 3)).collect();

    let fetches = count("com.atproto.sync.getRepo");
    let (status, out) = backfill(dir.path(), &config, &[]).await;
    assert!(status.success(), "a plain second backfill: {status}; {out}");
    assert!(out.contains("repos: 3 synced; events: 6"), "a finished crawl is not done again: {out}");
    assert_eq!(lists(), listed_once, "no listing without --recrawl");
    assert_eq!(count("com.atproto.sync.getRepo"), fetches, "nothing fetched");
    {
        let store = Store::open(&data).unwrap();
        for did in &later {
            assert_eq!(store.repos().state(did).unwrap(), None, "{did} is unknown without a recrawl");
        }
    }

    let (status, out) = backfill(dir.path(), &config, &["--recrawl"]).await;
    assert!(status.success(), "the recrawl: {status}; {out}");
    assert!(out.contains("repos: 5 synced; events: 12"), "{out}");
    assert!(lists() > listed_once, "--recrawl lists the relay again");
    assert_eq!(count("com.atproto.sync.getRepo"), fetches + later.len() as u64, "only the new repos are fetched");
    let store = Store::open(&data).unwrap();
    assert_eq!(store.cursors().get("crawler").unwrap().as_deref(), Some("done"), "the recrawl finished");
    for did in first.iter().chain(&later) {
        let state = store.repos().state(did).unwrap().unwrap_or_else(|| panic!("{did} is known"));
        assert_eq!(state.status, RepoStatus::Synced, "{did}");
        let on_pds: Vec<(String, String)> = net.records(did).into_iter().map(|((_, r), (cid, _))| (r, cid)).collect();
        let stored: Vec<(String, String)> =
            testkit::stored_cids(&store, did).into_iter().map(|((_, r), cid)| (r, cid)).collect();
        assert_eq!(stored, on_pds, "{did}: the records its PDS holds");
    }
    drop(store);
    net.shutdown().await;
}
