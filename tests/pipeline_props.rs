//! Property tests: random signed repos (built with jacquard-repo) -> CAR -> pipeline under
//! random filters, checked against a simple model of what must be stored and emitted.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::json;
use sluice::store::{Action, StoredEvent};
use sluice::{IndexOptions, Sluice};
use sluice_devnet::{Account, RepoContents, export_car_blocking, rev_at};
use sluice_testkit as testkit;

const COLLECTIONS: &[&str] =
    &["app.bsky.feed.post", "app.bsky.feed.like", "xyz.statusphere.status", "com.example.thing"];
const RKEYS: &[&str] = &["3kaaaaaaaaaa2", "3kaaaaaaaaab2", "3kaaaaaaaaac2", "self", "3lbbbbbbbbbb2"];

type Model = BTreeMap<(String, String), u32>;

fn record(collection: &str, n: u32) -> Vec<u8> {
    let v = match collection {
        "app.bsky.feed.post" => {
            json!({"$type": collection, "text": format!("post {n}"), "createdAt": "2024-01-01T00:00:00Z"})
        }
        "app.bsky.feed.like" => json!({
            "$type": collection,
            "createdAt": "2024-01-01T00:00:00Z",
            "subject": {
                "uri": format!("at://did:plc:x/app.bsky.feed.post/{n}"),
                "cid": "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"
            }
        }),
        _ => json!({"$type": collection, "n": n}),
    };
    sluice::handlers::value::json_to_cbor(&v).unwrap()
}

fn contents(model: &Model) -> RepoContents {
    model.iter().map(|((c, r), n)| (format!("{c}/{r}"), record(c, *n))).collect()
}

fn model() -> impl Strategy<Value = Model> {
    proptest::collection::btree_map(
        (0..COLLECTIONS.len(), 0..RKEYS.len()).prop_map(|(c, r)| (COLLECTIONS[c].to_string(), RKEYS[r].to_string())),
        0..100u32,
        0..12,
    )
}

#[derive(Debug, Clone)]
struct FilterSpec {
    signal: bool,
    signals: Vec<&'static str>,
    collections: Vec<&'static str>,
    exclude: Vec<&'static str>,
}

fn subset() -> impl Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(
        vec!["app.bsky.*", "app.bsky.feed.post", "xyz.statusphere.status", "com.example.*", "app.bsky.feed.like"],
        0..3,
    )
}

fn filter_spec() -> impl Strategy<Value = FilterSpec> {
    (
        any::<bool>(),
        proptest::sample::subsequence(vec!["xyz.statusphere.status", "app.bsky.feed.like", "com.example.*"], 1..3),
        subset(),
        subset(),
    )
        .prop_map(|(signal, signals, collections, exclude)| FilterSpec { signal, signals, collections, exclude })
}

impl FilterSpec {
    fn toml(&self) -> String {
        let list = |v: &[&str]| format!("[{}]", v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", "));
        format!(
            "mode = \"{}\"\nsignals = {}\ncollections = {}\nexclude_collections = {}\n",
            if self.signal { "signal" } else { "full" },
            list(&self.signals),
            list(&self.collections),
            list(&self.exclude)
        )
    }

    /// What the model says must be stored for a repo holding `m`: in signal mode nothing
    /// without a record of a signal collection; else the records of the collections wanted
    /// (all when `collections` is empty), less the excluded ones.
    fn expected(&self, m: &Model) -> Model {
        let any = |patterns: &[&str], collection: &str| patterns.iter().any(|p| pattern_matches(p, collection));
        let has_signal = m.keys().any(|(c, _)| any(&self.signals, c));
        if self.signal && !has_signal {
            return Model::new();
        }
        let wanted = |c: &str| (self.collections.is_empty() || any(&self.collections, c)) && !any(&self.exclude, c);
        m.iter().filter(|((c, _), _)| wanted(c)).map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Whether a filter pattern takes `nsid`, by the filter file's rule (README), written apart from
/// the filter's code: an NSID takes itself, `prefix.*` every NSID below `prefix` in whole segments.
fn pattern_matches(pattern: &str, nsid: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix_with_dot) => nsid.len() > prefix_with_dot.len() && nsid.starts_with(prefix_with_dot),
        None => pattern == nsid,
    }
}

