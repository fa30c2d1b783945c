//! Live ingestion throughput: `#commit` frames decoded, validated (sync 1.1 chain checks and
//! signatures on) and applied through the pipeline into fjall, per second, from recorded
//! streams fed straight to [`Firehose::ingest`] (no socket).
//!
//! `cargo bench --bench firehose` prints a Markdown table for BENCHMARKS.md: the real relay
//! capture (148 commits, applied again into fresh stores), and a generated stream of 100k
//! signed commits over 1,000 synced repos.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice::firehose::{Firehose, Frame, decode_frame};
use sluice::identity::{Identity, Resolver, ResolverOptions};
use sluice::store::{RepoState, RepoStatus};
use sluice::{Config, Filter, Sluice};
use sluice_testkit::bench;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One measured run: commits, wall seconds, CPU seconds of this process.
struct Run {
    commits: u64,
    secs: f64,
    cpu: f64,
}

/// A store and a live ingestion service over it (live only: unknown repos start at their first
/// commit), with `identities` cached so no lookup leaves the process.
fn service(dir: &std::path::Path, identities: Vec<Identity>, synced: &[(String, String, String)]) -> Arc<Firehose> {
    let mut config = Config::default();
    config.storage.path = dir.join("data");
    config.backfill.days = 0;
    let sluice = Sluice::builder()
        .config(config.clone())
        .filter(Filter::from_toml("mode = \"full\"\n", "bench").unwrap())
        .open()
        .unwrap();
    let states: Vec<(String, RepoState)> = synced
        .iter()
        .map(|(did, rev, data)| {
            (
                did.clone(),
                RepoState {
                    status: RepoStatus::Synced,
                    rev: Some(rev.clone()),
                    data: Some(data.clone()),
                    ..Default::default()
                },
            )
        })
        .collect();
    sluice.store().set_states(&states, None).unwrap();
    let resolver =
        Arc::new(Resolver::new(ResolverOptions { plc_url: "http://127.0.0.1:1/".into(), ..Default::default() }));
    for identity in identities {
        resolver.prime(identity);
    }
    Firehose::new(sluice.pipeline().clone(), resolver, &config, Arc::default()).unwrap()
}

/// Feeds `frames` and waits until every one is finished; returns (commits applied, wall, CPU).
fn feed(firehose: &Firehose, frames: &[Bytes]) -> Run {
    let (cpu0, start) = (bench::cpu_seconds(), Instant::now());
    for frame in frames {
        firehose.ingest(frame.clone());
    }
    while firehose.in_flight() > 0 {
        std::thread::sleep(Duration::from_micros(200));
    }
    let applied = firehose.live().metrics().applied.load(std::sync::atomic::Ordering::Relaxed);
    Run { commits: applied, secs: start.elapsed().as_secs_f64(), cpu: bench::cpu_seconds() - cpu0 }
}

fn unzstd(path: &std::path::Path) -> Vec<u8> {
    let compressed = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    ruzstd::decoding::StreamingDecoder::new(&compressed[..]).unwrap().read_to_end(&mut out).unwrap();
    out
}

/// The relay capture's frames and the identities of its DIDs.
fn capture() -> (Vec<Bytes>, Vec<Identity>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/firehose");
    let bytes = unzstd(&dir.join("frames.bin.zst"));
    let mut rest = &bytes[..];
    let mut frames = Vec::new();
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        frames.push(Bytes::copy_from_slice(&tail[..len]));
        rest = &tail[len..];
    }
    let docs: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&unzstd(&dir.join("did_docs.json.zst"))).unwrap();
    let identities = docs
        .iter()
        .map(|(did, doc)| sluice::identity::identity_from_document(did, &serde_json::to_vec(doc).unwrap()).unwrap())
        .collect();
    (frames, identities)
}

fn row(name: &str, run: &Run) {
    println!(
        "| {name} | {} | {:.2} | {:.0} | {:.2} | {:.0} |",
        run.commits,
        run.secs,
        run.commits as f64 / run.secs,
        run.cpu,
        run.commits as f64 / run.cpu
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _entered = runtime.enter();
    println!("| stream | commits applied | wall s | commits/s | CPU s | commits per CPU-s |");
    println!("|---|---:|---:|---:|---:|---:|");

    let (frames, identities) = capture();
    let commits = frames.iter().filter(|f| matches!(decode_frame(f), Ok(Frame::Commit(_)))).count();
    let mut total = Run { commits: 0, secs: 0.0, cpu: 0.0 };
    for _ in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let firehose = service(dir.path(), identities.clone(), &[]);
        let run = feed(&firehose, &frames);
        assert_eq!(run.commits, commits as u64, "every commit of the capture applies");
        (total.commits, total.secs, total.cpu) =
            (total.commits + run.commits, total.secs + run.secs, total.cpu + run.cpu);
    }
    row("relay capture (148 commits, 40 fresh stores)", &total);

    let (accounts, n) = (1_000, 100_000);
    let stream = sluice_devnet::synthetic_stream(accounts, n, 7);
    let identities: Vec<Identity> = stream
        .keys
        .iter()
        .map(|(did, key)| Identity {
            did: did.clone(),
            pds: "http://127.0.0.1:1".into(),
            key: sluice::repo::parse_public_key(key).unwrap(),
            handle: None,
        })
        .collect();
    let frames: Vec<Bytes> = stream.frames.into_iter().map(Bytes::from).collect();
    row(&format!("signature checks alone, 2 threads ({n} commits)"), &signatures_alone(&frames, &identities));
    let dir = tempfile::tempdir().unwrap();
    let firehose = service(dir.path(), identities, &stream.initial);
    let run = feed(&firehose, &frames);
    assert_eq!(run.commits, n as u64, "every generated commit applies");
    row(&format!("generated ({n} commits, {accounts} repos)"), &run);
}

/// The ceiling set by signature checks: every commit's signature verified (as live ingestion
/// does it) on two threads, nothing else timed.
fn signatures_alone(frames: &[Bytes], identities: &[Identity]) -> Run {
    let keys: std::collections::HashMap<&str, _> = identities.iter().map(|id| (id.did.as_str(), &id.key)).collect();
    let limits = sluice::repo::CarLimits::default();
    let commits: Vec<_> = frames
        .iter()
        .filter_map(|f| match decode_frame(f) {
            Ok(Frame::Commit(c)) => {
                Some((keys[c.repo.as_str()], sluice::firehose::ops::commit_blocks(&c, &limits).unwrap()))
            }
            _ => None,
        })
        .collect();
    let (cpu0, start) = (bench::cpu_seconds(), Instant::now());
    std::thread::scope(|scope| {
        for half in commits.chunks(commits.len().div_ceil(2)) {
            scope.spawn(move || {
                half.iter().for_each(|(key, loaded)| loaded.verify_signature(key).expect("a generated commit verifies"))
            });
        }
    });
    Run { commits: commits.len() as u64, secs: start.elapsed().as_secs_f64(), cpu: bench::cpu_seconds() - cpu0 }
}
