//! A repo walk diffed against the stored records, as a stream of changes: upserts in MST key
//! order, then deletes of what the walk no longer holds. Streamed from the walk's keys, so a
//! walk holds its keys and one batch of changes and bodies at a time, not the repo's bodies.

use smol_str::SmolStr;

use crate::filter::Filter;
use crate::repo::{LoadedRepo, RecordKey};
use crate::store::RecordMap;

use super::{PipelineError, Staged, is_too_old, is_unchanged};

/// A stored record the walk may delete: ((collection, rkey), binary CID).
type StoredRecord = ((SmolStr, SmolStr), Vec<u8>);

/// The walk's record keys, in key order: all of them after a checked walk, or as a running
/// walk finds them.
pub(super) type WalkKeys<'a> = Box<dyn Iterator<Item = RecordKey> + Send + 'a>;

/// The changes a walk makes. `keep = false` (a discarded repo) yields only deletes of every
/// stored record; otherwise records of collections the filter does not want are left alone.
pub(super) struct WalkChanges<'a> {
    repo: &'a LoadedRepo,
    filter: &'a Filter,
    since_us: Option<u64>,
    keys: Option<WalkKeys<'a>>,
    stored: RecordMap,
    keep: bool,
    deletes: Option<std::vec::IntoIter<StoredRecord>>,
    /// A change read ahead by [`WalkChanges::is_done`].
    peeked: Option<Result<Staged, PipelineError>>,
    /// Walked records whose stored CID is current.
    pub unchanged: u64,
    /// Walked records left out as older than `since_us`.
    pub too_old: u64,
}

impl<'a> WalkChanges<'a> {
    /// `keys` are the walk's records in key order.
    pub(super) fn new(
        repo: &'a LoadedRepo,
        filter: &'a Filter,
        since_us: Option<u64>,
        keys: WalkKeys<'a>,
        stored: RecordMap,
        keep: bool,
    ) -> Self {
        let keys = keep.then_some(keys);
        Self { repo, filter, since_us, keys, stored, keep, deletes: None, peeked: None, unchanged: 0, too_old: 0 }
    }

    /// The most changes it can still yield; `None` while a running walk may find more.
    pub(super) fn max_len(&self) -> Option<usize> {
        let keys = match &self.keys {
            Some(keys) => keys.size_hint().1?,
            None => 0,
        };
        Some(
            keys + self.stored.len()
                + self.deletes.as_ref().map_or(0, |d| d.len())
                + usize::from(self.peeked.is_some()),
        )
    }

    /// Whether every change has been yielded.
    pub(super) fn is_done(&mut self) -> bool {
        if self.peeked.is_none() {
            self.peeked = self.next_change();
        }
        self.peeked.is_none()
    }

    fn next_change(&mut self) -> Option<Result<Staged, PipelineError>> {
        if let Some(upsert) = self.next_upsert() {
            return Some(upsert);
        }
        let deletes = self.deletes.get_or_insert_with(|| {
            let (filter, keep) = (self.filter, self.keep);
            let mut left: Vec<_> = std::mem::take(&mut self.stored)
                .into_iter()
                .filter(|((c, _), _)| !keep || filter.wants_collection(c))
                .collect();
            left.sort();
            left.into_iter()
        });
        deletes.next().map(|((collection, rkey), previous)| Ok(Staged::Delete { collection, rkey, previous }))
    }

    /// The next upsert of the walk, or `None` when the walk is over.
    fn next_upsert(&mut self) -> Option<Result<Staged, PipelineError>> {
        let keys = self.keys.as_mut()?;
        for entry in keys.by_ref() {
            if !self.filter.wants_collection(&entry.collection) {
                continue;
            }
            let (key, cid) = ((entry.collection, entry.rkey), entry.cid.cid());
            let previous = self.stored.remove(&key);
            if let Some(since) = self.since_us {
                match is_too_old(self.repo, &key.1, &cid, since) {
                    Ok(true) => {
                        self.too_old += 1;
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => return Some(Err(e.into())),
                }
            }
            if is_unchanged(previous.as_deref(), &cid) {
                self.unchanged += 1;
                continue;
            }
            let (collection, rkey) = key;
            return Some(Ok(Staged::Upsert { collection, rkey, cid, bytes: None, previous }));
        }
        self.keys = None;
        None
    }
}

impl Iterator for WalkChanges<'_> {
    type Item = Result<Staged, PipelineError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.peeked.take().or_else(|| self.next_change())
    }
}
