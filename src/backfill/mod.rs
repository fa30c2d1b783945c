//! Network backfill: find repos (crawler, the filter's `dids`, `sluice backfill --did`), queue
//! them in fjall, and have workers resolve each DID, fetch its repo with getRepo, verify it and
//! feed it through the same pipeline as everything else.
//!
//! Checkpoint contract: a repo's queue entry (`pending`, derived from its state in `repos`) is
//! removed in the same fjall batch that commits the repo's last records, its new state and the
//! `backfill` cursor. A crash before that leaves the repo queued, and its next walk finds the
//! batches already committed current (the pipeline's diff), so after `kill -9` a restart fetches
//! no committed repo again, loses none, and emits no event twice. Crawled DIDs are queued in the
//! same batch as the crawler cursor of their page.
//!
//! Failures are classified: a repo the network no longer serves is `gone`; a transient failure
//! (a timeout, a 5xx, a 429, a dropped connection) leaves it in `error` with a retry after an
//! exponential backoff; a permanent one (a bad signature, another DID's commit, a malformed or
//! oversized CAR, an unusable DID document) leaves it in `error` with no retry, until something
//! changes: a new commit, `#sync` or `#identity` of the repo on the firehose, a filter edit or
//! `sluice backfill --did` queues it again. A rate limit holds the PDS (or the directory), not
//! the repo.
//!
//! Stopping ([`Backfill::stop`]) cancels the repos in flight that are still resolving,
//! downloading or waiting for a walk thread: nothing was written for them, so they stay
//! queued. A walk that started stops before its next batch: its repo's state is written only
//! with the last one, so it stays queued too, and the batches committed are current for the
//! next walk.
//!
//! Only storage failures are fatal: the run stops, saves what it has and returns the first one
//! ([`BackfillError::Storage`]), which names its cause.
//!
//! Memory: up to `max_concurrent` repos are in flight, but their downloads are spooled (in
//! memory when small, else to a temporary file) and only one repo per core is read and walked
//! at a time, so resident memory follows the cores and the largest repo, not the concurrency.
//!
//! Architecture invariant: network I/O stays in async tasks; reading a CAR, checking its
//! signature and the pipeline run on the walk threads (`walkers`, one per core, at a lower
//! scheduling priority so that queries and live ingestion go first).

pub mod crawler;
pub mod fetch;
pub mod hosts;
pub mod progress;
mod requeue;
mod walkers;
mod worker;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::{BackfillConfig, Config};
use crate::identity::{Resolver, ResolverOptions};
use crate::pipeline::Pipeline;
use crate::store::values::now_ms;
use crate::store::{RepoState, RepoStatus, Store, StoreError, schedule};

pub use crawler::{CrawlError, CrawlSummary, Crawler, Listing, PageError};
pub use fetch::RepoFetcher;
pub use hosts::FailingHost;
pub use progress::{FailureGroup, FailureKind, Listed, Progress, Snapshot, failure_report, listed, repos_by_status};
pub use requeue::{Widening, widening};

/// Live backlog (events waiting) above which `BACKFILL_USE_IDLE` holds new repos.
pub const IDLE_BACKLOG: u64 = 100;

/// How long [`Backfill::run`] goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Until nothing is queued or in flight, retries included: waits out every backoff.
    UntilEmpty,
    /// Until nothing is left to do now (`sluice backfill`): nothing in flight, nothing
    /// pending, and the only repos queued are failed ones waiting for their retry, which the
    /// next run (or `sluice run`) takes.
    UntilSettled,
    /// Until [`Backfill::stop`] (`sluice run`).
    Forever,
}

/// A repo in flight: leaves the in-flight set when dropped.
struct InFlight {
    backfill: Arc<Backfill>,
    did: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut set) = self.backfill.in_flight.lock() {
            set.remove(&self.did);
        }
    }
}

/// What runs after a repo's backfill commits (see [`Backfill::after_sync`]).
type SyncHook = Box<dyn Fn(&str) + Send + Sync>;

