//! Event retention: the oldest pages of the event log are removed once every event in them is
//! older than a cutoff (`[events] retention_hours`).
//!
//! Rules: a page goes whole or not at all, oldest first, in batches of its own (nothing else
//! in them). The newest page always stays, because the next event id and time are read back
//! from it when the store opens, so ids never repeat after a trim: the log stays gapless from
//! its oldest retained event on. Pages written before events had times (format 1) are older
//! than every timed page and go with the first timed page that goes. Records, repos and
//! handler indexes are untouched: retention bounds the log, not the index. Events a sink has
//! not published yet are held ([`EventLog::hold_from`]): their pages stay, however old.

use std::sync::atomic::Ordering;

use super::EventLog;
use super::times::TimeEntry;
use crate::store::values::{EventSpan, Stored};
use crate::store::{Result, keys};

/// What one trim removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Pages removed.
    pub pages: u64,
    /// Events in them (pages written before events had times count as one each: their size
    /// is not indexed).
    pub events: u64,
    /// The id of the oldest event left, when something was removed.
    pub oldest_left: Option<u64>,
}

/// Pages removed per batch by [`EventLog::trim_older_than`].
const PAGES_PER_BATCH: usize = 256;

/// Where the log starts since the last trim, kept in memory: the pages removed before it are
/// tombstones until a compaction, and neither the next trim nor a look at the oldest event
/// (`/metrics` asks at every scrape) should read over them again. Empty after an open: the
/// first look reads from the start, once.
#[derive(Debug, Default)]
pub(super) struct LogStart {
    /// The oldest event id left by the last trim.
    oldest_id: Option<u64>,
    /// The time index key of the first page left by the last trim.
    first_time_key: Option<fjall::Slice>,
}

impl EventLog {
    /// Removes every event page whose events are all older than `age` by the store's clock
    /// (bar the newest page), in batches of [`PAGES_PER_BATCH`] pages. What a retention pass
    /// runs.
    pub fn trim_older_than(&self, age: std::time::Duration) -> Result<Trimmed> {
        let cutoff = self.now().saturating_sub(age.as_micros().try_into().unwrap_or(u64::MAX));
        self.trim_before(cutoff, PAGES_PER_BATCH)
    }

    /// Removes every event page whose events are all older than `cutoff_us` (unix µs), oldest
    /// first, bar the newest page, in batches of at most `pages_per_batch` pages, so that a
    /// long backlog is trimmed in bounded steps. Each step starts where the last one stopped:
    /// the index entries removed before it are tombstones until a compaction, and scanning
    /// them again at every step would make a long trim quadratic.
    pub fn trim_before(&self, cutoff_us: u64, pages_per_batch: usize) -> Result<Trimmed> {
        let pages_per_batch = pages_per_batch.max(1);
        let mut total = Trimmed::default();
        // On from where the last trim stopped (its untimed pages, if any, went then).
        let mut from = self.start.lock().expect("log start").first_time_key.clone();
        loop {
            let (step, next) = self.trim_step(from.as_deref(), cutoff_us, pages_per_batch)?;
            (total.pages, total.events) = (total.pages + step.pages, total.events + step.events);
            total.oldest_left = step.oldest_left.or(total.oldest_left);
            let more = step.pages >= pages_per_batch as u64;
            if let Some(key) = next {
                from = Some(key);
            }
            if !more {
                let mut start = self.start.lock().expect("log start");
                start.first_time_key = from;
                start.oldest_id = total.oldest_left.or(start.oldest_id);
                return Ok(total);
            }
        }
    }

    /// One batch: removes up to `max_pages` of the oldest pages older than `cutoff_us`,
    /// looking from the time index key `from` (`None`: the log's start, where untimed pages
    /// also go). Returns what it removed and the key of the first page it left.
    fn trim_step(
        &self,
        from: Option<&[u8]>,
        cutoff_us: u64,
        max_pages: usize,
    ) -> Result<(Trimmed, Option<fjall::Slice>)> {
        let mut spans = self.event_times.range(from.unwrap_or_default().to_vec()..);
        let Some(first) = spans.next() else { return Ok((Trimmed::default(), None)) };
        let mut current = first.into_inner()?;
        let mut batch = self.db.batch(2 * max_pages + 2);
        let mut trimmed = Trimmed::default();
        for next in spans {
            let next = next.into_inner()?;
            let page = TimeEntry::decode(&current.0, &current.1)?;
            let span = page.span;
            let held = span.first_id + u64::from(span.count) > self.held_from.load(Ordering::Relaxed);
            if trimmed.pages as usize >= max_pages || page.last_time() >= cutoff_us || held {
                break;
            }
            if trimmed.pages == 0 && from.is_none() {
                let untimed = self.stage_untimed_pages_before(&mut batch, span.first_id)?;
                (trimmed.pages, trimmed.events) = (untimed, untimed);
            }
            batch.remove(&self.events, keys::event(span.first_id));
            batch.remove(&self.event_times, current.0.clone());
            trimmed.pages += 1;
            trimmed.events += u64::from(span.count);
            trimmed.oldest_left = Some(EventSpan::decode(&next.1)?.first_id);
            current = next;
        }
        if trimmed.pages > 0 {
            self.db.commit(batch)?;
        }
        Ok((trimmed, Some(current.0)))
    }

