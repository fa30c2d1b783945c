//! Counts that move in steps. A repo that starts or stops being answered (an account
//! deactivated, taken down, active again) moves the count of each of its entries in every
//! counted index. A repo with few entries in an index moves them in the batch of that change;
//! one with more than a step's rows (a repo of a million likes) would hold the writer lock for
//! seconds at each account event a host sends, so it gets a mark instead (`V did` ->
//! [`Moving`]), and the index maintainer moves its entries a step at a time
//! ([`IndexParts::stage_move_step`]), each step a batch of its own.
//!
//! Contract: a mark splits the repo's entries in that index at its bound, in the order of the
//! repo's `D` rows (`key sort rkey`). Entries on the moved side count as the repo is answered
//! now, the others as it was before. Every change of the repo's entries (a commit, a build step,
//! a move step) counts each entry by that rule, and a count query adds, for each mark, the
//! repo's entries under its key not moved yet, read from one snapshot with the count row and the
//! marks ([`LiveIndex::count`]): a count is exact while a repo's counts move. Another change of
//! the repo's visibility during a move turns the mark around: the side moved is the side to
//! move back, and no count moves at the turn.
//!
//! A count reads a moving repo's entries under its key not moved yet, which may be many (a
//! repo of 100,000 statuses of one emoji). The number it read is kept ([`PendingRows`]) and
//! moved by every batch that moves those entries (commits and build steps of the repo, its
//! move steps), so the next count of that key reads a figure, not the entries. A figure is
//! used only against a snapshot of the state it stands for: batches that change one bump the
//! marks epoch before they commit and after the figures are moved, and a count takes its
//! figures only where no bump fell between its snapshot and its reading of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fjall::Readable;

use super::{BY_REPO, IndexParts, LiveIndex, Moved, Result, corrupt, decode_i64, did_rkey, past};
use crate::indexes::encode::key_tuple_len;

/// The first byte of a mark's row: `V did` -> [`Moving::encode`].
pub(super) const MOVING: u8 = b'V';

/// A repo whose entries' counts move in steps (see the module's contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Moving {
    /// Whether the repo is answered now: what its moved entries count as.
    answered: bool,
    /// Whether the steps go up the repo's `D` rows (the moved side lies before `bound`) or down
    /// (the moved side starts at `bound`).
    upward: bool,
    /// A `D` row tail (`key sort rkey`, past the `D did \0` prefix) where the sides meet.
    bound: Vec<u8>,
}

impl Moving {
    /// A move that has moved nothing yet, to `answered`.
    pub(super) fn start(answered: bool) -> Moving {
        Moving { answered, upward: true, bound: Vec::new() }
    }

    /// Whether the entry whose `D` row tail is `tail` has been moved.
    pub(super) fn moved(&self, tail: &[u8]) -> bool {
        match self.upward {
            true => tail < self.bound.as_slice(),
            false => tail >= self.bound.as_slice(),
        }
    }

    /// Whether the entry whose `D` row tail is `tail` is in the counts.
    pub(super) fn counts(&self, tail: &[u8]) -> bool {
        self.moved(tail) == self.answered
    }

    /// The mark after the repo's visibility changes again: what each entry counts as stays,
    /// and the steps go back over what they moved.
    pub(super) fn turned(&self) -> Moving {
        Moving { answered: !self.answered, upward: !self.upward, bound: self.bound.clone() }
    }

    /// What a move step adds to the count of each entry it moves.
    fn sign(&self) -> i64 {
        if self.answered { 1 } else { -1 }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        [&[u8::from(self.answered), u8::from(self.upward)][..], &self.bound].concat()
    }

    pub(super) fn decode(v: &[u8]) -> Result<Moving> {
        match v {
            [answered @ 0..=1, upward @ 0..=1, bound @ ..] => {
                Ok(Moving { answered: *answered == 1, upward: *upward == 1, bound: bound.to_vec() })
            }
            _ => Err(corrupt("index count move")),
        }
    }
}

