//! Pipeline throughput: records/s through read -> verify -> walk -> filter -> handlers -> diff ->
//! fjall, next to a bare read+walk baseline, with peak RSS and records per CPU-second.
//!
//! `cargo bench --bench pipeline` runs every case in its own child process (so each peak RSS
//! is its own) and prints a Markdown table for BENCHMARKS.md. Inputs: calabro.car from
//! ../shared/fixtures and a generated, signed 100k-record repo (cached in target/).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use sluice_testkit::bench::{self, cpu_seconds, generated_car};
use sluice_testkit::root;

use sluice::repo::{CarLimits, parse_public_key, read_car_owned};
use sluice::{Filter, IndexOptions, Sluice};

/// The same allocator as the `sluice` binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 3;

/// Indexes each CAR of `inputs` on its own thread into one store (repos in flight at once, as
/// a backfill runs them); returns the records created.
fn index_concurrently(sluice: &Sluice, inputs: Vec<bytes::Bytes>) -> usize {
    std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .into_iter()
            .map(|car| {
                scope.spawn(move || sluice.index_car_owned(car, &IndexOptions::default()).unwrap().created as usize)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

/// Runs one case in this process: prints `records seconds cpu_seconds peak_kb`. `input` may
/// name several CARs separated by commas (for the concurrent case). Each round takes the CARs
/// into fresh buffers before its timer starts and lets them go when it ends, as `sluice
/// index-car` reads each file whole, loads it and drops it.
fn run_case(case: &str, input: &str, key: Option<&str>) {
    let inputs: Vec<Vec<u8>> = input.split(',').map(|p| std::fs::read(p).unwrap()).collect();
    let (mut records, mut secs, mut cpu) = (0usize, f64::MAX, 0.0);
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        // Opening the store is not part of indexing a repo, nor is reading the file.
        let filter = Filter::from_toml("mode = \"full\"", "bench").unwrap();
        let sluice = Sluice::builder().data_dir(dir.path()).filter(filter).open().unwrap();
        let mut cars: Vec<bytes::Bytes> = inputs.iter().map(|car| bytes::Bytes::copy_from_slice(car)).collect();
        let (start, cpu0) = (Instant::now(), cpu_seconds());
        let car = cars[0].clone();
        records = match case {
            "baseline" => {
                let repo = read_car_owned(car, &CarLimits::default()).unwrap();
                repo.records().map(|r| r.unwrap().bytes.len()).filter(|n| *n > 0).count()
            }
            // Not in the table: the read alone, which runs on one core before the walk can
            // start (`--case read PATH`, to measure changes to it).
            "read" => read_car_owned(car, &CarLimits::default()).unwrap().block_count(),
            "verify-walk" => {
                let repo = read_car_owned(car, &CarLimits::default()).unwrap();
                repo.verify_signature(&parse_public_key(key.unwrap()).unwrap()).unwrap();
                repo.records().map(|r| r.unwrap().bytes.len()).filter(|n| *n > 0).count()
            }
            "pipeline-2-repos" => {
                drop(car);
                index_concurrently(&sluice, std::mem::take(&mut cars))
            }
            _ => {
                let opts = IndexOptions {
                    expected_did: None,
                    signing_key: if case == "pipeline-sig" { key.map(str::to_string) } else { None },
                };
                sluice.index_car_owned(car, &opts).unwrap().created as usize
            }
        };
        secs = secs.min(start.elapsed().as_secs_f64());
        cpu += cpu_seconds() - cpu0;
    }
    let cpu = cpu / ROUNDS as f64;
    println!("{records} {secs} {cpu} {}", bench::self_status_kb("VmHWM:"));
}

fn main() {
    // As `sluice index-car` runs.
    sluice::alloc::tune(sluice::alloc::Workload::Batch);
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--case") {
        run_case(&args[pos + 1], &args[pos + 2], args.get(pos + 3).map(String::as_str));
        return;
    }
    let (generated, account) = generated_car(100_000);
    let (second, _) = generated_car(100_001);
    let both = format!("{},{}", generated.display(), second.display());
    let calabro = root().join("../shared/fixtures/car/calabro.car");
    let key = account.did_key();
    println!("| input | case | records | best of {ROUNDS} (s) | records/s | records/CPU-s | peak RSS (MB) |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let inputs: [(&str, &Path, Option<&str>); 3] = [
        ("calabro.car (1.5 MB)", &calabro, None),
        ("generated 100k (signed)", &generated, Some(&key)),
        ("2 x generated 100k, 2 threads", Path::new(&both), None),
    ];
    for (label, path, key) in inputs {
        let cases = match (key, label.starts_with("2 x")) {
            (_, true) => vec!["pipeline-2-repos"],
            (Some(_), _) => vec!["baseline", "verify-walk", "pipeline", "pipeline-sig"],
            (None, _) => vec!["baseline", "pipeline"],
        };
        for case in cases {
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.args(["--case", case, path.to_str().unwrap()]);
            if let Some(k) = key {
                cmd.arg(k);
            }
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{case}: {}", String::from_utf8_lossy(&out.stderr));
            let line = String::from_utf8_lossy(&out.stdout);
            let v: Vec<f64> = line.split_whitespace().map(|x| x.parse().unwrap()).collect();
            let (n, secs, cpu, peak_kb) = (v[0], v[1], v[2], v[3]);
            println!(
                "| {label} | {case} | {n} | {secs:.3} | {:.0} | {:.0} | {:.0} |",
                n / secs,
                n / cpu.max(1e-9),
                peak_kb / 1024.0
            );
        }
    }
}
