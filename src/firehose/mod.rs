//! Live ingestion from `com.atproto.sync.subscribeRepos` (a relay's, or a PDS's).
//!
//! ```text
//! socket (client) -> frames -> decode + route (one thread) -> shards (one per core, by DID)
//!                                                             -> Live: check, verify, pipeline
//! ```
//! - [`client`]: the websocket, reconnects with backoff, resumes from the cursor.
//! - [`frame`]: frame decoding (error frames included); [`ops`]: a commit's ops as pipeline ops;
//!   [`chain`]: the sync 1.1 checks against the stored state.
//! - [`shards`]: per-DID ordering, parallel across DIDs; held commits drained in rev order.
//! - [`live`] and `status`: what each frame leads to (apply, hold, queue a backfill, skip,
//!   refuse), and the account and identity rules.
//! - [`cursor`]: which seq is safe to save; `position` ([`StreamPosition`]): where the stream
//!   stands, what is saved and where a connection resumes; `gap`: where to resume when no seq is
//!   known yet.
//!
//! Checkpoint contract: the `firehose` cursor is saved every second and at shutdown, and is
//! never ahead of a frame that is not finished (applied, held in fjall, skipped or refused):
//! every frame at or below it has its effects committed, and fjall's journal is written in
//! order, so a saved cursor implies the batches it covers. After `kill -9` the stream resumes
//! from the cursor; frames applied after it come again and are skipped as stale (their rev is
//! at or below the stored one), so no record event is lost or written twice. Before the first
//! frame there is no seq to save; `gap` covers that time instead.
//!
//! Architecture invariant: the socket task does no CPU work beyond moving bytes; decoding,
//! verification and the pipeline run on the router and shard threads (`gap`'s probes, short
//! connections of their own, each decode the one frame they read).

pub mod chain;
pub mod client;
pub mod cursor;
pub mod frame;
mod fuzz;
#[doc(hidden)]
pub mod gap;
pub mod live;
pub mod ops;
mod position;
pub mod shards;
mod status;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use frame::{Frame, FrameError, decode_frame};
pub use fuzz::fuzz_frame;
pub use live::{Handled, Live, LiveError, LiveOptions};

use crate::config::Config;
use crate::error::chain;
use crate::identity::Resolver;
use crate::pipeline::Pipeline;
use crate::store::{StoreError, now_us};
use shards::Shards;

pub use position::{CURSOR, SINCE_CURSOR, StreamPosition};

