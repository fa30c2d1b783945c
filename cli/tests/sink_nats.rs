//! The NATS JetStream sink and sharded indexing, against a real `nats-server -js` started here
//! on 127.0.0.1 (Debian's package `nats-server`; `.ci/run` installs it) and the devnet: every
//! event reaches the stream once, in order, with its subject; a filtered consumer sees its
//! collection only; the sink catches up after NATS was down, with nothing trimmed meanwhile;
//! `kill -9` while publishing loses and duplicates nothing; two shards hold the index between
//! them and publish it to one stream.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice::backfill::{Backfill, RunMode};
use sluice::config::NatsSinkConfig;
use sluice::firehose::Firehose;
use sluice::sink::NatsSink;
use sluice::store::{Action, Store, StoredEvent};
use sluice::{Config, Sluice};
use sluice_devnet::{Devnet, DevnetOptions};
use sluice_testkit as testkit;
use sluice_testkit::{NatsServer, in_step};
use tokio_util::sync::CancellationToken;

/// Every wait here ends well within this.
const LIMIT: Duration = Duration::from_secs(60);

/// One message of the stream: its subject, `Nats-Msg-Id` and JSON payload.
#[derive(Debug, Clone, PartialEq)]
struct Published {
    subject: String,
    id: String,
    payload: Value,
}

/// How many messages stream `SLUICE` holds (0 before the sink made it).
async fn stream_len(js: &jetstream::Context) -> u64 {
    match js.get_stream("SLUICE").await {
        Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
        Err(_) => 0,
    }
}

/// Every message of stream `SLUICE`, in stream order.
async fn stream_messages(url: &str) -> Vec<Published> {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let mut stream = js.get_stream("SLUICE").await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        let m = stream.get_raw_message(seq).await.unwrap();
        let id = m.headers.get(async_nats::header::NATS_MESSAGE_ID).map(|v| v.as_str().to_string()).unwrap_or_default();
        out.push(Published {
            subject: m.subject.to_string(),
            id,
            payload: serde_json::from_slice(&m.payload).unwrap(),
        });
    }
    out
}

/// What the stream must hold for `store`'s log, published by node `node`. Written from the
/// contract (DESIGN.md, "Events" and "Beyond one machine"; README, "Messages"), not with the
/// sink's own functions, so that a wrong rendering fails here: subjects
/// `sluice.record.<collection>.<create|update|delete>`, `sluice.identity` and `sluice.account`;
/// `Nats-Msg-Id` `<node>:<event id>`; the payload the event's JSON, `{"id", "type", <type>: {...}}`,
/// built from the stored event's fields. (DESIGN.md's identity example also has `is_active`
/// and `status`, which the log does not keep: an identity event has its DID and handle.)
fn expected(store: &Store, node: &str) -> Vec<Published> {
    let events = store.log().from(0, usize::MAX).unwrap();
    events
        .iter()
        .map(|(id, e)| {
            let (subject, payload) = match e {
                StoredEvent::Record(r) => {
                    let action = match r.action {
                        Action::Create => "create",
                        Action::Update => "update",
                        Action::Delete => "delete",
                    };
                    let mut record = json!({
                        "live": r.live,
                        "did": r.did.as_str(),
                        "rev": r.rev.as_str(),
                        "collection": r.collection.as_str(),
                        "rkey": r.rkey.as_str(),
                        "action": action,
                    });
                    // A new version carries its CID and its record (a handler's JSON when one
                    // replaced it); a delete has neither.
                    if !r.cid.is_empty() {
                        record["cid"] = cid::Cid::try_from(&r.cid[..]).unwrap().to_string().into();
                        record["record"] = match &r.replaced {
                            Some(replaced) => serde_json::from_str(replaced).unwrap(),
                            None => dag_cbor_json(r.body.as_deref().expect("the event carries its record")),
                        };
                    }
                    if !r.handled.is_empty() {
                        let handled =
                            r.handled.iter().map(|(name, v)| (name.to_string(), serde_json::from_str(v).unwrap()));
                        record["handled"] = handled.collect::<serde_json::Map<String, Value>>().into();
                    }
                    let subject = format!("sluice.record.{}.{action}", r.collection);
                    (subject, json!({"id": id, "type": "record", "record": record}))
                }
                StoredEvent::Identity(i) => (
                    "sluice.identity".to_string(),
                    json!({"id": id, "type": "identity", "identity": {"did": i.did, "handle": i.handle}}),
                ),
                StoredEvent::Account(a) => {
                    let account = json!({"did": a.did, "active": a.active, "status": a.status});
                    ("sluice.account".to_string(), json!({"id": id, "type": "account", "account": account}))
                }
            };
            Published { subject, id: format!("{node}:{id}"), payload }
        })
        .collect()
}

