//! Backfill failures by kind, end to end against the devnet (127.0.0.1 only): a repo refused
//! for good (another DID's commit) is fetched once, not retried on the backoff, and is queued
//! again by `--did` and by a new commit of the repo on the firehose, which then syncs it; a stop
//! cuts a download that trickles and leaves its repo queued.
//!
//! The misbehaving PDS is a loopback server written here, named as the repo's PDS in the
//! resolver's cache: its getRepo answers with the devnet's export of the DID it is told to
//! serve (another account's, then the right one), or trickles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use serde_json::json;
use sluice::backfill::{Backfill, RunMode};
use sluice::identity::Identity;
use sluice::store::RepoStatus;
use sluice::{Config, Sluice};
use sluice_devnet::{Devnet, DevnetOptions};
use sluice_testkit as testkit;
use tokio_util::sync::CancellationToken;

/// Every wait here ends well within this.
const LIMIT: Duration = Duration::from_secs(30);

/// What the test's PDS answers to getRepo.
#[derive(Clone)]
enum Serving {
    /// The devnet's export of this other DID, whatever DID is asked.
    Decoy(String),
    /// The devnet's export of the DID asked.
    Asked,
    /// A body that trickles one byte a second.
    Trickle,
}

/// The test's PDS: what its getRepo serves, and how many getRepo calls it had.
#[derive(Clone)]
struct FakePds {
    devnet_pds: String,
    serves: Arc<Mutex<Serving>>,
    calls: Arc<AtomicU64>,
}

/// getRepo: see [`Serving`].
async fn get_repo(
    State(pds): State<FakePds>,
    Query(query): Query<HashMap<String, String>>,
) -> axum::response::Response {
    pds.calls.fetch_add(1, Ordering::SeqCst);
    let serves = pds.serves.lock().unwrap().clone();
    let did = match serves {
        Serving::Decoy(did) => did,
        Serving::Asked => query.get("did").cloned().unwrap_or_default(),
        Serving::Trickle => {
            let trickle = futures_util::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"\0")), ()))
            });
            return axum::body::Body::from_stream(trickle).into_response();
        }
    };
    let url = format!("{}/xrpc/com.atproto.sync.getRepo", pds.devnet_pds);
    let car = testkit::http().get(url).query(&[("did", did)]).send().await.unwrap().bytes().await.unwrap();
    ([(axum::http::header::CONTENT_TYPE, "application/vnd.ipld.car")], car).into_response()
}

