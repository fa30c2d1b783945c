//! What the tests and benches of `sluice` and `sluice-cli` share, so that each helper has one
//! home: the project's paths and fixtures, indexers over temporary directories, config files
//! and child `sluice` processes against a devnet (this file); a server in this process and
//! clients of its event stream ([`server`]); what benches measure with ([`bench`]); a real NATS
//! server for the sink's tests and benches ([`NatsServer`]); child processes and pseudo-terminals
//! ([`Running`], [`run_on_pty`]); headless Chromium for the pages sluice serves ([`Chromium`]).
//! Test support only: it panics where a test should fail.

pub mod bench;
mod browser;
mod child;
mod disk;
pub mod hostile;
mod nats;
pub mod server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice::{Filter, Sluice};
use sluice_devnet::Devnet;

pub use browser::{Chromium, Rendered};
pub use child::{Running, exit_within, free_port, get_json, poll_json, run_devnet, run_on_pty};
pub use disk::SmallDisk;
pub use nats::NatsServer;

/// The project root (the workspace's top directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ sits in the project root").to_path_buf()
}

/// `../shared/fixtures/<rel>`, beside the project root.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("../shared/fixtures").join(rel)
}

/// Reads a fixture.
pub fn read_fixture(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// A filter from TOML text.
pub fn filter(text: &str) -> Filter {
    Filter::from_toml(text, "test-filter").expect("test filter parses")
}

/// An indexer over `config` (its data directory and settings) with a full-mode filter: every
/// repo and collection, as the tests that run the service over a devnet want.
pub fn sluice_full(config: &sluice::Config) -> Sluice {
    Sluice::builder().config(config.clone()).filter(filter("mode = \"full\"")).open().unwrap()
}

/// An indexer over a fresh temporary directory with a fixed filter.
pub fn sluice_with(filter_text: &str) -> (tempfile::TempDir, Sluice) {
    let dir = tempfile::tempdir().unwrap();
    let s = Sluice::builder().data_dir(dir.path().join("data")).filter(filter(filter_text)).open().unwrap();
    (dir, s)
}

/// Like [`sluice_with`], committing repo walks in batches of `batch_size` record changes.
pub fn sluice_batched(filter_text: &str, batch_size: usize) -> (tempfile::TempDir, Sluice) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sluice::Config::default();
    config.backfill.batch_size = batch_size;
    let s =
        Sluice::builder().config(config).data_dir(dir.path().join("data")).filter(filter(filter_text)).open().unwrap();
    (dir, s)
}

/// Non-empty, non-comment lines of an interop-tests syntax list.
pub fn syntax_lines(name: &str) -> Vec<String> {
    let text = String::from_utf8(read_fixture(&format!("atproto-interop-tests/syntax/{name}"))).unwrap();
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
}

/// `car` in an unnamed temporary file, positioned at its start, as a spooled download is.
pub fn car_file(car: &[u8]) -> std::fs::File {
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, car).unwrap();
    std::io::Seek::rewind(&mut file).unwrap();
    file
}

/// Points `config`'s network at `net`: its relay and PLC directory, and its relay's
/// `resolveHandle` for handle checks, so that nothing is asked of DNS (the system's resolver
/// would look up `_atproto.<handle>` on the machine's nameserver); the address policy opens
/// loopback, where the devnet's PDSes are.
pub fn on_devnet(config: &mut sluice::Config, net: &Devnet) {
    config.network.relay = net.relay_url();
    config.network.plc = net.plc_url();
    config.network.handle_resolver = Some(net.relay_url());
    config.network.allow_loopback();
}

/// A config file in `dir` pointing a `sluice` child process at `net` (full-mode filter, data in
/// `dir/data`), with `extra` TOML sections appended; returns its path. Handles are checked with
/// the devnet relay's `resolveHandle`, and loopback is open to the address policy, as
/// [`on_devnet`] does.
pub fn devnet_config_file(dir: &Path, net: &Devnet, extra: &str) -> PathBuf {
    let filter = dir.join("filter.toml");
    std::fs::write(&filter, "mode = \"full\"\n").unwrap();
    devnet_config_with_filter(dir, net, &filter, extra)
}

