//! `GET /xrpc/com.atproto.sync.subscribeRepos?cursor=N` as a websocket, on each PDS host (its
//! own accounts' events) and the relay (all of them): the events after the cursor, then live
//! ones, one binary message per frame. A cursor ahead of the last `seq` gets a `FutureCursor`
//! error frame; a subscriber that falls too far behind, or is dropped by the test API, is
//! closed (a client reconnects with its cursor).

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};

use sluice::xrpc::{Params, XrpcError};

use super::frame::error_frame;
use super::sequencer::{Event, Sequencer, Subscription};
use crate::world::state::World;

/// The method's NSID (its request-count key).
pub(crate) const SUBSCRIBE_REPOS: &str = "com.atproto.sync.subscribeRepos";

/// Answers a subscription on host `host` (`None`: the relay, every host), counted in `world`.
pub(crate) fn subscribe(
    world: &World,
    sequencer: &Sequencer,
    host: Option<usize>,
    query: Params,
    ws: WebSocketUpgrade,
) -> Response {
    world.count(SUBSCRIBE_REPOS);
    let cursor = match cursor(&query) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if sequencer.refusing() {
        return XrpcError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "the firehose is down")
            .into_response();
    }
    match sequencer.subscribe(cursor) {
        Ok(sub) => ws.on_upgrade(move |socket| serve(socket, sub, host)),
        Err(last) => ws.on_upgrade(move |socket| refuse(socket, last)),
    }
}

/// The `cursor` parameter, when given.
fn cursor(p: &Params) -> Result<Option<i64>, XrpcError> {
    p.opt("cursor")?.map(|c| c.parse::<i64>().map_err(|_| XrpcError::invalid("cursor must be an integer"))).transpose()
}

/// Sends the replay, then live events, until the client goes, lags or is dropped.
async fn serve(mut socket: WebSocket, sub: Subscription, host: Option<usize>) {
    let Subscription { replay, mut live, stop, stall } = sub;
    for event in replay {
        if stop.is_cancelled() || !send(&mut socket, host, &event).await {
            return close(socket).await;
        }
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = stall.cancelled() => {
                // Silent until dropped: neither events nor pongs.
                stop.cancelled().await;
                return;
            }
            event = live.recv() => match event {
                Ok(event) if send(&mut socket, host, &event).await => {}
                // Gone, lagged (the client resumes from its cursor) or the devnet is gone.
                _ => break,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
    close(socket).await;
}

/// Sends `event` when it belongs to `host`; false when the client is gone.
async fn send(socket: &mut WebSocket, host: Option<usize>, event: &Event) -> bool {
    if host.is_some_and(|h| h != event.host) {
        return true;
    }
    socket.send(Message::Binary(event.frame.clone())).await.is_ok()
}

/// The `FutureCursor` error frame, then close.
async fn refuse(mut socket: WebSocket, last: i64) {
    let frame = error_frame("FutureCursor", &format!("Cursor in the future (the last seq is {last})"));
    if socket.send(Message::Binary(frame.into())).await.is_ok() {
        close(socket).await;
    }
}

async fn close(mut socket: WebSocket) {
    let _ = socket.send(Message::Close(None)).await;
}
