//! The firehose cursor: which `seq` is safe to save. Frames are applied by several shards at
//! once and finish out of order, so the saved position is the highest seq at or below which
//! every dispatched frame has finished (applied, held, skipped or refused), never one beyond.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// Tracks dispatched and finished sequence numbers.
#[derive(Debug, Default)]
pub struct SeqTracker {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Dispatched and not yet finished.
    in_flight: BTreeSet<i64>,
    /// The highest seq dispatched (or the starting cursor).
    last_dispatched: i64,
}

impl SeqTracker {
    /// A tracker starting after `cursor` (everything at or below it is done).
    pub fn starting_at(cursor: i64) -> Self {
        Self { inner: Mutex::new(Inner { in_flight: BTreeSet::new(), last_dispatched: cursor }) }
    }

    /// Notes that the frame `seq` was handed to a worker. Seqs at or below one already
    /// dispatched (a relay replaying after a reconnect) are tracked all the same.
    pub fn dispatched(&self, seq: i64) {
        let mut inner = self.inner.lock().expect("seq tracker");
        inner.in_flight.insert(seq);
        inner.last_dispatched = inner.last_dispatched.max(seq);
    }

    /// Notes that the frame `seq` is finished.
    pub fn finished(&self, seq: i64) {
        self.inner.lock().expect("seq tracker").in_flight.remove(&seq);
    }

    /// The highest seq with nothing unfinished at or below it: what may be saved.
    pub fn safe(&self) -> i64 {
        let inner = self.inner.lock().expect("seq tracker");
        match inner.in_flight.first() {
            Some(&lowest) => (lowest - 1).min(inner.last_dispatched),
            None => inner.last_dispatched,
        }
    }

    /// The highest seq dispatched: where a reconnect resumes (frames in flight still finish).
    pub fn last_dispatched(&self) -> i64 {
        self.inner.lock().expect("seq tracker").last_dispatched
    }

    /// Starts over after `cursor` (the server's sequence was reset): frames in flight still
    /// finish, and the safe cursor follows the new sequence.
    pub fn restart_at(&self, cursor: i64) {
        self.inner.lock().expect("seq tracker").last_dispatched = cursor;
    }

    /// Frames dispatched and not finished.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().expect("seq tracker").in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever order frames finish in, the safe cursor never passes an unfinished frame,
        /// never goes back, and reaches the last seq once all are done.
        #[test]
        fn safe_cursor_never_passes_an_unfinished_frame(
            start in 0i64..1000,
            n in 1usize..60,
            order in proptest::collection::vec(any::<prop::sample::Index>(), 60),
        ) {
            let tracker = SeqTracker::starting_at(start);
            let seqs: Vec<i64> = (1..=n as i64).map(|i| start + i).collect();
            for &s in &seqs {
                tracker.dispatched(s);
            }
            let mut unfinished = seqs.clone();
            let mut last_safe = tracker.safe();
            prop_assert_eq!(last_safe, start);
            for idx in order.iter().take(n) {
                let seq = unfinished.remove(idx.index(unfinished.len()));
                tracker.finished(seq);
                let safe = tracker.safe();
                prop_assert!(safe >= last_safe, "went back from {} to {}", last_safe, safe);
                if let Some(&lowest) = unfinished.iter().min() {
                    prop_assert!(safe < lowest, "safe {} passes unfinished {}", safe, lowest);
                }
                last_safe = safe;
                if unfinished.is_empty() {
                    break;
                }
            }
            for s in unfinished {
                tracker.finished(s);
            }
            prop_assert_eq!(tracker.safe(), start + n as i64);
            prop_assert_eq!(tracker.in_flight(), 0);
        }
    }

    #[test]
    fn interleaved_dispatch_and_finish() {
        let t = SeqTracker::starting_at(10);
        t.dispatched(11);
        t.dispatched(12);
        t.finished(12);
        assert_eq!(t.safe(), 10);
        t.finished(11);
        assert_eq!(t.safe(), 12);
        t.dispatched(13);
        assert_eq!(t.safe(), 12);
        assert_eq!(t.last_dispatched(), 13);
    }
}
