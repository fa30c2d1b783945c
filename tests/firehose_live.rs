//! Live ingestion end to end against the devnet's firehose (127.0.0.1 only): writes become live
//! events within a second, writes made during a backfill arrive exactly once and in order,
//! forged, stale and chain-breaking commits are refused or resynced, account and identity
//! frames follow their rules, unknown repos are discovered, a dropped connection resumes from
//! its cursor, and the look-back before a first frame finds its place in log-many probes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::backfill::{Backfill, RunMode};
use sluice::firehose::{Firehose, gap};
use sluice::store::{Action, RepoStatus, StoredEvent};
use sluice::{Config, Filter, Sluice};
use sluice_devnet::{AccountSpec, AccountStatus, Devnet, DevnetOptions, Tamper};
use sluice_testkit as testkit;
use tokio_util::sync::CancellationToken;

/// Every wait in these tests ends well within this.
const LIMIT: Duration = Duration::from_secs(30);

/// sluice running backfill and live ingestion against a devnet.
struct Running {
    net: Devnet,
    sluice: Sluice,
    backfill: Arc<Backfill>,
    firehose: Arc<Firehose>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

const FULL: &str = "mode = \"full\"\n";

async fn start(net: Devnet, filter: &str, tweak: impl FnOnce(&mut Config)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.storage.path = dir.path().join("data");
    testkit::on_devnet(&mut c, &net);
    (c.backfill.retry_min_ms, c.backfill.retry_max_ms, c.backfill.progress_secs) = (50, 200, 1);
    tweak(&mut c);
    let sluice =
        Sluice::builder().config(c.clone()).filter(Filter::from_toml(filter, "test.toml").unwrap()).open().unwrap();
    let backfill = Backfill::new(sluice.pipeline().clone(), &c);
    let firehose = sluice::service::firehose_beside(&sluice, &c, &backfill).unwrap();
    let stop = CancellationToken::new();
    let (f, s) = (firehose.clone(), stop.clone());
    let live = tokio::spawn(async move { f.run(s).await.expect("live ingestion runs") });
    let b = backfill.clone();
    let backfilling = tokio::spawn(async move { b.run(RunMode::Forever, true).await.expect("backfill runs") });
    let running = Running { net, sluice, backfill, firehose, stop, tasks: vec![live, backfilling], _dir: dir };
    testkit::wait_until("the firehose to connect", || {
        running.net.request_count("com.atproto.sync.subscribeRepos") >= 1
    })
    .await;
    running
}

impl Running {
    /// Stops sluice; the devnet goes on.
    async fn stop(self) -> Devnet {
        let m = self.firehose.live().metrics();
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        eprintln!(
            "live: {} applied, {} held, {} discovered, {} desynchronized, {} stale, {} dropped, {} refused; \
             {} connections",
            n(&m.applied),
            n(&m.held),
            n(&m.discovered),
            n(&m.desynchronized),
            n(&m.stale),
            n(&m.dropped),
            n(&m.refused),
            self.firehose.connections()
        );
        self.backfill.stop();
        self.stop.cancel();
        for task in self.tasks {
            tokio::time::timeout(LIMIT, task).await.expect("stops in time").expect("no panic");
        }
        self.net
    }

    fn status(&self, did: &str) -> Option<RepoStatus> {
        self.sluice.store().repos().state(did).unwrap().map(|s| s.status)
    }

    /// Stored records of `did`: (collection, rkey) -> CID.
    fn stored(&self, did: &str) -> BTreeMap<(String, String), String> {
        testkit::stored_cids(self.sluice.store(), did)
    }

    /// What the PDS holds for `did`.
    fn on_pds(&self, did: &str) -> BTreeMap<(String, String), String> {
        testkit::pds_cids(&self.net, did)
    }

    fn in_step(&self, did: &str) -> bool {
        testkit::in_step(self.sluice.store(), &self.net, did)
    }

