//! Network backfill end to end against the devnet (127.0.0.1 only): discovery, states, the
//! stored records against what the PDS hosts hold, and the effect of each backfill control.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::backfill::fetch::{RepoFetcher, SPOOL_IN_MEMORY, Spooled, WALK_IN_MEMORY};
use sluice::backfill::{Backfill, RunMode};
use sluice::repo::CarLimits;
use sluice::store::{RepoStatus, StoredEvent};
use sluice::{Config, Filter, Sluice};
use sluice_devnet::{AccountSpec, AccountStatus, Devnet, DevnetOptions};
use sluice_testkit as testkit;

/// Every test's runs end well within this.
const RUN_LIMIT: Duration = Duration::from_secs(120);

struct Setup {
    net: Devnet,
    sluice: Sluice,
    backfill: Arc<Backfill>,
    _dir: tempfile::TempDir,
}

fn config(net: &Devnet, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    testkit::on_devnet(&mut c, net);
    c.backfill.retry_min_ms = 50;
    c.backfill.retry_max_ms = 200;
    c.backfill.max_retries = 3;
    c.backfill.progress_secs = 1;
    tweak(&mut c);
    c
}

fn open(net: Devnet, filter: &str, tweak: impl FnOnce(&mut Config)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&net, tweak);
    c.storage.path = dir.path().join("data");
    let sluice =
        Sluice::builder().config(c.clone()).filter(Filter::from_toml(filter, "test.toml").unwrap()).open().unwrap();
    let backfill = Backfill::new(sluice.pipeline().clone(), &c);
    Setup { net, sluice, backfill, _dir: dir }
}

async fn run(s: &Setup, crawl: bool) {
    tokio::time::timeout(RUN_LIMIT, s.backfill.run(RunMode::UntilEmpty, crawl))
        .await
        .expect("backfill ended in time")
        .expect("backfill ran");
}

fn status(s: &Setup, did: &str) -> Option<RepoStatus> {
    s.sluice.store().repos().state(did).unwrap().map(|st| st.status)
}

/// The stored records of `did`: (collection, rkey) -> CID string.
fn stored(s: &Setup, did: &str) -> BTreeMap<(String, String), String> {
    testkit::stored_cids(s.sluice.store(), did)
}

/// What the PDS holds for `did` in the collections `wanted` keeps.
fn held(s: &Setup, did: &str, wanted: impl Fn(&str) -> bool) -> BTreeMap<(String, String), String> {
    s.net.records(did).into_iter().filter(|((c, _), _)| wanted(c)).map(|(k, (cid, _))| (k, cid)).collect()
}

/// Every event: ids are 1..=n with no gap, and no record is created twice.
fn check_event_log(s: &Setup) -> Vec<StoredEvent> {
    let events = s.sluice.store().log().from(0, usize::MAX).unwrap();
    let ids: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "event ids are gapless");
    let mut created = BTreeSet::new();
    for (_, e) in &events {
        if let StoredEvent::Record(r) = e
            && r.action == sluice::store::Action::Create
        {
            assert!(created.insert((r.did.clone(), r.collection.clone(), r.rkey.clone())), "created twice: {r:?}");
        }
    }
    events.into_iter().map(|(_, e)| e).collect()
}

fn status_record(net: &Devnet, did: &str, n: u32) {
    net.put_record(
        did,
        "xyz.statusphere.status",
        &format!("3l{n:011}"),
        json!({"$type": "xyz.statusphere.status", "status": "🦀", "createdAt": "2026-11-01T00:00:00.000Z"}),
    )
    .unwrap();
}

const SIGNAL_FILTER: &str = r#"
mode = "signal"
signals = ["xyz.statusphere.*"]
collections = ["xyz.statusphere.*", "app.bsky.feed.post"]
"#;

