//! Backfill progress: counters the workers bump, the failures of the run by reason, and the
//! periodic line (plus a bar on a terminal) that reports them.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::store::{RepoStatus, Store};

/// Counters shared by the backfill's workers.
#[derive(Debug, Default)]
pub struct Progress {
    /// Repos whose turn ended for good, whatever state it left them in: synced, discarded,
    /// already current, gone, or failed with no retry scheduled. A failure with a retry
    /// queued is not an end: a repo that fails and is then synced by its retry counts once.
    pub done: AtomicU64,
    /// Repos found gone.
    pub gone: AtomicU64,
    /// Failed attempts, of either kind.
    pub failed: AtomicU64,
    /// Failed attempts that were permanent refusals (not retried until the repo changes).
    pub permanent: AtomicU64,
    /// Repos that failed in this run and have not succeeded since, by reason.
    pub failures: Failures,
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

/// Whether a failure is worth retrying as it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// The network or the host failed (a timeout, a 5xx, a 429, a dropped connection, the
    /// spool's disk): retried after the backoff.
    Transient,
    /// The repo as served is refused (a bad signature, another DID's commit, a malformed or
    /// oversized CAR, an unusable DID document): not retried until something changes.
    Permanent,
}

impl FailureKind {
    /// The lowercase name used in metrics and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::Permanent => "permanent",
        }
    }
}

/// The repos that failed in a run and have not succeeded since: each repo's latest failure,
/// by kind and reason group (the error's kind without per-repo text, so that repos failing
/// alike are counted together). Holds one entry of 12 bytes per failing repo (a hash of its
/// DID and its group), so that a run over the network with a million failing repos keeps tens
/// of MB, not the DIDs themselves.
#[derive(Debug, Default)]
pub struct Failures(Mutex<FailureTable>);

/// [`Failures`]' contents: reason groups are kept once, repos point at theirs.
#[derive(Debug, Default)]
struct FailureTable {
    groups: Vec<(FailureKind, String)>,
    group_ids: HashMap<(FailureKind, String), u32>,
    /// Each failing repo's group, by [`did_key`].
    by_repo: HashMap<u64, u32>,
}

/// The key of `did` in [`FailureTable::by_repo`]: a 64-bit hash. Two DIDs sharing one would
/// only be counted once in a summary (odds of about one in thirty million at a million failing
/// repos).
fn did_key(did: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x5_1ce).hash_one(did)
}

/// One line of a failure summary: how many repos failed last with this kind and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureGroup {
    /// Retried later, or waiting for a change.
    pub kind: FailureKind,
    /// The reason, without per-repo text.
    pub reason: String,
    /// Repos.
    pub repos: u64,
}

impl Failures {
    /// `did` failed (again) with `kind` and reason group `reason`.
    pub fn record(&self, did: &str, kind: FailureKind, reason: &str) {
        let mut table = self.0.lock().expect("failures");
        let key = (kind, reason.to_string());
        let id = match table.group_ids.get(&key) {
            Some(id) => *id,
            None => {
                let id = table.groups.len() as u32;
                table.groups.push(key.clone());
                table.group_ids.insert(key, id);
                id
            }
        };
        table.by_repo.insert(did_key(did), id);
    }

    /// `did`'s turn ended otherwise (synced, current, gone): it no longer counts as failed.
    pub fn clear(&self, did: &str) {
        self.0.lock().expect("failures").by_repo.remove(&did_key(did));
    }

    /// Repos failed and not recovered.
    pub fn repos(&self) -> u64 {
        self.0.lock().expect("failures").by_repo.len() as u64
    }

    /// The failed repos by kind and reason, most repos first (then by kind and reason).
    pub fn summary(&self) -> Vec<FailureGroup> {
        let table = self.0.lock().expect("failures");
        let mut counts = vec![0u64; table.groups.len()];
        for id in table.by_repo.values() {
            counts[*id as usize] += 1;
        }
        let mut groups: Vec<FailureGroup> = table
            .groups
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|((kind, reason), repos)| FailureGroup { kind: *kind, reason: reason.clone(), repos })
            .collect();
        groups.sort_by(|a, b| b.repos.cmp(&a.repos).then(a.kind.cmp(&b.kind)).then(a.reason.cmp(&b.reason)));
        groups
    }
}

