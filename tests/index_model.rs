//! The declarative indexes against a brute-force model (issue 32).
//!
//! Each case drives random creates, updates (key and sort changes, arrays growing and
//! shrinking, fields missing or of the wrong type), deletes, account deletions and
//! deactivations over a few repos through the pipeline (`apply_commit`, `remove_repo`) and
//! account events (`set_states`), commits of one op or of several, with four indexes in the filter
//! from the start (a key, a fanned-out key, a two-part key sorted by rkey, each repo's latest).
//! Halfway, an index is added (built in the background while commits go on), and the store is
//! closed and opened again while it may still be building. At the end every query, in both
//! orders and paged by cursor three at a time, and every count and total, equals what the model
//! computes from the records stored, with rules written from the issue, not from the code: a
//! count leaves out the entries of repos not answered (deactivated, deleted), as queries do.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice::filter::Filter;
use sluice::indexes::encode;
use sluice::pipeline::RecordOp;
use sluice::store::{PageRange, Phase, RecordWrite, RepoChange, RepoState, RepoStatus, Store};
use sluice::{Sluice, handlers::value::json_to_cbor};
use sluice_testkit as testkit;

const COLLECTION: &str = "xyz.statusphere.status";
const DIDS: [&str; 3] = ["did:plc:aaaa", "did:plc:bbbb", "did:plc:cccc"];
/// Datetimes as records write them, with the instant each names (µs): offsets differ.
const TIMES: [(&str, i64); 5] = [
    ("2024-01-01T00:00:00Z", 1_704_067_200_000_000),
    ("2024-01-01T02:00:00+02:00", 1_704_067_200_000_000),
    ("2024-01-01T00:00:00.5Z", 1_704_067_200_500_000),
    ("2023-12-31T23:00:00-05:00", 1_704_081_600_000_000),
    ("2020-06-01T12:00:00.000Z", 1_591_012_800_000_000),
];

const BASE: &str = r#"
mode = "full"
collections = ["xyz.statusphere.*"]
[indexes.by_status]
collection = "xyz.statusphere.status"
key = ["status"]
sort = "createdAt"
count = true
[indexes.by_lang]
collection = "xyz.statusphere.status"
key = ["langs[]"]
sort = "createdAt"
count = true
[indexes.pairs]
collection = "xyz.statusphere.status"
key = ["status", "langs[]"]
sort = "rkey"
[indexes.latest]
collection = "xyz.statusphere.status"
key = []
sort = "createdAt"
per_repo = "latest"
count = true
"#;

const ADDED: &str = r#"
[indexes.late]
collection = "xyz.statusphere.status"
key = ["status"]
sort = "rkey"
count = true
"#;

/// A record as generated: each field may be missing or of the wrong type.
fn record() -> impl Strategy<Value = Value> {
    let status = prop_oneof![
        Just(json!("👍")),
        Just(json!("🙂")),
        Just(json!("x")),
        Just(json!(5)),
        Just(json!({"not": "a key"})),
        Just(Value::Null)
    ];
    let created = prop_oneof![(0..TIMES.len()).prop_map(|i| json!(TIMES[i].0)), Just(json!(7)), Just(Value::Null)];
    let langs = prop_oneof![
        proptest::sample::subsequence(vec!["en", "fr", "de"], 0..=3).prop_map(|l| json!(l)),
        Just(json!([{"x": 1}, "en"])),
        Just(Value::Null)
    ];
    (status, created, langs).prop_map(|(status, created, langs)| {
        let mut r = json!({"$type": COLLECTION});
        for (name, v) in [("status", status), ("createdAt", created), ("langs", langs)] {
            if !v.is_null() {
                r[name] = v;
            }
        }
        r
    })
}

/// A live commit's op putting `value` at `rkey` of the test collection.
fn put_op(rkey: String, value: &Value) -> RecordOp {
    let bytes = json_to_cbor(value).unwrap();
    RecordOp::Put { collection: COLLECTION.into(), rkey, cid: testkit::cid_of(&bytes), bytes: bytes.into() }
}

#[derive(Debug, Clone)]
enum Op {
    /// Create or update (repo, rkey).
    Put(usize, usize, Value),
    Delete(usize, usize),
    /// One commit of puts (`Some`) and deletes (`None`) of several of a repo's records.
    Several(usize, BTreeMap<usize, Option<Value>>),
    /// The account is deleted: every record goes.
    DeleteAccount(usize),
    /// The account is deactivated (records kept, not answered) or active again.
    Deactivate(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..DIDS.len(), 0..5usize, record()).prop_map(|(d, r, v)| Op::Put(d, r, v)),
        2 => (0..DIDS.len(), 0..5usize).prop_map(|(d, r)| Op::Delete(d, r)),
        2 => (0..DIDS.len(), proptest::collection::btree_map(0..5usize, proptest::option::of(record()), 2..4))
            .prop_map(|(d, ops)| Op::Several(d, ops)),
        1 => (0..DIDS.len()).prop_map(Op::DeleteAccount),
        1 => (0..DIDS.len(), any::<bool>()).prop_map(|(d, off)| Op::Deactivate(d, off)),
    ]
}

/// Builds read two records keys a batch, so that a build takes many batches and commits and
/// the reopening fall between them.
fn config() -> sluice::Config {
    let mut config = sluice::Config::default();
    config.storage.index_build_batch = 2;
    config
}