/// A fatal backfill error: progress up to it is saved.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// Storage failed (the first failure, which names its cause: a full disk, say).
    #[error("backfill stopped")]
    Storage(#[from] StoreError),
    /// The spool directory could not be emptied.
    #[error("backfill stopped: clearing the spool directory {}", path.display())]
    Spool {
        /// The spool directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Why [`Backfill::queue`] queued nothing.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Not a DID.
    #[error("{0:?} is not a valid DID")]
    InvalidDid(String),
    /// Another node's shard owns it.
    #[error("{did} belongs to shard {holder}; this node indexes shard {shard}")]
    OtherShard { did: String, holder: crate::cluster::Shard, shard: crate::cluster::Shard },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// The backfill service.
pub struct Backfill {
    pipeline: Pipeline,
    config: BackfillConfig,
    relay: String,
    /// The DIDs this node indexes (see `cluster.rs`).
    shard: crate::cluster::Shard,
    resolver: Arc<Resolver>,
    fetcher: RepoFetcher,
    /// Repos read and walked at once: one per core. Downloads beyond that wait spooled.
    walk_permits: Arc<Semaphore>,
    /// The low-priority threads those repos are read and walked on.
    walkers: walkers::Walkers,
    progress: Progress,
    live_backlog: Arc<AtomicU64>,
    memory_cap_mb: AtomicU64,
    /// Resident memory, for the cap: read at most every 50 ms.
    resident: crate::process::ResidentGauge,
    stop: AtomicBool,
    /// Cancelled by [`Backfill::stop`]: repos in flight abandon their fetch.
    cancel: tokio_util::sync::CancellationToken,
    /// Paused by an operator: no new repo starts until resumed.
    paused: AtomicBool,
    /// Set when the current run's scheduler is done, to end its helpers.
    run_over: AtomicBool,
    /// The first storage failure of a repo's worker: the run stops, and returns it.
    fatal: Mutex<Option<StoreError>>,
    in_flight: Mutex<HashSet<String>>,
    /// Called with each repo whose backfill committed (live ingestion drains its held commits).
    after_sync: std::sync::OnceLock<SyncHook>,
}

impl Backfill {
    /// A backfill writing through `pipeline`, with `config`'s network and backfill settings.
    pub fn new(pipeline: Pipeline, config: &Config) -> Arc<Self> {
        let resolver = Resolver::new(ResolverOptions {
            plc_url: config.network.plc.clone(),
            policy: config.network.policy(),
            ..Default::default()
        });
        let cores = crate::process::cores();
        Arc::new(Self {
            pipeline,
            config: config.backfill.clone(),
            relay: config.network.relay.clone(),
            shard: config.cluster.shard,
            resolver: Arc::new(resolver),
            fetcher: RepoFetcher::with_policy(
                config.limits.car_limits(),
                config.storage.path.join("spool"),
                fetch::FetchOptions::from_config(&config.limits),
                config.network.policy(),
            ),
            walk_permits: Arc::new(Semaphore::new(cores)),
            walkers: walkers::Walkers::new(cores),
            progress: Progress::default(),
            live_backlog: Arc::default(),
            memory_cap_mb: AtomicU64::new(config.backfill.max_memory_mb),
            resident: crate::process::ResidentGauge::new(Duration::from_millis(50)),
            stop: AtomicBool::new(false),
            cancel: tokio_util::sync::CancellationToken::new(),
            paused: AtomicBool::new(false),
            run_over: AtomicBool::new(false),
            fatal: Mutex::new(None),
            in_flight: Mutex::new(HashSet::new()),
            after_sync: std::sync::OnceLock::new(),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        self.pipeline.store()
    }

    /// The identity resolver (shared with live ingestion).
    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// Progress counters.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The live ingestion backlog gauge that `BACKFILL_USE_IDLE` watches.
    pub fn live_backlog(&self) -> &Arc<AtomicU64> {
        &self.live_backlog
    }

    /// Sets what runs after each repo's backfill commits (once; later calls are ignored):
    /// `sluice run` has live ingestion apply the commits it held meanwhile.
    pub fn after_sync(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.after_sync.set(Box::new(hook));
    }

    /// Changes the memory cap (MB, 0 = none) while running.
    pub fn set_memory_cap_mb(&self, mb: u64) {
        self.memory_cap_mb.store(mb, Ordering::Relaxed);
    }

    /// Pauses (or resumes) the backfill: while paused no new repo starts; repos in flight
    /// finish.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Whether an operator paused the backfill.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Asks the run to stop for good: no new repo starts; repos in flight that are not walking
    /// yet are abandoned and stay queued, and walks stop before their next batch.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cancel.cancel();
    }

    /// The repos that failed in this run and have not succeeded since, by kind and reason:
    /// what `sluice backfill` says when it ends.
    pub fn failure_summary(&self) -> Vec<FailureGroup> {
        self.progress.failures.summary()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self.run_over.load(Ordering::Relaxed)
            || self.fatal.lock().expect("fatal").is_some()
    }

    /// The DIDs among `dids` this node's shard owns.
    pub fn owned(&self, dids: &[String]) -> Vec<String> {
        dids.iter().filter(|did| self.shard.owns(did)).cloned().collect()
    }

    /// Queues `dids` now, whatever their state (`sluice backfill --did`). Returns how many.
    pub fn queue(&self, dids: &[String]) -> Result<usize, QueueError> {
        let now = now_ms();
        let mut states = Vec::new();
        for did in dids {
            if !crate::syntax::is_did(did) {
                return Err(QueueError::InvalidDid(did.clone()));
            }
            if !self.shard.owns(did) {
                return Err(QueueError::OtherShard {
                    did: did.clone(),
                    holder: self.shard.holder(did),
                    shard: self.shard,
                });
            }
            let state = self.store().repos().state(did)?.unwrap_or_default();
            states.push((did.clone(), schedule::requeued(&state, 0, now)));
        }
        self.store().set_states(&states, None)?;
        Ok(states.len())
    }

    /// Runs the backfill: the crawler (when `crawl`), the filter's `dids`, the queue's workers,
    /// the progress line, and requeues after filter edits.
    pub async fn run(self: &Arc<Self>, mode: RunMode, crawl: bool) -> Result<(), BackfillError> {
        if !self.config.enabled() {
            tracing::info!(
                days = self.config.days,
                worker_id = ?self.config.worker_id,
                "backfill is off here (BACKFILL_DAYS=0 or WORKER_ID not 0)"
            );
            return Ok(());
        }
        self.run_over.store(false, Ordering::Relaxed);
        // The filter in force as the run starts (before its first await): an edit from here on
        // is followed, however soon the follower's task first runs.
        let in_force = self.pipeline.filter().load();
        let dids: Vec<String> = in_force.filter.dids.iter().cloned().collect();
        self.store().queue().enqueue_new(&self.owned(&dids), None)?;
        // Nothing is in flight yet: repos an earlier run left in flight are taken again.
        self.store().queue().rewind();
        self.fetcher
            .clear_spool()
            .map_err(|source| BackfillError::Spool { path: self.fetcher.spool_dir().to_path_buf(), source })?;
        self.progress.listed.store(!crawl, Ordering::Relaxed);
        let mut helpers = JoinSet::new();
        if crawl {
            let me = self.clone();
            helpers.spawn(async move { me.crawl_all(&me.progress.listed).await });
        }
        let me = self.clone();
        helpers.spawn(async move { requeue::follow_filter_edits(&me, in_force).await });
        let (me, reporter_stop) = (self.clone(), tokio_util::sync::CancellationToken::new());
        let stop_reporter = reporter_stop.clone();
        let every = Duration::from_secs(self.config.progress_secs.max(1));
        let reporter = tokio::spawn(async move {
            progress::report(&me.progress, me.store(), &me.memory_cap_mb, every, &stop_reporter).await
        });

        let result = self.schedule(mode).await;
        self.run_over.store(true, Ordering::Relaxed);
        helpers.shutdown().await;
        reporter_stop.cancel();
        let _ = reporter.await;
        let persisted = self.store().persist();
        // The first failure, not what the final persist (refused after it) says.
        if let Some(first) = self.fatal.lock().expect("fatal").take() {
            return Err(first.into());
        }
        persisted?;
        result
    }

    /// Takes due repos off the queue while there is room, until the run ends.
    async fn schedule(self: &Arc<Self>, mode: RunMode) -> Result<(), BackfillError> {
        let permits = Arc::new(Semaphore::new(self.config.max_concurrent.max(1)));
        let mut workers = JoinSet::new();
        let mut queued = self.store().watch_queue();
        while !self.stopping() {
            while workers.try_join_next().is_some() {}
            self.wait_for_room().await;
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            if self.stopping() {
                break;
            }
            match self.next_due_repo()? {
                Some((did, state)) => self.start_repo(&mut workers, did, state, permit),
                None => {
                    drop(permit);
                    let (idle, next_due) = self.queue_outlook()?;
                    if idle && self.progress.listed.load(Ordering::Relaxed) && self.finished(mode, next_due) {
                        break;
                    }
                    // Look again when a repo is queued or a worker ends (the run may be over),
                    // else at the next due time, and at least every 200 ms.
                    let wait = next_due.map(|due| due.saturating_sub(now_ms())).unwrap_or(200).clamp(10, 200);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                        Ok(()) = queued.changed() => {}
                        Some(_) = workers.join_next(), if !workers.is_empty() => {}
                    }
                }
            }
        }
        while workers.join_next().await.is_some() {}
        Ok(())
    }

    /// Whether a run in `mode` with nothing in flight, the crawl done and the next queued repo
    /// due at `next_due` has ended.
    fn finished(&self, mode: RunMode, next_due: Option<u64>) -> bool {
        match mode {
            RunMode::Forever => false,
            RunMode::UntilEmpty => next_due.is_none(),
            RunMode::UntilSettled => next_due.is_none() || self.only_retries_queued(),
        }
    }

    /// Whether every repo queued is a failed one waiting for its retry: none is pending (a
    /// rate-limited repo waits pending) or desynchronized.
    fn only_retries_queued(&self) -> bool {
        RepoStatus::QUEUED.into_iter().all(|status| self.store().repo_count(status) <= 0)
    }

    /// Takes the next due repo that is not in flight, if any.
    fn next_due_repo(&self) -> Result<Option<(String, RepoState)>, BackfillError> {
        let in_flight = self.in_flight.lock().expect("in flight");
        Ok(self.store().queue().take_due(now_ms(), 1, &in_flight)?.pop())
    }

    /// Backfills `did` on a task of `workers`, holding `permit` (a place among the repos in
    /// flight) until it ends.
    fn start_repo(
        self: &Arc<Self>,
        workers: &mut JoinSet<()>,
        did: String,
        state: RepoState,
        permit: OwnedSemaphorePermit,
    ) {
        self.in_flight.lock().expect("in flight").insert(did.clone());
        let me = self.clone();
        workers.spawn(async move {
            // Taken off the in-flight set however the task ends, a panic included,
            // so the run cannot wait forever on a repo nobody works on.
            let _in_flight = InFlight { backfill: me.clone(), did: did.clone() };
            me.backfill_repo(&did, state).await;
            drop(permit);
        });
    }

    /// (nothing in flight, when the next queued repo not in flight is due).
    fn queue_outlook(&self) -> Result<(bool, Option<u64>), BackfillError> {
        let in_flight = self.in_flight.lock().expect("in flight");
        let next = self.store().queue().next_due_ms(&in_flight)?;
        Ok((in_flight.is_empty(), next))
    }

    /// Waits while resident memory is over the cap, or (idle mode) live ingestion has a
    /// backlog; logs when a pause starts and ends.
    async fn wait_for_room(&self) {
        let mut paused_since = None;
        while !self.stopping() {
            let cap = self.memory_cap_mb.load(Ordering::Relaxed);
            let rss_mb = if cap > 0 { self.resident.bytes() >> 20 } else { 0 };
            let over = cap > 0 && rss_mb > cap;
            let busy =
                (self.config.use_idle && self.live_backlog.load(Ordering::Relaxed) > IDLE_BACKLOG) || self.is_paused();
            self.progress.memory_paused.store(over, Ordering::Relaxed);
            self.progress.idle_paused.store(busy && !over, Ordering::Relaxed);
            if !over && !busy {
                if let Some(since) = paused_since.map(|t: std::time::Instant| t.elapsed()) {
                    tracing::info!(paused_ms = since.as_millis() as u64, "backfill resumes");
                }
                return;
            }
            if paused_since.is_none() {
                paused_since = Some(std::time::Instant::now());
                match over {
                    true => tracing::warn!(
                        rss_mb,
                        cap_mb = cap,
                        "backfill paused: resident memory is over BACKFILL_MAX_MEMORY_MB; \
                         no new repo starts until it falls"
                    ),
                    false if self.is_paused() => tracing::info!("backfill paused by an operator"),
                    false => tracing::info!(
                        backlog = self.live_backlog.load(Ordering::Relaxed),
                        "backfill yields to live ingestion (BACKFILL_USE_IDLE)"
                    ),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs every listing the filter needs, logging what each found.
    async fn crawl_all(&self, done: &AtomicBool) {
        let crawler = Crawler::new(&self.relay).for_shard(self.shard);
        let filter = self.pipeline.filter().load();
        for listing in Listing::for_filter(&filter.filter) {
            match crawler.crawl(self.store(), &listing).await {
                Ok(s) => tracing::info!(
                    listing = listing.service(),
                    listed = s.listed,
                    queued = s.queued,
                    inactive = s.inactive,
                    "crawl finished"
                ),
                Err(e) => tracing::error!(
                    listing = listing.service(),
                    "crawl failed: {}; queued repos are still backfilled",
                    crate::error::chain(&e)
                ),
            }
        }
        done.store(true, Ordering::Relaxed);
    }

    /// The handle the server holds: queue, pause and resume, progress.
    pub fn control(self: &Arc<Self>) -> Control {
        Control(self.clone())
    }
}

/// What the server may do with a running backfill: queue repos, pause and resume it, and read
/// its progress. A handle of its own, so that nothing outside the backfill reaches its
/// internals (see [`Backfill::control`]).
#[derive(Clone)]
pub struct Control(Arc<Backfill>);

impl Control {
    /// Queues `dids` now, whatever their state (see [`Backfill::queue`]).
    pub fn queue(&self, dids: &[String]) -> Result<usize, QueueError> {
        self.0.queue(dids)
    }

    /// Pauses (or resumes) the backfill: while paused no new repo starts; repos in flight
    /// finish.
    pub fn set_paused(&self, paused: bool) {
        self.0.set_paused(paused)
    }

    /// Whether an operator paused the backfill.
    pub fn is_paused(&self) -> bool {
        self.0.is_paused()
    }

    /// Repos being backfilled now.
    pub fn in_flight(&self) -> u64 {
        self.0.progress.in_flight.load(Ordering::Relaxed)
    }

    /// Records walked since start.
    pub fn records_walked(&self) -> u64 {
        self.0.progress.records.load(Ordering::Relaxed)
    }

    /// PDS hosts their circuit breaker holds paused now.
    pub fn hosts_paused(&self) -> usize {
        self.0.fetcher.hosts.paused_hosts()
    }

    /// getRepo requests the hosts' circuit breakers refused since start.
    pub fn host_refusals(&self) -> u64 {
        self.0.fetcher.hosts.refused_requests()
    }

    /// Bytes the spooled downloads hold in the spool now.
    pub fn spool_bytes(&self) -> u64 {
        self.0.fetcher.spool_held_bytes()
    }

    /// The progress counters.
    pub fn progress(&self) -> &Progress {
        &self.0.progress
    }

    /// Repos done of those listed.
    pub fn listed(&self) -> Listed {
        listed(self.0.store())
    }

    /// The repos that failed in this run and have not recovered, by kind and reason.
    pub fn failure_summary(&self) -> Vec<FailureGroup> {
        self.0.failure_summary()
    }

    /// The `n` PDS hosts that failed most since they last answered.
    pub fn failing_hosts(&self, n: usize) -> Vec<FailingHost> {
        self.0.fetcher.hosts.failing(n)
    }

    /// Failed attempts since start, by kind.
    pub fn failed_attempts(&self) -> [(FailureKind, u64); 2] {
        let permanent = self.0.progress.permanent.load(Ordering::Relaxed);
        let transient = self.0.progress.failed.load(Ordering::Relaxed).saturating_sub(permanent);
        [(FailureKind::Transient, transient), (FailureKind::Permanent, permanent)]
    }
}
