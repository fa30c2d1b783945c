//! How `sluice backfill` and `sluice run` end (127.0.0.1 only): the one-shot backfill exits as
//! soon as nothing is left but repos waiting for a retry, saying how many failed and why
//! (grouped by reason), a permanent refusal fetched once; and SIGTERM during a getRepo that
//! trickles ends either command within seconds, the repo pending again.
//!
//! The misbehaving host is a did:web account served by a loopback server written here: its DID
//! document names the server itself as the PDS, and its getRepo answers as the test says.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice::store::{RepoStatus, Store};
use sluice_devnet::{Account, Devnet, DevnetOptions};
use sluice_testkit::{self as testkit, Running, exit_within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A run of a child ends within this.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// How long SIGTERM may take to end a command with a fetch in flight.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// What the host's getRepo does.
#[derive(Clone, Copy)]
enum GetRepo {
    /// 200 with bytes that are not a CAR: a permanent refusal.
    Garbage,
    /// 200 with a body that never ends: one byte every 500 ms.
    Trickle,
}

/// A did:web host on 127.0.0.1: its DID and how many getRepo calls it had.
struct Host {
    did: String,
    get_repo_calls: Arc<AtomicU64>,
}

/// Starts a did:web host whose getRepo does `get_repo`.
async fn did_web_host(get_repo: GetRepo) -> Host {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let did = format!("did:web:127.0.0.1%3A{port}");
    let document = serde_json::json!({
        "id": did,
        "verificationMethod": [{
            "id": format!("{did}#atproto"),
            "type": "Multikey",
            "controller": did,
            "publicKeyMultibase": Account::new(4242).public_multibase(),
        }],
        "service": [{
            "id": "#atproto_pds",
            "type": "AtprotoPersonalDataServer",
            "serviceEndpoint": format!("http://127.0.0.1:{port}"),
        }],
    })
    .to_string();
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (document, calls) = (document.clone(), counted.clone());
            tokio::spawn(async move { answer(socket, &document, get_repo, &calls).await });
        }
    });
    Host { did, get_repo_calls: calls }
}

