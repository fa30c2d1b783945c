//! `/subscribe`, sluice's Jetstream v1-compatible stream, against a devnet (127.0.0.1 only)
//! with backfill, live ingestion and the server running, read with a real websocket client:
//! every message's shape field by field against Jetstream v1's (exact key sets per kind, types,
//! omitted fields), wantedCollections (exact and prefix) and wantedDids, cursor replay from a
//! time (inclusive, as Jetstream) then live, compress=true, requireHello, options_update, slow
//! clients, and bad parameters refused before the upgrade.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sluice::backfill::RunMode;
use sluice::service::{Service, ServiceOptions};
use sluice::store::{RepoStatus, StoredEvent};
use sluice::{Config, Sluice};
use sluice_devnet::{AccountSpec, AccountStatus, Devnet, DevnetOptions};
use sluice_testkit as testkit;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Every wait ends well within this (each test stays under 15 s).
const LIMIT: Duration = Duration::from_secs(10);
type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// sluice with backfill, live ingestion and the server, over a devnet: `sluice run`'s
/// [`Service`], on a port the system picks.
struct Running {
    net: Devnet,
    sluice: Sluice,
    stop: Box<dyn Fn() + Send + Sync>,
    addr: String,
    _dir: tempfile::TempDir,
}

async fn start(net: Devnet, tweak: impl FnOnce(&mut Config)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.storage.path = dir.path().join("data");
    testkit::on_devnet(&mut c, &net);
    (c.backfill.retry_min_ms, c.backfill.retry_max_ms, c.backfill.progress_secs) = (50, 200, 1);
    c.server.listen = "127.0.0.1:0".into();
    tweak(&mut c);
    let sluice = testkit::sluice_full(&c);
    let service = Service::start(&sluice, &c, RunMode::Forever, &ServiceOptions::default()).await.unwrap();
    let addr = service.server_addr().expect("the server runs").to_string();
    let stop = Box::new(service.stopper());
    tokio::spawn(service.run(RunMode::Forever, true));
    let running = Running { net, sluice, stop, addr, _dir: dir };
    testkit::wait_until("the firehose to connect", || {
        running.net.request_count("com.atproto.sync.subscribeRepos") >= 1
    })
    .await;
    running
}

impl Running {
    fn stop(&self) {
        (self.stop)();
    }

    /// The repo is synced and holds what its PDS holds.
    fn in_step(&self, did: &str) -> bool {
        let store = self.sluice.store();
        let stored: BTreeSet<(String, String)> =
            store.records().of_repo(did).unwrap().into_keys().map(|(c, r)| (c.into(), r.into())).collect();
        let on_pds: BTreeSet<(String, String)> = self.net.records(did).into_keys().collect();
        store.repos().state(did).unwrap().is_some_and(|s| s.status == RepoStatus::Synced) && stored == on_pds
    }

    /// The whole log as (id, time, event).
    fn log(&self) -> Vec<(u64, u64, StoredEvent)> {
        self.sluice.store().log().from_with_times(0, usize::MAX).unwrap()
    }

    async fn connect(&self, query: &str) -> Socket {
        tokio_tungstenite::connect_async(format!("ws://{}/subscribe{query}", self.addr)).await.expect("connects").0
    }
}

/// A devnet with one account per seed, each with one post, and sluice in step with them.
async fn running_with(seeds: &[u64], tweak: impl FnOnce(&mut Config)) -> (Running, Vec<String>) {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids: Vec<String> =
        seeds.iter().map(|&seed| net.create_account(AccountSpec { seed, ..Default::default() })).collect();
    for did in &dids {
        net.put_record(did, "app.bsky.feed.post", "3laaaaaaaaaa2", post("first")).unwrap();
    }
    let s = start(net, tweak).await;
    for did in &dids {
        testkit::wait_until("the backfill", || s.in_step(did)).await;
    }
    (s, dids)
}

fn post(text: &str) -> Value {
    json!({"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-11-01T00:00:00.000Z"})
}

fn status(emoji: &str) -> Value {
    json!({"$type": "xyz.statusphere.status", "status": emoji, "createdAt": "2026-11-01T00:00:00.000Z"})
}

/// The next message as JSON (binary messages are zstd frames, decompressed), or `None` when
/// the stream closed.
async fn next_event(socket: &mut Socket) -> Option<Value> {
    next_message(socket).await.map(|m| serde_json::from_slice(&m).unwrap())
}

