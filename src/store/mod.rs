//! The fjall store, in parts that each own their keyspaces, and the writer that commits a
//! change to all of them in one batch.
//!
//! Parts (each a struct in its own file, its keyspaces private fields no other part touches):
//! - [`EventLog`] (`log/`, [`Store::log`]): `events` (pages of events) and `event_times`; with
//!   retention.
//! - [`Records`] (`records.rs`, [`Store::records`]): `records`, each record's CID and body.
//! - [`Repos`] (`repos.rs`, [`Store::repos`]): `repos`, each repo's [`RepoState`].
//! - `QueueIndex` (`queue.rs`, [`Store::queue`]): `pending`, the backfill queue, an index of
//!   the states.
//! - `HandleIndex` (`handles.rs`, [`Store::handles`]): `handles` and `handle_checks`, indexes
//!   of the states.
//! - [`HandlerSpaces`] (`handler_spaces.rs`, [`Store::handlers`]): each handler's
//!   `handler.<name>`.
//! - [`Held`] (`held.rs`, [`Store::held`]): `held`, live commits held during a backfill.
//! - [`Cursors`] (`cursors.rs`, [`Store::cursors`]): `cursors`, saved positions.
//! - `Counts` (`counts.rs`): `counts`, the counters the writer keeps ([`Store::counts`]).
//! - `IndexParts` (`indexes.rs`, [`Store::index_registry`] and the `index` methods of
//!   `index_build.rs`): `index_meta` and each declarative index's `index.<id>`.
//! - `Blocks` (`blocks.rs`): `blocks`, bodies of stores written before bodies moved into
//!   `records` and the event pages; read by the records and the log, never written.
//!
//! [`Store`] holds the database, the parts, the writer lock and the watch channels, and the
//! write paths (`commit.rs`). Every write, the parts' own included, goes through `failure::Db`,
//! which keeps the first failed write so that every later error names its cause (a full disk).
//! An accessor returns its part, except where the part's operations run under the writer lock
//! (the queue's takes raise its floor; the handle checker's verdict is a state write): those
//! return a view that borrows the store ([`Queue`], [`Handles`]).
//!
//! Contract: everything one [`RepoChange`] changes (one batch of a repo walk, or one live
//! commit) — records, handler index writes, repo state with its queue entry and handle index
//! rows, counts, its events and any cursor that covers it — goes into one fjall batch
//! ([`Store::commit`], or [`Store::prepare`] then [`Store::commit_prepared`]). Each part stages
//! its own rows into that batch (`stage*` methods taking the `&mut OwnedWriteBatch`, and any
//! writer state they need, such as the next event id and time or the queue's floor, passed in
//! under the writer lock); no part writes a change's rows in a batch of its own. Event ids and
//! times are assigned under the writer lock at commit time, so the log is gapless and ids
//! survive restarts (the next id is read back from the log on open; retention removes only the
//! oldest pages and never the newest).
//!
//! A new part (such as declarative indexes over record fields): a struct in its own file that
//! owns its keyspaces (private fields), opened in [`Store::open`]; `stage_*` methods that put
//! its rows into the change's batch, called from `prepare` (rows that follow from the change
//! alone, off the lock) or from `commit_prepared` (rows that depend on what is stored or handed
//! out at commit time, under the lock); read methods behind an accessor. Work of its own (a
//! build in the background) writes batches of its own, never a change's rows.
//!
//! Architecture invariant: the store knows nothing of CARs, the network or the filter.

mod blocks;
mod commit;
mod counted_keys;
mod counts;
mod cursors;
mod failure;
mod handler_spaces;
mod handles;
mod held;
mod index_build;
mod index_rows;
mod indexes;
pub mod keys;
mod log;
mod queue;
mod records;
mod repos;
pub mod schedule;
pub mod values;
mod writeback;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use fjall::KeyspaceCreateOptions;

