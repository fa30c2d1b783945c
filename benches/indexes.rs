//! Declarative indexes (issue 32): building an index from the stored records, and
//! `queryIndex`/`countIndex` latency while live commits land in the same index, each at 1x and
//! 10x the records, with the 10x/1x ratio of every per-item figure (which should stay flat).
//!
//! The store holds like records (`app.bsky.feed.like`, over many repos, most of a few records,
//! a tenth of the likes on 100 hot posts) and a tenth as many statuses
//! (`xyz.statusphere.status`, 20 distinct emoji), written with `Store::commit`. The indexes are
//! the issue's three: `likes_by_subject` (key `subject.uri`, sort `createdAt`, counted),
//! `statuses_by_status` (key `status`, sort `createdAt`) and `latest_status` (no key, sort
//! `sortAt(createdAt)`, each repo's newest status only).
//!
//! 1. Build: once fjall's background work from the loading has ended, `Store::set_indexes`
//!    with all three, then `build_index_step` until ready (what the
//!    index thread does; records keys a step: `[storage] index_build_batch`, or
//!    `SLUICE_INDEX_BENCH_BATCH`), timed per index: records of the index's collection per second,
//!    stored records scanned per second (a build reads every stored record), memory (RSS before,
//!    peak during: VmHWM is reset through `/proc/self/clear_refs`; and the block cache in use
//!    before and after, to tell the cache filling from the build's own), and bytes per entry: the
//!    index keyspace's disk size after the store is closed and its memtable flushed and
//!    compacted (major compaction through fjall directly, the store does not expose it).
//! 2. Reads: a sluice opened on the same data with the indexes in its filter, the server on
//!    loopback, and a thread applying live commits (one like each) at 2,000/s through
//!    `Pipeline::apply_commit`, once fjall's background work from the loading has ended.
//!    Measured: `LiveIndex::page` (limit 50) alone and plus reading each record's body; all
//!    of `queryIndex`'s work without HTTP (repo states, bodies transcoded into the answer's
//!    JSON text); `LiveIndex::count`; and the real
//!    `dev.sluice.queryIndex` (limit 50) and `dev.sluice.countIndex` over HTTP, for hot keys
//!    (a full page of 50) and typical ones (a few likes), a status key (~1,000 entries at
//!    1x), and the newest status of each repo (`latest_status`, no key); one big repo's records with `did=` (it holds a twentieth of the likes: 10,000 at
//!    1x, 100,000 at 10x, and a tenth as many statuses); and the HTTP floor, `GET /status.css`
//!    (a static text), on the same server and client. Each request is timed twice: from
//!    reqwest on a tokio runtime, and from a lean blocking HTTP/1.1 client on one kept-alive
//!    connection (`lean client:`), which measures what the server adds to a request as a load
//!    generator such as `wrk` does, without the hand-offs between the client's own threads.
//! 3. An account event on the big repo, with the live commits still landing: the repo hidden
//!    and shown again three times each, its counts moved at once in the event's batch (move
//!    rows unbounded: what sluice did before its counts moved in steps) and in steps of
//!    `MOVE_ROWS` (1,024) entries by the index thread (as it runs). Measured: the
//!    account event's time (`Store::set_states`, all of it under the writer lock), the time until
//!    the counts are all moved, the longest live commit meanwhile, and the time of a count of
//!    the key under which the big repo holds most entries (a post it liked one like in a
//!    hundred), which reads its entries not moved yet.
//!
//! The process runs with `sluice run`'s allocator settings (`sluice::alloc`), under which the
//! service builds its indexes: memory measured under mimalloc's defaults (freed memory kept for
//! a second, arenas committed whole) was 20-30 MB higher.
//!
//! `SLUICE_INDEX_BENCH_CACHE_MB` sizes the block cache of the build phase (default: the
//! configuration's, 32). `SLUICE_INDEX_BENCH_SCALE` picks the scales (default `1,10`); `SLUICE_INDEX_BENCH_BASE` the
//! like count at 1x (default 200,000); `SLUICE_INDEX_BENCH_SECS` the read phase's length per
//! scale (default 8). The data lives in a temporary directory under `SLUICE_BENCH_DIR` (default
//! the system's).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cid::Cid;
use serde_json::json;
use sluice::filter::Filter;
use sluice::handlers::value::json_to_cbor;
use sluice::indexes::encode;
use sluice::pipeline::RecordOp;
use sluice::server::{ServerState, serve_dedicated};
use sluice::store::{LiveIndex, PageRange, RecordWrite, RepoChange, RepoState, RepoStatus, Store};
use sluice::{Config, Sluice};
use sluice_testkit::bench::{cpu_seconds, self_status_kb};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator settings of `sluice run`, where index builds run (`sluice::alloc`): set among
/// the executable's initializers, as the binary does, and `tune` in `main`.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = sluice::alloc::before_first_allocation;

const LIKE: &str = "app.bsky.feed.like";
const STATUS: &str = "xyz.statusphere.status";
const HOT_POSTS: u64 = 100;
const EMOJI: [&str; 20] = [
    "👍", "🙂", "😎", "🦋", "🔥", "🎉", "😂", "🤔", "🙃", "😴", "🥳", "💀", "🌈", "☕", "🍕", "🎧", "📚", "🚀", "🐈",
    "🌙",
];
/// Live commits per second during the read phase.
const LIVE_RATE: u64 = 2_000;

const FILTER: &str = r#"
mode = "full"
collections = ["app.bsky.feed.like", "xyz.statusphere.status"]