/// The harness: a sluice over a data dir, the model and a rev counter.
struct Run {
    dir: tempfile::TempDir,
    sluice: Option<Sluice>,
    model: BTreeMap<(String, String), Value>,
    /// Repos whose records are not answered (deactivated, deleted): their entries stand, but
    /// counts leave them out.
    hidden: BTreeSet<String>,
    rev: u64,
}

impl Run {
    fn open(dir: tempfile::TempDir, filter: &str) -> Run {
        let filter = Filter::from_toml(filter, "test").unwrap();
        let sluice = Sluice::builder().config(config()).data_dir(dir.path()).filter(filter).open().unwrap();
        Run { dir, sluice: Some(sluice), model: BTreeMap::new(), hidden: BTreeSet::new(), rev: 0 }
    }

    fn sluice(&self) -> &Sluice {
        self.sluice.as_ref().unwrap()
    }

    /// Closes the store and opens it again (a build under way resumes from its position).
    fn reopen(&mut self, filter: &str) {
        drop(self.sluice.take());
        let filter = Filter::from_toml(filter, "test").unwrap();
        self.sluice = Some(Sluice::builder().config(config()).data_dir(self.dir.path()).filter(filter).open().unwrap());
    }

    fn next_rev(&mut self) -> String {
        self.rev += 1;
        format!("3l{:011}", self.rev)
    }

    fn apply(&mut self, op: &Op) {
        let rev = self.next_rev();
        let (commit, data) = (testkit::cid_of(rev.as_bytes()), testkit::cid_of(b"data"));
        let pipeline = self.sluice.as_ref().unwrap().pipeline();
        match op {
            Op::Put(d, r, value) => {
                pipeline
                    .apply_commit(DIDS[*d], commit, &rev, data, vec![put_op(format!("r{r}"), value)], None)
                    .unwrap();
                self.model.insert((DIDS[*d].into(), format!("r{r}")), value.clone());
                // A commit leaves its repo synced.
                self.hidden.remove(DIDS[*d]);
            }
            Op::Delete(d, r) => {
                let delete = RecordOp::Delete { collection: COLLECTION.into(), rkey: format!("r{r}") };
                pipeline.apply_commit(DIDS[*d], commit, &rev, data, vec![delete], None).unwrap();
                self.model.remove(&(DIDS[*d].into(), format!("r{r}")));
                self.hidden.remove(DIDS[*d]);
            }
            Op::Several(d, several) => {
                let mut ops = Vec::new();
                for (r, value) in several {
                    let (rkey, key) = (format!("r{r}"), (DIDS[*d].to_string(), format!("r{r}")));
                    match value {
                        Some(value) => {
                            ops.push(put_op(rkey, value));
                            self.model.insert(key, value.clone());
                        }
                        None => {
                            ops.push(RecordOp::Delete { collection: COLLECTION.into(), rkey });
                            self.model.remove(&key);
                        }
                    }
                }
                pipeline.apply_commit(DIDS[*d], commit, &rev, data, ops, None).unwrap();
                self.hidden.remove(DIDS[*d]);
            }
            Op::DeleteAccount(d) => {
                let state = RepoState { status: RepoStatus::Gone, error: Some("deleted".into()), ..Default::default() };
                pipeline.remove_repo(DIDS[*d], &rev, state, None).unwrap();
                self.model.retain(|(did, _), _| did != DIDS[*d]);
                self.hidden.insert(DIDS[*d].into());
            }
            Op::Deactivate(d, off) => {
                let store = self.sluice().store();
                let Some(mut state) = store.repos().state(DIDS[*d]).unwrap() else { return };
                (state.status, state.error) = match off {
                    true => (RepoStatus::Gone, Some("deactivated".into())),
                    false => (RepoStatus::Synced, None),
                };
                store.set_states(&[(DIDS[*d].to_string(), state)], None).unwrap();
                match off {
                    true => self.hidden.insert(DIDS[*d].into()),
                    false => self.hidden.remove(DIDS[*d]),
                };
            }
        }
    }