fn stored(s: &Sluice, did: &str) -> BTreeSet<(String, String)> {
    testkit::stored_cids(s.store(), did).into_keys().collect()
}

fn events_after(s: &Sluice, from: u64) -> Vec<(Action, String, String)> {
    s.store()
        .log()
        .from(from, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, e)| match e {
            StoredEvent::Record(r) => (r.action, r.collection.into(), r.rkey.into()),
            other => panic!("unexpected event {other:?}"),
        })
        .collect()
}

/// The events that must take a store holding `before` to one holding `after`.
fn expected_events(before: &Model, after: &Model) -> BTreeSet<(Action, String, String)> {
    let mut out = BTreeSet::new();
    for (k, v) in after {
        match before.get(k) {
            None => out.insert((Action::Create, k.0.clone(), k.1.clone())),
            Some(old) if old != v => out.insert((Action::Update, k.0.clone(), k.1.clone())),
            _ => false,
        };
    }
    for k in before.keys().filter(|k| !after.contains_key(*k)) {
        out.insert((Action::Delete, k.0.clone(), k.1.clone()));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn stored_set_matches_the_model_and_reindex_is_idempotent(m in model(), spec in filter_spec()) {
        let account = Account::new(7);
        let car = export_car_blocking(&account, &rev_at(1), &contents(&m)).unwrap();
        let (_dir, s) = testkit::sluice_with(&spec.toml());
        let opts = IndexOptions { expected_did: Some(account.did.clone()), signing_key: Some(account.did_key()) };
        let first = s.index_car(&car, &opts).unwrap();
        let want = spec.expected(&m);
        prop_assert_eq!(stored(&s, &account.did), want.keys().cloned().collect::<BTreeSet<_>>());
        prop_assert_eq!(first.committed.events as usize, want.len());
        if want.is_empty() && spec.signal {
            // Signal mode, no signal record: nothing left behind.
            prop_assert_eq!(s.store().next_event_id(), 1);
            prop_assert!(s.store().records().is_empty().unwrap());
            prop_assert!(s.store().log().from(0, 1).unwrap().is_empty());
        }
        let again = s.index_car(&car, &opts).unwrap();
        prop_assert_eq!(again.committed.events, 0);
        prop_assert_eq!(again.unchanged as usize, want.len());
    }

    /// A deleted account's records go a page of the batch size at a time: each with one
    /// delete event, in key order, the state written once at the end, another repo untouched,
    /// whether the batch size divides the record count or not.
    #[test]
    fn a_deleted_account_goes_a_page_at_a_time(m in model(), other in model(), batch_size in 1..6usize) {
        let (a, b) = (Account::new(11), Account::new(12));
        let (_dir, s) = testkit::sluice_batched("mode = \"full\"\ncollections = [\"*\"]", batch_size);
        let opts = |acc: &Account| IndexOptions { expected_did: Some(acc.did.clone()), signing_key: Some(acc.did_key()) };
        for (acc, m) in [(&a, &m), (&b, &other)] {
            s.index_car(&export_car_blocking(acc, &rev_at(1), &contents(m)).unwrap(), &opts(acc)).unwrap();
        }
        let (mine, theirs) = (stored(&s, &a.did), stored(&s, &b.did));
        let from = s.store().next_event_id();
        let gone = sluice::store::RepoState {
            status: sluice::store::RepoStatus::Gone,
            error: Some("deleted".into()),
            ..Default::default()
        };
        let outcome = s.pipeline().remove_repo(&a.did, &rev_at(2), gone, None).unwrap();
        prop_assert_eq!(outcome.deleted as usize, mine.len());
        prop_assert!(stored(&s, &a.did).is_empty());
        prop_assert_eq!(stored(&s, &b.did), theirs);
        let deletes: Vec<_> = mine.into_iter().map(|(c, r)| (Action::Delete, c, r)).collect();
        prop_assert_eq!(events_after(&s, from), deletes);
        let state = s.store().repos().state(&a.did).unwrap().unwrap();
        prop_assert_eq!(state.status, sluice::store::RepoStatus::Gone);
    }

    #[test]
    fn edit_sequences_emit_exactly_the_diff(
        versions in proptest::collection::vec(model(), 1..5),
        spec in filter_spec(),
        batch_size in 1..6usize,
    ) {
        let account = Account::new(9);
        // Small batches, so walks commit in several batches (and on two threads).
        let (_dir, s) = testkit::sluice_batched(&spec.toml(), batch_size);
        let mut before = Model::new();
        for (i, m) in versions.iter().enumerate() {
            let car = export_car_blocking(&account, &rev_at(i as u64 + 1), &contents(m)).unwrap();
            let from = s.store().next_event_id();
            s.index_car(&car, &IndexOptions::default()).unwrap();
            let after = spec.expected(m);
            let got = events_after(&s, from);
            let got_set: BTreeSet<_> = got.iter().cloned().collect();
            prop_assert_eq!(got.len(), got_set.len(), "no duplicate events");
            prop_assert_eq!(got_set, expected_events(&before, &after));
            prop_assert_eq!(stored(&s, &account.did), after.keys().cloned().collect::<BTreeSet<_>>());
            before = after;
        }
        let ids: Vec<u64> = s.store().log().from(0, usize::MAX).unwrap().into_iter().map(|(id, _)| id).collect();
        prop_assert_eq!(ids, (1..s.store().next_event_id()).collect::<Vec<_>>(), "ids are gapless");
    }
}

#[test]
fn a_walk_interrupted_between_batches_is_completed_by_the_next_walk_without_duplicates() {
    use sluice::store::RepoStatus;
    let account = Account::new(12);
    let mut m = Model::new();
    for (i, rkey) in RKEYS.iter().enumerate() {
        m.insert(("app.bsky.feed.post".into(), rkey.to_string()), i as u32);
        m.insert(("com.example.thing".into(), rkey.to_string()), i as u32);
    }
    let car = export_car_blocking(&account, &rev_at(1), &contents(&m)).unwrap();
    let (_dir, s) = testkit::sluice_batched("mode = \"full\"", 3);
    // What a crash after the first batches leaves: some records and their events, no state.
    let repo = sluice::repo::read_car(&car, &Default::default()).unwrap();
    let partial: RepoContents = contents(&m).into_iter().take(4).collect();
    let partial_car = export_car_blocking(&account, &rev_at(1), &partial).unwrap();
    let partial_repo = sluice::repo::read_car(&partial_car, &Default::default()).unwrap();
    s.pipeline().apply_walk(&partial_repo, &Default::default()).unwrap();
    s.store()
        .commit(sluice::store::RepoChange {
            did: account.did.clone(),
            state: Some(sluice::store::RepoState { status: RepoStatus::Backfilling, ..Default::default() }),
            ..Default::default()
        })
        .unwrap();
    let out = s.pipeline().apply_walk(&repo, &Default::default()).unwrap();
    assert_eq!((out.created, out.unchanged), (m.len() as u64 - 4, 4));
    let events = events_after(&s, 0);
    let unique: BTreeSet<_> = events.iter().cloned().collect();
    assert_eq!((events.len(), unique.len()), (m.len(), m.len()), "every record emitted once");
    assert_eq!(s.store().repos().state(&account.did).unwrap().unwrap().status, RepoStatus::Synced);
}

#[test]
fn a_walk_stopped_between_batches_leaves_its_state_and_the_next_walk_completes_it() {
    use sluice::store::RepoStatus;
    let account = Account::new(13);
    let mut m = Model::new();
    for (i, rkey) in RKEYS.iter().enumerate() {
        m.insert(("app.bsky.feed.post".into(), rkey.to_string()), i as u32);
        m.insert(("com.example.thing".into(), rkey.to_string()), i as u32);
    }
    let car = export_car_blocking(&account, &rev_at(1), &contents(&m)).unwrap();
    let repo = sluice::repo::read_car(&car, &Default::default()).unwrap();
    let (_dir, s) = testkit::sluice_batched("mode = \"full\"", 3);
    // Batches of 3 records 300 ms apart; the stop comes once the first batch is committed.
    let stop = tokio_util::sync::CancellationToken::new();
    let opts = sluice::WalkOptions {
        batch_delay: std::time::Duration::from_millis(300),
        stop: Some(stop.clone()),
        ..Default::default()
    };
    let stopped = std::thread::scope(|scope| {
        scope.spawn(|| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while s.store().next_event_id() == 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            stop.cancel();
        });
        s.pipeline().apply_walk(&repo, &opts)
    });
    assert!(matches!(stopped, Err(sluice::PipelineError::Stopped)), "{stopped:?}");
    let committed = events_after(&s, 0).len();
    assert!((3..m.len()).contains(&committed), "stopped after {committed} of {} records", m.len());
    assert!(s.store().repos().state(&account.did).unwrap().is_none(), "no state before the last batch");

    let out = s.pipeline().apply_walk(&repo, &Default::default()).unwrap();
    assert_eq!((out.created, out.unchanged), ((m.len() - committed) as u64, committed as u64));
    let events = events_after(&s, 0);
    let unique: BTreeSet<_> = events.iter().cloned().collect();
    assert_eq!((events.len(), unique.len()), (m.len(), m.len()), "every record emitted once");
    assert_eq!(s.store().repos().state(&account.did).unwrap().unwrap().status, RepoStatus::Synced);
}