[indexes.likes_by_subject]
collection = "app.bsky.feed.like"
key = ["subject.uri"]
sort = "createdAt"
count = true

[indexes.statuses_by_status]
collection = "xyz.statusphere.status"
key = ["status"]
sort = "createdAt"

[indexes.latest_status]
collection = "xyz.statusphere.status"
key = []
sort = "sortAt(createdAt)"
per_repo = "latest"
"#;

/// The indexes of [`FILTER`].
const INDEXES: [&str; 3] = ["likes_by_subject", "statuses_by_status", "latest_status"];

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `did:plc:` and 24 base32 characters naming `i`.
fn did(i: u64) -> String {
    const B32: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut x = i.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5bd1_e995;
    let mut s = String::from("did:plc:");
    for k in 0..24 {
        if k == 12 {
            x = i ^ 0x1234_5678_9abc_def0;
        }
        s.push(B32[(x & 31) as usize] as char);
        x >>= 5;
    }
    s
}

/// A TID-like record key (sortable, 13 characters) for `n`.
fn tid(n: u64) -> String {
    format!("3l{n:011}")
}

/// The post a like points at: one of the hot ones, or one of `posts` others.
fn subject(rng: &mut Rng, posts: u64) -> String {
    let post = if rng.below(10) == 0 { rng.below(HOT_POSTS) } else { HOT_POSTS + rng.below(posts) };
    post_uri(post)
}

fn post_uri(post: u64) -> String {
    format!("at://{}/app.bsky.feed.post/{}", did(1_000_000_000 + post % 5_000), tid(post))
}

fn created_at(n: u64) -> String {
    let t = chrono::DateTime::from_timestamp(1_704_067_200 + (n / 10) as i64, (n % 10) as u32 * 100_000_000).unwrap();
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn like(subject: &str, n: u64) -> Vec<u8> {
    json_to_cbor(&json!({
        "$type": LIKE,
        "subject": {"uri": subject, "cid": "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"},
        "createdAt": created_at(n),
    }))
    .unwrap()
}

fn status(emoji: &str, n: u64) -> Vec<u8> {
    json_to_cbor(&json!({"$type": STATUS, "status": emoji, "createdAt": created_at(n)})).unwrap()
}

fn cid_of(bytes: &[u8]) -> Cid {
    use sha2::Digest;
    let hash = cid::multihash::Multihash::<64>::wrap(0x12, &sha2::Sha256::digest(bytes)).unwrap();
    Cid::new_v1(0x71, hash)
}

fn put(collection: &str, rkey: String, body: Vec<u8>) -> RecordWrite {
    RecordWrite::Put {
        collection: collection.into(),
        rkey: rkey.into(),
        cid: cid_of(&body).to_bytes(),
        body: body.into(),
        existed: false,
    }
}

/// What was stored: the repos (for live commits), and counts.
struct Stored {
    repos: u64,
    likes: u64,
    statuses: u64,
    /// Other posts (not hot) the likes point at.
    posts: u64,
    /// The next record number (creation times and rkeys go on from it).
    next: u64,
    /// The big repo, and a post it liked.
    big: String,
    big_liked: String,
}

/// Stores `likes` likes and a tenth as many statuses over many repos: nine in ten repos hold
/// 1..=8 records, one in ten 20..=200.
fn populate(store: &Store, likes: u64) -> Stored {
    let mut rng = Rng(42);
    let posts = (likes / 4).max(1);
    let (mut n, mut repo, mut stored_likes, mut statuses) = (0u64, 0u64, 0u64, 0u64);
    while stored_likes < likes {
        let size = if rng.below(10) == 0 { 20 + rng.below(181) } else { 1 + rng.below(8) };
        let mut records = Vec::with_capacity(size as usize);
        for _ in 0..size {
            n += 1;
            if rng.below(11) == 0 {
                let emoji = EMOJI[rng.below(EMOJI.len() as u64) as usize];
                records.push(put(STATUS, tid(n), status(emoji, n)));
                statuses += 1;
            } else {
                records.push(put(LIKE, tid(n), like(&subject(&mut rng, posts), n)));
                stored_likes += 1;
            }
        }
        let state = RepoState { status: RepoStatus::Synced, rev: Some(tid(n)), ..Default::default() };
        store.commit(RepoChange { did: did(repo), state: Some(state), records, ..Default::default() }).unwrap();
        repo += 1;
    }
    // One big repo: a twentieth of the likes again, and a tenth as many statuses.
    let big = did(repo);
    let big_liked = subject(&mut rng, posts);
    let mut records = Vec::new();
    for i in 0..(likes / 20).max(1) {
        n += 1;
        if i % 10 == 0 {
            records.push(put(STATUS, tid(n), status(EMOJI[(i / 10) as usize % EMOJI.len()], n)));
            statuses += 1;
        }
        let liked = if i % 100 == 0 { big_liked.clone() } else { subject(&mut rng, posts) };
        records.push(put(LIKE, tid(n), like(&liked, n)));
        stored_likes += 1;
        if records.len() >= 5_000 {
            let records = std::mem::take(&mut records);
            store.commit(RepoChange { did: big.clone(), records, ..Default::default() }).unwrap();
        }
    }
    let state = RepoState { status: RepoStatus::Synced, rev: Some(tid(n)), ..Default::default() };
    store.commit(RepoChange { did: big.clone(), state: Some(state), records, ..Default::default() }).unwrap();
    store.persist().unwrap();
    Stored { repos: repo, likes: stored_likes, statuses, posts, next: n + 1, big, big_liked }
}

fn kb(field: &str) -> u64 {
    self_status_kb(field)
}

/// Resets VmHWM to the current RSS (Linux: `5` to `clear_refs`).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let meta = e.metadata().unwrap();
            total += if meta.is_dir() { dir_size(&e.path()) } else { meta.len() };
        }
    }
    total
}

