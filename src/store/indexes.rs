//! The declarative indexes' entries: per index `index.<id>` (one keyspace each, dropped whole
//! when the index is), and `index_meta` (each index's definition, and the next id).
//!
//! Rows of `index.<id>` (the first byte names the kind):
//! - `E key sort did \0 rkey` -> the record (its `records` value: CID and body) when at most
//!   [`INLINE_MAX`] bytes and the index keeps every record (`per_repo = "all"`), else empty: an
//!   entry. `key` is the encoded key tuple (`indexes::encode::key_tuple`: its text, or 16 bytes
//!   of its hash when long), `sort` the encoded sort value (self-delimiting: 8 bytes for
//!   datetimes and integers, terminated text for strings), so a query is one range
//!   scan of `E key`, newest first from its end, and reads no record elsewhere: a page of 50
//!   random `records` reads cost milliseconds once `records` outgrows the block cache.
//! - `D did \0 key sort rkey` -> empty (`per_repo = "all"` only): each entry again, by repo
//!   first, so that one repo's entries under a key are one range scan, whatever the key or the
//!   repo holds besides (a query with `did=`).
//! - `R did \0 rkey` -> what the record put in the index ([`RecordRow`]): entries, or why it
//!   has none; only where a record's entries cannot be extracted again from its stored version
//!   (a `sortAt` sort, which depends on when it was indexed) or are read without it
//!   (`per_repo = "latest"`). An update or delete reads it to remove the old entries; in other
//!   indexes it extracts them again from the stored record it replaces, so that a like costs
//!   three rows rather than four.
//! - `C key` -> i64: entries under `key` of repos whose records are answered (not gone or
//!   discarded: what a query shows), `count = true` only, read in constant time. A repo that
//!   starts or stops being answered moves its entries' counts in the batch of that change, or,
//!   with more entries than a step, in steps of their own (its `V` row).
//!   Moving a count reads it, but for a key the index's counted keys (`counted_keys.rs`)
//!   know to have no row.
//! - `C key step` -> i64 (while a counted index builds): what build step `step` (8 bytes: the
//!   records built before it) moved `key`'s count by, written without reading the count. The
//!   build's last phase ([`Phase::Counts`]) sums them into `C key` and removes them. A key tuple
//!   delimits itself, so one key's rows lie together, its count row first.
//! - `P did \0 sort rkey` -> empty (`per_repo = "latest"` only): every record of a repo in sort
//!   order, so that the repo's newest is one seek, and its next newest one more when it goes.
//! - `V did` -> a mark (`moves.rs`): `did`'s counts move in steps, and how far they have
//!   moved (`count = true`, `per_repo = "all"` only).
//! - `B` -> the build position (its phase, where it stands in it and the records built so
//!   far; absent once ready), and `S` -> totals (entries, records with entries, records skipped):
//!   kept beside the entries so that a build step's ingested run (`index_rows.rs`) moves them
//!   together.
//!
//! Rows of `index_meta`: `d id` -> definition (JSON, versioned); `n` -> the next id.
//!
//! Contract: entries are staged in the batch of the change that writes their record, under the
//! writer lock (`Store::commit_prepared`), so an index never disagrees with the records. While
//! an index puts in its entries, a change applies to it only for records at or before the
//! build's position. A build step scans the records past it off the lock ([`Scanning`]: the
//! changes committed meanwhile past the position are noted), then, under the lock, reads those
//! again and moves the position in the run that writes their entries (ingested at once, see
//! `index_rows.rs`). The count phase's steps move their own position in the run that sums the
//! counts. So a build that stops anywhere (`kill -9`) resumes where its last step ended and
//! ends exact.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound::{self, Excluded, Included, Unbounded};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use fjall::Keyspace;
use smol_str::SmolStr;

use self::moves::{MOVING, Moving, PendingRows, mark_key};
use super::counted_keys::CountedKeys;
use super::failure::Db;
use super::index_rows::Rows;
use super::records::RecordWrite;
use super::values::{RecordRef, ValueError};
use super::{Result, StoreError, keys, keyspace_options};
use crate::indexes::encode::key_tuple_len;
use crate::indexes::spec::StoredSpec;
use crate::indexes::{IndexSpec, PerRepo, RecordEntries, Skip, SortType};

const ENTRY: u8 = b'E';
const RECORD: u8 = b'R';
const COUNT: u8 = b'C';
const PER_REPO: u8 = b'P';
const BY_REPO: u8 = b'D';
const BUILD: u8 = b'B';
const TOTALS: u8 = b'S';

mod moves;

/// The version of the rows above, kept in each index's definition: an index stored under an
/// older one is built again from the records at open. Version 6: `per_repo = "latest"`
/// entries carry their records.
const ROWS_VERSION: u8 = 6;

/// The longest `records` value an entry carries; a longer record is read from `records`.
pub const INLINE_MAX: usize = 2048;

/// The rows a count move step reads, and the most entries a repo moves in the batch of its
/// account event, unless set lower (`[storage] index_build_batch`): ~3 µs each under the writer
/// lock, so that neither holds it for more than a few milliseconds.
pub const MOVE_ROWS: usize = 1024;

/// An index in force: its id (its keyspace is `index.<id>`), definition and keyspace.
pub struct LiveIndex {
    /// Stable for the definition's life; a changed definition gets a new id.
    pub id: u32,
    /// The definition.
    pub spec: IndexSpec,
    space: Keyspace,
    /// The keys that may have a count row, where known: a counted index that held no entry
    /// and no count row when it was created or the store opened (see `counted_keys.rs`).
    counted: Option<Arc<CountedKeys>>,
    /// The repos whose counts move in steps, by DID, as committed (changed under the writer
    /// lock; see `moves.rs`). Shared with the index a `method`-only change replaces it by.
    moving: Arc<Mutex<BTreeMap<String, Moving>>>,
    /// Odd while a batch that writes marks (or moves `pending`'s figures) commits and installs
    /// them, bumped before and after: a count that saw no mark and no bump reads its count row
    /// alone, and one that saw no bump may use the figures (see `moves.rs`).
    marks_epoch: Arc<AtomicU64>,
    /// How many of a moving repo's entries under a key are not moved yet, where a count read
    /// it: kept exact by the batches that change it (see `moves.rs`). Shared as `moving` is.
    pending: Arc<Mutex<PendingRows>>,
    /// The database, for the snapshot a count reads from.
    db: Db,
}

impl LiveIndex {
    /// An index over `space` in `db`; `empty` when it holds no entry and no count row, so that
    /// its counted keys are known from the start. Reads the marks of repos whose counts move.
    fn new(id: u32, spec: IndexSpec, space: Keyspace, empty: bool, db: Db) -> Result<LiveIndex> {
        let counted = (spec.count && empty).then(|| Arc::new(CountedKeys::empty()));
        let mut moving = BTreeMap::new();
        for kv in space.prefix([MOVING]) {
            let (k, v) = kv.into_inner()?;
            let (did, mark) = moves::decode_mark(&k, &v)?;
            moving.insert(did.to_string(), mark);
        }
        let (moving, marks_epoch, pending) = (Arc::new(Mutex::new(moving)), Arc::default(), Arc::default());
        Ok(LiveIndex { id, spec, space, counted, moving, marks_epoch, pending, db })
    }

    /// Its keyspace, `index.<id>`.
    pub(super) fn space(&self) -> &Keyspace {
        &self.space
    }

    /// Whether this index keeps its entries by repo too (`D` rows). A `per_repo = "latest"`
    /// index finds a repo's one standing record through its `P` rows instead.
    fn by_repo(&self) -> bool {
        self.spec.per_repo == PerRepo::All
    }

    /// Whether this index keeps what each record put in it (`R` rows). Elsewhere a record's
    /// entries are extracted again from its stored version when it changes or goes: they
    /// depend on nothing but its body. A `sortAt` sort depends on when the record was indexed
    /// too, and a `per_repo = "latest"` index reads its repo's newest record's entries when the
    /// newest changes.
    fn keeps_record_rows(&self) -> bool {
        self.spec.per_repo == PerRepo::Latest || matches!(self.spec.sort, crate::indexes::Sort::SortAt(_))
    }
}

/// A record's stored body, by rkey, in the collection of the index asking: what an update or
/// removal extracts its old entries from where the index keeps no `R` rows.
pub(super) type StoredBody<'a> = &'a dyn Fn(&str, &str) -> Result<Option<Vec<u8>>>;

/// The indexes in force; replaced whole when the filter's definitions change.
#[derive(Default)]
pub struct Registry {
    /// Bumped at every change of the set: a change prepared under an older set is extracted
    /// again at commit.
    pub generation: u64,
    /// The indexes, by name.
    pub indexes: BTreeMap<String, Arc<LiveIndex>>,
}

