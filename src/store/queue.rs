//! The backfill queue: `pending` (due ms BE + DID -> empty), an index of the repos whose
//! [`RepoState::queue_due`] is set, ordered by when they are due; and takes from it.
//!
//! The index is never written directly: every state write (the pipeline's commits and
//! `Store::set_states`) moves the repo's entry to match its state ([`QueueIndex::stage`]),
//! in the state's batch, under the writer lock.
//!
//! Taking costs the same whether ten or forty million repos were queued and taken before: a
//! take scans on from where the last one stopped ([`Scan`]), never from the index's start,
//! so the tombstones that taken repos leave behind are not walked again. That holds because
//! no entry is ever written behind that position: before a take scans the entries due by
//! `now`, it raises the queue's floor past `now` (under the writer lock, which keeps the
//! floor), and a repo entering the queue later is due no earlier than the floor. So a repo
//! queued for "now" is due just after those already handed out, and the queue is first in,
//! first out among them. Behind the position stay only the entries of repos in flight, which
//! leave the queue (or move ahead of the position) when they end. The position lives in
//! memory: a new backfill run starts from the index's start ([`Queue::rewind`]), once.
//!
//! Takes wait on the writer lock and check entries against the repo states, so callers reach
//! the queue through [`Queue`], a view that borrows the store ([`Store::queue`]); the index and
//! the position are [`QueueIndex`]'s alone.

use std::collections::{HashSet, VecDeque};
use std::ops::Bound;
use std::sync::Mutex;

use fjall::Keyspace;

use super::values::now_ms;
use super::{RepoState, Result, Store, keys};

/// Entries a take reads from the `pending` index at once: one range scan serves that many
/// takes.
pub const SCAN_AHEAD: usize = 256;

/// Where takes from the `pending` index stand.
#[derive(Debug, Default)]
struct Scan {
    /// The last entry read: the next read starts after it (`None`: at the start).
    after: Option<Vec<u8>>,
    /// Entries read and not handed out yet, in the index's order: (due, did).
    ready: VecDeque<(u64, String)>,
    /// Entries read from the index so far.
    examined: u64,
}

/// The queue part: owns `pending` and where takes from it stand.
pub(super) struct QueueIndex {
    pending: Keyspace,
    scan: Mutex<Scan>,
}

impl QueueIndex {
    pub(super) fn new(pending: Keyspace) -> Self {
        Self { pending, scan: Mutex::default() }
    }

    /// Moves `did`'s entry from `old_due` to follow `new`'s due time, in `batch`. A repo
    /// entering the queue (or moving in it) is due no earlier than `floor_ms` (the writer's),
    /// and `new` records the due time it got. Returns whether the repo enters the queue or gets
    /// a new due time there. Runs under the writer lock.
    pub(super) fn stage(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        did: &str,
        old_due: Option<u64>,
        new: &mut RepoState,
        floor_ms: u64,
    ) -> bool {
        let moves = old_due != new.queue_due();
        if moves {
            if let Some(due) = old_due {
                batch.remove(&self.pending, keys::pending(due, did));
            }
            if let Some(due) = new.queue_due() {
                let due = due.max(floor_ms);
                new.next_retry_ms = Some(due);
                batch.insert(&self.pending, keys::pending(due, did), []);
            }
        }
        moves && new.queue_due().is_some()
    }
}

/// The backfill queue as its users reach it ([`Store::queue`]): `QueueIndex` with the repo
/// states its entries are checked against and the writer lock its takes raise the floor under.
#[derive(Clone, Copy)]
pub struct Queue<'s> {
    store: &'s Store,
}

impl<'s> Queue<'s> {
    pub(super) fn new(store: &'s Store) -> Self {
        Self { store }
    }