#[derive(Default, Clone)]
struct BuildFigures {
    records: u64,
    secs: f64,
    cpu: f64,
    /// RSS when it started and peak RSS while it ran, MB.
    rss_before_mb: f64,
    peak_mb: f64,
    /// Its records' entries extracted alone (`sluice::indexes::entries`, no store), records/s.
    extract_per_sec: f64,
}

#[derive(Default)]
struct Figures {
    likes: u64,
    statuses: u64,
    repos: u64,
    load_secs: f64,
    build: BTreeMap<String, BuildFigures>,
    rss_before_mb: f64,
    peak_mb: f64,
    rss_after_mb: f64,
    /// The block cache in use before the builds and after them, MB: what of the growth is the
    /// cache filling (bounded by `[storage] cache_mb`, and full in any sluice that has run a
    /// while), rather than the build's own.
    cache_before_mb: f64,
    cache_after_mb: f64,
    peak_reset: bool,
    /// Per index: (entries, bytes once its memtable is flushed, bytes after a major compaction).
    disk: BTreeMap<String, (i64, u64, u64)>,
    /// Per measured read: sorted latencies in µs.
    reads: BTreeMap<String, Vec<f64>>,
    live_done: u64,
    live_secs: f64,
    live_p99_us: f64,
    /// Seconds waited for fjall's background work from the loading to end before the builds.
    build_settle_secs: f64,
    /// Seconds waited for fjall's background work to end before the reads.
    settle_secs: f64,
    /// Tables of `records` and of the likes index when the builds ended: (L0, all).
    tables: BTreeMap<String, (usize, usize)>,
    /// Phase 3, by how the counts moved.
    moves: BTreeMap<&'static str, MoveFigures>,
}

