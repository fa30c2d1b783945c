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
    assert!(testkit::metric(&metrics, "sluice_stream_sending_bytes").is_some(), "{metrics}");
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

/// Commits `n` records of ~`kb` KiB each to the log, as live commits of one repo.
fn write_big_records(sluice: &sluice::Sluice, first: u64, n: u64, kb: usize) {
    use sluice::pipeline::RecordOp;
    for i in first..first + n {
        let value = serde_json::json!({"$type": "app.bsky.feed.post", "text": "x".repeat(kb << 10), "createdAt": "2024-01-01T00:00:00Z"});
        let bytes = sluice::handlers::value::json_to_cbor(&value).unwrap();
        let op = RecordOp::Put {
            collection: "app.bsky.feed.post".into(),
            rkey: format!("3k{i:011}"),
            cid: testkit::cid_of(&bytes),
            bytes: bytes.into(),
        };
        let rev = format!("3l{i:011}");
        let (commit, data) = (testkit::cid_of(rev.as_bytes()), testkit::cid_of(b"d"));
        sluice.pipeline().apply_commit("did:plc:big", commit, &rev, data, vec![op], None).unwrap();
    }
}

/// A websocket to `path` whose socket takes in almost nothing: the client never reads.
async fn stalled_client(server: &str, path: &str) -> Socket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.parse().unwrap()).await.unwrap();
    let url = format!("ws://{server}{path}");
    let (socket, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_send_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = indexed(dir.path(), &[], |c| c.server.send_timeout_secs = 1);
    // ~24 MB of events: more than the kernel's socket buffers hold.
    write_big_records(&sluice, 0, 400, 60);
    let (server, state) = start_server(ServerState::new(sluice.pipeline().clone(), sluice.config().clone())).await;

    // In replay, on both endpoints.
    let replaying = [
        stalled_client(&server, "/xrpc/dev.sluice.subscribeEvents?cursor=0").await,
        stalled_client(&server, "/subscribe?cursor=0").await,
    ];
    testkit::wait_until("both streams to run", || state.clients.connected() == 2).await;
    let started = std::time::Instant::now();
    // While they stall, each holds one batch in flight: at most 256 KiB and the event that
    // crossed it, however much of the log is left.
    let mut most = 0;
    while state.clients.connected() == 2 && started.elapsed() < std::time::Duration::from_millis(800) {
        most = most.max(state.clients.sending_bytes.load(std::sync::atomic::Ordering::Relaxed));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(most <= (2 * (256 + 80)) << 10, "{most} bytes in flight to two stalled clients (events of ~68 KB)");
    testkit::wait_until("the stalled replays to be closed", || state.clients.connected() == 0).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "closed in {:?}", started.elapsed());

    // Live: the client stalls while events keep coming.
    let live = stalled_client(&server, "/xrpc/dev.sluice.subscribeEvents").await;
    testkit::wait_until("the live stream to run", || state.clients.connected() == 1).await;
    write_big_records(&sluice, 400, 400, 60);
    testkit::wait_until("the stalled live stream to be closed", || state.clients.connected() == 0).await;
    // Nothing is held for the clients that went.
    assert_eq!(state.clients.sending_bytes.load(std::sync::atomic::Ordering::Relaxed), 0);

    // A client that reads is served all the same, from the start.
    let mut reader = connect_from(1, &server, "/xrpc/dev.sluice.subscribeEvents?cursor=0").await.unwrap();
    assert_eq!(next_json(&mut reader).await.unwrap()["id"], 1);
    drop((replaying, live));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_replay_while_live_events_arrive_and_each_gets_every_event_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let sluice = Arc::new(indexed(dir.path(), &["car/calabro.car"], |_| {}));
    let (server, _state) = start_server(ServerState::new(sluice.pipeline().clone(), sluice.config().clone())).await;
    // The last id, once the writer is done (0 until then).
    let head = Arc::new(AtomicU64::new(0));
    let events_clients: Vec<_> = (0..20)
        .map(|_| {
            let (server, head) = (server.clone(), head.clone());
            tokio::spawn(async move {
                let mut socket = connect_from(1, &server, "/xrpc/dev.sluice.subscribeEvents?cursor=0").await.unwrap();
                let mut ids = Vec::new();
                while ids.last().is_none_or(|&id| id != head.load(Ordering::Relaxed)) {
                    if let Some(event) = next_or_recheck(&mut socket).await {
                        ids.push(event["id"].as_u64().unwrap());
                    }
                }
                ids
            })
        })
        .collect();
    let jetstream_clients: Vec<_> = (0..6)
        .map(|_| {
            let (server, head) = (server.clone(), head.clone());
            tokio::spawn(async move {
                let mut socket = connect_from(2, &server, "/subscribe?cursor=0").await.unwrap();
                let mut seen = std::collections::HashSet::new();
                let mut messages = 0u64;
                while messages == 0 || messages != head.load(Ordering::Relaxed) {
                    let Some(event) = next_or_recheck(&mut socket).await else { continue };
                    let commit = &event["commit"];
                    let key = format!("{} {} {}", event["did"], commit["collection"], commit["rkey"]);
                    assert!(seen.insert(key.clone()), "{key} came twice");
                    messages += 1;
                }
                messages
            })
        })
        .collect();
    // Live commits while the clients replay.
    let writer = {
        let sluice = sluice.clone();
        tokio::task::spawn_blocking(move || write_big_records(&sluice, 0, 300, 1))
    };
    writer.await.unwrap();
    head.store(sluice.store().next_event_id() - 1, Ordering::Relaxed);
    let last = head.load(Ordering::Relaxed);
    assert!(last > 4_347, "the live events are in the log");
    for client in events_clients {
        let ids = tokio::time::timeout(testkit::server::LIMIT, client).await.expect("in time").unwrap();
        assert_eq!(ids, (1..=last).collect::<Vec<_>>(), "every event once, in order");
    }
    for client in jetstream_clients {
        assert_eq!(tokio::time::timeout(testkit::server::LIMIT, client).await.expect("in time").unwrap(), last);
    }
}

/// The next message, or `None` when none came within a moment (the caller checks again
/// whether it has all it waits for: the last id is known only once the writer is done).
async fn next_or_recheck(socket: &mut Socket) -> Option<Value> {
    match tokio::time::timeout(std::time::Duration::from_millis(200), next_json(socket)).await {
        Ok(event) => Some(event.expect("the stream stays open")),
        Err(_) => None,
    }
}
