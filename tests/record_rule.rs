//! The record rule end to end (issue 31): a record sluice's readers could not show (over the
//! size limit, nested too deep, not DAG-CBOR of the data model) is refused alike by a backfill
//! walk and by live commits: not stored, no event, the rest of the repo or commit indexed, an
//! older stored version deleted with its event, and `/metrics` counting each reason. Reads
//! never fail a listing because of one stored record that does not render. 127.0.0.1 only.

use std::collections::BTreeMap;
use std::time::Duration;

use cid::Cid;
use serde_json::{Value, json};
use sluice::backfill::{Backfill, RunMode};
use sluice::handlers::rules::RecordRefusal;
use sluice::handlers::value::json_to_cbor;
use sluice::pipeline::RecordOp;
use sluice::store::{Action, RecordWrite, RepoChange, StoredEvent};
use sluice::{Config, Sluice};
use sluice_devnet::{Account, AccountSpec, Devnet, DevnetOptions, RepoContents, export_car_blocking, rev_at};
use sluice_testkit as testkit;
use tokio_util::sync::CancellationToken;

/// Every wait and request ends well within this.
const LIMIT: Duration = Duration::from_secs(60);

const THING: &str = "com.example.thing";

/// A good record of [`THING`].
fn good(n: u32) -> Vec<u8> {
    json_to_cbor(&json!({"$type": THING, "n": n, "text": format!("record {n}")})).unwrap()
}

/// `{"$type": THING, "a": [[...[1]...]]}`: `levels` maps and arrays in all.
fn nested_arrays(levels: usize) -> Vec<u8> {
    let mut cbor = vec![0xa2, 0x61, b'a'];
    cbor.extend(vec![0x81; levels - 1]);
    cbor.push(0x01);
    cbor.extend([0x65, b'$', b't', b'y', b'p', b'e', 0x71]);
    cbor.extend(THING.as_bytes());
    cbor
}

/// `{"a": {"a": ... {"a": 1}}}`: `levels` maps.
fn nested_maps(levels: usize) -> Vec<u8> {
    let mut cbor = [0xa1, 0x61, b'a'].repeat(levels);
    cbor.push(0x01);
    cbor
}

/// One record over each limit: (rkey, body, the reason it is refused for).
fn hostile() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut large = json_to_cbor(&json!({"$type": THING, "text": "x".repeat(1_572_864)})).unwrap();
    large.shrink_to_fit();
    let float = [vec![0xa1, 0x61, b'f', 0xfb], 1.5f64.to_be_bytes().to_vec()].concat();
    vec![
        ("large", large, "too_large"),
        ("arrays", nested_arrays(100_000), "too_deep"),
        ("maps", nested_maps(10_000), "too_deep"),
        ("float", float, "not_dag_cbor"),
        ("cut", vec![0xa2, 0x61, b'a', 0x01], "not_dag_cbor"),
    ]
}

/// Records refused since start, by reason.
fn refused(s: &Sluice) -> BTreeMap<&'static str, u64> {
    RecordRefusal::REASONS.iter().map(|r| (*r, s.pipeline().metrics().refused(r))).collect()
}

/// What `did`'s events say, in order: (action, rkey, CID).
fn events_of(s: &Sluice, did: &str) -> Vec<(Action, String, String)> {
    let log = s.store().log().from(0, usize::MAX).unwrap();
    log.into_iter()
        .filter_map(|(_, e)| match e {
            StoredEvent::Record(r) if r.did == did => {
                let cid = (!r.cid.is_empty()).then(|| Cid::read_bytes(&r.cid[..]).unwrap().to_string());
                Some((r.action, r.rkey.to_string(), cid.unwrap_or_default()))
            }
            _ => None,
        })
        .collect()
}

/// The stored records of `did`: rkey -> CID.
fn stored(s: &Sluice, did: &str) -> BTreeMap<String, String> {
    testkit::stored_cids(s.store(), did).into_iter().map(|((_, r), cid)| (r, cid)).collect()
}

/// The two repo versions of the pipeline test: the first holds `keep` and `turns` (good); the
/// second keeps `keep`, turns `turns` into a float record, and adds every hostile record.
fn versions() -> [RepoContents; 2] {
    let key = |rkey: &str| format!("{THING}/{rkey}");
    let first: RepoContents = [(key("keep"), good(1)), (key("turns"), good(2))].into();
    let mut second = first.clone();
    second.insert(key("turns"), hostile()[3].1.clone());
    second.extend(hostile().into_iter().map(|(rkey, bytes, _)| (key(rkey), bytes)));
    [first, second]
}