/// The big repo's account events (phase 3).
#[derive(Default)]
struct MoveFigures {
    /// Each account event's time, ms (under the writer lock throughout).
    event_ms: Vec<f64>,
    /// From each event until its counts were all moved, ms.
    moved_ms: Vec<f64>,
    /// The longest live commit while they ran, ms.
    worst_commit_ms: f64,
    /// The live commits' p99 while they ran, ms.
    p99_commit_ms: f64,
    /// `LiveIndex::count` of the post the big repo liked one like in a hundred (100 of its
    /// entries at 1x, 1,000 at 10x), µs, sorted: timed back to back while the counts move
    /// (and for as long with no event), as a count reads the entries of a moving repo under
    /// its key that are not moved yet.
    count_us: Vec<f64>,
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn specs() -> Vec<sluice::indexes::IndexSpec> {
    Filter::from_toml(FILTER, "bench").unwrap().indexes
}

/// Phase 1: stores the records, then builds the indexes a batch at a time.
fn build_phase(dir: &Path, likes: u64, figures: &mut Figures) -> Stored {
    let cache_mb = std::env::var("SLUICE_INDEX_BENCH_CACHE_MB").ok().and_then(|v| v.parse().ok());
    let cache_mb = cache_mb.unwrap_or(sluice::config::StorageConfig::default().cache_mb);
    let store = Store::open_with(dir, cache_mb).unwrap();
    let started = Instant::now();
    let stored = populate(&store, likes);
    figures.load_secs = started.elapsed().as_secs_f64();
    (figures.likes, figures.statuses, figures.repos) = (stored.likes, stored.statuses, stored.repos);
    // The loading's flushes and compactions would otherwise run on the build's cores.
    figures.build_settle_secs = wait_for_quiet();

    figures.peak_reset = reset_peak();
    figures.rss_before_mb = mb(kb("VmRSS:"));
    figures.cache_before_mb = store.block_cache_bytes() as f64 / (1 << 20) as f64;
    store.set_indexes(&specs()).unwrap();
    let mut last = (Instant::now(), cpu_seconds());
    let mut rss_at_start = figures.rss_before_mb;
    let batch = std::env::var("SLUICE_INDEX_BENCH_BATCH").ok().and_then(|v| v.parse().ok());
    let batch = batch.unwrap_or(sluice::config::StorageConfig::default().index_build_batch);
    while let Some(step) = store.build_index_step(batch).unwrap() {
        let b = figures.build.entry(step.name.clone()).or_default();
        b.records += step.records;
        if step.ready {
            let now = (Instant::now(), cpu_seconds());
            b.secs = (now.0 - last.0).as_secs_f64();
            b.cpu = now.1 - last.1;
            b.rss_before_mb = rss_at_start;
            b.peak_mb = mb(kb("VmHWM:"));
            figures.peak_mb = figures.peak_mb.max(b.peak_mb);
            reset_peak();
            rss_at_start = mb(kb("VmRSS:"));
            last = (Instant::now(), cpu_seconds());
        }
    }
    figures.rss_after_mb = mb(kb("VmRSS:"));
    figures.cache_after_mb = store.block_cache_bytes() as f64 / (1 << 20) as f64;
    extract_alone(&store, figures);
    let mut ids = BTreeMap::new();
    for (name, (index, progress)) in store.index_progress() {
        assert!(progress.building.is_none(), "{name} is built");
        ids.insert(name, (index.id, progress.entries));
    }
    drop(store);

    // Disk size per entry: the index keyspaces flushed and compacted, through fjall directly.
    let db = fjall::Database::builder(dir).journal_compression(fjall::CompressionType::None).open().unwrap();
    let mut paths = Vec::new();
    let records =
        db.keyspace("records", || fjall::KeyspaceCreateOptions::default().max_memtable_size(32 << 20)).unwrap();
    figures.tables.insert("records".into(), (records.l0_table_count(), records.table_count()));
    drop(records);
    for (name, (id, entries)) in ids {
        let space = db
            .keyspace(&format!("index.{id}"), || fjall::KeyspaceCreateOptions::default().max_memtable_size(16 << 20))
            .unwrap();
        let path = space.path().to_path_buf();
        space.rotate_memtable_and_wait().unwrap();
        figures.tables.insert(name.clone(), (space.l0_table_count(), space.table_count()));
        let flushed = dir_size(&path);
        space.major_compact().unwrap();
        figures.disk.insert(name.clone(), (entries, flushed, 0));
        paths.push((name, path));
    }
    db.persist(fjall::PersistMode::SyncAll).unwrap();
    drop(db);
    // Measured once the database is closed: the tables a compaction replaced are gone then.
    for (name, path) in paths {
        figures.disk.get_mut(&name).unwrap().2 = dir_size(&path);
    }
    stored
}

/// Extraction alone: each index's entries from its records' bodies (read first, untimed).
fn extract_alone(store: &Store, figures: &mut Figures) {
    let now = sluice::store::now_us() as i64;
    for spec in specs() {
        let mut bodies = Vec::new();
        let limit = 20_000;
        for r in 0..figures.repos {
            for (rkey, record) in store.records().page(&did(r), &spec.collection, None, 1_000, true).unwrap() {
                bodies.push((rkey, record.body.unwrap()));
            }
            if bodies.len() >= limit {
                break;
            }
        }
        let started = Instant::now();
        let mut entries = 0usize;
        for (rkey, body) in &bodies {
            if let Ok(e) = sluice::indexes::entries(&spec, rkey, body, now) {
                entries += e.keys.len();
            }
        }
        assert!(entries > 0);
        let per_sec = bodies.len() as f64 / started.elapsed().as_secs_f64();
        figures.build.entry(spec.name.clone()).or_default().extract_per_sec = per_sec;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Waits until fjall's workers end the flushes and compactions the loading left (at most 90 s):
/// reads are measured on a settled store, with only the live commits' own work going on.
/// Returns the seconds waited.
fn wait_for_quiet() -> f64 {
    let settle = Instant::now();
    let mut cpu = cpu_seconds();
    while settle.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_secs(1));
        let now = cpu_seconds();
        if now - cpu < 0.05 {
            break;
        }
        cpu = now;
    }
    settle.elapsed().as_secs_f64()
}

/// Live commits at [`LIVE_RATE`] until `stop`: a like each, by a stored repo, half on hot
/// posts, `done` counting them. The thread returns its seconds and the commits' p99 in µs.
fn live_writer(
    sluice: Arc<Sluice>,
    stored: &Stored,
    stop: Arc<AtomicBool>,
    (done, window): (Arc<AtomicU64>, Window),
) -> std::thread::JoinHandle<(f64, f64)> {
    let (repos, posts, first) = (stored.repos, stored.posts, stored.next);
    std::thread::spawn(move || {
        let mut rng = Rng(7);
        let mut latencies = Vec::new();
        let started = Instant::now();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let due = started + Duration::from_micros(i * 1_000_000 / LIVE_RATE);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let n = first + i;
            let uri = if rng.below(2) == 0 { post_uri(rng.below(HOT_POSTS)) } else { subject(&mut rng, posts) };
            let body = like(&uri, n);
            let op = RecordOp::Put { collection: LIKE.into(), rkey: tid(n), cid: cid_of(&body), bytes: body.into() };
            let rev = format!("3m{n:011}");
            let t = Instant::now();
            sluice
                .pipeline()
                .apply_commit(&did(rng.below(repos)), cid_of(rev.as_bytes()), &rev, cid_of(b"data"), vec![op], None)
                .unwrap();
            latencies.push(t.elapsed().as_secs_f64() * 1e6);
            window.lock().unwrap().push(t.elapsed().as_secs_f64() * 1e3);
            i += 1;
            done.store(i, Ordering::Relaxed);
        }
        latencies.sort_by(f64::total_cmp);
        (started.elapsed().as_secs_f64(), percentile(&latencies, 0.99))
    })
}

/// The live commits' times (ms) since the last look, for phase 3.
type Window = Arc<std::sync::Mutex<Vec<f64>>>;

/// Latencies by read, in µs.
#[derive(Default)]
struct Timer(BTreeMap<String, Vec<f64>>);

impl Timer {
    /// Runs `f`, adding its time to `name`'s; returns what it returned.
    fn time<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.0.entry(name.to_string()).or_default().push(t.elapsed().as_secs_f64() * 1e6);
        out
    }
}

/// The keys one round of reads asks for.
struct Keys {
    hot: String,
    typical: String,
    emoji: &'static str,
}

