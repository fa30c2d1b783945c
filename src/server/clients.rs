//! Who may hold an event stream open (`subscribeEvents` and `/subscribe`): at most `[server]
//! max_stream_clients` at once, and at most `max_stream_clients_per_ip` from one address, so
//! that no one can take every slot (or the memory behind them) by opening connections. A
//! client over a cap is refused before the websocket upgrade, with an XRPC error naming the
//! cap and the setting that raises it: 503 `TooManyClients` for the total, 429
//! `TooManyClientsFromAddress` for one address. Behind a reverse proxy every client has the
//! proxy's address: set the per-address cap to 0 (off) there and cap at the proxy.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::{Message, WebSocket};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use futures_util::SinkExt;
use futures_util::stream::SplitSink;

use super::ServerState;
use crate::xrpc::XrpcError;

/// The stream clients connected now, and those refused since start.
#[derive(Default)]
pub struct StreamClients {
    /// Clients by address (`None`: a connection whose address the server was not told).
    open: Mutex<HashMap<Option<IpAddr>, u32>>,
    /// Refused over `max_stream_clients`.
    pub refused_total: AtomicU64,
    /// Refused over `max_stream_clients_per_ip`.
    pub refused_per_ip: AtomicU64,
    /// Bytes of events being sent to clients now (each stream's batch in flight).
    pub sending_bytes: AtomicU64,
}

impl StreamClients {
    /// Clients connected now.
    pub fn connected(&self) -> u64 {
        self.open.lock().expect("stream clients lock").values().map(|&n| u64::from(n)).sum()
    }

    /// Counts `bytes` as being sent until the guard drops.
    pub fn sending(&self, bytes: u64) -> Sending<'_> {
        self.sending_bytes.fetch_add(bytes, Ordering::Relaxed);
        Sending(self, bytes)
    }
}

/// Bytes counted in [`StreamClients::sending_bytes`] while it lives.
pub struct Sending<'a>(&'a StreamClients, u64);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.sending_bytes.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// The address a request came from, when the server was started with it (`serve` is).
pub struct PeerAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerAddr(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())))
    }
}

/// One admitted stream client, counted until dropped.
pub struct ClientGuard {
    state: Arc<ServerState>,
    addr: Option<IpAddr>,
}

impl ClientGuard {
    /// Admits a client from `addr` if both caps allow it.
    pub fn admit(state: &Arc<ServerState>, addr: Option<IpAddr>) -> Result<Self, XrpcError> {
        let limits = &state.config.server;
        let clients = &state.clients;
        let mut open = clients.open.lock().expect("stream clients lock");
        let total: u64 = open.values().map(|&n| u64::from(n)).sum();
        if limits.max_stream_clients > 0 && total >= limits.max_stream_clients {
            clients.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(XrpcError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "TooManyClients",
                format!(
                    "{total} event stream clients are connected, the most this server takes ([server] \
                     max_stream_clients = {}); try again later",
                    limits.max_stream_clients
                ),
            ));
        }
        let from_addr = open.get(&addr).copied().unwrap_or(0);
        if let Some(ip) = addr
            && limits.max_stream_clients_per_ip > 0
            && u64::from(from_addr) >= limits.max_stream_clients_per_ip
        {
            clients.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            return Err(XrpcError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyClientsFromAddress",
                format!(
                    "{from_addr} event stream clients are connected from {ip}, the most one address may hold \
                     ([server] max_stream_clients_per_ip = {})",
                    limits.max_stream_clients_per_ip
                ),
            ));
        }
        *open.entry(addr).or_default() += 1;
        Ok(ClientGuard { state: state.clone(), addr })
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let mut open = self.state.clients.open.lock().expect("stream clients lock");
        if let Some(n) = open.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

/// How long the last words to a leaving stream client (a last message, the close) may take.
const PARTING_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Sends `last` (a reason, a close frame), if any, and closes the socket, within
/// [`PARTING_DEADLINE`]: a client that stopped reading takes nothing more, and waiting on its
/// socket would keep its slot for as long as it likes. Both stream endpoints end this way.
pub(super) async fn part(sink: &mut SplitSink<WebSocket, Message>, last: Option<Message>) {
    let parting = async {
        if let Some(message) = last {
            let _ = sink.send(message).await;
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(PARTING_DEADLINE, parting).await;
}
