//! The index queries over HTTP (127.0.0.1 only): `dev.sluice.queryIndex`, `countIndex`,
//! `describeIndexes` and an index's own `method`, on the three indexes of the issue, with
//! records committed through the pipeline as live commits are. Checks the order, bounds,
//! paging by cursor while newer records arrive, handles, hidden repos, and every error by
//! status and name.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::filter::Filter;
use sluice::handlers::value::json_to_cbor;
use sluice::pipeline::RecordOp;
use sluice::store::{RepoState, RepoStatus};
use sluice::{Config, Sluice};
use sluice_testkit as testkit;

/// The README's three indexes (`filters/indexes.toml`) over a filter that stores their
/// collections.
const FILTER: &str = concat!(
    "mode = \"full\"\ncollections = [\"xyz.statusphere.*\", \"app.bsky.feed.like\"]\n",
    include_str!("../filters/indexes.toml")
);

const ALICE: &str = "did:plc:alice";
const BOB: &str = "did:plc:bob";
const CAROL: &str = "did:plc:carol";
const POST: &str = "at://did:plc:alice/app.bsky.feed.post/3kpost";

struct Setup {
    sluice: Sluice,
    base: String,
    http: reqwest::Client,
    rev: u64,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new(filter: &str, build_batch: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.index_build_batch = build_batch;
        let filter = Filter::from_toml(filter, "test").unwrap();
        let sluice = Sluice::builder().config(config).data_dir(dir.path()).filter(filter).open().unwrap();
        let (base, _) = testkit::server::serving(&sluice).await;
        Setup { sluice, base, http: testkit::http(), rev: 0, _dir: dir }
    }

    /// Commits one record of `did` as a live commit would.
    fn put(&mut self, did: &str, collection: &str, rkey: &str, value: Value) {
        self.rev += 1;
        let rev = format!("3l{:011}", self.rev);
        let bytes = json_to_cbor(&value).unwrap();
        let op = RecordOp::Put {
            collection: collection.into(),
            rkey: rkey.into(),
            cid: testkit::cid_of(&bytes),
            bytes: bytes.into(),
        };
        let pipeline = self.sluice.pipeline();
        pipeline
            .apply_commit(did, testkit::cid_of(rev.as_bytes()), &rev, testkit::cid_of(b"d"), vec![op], None)
            .unwrap();
    }

    fn status(&mut self, did: &str, rkey: &str, status: &str, at: &str) {
        self.put(
            did,
            "xyz.statusphere.status",
            rkey,
            json!({"$type": "xyz.statusphere.status", "status": status, "createdAt": at}),
        );
    }

    fn like(&mut self, did: &str, rkey: &str, at: &str) {
        let value = json!({"$type": "app.bsky.feed.like", "subject": {"uri": POST, "cid": testkit::cid_of(b"post").to_string()}, "createdAt": at});
        self.put(did, "app.bsky.feed.like", rkey, value);
    }