pub use commit::{Committed, Prepared, RepoChange};
pub use cursors::Cursors;
pub use failure::DiskFailure;
pub use handler_spaces::HandlerSpaces;
pub use handles::Handles;
pub use held::Held;
pub use index_build::{BuildState, BuildStep};
pub use indexes::{Build, Hit, LiveIndex, MOVE_ROWS, PageRange, Phase, Progress, Registry, sort_len};
pub use log::{EventLog, Trimmed, now_us};
pub use queue::{Queue, SCAN_AHEAD};
pub(crate) use records::first_repeated_path;
pub use records::{RecordMap, RecordWrite, Records};
pub use repos::{Repos, StatePage};
pub use values::{
    AccountEvent, Action, EventPage, HeldCommit, IdentityEvent, RecordEvent, RepoState, RepoStatus, Stored, StoredEvent,
};

use commit::Writer;
use failure::Db;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write failed (the disk is full, or an I/O error): the store takes no more writes until
    /// it is opened again. Later writes report the same first failure (see `failure.rs`).
    #[error(transparent)]
    Disk(DiskFailure),
    /// fjall refuses writes after a failure whose cause it did not keep (a background worker
    /// that panicked).
    #[error(
        "storage failed at {}: an earlier write failed (the log says why); run again, nothing is lost",
        path.display()
    )]
    Poisoned { path: std::path::PathBuf },
    /// An I/O error outside a write (a read).
    #[error("storage I/O failed")]
    Io(#[source] std::io::Error),
    /// fjall failed otherwise.
    #[error("storage failed")]
    Fjall(#[source] fjall::Error),
    /// A stored key did not decode.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// A stored value did not decode.
    #[error(transparent)]
    Value(#[from] values::ValueError),
    /// A change named one record twice: a caller's bug (the pipeline refuses commits that do),
    /// refused before anything is written.
    #[error("a change to {did} writes {path} twice; nothing of it was written")]
    RepeatedRecord { did: String, path: String },
}

impl StoreError {
    /// The failed write, when that is what this is.
    pub fn disk_failure(&self) -> Option<&DiskFailure> {
        match self {
            StoreError::Disk(failure) => Some(failure),
            _ => None,
        }
    }
}

/// fjall's errors outside writes (which go through `failure::Db`, which knows the path and the
/// first failure).
impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        match e {
            fjall::Error::Io(io) | fjall::Error::Storage(fjall::LsmError::Io(io)) => StoreError::Io(io),
            other => StoreError::Fjall(other),
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The open store.
pub struct Store {
    db: Db,
    log: EventLog,
    records: Records,
    repos: Repos,
    queue: queue::QueueIndex,
    handles: handles::HandleIndex,
    handlers: HandlerSpaces,
    held: Held,
    cursors: Cursors,
    counts: counts::Counts,
    indexes: indexes::IndexParts,
    /// The writer's state; every write of a change or a repo state holds it (see `commit.rs`).
    writer: Mutex<Writer>,
    /// The next event id, published after every commit that wrote events.
    event_head: tokio::sync::watch::Sender<u64>,
    /// Bumped after every commit that put a repo in the backfill queue or moved its due time.
    queue_changes: tokio::sync::watch::Sender<u64>,
    writeback: writeback::JournalWriteback,
}

/// The block cache's size when the config does not say (`[storage] cache_mb`), fjall's own.
pub const DEFAULT_CACHE_MB: u64 = 32;

impl Store {
    /// Opens (or creates) the store in `dir` with the default block cache ([`DEFAULT_CACHE_MB`]).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, DEFAULT_CACHE_MB)
    }

    /// Opens (or creates) the store in `dir` with a block cache of `cache_mb` MiB: each part
    /// opens its keyspaces, and the writer starts from the log's tail and the stored counters.
    pub fn open_with(dir: &Path, cache_mb: u64) -> Result<Self> {
        // Journal entries are not compressed (`Db::open`): compressing event pages there cost the
        // committing thread about a fifth of its time, for a journal that is dropped once flushed.
        let db = Db::open(dir, cache_mb.max(1) << 20)?;
        let ks = |name: &str| db.keyspace(name, || keyspace_options(name));
        let blocks = blocks::Blocks::new(ks("blocks")?);
        let log = EventLog::new(db.clone(), ks("events")?, ks("event_times")?, blocks.clone());
        let counts = counts::Counts::new(ks("counts")?);
        let (next_event, last_time) = log.tail()?;
        let writer = Writer { next_event, last_time, counts: counts.load()?, queue_floor_ms: 0 };
        Ok(Store {
            records: Records::new(ks("records")?, blocks),
            repos: Repos::new(ks("repos")?),
            queue: queue::QueueIndex::new(ks("pending")?),
            handles: handles::HandleIndex::new(ks("handles")?, ks("handle_checks")?),
            handlers: HandlerSpaces::new(db.clone()),
            held: Held::new(db.clone(), ks("held")?),
            cursors: Cursors::new(db.clone(), ks("cursors")?),
            indexes: indexes::IndexParts::open(db.clone())?,
            log,
            counts,
            writer: Mutex::new(writer),
            event_head: tokio::sync::watch::Sender::new(next_event),
            queue_changes: tokio::sync::watch::Sender::new(0),
            writeback: writeback::JournalWriteback::start(dir.to_path_buf()),
            db,
        })
    }

    /// The event log.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// The records.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// The repo states.
    pub fn repos(&self) -> &Repos {
        &self.repos
    }

    /// The backfill queue.
    pub fn queue(&self) -> Queue<'_> {
        Queue::new(self)
    }

    /// The handle index and the handle checks.
    pub fn handles(&self) -> Handles<'_> {
        Handles::new(self)
    }

    /// The handlers' index keyspaces.
    pub fn handlers(&self) -> &HandlerSpaces {
        &self.handlers
    }

    /// The live commits held during backfills.
    pub fn held(&self) -> &Held {
        &self.held
    }

    /// The saved cursors.
    pub fn cursors(&self) -> &Cursors {
        &self.cursors
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

    /// The id the next event will get.
    pub fn next_event_id(&self) -> u64 {
        self.writer.lock().expect("writer lock").next_event
    }

    /// The time of the last event committed (unix µs; 0 before any event with a time).
    #[cfg(test)]
    fn last_event_time(&self) -> u64 {
        self.writer.lock().expect("writer lock").last_time
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

    /// Repos by status (every status, those with none included) and records by collection
    /// (those with any): what `getStats` and the status page show.
    pub fn repos_and_records(&self) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
        let mut repos: BTreeMap<String, i64> = RepoStatus::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
        let mut records = BTreeMap::new();
        for ((kind, name), n) in self.counts() {
            match kind.as_str() {
                "repos" => repos.insert(name, n),
                "records" if n != 0 => records.insert(name, n),
                _ => None,
            };
        }
        (repos, records)
    }

    /// How many repos are in `status`.
    pub fn repo_count(&self, status: RepoStatus) -> i64 {
        let writer = self.writer.lock().expect("writer lock");
        writer.counts.get(&keys::count_repos(status.as_str())).copied().unwrap_or(0)
    }

    /// The bytes the block cache holds now (up to `[storage] cache_mb`): memory that fills with
    /// the reads of any running sluice, whatever it does.
    pub fn block_cache_bytes(&self) -> u64 {
        self.db.cache_bytes()
    }

    /// Flushes the journal to disk.
    pub fn persist(&self) -> Result<()> {
        self.db.persist()
    }
}

/// Memtable sizes (fjall's default is 64 MiB). A backfill keeps five or more keyspaces busy,
/// and their memtables are most of what it holds beyond the repos it walks. `records` keeps
/// 32 MiB: every diff reads it, and at 16 the backfill was a tenth slower; the others take
/// 16 MiB, which costs nothing measured and brought the backfill's peak from ~330 to ~275 MB
/// (docs/bench-log.md, *What shapes memory now*).
/// Every keyspace's options. Index and filter blocks are partitioned at every level (fjall
/// does so from L3 on): a point read in an unpinned L2 table loaded the table's whole index
/// block (~2 MB for a 64 MB table of 4 KiB blocks) and checksummed it, so once a keyspace's
/// index blocks outgrew the block cache every `get` cost hundreds of microseconds (an index
/// build's count reads ran 10x slower, `getRecord` at scale 90-240 us).
fn keyspace_options(name: &str) -> KeyspaceCreateOptions {
    use fjall::config::PartitioningPolicy;
    let mib: u64 = if name == "records" { 32 } else { 16 };
    KeyspaceCreateOptions::default()
        .max_memtable_size(mib << 20)
        .index_block_partitioning_policy(PartitioningPolicy::all(true))
        .filter_block_partitioning_policy(PartitioningPolicy::all(true))
}
