//! The backfill queue alone, at network scale: `N` repos queued (as the crawler queues them,
//! a page of 1,000 DIDs per batch), then all taken one at a time and each finished (synced,
//! which leaves a tombstone in the `pending` index), as the scheduler and its workers do.
//!
//! `cargo bench --bench queue` prints a Markdown table for BENCHMARKS.md: repos queued per
//! second, the time per repo of the first and the last 10,000 taken (take + finish, and the
//! take alone), and the process's peak RSS. The cost of a take must not grow with the repos
//! taken before it: the last 10,000 within 1.3x of the first.
//!
//! `SLUICE_QUEUE_REPOS=n[,n...]` sets the sizes (default 100000,1000000). `SLUICE_QUEUE_REWIND=1`
//! adds a row per size that rewinds the queue before every take, which is what every take cost
//! before takes went on from the last one (a scan from the index's start over every tombstone);
//! it is only run on the first 20,000 repos taken, as its cost grows with them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sluice::store::{RepoState, RepoStatus, Store};
use sluice_testkit::bench;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WINDOW: usize = 10_000;
const PAGE: usize = 1_000;

/// The process's peak resident memory so far (MB).
fn peak_rss_mb() -> u64 {
    bench::self_status_kb("VmHWM:") / 1024
}

fn did(i: usize) -> String {
    // Spread over the key space as real DIDs are (a hash-like order, not the queueing order).
    format!("did:plc:{:016x}{i:08}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Takes one due repo and finishes it; returns the time of the take alone.
fn take_and_finish(store: &Store, now: u64, rewind: bool) -> Duration {
    let started = Instant::now();
    if rewind {
        store.queue().rewind();
    }
    let (did, _) = store.queue().take_due(now, 1, &HashSet::new()).unwrap().pop().expect("a repo is due");
    let took = started.elapsed();
    store.set_states(&[(did, RepoState { status: RepoStatus::Synced, ..Default::default() })], None).unwrap();
    took
}

fn row(
    label: &str,
    repos: usize,
    queued_per_sec: f64,
    first: (Duration, Duration),
    last: Option<(Duration, Duration)>,
    peak: u64,
) {
    let us = |d: Duration| d.as_secs_f64() * 1e6 / WINDOW as f64;
    let last_cols = match last {
        Some((all, take)) => {
            format!("{:.1} | {:.1} | {:.2}x", us(all), us(take), all.as_secs_f64() / first.0.as_secs_f64())
        }
        None => "- | - | -".to_string(),
    };
    println!(
        "| {label} | {repos} | {queued_per_sec:.0} | {:.1} | {:.1} | {last_cols} | {peak} |",
        us(first.0),
        us(first.1)
    );
}

fn run(repos: usize, rewind: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let started = Instant::now();
    let mut page = Vec::with_capacity(PAGE);
    for i in 0..repos {
        page.push(did(i));
        if page.len() == PAGE || i + 1 == repos {
            store.queue().enqueue_new(&page, Some(("crawler", page.last().unwrap()))).unwrap();
            page.clear();
        }
    }
    let queued_per_sec = repos as f64 / started.elapsed().as_secs_f64();
    let now = sluice::store::values::now_ms() + 1;
    let window = |store: &Store| {
        let started = Instant::now();
        let take: Duration = (0..WINDOW).map(|_| take_and_finish(store, now, rewind)).sum();
        (started.elapsed(), take)
    };
    let first = window(&store);
    let (label, last) = if rewind {
        // The old cost grows with every repo taken: a second window shows how.
        (format!("rewind before every take (old design), windows 1 and 2 of {WINDOW}"), Some(window(&store)))
    } else {
        for _ in 0..repos - 2 * WINDOW {
            take_and_finish(&store, now, false);
        }
        let last = window(&store);
        assert!(store.queue().take_due(now, 1, &HashSet::new()).unwrap().is_empty(), "every repo was taken once");
        ("take on from the last take".to_string(), Some(last))
    };
    row(&label, repos, queued_per_sec, first, last, peak_rss_mb());
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SLUICE_QUEUE_REPOS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000, 1_000_000]);
    let rewind = std::env::var("SLUICE_QUEUE_REWIND").is_ok_and(|v| v == "1");
    println!(
        "| design | repos | queued/s | first {WINDOW}: µs/repo | take alone | last {WINDOW}: µs/repo | take alone \
         | last/first | peak RSS (MB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &repos in &sizes {
        assert!(repos >= 2 * WINDOW, "at least {} repos", 2 * WINDOW);
        run(repos, false);
        if rewind {
            run(repos, true);
        }
    }
}