impl Registry {
    /// The indexes over `collection`.
    pub fn on<'a>(&'a self, collection: &'a str) -> impl Iterator<Item = &'a Arc<LiveIndex>> + 'a {
        self.indexes.values().filter(move |ix| ix.spec.collection == collection)
    }

    /// The index served under the NSID `method`, if one is.
    pub fn by_method(&self, method: &str) -> Option<&Arc<LiveIndex>> {
        self.indexes.values().find(|ix| ix.spec.method.as_deref() == Some(method))
    }
}

/// Where an index stands: its build, if under way, and its totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The build under way: the last `records` key built (empty before the first batch) and the
    /// records of the collection built so far.
    pub building: Option<Build>,
    /// Entries (rows a query can return).
    pub entries: i64,
    /// Records that have entries (with `per_repo = "latest"`, each repo's older ones too,
    /// though only its newest's entries are rows a query returns).
    pub records: i64,
    /// Records stored without an entry (key or sort field missing, wrong type, too large...).
    pub skipped: i64,
}

/// A build under way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Build {
    /// Where the build stands in its phase: the last `records` key built, or the last count row
    /// summed.
    pub after: Vec<u8>,
    /// Records of the index's collection built so far.
    pub done: u64,
    /// What the build is doing.
    pub phase: Phase,
}

/// The phases of a build.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    /// Putting in the entries of the stored records, in `records` key order. A counted index's
    /// steps write what each moved a count by as a step row (`C key step`), without reading
    /// the count.
    #[default]
    Entries,
    /// Every entry is in; summing the step rows into each key's count, in key order (`count =
    /// true` only). Changes move the counts as they do once ready: a count is its `C key` row
    /// plus its step rows not summed yet, whichever is written first.
    Counts,
}

impl Phase {
    /// Its name in `describeIndexes` and `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Entries => "entries",
            Phase::Counts => "counts",
        }
    }
}

/// What one record puts in one index, as its `R` row keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RecordRow {
    Entries(RecordEntries),
    Skipped(Skip),
}

/// Index updates extracted from a change, off the writer lock ([`IndexParts::prepare`]).
#[derive(Default)]
pub(super) struct IndexWork {
    generation: u64,
    items: Vec<Item>,
}

struct Item {
    index: Arc<LiveIndex>,
    collection: SmolStr,
    update: Update,
}

/// A change of one record as an index sees it.
pub(super) struct Update {
    pub(super) rkey: SmolStr,
    /// Whether the record was stored before: its old entries are then read (its `R` row, or
    /// extracted again from the stored version).
    pub(super) existed: bool,
    /// The new version's entries; `None` for a removal.
    pub(super) new: Option<Result<RecordEntries, Skip>>,
    /// The new version's `records` value, when short enough for its entries to carry it
    /// ([`INLINE_MAX`]).
    pub(super) value: Option<bytes::Bytes>,
}

/// A record's `records` value for its entries to carry, if at most [`INLINE_MAX`] bytes.
pub(super) fn inline_value(cid: &[u8], body: &[u8]) -> Option<bytes::Bytes> {
    (cid.len() + body.len() + 8 <= INLINE_MAX).then(|| RecordRef::encode_parts(cid, body).into())
}

/// Whether a repo's records are answered ([`RepoState::answered`](super::RepoState::answered))
/// before and after a change: counts hold only the entries of answered repos, so a change
/// moves them only when the repo is answered after it, and a repo that starts or stops being
/// answered moves its every entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shown {
    pub(super) before: bool,
    pub(super) after: bool,
}

/// Totals moved by a batch, installed once it committed.
#[derive(Default)]
pub(super) struct Moved {
    totals: HashMap<u32, Progress>,
    skips: Vec<(u32, Skip)>,
    /// Count moves by index and key tuple, staged once for the whole batch (several repos of
    /// one batch may move one key).
    counts: BTreeMap<(u32, Vec<u8>), i64>,
    /// Marks of repos whose counts move in steps, staged in order: (index, repo, mark; `None`
    /// once its move is done).
    marks: Vec<(Arc<LiveIndex>, String, Option<Moving>)>,
    /// How the entries not moved yet of repos whose counts move change, by key: (index, repo,
    /// key -> rows added (removed: negative)).
    pending: Vec<(Arc<LiveIndex>, String, PendingMoves)>,
}

/// Rows added to (removed from: negative) a moving repo's entries not moved yet, by key.
type PendingMoves = BTreeMap<Vec<u8>, i64>;

/// The indexes part: owns `index_meta` and every `index.<id>`.
pub(super) struct IndexParts {
    db: Db,
    meta: Keyspace,
    registry: ArcSwap<Registry>,
    /// Every index's progress, by id; changed only under the writer lock.
    progress: Mutex<HashMap<u32, Progress>>,
    /// Records skipped since start, by index and reason (for `/metrics`).
    skips: Mutex<HashMap<(u32, Skip), u64>>,
    /// Build scans under way off the writer lock: a step's, and the next step's, read while
    /// the step writes.
    scans: Mutex<Scans>,
    /// The next build step's scan, done while the step before it wrote.
    prefetched: Mutex<Option<ScannedStep>>,
    /// The rows a count move step reads (see `moves.rs`).
    move_rows: AtomicUsize,
}

/// Build scans of the stored records under way off the writer lock, by ticket.
#[derive(Default)]
struct Scans {
    next_ticket: u64,
    under_way: Vec<Scanning>,
}

/// A build scan under way: the index it builds, the position it reads from, and the `records`
/// keys past it of the changes committed since it began, which the index left to the build.
/// The scan may have read those records before or after the change, so the step reads them
/// again under the lock.
struct Scanning {
    ticket: u64,
    id: u32,
    from: Vec<u8>,
    /// The `records` keys changed past `from`, in key order.
    changed: BTreeSet<Vec<u8>>,
}

/// A build step's scan, done off the writer lock.
pub(super) struct ScannedStep {
    /// Its entry in the scans under way.
    pub(super) ticket: u64,
    pub(super) index: Arc<LiveIndex>,
    /// The build position it read from.
    pub(super) from: Vec<u8>,
    /// When it read (what `sortAt` bounds by).
    pub(super) now: i64,
    /// The records it found (repo, create) in key order, and the last key read (`None`: the
    /// end of the records).
    pub(super) scanned: Result<(Vec<Found>, Option<Vec<u8>>)>,
}

/// A record a build step puts in its index: its repo and the create.
pub(super) type Found = (String, Update);

fn meta_key(kind: u8, id: u32) -> [u8; 5] {
    let mut k = [kind, 0, 0, 0, 0];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn did_rkey(kind: u8, did: &str, rkey: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + did.len() + rkey.len());
    k.push(kind);
    k.extend_from_slice(did.as_bytes());
    k.push(0);
    k.extend_from_slice(rkey.as_bytes());
    k
}

fn entry_key(key: &[u8], sort: &[u8], did: &str, rkey: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + key.len() + sort.len() + did.len() + rkey.len());
    k.push(ENTRY);
    k.extend_from_slice(key);
    k.extend_from_slice(sort);
    k.extend_from_slice(did.as_bytes());
    k.push(0);
    k.extend_from_slice(rkey.as_bytes());
    k
}

/// The prefix of `did`'s `D` rows under the key tuple `key`.
fn by_repo_prefix(did: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + did.len() + key.len());
    k.push(BY_REPO);
    k.extend_from_slice(did.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

fn by_repo_key(did: &str, key: &[u8], sort: &[u8], rkey: &str) -> Vec<u8> {
    [by_repo_prefix(did, key).as_slice(), sort, rkey.as_bytes()].concat()
}

/// An entry's position (what follows the key tuple in its `E` row): `sort did \0 rkey`.
fn position(sort: &[u8], did: &str, rkey: &str) -> Vec<u8> {
    [sort, did.as_bytes(), &[0], rkey.as_bytes()].concat()
}

fn count_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(COUNT);
    k.extend_from_slice(key);
    k
}

fn per_repo_prefix(did: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + did.len());
    k.push(PER_REPO);
    k.extend_from_slice(did.as_bytes());
    k.push(0);
    k
}

/// The length of the sort value at the start of `bytes`, for an index sorting by `kind`.
pub fn sort_len(kind: SortType, bytes: &[u8]) -> Option<usize> {
    match kind {
        SortType::Datetime | SortType::Integer => (bytes.len() >= 8).then_some(8),
        SortType::String => {
            let mut i = 0;
            while i + 1 < bytes.len() {
                match (bytes[i], bytes[i + 1]) {
                    (0, 1) => return Some(i + 2),
                    (0, _) => i += 2,
                    _ => i += 1,
                }
            }
            None
        }
    }
}

