//! The network's size without its repos: a relay listing a million DIDs (default) whose
//! documents do not resolve, so every repo ends `gone` at once. What is left to measure is
//! the crawler, the queue and the per-repo bookkeeping around them.
//!
//! `cargo bench --bench crawl` prints a Markdown table for BENCHMARKS.md:
//! - the crawler alone (this process, a fresh store): DIDs listed and queued per second, and how
//!   much this process's resident memory grew meanwhile;
//! - `sluice backfill` (the release binary, a child process) from an empty store to the end:
//!   the crawl, then every repo taken and found gone; wall time, repos/s over the whole run and
//!   in its first and last progress intervals (a queue whose takes slow down as they go shows
//!   here), CPU per repo and peak RSS.
//!
//! `SLUICE_CRAWL_DIDS=n` sets the listing's size.

use std::time::Instant;

use sluice::backfill::{Crawler, Listing};
use sluice::store::Store;
use sluice_devnet::{Devnet, DevnetOptions};
use sluice_testkit::bench;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// This process's resident memory (MB).
fn rss_mb() -> u64 {
    sluice::process::resident_bytes().unwrap_or(0) >> 20
}

/// The repos/s of each progress line `sluice backfill` logged.
fn progress_rates(log: &str) -> Vec<f64> {
    log.lines().filter_map(|l| l.split("repos ").nth(2)?.split("/s").next()?.trim().parse().ok()).collect()
}

#[tokio::main]
async fn main() {
    let dids: usize = std::env::var("SLUICE_CRAWL_DIDS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    net.list_unresolvable(dids, 9);
    println!(
        "| case | DIDs | wall (s) | DIDs or repos/s | first / last interval (repos/s) | CPU µs/repo | memory (MB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let before = rss_mb();
    let started = Instant::now();
    let summary = Crawler::new(&net.relay_url()).crawl(&store, &Listing::AllRepos).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(summary.queued as usize, dids);
    println!(
        "| crawler alone (listRepos pages of 1,000, queued in fjall) | {dids} | {secs:.2} | {:.0} | - | - \
         | +{} (this process) |",
        dids as f64 / secs,
        rss_mb().saturating_sub(before)
    );
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    let filter = sluice_testkit::root().join("filters/everything.toml");
    let config = sluice_testkit::devnet_config_with_filter(
        dir.path(),
        &net,
        &filter,
        "[backfill]\nmax_memory_mb = 0\nprogress_secs = 2\n",
    );
    let log = dir.path().join("backfill.log");
    let usage =
        bench::run_child(env!("CARGO_BIN_EXE_sluice"), &["--config", config.to_str().unwrap(), "backfill"], Some(&log));
    let rates = progress_rates(&std::fs::read_to_string(&log).unwrap());
    // The first interval includes the crawl; the last may be cut short by the run's end.
    let (first, last) = (rates.get(1).copied().unwrap_or(0.0), rates.iter().rev().nth(1).copied().unwrap_or(0.0));
    println!(
        "| `sluice backfill`: crawl, then every repo taken and gone | {dids} | {:.2} | {:.0} \
         | {first:.0} / {last:.0} | {:.1} | {} (peak RSS) |",
        usage.secs,
        dids as f64 / usage.secs,
        usage.cpu * 1e6 / dids as f64,
        usage.peak_kb / 1024
    );
    net.shutdown().await;
}