/// A DAG-CBOR value as AT Protocol JSON (the data model: bytes as `{"$bytes": <base64, no
/// padding>}`, a link as `{"$link": <CID>}`), read here so that what the test expects owes
/// nothing to sluice's codecs.
fn dag_cbor_json(bytes: &[u8]) -> Value {
    let mut at = 0;
    let value = cbor_item(bytes, &mut at);
    assert_eq!(at, bytes.len(), "one CBOR item");
    value
}

fn cbor_item(b: &[u8], at: &mut usize) -> Value {
    let (major, info) = (b[*at] >> 5, b[*at] & 0x1f);
    *at += 1;
    let arg = |at: &mut usize| -> u64 {
        let len = match info {
            0..=23 => return u64::from(info),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => panic!("no indefinite lengths in DAG-CBOR"),
        };
        let v = b[*at..*at + len].iter().fold(0u64, |v, &byte| (v << 8) | u64::from(byte));
        *at += len;
        v
    };
    let take = |at: &mut usize, len: u64| {
        let slice = &b[*at..*at + len as usize];
        *at += len as usize;
        slice
    };
    match major {
        0 => arg(at).into(),
        1 => (-1 - arg(at) as i64).into(),
        2 => {
            let len = arg(at);
            json!({"$bytes": base64(take(at, len))})
        }
        3 => {
            let len = arg(at);
            String::from_utf8(take(at, len).to_vec()).unwrap().into()
        }
        4 => (0..arg(at)).map(|_| cbor_item(b, at)).collect::<Vec<_>>().into(),
        5 => (0..arg(at))
            .map(|_| match cbor_item(b, at) {
                Value::String(key) => (key, cbor_item(b, at)),
                other => panic!("a map key that is not text: {other}"),
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
        6 => {
            assert_eq!(arg(at), 42, "the only tag is a link's");
            let (head, len) = (b[*at], b[*at] & 0x1f);
            assert!(head >> 5 == 2 && len == 24, "a link is a byte string of under 256 bytes");
            let len = u64::from(b[*at + 1]);
            *at += 2;
            let link = take(at, len);
            assert_eq!(link[0], 0, "a link's bytes start with the identity multibase prefix");
            json!({"$link": cid::Cid::try_from(&link[1..]).unwrap().to_string()})
        }
        7 => match info {
            20 => false.into(),
            21 => true.into(),
            22 => Value::Null,
            _ => panic!("no floats or other simple values in the data model"),
        },
        _ => unreachable!(),
    }
}

/// Base64 with the standard alphabet and no padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &byte)| n | (u32::from(byte) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// sluice following a devnet (backfill, firehose) and publishing to NATS, in this process.
struct Node {
    sluice: Sluice,
    backfill: Arc<Backfill>,
    firehose: Arc<Firehose>,
    sink: Arc<NatsSink>,
    config: Config,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

async fn node(net: &Devnet, nats: &NatsServer, shard: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.storage.path = dir.path().join("data");
    testkit::on_devnet(&mut c, net);
    (c.backfill.retry_min_ms, c.backfill.retry_max_ms) = (50, 200);
    c.firehose.max_reconnect_secs = 1;
    c.sink.nats = Some(NatsSinkConfig { url: nats.url(), ..Default::default() });
    c.cluster.shard = shard.parse().unwrap();
    let sluice = testkit::sluice_full(&c);
    let backfill = Backfill::new(sluice.pipeline().clone(), &c);
    let firehose: Arc<Firehose> = sluice::service::firehose_beside(&sluice, &c, &backfill).unwrap();
    let sink = NatsSink::new(sluice.store().clone(), c.sink.nats.clone().unwrap(), c.cluster.node_name()).unwrap();
    let stop = CancellationToken::new();
    let (f, s) = (firehose.clone(), stop.clone());
    let mut tasks = vec![tokio::spawn(async move { f.run(s).await.expect("live ingestion runs") })];
    let b = backfill.clone();
    tasks.push(tokio::spawn(async move { b.run(RunMode::Forever, true).await.expect("backfill runs") }));
    tasks.push(tokio::spawn(sink.clone().run(stop.clone())));
    Node { sluice, backfill, firehose, sink, config: c, stop, tasks, _dir: dir }
}

impl Node {
    fn store(&self) -> &Store {
        self.sluice.store()
    }

    /// Whether the sink has published the whole log.
    fn published_all(&self) -> bool {
        self.sink.published() + 1 == self.store().next_event_id() && self.sink.behind() == 0
    }

    async fn stop(self) {
        self.backfill.stop();
        self.stop.cancel();
        for task in self.tasks {
            tokio::time::timeout(LIMIT, task).await.expect("stops in time").expect("no panic");
        }
    }
}

fn post(text: &str) -> Value {
    json!({"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-11-01T00:00:00.000Z"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_stream_once_in_order_with_its_subject() {
    let nats = NatsServer::start();
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = net.populate(4, 15, 5).await;
    let n = node(&net, &nats, "0/1").await;
    testkit::wait_until("the backfill and its publishing", || {
        dids.iter().all(|d| in_step(n.store(), &net, d)) && n.published_all()
    })
    .await;
    net.put_record(&dids[0], "app.bsky.feed.post", "3lzzzzzzzzzn0", post("live")).unwrap();
    net.delete_record(&dids[0], "app.bsky.feed.post", "3lzzzzzzzzzn0").unwrap();
    net.emit_identity(&dids[1]);
    testkit::wait_until("the live events and their publishing", || {
        n.store().next_event_id() > 4 * 15 + 3 && n.published_all()
    })
    .await;

    let published = stream_messages(&nats.url()).await;
    assert_eq!(
        published,
        expected(n.store(), "shard-0-of-1"),
        "the stream holds the log: every event once, in id order, as subscribeEvents sends it"
    );
    assert!(published.iter().any(|m| m.subject == "sluice.record.app.bsky.feed.post.delete"));
    assert!(published.iter().any(|m| m.subject == "sluice.identity"));
    let mut state = sluice::server::ServerState::new(n.sluice.pipeline().clone(), n.config.clone());
    state.sink = Some(n.sink.clone());
    let metrics = sluice::server::metrics::render(&state);
    for line in [
        format!("sluice_nats_published_id {}", published.len()),
        "sluice_nats_behind_events 0".into(),
        "sluice_nats_connected 1".into(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "/metrics has {line}");
    }
    let batches: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_nats_batches_total "))
        .expect("/metrics counts batches")
        .parse()
        .unwrap();
    assert!((1..=published.len() as u64).contains(&batches), "{batches} batches for {} events", published.len());

    // A consumer filtered to one collection sees exactly that collection's events.
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = js.get_stream("SLUICE").await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: "sluice.record.app.bsky.feed.like.>".into(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let want: Vec<Value> = published
        .iter()
        .filter(|m| m.payload["record"]["collection"] == json!("app.bsky.feed.like"))
        .map(|m| m.payload.clone())
        .collect();
    assert!(!want.is_empty(), "the devnet's repos hold likes");
    let mut got = Vec::new();
    let mut batch =
        consumer.fetch().max_messages(want.len() + 10).expires(Duration::from_secs(2)).messages().await.unwrap();
    while let Some(m) = batch.next().await {
        got.push(serde_json::from_slice::<Value>(&m.unwrap().payload).unwrap());
    }
    assert_eq!(got, want, "the filtered consumer sees the likes, in order, and nothing else");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexing_goes_on_while_nats_is_down_and_the_sink_catches_up_after() {
    let mut nats = NatsServer::start();
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = net.populate(3, 10, 9).await;
    let n = node(&net, &nats, "0/1").await;
    testkit::wait_until("the backfill and its publishing", || {
        dids.iter().all(|d| in_step(n.store(), &net, d)) && n.published_all()
    })
    .await;

    nats.stop();
    let published = n.sink.published();
    for i in 0..20 {
        net.put_record(&dids[i % 3], "app.bsky.feed.post", &format!("3lzzzzzzzzd{i:02}"), post("while NATS is down"))
            .unwrap();
    }
    testkit::wait_until("the writes indexed while NATS is down", || dids.iter().all(|d| in_step(n.store(), &net, d)))
        .await;
    assert_eq!(n.sink.published(), published, "nothing was published meanwhile");
    assert!(n.sink.behind() >= 20, "the sink knows how far behind it is: {}", n.sink.behind());
    // Retention keeps what the sink has not published, however old.
    let store = n.sluice.store().clone();
    tokio::task::spawn_blocking(move || store.log().trim_older_than(Duration::ZERO).unwrap()).await.unwrap();
    assert!(
        n.store().log().oldest_id().unwrap().is_some_and(|oldest| oldest <= published + 1),
        "unpublished events are kept"
    );
    testkit::wait_until("the sink to notice", || !n.sink.connected()).await;

    nats.restart();
    testkit::wait_until("the sink to catch up", || n.published_all() && n.sink.connected()).await;
    let messages = stream_messages(&nats.url()).await;
    // Retention may have removed events the stream already holds: the log is its tail.
    let log = expected(n.store(), "shard-0-of-1");
    assert!(messages.len() >= log.len() && log.len() >= 20);
    assert_eq!(
        &messages[messages.len() - log.len()..],
        &log[..],
        "the writes made while NATS was down are published, in order"
    );
    let ids: BTreeSet<&str> = messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), messages.len(), "no event twice");
    n.stop().await;
}

/// Runs `sluice run` on `config` until its `/health` (on `port`) says it holds `events` events
/// or more and the sink is not behind, then stops it gracefully (SIGTERM).
async fn run_until_published(config: &std::path::Path, log: &std::path::Path, port: u16, events: u64) {
    let mut child = testkit::spawn_sluice(env!("CARGO_BIN_EXE_sluice"), config, "run", log);
    let (http, deadline) = (testkit::http(), Instant::now() + LIMIT);
    loop {
        let health: Option<Value> = match http.get(format!("http://127.0.0.1:{port}/health")).send().await {
            Ok(res) => res.json().await.ok(),
            Err(_) => None,
        };
        if let Some(h) = health
            && h["events"].as_u64().unwrap_or(0) >= events
            && h["nats"]["behind"] == json!(0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the run publishes everything; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_publishing_loses_and_duplicates_nothing() {
    let nats = NatsServer::start();
    let net = Arc::new(Devnet::start(DevnetOptions::default()).await.unwrap());
    let dids = net.populate(40, 30, 17).await;
    // The devnet keeps writing through the kills, so the sink is always publishing.
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (net, dids, writing) = (net.clone(), dids.clone(), writing.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                net.put_record(
                    &dids[n % dids.len()],
                    "app.bsky.feed.post",
                    &format!("3lzzzz{n:07}"),
                    post("during the kills"),
                )
                .unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = format!(
        "[backfill]\nretry_min_ms = 50\nretry_max_ms = 100\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
         [sink.nats]\nurl = {:?}\nin_flight = 64\n",
        nats.url()
    );
    let config = testkit::devnet_config_file(dir.path(), &net, &extra);
    let log = dir.path().join("sluice.log");
    // Each run is killed once the stream has taken that many more events from it: while it is
    // publishing (64 publishes in flight), at a different point each time.
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    for more in [200u64, 100, 400, 150] {
        let from = stream_len(&js).await;
        let mut child = testkit::spawn_sluice(env!("CARGO_BIN_EXE_sluice"), &config, "run", &log);
        let deadline = Instant::now() + LIMIT;
        while stream_len(&js).await < from + more {
            assert!(
                Instant::now() < deadline && child.try_wait().unwrap().is_none(),
                "the run publishes {more} more events; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let writes = tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
    // A kill can land after the stream took events and before their acks were saved (the
    // cursor is saved every 256 acks and whenever the window empties): the stream then holds
    // events past the cursor, which the next run publishes again. That may or may not have
    // happened, so it is made for sure: the saved cursor is set back 50 events, all of which
    // the stream holds.
    {
        let store = Store::open(&dir.path().join("data")).unwrap();
        let cursor: u64 = store.cursors().get("nats").unwrap().and_then(|c| c.parse().ok()).unwrap_or(0);
        assert!(cursor > 50, "events were published before the kills ended ({cursor})");
        let held = stream_messages(&nats.url()).await;
        assert!(
            held.len() as u64 >= cursor,
            "the stream holds every event up to the cursor ({} < {cursor})",
            held.len()
        );
        assert_eq!(
            Some(&held[..]),
            expected(&store, "shard-0-of-1").get(..held.len()),
            "what the stream holds is the log's start, once each"
        );
        store.cursors().save("nats", &(cursor - 50).to_string()).unwrap();
    }
    // The last run finishes the backfill and the publishing, then stops gracefully.
    run_until_published(&config, &log, port, (dids.len() * 30 + writes) as u64).await;
    let store = Store::open(&dir.path().join("data")).unwrap();
    assert!(dids.iter().all(|d| in_step(&store, &net, d)));
    assert_eq!(
        stream_messages(&nats.url()).await,
        expected(&store, "shard-0-of-1"),
        "after the kills the stream equals the log: no gap, no duplicate"
    );
    assert!(
        std::fs::read_to_string(&log).unwrap().contains("republished"),
        "the last run published events the stream had, which it dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_hold_the_index_between_them_and_publish_it_to_one_stream() {
    let nats = NatsServer::start();
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = net.populate(12, 8, 23).await;
    let (a, b) = (node(&net, &nats, "0/2").await, node(&net, &nats, "1/2").await);
    let owner = |did: &str| if sluice::cluster::Shard::of(did, 2) == 0 { &a } else { &b };
    testkit::wait_until("both shards' backfills and publishing", || {
        dids.iter().all(|d| in_step(owner(d).store(), &net, d)) && a.published_all() && b.published_all()
    })
    .await;
    net.put_record(&dids[0], "app.bsky.feed.post", "3lzzzzzzzzzs0", post("live, on its shard")).unwrap();
    testkit::wait_until("the live write on its shard", || {
        in_step(owner(&dids[0]).store(), &net, &dids[0]) && a.published_all() && b.published_all()
    })
    .await;

    let other_node = if sluice::cluster::Shard::of(&dids[0], 2) == 0 { &b } else { &a };
    testkit::wait_until("the other shard to drop the frame", || other_node.firehose.other_shards() > 0).await;
    assert_eq!(other_node.store().repos().state(&dids[0]).unwrap(), None, "the other shard keeps nothing of it");

    let (on_a, on_b): (BTreeSet<&String>, BTreeSet<&String>) = (
        dids.iter().filter(|d| a.store().repos().state(d).unwrap().is_some()).collect(),
        dids.iter().filter(|d| b.store().repos().state(d).unwrap().is_some()).collect(),
    );
    assert!(on_a.is_disjoint(&on_b), "no repo on both shards");
    assert_eq!(on_a.len() + on_b.len(), dids.len(), "every repo on one shard");
    assert!(!on_a.is_empty() && !on_b.is_empty(), "both shards hold repos");

    // The merged stream holds each record's create once.
    let messages = stream_messages(&nats.url()).await;
    let mut creates = BTreeMap::new();
    for m in &messages {
        if m.payload["type"] == json!("record") && m.payload["record"]["action"] == json!(Action::Create.as_str()) {
            let r = &m.payload["record"];
            *creates.entry((r["did"].to_string(), r["collection"].to_string(), r["rkey"].to_string())).or_insert(0) +=
                1;
        }
    }
    let records: usize = dids.iter().map(|d| net.records(d).len()).sum();
    assert_eq!(creates.len(), records, "every record's create is in the merged stream");
    assert!(creates.values().all(|&n| n == 1), "each once");
    let nodes: BTreeSet<&str> = messages.iter().map(|m| m.id.split(':').next().unwrap()).collect();
    assert_eq!(nodes, BTreeSet::from(["shard-0-of-2", "shard-1-of-2"]));

    // A request for another shard's repo is refused with the shard that holds it.
    let other = dids.iter().find(|d| sluice::cluster::Shard::of(d, 2) == 1).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sluice::server::serve(
        listener,
        Arc::new(sluice::server::ServerState::new(a.sluice.pipeline().clone(), a.config.clone())),
    ));
    let res = testkit::http()
        .get(format!("{base}/xrpc/com.atproto.repo.listRecords?repo={other}&collection=app.bsky.feed.post"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_eq!((status, body["error"].as_str()), (400, Some("RepoOnOtherShard")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("shard 1/2"), "{body}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_exists_is_used_as_it_is() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mine = jetstream::stream::Config {
        name: "SLUICE".into(),
        subjects: vec!["sluice.>".into()],
        max_messages: 1_000_000,
        description: Some("the operator's".into()),
        ..Default::default()
    };
    js.create_stream(mine).await.unwrap();
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = net.populate(2, 5, 31).await;
    let n = node(&net, &nats, "0/1").await;
    testkit::wait_until("the backfill and its publishing", || {
        dids.iter().all(|d| in_step(n.store(), &net, d)) && n.published_all()
    })
    .await;
    let config = js.get_stream("SLUICE").await.unwrap().info().await.unwrap().config.clone();
    assert_eq!(
        (config.max_messages, config.max_age, config.description.as_deref()),
        (1_000_000, Duration::ZERO, Some("the operator's")),
        "left as it was"
    );
    assert_eq!(stream_messages(&nats.url()).await, expected(n.store(), "shard-0-of-1"));
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_started_while_nats_is_down_publishes_once_it_is_up() {
    let mut nats = NatsServer::start();
    nats.stop();
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = net.populate(2, 5, 37).await;
    let n = node(&net, &nats, "0/1").await;
    testkit::wait_until("the backfill, NATS down", || dids.iter().all(|d| in_step(n.store(), &net, d))).await;
    testkit::wait_until("the sink to report its failure", || n.sink.last_error().is_some()).await;
    assert!(!n.sink.connected() && n.sink.published() == 0 && n.sink.behind() > 0);
    nats.restart();
    testkit::wait_until("the sink to publish everything", || n.published_all() && n.sink.connected()).await;
    assert_eq!(stream_messages(&nats.url()).await, expected(n.store(), "shard-0-of-1"));
    n.stop().await;
}

/// A change of one post-create event to `did`'s `rkey`.
fn one_event(did: &str, rkey: &str) -> sluice::store::RepoChange {
    let body = sluice::handlers::value::json_to_cbor(&post(rkey)).unwrap();
    let cid = cid::Cid::new_v1(0x71, multihash::Multihash::<64>::wrap(0x12, &[9; 32]).unwrap()).to_bytes();
    let event = sluice::store::RecordEvent {
        live: true,
        did: did.into(),
        rev: "3l3qo2vuowo2b".into(),
        collection: "app.bsky.feed.post".into(),
        rkey: rkey.into(),
        action: Action::Create,
        cid,
        replaced: None,
        handled: Vec::new(),
        body: Some(body.into()),
    };
    sluice::store::RepoChange {
        did: did.into(),
        events: vec![sluice::store::StoredEvent::Record(event)],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_commits_in_quick_succession_go_out_as_one_batch() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    // A linger far longer than the commits below take (100 ms), so the test does not race it.
    let config = NatsSinkConfig { url: nats.url(), linger_ms: 1000, ..Default::default() };
    let sink = NatsSink::new(store.clone(), config, "solo".into()).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(sink.clone().run(stop.clone()));
    let caught_up = |s: &NatsSink| s.published() + 1 == store.next_event_id();

    store.commit(one_event("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "3l0000000000a")).unwrap();
    testkit::wait_until("the first event", || caught_up(&sink)).await;
    assert_eq!(sink.batches(), 1);
    // Far enough apart that a sink without the linger sends each on its own.
    for i in 0..6 {
        store.commit(one_event("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", &format!("3l000000000{i}b"))).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    testkit::wait_until("the six after it", || caught_up(&sink)).await;
    assert_eq!(sink.batches(), 2, "six commits 20 ms apart, within the linger, are read and sent together");
    assert_eq!(stream_messages(&nats.url()).await, expected(&store, "solo"), "all seven, once, in order");
    stop.cancel();
    tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
}
