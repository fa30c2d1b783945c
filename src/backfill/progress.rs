//! Backfill progress: counters the workers bump, and the periodic line (plus a
//! bar on a terminal) that reports them.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::store::{RepoStatus, Store};

/// Counters shared by the backfill's workers.
#[derive(Debug, Default)]
pub struct Progress {
    /// Repos whose turn ended, whatever state it left them in: synced, discarded, already
    /// current, gone, or failed (in error, maybe with a retry queued).
    pub done: AtomicU64,
    /// Repos found gone.
    pub gone: AtomicU64,
    /// Failed attempts.
    pub failed: AtomicU64,
    /// Repos being fetched or applied now.
    pub in_flight: AtomicU64,
    /// The most repos that were in flight at once.
    pub peak_in_flight: AtomicU64,
    /// Records walked.
    pub records: AtomicU64,
    /// True while new repos wait for memory to fall under the cap.
    pub memory_paused: AtomicBool,
    /// True while backfill yields to live ingestion.
    pub idle_paused: AtomicBool,
}

/// A snapshot for one report.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    done: u64,
    records: u64,
}

/// Writes a progress line every `every` until `stop` is cancelled, and returns as soon as it
/// is (a run's end waits for it); the memory cap is read at each line, as it may change while
/// running.
pub async fn report(
    progress: &Progress,
    store: &Store,
    memory_cap_mb: &AtomicU64,
    every: Duration,
    stop: &CancellationToken,
) {
    let mut last = Sample { at: Instant::now(), done: 0, records: 0 };
    let bar = std::io::stderr().is_terminal();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until((last.at + every).into()) => {}
            _ = stop.cancelled() => return,
        }
        let now = Sample {
            at: Instant::now(),
            done: progress.done.load(Ordering::Relaxed),
            records: progress.records.load(Ordering::Relaxed),
        };
        let line = progress_line(progress, store, memory_cap_mb.load(Ordering::Relaxed), &last, &now);
        if bar {
            let pending = queued(store);
            eprint!("\r\x1b[K{}", progress_bar(now.done, now.done + pending));
        }
        tracing::info!(target: "sluice::backfill", "{line}");
        last = now;
    }
}

fn queued(store: &Store) -> u64 {
    [RepoStatus::Pending, RepoStatus::Backfilling, RepoStatus::Error]
        .into_iter()
        .map(|s| store.repo_count(s).max(0) as u64)
        .sum()
}

/// The line: repos done/pending/failed, records, rates, memory against its cap, cursors.
fn progress_line(p: &Progress, store: &Store, memory_cap_mb: u64, last: &Sample, now: &Sample) -> String {
    let secs = now.at.duration_since(last.at).as_secs_f64().max(1e-3);
    let repos = |s| store.repo_count(s);
    let memory = crate::process::resident_bytes().map(|b| b >> 20).unwrap_or(0);
    let cap = if memory_cap_mb == 0 { "no cap".to_string() } else { format!("cap {memory_cap_mb} MB") };
    let cursors = store.cursors().all().unwrap_or_default();
    let cursors: Vec<String> = cursors
        .iter()
        .filter(|(k, _)| k.starts_with("crawler") || *k == "backfill")
        .map(|(k, (v, _))| format!("{k}={v}"))
        .collect();
    let paused = match (p.memory_paused.load(Ordering::Relaxed), p.idle_paused.load(Ordering::Relaxed)) {
        (true, _) => " [paused: memory]",
        (_, true) => " [paused: live backlog]",
        _ => "",
    };
    format!(
        "backfill: repos {} done ({} synced, {} discarded, {} gone), {} pending, {} in flight, \
         {} failed ({} in error); records {} ({:.0}/s), repos {:.1}/s; \
         memory {memory} MB ({cap}); cursors {}{paused}",
        now.done,
        repos(RepoStatus::Synced),
        repos(RepoStatus::Discarded),
        repos(RepoStatus::Gone),
        repos(RepoStatus::Pending) + repos(RepoStatus::Backfilling) + repos(RepoStatus::Desynchronized),
        p.in_flight.load(Ordering::Relaxed),
        p.failed.load(Ordering::Relaxed),
        repos(RepoStatus::Error),
        now.records,
        (now.records - last.records) as f64 / secs,
        (now.done - last.done) as f64 / secs,
        if cursors.is_empty() { "none".to_string() } else { cursors.join(" ") },
    )
}

/// `[#####.....]  50%  5/10 repos`
pub fn progress_bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(0).min(WIDTH) as usize;
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    format!("[{}{}] {percent:>3}%  {done}/{total} repos", "#".repeat(filled), ".".repeat(WIDTH as usize - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar() {
        assert_eq!(progress_bar(5, 10), format!("[{}{}]  50%  5/10 repos", "#".repeat(15), ".".repeat(15)));
        assert_eq!(progress_bar(0, 0), format!("[{}] 100%  0/0 repos", ".".repeat(30)));
    }

    #[test]
    fn the_line_names_every_figure() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.queue().enqueue_new(&["did:plc:a".into()], Some(("crawler", "c9"))).unwrap();
        let p = Progress::default();
        p.memory_paused.store(true, Ordering::Relaxed);
        let t = Instant::now();
        let line = progress_line(
            &p,
            &store,
            300,
            &Sample { at: t, done: 0, records: 0 },
            &Sample { at: t + Duration::from_secs(2), done: 4, records: 1000 },
        );
        for want in [
            "repos 4 done",
            "1 pending",
            "records 1000 (500/s)",
            "repos 2.0/s",
            "cap 300 MB",
            "crawler=c9",
            "paused: memory",
        ] {
            assert!(line.contains(want), "{want} missing from {line}");
        }
    }
}