    /// Removes (in `batch`) the pages before `first_id` that have no time index entry: pages
    /// of format 1, which only a store older than event times holds. Returns how many.
    fn stage_untimed_pages_before(&self, batch: &mut fjall::OwnedWriteBatch, first_id: u64) -> Result<u64> {
        let mut n = 0;
        for kv in self.events.range(..keys::event(first_id)) {
            batch.remove(&self.events, kv.key()?);
            n += 1;
        }
        Ok(n)
    }

    /// Keeps every event from `id` on from retention, whatever its age (`u64::MAX`: none held):
    /// what a sink that has not published them yet asks for.
    pub fn hold_from(&self, id: u64) {
        self.held_from.store(id, Ordering::Relaxed);
    }

    /// The id of the oldest event in the log, `None` when it is empty.
    pub fn oldest_id(&self) -> Result<Option<u64>> {
        let from = self.start.lock().expect("log start").oldest_id.unwrap_or(0);
        match self.events.range(keys::event(from)..).next() {
            Some(kv) => Ok(Some(keys::parse_event(&kv.key()?)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::store::log::test_clock::{self, events, open};
    use crate::store::{Action, EventPage, RepoChange, Store};

    /// Commits `n` events at `time` (µs); returns the first id.
    fn commit_at(store: &Store, time: u64, n: usize) -> u64 {
        test_clock::set(time);
        store
            .commit(RepoChange { did: "did:plc:a".into(), events: events(n), ..Default::default() })
            .unwrap()
            .first_event
            .unwrap()
    }

    fn ids(store: &Store) -> Vec<u64> {
        store.log().from(0, usize::MAX).unwrap().into_iter().map(|(id, _)| id).collect()
    }

    #[test]
    fn old_pages_go_whole_the_newest_stays_and_ids_go_on_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        commit_at(&store, 1_000, 3); // ids 1-3, times 1000-1002
        commit_at(&store, 2_000, 2); // ids 4-5, times 2000-2001
        commit_at(&store, 3_000, 1); // id 6
        assert_eq!(
            store.log().trim_before(1_002, 10).unwrap(),
            Trimmed::default(),
            "the first page has an event at the cutoff"
        );
        let t = store.log().trim_before(2_001, 10).unwrap();
        assert_eq!(t, Trimmed { pages: 1, events: 3, oldest_left: Some(4) });
        assert_eq!(ids(&store), vec![4, 5, 6]);
        assert_eq!(
            store.log().trim_before(u64::MAX, 10).unwrap(),
            Trimmed { pages: 1, events: 2, oldest_left: Some(6) },
            "the newest page stays"
        );
        assert_eq!((store.log().oldest_id().unwrap(), store.next_event_id()), (Some(6), 7));
        drop(store);
        let store = open(dir.path());
        assert_eq!(
            (store.next_event_id(), store.last_event_time()),
            (7, 3_000),
            "the next id and time survive the trim"
        );
        assert_eq!(commit_at(&store, 2_500, 1), 7);
        assert_eq!(
            store.log().from(1, 10).unwrap().first().map(|e| e.0),
            Some(6),
            "a cursor before the log starts at its oldest event"
        );
        assert_eq!(store.log().first_after_time(1).unwrap(), Some(6));
    }

    #[test]
    fn held_events_stay_however_old_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        commit_at(&store, 1_000, 3); // ids 1-3
        commit_at(&store, 2_000, 2); // ids 4-5
        commit_at(&store, 3_000, 1); // id 6
        store.log().hold_from(3);
        assert_eq!(
            store.log().trim_before(u64::MAX, 10).unwrap(),
            Trimmed::default(),
            "the page holding id 3 stays, and all after it"
        );
        store.log().hold_from(4);
        assert_eq!(
            store.log().trim_before(u64::MAX, 10).unwrap(),
            Trimmed { pages: 1, events: 3, oldest_left: Some(4) }
        );
        store.log().hold_from(u64::MAX);
        assert_eq!(store.log().trim_before(u64::MAX, 10).unwrap().oldest_left, Some(6));
    }

    #[test]
    fn a_pass_removes_what_is_older_than_the_age_by_the_stores_clock() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let first = commit_at(&store, 1_000_000, 600); // two pages
        commit_at(&store, 5_000_000, 1);
        commit_at(&store, 9_000_000, 1);
        test_clock::set(10_000_000);
        assert_eq!(
            store.log().trim_older_than(std::time::Duration::from_secs(8)).unwrap(),
            Trimmed { pages: 2, events: 600, oldest_left: Some(first + 600) }
        );
        assert_eq!(
            store.log().trim_older_than(std::time::Duration::from_secs(8)).unwrap(),
            Trimmed::default(),
            "nothing more is old enough"
        );
        assert_eq!(store.log().trim_older_than(std::time::Duration::ZERO).unwrap().pages, 1, "the newest page stays");
    }

    #[test]
    fn a_long_backlog_is_trimmed_in_bounded_steps() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for i in 0..7 {
            commit_at(&store, 1_000 * (i + 1), 1);
        }
        // Each step removes at most 2 pages and hands on where it stopped.
        let (mut from, mut steps) = (None, Vec::new());
        loop {
            let (t, next) = store.log().trim_step(from.as_deref(), 4_500, 2).unwrap();
            if t.pages == 0 {
                break;
            }
            steps.push((t.pages, t.oldest_left));
            from = next;
        }
        assert_eq!(steps, vec![(2, Some(3)), (2, Some(5))], "pages 1-4 are older than the cutoff");
        assert_eq!(
            from.as_deref().map(|k| keys::parse_event(k).unwrap()),
            Some(5_000),
            "the next step would start at page 5"
        );
        // The whole trim runs those steps to the end (a batch size of 0 counts as 1).
        assert_eq!(store.log().trim_before(10_000, 0).unwrap(), Trimmed { pages: 2, events: 2, oldest_left: Some(7) });
        assert_eq!(ids(&store), vec![7]);
    }