/// The most figures an index keeps; past it they start over (each costs the read of its entries
/// once more, after as many counts as there are figures).
const PENDING_FIGURES: usize = 1024;

/// Per moving repo and key: how many of its entries under the key are not moved yet, where a
/// count read them (see the module's doc).
#[derive(Debug, Default)]
pub(super) struct PendingRows {
    by_repo: HashMap<String, HashMap<Vec<u8>, i64>>,
    figures: usize,
}

impl PendingRows {
    fn get(&self, did: &str, key: &[u8]) -> Option<i64> {
        self.by_repo.get(did)?.get(key).copied()
    }

    fn insert(&mut self, did: &str, key: &[u8], rows: i64) {
        if self.figures >= PENDING_FIGURES {
            *self = PendingRows::default();
        }
        if self.by_repo.entry(did.to_string()).or_default().insert(key.to_vec(), rows).is_none() {
            self.figures += 1;
        }
    }

    /// Drops `did`'s figures: its mark turned around or went.
    fn forget(&mut self, did: &str) {
        if let Some(keys) = self.by_repo.remove(did) {
            self.figures -= keys.len();
        }
    }

    /// Moves `did`'s figures by what a batch added to its entries not moved yet, per key.
    fn moved(&mut self, did: &str, keys: &BTreeMap<Vec<u8>, i64>) {
        let Some(figures) = self.by_repo.get_mut(did) else { return };
        for (key, delta) in keys {
            if let Some(rows) = figures.get_mut(key) {
                *rows += delta;
            }
        }
    }
}

/// The key of `did`'s mark.
pub(super) fn mark_key(did: &str) -> Vec<u8> {
    [&[MOVING][..], did.as_bytes()].concat()
}

/// A mark's row (`key` -> `value`) read back: its repo and the mark.
pub(super) fn decode_mark<'k>(key: &'k [u8], value: &[u8]) -> Result<(&'k str, Moving)> {
    let did = key.get(1..).and_then(|d| std::str::from_utf8(d).ok()).ok_or_else(|| corrupt("index count move"))?;
    Ok((did, Moving::decode(value)?))
}

impl LiveIndex {
    /// The number of entries under the encoded key tuple `key` (`count = true` indexes) of the
    /// repos answered now: its count row, when no repo's counts move (no mark, and no batch
    /// writing marks before or after the read); else [`LiveIndex::count_with_moves`].
    pub fn count(&self, key: &[u8]) -> Result<i64> {
        let epoch = self.marks_epoch.load(Ordering::SeqCst);
        if epoch.is_multiple_of(2) && self.moving.lock().expect("index moves lock").is_empty() {
            let count = self.count_row(key)?;
            if self.marks_epoch.load(Ordering::SeqCst) == epoch {
                return Ok(count);
            }
        }
        self.count_with_moves(key)
    }

    /// [`LiveIndex::count`] with the repos whose counts move: the count row, and the entries of
    /// those repos not moved yet, read with their marks from one snapshot (or their figures,
    /// where kept for the state of that snapshot).
    #[doc(hidden)]
    pub fn count_with_moves(&self, key: &[u8]) -> Result<i64> {
        let epoch = self.marks_epoch.load(Ordering::SeqCst);
        let snapshot = self.db.snapshot();
        // No batch moving marks or figures committed around the snapshot: it is the state
        // the figures kept at `epoch` stand for.
        let steady = epoch.is_multiple_of(2) && self.marks_epoch.load(Ordering::SeqCst) == epoch;
        let row = snapshot.get(&self.space, super::count_key(key))?;
        let mut count = row.map_or(0, |v| decode_i64(&v));
        let mut marks = Vec::new();
        for kv in snapshot.prefix(&self.space, [MOVING]) {
            let (k, v) = kv.into_inner()?;
            let (did, mark) = decode_mark(&k, &v)?;
            marks.push((did.to_string(), mark));
        }
        let figures = match steady {
            true => self.pending_figures(epoch, key, &marks),
            false => vec![None; marks.len()],
        };
        for ((did, mark), figure) in marks.iter().zip(figures) {
            let rows = match figure {
                Some(rows) => rows,
                None => {
                    let rows = pending_rows(&snapshot, self, did, mark, key)?;
                    if steady && rows > 0 {
                        self.keep_pending(epoch, did, key, rows);
                    }
                    rows
                }
            };
            count += rows * mark.sign();
        }
        Ok(count)
    }

