//! `dev.sluice.subscribeEvents` with a real websocket client: exact replay across reconnects
//! and a restart of sluice, no gap or duplicate at the switch from replay to live while the
//! devnet writes, slow consumers closed with an error, acked consumers, and bad parameters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{Value, json};
use sluice::backfill::{Backfill, RunMode};
use sluice::server::ServerState;
use sluice::{Config, Filter, Sluice};
use sluice_devnet::{Devnet, DevnetOptions};
use sluice_testkit as testkit;
use sluice_testkit::server::{LIMIT, Socket, indexed, next_json, read_until, start_server};
use tokio_tungstenite::tungstenite::Message;

async fn connect(addr: &str, query: &str) -> Socket {
    let url = format!("ws://{addr}/xrpc/dev.sluice.subscribeEvents{query}");
    tokio_tungstenite::connect_async(url).await.expect("connects").0
}

const BOTH: &[&str] = &["car/calabro.car", "car/little.car"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_exact_across_reconnects_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = indexed(dir.path(), BOTH, |_| {});
    let head = sluice.store().next_event_id() - 1;
    assert!(head > 4000);
    let (addr, state) = start_server(ServerState::new(sluice.pipeline().clone(), sluice.config().clone())).await;

    let mut socket = connect(&addr, "?cursor=0").await;
    let first = next_json(&mut socket).await.unwrap();
    let stored = sluice::wire::event_json(sluice.store(), 1, &sluice.store().log().from(1, 1).unwrap()[0].1).unwrap();
    assert_eq!(first, stored, "events are sent in the log's JSON shape");
    let mut ids = vec![1];
    ids.extend(read_until(&mut socket, 1500).await);
    drop(socket);
    let mut socket = connect(&addr, &format!("?cursor={}", ids.last().unwrap())).await;
    ids.extend(read_until(&mut socket, 3000).await);
    drop(socket);

    // sluice restarts on the same data; the client resumes with its last id.
    state.stop.cancel();
    drop((state, sluice));
    let sluice = Sluice::builder()
        .data_dir(dir.path().join("data"))
        .filter(Filter::from_toml("mode = \"full\"\n", "t").unwrap())
        .open()
        .unwrap();
    let (addr, _state) = start_server(ServerState::new(sluice.pipeline().clone(), sluice.config().clone())).await;
    let mut socket = connect(&addr, &format!("?cursor={}", ids.last().unwrap())).await;
    ids.extend(read_until(&mut socket, head).await);
    assert_eq!(ids, (1..=head).collect::<Vec<_>>(), "every event once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_from_replay_to_live_loses_and_repeats_nothing() {
    let net = Arc::new(Devnet::start(DevnetOptions::default()).await.unwrap());
    let dids = net.populate(4, 300, 9).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.storage.path = dir.path().join("data");
    testkit::on_devnet(&mut c, &net);
    let sluice = testkit::sluice_full(&c);
    let backfill = Backfill::new(sluice.pipeline().clone(), &c);
    let firehose = sluice::service::firehose_beside(&sluice, &c, &backfill).unwrap();
    let mut state = ServerState::new(sluice.pipeline().clone(), c.clone());
    state.firehose = Some(firehose.clone());
    let (addr, state) = start_server(state).await;
    let (f, stop) = (firehose.clone(), state.stop.clone());
    tokio::spawn(async move { f.run(stop).await });
    let b = backfill.clone();
    tokio::spawn(async move { b.run(RunMode::Forever, true).await });

    // Writes go on from before the client connects until well after it has caught up: the
    // writer stops after 100 writes until the client is connected.
    let (written, connected) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let writer = {
        let (net, dids, written, connected) = (net.clone(), dids.clone(), written.clone(), connected.clone());
        std::thread::spawn(move || {
            for i in 0..300 {
                if i == 100 {
                    let deadline = Instant::now() + LIMIT;
                    while !connected.load(Ordering::Relaxed) {
                        assert!(Instant::now() < deadline, "the client connects");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                let record = json!({
                    "$type": "app.bsky.feed.post",
                    "text": format!("live {i}"),
                    "createdAt": "2026-11-01T00:00:00.000Z"
                });
                net.put_record(&dids[i % dids.len()], "app.bsky.feed.post", &format!("3lzzz{i:08}"), record).unwrap();
                written.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    testkit::wait_until("the first 100 writes", || written.load(Ordering::Relaxed) == 100).await;
    let mut socket = connect(&addr, "?cursor=0").await;
    connected.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
    testkit::wait_until("sluice to catch up", || {
        sluice.store().repo_count(sluice::store::RepoStatus::Synced) == 4
            && firehose.safe_cursor() >= net.firehose_seq()
            && firehose.in_flight() == 0
    })
    .await;
    let head = sluice.store().next_event_id() - 1;
    assert!(head >= 1200 + 300, "the backfill and every live write are in the log ({head})");
    let ids = read_until(&mut socket, head).await;
    assert_eq!(ids, (1..=head).collect::<Vec<_>>(), "replay then live: every event once, in order");
    backfill.stop();
    state.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_told_and_closed_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = indexed(dir.path(), &["car/little.car"], |c| c.server.max_lag = 50);
    let (addr, state) = start_server(ServerState::new(sluice.pipeline().clone(), sluice.config().clone())).await;
    let head = sluice.store().next_event_id() - 1;
    // Live from the head (fixed before the upgrade); then, with the stream running, the log
    // grows by far more than max_lag while the client reads slowly.
    let mut socket = connect(&addr, "").await;
    testkit::wait_until("the stream to run", || state.clients.connected() == 1).await;
    sluice.index_car(&testkit::read_fixture("car/calabro.car"), &Default::default()).unwrap();
    let grown = sluice.store().next_event_id() - 1;
    assert!(grown - head > 50, "the log grew by more than max_lag ({} events)", grown - head);
    let mut last_id = head;
    let error = loop {
        let msg = next_json(&mut socket).await.expect("an error message before the close");
        match msg["id"].as_u64() {
            Some(id) => last_id = id,
            None => break msg,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(error["error"], "ConsumerTooSlow", "{error}");
    assert!(next_json(&mut socket).await.is_none(), "then the stream closes");
    let mut socket = connect(&addr, &format!("?cursor={last_id}")).await;
    let ids = read_until(&mut socket, grown).await;
    assert_eq!(ids, (last_id + 1..=grown).collect::<Vec<_>>(), "it resumes from its last id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acked_consumer_resumes_from_its_ack_and_gets_unacked_events_again() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = indexed(dir.path(), BOTH, |c| c.server.ack_timeout_secs = 1);
    let (addr, _state) = start_server(ServerState::new(sluice.pipeline().clone(), sluice.config().clone())).await;

    let mut socket = connect(&addr, "?consumer=indexer-1").await;
    let ids = read_until(&mut socket, 100).await;
    assert_eq!(ids.first(), Some(&1), "a new consumer starts at the beginning");
    socket.send(Message::Text(json!({"ack": 40}).to_string().into())).await.unwrap();
    let saved = || sluice.store().cursors().get("consumer/indexer-1").unwrap();
    testkit::wait_until("the ack to be saved", || saved().as_deref() == Some("40")).await;
    drop(socket);

    let mut socket = connect(&addr, "?consumer=indexer-1").await;
    assert_eq!(next_json(&mut socket).await.unwrap()["id"], 41, "it resumes after its ack");
    // No ack for over a second: everything after the last ack comes again.
    let started = Instant::now();
    let again = loop {
        let id = next_json(&mut socket).await.unwrap()["id"].as_u64().unwrap();
        if id == 41 {
            break started.elapsed();
        }
    };
    assert!(again >= Duration::from_millis(900), "sent again after the ack timeout ({again:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_refused_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = indexed(dir.path(), &["car/tiny.car"], |_| {});
    let (addr, _state) = start_server(ServerState::new(sluice.pipeline().clone(), sluice.config().clone())).await;
    let head = sluice.store().next_event_id() - 1;
    for (query, error, mentions) in [
        ("?cursor=abc", "InvalidRequest", "cursor"),
        ("?cursor=-1", "InvalidRequest", "cursor"),
        (&format!("?cursor={}", head + 10) as &str, "FutureCursor", "after the last event"),
        ("?consumer=no%20spaces", "InvalidRequest", "consumer"),
    ] {
        let url = format!("ws://{addr}/xrpc/dev.sluice.subscribeEvents{query}");
        let err = tokio_tungstenite::connect_async(url).await.expect_err("refused");
        let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
            panic!("{query}: an HTTP answer, not {err}")
        };
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
        assert_eq!(body["error"], error, "{query}: {body}");
        assert!(body["message"].as_str().unwrap().contains(mentions), "{query}: {body}");
    }
}