/// The first key after every key that starts with `prefix`.
fn past(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Value(ValueError::Malformed(what))
}

impl From<std::result::Result<RecordEntries, Skip>> for RecordRow {
    fn from(extracted: std::result::Result<RecordEntries, Skip>) -> RecordRow {
        match extracted {
            Ok(entries) => RecordRow::Entries(entries),
            Err(skip) => RecordRow::Skipped(skip),
        }
    }
}

impl RecordRow {
    const VERSION: u8 = 1;

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![Self::VERSION];
        match self {
            RecordRow::Skipped(skip) => out.push(1 + skip.ordinal() as u8),
            RecordRow::Entries(e) => {
                out.push(0);
                let mut part = |b: &[u8]| {
                    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
                    out.extend_from_slice(b);
                };
                part(&e.sort);
                for key in &e.keys {
                    part(key);
                }
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<RecordRow> {
        let bad = || corrupt("index record row");
        let [version, kind, rest @ ..] = bytes else { return Err(bad()) };
        if *version != Self::VERSION {
            return Err(bad());
        }
        if *kind > 0 {
            return Skip::ALL.get(*kind as usize - 1).map(|s| RecordRow::Skipped(*s)).ok_or_else(bad);
        }
        let mut parts = Vec::new();
        let mut rest = rest;
        while !rest.is_empty() {
            let (len, tail) = rest.split_first_chunk::<2>().ok_or_else(bad)?;
            let len = u16::from_be_bytes(*len) as usize;
            if tail.len() < len {
                return Err(bad());
            }
            parts.push(tail[..len].to_vec());
            rest = &tail[len..];
        }
        let mut parts = parts.into_iter();
        let sort = parts.next().ok_or_else(bad)?;
        Ok(RecordRow::Entries(RecordEntries { sort, keys: parts.collect() }))
    }

    fn entries(&self) -> Option<&RecordEntries> {
        match self {
            RecordRow::Entries(e) => Some(e),
            RecordRow::Skipped(_) => None,
        }
    }
}

impl LiveIndex {
    fn row(&self, key: &[u8]) -> Result<Option<fjall::Slice>> {
        Ok(self.space.get(key)?)
    }

    fn record_row(&self, did: &str, rkey: &str) -> Result<Option<RecordRow>> {
        self.row(&did_rkey(RECORD, did, rkey))?.map(|v| RecordRow::decode(&v)).transpose()
    }

    /// `key`'s count row as stored (see [`LiveIndex::count`] for the count of answered repos).
    fn count_row(&self, key: &[u8]) -> Result<i64> {
        Ok(self.row(&count_key(key))?.map_or(0, |v| decode_i64(&v)))
    }

    /// Its count rows: (count rows, step rows not summed yet), for tests.
    #[doc(hidden)]
    pub fn count_rows(&self) -> Result<(usize, usize)> {
        let mut rows = (0, 0);
        for kv in self.space.prefix([COUNT]) {
            match split_count_row(&kv.key()?, self.spec.key.len())? {
                (_, None) => rows.0 += 1,
                (_, Some(_)) => rows.1 += 1,
            }
        }
        Ok(rows)
    }

    /// Stages the build position `build` (`None`: the build is done, its row removed).
    fn stage_position(&self, batch: &mut impl Rows, build: Option<&Build>) {
        match build {
            Some(b) => batch.put(&self.space, [BUILD], encode_build(b)),
            None => batch.delete(&self.space, [BUILD]),
        }
    }

    /// Stages `key`'s count as `value`: its row written, or removed at zero.
    fn stage_count(&self, batch: &mut impl Rows, key: &[u8], value: i64) {
        if value == 0 {
            return batch.delete(&self.space, count_key(key));
        }
        if let Some(counted) = &self.counted {
            counted.add(key);
        }
        batch.put(&self.space, count_key(key), value.to_be_bytes())
    }

    /// [`LiveIndex::count`], without a read for a key the index has never counted (it has no
    /// row): what a count move starts from.
    pub(super) fn stored_count(&self, key: &[u8]) -> Result<i64> {
        match &self.counted {
            Some(counted) if !counted.may_hold(key) => Ok(0),
            _ => self.count_row(key),
        }
    }

    /// Up to `limit` entries under the key tuple `key` as (did, rkey, position), newest first
    /// by sort value (ascending when `ascending`), with sort values within `lo..=hi` (encoded),
    /// only `repo`'s when given, and, with `after`, past that position in that order. A position
    /// is what follows the key tuple in the entry: stable for as long as the entry stands, so it
    /// is the query cursor. Each page costs what it returns, with or without `repo`.
    pub fn page(&self, key: &[u8], range: &PageRange<'_>, limit: usize) -> Result<Vec<Hit>> {
        match range.repo {
            None => self.scan(&[&[ENTRY], key].concat(), range, range.after.map(<[u8]>::to_vec), limit, |tail| {
                let sort = sort_len(self.spec.sort.value_type(), tail).ok_or_else(|| corrupt("index entry"))?;
                let rest = std::str::from_utf8(&tail[sort..]).map_err(|_| corrupt("index entry"))?;
                let (did, rkey) = rest.split_once('\0').ok_or_else(|| corrupt("index entry"))?;
                Ok((did.to_string(), rkey.to_string(), tail.to_vec()))
            }),
            Some(did) if !self.by_repo() => self.newest_hit(did, key, range),
            Some(did) => {
                // A position is `sort did \0 rkey`; under `D did \0 key` the tail is `sort rkey`.
                let after = range.after.map(|p| self.repo_tail(p));
                self.scan(&by_repo_prefix(did, key), range, after, limit, |tail| {
                    let sort = sort_len(self.spec.sort.value_type(), tail).ok_or_else(|| corrupt("index repo row"))?;
                    let rkey = std::str::from_utf8(&tail[sort..]).map_err(|_| corrupt("index repo row"))?;
                    Ok((did.to_string(), rkey.to_string(), position(&tail[..sort], did, rkey)))
                })
            }
        }
    }

    /// Up to `limit` rows under `prefix` whose tails (a sort value first) are within `range`'s
    /// sort values and past `after` (a tail), each read by `hit` into (did, rkey, position); the
    /// row's value is the record, when it carries one.
    fn scan(
        &self,
        prefix: &[u8],
        range: &PageRange<'_>,
        after: Option<Vec<u8>>,
        limit: usize,
        hit: impl Fn(&[u8]) -> Result<(String, String, Vec<u8>)>,
    ) -> Result<Vec<Hit>> {
        let with = |tail: &[u8]| [prefix, tail].concat();
        let mut lo: Bound<Vec<u8>> = match range.lo {
            Some(lo) => Included(with(lo)),
            None => Included(prefix.to_vec()),
        };
        let mut hi: Bound<Vec<u8>> = match range.hi {
            Some(hi) => Excluded(with(&[hi, &[0xff][..]].concat())),
            None => past(prefix).map_or(Unbounded, Excluded),
        };
        if let Some(after) = after {
            match range.ascending {
                true => lo = lo_max(lo, with(&after)),
                false => hi = hi_min(hi, with(&after)),
            }
        }
        let iter = self.space.range((lo, hi));
        let iter: Box<dyn Iterator<Item = fjall::Guard>> =
            if range.ascending { Box::new(iter) } else { Box::new(iter.rev()) };
        let mut hits = Vec::with_capacity(limit.min(128));
        for kv in iter.take(limit) {
            let (k, v) = kv.into_inner()?;
            let (did, rkey, position) = hit(&k[prefix.len()..])?;
            let record = match v.is_empty() {
                true => None,
                false => Some(RecordRef::view(&v).map_err(|_| corrupt("index entry's record"))?.into()),
            };
            hits.push(Hit { did, rkey, position, record });
        }
        Ok(hits)
    }

    /// A position (`sort did \0 rkey`) as the tail of a `D` row (`sort rkey`); a position this
    /// index did not give is left as it is (it still bounds the page, as any bytes do).
    fn repo_tail(&self, position: &[u8]) -> Vec<u8> {
        let split = sort_len(self.spec.sort.value_type(), position)
            .and_then(|sort| Some((sort, position[sort..].iter().position(|b| *b == 0)?)));
        match split {
            Some((sort, nul)) => [&position[..sort], &position[sort + nul + 1..]].concat(),
            None => position.to_vec(),
        }
    }

    /// `per_repo = "latest"`: `did`'s newest record, when it has an entry under `key` within
    /// `range`.
    fn newest_hit(&self, did: &str, key: &[u8], range: &PageRange<'_>) -> Result<Vec<Hit>> {
        let Some((sort, rkey)) = self.newest(did, &HashSet::new())? else { return Ok(vec![]) };
        let Some(RecordRow::Entries(e)) = self.record_row(did, &rkey)? else { return Ok(vec![]) };
        let hit = Hit { did: did.to_string(), position: position(&sort, did, &rkey), rkey, record: None };
        Ok(if e.keys.iter().any(|k| k == key) && range.admits(&hit.position) { vec![hit] } else { vec![] })
    }
}

impl LiveIndex {
    /// `did`'s newest record by sort value among its `P` rows (`per_repo = "latest"`), passing
    /// over the rkeys in `skip`: (encoded sort value, rkey).
    fn newest(&self, did: &str, skip: &HashSet<&str>) -> Result<Option<(Vec<u8>, String)>> {
        let prefix = per_repo_prefix(did);
        for kv in self.space.prefix(&prefix).rev() {
            let k = kv.key()?;
            let tail = &k[prefix.len()..];
            let n = sort_len(self.spec.sort.value_type(), tail).ok_or_else(|| corrupt("index per-repo row"))?;
            let rkey = std::str::from_utf8(&tail[n..]).map_err(|_| corrupt("index per-repo row"))?;
            if !skip.contains(rkey) {
                return Ok(Some((tail[..n].to_vec(), rkey.to_string())));
            }
        }
        Ok(None)
    }

    /// `per_repo = "latest"`: the key tuples of `did`'s entries, its newest record's (from its
    /// `R` row).
    fn latest_keys(&self, did: &str) -> Result<Vec<Vec<u8>>> {
        let newest = self.newest(did, &HashSet::new())?;
        let row = match newest {
            Some((_, rkey)) => self.record_row(did, &rkey)?,
            None => None,
        };
        Ok(row.and_then(|row| row.entries().cloned()).map(|e| e.keys).unwrap_or_default())
    }
}

fn lo_max(lo: Bound<Vec<u8>>, after: Vec<u8>) -> Bound<Vec<u8>> {
    match lo {
        Included(l) if l > after => Included(l),
        Excluded(l) if l >= after => Excluded(l),
        _ => Excluded(after),
    }
}

fn hi_min(hi: Bound<Vec<u8>>, after: Vec<u8>) -> Bound<Vec<u8>> {
    match hi {
        Excluded(h) if h <= after => Excluded(h),
        _ => Excluded(after),
    }
}

/// The bounds of a page of entries (see [`LiveIndex::page`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct PageRange<'a> {
    /// The lowest sort value (encoded), inclusive.
    pub lo: Option<&'a [u8]>,
    /// The highest sort value (encoded), inclusive.
    pub hi: Option<&'a [u8]>,
    /// Oldest first.
    pub ascending: bool,
    /// Only entries past this position (a previous page's last), in the page's order.
    pub after: Option<&'a [u8]>,
    /// Only this repo's entries.
    pub repo: Option<&'a str>,
}

impl PageRange<'_> {
    /// Whether an entry at `position` is within the sort bounds and past `after`.
    fn admits(&self, position: &[u8]) -> bool {
        let above_lo = self.lo.is_none_or(|lo| position >= lo);
        let below_hi = self.hi.is_none_or(|hi| position < [hi, &[0xff]].concat().as_slice());
        let past = self.after.is_none_or(|a| if self.ascending { position > a } else { position < a });
        above_lo && below_hi && past
    }
}