/// Why live ingestion stopped.
#[derive(Debug, thiserror::Error)]
pub enum FirehoseError {
    /// The configured URL is unusable.
    #[error("firehose")]
    Config(#[from] client::UrlError),
    /// Storage failed (the first failure, which names its cause): what was applied is saved.
    #[error("firehose stopped")]
    Storage(#[from] StoreError),
    /// A shard thread could not be waited for (it panicked).
    #[error("firehose stopped: the shard threads did not finish")]
    Shards(#[source] tokio::task::JoinError),
}

impl From<LiveError> for FirehoseError {
    fn from(e: LiveError) -> Self {
        FirehoseError::Storage(e.0)
    }
}

/// The live ingestion service.
pub struct Firehose {
    live: Arc<Live>,
    /// Where the stream stands, and what of it is saved.
    position: StreamPosition,
    shards: Mutex<Option<Shards>>,
    base_url: String,
    max_backoff: Duration,
    /// Frames refused as undecodable.
    malformed: AtomicU64,
    /// Paused by an operator: frames wait (and the socket with them) until resumed.
    paused: AtomicBool,
    /// Set once `run` is shutting down.
    closing: AtomicBool,
    /// Connections made.
    connections: AtomicU64,
    /// True while a connection is open.
    connected: AtomicBool,
    /// Why the latest connection ended (none before the first ended).
    last_drop: Mutex<Option<String>>,
    /// The repos this node indexes; other repos' frames are dropped on arrival.
    shard: crate::cluster::Shard,
    /// Frames of other shards' repos dropped.
    other_shards: AtomicU64,
    liveness: client::Liveness,
}

impl Firehose {
    /// Sets up live ingestion through `pipeline` (shards started, held commits of an earlier run
    /// queued for draining); `backlog` is the gauge `BACKFILL_USE_IDLE` watches.
    pub fn new(
        pipeline: Pipeline,
        resolver: Arc<Resolver>,
        config: &Config,
        backlog: Arc<AtomicU64>,
    ) -> Result<Arc<Self>, FirehoseError> {
        let base_url = config.firehose.url.clone().unwrap_or_else(|| config.network.relay.clone());
        client::subscribe_url(&base_url, None)?;
        let position = StreamPosition::load(pipeline.store().clone())?;
        let opts = LiveOptions { backfill: config.backfill.enabled(), limits: config.limits.car_limits() };
        let live = Arc::new(Live::new(pipeline, resolver, tokio::runtime::Handle::current(), opts));
        let n = match config.firehose.shards {
            0 => crate::process::cores(),
            n => n,
        };
        let shards = Shards::start(live.clone(), position.tracker().clone(), n, config.firehose.queue, backlog)?;
        Ok(Arc::new(Self {
            live,
            position,
            shards: Mutex::new(Some(shards)),
            base_url,
            max_backoff: Duration::from_secs(config.firehose.max_reconnect_secs.max(1)),
            malformed: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            last_drop: Mutex::new(None),
            shard: config.cluster.shard,
            other_shards: AtomicU64::new(0),
            liveness: client::Liveness {
                ping_interval: Duration::from_millis(config.firehose.ping_interval_ms.max(1)),
                pong_timeout: Duration::from_millis(config.firehose.pong_timeout_ms.max(1)),
            },
        }))
    }

    /// The applier (its metrics, and the store through its pipeline).
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// The highest seq with every frame at or below it finished.
    pub fn safe_cursor(&self) -> i64 {
        self.position.safe()
    }

    /// Saves the safe cursor now, as `run` does every second: for tests that feed frames
    /// through [`Firehose::ingest`] without a connection.
    #[doc(hidden)]
    pub fn save_cursor(&self) -> Result<(), StoreError> {
        self.position.save()
    }

    /// Frames dispatched and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.position.in_flight()
    }

    /// Frames refused as undecodable.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Frames of repos other shards own, dropped on arrival.
    pub fn other_shards(&self) -> u64 {
        self.other_shards.load(Ordering::Relaxed)
    }

    /// Connections made so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether a connection to the relay is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Why the latest connection ended, once one has.
    pub fn last_drop(&self) -> Option<String> {
        self.last_drop.lock().expect("last drop").clone()
    }

    /// Pauses (or resumes) ingestion: while paused no frame is applied, reading the socket
    /// stops once the queue is full (the relay may then drop the connection; the cursor
    /// resumes it).
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Whether an operator paused ingestion.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Asks for `did`'s held commits to be applied (its backfill just committed).
    pub fn request_drain(&self, did: &str) {
        if let Some(shards) = self.shards.lock().expect("shards").as_ref() {
            shards.request_drain(did);
        }
    }

    /// Decodes one frame and hands it to its repo's shard, waiting while that shard is full:
    /// what the socket's frames go through. Call it from a thread that may block.
    pub fn ingest(&self, raw: Bytes) {
        let frame = match decode_frame(&raw) {
            Ok(frame) => frame,
            Err(e) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %chain(&e), "firehose frame refused");
                return;
            }
        };
        let did = match &frame {
            Frame::Commit(c) => c.repo.to_string(),
            Frame::Sync(s) => s.did.to_string(),
            Frame::Identity(i) => i.did.to_string(),
            Frame::Account(a) => a.did.to_string(),
            Frame::Info(info) => {
                return tracing::warn!(
                    name = %info.name.as_str(),
                    message = ?info.message,
                    "firehose info (an outdated cursor means events were missed; \
                     prevData checks resync what they touched)"
                );
            }
            Frame::Error { error, message } => {
                if error == "FutureCursor" {
                    self.position.cursor_in_the_future();
                }
                return tracing::warn!(%error, ?message, "firehose error frame");
            }
            Frame::Unknown { kind } => return tracing::debug!(%kind, "firehose message of an unknown type; skipped"),
        };
        if let Some(seq) = frame.seq() {
            self.position.arrived(seq);
        }
        if !self.shard.owns(&did) {
            // Another node's repo: dropped before any signature check or block read.
            self.other_shards.fetch_add(1, Ordering::Relaxed);
            if let Some(seq) = frame.seq() {
                self.position.tracker().dispatched(seq);
                self.position.tracker().finished(seq);
            }
            return;
        }
        if let Some(shards) = self.shards.lock().expect("shards").as_ref() {
            shards.dispatch(frame.seq(), &did, frame, raw);
        }
    }