    #[test]
    fn untimed_pages_go_with_the_first_timed_page() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // A page as builds before event times wrote it: format 1, no time index entry.
        let mut v1 = vec![1];
        use crate::store::values::legacy;
        let old = legacy::StoredEvent::Record(legacy::RecordEvent {
            live: true,
            did: "did:plc:a".into(),
            rev: "r".into(),
            collection: "a.b.c".into(),
            rkey: "k".into(),
            action: Action::Delete,
            cid: vec![],
            replaced: None,
            handled: vec![],
        });
        postcard::to_io(&vec![old], &mut v1).unwrap();
        store.log().insert_raw_page(1, v1);
        drop(store);
        let store = open(dir.path());
        commit_at(&store, 5_000, 2); // ids 2-3
        commit_at(&store, 6_000, 1); // id 4
        assert_eq!(store.log().trim_before(5_500, 10).unwrap(), Trimmed { pages: 2, events: 3, oldest_left: Some(4) });
        assert_eq!(store.log().oldest_id().unwrap(), Some(4));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever the commits, the cutoff and the pages per batch: exactly the pages a model
        /// picks are removed (from the oldest, each wholly older than the cutoff, never the
        /// newest), in one pass; what is left is the gapless tail of the log; and the next id
        /// is unchanged.
        #[test]
        fn a_trim_removes_exactly_the_old_pages_and_leaves_a_gapless_tail(
            commits in proptest::collection::vec((1..1100usize, 1..5_000u64), 1..6),
            cutoff in 0..30_000u64,
            step in 1..4usize,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path());
            // The model: each commit's pages as (first id, last event's time). A commit's
            // first event gets the clock, or just after the last time when the clock is behind
            // it (a short gap after a long commit), and the rest consecutive times.
            let (mut clock, mut last_time, mut pages) = (1_000u64, 0u64, Vec::new());
            for (n, gap) in &commits {
                clock += gap;
                let first = commit_at(&store, clock, *n);
                let first_time = clock.max(last_time + 1);
                for offset in (0..*n).step_by(EventPage::MAX_EVENTS) {
                    let len = (*n - offset).min(EventPage::MAX_EVENTS) as u64;
                    pages.push((first + offset as u64, first_time + offset as u64 + len - 1));
                }
                last_time = first_time + *n as u64 - 1;
            }
            let kept = pages.iter().position(|&(_, last)| last >= cutoff).unwrap_or(pages.len() - 1);
            let before = store.log().from_with_times(0, usize::MAX).unwrap();
            let next = store.next_event_id();
            let trimmed = store.log().trim_before(cutoff, step).unwrap();
            prop_assert_eq!(trimmed.pages as usize, kept, "pages removed, in steps of {}", step);
            prop_assert_eq!(
                store.log().trim_before(cutoff, step).unwrap(),
                Trimmed::default(),
                "a second pass finds nothing"
            );
            let after = store.log().from_with_times(0, usize::MAX).unwrap();
            prop_assert_eq!(after.first().map(|e| e.0), Some(pages[kept].0));
            prop_assert_eq!(store.log().oldest_id().unwrap(), Some(pages[kept].0));
            prop_assert_eq!(&before[before.len() - after.len()..], &after[..], "the tail of the log is left as it was");
            prop_assert_eq!(store.next_event_id(), next);
        }
    }
}