/// [`devnet_config_file`] with the filter file `filter`.
pub fn devnet_config_with_filter(dir: &Path, net: &Devnet, filter: &Path, extra: &str) -> PathBuf {
    let config = dir.join("config.toml");
    let text = format!(
        "[storage]\npath = {:?}\n[filter]\npath = {filter:?}\n[network]\nrelay = {:?}\nplc = {:?}\n\
         handle_resolver = {:?}\nallowed_networks = [\"127.0.0.0/8\"]\n{extra}",
        dir.join("data"),
        net.relay_url(),
        net.plc_url(),
        net.relay_url()
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// The proxy variables HTTP clients (reqwest, curl) read from the environment.
pub const PROXY_VARS: [&str; 6] = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"];

/// A command running `binary` (a `sluice` build) with no proxy variables, so that the child's
/// requests to 127.0.0.1 go there and not through a proxy.
pub fn sluice_command(binary: &str) -> std::process::Command {
    let mut command = std::process::Command::new(binary);
    for var in PROXY_VARS {
        command.env_remove(var);
    }
    command
}

/// Waits (polling every few ms) until no index of `store` is building; panics when one still is
/// after `limit`.
pub fn wait_for_index_builds(store: &sluice::store::Store, limit: Duration) {
    let deadline = Instant::now() + limit;
    while store.index_progress().values().any(|(_, p)| p.building.is_some()) {
        assert!(Instant::now() < deadline, "an index build did not end within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The CID of a DAG-CBOR record body (CIDv1, dag-cbor, sha2-256), as a PDS computes it: what
/// tests that commit records through the pipeline give as each record's CID.
pub fn cid_of(bytes: &[u8]) -> cid::Cid {
    use sha2::Digest;
    let hash = cid::multihash::Multihash::<64>::wrap(0x12, &sha2::Sha256::digest(bytes)).expect("a 32-byte digest");
    cid::Cid::new_v1(0x71, hash)
}

/// An HTTP client for the tests' own requests (all to 127.0.0.1): no proxy, whatever the
/// environment says.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("an HTTP client")
}

/// The text of `GET {base}/metrics` (`base`: `http://127.0.0.1:PORT`), `None` while nothing
/// answers there.
pub async fn metrics(base: &str) -> Option<String> {
    let response = http().get(format!("{base}/metrics")).send().await.ok()?;
    response.text().await.ok()
}

/// The value of the sample `sample` (a metric's name with its labels as the text shows them,
/// e.g. `sluice_repos{status="synced"}`) in Prometheus text `metrics`.
pub fn metric(metrics: &str, sample: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// How long [`wait_until`] waits: far longer than any wait should take, even on a loaded machine.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Polls `cond` (every 10 ms) until it holds; panics naming `what` when it has not within
/// [`WAIT_LIMIT`]. What tests wait on instead of sleeping: a state, not a time.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    wait_until_async(what, || std::future::ready(cond())).await
}

/// [`wait_until`] for a condition that has to await (an HTTP request, a NATS query).
pub async fn wait_until_async<F: std::future::Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out after {WAIT_LIMIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts `BINARY --config CONFIG COMMAND` (a `sluice` build: `env!("CARGO_BIN_EXE_sluice")` in
/// the tests of its package) with its log appended to `log`, and no proxy variables.
pub fn spawn_sluice(binary: &str, config: &Path, command: &str, log: &Path) -> std::process::Child {
    sluice_command(binary)
        .args(["--config", config.to_str().unwrap(), command])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
        .spawn()
        .unwrap()
}

/// What `did`'s PDS on `net` holds: (collection, rkey) -> CID string.
pub fn pds_cids(net: &Devnet, did: &str) -> std::collections::BTreeMap<(String, String), String> {
    net.records(did).into_iter().map(|(k, (cid, _))| (k, cid)).collect()
}

/// Whether `did` is synced in `store` and stored exactly as its PDS on `net` holds it.
pub fn in_step(store: &sluice::store::Store, net: &Devnet, did: &str) -> bool {
    let synced = store.repos().state(did).unwrap().is_some_and(|s| s.status == sluice::store::RepoStatus::Synced);
    synced && stored_cids(store, did) == pds_cids(net, did)
}

/// The stored records of `did`: (collection, rkey) -> CID string.
pub fn stored_cids(store: &sluice::store::Store, did: &str) -> std::collections::BTreeMap<(String, String), String> {
    store
        .records()
        .of_repo(did)
        .unwrap()
        .into_iter()
        .map(|((c, r), cid)| ((c.into(), r.into()), cid::Cid::read_bytes(&cid[..]).unwrap().to_string()))
        .collect()
}