    /// Follows the firehose until `stop`: reconnects with backoff, saves the cursor every
    /// second, and at the end lets the shards finish and saves the final cursor.
    pub async fn run(self: &Arc<Self>, stop: CancellationToken) -> Result<(), FirehoseError> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(256);
        let me = self.clone();
        let router = std::thread::Builder::new()
            .name("firehose-router".into())
            .spawn(move || {
                while let Some(raw) = rx.blocking_recv() {
                    while me.is_paused() && !me.fatal_or_closed() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    me.ingest(raw);
                }
            })
            .expect("spawning the firehose router");
        let saver = tokio::spawn(self.clone().save_every_second(stop.clone()));
        let result = self.connect_loop(&tx, &stop).await;
        self.closing.store(true, Ordering::Relaxed);
        drop(tx);
        let _ = tokio::task::spawn_blocking(move || router.join()).await;
        stop.cancel();
        let _ = saver.await;
        let shards = self.shards.lock().expect("shards").take();
        let fatal = match shards {
            Some(shards) => {
                tokio::task::spawn_blocking(move || shards.finish()).await.map_err(FirehoseError::Shards)?
            }
            None => None,
        };
        let saved = self.position.save();
        // The first storage failure, not what the final save (refused after it) says.
        if let Some(first) = fatal {
            return Err(first.into());
        }
        result?;
        Ok(saved?)
    }

    async fn connect_loop(&self, tx: &mpsc::Sender<Bytes>, stop: &CancellationToken) -> Result<(), FirehoseError> {
        let mut backoff = Duration::from_secs(1);
        while !stop.is_cancelled() {
            if self.failed() {
                // `run` returns the shards' storage failure once they finished.
                return Ok(());
            }
            if let Some(since) = self.position.gap_since() {
                self.look_back(since, stop).await;
            }
            let opened_us = now_us();
            let cursor = self.position.connecting(opened_us);
            let url = client::subscribe_url(&self.base_url, cursor)?;
            self.connections.fetch_add(1, Ordering::Relaxed);
            match client::read_connection(&url, tx, stop, self.liveness, &self.connected).await {
                client::Ended::Stopped => break,
                client::Ended::Dropped { reason, healthy } => {
                    if healthy {
                        backoff = Duration::from_secs(1);
                    }
                    self.position.dropped(opened_us);
                    *self.last_drop.lock().expect("last drop") = Some(chain(&reason).to_string());
                    tracing::warn!(
                        reason = %chain(&reason),
                        retry_in_s = backoff.as_secs(),
                        "firehose connection lost; reconnecting"
                    );
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
        Ok(())
    }

    /// Finds where the stream stood at `since` and resumes from there (see `gap`). When the
    /// search fails, the connection goes live and a later commit of each repo touched in the
    /// gap finds its chain broken and resyncs it.
    async fn look_back(&self, since: u64, stop: &CancellationToken) {
        match gap::resume_point(&self.base_url, since, stop).await {
            Ok(from) => {
                tracing::info!(resume_after = from, "firehose had no position yet: resuming from before the gap");
                self.position.looked_back_to(from);
            }
            Err(e) => {
                tracing::warn!(
                    reason = %chain(&e),
                    "finding the firehose position before a gap failed; going live \
                     (commits missed meanwhile are resynced when their repos next commit)"
                )
            }
        }
    }

    /// Whether the service is failing or shutting down (a paused router must not hold up
    /// the shutdown).
    fn fatal_or_closed(&self) -> bool {
        self.failed() || self.closing.load(Ordering::Relaxed)
    }

    /// Whether a shard stopped on a storage failure.
    fn failed(&self) -> bool {
        self.shards.lock().expect("shards").as_ref().is_some_and(Shards::failed)
    }

    /// Saves the cursor every second until `stop`; stops the run (cancels `stop`, as `run`
    /// does when it ends) once a shard stopped on a storage failure, which would otherwise
    /// wait for the connection to drop.
    async fn save_every_second(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !stop.is_cancelled() {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.failed() {
                return stop.cancel();
            }
            if let Err(e) = self.position.save() {
                tracing::error!(error = %chain(&e), "saving the firehose cursor failed");
            }
        }
    }
}