/// The 200-repo network: every third repo holds a signal record (the rest are discarded in
/// signal mode); five are inactive, one lost its identity, three fail twice before serving,
/// one host rate-limits, and two more accounts use a legacy key form and did:web. Returns
/// every DID, the two extra accounts last.
async fn populate_troubled_network(net: &Devnet) -> Vec<String> {
    let mut dids = net.populate(200, 12, 7).await;
    for (i, did) in dids.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        status_record(net, did, i as u32);
    }
    let gone = [
        (3, AccountStatus::Deactivated),
        (6, AccountStatus::Takendown),
        (9, AccountStatus::Suspended),
        (12, AccountStatus::Deleted),
        (4, AccountStatus::Deactivated),
    ];
    for (i, st) in gone {
        net.set_status(&dids[i], st);
    }
    net.remove_identity(&dids[15]); // listed by the relay, unknown to the PLC directory
    for i in [18, 21, 24] {
        net.fail_next(&dids[i], 2); // fails twice, then serves
    }
    net.rate_limit(0, 6, 1);
    let legacy = net.create_account(AccountSpec { seed: 9_001, pds: 1, legacy_key: true, ..Default::default() });
    status_record(net, &legacy, 9_001);
    let web = net.create_account(AccountSpec { seed: 9_002, pds: 0, did_web: true, ..Default::default() });
    status_record(net, &web, 9_002);
    dids.extend([legacy, web]);
    dids
}

/// Each repo of [`populate_troubled_network`] is in the state it should be, and a synced one
/// holds exactly what its PDS holds in the wanted collections; returns the records stored.
fn assert_troubled_network_states(s: &Setup, all: &[String]) -> usize {
    let wanted = |c: &str| c.starts_with("xyz.statusphere.") || c == "app.bsky.feed.post";
    let mut total = 0;
    for (i, did) in all.iter().enumerate() {
        let want = match i {
            3 | 4 | 6 | 9 | 12 | 15 => RepoStatus::Gone,
            _ if i >= 200 || i % 3 == 0 => RepoStatus::Synced,
            _ => RepoStatus::Discarded,
        };
        assert_eq!(status(s, did), Some(want), "repo {i} {did}");
        match want {
            RepoStatus::Synced => {
                let pds = held(s, did, wanted);
                assert!(!pds.is_empty());
                assert_eq!(stored(s, did), pds, "repo {i}: stored records are what the PDS holds");
                total += pds.len();
            }
            _ => assert!(stored(s, did).is_empty(), "repo {i} ({want:?}) leaves nothing behind"),
        }
    }
    total
}