/// A key as a query parameter.
fn enc(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

/// A page of 50 under `key`, each record's body read from `records`: (records, body bytes).
fn page_and_bodies(store: &Store, index: &LiveIndex, key: &[u8], collection: &str) -> (usize, usize) {
    let hits = index.page(key, &PageRange::default(), 50).unwrap();
    let mut bytes = 0;
    for h in &hits {
        bytes += store.records().get(&h.did, collection, &h.rkey).unwrap().unwrap().body.unwrap().len();
    }
    (hits.len(), bytes)
}

/// What queryIndex does past the page, without HTTP: each repo's state read once, each entry's
/// record (carried by the entry, else read) transcoded into the answer's JSON text.
fn query_work(store: &Store, index: &LiveIndex, key: &[u8], collection: &str) -> usize {
    let hits = index.page(key, &PageRange::default(), 50).unwrap();
    let mut states = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(16 * 1024);
    out.extend_from_slice(b"{\"records\":[");
    for h in &hits {
        if !states.contains_key(&h.did) {
            states.insert(h.did.clone(), store.repos().state(&h.did).unwrap().unwrap());
        }
        let record = match &h.record {
            Some(record) => record.clone(),
            None => store.records().get(&h.did, collection, &h.rkey).unwrap().unwrap(),
        };
        let cid = Cid::try_from(record.cid.as_slice()).unwrap().to_string();
        let uri = format!("at://{}/{collection}/{}", h.did, h.rkey);
        serde_json::to_writer(&mut out, &json!({"uri": uri, "cid": cid, "did": h.did})).unwrap();
        sluice::handlers::value::write_cbor_json(record.body.as_deref().unwrap(), &mut out).unwrap();
    }
    out.extend_from_slice(b"]}");
    out.len()
}

/// One round of the store's own reads: pages, pages with their bodies, queryIndex's work and
/// counts.
fn store_reads(t: &mut Timer, store: &Store, [likes, statuses, latest]: [&LiveIndex; 3], k: &Keys) {
    let (hot, typical, emoji) =
        (encode::key_tuple(&[&k.hot]), encode::key_tuple(&[&k.typical]), encode::key_tuple(&[k.emoji]));
    let no_key = encode::key_tuple::<&str>(&[]);
    let n = t.time("store: page 50 + bodies, hot like key", || page_and_bodies(store, likes, &hot, LIKE).0);
    assert_eq!(n, 50, "a hot post has a full page");
    t.time("store: page 50 + bodies, typical like key", || page_and_bodies(store, likes, &typical, LIKE));
    let n = t.time("store: page 50 + bodies, status key", || page_and_bodies(store, statuses, &emoji, STATUS).0);
    assert_eq!(n, 50);
    t.time("store: queryIndex's work without HTTP, hot like key", || query_work(store, likes, &hot, LIKE));
    t.time("store: page 50 only, hot like key", || likes.page(&hot, &PageRange::default(), 50).unwrap());
    t.time("store: page 50 only, status key", || statuses.page(&emoji, &PageRange::default(), 50).unwrap());
    let n = t.time("store: page 50 only, latest status of each repo", || {
        latest.page(&no_key, &PageRange::default(), 50).unwrap().len()
    });
    assert_eq!(n, 50);
    t.time("store: queryIndex's work without HTTP, latest status of each repo", || {
        query_work(store, latest, &no_key, STATUS)
    });
    t.time("store: count, hot like key", || likes.count(&hot).unwrap());
    t.time("store: count, typical like key", || likes.count(&typical).unwrap());
    // What a count costs while some repo's counts move (a snapshot, the marks, its entries).
    t.time("store: count with the moves' reads, typical like key", || likes.count_with_moves(&typical).unwrap());
}

/// One round of requests to the server: queryIndex, countIndex, `did=` queries of the big repo,
/// and the floor of one request.
/// `client` prefixes the names of the figures (empty for reqwest's, kept as they were).
fn http_reads(t: &mut Timer, (client, get): Client<'_>, base: &str, stored: &Stored, k: &Keys) {
    let mut t = Labelled { t, client };
    let q =
        |index: &str, key: &str| format!("{base}/xrpc/dev.sluice.queryIndex?index={index}&key={}&limit=50", enc(key));
    let c = |key: &str| format!("{base}/xrpc/dev.sluice.countIndex?index=likes_by_subject&key={}", enc(key));
    t.time("xrpc: queryIndex limit 50, hot like key", || get(q("likes_by_subject", &k.hot)));
    t.time("xrpc: queryIndex limit 50, typical like key", || get(q("likes_by_subject", &k.typical)));
    t.time("xrpc: queryIndex limit 50, status key", || get(q("statuses_by_status", k.emoji)));
    let latest = format!("{base}/xrpc/dev.sluice.queryIndex?index=latest_status&limit=50");
    t.time("xrpc: queryIndex limit 50, latest status of each repo (no key)", || get(latest.clone()));
    t.time("http floor: GET /status.css (static text)", || get(format!("{base}/status.css")));
    let big = enc(&stored.big);
    t.time("xrpc: queryIndex limit 50, big repo (did=), the post it liked often", || {
        get(format!("{}&did={big}", q("likes_by_subject", &stored.big_liked)))
    });
    t.time("xrpc: queryIndex limit 50, big repo (did=), a hot like key", || {
        get(format!("{}&did={big}", q("likes_by_subject", &k.hot)))
    });
    t.time("xrpc: queryIndex limit 50, big repo (did=), status key", || {
        get(format!("{}&did={big}", q("statuses_by_status", k.emoji)))
    });
    t.time("xrpc: queryIndex, big repo (did=), its latest status", || get(format!("{latest}&did={big}")));
    t.time("xrpc: countIndex, hot like key", || get(c(&k.hot)));
    t.time("xrpc: countIndex, typical like key", || get(c(&k.typical)));
}

/// A client for [`http_reads`]: the prefix of its figures' names, and its GET (returning the
/// body's length).
type Client<'a> = (&'a str, &'a dyn Fn(String) -> usize);

/// A [`Timer`] whose names carry a client's prefix.
struct Labelled<'a> {
    t: &'a mut Timer,
    client: &'a str,
}