/// The next message's bytes (decompressed when binary).
async fn next_message(socket: &mut Socket) -> Option<Vec<u8>> {
    loop {
        match tokio::time::timeout(LIMIT, socket.next()).await.expect("a message in time")? {
            Ok(Message::Text(t)) => return Some(t.as_bytes().to_vec()),
            Ok(Message::Binary(b)) => return Some(unzstd(&b)),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

fn unzstd(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ruzstd::decoding::StreamingDecoder::new(bytes).expect("a zstd frame").read_to_end(&mut out).unwrap();
    out
}

/// The next `n` events.
async fn events(socket: &mut Socket, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(
            next_event(socket)
                .await
                .unwrap_or_else(|| panic!("the stream closed after {} of {n} events: {out:?}", out.len())),
        );
    }
    out
}

/// Nothing arrives for `ms` milliseconds.
async fn assert_quiet(socket: &mut Socket, ms: u64) {
    if let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(ms), socket.next()).await {
        panic!("expected no message, got {message:?}");
    }
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap_or_else(|| panic!("an object: {v}")).keys().map(String::as_str).collect()
}

fn set<'a>(k: &[&'a str]) -> BTreeSet<&'a str> {
    k.iter().copied().collect()
}

/// (did, kind, collection or "") of a message.
fn summary(v: &Value) -> (String, String, String) {
    let collection = v["commit"]["collection"].as_str().unwrap_or("");
    (v["did"].as_str().unwrap().into(), v["kind"].as_str().unwrap().into(), collection.into())
}

/// `time` (RFC 3339) as unix µs.
fn micros(time: &Value) -> u64 {
    chrono::DateTime::parse_from_rfc3339(time.as_str().unwrap()).unwrap().timestamp_micros() as u64
}

/// Checks the envelope of a Jetstream v1 message of `kind`: exactly did, time_us, kind and
/// the kind's object, with the right types.
fn assert_envelope(v: &Value, kind: &str, did: &str) {
    assert_eq!(keys(v), set(&["did", "time_us", "kind", kind]), "{v}");
    assert_eq!((v["did"].as_str(), v["kind"].as_str()), (Some(did), Some(kind)), "{v}");
    assert!(v["time_us"].as_u64().is_some_and(|t| t > 1_600_000_000_000_000), "time_us is unix µs: {v}");
}

