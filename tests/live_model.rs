//! A model-based property test of live ingestion, with no network (issue 30).
//!
//! Each case drives [`Firehose::ingest`] with a generated stream over three accounts, built by
//! the devnet's [`SyntheticRepo`] (real MSTs, signed commits): valid commits (creates, updates,
//! deletes), commits sluice never sees (so the next one breaks the chain), commits with a
//! `prevData` that names nothing, commits whose rev is the previous one (`Tamper::StaleRev`),
//! forged signatures, frames sent again later (stale duplicates, late deliveries), `#account`
//! with every status, `#identity`, `#sync`, and backfills of the repos that are queued. Keys
//! are primed in the resolver, whose PLC URL has a scheme no client speaks: nothing is asked of
//! any network. `#identity` drops the cached key, so the test primes it again once that frame
//! is handled (it plays the PLC directory).
//!
//! The backfill needs the network, so the test plays it: a queued repo's export at some rev the
//! network had (the devnet's `export_car`, the same MST) is walked through the same pipeline
//! ([`Sluice::load_car`], [`Sluice::index_loaded`]), and live ingestion is told, as
//! `Backfill::after_sync` does ([`Firehose::request_drain`]); the test then waits until the held
//! commits are drained as the model says. Up to that point (a broken chain or a `#sync` with another root leaves the repo
//! `desynchronized` and queued; a discovered or reactivated one `pending`), what sluice does is
//! checked as it happens.
//!
//! The model is a plain map of account -> (status, rev, data root, records, held commits),
//! written from the rules in README.md's *Live ingestion* and DESIGN.md, not from the code:
//! - a commit of a synced repo at or below its rev is stale (nothing); a forged one is
//!   refused (nothing); one whose `prevData` is the stored root is applied (one record event per
//!   changed record); any other breaks the chain: the repo is desynchronized, queued, and the
//!   commit held. `since` is not part of the check (sync 1.1 checks `prevData`);
//! - held commits are not checked until they are applied: a forged one is refused then;
//! - commits of a repo that is queued (pending, desynchronized) are held; a repo sluice does not
//!   have is discovered (full mode): queued, its commit held; commits of a gone repo are dropped;
//! - held commits are drained (in rev order, each by the rules above) when the repo's backfill
//!   commits and before its next frame; a gone repo's are dropped then;
//! - `#sync` of a synced repo: stale at or below its rev, the rev moves on when the root is the
//!   stored one, else the repo is desynchronized and queued (nothing held); an unknown repo is
//!   queued; others ignore it;
//! - `#identity` of a repo sluice has: its handle, one identity event;
//! - `#account`, the account rule: sluice knows the status the last `#account` said, and a
//!   frame with another one is a change, with one account event; the same status again changes
//!   nothing and emits nothing. `deleted` removes every record (a delete event each, live, at the
//!   stored rev) and leaves the repo gone; `deactivated`, `takendown` and `suspended` leave it
//!   gone with its records; `active` reactivates a gone repo (queued for backfill); relay-side
//!   statuses (`throttled`, `desynchronized`) leave the repo as it is, and `active` after one is
//!   a change all the same. A backfill does not change what sluice knows of the account. Repos
//!   sluice does not have ignore `#account` and `#identity`.
//!
//! Checked after every step, while frames are still in flight: the saved `firehose` cursor
//! never goes back nor past the last frame dispatched, and every frame at or below it has
//! its effects committed: for each repo, its events in the log are whole changes of the model's,
//! at least those up to its last frame at or below the cursor, and its state, records and held
//! commits are each what the model has at or after that frame (records and held commits may be
//! read half way from one to the next: fjall's reads outside a snapshot see a batch as it is
//! being applied, and this test does not hold sluice to more). At the end, with nothing in
//! flight: the cursor is the last frame's; replaying the log from id 0 rebuilds the model's
//! records per repo, and the stored records are the model's; each repo's events are exactly
//! the model's changes (so exactly one account event per status change); states, handles and
//! held commits are the model's; the queue holds exactly the desynchronized and pending repos.
//!
//! Not driven here: the backfill's fetch (played, as above), a `since` that alone disagrees
//! (sluice checks `prevData` only, and the devnet makes no such frame), signal mode and
//! discarded repos, other shards' repos, restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use sluice::firehose::{Firehose, StreamPosition};
use sluice::identity::{Identity, Resolver, ResolverOptions};
use sluice::store::{Action, RepoState, RepoStatus, Store, StoredEvent};
use sluice::{Config, Filter, IndexOptions, Sluice};
use sluice_devnet::{Account, SyntheticEvent, SyntheticRepo, Tamper, rev_at};

/// Accounts per case.
const ACCOUNTS: usize = 3;
const COLLECTIONS: [&str; 2] = ["app.bsky.feed.post", "app.bsky.feed.like"];
/// Record keys per collection.
const RKEYS: usize = 4;
/// `#account` statuses; `active` is sent as `active: true` without a status.
const STATUSES: [&str; 7] =
    ["active", "takendown", "suspended", "deactivated", "deleted", "desynchronized", "throttled"];
const GONE: [&str; 4] = ["takendown", "suspended", "deactivated", "deleted"];
/// Every wait ends well within this.
const LIMIT: Duration = Duration::from_secs(20);
/// A case takes a fraction of a second; none may take more than this.
const CASE_LIMIT: Duration = Duration::from_secs(90);
/// Cases when `PROPTEST_CASES` does not say.
const CASES: u32 = 32;

// ---------------------------------------------------------------------------------------------
// The generated steps.

#[derive(Debug, Clone, Copy)]
enum Kind {
    Valid,
    /// The network commits; sluice never sees the frame.
    Missed,
    /// `prevData` names some other CID.
    BrokenPrevData,
    /// The frame claims the previous rev.
    StaleRev,
    /// Signed with another key.
    Forged,
}

