//! The whole service as `sluice run` (and `sluice backfill`) runs it: the backfill, live
//! ingestion, the HTTP server and event retention started together over one [`Sluice`],
//! wired to each other (held commits drained as backfills commit, the idle gauge, the
//! server's view of both), and stopped together: by [`Service::stopper`], or by a storage
//! failure in any of them.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backfill::{Backfill, BackfillError, QueueError, RunMode};
use crate::error::chain;
use crate::firehose::{Firehose, FirehoseError};
use crate::server::{BindError, ServerState};
use crate::store::StoreError;
use crate::{Config, Sluice};

/// Why the service did not start, or how it ended. The backfill's and live ingestion's storage
/// failures name their cause (`backfill stopped: storage full: ...`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The backfill stopped on a failure.
    #[error(transparent)]
    Backfill(#[from] BackfillError),
    /// Live ingestion did not start, or stopped on a failure.
    #[error(transparent)]
    Firehose(#[from] FirehoseError),
    /// Storage failed while starting.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `--did` named a repo that cannot be queued.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// `[server] listen` could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A thread or runtime could not be started.
    #[error("starting {what}")]
    Start { what: &'static str, source: std::io::Error },
    /// The server ended on an error.
    #[error("the server failed")]
    Server(#[source] std::io::Error),
    /// A task ended in a panic.
    #[error("{what} did not finish")]
    Task { what: &'static str, source: tokio::task::JoinError },
    /// The NATS sink's thread panicked.
    #[error("the NATS sink's thread panicked")]
    SinkPanicked,
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// Backfill only these repos (queued again whatever their state), with no crawl.
    pub dids: Vec<String>,
    /// List the relay's repos again from the start.
    pub recrawl: bool,
}

/// Live ingestion wired to `backfill`: the same identity resolver, the backlog that idle-mode
/// backfill yields to, and each repo's held commits drained as soon as its backfill commits.
/// The one place that coupling is made; [`Service`] and the tests that run both use it.
pub fn firehose_beside(sluice: &Sluice, config: &Config, backfill: &Backfill) -> Result<Arc<Firehose>, FirehoseError> {
    let firehose =
        Firehose::new(sluice.pipeline().clone(), backfill.resolver().clone(), config, backfill.live_backlog().clone())?;
    let drains = firehose.clone();
    backfill.after_sync(move |did| drains.request_drain(did));
    Ok(firehose)
}

/// How long a run that ends with its backfill waits for the NATS sink to catch up.
const SINK_DRAIN: Duration = Duration::from_secs(60);

/// The running services.
pub struct Service {
    /// The backfill (it decides itself whether it runs: `BACKFILL_DAYS`, `WORKER_ID`).
    pub backfill: Arc<Backfill>,
    /// Live ingestion, when `[firehose] enabled` and the mode is `Forever`.
    pub firehose: Option<Arc<Firehose>>,
    stop: CancellationToken,
    live: Option<JoinHandle<Result<(), FirehoseError>>>,
    server: Option<crate::server::DedicatedServer>,
    retention: Option<JoinHandle<()>>,
    handle_checks: Option<JoinHandle<()>>,
    /// The NATS sink, when `[sink.nats]` is set.
    pub sink: Option<Arc<crate::sink::NatsSink>>,
    sink_task: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    /// Starts live ingestion and the server (in `Forever` mode, as configured) beside a
    /// backfill that [`Service::run`] then drives.
    pub async fn start(
        sluice: &Sluice,
        config: &Config,
        mode: RunMode,
        opts: &ServiceOptions,
    ) -> Result<Service, ServiceError> {
        let backfill = Backfill::new(sluice.pipeline().clone(), config);
        if opts.recrawl {
            sluice.store().cursors().reset_crawl()?;
        }
        if !opts.dids.is_empty() {
            backfill.queue(&opts.dids)?;
        }
        let forever = mode == RunMode::Forever;
        let mut service = Service {
            backfill,
            firehose: None,
            stop: CancellationToken::new(),
            live: None,
            server: None,
            retention: None,
            handle_checks: None,
            sink: None,
            sink_task: None,
        };
        if forever && config.firehose.enabled {
            service.start_firehose(sluice, config)?;
        }
        if let Some(nats) = &config.sink.nats {
            let sink = crate::sink::NatsSink::new(sluice.store().clone(), nats.clone(), config.cluster.node_name())?;
            service.sink_task = Some(
                crate::sink::spawn(sink.clone(), service.stop.clone())
                    .map_err(|source| ServiceError::Start { what: "the NATS sink", source })?,
            );
            service.sink = Some(sink);
        }
        if forever && config.server.enabled {
            service.start_server(sluice, config).await?;
        }
        if forever && config.network.handle_checks_per_sec > 0 {
            service.start_handle_checks(sluice, config)?;
        }
        if forever && let Some(age) = config.events.retention() {
            service.start_retention(sluice, age, Duration::from_secs(config.events.retention_check_secs));
        }
        Ok(service)
    }

    /// Every `every`, removes the events older than `age` from the log (`[events]
    /// retention_hours`). A failed pass is logged and tried again at the next one.
    fn start_retention(&mut self, sluice: &Sluice, age: Duration, every: Duration) {
        let (store, stop) = (sluice.store().clone(), self.stop.clone());
        self.retention = Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let store = store.clone();
                match tokio::task::spawn_blocking(move || store.log().trim_older_than(age)).await {
                    Ok(Ok(t)) if t.pages > 0 => tracing::info!(
                        pages = t.pages,
                        events = t.events,
                        oldest_left = t.oldest_left,
                        "removed events past the retention"
                    ),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(
                            error = %chain(&e),
                            "removing events past the retention failed; trying again at the next pass"
                        )
                    }
                    Err(e) => tracing::warn!(error = %chain(&e), "the retention pass did not finish"),
                }
            }
        }));
    }

    /// The handle checker (see `handles.rs`), sharing the backfill's identity cache.
    fn start_handle_checks(&mut self, sluice: &Sluice, config: &Config) -> Result<(), ServiceError> {
        let resolver = match crate::handles::HandleResolver::new(
            config.network.handle_resolver.as_deref(),
            Duration::from_secs(10),
            &config.network.policy(),
        ) {
            Ok(resolver) => resolver,
            Err(e) => {
                tracing::error!(
                    error = %chain(&e),
                    "handles cannot be checked (set [network] handle_resolver); no handle is taken as its repo's own"
                );
                return Ok(());
            }
        };
        let checker = Arc::new(crate::handles::HandleChecker::new(
            sluice.store().clone(),
            self.backfill.resolver().clone(),
            resolver,
            config.network.handle_checks_per_sec,
        ));
        self.handle_checks = Some(tokio::spawn(checker.run(self.stop.clone())));
        Ok(())
    }

    /// Live ingestion beside the backfill: held commits are drained as repos finish their
    /// backfill, and a storage failure stops everything.
    fn start_firehose(&mut self, sluice: &Sluice, config: &Config) -> Result<(), ServiceError> {
        let firehose = firehose_beside(sluice, config, &self.backfill)?;
        let (backfill, stop, live) = (self.backfill.clone(), self.stop.clone(), firehose.clone());
        self.live = Some(tokio::spawn(async move {
            let result = live.run(stop.clone()).await;
            if let Err(e) = &result {
                tracing::error!(error = %chain(e), "live ingestion stopped; stopping everything");
                backfill.stop();
                stop.cancel();
            }
            result
        }));
        self.firehose = Some(firehose);
        Ok(())
    }

    /// Binds `[server] listen` and serves until the service stops.
    async fn start_server(&mut self, sluice: &Sluice, config: &Config) -> Result<(), ServiceError> {
        let listener = crate::server::bind(config).await?;
        let mut state = ServerState::new(sluice.pipeline().clone(), config.clone());
        (state.backfill, state.firehose, state.stop) =
            (Some(self.backfill.control()), self.firehose.clone(), self.stop.clone());
        state.sink = self.sink.clone();
        let server = crate::server::serve_dedicated(listener, Arc::new(state), crate::process::cores())
            .map_err(|source| ServiceError::Start { what: "the server", source })?;
        self.server = Some(server);
        Ok(())
    }

    /// The address the server listens on, when it runs (with `[server] listen` on port 0,
    /// the port the system chose).
    pub fn server_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().map(|s| s.local_addr())
    }

    /// A handle that stops everything: backfill fetches in flight are cancelled (their repos
    /// stay queued), walks stop before their next batch, and queued live frames finish first.
    pub fn stopper(&self) -> impl Fn() + Send + Sync + 'static {
        let (backfill, stop) = (self.backfill.clone(), self.stop.clone());
        move || {
            backfill.stop();
            stop.cancel();
        }
    }

    /// Lets the NATS sink publish what the backfill wrote before a run that ends with it
    /// stops; gives up after [`SINK_DRAIN`] (NATS away), leaving the rest to the next run.
    async fn drain_sink(&self) {
        let Some(sink) = &self.sink else { return };
        tracing::info!(behind = sink.behind(), "the backfill is done; the NATS sink publishes what is left");
        let deadline = tokio::time::Instant::now() + SINK_DRAIN;
        while sink.behind() > 0 && !self.stop.is_cancelled() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    behind = sink.behind(),
                    "the NATS sink did not catch up; the next run publishes the rest"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs until done: `UntilEmpty` ends with the backfill; `Forever` goes on serving and
    /// following the firehose after it, until stopped. Returns the first failure.
    pub async fn run(mut self, mode: RunMode, crawl: bool) -> Result<(), ServiceError> {
        let result = self.backfill.run(mode, crawl).await;
        match mode == RunMode::Forever && result.is_ok() {
            true => self.stop.cancelled().await,
            false => {
                self.drain_sink().await;
                self.stop.cancel();
            }
        }
        let task = |what: &'static str| move |source| ServiceError::Task { what, source };
        let live = match self.live.take() {
            Some(live) => live.await.map_err(task("live ingestion"))?,
            None => Ok(()),
        };
        if let Some(server) = self.server.take() {
            server.join().await.map_err(ServiceError::Server)?;
        }
        for (what, handle) in [("retention", self.retention.take()), ("the handle checker", self.handle_checks.take())]
        {
            if let Some(handle) = handle {
                handle.await.map_err(task(what))?;
            }
        }
        if let Some(thread) = self.sink_task.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(task("the NATS sink"))?
                .map_err(|_| ServiceError::SinkPanicked)?;
        }
        result?;
        Ok(live?)
    }
}
