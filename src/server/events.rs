//! `GET /xrpc/dev.sluice.subscribeEvents?cursor=N` (websocket): the event log, then live.
//!
//! Each event is one text message in the JSON shape of DESIGN.md. `cursor` is the last id the
//! client has: the stream starts at `cursor + 1` (`0` replays everything; without a cursor it
//! starts live). Every event is read from the log by id, so the switch from replay to live has
//! no gap and no duplicate, and a slow client never slows ingestion: once it has caught up, a
//! client that falls more than `[server] max_lag` events behind is sent an error message
//! (`{"error": "ConsumerTooSlow", ...}`) and closed, and resumes with its last id. A cursor
//! older than the log's oldest event (`[events] retention_hours` removed the ones after it)
//! gets `{"info": "OutdatedCursor", ...}`, then the events from the oldest left. During a
//! replay the next batch is read and rendered on the blocking pool while one is sent, and no
//! more: a subscriber holds two batches of at most [`BATCH_BYTES`] each, however far behind it
//! is. A send that takes over `send_timeout_secs` closes the stream, in replay as live.
//!
//! Acked mode (`consumer=NAME`): the client sends `{"ack": ID}` (everything up to ID is done);
//! the server saves it as the cursor `consumer/NAME`, starts there when the client reconnects
//! without a cursor, and sends again from the last ack when no ack came for `ack_timeout_secs`
//! (at least once).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;

use super::{ClientGuard, PeerAddr, ServerState};
use crate::xrpc::{Params, XrpcError};

/// Events read from the log per step, at most.
const BATCH: usize = 256;

/// Rendered bytes per step, at most (past it the step ends early, at an event boundary): with
/// one step being sent and one read ahead, a subscriber holds about twice this, however far
/// behind it is and however large the log.
const BATCH_BYTES: usize = 256 << 10;

pub(super) fn routes() -> Router<Arc<ServerState>> {
    Router::new().route(&format!("/xrpc/{}.subscribeEvents", super::NS), get(subscribe))
}

/// Where a stream starts and whose acks it keeps.
struct Start {
    /// The last id the client has.
    after: u64,
    /// Acked mode: the consumer's name.
    consumer: Option<String>,
}

async fn subscribe(
    State(state): State<Arc<ServerState>>,
    ws: WebSocketUpgrade,
    PeerAddr(addr): PeerAddr,
    params: Params,
) -> Response {
    let admitted = start_of(&state, &params).and_then(|start| Ok((start, ClientGuard::admit(&state, addr)?)));
    match admitted {
        Ok((start, client)) => ws.on_upgrade(move |socket| stream(socket, state, start, client)),
        Err(e) => e.into_response(),
    }
}

fn start_of(state: &ServerState, params: &Params) -> Result<Start, XrpcError> {
    let cursor =
        match params.opt("cursor")? {
            Some(c) => Some(c.parse::<u64>().map_err(|_| {
                XrpcError::invalid("cursor must be a non-negative integer (the last event id you have)")
            })?),
            None => None,
        };
    let head = state.store().next_event_id() - 1;
    if cursor.is_some_and(|c| c > head) {
        return Err(XrpcError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "FutureCursor",
            format!("cursor is after the last event ({head})"),
        ));
    }
    let consumer = params.opt("consumer")?.map(str::to_string);
    if let Some(name) = &consumer
        && (name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(XrpcError::invalid("consumer must be 1-64 letters, digits, - or _"));
    }
    let saved = match &consumer {
        Some(name) => state
            .store()
            .cursors()
            .get(&consumer_cursor(name))
            .map_err(|e| XrpcError::internal(crate::error::chain(&e).to_string()))?
            .and_then(|c| c.parse().ok()),
        None => None,
    };
    Ok(Start { after: cursor.or(saved).unwrap_or(if consumer.is_some() { 0 } else { head }), consumer })
}

fn consumer_cursor(name: &str) -> String {
    format!("consumer/{name}")
}