    /// The figures kept for `marks`' repos under `key`, if they still stand for the state of
    /// marks epoch `epoch`.
    fn pending_figures(&self, epoch: u64, key: &[u8], marks: &[(String, Moving)]) -> Vec<Option<i64>> {
        let pending = self.pending.lock().expect("index pending lock");
        match self.marks_epoch.load(Ordering::SeqCst) == epoch {
            true => marks.iter().map(|(did, _)| pending.get(did, key)).collect(),
            false => vec![None; marks.len()],
        }
    }

    /// Keeps a figure read from a snapshot of marks epoch `epoch`, if no batch has moved the
    /// figures since: one that has would not move this one.
    fn keep_pending(&self, epoch: u64, did: &str, key: &[u8], rows: i64) {
        let mut pending = self.pending.lock().expect("index pending lock");
        if self.marks_epoch.load(Ordering::SeqCst) == epoch {
            pending.insert(did, key, rows);
        }
    }

    /// Moves `did`'s figures by what a committed batch did to its entries not moved yet.
    pub(super) fn pending_moved(&self, did: &str, keys: &BTreeMap<Vec<u8>, i64>) {
        self.pending.lock().expect("index pending lock").moved(did, keys);
    }

    /// `did`'s mark, as committed.
    pub(super) fn moving(&self, did: &str) -> Option<Moving> {
        self.moving.lock().expect("index moves lock").get(did).cloned()
    }

    /// The number of repos whose counts move in this index.
    pub fn moving_repos(&self) -> usize {
        self.moving.lock().expect("index moves lock").len()
    }

    /// Installs `did`'s mark once its batch committed (`None`: its move is done). Its figures
    /// stay only through a step (the same move, further on), which moves them itself.
    pub(super) fn set_moving(&self, did: &str, mark: Option<Moving>) {
        let mut moving = self.moving.lock().expect("index moves lock");
        let same_move = |old: &Moving, new: &Moving| (old.answered, old.upward) == (new.answered, new.upward);
        let before = match &mark {
            Some(mark) => moving.insert(did.to_string(), mark.clone()),
            None => moving.remove(did),
        };
        if !matches!((&before, &mark), (Some(old), Some(new)) if same_move(old, new)) {
            self.pending.lock().expect("index pending lock").forget(did);
        }
    }
}

