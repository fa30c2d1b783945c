//! `kill -9` in the middle of a backfill, several times: after the last restart every repo is
//! indexed exactly as its PDS holds it, no event is missing or emitted twice, ids are gapless,
//! and repos committed before a kill are not fetched again. Once with repos walked in many
//! batches, once with thousands of small repos (the network's shape), where kills land while
//! the queue is being taken fast.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sluice::store::{Action, RepoStatus, Store, StoredEvent};
use sluice_devnet::{Devnet, DevnetOptions};
use sluice_testkit as testkit;

const REPOS: usize = 80;
const CONCURRENCY: u64 = 4;

/// The backfill's config: small batches with pauses, so kills land between them.
fn write_config(dir: &std::path::Path, net: &Devnet) -> std::path::PathBuf {
    let backfill = format!(
        "[backfill]\nbatch_size = 7\nbatch_delay_ms = 8\nmax_concurrent = {CONCURRENCY}\nprogress_secs = 1\n\
         retry_min_ms = 50\nretry_max_ms = 100\n"
    );
    testkit::devnet_config_file(dir, net, &backfill)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_backfill_of_thousands_of_small_repos_loses_and_duplicates_nothing() {
    const SMALL_REPOS: usize = 3_000;
    const IN_FLIGHT: u64 = 16;
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = net.populate(SMALL_REPOS, 3, 12).await;
    let dir = tempfile::tempdir().unwrap();
    let backfill =
        format!("[backfill]\nmax_concurrent = {IN_FLIGHT}\nprogress_secs = 1\nretry_min_ms = 50\nretry_max_ms = 100\n");
    let config = testkit::devnet_config_file(dir.path(), &net, &backfill);
    let log = dir.path().join("sluice.log");

    let kills = kill_after_fetches(&net, &config, &log, &[(400, 0), (700, 3), (350, 11), (900, 1)]).await;
    let synced = {
        let store = Store::open(&dir.path().join("data")).unwrap();
        store.repo_count(RepoStatus::Synced) as usize
    };
    eprintln!("after {kills} kills: {synced} of {SMALL_REPOS} repos synced");
    assert!(synced < SMALL_REPOS, "the kills left work for the last run");

    let store = finish_and_check(&net, dir.path(), &config, &log, &dids, kills * IN_FLIGHT).await;
    assert_eq!(store.repo_count(RepoStatus::Synced) as usize, SMALL_REPOS, "the counters agree with the states");
}

fn backfill(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    testkit::spawn_sluice(env!("CARGO_BIN_EXE_sluice"), config, "backfill", log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_backfill_loses_and_duplicates_nothing() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = net.populate(REPOS, 40, 11).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &net);
    let log = dir.path().join("sluice.log");

    let kills = kill_after_fetches(&net, &config, &log, &[(8, 0), (12, 13), (6, 29), (10, 7)]).await;
    {
        let store = Store::open(&dir.path().join("data")).unwrap();
        let states = store.repos().all().unwrap();
        let synced = states.iter().filter(|(_, s)| s.status == RepoStatus::Synced).count();
        let partial = states
            .iter()
            .filter(|(did, s)| s.status != RepoStatus::Synced && !store.records().of_repo(did).unwrap().is_empty())
            .count();
        eprintln!("after {kills} kills: {synced} of {REPOS} repos synced, {partial} cut off between batches");
        assert!(synced < REPOS, "the kills left work for the last run");
    }

    let store = finish_and_check(&net, dir.path(), &config, &log, &dids, kills * CONCURRENCY).await;
    assert_eq!(store.cursors().all().unwrap()["crawler"].0, "done");
}

/// Starts the backfill and kills it with SIGKILL several times, each once `fetches` more repos
/// have been fetched and `jitter_ms` passed, so every run is cut off mid-way (with repos of
/// many batches, often between two of them). Returns the number of kills.
async fn kill_after_fetches(
    net: &Devnet,
    config: &std::path::Path,
    log: &std::path::Path,
    kills_at: &[(u64, u64)],
) -> u64 {
    let mut kills = 0;
    for &(fetches, jitter_ms) in kills_at {
        let target = net.request_count("com.atproto.sync.getRepo") + fetches;
        let mut child = backfill(config, log);
        let deadline = Instant::now() + Duration::from_secs(60);
        while net.request_count("com.atproto.sync.getRepo") < target {
            assert!(
                child.try_wait().unwrap().is_none() && Instant::now() < deadline,
                "the run is still going when it is killed"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(jitter_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    kills
}

/// Runs the last backfill to its end, then checks the store in `dir`: every repo of `dids` as
/// its PDS holds it, one create event per record with gapless ids, and no repo fetched again
/// but those in flight at a kill (`refetched_at_most`). Returns the store for further checks.
async fn finish_and_check(
    net: &Devnet,
    dir: &std::path::Path,
    config: &std::path::Path,
    log: &std::path::Path,
    dids: &[String],
    refetched_at_most: u64,
) -> Store {
    run_to_the_end(config, log).await;
    let store = Store::open(&dir.join("data")).unwrap();
    let total = assert_every_repo_as_held(net, &store, dids);
    assert_one_create_event_per_record(&store, total);
    let fetched = net.request_count("com.atproto.sync.getRepo");
    assert!(
        fetched <= dids.len() as u64 + refetched_at_most,
        "{fetched} fetches: only repos in flight at a kill are fetched again"
    );
    store
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
        let state = store.repos().state(did).unwrap().unwrap();
        assert_eq!(state.status, RepoStatus::Synced, "{did}");
        let held: BTreeMap<(String, String), String> =
            net.records(did).into_iter().map(|(key, (cid, _))| (key, cid)).collect();
        let stored = testkit::stored_cids(store, did);
        assert_eq!(stored, held, "{did}: nothing lost");
        total += held.len();
    }
    total
}

/// The log holds one create event per record, `total` in all, with gapless ids.
fn assert_one_create_event_per_record(store: &Store, total: usize) {
    let events = store.log().from(0, usize::MAX).unwrap();
    let ids: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=total as u64).collect::<Vec<_>>(), "one event per record, ids gapless");
    let mut seen = BTreeSet::new();
    for (_, e) in &events {
        let StoredEvent::Record(r) = e else { panic!("only record events") };
        assert_eq!(r.action, Action::Create);
        assert!(seen.insert((r.did.clone(), r.collection.clone(), r.rkey.clone())), "emitted twice: {r:?}");
    }
}
