//! Where the stream stands, and what of it is saved: the safe cursor (no unfinished frame at or
//! below it, see `cursor.rs`), the last one saved as the `firehose` cursor, where a new
//! connection resumes (after the last frame dispatched, where a look-back said, the saved
//! cursor, or live), and, while no position is known yet, since when events may have been
//! missed (kept as the `firehose-since` cursor, which `gap.rs`'s search looks back to).
//!
//! Invariant: the saved cursor is never ahead of a frame that is not finished, so every frame
//! at or below it has its effects committed.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use super::cursor::SeqTracker;
use crate::store::{Store, StoreError};

/// The cursor's service name.
pub const CURSOR: &str = "firehose";

/// The cursor that keeps, while no `seq` is known, since when (unix µs) sluice has been
/// without a position: how far back `gap`'s search must reach.
pub const SINCE_CURSOR: &str = "firehose-since";

/// The firehose's position in the stream (see the module's head).
pub struct StreamPosition {
    store: Arc<Store>,
    /// Dispatched and finished frames: the safe cursor.
    tracker: Arc<SeqTracker>,
    /// The cursor stored when the service started.
    start_cursor: Option<i64>,
    /// The server said our cursor is in the future: resume live, without one.
    forget_cursor: AtomicBool,
    /// The cursor last saved.
    saved: AtomicI64,
    /// Without a position, since when (unix µs) events may have been missed: `gap`'s search
    /// before the next connection looks back to it.
    gap_since: Mutex<Option<u64>>,
    /// Whether the `firehose-since` cursor is saved.
    since_saved: AtomicBool,
    /// Where a look-back said to resume (-1: nowhere), until a frame is dispatched.
    looked_back: AtomicI64,
}

impl StreamPosition {
    /// The position the store's cursors give: the saved cursor, else the saved time since when
    /// sluice has been without one.
    pub fn load(store: Arc<Store>) -> Result<Self, StoreError> {
        let start_cursor = store.cursors().get(CURSOR)?.as_deref().and_then(|c| c.parse::<i64>().ok());
        let since = match start_cursor {
            Some(_) => None,
            None => store.cursors().get(SINCE_CURSOR)?.and_then(|c| c.parse::<u64>().ok()),
        };
        Ok(Self {
            store,
            tracker: Arc::new(SeqTracker::starting_at(start_cursor.unwrap_or(0))),
            start_cursor,
            forget_cursor: AtomicBool::new(false),
            saved: AtomicI64::new(start_cursor.unwrap_or(0)),
            gap_since: Mutex::new(since),
            since_saved: AtomicBool::new(since.is_some()),
            looked_back: AtomicI64::new(-1),
        })
    }

    /// The tracker the shards report dispatched and finished frames to.
    pub fn tracker(&self) -> &Arc<SeqTracker> {
        &self.tracker
    }

    /// The highest seq with every frame at or below it finished.
    pub fn safe(&self) -> i64 {
        self.tracker.safe()
    }

    /// Frames dispatched and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }

    /// A frame `seq` arrived. With no cursor saved yet and no frame in flight, saves the
    /// position just before it at once: a crash before the first periodic save then resumes
    /// from there instead of going live and missing what came in between. (With a frame in
    /// flight, say the first of a stream that starts at seq 1, `seq - 1` may not be finished.)
    pub fn arrived(&self, seq: i64) {
        if self.saved.load(Ordering::Relaxed) > 0 || seq <= 1 || self.tracker.in_flight() > 0 {
            return;
        }
        self.saved.store(seq - 1, Ordering::Relaxed);
        if let Err(e) = self.store.cursors().save(CURSOR, &(seq - 1).to_string()) {
            tracing::error!(error = %crate::error::chain(&e), "saving the firehose cursor failed");
        }
    }

    /// The server has no events after our cursor (`FutureCursor`): the next connection goes
    /// live.
    pub fn cursor_in_the_future(&self) {
        self.forget_cursor.store(true, Ordering::Relaxed);
    }

    /// Since when events may have been missed, while no position is known.
    pub fn gap_since(&self) -> Option<u64> {
        let since = *self.gap_since.lock().expect("gap");
        since.filter(|_| self.resume_cursor_peek().is_none())
    }

    /// A look-back found where the stream stood before the gap: resume after `seq`.
    pub fn looked_back_to(&self, seq: i64) {
        self.tracker.restart_at(seq);
        self.looked_back.store(seq, Ordering::Relaxed);
        *self.gap_since.lock().expect("gap") = None;
    }

