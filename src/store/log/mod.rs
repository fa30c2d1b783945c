//! The event log: `events` (u64 BE id of a page's first event -> [`EventPage`]) and its time
//! index `event_times` (see `times.rs`).
//!
//! Events are stored in pages of up to [`EventPage::MAX_EVENTS`]: a change's events are encoded
//! into pages when it is prepared ([`encode_pages`]), off the committing thread, and get their
//! ids and times only at commit, under the writer lock, where [`EventLog::stage`] stamps them
//! and puts the pages in the change's batch. So the log is gapless, ids and times strictly
//! increase, and an event is never visible without the change it reports (nor the change
//! without its events). The next id and time live with the writer; on open they are read back
//! from the newest page ([`EventLog::tail`]), which retention never removes (`retention.rs`),
//! so ids never repeat.
//!
//! Record events carry the body of the version they created, so replay reads pages and nothing
//! else; pages written before that read their bodies from [`Blocks`] ([`EventLog::body`]).

mod retention;
#[cfg(test)]
mod test_clock;
mod times;

use std::borrow::Cow;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use fjall::Keyspace;

use super::failure::Db;

pub use retention::Trimmed;
pub(super) use times::first_time;
pub use times::now_us;

use super::blocks::Blocks;
use super::values::{EventPage, EventSpan, RecordEvent, Stored, StoredEvent};
use super::{Result, keys};

/// A page encoded at prepare time, its ids and time stamped in at commit.
pub(super) struct EncodedPage {
    /// Offset of its first event in the change.
    offset: u64,
    /// Number of events.
    len: u64,
    /// The stored page, time not yet set, already in fjall's value type: copying a page into
    /// it is done where the page is encoded, not on the committing thread.
    bytes: byteview::ByteView,
}

/// Encodes events as pages of at most [`EventPage::MAX_EVENTS`], their times left for the
/// commit to stamp.
pub(super) fn encode_pages(events: Vec<StoredEvent>) -> Vec<EncodedPage> {
    let mut pages = Vec::with_capacity(events.len().div_ceil(EventPage::MAX_EVENTS));
    let mut events = events.into_iter().peekable();
    let mut offset = 0;
    while events.peek().is_some() {
        let page = EventPage { first_time: 0, events: events.by_ref().take(EventPage::MAX_EVENTS).collect() };
        let len = page.events.len() as u64;
        pages.push(EncodedPage { offset, len, bytes: page.encode().into() });
        offset += len;
    }
    pages
}

/// The event log part: owns `events` and `event_times`, reads legacy bodies from `blocks`.
pub struct EventLog {
    /// For retention's batches, which are its own.
    db: Db,
    events: Keyspace,
    event_times: Keyspace,
    blocks: Blocks,
    /// Where the log starts since the last trim (see `retention.rs`).
    start: Mutex<retention::LogStart>,
    /// Retention keeps every event from this id on (`u64::MAX`: none held; see `retention.rs`).
    held_from: AtomicU64,
    /// Where event times come from (tests set their own).
    clock: fn() -> u64,
}

impl EventLog {
    pub(super) fn new(db: Db, events: Keyspace, event_times: Keyspace, blocks: Blocks) -> Self {
        Self {
            db,
            events,
            event_times,
            blocks,
            start: Mutex::default(),
            held_from: AtomicU64::new(u64::MAX),
            clock: now_us,
        }
    }

    /// The next event id and the last event time (0 when none has a time), read back from the
    /// newest page and the time index: where the writer starts on open.
    pub(super) fn tail(&self) -> Result<(u64, u64)> {
        let next_id = match self.events.last_key_value() {
            Some(kv) => {
                let (k, v) = kv.into_inner()?;
                keys::parse_event(&k)? + EventPage::decode(&v)?.events.len() as u64
            }
            None => 1,
        };
        Ok((next_id, self.read_last_time()?))
    }

    /// The store's clock (unix µs), which event times and retention's cutoffs come from.
    pub(super) fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Puts `pages` (of a change whose first event gets `first_id` and `first_time`) and their
    /// time index entries in `batch`. Runs under the writer lock, which hands out the ids and
    /// times.
    pub(super) fn stage(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        pages: Vec<EncodedPage>,
        first_id: u64,
        first_time: u64,
    ) {
        for EncodedPage { offset, len, mut bytes } in pages {
            let time = first_time + offset;
            EventPage::stamp_time(&mut bytes.get_mut().expect("a page being committed is not shared"), time);
            batch.insert(&self.events, keys::event(first_id + offset), fjall::Slice::from(bytes));
            let span = EventSpan { first_id: first_id + offset, count: len as u32 };
            batch.insert(&self.event_times, keys::event(time), span.encode());
        }
    }

    /// Events with id >= `from`, in order, at most `limit`.
    pub fn from(&self, from: u64, limit: usize) -> Result<Vec<(u64, StoredEvent)>> {
        Ok(self.from_with_times(from, limit)?.into_iter().map(|(id, _, event)| (id, event)).collect())
    }