    fn events(&self) -> Vec<(u64, StoredEvent)> {
        self.sluice.store().log().from(0, usize::MAX).unwrap()
    }

    /// Replays the record events: each create finds no record, each update and delete finds
    /// one, ids are gapless. Returns the state they build: (did, collection, rkey) -> CID.
    fn replay(&self) -> BTreeMap<(String, String, String), String> {
        let mut state = BTreeMap::new();
        let events = self.events();
        for (i, (id, event)) in events.iter().enumerate() {
            assert_eq!(*id, i as u64 + 1, "event ids are gapless");
            let StoredEvent::Record(r) = event else { continue };
            let key = (r.did.to_string(), r.collection.to_string(), r.rkey.to_string());
            let cid = (!r.cid.is_empty()).then(|| cid::Cid::read_bytes(&r.cid[..]).unwrap().to_string());
            match r.action {
                Action::Create => {
                    assert!(state.insert(key, cid.unwrap()).is_none(), "event {id} creates a record that exists: {r:?}")
                }
                Action::Update => {
                    assert!(state.insert(key, cid.unwrap()).is_some(), "event {id} updates a missing record: {r:?}")
                }
                Action::Delete => assert!(state.remove(&key).is_some(), "event {id} deletes a missing record: {r:?}"),
            }
        }
        state
    }