impl Labelled<'_> {
    fn time<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        self.t.time(&format!("{}{name}", self.client), f)
    }
}

/// A lean HTTP/1.1 client on one kept-alive connection, blocking on the calling thread, as a
/// load generator such as `wrk` measures: what the server adds to a request, without the
/// hand-offs between reqwest's tasks and the runtime's threads.
struct LeanClient {
    stream: BufReader<TcpStream>,
    host: String,
}

impl LeanClient {
    fn connect(base: &str) -> LeanClient {
        let host = base.strip_prefix("http://").expect("an http:// base").to_string();
        let stream = TcpStream::connect(&host).unwrap();
        stream.set_nodelay(true).unwrap();
        LeanClient { stream: BufReader::new(stream), host }
    }

    /// GETs `url`, which must be on the host it connected to; returns the body's length.
    fn get(&mut self, url: &str) -> usize {
        let path = &url[url.find(&self.host).expect("the client's host") + self.host.len()..];
        write!(self.stream.get_mut(), "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host).unwrap();
        let status = self.line();
        assert!(status.starts_with("HTTP/1.1 200"), "{url}: {status}");
        let (mut length, mut chunked) = (None, false);
        loop {
            let header = self.line();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').expect("a header");
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse().unwrap());
            }
            chunked |= name.eq_ignore_ascii_case("transfer-encoding") && value.trim() == "chunked";
        }
        if !chunked {
            let n = length.expect("a content-length or chunks");
            self.skip(n);
            return n;
        }
        let mut total = 0;
        loop {
            let size = usize::from_str_radix(self.line().split(';').next().unwrap(), 16).unwrap();
            self.skip(size + 2); // the chunk and its CRLF; the last chunk's is the body's end
            if size == 0 {
                return total;
            }
            total += size;
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    fn skip(&mut self, n: usize) {
        let mut buf = vec![0; n];
        self.stream.read_exact(&mut buf).unwrap();
    }
}

/// Phase 2: reads while live commits land.
fn read_phase(dir: &Path, stored: &Stored, secs: f64, figures: &mut Figures) {
    let filter = Filter::from_toml(FILTER, "bench").unwrap();
    let sluice = Arc::new(Sluice::builder().config(Config::default()).data_dir(dir).filter(filter).open().unwrap());
    let store = sluice.store().clone();
    assert!(store.index_progress().values().all(|(_, p)| p.building.is_none()), "the indexes stay built");
    figures.settle_secs = wait_for_quiet();

    // The server, as `sluice run` starts it, on runtime threads of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (base, _state, _server) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(ServerState::new(sluice.pipeline().clone(), sluice.config().clone()));
        let server = serve_dedicated(listener, state.clone(), 2).unwrap();
        (base, state, server)
    });
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (done, window) = (Arc::new(AtomicU64::new(0)), Window::default());
    let writer = live_writer(sluice.clone(), stored, stop.clone(), (done.clone(), window.clone()));

    let registry = store.index_registry();
    let indexes = INDEXES.map(|name| registry.indexes[name].as_ref());
    let likes = indexes[0];
    let get = |url: String| {
        runtime.block_on(async {
            let response = http.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200, "{url}");
            response.bytes().await.unwrap().len()
        })
    };
    let lean = std::cell::RefCell::new(LeanClient::connect(&base));
    let lean_get = |url: String| lean.borrow_mut().get(&url);
    // Warm up the connections and the caches a little.
    let warm_up = format!("{base}/xrpc/dev.sluice.countIndex?index=likes_by_subject&key={}", enc(&post_uri(0)));
    for _ in 0..50 {
        get(warm_up.clone());
        lean_get(warm_up.clone());
    }
    let mut rng = Rng(99);
    let mut timer = Timer::default();
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < secs {
        let keys = Keys {
            hot: post_uri(rng.below(HOT_POSTS)),
            typical: post_uri(HOT_POSTS + rng.below(stored.posts)),
            emoji: EMOJI[rng.below(EMOJI.len() as u64) as usize],
        };
        store_reads(&mut timer, &store, indexes, &keys);
        http_reads(&mut timer, ("", &get), &base, stored, &keys);
        http_reads(&mut timer, ("lean client: ", &lean_get), &base, stored, &keys);
    }
    let count_before = likes.count(&encode::key_tuple(&[stored.big_liked.as_str()])).unwrap();
    let modes = [("no account event", None), ("in steps", Some(sluice::store::MOVE_ROWS)), ("at once", Some(1 << 40))];
    for (mode, rows) in modes {
        store.set_index_move_rows(rows.unwrap_or(sluice::store::MOVE_ROWS));
        let repo = (stored.big.as_str(), rows.is_some());
        let liked = encode::key_tuple(&[stored.big_liked.as_str()]);
        figures.moves.insert(mode, account_events(&store, (likes, &liked), repo, &window));
    }
    let count_after = likes.count(&encode::key_tuple(&[stored.big_liked.as_str()])).unwrap();
    assert_eq!(count_after, count_before, "the big repo's likes count again once shown");
    stop.store(true, Ordering::Relaxed);
    let (live_secs, live_p99) = writer.join().unwrap();
    figures.live_done = done.load(Ordering::Relaxed);
    figures.live_secs = live_secs;
    figures.live_p99_us = live_p99;
    for v in timer.0.values_mut() {
        v.sort_by(f64::total_cmp);
    }
    figures.reads = timer.0;
    drop(_server);
    drop(runtime);
}

