//! Serving: event stream replay to one client and to 100 at once (events/s over loopback
//! websockets, JSON with record bodies), and `getRecord` latency while a backfill and live
//! ingestion run in the same process.
//!
//! `cargo bench --bench server` prints a Markdown table for BENCHMARKS.md. The log holds the
//! events of two generated 100k-record repos (200,000 events, built once and cached in
//! `target/bench-cache/`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sluice::backfill::{Backfill, RunMode};
use sluice::firehose::Firehose;
use sluice::server::{DedicatedServer, ServerState, serve_dedicated};
use sluice::{Config, Filter, IndexOptions, Sluice};
use sluice_devnet::{Devnet, DevnetOptions};
use sluice_testkit::bench;
use tokio_tungstenite::tungstenite::Message;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Reads the stream after `cursor` until event `last`; returns the events read.
async fn replay(addr: &str, cursor: u64, last: u64) -> u64 {
    let url = format!("ws://{addr}/xrpc/dev.sluice.subscribeEvents?cursor={cursor}");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut n = 0;
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message {
            n += 1;
            if cursor + n == last {
                let event: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(event["id"].as_u64(), Some(last));
                break;
            }
        }
    }
    n
}

/// The server as `sluice run` starts it: on a runtime of its own.
async fn start_server(state: ServerState) -> (String, Arc<ServerState>, DedicatedServer) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let state = Arc::new(state);
    let server = serve_dedicated(listener, state.clone(), 2).unwrap();
    (addr, state, server)
}

/// Replay to one client, then to 100 clients at once (each the last 20,000 events); `which`
/// picks one of them (`1` or `100`), or both.
async fn replays(sluice: &Sluice, which: &str) {
    let (addr, _state, _server) =
        start_server(ServerState::new(sluice.pipeline().clone(), sluice.config().clone())).await;
    let head = sluice.store().next_event_id() - 1;
    if which != "100" {
        let started = Instant::now();
        let n = replay(&addr, 0, head).await;
        let secs = started.elapsed().as_secs_f64();
        println!("| replay, 1 client | {n} events | {secs:.2} s | {:.0} events/s |", n as f64 / secs);
    }
    if which == "1" {
        return;
    }
    let (clients, each) = (100u64, 20_000u64);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn({
                let addr = addr.clone();
                async move { replay(&addr, head - each, head).await }
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "| replay, {clients} clients at once ({each} events each) | {total} events | {secs:.2} s \
         | {:.0} events/s in all |",
        total as f64 / secs
    );
}

/// A devnet of 16 repos of 20,000 records on a runtime of its own at the lowest priority: it
/// stands for other machines, and its CPU (building CARs, signing commits) is not sluice's.
fn devnet_elsewhere() -> (Arc<Devnet>, Vec<String>, tokio::runtime::Runtime) {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .on_thread_start(lowest_priority)
            .enable_all()
            .build()
            .unwrap();
        let (net, dids) = runtime.block_on(async {
            let net = Devnet::start(DevnetOptions::default()).await.unwrap();
            let dids = net.populate(16, 20_000, 3).await;
            (net, dids)
        });
        (Arc::new(net), dids, runtime)
    })
    .join()
    .unwrap()
}

