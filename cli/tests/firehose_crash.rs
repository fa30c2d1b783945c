//! `kill -9` during live ingestion, several times, while the devnet keeps writing: after the
//! last restart every repo is indexed exactly as its PDS holds it, and the event log builds
//! that state with no event lost or written twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::store::{Action, Store, StoredEvent};
use sluice_devnet::{Devnet, DevnetOptions};
use sluice_testkit as testkit;

const REPOS: usize = 6;

/// `sluice run`'s config: quick retries and reconnects, the server on `port`.
fn write_config(dir: &std::path::Path, net: &Devnet, port: u16) -> std::path::PathBuf {
    let extra = format!(
        "[backfill]\nprogress_secs = 1\nretry_min_ms = 50\nretry_max_ms = 100\n\
         [firehose]\nmax_reconnect_secs = 1\n[server]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    testkit::devnet_config_file(dir, net, &extra)
}

/// The firehose seq up to which the run serving `base` has applied every frame (its
/// /metrics); `None` while it does not answer.
async fn cursor(base: &str) -> Option<f64> {
    testkit::metric(&testkit::metrics(base).await?, "sluice_firehose_cursor")
}

/// Whether the run serving `base` has every repo synced, nothing in flight, and every frame up
/// to `seq` applied (its /metrics).
async fn has_caught_up(base: &str, seq: i64) -> bool {
    let Some(metrics) = testkit::metrics(base).await else { return false };
    let m = |sample| testkit::metric(&metrics, sample);
    m("sluice_firehose_cursor") == Some(seq as f64)
        && m("sluice_repos{status=\"synced\"}") == Some(REPOS as f64)
        && m("sluice_backfill_in_flight") == Some(0.0)
        && m("sluice_firehose_in_flight") == Some(0.0)
}

/// Polls `cond` until it holds while `child` runs; panics with the log when it exits first or
/// the wait is too long.
async fn while_running<F: std::future::Future<Output = bool>>(
    child: &mut std::process::Child,
    log: &std::path::Path,
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let deadline = Instant::now() + testkit::WAIT_LIMIT;
    while !cond().await {
        assert!(
            child.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "{what}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn run(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    testkit::spawn_sluice(env!("CARGO_BIN_EXE_sluice"), config, "run", log)
}

/// Writes to the devnet until `stop`: creates, updates and deletes spread over `dids`.
fn keep_writing(net: Arc<Devnet>, dids: Vec<String>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let did = &dids[n % dids.len()];
            let rkey = format!("3l{:011}", n / 3);
            let record = json!({
                "$type": "app.bsky.feed.post",
                "text": format!("write {n}"),
                "createdAt": "2026-11-01T00:00:00.000Z"
            });
            match n % 5 {
                4 => {
                    let victim = net.records(did).into_keys().next();
                    if let Some((c, r)) = victim {
                        net.delete_record(did, &c, &r).unwrap();
                    }
                }
                _ => drop(net.put_record(did, "app.bsky.feed.post", &rkey, record).unwrap()),
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(4));
        }
        n
    })
}

/// Stops the child gracefully (SIGTERM) and waits.
fn terminate(child: &mut std::process::Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the run stops on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether every repo is synced and stored exactly as its PDS holds it.
fn in_step(store: &Store, net: &Devnet, dids: &[String]) -> bool {
    dids.iter().all(|did| testkit::in_step(store, net, did))
}

/// Replays the record events: gapless ids, creates of absent records, updates to a new CID and
/// deletes of present ones. Returns the state they build.
fn replay(store: &Store) -> BTreeMap<(String, String, String), String> {
    let mut state = BTreeMap::new();
    for (i, (id, event)) in store.log().from(0, usize::MAX).unwrap().into_iter().enumerate() {
        assert_eq!(id, i as u64 + 1, "event ids are gapless");
        let StoredEvent::Record(r) = event else { continue };
        let key = (r.did.to_string(), r.collection.to_string(), r.rkey.to_string());
        let cid = (!r.cid.is_empty()).then(|| cid::Cid::read_bytes(&r.cid[..]).unwrap().to_string());
        match r.action {
            Action::Create => assert!(state.insert(key, cid.unwrap()).is_none(), "event {id}: created twice: {r:?}"),
            Action::Update => {
                let old = state.insert(key, cid.clone().unwrap());
                assert!(
                    old.is_some() && old != cid,
                    "event {id}: an update of a missing record, or written twice: {r:?}"
                );
            }
            Action::Delete => assert!(state.remove(&key).is_some(), "event {id}: deleted twice: {r:?}"),
        }
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_live_ingestion_loses_and_duplicates_nothing() {
    let net = Arc::new(Devnet::start(DevnetOptions::default()).await.unwrap());
    let dids = net.populate(REPOS, 20, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let config = write_config(dir.path(), &net, port);
    let log = dir.path().join("sluice.log");
    let stop_writes = Arc::new(AtomicBool::new(false));
    let writer = keep_writing(net.clone(), dids.clone(), stop_writes.clone());

    kill_while_following(&net, &base, &config, &log).await;
    stop_writes.store(true, Ordering::Relaxed);
    let writes = tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
    assert!(writes > 100, "the devnet kept writing through the kills ({writes} writes)");

    // The last run catches up (its /metrics say so); it is stopped gracefully and checked, and
    // run again should a held commit still have been on its way (a few tries at most).
    let seq = net.firehose_seq();
    let mut caught_up = false;
    for _ in 0..3 {
        let mut child = run(&config, &log);
        while_running(&mut child, &log, "the run catches up", || has_caught_up(&base, seq)).await;
        tokio::task::block_in_place(|| terminate(&mut child));
        let store = Store::open(&dir.path().join("data")).unwrap();
        if in_step(&store, &net, &dids) {
            caught_up = true;
            assert_events_build_what_the_pdss_hold(&store, &net, &dids);
            let cursor: i64 = store.cursors().all().unwrap()["firehose"].0.parse().unwrap();
            assert_eq!(cursor, net.firehose_seq(), "the saved cursor covers the whole stream after a graceful stop");
            break;
        }
    }
    assert!(caught_up, "sluice caught up after the kills; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
}

/// Runs `sluice run` (serving `base`) four times, each killed with SIGKILL once it has applied
/// that many frames written after it started: while following the stream live, at a different
/// point each time.
async fn kill_while_following(net: &Devnet, base: &str, config: &std::path::Path, log: &std::path::Path) {
    for frames in [40, 15, 60, 25] {
        let target = (net.firehose_seq() + frames) as f64;
        let mut child = run(config, log);
        while_running(&mut child, log, &format!("the run applies {frames} new frames"), || async {
            cursor(base).await.is_some_and(|seq| seq >= target)
        })
        .await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
}

/// Replaying the whole event log gives, for every repo, exactly the records its PDS holds.
fn assert_events_build_what_the_pdss_hold(store: &Store, net: &Devnet, dids: &[String]) {
    let replayed = replay(store);
    for did in dids {
        let from_events: BTreeMap<(String, String), String> = replayed
            .iter()
            .filter(|((d, _, _), _)| d == did)
            .map(|((_, c, r), cid)| ((c.clone(), r.clone()), cid.clone()))
            .collect();
        assert_eq!(from_events, testkit::pds_cids(net, did), "{did}: the event log builds what the PDS holds");
    }
}
