//! The NATS JetStream sink: every event of the log, in id order, published as the JSON
//! `subscribeEvents` sends, to `<prefix>.record.<collection>.<action>`, `<prefix>.identity` or
//! `<prefix>.account`, with `Nats-Msg-Id` = `<node>:<event id>`.
//!
//! Exactly once, and the log stays the truth: the published position is the `nats` cursor,
//! saved only after JetStream acked every event up to it. After a crash the sink publishes
//! again from the cursor, and the stream drops what it already has by message id (within its
//! duplicate window). While NATS is down or slow, indexing goes on and the sink catches up from
//! the log, which keeps every event the sink has not published
//! ([`crate::store::EventLog::hold_from`]).
//!
//! A stream that is missing is created (file storage, the limits of `[sink.nats]`); one that
//! exists is used as it is, never changed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::NatsSinkConfig;
use crate::process::Priority;
use crate::store::{Store, StoredEvent};

/// The cursor of the last event published and acked.
pub const CURSOR: &str = "nats";

/// The sink and what it reports (`/health`, `/metrics`).
pub struct NatsSink {
    store: Arc<Store>,
    config: NatsSinkConfig,
    node: String,
    /// The id of the last event acked by the stream.
    published: AtomicU64,
    /// Events the stream dropped as duplicates (republished after a crash).
    duplicates: AtomicU64,
    /// Batches sent: runs of events read from the log in one go and written out together.
    batches: AtomicU64,
    /// Whether the last publish went through.
    connected: AtomicBool,
    /// The last failure, for `/health`.
    last_error: std::sync::Mutex<Option<String>>,
}

/// Why a pass of publishing stopped.
type Failure = String;

impl NatsSink {
    /// A sink publishing `store`'s log as node `node`, from the saved `nats` cursor on.
    pub fn new(store: Arc<Store>, config: NatsSinkConfig, node: String) -> Result<Arc<Self>, crate::store::StoreError> {
        let published = store.cursors().get(CURSOR)?.and_then(|c| c.parse().ok()).unwrap_or(0);
        store.log().hold_from(published + 1);
        Ok(Arc::new(Self {
            store,
            config,
            node,
            published: AtomicU64::new(published),
            duplicates: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            last_error: std::sync::Mutex::default(),
        }))
    }

    /// The id of the last event the stream acked (0: none yet).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Events in the log not yet published.
    pub fn behind(&self) -> u64 {
        self.store.next_event_id().saturating_sub(1).saturating_sub(self.published())
    }