#[derive(Debug, Clone, Copy)]
enum Change {
    /// Creates or updates `collection/rk<rkey>`.
    Put { collection: usize, rkey: usize },
    /// Deletes an existing record (or puts one when there is none).
    Delete(Pick),
}

#[derive(Debug, Clone)]
enum Step {
    Commit {
        acct: usize,
        kind: Kind,
        changes: Vec<Change>,
    },
    /// An earlier `#commit` of the account sent again under a new seq.
    Replay {
        acct: usize,
        which: Pick,
    },
    Account {
        acct: usize,
        status: usize,
    },
    Identity {
        acct: usize,
        handle: u8,
    },
    Sync {
        acct: usize,
    },
    /// Backfills one of the queued repos (the `which`-th), if any.
    Backfill {
        which: Pick,
        at: Pick,
    },
}

/// One of whatever list it is used on (modulo its length), shrinking toward the first.
#[derive(Debug, Clone, Copy)]
struct Pick(usize);

impl Pick {
    fn of(self, len: usize) -> usize {
        self.0 % len
    }
}

fn pick() -> impl Strategy<Value = Pick> {
    any::<usize>().prop_map(Pick)
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        10 => Just(Kind::Valid),
        1 => Just(Kind::Missed),
        1 => Just(Kind::BrokenPrevData),
        1 => Just(Kind::StaleRev),
        1 => Just(Kind::Forged),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (0..COLLECTIONS.len(), 0..RKEYS).prop_map(|(collection, rkey)| Change::Put { collection, rkey }),
        1 => pick().prop_map(Change::Delete),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let acct = 0..ACCOUNTS;
    prop_oneof![
        12 => (acct.clone(), kind(), prop::collection::vec(change(), 1..4))
            .prop_map(|(acct, kind, changes)| Step::Commit { acct, kind, changes }),
        2 => (acct.clone(), pick()).prop_map(|(acct, which)| Step::Replay { acct, which }),
        // `active` three times as often as each other status, so that gone repos come back.
        3 => (acct.clone(), prop_oneof![3 => Just(0usize), 6 => 1..STATUSES.len()])
            .prop_map(|(acct, status)| Step::Account { acct, status }),
        1 => (acct.clone(), 0..3u8).prop_map(|(acct, handle)| Step::Identity { acct, handle }),
        2 => acct.clone().prop_map(|acct| Step::Sync { acct }),
        4 => (pick(), pick()).prop_map(|(which, at)| Step::Backfill { which, at }),
    ]
}

/// Whether each account starts synced (at its empty repo) or unknown to sluice, and the steps.
fn case() -> impl Strategy<Value = ([bool; ACCOUNTS], Vec<Step>)> {
    (any::<[bool; ACCOUNTS]>(), prop::collection::vec(step(), 10..40))
}

// ---------------------------------------------------------------------------------------------
// The network: each account's repo as it really is, version by version.

/// A version of an account's repo.
#[derive(Debug, Clone)]
struct Version {
    rev: String,
    data: String,
    /// `collection/rkey` -> DAG-CBOR.
    records: BTreeMap<String, Vec<u8>>,
}

/// A `#commit` as the model sees it.
#[derive(Debug, Clone)]
struct CommitFrame {
    /// The frame's (and its signed commit's) rev.
    rev: String,
    /// `None`: a CID that is no repo's root.
    prev_data: Option<String>,
    /// The version the commit makes.
    version: usize,
    forged: bool,
}

struct Net {
    account: Account,
    repo: SyntheticRepo,
    versions: Vec<Version>,
    /// Every `#commit` made, delivered or not.
    commits: Vec<(SyntheticEvent, CommitFrame)>,
}

/// A record body: unique per `n`, so every put changes the CID.
fn record(collection: &str, n: u64) -> Vec<u8> {
    let value: BTreeMap<&str, String> = BTreeMap::from([
        ("$type", collection.to_string()),
        ("createdAt", "2024-01-01T00:00:00.000Z".to_string()),
        ("text", format!("version {n}")),
    ]);
    serde_ipld_dagcbor::to_vec(&value).unwrap()
}

fn cid_of(bytes: &[u8]) -> String {
    jacquard_repo::mst::util::compute_cid(bytes).unwrap().to_string()
}

/// `collection/rkey` -> CID as the store keys them: (collection, rkey) -> CID.
fn cids(records: &BTreeMap<String, Vec<u8>>) -> Records {
    records
        .iter()
        .map(|(key, bytes)| {
            let (collection, rkey) = key.split_once('/').unwrap();
            ((collection.to_string(), rkey.to_string()), cid_of(bytes))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The model: what sluice should hold for each account.

type Records = BTreeMap<(String, String), String>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Unknown,
    Synced,
    Pending,
    Desynchronized,
    /// With the reason (the account status).
    Gone(String),
    /// Stored, and no status the model ever gives.
    Other(RepoStatus),
}

/// What a repo's stored state is compared on: status, rev, data root, handle.
type StateView = (Status, Option<String>, Option<String>, Option<String>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    state: StateView,
    records: Records,
    held: BTreeSet<String>,
}

/// An event as compared: the DID is the repo's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Record { live: bool, rev: String, collection: String, rkey: String, action: &'static str, cid: Option<String> },
    Identity { handle: Option<String> },
    Account { active: bool, status: Option<String> },
}

/// What became of a frame (or of a held commit in a drain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Held,
    Stale,
    Desynchronized,
    Refused,
    Dropped,
}