    /// Waits until the indexes in force meet `what` (the filter's edits are put in force by
    /// a thread of their own).
    fn wait_for(&self, what: impl Fn(&sluice::store::Registry) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !what(&self.sluice().store().index_registry()) {
            assert!(Instant::now() < deadline, "the filter's indexes were not put in force");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until no index is building.
    fn settle(&self) {
        testkit::wait_for_index_builds(self.sluice().store(), Duration::from_secs(30));
    }
}

/// An entry as the model has it: (sort, did, rkey).
type ModelEntry = (Vec<u8>, String, String);

/// What the model says an index holds: key tuple -> entries, and the number of records skipped.
struct Expected {
    entries: BTreeMap<Vec<u8>, BTreeSet<ModelEntry>>,
    records: i64,
    skipped: i64,
}

/// A key value's text, as the issue says values are kept: strings (datetimes normalised),
/// integers; objects and nulls are not values.
fn key_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(TIMES.iter().find(|(t, _)| t == s).map_or(s.clone(), |(_, us)| {
            chrono::DateTime::from_timestamp_micros(*us).unwrap().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
        })),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The values a key path reaches (`langs[]` fans out; elements that are not values are passed
/// over).
fn key_values(record: &Value, path: &str) -> Vec<String> {
    let mut out: Vec<String> = match path.strip_suffix("[]") {
        Some(array) => record[array].as_array().map_or(vec![], |a| a.iter().filter_map(key_text).collect()),
        None => key_text(&record[path]).into_iter().collect(),
    };
    out.sort();
    out.dedup();
    out
}

/// A record's entries in an index with `key` paths and `sort` ("createdAt" or "rkey"):
/// `None` when it is skipped.
fn record_entries(record: &Value, rkey: &str, key: &[&str], sort: &str) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let sort = match sort {
        "rkey" => encode::ordered_text(rkey),
        _ => {
            let text = record["createdAt"].as_str()?;
            encode::ordered_i64(TIMES.iter().find(|(t, _)| *t == text)?.1).to_vec()
        }
    };
    let mut tuples: Vec<Vec<String>> = vec![vec![]];
    for path in key {
        let values = key_values(record, path);
        if values.is_empty() {
            return None;
        }
        tuples =
            tuples.iter().flat_map(|t| values.iter().map(move |v| [t.clone(), vec![v.clone()]].concat())).collect();
    }
    Some((sort, tuples.iter().map(|t| encode::key_tuple(t)).collect()))
}

fn expected(model: &BTreeMap<(String, String), Value>, key: &[&str], sort: &str, latest: bool) -> Expected {
    let mut out = Expected { entries: BTreeMap::new(), records: 0, skipped: 0 };
    // Per repo: its newest record's (sort, rkey, key tuples).
    type Newest = (Vec<u8>, String, Vec<Vec<u8>>);
    let mut newest: BTreeMap<&str, Newest> = BTreeMap::new();
    for ((did, rkey), record) in model {
        let Some((sort, keys)) = record_entries(record, rkey, key, sort) else {
            out.skipped += 1;
            continue;
        };
        out.records += 1;
        if latest {
            let candidate = (sort, rkey.clone(), keys);
            match newest.get(did.as_str()) {
                Some(n) if (&n.0, &n.1) >= (&candidate.0, &candidate.1) => {}
                _ => {
                    newest.insert(did, candidate);
                }
            }
        } else {
            for k in keys {
                out.entries.entry(k).or_default().insert((sort.clone(), did.clone(), rkey.clone()));
            }
        }
    }
    for (did, (sort, rkey, keys)) in newest {
        for k in keys {
            out.entries.entry(k).or_default().insert((sort.clone(), did.to_string(), rkey.clone()));
        }
    }
    out
}

/// Checks one index against the model: every key's entries in both orders, paged three at a
/// time by cursor; counts; totals.
fn check(run: &Run, name: &str, key: &[&str], sort: &str, latest: bool, counted: bool) {
    check_store(run.sluice().store(), &run.model, &run.hidden, name, key, sort, latest, counted)
}

#[allow(clippy::too_many_arguments)]
fn check_store(
    store: &Store,
    model: &BTreeMap<(String, String), Value>,
    hidden: &BTreeSet<String>,
    name: &str,
    key: &[&str],
    sort: &str,
    latest: bool,
    counted: bool,
) {
    let want = expected(model, key, sort, latest);
    let index = store.index_registry().indexes.get(name).cloned().unwrap_or_else(|| panic!("index {name} in force"));
    let (_, progress) = store.index_progress().remove(name).unwrap();
    assert_eq!(progress.building, None, "{name} is ready");
    let total: usize = want.entries.values().map(BTreeSet::len).sum();
    assert_eq!(progress.entries, total as i64, "{name}: entries");
    assert_eq!((progress.records, progress.skipped), (want.records, want.skipped), "{name}: records, skipped");
    let mut keys: Vec<Vec<u8>> = want.entries.keys().cloned().collect();
    keys.push(encode::key_tuple(&vec!["absent"; key.len()]));
    for k in keys {
        let expect: Vec<(String, String)> =
            want.entries.get(&k).map_or(vec![], |e| e.iter().map(|(_, d, r)| (d.clone(), r.clone())).collect());
        let repos = [None].into_iter().chain(DIDS.map(Some));
        for (repo, ascending) in repos.flat_map(|r| [(r, true), (r, false)]) {
            let mut got = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let range = PageRange { ascending, after: after.as_deref(), repo, ..Default::default() };
                let page = index.page(&k, &range, 3).unwrap();
                got.extend(page.iter().map(|h| (h.did.clone(), h.rkey.clone())));
                for hit in &page {
                    // An entry carries the record as stored now (these records are all short
                    // enough), rewritten by every update; a `per_repo = "latest"` entry moved
                    // back to an older record by a delete carries none, and a repo's page reads
                    // its records from `records`. Never an older version.
                    let stored = store.records().get(&hit.did, COLLECTION, &hit.rkey).unwrap();
                    let what = format!("{name}: the record {}/{} an entry carries", hit.did, hit.rkey);
                    match (latest, repo) {
                        (_, Some(_)) => assert_eq!(hit.record, None, "{what}"),
                        (true, None) => assert!(hit.record.is_none() || hit.record == stored, "{what}"),
                        (false, None) => assert_eq!(hit.record, stored, "{what}"),
                    }
                }
                match page.last() {
                    Some(last) if page.len() == 3 => after = Some(last.position.clone()),
                    _ => break,
                }
            }
            let mut expect: Vec<_> = expect.iter().filter(|(d, _)| repo.is_none_or(|r| d == r)).cloned().collect();
            if !ascending {
                expect.reverse();
            }
            assert_eq!(got, expect, "{name}: key {k:?}, repo {repo:?}, ascending {ascending}");
        }
        if counted {
            let answered = expect.iter().filter(|(d, _)| !hidden.contains(d)).count();
            assert_eq!(index.count(&k).unwrap(), answered as i64, "{name}: count of {k:?} (hidden: {hidden:?})");
        }
    }
}

fn check_all(run: &Run, with_late: bool) {
    check(run, "by_status", &["status"], "createdAt", false, true);
    check(run, "by_lang", &["langs[]"], "createdAt", false, true);
    check(run, "pairs", &["status", "langs[]"], "rkey", false, false);
    check(run, "latest", &[], "createdAt", true, true);
    if with_late {
        check(run, "late", &["status"], "rkey", false, true);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn queries_and_counts_equal_the_model(first in proptest::collection::vec(op(), 1..40),
                                          second in proptest::collection::vec(op(), 0..40),
                                          reopen_at in 0usize..40) {
        let mut run = Run::open(tempfile::tempdir().unwrap(), BASE);
        for op in &first {
            run.apply(op);
        }
        run.settle();
        check_all(&run, false);

        // An index added by a save: built in the background while commits go on, and the store
        // closed and opened again on the way (the build resumes where it stood).
        let with_late = format!("{BASE}{ADDED}");
        run.sluice().pipeline().filter().store(Filter::from_toml(&with_late, "test").unwrap());
        run.wait_for(|r| r.indexes.contains_key("late"));
        for (i, op) in second.iter().enumerate() {
            if i == reopen_at {
                run.reopen(&with_late);
            }
            run.apply(op);
        }
        run.settle();
        check_all(&run, true);
    }
}

/// An entry carries its record: an update that moves no entry (same key, same sort) still
/// rewrites it, and a record grown past the length entries carry is read from `records`.
#[test]
fn entries_carry_the_current_record() {
    let mut run = Run::open(tempfile::tempdir().unwrap(), BASE);
    let status = |langs: Value| json!({"$type": COLLECTION, "status": "👍", "createdAt": TIMES[0].0, "langs": langs});
    run.apply(&Op::Put(0, 0, status(json!(["en"]))));
    run.settle();
    check_all(&run, false);
    run.apply(&Op::Put(0, 0, status(json!(["fr"]))));
    run.settle();
    check_all(&run, false);
    let index = run.sluice().store().index_registry().indexes["by_status"].clone();
    let page = index.page(&encode::key_tuple(&["👍"]), &PageRange::default(), 10).unwrap();
    let carried = page[0].record.as_ref().expect("a short record is carried").body.clone().unwrap();
    assert!(String::from_utf8_lossy(&carried).contains("fr"), "the entry carries the update");
    // Longer than an entry carries: the entry stands (same key and sort) without the record.
    let long: Vec<String> = (0..90).map(|i| format!("x-long-language-tag-{i:03}")).collect();
    run.apply(&Op::Put(0, 0, status(json!(long))));
    run.settle();
    let page = index.page(&encode::key_tuple(&["👍"]), &PageRange::default(), 10).unwrap();
    assert_eq!((page.len(), page[0].record.as_ref()), (1, None));
    run.apply(&Op::Put(0, 0, status(json!(["de"]))));
    run.settle();
    check_all(&run, false);

    // `per_repo = "latest"`: the entry carries the newest record where a change writes it,
    // and none once a delete moves it back to an older one (a query reads that one).
    let latest = run.sluice().store().index_registry().indexes["latest"].clone();
    let carried = |run: &Run| {
        let page = latest.page(&encode::key_tuple::<&str>(&[]), &PageRange::default(), 10).unwrap();
        assert_eq!(page.len(), 1, "one repo, one entry");
        let body = page[0].record.as_ref().map(|r| String::from_utf8_lossy(r.body.as_deref().unwrap()).into_owned());
        check_all(run, false);
        (page[0].rkey.clone(), body)
    };
    let (older, body) = carried(&run);
    assert!(body.is_some_and(|b| b.contains("de")), "the newest record, updated, is carried");
    let newer = json!({"$type": COLLECTION, "status": "🙂", "createdAt": TIMES[2].0});
    run.apply(&Op::Put(0, 1, newer));
    run.settle();
    let (rkey, body) = carried(&run);
    assert!(rkey != older && body.is_some_and(|b| b.contains("🙂")), "a newer record takes the entry, carried");
    run.apply(&Op::Delete(0, 1));
    run.settle();
    let (rkey, body) = carried(&run);
    assert_eq!((rkey, body), (older, None), "moved back to the older record, which the delete did not carry");
}

/// A changed definition rebuilds under the same name; a removed index leaves nothing, and a
/// store opened again does not bring it back.
#[test]
fn changed_and_removed_indexes() {
    let mut run = Run::open(tempfile::tempdir().unwrap(), &format!("{BASE}{ADDED}"));
    for (i, r) in ["👍", "🙂", "👍"].iter().enumerate() {
        run.apply(&Op::Put(i % 3, i, json!({"$type": COLLECTION, "status": r, "createdAt": TIMES[i].0})));
    }
    run.settle();
    let before = run.sluice().store().index_registry().indexes["late"].id;
    check(&run, "late", &["status"], "rkey", false, true);

    let changed = format!("{BASE}{}", ADDED.replace("sort = \"rkey\"", "sort = \"createdAt\""));
    run.sluice().pipeline().filter().store(Filter::from_toml(&changed, "test").unwrap());
    run.wait_for(|r| r.indexes["late"].id != before);
    run.settle();
    check(&run, "late", &["status"], "createdAt", false, true);

    let late = run.sluice().store().index_registry().indexes["late"].id;
    run.sluice().pipeline().filter().store(Filter::from_toml(BASE, "test").unwrap());
    run.wait_for(|r| !r.indexes.contains_key("late"));
    run.reopen(BASE);
    assert!(!run.sluice().store().index_registry().indexes.contains_key("late"));
    assert!(!run.sluice().store().index_keyspaces().contains(&late), "the removed index's keyspace is gone");
    check_all(&run, false);
}

/// The definition of the index `ADDED` declares, as a save puts it in force.
fn late_spec() -> Vec<sluice::indexes::IndexSpec> {
    let spec = Filter::from_toml(&format!("{BASE}{ADDED}"), "t").unwrap().indexes;
    spec.into_iter().filter(|s| s.name == "late").collect()
}

/// Puts a status record in `did`, in the store and the model.
fn put_status(store: &Store, model: &mut BTreeMap<(String, String), Value>, did: &str, rkey: String, status: &str) {
    let value = json!({"$type": COLLECTION, "status": status, "createdAt": TIMES[0].0});
    let body = json_to_cbor(&value).unwrap();
    let existed = model.insert((did.to_string(), rkey.clone()), value).is_some();
    let write = RecordWrite::Put {
        collection: COLLECTION.into(),
        rkey: rkey.into(),
        cid: testkit::cid_of(&body).to_bytes(),
        body: body.into(),
        existed,
    };
    store.commit(RepoChange { did: did.into(), records: vec![write], ..Default::default() }).unwrap();
}

/// Removes a status record of `did`, if there is one, from the store and the model.
fn remove_status(store: &Store, model: &mut BTreeMap<(String, String), Value>, did: &str, rkey: String) {
    if model.remove(&(did.to_string(), rkey.clone())).is_some() {
        let write = RecordWrite::Remove { collection: COLLECTION.into(), rkey: rkey.into() };
        store.commit(RepoChange { did: did.into(), records: vec![write], ..Default::default() }).unwrap();
    }
}

/// Eight statuses in each of `DIDS` (answered repos), and records of collections ordered
/// before and after theirs.
fn store_statuses_and_others(store: &Store, model: &mut BTreeMap<(String, String), Value>) {
    // Counts count the records of repos answered, which these are.
    let synced = RepoState { status: RepoStatus::Synced, ..Default::default() };
    store.set_states(&DIDS.map(|d| (d.to_string(), synced.clone())), None).unwrap();
    for (i, did) in DIDS.iter().enumerate() {
        for r in 0..8 {
            put_status(store, model, did, format!("r{r}"), ["👍", "🙂"][(i + r) % 2]);
        }
        // Records of collections ordered before and after the index's, which the build
        // seeks past.
        let others = ["app.bsky.feed.like", "zzz.other.thing"].map(|collection| {
            let body = json_to_cbor(&json!({"$type": collection})).unwrap();
            // More than the build reads in a row before it seeks past them.
            (0..70).map(move |r| RecordWrite::Put {
                collection: collection.into(),
                rkey: format!("o{r}").into(),
                cid: testkit::cid_of(&body).to_bytes(),
                body: body.clone().into(),
                existed: false,
            })
        });
        let records = others.into_iter().flatten().collect();
        store.commit(RepoChange { did: did.to_string(), records, ..Default::default() }).unwrap();
    }
}

/// A build stopped after any number of batches (the store closed with it half done, as a
/// `kill -9` leaves it: nothing but committed batches) resumes from its position when the store
/// is opened again, keeps the same index, and ends exact, with commits landing before and past
/// its position on the way.
#[test]
fn a_build_stopped_anywhere_resumes_and_ends_exact() {
    let late = late_spec();
    for stop_after in [0, 1, 4, 9, 14] {
        let dir = tempfile::tempdir().unwrap();
        let mut model = BTreeMap::new();
        let store = Store::open(dir.path()).unwrap();
        store_statuses_and_others(&store, &mut model);
        store.set_indexes(&late).unwrap();
        let id = store.index_registry().indexes["late"].id;
        for step in 0..stop_after {
            let done = store.build_index_step(2).unwrap().unwrap();
            assert!(!done.ready, "the build is still under way at step {step}");
            // A commit behind the build's position and one past it.
            put_status(&store, &mut model, DIDS[0], format!("r{step}"), "x");
            put_status(&store, &mut model, DIDS[2], format!("r{step}"), "x");
        }
        let building = store.index_progress()["late"].1.building.clone();
        assert!(building.is_some(), "stopped while building");
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.index_progress()["late"].1.building, building, "the position survives");
        store.set_indexes(&late).unwrap();
        assert_eq!(store.index_registry().indexes["late"].id, id, "the same definition keeps its index");
        put_status(&store, &mut model, DIDS[1], "new".into(), "👍");
        while !store.build_index_step(2).unwrap().unwrap().ready {}
        assert_eq!(store.build_index_step(2).unwrap(), None, "nothing left to build");
        check_store(&store, &model, &BTreeSet::new(), "late", &["status"], "rkey", false, true);
    }
}

/// Hides (`off`) or shows again a repo, as an account event does: its records are kept, and
/// counts leave them out while it is hidden.
fn set_hidden(store: &Store, hidden: &mut BTreeSet<String>, did: &str, off: bool) {
    let (status, error) = if off { (RepoStatus::Gone, Some("deactivated".into())) } else { (RepoStatus::Synced, None) };
    let state = RepoState { status, error, ..Default::default() };
    store.set_states(&[(did.to_string(), state)], None).unwrap();
    match off {
        true => hidden.insert(did.to_string()),
        false => hidden.remove(did),
    };
}

/// A counted index's build ends by summing the step rows its entry steps left, a few keys at a
/// time, and a key with many step rows ("👍", "🙂") over several steps. Changes under keys
/// already summed and keys not yet summed, a repo hidden and shown again between those steps,
/// and the store closed after any of them (a `kill -9` leaves only committed steps), still end
/// in exact counts.
#[test]
fn a_count_phase_stopped_anywhere_ends_exact() {
    let late = late_spec();
    for stop_after in [0, 1, 2, 5, 9] {
        let dir = tempfile::tempdir().unwrap();
        let (mut model, mut hidden) = (BTreeMap::new(), BTreeSet::new());
        let store = Store::open(dir.path()).unwrap();
        // A hidden or shown repo's counts move in steps (none taken until the end).
        store.set_index_move_rows(4);
        store_statuses_and_others(&store, &mut model);
        // Keys with one entry, and keys with many (each entry step leaves a row for them).
        for (i, did) in DIDS.iter().enumerate() {
            for r in 0..12 {
                put_status(&store, &mut model, did, format!("k{r}"), &format!("s{}", (i * 12 + r) % 17));
            }
        }
        set_hidden(&store, &mut hidden, DIDS[2], true);
        store.set_indexes(&late).unwrap();
        let phase = |store: &Store| store.index_progress()["late"].1.building.as_ref().map(|b| b.phase);
        while phase(&store) == Some(Phase::Entries) {
            store.build_index_step(5).unwrap();
        }
        assert_eq!(phase(&store), Some(Phase::Counts), "a counted index sums its counts last");
        for step in 0..stop_after {
            let done = store.build_index_step(2).unwrap().unwrap();
            assert!(!done.ready, "the counts are still being summed at step {step}");
            // Under a key summed early ("s0"), one summed late ("🙂"), and new ones.
            put_status(&store, &mut model, DIDS[step % 3], format!("k{step}"), ["s0", "🙂", "zz"][step % 3]);
            remove_status(&store, &mut model, DIDS[(step + 1) % 3], format!("r{step}"));
            set_hidden(&store, &mut hidden, DIDS[step % 2], step % 4 < 2);
        }
        let building = store.index_progress()["late"].1.building.clone();
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.index_progress()["late"].1.building, building, "the position survives");
        store.set_indexes(&late).unwrap();
        store.set_index_move_rows(4);
        set_hidden(&store, &mut hidden, DIDS[2], false);
        put_status(&store, &mut model, DIDS[1], "new".into(), "s3");
        while !store.build_index_step(2).unwrap().unwrap().ready {}
        assert_eq!(store.build_index_step(2).unwrap(), None, "nothing left to build");
        check_store(&store, &model, &hidden, "late", &["status"], "rkey", false, true);
        assert_eq!(store.index_registry().indexes["late"].count_rows().unwrap().1, 0, "no step row is left");
        while store.move_index_counts_step().unwrap() {}
        assert_eq!(store.index_registry().indexes["late"].moving_repos(), 0);
        check_store(&store, &model, &hidden, "late", &["status"], "rkey", false, true);
    }
}