/// Starts the test's PDS in front of `net`'s first PDS host; returns it and its URL.
async fn fake_pds(net: &Devnet, serves: Serving) -> (FakePds, String) {
    let pds = FakePds {
        devnet_pds: net.pds_urls()[0].trim_end_matches('/').to_string(),
        serves: Arc::new(Mutex::new(serves)),
        calls: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/xrpc/com.atproto.sync.getRepo", axum::routing::get(get_repo))
        .with_state(pds.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (pds, url)
}

struct Setup {
    net: Devnet,
    sluice: Sluice,
    config: Config,
    backfill: Arc<Backfill>,
    _dir: tempfile::TempDir,
}

fn open(net: Devnet) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.storage.path = dir.path().join("data");
    testkit::on_devnet(&mut c, &net);
    (c.backfill.retry_min_ms, c.backfill.retry_max_ms, c.backfill.max_retries) = (50, 100, 5);
    let sluice = testkit::sluice_full(&c);
    let backfill = Backfill::new(sluice.pipeline().clone(), &c);
    Setup { net, sluice, config: c, backfill, _dir: dir }
}

impl Setup {
    /// Has the resolver take `did`'s PDS to be `pds` (its key stays the real one).
    async fn point_at(&self, did: &str, pds: &str) {
        let real = self.backfill.resolver().resolve(did).await.unwrap();
        self.backfill.resolver().prime(Identity { pds: pds.to_string(), ..(*real).clone() });
    }

    fn status(&self, did: &str) -> Option<RepoStatus> {
        self.sluice.store().repos().state(did).unwrap().map(|st| st.status)
    }

    fn state(&self, did: &str) -> sluice::store::RepoState {
        self.sluice.store().repos().state(did).unwrap().expect("a state")
    }
}

/// A repo whose PDS serves another account's repo (the commit names another DID): refused
/// once, left in error with no retry while the backoff would have retried it many times over;
/// `--did` fetches it again; then, with the PDS fixed, a new commit of the repo on the
/// firehose queues it and it syncs, the commit applied on top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_repo_is_fetched_once_and_a_new_commit_queues_it_again() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let dids = net.populate(2, 4, 77).await;
    let (pds, url) = fake_pds(&net, Serving::Decoy(dids[1].clone())).await;
    let s = open(net);
    s.point_at(&dids[0], &url).await;
    let firehose = sluice::service::firehose_beside(&s.sluice, &s.config, &s.backfill).unwrap();
    let stop = CancellationToken::new();
    let (f, halt) = (firehose.clone(), stop.clone());
    let live = tokio::spawn(async move { f.run(halt).await.expect("live ingestion runs") });
    let b = s.backfill.clone();
    let backfilling = tokio::spawn(async move { b.run(RunMode::Forever, true).await.expect("backfill runs") });
    testkit::wait_until("the firehose to connect", || s.net.request_count("com.atproto.sync.subscribeRepos") >= 1)
        .await;
    testkit::wait_until("the good repo to sync", || s.status(&dids[1]) == Some(RepoStatus::Synced)).await;
    testkit::wait_until("the refusal", || s.status(&dids[0]) == Some(RepoStatus::Error)).await;
    // Ten times the longest backoff: a transient failure would have been fetched again.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let refused = s.state(&dids[0]);
    assert_eq!((refused.retries, refused.next_retry_ms), (1, None), "{refused:?}");
    assert!(refused.error.as_deref().unwrap().contains("commit DID"), "{refused:?}");
    assert_eq!(pds.calls.load(Ordering::SeqCst), 1, "a permanent refusal is fetched once");
    let summary = s.backfill.failure_summary();
    assert_eq!(summary.len(), 1);
    assert_eq!((summary[0].kind, summary[0].repos), (sluice::backfill::FailureKind::Permanent, 1));
    assert_eq!(summary[0].reason, "the commit is not the DID's");

    // An explicit requeue fetches it again, once.
    s.backfill.queue(&dids[..1]).unwrap();
    testkit::wait_until("the requeued fetch", || pds.calls.load(Ordering::SeqCst) == 2).await;
    testkit::wait_until("the second refusal", || s.status(&dids[0]) == Some(RepoStatus::Error)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((pds.calls.load(Ordering::SeqCst), s.state(&dids[0]).retries), (2, 2));

    // The PDS serves the right repo now; a new commit of it says it changed.
    *pds.serves.lock().unwrap() = Serving::Asked;
    let post = json!({"$type": "app.bsky.feed.post", "text": "changed", "createdAt": "2026-11-01T00:00:00.000Z"});
    s.net.put_record(&dids[0], "app.bsky.feed.post", "3lzzzzzzzzzz2", post).unwrap();
    testkit::wait_until("the changed repo to sync", || s.status(&dids[0]) == Some(RepoStatus::Synced)).await;
    assert_eq!(pds.calls.load(Ordering::SeqCst), 3, "the commit queued one fetch");
    testkit::wait_until("the stored records to be the PDS's", || testkit::in_step(s.sluice.store(), &s.net, &dids[0]))
        .await;
    assert!(s.backfill.failure_summary().is_empty(), "a synced repo no longer counts as failed");
    s.backfill.stop();
    stop.cancel();
    for task in [live, backfilling] {
        tokio::time::timeout(LIMIT, task).await.expect("stops in time").expect("no panic");
    }
}

/// A `#sync` and an `#identity` of a refused repo each say it changed: each queues its repo
/// again, and with the PDS fixed (for the `#identity`, the fresh document names the real PDS)
/// both sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_or_identity_frame_queues_a_refused_repo_again() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let dids = net.populate(3, 4, 81).await;
    let (pds, url) = fake_pds(&net, Serving::Decoy(dids[2].clone())).await;
    let s = open(net);
    s.point_at(&dids[0], &url).await;
    s.point_at(&dids[1], &url).await;
    let firehose = sluice::service::firehose_beside(&s.sluice, &s.config, &s.backfill).unwrap();
    let stop = CancellationToken::new();
    let (f, halt) = (firehose.clone(), stop.clone());
    let live = tokio::spawn(async move { f.run(halt).await.expect("live ingestion runs") });
    let b = s.backfill.clone();
    let backfilling = tokio::spawn(async move { b.run(RunMode::Forever, true).await.expect("backfill runs") });
    testkit::wait_until("the firehose to connect", || s.net.request_count("com.atproto.sync.subscribeRepos") >= 1)
        .await;
    testkit::wait_until("both refusals", || dids[..2].iter().all(|did| s.status(did) == Some(RepoStatus::Error))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pds.calls.load(Ordering::SeqCst), 2, "each refused repo fetched once");

    *pds.serves.lock().unwrap() = Serving::Asked;
    s.net.emit_sync(&dids[0]);
    testkit::wait_until("the #sync's repo to sync", || s.status(&dids[0]) == Some(RepoStatus::Synced)).await;
    assert_eq!(pds.calls.load(Ordering::SeqCst), 3, "the #sync queued one fetch");
    assert_eq!(s.state(&dids[1]).status, RepoStatus::Error, "the other repo did not change: still refused");

    s.net.emit_identity(&dids[1]);
    testkit::wait_until("the #identity's repo to sync", || s.status(&dids[1]) == Some(RepoStatus::Synced)).await;
    assert_eq!(pds.calls.load(Ordering::SeqCst), 3, "fetched from the PDS its fresh document names");
    for did in &dids[..2] {
        assert_eq!(testkit::stored_cids(s.sluice.store(), did), testkit::pds_cids(&s.net, did), "{did}");
    }
    s.backfill.stop();
    stop.cancel();
    for task in [live, backfilling] {
        tokio::time::timeout(LIMIT, task).await.expect("stops in time").expect("no panic");
    }
}