    /// Republished events the stream dropped as duplicates.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Batches sent so far: events published over batches is how well publishing is batched
    /// (a stream of small commits the sink keeps up with makes small ones; see `linger_ms`).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Whether the last publish (or connection) succeeded.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The last failure, when the sink is failing.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("sink error").clone()
    }

    /// Publishes until `stop`: connects (again and again while NATS is away), makes sure the
    /// stream exists, then follows the log.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(250);
        let from = self.published();
        let stopped = || {
            tracing::info!(
                published = self.published(),
                events = self.published() - from,
                batches = self.batches(),
                behind = self.behind(),
                "the NATS sink stopped"
            )
        };
        while !stop.is_cancelled() {
            match self.session(&stop).await {
                Ok(()) => return stopped(),
                Err(failure) => {
                    let was_publishing = self.connected.swap(false, Ordering::Relaxed);
                    if was_publishing || self.last_error().is_none() {
                        tracing::warn!(
                            %failure,
                            behind = self.behind(),
                            "NATS sink failing; indexing goes on and the sink catches up from the log"
                        );
                    }
                    if was_publishing {
                        backoff = Duration::from_millis(250);
                    }
                    *self.last_error.lock().expect("sink error") = Some(failure);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        stopped();
    }

    /// One connection: publishes until `stop` or a failure.
    async fn session(&self, stop: &CancellationToken) -> Result<(), Failure> {
        let client = self.connect().await?;
        let js = jetstream::new(client);
        self.ensure_stream(&js).await?;
        self.follow(&js, stop).await
    }

    /// Publishes kept unacked at most (`in_flight`, at least 1).
    fn in_flight(&self) -> usize {
        self.config.in_flight.max(1)
    }

    /// Publishes the log from the cursor on, keeping up to `in_flight` publishes unacked at any
    /// time (a sliding window: the next events go out while the oldest acks come back), and
    /// moves the cursor as acks arrive in order.
    async fn follow(&self, js: &jetstream::Context, stop: &CancellationToken) -> Result<(), Failure> {
        let mut head = self.store.watch_events();
        let in_flight = self.in_flight();
        let mut window: VecDeque<(u64, jetstream::context::PublishAckFuture)> = VecDeque::with_capacity(in_flight);
        let mut sent = self.published();
        loop {
            sent = self.refill(js, &mut window, sent).await?;
            let Some((id, ack)) = window.pop_front() else {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = head.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            };
            match ack.await {
                Ok(ack) if ack.duplicate => {
                    if self.duplicates.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::info!(
                            "republished events the stream already had are dropped (a restart after a crash)"
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(format!("event {id} not acked: {e}")),
            }
            // The cursor moves every 256 acks and whenever the window empties.
            if window.is_empty() || id % 256 == 0 {
                self.advance(id)?;
                self.connected.store(true, Ordering::Relaxed);
                *self.last_error.lock().expect("sink error") = None;
            }
            if stop.is_cancelled() {
                self.advance(id)?;
                return Ok(());
            }
        }
    }

    /// Publishes the events after `sent` into the free part of `window` once half of it is
    /// free and as many new events wait (or the window is empty): each read then takes a good
    /// part of a page of the log, instead of decoding a page for the few events committed
    /// since the last read. With the window empty and fewer than half of it waiting, it first
    /// lingers (`linger_ms`) for more, so that a stream of small commits still goes out in
    /// batches. Returns the last id sent.
    async fn refill(
        &self,
        js: &jetstream::Context,
        window: &mut VecDeque<(u64, jetstream::context::PublishAckFuture)>,
        mut sent: u64,
    ) -> Result<u64, Failure> {
        let in_flight = self.in_flight();
        let waiting = self.store.next_event_id().saturating_sub(sent + 1);
        let room = in_flight - window.len();
        if waiting == 0 || !(window.is_empty() || (room >= in_flight / 2 && waiting >= room as u64)) {
            return Ok(sent);
        }
        if window.is_empty() && waiting < (in_flight / 2) as u64 && self.config.linger_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.config.linger_ms)).await;
        }
        let messages = self.read(sent + 1, room).await?;
        self.batches.fetch_add(u64::from(!messages.is_empty()), Ordering::Relaxed);
        for (id, subject, payload) in messages {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("{}:{id}", self.node).as_str());
            let ack = js
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| format!("publishing event {id}: {e}"))?;
            window.push_back((id, ack));
            sent = id;
        }
        Ok(sent)
    }

    /// Up to `limit` messages of the log from id `from` on, read on the blocking pool.
    async fn read(&self, from: u64, limit: usize) -> Result<Vec<(u64, String, Bytes)>, Failure> {
        let (store, prefix) = (self.store.clone(), self.config.subject_prefix.clone());
        tokio::task::spawn_blocking(move || messages_from(&store, &prefix, from, limit))
            .await
            .map_err(|e| format!("reading the log: {e}"))?
            .map_err(|e| format!("reading the log: {e}"))
    }

    async fn connect(&self) -> Result<async_nats::Client, Failure> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let c = &self.config;
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("sluice {}", self.node))
            .connection_timeout(Duration::from_secs(5));
        if let Some(path) = env(&c.creds_file_env) {
            options =
                options.credentials_file(&path).await.map_err(|e| format!("reading NATS credentials {path}: {e}"))?;
        } else if let (Some(user), Some(password)) = (env(&c.user_env), env(&c.password_env)) {
            options = options.user_and_password(user, password);
        } else if let Some(token) = env(&c.token_env) {
            options = options.token(token);
        }
        options.connect(c.url.as_str()).await.map_err(|e| format!("connecting to NATS at {}: {e}", c.url))
    }

    /// Creates the stream when it is missing; uses an existing one as it is.
    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<(), Failure> {
        let c = &self.config;
        let subjects = format!("{}.>", c.subject_prefix);
        match js.get_stream(&c.stream).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(|e| format!("reading stream {}: {e}", c.stream))?;
                if !info.config.subjects.iter().any(|s| s == &subjects || s == ">") {
                    tracing::warn!(
                        stream = %c.stream,
                        subjects = ?info.config.subjects,
                        want = %subjects,
                        "the existing stream may not take sluice's subjects; it is left as it is"
                    );
                }
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                let config = stream::Config {
                    name: c.stream.clone(),
                    subjects: vec![subjects],
                    storage: stream::StorageType::File,
                    max_age: Duration::from_secs_f64(c.max_age_hours.max(0.0) * 3600.0),
                    max_bytes: c.max_bytes,
                    num_replicas: c.replicas.max(1),
                    duplicate_window: Duration::from_secs(c.duplicate_window_secs.max(1)),
                    ..Default::default()
                };
                js.create_stream(config).await.map_err(|e| format!("creating stream {}: {e}", c.stream))?;
                tracing::info!(stream = %c.stream, "created the NATS stream");
                Ok(())
            }
            Err(e) => Err(format!("looking up stream {}: {e}", c.stream)),
        }
    }

    /// Saves `acked` as the published position and lets retention have what is before it.
    fn advance(&self, acked: u64) -> Result<(), Failure> {
        if acked <= self.published() {
            return Ok(());
        }
        self.store.cursors().save(CURSOR, &acked.to_string()).map_err(|e| format!("saving the nats cursor: {e}"))?;
        self.published.store(acked, Ordering::Relaxed);
        self.store.log().hold_from(acked + 1);
        Ok(())
    }
}

