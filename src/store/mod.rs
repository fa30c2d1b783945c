//! The fjall store: keyspaces, the event log and atomic commits.
//!
//! Contract: everything one [`RepoChange`] changes (one batch of a repo walk, or one live
//! commit) — records, blocks, repo state, handler index writes, counts, its events and any
//! cursor that covers it — goes into one fjall batch ([`Store::commit`], or
//! [`Store::prepare`] then [`Store::commit_prepared`]). Events are stored in pages of up to
//! [`EventPage::MAX_EVENTS`]. Event ids are assigned under the writer lock at commit time, so the
//! log is gapless and ids survive restarts (the next id is read back from the log on open;
//! retention removes only the oldest pages and never the newest, see `retention.rs`).
//! So are event times (unix µs, unique and increasing with ids; see `times.rs`), which
//! Jetstream-style cursors need.
//!
//! Record bodies are stored twice: with the record (`records`: CID and body) and with the event
//! that created that version (in its page), so getRecord reads one key and replay reads pages
//! and nothing else. Stores written before that keep bodies in the `blocks` keyspace, which is
//! still read for them (see [`Store::record`] and [`Store::event_body`]) but never written.
//!
//! Architecture invariant: the store knows nothing of CARs, the network or the filter.

mod handles;
mod held;
pub mod keys;
mod queue;
mod reads;
mod retention;
#[cfg(test)]
mod test_clock;
mod times;
pub mod values;
mod writeback;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use sluice_handlers::IndexWrite;
use smol_str::SmolStr;