/// The store in `dir` with the `late` index in force, whose repos with more than `rows`
/// entries move their counts in steps of `rows`.
fn open_moving(dir: &std::path::Path, rows: usize) -> Store {
    let store = Store::open(dir).unwrap();
    store.set_indexes(&late_spec()).unwrap();
    store.set_index_move_rows(rows);
    store
}

/// A repo with more entries than a move step (here 3) that is hidden or shown moves its counts
/// a step at a time, each step a batch of its own, and every count is exact at every point on
/// the way: right after the account event, between steps, with commits landing on either side
/// of the step's bound, when the repo is shown again halfway (the move turns back), and after
/// the store is closed halfway and opened again. A repo with fewer entries moves at once.
#[test]
fn a_big_repo_hidden_or_shown_moves_its_counts_in_steps_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut model, mut hidden) = (BTreeMap::new(), BTreeSet::new());
    let open = |dir: &std::path::Path| open_moving(dir, 3);
    let mut store = open(dir.path());
    store_statuses_and_others(&store, &mut model);
    for r in 0..9 {
        put_status(&store, &mut model, DIDS[0], format!("b{r}"), ["👍", "🙂", "🔥"][r % 3]);
    }
    while !store.build_index_step(100).unwrap().unwrap().ready {}
    let check = |store: &Store, model: &_, hidden: &_, when: &str| {
        eprintln!("checking {when}");
        check_store(store, model, hidden, "late", &["status"], "rkey", false, true);
    };
    let moving = |store: &Store| store.index_registry().indexes["late"].moving_repos();
    let step = |store: &Store| store.move_index_counts_step().unwrap();

    // 17 entries: a mark, and nothing moved yet.
    set_hidden(&store, &mut hidden, DIDS[0], true);
    assert_eq!(moving(&store), 1, "the big repo's counts move in steps");
    check(&store, &model, &hidden, "hidden, before any step");
    assert!(step(&store));
    check(&store, &model, &hidden, "after one step");
    // Before the bound (moved: counted as hidden) and past it (not yet: counted as shown).
    put_status(&store, &mut model, DIDS[0], "a0".into(), "🔥");
    put_status(&store, &mut model, DIDS[0], "zz".into(), "👍");
    remove_status(&store, &mut model, DIDS[0], "b1".into());
    check(&store, &model, &hidden, "after commits on both sides of the bound");
    assert!(step(&store) && step(&store));
    check(&store, &model, &hidden, "after three steps");

    // Shown again halfway: the steps go back over what they moved.
    set_hidden(&store, &mut hidden, DIDS[0], false);
    assert_eq!(moving(&store), 1, "the same move, turned");
    check(&store, &model, &hidden, "shown again halfway");
    assert!(step(&store));
    check(&store, &model, &hidden, "a step back");

    // Closed halfway: the mark is read again at open.
    drop(store);
    store = open(dir.path());
    assert_eq!(moving(&store), 1, "the move survives a restart");
    check(&store, &model, &hidden, "after a reopen");
    set_hidden(&store, &mut hidden, DIDS[0], true);
    put_status(&store, &mut model, DIDS[0], "b4".into(), "😴");

    // A repo with fewer entries than a step moves at once.
    for r in 0..8 {
        remove_status(&store, &mut model, DIDS[1], format!("r{r}"));
    }
    put_status(&store, &mut model, DIDS[1], "one".into(), "🙂");
    set_hidden(&store, &mut hidden, DIDS[1], true);
    assert_eq!(moving(&store), 1, "a repo of one entry moves in its account event's batch");
    check(&store, &model, &hidden, "a small repo hidden");

    let mut steps = 0;
    while step(&store) {
        steps += 1;
        check(&store, &model, &hidden, &format!("step {steps}"));
    }
    assert!(steps <= 8, "each step moves up to 3 of the repo's ~18 entries: {steps} steps");
    assert_eq!(moving(&store), 0, "every move is done");
    // Done: the count rows alone are the counts.
    set_hidden(&store, &mut hidden, DIDS[0], false);
    assert_eq!(moving(&store), 1);
    while step(&store) {}
    check(&store, &model, &hidden, "shown again, moved");
}