    /// The replayed events of `did` equal what its PDS holds.
    fn assert_replay_matches(&self, did: &str) {
        let replayed: BTreeMap<(String, String), String> =
            self.replay().into_iter().filter(|((d, _, _), _)| d == did).map(|((_, c, r), cid)| ((c, r), cid)).collect();
        assert_eq!(replayed, self.on_pds(did), "{did}: the event log builds what the PDS holds");
    }
}

fn post(text: &str) -> serde_json::Value {
    json!({"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-11-01T00:00:00.000Z"})
}

/// An account with `n` posts.
fn account(net: &Devnet, seed: u64, n: usize) -> String {
    let did = net.create_account(AccountSpec { seed, ..Default::default() });
    for i in 0..n {
        net.put_record(&did, "app.bsky.feed.post", &format!("3l{seed:05}{i:06}"), post(&format!("post {i}"))).unwrap();
    }
    did
}

fn live_event(s: &Running, did: &str, rkey: &str, action: Action) -> Option<u64> {
    s.events().into_iter().find_map(|(id, e)| match e {
        StoredEvent::Record(r) if r.live && r.did == did && r.rkey == rkey && r.action == action => Some(id),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_writes_become_events_within_a_second_in_order() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = [account(&net, 1, 3), account(&net, 2, 3)];
    let s = start(net, FULL, |_| {}).await;
    testkit::wait_until("the backfill", || dids.iter().all(|d| s.in_step(d))).await;

    let did = &dids[0];
    let mut ids = Vec::new();
    for (action, write) in [(Action::Create, 0), (Action::Update, 1), (Action::Delete, 2)] {
        let started = Instant::now();
        match write {
            0 => s.net.put_record(did, "app.bsky.feed.post", "3lzzzzzzzzzz2", post("live")).map(drop).unwrap(),
            1 => s.net.put_record(did, "app.bsky.feed.post", "3lzzzzzzzzzz2", post("edited")).map(drop).unwrap(),
            _ => s.net.delete_record(did, "app.bsky.feed.post", "3lzzzzzzzzzz2").unwrap(),
        }
        testkit::wait_until("the live event", || live_event(&s, did, "3lzzzzzzzzzz2", action).is_some()).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "{action:?} took {took:?} to become an event");
        ids.push(live_event(&s, did, "3lzzzzzzzzzz2", action).unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "create, update, delete in order: {ids:?}");
    assert!(s.in_step(did));
    let pds = &s.net.pds_urls()[s.net.pds_of(did).unwrap()];
    let latest: serde_json::Value = testkit::http()
        .get(format!("{pds}/xrpc/com.atproto.sync.getLatestCommit?did={did}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let state = s.sluice.store().repos().state(did).unwrap().unwrap();
    assert_eq!(
        (state.commit.as_deref(), state.rev.as_deref()),
        (latest["cid"].as_str(), latest["rev"].as_str()),
        "the live commit's CID is kept"
    );
    s.assert_replay_matches(did);
    assert!(s.firehose.safe_cursor() > 0);
    let lag = s.firehose.live().metrics().lag_us.load(Ordering::Relaxed);
    assert!(lag < 1_000_000, "frames are handled within a second of their time ({lag} µs)");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_backfill_arrive_once_and_in_order() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let did = net.populate(1, 1500, 5).await.remove(0);
    // Small batches with pauses: the walk takes over a second, and writes land inside it.
    let s = start(net, FULL, |c| (c.backfill.batch_size, c.backfill.batch_delay_ms) = (50, 40)).await;
    let in_flight = || s.backfill.progress().in_flight.load(Ordering::Relaxed);
    testkit::wait_until("the backfill to start", || in_flight() == 1).await;
    let existing: Vec<(String, String)> = s.on_pds(&did).into_keys().take(2).collect();
    s.net.put_record(&did, "app.bsky.feed.post", "3lzzzzzzzzzz1", post("during")).unwrap();
    s.net.put_record(&did, &existing[0].0, &existing[0].1, post("updated during")).unwrap();
    s.net.delete_record(&did, &existing[1].0, &existing[1].1).unwrap();
    s.net.put_record(&did, "app.bsky.feed.post", "3lzzzzzzzzzz1", post("during, edited")).unwrap();
    assert_eq!((s.status(&did), in_flight()), (Some(RepoStatus::Pending), 1), "the writes landed during the walk");

    testkit::wait_until("the held commits to be applied", || s.in_step(&did)).await;
    let held = s.firehose.live().metrics().held.load(Ordering::Relaxed);
    assert!(held >= 4, "the commits made during the walk were held ({held})");
    s.assert_replay_matches(&did);
    assert!(
        live_event(&s, &did, "3lzzzzzzzzzz1", Action::Update).is_some(),
        "the held commits became live events after the walk"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_and_chain_breaking_commits_are_refused_or_resynced() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let [forged, stale, broken, repeated] =
        [account(&net, 11, 2), account(&net, 12, 2), account(&net, 13, 2), account(&net, 14, 2)];
    let s = start(net, FULL, |_| {}).await;
    let all = [&forged, &stale, &broken, &repeated];
    testkit::wait_until("the backfill", || all.iter().all(|d| s.in_step(d))).await;
    let metrics = s.firehose.live().metrics();

    s.net.tamper_next_commit(&forged, Tamper::ForgedSignature);
    s.net.put_record(&forged, "app.bsky.feed.post", "3lzzzzzzzzzz3", post("forged")).unwrap();
    testkit::wait_until("the forged commit to be refused", || metrics.refused.load(Ordering::Relaxed) >= 1).await;
    assert!(
        !s.stored(&forged).contains_key(&("app.bsky.feed.post".to_string(), "3lzzzzzzzzzz3".to_string())),
        "a forged commit writes nothing"
    );

    s.net.tamper_next_commit(&repeated, Tamper::RepeatedOp);
    s.net.put_record(&repeated, "app.bsky.feed.post", "3lzzzzzzzzzz7", post("twice")).unwrap();
    testkit::wait_until("the commit naming a path twice to be refused", || {
        metrics.refused.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert_eq!(s.stored(&repeated).len(), 2, "a commit naming a path twice writes nothing");

    s.net.tamper_next_commit(&stale, Tamper::StaleRev);
    s.net.put_record(&stale, "app.bsky.feed.post", "3lzzzzzzzzzz4", post("stale")).unwrap();
    testkit::wait_until("the stale commit to be skipped", || metrics.stale.load(Ordering::Relaxed) >= 1).await;
    assert_eq!(s.stored(&stale).len(), 2, "a stale commit writes nothing");

    s.net.tamper_next_commit(&broken, Tamper::BrokenPrevData);
    s.net.put_record(&broken, "app.bsky.feed.post", "3lzzzzzzzzzz5", post("broken chain")).unwrap();
    testkit::wait_until("the broken chain to be noticed", || metrics.desynchronized.load(Ordering::Relaxed) >= 1).await;
    testkit::wait_until("the resync of the broken chain", || s.in_step(&broken)).await;

    // sluice is now behind on the other two. A #sync naming the PDS's root is noticed as a
    // different root, and the next genuine commit as a broken chain; each is resynced by a
    // backfill.
    s.net.emit_sync(&forged);
    s.net.emit_sync(&repeated);
    s.net.put_record(&stale, "app.bsky.feed.post", "3lzzzzzzzzzz6", post("after")).unwrap();
    testkit::wait_until("the resyncs", || [&forged, &stale, &repeated].iter().all(|d| s.in_step(d))).await;
    assert!(metrics.desynchronized.load(Ordering::Relaxed) >= 4, "the #syncs and the commit each marked their repo");

    // A #sync that names the stored root moves nothing.
    let events = s.events().len();
    s.net.emit_sync(&broken);
    testkit::wait_until("the #sync to be applied", || s.firehose.safe_cursor() == s.net.firehose_seq()).await;
    assert_eq!((s.status(&broken), s.events().len()), (Some(RepoStatus::Synced), events));
    for did in all {
        s.assert_replay_matches(did);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_account_frames_follow_the_rules() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let did = account(&net, 21, 2);
    let s = start(net, FULL, |_| {}).await;
    testkit::wait_until("the backfill", || s.in_step(&did)).await;
    let account_events = |s: &Running| -> Vec<(bool, Option<String>)> {
        s.events()
            .into_iter()
            .filter_map(|(_, e)| match e {
                StoredEvent::Account(a) if a.did == did => Some((a.active, a.status)),
                _ => None,
            })
            .collect()
    };

    // No handle checker runs here: what it would take stays queued.
    let store = s.sluice.store();
    let queued = |did: &str| store.handles().checks_after(None, 100).unwrap().contains(&did.to_string());
    assert!(queued(&did), "the handle the backfill stored waits for a check");
    store.handles().set_verdict(&did, Some("user21.test".into()), true).unwrap();
    assert!(!queued(&did));
    s.net.set_handle(&did, "renamed.test", true);
    testkit::wait_until("the identity event", || {
        s.events().iter().any(|(_, e)| matches!(e, StoredEvent::Identity(i) if i.did == did))
    })
    .await;
    let state = store.repos().state(&did).unwrap().unwrap();
    assert_eq!(
        (state.handle.as_deref(), state.handle_ok),
        (Some("renamed.test"), None),
        "a new handle waits for its check"
    );
    assert!(queued(&did), "an #identity frame queues a handle check");
    assert_eq!(store.handles().did_for("user21.test").unwrap(), None, "the old handle names nothing");

    s.net.set_status(&did, AccountStatus::Deactivated);
    testkit::wait_until("the deactivation", || s.status(&did) == Some(RepoStatus::Gone)).await;
    assert_eq!(account_events(&s), vec![(false, Some("deactivated".into()))]);
    assert_eq!(s.stored(&did).len(), 2, "a deactivated account's records are kept");

    s.net.set_status(&did, AccountStatus::Active);
    testkit::wait_until("the reactivation and its backfill", || s.in_step(&did)).await;
    assert_eq!(account_events(&s).last(), Some(&(true, None)));

    s.net.set_status(&did, AccountStatus::Deleted);
    testkit::wait_until("the deletion", || s.status(&did) == Some(RepoStatus::Gone) && s.stored(&did).is_empty()).await;
    assert_eq!(account_events(&s).last(), Some(&(false, Some("deleted".into()))));
    let deletes = s
        .events()
        .iter()
        .filter(|(_, e)| matches!(e, StoredEvent::Record(r) if r.did == did && r.action == Action::Delete))
        .count();
    assert_eq!(deletes, 2, "a deleted account's records go, each with a delete event");
    assert!(s.replay().keys().all(|(d, _, _)| d != &did));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_repos_are_discovered_by_their_signal_commits() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let filter = "mode = \"signal\"\nsignals = [\"xyz.statusphere.status\"]\n";
    let s = start(net, filter, |_| {}).await;
    // The crawl lists the signal collection once: asked after the accounts below exist (a slow
    // start), it would queue the repo itself, and the firehose would find it known.
    testkit::wait_until("the crawl's listing", || s.net.request_count("com.atproto.sync.listReposByCollection") >= 1)
        .await;
    let quiet = s.net.create_account(AccountSpec { seed: 31, ..Default::default() });
    let signalling = s.net.create_account(AccountSpec { seed: 32, ..Default::default() });
    s.net.put_record(&quiet, "app.bsky.feed.post", "3lzzzzzzzzzz7", post("no signal")).unwrap();
    s.net.put_record(&signalling, "app.bsky.feed.post", "3lzzzzzzzzzz7", post("before the signal")).unwrap();
    let status = json!({"$type": "xyz.statusphere.status", "status": "🦀", "createdAt": "2026-11-01T00:00:00.000Z"});
    s.net.put_record(&signalling, "xyz.statusphere.status", "3lzzzzzzzzzz8", status).unwrap();

    testkit::wait_until("the discovered repo's backfill", || s.in_step(&signalling)).await;
    assert_eq!(s.stored(&signalling).len(), 2, "the whole repo is backfilled, not only the signal commit");
    let metrics = s.firehose.live().metrics();
    assert!(metrics.discovered.load(Ordering::Relaxed) >= 1);
    assert!(metrics.dropped.load(Ordering::Relaxed) >= 2, "commits without a signal from unknown repos are dropped");
    assert_eq!(s.status(&quiet), None, "a repo without a signal leaves nothing behind");
    s.assert_replay_matches(&signalling);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_from_its_cursor() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let did = account(&net, 41, 1);
    let s = start(net, FULL, |c| c.firehose.max_reconnect_secs = 1).await;
    testkit::wait_until("the backfill", || s.in_step(&did)).await;
    for i in 0..3 {
        s.net.put_record(&did, "app.bsky.feed.post", &format!("3lzzzzzzzzza{i}"), post("before the drop")).unwrap();
    }
    testkit::wait_until("the first writes", || s.in_step(&did)).await;
    s.net.drop_firehose_connections();
    for i in 0..3 {
        s.net.put_record(&did, "app.bsky.feed.post", &format!("3lzzzzzzzzzb{i}"), post("while disconnected")).unwrap();
    }
    testkit::wait_until("the writes made while disconnected", || s.in_step(&did)).await;
    assert!(s.net.request_count("com.atproto.sync.subscribeRepos") >= 2, "the client reconnected");
    assert!(
        s.firehose.live().metrics().desynchronized.load(Ordering::Relaxed) == 0,
        "nothing was missed: no resync was needed"
    );
    s.assert_replay_matches(&did);
    let seq = s.net.firehose_seq();
    testkit::wait_until("the cursor to reach the last frame", || s.firehose.safe_cursor() == seq).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_info_unknown_and_malformed_frames_are_never_fatal() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let did = account(&net, 51, 1);
    let s = start(net, FULL, |_| {}).await;
    testkit::wait_until("the backfill", || s.in_step(&did)).await;
    let frame = |header: serde_json::Value, body: serde_json::Value| {
        let mut out = serde_ipld_dagcbor::to_vec(&header).unwrap();
        out.extend(serde_ipld_dagcbor::to_vec(&body).unwrap());
        bytes::Bytes::from(out)
    };
    let odd = vec![
        frame(json!({"op": -1}), json!({"error": "ConsumerTooSlow", "message": "bye"})),
        frame(json!({"op": 1, "t": "#info"}), json!({"name": "OutdatedCursor", "message": "too old"})),
        frame(json!({"op": 1, "t": "#labels"}), json!({"seq": 1})),
        bytes::Bytes::from_static(b"\xa2garbage"),
        frame(json!({"op": 1, "t": "#commit"}), json!({"seq": "not a number"})),
    ];
    let firehose = s.firehose.clone();
    tokio::task::spawn_blocking(move || odd.into_iter().for_each(|f| firehose.ingest(f))).await.unwrap();
    assert_eq!(s.firehose.malformed(), 2, "the two undecodable frames are counted");
    s.net.put_record(&did, "app.bsky.feed.post", "3lzzzzzzzzzzc", post("still running")).unwrap();
    testkit::wait_until("the next live write", || s.in_step(&did)).await;
    s.assert_replay_matches(&did);
    s.stop().await;
}

/// Pinging with these settings, a connection is given up 0.4 s after the server goes silent.
fn quick_pings(c: &mut Config) {
    (c.firehose.ping_interval_ms, c.firehose.pong_timeout_ms, c.firehose.max_reconnect_secs) = (100, 300, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_source_keeps_its_connection_while_pongs_come_and_is_left_when_they_stop() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let did = account(&net, 51, 1);
    let s = start(net, FULL, quick_pings).await;
    testkit::wait_until("the backfill", || s.in_step(&did)).await;
    // Thirty ping intervals, ten pong timeouts, without a frame: the quiet spell is what is
    // tested, so it is a time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.firehose.connections(), 1, "a quiet connection that answers pings is kept");
    let started = Instant::now();
    s.net.put_record(&did, "app.bsky.feed.post", "3lzzzzzzzzzq0", post("after a quiet spell")).unwrap();
    testkit::wait_until("the write after the quiet spell", || {
        live_event(&s, &did, "3lzzzzzzzzzq0", Action::Create).is_some()
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());

    // A server that stops answering is left and connected again; a connection the server was
    // heard on (pongs, as in the quiet spell above, or frames) resets the backoff, so each
    // reconnect comes a second later, not 1, 2, 4 s. Each round's connection is heard on
    // before it is stalled: a write comes through it.
    for round in 0..3 {
        let before = s.firehose.connections();
        let rkey = format!("3lzzzzzzzzzp{round}");
        s.net.put_record(&did, "app.bsky.feed.post", &rkey, post("through this connection")).unwrap();
        testkit::wait_until("a write through the connection", || live_event(&s, &did, &rkey, Action::Create).is_some())
            .await;
        let stalled = Instant::now();
        s.net.stall_firehose_connections();
        testkit::wait_until("a new connection", || s.firehose.connections() > before).await;
        let took = stalled.elapsed();
        assert!(took < Duration::from_millis(2500), "round {round}: reconnected {took:?} after the server went silent");
    }
    s.net.put_record(&did, "app.bsky.feed.post", "3lzzzzzzzzzq1", post("after the reconnects")).unwrap();
    testkit::wait_until("the write after the reconnects", || {
        live_event(&s, &did, "3lzzzzzzzzzq1", Action::Create).is_some()
    })
    .await;
    s.assert_replay_matches(&did);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_before_its_first_frame_loses_no_write_made_while_it_was_down() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let did = account(&net, 61, 1);
    let s = start(net, FULL, |c| c.firehose.max_reconnect_secs = 1).await;
    testkit::wait_until("the backfill", || s.in_step(&did)).await;
    assert_eq!(s.firehose.safe_cursor(), 0, "no frame came yet: sluice knows no seq");

    s.net.set_firehose_down(true);
    s.net.drop_firehose_connections();
    let attempts = s.net.request_count("com.atproto.sync.subscribeRepos");
    testkit::wait_until("a refused reconnect", || s.net.request_count("com.atproto.sync.subscribeRepos") > attempts)
        .await;
    s.net.put_record(&did, "app.bsky.feed.post", "3lzzzzzzzzzg0", post("while the firehose was down")).unwrap();
    s.net.set_firehose_down(false);
    testkit::wait_until("the write made while down, live", || {
        live_event(&s, &did, "3lzzzzzzzzzg0", Action::Create).is_some()
    })
    .await;
    s.net.put_record(&did, "app.bsky.feed.post", "3lzzzzzzzzzg1", post("after it came back")).unwrap();
    testkit::wait_until("the write after", || live_event(&s, &did, "3lzzzzzzzzzg1", Action::Create).is_some()).await;
    assert_eq!(
        s.firehose.live().metrics().desynchronized.load(Ordering::Relaxed),
        0,
        "nothing was missed: no resync was needed"
    );
    assert!(s.in_step(&did));
    s.assert_replay_matches(&did);
    let seq = s.net.firehose_seq();
    testkit::wait_until("the cursor to reach the last frame", || s.firehose.safe_cursor() == seq).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_before_the_first_frame_loses_no_write_made_while_stopped() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let did = account(&net, 71, 2);
    let data = tempfile::tempdir().unwrap();
    let at = |dir: std::path::PathBuf| move |c: &mut Config| c.storage.path = dir;
    let s = start(net, FULL, at(data.path().join("data"))).await;
    testkit::wait_until("the backfill", || s.in_step(&did)).await;
    assert_eq!(s.firehose.safe_cursor(), 0, "no frame came: no seq is saved");
    let net = s.stop().await;

    net.put_record(&did, "app.bsky.feed.post", "3lzzzzzzzzzr0", post("while sluice was stopped")).unwrap();
    let s = start(net, FULL, at(data.path().join("data"))).await;
    testkit::wait_until("the write made while stopped, live", || {
        live_event(&s, &did, "3lzzzzzzzzzr0", Action::Create).is_some()
    })
    .await;
    // How soon live commits after a restart become events (BENCHMARKS.md quotes these lines).
    for i in 1..=3 {
        let rkey = format!("3lzzzzzzzzzr{i}");
        let started = Instant::now();
        s.net.put_record(&did, "app.bsky.feed.post", &rkey, post("after the restart")).unwrap();
        while live_event(&s, &did, &rkey, Action::Create).is_none() {
            assert!(started.elapsed() < LIMIT);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        eprintln!("live commit {i} after the restart: an event {:?} after the write began", started.elapsed());
    }
    assert_eq!(
        s.firehose.live().metrics().desynchronized.load(Ordering::Relaxed),
        0,
        "nothing was missed: no resync was needed"
    );
    s.assert_replay_matches(&did);
    s.stop().await;
}

/// Against the devnet's relay: for cut points all along a stream, the search finds the
/// last event before the cut, in a number of probes that grows with the log of the seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_finds_the_last_event_before_a_time_in_log_probes() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let did = net.create_account(AccountSpec { seed: 7, ..Default::default() });
    let mut cuts = vec![(sluice::store::now_us(), net.firehose_seq())];
    for i in 0..60 {
        let record = serde_json::json!({"$type": "app.bsky.feed.like", "createdAt": "2026-11-01T00:00:00.000Z"});
        net.put_record(&did, "app.bsky.feed.like", &format!("3lgap{i:07}"), record).unwrap();
        if i % 7 == 0 {
            tokio::time::sleep(Duration::from_millis(3)).await;
            cuts.push((sluice::store::now_us(), net.firehose_seq()));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    let stop = CancellationToken::new();
    for (before, last_seq) in cuts {
        let (found, probes) = gap::search(&net.relay_url(), before, &stop).await.unwrap();
        assert_eq!(found, last_seq, "the last event before the cut");
        assert!(probes <= 2 * 7 + 2, "{probes} probes for a stream of {} events", net.firehose_seq());
    }
    net.shutdown().await;
}
