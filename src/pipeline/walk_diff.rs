//! A repo walk diffed against the stored records, as a stream of changes: upserts in MST key
//! order, then deletes of what the walk no longer holds. Streamed from the walk's keys, so a
//! walk holds its keys and one batch of changes and bodies at a time, not the repo's bodies.

use crate::filter::Filter;
use crate::repo::{LoadedRepo, RecordKey};
use crate::store::RecordMap;

use super::{PipelineError, Staged, is_too_old};

/// A stored record the walk may delete: ((collection, rkey), binary CID).
type StoredRecord = ((String, String), Vec<u8>);

/// The changes a walk makes. `keep = false` (a discarded repo) yields only deletes of every
/// stored record; otherwise records of collections the filter does not want are left alone.
pub(super) struct WalkChanges<'a> {
    repo: &'a LoadedRepo,
    filter: &'a Filter,
    since_us: Option<u64>,
    keys: Option<std::vec::IntoIter<RecordKey>>,
    stored: RecordMap,
    keep: bool,
    deletes: Option<std::vec::IntoIter<StoredRecord>>,
    /// Walked records whose stored CID is current.
    pub unchanged: u64,
    /// Walked records left out as older than `since_us`.
    pub too_old: u64,
}

impl<'a> WalkChanges<'a> {
    /// `keys` are the walk's records in key order.
    pub(super) fn new(repo: &'a LoadedRepo, filter: &'a Filter, since_us: Option<u64>, keys: Vec<RecordKey>, stored: RecordMap, keep: bool) -> Self {
        let keys = keep.then(|| keys.into_iter());
        Self { repo, filter, since_us, keys, stored, keep, deletes: None, unchanged: 0, too_old: 0 }
    }

    /// The most changes it can still yield.
    pub(super) fn max_len(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.len()) + self.stored.len() + self.deletes.as_ref().map_or(0, |d| d.len())
    }

    /// The next upsert of the walk, or `None` when the walk is over.
    fn next_upsert(&mut self) -> Option<Result<Staged, PipelineError>> {
        let keys = self.keys.as_mut()?;
        for entry in keys.by_ref() {
            if !self.filter.wants_collection(&entry.collection) {
                continue;
            }
            let key = (entry.collection, entry.rkey);
            let previous = self.stored.remove(&key);
            if let Some(since) = self.since_us {
                match is_too_old(self.repo, &key.1, &entry.cid, since) {
                    Ok(true) => {
                        self.too_old += 1;
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => return Some(Err(e.into())),
                }
            }
            if previous.as_deref() == Some(&entry.cid.to_bytes()[..]) {
                self.unchanged += 1;
                continue;
            }
            let (collection, rkey) = key;
            return Some(Ok(Staged::Upsert { collection, rkey, cid: entry.cid, bytes: None, previous }));
        }
        self.keys = None;
        None
    }
}

impl Iterator for WalkChanges<'_> {
    type Item = Result<Staged, PipelineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(upsert) = self.next_upsert() {
            return Some(upsert);
        }
        let deletes = self.deletes.get_or_insert_with(|| {
            let (filter, keep) = (self.filter, self.keep);
            let mut left: Vec<_> = std::mem::take(&mut self.stored).into_iter().filter(|((c, _), _)| !keep || filter.wants_collection(c)).collect();
            left.sort();
            left.into_iter()
        });
        deletes.next().map(|((collection, rkey), previous)| Ok(Staged::Delete { collection, rkey, previous }))
    }
}
