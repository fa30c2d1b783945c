//! The backfill queue's storage: repo state writes outside the pipeline, and reads of the
//! `pending` index (repos ordered by when they are due).
//!
//! The index is never written directly: every state write (these and the pipeline's) moves the
//! repo's entry to match [`RepoState::queue_due`], under the writer lock.

use std::collections::{BTreeMap, HashSet};

use fjall::PersistMode;

use super::values::{Cursor, now_ms};
use super::{Result, Store, keys};
use crate::store::{RepoState, Stored};

impl Store {
    /// Writes the states of several repos, and optionally a cursor, in one batch.
    pub fn set_states(&self, states: &[(String, RepoState)], cursor: Option<(&str, &str)>) -> Result<()> {
        let mut batch = fjall::OwnedWriteBatch::with_capacity(self.db.clone(), 3 * states.len() + 4).durability(Some(PersistMode::Buffer));
        let mut deltas = BTreeMap::new();
        let writer = self.writer.lock().expect("writer lock");
        let mut queued = false;
        for (did, state) in states {
            queued |= self.stage_state_change(&mut batch, &mut deltas, did, state)?;
            batch.insert(&self.repos, did.as_bytes(), state.encode());
        }
        if let Some((service, value)) = cursor {
            batch.insert(&self.cursors, service.as_bytes(), Cursor { value: value.to_string(), updated_ms: now_ms() }.encode());
        }
        let new_counts = self.stage_counts(&mut batch, &writer, deltas);
        batch.commit()?;
        let mut writer = writer;
        writer.counts.extend(new_counts);
        if queued {
            self.queue_changed();
        }
        Ok(())
    }

    /// Queues the repos among `dids` that sluice does not know yet (no state) as pending, with
    /// an optional cursor in the same batch; returns how many were new.
    pub fn enqueue_new(&self, dids: &[String], cursor: Option<(&str, &str)>) -> Result<usize> {
        let pending = dids.iter().map(|did| (did.clone(), RepoState { updated_ms: now_ms(), ..Default::default() }));
        Ok(self.add_unknown_repos(pending, cursor)?.len())
    }

    /// Writes the states of the repos among `candidates` that sluice does not know yet (no
    /// state), and optionally a cursor, in one batch; returns the states written.
    pub fn add_unknown_repos(&self, candidates: impl IntoIterator<Item = (String, RepoState)>, cursor: Option<(&str, &str)>) -> Result<Vec<(String, RepoState)>> {
        let mut fresh = Vec::new();
        for (did, state) in candidates {
            if self.repos.get(did.as_bytes())?.is_none() {
                fresh.push((did, state));
            }
        }
        self.set_states(&fresh, cursor)?;
        Ok(fresh)
    }

    /// Up to `limit` queued repos due at `now_ms`, earliest first, skipping those in `skip`
    /// (in flight).
    pub fn due_repos(&self, now_ms: u64, limit: usize, skip: &HashSet<String>) -> Result<Vec<(String, RepoState)>> {
        let mut out = Vec::new();
        for kv in self.pending.range(..keys::pending(now_ms.saturating_add(1), "")) {
            let key = kv.key()?;
            let (_, did) = keys::parse_pending(&key)?;
            if skip.contains(did) {
                continue;
            }
            if let Some(state) = self.repo_state(did)? {
                out.push((did.to_string(), state));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// When the earliest queued repo is due (unix ms), or `None` when the queue is empty.
    /// Repos in `skip` (in flight) are not counted.
    pub fn next_due_ms(&self, skip: &HashSet<String>) -> Result<Option<u64>> {
        for kv in self.pending.iter() {
            let key = kv.key()?;
            let (due, did) = keys::parse_pending(&key)?;
            if !skip.contains(did) {
                return Ok(Some(due));
            }
        }
        Ok(None)
    }

    /// Makes the next crawl list the relay from the start (every `crawler` cursor emptied).
    pub fn reset_crawl(&self) -> Result<()> {
        let services: Vec<String> = self.cursors()?.into_keys().filter(|k| k == "crawler" || k.starts_with("crawler/")).collect();
        for service in services {
            self.set_states(&[], Some((&service, "")))?;
        }
        Ok(())
    }

    /// Every repo state, in DID order.
    pub fn repo_states(&self) -> Result<Vec<(String, RepoState)>> {
        self.repos
            .iter()
            .map(|kv| {
                let (k, v) = kv.into_inner()?;
                Ok((String::from_utf8_lossy(&k).into_owned(), RepoState::decode(&v)?))
            })
            .collect()
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
        assert_eq!(store.enqueue_new(&dids, Some(("crawler", "c1"))).unwrap(), 2);
        assert_eq!(store.enqueue_new(&dids, None).unwrap(), 0, "known repos are not queued again");
        assert_eq!(queued(&store), vec![(0, "did:plc:a".into()), (0, "did:plc:b".into())]);
        assert_eq!(store.cursors().unwrap()["crawler"].0, "c1");

        store.set_states(&[("did:plc:a".into(), state(RepoStatus::Backfilling, None))], None).unwrap();
        assert_eq!(queued(&store).len(), 2, "a repo in flight stays queued until it commits");
        store.set_states(&[("did:plc:a".into(), state(RepoStatus::Error, Some(5_000)))], None).unwrap();
        assert_eq!(queued(&store), vec![(0, "did:plc:b".into()), (5_000, "did:plc:a".into())]);
        assert_eq!(store.due_repos(4_999, 10, &HashSet::new()).unwrap().len(), 1);
        assert_eq!(store.due_repos(5_000, 10, &HashSet::new()).unwrap().len(), 2);
        let skip: HashSet<String> = ["did:plc:b".to_string()].into();
        assert_eq!(store.next_due_ms(&skip).unwrap(), Some(5_000));

        // The pipeline's commit of a repo's final state takes it off the queue.
        store.commit(RepoChange { did: "did:plc:b".into(), state: Some(state(RepoStatus::Synced, None)), ..Default::default() }).unwrap();
        store.set_states(&[("did:plc:a".into(), state(RepoStatus::Error, None))], None).unwrap();
        assert!(queued(&store).is_empty(), "synced and out-of-retries repos are not queued");
        let counts = store.counts();
        assert_eq!(counts[&("repos".into(), "synced".into())], 1);
        assert_eq!(counts[&("repos".into(), "error".into())], 1);
        assert_eq!(counts.get(&("repos".into(), "pending".into())).copied().unwrap_or(0), 0);
        assert_eq!((store.repo_count(RepoStatus::Synced), store.repo_count(RepoStatus::Pending)), (1, 0));

        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.repo_states().unwrap().len(), 2);
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
        store.enqueue_new(std::slice::from_ref(&a), None).unwrap();
        assert!(moved(), "a new repo is queued");
        store.enqueue_new(std::slice::from_ref(&a), None).unwrap();
        assert!(!moved(), "a known repo is not queued again");
        store.set_states(&[(a.clone(), state(RepoStatus::Backfilling, None))], None).unwrap();
        assert!(!moved(), "taking it in flight keeps its place");
        store.set_states(&[(a.clone(), state(RepoStatus::Error, Some(5_000)))], None).unwrap();
        assert!(moved(), "a retry is a new due time");
        store.commit(RepoChange { did: a.clone(), state: Some(state(RepoStatus::Synced, None)), ..Default::default() }).unwrap();
        assert!(!moved(), "leaving the queue wakes no one");
        store.commit(RepoChange { did: a, state: Some(state(RepoStatus::Desynchronized, None)), ..Default::default() }).unwrap();
        assert!(moved(), "a desynchronized repo is queued by the pipeline's commit");
    }
}