/// The puts that take the repo from `before` to `after` (no deletes: `after` keeps every key).
fn puts(before: &RepoContents, after: &RepoContents) -> Vec<RecordOp> {
    after
        .iter()
        .filter(|(key, bytes)| before.get(*key) != Some(*bytes))
        .map(|(key, bytes)| {
            let (collection, rkey) = key.split_once('/').unwrap();
            RecordOp::Put {
                collection: collection.into(),
                rkey: rkey.into(),
                cid: testkit::cid_of(bytes),
                bytes: bytes.clone().into(),
            }
        })
        .collect()
}

#[test]
fn a_walk_and_live_commits_of_the_same_records_end_alike() {
    let account = Account::new(31);
    let versions = versions();
    let (_walked_dir, walked) = testkit::sluice_with("mode = \"full\"\n");
    let (_live_dir, live) = testkit::sluice_with("mode = \"full\"\n");
    let mut before = RepoContents::new();
    for (n, contents) in versions.iter().enumerate() {
        let rev = rev_at(n as u64 + 1);
        let car = export_car_blocking(&account, &rev, contents).unwrap();
        let repo = sluice::repo::read_car(&car, &Default::default()).unwrap();
        walked.pipeline().apply_walk(&repo, &Default::default()).unwrap();
        let (commit, data) = (testkit::cid_of(rev.as_bytes()), testkit::cid_of(&car));
        live.pipeline().apply_commit(&account.did, commit, &rev, data, puts(&before, contents), None).unwrap();
        before = contents.clone();
    }

    let only_good: BTreeMap<String, String> = [("keep".to_string(), testkit::cid_of(&good(1)).to_string())].into();
    assert_eq!(stored(&walked, &account.did), only_good, "the walk stores the good record alone");
    assert_eq!(stored(&live, &account.did), only_good, "live commits store the same");
    let events = events_of(&walked, &account.did);
    let turned_bad = (Action::Delete, "turns".to_string(), String::new());
    assert_eq!(events.len(), 3, "two creates, then the delete of the record turned bad: {events:?}");
    assert_eq!(events[2], turned_bad, "a refused update deletes the stored version");
    let mut live_events = events_of(&live, &account.did);
    let mut walked_events = events;
    live_events.sort();
    walked_events.sort();
    assert_eq!(live_events, walked_events, "the same events (a walk orders them by key, a commit by op)");
    let expected: BTreeMap<&str, u64> = [("too_large", 1), ("too_deep", 2), ("not_dag_cbor", 3)].into();
    assert_eq!(refused(&walked), expected, "each refusal counted by reason");
    assert_eq!(refused(&live), expected, "and the same live");
}

#[test]
fn a_refused_record_is_no_signal() {
    let account = Account::new(32);
    let (_dir, s) = testkit::sluice_with(&format!("mode = \"signal\"\nsignals = [\"{THING}\"]\n"));
    let refused_only: RepoContents = [(format!("{THING}/float"), hostile()[3].1.clone())].into();
    let car = export_car_blocking(&account, &rev_at(1), &refused_only).unwrap();
    let repo = sluice::repo::read_car(&car, &Default::default()).unwrap();
    let outcome = s.pipeline().apply_walk(&repo, &Default::default()).unwrap();
    assert_eq!(outcome.status, sluice::store::RepoStatus::Discarded, "its only signal record is refused");
    assert!(stored(&s, &account.did).is_empty());

    let mut with_good = refused_only.clone();
    with_good.insert(format!("{THING}/good"), good(1));
    let car = export_car_blocking(&account, &rev_at(2), &with_good).unwrap();
    let repo = sluice::repo::read_car(&car, &Default::default()).unwrap();
    let outcome = s.pipeline().apply_walk(&repo, &Default::default()).unwrap();
    assert_eq!(outcome.status, sluice::store::RepoStatus::Synced, "a good signal record keeps it");
    assert_eq!(stored(&s, &account.did).into_keys().collect::<Vec<_>>(), ["good"], "and the refused one is not stored");
}