pub use retention::Trimmed;
pub use times::now_us;
pub use values::{
    AccountEvent, Action, EventPage, HeldCommit, IdentityEvent, RecordEvent, RepoState, RepoStatus, Stored, StoredEvent,
};
use values::{Cursor, RecordRef};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// fjall failed.
    #[error("storage: {0}")]
    Fjall(#[from] fjall::Error),
    /// A stored key did not decode.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// A stored value did not decode.
    #[error(transparent)]
    Value(#[from] values::ValueError),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A repo's stored records: (collection, rkey) -> binary CID. The pipeline's diff looks up
/// every walked record here, so it uses foldhash.
pub type RecordMap = HashMap<(SmolStr, SmolStr), Vec<u8>, foldhash::fast::RandomState>;

/// A record put or removal. The writer states whether the record existed (the pipeline
/// knows from its diff), so commits keep counts without reading every key back.
#[derive(Debug, Clone)]
pub enum RecordWrite {
    /// Store `cid` (binary) with its DAG-CBOR `body` as the current version of
    /// `collection/rkey`; `existed` is true on updates.
    Put { collection: SmolStr, rkey: SmolStr, cid: Vec<u8>, body: bytes::Bytes, existed: bool },
    /// Remove `collection/rkey`, which exists.
    Remove { collection: SmolStr, rkey: SmolStr },
}

/// One batch of a repo walk, or one live commit; committed atomically by [`Store::commit`].
#[derive(Debug, Default)]
pub struct RepoChange {
    /// The repo.
    pub did: String,
    /// Its new state, if it changes.
    pub state: Option<RepoState>,
    /// Record puts and removals.
    pub records: Vec<RecordWrite>,
    /// Events, in order; ids are assigned at commit.
    pub events: Vec<StoredEvent>,
    /// Writes into handler keyspaces: (handler name, write).
    pub handler_writes: Vec<(&'static str, IndexWrite)>,
    /// A cursor saved with this change: (service, position).
    pub cursor: Option<(String, String)>,
}

/// A change encoded into a batch, waiting for its event ids and counters (see
/// [`Store::prepare`]).
pub struct Prepared {
    batch: fjall::OwnedWriteBatch,
    pages: Vec<times::EncodedPage>,
    deltas: BTreeMap<Vec<u8>, i64>,
    events: u64,
    /// The repo's new state: its status counters and queue entry are settled at commit time,
    /// against the state stored then.
    state: Option<(String, RepoState)>,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Committed {
    /// Id of the first event written, when any was.
    pub first_event: Option<u64>,
    /// Number of events written.
    pub events: u64,
}

struct Writer {
    next_event: u64,
    /// The time (unix µs) of the last event committed.
    last_time: u64,
    counts: BTreeMap<Vec<u8>, i64>,
    /// No repo enters the backfill queue due earlier than this (unix ms): one past the end of
    /// the last take's range, so that every entry written after a take lands ahead of the
    /// take's position (see `queue.rs`).
    queue_floor_ms: u64,
}

/// The open store.
pub struct Store {
    db: Database,
    /// did -> [`RepoState`].
    pub repos: Keyspace,
    /// did\0collection\0rkey -> [`RecordRef`]: CID and body.
    pub records: Keyspace,
    /// binary CID -> DAG-CBOR record body: where stores written before bodies moved into
    /// `records` and the event pages kept them. Read for those, never written.
    pub blocks: Keyspace,
    /// u64 BE id of a page's first event -> [`EventPage`].
    pub events: Keyspace,
    /// u64 BE time of a page's first event -> [`values::EventSpan`]: the event time index.
    pub event_times: Keyspace,
    /// The backfill queue: due ms (BE) + did -> empty, one entry per repo whose
    /// [`RepoState::queue_due`] is set, kept in step with `repos` by every state write.
    pub pending: Keyspace,
    /// Where the last take from `pending` stopped (see `queue.rs`).
    queue_scan: Mutex<queue::Scan>,
    /// Where the event log starts since the last trim (see `retention.rs`).
    log_start: Mutex<retention::LogStart>,
    /// Retention keeps every event from this id on (`u64::MAX`: none held; see `retention.rs`).
    events_held_from: std::sync::atomic::AtomicU64,
    /// did\0rev -> live commit held during a backfill.
    pub held: Keyspace,
    /// service -> [`Cursor`].
    pub cursors: Keyspace,
    /// lowercased handle -> DID, for handles found to be their repo's own (see `handles.rs`).
    pub handles: Keyspace,
    /// DID -> empty: repos whose handle waits for a check (see `handles.rs`).
    pub handle_checks: Keyspace,
    /// counter name -> i64 BE.
    pub counts: Keyspace,
    handler_spaces: Mutex<HashMap<&'static str, Keyspace>>,
    writer: Mutex<Writer>,
    /// The next event id, published after every commit that wrote events.
    event_head: tokio::sync::watch::Sender<u64>,
    /// Bumped after every commit that put a repo in the backfill queue or moved its due time.
    queue_changes: tokio::sync::watch::Sender<u64>,
    /// Where event times come from (tests set their own).
    clock: fn() -> u64,
    writeback: writeback::JournalWriteback,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        // Journal entries are not compressed: compressing event pages there cost the committing
        // thread about a fifth of its time, for a journal that is dropped once flushed.
        let db = Database::builder(dir).journal_compression(fjall::CompressionType::None).open()?;
        let ks = |name: &str| db.keyspace(name, || keyspace_options(name));
        let store = Store {
            repos: ks("repos")?,
            records: ks("records")?,
            blocks: ks("blocks")?,
            events: ks("events")?,
            event_times: ks("event_times")?,
            pending: ks("pending")?,
            held: ks("held")?,
            cursors: ks("cursors")?,
            handles: ks("handles")?,
            handle_checks: ks("handle_checks")?,
            counts: ks("counts")?,
            handler_spaces: Mutex::new(HashMap::new()),
            writer: Mutex::new(Writer { next_event: 1, last_time: 0, counts: BTreeMap::new(), queue_floor_ms: 0 }),
            queue_scan: Mutex::default(),
            log_start: Mutex::default(),
            events_held_from: std::sync::atomic::AtomicU64::new(u64::MAX),
            event_head: tokio::sync::watch::Sender::new(1),
            queue_changes: tokio::sync::watch::Sender::new(0),
            clock: now_us,
            writeback: writeback::JournalWriteback::start(dir.to_path_buf()),
            db,
        };
        let next_event = match store.events.last_key_value() {
            Some(kv) => {
                let (k, v) = kv.into_inner()?;
                keys::parse_event(&k)? + EventPage::decode(&v)?.events.len() as u64
            }
            None => 1,
        };
        let mut counts = BTreeMap::new();
        for kv in store.counts.iter() {
            let (k, v) = kv.into_inner()?;
            counts.insert(k.to_vec(), decode_count(&v));
        }
        let last_time = store.read_last_time()?;
        *store.writer.lock().expect("writer lock") = Writer { next_event, last_time, counts, queue_floor_ms: 0 };
        store.event_head.send_replace(next_event);
        Ok(store)
    }

    /// The keyspace of handler `name`, opened on first use.
    pub fn handler_space(&self, name: &'static str) -> Result<Keyspace> {
        let mut spaces = self.handler_spaces.lock().expect("handler keyspace lock");
        if let Some(ks) = spaces.get(name) {
            return Ok(ks.clone());
        }
        let keyspace = format!("handler.{name}");
        let ks = self.db.keyspace(&keyspace, || keyspace_options(&keyspace))?;
        spaces.insert(name, ks.clone());
        Ok(ks)
    }

    /// Commits `change` atomically, assigning its events the next ids. Everything but the id
    /// assignment and the counters is prepared before the writer lock is taken.
    pub fn commit(&self, change: RepoChange) -> Result<Committed> {
        self.commit_prepared(self.prepare(change)?)
    }

    /// Encodes `change` into a batch, ready for [`Store::commit_prepared`]: the CPU work of a
    /// commit, which may run on another thread than the commit itself.
    pub fn prepare(&self, mut change: RepoChange) -> Result<Prepared> {
        let deltas = record_count_deltas(&change.records);
        let events = change.events.len() as u64;
        let pages = encode_pages(std::mem::take(&mut change.events));
        let items = 4 + change.records.len() + pages.len() + change.handler_writes.len() + deltas.len();
        let mut batch =
            fjall::OwnedWriteBatch::with_capacity(self.db.clone(), items).durability(Some(PersistMode::Buffer));
        let state = change.state.take().map(|s| (change.did.clone(), s));
        self.stage_rows(&mut batch, change)?;
        Ok(Prepared { batch, pages, deltas, events, state })
    }

    /// Commits a prepared change: assigns its events the next ids and times, updates the
    /// counters and the queue index and writes the batch, under the writer lock.
    pub fn commit_prepared(&self, prepared: Prepared) -> Result<Committed> {
        let Prepared { mut batch, pages, mut deltas, events: n, state } = prepared;
        let mut writer = self.writer.lock().expect("writer lock");
        let queued = match state {
            Some((did, new)) => self.stage_state(&mut batch, &mut deltas, &writer, &did, new)?,
            None => false,
        };
        let first = writer.next_event;
        let first_time = times::first_time(writer.last_time, (self.clock)());
        self.stage_pages(&mut batch, pages, first, first_time);
        let new_counts = self.stage_counts(&mut batch, &writer, deltas);
        batch.commit()?;
        self.writeback.wrote();
        writer.next_event += n;
        if n > 0 {
            writer.last_time = first_time + n - 1;
        }
        writer.counts.extend(new_counts);
        if n > 0 {
            self.event_head.send_replace(writer.next_event);
        }
        if queued {
            self.queue_changed();
        }
        Ok(Committed { first_event: (n > 0).then_some(first), events: n })
    }

    /// Adds the counter values moved by `deltas` to `batch`; returns them for the cache.
    fn stage_counts(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        writer: &Writer,
        deltas: BTreeMap<Vec<u8>, i64>,
    ) -> Vec<(Vec<u8>, i64)> {
        deltas
            .into_iter()
            .filter(|(_, delta)| *delta != 0)
            .map(|(key, delta)| {
                let value = writer.counts.get(&key).copied().unwrap_or(0) + delta;
                batch.insert(&self.counts, key.clone(), value.to_be_bytes());
                (key, value)
            })
            .collect()
    }

    /// Writes a repo's new state into `batch`, with what follows from it: its status counter
    /// moves and its `pending` entry follows [`RepoState::queue_due`]. A repo entering the
    /// queue (or moving in it) is due no earlier than the queue's floor, and the state records
    /// the due time it got. Returns whether the repo enters the queue or gets a new due time
    /// there. Runs under the writer lock, so the stored state it reads is current.
    fn stage_state(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        deltas: &mut BTreeMap<Vec<u8>, i64>,
        writer: &Writer,
        did: &str,
        new: RepoState,
    ) -> Result<bool> {
        let old = self.repo_state(did)?;
        self.stage_state_as(batch, deltas, writer, did, old, new, false)
    }

    /// [`Store::stage_state`] against the stored `old`; `handle_verdict` when the writer is
    /// the handle checker, whose verdict stands (see `handles.rs`).
    #[allow(clippy::too_many_arguments)]
    fn stage_state_as(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        deltas: &mut BTreeMap<Vec<u8>, i64>,
        writer: &Writer,
        did: &str,
        old: Option<RepoState>,
        mut new: RepoState,
        handle_verdict: bool,
    ) -> Result<bool> {
        self.stage_handle(batch, did, old.as_ref(), &mut new, handle_verdict)?;
        let old_status = old.as_ref().map(|s| s.status);
        if old_status != Some(new.status) {
            if let Some(old) = old_status {
                *deltas.entry(keys::count_repos(old.as_str())).or_default() -= 1;
            }
            *deltas.entry(keys::count_repos(new.status.as_str())).or_default() += 1;
        }
        let old_due = old.as_ref().and_then(RepoState::queue_due);
        let moves = old_due != new.queue_due();
        if moves {
            if let Some(due) = old_due {
                batch.remove(&self.pending, keys::pending(due, did));
            }
            if let Some(due) = new.queue_due() {
                let due = due.max(writer.queue_floor_ms);
                new.next_retry_ms = Some(due);
                batch.insert(&self.pending, keys::pending(due, did), []);
            }
        }
        batch.insert(&self.repos, did.as_bytes(), new.encode());
        Ok(moves && new.queue_due().is_some())
    }

    /// Puts the records, handler writes and cursor of `change` in `batch` (its state is
    /// staged at commit time, by [`Store::stage_state`]).
    fn stage_rows(&self, batch: &mut fjall::OwnedWriteBatch, change: RepoChange) -> Result<()> {
        for write in &change.records {
            match write {
                RecordWrite::Put { collection, rkey, cid, body, .. } => batch.insert(
                    &self.records,
                    keys::record(&change.did, collection, rkey),
                    RecordRef::encode_parts(cid, body),
                ),
                RecordWrite::Remove { collection, rkey } => {
                    batch.remove(&self.records, keys::record(&change.did, collection, rkey))
                }
            }
        }
        // A batch's handler writes come in runs of one handler: its keyspace is looked up once
        // a run, not once a write.
        let mut space: Option<(&'static str, Keyspace)> = None;
        for (name, w) in change.handler_writes {
            if space.as_ref().is_none_or(|(current, _)| *current != name) {
                space = Some((name, self.handler_space(name)?));
            }
            let (_, ks) = space.as_ref().expect("set above");
            match w.value {
                Some(v) => batch.insert(ks, w.key, v),
                None => batch.remove(ks, w.key),
            }
        }
        if let Some((service, value)) = change.cursor {
            batch.insert(&self.cursors, service.as_bytes(), Cursor { value, updated_ms: values::now_ms() }.encode());
        }
        Ok(())
    }

    /// A repo's state.
    pub fn repo_state(&self, did: &str) -> Result<Option<RepoState>> {
        self.repos.get(did.as_bytes())?.map(|v| RepoState::decode(&v)).transpose().map_err(Into::into)
    }

    /// Every stored record of `did`: (collection, rkey) -> binary CID.
    pub fn repo_records(&self, did: &str) -> Result<RecordMap> {
        let mut out = RecordMap::default();
        for kv in self.records.prefix(keys::record_prefix(did)) {
            let (k, v) = kv.into_inner()?;
            let (_, collection, rkey) = keys::parse_record(&k)?;
            out.insert((collection.into(), rkey.into()), RecordRef::view(&v)?.cid.to_vec());
        }
        Ok(out)
    }

    /// The stored CID of one record.
    pub fn record_cid(&self, did: &str, collection: &str, rkey: &str) -> Result<Option<Vec<u8>>> {
        match self.records.get(keys::record(did, collection, rkey))? {
            Some(v) => Ok(Some(RecordRef::view(&v)?.cid.to_vec())),
            None => Ok(None),
        }
    }

    /// One stored record: its CID and body (`None` only when a legacy store lost the body).
    pub fn record(&self, did: &str, collection: &str, rkey: &str) -> Result<Option<RecordRef>> {
        match self.records.get(keys::record(did, collection, rkey))? {
            Some(v) => self.with_body(RecordRef::view(&v)?).map(Some),
            None => Ok(None),
        }
    }

    /// An owned record of a stored `records` value, its body read from `blocks` when the value
    /// predates bodies in `records`.
    pub(crate) fn with_body(&self, view: values::RecordRefView<'_>) -> Result<RecordRef> {
        let body = match view.body {
            Some(body) => Some(body.to_vec()),
            None => self.legacy_body(view.cid)?,
        };
        Ok(RecordRef { cid: view.cid.to_vec(), body })
    }

    /// A body by CID from `blocks`, where stores written before bodies moved into `records`
    /// and the event pages kept it: the one place that keyspace is read.
    fn legacy_body(&self, cid: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.blocks.get(cid)?.map(|b| b.to_vec()))
    }

    /// The body of the version a record event created: carried by the event, or, for pages
    /// written before events carried bodies, read from `blocks`. `None` on deletes and when a
    /// handler's JSON replaced the record.
    pub fn event_body<'e>(&self, event: &'e RecordEvent) -> Result<Option<std::borrow::Cow<'e, [u8]>>> {
        if event.replaced.is_some() || event.cid.is_empty() {
            return Ok(None);
        }
        Ok(match &event.body {
            Some(body) => Some(std::borrow::Cow::Borrowed(&body[..])),
            None => self.legacy_body(&event.cid)?.map(std::borrow::Cow::Owned),
        })
    }

    /// Events with id >= `from`, in order, at most `limit`.
    pub fn events_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, StoredEvent)>> {
        Ok(self.events_with_time_from(from, limit)?.into_iter().map(|(id, _, event)| (id, event)).collect())
    }

    /// Events with id >= `from`, in order, at most `limit`, as (id, time, event): the time in
    /// unix µs, 0 for events written before events had times.
    pub fn events_with_time_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, u64, StoredEvent)>> {
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

    /// A receiver that changes whenever events are committed (its value is the next id):
    /// what live readers of the log wait on.
    pub fn watch_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.event_head.subscribe()
    }

    /// A receiver that changes whenever a commit puts a repo in the backfill queue or moves
    /// its due time: what the backfill's scheduler waits on, so that a queued repo starts at
    /// once instead of at its next look at the queue.
    pub fn watch_queue(&self) -> tokio::sync::watch::Receiver<u64> {
        self.queue_changes.subscribe()
    }

    fn queue_changed(&self) {
        self.queue_changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The id the next event will get.
    pub fn next_event_id(&self) -> u64 {
        self.writer.lock().expect("writer lock").next_event
    }

    /// All counters: (kind, name) -> value, e.g. ("records", "app.bsky.feed.post").
    pub fn counts(&self) -> BTreeMap<(String, String), i64> {
        let writer = self.writer.lock().expect("writer lock");
        writer
            .counts
            .iter()
            .filter_map(|(k, v)| keys::parse_count(k).ok().map(|(a, b)| ((a.to_string(), b.to_string()), *v)))
            .collect()
    }

    /// How many repos are in `status`.
    pub fn repo_count(&self, status: RepoStatus) -> i64 {
        let writer = self.writer.lock().expect("writer lock");
        writer.counts.get(&keys::count_repos(status.as_str())).copied().unwrap_or(0)
    }

    /// Saved cursors: service -> (position, unix ms of the save).
    pub fn cursors(&self) -> Result<BTreeMap<String, (String, u64)>> {
        self.cursors
            .iter()
            .map(|kv| {
                let (k, v) = kv.into_inner()?;
                let c = Cursor::decode(&v)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), (c.value, c.updated_ms)))
            })
            .collect()
    }

    /// Flushes the journal to disk.
    pub fn persist(&self) -> Result<()> {
        Ok(self.db.persist(PersistMode::SyncAll)?)
    }
}