impl Moved {
    /// Bumps the marks epoch of each index whose marks or figures this batch moves: once
    /// before it commits, and again once they are installed.
    pub(super) fn bump_marks_epochs(&self) {
        let mut bumped: Vec<u32> = Vec::new();
        let indexes = self.marks.iter().map(|(index, ..)| index).chain(self.pending.iter().map(|(index, ..)| index));
        for index in indexes {
            if !bumped.contains(&index.id) {
                bumped.push(index.id);
                index.marks_epoch.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// `did`'s mark in `index` as this batch leaves it: staged in it, else as committed.
    pub(super) fn mark_of(&self, index: &LiveIndex, did: &str) -> Option<Moving> {
        let staged = self.marks.iter().rev().find(|(ix, d, _)| ix.id == index.id && d == did);
        match staged {
            Some((_, _, mark)) => mark.clone(),
            None => index.moving(did),
        }
    }
}

impl IndexParts {
    /// Marks the start of the commit of a batch staged into `moved` (see
    /// [`Moved::bump_marks_epochs`]); [`IndexParts::committed`] marks its end.
    pub(in crate::store) fn committing(&self, moved: &Moved) {
        moved.bump_marks_epochs();
    }

    /// The rows a move step reads, and the most a repo moves in the batch of its account event.
    pub(in crate::store) fn move_rows(&self) -> usize {
        self.move_rows.load(Ordering::Relaxed)
    }

    /// Sets [`IndexParts::move_rows`].
    pub(in crate::store) fn set_move_rows(&self, rows: usize) {
        self.move_rows.store(rows.max(1), Ordering::Relaxed);
    }

    /// The first repo whose counts move: its index and its mark.
    fn next_move(&self) -> Option<(Arc<LiveIndex>, String, Moving)> {
        self.registry.load().indexes.values().find_map(|ix| {
            let moving = ix.moving.lock().expect("index moves lock");
            moving.iter().next().map(|(did, mark)| (ix.clone(), did.clone(), mark.clone()))
        })
    }

    /// Stages one step of a repo's count move, under the writer lock: the next
    /// [`IndexParts::move_rows`] of its entries not moved yet, each key's count moved once, and
    /// its mark moved past them (removed once none is left). `None` when no repo's counts move.
    pub(in crate::store) fn stage_move_step(&self, batch: &mut fjall::OwnedWriteBatch) -> Result<Option<Moved>> {
        let Some((index, did, mark)) = self.next_move() else { return Ok(None) };
        let step = step_keys(&index, &did, &mark, self.move_rows())?;
        let mut moved = Moved::default();
        let left: BTreeMap<Vec<u8>, i64> = step.keys.iter().map(|(key, rows)| (key.clone(), -rows)).collect();
        moved.add_step(&index, &mark, step.keys);
        moved.pending.push((index.clone(), did.clone(), left));
        moved.marks.push((index, did, step.next));
        self.stage_counts(batch, &mut moved)?;
        Ok(Some(moved))
    }

    /// Adds to `moved` what `did` starting (`answered`) or stopping being answered moves in the
    /// counted `per_repo = "all"` `index`: each of its entries' counts, when it has at most
    /// [`IndexParts::move_rows`] of them; else a mark, its counts to move in steps; and where
    /// they move already, its mark turned around.
    pub(super) fn move_repo(&self, index: &Arc<LiveIndex>, did: &str, answered: bool, moved: &mut Moved) -> Result<()> {
        if let Some(mark) = moved.mark_of(index, did) {
            moved.marks.push((index.clone(), did.to_string(), Some(mark.turned())));
            return Ok(());
        }
        // The first step of a move, one entry longer: if it would leave any, the repo is too big.
        let mark = Moving::start(answered);
        let step = step_keys(index, did, &mark, self.move_rows() + 1)?;
        match step.next {
            Some(_) => moved.marks.push((index.clone(), did.to_string(), Some(mark))),
            None => moved.add_step(index, &mark, step.keys),
        }
        Ok(())
    }
}

impl Moved {
    /// Moves the count of each of `keys` by its entries, as `mark` moves them.
    fn add_step(&mut self, index: &LiveIndex, mark: &Moving, keys: BTreeMap<Vec<u8>, i64>) {
        for (key, entries) in keys {
            *self.counts.entry((index.id, key)).or_default() += entries * mark.sign();
        }
    }
}

/// How many of `did`'s entries under `key` `mark` has not moved yet, in `snapshot`: one range,
/// which reads none of the entries already moved.
fn pending_rows(snapshot: &fjall::Snapshot, index: &LiveIndex, did: &str, mark: &Moving, key: &[u8]) -> Result<i64> {
    let under = super::by_repo_prefix(did, key);
    let end = past(&under).expect("a D row prefix starts with D");
    let bound = [did_rkey(BY_REPO, did, "").as_slice(), &mark.bound].concat();
    let (lo, hi) = match mark.upward {
        true => (under.max(bound), end),
        false => (under, end.min(bound)),
    };
    let mut rows = 0;
    if lo < hi {
        for kv in snapshot.range(&index.space, lo..hi) {
            kv.key()?;
            rows += 1;
        }
    }
    Ok(rows)
}

/// One move step: the keys it moves, with how many of the repo's entries each holds, and the
/// mark once they are moved (`None`: none is left).
struct Step {
    keys: BTreeMap<Vec<u8>, i64>,
    next: Option<Moving>,
}

/// The step over `did`'s next `max` entries not moved yet by `mark` in `index`.
fn step_keys(index: &LiveIndex, did: &str, mark: &Moving, max: usize) -> Result<Step> {
    let prefix = did_rkey(BY_REPO, did, "");
    let bound = [prefix.as_slice(), &mark.bound].concat();
    let rows: Box<dyn Iterator<Item = fjall::Guard>> = match mark.upward {
        true => Box::new(index.space.range(bound..past(&prefix).expect("a D prefix ends in 0"))),
        false => Box::new(index.space.range(prefix.clone()..bound).rev()),
    };
    let (mut keys, mut read, mut last) = (BTreeMap::new(), 0, Vec::new());
    for kv in rows.take(max) {
        let k = kv.key()?;
        let tail = &k[prefix.len()..];
        let n = key_tuple_len(tail, index.spec.key.len()).ok_or_else(|| corrupt("index repo row"))?;
        *keys.entry(tail[..n].to_vec()).or_default() += 1;
        (read, last) = (read + 1, tail.to_vec());
    }
    let next = (read == max).then(|| {
        if mark.upward {
            last.push(0);
        }
        Moving { bound: last, ..mark.clone() }
    });
    Ok(Step { keys, next })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn mark() -> impl Strategy<Value = Moving> {
        (any::<bool>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(answered, upward, bound)| Moving { answered, upward, bound })
    }

    proptest! {
        #[test]
        fn marks_round_trip(m in mark()) {
            prop_assert_eq!(Moving::decode(&m.encode()).unwrap(), m);
        }

        /// A turn moves no count: every entry counts as it did.
        #[test]
        fn a_turn_keeps_what_each_entry_counts_as(m in mark(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            prop_assert_eq!(m.turned().counts(&tail), m.counts(&tail));
            prop_assert_eq!(m.turned().turned(), m);
        }

        /// Before a step an entry counts as the repo was; once moved, as it is.
        #[test]
        fn a_fresh_mark_counts_entries_as_before(answered: bool, tail in proptest::collection::vec(any::<u8>(), 1..8)) {
            let m = Moving::start(answered);
            prop_assert_eq!(m.counts(&tail), !answered);
            let past = Moving { bound: [tail.as_slice(), &[0]].concat(), ..m };
            prop_assert_eq!(past.counts(&tail), answered);
        }
    }

    #[test]
    fn figures_move_with_deltas_go_with_their_repo_and_start_over_when_full() {
        let mut p = PendingRows::default();
        p.insert("did:a", b"k", 10);
        p.insert("did:a", b"j", 3);
        p.insert("did:b", b"k", 7);
        p.moved("did:a", &BTreeMap::from([(b"k".to_vec(), -4), (b"x".to_vec(), 2)]));
        assert_eq!((p.get("did:a", b"k"), p.get("did:a", b"j"), p.get("did:a", b"x")), (Some(6), Some(3), None));
        p.forget("did:a");
        assert_eq!((p.get("did:a", b"k"), p.get("did:b", b"k"), p.figures), (None, Some(7), 1));
        for i in 1..PENDING_FIGURES {
            p.insert("did:c", &i.to_be_bytes(), 1);
        }
        assert_eq!((p.get("did:b", b"k"), p.figures), (Some(7), PENDING_FIGURES));
        p.insert("did:d", b"k", 2);
        assert_eq!((p.get("did:b", b"k"), p.get("did:d", b"k"), p.figures), (None, Some(2), 1));
    }

    #[test]
    fn bad_marks_are_refused() {
        for bad in [&[][..], &[1], &[2, 0], &[0, 7, 1]] {
            assert!(Moving::decode(bad).is_err(), "{bad:?}");
        }
    }
}
