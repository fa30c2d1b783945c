//! The handle index and the handle-check queue, kept in step with repo states.
//!
//! - `handles`: lowercased handle -> DID, for every repo whose handle was checked and found to
//!   be its own ([`RepoState::handle_ok`]). XRPC resolves at-identifiers through it, so a
//!   handle that a DID document claims but that does not resolve back addresses nothing.
//! - `handle_checks`: DID -> empty, the repos whose handle waits for a check (a new or changed
//!   handle, or an `#identity` frame). The handle checker (`crate::handles`) takes from it.
//!
//! Every state write stages through [`HandleIndex::stage`]: a write that changes the handle
//! clears the verdict and queues a check; one that keeps the handle keeps the verdict, whatever
//! the writer's copy of the state says. Only [`Handles::set_verdict`] sets a verdict. A verdict
//! is a state write, under the writer lock, so callers reach the index through [`Handles`], a
//! view that borrows the store ([`Store::handles`]); the keyspaces are [`HandleIndex`]'s alone.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};

use fjall::Keyspace;

use super::repos::Repos;
use super::values::{RepoState, RepoStatus};
use super::{Result, Store};

/// Whether two stored handles are the same handle (handles are case-insensitive).
fn same_handle(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        (None, None) => true,
        _ => false,
    }
}

/// The `handles` key of a state: its handle, lowercased, when it was found to be its own.
fn indexed(state: &RepoState) -> Option<String> {
    state.handle.as_deref().filter(|_| state.handle_ok == Some(true)).map(str::to_ascii_lowercase)
}

/// Whether a state's handle waits for a check.
fn needs_check(state: &RepoState) -> bool {
    state.handle.is_some() && state.handle_ok.is_none() && state.status != RepoStatus::Discarded
}

/// The handles part: owns `handles` and `handle_checks`.
pub(super) struct HandleIndex {
    handles: Keyspace,
    checks: Keyspace,
}

impl HandleIndex {
    pub(super) fn new(handles: Keyspace, checks: Keyspace) -> Self {
        Self { handles, checks }
    }

    /// Settles `new`'s handle verdict against `old` (see the module's rule, unless `verdict`
    /// is the checker's own) and stages the index and queue changes that follow. A repo that
    /// held the handle before loses it: its state (read from and staged into `repos`) says so
    /// in the same batch. Runs under the writer lock.
    pub(super) fn stage(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        repos: &Repos,
        did: &str,
        old: Option<&RepoState>,
        new: &mut RepoState,
        verdict: bool,
    ) -> Result<()> {
        if !verdict {
            new.handle_ok = match old {
                Some(old) if same_handle(old.handle.as_deref(), new.handle.as_deref()) => old.handle_ok,
                _ => None,
            };
        }
        // Most writes (every live commit, every backfill batch) keep the handle and its
        // verdict: the index is not touched, and no lowercased key is built.
        let unchanged = old.is_some_and(|o| o.handle == new.handle && o.handle_ok == new.handle_ok);
        let (was, now) = if unchanged { (None, None) } else { (old.and_then(indexed), indexed(new)) };
        if was != now {
            if let Some(h) = was
                && self.handles.get(h.as_bytes())?.is_some_and(|owner| &*owner == did.as_bytes())
            {
                batch.remove(&self.handles, h.as_bytes());
            }
            if let Some(h) = now {
                // A handle resolves to one DID: a repo that held it before lost it.
                if let Some(before) = self.handles.get(h.as_bytes())?
                    && &*before != did.as_bytes()
                {
                    let before = String::from_utf8_lossy(&before);
                    if let Some(state) = repos.state(&before)? {
                        repos.stage(batch, &before, &RepoState { handle_ok: Some(false), ..state });
                    }
                }
                batch.insert(&self.handles, h.as_bytes(), did.as_bytes());
            }
        }
        if needs_check(new) && !old.is_some_and(needs_check) {
            batch.insert(&self.checks, did.as_bytes(), []);
        }
        Ok(())
    }
}

/// The handle index as its users reach it ([`Store::handles`]): `HandleIndex` with the
/// repo states it follows and the state write a verdict goes through.
#[derive(Clone, Copy)]
pub struct Handles<'s> {
    store: &'s Store,
}

impl<'s> Handles<'s> {
    pub(super) fn new(store: &'s Store) -> Self {
        Self { store }
    }