/// A stop while a getRepo trickles: the run ends within a second or so, the download is cut,
/// and the repo stays pending, due at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_cuts_a_trickling_download_and_the_repo_stays_queued() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let dids = net.populate(1, 4, 78).await;
    let (pds, url) = fake_pds(&net, Serving::Trickle).await;
    let s = open(net);
    s.point_at(&dids[0], &url).await;
    s.backfill.queue(&dids).unwrap();
    let b = s.backfill.clone();
    let run = tokio::spawn(async move { b.run(RunMode::UntilEmpty, false).await });
    testkit::wait_until("the download to start", || pds.calls.load(Ordering::SeqCst) == 1).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let stopping = Instant::now();
    s.backfill.stop();
    tokio::time::timeout(Duration::from_secs(5), run).await.expect("the run ends").expect("no panic").expect("ran");
    assert!(stopping.elapsed() < Duration::from_secs(2), "stopped after {:?}", stopping.elapsed());
    let state = s.state(&dids[0]);
    assert_eq!((state.status, state.queue_due(), state.retries), (RepoStatus::Pending, Some(0), 0), "{state:?}");
    assert_eq!(s.backfill.progress().in_flight.load(Ordering::Relaxed), 0);
    assert_eq!(s.backfill.progress().done.load(Ordering::Relaxed), 0, "a cut download is not a turn done");
}

