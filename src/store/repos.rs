//! Repo states: `repos` (DID -> [`RepoState`]), one per repo sluice knows.
//!
//! A state is written only by the store's state write (`Store::stage_state`, under the writer
//! lock), which stages with it what follows from it: its status counters, its queue entry
//! ([`super::Queue`]) and its handle index entries ([`super::Handles`]); so those indexes never
//! disagree with the states. The one other row written here is the handle index's: a repo that
//! lost its handle to another gets `handle_ok = false` in the same batch. Reads never scan
//! from the start for a page: [`Repos::page`] goes on from a DID cursor.

use std::ops::Bound::{Excluded, Unbounded};

use fjall::Keyspace;

use super::Result;
use super::values::{RepoState, Stored};

/// A page of repo states in DID order, and where the next page starts (the DID after which to
/// go on), `None` when the scan reached the end.
pub type StatePage = (Vec<(String, RepoState)>, Option<String>);

/// The repo states part: owns `repos`.
pub struct Repos {
    repos: Keyspace,
}

impl Repos {
    pub(super) fn new(repos: Keyspace) -> Self {
        Self { repos }
    }

    /// Puts `did`'s state in `batch`. Only the state write calls it, with what follows from the
    /// state staged beside it.
    pub(super) fn stage(&self, batch: &mut fjall::OwnedWriteBatch, did: &str, state: &RepoState) {
        batch.insert(&self.repos, did.as_bytes(), state.encode());
    }

    /// Whether `did` has a state (its value is not decoded).
    pub(super) fn contains(&self, did: &str) -> Result<bool> {
        Ok(self.repos.get(did.as_bytes())?.is_some())
    }

    /// A repo's state.
    pub fn state(&self, did: &str) -> Result<Option<RepoState>> {
        self.repos.get(did.as_bytes())?.map(|v| RepoState::decode(&v)).transpose().map_err(Into::into)
    }

    /// Every repo state, in DID order, in memory at once: for tests and small stores
    /// ([`Repos::page`] walks a large one).
    pub fn all(&self) -> Result<Vec<(String, RepoState)>> {
        self.repos
            .iter()
            .map(|kv| {
                let (k, v) = kv.into_inner()?;
                Ok((String::from_utf8_lossy(&k).into_owned(), RepoState::decode(&v)?))
            })
            .collect()
    }

    /// Repo states in DID order after `after` (exclusive), those `keep` accepts, up to `limit`.
    /// At most `max_scan` states are read: a store of mostly unwanted repos (say, discarded
    /// ones) ends a page short, with a `next` cursor at the last DID read. A full page reads
    /// on to the next kept state, so `next` is `None` exactly when nothing more is kept.
    pub fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        max_scan: usize,
        mut keep: impl FnMut(&RepoState) -> bool,
    ) -> Result<StatePage> {
        let lo = after.map_or(Unbounded, |did| Excluded(did.as_bytes()));
        let (mut states, mut last_read) = (Vec::new(), None);
        for (scanned, kv) in self.repos.range::<&[u8], _>((lo, Unbounded)).enumerate() {
            let (k, v) = kv.into_inner()?;
            let did = String::from_utf8_lossy(&k).into_owned();
            if scanned >= max_scan.max(1) {
                return Ok((states, last_read));
            }
            let state = RepoState::decode(&v)?;
            if keep(&state) {
                if states.len() == limit {
                    let next = states.last().map(|(d, _): &(String, RepoState)| d.clone());
                    return Ok((states, next));
                }
                states.push((did.clone(), state));
            }
            last_read = Some(did);
        }
        Ok((states, None))
    }

    /// Whether no repo has a state: for integration tests that a refused input wrote nothing.
    #[doc(hidden)]
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.repos.is_empty()?)
    }

    /// Writes a raw `repos` value, bypassing the state write: for tests of what a value that
    /// does not decode does.
    #[cfg(test)]
    pub(super) fn insert_raw(&self, did: &str, value: &[u8]) {
        self.repos.insert(did.as_bytes(), value).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RepoStatus, Store};

    #[test]
    fn state_pages_cover_every_kept_repo_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let states: Vec<(String, RepoState)> = (0..20)
            .map(|i| {
                let status = if i % 3 == 0 { RepoStatus::Synced } else { RepoStatus::Discarded };
                (format!("did:x:{i:02}"), RepoState { status, ..Default::default() })
            })
            .collect();
        store.set_states(&states, None).unwrap();
        let want: Vec<String> =
            states.iter().filter(|(_, s)| s.status == RepoStatus::Synced).map(|(d, _)| d.clone()).collect();
        for (limit, max_scan) in [(1, 100), (2, 100), (7, 100), (100, 100), (2, 3), (1, 1)] {
            let (mut got, mut after, mut pages) = (Vec::new(), None, 0);
            loop {
                let (states, next) =
                    store.repos().page(after.as_deref(), limit, max_scan, |s| s.status == RepoStatus::Synced).unwrap();
                assert!(states.len() <= limit);
                got.extend(states.into_iter().map(|(d, _)| d));
                pages += 1;
                assert!(pages < 100, "pages end");
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(got, want, "limit {limit}, max_scan {max_scan}");
        }
        let (states, next) = store.repos().page(Some("did:x:18"), 5, 100, |s| s.status == RepoStatus::Synced).unwrap();
        assert!(states.is_empty() && next.is_none());
        assert_eq!(store.repos().all().unwrap().len(), 20);
    }
}
