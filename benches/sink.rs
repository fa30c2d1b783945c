//! The NATS sink's throughput against a bare publisher: events published per second into a
//! local JetStream stream on file storage (a `nats-server -js` started here), next to an
//! async-nats publisher sending messages of the same sizes (the same subjects, payloads and
//! `Nats-Msg-Id`s) to the same server in the same run, with the same window of publishes in
//! flight before their acks are awaited. The bare publisher is the limit; the goal is the sink
//! at 80% of it or more.
//!
//! `cargo bench --bench sink` prints a Markdown table for BENCHMARKS.md.
//! `SLUICE_SINK_EVENTS` (default 200000) sets the log's size, `SLUICE_BENCH_ROUNDS` (default 2)
//! how many interleaved rounds of both are run; each round uses streams of its own.
//!
//! `SLUICE_SINK_LOG=<data dir>` instead measures the sink's own work on the log of a real
//! store (e.g. one `sluice backfill` wrote from a devnet, with handlers on), with no NATS:
//! reading the log, then reading it and rendering each event's JSON and subject, per event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use sluice::config::NatsSinkConfig;
use sluice::sink::NatsSink;
use sluice::store::{Action, RecordEvent, RepoChange, Store, StoredEvent};
use sluice_testkit::NatsServer;
use sluice_testkit::bench;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Publishes sent before their acks are awaited, by both publishers.
const IN_FLIGHT: usize = 512;

/// Fills `store` with `n` post-create events of the network's shape (a short post body), in
/// commits of 500 as a backfill writes them.
fn fill(store: &Store, n: usize) {
    let body = sluice::handlers::value::json_to_cbor(&json!({
        "$type": "app.bsky.feed.post",
        "text": "a post of the usual length, with a few words in it, and a link or two to somewhere",
        "langs": ["en"],
        "createdAt": "2026-11-01T00:00:00.000Z"
    }))
    .unwrap();
    let cid = cid::Cid::new_v1(0x71, multihash::Multihash::<64>::wrap(0x12, &[7; 32]).unwrap()).to_bytes();
    for chunk in 0..n.div_ceil(500) {
        let did = format!("did:plc:{:024}", chunk % 4000);
        let events = (0..500.min(n - chunk * 500))
            .map(|i| {
                StoredEvent::Record(RecordEvent {
                    live: false,
                    did: did.as_str().into(),
                    rev: "3l3qo2vuowo2b".into(),
                    collection: "app.bsky.feed.post".into(),
                    rkey: format!("3l{chunk:06}{i:05}").into(),
                    action: Action::Create,
                    cid: cid.clone(),
                    replaced: None,
                    handled: Vec::new(),
                    body: Some(Bytes::from(body.clone())),
                })
            })
            .collect();
        store.commit(RepoChange { did, events, ..Default::default() }).unwrap();
    }
}