/// One entry of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The record's repo.
    pub did: String,
    /// Its key in the index's collection.
    pub rkey: String,
    /// Its position in the key's order: the cursor past it.
    pub position: Vec<u8>,
    /// The record, when the entry carries it; else it is read from `records`.
    pub record: Option<RecordRef>,
}

fn decode_i64(v: &[u8]) -> i64 {
    v.try_into().map(i64::from_be_bytes).unwrap_or(0)
}

fn encode_totals(p: &Progress) -> Vec<u8> {
    [p.entries, p.records, p.skipped].iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn decode_totals(v: &[u8], p: &mut Progress) {
    let at = |i: usize| v.get(i * 8..i * 8 + 8).map_or(0, decode_i64);
    (p.entries, p.records, p.skipped) = (at(0), at(1), at(2));
}

fn encode_build(b: &Build) -> Vec<u8> {
    [&b.done.to_be_bytes()[..], &[u8::from(b.phase == Phase::Counts)], &b.after].concat()
}

fn decode_build(v: &[u8]) -> Result<Build> {
    let (done, rest) = v.split_first_chunk::<8>().ok_or_else(|| corrupt("index build position"))?;
    let phase = match rest.first() {
        Some(0) => Phase::Entries,
        Some(1) => Phase::Counts,
        _ => return Err(corrupt("index build position")),
    };
    Ok(Build { after: rest[1..].to_vec(), done: u64::from_be_bytes(*done), phase })
}

/// A counted index's step row: what the build step `step` moved `key`'s count by.
fn step_count_key(key: &[u8], step: u64) -> Vec<u8> {
    [count_key(key).as_slice(), &step.to_be_bytes()].concat()
}

/// The stored definition of an index, versioned.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredDef {
    v: u8,
    fingerprint: String,
    spec: StoredSpec,
}

impl IndexParts {
    /// Opens the indexes stored in `dir`'s database: their definitions, keyspaces, builds and
    /// totals. A keyspace left by an index whose removal a crash cut short is dropped, and so is
    /// an index whose rows are of another version: the filter's definitions build it again.
    pub(super) fn open(db: Db) -> Result<IndexParts> {
        let meta = db.keyspace("index_meta", || keyspace_options("index_meta"))?;
        let (mut indexes, mut progress) = (BTreeMap::new(), HashMap::new());
        let mut outdated = db.batch(8);
        for kv in meta.prefix([b'd']) {
            let (k, v) = kv.into_inner()?;
            let id = k.get(1..5).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
            let def: Option<StoredDef> = serde_json::from_slice(&v).ok();
            let (Some(id), Some(def)) = (id, def) else { return Err(corrupt("index definition")) };
            if def.v != ROWS_VERSION {
                tracing::info!(index = %def.spec.name, "index stored in an older layout: built again");
                for kind in [b'd', b'b', b's'] {
                    outdated.remove(&meta, meta_key(kind, id));
                }
                continue;
            }
            let spec = def.spec.to_spec().map_err(|_| corrupt("index definition"))?;
            let space = db.keyspace(&format!("index.{id}"), || keyspace_options("index"))?;
            let mut p = Progress::default();
            if let Some(v) = space.get([TOTALS])? {
                decode_totals(&v, &mut p);
            }
            p.building = space.get([BUILD])?.map(|v| decode_build(&v)).transpose()?;
            // No entry is not enough: while it builds, an index with no entry can hold count
            // rows (a removed entry's -1 against its build step's +1).
            let empty = p.entries == 0 && space.prefix([COUNT]).next().is_none();
            progress.insert(id, p);
            indexes.insert(spec.name.clone(), Arc::new(LiveIndex::new(id, spec, space, empty, db.clone())?));
        }
        db.commit(outdated)?;
        let parts = IndexParts {
            registry: ArcSwap::from_pointee(Registry { generation: 1, indexes }),
            progress: Mutex::new(progress),
            skips: Mutex::default(),
            scans: Mutex::default(),
            prefetched: Mutex::default(),
            move_rows: AtomicUsize::new(MOVE_ROWS),
            db,
            meta,
        };
        parts.drop_orphans()?;
        Ok(parts)
    }

    fn drop_orphans(&self) -> Result<()> {
        let known: HashSet<u32> = self.registry.load().indexes.values().map(|ix| ix.id).collect();
        for name in self.db.keyspace_names() {
            let id = name.strip_prefix("index.").and_then(|id| id.parse::<u32>().ok());
            if let Some(id) = id.filter(|id| !known.contains(id)) {
                let space = self.db.keyspace(&name, || keyspace_options("index"))?;
                self.db.delete_keyspace(space)?;
                tracing::info!(id, "dropped the entries of a removed index");
            }
        }
        Ok(())
    }

    /// The indexes in force.
    pub(super) fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// Every index's progress, by name.
    pub(super) fn progress(&self) -> BTreeMap<String, (Arc<LiveIndex>, Progress)> {
        let progress = self.progress.lock().expect("index progress lock");
        self.registry
            .load()
            .indexes
            .iter()
            .map(|(name, ix)| (name.clone(), (ix.clone(), progress.get(&ix.id).cloned().unwrap_or_default())))
            .collect()
    }

    /// The progress of the index with id `id`.
    pub(super) fn progress_of(&self, id: u32) -> Progress {
        self.progress.lock().expect("index progress lock").get(&id).cloned().unwrap_or_default()
    }