/// What the model does with a frame.
#[derive(Debug, Clone)]
enum ModelFrame {
    Commit(CommitFrame),
    Sync { rev: String, data: String },
    Account(&'static str),
    Identity(String),
}

/// Counts over every case, to show what the cases reached.
#[derive(Debug, Default)]
struct Totals {
    cases: u64,
    steps: u64,
    frames: u64,
    applied: u64,
    held: u64,
    stale: u64,
    desynchronized: u64,
    refused: u64,
    dropped: u64,
    /// Held commits applied by a drain.
    drained: u64,
    backfills: u64,
    account_events: u64,
    /// Account frames that changed nothing and emitted nothing.
    account_no_ops: u64,
    statuses: BTreeSet<&'static str>,
    /// Checks made with frames still in flight / with the cursor behind the last frame.
    checks: u64,
    checks_in_flight: u64,
    checks_behind: u64,
}

struct ModelRepo {
    status: Status,
    rev: Option<String>,
    data: Option<String>,
    handle: Option<String>,
    /// The status the last `#account` that changed something said (`None`: active).
    account: Option<String>,
    records: Records,
    /// rev -> held commit (holding the same rev again keeps one).
    held: BTreeMap<String, CommitFrame>,
    /// The changes sluice commits, each one batch of events, with the step that made it.
    groups: Vec<(usize, Vec<Ev>)>,
    /// Each state the repo passes through, with the step that made it.
    snapshots: Vec<(usize, Snapshot)>,
    account_events: usize,
    /// The step being applied.
    step: usize,
}

impl ModelRepo {
    fn new(synced: Option<&Version>) -> Self {
        let mut repo = ModelRepo {
            status: if synced.is_some() { Status::Synced } else { Status::Unknown },
            rev: synced.map(|v| v.rev.clone()),
            data: synced.map(|v| v.data.clone()),
            handle: None,
            account: None,
            records: Records::new(),
            held: BTreeMap::new(),
            groups: Vec::new(),
            snapshots: Vec::new(),
            account_events: 0,
            step: 0,
        };
        repo.snap();
        repo
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: (self.status.clone(), self.rev.clone(), self.data.clone(), self.handle.clone()),
            records: self.records.clone(),
            held: self.held.keys().cloned().collect(),
        }
    }

    fn snap(&mut self) {
        let snapshot = self.snapshot();
        self.snapshots.push((self.step, snapshot));
    }

    fn emit(&mut self, events: Vec<Ev>) {
        if !events.is_empty() {
            self.groups.push((self.step, events));
        }
    }

    /// The record events that take the stored records to `new`.
    fn diff(&self, new: &Records, live: bool, rev: &str) -> Vec<Ev> {
        let ev = |(collection, rkey): &(String, String), action, cid: Option<&String>| Ev::Record {
            live,
            rev: rev.to_string(),
            collection: collection.clone(),
            rkey: rkey.clone(),
            action,
            cid: cid.cloned(),
        };
        let mut out = Vec::new();
        for (key, cid) in new {
            match self.records.get(key) {
                None => out.push(ev(key, "create", Some(cid))),
                Some(old) if old != cid => out.push(ev(key, "update", Some(cid))),
                Some(_) => {}
            }
        }
        for key in self.records.keys().filter(|k| !new.contains_key(*k)) {
            out.push(ev(key, "delete", None));
        }
        out
    }

    /// A frame of this repo, after the drain of its held commits that comes before it.
    fn frame(&mut self, frame: &ModelFrame, versions: &[Version], totals: &mut Totals) {
        if !self.held.is_empty() {
            self.drain(versions, totals);
        }
        match frame {
            ModelFrame::Commit(c) => {
                let outcome = self.commit(c, versions);
                totals.count(outcome);
            }
            ModelFrame::Sync { rev, data } => self.sync(rev, data),
            ModelFrame::Account(status) => self.account(status, totals),
            ModelFrame::Identity(handle) => self.identity(handle),
        }
    }

    fn hold(&mut self, c: &CommitFrame) {
        self.held.insert(c.rev.clone(), c.clone());
        self.snap();
    }

    fn commit(&mut self, c: &CommitFrame, versions: &[Version]) -> Outcome {
        match self.status {
            Status::Unknown => {
                // Discovery (full mode): queued for backfill, the commit held.
                self.status = Status::Pending;
                self.snap();
                self.hold(c);
                Outcome::Held
            }
            Status::Pending | Status::Desynchronized => {
                self.hold(c);
                Outcome::Held
            }
            Status::Gone(_) => Outcome::Dropped,
            Status::Synced => {
                if self.rev.as_deref().is_some_and(|stored| stored >= c.rev.as_str()) {
                    return Outcome::Stale;
                }
                if c.forged {
                    return Outcome::Refused;
                }
                if c.prev_data.is_some() && c.prev_data == self.data {
                    let version = &versions[c.version];
                    let new = cids(&version.records);
                    let events = self.diff(&new, true, &c.rev);
                    self.emit(events);
                    (self.records, self.rev, self.data) = (new, Some(c.rev.clone()), Some(version.data.clone()));
                    self.snap();
                    Outcome::Applied
                } else {
                    self.status = Status::Desynchronized;
                    self.snap();
                    self.hold(c);
                    Outcome::Desynchronized
                }
            }
            Status::Other(_) => unreachable!("the model never has other statuses"),
        }
    }

    /// Applies the held commits in rev order; returns whether none is left.
    fn drain(&mut self, versions: &[Version], totals: &mut Totals) -> bool {
        match self.status {
            Status::Gone(_) => {
                self.held.clear();
                self.snap();
                return true;
            }
            Status::Synced => {}
            _ => return false,
        }
        let mut done = Vec::new();
        let mut cleared = true;
        for (rev, c) in self.held.clone() {
            let outcome = self.commit(&c, versions);
            if matches!(outcome, Outcome::Held | Outcome::Desynchronized) {
                cleared = false;
                break;
            }
            if outcome == Outcome::Applied {
                totals.drained += 1;
            }
            done.push(rev);
        }
        for rev in done {
            self.held.remove(&rev);
        }
        self.snap();
        cleared
    }

