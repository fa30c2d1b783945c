//! The writer: the one path by which repo changes and repo states reach the store, under one
//! lock, each change in one batch.
//!
//! A [`RepoChange`] is prepared first ([`Store::prepare`], lock-free, on any thread): its events
//! are encoded into pages, and its records, handler writes and cursor are staged by their parts
//! into a new batch. [`Store::commit_prepared`] then takes the writer lock, stages what depends
//! on what is stored or handed out at that moment (the state and what follows from it, the
//! event ids and times, the counters), writes the batch, and only then moves the writer's
//! state on. A change that fails before the batch is written leaves nothing behind: no row, no
//! id, no counter.
//!
//! Contract: the batch holds everything the change touches — records, handler index writes,
//! repo state with its queue entry and handle index rows, counters, events and any cursor that
//! covers them — so a reader (or a restart) sees all of it or none of it.

use std::collections::BTreeMap;

use sluice_handlers::IndexWrite;

use super::counts;
use super::indexes::{IndexWork, Shown};
use super::log::{self, EncodedPage};
use super::records::RecordWrite;
use super::values::{RepoState, StoredEvent};
use super::{Result, Store};

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
    did: String,
    /// The record writes, kept for the indexes: their entries are staged at commit time.
    records: Vec<RecordWrite>,
    /// Their entries, extracted off the lock under the indexes in force then.
    index_work: IndexWork,
    pages: Vec<EncodedPage>,
    deltas: counts::Values,
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

/// What the writer hands out and keeps, under its lock.
pub(super) struct Writer {
    /// The id the next event gets.
    pub(super) next_event: u64,
    /// The time (unix µs) of the last event committed.
    pub(super) last_time: u64,
    /// Every counter's value, as stored.
    pub(super) counts: counts::Values,
    /// No repo enters the backfill queue due earlier than this (unix ms): one past the end of
    /// the last take's range, so that every entry written after a take lands ahead of the
    /// take's position (see `queue.rs`).
    pub(super) queue_floor_ms: u64,
}

impl Store {
    /// Commits `change` atomically, assigning its events the next ids. Everything but the id
    /// assignment and the counters is prepared before the writer lock is taken.
    pub fn commit(&self, change: RepoChange) -> Result<Committed> {
        self.commit_prepared(self.prepare(change)?)
    }

    /// Encodes `change` into a batch, ready for [`Store::commit_prepared`]: the CPU work of a
    /// commit, which may run on another thread than the commit itself. A change that writes
    /// one record twice is refused ([`super::StoreError::RepeatedRecord`]).
    pub fn prepare(&self, mut change: RepoChange) -> Result<Prepared> {
        if let Some(path) = super::records::first_repeated_path(change.records.iter().map(RecordWrite::path)) {
            return Err(super::StoreError::RepeatedRecord { did: change.did, path });
        }
        let deltas = counts::record_deltas(&change.records);
        let events = change.events.len() as u64;
        let pages = log::encode_pages(std::mem::take(&mut change.events));
        let items = 4 + change.records.len() + pages.len() + change.handler_writes.len() + deltas.len();
        let mut batch = self.db.batch(items);
        let RepoChange { did, state, records, events: _, handler_writes, cursor } = change;
        // The rows that depend on nothing stored: staged here, outside the lock. The state is
        // staged at commit time, by `stage_state`, and index rows (which read what the index
        // holds, and follow a build's position) by `IndexParts::stage`.
        self.records.stage(&mut batch, &did, &records);
        let index_work = self.indexes.prepare(&records, log::now_us() as i64);
        self.handlers.stage(&mut batch, handler_writes)?;
        if let Some((service, value)) = cursor {
            self.cursors.stage(&mut batch, &service, value);
        }
        let state = state.map(|s| (did.clone(), s));
        Ok(Prepared { batch, did, records, index_work, pages, deltas, events, state })
    }