    fn index(&self) -> &'s QueueIndex {
        &self.store.queue
    }

    /// Queues the repos among `dids` that sluice does not know yet (no state) as pending, with
    /// an optional cursor in the same batch; returns how many were new.
    pub fn enqueue_new(&self, dids: &[String], cursor: Option<(&str, &str)>) -> Result<usize> {
        let pending = dids.iter().map(|did| (did.clone(), RepoState { updated_ms: now_ms(), ..Default::default() }));
        Ok(self.add_unknown(pending, cursor)?.len())
    }

    /// Writes the states of the repos among `candidates` that sluice does not know yet (no
    /// state), and optionally a cursor, in one batch; returns the states written.
    pub fn add_unknown(
        &self,
        candidates: impl IntoIterator<Item = (String, RepoState)>,
        cursor: Option<(&str, &str)>,
    ) -> Result<Vec<(String, RepoState)>> {
        let mut fresh = Vec::new();
        for (did, state) in candidates {
            if !self.store.repos.contains(&did)? {
                fresh.push((did, state));
            }
        }
        self.store.set_states(&fresh, cursor)?;
        Ok(fresh)
    }

    /// Takes up to `limit` queued repos due at `now_ms`, earliest first, skipping those in
    /// `skip` (in flight). Each entry is handed out once: the next take goes on after it, and
    /// a repo handed out comes again only once it is queued again (a retry, a requeue), or
    /// after [`Queue::rewind`]. Entries are read from the index [`SCAN_AHEAD`] at a time
    /// and handed out from memory, each checked against its repo's stored state then.
    pub fn take_due(&self, now_ms: u64, limit: usize, skip: &HashSet<String>) -> Result<Vec<(String, RepoState)>> {
        let mut scan = self.index().scan.lock().expect("queue scan lock");
        let mut out = Vec::new();
        while out.len() < limit {
            // Read on until something is handed out or nothing due is left: each entry is
            // read once, however many were skipped.
            let Some((due, did)) = scan.ready.pop_front() else {
                if !self.refill(&mut scan, now_ms, limit.max(SCAN_AHEAD))? {
                    break;
                }
                continue;
            };
            if skip.contains(&did) {
                continue;
            }
            // An entry read ahead may have moved (ahead of the scan, where it is found again)
            // or left the queue since.
            match self.store.repos.state(&did)? {
                Some(state) if state.queue_due() == Some(due) => out.push((did, state)),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Reads up to `n` more entries due by `now_ms` into `scan.ready`, on from the scan's
    /// position; returns whether it found any. First raises the queue's floor past the range it
    /// reads, under the writer lock, so that no entry is written behind the position later.
    fn refill(&self, scan: &mut Scan, now_ms: u64, n: usize) -> Result<bool> {
        let upto = {
            let mut writer = self.store.writer.lock().expect("writer lock");
            // Never below an earlier range, even if the clock stepped back.
            let upto = now_ms.max(writer.queue_floor_ms.saturating_sub(1));
            writer.queue_floor_ms = upto.saturating_add(1);
            upto
        };
        let from = scan.after.clone().map_or(Bound::Unbounded, Bound::Excluded);
        let until = Bound::Excluded(keys::pending(upto.saturating_add(1), ""));
        for kv in self.index().pending.range((from, until)).take(n) {
            let key = kv.key()?;
            scan.examined += 1;
            let (due, did) = keys::parse_pending(&key)?;
            scan.ready.push_back((due, did.to_string()));
            scan.after = Some(key.to_vec());
        }
        Ok(!scan.ready.is_empty())
    }

    /// When the earliest queued repo not yet taken is due (unix ms), or `None` when none is
    /// left. Repos in `skip` (in flight) are not counted. Looks on from the last take, as it
    /// does.
    pub fn next_due_ms(&self, skip: &HashSet<String>) -> Result<Option<u64>> {
        let mut scan = self.index().scan.lock().expect("queue scan lock");
        let mut i = 0;
        while let Some((due, did)) = scan.ready.get(i) {
            if skip.contains(did) {
                i += 1;
            } else if self.store.repos.state(did)?.is_some_and(|s| s.queue_due() == Some(*due)) {
                return Ok(Some(*due));
            } else {
                // Moved or left the queue since it was read: no take would hand it out.
                scan.ready.remove(i);
            }
        }
        let from = scan.after.clone().map_or(Bound::Unbounded, Bound::Excluded);
        for kv in self.index().pending.range::<Vec<u8>, _>((from, Bound::Unbounded)) {
            let key = kv.key()?;
            scan.examined += 1;
            let (due, did) = keys::parse_pending(&key)?;
            if !skip.contains(did) {
                return Ok(Some(due));
            }
        }
        Ok(None)
    }

    /// Makes the next take start from the queue's first entry: for a new backfill run, whose
    /// in-flight set starts empty, so that repos left in flight by an earlier run are taken
    /// again.
    pub fn rewind(&self) {
        let mut scan = self.index().scan.lock().expect("queue scan lock");
        scan.after = None;
        scan.ready.clear();
    }

    /// How many `pending` entries takes and `next_due_ms` have read from the index: what
    /// the queue costs, for tests and benchmarks.
    pub fn entries_examined(&self) -> u64 {
        self.index().scan.lock().expect("queue scan lock").examined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RepoChange, RepoStatus};

    fn state(status: RepoStatus, next_retry_ms: Option<u64>) -> RepoState {
        RepoState { status, next_retry_ms, ..Default::default() }
    }

    fn queued(store: &Store) -> Vec<(u64, String)> {
        store
            .queue
            .pending
            .iter()
            .map(|kv| {
                let k = kv.key().unwrap();
                let (due, did) = keys::parse_pending(&k).unwrap();
                (due, did.to_string())
            })
            .collect()
    }

    #[test]
    fn the_queue_index_follows_every_state_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let dids: Vec<String> = ["did:plc:b", "did:plc:a"].map(String::from).to_vec();
        assert_eq!(store.queue().enqueue_new(&dids, Some(("crawler", "c1"))).unwrap(), 2);
        assert_eq!(store.queue().enqueue_new(&dids, None).unwrap(), 0, "known repos are not queued again");
        assert_eq!(queued(&store), vec![(0, "did:plc:a".into()), (0, "did:plc:b".into())]);
        assert_eq!(store.cursors().get("crawler").unwrap().unwrap(), "c1");

        store.set_states(&[("did:plc:a".into(), state(RepoStatus::Backfilling, None))], None).unwrap();
        assert_eq!(queued(&store).len(), 2, "a repo in flight stays queued until it commits");
        store.set_states(&[("did:plc:a".into(), state(RepoStatus::Error, Some(5_000)))], None).unwrap();
        assert_eq!(queued(&store), vec![(0, "did:plc:b".into()), (5_000, "did:plc:a".into())]);
        let skip: HashSet<String> = ["did:plc:b".to_string()].into();
        assert_eq!(store.queue().next_due_ms(&skip).unwrap(), Some(5_000));
        let taken = |store: &Store, now| {
            store
                .queue()
                .take_due(now, 10, &HashSet::new())
                .unwrap()
                .into_iter()
                .map(|(did, _)| did)
                .collect::<Vec<_>>()
        };
        assert_eq!(taken(&store, 4_999), ["did:plc:b"]);
        assert_eq!(taken(&store, 5_000), ["did:plc:a"], "each entry is handed out once");
        assert!(taken(&store, 6_000).is_empty());
        assert_eq!(store.queue().next_due_ms(&HashSet::new()).unwrap(), None, "nothing left that was not taken");
        store.queue().rewind();
        assert_eq!(taken(&store, 6_000), ["did:plc:b", "did:plc:a"], "a new run takes what is still queued again");

        // The pipeline's commit of a repo's final state takes it off the queue.
        store
            .commit(RepoChange {
                did: "did:plc:b".into(),
                state: Some(state(RepoStatus::Synced, None)),
                ..Default::default()
            })
            .unwrap();
        store.set_states(&[("did:plc:a".into(), state(RepoStatus::Error, None))], None).unwrap();
        assert!(queued(&store).is_empty(), "synced and out-of-retries repos are not queued");
        let counts = store.counts();
        assert_eq!(counts[&("repos".into(), "synced".into())], 1);
        assert_eq!(counts[&("repos".into(), "error".into())], 1);
        assert_eq!(counts.get(&("repos".into(), "pending".into())).copied().unwrap_or(0), 0);
        assert_eq!((store.repo_count(RepoStatus::Synced), store.repo_count(RepoStatus::Pending)), (1, 0));

        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.repos().all().unwrap().len(), 2);
        assert_eq!(store.counts()[&("repos".into(), "error".into())], 1);
    }

    /// The scheduler waits on `watch_queue`: it must change when a repo enters the queue (or
    /// gets a new due time), and only then, whichever write does it.
    #[test]
    fn the_queue_watch_changes_when_a_repo_is_queued_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let watch = store.watch_queue();
        let mut seen = *watch.borrow();
        // Whether the watch moved since the last look.
        let mut moved = || {
            let now = *watch.borrow();
            std::mem::replace(&mut seen, now) != now
        };
        let a = "did:plc:a".to_string();
        store.queue().enqueue_new(std::slice::from_ref(&a), None).unwrap();
        assert!(moved(), "a new repo is queued");
        store.queue().enqueue_new(std::slice::from_ref(&a), None).unwrap();
        assert!(!moved(), "a known repo is not queued again");
        store.set_states(&[(a.clone(), state(RepoStatus::Backfilling, None))], None).unwrap();
        assert!(!moved(), "taking it in flight keeps its place");
        store.set_states(&[(a.clone(), state(RepoStatus::Error, Some(5_000)))], None).unwrap();
        assert!(moved(), "a retry is a new due time");
        store
            .commit(RepoChange { did: a.clone(), state: Some(state(RepoStatus::Synced, None)), ..Default::default() })
            .unwrap();
        assert!(!moved(), "leaving the queue wakes no one");
        store
            .commit(RepoChange { did: a, state: Some(state(RepoStatus::Desynchronized, None)), ..Default::default() })
            .unwrap();
        assert!(moved(), "a desynchronized repo is queued by the pipeline's commit");
    }
}