/// A counted index that holds no entry can still hold count rows while it builds: a step row
/// of +1 and, once that entry was removed, a count row of -1. A store opened then knows it
/// has count rows, so the next entry under that key reads the -1 (taking it for a key never
/// counted, and so at 0, ended the build with a count of 2 for 1 entry).
#[test]
fn an_index_building_with_no_entry_but_count_rows_counts_on_after_a_reopen() {
    let late = late_spec();
    let dir = tempfile::tempdir().unwrap();
    let (mut model, hidden) = (BTreeMap::new(), BTreeSet::new());
    let store = Store::open(dir.path()).unwrap();
    let synced = RepoState { status: RepoStatus::Synced, ..Default::default() };
    store.set_states(&[(DIDS[0].to_string(), synced)], None).unwrap();
    put_status(&store, &mut model, DIDS[0], "r0".into(), "🙂");
    store.set_indexes(&late).unwrap();
    let phase = |store: &Store| store.index_progress()["late"].1.building.as_ref().map(|b| b.phase);
    while phase(&store) == Some(Phase::Entries) {
        store.build_index_step(5).unwrap();
    }
    assert_eq!(phase(&store), Some(Phase::Counts));
    // The entry's +1 waits in a step row; its removal leaves the count row at -1.
    remove_status(&store, &mut model, DIDS[0], "r0".into());
    assert_eq!(store.index_progress()["late"].1.entries, 0);
    assert_eq!(store.index_registry().indexes["late"].count_rows().unwrap(), (1, 1));
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    store.set_indexes(&late).unwrap();
    put_status(&store, &mut model, DIDS[0], "r1".into(), "🙂");
    while !store.build_index_step(2).unwrap().unwrap().ready {}
    check_store(&store, &model, &hidden, "late", &["status"], "rkey", false, true);
}