    /// Commits a prepared change: assigns its events the next ids and times, updates the
    /// counters and the queue index and writes the batch, under the writer lock.
    pub fn commit_prepared(&self, prepared: Prepared) -> Result<Committed> {
        let Prepared { mut batch, did, records, index_work, pages, mut deltas, events: n, state } = prepared;
        let mut writer = self.writer.lock().expect("writer lock");
        // The stored state, read when the change writes a new one, or when counts need to know
        // whether the repo is answered.
        let old = match &state {
            Some((did, _)) => self.repos.state(did)?,
            None if self.indexes.counts_any() => self.repos.state(&did)?,
            None => None,
        };
        let before = old.as_ref().is_some_and(RepoState::answered);
        let shown = Shown { before, after: state.as_ref().map_or(before, |(_, new)| new.answered()) };
        let stored = |collection: &str, rkey: &str| Ok(self.records.get(&did, collection, rkey)?.and_then(|r| r.body));
        let now = log::now_us() as i64;
        let indexed = self.indexes.stage(&mut batch, &did, index_work, &records, now, shown, &stored)?;
        let queued = match state {
            Some((did, new)) => self.stage_state(&mut batch, &mut deltas, &writer, &did, old, new, false)?,
            None => false,
        };
        let first = writer.next_event;
        let first_time = log::first_time(writer.last_time, self.log.now());
        self.log.stage(&mut batch, pages, first, first_time);
        let new_counts = self.counts.stage(&mut batch, &writer.counts, deltas);
        self.indexes.committing(&indexed);
        self.db.commit(batch)?;
        self.writeback.wrote();
        self.indexes.committed(indexed);
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

    /// Writes the states of several repos, and optionally a cursor, in one batch: state writes
    /// outside the pipeline (the scheduler's, the firehose's, the crawler's).
    pub fn set_states(&self, states: &[(String, RepoState)], cursor: Option<(&str, &str)>) -> Result<()> {
        let mut batch = self.db.batch(3 * states.len() + 4);
        let mut deltas = BTreeMap::new();
        let mut writer = self.writer.lock().expect("writer lock");
        let (mut queued, mut shown) = (false, Vec::new());
        for (did, state) in states {
            let old = self.repos.state(did)?;
            let before = old.as_ref().is_some_and(RepoState::answered);
            if before != state.answered() {
                shown.push((did.as_str(), Shown { before, after: state.answered() }));
            }
            queued |= self.stage_state(&mut batch, &mut deltas, &writer, did, old, state.clone(), false)?;
        }
        if let Some((service, value)) = cursor {
            self.cursors.stage(&mut batch, service, value.to_string());
        }
        let indexed = self.indexes.stage_shown(&mut batch, &shown)?;
        let new_counts = self.counts.stage(&mut batch, &writer.counts, deltas);
        self.indexes.committing(&indexed);
        self.db.commit(batch)?;
        self.indexes.committed(indexed);
        writer.counts.extend(new_counts);
        if queued {
            self.queue_changed();
        }
        Ok(())
    }

    /// The state write: puts `did`'s `new` state (replacing the stored `old`) in `batch` with
    /// what follows from it, each part staging its own rows: the handle verdict settled and the
    /// handle index moved (`handle_verdict`: the writer is the handle checker, whose verdict
    /// stands), the status counters moved (in `deltas`), the queue entry moved to follow
    /// [`RepoState::queue_due`] (no earlier than the queue's floor, the due time recorded in
    /// the state), and the state itself. Returns whether the repo enters the queue or gets a
    /// new due time there. Runs under the writer lock, so `old` is current.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stage_state(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        deltas: &mut counts::Values,
        writer: &Writer,
        did: &str,
        old: Option<RepoState>,
        mut new: RepoState,
        handle_verdict: bool,
    ) -> Result<bool> {
        self.handles.stage(batch, &self.repos, did, old.as_ref(), &mut new, handle_verdict)?;
        counts::status_move(deltas, old.as_ref().map(|s| s.status), new.status);
        let old_due = old.as_ref().and_then(RepoState::queue_due);
        let queued = self.queue.stage(batch, did, old_due, &mut new, writer.queue_floor_ms);
        self.repos.stage(batch, did, &new);
        Ok(queued)
    }

