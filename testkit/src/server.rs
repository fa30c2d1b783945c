//! A sluice server in this process, and a client of its event stream
//! (`dev.sluice.subscribeEvents`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use sluice::server::{ServerState, serve};
use sluice::{Config, Sluice};
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for a message, or for a state it polls for.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A websocket client connection.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Serves `state` on an ephemeral port; returns its address (`127.0.0.1:PORT`).
pub async fn start_server(state: ServerState) -> (String, Arc<ServerState>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let state = Arc::new(state);
    tokio::spawn(serve(listener, state.clone()));
    (addr, state)
}

/// Serves `sluice` (its pipeline and config) on an ephemeral port; returns its base URL
/// (`http://127.0.0.1:PORT`).
pub async fn serving(sluice: &Sluice) -> (String, Arc<ServerState>) {
    let (addr, state) = start_server(ServerState::new(sluice.pipeline().clone(), sluice.config().clone())).await;
    (format!("http://{addr}"), state)
}

/// An indexer in `dir/data` (full mode) holding the fixture repos `cars` (calabro alone gives
/// 4,347 events), with `tweak`ed config.
pub fn indexed(dir: &std::path::Path, cars: &[&str], tweak: impl FnOnce(&mut Config)) -> Sluice {
    let mut config = Config::default();
    config.storage.path = dir.join("data");
    tweak(&mut config);
    let sluice = crate::sluice_full(&config);
    for car in cars {
        sluice.index_car(&crate::read_fixture(car), &Default::default()).unwrap();
    }
    sluice
}

/// The next event (or error message) as JSON, or `None` when the stream closed.
pub async fn next_json(socket: &mut Socket) -> Option<Value> {
    loop {
        match tokio::time::timeout(LIMIT, socket.next()).await.expect("a message in time")? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Reads events until `last_id` is reached; returns their ids.
pub async fn read_until(socket: &mut Socket, last_id: u64) -> Vec<u64> {
    let mut ids = Vec::new();
    while ids.last().is_none_or(|&id| id < last_id) {
        let event = next_json(socket).await.expect("the stream stays open");
        ids.push(event["id"].as_u64().unwrap_or_else(|| panic!("an event, not {event}")));
    }
    ids
}