/// Changes committed while a build step scans the records off the writer lock (updates,
/// creates and removals, in the records it read, before them and past them) are read again
/// under the lock: with a step over everything, and with steps that end among the changes.
#[test]
fn changes_during_a_build_scan_are_read_again() {
    let late = late_spec();
    // Each repo holds 148 records keys: a step of 100 ends inside one, of 10,000 reads all.
    for max_keys in [10_000, 100, 37] {
        let dir = tempfile::tempdir().unwrap();
        let mut model = BTreeMap::new();
        let store = Store::open(dir.path()).unwrap();
        store_statuses_and_others(&store, &mut model);
        store.set_indexes(&late).unwrap();
        let mut step = 0;
        loop {
            let during_scan = || {
                for (i, did) in DIDS.iter().enumerate() {
                    put_status(&store, &mut model, did, format!("r{}", (step + i) % 8), "🔥");
                    put_status(&store, &mut model, did, format!("n{step}"), "🙂");
                    remove_status(&store, &mut model, did, format!("r{}", (step + i + 3) % 8));
                }
            };
            let done = store.build_index_step_during_scan(max_keys, during_scan).unwrap().unwrap();
            step += 1;
            if done.ready {
                break;
            }
        }
        check_store(&store, &model, &BTreeSet::new(), "late", &["status"], "rkey", false, true);
    }
}