/// The progress counts repos, not attempts: a repo that fails twice and then syncs on its
/// retry is done once; the failed attempts are counted apart, and nothing is left failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repo_synced_by_its_retry_counts_once_as_done() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let dids = net.populate(3, 2, 79).await;
    net.fail_next(&dids[0], 2);
    let s = open(net);
    tokio::time::timeout(LIMIT, s.backfill.run(RunMode::UntilEmpty, true)).await.expect("in time").expect("ran");
    let p = s.backfill.progress();
    assert_eq!(p.done.load(Ordering::Relaxed), 3, "three repos, each done once");
    assert_eq!((p.failed.load(Ordering::Relaxed), p.permanent.load(Ordering::Relaxed)), (2, 0));
    assert!(dids.iter().all(|did| s.state(did).status == RepoStatus::Synced));
    assert!(s.backfill.failure_summary().is_empty());
}

/// `UntilSettled` (what `sluice backfill` runs) ends as soon as the only repos queued wait for
/// a retry, leaving the retry queued; `UntilEmpty` would wait it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_run_ends_with_only_retries_left() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let dids = net.populate(2, 2, 80).await;
    net.fail_next(&dids[0], 1_000);
    let mut s = open(net);
    s.config.backfill.retry_min_ms = 60_000;
    s.backfill = Backfill::new(s.sluice.pipeline().clone(), &s.config);
    let started = Instant::now();
    tokio::time::timeout(LIMIT, s.backfill.run(RunMode::UntilSettled, true)).await.expect("in time").expect("ran");
    assert!(started.elapsed() < Duration::from_secs(20), "it did not wait for the retry");
    let failed = s.state(&dids[0]);
    assert_eq!((failed.status, failed.retries), (RepoStatus::Error, 1));
    assert!(failed.next_retry_ms.is_some(), "the retry stays queued for the next run");
    assert_eq!(s.state(&dids[1]).status, RepoStatus::Synced);
    let summary = s.backfill.failure_summary();
    assert_eq!(summary.len(), 1);
    assert_eq!((summary[0].reason.as_str(), summary[0].repos), ("getRepo answered HTTP 500", 1));
    assert_eq!(s.sluice.store().queue().next_due_ms(&Default::default()).unwrap(), failed.next_retry_ms);
}

/// A filter edit that widens the index is one of the changes a refused repo waits for: it is
/// queued again with the repos the edit itself needs walked, and with its PDS fixed it syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_widening_filter_edit_queues_a_refused_repo_again() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let dids = net.populate(2, 4, 82).await;
    let (pds, url) = fake_pds(&net, Serving::Decoy(dids[1].clone())).await;
    let s = open(net);
    s.sluice.pipeline().filter().store(testkit::filter("mode = \"full\"\ncollections = [\"app.bsky.feed.post\"]"));
    s.point_at(&dids[0], &url).await;
    let b = s.backfill.clone();
    let backfilling = tokio::spawn(async move { b.run(RunMode::Forever, true).await.expect("backfill runs") });
    testkit::wait_until("the refusal", || s.status(&dids[0]) == Some(RepoStatus::Error)).await;
    testkit::wait_until("the good repo to sync", || s.status(&dids[1]) == Some(RepoStatus::Synced)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pds.calls.load(Ordering::SeqCst), 1, "refused once, not retried");

    *pds.serves.lock().unwrap() = Serving::Asked;
    s.sluice.pipeline().filter().store(testkit::filter("mode = \"full\""));
    testkit::wait_until("the refused repo to sync", || s.status(&dids[0]) == Some(RepoStatus::Synced)).await;
    assert_eq!(pds.calls.load(Ordering::SeqCst), 2, "the edit queued one fetch");
    assert_eq!(testkit::stored_cids(s.sluice.store(), &dids[0]), testkit::pds_cids(&s.net, &dids[0]));
    s.backfill.stop();
    tokio::time::timeout(LIMIT, backfilling).await.expect("stops in time").expect("no panic");
}