fn assert_commit(v: &Value, did: &str, operation: &str, rkey: &str, body: Option<(&Value, &str)>) {
    assert_envelope(v, "commit", did);
    let c = &v["commit"];
    let expected = match body {
        Some(_) => set(&["rev", "operation", "collection", "rkey", "record", "cid"]),
        None => set(&["rev", "operation", "collection", "rkey"]),
    };
    assert_eq!(keys(c), expected, "{v}");
    assert_eq!(
        (c["operation"].as_str(), c["collection"].as_str(), c["rkey"].as_str()),
        (Some(operation), Some("app.bsky.feed.post"), Some(rkey))
    );
    assert!(c["rev"].as_str().is_some_and(|r| r.len() == 13), "rev is a TID: {v}");
    if let Some((record, cid)) = body {
        assert_eq!((&c["record"], c["cid"].as_str()), (record, Some(cid)), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_has_jetstream_v1_shape() {
    let (s, dids) = running_with(&[101], |_| {}).await;
    let did = &dids[0];
    let mut socket = s.connect("").await;
    let created = s.net.put_record(did, "app.bsky.feed.post", "3lbbbbbbbbbb2", post("hello")).unwrap();
    let updated = s.net.put_record(did, "app.bsky.feed.post", "3lbbbbbbbbbb2", post("hello again")).unwrap();
    s.net.delete_record(did, "app.bsky.feed.post", "3lbbbbbbbbbb2").unwrap();
    s.net.emit_identity(did);
    s.net.set_status(did, AccountStatus::Deactivated);
    testkit::wait_until("the deactivation", || {
        s.sluice.store().repos().state(did).unwrap().is_some_and(|st| st.status == RepoStatus::Gone)
    })
    .await;
    s.net.set_status(did, AccountStatus::Active);
    let got = events(&mut socket, 6).await;

    assert_commit(&got[0], did, "create", "3lbbbbbbbbbb2", Some((&post("hello"), &created)));
    assert_commit(&got[1], did, "update", "3lbbbbbbbbbb2", Some((&post("hello again"), &updated)));
    assert_commit(&got[2], did, "delete", "3lbbbbbbbbbb2", None);
    assert_envelope(&got[3], "identity", did);
    let identity = &got[3]["identity"];
    assert_eq!(keys(identity), set(&["did", "handle", "seq", "time"]), "{identity}");
    assert_eq!((identity["did"].as_str(), identity["handle"].as_str()), (Some(did.as_str()), Some("user101.test")));
    for (i, active, status) in [(4, false, Some("deactivated")), (5, true, None)] {
        assert_envelope(&got[i], "account", did);
        let account = &got[i]["account"];
        let expected = if status.is_some() {
            set(&["active", "did", "seq", "status", "time"])
        } else {
            set(&["active", "did", "seq", "time"])
        };
        assert_eq!(keys(account), expected, "{account}");
        assert_eq!(
            (account["active"].as_bool(), account["did"].as_str(), account["status"].as_str()),
            (Some(active), Some(did.as_str()), status)
        );
    }
    // seq is the sluice event id, time the event's time: both match the log.
    let log = s.log();
    for v in &got[3..] {
        let inner = if v["kind"] == "identity" { &v["identity"] } else { &v["account"] };
        let (seq, time_us) = (inner["seq"].as_u64().expect("seq is an integer"), v["time_us"].as_u64().unwrap());
        assert_eq!(micros(&inner["time"]), time_us, "time is time_us in RFC 3339: {v}");
        assert!(log.iter().any(|(id, t, _)| (*id, *t) == (seq, time_us)), "seq {seq} is the event at {time_us}");
    }
    let times: Vec<u64> = got.iter().map(|v| v["time_us"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "time_us increases: {times:?}");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wanted_collections_and_dids_filter_the_stream() {
    let (s, dids) = running_with(&[201, 202], |_| {}).await;
    let (a, b) = (&dids[0], &dids[1]);
    let mut posts = s.connect("?wantedCollections=app.bsky.feed.post").await;
    let mut statuses = s.connect("?wantedCollections=xyz.statusphere.*").await;
    let mut of_a = s.connect(&format!("?wantedDids={a}")).await;
    let mut both =
        s.connect(&format!("?wantedCollections=app.bsky.*&wantedCollections=xyz.nothing.here&wantedDids={b}")).await;
    s.net.put_record(a, "app.bsky.feed.post", "3lcccccccccc2", post("a")).unwrap();
    s.net.put_record(a, "xyz.statusphere.status", "3lcccccccccc3", status("🦀")).unwrap();
    s.net.put_record(b, "app.bsky.feed.post", "3lcccccccccc4", post("b")).unwrap();
    let like = json!({
        "$type": "app.bsky.feed.like",
        "subject": {
            "uri": "at://did:plc:x/app.bsky.feed.post/3l",
            "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
        },
        "createdAt": "2026-11-01T00:00:00.000Z"
    });
    s.net.put_record(b, "app.bsky.feed.like", "3lcccccccccc5", like).unwrap();
    s.net.emit_identity(b);

    let row = |did: &String, kind: &str, collection: &str| (did.clone(), kind.to_string(), collection.to_string());
    let expect = [
        (
            &mut posts,
            vec![
                row(a, "commit", "app.bsky.feed.post"),
                row(b, "commit", "app.bsky.feed.post"),
                row(b, "identity", ""),
            ],
        ),
        (&mut statuses, vec![row(a, "commit", "xyz.statusphere.status"), row(b, "identity", "")]),
        (&mut of_a, vec![row(a, "commit", "app.bsky.feed.post"), row(a, "commit", "xyz.statusphere.status")]),
        (
            &mut both,
            vec![
                row(b, "commit", "app.bsky.feed.post"),
                row(b, "commit", "app.bsky.feed.like"),
                row(b, "identity", ""),
            ],
        ),
    ];
    for (socket, want) in expect {
        let got: Vec<_> = events(socket, want.len()).await.iter().map(summary).collect();
        assert_eq!(got, want, "identity events pass wantedCollections; wantedDids selects every kind");
        assert_quiet(socket, 300).await;
    }
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_replays_from_its_time_inclusive_then_follows_live() {
    let (s, dids) = running_with(&[301], |_| {}).await;
    let did = &dids[0];
    for i in 0..4 {
        s.net.put_record(did, "app.bsky.feed.post", &format!("3ldddddddd{i:03}"), post(&format!("p{i}"))).unwrap();
    }
    testkit::wait_until("the live writes", || s.log().len() >= 5).await;
    let log = s.log();
    let times: Vec<u64> = log.iter().map(|(_, t, _)| *t).collect();
    assert_eq!(log.len(), 5, "one backfilled post and four live ones");
    assert!(times.windows(2).all(|w| w[0] < w[1]) && times[0] > 0, "times increase: {times:?}");

    // Exactly the events at or after the cursor's time.
    for (cursor, from) in [(times[2], 2), (times[2] + 1, 3), (times[2] - 1, 2), (0, 0), (times[0] - 1_000_000, 0)] {
        let mut socket = s.connect(&format!("?cursor={cursor}")).await;
        let got: Vec<u64> =
            events(&mut socket, 5 - from).await.iter().map(|v| v["time_us"].as_u64().unwrap()).collect();
        assert_eq!(got, times[from..].to_vec(), "cursor {cursor}");
        assert_quiet(&mut socket, 200).await;
    }

    // Replay, then live with no gap and no duplicate; a cursor after the last event is live.
    let mut replaying = s.connect(&format!("?cursor={}", times[3])).await;
    let mut future = s.connect(&format!("?cursor={}", times[4] + 60_000_000)).await;
    s.net.put_record(did, "app.bsky.feed.post", "3ldddddddd999", post("live")).unwrap();
    let got: Vec<String> =
        events(&mut replaying, 3).await.iter().map(|v| v["commit"]["rkey"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, ["3ldddddddd002", "3ldddddddd003", "3ldddddddd999"]);
    assert_eq!(events(&mut future, 1).await[0]["commit"]["rkey"], "3ldddddddd999", "a future cursor starts live");
    assert_quiet(&mut replaying, 200).await;
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_messages_are_zstd_frames_of_the_same_json() {
    let (s, dids) = running_with(&[401, 402], |_| {}).await;
    for (i, did) in dids.iter().enumerate() {
        s.net.emit_identity(did);
        s.net.put_record(did, "xyz.statusphere.status", &format!("3leeeeeeeee{i}2"), status("🌊")).unwrap();
    }
    testkit::wait_until("the live events", || s.log().len() >= 6).await;
    let mut plain = s.connect("?cursor=0").await;
    let mut zstd = s.connect("?cursor=0&compress=true").await;
    let mut request = format!("ws://{}/subscribe?cursor=0", s.addr).into_client_request().unwrap();
    request.headers_mut().insert("Socket-Encoding", "zstd".parse().unwrap());
    let mut by_header = tokio_tungstenite::connect_async(request).await.unwrap().0;
    let want = events(&mut plain, 6).await;
    for socket in [&mut zstd, &mut by_header] {
        for expected in &want {
            let message = tokio::time::timeout(LIMIT, socket.next()).await.unwrap().unwrap().unwrap();
            let Message::Binary(frame) = message else { panic!("compressed messages are binary, not {message:?}") };
            assert_eq!(&frame[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
            assert_eq!(&serde_json::from_slice::<Value>(&unzstd(&frame)).unwrap(), expected);
        }
    }
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_hello_waits_for_options_update_which_changes_the_filter_live() {
    let (s, dids) = running_with(&[501], |_| {}).await;
    let did = &dids[0];
    s.net.put_record(did, "xyz.statusphere.status", "3lffffffffff2", status("🦀")).unwrap();
    testkit::wait_until("the status", || s.log().len() >= 2).await;
    let mut socket = s.connect("?cursor=0&requireHello=true").await;
    assert_quiet(&mut socket, 700).await;

    let update = |collections: &[&str]| {
        Message::Text(
            json!({"type": "options_update", "payload": {"wantedCollections": collections}}).to_string().into(),
        )
    };
    socket.send(update(&["xyz.statusphere.*"])).await.unwrap();
    let got = events(&mut socket, 1).await;
    assert_eq!(
        summary(&got[0]),
        (did.clone(), "commit".into(), "xyz.statusphere.status".into()),
        "the hello's filter applies to the replay"
    );
    assert_quiet(&mut socket, 200).await;

    socket.send(update(&["app.bsky.feed.post"])).await.unwrap();
    // The update is in force once a post, which the old filter drops, comes through: write
    // posts until one does.
    let deadline = Instant::now() + LIMIT;
    for probe in 0.. {
        assert!(Instant::now() < deadline, "the options update took effect");
        s.net.put_record(did, "app.bsky.feed.post", &format!("3lfffffprobe{probe}"), post("probe")).unwrap();
        if let Ok(event) = tokio::time::timeout(Duration::from_millis(100), next_event(&mut socket)).await {
            let event = event.expect("the stream stays open");
            assert_eq!(event["commit"]["collection"], "app.bsky.feed.post", "{event}");
            break;
        }
    }
    s.net.put_record(did, "xyz.statusphere.status", "3lffffffffff3", status("🌊")).unwrap();
    s.net.put_record(did, "app.bsky.feed.post", "3lffffffffff4", post("after the update")).unwrap();
    // Later probes may come first; nothing but posts comes at all.
    loop {
        let got = events(&mut socket, 1).await;
        assert_eq!(got[0]["commit"]["collection"], "app.bsky.feed.post", "the new filter holds live: {}", got[0]);
        if got[0]["commit"]["rkey"] == "3lffffffffff4" {
            break;
        }
    }
    assert_quiet(&mut socket, 300).await;

    // An invalid update ends the stream with the reason.
    socket.send(update(&["app.bs*"])).await.unwrap();
    let close = loop {
        match tokio::time::timeout(LIMIT, socket.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("app.bs*"), "{}", close.reason);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_are_skipped_and_slow_clients_closed_with_a_cursor_to_resume() {
    let (s, dids) = running_with(&[601], |c| c.server.max_lag = 50).await;
    let did = &dids[0];
    let mut small = s.connect("?maxMessageSizeBytes=500").await;
    s.net.put_record(did, "app.bsky.feed.post", "3lgggggggggg2", post(&"x".repeat(600))).unwrap();
    s.net.put_record(did, "app.bsky.feed.post", "3lgggggggggg3", post("short")).unwrap();
    let got = events(&mut small, 1).await;
    assert_eq!(got[0]["commit"]["rkey"], "3lgggggggggg3", "the large post is skipped");
    assert!(got[0].to_string().len() <= 500);
    drop(small);

    // A live client reads nothing while a whole repo (278 events) lands at once: more than
    // max_lag behind, it is closed with the cursor to resume from, which replays exactly what
    // it missed.
    let base = format!("http://{}", s.addr);
    let clients = |n: f64| {
        let base = base.clone();
        async move {
            let metrics = testkit::metrics(&base).await;
            metrics.and_then(|m| testkit::metric(&m, "sluice_stream_clients")) == Some(n)
        }
    };
    testkit::wait_until_async("the small client to be gone", || clients(0.0)).await;
    let mut slow = s.connect("").await;
    testkit::wait_until_async("the slow client's stream to run", || clients(1.0)).await;
    let before = s.log().len();
    s.sluice.index_car(&testkit::read_fixture("car/little.car"), &Default::default()).unwrap();
    let close = loop {
        match tokio::time::timeout(LIMIT, slow.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert!(close.reason.starts_with("ConsumerTooSlow"), "{}", close.reason);
    assert_eq!(u16::from(close.code), 1008);
    let cursor: u64 = close.reason.rsplit("cursor=").next().unwrap().parse().unwrap();
    let missed: Vec<u64> = s.log()[before..].iter().map(|(_, t, _)| *t).collect();
    assert_eq!((missed.len(), missed[0]), (278, cursor), "the cursor is the first missed event's time");
    let mut resumed = s.connect(&format!("?cursor={cursor}")).await;
    let got: Vec<u64> =
        events(&mut resumed, missed.len()).await.iter().map(|v| v["time_us"].as_u64().unwrap()).collect();
    assert_eq!(got, missed);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_refused_before_the_upgrade() {
    let (s, _) = running_with(&[701], |_| {}).await;
    let too_many: String = (0..101).map(|i| format!("wantedCollections=a.b.c{i}&")).collect();
    for (query, says) in [
        ("cursor=yesterday", "cursor"),
        ("wantedCollections=app.bs*", "app.bs*"),
        ("wantedCollections=*", "wantedCollections"),
        ("wantedDids=alice.test", "alice.test"),
        (too_many.as_str(), "too many wanted collections"),
        ("compress=yes", "compress"),
        ("requireHello=1", "requireHello"),
        ("maxMessageSizeBytes=lots", "maxMessageSizeBytes"),
    ] {
        let refused = tokio_tungstenite::connect_async(format!("ws://{}/subscribe?{query}", s.addr)).await;
        let Err(WsError::Http(response)) = refused else { panic!("{query}: expected an HTTP error, got {refused:?}") };
        assert_eq!(response.status(), 400, "{query}");
        let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
        assert!(body.contains(says), "{query}: {body}");
    }
    s.stop();
}