    fn index(&self) -> &'s HandleIndex {
        &self.store.handles
    }

    /// The DID whose own handle `handle` is, as far as sluice has checked.
    pub fn did_for(&self, handle: &str) -> Result<Option<String>> {
        let owner = self.index().handles.get(handle.to_ascii_lowercase().as_bytes())?;
        Ok(owner.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Up to `limit` repos waiting for a handle check, in DID order after `after`.
    pub fn checks_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let lo = after.map_or(Unbounded, |did| Excluded(did.as_bytes()));
        let mut out = Vec::new();
        for kv in self.index().checks.range::<&[u8], _>((lo, Unbounded)).take(limit) {
            out.push(String::from_utf8_lossy(&kv.key()?).into_owned());
        }
        Ok(out)
    }

    /// Asks for `did`'s handle to be checked again (an `#identity` frame came).
    pub fn request_check(&self, did: &str) -> Result<()> {
        self.store.db.write(|| self.index().checks.insert(did.as_bytes(), []))
    }

    /// Records the checker's verdict on `did`'s handle: `handle` (what its DID document names
    /// now, which may differ from what was stored) is its own or not. Takes the repo off the
    /// check queue. A repo sluice no longer has is only taken off.
    pub fn set_verdict(&self, did: &str, handle: Option<String>, ok: bool) -> Result<()> {
        let store = self.store;
        let mut batch = store.db.batch(4);
        batch.remove(&self.index().checks, did.as_bytes());
        let writer = store.writer.lock().expect("writer lock");
        if let Some(old) = store.repos.state(did)? {
            let handle_ok = handle.is_some().then_some(ok);
            let new = RepoState { handle, handle_ok, ..old.clone() };
            // Only the handle changes: no counter or queue entry moves.
            let mut deltas = BTreeMap::new();
            store.stage_state(&mut batch, &mut deltas, &writer, did, Some(old), new, true)?;
        }
        store.db.commit(batch)?;
        drop(writer);
        Ok(())
    }

    /// Queues a check for every repo whose handle was never checked (stores written before
    /// handles were checked), `limit` states at a time from `after`; returns where to go on
    /// from, `None` at the end.
    pub fn queue_unchecked(&self, after: Option<&str>, limit: usize) -> Result<Option<String>> {
        let (page, last) = self.store.repos.page(after, limit, limit, needs_check)?;
        for (did, _) in &page {
            self.request_check(did)?;
        }
        Ok(last)
    }
}

#[cfg(test)]
mod props {
    //! The store against a model written from the rules alone (the module's doc and
    //! ARCHITECTURE.md's "a handle names a repo only after it resolved back to it; the writer's
    //! say-so never stands"), not from this module's helpers: per DID the handle and verdict
    //! the ops lead to, and the check queue as a set.

    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use proptest::prelude::*;

    const DIDS: [&str; 3] = ["did:plc:aaa", "did:plc:bbb", "did:plc:ccc"];
    /// Five spellings of three handles: handles are case-insensitive.
    const HANDLES: [&str; 5] = ["a.test", "A.Test", "b.test", "B.TEST", "c.test"];

    #[derive(Debug, Clone)]
    enum Op {
        /// A writer stores states (distinct DIDs, one batch): each with this handle (none:
        /// `None`), a verdict of the writer's own, and discarded or synced.
        Store(Vec<(usize, Option<usize>, Option<bool>, bool)>),
        /// The checker's verdict: the handle the DID document names now, and whether it
        /// resolved back.
        Verdict { did: usize, handle: Option<usize>, ok: bool },
        /// An `#identity` frame asks for a check.
        Request { did: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        let state = (0..3usize, proptest::option::of(0..5usize), proptest::option::of(any::<bool>()), any::<bool>());
        prop_oneof![
            4 => proptest::collection::vec(state, 1..3).prop_map(|mut states| {
                let mut seen = BTreeSet::new();
                states.retain(|s| seen.insert(s.0));
                Op::Store(states)
            }),
            4 => (0..3usize, proptest::option::of(0..5usize), any::<bool>())
                .prop_map(|(did, handle, ok)| Op::Verdict { did, handle, ok }),
            1 => (0..3usize).prop_map(|did| Op::Request { did }),
        ]
    }

    /// What the model keeps of a repo.
    #[derive(Debug, Clone, PartialEq)]
    struct Repo {
        handle: Option<String>,
        /// The checker's verdict on `handle`; `None`: not checked.
        ok: Option<bool>,
        discarded: bool,
    }

    #[derive(Debug, Default)]
    struct Model {
        repos: BTreeMap<String, Repo>,
        queue: BTreeSet<String>,
    }

    fn same(a: &Option<String>, b: &Option<String>) -> bool {
        a.as_deref().map(str::to_lowercase) == b.as_deref().map(str::to_lowercase)
    }

    impl Model {
        /// A writer's state: the verdict it claims never stands. The verdict stored before
        /// stays when the handle is the same (in any case), and is gone when it changed. A
        /// handle that waits for a check (it has none) is queued, unless nothing of the repo
        /// is kept (discarded). A discarded repo keeps a verdict it had, and so its place in
        /// the index: the index says whose handle it is, and queries answer a discarded repo as
        /// not found whatever names it.
        fn store(&mut self, did: &str, handle: Option<String>, discarded: bool) {
            let ok = self.repos.get(did).filter(|r| same(&r.handle, &handle)).and_then(|r| r.ok);
            if handle.is_some() && ok.is_none() && !discarded {
                self.queue.insert(did.to_string());
            }
            self.repos.insert(did.to_string(), Repo { handle, ok, discarded });
        }

