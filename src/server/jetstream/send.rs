//! The sending half of a `/subscribe` stream: reads the log by id from where the client
//! starts, keeps what its filter wants, renders (and compresses) on the blocking pool, and
//! sends; then follows the log live. Reading by id makes the switch from replay to live exact.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;

use super::Session;
use super::filter::Filter;
use super::json::event_json;
use crate::server::ServerState;
use crate::store::{Store, StoreError};

/// Events read from the log per step, at most.
const BATCH: usize = 256;
/// Rendered bytes per step, at most (past it the step ends early, at an event boundary).
const BATCH_BYTES: usize = 256 << 10;
/// A ping this often on an idle stream keeps it open through proxies.
const PING_EVERY: Duration = Duration::from_secs(30);

/// Why a stream ended from the server's side: a websocket close code and reason.
pub(super) struct Stop {
    /// Close code.
    pub code: u16,
    /// Reason sent to the client (at most 123 bytes).
    pub reason: String,
}

/// What one step read: the messages to send and where the next step starts.
struct Batch {
    messages: Vec<Message>,
    /// The bytes of `messages`, as sent.
    bytes: u64,
    /// The id after the last event read.
    next: u64,
    /// The time of the last event read.
    last_time: u64,
}

/// Sends events from id `next` on until the client leaves or the server stops (`Ok`), or
/// the stream must end (`Err`).
pub(super) async fn send_loop(
    sink: &mut SplitSink<WebSocket, Message>,
    state: &ServerState,
    mut next: u64,
    compress: bool,
    session: &Session,
) -> Result<(), Stop> {
    let store = state.store().clone();
    let mut head_changed = store.watch_events();
    let limits = &state.config.server;
    let send_timeout = Duration::from_secs(limits.send_timeout_secs.max(1));
    let (mut caught_up, mut resume) = (false, None);
    loop {
        let head = store.next_event_id();
        if next < head {
            if caught_up && head - next > limits.max_lag {
                let why = format!("over {} events behind", limits.max_lag);
                return Err(too_slow(&store, &why, next, resume).await);
            }
            let batch = read_batch(state, next, session.filter.load_full(), compress).await.map_err(internal)?;
            let _sending = state.clients.sending(batch.bytes);
            // Queued without a flush each, then flushed once: one write for the batch.
            let send = async {
                for message in batch.messages {
                    sink.feed(message).await?;
                }
                sink.flush().await
            };
            let Ok(sent) = tokio::time::timeout(send_timeout, send).await else {
                let why = format!("a send took over {} s", send_timeout.as_secs());
                return Err(too_slow(&store, &why, next, resume).await);
            };
            sent.map_err(|_| gone())?;
            if batch.next > next {
                (next, resume) = (batch.next, Some(batch.last_time + 1));
                continue;
            }
        }
        caught_up = true;
        tokio::select! {
            _ = head_changed.changed() => {}
            _ = session.closed.cancelled() => return Ok(()),
            _ = state.stop.cancelled() => return Err(Stop { code: 1001, reason: "server shutting down".into() }),
            _ = tokio::time::sleep(PING_EVERY) => {
                tokio::time::timeout(send_timeout, sink.send(Message::Ping(Default::default())))
                    .await
                    .map_err(|_| gone())?
                    .map_err(|_| gone())?;
            }
        }
    }
}

/// The client went away.
fn gone() -> Stop {
    Stop { code: 1001, reason: String::new() }
}

fn internal(e: ReadError) -> Stop {
    tracing::warn!(error = %crate::error::chain(&e), "reading the event log for /subscribe failed");
    Stop { code: 1011, reason: "internal error reading the event log".into() }
}

/// The close for a client too slow (`why`: more than `max_lag` events behind, or a send that
/// outlasted `send_timeout_secs`): the cursor to resume with is just after the last event of
/// the last batch it was sent whole or skipped (times increase with ids, so it loses nothing;
/// after a timed-out send it may get again what it had of that batch), or the time of event
/// `next` when there was none.
async fn too_slow(store: &Arc<Store>, why: &str, next: u64, resume: Option<u64>) -> Stop {
    let cursor = match resume {
        Some(time) => time,
        None => {
            let store = store.clone();
            let first = tokio::task::spawn_blocking(move || store.log().from_with_times(next, 1)).await;
            first.ok().and_then(Result::ok).and_then(|e| e.first().map(|(_, time, _)| *time)).unwrap_or(0)
        }
    };
    Stop { code: 1008, reason: format!("ConsumerTooSlow: {why}; reconnect with cursor={cursor}") }
}

/// Why a batch could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The read on the blocking pool did not finish.
    #[error("the read did not finish")]
    Task(#[from] tokio::task::JoinError),
}

/// Events from `from` on (at most [`BATCH`]), the wanted ones rendered, on the blocking pool.
async fn read_batch(state: &ServerState, from: u64, filter: Arc<Filter>, compress: bool) -> Result<Batch, ReadError> {
    let store = state.store().clone();
    Ok(state.stream_read(move || render(&store, from, &filter, compress)).await??)
}

/// Reads and renders the batch from `from`: at most [`BATCH`] events, ending after the first
/// message that takes it to [`BATCH_BYTES`] (so that a subscriber holds a bounded batch however
/// large its events).
fn render(store: &Store, from: u64, filter: &Filter, compress: bool) -> Result<Batch, StoreError> {
    let mut batch = Batch { messages: Vec::new(), bytes: 0, next: from, last_time: 0 };
    let mut bytes = 0;
    for (id, time, event) in store.log().from_with_times(from, BATCH)? {
        if bytes >= BATCH_BYTES {
            break;
        }
        (batch.next, batch.last_time) = (id + 1, time);
        if !filter.wants(&event) {
            continue;
        }
        let json = event_json(store, id, time, &event)?;
        if filter.max_size > 0 && json.len() > filter.max_size {
            continue;
        }
        bytes += json.len();
        let (message, size) = match compress {
            true => {
                let frame =
                    ruzstd::encoding::compress_to_vec(json.as_bytes(), ruzstd::encoding::CompressionLevel::Fastest);
                let size = frame.len();
                (Message::Binary(frame.into()), size)
            }
            false => {
                let size = json.len();
                (Message::Text(json.into()), size)
            }
        };
        batch.bytes += size as u64;
        batch.messages.push(message);
    }
    Ok(batch)
}