    /// Records skipped since start, by index name and reason.
    pub(super) fn skips(&self) -> Vec<(String, Skip, u64)> {
        let registry = self.registry.load();
        let names: HashMap<u32, &str> = registry.indexes.values().map(|ix| (ix.id, ix.spec.name.as_str())).collect();
        let skips = self.skips.lock().expect("index skips lock");
        let mut out: Vec<_> =
            skips.iter().filter_map(|((id, s), n)| Some((names.get(id)?.to_string(), *s, *n))).collect();
        out.sort();
        out
    }

    /// What a change's record `writes` put in the indexes in force, extracted off the writer lock
    /// (`now_us` bounds `sortAt`).
    pub(super) fn prepare(&self, writes: &[RecordWrite], now_us: i64) -> IndexWork {
        let registry = self.registry.load();
        let mut items = Vec::new();
        if !registry.indexes.is_empty() {
            for write in writes {
                let (collection, rkey, existed, put) = match write {
                    RecordWrite::Put { collection, rkey, existed, cid, body } => {
                        (collection, rkey, *existed, Some((cid, body)))
                    }
                    RecordWrite::Remove { collection, rkey } => (collection, rkey, true, None),
                };
                // Encoded once for every index over the collection, whose entries carry it.
                let value = put.and_then(|(cid, body)| inline_value(cid, body));
                for index in registry.on(collection) {
                    let new = put.map(|(_, body)| crate::indexes::entries(&index.spec, rkey, body, now_us));
                    let update = Update { rkey: rkey.clone(), existed, new, value: value.clone() };
                    items.push(Item { index: index.clone(), collection: collection.clone(), update });
                }
            }
        }
        IndexWork { generation: registry.generation, items }
    }