    fn sync(&mut self, rev: &str, data: &str) {
        match self.status {
            Status::Unknown => self.status = Status::Pending,
            Status::Synced if self.rev.as_deref().is_some_and(|stored| stored >= rev) => {}
            Status::Synced if self.data.as_deref() == Some(data) => self.rev = Some(rev.to_string()),
            Status::Synced => self.status = Status::Desynchronized,
            _ => {}
        }
        self.snap();
    }

    fn identity(&mut self, handle: &str) {
        if self.status == Status::Unknown {
            return;
        }
        self.handle = Some(handle.to_string());
        self.emit(vec![Ev::Identity { handle: self.handle.clone() }]);
        self.snap();
    }

    /// `#account`: a status other than the one sluice knows the account to have is a change, with
    /// one event; the same one again is none.
    fn account(&mut self, status: &'static str, totals: &mut Totals) {
        totals.statuses.insert(status);
        if self.status == Status::Unknown {
            return;
        }
        let said = (status != "active").then(|| status.to_string());
        if said == self.account {
            totals.account_no_ops += 1;
            return;
        }
        self.account.clone_from(&said);
        let event = Ev::Account { active: said.is_none(), status: said };
        match status {
            "active" => {
                if let Status::Gone(_) = self.status {
                    self.status = Status::Pending;
                }
                self.emit(vec![event]);
            }
            "deleted" => {
                let rev = self.rev.clone().unwrap_or_default();
                let mut events = self.diff(&Records::new(), true, &rev);
                events.push(event);
                self.emit(events);
                self.records.clear();
                self.status = Status::Gone(status.to_string());
            }
            s if GONE.contains(&s) => {
                self.status = Status::Gone(s.to_string());
                self.emit(vec![event]);
            }
            // Relay-side: the repo stays as it is.
            _ => self.emit(vec![event]),
        }
        self.account_events += 1;
        totals.account_events += 1;
        self.snap();
    }

    /// The backfill of `version` commits (a walk: its records, synced at its rev), then the
    /// held commits are drained.
    fn backfill(&mut self, version: &Version, versions: &[Version], totals: &mut Totals) {
        let new = cids(&version.records);
        let events = self.diff(&new, false, &version.rev);
        self.emit(events);
        self.records = new;
        self.status = Status::Synced;
        self.rev = Some(version.rev.clone());
        self.data = Some(version.data.clone());
        self.snap();
        self.drain(versions, totals);
    }

    fn queued(&self) -> bool {
        matches!(self.status, Status::Pending | Status::Desynchronized)
    }
}