/// The queue against a model of it, over any interleaving of what the backfill does to it.
#[cfg(test)]
mod props {
    use std::collections::{BTreeMap, HashSet};

    use proptest::prelude::*;

    use crate::store::schedule::{self, RetryPolicy};
    use crate::store::{RepoChange, RepoState, RepoStatus, Store};

    #[derive(Debug, Clone)]
    enum Op {
        /// A repo sluice did not know is queued (the crawler).
        Queue(usize),
        /// The clock moves on by this many ms and the scheduler takes one repo.
        Take(u64),
        /// The n-th repo in flight ends synced: it leaves the queue.
        Finish(usize),
        /// The n-th repo in flight fails: queued again after a backoff.
        Fail(usize),
        /// A repo not in flight is queued again now (a filter edit, `--did`).
        Requeue(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0..12usize).prop_map(Op::Queue),
            3 => (0..40_000u64).prop_map(Op::Take),
            1 => (0..4usize).prop_map(Op::Finish),
            1 => (0..4usize).prop_map(Op::Fail),
            1 => (0..12usize).prop_map(Op::Requeue),
        ]
    }

    const POLICY: RetryPolicy = RetryPolicy { min_ms: 1_000, max_ms: 60_000, max_retries: 3 };

    fn did(i: usize) -> String {
        format!("did:plc:repo{i:02}")
    }

    /// The due time the store gave a repo (its queue position).
    fn due_of(store: &Store, did: &str) -> u64 {
        store.repos().state(did).unwrap().and_then(|s| s.queue_due()).expect("queued")
    }

    /// The store under test beside a model of its queue.
    struct Model {
        store: Store,
        _dir: tempfile::TempDir,
        now: u64,
        /// The time of the last take (the queue's floor is just past it).
        last_take: u64,
        /// Repos queued and not in flight, with the due time the store gave them.
        queued: BTreeMap<String, u64>,
        in_flight: Vec<String>,
        /// Entries written to the index, and entries takes have read from it.
        written: u64,
        read_by_takes: u64,
    }

    impl Model {
        /// A store where `tombstones` repos were queued, taken and finished before.
        fn after_tombstones(tombstones: usize) -> Result<Self, TestCaseError> {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let now = 1_000_000u64;
            let old: Vec<String> = (0..tombstones).map(|i| format!("did:plc:old{i:05}")).collect();
            store.queue().enqueue_new(&old, None).unwrap();
            prop_assert_eq!(store.queue().take_due(now, tombstones, &HashSet::new()).unwrap().len(), tombstones);
            let done: Vec<(String, RepoState)> = old
                .iter()
                .map(|d| (d.clone(), RepoState { status: RepoStatus::Synced, ..Default::default() }))
                .collect();
            store.set_states(&done, None).unwrap();
            let read_by_takes = store.queue().entries_examined();
            Ok(Self {
                store,
                _dir: dir,
                now,
                last_take: now,
                queued: BTreeMap::new(),
                in_flight: Vec::new(),
                written: tombstones as u64,
                read_by_takes,
            })
        }

        /// Writes `state` for `did` and, when it is queued, checks the due time it got
        /// against `wanted` (the state's own) and the floor.
        fn write(&mut self, did: &str, state: RepoState) -> Result<(), TestCaseError> {
            self.store.set_states(&[(did.to_string(), state.clone())], None).unwrap();
            if let Some(wanted) = state.queue_due() {
                self.written += 1;
                let due = due_of(&self.store, did);
                prop_assert!(
                    due >= wanted && due <= wanted.max(self.last_take + 1),
                    "due {} for {} wanted",
                    due,
                    wanted
                );
                self.queued.insert(did.to_string(), due);
            }
            Ok(())
        }

        /// The scheduler's take at `now`, held to the model.
        fn take(&mut self) -> Result<(), TestCaseError> {
            self.last_take = self.now;
            let skip: HashSet<String> = self.in_flight.iter().cloned().collect();
            let before = self.store.queue().entries_examined();
            let got = self.store.queue().take_due(self.now, 1, &skip).unwrap();
            self.read_by_takes += self.store.queue().entries_examined() - before;
            prop_assert!(
                self.read_by_takes <= self.written,
                "takes read {} entries of {} written",
                self.read_by_takes,
                self.written
            );
            let earliest = self.queued.values().copied().filter(|&due| due <= self.now).min();
            match got.first() {
                None => prop_assert_eq!(earliest, None, "a due repo was not handed out"),
                Some((d, state)) => {
                    let due = self.queued.remove(d);
                    prop_assert!(due.is_some(), "{} handed out but not queued (or in flight)", d);
                    prop_assert_eq!(due, earliest, "not the earliest due repo");
                    prop_assert_eq!(state.queue_due(), due);
                    self.in_flight.push(d.clone());
                }
            }
            Ok(())
        }

        fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
            match op {
                Op::Queue(i) if self.store.repos().state(&did(i)).unwrap().is_none() => {
                    self.write(&did(i), RepoState::default())?
                }
                Op::Take(dt) => {
                    self.now += dt;
                    self.take()?;
                }
                Op::Finish(n) if !self.in_flight.is_empty() => {
                    let d = self.in_flight.remove(n % self.in_flight.len());
                    self.store
                        .commit(RepoChange {
                            did: d,
                            state: Some(RepoState { status: RepoStatus::Synced, ..Default::default() }),
                            ..Default::default()
                        })
                        .unwrap();
                }
                Op::Fail(n) if !self.in_flight.is_empty() => {
                    let d = self.in_flight.remove(n % self.in_flight.len());
                    let state = self.store.repos().state(&d).unwrap().unwrap();
                    self.write(&d, POLICY.failed(&state, "boom".into(), self.now, 0.0))?;
                }
                Op::Requeue(i) if !self.in_flight.contains(&did(i)) => {
                    let state = self.store.repos().state(&did(i)).unwrap().unwrap_or_default();
                    self.write(&did(i), schedule::requeued(&state, 0, self.now))?;
                }
                _ => {}
            }
            Ok(())
        }

        /// `next_due_ms` gives the earliest repo not taken, reading at most one entry.
        fn check_next_due(&self) -> Result<(), TestCaseError> {
            let skip: HashSet<String> = self.in_flight.iter().cloned().collect();
            let before = self.store.queue().entries_examined();
            prop_assert_eq!(self.store.queue().next_due_ms(&skip).unwrap(), self.queued.values().copied().min());
            prop_assert!(
                self.store.queue().entries_examined() - before <= 1,
                "next_due_ms reads at most the next entry"
            );
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Every take hands out the earliest due repo that is queued and not in flight, and
        /// only when one is due; so every due repo is handed out exactly once per time it is
        /// queued, in due order. However many repos were queued and taken before (`tombstones`
        /// of them, up front), takes read each entry of the index once: what they read stays
        /// within the entries ever written.
        #[test]
        fn takes_hand_out_each_due_repo_once_in_due_order(
            tombstones in 0..1_500usize,
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let mut model = Model::after_tombstones(tombstones)?;
            for op in ops {
                model.apply(op)?;
                model.check_next_due()?;
            }
        }
    }
}