    /// Events with id >= `from`, in order, at most `limit`, as (id, time, event): the time in
    /// unix µs, 0 for events written before events had times.
    pub fn from_with_times(&self, from: u64, limit: usize) -> Result<Vec<(u64, u64, StoredEvent)>> {
        // Start at the page holding `from`: the last page whose first id is <= it.
        let start = match self.events.range(..=keys::event(from)).next_back() {
            Some(kv) => keys::parse_event(&kv.key()?)?,
            None => from,
        };
        let mut out = Vec::new();
        for kv in self.events.range(keys::event(start)..) {
            let (k, v) = kv.into_inner()?;
            let first = keys::parse_event(&k)?;
            let page = EventPage::decode(&v)?;
            let times: Vec<u64> = (0..page.events.len()).map(|i| page.time_of(i)).collect();
            for ((id, time), event) in (first..).zip(times).zip(page.events) {
                if out.len() >= limit {
                    return Ok(out);
                }
                if id >= from {
                    out.push((id, time, event));
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The body of the version a record event created: carried by the event, or, for pages
    /// written before events carried bodies, read from `blocks`. `None` on deletes and when a
    /// handler's JSON replaced the record.
    pub fn body<'e>(&self, event: &'e RecordEvent) -> Result<Option<Cow<'e, [u8]>>> {
        if event.replaced.is_some() || event.cid.is_empty() {
            return Ok(None);
        }
        Ok(match &event.body {
            Some(body) => Some(Cow::Borrowed(&body[..])),
            None => self.blocks.body(&event.cid)?.map(Cow::Owned),
        })
    }

    /// The bytes the log's pages take on disk (their tables; what is still in memory not
    /// counted).
    pub fn disk_bytes(&self) -> u64 {
        self.events.disk_space()
    }

    /// How many pages the log holds: for integration tests of how a change's events are paged.
    #[doc(hidden)]
    pub fn page_count(&self) -> Result<usize> {
        Ok(self.events.len()?)
    }

    /// Writes a body where stores older than event bodies kept it: for tests of the fallback.
    #[cfg(test)]
    pub(crate) fn insert_legacy_body(&self, cid: &[u8], body: &[u8]) {
        self.blocks.insert(cid, body);
    }

    /// Writes a raw page as older builds did: for tests of the formats they left.
    #[cfg(test)]
    fn insert_raw_page(&self, first_id: u64, value: Vec<u8>) {
        self.events.insert(keys::event(first_id), value).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Action, EventPage, RecordEvent, RepoChange, Store, StoredEvent};

    fn event(n: u8) -> StoredEvent {
        StoredEvent::Record(RecordEvent {
            live: false,
            did: "did:plc:a".into(),
            rev: "r".into(),
            collection: "a.b.c".into(),
            rkey: format!("k{n}").into(),
            action: Action::Create,
            cid: vec![n],
            replaced: None,
            handled: vec![],
            body: Some(bytes::Bytes::from_static(&[0xa0])),
        })
    }

    #[test]
    fn event_ids_are_gapless_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let c = store
                .commit(RepoChange { did: "did:plc:a".into(), events: vec![event(1), event(2)], ..Default::default() })
                .unwrap();
            assert_eq!(c, crate::store::Committed { first_event: Some(1), events: 2 });
            let c = store.commit(RepoChange { did: "did:plc:a".into(), ..Default::default() }).unwrap();
            assert_eq!(c.first_event, None);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.next_event_id(), 3);
        let c =
            store.commit(RepoChange { did: "did:plc:a".into(), events: vec![event(3)], ..Default::default() }).unwrap();
        assert_eq!(c.first_event, Some(3));
        let ids: Vec<u64> = store.log().from(0, 10).unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(store.log().from(2, 1).unwrap()[0].1, event(2));
    }

    #[test]
    fn reads_start_inside_pages_and_span_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let many = EventPage::MAX_EVENTS * 2 + 7;
        let events: Vec<_> = (0..many).map(|i| event(i as u8)).collect();
        store.commit(RepoChange { did: "did:plc:a".into(), events: events.clone(), ..Default::default() }).unwrap();
        assert_eq!(store.log().page_count().unwrap(), 3, "three pages");
        for from in [0, 1, 2, 511, 512, 513, 600, 1024, 1025, many as u64, many as u64 + 1, many as u64 + 5] {
            let got = store.log().from(from, 40).unwrap();
            let want: Vec<(u64, StoredEvent)> =
                (1..=many as u64).zip(events.iter().cloned()).filter(|(id, _)| *id >= from).take(40).collect();
            assert_eq!(got, want, "from {from}");
        }
        drop(store);
        assert_eq!(Store::open(dir.path()).unwrap().next_event_id(), many as u64 + 1);
    }
}