    /// Stages the index rows of `did`'s change in `batch`, under the writer lock: `work` as
    /// prepared, or extracted again from `writes` when the indexes in force changed since.
    /// `stored` reads the repo's stored records (the versions the change replaces). Returns the
    /// totals to install once the batch committed ([`IndexParts::committed`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stage(
        &self,
        batch: &mut impl Rows,
        did: &str,
        work: IndexWork,
        writes: &[RecordWrite],
        now_us: i64,
        shown: Shown,
        stored: StoredBody<'_>,
    ) -> Result<Moved> {
        let registry = self.registry.load();
        let work = if work.generation == registry.generation { work } else { self.prepare(writes, now_us) };
        let mut moved = Moved::default();
        self.move_shown(&registry, did, shown, &mut moved)?;
        if work.items.is_empty() && moved.counts.is_empty() && moved.marks.is_empty() {
            return Ok(moved);
        }
        let progress = self.progress.lock().expect("index progress lock");
        let mut by_index: BTreeMap<u32, (Arc<LiveIndex>, Vec<Item>)> = BTreeMap::new();
        for item in work.items {
            let building = progress.get(&item.index.id).and_then(|p| p.building.as_ref());
            let building = building.filter(|b| b.phase == Phase::Entries);
            // Past a build's position the build will read the record as committed (and a scan
            // under way reads it again).
            if let Some(build) = building {
                let record = keys::record(did, &item.collection, &item.update.rkey);
                if record > build.after {
                    self.passed(item.index.id, record);
                    continue;
                }
            }
            by_index.entry(item.index.id).or_insert_with(|| (item.index.clone(), Vec::new())).1.push(item);
        }
        drop(progress);
        for (_, (index, items)) in by_index {
            let updates = items.into_iter().map(|i| i.update).collect();
            let repo = RepoWrite { did, answered: shown.after, stored, now_us, unseen: false };
            self.stage_index(batch, &index, &repo, updates, &mut moved)?;
        }
        self.stage_counts(batch, &mut moved)?;
        self.stage_totals(batch, &mut moved);
        Ok(moved)
    }

    /// Stages one index's rows for `updates` of `repo`'s records.
    fn stage_index(
        &self,
        batch: &mut impl Rows,
        index: &Arc<LiveIndex>,
        repo: &RepoWrite<'_>,
        updates: Vec<Update>,
        moved: &mut Moved,
    ) -> Result<()> {
        let did = repo.did;
        let mark = if index.spec.count && index.by_repo() { moved.mark_of(index, did) } else { None };
        let mut counts = KeyMoves { counts: BTreeMap::new(), pending: BTreeMap::new(), answered: repo.answered, mark };
        let totals = moved.totals.entry(index.id).or_default();
        let mut changed: Vec<Changed> = Vec::new();
        for Update { rkey, existed, new, value } in updates {
            let old = if existed { repo.old_row(index, &rkey)? } else { None };
            let new = new.map(RecordRow::from);
            if index.keeps_record_rows() {
                let r_key = did_rkey(RECORD, did, &rkey);
                match &new {
                    Some(row) => batch.put(&index.space, r_key, row.encode()),
                    None if old.is_some() => batch.delete(&index.space, r_key),
                    None => {}
                }
            }
            for (row, sign) in [(&old, -1), (&new, 1)] {
                match row {
                    Some(RecordRow::Entries(_)) => totals.records += sign,
                    Some(RecordRow::Skipped(_)) => totals.skipped += sign,
                    None => {}
                }
            }
            if let Some(RecordRow::Skipped(skip)) = &new {
                moved.skips.push((index.id, *skip));
            }
            let (old_e, new_e) = (old.as_ref().and_then(RecordRow::entries), new.as_ref().and_then(RecordRow::entries));
            // Entries carry their record, so every new version rewrites them.
            if old_e.is_some() || new_e.is_some() {
                changed.push(Changed { rkey, old: old_e.cloned(), new: new_e.cloned(), value });
            }
        }
        match index.spec.per_repo {
            PerRepo::All => {
                for c in &changed {
                    let value = c.value.as_deref().unwrap_or_default();
                    let moves = Moves { rkey: &c.rkey, old: c.old.as_ref(), new: c.new.as_ref(), value };
                    totals.entries += stage_entries(batch, index, did, moves, &mut counts);
                }
            }
            PerRepo::Latest => {
                totals.entries += self.stage_latest(batch, index, repo, &changed, &mut counts)?;
            }
        }
        if index.spec.count {
            for (key, delta) in counts.counts {
                *moved.counts.entry((index.id, key)).or_default() += delta;
            }
        }
        if !counts.pending.is_empty() {
            moved.pending.push((index.clone(), did.to_string(), counts.pending));
        }
        Ok(())
    }

    /// Whether any index in force keeps counts (and so needs to know who is answered).
    pub(super) fn counts_any(&self) -> bool {
        self.registry.load().indexes.values().any(|ix| ix.spec.count)
    }

    /// Adds to `moved` the count moves of `did` starting (or stopping) being answered: each of
    /// its stored entries in a counted index, added (or taken away); or, where it has more than
    /// a move step's entries, or its counts move already, a mark for its counts to move in steps
    /// (see `moves.rs`).
    fn move_shown(&self, registry: &Registry, did: &str, shown: Shown, moved: &mut Moved) -> Result<()> {
        if shown.before == shown.after {
            return Ok(());
        }
        let sign = if shown.after { 1 } else { -1 };
        for index in registry.indexes.values().filter(|ix| ix.spec.count) {
            if !index.by_repo() {
                // `per_repo = "latest"`: only the newest record's entries count, a few at most.
                for key in index.latest_keys(did)? {
                    *moved.counts.entry((index.id, key)).or_default() += sign;
                }
                continue;
            }
            self.move_repo(index, did, shown.after, moved)?;
        }
        Ok(())
    }

    /// Stages the count moves of repos that start or stop being answered without a change of
    /// their records (account events), all in one batch. Returns what to install once it
    /// committed.
    pub(super) fn stage_shown(&self, batch: &mut impl Rows, repos: &[(&str, Shown)]) -> Result<Moved> {
        let registry = self.registry.load();
        let mut moved = Moved::default();
        for (did, shown) in repos {
            self.move_shown(&registry, did, *shown, &mut moved)?;
        }
        self.stage_counts(batch, &mut moved)?;
        Ok(moved)
    }

    /// Stages the count moves of a whole batch: each key's stored count read once and written
    /// once (or removed at zero).
    fn stage_counts(&self, batch: &mut impl Rows, moved: &mut Moved) -> Result<()> {
        let registry = self.registry.load();
        let by_id: HashMap<u32, &Arc<LiveIndex>> = registry.indexes.values().map(|ix| (ix.id, ix)).collect();
        for ((id, key), delta) in std::mem::take(&mut moved.counts) {
            let Some(index) = by_id.get(&id).filter(|_| delta != 0) else { continue };
            let stored = index.stored_count(&key)?;
            index.stage_count(batch, &key, stored + delta);
        }
        for (index, did, mark) in &moved.marks {
            match mark {
                Some(mark) => batch.put(&index.space, mark_key(did), mark.encode()),
                None => batch.delete(&index.space, mark_key(did)),
            }
        }
        Ok(())
    }

    /// `per_repo = "latest"`: moves `did`'s `P` rows for the `changed` records, and its visible
    /// entries from the repo's newest record before the change to its newest after. Returns the
    /// entries added less those removed.
    fn stage_latest(
        &self,
        batch: &mut impl Rows,
        index: &LiveIndex,
        repo: &RepoWrite<'_>,
        changed: &[Changed],
        counts: &mut KeyMoves,
    ) -> Result<i64> {
        if changed.is_empty() {
            return Ok(0);
        }
        let did = repo.did;
        let prefix = per_repo_prefix(did);
        let touched: HashSet<&str> = changed.iter().map(|c| c.rkey.as_str()).collect();
        let (before, mut after) = match repo.unseen {
            true => (None, None),
            false => (index.newest(did, &HashSet::new())?, index.newest(did, &touched)?),
        };
        for Changed { rkey, old, new, .. } in changed {
            if let Some(old) = old {
                batch.delete(&index.space, [prefix.as_slice(), &old.sort, rkey.as_bytes()].concat());
            }
            if let Some(new) = new {
                batch.put(&index.space, [prefix.as_slice(), &new.sort, rkey.as_bytes()].concat(), []);
                let candidate = (new.sort.clone(), rkey.to_string());
                if after.as_ref().is_none_or(|a| candidate > *a) {
                    after = Some(candidate);
                }
            }
        }
        // The entries of the newest record before and after: from the change where it changed,
        // else from its stored `R` row.
        let entries_of = |newest: &Option<(Vec<u8>, String)>, pick_new: bool| -> Result<Option<RecordEntries>> {
            let Some((_, rkey)) = newest else { return Ok(None) };
            match changed.iter().find(|c| c.rkey == rkey) {
                Some(c) => Ok(if pick_new { c.new.clone() } else { c.old.clone() }),
                None => Ok(index.record_row(did, rkey)?.and_then(|row| row.entries().cloned())),
            }
        };
        let (old, new) = (entries_of(&before, false)?, entries_of(&after, true)?);
        // The newest record after, where this change writes it: its entries carry it. Entries
        // moved to an older record the change does not hold carry none (a query reads it).
        let written = after.as_ref().and_then(|(_, rkey)| changed.iter().find(|c| c.rkey == rkey));
        let value = written.and_then(|c| c.value.as_deref()).unwrap_or_default();
        let mut moved = 0;
        if before.as_ref().map(|b| &b.1) == after.as_ref().map(|a| &a.1) {
            if old != new || written.is_some() {
                let rkey = &after.as_ref().expect("same newest").1;
                let moves = Moves { rkey, old: old.as_ref(), new: new.as_ref(), value };
                moved += stage_entries(batch, index, did, moves, counts);
            }
        } else {
            if let Some((_, rkey)) = &before {
                let moves = Moves { rkey, old: old.as_ref(), new: None, value: &[] };
                moved += stage_entries(batch, index, did, moves, counts);
            }
            if let Some((_, rkey)) = &after {
                moved += stage_entries(batch, index, did, Moves { rkey, old: None, new: new.as_ref(), value }, counts);
            }
        }
        Ok(moved)
    }

    /// Stages the totals `moved` leaves, against the stored ones.
    fn stage_totals(&self, batch: &mut impl Rows, moved: &mut Moved) {
        let registry = self.registry.load();
        let progress = self.progress.lock().expect("index progress lock");
        for (id, delta) in moved.totals.iter_mut() {
            let mut now = progress.get(id).cloned().unwrap_or_default();
            now.entries += delta.entries;
            now.records += delta.records;
            now.skipped += delta.skipped;
            if let Some(index) = registry.indexes.values().find(|ix| ix.id == *id) {
                batch.put(&index.space, [TOTALS], encode_totals(&now));
            }
            *delta = now;
        }
    }

    /// Installs the totals and marks of a committed batch.
    pub(super) fn committed(&self, moved: Moved) {
        for (index, did, mark) in &moved.marks {
            index.set_moving(did, mark.clone());
        }
        for (index, did, keys) in &moved.pending {
            index.pending_moved(did, keys);
        }
        moved.bump_marks_epochs();
        let mut progress = self.progress.lock().expect("index progress lock");
        for (id, now) in moved.totals {
            if let Some(p) = progress.get_mut(&id) {
                (p.entries, p.records, p.skipped) = (now.entries, now.records, now.skipped);
            }
        }
        drop(progress);
        if !moved.skips.is_empty() {
            let mut skips = self.skips.lock().expect("index skips lock");
            for key in moved.skips {
                *skips.entry(key).or_default() += 1;
            }
        }
    }

    /// Puts `specs` in force, under the writer lock: an index whose definition is unchanged
    /// stays as it is (a new `method` is written); a new or changed one starts building; one
    /// no longer named is dropped with its entries. Returns the names of the indexes that
    /// start building and of those dropped.
    pub(super) fn set(&self, specs: &[IndexSpec]) -> Result<(Vec<String>, Vec<String>)> {
        let current = self.registry.load_full();
        let mut next = BTreeMap::new();
        let (mut started, mut dropped_names, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
        let mut batch = self.db.batch(8);
        let mut progress = self.progress.lock().expect("index progress lock");
        for spec in specs {
            match current.indexes.get(&spec.name) {
                Some(ix) if ix.spec.fingerprint() == spec.fingerprint() => {
                    let ix = if ix.spec == *spec {
                        ix.clone()
                    } else {
                        batch.insert(&self.meta, meta_key(b'd', ix.id), def_row(spec));
                        let (counted, moving, db) = (ix.counted.clone(), ix.moving.clone(), ix.db.clone());
                        let (space, marks_epoch, pending) =
                            (ix.space.clone(), ix.marks_epoch.clone(), ix.pending.clone());
                        let spec = spec.clone();
                        Arc::new(LiveIndex { id: ix.id, spec, space, counted, moving, marks_epoch, pending, db })
                    };
                    next.insert(spec.name.clone(), ix);
                }
                _ => {
                    let id = self.next_id(&current)?;
                    let space = self.db.keyspace(&format!("index.{id}"), || keyspace_options("index"))?;
                    batch.insert(&self.meta, meta_key(b'd', id), def_row(spec));
                    let build = Build::default();
                    batch.insert(&space, [BUILD], encode_build(&build));
                    progress.insert(id, Progress { building: Some(build), ..Default::default() });
                    let index = LiveIndex::new(id, spec.clone(), space, true, self.db.clone())?;
                    next.insert(spec.name.clone(), Arc::new(index));
                    started.push(spec.name.clone());
                }
            }
        }
        for (name, ix) in &current.indexes {
            if next.get(name).is_none_or(|n| n.id != ix.id) {
                batch.remove(&self.meta, meta_key(b'd', ix.id));
                dropped_names.push(name.clone());
                dropped.push(ix.clone());
            }
        }
        if started.is_empty() && dropped.is_empty() && next.len() == current.indexes.len() {
            let same = next.iter().all(|(n, ix)| Arc::ptr_eq(ix, &current.indexes[n]));
            if same {
                return Ok((started, dropped_names));
            }
        }
        self.db.commit(batch)?;
        self.registry.store(Arc::new(Registry { generation: current.generation + 1, indexes: next }));
        for ix in dropped {
            progress.remove(&ix.id);
            self.drop_space(ix);
        }
        Ok((started, dropped_names))
    }

    fn next_id(&self, current: &Registry) -> Result<u32> {
        let stored = self.meta.get([b'n'])?.and_then(|v| v.as_ref().try_into().ok()).map(u32::from_be_bytes);
        let in_use = current.indexes.values().map(|ix| ix.id + 1).max().unwrap_or(1);
        let id = stored.unwrap_or(1).max(in_use);
        // Written at once, so two indexes started by one save get two ids.
        self.db.write(|| self.meta.insert([b'n'], (id + 1).to_be_bytes()))?;
        Ok(id)
    }

    /// Drops a removed index's keyspace. Another handle (a query under way) keeps it readable
    /// until it goes; a failure leaves it to the next open.
    fn drop_space(&self, ix: Arc<LiveIndex>) {
        let space = ix.space.clone();
        drop(ix);
        if let Err(e) = self.db.delete_keyspace(space) {
            tracing::warn!(error = %e, "dropping a removed index's entries failed; retried at the next start");
        }
    }

    /// The first index still building, with its position.
    pub(super) fn next_build(&self) -> Option<(Arc<LiveIndex>, Build)> {
        let progress = self.progress.lock().expect("index progress lock");
        self.registry.load().indexes.values().find_map(|ix| {
            let build = progress.get(&ix.id)?.building.clone()?;
            Some((ix.clone(), build))
        })
    }

    /// Marks a scan of index `id`'s records past `from` under way; returns its ticket. Under
    /// the writer lock, so that every change committed after it is noted.
    pub(super) fn begin_scan(&self, id: u32, from: Vec<u8>) -> u64 {
        let mut scans = self.scans.lock().expect("index scan lock");
        let ticket = scans.next_ticket;
        scans.next_ticket += 1;
        scans.under_way.push(Scanning { ticket, id, from, changed: BTreeSet::new() });
        ticket
    }

    /// Ends the scan `ticket` (under the writer lock): the `records` keys of the changes noted
    /// since it began.
    pub(super) fn end_scan(&self, ticket: u64) -> BTreeSet<Vec<u8>> {
        let mut scans = self.scans.lock().expect("index scan lock");
        match scans.under_way.iter().position(|s| s.ticket == ticket) {
            Some(at) => scans.under_way.swap_remove(at).changed,
            None => BTreeSet::new(),
        }
    }

    /// Notes that a change of `record` passed index `id` by, past its build's position.
    fn passed(&self, id: u32, record: Vec<u8>) {
        let mut scans = self.scans.lock().expect("index scan lock");
        for scan in scans.under_way.iter_mut().filter(|s| s.id == id && record > s.from) {
            scan.changed.insert(record.clone());
        }
    }

    /// The next step's scan, if one was read ahead.
    pub(super) fn take_prefetched(&self) -> Option<ScannedStep> {
        self.prefetched.lock().expect("index prefetch lock").take()
    }

    /// Keeps `step`, read ahead, for the next step.
    pub(super) fn prefetch(&self, step: ScannedStep) {
        *self.prefetched.lock().expect("index prefetch lock") = Some(step);
    }

    /// `index`'s build, if `index` is still in force and its build still at `from` (a step that
    /// finds it otherwise, after its scan, leaves its work).
    pub(super) fn building_from(&self, index: &Arc<LiveIndex>, from: &[u8]) -> Option<Build> {
        let in_force = self.registry.load().indexes.get(&index.spec.name).is_some_and(|ix| Arc::ptr_eq(ix, index));
        let progress = self.progress.lock().expect("index progress lock");
        let build = progress.get(&index.id).and_then(|p| p.building.clone())?;
        (in_force && build.after == from).then_some(build)
    }

    /// Stages one build step of `index`: the records read past `build` (grouped by repo, in
    /// key order) put in as creates, their count moves as step rows of `step` (the records
    /// built before it), and the new position (`None`: the build is done).
    pub(super) fn stage_build(
        &self,
        batch: &mut impl Rows,
        index: &Arc<LiveIndex>,
        records: Vec<(String, Update)>,
        (step, build): (u64, Option<Build>),
        answered: impl Fn(&str) -> Result<bool>,
    ) -> Result<Moved> {
        let mut moved = Moved::default();
        let mut records = records.into_iter().peekable();
        // The step's first repo may have records the step before built; the others, none.
        let mut unseen = false;
        while let Some((did, first)) = records.next() {
            let mut updates = vec![first];
            while let Some((_, update)) = records.next_if(|(d, _)| *d == did) {
                updates.push(update);
            }
            let answered = index.spec.count && answered(&did)?;
            // A build puts in records the index does not hold yet: no stored version is read.
            let repo = RepoWrite { did: &did, answered, stored: &|_, _| Ok(None), now_us: 0, unseen };
            self.stage_index(batch, index, &repo, updates, &mut moved)?;
            unseen = true;
        }
        moved.totals.entry(index.id).or_default();
        for ((_, key), delta) in std::mem::take(&mut moved.counts) {
            if delta != 0 {
                batch.put(&index.space, step_count_key(&key, step), delta.to_be_bytes());
            }
        }
        self.stage_totals(batch, &mut moved);
        index.stage_position(batch, build.as_ref());
        Ok(moved)
    }

    /// Stages one step of `index`'s count phase from `build`: the count rows past its position,
    /// in key order, whole keys until at least `max_rows` were read, each key's step rows summed
    /// into its count row and removed. A key with more step rows than twice that (one liked in
    /// every step of a long build) is summed over several steps, its count row holding what
    /// was summed so far. Returns the new position (`None`: the counts are summed and the
    /// index is ready), staged with them.
    pub(super) fn stage_count_sums(
        &self,
        batch: &mut impl Rows,
        index: &LiveIndex,
        build: &Build,
        max_rows: usize,
    ) -> Result<Option<Build>> {
        let start = if build.after.is_empty() { Included(vec![COUNT]) } else { Excluded(build.after.clone()) };
        let end = past(&[COUNT]).map_or(Unbounded, Excluded);
        let mut rows = index.space.range::<Vec<u8>, _>((start, end)).map(|kv| kv.into_inner());
        let parts = index.spec.key.len();
        // A step that ended among a key's step rows left its count row holding what it summed.
        let mut key = match split_count_row(&build.after, parts) {
            Ok((tuple, Some(_))) => KeySum::resumed(tuple, index.count_row(tuple)?, &build.after),
            _ => KeySum::default(),
        };
        let mut read = 0;
        let next = loop {
            let row = rows.next().transpose()?;
            let parsed = row.as_ref().map(|(k, _)| split_count_row(k, parts)).transpose()?;
            let same_key = parsed.is_some_and(|(tuple, _)| tuple == key.tuple.as_slice());
            if (!same_key || read >= 2 * max_rows) && !key.last.is_empty() {
                let last = key.stage(batch, index);
                if read >= max_rows || row.is_none() {
                    break row.map(|_| last);
                }
            }
            let (Some((k, v)), Some((tuple, step))) = (&row, parsed) else { break None };
            read += 1;
            key.add(tuple, step.map(|_| k.clone()), decode_i64(v));
        };
        let next = next.map(|after| Build { after, phase: Phase::Counts, ..build.clone() });
        index.stage_position(batch, next.as_ref());
        Ok(next)
    }

    /// Moves a build to `build` once its batch committed (`None`: ready).
    pub(super) fn built(&self, id: u32, build: Option<Build>) {
        if let Some(p) = self.progress.lock().expect("index progress lock").get_mut(&id) {
            p.building = build;
        }
    }
}