/// Memtable sizes (fjall's default is 64 MiB). A backfill keeps five or more keyspaces busy,
/// and their memtables are most of what it holds beyond the repos it walks. `records` keeps
/// 32 MiB: every diff reads it, and at 16 the backfill was a tenth slower; the others take
/// 16 MiB, which costs nothing measured and brought the backfill's peak from ~330 to ~275 MB
/// (BENCHMARKS.md).
fn keyspace_options(name: &str) -> KeyspaceCreateOptions {
    let mib: u64 = if name == "records" { 32 } else { 16 };
    KeyspaceCreateOptions::default().max_memtable_size(mib << 20)
}

/// Encodes events as pages of at most [`EventPage::MAX_EVENTS`], their times left for the
/// commit to stamp.
fn encode_pages(events: Vec<StoredEvent>) -> Vec<times::EncodedPage> {
    let mut pages = Vec::with_capacity(events.len().div_ceil(EventPage::MAX_EVENTS));
    let mut events = events.into_iter().peekable();
    let mut offset = 0;
    while events.peek().is_some() {
        let page = EventPage { first_time: 0, events: events.by_ref().take(EventPage::MAX_EVENTS).collect() };
        let len = page.events.len() as u64;
        pages.push(times::EncodedPage { offset, len, bytes: page.encode().into() });
        offset += len;
    }
    pages
}

