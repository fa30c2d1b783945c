//! The HTTP server (axum) that custom appviews read from: the event stream, XRPC queries, the
//! admin API and operations endpoints. One file per XRPC method or endpoint family; each
//! contributes its routes to [`router`].
//!
//! Layout:
//! - `admin`: `/admin/*`, behind the bearer token.
//! - `health`: `/health`; `metrics`: `/metrics` (Prometheus).
//! - `status/`: the status page at `/`, and `/status.json` behind it and `sluice status`.
//! - `events`: `dev.sluice.subscribeEvents`, the cursor-backed event stream (websocket).
//! - `clients`: the caps on event stream clients (in all, and per address).
//! - `jetstream/`: `/subscribe`, the event stream in Jetstream v1's format (websocket).
//! - `xrpc/`: the XRPC queries, one method per file.
//!
//! Architecture invariant: only `server/` (and the shared `xrpc` helpers) knows HTTP and JSON
//! requests; it reads the store and asks the services, and never writes records itself.

mod admin;
mod clients;
mod events;
mod health;
mod jetstream;
pub mod metrics;
pub mod status;
mod xrpc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use clients::{ClientGuard, PeerAddr, StreamClients};

use crate::config::Config;
use crate::firehose::Firehose;
use crate::pipeline::Pipeline;
use crate::store::Store;

/// The project's XRPC namespace.
pub const NS: &str = "dev.sluice";

/// What the handlers share.
pub struct ServerState {
    /// The pipeline: the store and the filter in force.
    pub pipeline: Pipeline,
    /// The configuration in use.
    pub config: Config,
    /// The backfill's control handle, when this process runs one.
    pub backfill: Option<crate::backfill::Control>,
    /// Live ingestion, when this process runs it.
    pub firehose: Option<Arc<Firehose>>,
    /// The NATS sink, when this process runs it.
    pub sink: Option<Arc<crate::sink::NatsSink>>,
    /// When the server started.
    pub started: Instant,
    /// Cancelled at shutdown: long-lived streams end.
    pub stop: CancellationToken,
    /// Event stream clients connected now, and those refused.
    pub clients: StreamClients,
    /// Slots for the event streams' reads of the log (see [`ServerState::stream_read`]).
    pub stream_reads: tokio::sync::Semaphore,
    /// Replay batches read lately, shared between streams.
    pub(crate) replay_cache: events::ReplayCache,
    /// The admin bearer token; admin routes are off without one.
    pub admin_token: Option<String>,
    /// Serializes filter edits through the admin API.
    pub filter_edits: std::sync::Mutex<()>,
    /// The counters sampled for the status page's rates and charts.
    pub status_samples: status::history::Samples,
}

impl ServerState {
    /// A state over `pipeline` with no services attached; the admin token is read from the
    /// environment variable the config names.
    pub fn new(pipeline: Pipeline, config: Config) -> Self {
        let admin_token = std::env::var(&config.server.admin_token_env).ok().filter(|t| !t.is_empty());
        Self {
            pipeline,
            config,
            backfill: None,
            firehose: None,
            sink: None,
            started: Instant::now(),
            stop: CancellationToken::new(),
            clients: StreamClients::default(),
            stream_reads: tokio::sync::Semaphore::new(stream_read_slots()),
            replay_cache: Default::default(),
            admin_token,
            filter_edits: std::sync::Mutex::new(()),
            status_samples: Default::default(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        self.pipeline.store()
    }

    /// Runs `read`, an event stream's read of the log (rendered), on the blocking pool once a
    /// read slot is free. The slots (two per core) bound the threads that reads occupy,
    /// however many clients replay at once: with a thread per client (tokio's pool grows to
    /// 512), each thread's allocator kept the pages of the batches it had rendered, and 100
    /// replaying clients cost ~25 MB each.
    pub async fn stream_read<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let _slot = self.stream_reads.acquire().await.expect("the read slots are never closed");
        tokio::task::spawn_blocking(read).await
    }
}

/// Read slots for event streams: two per core.
fn stream_read_slots() -> usize {
    2 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Every route.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .merge(admin::routes(&state))
        .merge(health::routes())
        .merge(status::routes())
        .merge(metrics::routes())
        .merge(events::routes())
        .merge(jetstream::routes())
        .merge(xrpc::routes())
        .with_state(state)
}

/// Why `[server] listen` could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// It is not an address.
    #[error("[server] listen = {listen:?} is not an address")]
    Address { listen: String, source: std::net::AddrParseError },
    /// Binding it failed (in use, not allowed).
    #[error("binding {addr}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Binds `[server] listen`.
pub async fn bind(config: &Config) -> Result<TcpListener, BindError> {
    let listen = &config.server.listen;
    let addr: SocketAddr = listen.parse().map_err(|source| BindError::Address { listen: listen.clone(), source })?;
    TcpListener::bind(addr).await.map_err(|source| BindError::Bind { addr, source })
}

/// Serves on `listener` until the state's `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<ServerState>) -> std::io::Result<()> {
    let stop = state.stop.clone();
    tracing::info!(addr = %listener.local_addr()?, "serving");
    tokio::spawn(status::history::sample_every(state.clone()));
    // Each request knows its peer's address: stream clients are capped per address.
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
}

/// A server on a tokio runtime of its own (threads named `server`): queries never wait
/// behind backfill and ingestion tasks on the shared runtime's workers. Dropping it stops
/// its runtime.
pub struct DedicatedServer {
    runtime: Option<tokio::runtime::Runtime>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    addr: SocketAddr,
}

/// Serves on `listener` ([`serve`]) on a runtime of `threads` workers of its own.
pub fn serve_dedicated(
    listener: TcpListener,
    state: Arc<ServerState>,
    threads: usize,
) -> std::io::Result<DedicatedServer> {
    // A listener belongs to the runtime that made it: hand it over as a std socket.
    let addr = listener.local_addr()?;
    let listener = listener.into_std()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("server")
        .enable_all()
        .build()?;
    let task = runtime.spawn(async move { serve(TcpListener::from_std(listener)?, state).await });
    Ok(DedicatedServer { runtime: Some(runtime), task, addr })
}

impl DedicatedServer {
    /// The address it listens on (the port the system chose, for `listen = "...:0"`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the server stops (its state's `stop`).
    pub async fn join(mut self) -> std::io::Result<()> {
        (&mut self.task).await.map_err(std::io::Error::other)?
    }
}

impl Drop for DedicatedServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Allowed from async code, unlike dropping the runtime.
            runtime.shutdown_background();
        }
    }
}
