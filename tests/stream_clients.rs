//! The caps on event stream clients (`[server] max_stream_clients` and
//! `max_stream_clients_per_ip`), over both stream endpoints: the connection over a cap is
//! refused before the upgrade with an error naming the cap, the clients already connected go
//! on, and a slot freed by a client that leaves is taken again. Clients come from 127.0.0.1,
//! 127.0.0.2 and 127.0.0.3 (all loopback) to tell addresses apart.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::Value;
use sluice::server::ServerState;
use sluice_testkit as testkit;
use sluice_testkit::server::{Socket, indexed, next_json, start_server};
use tokio_tungstenite::tungstenite;

/// A websocket to `path` on `server`, from the loopback address `from`.
async fn connect_from(from: u8, server: &str, path: &str) -> Result<Socket, tungstenite::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, from)), 0)).unwrap();
    let stream = socket.connect(server.parse().unwrap()).await.unwrap();
    let url = format!("ws://{server}{path}");
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    tokio_tungstenite::client_async(url, stream).await.map(|(socket, _)| socket)
}

/// The refusal of a connection: status and XRPC error body.
fn refusal(result: Result<Socket, tungstenite::Error>) -> (u16, Value) {
    match result {
        Ok(_) => panic!("the connection was admitted"),
        Err(tungstenite::Error::Http(response)) => {
            let body = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("an HTTP refusal, not {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_a_cap_are_refused_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = indexed(dir.path(), &["car/tiny.car"], |c| {
        c.server.max_stream_clients = 3;
        c.server.max_stream_clients_per_ip = 2;
    });
    let (server, state) = start_server(ServerState::new(sluice.pipeline().clone(), sluice.config().clone())).await;
    let events = "/xrpc/dev.sluice.subscribeEvents?cursor=0";
    let jetstream = "/subscribe?cursor=0";

    let mut first = connect_from(1, &server, events).await.unwrap();
    let second = connect_from(1, &server, jetstream).await.unwrap();
    let (status, body) = refusal(connect_from(1, &server, events).await);
    assert_eq!((status, body["error"].as_str()), (429, Some("TooManyClientsFromAddress")), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("127.0.0.1") && message.contains("max_stream_clients_per_ip = 2"), "{message}");

    // Another address has slots of its own, up to the total.
    let mut third = connect_from(2, &server, jetstream).await.unwrap();
    let (status, body) = refusal(connect_from(3, &server, events).await);
    assert_eq!((status, body["error"].as_str()), (503, Some("TooManyClients")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("max_stream_clients = 3"), "{body}");

    // The admitted clients are served.
    assert_eq!(next_json(&mut first).await.unwrap()["id"], 1);
    assert!(next_json(&mut third).await.unwrap().get("did").is_some());

    let metrics = testkit::http().get(format!("http://{server}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert_eq!(testkit::metric(&metrics, "sluice_stream_clients"), Some(3.0));
    for cap in ["max_stream_clients", "max_stream_clients_per_ip"] {
        let sample = format!("sluice_stream_clients_refused_total{{cap=\"{cap}\"}}");
        assert_eq!(testkit::metric(&metrics, &sample), Some(1.0), "{sample} in {metrics}");
    }

    // A client that leaves frees its slot.
    drop(second);
    testkit::wait_until("the slot to be freed", || state.clients.connected() == 2).await;
    let mut again = connect_from(1, &server, events).await.unwrap();
    assert_eq!(next_json(&mut again).await.unwrap()["id"], 1);
}