/// A commit whose ops change one record twice is no diff of two trees: it is refused whole,
/// naming the record, and leaves the records, the events and every index as they were.
#[test]
fn a_commit_changing_a_record_twice_is_refused_whole() {
    let mut run = Run::open(tempfile::tempdir().unwrap(), BASE);
    let status = |s: &str| json!({"$type": COLLECTION, "status": s, "createdAt": TIMES[0].0});
    run.apply(&Op::Put(0, 1, status("🙂")));
    run.settle();
    let events = |run: &Run| run.sluice().store().log().from(0, 100).unwrap().len();
    let before = events(&run);
    let ops = vec![
        put_op("r2".into(), &status("👍")),
        put_op("r1".into(), &status("👍")),
        RecordOp::Delete { collection: COLLECTION.into(), rkey: "r1".into() },
    ];
    let rev = run.next_rev();
    let (commit, data) = (testkit::cid_of(rev.as_bytes()), testkit::cid_of(b"data"));
    let refused = run.sluice().pipeline().apply_commit(DIDS[0], commit, &rev, data, ops, None).unwrap_err();
    let text = refused.to_string();
    assert!(text.contains(&format!("{COLLECTION}/r1")) && text.contains("more than once"), "{text}");
    assert_eq!(events(&run), before, "no event");
    assert!(run.sluice().store().records().get(DIDS[0], COLLECTION, "r2").unwrap().is_none(), "nothing stored");
    check_all(&run, false);
}