impl Totals {
    fn count(&mut self, outcome: Outcome) {
        *match outcome {
            Outcome::Applied => &mut self.applied,
            Outcome::Held => &mut self.held,
            Outcome::Stale => &mut self.stale,
            Outcome::Desynchronized => &mut self.desynchronized,
            Outcome::Refused => &mut self.refused,
            Outcome::Dropped => &mut self.dropped,
        } += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// What sluice holds.

fn observed_state(store: &Store, did: &str) -> StateView {
    let Some(s) = store.repos().state(did).unwrap() else { return (Status::Unknown, None, None, None) };
    let status = match s.status {
        RepoStatus::Synced => Status::Synced,
        RepoStatus::Pending => Status::Pending,
        RepoStatus::Desynchronized => Status::Desynchronized,
        RepoStatus::Gone => Status::Gone(s.error.clone().unwrap_or_default()),
        other => Status::Other(other),
    };
    (status, s.rev, s.data, s.handle)
}

fn observed_records(store: &Store, did: &str) -> Records {
    sluice_testkit::stored_cids(store, did)
}

fn observed_held(store: &Store, did: &str) -> BTreeSet<String> {
    store.held().commits(did).unwrap().into_iter().map(|(rev, _)| rev).collect()
}

fn ev_of(event: &StoredEvent) -> (String, Ev) {
    match event {
        StoredEvent::Record(r) => {
            let cid = (!r.cid.is_empty()).then(|| cid::Cid::read_bytes(&r.cid[..]).unwrap().to_string());
            let action = match r.action {
                Action::Create => "create",
                Action::Update => "update",
                Action::Delete => "delete",
            };
            let ev = Ev::Record {
                live: r.live,
                rev: r.rev.to_string(),
                collection: r.collection.to_string(),
                rkey: r.rkey.to_string(),
                action,
                cid,
            };
            (r.did.to_string(), ev)
        }
        StoredEvent::Identity(i) => (i.did.clone(), Ev::Identity { handle: i.handle.clone() }),
        StoredEvent::Account(a) => (a.did.clone(), Ev::Account { active: a.active, status: a.status.clone() }),
    }
}

/// The log's events per DID.
fn events_by_did(store: &Store) -> BTreeMap<String, Vec<Ev>> {
    let mut out: BTreeMap<String, Vec<Ev>> = BTreeMap::new();
    for (_, event) in store.log().from(0, usize::MAX).unwrap() {
        let (did, ev) = ev_of(&event);
        out.entry(did).or_default().push(ev);
    }
    out
}

/// Splits `events` into the model's `groups` (each compared as a set: the order within one
/// change is the pipeline's); returns how many whole groups they are, or why they are not.
fn whole_groups(events: &[Ev], groups: &[(usize, Vec<Ev>)]) -> Result<usize, String> {
    let (mut at, mut n) = (0, 0);
    while at < events.len() {
        let Some((step, group)) = groups.get(n) else {
            return Err(format!("events beyond the model's {} changes: {:?}", groups.len(), &events[at..]));
        };
        let Some(got) = events.get(at..at + group.len()) else {
            return Err(format!("change {n} (step {step}) only in part: {:?}, expected {group:?}", &events[at..]));
        };
        let (mut got, mut want) = (got.to_vec(), group.clone());
        got.sort();
        want.sort();
        if got != want {
            return Err(format!("change {n} (step {step}): got {got:?}, expected {want:?}"));
        }
        (at, n) = (at + group.len(), n + 1);
    }
    Ok(n)
}

/// Whether `seen` is one of `snapshots` (by `part`), or on the way from one to the next: each
/// key as in one or the other.
fn on_the_way<S, K: Ord, V: PartialEq>(
    snapshots: &[&S],
    part: impl Fn(&S) -> &BTreeMap<K, V>,
    seen: &BTreeMap<K, V>,
) -> bool {
    (0..snapshots.len()).any(|i| {
        let (a, b) = (part(snapshots[i]), part(snapshots[(i + 1).min(snapshots.len() - 1)]));
        seen.keys().chain(a.keys()).chain(b.keys()).all(|k| seen.get(k) == a.get(k) || seen.get(k) == b.get(k))
    })
}

/// Replays the log from id 0: ids gapless, each create finds no record, each update and
/// delete finds one, each body hashes to its CID. Returns did -> records.
fn replay(store: &Store) -> BTreeMap<String, Records> {
    let mut state: BTreeMap<String, Records> = BTreeMap::new();
    for (i, (id, event)) in store.log().from(0, usize::MAX).unwrap().into_iter().enumerate() {
        assert_eq!(id, i as u64 + 1, "event ids are gapless");
        let StoredEvent::Record(r) = &event else { continue };
        let records = state.entry(r.did.to_string()).or_default();
        let key = (r.collection.to_string(), r.rkey.to_string());
        match r.action {
            Action::Delete => assert!(records.remove(&key).is_some(), "event {id} deletes a missing record: {r:?}"),
            action => {
                let cid = cid::Cid::read_bytes(&r.cid[..]).unwrap().to_string();
                let body = store.log().body(r).unwrap().expect("a record event's body");
                assert_eq!(cid_of(&body), cid, "event {id}'s body is its CID's");
                let existed = records.insert(key, cid).is_some();
                assert_eq!(existed, action == Action::Update, "event {id} is an {action:?}: {r:?}");
            }
        }
    }
    state
}

// ---------------------------------------------------------------------------------------------
// One case.

struct Harness {
    firehose: Arc<Firehose>,
    sluice: Sluice,
    resolver: Arc<Resolver>,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    net: Vec<Net>,
    model: Vec<ModelRepo>,
    /// The last seq given out (missed frames take one too).
    seq: i64,
    /// The last seq delivered.
    delivered: i64,
    /// Delivered frames: (seq, account, step).
    frames: Vec<(i64, usize, usize)>,
    /// Per account, the last step the test waited for (a backfill and its drain).
    waited: [usize; ACCOUNTS],
    /// The cursor saved at the last check.
    cursor: i64,
    /// Counts the record bodies made, so each is new.
    bodies: u64,
    /// Counts revs handed out.
    revs: u64,
    step: usize,
    /// References to the store before live ingestion took its own.
    baseline: usize,
}

impl Harness {
    fn new(synced: [bool; ACCOUNTS], seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.storage.path = dir.path().join("data");
        config.firehose.shards = 2;
        assert!(config.backfill.enabled(), "discovered and desynchronized repos are queued for a backfill");
        let sluice = Sluice::builder()
            .config(config.clone())
            .filter(Filter::from_toml("mode = \"full\"\n", "model.toml").unwrap())
            .open()
            .unwrap();
        // No client speaks this scheme: a look-up fails at once, without a connection.
        let resolver = Arc::new(Resolver::new(ResolverOptions { plc_url: "no-network:".into(), ..Default::default() }));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let baseline = Arc::strong_count(sluice.store());
        let firehose = {
            let _entered = runtime.enter();
            Firehose::new(sluice.pipeline().clone(), resolver.clone(), &config, Arc::default()).unwrap()
        };
        let (mut net, mut model) = (Vec::new(), Vec::new());
        for (i, synced) in synced.into_iter().enumerate() {
            let account = Account::new(seed * 16 + i as u64);
            let repo = SyntheticRepo::new(&account, &rev_at(0)).unwrap();
            let empty = Version {
                rev: repo.rev().to_string(),
                data: repo.data().unwrap().to_string(),
                records: BTreeMap::new(),
            };
            if synced {
                let state = RepoState {
                    status: RepoStatus::Synced,
                    rev: Some(empty.rev.clone()),
                    data: Some(empty.data.clone()),
                    ..Default::default()
                };
                sluice.store().set_states(&[(account.did.clone(), state)], None).unwrap();
            }
            model.push(ModelRepo::new(synced.then_some(&empty)));
            net.push(Net { account, repo, versions: vec![empty], commits: Vec::new() });
        }
        let harness = Harness {
            firehose,
            sluice,
            resolver,
            _runtime: runtime,
            _dir: dir,
            net,
            model,
            seq: 0,
            delivered: 0,
            frames: Vec::new(),
            waited: [0; ACCOUNTS],
            cursor: 0,
            bodies: 0,
            revs: 0,
            step: 0,
            baseline,
        };
        for i in 0..ACCOUNTS {
            harness.prime(i);
        }
        harness
    }

    /// Stops live ingestion: the shard threads end once their queues are gone, and are waited
    /// for (they hold the store) before the data directory is removed.
    fn close(self) {
        let Harness { firehose, sluice, baseline, .. } = self;
        drop(firehose);
        let deadline = Instant::now() + LIMIT;
        while Arc::strong_count(sluice.store()) > baseline {
            assert!(Instant::now() < deadline, "the shard threads did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn store(&self) -> &Arc<Store> {
        self.sluice.store()
    }

    fn did(&self, acct: usize) -> &str {
        &self.net[acct].account.did
    }

    /// Makes `acct`'s key known, as the PLC directory would.
    fn prime(&self, acct: usize) {
        let account = &self.net[acct].account;
        self.resolver.prime(Identity {
            did: account.did.clone(),
            pds: "http://127.0.0.1:1".into(),
            key: sluice::repo::parse_public_key(&account.did_key()).unwrap(),
            handle: None,
        });
    }

    fn run(&mut self, steps: &[Step], totals: &mut Totals) {
        let started = Instant::now();
        for step in steps {
            assert!(started.elapsed() < CASE_LIMIT, "the case took over {CASE_LIMIT:?} by step {}", self.step);
            self.step += 1;
            for repo in &mut self.model {
                repo.step = self.step;
            }
            self.apply(step, totals);
            self.check(totals);
        }
        self.quiesce();
        self.finish(totals);
    }

    fn apply(&mut self, step: &Step, totals: &mut Totals) {
        match step {
            Step::Commit { acct, kind, changes } => self.commit(*acct, *kind, changes, totals),
            Step::Replay { acct, which } => {
                if !self.net[*acct].commits.is_empty() {
                    let (event, frame) = self.net[*acct].commits[which.of(self.net[*acct].commits.len())].clone();
                    self.deliver(*acct, &event, ModelFrame::Commit(frame), totals);
                }
            }
            Step::Account { acct, status } => {
                let status = STATUSES[*status];
                let event = match status {
                    "active" => self.net[*acct].repo.account(true, None),
                    s => self.net[*acct].repo.account(false, Some(s)),
                };
                self.deliver(*acct, &event, ModelFrame::Account(status), totals);
            }
            Step::Identity { acct, handle } => {
                let handle = format!("user{acct}-{handle}.test");
                let event = self.net[*acct].repo.identity(&handle);
                self.deliver(*acct, &event, ModelFrame::Identity(handle), totals);
                // The frame drops the cached key: once it is handled, the "PLC" answers again.
                self.quiesce();
                self.prime(*acct);
            }
            Step::Sync { acct } => {
                let net = &self.net[*acct];
                let current = net.versions.last().unwrap();
                let frame = ModelFrame::Sync { rev: current.rev.clone(), data: current.data.clone() };
                let event = net.repo.sync().unwrap();
                self.deliver(*acct, &event, frame, totals);
            }
            Step::Backfill { which, at } => {
                let queued: Vec<usize> = (0..ACCOUNTS).filter(|&i| self.model[i].queued()).collect();
                if !queued.is_empty() {
                    self.backfill(queued[which.of(queued.len())], *at, totals);
                }
            }
        }
    }

    /// A commit of `changes` on the network, its frame delivered as `kind` says.
    fn commit(&mut self, acct: usize, kind: Kind, changes: &[Change], totals: &mut Totals) {
        let net = &self.net[acct];
        let before = net.versions.last().unwrap().clone();
        let mut records = before.records.clone();
        let mut ops: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for change in changes {
            let existing: Vec<&String> = records.keys().filter(|k| !ops.iter().any(|(key, _)| key == *k)).collect();
            let (key, put) = match change {
                Change::Delete(which) if !existing.is_empty() => (existing[which.of(existing.len())].clone(), false),
                Change::Delete(which) => (format!("{}/rk{}", COLLECTIONS[0], which.of(RKEYS)), true),
                Change::Put { collection, rkey } => (format!("{}/rk{rkey}", COLLECTIONS[*collection]), true),
            };
            if ops.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let body = put.then(|| {
                self.bodies += 1;
                record(key.split('/').next().unwrap(), self.bodies)
            });
            match &body {
                Some(b) => records.insert(key.clone(), b.clone()),
                None => records.remove(&key),
            };
            ops.push((key, body));
        }
        self.revs += 1;
        let rev = rev_at(1_000 + self.revs);
        let tamper = match kind {
            Kind::Valid | Kind::Missed => None,
            Kind::BrokenPrevData => Some(Tamper::BrokenPrevData),
            Kind::StaleRev => Some(Tamper::StaleRev),
            Kind::Forged => Some(Tamper::ForgedSignature),
        };
        let net = &mut self.net[acct];
        let event = net.repo.commit(&rev, &ops, tamper).unwrap();
        let data = net.repo.data().unwrap().to_string();
        net.versions.push(Version { rev: rev.clone(), data, records });
        let frame = CommitFrame {
            rev: if matches!(kind, Kind::StaleRev) { before.rev.clone() } else { rev },
            prev_data: (!matches!(kind, Kind::BrokenPrevData)).then(|| before.data.clone()),
            version: net.versions.len() - 1,
            forged: matches!(kind, Kind::Forged),
        };
        net.commits.push((event.clone(), frame.clone()));
        if matches!(kind, Kind::Missed) {
            self.seq += 1;
        } else {
            self.deliver(acct, &event, ModelFrame::Commit(frame), totals);
        }
    }

    /// Numbers `event`, has the model take it, and hands it to live ingestion.
    fn deliver(&mut self, acct: usize, event: &SyntheticEvent, frame: ModelFrame, totals: &mut Totals) {
        self.seq += 1;
        let raw = event.frame(self.seq);
        self.model[acct].frame(&frame, &self.net[acct].versions, totals);
        totals.frames += 1;
        self.frames.push((self.seq, acct, self.step));
        self.delivered = self.seq;
        self.firehose.ingest(Bytes::from(raw));
    }

    /// Plays the backfill of `acct` at a version the network had, at or after the stored rev.
    fn backfill(&mut self, acct: usize, at: Pick, totals: &mut Totals) {
        self.quiesce();
        let net = &self.net[acct];
        let stored = self.model[acct].rev.clone().unwrap_or_default();
        let from = net.versions.iter().position(|v| v.rev >= stored).unwrap();
        let version = net.versions[from + at.of(net.versions.len() - from)].clone();
        let car = sluice_devnet::export_car_blocking(&net.account, &version.rev, &version.records).unwrap();
        let opts =
            IndexOptions { expected_did: Some(net.account.did.clone()), signing_key: Some(net.account.did_key()) };
        let loaded = self.sluice.load_car(&car, &opts).unwrap();
        assert_eq!(loaded.data().to_string(), version.data, "the export is the network's repo at {}", version.rev);
        self.sluice.index_loaded(&loaded).unwrap();
        self.firehose.request_drain(&net.account.did);
        self.model[acct].backfill(&version, &self.net[acct].versions, totals);
        totals.backfills += 1;
        self.waited[acct] = self.step;
        // The drain runs on the repo's shard: wait until it has done what the model did.
        let want = self.model[acct].snapshot();
        let did = self.did(acct).to_string();
        let deadline = Instant::now() + LIMIT;
        loop {
            let store = self.store();
            let got = Snapshot {
                state: observed_state(store, &did),
                records: observed_records(store, &did),
                held: observed_held(store, &did),
            };
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "step {}: after the backfill of {did}:\n got {got:?}\nwant {want:?}",
                self.step
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until no frame is in flight.
    fn quiesce(&self) {
        let deadline = Instant::now() + LIMIT;
        while self.firehose.in_flight() > 0 {
            assert!(Instant::now() < deadline, "frames still in flight after {LIMIT:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Saves the cursor as the periodic save does, and checks that every frame at or below it
    /// has its effects committed, frames above it being in flight or not.
    fn check(&mut self, totals: &mut Totals) {
        let in_flight = self.firehose.in_flight() > 0;
        self.firehose.save_cursor().unwrap();
        let saved = self.store().cursors().get(sluice::firehose::CURSOR).unwrap();
        let cursor = saved.map_or(0, |c| c.parse::<i64>().unwrap());
        let step = self.step;
        assert!(cursor >= self.cursor, "step {step}: the cursor went back from {} to {cursor}", self.cursor);
        assert!(cursor <= self.delivered, "step {step}: cursor {cursor} is past the last frame {}", self.delivered);
        self.cursor = cursor;
        totals.checks += 1;
        totals.checks_in_flight += in_flight as u64;
        totals.checks_behind += (cursor < self.delivered) as u64;
        // Read after the cursor: everything at or below it must show.
        let events = events_by_did(self.store());
        for acct in 0..ACCOUNTS {
            let did = self.did(acct).to_string();
            let model = &self.model[acct];
            let last_frame = self.frames.iter().filter(|(seq, a, _)| *a == acct && *seq <= cursor).map(|f| f.2).max();
            let done = last_frame.unwrap_or(0).max(self.waited[acct]);
            let needed = model.groups.iter().filter(|(s, _)| *s <= done).count();
            let got = whole_groups(events.get(&did).map_or(&[][..], |e| &e[..]), &model.groups)
                .unwrap_or_else(|e| panic!("step {step}, cursor {cursor}, {did}: {e}"));
            assert!(
                got >= needed,
                "step {step}: cursor {cursor} covers {did}'s frames up to step {done}, whose {needed} changes \
                 should be in the log; {got} are"
            );
            // The state, records and held commits are each one the repo had at or after `done`,
            // or on the way from one to the next: fjall's reads outside a snapshot may see part of
            // a batch being written (its `prefix` reads at the newest seqno, not a published one).
            let from = model.snapshots.iter().rposition(|(s, _)| *s <= done).unwrap();
            let allowed: Vec<&Snapshot> = model.snapshots[from..].iter().map(|(_, s)| s).collect();
            let store = self.store();
            let state = observed_state(store, &did);
            assert!(
                allowed.iter().any(|s| s.state == state),
                "step {step}: cursor {cursor} covers {did}'s frames up to step {done}; its state {state:?} is none \
                 of {:?}",
                allowed.iter().map(|s| &s.state).collect::<Vec<_>>()
            );
            let records = observed_records(store, &did);
            assert!(
                on_the_way(&allowed, |s| &s.records, &records),
                "step {step}: cursor {cursor} covers {did}'s frames up to step {done}; its records {records:?} are \
                 none of {:?}",
                allowed.iter().map(|s| &s.records).collect::<Vec<_>>()
            );
            let held: BTreeMap<String, ()> = observed_held(store, &did).into_iter().map(|r| (r, ())).collect();
            let held_of = |s: &Snapshot| s.held.iter().map(|r| (r.clone(), ())).collect::<BTreeMap<_, _>>();
            let allowed_held: Vec<BTreeMap<String, ()>> = allowed.iter().map(|s| held_of(s)).collect();
            assert!(
                on_the_way(&allowed_held.iter().collect::<Vec<_>>(), |h| h, &held),
                "step {step}: cursor {cursor} covers {did}'s frames up to step {done}; its held commits {:?} \
                 are none of {:?}",
                held.keys().collect::<Vec<_>>(),
                allowed.iter().map(|s| &s.held).collect::<Vec<_>>()
            );
        }
    }

    /// With nothing in flight: everything is exactly the model's.
    fn finish(&mut self, totals: &mut Totals) {
        self.firehose.save_cursor().unwrap();
        let saved = self.store().cursors().get(sluice::firehose::CURSOR).unwrap();
        let cursor = saved.map_or(0, |c| c.parse::<i64>().unwrap());
        assert_eq!(cursor, self.delivered, "with nothing in flight the cursor is the last frame's");
        let replayed = replay(self.store());
        let events = events_by_did(self.store());
        let mut queued_dids = BTreeSet::new();
        for acct in 0..ACCOUNTS {
            let did = self.did(acct).to_string();
            let model = &self.model[acct];
            let store = self.store();
            assert_eq!(
                replayed.get(&did).cloned().unwrap_or_default(),
                model.records,
                "{did}: replaying the log builds the model's records"
            );
            assert_eq!(observed_records(store, &did), model.records, "{did}: the stored records are the model's");
            let mine = events.get(&did).map_or(&[][..], |e| &e[..]);
            let whole = whole_groups(mine, &model.groups).unwrap_or_else(|e| panic!("{did}: {e}"));
            assert_eq!(whole, model.groups.len(), "{did}: every change of the model is in the log");
            let accounts = mine.iter().filter(|e| matches!(e, Ev::Account { .. })).count();
            assert_eq!(accounts, model.account_events, "{did}: one account event per status change");
            let want = model.snapshot();
            assert_eq!(observed_state(store, &did), want.state, "{did}: the state is the model's");
            assert_eq!(observed_held(store, &did), want.held, "{did}: the held commits are the model's");
            if model.queued() {
                queued_dids.insert(did);
            }
        }
        let taken = self.store().queue().take_due(u64::MAX, 100, &Default::default()).unwrap();
        let queued: BTreeSet<String> = taken.into_iter().map(|(did, _)| did).collect();
        assert_eq!(queued, queued_dids, "the queue holds the pending and desynchronized repos");
        totals.cases += 1;
        totals.steps += self.step as u64;
    }
}

/// The cases to run: `PROPTEST_CASES`, else [`CASES`].
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(CASES)
}

#[test]
fn live_ingestion_follows_the_model() {
    let started = Instant::now();
    let config = ProptestConfig {
        cases: cases(),
        max_shrink_iters: 512,
        max_shrink_time: 120_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let totals = std::sync::Mutex::new(Totals::default());
    let seeds = std::sync::atomic::AtomicU64::new(1);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |(synced, steps)| {
        let seed = seeds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut totals = totals.lock().unwrap_or_else(|e| e.into_inner());
        let mut harness = Harness::new(synced, seed);
        harness.run(&steps, &mut totals);
        harness.close();
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let totals = totals.into_inner().unwrap();
    eprintln!("{totals:#?}\nin {:.1} s", started.elapsed().as_secs_f64());
    if totals.cases >= 16 {
        // What the cases must have reached for the checks to mean something.
        assert!(totals.applied > 0 && totals.held > 0 && totals.stale > 0, "{totals:?}");
        assert!(totals.desynchronized > 0 && totals.refused > 0 && totals.dropped > 0, "{totals:?}");
        assert!(totals.drained > 0, "some held commits are applied after a backfill: {totals:?}");
        assert!(totals.account_no_ops > 0, "some account frames change nothing: {totals:?}");
        assert_eq!(totals.statuses.len(), STATUSES.len(), "every status is sent: {totals:?}");
        assert!(totals.checks_behind > 0, "some checks find the cursor behind the last frame: {totals:?}");
    }
}

/// Found by the model test: with no cursor saved yet, the arrival of frame 2 saved cursor 1
/// while frame 1 (the first of a stream that starts at seq 1) was still being applied, so a
/// crash then resumed after a frame that never took effect.
#[test]
fn the_first_save_does_not_pass_a_frame_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let position = StreamPosition::load(store.clone()).unwrap();
    let saved = || store.cursors().get(sluice::firehose::CURSOR).unwrap();
    position.arrived(1);
    position.tracker().dispatched(1);
    position.arrived(2);
    position.tracker().dispatched(2);
    assert_eq!(saved(), None, "frame 1 is not finished");
    position.tracker().finished(2);
    position.tracker().finished(1);
    position.save().unwrap();
    assert_eq!(saved().as_deref(), Some("2"));

    // A stream joined at seq 100: the position before it is saved at once, as before.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let position = StreamPosition::load(store.clone()).unwrap();
    position.arrived(100);
    assert_eq!(store.cursors().get(sluice::firehose::CURSOR).unwrap().as_deref(), Some("99"));
}

/// Found by the model test: a backfill's walk wrote the repo's state afresh and forgot the
/// relay-side status an `#account` had left (`throttled`, `desynchronized`), so `active`
/// afterwards was taken for a frame that changes nothing: no event, and a consumer of the log
/// saw the account stay inactive for good.
#[test]
fn a_backfill_keeps_what_the_relay_said_of_the_account() {
    let mut harness = Harness::new([true, false, false], 1 << 20);
    let steps = [
        Step::Account { acct: 0, status: STATUSES.iter().position(|s| *s == "throttled").unwrap() },
        Step::Commit { acct: 0, kind: Kind::BrokenPrevData, changes: vec![Change::Put { collection: 0, rkey: 0 }] },
        Step::Backfill { which: Pick(0), at: Pick(1) },
        Step::Account { acct: 0, status: 0 },
    ];
    let mut totals = Totals::default();
    harness.run(&steps, &mut totals);
    assert_eq!((totals.backfills, totals.account_events), (1, 2), "throttled, then active again: {totals:?}");
    harness.close();
}