/// sluice backfilling and following a devnet, served over HTTP.
struct Running {
    net: Devnet,
    sluice: Sluice,
    base: String,
    backfill: std::sync::Arc<Backfill>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(net: Devnet) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.path = dir.path().join("data");
        testkit::on_devnet(&mut config, &net);
        (config.backfill.retry_min_ms, config.backfill.retry_max_ms) = (50, 200);
        let sluice = testkit::sluice_full(&config);
        let backfill = Backfill::new(sluice.pipeline().clone(), &config);
        let firehose = sluice::service::firehose_beside(&sluice, &config, &backfill).unwrap();
        let stop = CancellationToken::new();
        let (f, s) = (firehose.clone(), stop.clone());
        let live = tokio::spawn(async move { f.run(s).await.expect("live ingestion runs") });
        let b = backfill.clone();
        let backfilling = tokio::spawn(async move { b.run(RunMode::Forever, true).await.expect("backfill runs") });
        let (base, _) = testkit::server::serving(&sluice).await;
        let running = Running { net, sluice, base, backfill, stop, tasks: vec![live, backfilling], _dir: dir };
        testkit::wait_until("the firehose to connect", || {
            running.net.request_count("com.atproto.sync.subscribeRepos") >= 1
        })
        .await;
        running
    }

    async fn stop(self) {
        self.backfill.stop();
        self.stop.cancel();
        for task in self.tasks {
            tokio::time::timeout(LIMIT, task).await.expect("stops in time").expect("no panic");
        }
        self.net.shutdown().await;
    }

    /// Waits until sluice holds `did` at its PDS's rev.
    async fn caught_up(&self, did: &str) {
        let rev = self.net.rev(did);
        testkit::wait_until(&format!("{did} at its PDS's rev"), || {
            let state = self.sluice.store().repos().state(did).unwrap();
            state.is_some_and(|s| s.status == sluice::store::RepoStatus::Synced && s.rev == rev)
        })
        .await;
    }

    /// `GET /xrpc/{method}?query`: status and JSON.
    async fn get(&self, method: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let query = query.iter().map(|(k, v)| (*k, v.to_string())).collect();
        xrpc_get(self.base.clone(), method, query).await
    }

    /// The rkeys `listRecords` shows of `did`'s [`THING`]s.
    async fn listed(&self, did: &str) -> Vec<String> {
        let (status, page) = self.get("com.atproto.repo.listRecords", &[("repo", did), ("collection", THING)]).await;
        assert_eq!(status, 200, "{page}");
        let records = page["records"].as_array().unwrap();
        records.iter().map(|r| r["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string()).collect()
    }

    /// `sluice_records_refused_total` by reason, as `/metrics` shows it.
    async fn refused_metrics(&self) -> BTreeMap<&'static str, f64> {
        let text = testkit::metrics(&self.base).await.expect("/metrics answers");
        RecordRefusal::REASONS
            .iter()
            .map(|r| {
                let sample = format!("sluice_records_refused_total{{reason=\"{r}\"}}");
                (*r, testkit::metric(&text, &sample).unwrap_or_else(|| panic!("{sample} in /metrics")))
            })
            .collect()
    }
}