/// A count row split: its key tuple, and its step for a step row (`None`: the count row).
fn split_count_row(row: &[u8], parts: usize) -> Result<(&[u8], Option<u64>)> {
    let tuple = row.get(1..).ok_or_else(|| corrupt("index count row"))?;
    let n = key_tuple_len(tuple, parts).ok_or_else(|| corrupt("index count row"))?;
    match tuple[n..].try_into() {
        Ok(step) => Ok((&tuple[..n], Some(u64::from_be_bytes(step)))),
        Err(_) if n == tuple.len() => Ok((tuple, None)),
        Err(_) => Err(corrupt("index count row")),
    }
}

/// One key's count rows as the count phase reads them: its count, its step rows to remove,
/// and the last row read.
#[derive(Default)]
struct KeySum {
    tuple: Vec<u8>,
    count: i64,
    steps: Vec<fjall::Slice>,
    last: Vec<u8>,
}

impl KeySum {
    /// A key whose step rows were summed up to `after`, into its count row now holding `count`.
    fn resumed(tuple: &[u8], count: i64, after: &[u8]) -> KeySum {
        KeySum { tuple: tuple.to_vec(), count, steps: Vec::new(), last: after.to_vec() }
    }

    /// Adds a row of `tuple` (a step row's key, `None` for the count row) holding `value`; the
    /// first row of a key starts it (a key tuple is never empty).
    fn add(&mut self, tuple: &[u8], step: Option<fjall::Slice>, value: i64) {
        if self.tuple.is_empty() {
            self.tuple = tuple.to_vec();
        }
        self.count += value;
        match step {
            Some(step) => {
                self.last = step.to_vec();
                self.steps.push(step);
            }
            None => self.last = count_key(tuple),
        }
    }

    /// Stages the key's count with its step rows summed in, and their removal. Returns the last
    /// row read and starts the next key.
    fn stage(&mut self, batch: &mut impl Rows, index: &LiveIndex) -> Vec<u8> {
        let KeySum { tuple, count, steps, last } = std::mem::take(self);
        if !steps.is_empty() {
            index.stage_count(batch, &tuple, count);
            for step in steps {
                batch.delete(&index.space, step);
            }
        }
        last
    }
}

fn def_row(spec: &IndexSpec) -> Vec<u8> {
    let def = StoredDef { v: ROWS_VERSION, fingerprint: spec.fingerprint(), spec: spec.to_stored() };
    serde_json::to_vec(&def).expect("a definition serializes")
}

/// A record whose entries a change moves: from `old` to `new`, carrying `value` (see
/// [`Update::value`]).
struct Changed {
    rkey: SmolStr,
    old: Option<RecordEntries>,
    new: Option<RecordEntries>,
    value: Option<bytes::Bytes>,
}