    fn queue_changed(&self) {
        self.queue_changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use sluice_handlers::IndexWrite;

    use super::*;
    use crate::store::StoreError;
    use crate::store::values::RecordRef;
    use crate::store::{Action, RecordEvent, RepoStatus};

    fn put(rkey: &str, existed: bool) -> RecordWrite {
        RecordWrite::Put {
            collection: "a.b.c".into(),
            rkey: rkey.into(),
            cid: vec![1],
            body: Bytes::from_static(&[0xa0]),
            existed,
        }
    }

    fn created(rkey: &str) -> StoredEvent {
        StoredEvent::Record(RecordEvent {
            live: true,
            did: "did:plc:a".into(),
            rev: "r".into(),
            collection: "a.b.c".into(),
            rkey: rkey.into(),
            action: Action::Create,
            cid: vec![1],
            replaced: None,
            handled: vec![],
            body: Some(Bytes::from_static(&[0xa0])),
        })
    }

    /// A change touching every part a change can touch.
    fn full_change(did: &str) -> RepoChange {
        RepoChange {
            did: did.into(),
            state: Some(RepoState {
                status: RepoStatus::Error,
                next_retry_ms: Some(5_000),
                handle: Some("a.test".into()),
                ..Default::default()
            }),
            records: vec![put("k", false)],
            events: vec![created("k")],
            handler_writes: vec![("test", IndexWrite { key: b"s\0a".to_vec(), value: Some(vec![7]) })],
            cursor: Some(("crawler".into(), "c1".into())),
        }
    }

    /// The one-batch contract, both ways: a change's records, state (with its queue entry,
    /// handle check and counters), handler writes, cursor and events are all there after its
    /// commit; and a change whose commit fails once some of it is staged (here its state write,
    /// on a stored state that does not decode) leaves none of them, nor uses an event id.
    #[test]
    fn a_change_lands_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();

        let c = store.commit(full_change("did:plc:a")).unwrap();
        assert_eq!(c, Committed { first_event: Some(1), events: 1 });
        assert_eq!(
            store.records().get("did:plc:a", "a.b.c", "k").unwrap(),
            Some(RecordRef { cid: vec![1], body: Some(vec![0xa0]) })
        );
        assert_eq!(store.repos().state("did:plc:a").unwrap().map(|s| s.status), Some(RepoStatus::Error));
        assert_eq!(store.queue().next_due_ms(&Default::default()).unwrap(), Some(5_000));
        assert_eq!(store.handles().checks_after(None, 10).unwrap(), ["did:plc:a"]);
        assert_eq!(store.handlers().keys("test", b"s\0", None, 10).unwrap(), [b"s\0a".to_vec()]);
        assert_eq!(store.cursors().get("crawler").unwrap().as_deref(), Some("c1"));
        assert_eq!(store.log().from(0, 10).unwrap(), vec![(1, created("k"))]);
        let counted = store.counts();
        assert_eq!(counted[&("records".into(), "a.b.c".into())], 1);
        assert_eq!(counted[&("repos".into(), "error".into())], 1);

        // The second repo's stored state is unreadable: its commit fails at the state write,
        // after its records, handler writes and cursor were staged.
        store.repos.insert_raw("did:plc:b", &[0xff, 0xff]);
        let before = (store.counts(), store.next_event_id());
        let mut change = full_change("did:plc:b");
        change.records = vec![put("other", false)];
        change.handler_writes[0].1.key = b"s\0b".to_vec();
        change.cursor = Some(("crawler".into(), "c2".into()));
        assert!(store.commit(change).is_err());
        assert_eq!(store.records().of_repo("did:plc:b").unwrap().len(), 0, "no record");
        assert_eq!(store.handlers().keys("test", b"s\0", None, 10).unwrap(), [b"s\0a".to_vec()], "no handler write");
        assert_eq!(store.cursors().get("crawler").unwrap().as_deref(), Some("c1"), "no cursor");
        assert_eq!(store.handles().checks_after(None, 10).unwrap(), ["did:plc:a"], "no handle check");
        assert_eq!(store.log().from(0, 10).unwrap().len(), 1, "no event");
        assert_eq!((store.counts(), store.next_event_id()), before, "no counter moved, no id used");

        // Nothing of it surfaces later either: the next commit gets the next id.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let c = store.commit(RepoChange { did: "did:plc:c".into(), events: vec![created("x")], ..Default::default() });
        assert_eq!(c.unwrap().first_event, Some(2));
        assert_eq!(store.records().of_repo("did:plc:b").unwrap().len(), 0);
    }

    /// A change naming one record twice (which the pipeline never sends) is refused whole,
    /// naming the record: each write is judged against what is stored, so it would be
    /// miscounted.
    #[test]
    fn a_change_writing_a_record_twice_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let before = (store.counts(), store.next_event_id());
        let mut change = full_change("did:plc:a");
        change.records = vec![
            put("k", false),
            put("j", false),
            RecordWrite::Remove { collection: "a.b.c".into(), rkey: "k".into() },
        ];
        let refused = store.commit(change).unwrap_err();
        assert!(matches!(&refused, StoreError::RepeatedRecord { path, .. } if path == "a.b.c/k"), "{refused:?}");
        assert_eq!(refused.to_string(), "a change to did:plc:a writes a.b.c/k twice; nothing of it was written");
        assert!(store.records().of_repo("did:plc:a").unwrap().is_empty());
        assert!(store.repos().state("did:plc:a").unwrap().is_none());
        assert_eq!(store.log().from(0, 10).unwrap().len(), 0);
        assert_eq!((store.counts(), store.next_event_id()), before);
    }

    #[test]
    fn counts_follow_records_and_repo_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
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
        assert_eq!(store.records().of_repo("did:plc:a").unwrap().len(), 1);
    }
}