/// The bare publisher: `messages` into a new stream taking `prefix.>`; returns the seconds.
async fn bare(url: &str, round: usize, messages: &[(u64, String, Bytes)]) -> f64 {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let prefix = format!("bare{round}");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: format!("BARE{round}"),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    for window in messages.chunks(IN_FLIGHT) {
        let mut acks = Vec::with_capacity(window.len());
        for (id, subject, payload) in window {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("bench:{id}").as_str());
            acks.push(js.publish_with_headers(format!("{prefix}{subject}"), headers, payload.clone()).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    started.elapsed().as_secs_f64()
}

/// The sink over `store`'s whole log into a new stream; returns the seconds.
async fn sink(url: &str, round: usize, store: &Arc<Store>) -> f64 {
    store.cursors().save(sluice::sink::CURSOR, "0").unwrap();
    let config = NatsSinkConfig {
        url: url.into(),
        stream: format!("SINK{round}"),
        subject_prefix: format!("sink{round}"),
        in_flight: IN_FLIGHT,
        ..Default::default()
    };
    let sink = NatsSink::new(store.clone(), config, "bench".into()).unwrap();
    let last = store.next_event_id() - 1;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(sink.clone().run(stop.clone()));
    while sink.published() < last {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    task.await.unwrap();
    secs
}

/// CPU seconds (user + system) of process `pid` so far.
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / ticks
}

/// Runs `f`, returning its result, this process's CPU seconds and the NATS server's.
fn measured<T>(nats: &NatsServer, f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (ours, theirs) = (bench::cpu_seconds(), process_cpu(nats.pid().unwrap()));
    let out = f();
    (out, bench::cpu_seconds() - ours, process_cpu(nats.pid().unwrap()) - theirs)
}

/// Per event: reading `data`'s log in the sink's batches, then reading and rendering it as the
/// sink does ([`sluice::sink::messages_from`]).
fn read_and_render(data: &str) {
    let store = Store::open(std::path::Path::new(data)).unwrap();
    let batch = IN_FLIGHT / 2;
    // Returns µs per event, events, and bytes of JSON and subject per event (0 when reading only).
    let pass = |render: bool| {
        let (started, mut from, mut events, mut bytes) = (Instant::now(), 0u64, 0usize, 0usize);
        loop {
            let (last, n) = if render {
                let messages = sluice::sink::messages_from(&store, "sluice", from, batch).unwrap();
                bytes += messages.iter().map(|(_, subject, payload)| subject.len() + payload.len()).sum::<usize>();
                (messages.last().map(|m| m.0), messages.len())
            } else {
                let events = store.log().from(from, batch).unwrap();
                (events.last().map(|e| e.0), events.len())
            };
            let Some(last) = last else { break };
            (from, events) = (last + 1, events + n);
        }
        (started.elapsed().as_secs_f64() * 1e6 / events.max(1) as f64, events, bytes / events.max(1))
    };
    println!("| pass | events | µs/event | bytes/event (JSON and subject) |\n|---|---:|---:|---:|");
    for _ in 0..std::env::var("SLUICE_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3) {
        let (read, events, _) = pass(false);
        let (both, _, bytes) = pass(true);
        println!("| read | {events} | {read:.2} | |\n| read and render | {events} | {both:.2} | {bytes} |");
    }
}

fn main() {
    if let Ok(data) = std::env::var("SLUICE_SINK_LOG") {
        return read_and_render(&data);
    }
    let n: usize = std::env::var("SLUICE_SINK_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let rounds: usize = std::env::var("SLUICE_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    fill(&store, n);
    // What the sink sends, with the subjects' prefix left off.
    let messages: Vec<(u64, String, Bytes)> = store
        .log()
        .from(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(id, e)| {
            (id, sluice::sink::subject("", &e), Bytes::from(sluice::wire::event_json_bytes(&store, id, &e).unwrap()))
        })
        .collect();
    let bytes: usize = messages.iter().map(|(_, _, p)| p.len()).sum();
    println!("{n} events, {} bytes of JSON each on average, {IN_FLIGHT} in flight\n", bytes / n);
    println!(
        "| publisher | events | s | events/s | sink / bare | publisher CPU µs/event \
         | nats-server CPU µs/event |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let per_event = |cpu: f64| cpu * 1e6 / n as f64;
    for round in 0..rounds {
        let (b, b_ours, b_nats) = measured(&nats, || runtime.block_on(bare(&nats.url(), round, &messages)));
        let (s, s_ours, s_nats) = measured(&nats, || runtime.block_on(sink(&nats.url(), round, &store)));
        println!(
            "| bare async-nats (round {}) | {n} | {b:.2} | {:.0} | | {:.1} | {:.1} |",
            round + 1,
            n as f64 / b,
            per_event(b_ours),
            per_event(b_nats)
        );
        println!(
            "| sluice sink (round {}) | {n} | {s:.2} | {:.0} | {:.2} | {:.1} | {:.1} |",
            round + 1,
            n as f64 / s,
            b / s,
            per_event(s_ours),
            per_event(s_nats)
        );
    }
}