/// The count moves of one repo's change in one index, by key tuple.
struct KeyMoves {
    counts: BTreeMap<Vec<u8>, i64>,
    /// Where the repo's counts move in steps: its entries not moved yet, added or removed.
    pending: PendingMoves,
    /// Whether the repo is answered after the change: whether its entries count...
    answered: bool,
    /// ...but where its counts move in steps: then its mark says (see `moves.rs`).
    mark: Option<Moving>,
}

impl KeyMoves {
    /// Moves `key`'s count by `delta` for an entry (sort value `sort`, record `rkey`) put in or
    /// taken out, if it is in the counts.
    fn add(&mut self, key: &[u8], sort: &[u8], rkey: &str, delta: i64) {
        let counted = match &self.mark {
            Some(mark) => {
                let tail = [key, sort, rkey.as_bytes()].concat();
                if !mark.moved(&tail) {
                    *self.pending.entry(key.to_vec()).or_default() += delta;
                }
                mark.counts(&tail)
            }
            None => self.answered,
        };
        if counted {
            *self.counts.entry(key.to_vec()).or_default() += delta;
        }
    }
}

/// One record's entries moved from `old` to `new`, the new ones carrying `value` (empty: none).
struct Moves<'a> {
    rkey: &'a str,
    old: Option<&'a RecordEntries>,
    new: Option<&'a RecordEntries>,
    value: &'a [u8],
}

/// The repo a change writes, as its index rows are staged.
struct RepoWrite<'a> {
    did: &'a str,
    /// Whether its records are answered after the change, so that counts move (but where its
    /// counts move in steps: see `moves.rs`).
    answered: bool,
    /// Its stored records' bodies (see [`StoredBody`]).
    stored: StoredBody<'a>,
    /// The time the change is indexed (what `sortAt` bounds by).
    now_us: i64,
    /// Whether the index holds no row of the repo yet, so that none is read: a repo a build
    /// step meets first (live changes land only in what the build has passed).
    unseen: bool,
}

impl RepoWrite<'_> {
    /// What the stored version of the record `rkey` put in `index`: its `R` row where the index
    /// keeps them, else extracted again from the stored record.
    fn old_row(&self, index: &LiveIndex, rkey: &str) -> Result<Option<RecordRow>> {
        if index.keeps_record_rows() {
            return index.record_row(self.did, rkey);
        }
        let body = (self.stored)(&index.spec.collection, rkey)?;
        Ok(body.map(|body| crate::indexes::entries(&index.spec, rkey, &body, self.now_us).into()))
    }
}

/// Stages the move of one record's entries: `E` rows (and their `D` rows) removed and put (an
/// entry in both put again when it carries the record, for the new version's), and the per-key
/// count moves in `counts`. Returns the entries added less those removed.
fn stage_entries(
    batch: &mut impl Rows,
    index: &LiveIndex,
    did: &str,
    Moves { rkey, old, new, value }: Moves<'_>,
    counts: &mut KeyMoves,
) -> i64 {
    let mut moved = 0;
    if let Some(old) = old {
        for key in &old.keys {
            if new.is_some_and(|n| n.sort == old.sort && n.keys.contains(key)) {
                continue;
            }
            batch.delete(&index.space, entry_key(key, &old.sort, did, rkey));
            if index.by_repo() {
                batch.delete(&index.space, by_repo_key(did, key, &old.sort, rkey));
            }
            counts.add(key, &old.sort, rkey, -1);
            moved -= 1;
        }
    }
    if let Some(new) = new {
        for key in &new.keys {
            let stood = old.is_some_and(|o| o.sort == new.sort && o.keys.contains(key));
            batch.put(&index.space, entry_key(key, &new.sort, did, rkey), value);
            if !stood {
                if index.by_repo() {
                    batch.put(&index.space, by_repo_key(did, key, &new.sort, rkey), []);
                }
                counts.add(key, &new.sort, rkey, 1);
                moved += 1;
            }
        }
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entries() -> impl Strategy<Value = RecordEntries> {
        (any::<Vec<u8>>(), proptest::collection::vec(any::<Vec<u8>>(), 1..4))
            .prop_map(|(sort, keys)| RecordEntries { sort, keys })
    }

    proptest! {
        #[test]
        fn record_rows_round_trip(e in entries(), skip in 0usize..5) {
            let row = RecordRow::Entries(e);
            prop_assert_eq!(RecordRow::decode(&row.encode()).unwrap(), row);
            let row = RecordRow::Skipped(Skip::ALL[skip]);
            prop_assert_eq!(RecordRow::decode(&row.encode()).unwrap(), row);
        }

        #[test]
        fn build_positions_round_trip(after: Vec<u8>, done: u64, counting: bool) {
            let phase = if counting { Phase::Counts } else { Phase::Entries };
            let build = Build { after, done, phase };
            prop_assert_eq!(decode_build(&encode_build(&build)).unwrap(), build);
        }

        /// A count row and the step rows of its key tuple split back into the tuple (and
        /// step), whatever the tuple's parts: one key's rows are told apart from another's.
        #[test]
        fn count_rows_split_back(parts in proptest::collection::vec(".{0,40}", 0..3), step: u64) {
            let tuple = crate::indexes::encode::key_tuple(&parts);
            let count = count_key(&tuple);
            prop_assert_eq!(split_count_row(&count, parts.len()).unwrap(), (tuple.as_slice(), None));
            let stepped = step_count_key(&tuple, step);
            prop_assert_eq!(split_count_row(&stepped, parts.len()).unwrap(), (tuple.as_slice(), Some(step)));
            prop_assert!(split_count_row(&[count.as_slice(), &[0, 1, 2]].concat(), parts.len()).is_err());
        }

        #[test]
        fn string_sorts_delimit_themselves(s: String, tail: Vec<u8>) {
            let enc = crate::indexes::encode::ordered_text(&s);
            let all = [enc.as_slice(), &tail].concat();
            prop_assert_eq!(sort_len(SortType::String, &all), Some(enc.len()));
        }
    }

    /// An index stored under an older row layout (here: without `D` rows) is dropped at open
    /// and built again from the records when the filter names it, so every query it answers
    /// has the rows it reads.
    #[test]
    fn an_index_of_an_older_layout_is_built_again() {
        use crate::indexes::{FieldPath, Sort};
        use crate::store::{RepoChange, Store};
        let spec = IndexSpec {
            name: "by_rkey".into(),
            collection: "a.b.c".into(),
            key: Vec::<FieldPath>::new(),
            sort: Sort::parse("rkey", None).unwrap(),
            count: false,
            per_repo: PerRepo::All,
            method: None,
        };
        let build = |store: &Store| while store.build_index_step(100).unwrap().is_some_and(|s| !s.ready) {};
        let mine = |store: &Store| {
            let index = store.index_registry().indexes["by_rkey"].clone();
            let range = PageRange { repo: Some("did:plc:a"), ..Default::default() };
            index.page(&[], &range, 10).unwrap().into_iter().map(|h| h.rkey).collect::<Vec<_>>()
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_indexes(std::slice::from_ref(&spec)).unwrap();
        let put = |rkey: &str| RecordWrite::Put {
            collection: "a.b.c".into(),
            rkey: rkey.into(),
            cid: vec![1],
            body: bytes::Bytes::from_static(&[0xa0]),
            existed: false,
        };
        let records = vec![put("1"), put("2"), put("3")];
        store.commit(RepoChange { did: "did:plc:a".into(), records, ..Default::default() }).unwrap();
        build(&store);
        assert_eq!(mine(&store), ["3", "2", "1"]);

        let id = store.index_registry().indexes["by_rkey"].id;
        let old = StoredDef { v: 1, fingerprint: spec.fingerprint(), spec: spec.to_stored() };
        store.indexes.meta.insert(meta_key(b'd', id), serde_json::to_vec(&old).unwrap()).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.index_registry().indexes.is_empty(), "the old layout's index is not served");
        assert!(!store.index_keyspaces().contains(&id), "nor are its rows kept");
        let (started, _) = store.set_indexes(std::slice::from_ref(&spec)).unwrap();
        assert_eq!(started, ["by_rkey"]);
        build(&store);
        assert_eq!(mine(&store), ["3", "2", "1"]);
    }

    #[test]
    fn bad_rows_are_refused() {
        assert!(RecordRow::decode(&[]).is_err());
        assert!(RecordRow::decode(&[2, 0]).is_err());
        assert!(RecordRow::decode(&[1, 9]).is_err());
        assert!(RecordRow::decode(&[1, 0, 0, 5, 1]).is_err());
        assert_eq!(past(&[1, 0xff]), Some(vec![2]));
        assert_eq!(past(&[0xff]), None);
    }
}
