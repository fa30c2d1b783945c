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
    use super::*;
    use proptest::prelude::*;

    const DIDS: [&str; 3] = ["did:plc:aaa", "did:plc:bbb", "did:plc:ccc"];
    const HANDLES: [&str; 3] = ["a.test", "B.test", "b.TEST"];

    #[derive(Debug, Clone)]
    enum Op {
        /// A writer stores a state with this handle (none: `None`) and some verdict of its own.
        Store { did: usize, handle: Option<usize>, claimed: Option<bool>, discarded: bool },
        /// The checker's verdict.
        Verdict { did: usize, handle: Option<usize>, ok: bool },
        /// An `#identity` frame asks for a check.
        Request { did: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, proptest::option::of(0..3usize), proptest::option::of(any::<bool>()), any::<bool>())
                .prop_map(|(did, handle, claimed, discarded)| Op::Store { did, handle, claimed, discarded }),
            (0..3usize, proptest::option::of(0..3usize), any::<bool>()).prop_map(|(did, handle, ok)| Op::Verdict {
                did,
                handle,
                ok
            }),
            (0..3usize).prop_map(|did| Op::Request { did }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever writers and the checker do, in any order: an indexed handle is its repo's
        /// current, checked-good handle; every checked-good handle is indexed (a handle found
        /// good for one repo is no longer good for the one that held it); a writer's own
        /// verdict never stands; and every handle that waits for a check is queued.
        #[test]
        fn the_index_and_the_queue_follow_the_states(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            for op in ops {
                match op {
                    Op::Store { did, handle, claimed, discarded } => {
                        let before = store.repos().state(DIDS[did]).unwrap();
                        let status = if discarded { RepoStatus::Discarded } else { RepoStatus::Synced };
                        let handle = handle.map(|h| HANDLES[h].to_string());
                        let state =
                            RepoState { status, handle: handle.clone(), handle_ok: claimed, ..Default::default() };
                        store.set_states(&[(DIDS[did].to_string(), state)], None).unwrap();
                        let after = store.repos().state(DIDS[did]).unwrap().unwrap();
                        let kept = before
                            .filter(|b| same_handle(b.handle.as_deref(), handle.as_deref()))
                            .and_then(|b| b.handle_ok);
                        prop_assert_eq!(after.handle_ok, kept, "a writer's verdict never stands");
                    }
                    Op::Verdict { did, handle, ok } => {
                        store.handles().set_verdict(DIDS[did], handle.map(|h| HANDLES[h].to_string()), ok).unwrap()
                    }
                    Op::Request { did } => store.handles().request_check(DIDS[did]).unwrap(),
                }
                let states: Vec<(String, RepoState)> = DIDS
                    .iter()
                    .filter_map(|d| store.repos().state(d).unwrap().map(|s| (d.to_string(), s)))
                    .collect();
                for kv in store.handles.handles.iter() {
                    let (h, d) = kv.into_inner().unwrap();
                    let (h, d) = (String::from_utf8(h.to_vec()).unwrap(), String::from_utf8(d.to_vec()).unwrap());
                    let state = &states.iter().find(|(did, _)| *did == d).expect("an indexed repo exists").1;
                    prop_assert_eq!(indexed(state), Some(h.clone()), "{} -> {} is its current, good handle", h, d);
                }
                for (did, state) in &states {
                    if let Some(h) = indexed(state) {
                        prop_assert_eq!(
                            store.handles().did_for(&h).unwrap(),
                            Some(did.clone()),
                            "{}'s good handle {} is indexed",
                            did,
                            h
                        );
                    }
                    if needs_check(state) {
                        prop_assert!(
                            store.handles().checks_after(None, 10).unwrap().contains(did),
                            "{}'s handle waits for a check",
                            did
                        );
                    }
                }
            }
        }
    }
}