/// A key that rotated after it was cached: the commit does not verify with it, so the worker
/// looks the DID up again, once, and walks the repo with the fresh key; a repo whose DID no
/// longer resolves on that second look is not walked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cached_key_is_looked_up_again_before_the_walk() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let dids = net.populate(2, 30, 21).await;
    let s = open(net, "mode = \"full\"", |c| c.backfill.max_retries = 0);
    let resolver = sluice::identity::Resolver::new(sluice::identity::ResolverOptions {
        plc_url: s.net.plc_url(),
        policy: sluice::http::AddressPolicy::loopback(),
        ..Default::default()
    });
    let right = (*resolver.resolve(&dids[0]).await.unwrap()).clone();
    let other = (*resolver.resolve(&dids[1]).await.unwrap()).clone();
    // The first repo's cached key is another account's.
    s.backfill.resolver().prime(sluice::identity::Identity { key: other.key.clone(), ..right.clone() });
    s.backfill.queue(&dids[..1]).unwrap();
    run(&s, false).await;
    assert_eq!(status(&s, &dids[0]), Some(RepoStatus::Synced));
    assert_eq!(stored(&s, &dids[0]).len(), 30);
    assert_eq!(s.backfill.resolver().cached(&dids[0]).unwrap().key, right.key, "the fresh key is cached");
    assert_eq!(
        s.net.request_count("com.atproto.sync.getRepo"),
        1,
        "fetched once: the repo read is checked again, not downloaded again"
    );

    // The second look finds no document: no walk.
    s.net.remove_identity(&dids[1]);
    s.backfill.resolver().prime(sluice::identity::Identity { key: right.key.clone(), ..other.clone() });
    s.backfill.queue(&dids[1..]).unwrap();
    run(&s, false).await;
    assert_eq!(status(&s, &dids[1]), Some(RepoStatus::Gone), "the fresh look-up finds the DID gone");
    assert!(stored(&s, &dids[1]).is_empty(), "nothing of an unverified repo is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_repos_over_two_hosts_end_in_the_right_states() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let all = populate_troubled_network(&net).await;
    let s = open(net, SIGNAL_FILTER, |c| c.backfill.max_concurrent = 8);
    run(&s, true).await;

    let total = assert_troubled_network_states(&s, &all);
    let events = check_event_log(&s);
    assert_eq!(events.len(), total, "one create event per stored record");
    let cursors = s.sluice.store().cursors().all().unwrap();
    assert_eq!(cursors["crawler"].0, "done");
    assert!(all.contains(&cursors["backfill"].0), "the backfill cursor names the last repo done");
    assert!(s.net.request_count("com.atproto.sync.getRepo") <= 202 + 3 * 2 + 6, "no repo fetched needlessly");

    // A second run has nothing to do: the crawl is done and no repo is queued.
    let before = s.net.request_count("com.atproto.sync.getRepo");
    run(&s, true).await;
    assert_eq!(s.net.request_count("com.atproto.sync.getRepo"), before);
    assert_eq!(check_event_log(&s).len(), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repo_failing_past_its_retries_stays_in_error_until_queued_again() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let dids = net.populate(2, 5, 1).await;
    net.fail_next(&dids[0], 100);
    let s = open(net, "mode = \"full\"", |_| {});
    run(&s, true).await;
    let state = s.sluice.store().repos().state(&dids[0]).unwrap().unwrap();
    assert_eq!((state.status, state.retries, state.next_retry_ms), (RepoStatus::Error, 4, None));
    assert!(state.error.unwrap().contains("500"), "the reason is kept");
    assert_eq!(status(&s, &dids[1]), Some(RepoStatus::Synced));

    s.net.fail_next(&dids[0], 0);
    s.backfill.queue(&[dids[0].clone()]).unwrap();
    run(&s, false).await;
    assert_eq!(status(&s, &dids[0]), Some(RepoStatus::Synced));
    assert_eq!(s.sluice.store().repos().state(&dids[0]).unwrap().unwrap().retries, 0);
}

/// A repo with records of known and unknown age, for BACKFILL_DAYS.
fn aged_repo(net: &Devnet) -> String {
    use jacquard_common::types::tid::Tid;
    let did = net.create_account(AccountSpec { seed: 77, ..Default::default() });
    let now_us = sluice::store::values::now_ms() * 1000;
    let day = 86_400_000_000;
    let post = |rkey: &str, created: &str| {
        net.put_record(
            &did,
            "app.bsky.feed.post",
            rkey,
            json!({"$type": "app.bsky.feed.post", "text": "t", "createdAt": created}),
        )
        .unwrap()
    };
    post(Tid::from_time(now_us - day, 0).as_str(), "2000-01-01T00:00:00Z"); // recent by its key
    post(Tid::from_time(now_us - 30 * day, 0).as_str(), "2099-01-01T00:00:00Z"); // old by its key
    net.put_record(
        &did,
        "app.bsky.actor.profile",
        "self",
        json!({"$type": "app.bsky.actor.profile", "displayName": "no date"}),
    )
    .unwrap();
    net.put_record(
        &did,
        "xyz.example.thing",
        "old",
        json!({"$type": "xyz.example.thing", "createdAt": "2001-01-01T00:00:00Z"}),
    )
    .unwrap();
    net.put_record(
        &did,
        "xyz.example.thing",
        "new",
        json!({"$type": "xyz.example.thing", "createdAt": chrono::Utc::now().to_rfc3339()}),
    )
    .unwrap();
    did
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_days_keeps_recent_and_undated_records() {
    for (days, want) in [(-1i64, 5usize), (7, 3), (0, 0)] {
        let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
        let did = aged_repo(&net);
        let s = open(net, "mode = \"full\"", |c| c.backfill.days = days);
        run(&s, true).await;
        let kept = stored(&s, &did);
        assert_eq!(kept.len(), want, "BACKFILL_DAYS={days}: {kept:?}");
        if days == 7 {
            let keys: BTreeSet<&str> = kept.keys().map(|(_, r)| r.as_str()).collect();
            assert!(keys.contains("self") && keys.contains("new") && !keys.contains("old"), "{keys:?}");
        }
        if days == 0 {
            assert_eq!(s.net.request_count("com.atproto.sync.listRepos"), 0, "0 days: no backfill at all");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_cap_and_idle_mode_hold_new_repos_until_released() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    net.populate(6, 5, 2).await;
    let s = open(net, "mode = \"full\"", |c| {
        c.backfill.max_memory_mb = 1;
        c.backfill.use_idle = true;
    });
    let backfill = s.backfill.clone();
    let running = tokio::spawn(async move { backfill.run(RunMode::UntilEmpty, true).await });
    let p = s.backfill.progress();
    // The crawl has queued all six, and the scheduler holds them: none starts over the cap.
    testkit::wait_until("the six repos queued and the memory pause", || {
        s.sluice.store().repo_count(RepoStatus::Pending) == 6 && p.memory_paused.load(Ordering::Relaxed)
    })
    .await;
    assert_eq!(p.done.load(Ordering::Relaxed) + p.in_flight.load(Ordering::Relaxed), 0, "no repo starts over the cap");

    s.backfill.live_backlog().store(10_000, Ordering::Relaxed);
    s.backfill.set_memory_cap_mb(0);
    testkit::wait_until("idle mode to yield to a live backlog", || {
        p.idle_paused.load(Ordering::Relaxed) && !p.memory_paused.load(Ordering::Relaxed)
    })
    .await;
    assert_eq!(p.done.load(Ordering::Relaxed) + p.in_flight.load(Ordering::Relaxed), 0, "none starts while idle");

    s.backfill.live_backlog().store(0, Ordering::Relaxed);
    tokio::time::timeout(RUN_LIMIT, running).await.unwrap().unwrap().unwrap();
    assert_eq!(p.done.load(Ordering::Relaxed), 6);
    assert!(!p.memory_paused.load(Ordering::Relaxed) && !p.idle_paused.load(Ordering::Relaxed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_batch_size_and_delay_shape_the_work() {
    for limit in [1usize, 6] {
        let net = Devnet::start(DevnetOptions { pds_hosts: 2, ..Default::default() }).await.unwrap();
        net.populate(24, 4, 3).await;
        let s = open(net, "mode = \"full\"", |c| c.backfill.max_concurrent = limit);
        run(&s, true).await;
        let peak = s.backfill.progress().peak_in_flight.load(Ordering::Relaxed);
        assert!(peak <= limit as u64, "BACKFILL_MAX_CONCURRENT={limit}: peak {peak}");
        if limit > 1 {
            assert!(peak > 1, "repos run side by side");
        }
    }

    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let dids = net.populate(1, 9, 4).await;
    let s = open(net, "mode = \"full\"", |c| {
        c.backfill.batch_size = 2;
        c.backfill.batch_delay_ms = 150;
    });
    let start = Instant::now();
    run(&s, true).await;
    assert_eq!(stored(&s, &dids[0]).len(), 9);
    assert_eq!(
        s.sluice.store().log().page_count().unwrap(),
        5,
        "9 records in batches of 2: 5 commits, one event page each"
    );
    assert!(start.elapsed() >= Duration::from_millis(4 * 150), "4 pauses between 5 batches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_worker_id_does_not_backfill() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    net.populate(2, 2, 5).await;
    let s = open(net, "mode = \"full\"", |c| c.backfill.worker_id = Some(1));
    run(&s, true).await;
    assert_eq!(s.net.request_count("com.atproto.sync.listRepos") + s.net.request_count("com.atproto.sync.getRepo"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_edit_that_adds_a_collection_backfills_it() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let dids = net.populate(5, 10, 6).await;
    let s = open(net, "mode = \"full\"\ncollections = [\"app.bsky.feed.post\"]", |c| c.backfill.requeue_per_sec = 2);
    run(&s, true).await;
    let posts = |c: &str| c == "app.bsky.feed.post";
    for did in &dids {
        assert_eq!(stored(&s, did), held(&s, did, posts));
    }
    let before = check_event_log(&s).len();

    let backfill = s.backfill.clone();
    let mut running = Box::pin(async move { backfill.run(RunMode::Forever, false).await });
    // Its first poll starts the run, which takes the filter in force before it first awaits:
    // the edit below comes after, and is followed.
    std::future::poll_fn(|cx| {
        assert!(running.as_mut().poll(cx).is_pending(), "a run in Forever mode goes on");
        std::task::Poll::Ready(())
    })
    .await;
    let running = tokio::spawn(running);
    s.sluice.pipeline().filter().store(
        Filter::from_toml("mode = \"full\"\ncollections = [\"app.bsky.feed.post\", \"app.bsky.feed.like\"]", "t")
            .unwrap(),
    );
    let both = |c: &str| posts(c) || c == "app.bsky.feed.like";
    testkit::wait_until("the likes backfilled after the edit", || {
        dids.iter().all(|d| stored(&s, d) == held(&s, d, both))
    })
    .await;
    s.backfill.stop();
    tokio::time::timeout(RUN_LIMIT, running).await.unwrap().unwrap().unwrap();
    let events = check_event_log(&s);
    let likes: usize = dids.iter().map(|d| held(&s, d, |c| c == "app.bsky.feed.like").len()).sum();
    assert_eq!(events.len(), before + likes, "only the newly wanted records are emitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_signals_are_crawled_by_collection_and_only_their_repos_fetched() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = net.populate(30, 4, 8).await;
    let signalled: Vec<&String> = dids.iter().step_by(5).collect();
    for (i, did) in signalled.iter().enumerate() {
        status_record(&net, did, i as u32);
    }
    let filter = "mode = \"signal\"\nsignals = [\"xyz.statusphere.status\"]\ncollections = [\"xyz.statusphere.*\"]";
    let s = open(net, filter, |c| c.backfill.max_concurrent = 4);
    run(&s, true).await;
    assert_eq!(s.net.request_count("com.atproto.sync.listRepos"), 0, "an exact signal needs no full listing");
    assert!(s.net.request_count("com.atproto.sync.listReposByCollection") >= 1);
    assert_eq!(
        s.net.request_count("com.atproto.sync.getRepo"),
        signalled.len() as u64,
        "only repos holding the signal are fetched"
    );
    for did in &dids {
        let want = signalled.contains(&did).then_some(RepoStatus::Synced);
        assert_eq!(status(&s, did), want, "{did}");
    }
    assert_eq!(s.sluice.store().cursors().all().unwrap()["crawler/xyz.statusphere.status"].0, "done");
}

/// `getRepo` bodies: a large one spooled to a file (gone with it once read), a small one kept in
/// memory, and the CAR limits applied while downloading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_downloads_are_spooled_to_a_file_and_limits_apply_while_downloading() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let did = net.populate(1, 300, 9).await.remove(0);
    let dir = tempfile::tempdir().unwrap();
    let pds = net.pds_urls().remove(0);

    let mut fetcher = RepoFetcher::new(CarLimits::default(), dir.path().join("spool"));
    fetcher.spool_in_memory = 4096;
    let spooled = fetcher.download(&pds, &did).await.unwrap();
    assert!(matches!(spooled, Spooled::File(_)) && spooled.len() > 4096);
    assert_eq!(std::fs::read_dir(dir.path().join("spool")).unwrap().count(), 1);
    let repo = spooled.read(&CarLimits::default(), 0).unwrap();
    assert_eq!(repo.records().count(), 300);
    assert_eq!(std::fs::read_dir(dir.path().join("spool")).unwrap().count(), 0, "the spool file goes with it");
    // Small enough to be walked from memory: the same records.
    let spooled = fetcher.download(&pds, &did).await.unwrap();
    assert!(matches!(spooled, Spooled::File(_)));
    let in_memory = spooled.read(&CarLimits::default(), WALK_IN_MEMORY).unwrap();
    assert_eq!(
        in_memory.records().map(Result::unwrap).collect::<Vec<_>>(),
        repo.records().map(Result::unwrap).collect::<Vec<_>>()
    );
    assert_eq!(std::fs::read_dir(dir.path().join("spool")).unwrap().count(), 0);

    fetcher.spool_in_memory = SPOOL_IN_MEMORY;
    assert!(matches!(fetcher.download(&pds, &did).await.unwrap(), Spooled::Memory(_)));

    let tiny = RepoFetcher::new(CarLimits { max_car_bytes: 1000, ..Default::default() }, dir.path().join("spool"));
    let e = tiny.download(&pds, &did).await.err().unwrap().to_string();
    assert!(e.contains("1000-byte limit"), "{e}");
}
