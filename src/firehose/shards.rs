//! Ordering: the frames of one repo are applied in order, by one shard; different repos go to
//! different shards (by a hash of the DID) and are applied in parallel, each shard a thread.
//!
//! A shard also owns the held commits of its repos: it remembers which of its DIDs have some,
//! drains them before that DID's next frame, and drains on request once a backfill commits
//! ([`Shards::request_drain`]), so held and live commits of a repo never interleave.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use super::cursor::SeqTracker;
use super::frame::Frame;
use super::live::{Live, LiveError};

/// One frame for a shard.
struct Job {
    seq: Option<i64>,
    did: String,
    frame: Frame,
    raw: Bytes,
}

/// What the shards share.
struct Shared {
    live: Arc<Live>,
    tracker: Arc<SeqTracker>,
    /// Frames dispatched and not finished (the idle-mode gauge).
    backlog: Arc<AtomicU64>,
    /// Drain requests per shard.
    drains: Vec<Mutex<Vec<String>>>,
    /// The first storage failure; the shards stop.
    fatal: Mutex<Option<String>>,
}

/// The shard threads.
pub struct Shards {
    senders: Vec<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Shards {
    /// Starts `n` shards with room for `capacity` queued frames each. Repos with commits held
    /// from an earlier run are drained first.
    pub fn start(
        live: Arc<Live>,
        tracker: Arc<SeqTracker>,
        n: usize,
        capacity: usize,
        backlog: Arc<AtomicU64>,
    ) -> Result<Self, LiveError> {
        let n = n.max(1);
        let mut held: Vec<HashSet<String>> = vec![HashSet::new(); n];
        for did in live.store().held().dids()? {
            held[shard_of(&did, n)].insert(did);
        }
        let shared = Arc::new(Shared {
            live,
            tracker,
            backlog,
            drains: (0..n).map(|_| Mutex::default()).collect(),
            fatal: Mutex::default(),
        });
        let (mut senders, mut threads) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (i, held) in held.into_iter().enumerate() {
            let (tx, rx) = sync_channel(capacity.max(1));
            let shared = shared.clone();
            shared.drains[i].lock().expect("drains").extend(held.iter().cloned());
            let thread = std::thread::Builder::new()
                .name(format!("firehose-{i}"))
                .spawn(move || run_shard(&shared, i, rx, held))
                .expect("spawning a shard thread");
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Self { senders, threads, shared })
    }

    /// Hands a decoded frame of `did` to its shard, waiting while the shard is full.
    pub fn dispatch(&self, seq: Option<i64>, did: &str, frame: Frame, raw: Bytes) {
        if let Some(seq) = seq {
            self.shared.tracker.dispatched(seq);
        }
        self.shared.backlog.fetch_add(1, Ordering::Relaxed);
        let shard = shard_of(did, self.senders.len());
        if self.senders[shard].send(Job { seq, did: did.to_string(), frame, raw }).is_err() {
            // The shard stopped on a storage failure; `fatal` says so.
            self.shared.backlog.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Asks `did`'s shard to apply its held commits (its backfill just committed).
    pub fn request_drain(&self, did: &str) {
        let shard = shard_of(did, self.senders.len());
        self.shared.drains[shard].lock().expect("drains").push(did.to_string());
    }

    /// The storage failure that stopped a shard, if any.
    pub fn fatal(&self) -> Option<String> {
        self.shared.fatal.lock().expect("fatal").clone()
    }

    /// Lets the shards finish what they were given, and waits for them.
    pub fn finish(self) {
        drop(self.senders);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn shard_of(did: &str, n: usize) -> usize {
    let mut hasher = std::hash::DefaultHasher::new();
    did.hash(&mut hasher);
    (hasher.finish() % n as u64) as usize
}

fn run_shard(shared: &Shared, index: usize, rx: Receiver<Job>, mut held: HashSet<String>) {
    if let Err(e) = shard_loop(shared, index, &rx, &mut held) {
        tracing::error!(error = %e, "firehose shard stopped on a storage failure");
        shared.fatal.lock().expect("fatal").get_or_insert(e.to_string());
    }
}

fn shard_loop(shared: &Shared, index: usize, rx: &Receiver<Job>, held: &mut HashSet<String>) -> Result<(), LiveError> {
    loop {
        let drains = std::mem::take(&mut *shared.drains[index].lock().expect("drains"));
        for did in drains {
            if shared.live.drain(&did)? {
                held.remove(&did);
            }
        }
        let job = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        if held.contains(&job.did) && shared.live.drain(&job.did)? {
            held.remove(&job.did);
        }
        if shared.live.handle(&job.frame, &job.raw)?.holds() {
            held.insert(job.did);
        }
        if let Some(seq) = job.seq {
            shared.tracker.finished(seq);
        }
        shared.backlog.fetch_sub(1, Ordering::Relaxed);
    }
}