/// How record writes move the per-collection counters.
fn record_count_deltas(records: &[RecordWrite]) -> BTreeMap<Vec<u8>, i64> {
    let mut by_collection: HashMap<&str, i64> = HashMap::new();
    for write in records {
        match write {
            RecordWrite::Put { collection, existed: false, .. } => *by_collection.entry(collection).or_default() += 1,
            RecordWrite::Remove { collection, .. } => *by_collection.entry(collection).or_default() -= 1,
            RecordWrite::Put { existed: true, .. } => {}
        }
    }
    by_collection.into_iter().filter(|(_, d)| *d != 0).map(|(c, d)| (keys::count_records(c), d)).collect()
}

fn decode_count(v: &[u8]) -> i64 {
    v.try_into().map(i64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(c, Committed { first_event: Some(1), events: 2 });
            let c = store.commit(RepoChange { did: "did:plc:a".into(), ..Default::default() }).unwrap();
            assert_eq!(c.first_event, None);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.next_event_id(), 3);
        let c =
            store.commit(RepoChange { did: "did:plc:a".into(), events: vec![event(3)], ..Default::default() }).unwrap();
        assert_eq!(c.first_event, Some(3));
        let ids: Vec<u64> = store.events_from(0, 10).unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(store.events_from(2, 1).unwrap()[0].1, event(2));
    }

    #[test]
    fn reads_start_inside_pages_and_span_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let many = EventPage::MAX_EVENTS * 2 + 7;
        let events: Vec<_> = (0..many).map(|i| event(i as u8)).collect();
        store.commit(RepoChange { did: "did:plc:a".into(), events: events.clone(), ..Default::default() }).unwrap();
        assert_eq!(store.events.len().unwrap(), 3, "three pages");
        for from in [0, 1, 2, 511, 512, 513, 600, 1024, 1025, many as u64, many as u64 + 1, many as u64 + 5] {
            let got = store.events_from(from, 40).unwrap();
            let want: Vec<(u64, StoredEvent)> =
                (1..=many as u64).zip(events.iter().cloned()).filter(|(id, _)| *id >= from).take(40).collect();
            assert_eq!(got, want, "from {from}");
        }
        drop(store);
        assert_eq!(Store::open(dir.path()).unwrap().next_event_id(), many as u64 + 1);
    }

    #[test]
    fn records_of_older_stores_read_their_bodies_from_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (cid, body) = (vec![1, 113, 18, 32, 7], vec![0xa1, 0x61, 0x61, 0x01]);
        // A version 1 `records` value holds only the CID; the body sits in `blocks`.
        let mut v1 = vec![1];
        postcard::to_io(&serde_bytes::Bytes::new(&cid), &mut v1).unwrap();
        store.records.insert(keys::record("did:plc:a", "a.b.c", "old"), v1).unwrap();
        store.blocks.insert(&cid, &body).unwrap();
        let put = RecordWrite::Put {
            collection: "a.b.c".into(),
            rkey: "new".into(),
            cid: vec![2],
            body: bytes::Bytes::from_static(&[0xa0]),
            existed: false,
        };
        store.commit(RepoChange { did: "did:plc:a".into(), records: vec![put], ..Default::default() }).unwrap();
        assert_eq!(
            store.record("did:plc:a", "a.b.c", "old").unwrap(),
            Some(RecordRef { cid: cid.clone(), body: Some(body) })
        );
        assert_eq!(
            store.record("did:plc:a", "a.b.c", "new").unwrap(),
            Some(RecordRef { cid: vec![2], body: Some(vec![0xa0]) })
        );
        assert_eq!(store.record("did:plc:a", "a.b.c", "none").unwrap(), None);
        assert_eq!(store.blocks.len().unwrap(), 1, "new records write no block");
        assert_eq!(store.repo_records("did:plc:a").unwrap().len(), 2);
    }

    #[test]
    fn counts_follow_records_and_repo_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let put = |rkey: &str, existed| RecordWrite::Put {
            collection: "a.b.c".into(),
            rkey: rkey.into(),
            cid: vec![1],
            body: bytes::Bytes::from_static(&[0xa0]),
            existed,
        };
        let state = |status| Some(RepoState { status, ..Default::default() });
        store
            .commit(RepoChange {
                did: "did:plc:a".into(),
                state: state(RepoStatus::Synced),
                records: vec![put("1", false), put("2", false)],
                ..Default::default()
            })
            .unwrap();
        store
            .commit(RepoChange {
                did: "did:plc:a".into(),
                state: state(RepoStatus::Synced),
                records: vec![put("2", true), RecordWrite::Remove { collection: "a.b.c".into(), rkey: "1".into() }],
                ..Default::default()
            })
            .unwrap();
        let counts = store.counts();
        assert_eq!(counts[&("records".to_string(), "a.b.c".to_string())], 1);
        assert_eq!(counts[&("repos".to_string(), "synced".to_string())], 1);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.counts()[&("records".to_string(), "a.b.c".to_string())], 1);
        assert_eq!(store.repo_records("did:plc:a").unwrap().len(), 1);
    }
}
