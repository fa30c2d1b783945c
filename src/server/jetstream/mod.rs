//! `GET /subscribe` (websocket): sluice's event log in Jetstream v1's format and query
//! parameters, so a Jetstream client can read sluice by changing its URL.
//!
//! Each event is one message in Jetstream v1's JSON (`json.rs`). Query parameters, as
//! Jetstream v1 reads them (unknown ones are ignored; bad ones get a 400 before the upgrade):
//! - `wantedCollections` (repeatable, at most 100): NSIDs, or `prefix.*` over whole segments
//!   (`app.bsky.*`). Commits only: identity and account events always pass, as in Jetstream.
//! - `wantedDids` (repeatable, at most 10,000): events of these repos only, of every kind.
//! - `cursor`: unix µs. Replays every event whose time is at or after it (inclusive, as
//!   Jetstream's replay), then follows live; a cursor after the last event starts live, a
//!   negative one replays everything. Without it the stream starts live.
//! - `compress=true` (or the `Socket-Encoding: zstd` header): every message is one zstd frame,
//!   sent as a binary message. The frames use no dictionary, and Jetstream's clients decode
//!   them: Jetstream's Go client (klauspost/compress, given Jetstream's dictionary, ID
//!   1612007021) looks a frame's dictionary up by the ID in its header and decodes a frame
//!   without one with no dictionary. Clients on libzstd (zstd-jni, the `zstd` crate) load
//!   their dictionary for such a frame anyway, which changes nothing here: ruzstd 0.8 never
//!   encodes repeat offsets and reuses entropy tables only from earlier blocks of the same
//!   frame, so nothing it writes reads the state a dictionary sets (checked with the zstd
//!   CLI, with and without `-D`, on Jetstream's v1 sample events).
//! - `requireHello=true`: nothing is sent until the client's first `options_update`; the
//!   stream still starts where the cursor (or the head at connection time) says.
//! - `maxMessageSizeBytes`: events whose JSON is larger are skipped (0 or negative: no limit).
//!
//! The client may send `{"type": "options_update", "payload": {"wantedCollections": [...],
//! "wantedDids": [...], "maxMessageSizeBytes": N}}` at any time: it replaces the whole filter
//! from the next batch of events on. An invalid one closes the stream (1008; 1007 for JSON that
//! does not parse); other message types are ignored.
//!
//! Every event is read from the log by id, so the switch from replay to live has no gap and no
//! duplicate, and a slow client never slows ingestion: once it has caught up, a client more
//! than `[server] max_lag` events behind, or whose sends take over `send_timeout_secs`, is
//! closed (1008, the reason naming the cursor to resume with).

mod filter;
mod json;
mod params;
mod send;

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use tokio_util::sync::CancellationToken;

use super::{ClientGuard, PeerAddr, ServerState};
use crate::xrpc::XrpcError;

/// Largest message a client may send (an `options_update` with 10,000 DIDs fits).
const MAX_CLIENT_MESSAGE: usize = 10 << 20;

pub(super) fn routes() -> Router<Arc<ServerState>> {
    Router::new().route("/subscribe", get(subscribe))
}

/// What the halves of one stream share.
struct Session {
    /// The filter in force: replaced whole by `options_update`.
    filter: ArcSwap<filter::Filter>,
    /// Cancelled by the first `options_update` (at once without `requireHello`).
    hello: CancellationToken,
    /// Cancelled when the client leaves or must be closed.
    closed: CancellationToken,
    /// Why the client's messages end the stream.
    refused: Mutex<Option<params::Refused>>,
}

async fn subscribe(
    State(state): State<Arc<ServerState>>,
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    PeerAddr(addr): PeerAddr,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let start = params::Options::parse(q, &headers).and_then(|options| {
        let from = start_id(&state, options.cursor)?;
        Ok((from, options, ClientGuard::admit(&state, addr)?))
    });
    match start {
        Ok((from, options, client)) => ws
            .max_message_size(MAX_CLIENT_MESSAGE)
            .on_upgrade(move |socket| stream(socket, state, from, options, client)),
        Err(e) => e.into_response(),
    }
}

/// The first event id to send: the first at or after the cursor's time, else the next one to
/// be written (live). The head is read first, so nothing committed meanwhile is missed.
fn start_id(state: &ServerState, cursor: Option<u64>) -> Result<u64, XrpcError> {
    let head = state.store().next_event_id();
    match cursor {
        None => Ok(head),
        Some(time) => Ok(state
            .store()
            .log()
            .first_after_time(time)
            .map_err(|e| XrpcError::internal(crate::error::chain(&e).to_string()))?
            .unwrap_or(head)),
    }
}

async fn stream(socket: WebSocket, state: Arc<ServerState>, from: u64, options: params::Options, _client: ClientGuard) {
    let (mut sink, incoming) = socket.split();
    let session = Arc::new(Session {
        filter: ArcSwap::from_pointee(options.filter),
        hello: CancellationToken::new(),
        closed: CancellationToken::new(),
        refused: Mutex::new(None),
    });
    if !options.require_hello {
        session.hello.cancel();
    }
    let reader = tokio::spawn(read_client(incoming, session.clone()));
    let ended = tokio::select! {
        _ = session.hello.cancelled() => send::send_loop(&mut sink, &state, from, options.compress, &session).await,
        _ = session.closed.cancelled() => Ok(()),
        _ = state.stop.cancelled() => Ok(()),
    };
    let refused = session.refused.lock().expect("session lock").take();
    let close = match (ended, refused) {
        (_, Some(r)) => Some((r.code, r.reason)),
        (Err(stop), None) if !stop.reason.is_empty() => Some((stop.code, stop.reason)),
        _ => None,
    };
    let last = close.map(|(code, reason)| {
        tracing::debug!(code, %reason, "closing a /subscribe stream");
        Message::Close(Some(CloseFrame { code, reason: truncate(reason, 123).into() }))
    });
    super::clients::part(&mut sink, last).await;
    reader.abort();
}

/// Reads the client's messages: `options_update`s replace the filter; an invalid one ends
/// the stream.
async fn read_client(mut incoming: SplitStream<WebSocket>, session: Arc<Session>) {
    while let Some(Ok(message)) = incoming.next().await {
        match message {
            Message::Text(text) => match params::parse_update(&text) {
                Ok(Some(filter)) => {
                    session.filter.store(Arc::new(filter));
                    session.hello.cancel();
                }
                Ok(None) => {}
                Err(refused) => {
                    *session.refused.lock().expect("session lock") = Some(refused);
                    break;
                }
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
    session.closed.cancel();
}

/// `text` cut to at most `max` bytes on a character boundary (close reasons are limited).
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