/// Phase 3: `repo` hidden and shown again three times each, as account events do (when
/// `events`; else six pauses of 600 ms, for what the live commits take on their own): the
/// events' times and the moves' (until `index` moves no repo's counts), and the live commits'
/// p99 and longest meanwhile (from `window`, where the live writer puts each commit's time).
fn account_events(
    store: &Store,
    (index, key): (&LiveIndex, &[u8]),
    (repo, events): (&str, bool),
    window: &Window,
) -> MoveFigures {
    let shown = store.repos().state(repo).unwrap().unwrap();
    let hidden = RepoState { status: RepoStatus::Gone, error: Some("deactivated".into()), ..shown.clone() };
    let mut figures = MoveFigures::default();
    // The live commits held up before (by the other way's last event) land first.
    std::thread::sleep(Duration::from_millis(300));
    window.lock().unwrap().clear();
    for state in [&hidden, &shown].repeat(3) {
        let t = Instant::now();
        if events {
            store.set_states(&[(repo.to_string(), state.clone())], None).unwrap();
        }
        let event_ms = t.elapsed().as_secs_f64() * 1e3;
        // As long as a move in steps takes at 10x, with no event.
        while index.moving_repos() > 0 || (!events && t.elapsed() < Duration::from_millis(600)) {
            let counted = Instant::now();
            std::hint::black_box(index.count(key).unwrap());
            figures.count_us.push(counted.elapsed().as_secs_f64() * 1e6);
            std::thread::sleep(Duration::from_micros(200));
        }
        figures.event_ms.push(event_ms);
        figures.moved_ms.push(t.elapsed().as_secs_f64() * 1e3);
        // Account events do not come back to back: the live commits held up meanwhile land
        // (the writer lock is not fair) and are counted here.
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut commits = std::mem::take(&mut *window.lock().unwrap());
    commits.sort_by(f64::total_cmp);
    figures.worst_commit_ms = commits.last().copied().unwrap_or_default();
    figures.p99_commit_ms = percentile(&commits, 0.99);
    figures.count_us.sort_by(f64::total_cmp);
    figures
}

fn run(likes: u64, secs: f64) -> Figures {
    let root = std::env::var_os("SLUICE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(root).unwrap();
    let mut figures = Figures::default();
    let stored = build_phase(dir.path(), likes, &mut figures);
    read_phase(dir.path(), &stored, secs, &mut figures);
    figures
}

fn main() {
    sluice::alloc::tune(sluice::alloc::Workload::Service);
    let scales: Vec<u64> = std::env::var("SLUICE_INDEX_BENCH_SCALE")
        .unwrap_or_else(|_| "1,10".into())
        .split(',')
        .map(|s| s.trim().parse().expect("SLUICE_INDEX_BENCH_SCALE: comma-separated integers"))
        .collect();
    let base: u64 = std::env::var("SLUICE_INDEX_BENCH_BASE").map_or(200_000, |s| s.parse().unwrap());
    let secs: f64 = std::env::var("SLUICE_INDEX_BENCH_SECS").map_or(8.0, |s| s.parse().unwrap());
    let mut all = Vec::new();
    for &scale in &scales {
        let started = Instant::now();
        let f = run(base * scale, secs);
        eprintln!("scale {scale}x done in {:.1} s", started.elapsed().as_secs_f64());
        all.push((scale, f));
    }
    let report = Report { all: &all };
    report.builds();
    report.reads();
    report.moves();
}

/// The figures of every scale as Markdown tables: a column per scale and, with two scales or
/// more, the last one's figure over the first's.
struct Report<'a> {
    all: &'a [(u64, Figures)],
}

fn int(v: f64) -> String {
    format!("{v:.0}")
}
fn one(v: f64) -> String {
    format!("{v:.1}")
}
fn two(v: f64) -> String {
    format!("{v:.2}")
}

impl Report<'_> {
    fn ratio_col(&self) -> bool {
        self.all.len() >= 2
    }

    fn header(&self, title: &str) {
        println!("\n### {title}\n");
        let cols: Vec<String> = self.all.iter().map(|(s, _)| format!("{s}x")).collect();
        let mut h = format!("|  | {} |", cols.join(" | "));
        if self.ratio_col() {
            h.push_str(&format!(" {}/{} |", cols[cols.len() - 1], cols[0]));
        }
        let n = cols.len() + 1 + self.ratio_col() as usize;
        println!("{h}\n|{}", "---|".repeat(n));
    }

    fn row(&self, name: &str, get: impl Fn(&Figures) -> f64, fmt: fn(f64) -> String) {
        let vals: Vec<f64> = self.all.iter().map(|(_, f)| get(f)).collect();
        let mut r = format!("| {name} | {} |", vals.iter().map(|v| fmt(*v)).collect::<Vec<_>>().join(" | "));
        if self.ratio_col() {
            r.push_str(&format!(" {:.2} |", vals[vals.len() - 1] / vals[0]));
        }
        println!("{r}");
    }

    fn builds(&self) {
        self.header("Building an index from the stored records");
        self.row("likes stored", |f| f.likes as f64, int);
        self.row("statuses stored", |f| f.statuses as f64, int);
        self.row("repos", |f| f.repos as f64, int);
        self.row("loading (Store::commit per repo), records/s", |f| (f.likes + f.statuses) as f64 / f.load_secs, int);
        self.row("waited for fjall's background work before the builds, s", |f| f.build_settle_secs, one);
        for name in INDEXES {
            self.one_build(name);
        }
        for name in std::iter::once("records").chain(INDEXES) {
            self.row(&format!("{name}: L0 tables when the builds ended"), |f| f.tables[name].0 as f64, int);
            self.row(&format!("{name}: tables when the builds ended"), |f| f.tables[name].1 as f64, int);
        }
        self.row("RSS before the builds, MB", |f| f.rss_before_mb, one);
        self.row("peak RSS during the builds (VmHWM), MB", |f| f.peak_mb, one);
        self.row("memory growth, all builds (peak - before), MB", |f| f.peak_mb - f.rss_before_mb, one);
        self.row("RSS after the builds, MB", |f| f.rss_after_mb, one);
        self.row("block cache in use before the builds, MB", |f| f.cache_before_mb, one);
        self.row("block cache in use after the builds, MB", |f| f.cache_after_mb, one);
        self.row(
            "memory growth less the block cache's, all builds, MB",
            |f| f.peak_mb - f.rss_before_mb - (f.cache_after_mb - f.cache_before_mb),
            one,
        );
        if self.all.iter().any(|(_, f)| !f.peak_reset) {
            println!("\n(VmHWM could not be reset: the peak includes the loading)");
        }
    }

    fn one_build(&self, name: &str) {
        self.row(&format!("{name}: records of its collection"), |f| f.build[name].records as f64, int);
        self.row(&format!("{name}: build s"), |f| f.build[name].secs, two);
        self.row(&format!("{name}: build, its records/s"), |f| f.build[name].records as f64 / f.build[name].secs, int);
        self.row(
            &format!("{name}: build, stored records scanned/s"),
            |f| (f.likes + f.statuses) as f64 / f.build[name].secs,
            int,
        );
        self.row(&format!("{name}: build CPU s / wall s"), |f| f.build[name].cpu / f.build[name].secs, two);
        // Less swayed than records/s by what else runs on the cores: compare builds by this.
        self.row(
            &format!("{name}: build CPU µs per record"),
            |f| f.build[name].cpu * 1e6 / f.build[name].records as f64,
            two,
        );
        self.row(&format!("{name}: extraction alone, records/s"), |f| f.build[name].extract_per_sec, int);
        self.row(&format!("{name}: RSS at its start, MB"), |f| f.build[name].rss_before_mb, one);
        self.row(
            &format!("{name}: memory growth (peak - start), MB"),
            |f| f.build[name].peak_mb - f.build[name].rss_before_mb,
            one,
        );
        self.row(&format!("{name}: entries"), |f| f.disk[name].0 as f64, int);
        self.row(&format!("{name}: bytes/entry, flushed"), |f| f.disk[name].1 as f64 / f.disk[name].0 as f64, one);
        self.row(
            &format!("{name}: bytes/entry, after major compaction"),
            |f| f.disk[name].2 as f64 / f.disk[name].0 as f64,
            one,
        );
    }

    fn moves(&self) {
        self.header("The big repo hidden and shown again, three times each (ms)");
        self.row("its likes (entries in likes_by_subject)", |f| (f.likes / 20).max(1) as f64, int);
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        for mode in self.all[0].1.moves.keys() {
            self.row(&format!("{mode}: account event, max"), |f| max(&f.moves[mode].event_ms), two);
            self.row(&format!("{mode}: until its counts are moved, max"), |f| max(&f.moves[mode].moved_ms), one);
            self.row(&format!("{mode}: live commits meanwhile, p99"), |f| f.moves[mode].p99_commit_ms, one);
            self.row(&format!("{mode}: live commits meanwhile, max"), |f| f.moves[mode].worst_commit_ms, one);
            fn counts<'f>(f: &'f Figures, mode: &str) -> &'f [f64] {
                &f.moves[mode].count_us
            }
            self.row(
                &format!("{mode}: counts of a post it liked 1 in 100 times, n"),
                |f| counts(f, mode).len() as f64,
                int,
            );
            self.row(&format!("{mode}: that count meanwhile, p50 µs"), |f| percentile(counts(f, mode), 0.5), one);
            self.row(&format!("{mode}: that count meanwhile, p99 µs"), |f| percentile(counts(f, mode), 0.99), one);
            self.row(
                &format!("{mode}: that count meanwhile, max µs"),
                |f| counts(f, mode).last().copied().unwrap_or_default(),
                one,
            );
        }
    }

    fn reads(&self) {
        self.header("Reads while live commits land (µs)");
        self.row("waited for fjall's background work before reading, s", |f| f.settle_secs, one);
        self.row("live commits applied/s", |f| f.live_done as f64 / f.live_secs, int);
        self.row("live commit p99 µs", |f| f.live_p99_us, int);
        for name in self.all[0].1.reads.keys() {
            self.row(&format!("{name}: reads"), |f| f.reads[name].len() as f64, int);
            self.row(&format!("{name}: p50"), |f| percentile(&f.reads[name], 0.50), one);
            self.row(&format!("{name}: p99"), |f| percentile(&f.reads[name], 0.99), one);
            self.row(&format!("{name}: max"), |f| *f.reads[name].last().unwrap(), one);
        }
    }
}