/// What the deterministic move test does to the store.
#[derive(Debug, Clone)]
enum MoveOp {
    /// Create or update (repo, rkey) with a status.
    Put(usize, usize, usize),
    Remove(usize, usize),
    /// Hide (`true`) or show again a repo, as an account event does.
    Hide(usize, bool),
    /// Up to this many steps of the counts under way.
    Steps(usize),
    /// Close the store and open it again.
    Reopen,
}

const MOVE_STATUSES: [&str; 3] = ["👍", "🙂", "🔥"];

fn move_op() -> impl Strategy<Value = MoveOp> {
    prop_oneof![
        6 => (0..DIDS.len(), 0..12usize, 0..MOVE_STATUSES.len()).prop_map(|(d, r, s)| MoveOp::Put(d, r, s)),
        2 => (0..DIDS.len(), 0..12usize).prop_map(|(d, r)| MoveOp::Remove(d, r)),
        3 => (0..DIDS.len(), any::<bool>()).prop_map(|(d, off)| MoveOp::Hide(d, off)),
        3 => (1..4usize).prop_map(MoveOp::Steps),
        1 => Just(MoveOp::Reopen),
    ]
}

/// Every count against the model: the entries under each status of the repos not hidden.
fn check_counts(store: &Store, model: &BTreeMap<(String, String), Value>, hidden: &BTreeSet<String>, when: &str) {
    let index = store.index_registry().indexes["late"].clone();
    for status in MOVE_STATUSES.iter().chain(&["absent"]) {
        let want =
            model.iter().filter(|((did, _), value)| value["status"] == *status && !hidden.contains(did)).count() as i64;
        let got = index.count(&encode::key_tuple(&[*status])).unwrap();
        assert_eq!(got, want, "count of {status} {when} (hidden: {hidden:?})");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Repos hidden and shown again with more entries than a move step (2 here), in any order
    /// with commits, move steps and reopenings: every count equals the model after every op,
    /// and once every move is done the count rows alone do.
    #[test]
    fn counts_equal_the_model_while_repos_move(ops in proptest::collection::vec(move_op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut model, mut hidden) = (BTreeMap::new(), BTreeSet::new());
        let open = |dir: &std::path::Path| open_moving(dir, 2);
        let mut store = open(dir.path());
        for did in DIDS {
            set_hidden(&store, &mut hidden, did, false);
        }
        while !store.build_index_step(100).unwrap().unwrap().ready {}
        for (i, op) in ops.iter().enumerate() {
            match op {
                MoveOp::Put(d, r, s) => put_status(&store, &mut model, DIDS[*d], format!("r{r}"), MOVE_STATUSES[*s]),
                MoveOp::Remove(d, r) => remove_status(&store, &mut model, DIDS[*d], format!("r{r}")),
                MoveOp::Hide(d, off) => set_hidden(&store, &mut hidden, DIDS[*d], *off),
                MoveOp::Steps(n) => {
                    for _ in 0..*n {
                        store.move_index_counts_step().unwrap();
                    }
                }
                MoveOp::Reopen => {
                    drop(store);
                    store = open(dir.path());
                }
            }
            check_counts(&store, &model, &hidden, &format!("after op {i}: {op:?}"));
        }
        while store.move_index_counts_step().unwrap() {}
        prop_assert_eq!(store.index_registry().indexes["late"].moving_repos(), 0);
        check_counts(&store, &model, &hidden, "once every move is done");
        check_store(&store, &model, &hidden, "late", &["status"], "rkey", false, true);
    }
}
