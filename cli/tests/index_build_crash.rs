//! `kill -9` while an index is built in the background (issue 32), twice while it puts in
//! the entries and once while it sums the counts: the restarted `sluice run` resumes the build
//! from its stored position, and the index it ends with holds exactly what an index of the same
//! definition built in one go holds, count and entries.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::filter::Filter;
use sluice::handlers::value::json_to_cbor;
use sluice::indexes::encode;
use sluice::store::{PageRange, RecordWrite, RepoChange, RepoState, RepoStatus, Store};
use sluice_devnet::{Devnet, DevnetOptions};
use sluice_testkit as testkit;

const COLLECTION: &str = "xyz.statusphere.status";
const REPOS: usize = 400;
const PER_REPO: usize = 25;
const STATUSES: [&str; 3] = ["👍", "🙂", "x"];

fn index_table(name: &str) -> String {
    format!("[indexes.{name}]\ncollection = \"{COLLECTION}\"\nkey = [\"status\"]\nsort = \"createdAt\"\ncount = true\n")
}

/// 10,000 statuses over 400 repos, committed straight into the store before any run.
fn fill(data: &Path) {
    let store = Store::open(data).unwrap();
    for r in 0..REPOS {
        let did = format!("did:plc:repo{r:05}");
        let records = (0..PER_REPO)
            .map(|i| {
                let value = json!({"$type": COLLECTION, "status": STATUSES[(r + i) % 3],
                                   "createdAt": format!("2024-01-{:02}T00:00:{:02}Z", 1 + i % 28, r % 60)});
                let body = json_to_cbor(&value).unwrap();
                RecordWrite::Put {
                    collection: COLLECTION.into(),
                    rkey: format!("3k{i:05}").into(),
                    cid: testkit_cid(&body),
                    body: body.into(),
                    existed: false,
                }
            })
            .collect();
        // Synced: counts count the records of repos whose records are answered.
        let state = Some(RepoState { status: RepoStatus::Synced, ..Default::default() });
        store.commit(RepoChange { did, records, state, ..Default::default() }).unwrap();
    }
    store.persist().unwrap();
}

/// A CID for a body (the store keeps it as given; this test never checks it against the body).
fn testkit_cid(bytes: &[u8]) -> Vec<u8> {
    let mut digest = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        digest[i % 32] = digest[i % 32].wrapping_mul(31).wrapping_add(*b);
    }
    cid::Cid::new_v1(0x71, cid::multihash::Multihash::<64>::wrap(0x12, &digest).unwrap()).to_bytes()
}

/// The devnet config with the server on `port` and builds one record a batch (so that the
/// kills land during the build).
fn write_config(dir: &Path, net: &Devnet, port: u16) -> std::path::PathBuf {
    let filter = dir.join("filter.toml");
    std::fs::write(&filter, format!("mode = \"full\"\n{}", index_table("late"))).unwrap();
    let server = format!("[server]\nlisten = \"127.0.0.1:{port}\"\n");
    let config = testkit::devnet_config_with_filter(dir, net, &filter, &server);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("[storage]\n", "[storage]\nindex_build_batch = 1\n", 1)).unwrap();
    config
}

/// The phase `late`'s build stands in, as the store a killed run left holds it.
fn late_after_kill(data: &Path) -> Option<sluice::store::Phase> {
    let store = Store::open(data).unwrap();
    store.index_progress().get("late").and_then(|(_, p)| p.building.as_ref().map(|b| b.phase))
}

/// `late`'s state in `/health`, once the server answers.
async fn late(base: &str) -> Option<Value> {
    let health: Value = testkit::http().get(format!("{base}/health")).send().await.ok()?.json().await.ok()?;
    Some(health["indexes"]["late"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_index_build_resumes_and_ends_exact() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    fill(&dir.path().join("data"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = write_config(dir.path(), &net, port);
    let (log, base) = (dir.path().join("sluice.log"), format!("http://127.0.0.1:{port}"));
    let binary = env!("CARGO_BIN_EXE_sluice");

    // Killed twice, each time once the build has read more.
    let mut last_done = 0;
    for kill in 0..2 {
        let mut child = testkit::spawn_sluice(binary, &config, "run", &log);
        let deadline = std::time::Instant::now() + testkit::WAIT_LIMIT;
        let seen = loop {
            assert!(std::time::Instant::now() < deadline, "the build did not move on");
            match late(&base).await {
                Some(s) if s["state"] == "ready" || s["done"].as_i64().is_some_and(|d| d > last_done + 200) => break s,
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(seen["state"], "building", "kill {kill} lands during the build: {seen}");
        let done = seen["done"].as_i64().unwrap();
        assert!(done > last_done, "the build moved on from where it stood ({last_done} -> {done})");
        last_done = done;
    }
    // A third time once every entry is in, while the counts are summed (one step row a step
    // of one record, so there are thousands).
    let mut child = testkit::spawn_sluice(binary, &config, "run", &log);
    testkit::wait_until_async("the count phase", || {
        let base = base.clone();
        async move { late(&base).await.is_some_and(|s| s["phase"] == "counts" || s["state"] == "ready") }
    })
    .await;
    let metrics = testkit::metrics(&base).await.unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let counting = testkit::metric(&metrics, "sluice_index_build_counting{index=\"late\"}");
    assert_eq!(counting, Some(1.0), "/metrics says the counts are being summed");
    let seen = late_after_kill(&dir.path().join("data"));
    assert_eq!(seen, Some(sluice::store::Phase::Counts), "the third kill lands during the count phase");

    let mut child = testkit::spawn_sluice(binary, &config, "run", &log);
    testkit::wait_until_async("the build to end", || {
        let base = base.clone();
        async move { late(&base).await.is_some_and(|s| s["state"] == "ready") }
    })
    .await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "sluice ends on SIGTERM; log: {}", std::fs::read_to_string(&log).unwrap());

    // The same definition built in one go, in this process, beside the resumed one.
    let store = Store::open(&dir.path().join("data")).unwrap();
    let both =
        Filter::from_toml(&format!("mode = \"full\"\n{}{}", index_table("late"), index_table("again")), "t").unwrap();
    store.set_indexes(&both.indexes).unwrap();
    while store.build_index_step(4096).unwrap().is_some() {}
    let registry = store.index_registry();
    let (resumed, fresh) = (&registry.indexes["late"], &registry.indexes["again"]);
    let progress = store.index_progress();
    let totals = |name: &str| {
        let p = &progress[name].1;
        (p.entries, p.records, p.skipped)
    };
    assert_eq!(totals("late"), totals("again"));
    assert_eq!(totals("late"), ((REPOS * PER_REPO) as i64, (REPOS * PER_REPO) as i64, 0));
    for status in STATUSES {
        let key = encode::key_tuple(&[status]);
        assert_eq!(resumed.count(&key).unwrap(), fresh.count(&key).unwrap(), "count of {status}");
        let all = |index: &sluice::store::LiveIndex| -> Vec<(String, String)> {
            index.page(&key, &PageRange::default(), 100_000).unwrap().into_iter().map(|h| (h.did, h.rkey)).collect()
        };
        let entries = all(resumed);
        assert_eq!(entries.len() as i64, resumed.count(&key).unwrap());
        assert_eq!(entries, all(fresh), "entries of {status}");
    }
    drop(net);
}
