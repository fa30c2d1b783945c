//! `kill -9` in the middle of a backfill, several times: after the last restart every repo is
//! indexed exactly as its PDS holds it, no event is missing or emitted twice, ids are gapless,
//! and repos committed before a kill are not fetched again.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sluice::devnet::{Devnet, DevnetOptions};
use sluice::store::{Action, RepoStatus, Store, StoredEvent};

const REPOS: usize = 80;
const CONCURRENCY: u64 = 4;

/// The backfill's config: small batches with pauses, so kills land between them.
fn write_config(dir: &std::path::Path, net: &Devnet) -> std::path::PathBuf {
    let backfill = format!("[backfill]\nbatch_size = 7\nbatch_delay_ms = 8\nmax_concurrent = {CONCURRENCY}\nprogress_secs = 1\nretry_min_ms = 50\nretry_max_ms = 100\n");
    common::devnet_config_file(dir, net, &backfill)
}

fn backfill(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    common::spawn_sluice(config, "backfill", log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_backfill_loses_and_duplicates_nothing() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = net.populate(REPOS, 40, 11).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &net);
    let log = dir.path().join("sluice.log");

    let kills = kill_mid_backfill(&net, &config, &log).await;
    {
        let store = Store::open(&dir.path().join("data")).unwrap();
        let states = store.repo_states().unwrap();
        let synced = states.iter().filter(|(_, s)| s.status == RepoStatus::Synced).count();
        let partial = states.iter().filter(|(did, s)| s.status != RepoStatus::Synced && !store.repo_records(did).unwrap().is_empty()).count();
        eprintln!("after {kills} kills: {synced} of {REPOS} repos synced, {partial} cut off between batches");
        assert!(synced < REPOS, "the kills left work for the last run");
    }

    run_to_the_end(&config, &log).await;
    let store = Store::open(&dir.path().join("data")).unwrap();
    let total = assert_every_repo_as_held(&net, &store, &dids);
    assert_one_create_event_per_record(&store, total);
    let fetched = net.request_count("com.atproto.sync.getRepo");
    assert!(fetched <= REPOS as u64 + kills * CONCURRENCY, "{fetched} fetches: only repos in flight at a kill are fetched again");
    assert_eq!(store.cursors().unwrap()["crawler"].0, "done");
}

/// Starts the backfill and kills it with SIGKILL several times, each once a few more repos
/// have been fetched, so every run is cut off mid-way (often between the batches of a repo: a
/// walk here is 6 batches 8 ms apart). Returns the number of kills.
async fn kill_mid_backfill(net: &Devnet, config: &std::path::Path, log: &std::path::Path) -> u64 {
    let mut kills = 0;
    for (fetches, jitter_ms) in [(8u64, 0u64), (12, 13), (6, 29), (10, 7)] {
        let target = net.request_count("com.atproto.sync.getRepo") + fetches;
        let mut child = backfill(config, log);
        let deadline = Instant::now() + Duration::from_secs(60);
        while net.request_count("com.atproto.sync.getRepo") < target {
            assert!(child.try_wait().unwrap().is_none() && Instant::now() < deadline, "the run is still going when it is killed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(jitter_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    kills
}

/// Runs the backfill until it exits, which must be with 0 within two minutes.
async fn run_to_the_end(config: &std::path::Path, log: &std::path::Path) {
    let mut child = backfill(config, log);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the last run finishes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "the last run exits 0; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

/// Every repo is synced with exactly the records its PDS holds; returns how many in all.
fn assert_every_repo_as_held(net: &Devnet, store: &Store, dids: &[String]) -> usize {
    let mut total = 0;
    for did in dids {
        let state = store.repo_state(did).unwrap().unwrap();
        assert_eq!(state.status, RepoStatus::Synced, "{did}");
        let held: BTreeMap<(String, String), String> = net.records(did).into_iter().map(|(key, (cid, _))| (key, cid)).collect();
        let stored = common::stored_cids(store, did);
        assert_eq!(stored, held, "{did}: nothing lost");
        total += held.len();
    }
    total
}

/// The log holds one create event per record, `total` in all, with gapless ids.
fn assert_one_create_event_per_record(store: &Store, total: usize) {
    let events = store.events_from(0, usize::MAX).unwrap();
    let ids: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=total as u64).collect::<Vec<_>>(), "one event per record, ids gapless");
    let mut seen = BTreeSet::new();
    for (_, e) in &events {
        let StoredEvent::Record(r) = e else { panic!("only record events") };
        assert_eq!(r.action, Action::Create);
        assert!(seen.insert((r.did.clone(), r.collection.clone(), r.rkey.clone())), "emitted twice: {r:?}");
    }
}