    /// Where a connection opened at `opened_us` (unix µs) starts: after the last frame
    /// dispatched (frames in flight still finish), or where a look-back said, or the saved
    /// cursor, or live when there is none; going live, the time is saved (once) as the start
    /// of a gap.
    pub fn connecting(&self, opened_us: u64) -> Option<i64> {
        let cursor = self.resume_cursor();
        if cursor.is_none() {
            self.save_since(opened_us);
        }
        cursor
    }

    /// The connection opened at `opened_us` dropped: when it dispatched nothing, what was
    /// sequenced from its start on must be looked back for.
    pub fn dropped(&self, opened_us: u64) {
        if self.resume_cursor_peek().is_none() {
            self.gap_since.lock().expect("gap").get_or_insert(opened_us);
        }
    }

    /// Saves the safe cursor when it moved.
    pub fn save(&self) -> Result<(), StoreError> {
        let safe = self.tracker.safe();
        if safe <= 0 || self.saved.swap(safe, Ordering::Relaxed) == safe {
            return Ok(());
        }
        self.store.cursors().save(CURSOR, &safe.to_string())
    }

    /// Saves, once, since when sluice has been without a position, so that a restart before
    /// the first frame still looks back far enough.
    fn save_since(&self, since_us: u64) {
        if self.since_saved.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.store.cursors().save(SINCE_CURSOR, &since_us.to_string()) {
            tracing::error!(error = %crate::error::chain(&e), "saving the firehose start time failed");
        }
    }

    /// Where a new connection starts, taking a `FutureCursor` into account.
    fn resume_cursor(&self) -> Option<i64> {
        if self.forget_cursor.swap(false, Ordering::Relaxed) {
            tracing::warn!("the server has no events after our cursor; resuming live");
            self.tracker.restart_at(0);
            self.looked_back.store(-1, Ordering::Relaxed);
            return None;
        }
        self.resume_cursor_peek()
    }

    /// [`StreamPosition::resume_cursor`] without taking a `FutureCursor` into account.
    fn resume_cursor_peek(&self) -> Option<i64> {
        let last = self.tracker.last_dispatched();
        let looked_back = self.looked_back.load(Ordering::Relaxed);
        (last > 0).then_some(last).or((looked_back >= 0).then_some(looked_back)).or(self.start_cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        (dir, store)
    }

    #[test]
    fn a_first_start_goes_live_and_keeps_since_when() {
        let (_dir, store) = store();
        let position = StreamPosition::load(store.clone()).unwrap();
        assert_eq!(position.connecting(1_000), None, "no cursor: live");
        position.dropped(1_000);
        assert_eq!(position.gap_since(), Some(1_000), "nothing dispatched: the gap starts at the connection");
        assert_eq!(store.cursors().get(SINCE_CURSOR).unwrap().as_deref(), Some("1000"));
        let again = StreamPosition::load(store.clone()).unwrap();
        assert_eq!(again.gap_since(), Some(1_000), "a restart keeps the gap");
        again.looked_back_to(41);
        assert_eq!((again.gap_since(), again.connecting(2_000)), (None, Some(41)));
    }

    #[test]
    fn the_first_frame_is_saved_at_once_and_then_only_what_is_safe() {
        let (_dir, store) = store();
        let position = StreamPosition::load(store.clone()).unwrap();
        position.arrived(100);
        assert_eq!(store.cursors().get(CURSOR).unwrap().as_deref(), Some("99"), "before the first frame");
        let tracker = position.tracker();
        tracker.dispatched(100);
        tracker.dispatched(101);
        tracker.finished(101);
        position.save().unwrap();
        assert_eq!(store.cursors().get(CURSOR).unwrap().as_deref(), Some("99"), "100 is not finished");
        tracker.finished(100);
        position.save().unwrap();
        assert_eq!(store.cursors().get(CURSOR).unwrap().as_deref(), Some("101"));
        let restarted = StreamPosition::load(store.clone()).unwrap();
        assert_eq!((restarted.connecting(0), restarted.gap_since()), (Some(101), None));
    }

    #[test]
    fn a_future_cursor_resumes_live_once() {
        let (_dir, store) = store();
        store.cursors().save(CURSOR, "500").unwrap();
        let position = StreamPosition::load(store).unwrap();
        assert_eq!(position.connecting(0), Some(500));
        position.cursor_in_the_future();
        assert_eq!(position.connecting(0), None, "the server has nothing after 500");
        position.tracker().dispatched(3);
        assert_eq!(position.connecting(0), Some(3), "then on from the new sequence");
    }
}