/// What `sluice backfill` says at its end about `groups` (see [`Failures::summary`]): how many
/// repos failed, one line per reason, and when each kind is tried again. Nothing when none
/// failed.
pub fn failure_report(groups: &[FailureGroup]) -> Vec<String> {
    let count = |kind| groups.iter().filter(|g| g.kind == kind).map(|g| g.repos).sum::<u64>();
    let (transient, permanent) = (count(FailureKind::Transient), count(FailureKind::Permanent));
    if transient + permanent == 0 {
        return Vec::new();
    }
    let mut lines =
        vec![format!("{} repos failed ({transient} transient, {permanent} permanent):", transient + permanent)];
    lines.extend(groups.iter().map(|g| format!("  {} {}: {}", g.repos, g.kind.as_str(), g.reason)));
    if transient > 0 {
        lines.push(
            "transient failures are retried by the next `sluice backfill` once their backoff has passed, \
             and by `sluice run`"
                .into(),
        );
    }
    if permanent > 0 {
        lines.push(
            "permanent failures are retried when the repo changes (a new commit, #sync or #identity), \
             after a filter edit, or with `sluice backfill --did`"
                .into(),
        );
    }
    lines
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
         {} failed attempts ({} permanent; {} repos in error); records {} ({:.0}/s), repos {:.1}/s; \
         memory {memory} MB ({cap}); cursors {}{paused}",
        now.done,
        repos(RepoStatus::Synced),
        repos(RepoStatus::Discarded),
        repos(RepoStatus::Gone),
        repos(RepoStatus::Pending) + repos(RepoStatus::Backfilling) + repos(RepoStatus::Desynchronized),
        p.in_flight.load(Ordering::Relaxed),
        p.failed.load(Ordering::Relaxed),
        p.permanent.load(Ordering::Relaxed),
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
    fn failures_count_each_repo_once_by_its_latest_reason() {
        let f = Failures::default();
        f.record("did:plc:a", FailureKind::Transient, "getRepo answered HTTP 500");
        f.record("did:plc:a", FailureKind::Transient, "getRepo answered HTTP 500");
        f.record("did:plc:b", FailureKind::Transient, "getRepo answered HTTP 500");
        f.record("did:plc:c", FailureKind::Transient, "getRepo answered HTTP 500");
        f.record("did:plc:c", FailureKind::Permanent, "malformed or truncated CAR");
        f.record("did:plc:d", FailureKind::Transient, "the request failed");
        f.clear("did:plc:d");
        let want = [
            (FailureKind::Transient, "getRepo answered HTTP 500", 2),
            (FailureKind::Permanent, "malformed or truncated CAR", 1),
        ];
        let got: Vec<_> = f.summary().into_iter().map(|g| (g.kind, g.reason, g.repos)).collect();
        assert_eq!(got, want.map(|(k, r, n)| (k, r.to_string(), n)));
        assert_eq!(f.repos(), 3);
    }

    #[test]
    fn the_report_counts_repos_by_reason_and_says_when_they_are_retried() {
        assert!(failure_report(&[]).is_empty());
        let group = |kind, reason: &str, repos| FailureGroup { kind, reason: reason.into(), repos };
        let lines = failure_report(&[
            group(FailureKind::Transient, "getRepo answered HTTP 500", 2),
            group(FailureKind::Permanent, "bad commit signature", 1),
        ]);
        assert_eq!(lines[0], "3 repos failed (2 transient, 1 permanent):");
        assert_eq!(lines[1], "  2 transient: getRepo answered HTTP 500");
        assert_eq!(lines[2], "  1 permanent: bad commit signature");
        assert!(lines[3].contains("next `sluice backfill`") && lines[3].contains("`sluice run`"));
        assert!(lines[4].contains("a new commit") && lines[4].contains("--did"));
        let only_transient = failure_report(&[group(FailureKind::Transient, "x", 1)]);
        assert_eq!(only_transient.len(), 3, "no word of permanent failures when there are none");
    }

    proptest::proptest! {
        /// Whatever the order of failures and recoveries, the summary counts each repo that
        /// failed last exactly once, under its latest reason.
        #[test]
        fn the_summary_is_the_latest_failure_of_each_repo(
            steps in proptest::collection::vec((0u8..6, proptest::option::of((0u8..2, 0u8..3))), 0..60)
        ) {
            let f = Failures::default();
            let mut model = std::collections::BTreeMap::new();
            for (repo, failure) in steps {
                let did = format!("did:plc:{repo}");
                match failure {
                    Some((kind, reason)) => {
                        let kind = if kind == 0 { FailureKind::Transient } else { FailureKind::Permanent };
                        f.record(&did, kind, &format!("reason {reason}"));
                        model.insert(did, (kind, format!("reason {reason}")));
                    }
                    None => {
                        f.clear(&did);
                        model.remove(&did);
                    }
                }
            }
            let mut want: HashMap<(FailureKind, String), u64> = HashMap::new();
            for group in model.into_values() {
                *want.entry(group).or_default() += 1;
            }
            let summary = f.summary();
            proptest::prop_assert_eq!(summary.len(), want.len());
            for g in &summary {
                proptest::prop_assert_eq!(want.get(&(g.kind, g.reason.clone())), Some(&g.repos));
            }
            proptest::prop_assert!(summary.windows(2).all(|w| w[0].repos >= w[1].repos));
        }
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
