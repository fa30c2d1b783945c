//! Many event stream subscribers at once (issue 33): sluice's peak memory and the aggregate
//! messages/s while N clients replay `dev.sluice.subscribeEvents`, the clients in another
//! process (this binary again, run as a child), each parsing every message and checking that
//! the ids come in order with no gap.
//!
//! The log: the 100,000 events of one generated repo (posts, likes and follows, built once and
//! cached in `target/bench-cache/`). Three shapes: `same`, every client replays the same last
//! `SLUICE_SUBSCRIBERS_EVENTS` events (default 20,000), `spread`, client `i` replays as many
//! from its own place in the log (cursors spread evenly over it), and `/subscribe`, every
//! client reads as many from the log's start in Jetstream's format (a time cursor cannot
//! pick a place among events indexed within the same second).
//!
//! `cargo bench --bench subscribers` prints a Markdown table for BENCHMARKS.md: per client
//! count (`SLUICE_SUBSCRIBERS`, default `10,100,1000`) and shape (`SLUICE_SUBSCRIBERS_SHAPES`,
//! default `same,spread,/subscribe`; memory a shape's clients leave with the allocator is
//! not counted again as the next one's growth), the wall time, messages/s in
//! all, and the growth of sluice's peak RSS over its RSS before the clients came (`VmHWM`,
//! reset through `/proc/self/clear_refs`), in all and per subscriber.

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sluice::server::{ServerState, serve_dedicated};
use sluice::{Config, Filter, IndexOptions, Sluice};
use sluice_testkit::bench;
use tokio_tungstenite::tungstenite::Message;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Set in the child: the server's address; its arguments are `clients first_cursor step events
/// jetstream` (`jetstream` 1: `/subscribe?cursor=0`, the cursors unused).
const CLIENT_ENV: &str = "SLUICE_SUBSCRIBERS_CLIENT";

fn main() {
    match std::env::var(CLIENT_ENV) {
        Ok(addr) => clients(&addr),
        Err(_) => server(),
    }
}

/// The child: `clients` websocket clients, client `i` replaying `events` events after cursor
/// `first + i * step`; prints `messages seconds` when all are done.
fn clients(addr: &str) {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let [clients, first, step, events, jetstream] = args[..] else {
        panic!("child arguments: clients first step events jetstream")
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let started = Instant::now();
    let total: u64 = runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|i| match jetstream {
                1 => tokio::spawn(replay_jetstream(addr.to_string(), events)),
                _ => tokio::spawn(replay(addr.to_string(), first + i * step, events)),
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        total
    });
    println!("{total} {}", started.elapsed().as_secs_f64());
}

/// Reads `events` events after `cursor`, each parsed and checked to follow the one before.
async fn replay(addr: String, cursor: u64, events: u64) -> u64 {
    let url = format!("ws://{addr}/xrpc/dev.sluice.subscribeEvents?cursor={cursor}");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("the server admits the client");
    let mut n = 0;
    while n < events {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let event: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(event["id"].as_u64(), Some(cursor + n + 1), "ids in order with no gap: {text:.200}");
                n += 1;
            }
            Some(Ok(_)) => {}
            other => panic!("the stream ended after {n} of {events} events: {other:?}"),
        }
    }
    n
}

/// Reads `events` messages of `/subscribe` from the log's start, each parsed and checked to
/// come no earlier than the one before.
async fn replay_jetstream(addr: String, events: u64) -> u64 {
    let url = format!("ws://{addr}/subscribe?cursor=0");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("the server admits the client");
    let (mut n, mut time) = (0, 0);
    while n < events {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let event: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                let at = event["time_us"].as_u64().expect("time_us");
                assert!(at >= time, "events in time order: {text:.200}");
                (n, time) = (n + 1, at);
            }
            Some(Ok(_)) => {}
            other => panic!("the stream ended after {n} of {events} events: {other:?}"),
        }
    }
    n
}

/// The parent: sluice and its server, and one child of clients per case.
fn server() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.storage.path = dir.path().join("data");
    config.server.max_stream_clients = 0;
    config.server.max_stream_clients_per_ip = 0;
    // One client process on the same two cores reads slower than sluice sends: it is not to
    // be closed as too slow here (what it measures is memory and throughput).
    config.server.send_timeout_secs = 3_600;
    let sluice = Sluice::builder()
        .config(config)
        .filter(Filter::from_toml("mode = \"full\"\n", "bench").unwrap())
        .open()
        .unwrap();
    let (path, _) = bench::generated_car(100_000);
    sluice.index_car(&std::fs::read(path).unwrap(), &IndexOptions::default()).unwrap();
    let head = sluice.store().next_event_id() - 1;
    let events: u64 = std::env::var("SLUICE_SUBSCRIBERS_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let counts: Vec<u64> = std::env::var("SLUICE_SUBSCRIBERS")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let shapes = std::env::var("SLUICE_SUBSCRIBERS_SHAPES").unwrap_or_else(|_| "same,spread,/subscribe".into());
    let (addr, _state, _server) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(ServerState::new(sluice.pipeline().clone(), sluice.config().clone()));
        let server = serve_dedicated(listener, state.clone(), 2).unwrap();
        (addr, state, server)
    });
    println!("log: {head} events; each client replays {events}");
    println!();
    println!(
        "| subscribers | shape | messages | wall (s) | messages/s in all | peak RSS growth (MB) | per subscriber (MB) |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for &n in &counts {
        for shape in shapes.split(',') {
            let (first, step, jetstream) = match shape {
                "same" => (head - events, 0, 0),
                "spread" => (0, (head - events) / n.max(1), 0),
                _ => (0, 0, 1),
            };
            std::thread::sleep(Duration::from_secs(1));
            let before_kb = bench::self_status_kb("VmRSS:");
            // Peak RSS from here on.
            std::fs::write("/proc/self/clear_refs", "5").unwrap();
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([n, first, step, events, jetstream].map(|a| a.to_string()))
                .env(CLIENT_ENV, &addr)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "the clients failed");
            let line = output.stdout.lines().next().unwrap().unwrap();
            let (messages, secs) = line.split_once(' ').unwrap();
            let (messages, secs): (u64, f64) = (messages.parse().unwrap(), secs.parse().unwrap());
            assert_eq!(messages, n * events, "every client got every event");
            let growth_mb = bench::self_status_kb("VmHWM:").saturating_sub(before_kb) as f64 / 1024.0;
            println!(
                "| {n} | {shape} | {messages} | {secs:.1} | {:.0} | {growth_mb:.0} | {:.2} |",
                messages as f64 / secs,
                growth_mb / n as f64
            );
        }
    }
}