/// Writes a post every 5 ms (round robin over `dids`) until `stop`.
fn keep_writing(
    net: Arc<Devnet>,
    dids: Vec<String>,
    stop: tokio_util::sync::CancellationToken,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        lowest_priority();
        let mut i = 0;
        while !stop.is_cancelled() {
            let record = serde_json::json!({
                "$type": "app.bsky.feed.post",
                "text": "live",
                "createdAt": "2026-11-01T00:00:00.000Z"
            });
            let _ = net.put_record(&dids[i % dids.len()], "app.bsky.feed.post", &format!("3lzz{i:09}"), record);
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// `getRecord` latencies (sequential requests over one keep-alive connection) while the devnet
/// is backfilled and written to.
async fn get_record_under_load(sluice: &Sluice, did: &str, rkeys: &[String]) {
    let (net, dids, devnet_runtime) = devnet_elsewhere();
    let mut c = sluice.config().clone();
    (c.network.relay, c.network.plc) = (net.relay_url(), net.plc_url());
    // The devnet's PDSes are on loopback, which the address policy refuses by default.
    c.network.allow_loopback();
    // The devnet's repos live in this process too: no memory cap.
    c.backfill.max_memory_mb = 0;
    let backfill = Backfill::new(sluice.pipeline().clone(), &c);
    let firehose =
        Firehose::new(sluice.pipeline().clone(), backfill.resolver().clone(), &c, backfill.live_backlog().clone())
            .unwrap();
    let mut state = ServerState::new(sluice.pipeline().clone(), c);
    (state.backfill, state.firehose) = (Some(backfill.control()), Some(firehose.clone()));
    let (addr, state, _server) = start_server(state).await;
    let stop = state.stop.clone();
    tokio::spawn(async move { firehose.run(stop).await });
    let backfilled = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let backfilled = backfilled.clone();
        async move {
            backfill.run(RunMode::UntilEmpty, true).await.unwrap();
            backfilled.cancel();
        }
    });
    let writer = keep_writing(net.clone(), dids, state.stop.clone());
    let started = Instant::now();
    let client = client_elsewhere(addr, did.to_string(), rkeys.to_vec(), backfilled);
    let mut latencies = tokio::task::spawn_blocking(move || client.join().unwrap()).await.unwrap();
    let load_secs = started.elapsed().as_secs_f64();
    state.stop.cancel();
    writer.join().unwrap();
    // Dropped off the async context (a runtime may not be dropped inside another).
    std::thread::spawn(move || drop((net, devnet_runtime))).join().unwrap();
    latencies.sort();
    let pct =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "| getRecord during a backfill of 16 x 20k records + live writes ({load_secs:.1} s) | {} requests \
         | p50 {:.2} ms | p99 {:.2} ms (max {:.2} ms) |",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

/// Sequential getRecord requests over one keep-alive connection, from a thread and runtime
/// of their own (the client stands for another machine), until `backfilled` and at least
/// 2,000 requests; returns their latencies.
fn client_elsewhere(
    addr: String,
    did: String,
    rkeys: Vec<String>,
    backfilled: tokio_util::sync::CancellationToken,
) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let http = sluice_testkit::http();
            let mut latencies = Vec::new();
            while !backfilled.is_cancelled() || latencies.len() < 2000 {
                let rkey = &rkeys[latencies.len() * 7919 % rkeys.len()];
                let url = format!(
                    "http://{addr}/xrpc/com.atproto.repo.getRecord?repo={did}&collection=app.bsky.feed.post&rkey={rkey}"
                );
                let t = Instant::now();
                let response = http.get(url).send().await.unwrap();
                assert!(response.status().is_success());
                response.bytes().await.unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        })
    })
}

/// Nice 19 for the calling thread (the devnet's and the writer's: not sluice's work).
fn lowest_priority() {
    // SAFETY: plain syscalls on this thread's own id.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t, 19);
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.storage.path = dir.path().join("data");
    let sluice = Sluice::builder()
        .config(config)
        .filter(Filter::from_toml("mode = \"full\"\n", "bench").unwrap())
        .open()
        .unwrap();
    let mut posts = Vec::new();
    let mut did = String::new();
    for seed in [100_000, 100_001] {
        let (path, account) = bench::generated_car(seed);
        sluice.index_car(&std::fs::read(path).unwrap(), &IndexOptions::default()).unwrap();
        if posts.is_empty() {
            did = account.did.clone();
            posts = sluice
                .store()
                .records()
                .of_repo(&did)
                .unwrap()
                .into_keys()
                .filter(|(c, _)| c == "app.bsky.feed.post")
                .map(|(_, r)| r.to_string())
                .collect();
        }
    }
    println!("| case | work | time | rate / latency |");
    println!("|---|---:|---:|---:|");
    // `SLUICE_BENCH=replay` (or `replay-1`, `replay-100`) or `=get-record` runs one case (for
    // profiling).
    let only = std::env::var("SLUICE_BENCH").unwrap_or_default();
    runtime.block_on(async {
        if only.is_empty() || only.starts_with("replay") {
            replays(&sluice, only.strip_prefix("replay-").unwrap_or("both")).await;
        }
        if only.is_empty() || only == "get-record" {
            get_record_under_load(&sluice, &did, &posts).await;
        }
    });
}