/// `GET {base}/xrpc/{method}?query`: status and JSON.
async fn xrpc_get(base: String, method: &str, query: Vec<(&str, String)>) -> (u16, Value) {
    let url = format!("{base}/xrpc/{method}");
    let res = tokio::time::timeout(LIMIT, testkit::http().get(url).query(&query).send())
        .await
        .expect("answered in time")
        .expect("answered");
    (res.status().as_u16(), res.json().await.expect("a JSON answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_are_refused_alike_by_the_backfill_and_the_firehose() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let backfilled = net.create_account(AccountSpec { seed: 1, ..Default::default() });
    let followed = net.create_account(AccountSpec { seed: 2, ..Default::default() });
    for did in [&backfilled, &followed] {
        net.put_record_cbor(did, THING, "keep", good(1)).unwrap();
    }
    for (rkey, bytes, _) in hostile() {
        net.put_record_cbor(&backfilled, THING, rkey, bytes).unwrap();
    }
    let running = Running::start(net).await;
    running.caught_up(&backfilled).await;
    running.caught_up(&followed).await;
    let by_backfill = running.refused_metrics().await;
    let expected: BTreeMap<&str, f64> = [("too_large", 1.0), ("too_deep", 2.0), ("not_dag_cbor", 2.0)].into();
    assert_eq!(by_backfill, expected, "the backfill refuses each hostile record, counted by reason");
    assert_eq!(running.listed(&backfilled).await, ["keep"], "the good record is listed");

    for (rkey, bytes, _) in hostile() {
        running.net.put_record_cbor(&followed, THING, rkey, bytes).unwrap();
    }
    running.net.put_record_cbor(&followed, THING, "after", good(2)).unwrap();
    running.caught_up(&followed).await;
    let both = running.refused_metrics().await;
    let doubled: BTreeMap<&str, f64> = expected.iter().map(|(r, n)| (*r, n * 2.0)).collect();
    assert_eq!(both, doubled, "live commits refuse the same records for the same reasons");
    assert_eq!(running.listed(&followed).await, ["keep", "after"], "the commits' other records apply");
    let log = running.sluice.store().log().from(0, usize::MAX).unwrap();
    let after_is_live = log.iter().any(|(_, e)| matches!(e, StoredEvent::Record(r) if r.rkey == "after" && r.live));
    assert!(after_is_live, "the records came live, the commits applied (no resync backfilled them)");
    let stored = |did: &str| -> Vec<String> { stored(&running.sluice, did).into_keys().collect() };
    assert_eq!(stored(&backfilled), ["keep"], "the backfill stores the good record alone");
    assert_eq!(stored(&followed), ["after", "keep"], "live, the good records alone");
    for did in [&backfilled, &followed] {
        let events = events_of(&running.sluice, did);
        assert!(events.iter().all(|(_, rkey, _)| rkey == "keep" || rkey == "after"), "no event of a refused record");
        for (rkey, _, _) in hostile() {
            let (status, answer) = running
                .get("com.atproto.repo.getRecord", &[("repo", did), ("collection", THING), ("rkey", rkey)])
                .await;
            assert_eq!((status, answer["error"].as_str()), (400, Some("RecordNotFound")), "{rkey}: {answer}");
        }
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_record_that_does_not_render_fails_no_read() {
    let (_dir, sluice) = testkit::sluice_with("mode = \"full\"\n");
    let account = Account::new(7);
    let contents: RepoContents = [(format!("{THING}/a"), good(1)), (format!("{THING}/c"), good(3))].into();
    let car = sluice_devnet::export_car(&account, &rev_at(1), &contents).await.unwrap();
    let repo = sluice::repo::read_car(&car, &Default::default()).unwrap();
    sluice.pipeline().apply_walk(&repo, &Default::default()).unwrap();
    // What an older sluice stored before the rule: written straight into the store.
    let deep = nested_arrays(100_000);
    let put = RecordWrite::Put {
        collection: THING.into(),
        rkey: "b".into(),
        cid: testkit::cid_of(&deep).to_bytes(),
        body: deep.into(),
        existed: false,
    };
    sluice.store().commit(RepoChange { did: account.did.clone(), records: vec![put], ..Default::default() }).unwrap();

    let (base, _) = testkit::server::serving(&sluice).await;
    let get = |method: &'static str, query: Vec<(&'static str, String)>| xrpc_get(base.clone(), method, query);
    let did = account.did.clone();
    let q = |pairs: &[(&'static str, &str)]| pairs.iter().map(|(k, v)| (*k, v.to_string())).collect::<Vec<_>>();
    let (status, page) =
        get("com.atproto.repo.listRecords", q(&[("repo", &did), ("collection", THING), ("reverse", "true")])).await;
    assert_eq!(status, 200, "{page}");
    let uris: Vec<&str> = page["records"].as_array().unwrap().iter().map(|r| r["uri"].as_str().unwrap()).collect();
    assert_eq!(uris, [format!("at://{did}/{THING}/a"), format!("at://{did}/{THING}/c")], "the bad record is left out");
    let (status, page) = get(
        "com.atproto.repo.listRecords",
        q(&[("repo", &did), ("collection", THING), ("reverse", "true"), ("limit", "2")]),
    )
    .await;
    assert_eq!((status, page["cursor"].as_str()), (200, Some("b")), "the cursor moves past it: {page}");
    assert_eq!(page["records"].as_array().unwrap().len(), 1, "{page}");
    let (status, answer) =
        get("com.atproto.repo.getRecord", q(&[("repo", &did), ("collection", THING), ("rkey", "b")])).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("RecordNotFound")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("record rule"), "the message says why: {answer}");
    let (status, _) =
        get("com.atproto.repo.getRecord", q(&[("repo", &did), ("collection", THING), ("rkey", "a")])).await;
    assert_eq!(status, 200, "the good records are served");
    let metrics = testkit::metrics(&base).await.unwrap();
    assert_eq!(testkit::metric(&metrics, "sluice_records_unreadable_total"), Some(3.0), "each read that left it out");
}
