//! Event times: every event gets a unix-µs time at commit, under the writer lock, unique and
//! strictly increasing with its id, and surviving restarts (the last one is read back on open).
//! A commit's first event gets `max(now, last + 1)` and the rest consecutive values, so a
//! commit's pages have consecutive times and each page stores only its first
//! ([`EventPage::first_time`](crate::store::EventPage::first_time)).
//!
//! The `event_times` keyspace indexes them: page first time (u64 big-endian, the event id
//! codec) -> [`EventSpan`] (the page's first id and length), written in the page's batch. A
//! time finds its event in two index reads, never a scan of the log. Pages written before
//! events had times (format version 1) have no entry; their events read back with time 0.

use std::ops::Bound::{Excluded, Unbounded};

use super::EventLog;
use crate::store::values::{EventSpan, Stored};
use crate::store::{Result, keys};

/// Unix time in microseconds: the store's clock.
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// The time of a commit's first event: `now`, or just after the last time given when the clock
/// is behind it (many events in one microsecond, a clock stepped back, a restart).
pub(in crate::store) fn first_time(last: u64, now: u64) -> u64 {
    now.max(last + 1)
}

/// An `event_times` entry decoded: a page's first event time and its span.
pub(super) struct TimeEntry {
    pub first_time: u64,
    pub span: EventSpan,
}

impl TimeEntry {
    pub(super) fn decode(key: &[u8], value: &[u8]) -> Result<Self> {
        Ok(Self { first_time: keys::parse_event(key)?, span: EventSpan::decode(value)? })
    }

    /// The time of the page's last event.
    pub(super) fn last_time(&self) -> u64 {
        self.first_time + u64::from(self.span.count.max(1)) - 1
    }
}

impl EventLog {
    /// The last event time given, read from the index on open (0 when there is none).
    pub(super) fn read_last_time(&self) -> Result<u64> {
        Ok(match self.event_times.last_key_value() {
            Some(kv) => {
                let (k, v) = kv.into_inner()?;
                TimeEntry::decode(&k, &v)?.last_time()
            }
            None => 0,
        })
    }