#[test]
fn a_wrong_signing_key_is_refused_and_nothing_is_written() {
    let account = Account::new(1);
    let mut m = Model::new();
    m.insert(("app.bsky.feed.post".into(), "3kaaaaaaaaaa2".into()), 1);
    let car = export_car_blocking(&account, &rev_at(1), &contents(&m)).unwrap();
    let (_dir, s) = testkit::sluice_with("mode = \"full\"");
    let wrong = IndexOptions { expected_did: None, signing_key: Some(Account::new(2).did_key()) };
    let err = s.index_car(&car, &wrong).unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    let wrong_did = IndexOptions { expected_did: Some(Account::new(2).did), signing_key: None };
    assert!(s.index_car(&car, &wrong_did).unwrap_err().to_string().contains("expected"));
    assert_eq!(s.store().next_event_id(), 1);
    assert!(s.store().repos().state(&account.did).unwrap().is_none());
    let right = IndexOptions { expected_did: Some(account.did.clone()), signing_key: Some(account.did_key()) };
    assert_eq!(s.index_car(&car, &right).unwrap().created, 1);
}

#[test]
fn an_older_export_is_refused_after_a_newer_one() {
    let account = Account::new(3);
    let (_dir, s) = testkit::sluice_with("mode = \"full\"");
    let new = export_car_blocking(&account, &rev_at(5), &RepoContents::new()).unwrap();
    let old = export_car_blocking(&account, &rev_at(4), &RepoContents::new()).unwrap();
    s.index_car(&new, &IndexOptions::default()).unwrap();
    let err = s.index_car(&old, &IndexOptions::default()).unwrap_err();
    assert!(err.to_string().contains("older than the stored rev"), "{err}");
}

#[test]
fn a_repo_that_loses_its_signal_is_removed_with_delete_events() {
    let account = Account::new(4);
    let (_dir, s) = testkit::sluice_with("mode = \"signal\"\nsignals = [\"xyz.statusphere.status\"]");
    let mut m = Model::new();
    m.insert(("xyz.statusphere.status".into(), "3kaaaaaaaaaa2".into()), 1);
    m.insert(("app.bsky.feed.post".into(), "3kaaaaaaaaab2".into()), 1);
    s.index_car(&export_car_blocking(&account, &rev_at(1), &contents(&m)).unwrap(), &IndexOptions::default()).unwrap();
    assert_eq!(stored(&s, &account.did).len(), 2);
    m.remove(&("xyz.statusphere.status".to_string(), "3kaaaaaaaaaa2".to_string()));
    let out = s
        .index_car(&export_car_blocking(&account, &rev_at(2), &contents(&m)).unwrap(), &IndexOptions::default())
        .unwrap();
    assert_eq!((out.status, out.deleted), (sluice::store::RepoStatus::Discarded, 2));
    assert!(stored(&s, &account.did).is_empty());
}