/// What the reader half tells the writer half.
#[derive(Default)]
struct Acks {
    /// The highest id acked.
    acked: AtomicU64,
    /// Bumped on every ack that moves `acked`.
    progress: AtomicU64,
}

async fn stream(socket: WebSocket, state: Arc<ServerState>, start: Start, _client: ClientGuard) {
    let (mut sink, mut incoming) = socket.split();
    let acks = Arc::new(Acks { acked: AtomicU64::new(start.after), progress: AtomicU64::new(0) });
    let closed = tokio_util::sync::CancellationToken::new();
    let reader = {
        let (acks, closed, state, consumer) = (acks.clone(), closed.clone(), state.clone(), start.consumer.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = incoming.next().await {
                match msg {
                    Message::Text(text) => record_ack(&state, consumer.as_deref(), &acks, &text),
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            closed.cancel();
        })
    };
    let ended = send_loop(&mut sink, &state, &start, &acks, &closed).await;
    if let Err(reason) = &ended {
        tracing::debug!(reason = %crate::error::chain(reason), "event stream closed");
    }
    let last = matches!(ended, Err(StreamError::Timeout)).then(|| {
        let secs = state.config.server.send_timeout_secs;
        let message = format!("a send took over {secs} s; reconnect with the last id you have as the cursor");
        Message::Text(json!({"error": "ConsumerTooSlow", "message": message}).to_string().into())
    });
    super::clients::part(&mut sink, last).await;
    reader.abort();
}

/// Takes `{"ack": ID}` from an acked consumer and saves it as its cursor.
fn record_ack(state: &ServerState, consumer: Option<&str>, acks: &Acks, text: &str) {
    let Some(name) = consumer else { return };
    let Some(id) =
        serde_json::from_str::<serde_json::Value>(text).ok().and_then(|v| v.get("ack").and_then(|a| a.as_u64()))
    else {
        return;
    };
    if acks.acked.fetch_max(id, Ordering::Relaxed) < id {
        acks.progress.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = state.store().cursors().save(&consumer_cursor(name), &id.to_string()) {
            tracing::warn!(error = %crate::error::chain(&e), consumer = name, "saving a consumer's cursor failed");
        }
    }
}

/// Why a stream stopped from the server's side.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    /// The client fell more than `max_lag` events behind.
    #[error("consumer too slow")]
    TooSlow,
    /// A batch was not sent within `send_timeout_secs`.
    #[error("send timed out")]
    Timeout,
    /// Sending failed (the client went away).
    #[error(transparent)]
    Send(#[from] axum::Error),
    /// Reading the log failed.
    #[error(transparent)]
    Read(#[from] crate::store::StoreError),
    /// A read on the blocking pool did not finish.
    #[error("reading the log did not finish")]
    ReadTask(#[from] tokio::task::JoinError),
}

/// Sends events from `start` on, forever; returns why it stopped.
async fn send_loop(
    sink: &mut SplitSink<WebSocket, Message>,
    state: &Arc<ServerState>,
    start: &Start,
    acks: &Acks,
    closed: &tokio_util::sync::CancellationToken,
) -> Result<(), StreamError> {
    let store = state.store().clone();
    let mut head_changed = store.watch_events();
    let limits = &state.config.server;
    let ack_timeout = Duration::from_secs(limits.ack_timeout_secs.max(1));
    let (mut next, mut caught_up) = (start.after + 1, false);
    let mut resend = Resend { seen_progress: 0, waiting_since: Instant::now(), timeout: ack_timeout };
    let mut reader = LogReader { state: state.clone(), ahead: None };
    loop {
        if start.consumer.is_some() {
            next = resend.next_to_send(acks, next);
        }
        let head = store.next_event_id();
        if next < head {
            if caught_up && head - next > limits.max_lag {
                let message = format!("more than {} events behind; reconnect with cursor={}", limits.max_lag, next - 1);
                let error = json!({"error": "ConsumerTooSlow", "message": message});
                let _ = sink.send(Message::Text(error.to_string().into())).await;
                return Err(StreamError::TooSlow);
            }
            let batch = reader.batch(next, head).await?;
            tell_if_past_retention(sink, next, &batch).await?;
            let last = batch.last().map_or(next - 1, |(id, _)| *id);
            let _sending = state.clients.sending(batch.iter().map(|(_, text)| text.len() as u64).sum());
            send_batch(sink, batch, Duration::from_secs(limits.send_timeout_secs.max(1))).await?;
            next = last + 1;
            continue;
        }
        caught_up = true;
        tokio::select! {
            _ = head_changed.changed() => {}
            _ = closed.cancelled() => return Ok(()),
            _ = state.stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(ack_timeout), if start.consumer.is_some() => {}
        }
    }
}

/// An acked stream's resending: when nothing new is acked for `timeout` while events past the
/// last ack were sent, the stream goes back to the event after the last ack.
struct Resend {
    seen_progress: u64,
    waiting_since: Instant,
    timeout: Duration,
}

impl Resend {
    /// The next event to send, given that `next` was about to be.
    fn next_to_send(&mut self, acks: &Acks, next: u64) -> u64 {
        let progress = acks.progress.load(Ordering::Relaxed);
        let acked = acks.acked.load(Ordering::Relaxed);
        if progress != self.seen_progress || next <= acked + 1 {
            (self.seen_progress, self.waiting_since) = (progress, Instant::now());
        } else if self.waiting_since.elapsed() >= self.timeout {
            self.waiting_since = Instant::now();
            return acked + 1;
        }
        next
    }
}

/// Sends `batch`, queued without a flush each and then flushed once (one write for the batch),
/// within `timeout`.
async fn send_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    batch: Batch,
    timeout: Duration,
) -> Result<(), StreamError> {
    let send = async {
        for (_, text) in batch.iter() {
            sink.feed(Message::Text(text.clone())).await?;
        }
        sink.flush().await
    };
    Ok(tokio::time::timeout(timeout, send).await.map_err(|_| StreamError::Timeout)??)
}

/// A batch of events as JSON text, shared with the [`ReplayCache`].
type Batch = Arc<Vec<(u64, Utf8Bytes)>>;

/// When `batch`, read from id `next` on, starts after it, retention has removed the events
/// from `next` on: tells the client so before it gets the rest.
async fn tell_if_past_retention(
    sink: &mut SplitSink<WebSocket, Message>,
    next: u64,
    batch: &Batch,
) -> Result<(), StreamError> {
    match batch.first() {
        Some(&(first, _)) if first > next => {
            let message =
                format!("events {next}..{} are past the log's retention; the stream goes on from {first}", first - 1);
            let info = json!({"info": "OutdatedCursor", "message": message});
            Ok(sink.send(Message::Text(info.to_string().into())).await?)
        }
        _ => Ok(()),
    }
}

/// Reads a stream's batches from the log, the next one ahead: read and rendered on the blocking
/// pool while the one before is sent, and no further, so that a replay reads the log only as
/// fast as the client takes it.
struct LogReader {
    state: Arc<ServerState>,
    /// The batch being read ahead.
    ahead: Option<ReadAhead>,
}

/// A batch being read ahead, starting at id `from`.
struct ReadAhead {
    from: u64,
    batch: tokio::task::JoinHandle<Result<Batch, StreamError>>,
}

impl LogReader {
    /// The batch starting at id `next` (the log ends before `head`); then starts reading the
    /// one after it (ids are gapless). A `next` other than the one expected (an acked consumer
    /// sent back) drops what was read ahead.
    async fn batch(&mut self, next: u64, head: u64) -> Result<Batch, StreamError> {
        let read = match self.ahead.take() {
            Some(read) if read.from == next => read.batch,
            _ => spawn_read(&self.state, next),
        };
        let batch = read.await??;
        let from = batch.last().map_or(next, |(id, _)| id + 1);
        if from < head {
            self.ahead = Some(ReadAhead { from, batch: spawn_read(&self.state, from) });
        }
        Ok(batch)
    }
}

/// Starts reading the batch from `from` ([`ServerState::stream_read`]): at most [`BATCH`]
/// events, as JSON text, ending after the first event that takes it to [`BATCH_BYTES`] (so a
/// batch holds at least one event, however large). A batch another stream read lately comes
/// from the [`ReplayCache`].
fn spawn_read(state: &Arc<ServerState>, from: u64) -> tokio::task::JoinHandle<Result<Batch, StreamError>> {
    let state = state.clone();
    tokio::spawn(async move {
        if let Some(batch) = state.replay_cache.get(from) {
            return Ok(batch);
        }
        let shared = state.clone();
        let read = state.stream_read(move || {
            // Another stream may have read it while this one waited for a slot.
            if let Some(batch) = shared.replay_cache.get(from) {
                return Ok(batch);
            }
            let store = shared.store();
            let events = store.log().from(from, BATCH)?;
            let read = events.len();
            let (mut batch, mut bytes) = (Vec::with_capacity(read), 0);
            for (id, event) in events {
                let text = crate::wire::event_text(store, id, &event)?;
                bytes += text.len();
                batch.push((id, text.into()));
                if bytes >= BATCH_BYTES {
                    break;
                }
            }
            let batch = Arc::new(batch);
            // Only a whole batch: one that stopped at the log's end grows as events come.
            if read == BATCH || bytes >= BATCH_BYTES {
                shared.replay_cache.put(from, &batch, bytes);
            }
            Ok::<_, crate::store::StoreError>(batch)
        });
        Ok(read.await??)
    })
}

/// Replay batches read lately, shared by the streams that replay the same part of the log:
/// clients that start at one cursor (a consumer's saved place, `cursor=0`) read the same
/// batches, each rendered once. At most [`ReplayCache::BYTES`] of text, oldest out first.
#[derive(Default)]
pub(crate) struct ReplayCache(std::sync::Mutex<CachedBatches>);

#[derive(Default)]
struct CachedBatches {
    by_start: std::collections::HashMap<u64, (Batch, usize)>,
    order: std::collections::VecDeque<u64>,
    bytes: usize,
}

impl ReplayCache {
    /// The most text the cache holds.
    const BYTES: usize = 16 << 20;

    fn get(&self, from: u64) -> Option<Batch> {
        self.0.lock().expect("replay cache lock").by_start.get(&from).map(|(batch, _)| batch.clone())
    }

    fn put(&self, from: u64, batch: &Batch, bytes: usize) {
        let mut cache = self.0.lock().expect("replay cache lock");
        if cache.by_start.insert(from, (batch.clone(), bytes)).is_some() {
            return;
        }
        cache.order.push_back(from);
        cache.bytes += bytes;
        while cache.bytes > Self::BYTES {
            let Some(oldest) = cache.order.pop_front() else { break };
            if let Some((_, size)) = cache.by_start.remove(&oldest) {
                cache.bytes -= size;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_cache_keeps_its_byte_bound_dropping_the_oldest() {
        let cache = ReplayCache::default();
        let batch = |id: u64| -> Batch { Arc::new(vec![(id, Utf8Bytes::from("{}"))]) };
        let half = ReplayCache::BYTES / 2;
        for from in [1, 2, 3] {
            cache.put(from, &batch(from), half);
        }
        assert!(cache.get(1).is_none(), "the oldest left");
        assert_eq!(cache.get(2).unwrap()[0].0, 2);
        assert_eq!(cache.get(3).unwrap()[0].0, 3);
        // Putting a batch again changes nothing.
        cache.put(3, &batch(3), half);
        assert!(cache.get(2).is_some());
        assert!(cache.0.lock().unwrap().bytes <= ReplayCache::BYTES);
    }
}