    /// The id of the first event whose time is at or after `time_us`, or `None` when every
    /// event is older. Events without a time (written before events had times) count as time
    /// 0, so `0` gives the first event of the log.
    pub fn first_after_time(&self, time_us: u64) -> Result<Option<u64>> {
        if time_us == 0 {
            return self.oldest_id();
        }
        // The page whose times may hold `time_us`: the last one starting at or before it.
        if let Some(kv) = self.event_times.range(..=keys::event(time_us)).next_back() {
            let (k, v) = kv.into_inner()?;
            let TimeEntry { first_time, span } = TimeEntry::decode(&k, &v)?;
            if time_us - first_time < u64::from(span.count) {
                return Ok(Some(span.first_id + (time_us - first_time)));
            }
        }
        // Otherwise the first page starting after it.
        match self.event_times.range::<[u8; 8], _>((Excluded(keys::event(time_us)), Unbounded)).next() {
            Some(kv) => Ok(Some(EventSpan::decode(&kv.value()?)?.first_id)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::store::log::test_clock::{self, events, open};
    use crate::store::{Action, RepoChange, Store, StoredEvent};

    /// The first id at or after `time` by reading the whole log.
    fn by_scan(log: &[(u64, u64, StoredEvent)], time: u64) -> Option<u64> {
        log.iter().find(|(_, t, _)| *t >= time).map(|(id, _, _)| *id)
    }

    #[test]
    fn first_time_never_goes_back() {
        assert_eq!(first_time(0, 5), 5);
        assert_eq!(first_time(9, 5), 10);
        assert_eq!(first_time(9, 10), 10);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Commits of any size, with the clock moving either way and reopens between them:
        /// times strictly increase with ids, a commit's times are consecutive and not before
        /// its clock, and every time lookup agrees with a scan of the log.
        #[test]
        fn times_increase_and_lookups_agree_with_a_scan(
            steps in proptest::collection::vec((0..1100usize, -3000i64..3000, any::<bool>()), 1..7),
            probes in proptest::collection::vec(0u64..40_000, 0..20),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = open(dir.path());
            let mut clock = 1_000_000i64;
            let mut commits = Vec::new();
            for (n, step, reopen) in steps {
                clock += step;
                test_clock::set(clock as u64);
                if reopen {
                    let last = store.last_event_time();
                    drop(store);
                    store = open(dir.path());
                    prop_assert_eq!(store.last_event_time(), last, "the last time is read back on open");
                }
                let before = store.last_event_time();
                let c = store
                    .commit(RepoChange { did: "did:plc:a".into(), events: events(n), ..Default::default() })
                    .unwrap();
                if let Some(first) = c.first_event {
                    commits.push((first, n as u64, (clock as u64).max(before + 1)));
                }
            }
            let log = store.log().from_with_times(0, usize::MAX).unwrap();
            for pair in log.windows(2) {
                prop_assert_eq!(pair[1].0, pair[0].0 + 1, "ids are gapless");
                prop_assert!(pair[1].1 > pair[0].1, "times strictly increase: {} then {}", pair[0].1, pair[1].1);
            }
            for (first, n, time) in commits {
                let got: Vec<u64> =
                    log.iter().filter(|(id, _, _)| (first..first + n).contains(id)).map(|(_, t, _)| *t).collect();
                prop_assert_eq!(
                    got,
                    (time..time + n).collect::<Vec<_>>(),
                    "commit at {} has consecutive times from its clock",
                    first
                );
            }
            let edges = log.iter().flat_map(|(_, t, _)| [*t - 1, *t, *t + 1]);
            let start = log.first().map_or(1_000_000, |(_, t, _)| *t).saturating_sub(5_000);
            for time in edges.chain(probes.into_iter().map(|p| start + p)).chain([1, u64::MAX]) {
                prop_assert_eq!(store.log().first_after_time(time).unwrap(), by_scan(&log, time), "time {}", time);
            }
            prop_assert_eq!(store.log().first_after_time(0).unwrap(), log.first().map(|e| e.0));
        }
    }

    #[test]
    fn version_1_pages_read_back_with_time_0_and_are_not_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let fixed = |dir: &std::path::Path| {
            let mut store = Store::open(dir).unwrap();
            store.log.clock = || 5_000_000;
            store
        };
        {
            let store = fixed(dir.path());
            // A page as builds before event times wrote it: version 1, postcard of the events.
            let mut v1 = vec![1];
            let legacy: Vec<_> = (0..3)
                .map(|i| {
                    crate::store::values::legacy::StoredEvent::Record(crate::store::values::legacy::RecordEvent {
                        live: true,
                        did: "did:plc:a".into(),
                        rev: "r".into(),
                        collection: "a.b.c".into(),
                        rkey: format!("k{i}"),
                        action: Action::Delete,
                        cid: vec![],
                        replaced: None,
                        handled: vec![],
                    })
                })
                .collect();
            postcard::to_io(&legacy, &mut v1).unwrap();
            store.log.insert_raw_page(1, v1);
        }
        let store = fixed(dir.path());
        assert_eq!((store.next_event_id(), store.last_event_time()), (4, 0));
        store.commit(RepoChange { did: "did:plc:a".into(), events: events(2), ..Default::default() }).unwrap();
        let times: Vec<(u64, u64)> =
            store.log().from_with_times(0, 10).unwrap().into_iter().map(|(id, t, _)| (id, t)).collect();
        assert!(times[..3].iter().all(|&(_, t)| t == 0));
        assert_eq!(times[3..].to_vec(), vec![(4, 5_000_000), (5, 5_000_001)]);
        assert_eq!(store.log().first_after_time(0).unwrap(), Some(1));
        assert_eq!(store.log().first_after_time(1).unwrap(), Some(4));
        assert_eq!(store.log().first_after_time(5_000_002).unwrap(), None);
        assert_eq!(store.log().from(2, 2).unwrap().len(), 2, "from still reads version 1 pages");
    }
}