/// Answers one request on `socket` (closing it after): the DID document, or getRepo.
async fn answer(mut socket: TcpStream, document: &str, get_repo: GetRepo, calls: &AtomicU64) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let reply = |status: &str, kind: &str, body: &[u8]| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    };
    if head.starts_with("GET /.well-known/did.json") {
        let _ = socket.write_all(&reply("200 OK", "application/json", document.as_bytes())).await;
        return;
    }
    if !head.starts_with("GET /xrpc/com.atproto.sync.getRepo") {
        let _ = socket.write_all(&reply("404 Not Found", "text/plain", b"no")).await;
        return;
    }
    calls.fetch_add(1, Ordering::SeqCst);
    match get_repo {
        GetRepo::Garbage => {
            let _ = socket.write_all(&reply("200 OK", "application/vnd.ipld.car", b"this is not a CAR file")).await;
        }
        GetRepo::Trickle => {
            let start =
                "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.ipld.car\r\ncontent-length: 1000000000\r\n\r\n";
            if socket.write_all(start.as_bytes()).await.is_err() {
                return;
            }
            while socket.write_all(b"\0").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// A config for a child on `net` whose filter (full mode) also lists `dids`, with `extra`
/// TOML appended.
fn config(dir: &Path, net: &Devnet, dids: &[&str], extra: &str) -> PathBuf {
    let filter = dir.join("filter.toml");
    std::fs::write(&filter, format!("mode = \"full\"\ndids = {dids:?}\n")).unwrap();
    testkit::devnet_config_with_filter(dir, net, &filter, extra)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// One repo whose PDS answers 500, one whose host serves a broken CAR, two good ones:
/// `sluice backfill` exits 0 without waiting for the retry (the default backoff is a minute),
/// prints the failures by reason and when they are retried, and fetched the broken one once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_backfill_exits_with_the_failures_grouped_by_reason() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let dids = net.populate(3, 3, 31).await;
    net.fail_next(&dids[0], 1_000);
    let broken = did_web_host(GetRepo::Garbage).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &net, &[&broken.did], "");
    let (out, log) = (dir.path().join("out"), dir.path().join("log"));
    let started = Instant::now();
    let child = testkit::sluice_command(env!("CARGO_BIN_EXE_sluice"))
        .args(["--config", config.to_str().unwrap(), "backfill"])
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let status = exit_within(&mut child.0, RUN_LIMIT).await;
    let status = status.unwrap_or_else(|| panic!("sluice backfill still runs; log:\n{}", read(&log)));
    let printed = read(&out);
    assert!(status.success(), "exit {status}; printed:\n{printed}\nlog:\n{}", read(&log));
    eprintln!("sluice backfill ended after {:?}:\n{printed}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(50), "it did not wait for the one-minute retry");
    for line in [
        "2 repos failed (1 transient, 1 permanent):",
        "  1 transient: getRepo answered HTTP 500",
        "  1 permanent: malformed or truncated CAR",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line:?} missing from:\n{printed}");
    }
    assert!(printed.contains("retried by the next `sluice backfill`"), "{printed}");
    assert!(printed.contains("with `sluice backfill --did`"), "{printed}");
    assert_eq!(broken.get_repo_calls.load(Ordering::SeqCst), 1, "a permanent refusal is fetched once");
    assert_eq!(net.request_count("com.atproto.sync.getRepo"), 3, "each devnet repo fetched once");

    let store = Store::open(&dir.path().join("data")).unwrap();
    let state = |did: &str| store.repos().state(did).unwrap().unwrap();
    let failed = state(&dids[0]);
    assert_eq!((failed.status, failed.retries), (RepoStatus::Error, 1));
    assert!(failed.next_retry_ms.is_some(), "the transient failure has its retry queued for the next run");
    let refused = state(&broken.did);
    assert_eq!((refused.status, refused.next_retry_ms), (RepoStatus::Error, None), "no retry until it changes");
    assert!(refused.error.unwrap().contains("malformed or truncated CAR"));
    for did in &dids[1..] {
        assert_eq!(state(did).status, RepoStatus::Synced, "{did}");
    }
}

/// SIGTERM while `command` downloads a getRepo that trickles forever: the process ends within
/// [`STOP_LIMIT`] with exit 0, and the repo is pending, to be fetched by the next run.
async fn sigterm_cuts_a_trickling_fetch(command: &str) {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let slow = did_web_host(GetRepo::Trickle).await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = config(dir.path(), &net, &[&slow.did], &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"));
    let log = dir.path().join("log");
    let mut child = Running(testkit::spawn_sluice(env!("CARGO_BIN_EXE_sluice"), &config, command, &log));
    let deadline = Instant::now() + RUN_LIMIT;
    while slow.get_repo_calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no getRepo came; log:\n{}", read(&log));
        assert!(child.0.try_wait().unwrap().is_none(), "sluice {command} ended early; log:\n{}", read(&log));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The download is under way: a few bytes arrive.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stopping = Instant::now();
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let status = exit_within(&mut child.0, RUN_LIMIT).await;
    let status = status.unwrap_or_else(|| panic!("sluice {command} ignored SIGTERM; log:\n{}", read(&log)));
    let took = stopping.elapsed();
    eprintln!("sluice {command} stopped {took:?} after SIGTERM");
    assert!(status.success(), "exit {status}; log:\n{}", read(&log));
    assert!(took < STOP_LIMIT, "sluice {command} took {took:?} to stop; log:\n{}", read(&log));
    let store = Store::open(&dir.path().join("data")).unwrap();
    let state = store.repos().state(&slow.did).unwrap().expect("the repo has a state");
    assert_eq!(state.status, RepoStatus::Pending, "the repo is queued again: {state:?}");
    assert_eq!(state.queue_due(), Some(0), "due at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_a_trickling_fetch_of_sluice_backfill() {
    sigterm_cuts_a_trickling_fetch("backfill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_a_trickling_fetch_of_sluice_run() {
    sigterm_cuts_a_trickling_fetch("run").await;
}