        /// The checker's verdict stands, on the handle it checked; the repo leaves the queue.
        /// A handle found good for one repo is no longer good for any other that had it.
        fn verdict(&mut self, did: &str, handle: Option<String>, ok: bool) {
            self.queue.remove(did);
            let Some(repo) = self.repos.get_mut(did) else { return };
            repo.ok = handle.as_ref().map(|_| ok);
            repo.handle = handle.clone();
            if repo.ok == Some(true) {
                for (other, repo) in self.repos.iter_mut() {
                    if other != did && repo.ok == Some(true) && same(&repo.handle, &handle) {
                        repo.ok = Some(false);
                    }
                }
            }
        }

        /// The `handles` index it implies: each good handle, lowercased, to its repo.
        fn index(&self) -> BTreeMap<String, String> {
            let mut index = BTreeMap::new();
            for (did, repo) in &self.repos {
                if let (Some(handle), Some(true)) = (&repo.handle, repo.ok) {
                    let before = index.insert(handle.to_lowercase(), did.clone());
                    assert_eq!(before, None, "the model gives {handle} to one repo");
                }
            }
            index
        }
    }

    fn handle(i: Option<usize>) -> Option<String> {
        i.map(|h| HANDLES[h].to_string())
    }

    /// The store's `handles` keyspace, whole.
    fn stored_index(store: &Store) -> BTreeMap<String, String> {
        store
            .handles
            .handles
            .iter()
            .map(|kv| {
                let (h, d) = kv.into_inner().unwrap();
                (String::from_utf8(h.to_vec()).unwrap(), String::from_utf8(d.to_vec()).unwrap())
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever writers and the checker do, in any order and across reopens, the stored
        /// handles and verdicts, the `handles` index (every key, and lookups in any case) and
        /// the check queue are what the model says, after every op.
        #[test]
        fn the_index_and_the_queue_follow_the_states(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let mut model = Model::default();
            for (step, op) in ops.iter().enumerate() {
                match op {
                    Op::Store(states) => {
                        let mut batch = Vec::new();
                        for &(did, h, claimed, discarded) in states {
                            let status = if discarded { RepoStatus::Discarded } else { RepoStatus::Synced };
                            let state = RepoState { status, handle: handle(h), handle_ok: claimed, ..Default::default() };
                            batch.push((DIDS[did].to_string(), state));
                            model.store(DIDS[did], handle(h), discarded);
                        }
                        store.set_states(&batch, None).unwrap();
                    }
                    &Op::Verdict { did, handle: h, ok } => {
                        store.handles().set_verdict(DIDS[did], handle(h), ok).unwrap();
                        model.verdict(DIDS[did], handle(h), ok);
                    }
                    &Op::Request { did } => {
                        store.handles().request_check(DIDS[did]).unwrap();
                        model.queue.insert(DIDS[did].to_string());
                    }
                }
                check(&store, &model, &format!("step {step}: {op:?}"))?;
            }
            // What was committed is what a reopened store reads (in a quarter of the cases: an
            // open costs more than the ops).
            if ops.len() % 4 == 0 {
                drop(store);
                check(&Store::open(dir.path()).unwrap(), &model, "after a reopen")?;
            }
        }
    }

    /// The stored states, the whole `handles` index, lookups in any case, and the check queue
    /// are the model's.
    fn check(store: &Store, model: &Model, at: &str) -> Result<(), TestCaseError> {
        let states: BTreeMap<String, Repo> = store
            .repos()
            .all()
            .unwrap()
            .into_iter()
            .map(|(did, s)| {
                let discarded = s.status == RepoStatus::Discarded;
                (did, Repo { handle: s.handle, ok: s.handle_ok, discarded })
            })
            .collect();
        prop_assert_eq!(&states, &model.repos, "{}: the states", at);
        let index = model.index();
        prop_assert_eq!(stored_index(store), index.clone(), "{}: the index", at);
        for h in HANDLES.iter().flat_map(|h| [h.to_string(), h.to_uppercase()]) {
            prop_assert_eq!(
                store.handles().did_for(&h).unwrap(),
                index.get(&h.to_lowercase()).cloned(),
                "{}: {} resolves as the model says",
                at,
                h
            );
        }
        let queue: BTreeSet<String> = store.handles().checks_after(None, 100).unwrap().into_iter().collect();
        prop_assert_eq!(&queue, &model.queue, "{}: the check queue", at);
        Ok(())
    }
}