/// Runs `sink` until `stop` on a thread of its own at a lower priority than the backfill's
/// walkers ([`Priority::Sink`]), with a runtime of its own: indexing comes first, and the sink
/// publishes with the CPU left over (the log keeps what it has not published yet).
pub fn spawn(sink: Arc<NatsSink>, stop: CancellationToken) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .on_thread_start(|| Priority::Sink.apply_to_this_thread())
        .build()?;
    std::thread::Builder::new().name("nats-sink".into()).spawn(move || {
        Priority::Sink.apply_to_this_thread();
        runtime.block_on(sink.run(stop));
    })
}

/// The subject of an event under `prefix`.
pub fn subject(prefix: &str, event: &StoredEvent) -> String {
    match event {
        StoredEvent::Record(r) => format!("{prefix}.record.{}.{}", r.collection, r.action.as_str()),
        StoredEvent::Identity(_) => format!("{prefix}.identity"),
        StoredEvent::Account(_) => format!("{prefix}.account"),
    }
}

/// Up to `limit` events from id `from` on as (id, subject under `prefix`, JSON payload): what
/// the sink reads and renders for each batch (the sink bench measures it alone). Events
/// trimmed away before the sink saw them are skipped (the first id is then past `from`).
pub fn messages_from(
    store: &Store,
    prefix: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<(u64, String, Bytes)>, crate::store::StoreError> {
    let events = store.log().from(from, limit)?;
    if let Some(&(first, _)) = events.first()
        && first > from
    {
        tracing::warn!(from, first, "events were removed from the log before the NATS sink published them");
    }
    events
        .into_iter()
        .map(|(id, event)| {
            Ok((id, subject(prefix, &event), Bytes::from(crate::wire::event_json_bytes(store, id, &event)?)))
        })
        .collect()
}