    async fn get(&self, method: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let res = self.http.get(format!("{}/xrpc/{method}", self.base)).query(query).send().await.unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    async fn ok(&self, method: &str, query: &[(&str, &str)]) -> Value {
        let (status, body) = self.get(method, query).await;
        assert_eq!(status, 200, "{method} {query:?}: {body}");
        body
    }

    fn settle(&self) {
        testkit::wait_for_index_builds(self.sluice.store(), Duration::from_secs(30));
    }
}

/// The `uri`s of an answer's records.
fn uris(answer: &Value) -> Vec<String> {
    answer["records"].as_array().unwrap().iter().map(|r| r["uri"].as_str().unwrap().to_string()).collect()
}

fn uri(did: &str, collection: &str, rkey: &str) -> String {
    format!("at://{did}/{collection}/{rkey}")
}

#[tokio::test]
async fn queries_answer_in_order_within_bounds_and_hide_what_is_not_shown() {
    let mut s = Setup::new(FILTER, 2048).await;
    s.status(ALICE, "a1", "👍", "2024-01-01T10:00:00Z");
    s.status(ALICE, "a2", "🙂", "2024-01-02T10:00:00Z");
    s.status(BOB, "b1", "👍", "2024-01-03T12:00:00+02:00");
    s.status(CAROL, "c1", "👍", "2999-01-01T00:00:00Z");
    for (i, did) in [ALICE, BOB, CAROL].iter().enumerate() {
        s.like(did, &format!("l{i}"), "2024-01-05T00:00:00Z");
    }
    s.settle();
    let st = |did, rkey| uri(did, "xyz.statusphere.status", rkey);

    // Newest first by the sort value, oldest first with reverse; bounds and limit.
    let q = [("index", "statuses_by_status"), ("key", "👍")];
    let newest = s.ok("dev.sluice.queryIndex", &q).await;
    assert_eq!(uris(&newest), [st(CAROL, "c1"), st(BOB, "b1"), st(ALICE, "a1")]);
    assert!(newest.get("cursor").is_none(), "one page holds them all: {newest}");
    let record = &newest["records"][1];
    assert_eq!((record["did"].as_str(), record["value"]["status"].as_str()), (Some(BOB), Some("👍")));
    assert!(record["cid"].as_str().is_some_and(|c| c.starts_with("bafy")), "{record}");
    let oldest = s.ok("dev.sluice.queryIndex", &[q[0], q[1], ("reverse", "true")]).await;
    assert_eq!(uris(&oldest), [st(ALICE, "a1"), st(BOB, "b1"), st(CAROL, "c1")]);
    let bounded = [q[0], q[1], ("since", "2024-01-02T00:00:00Z"), ("until", "2024-01-03T10:00:00Z")];
    assert_eq!(
        uris(&s.ok("dev.sluice.queryIndex", &bounded).await),
        [st(BOB, "b1")],
        "until is inclusive, offsets normalised"
    );
    let one = s.ok("dev.sluice.queryIndex", &[q[0], q[1], ("limit", "1")]).await;
    assert_eq!(uris(&one), [st(CAROL, "c1")]);
    let next = one["cursor"].as_str().expect("a cursor when the page is full");
    let rest = s.ok("dev.sluice.queryIndex", &[q[0], q[1], ("cursor", next)]).await;
    assert_eq!(uris(&rest), [st(BOB, "b1"), st(ALICE, "a1")]);
    let mine = s.ok("dev.sluice.queryIndex", &[q[0], q[1], ("did", BOB)]).await;
    assert_eq!(uris(&mine), [st(BOB, "b1")]);

    // The app's own method is the same query.
    let own = s.ok("xyz.statusphere.getStatuses", &[("key", "👍")]).await;
    assert_eq!(own, newest);

    // sortAt: a date in the future does not pin a record on top of the latest statuses.
    let latest = s.ok("dev.sluice.queryIndex", &[("index", "latest_status")]).await;
    assert_eq!(
        uris(&latest),
        [st(CAROL, "c1"), st(BOB, "b1"), st(ALICE, "a2")],
        "each repo's newest, sortAt bounds the future"
    );
    s.status(BOB, "b2", "🙂", "2024-06-01T00:00:00Z");
    let latest = s.ok("dev.sluice.queryIndex", &[("index", "latest_status")]).await;
    assert_eq!(uris(&latest), [st(CAROL, "c1"), st(BOB, "b2"), st(ALICE, "a2")]);
    let bobs = s.ok("dev.sluice.queryIndex", &[("index", "latest_status"), ("did", BOB)]).await;
    assert_eq!(uris(&bobs), [st(BOB, "b2")], "this user's latest status");

    // Counts are exact.
    let count = s.ok("dev.sluice.countIndex", &[("index", "likes_by_subject"), ("key", POST)]).await;
    assert_eq!(count, json!({"count": 3}));

    // A verified handle is given; a deactivated repo's records are not answered, and come back
    // when it is active again.
    s.sluice.store().handles().set_verdict(BOB, Some("bob.test".into()), true).unwrap();
    let newest = s.ok("dev.sluice.queryIndex", &q).await;
    assert_eq!(newest["records"][1]["handle"], "bob.test");
    assert!(newest["records"][0].get("handle").is_none(), "no handle where none is verified");
    let state = s.sluice.store().repos().state(CAROL).unwrap().unwrap();
    let gone = RepoState { status: RepoStatus::Gone, error: Some("deactivated".into()), ..state.clone() };
    s.sluice.store().set_states(&[(CAROL.to_string(), gone)], None).unwrap();
    assert_eq!(uris(&s.ok("dev.sluice.queryIndex", &q).await), [st(BOB, "b1"), st(ALICE, "a1")]);
    let likes = [("index", "likes_by_subject"), ("key", POST)];
    assert_eq!(s.ok("dev.sluice.countIndex", &likes).await, json!({"count": 2}), "nor counted");
    assert_eq!(s.ok("dev.sluice.queryIndex", &likes).await["records"].as_array().unwrap().len(), 2);
    let carols = s.ok("dev.sluice.queryIndex", &[likes[0], likes[1], ("did", CAROL)]).await;
    assert_eq!(carols, json!({"records": []}), "a hidden repo's own page is empty, with no cursor");
    s.sluice.store().set_states(&[(CAROL.to_string(), state)], None).unwrap();
    let carols = s.ok("dev.sluice.queryIndex", &[likes[0], likes[1], ("did", CAROL)]).await;
    assert_eq!(carols["records"].as_array().unwrap().len(), 1, "and shown again once active");
    assert_eq!(uris(&s.ok("dev.sluice.queryIndex", &q).await).len(), 3);
    assert_eq!(s.ok("dev.sluice.countIndex", &likes).await, json!({"count": 3}));

    // describeIndexes: definitions, state and totals.
    let described = s.ok("dev.sluice.describeIndexes", &[]).await;
    let likes = described["indexes"].as_array().unwrap().iter().find(|i| i["name"] == "likes_by_subject").unwrap();
    assert_eq!(likes["state"], "ready");
    assert_eq!((likes["entries"].as_i64(), likes["skipped"].as_i64()), (Some(3), Some(0)));
    assert_eq!((likes["key"].clone(), likes["count"].clone()), (json!(["subject.uri"]), json!(true)));

    // /health and /metrics say the same.
    let health: Value = s.http.get(format!("{}/health", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["indexes"]["likes_by_subject"], json!({"state": "ready", "entries": 3}));
    s.status(ALICE, "bad", "👍", "not a date");
    let metrics = testkit::metrics(&s.base).await.unwrap();
    assert_eq!(testkit::metric(&metrics, "sluice_index_entries{index=\"likes_by_subject\"}"), Some(3.0));
    assert_eq!(testkit::metric(&metrics, "sluice_index_building{index=\"likes_by_subject\"}"), Some(0.0));
    assert_eq!(testkit::metric(&metrics, "sluice_index_build_counting{index=\"likes_by_subject\"}"), Some(0.0));
    let skipped = "sluice_index_skips_total{index=\"statuses_by_status\",reason=\"wrong_type\"}";
    assert_eq!(testkit::metric(&metrics, skipped), Some(1.0), "{metrics}");
    assert_eq!(testkit::metric(&metrics, "sluice_index_skipped_records{index=\"latest_status\"}"), Some(1.0));
}

#[tokio::test]
async fn errors_by_status_and_name() {
    let mut s = Setup::new(FILTER, 2048).await;
    s.status(ALICE, "a1", "👍", "2024-01-01T10:00:00Z");
    s.settle();
    // (method, parameters, error name, what its message names)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: [Case; 9] = [
        ("dev.sluice.queryIndex", vec![("index", "nope")], "IndexNotFound", "nope"),
        ("dev.sluice.countIndex", vec![("index", "nope")], "IndexNotFound", "nope"),
        ("dev.sluice.queryIndex", vec![], "InvalidRequest", "index"),
        ("dev.sluice.queryIndex", vec![("index", "statuses_by_status")], "InvalidRequest", "key"),
        (
            "dev.sluice.queryIndex",
            vec![("index", "statuses_by_status"), ("key", "a"), ("key", "b")],
            "InvalidRequest",
            "key",
        ),
        ("dev.sluice.queryIndex", vec![("index", "latest_status"), ("limit", "101")], "InvalidRequest", "limit"),
        ("dev.sluice.queryIndex", vec![("index", "latest_status"), ("since", "soon")], "InvalidRequest", "since"),
        ("dev.sluice.queryIndex", vec![("index", "latest_status"), ("cursor", "zz")], "InvalidRequest", "cursor"),
        ("dev.sluice.countIndex", vec![("index", "latest_status")], "InvalidRequest", "count"),
    ];
    for (method, query, error, names) in cases {
        let (status, body) = s.get(method, &query).await;
        assert_eq!((status, body["error"].as_str()), (400, Some(error)), "{method} {query:?}: {body}");
        assert!(body["message"].as_str().unwrap().contains(names), "{method} {query:?}: {body}");
    }
    let (status, body) = s.get("xyz.statusphere.nothing", &[]).await;
    assert_eq!((status, body["error"].as_str()), (501, Some("MethodNotImplemented")));
}

/// An index added by a save answers `IndexNotReady` (with its progress) while it builds, then
/// answers; `describeIndexes` shows it building.
#[tokio::test]
async fn a_building_index_is_not_ready_until_built() {
    let mut s = Setup::new(FILTER, 1).await;
    for i in 0..300 {
        s.status(ALICE, &format!("s{i:04}"), "👍", "2024-01-01T10:00:00Z");
    }
    s.settle();
    let added = format!("{FILTER}\n[indexes.by_rkey]\ncollection = \"xyz.statusphere.status\"\nsort = \"rkey\"\n");
    // Put in force at once (as the filter thread does on a save); the build then reads one
    // record a batch, 300 batches, in the background.
    let filter = Filter::from_toml(&added, "test").unwrap();
    s.sluice.store().set_indexes(&filter.indexes).unwrap();
    let (status, body) = s.get("dev.sluice.queryIndex", &[("index", "by_rkey")]).await;
    if status == 200 {
        // The build (one record a batch) finished first: nothing to see on this machine.
        assert_eq!(uris(&body).len(), 50);
    } else {
        assert_eq!((status, body["error"].as_str()), (400, Some("IndexNotReady")), "{body}");
        assert!(body["message"].as_str().unwrap().contains("building"), "{body}");
        let described = s.ok("dev.sluice.describeIndexes", &[]).await;
        let by_rkey = described["indexes"].as_array().unwrap().iter().find(|i| i["name"] == "by_rkey").unwrap().clone();
        assert!(by_rkey["state"] == "building" || by_rkey["state"] == "ready", "{by_rkey}");
    }
    s.sluice.pipeline().filter().store(filter);
    s.settle();
    let page = s.ok("dev.sluice.queryIndex", &[("index", "by_rkey"), ("limit", "100")]).await;
    assert_eq!(uris(&page).len(), 100);
    assert_eq!(uris(&page)[0], uri(ALICE, "xyz.statusphere.status", "s0299"));
}

/// Paging by cursor while newer records arrive: every record there from the start comes
/// exactly once, in order.
#[tokio::test]
async fn paging_while_records_arrive_returns_each_once_in_order() {
    let mut s = Setup::new(FILTER, 2048).await;
    let mut present = Vec::new();
    for i in 0..40 {
        let did = [ALICE, BOB, CAROL][i % 3];
        let rkey = format!("p{i:03}");
        s.status(did, &rkey, "👍", &format!("2024-02-01T00:{:02}:00Z", i));
        present.push(uri(did, "xyz.statusphere.status", &rkey));
    }
    s.settle();
    present.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for round in 0..100 {
        let mut q = vec![("index", "statuses_by_status"), ("key", "👍"), ("limit", "7")];
        if let Some(c) = &cursor {
            q.push(("cursor", c));
        }
        let page = s.ok("dev.sluice.queryIndex", &q).await;
        seen.extend(uris(&page));
        // Newer records arrive between pages (ahead of the cursor, in the part already paged).
        s.status(BOB, &format!("new{round:03}"), "👍", &format!("2024-03-01T00:{:02}:00Z", round % 60));
        match page["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let seen_present: Vec<_> = seen.iter().filter(|u| present.contains(u)).cloned().collect();
    assert_eq!(seen_present, present, "each record present throughout, once and in order");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), seen.len(), "no record twice");
}

/// An account with more likes than a step (here 4) that is deactivated, then active again:
/// `countIndex` answers the exact count at once, while the index thread moves the account's
/// counts in steps in the background, and `/metrics` shows the move until it is done.
#[tokio::test]
async fn a_big_account_hidden_and_shown_is_counted_exactly_while_its_counts_move() {
    let mut s = Setup::new(FILTER, 4).await;
    for i in 0..30 {
        s.like(ALICE, &format!("l{i:02}"), "2024-01-05T00:00:00Z");
    }
    s.like(BOB, "l0", "2024-01-05T00:00:00Z");
    s.settle();
    let likes = [("index", "likes_by_subject"), ("key", POST)];
    assert_eq!(s.ok("dev.sluice.countIndex", &likes).await, json!({"count": 31}));
    let index = s.sluice.store().index_registry().indexes["likes_by_subject"].clone();
    let moved = || async {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while index.moving_repos() > 0 {
            assert!(std::time::Instant::now() < deadline, "the counts were not moved");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let metrics = testkit::metrics(&s.base).await.unwrap();
        let moving = testkit::metric(&metrics, "sluice_index_moving_repos{index=\"likes_by_subject\"}");
        assert_eq!(moving, Some(0.0), "{metrics}");
    };

    let state = s.sluice.store().repos().state(ALICE).unwrap().unwrap();
    let gone = RepoState { status: RepoStatus::Gone, error: Some("deactivated".into()), ..state.clone() };
    s.sluice.store().set_states(&[(ALICE.to_string(), gone)], None).unwrap();
    assert_eq!(s.ok("dev.sluice.countIndex", &likes).await, json!({"count": 1}), "exact at once");
    moved().await;
    assert_eq!(s.ok("dev.sluice.countIndex", &likes).await, json!({"count": 1}), "and once moved");

    s.sluice.store().set_states(&[(ALICE.to_string(), state)], None).unwrap();
    assert_eq!(s.ok("dev.sluice.countIndex", &likes).await, json!({"count": 31}));
    moved().await;
    assert_eq!(s.ok("dev.sluice.countIndex", &likes).await, json!({"count": 31}));
}
