//! Backfill progress: counters the workers bump, the failures of the run by reason, and the
//! periodic line (plus a bar on a terminal) that reports them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::store::{RepoStatus, Store};
use crate::units::per_sec;

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
    /// True once the crawl has listed every repo of the relay (or when there is no crawl):
    /// from then on the repos known are all there is to do, and an end can be foreseen.
    pub listed: AtomicBool,
    /// True while a terminal shows a progress bar instead of the periodic line.
    pub bar_shown: AtomicBool,
    /// When repos started and ended: rates are over the work's own span.
    pub work: WorkSpan,
}

/// The first and the latest moment of work (a repo started or ended), so that rates are taken
/// over the time work happened: 1,000 records walked in 0.1 s are 10,000/s, not 1,000 over
/// however long the reporting interval or the idle time after them was.
#[derive(Debug, Default)]
pub struct WorkSpan {
    /// Microseconds since [`epoch`] plus one; 0 before any work.
    first_us: AtomicU64,
    /// See `first_us`.
    last_us: AtomicU64,
}

/// The origin of [`WorkSpan`]'s times.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl WorkSpan {
    /// Work happens now.
    pub fn touch(&self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&self, at: Instant) {
        let us = at.saturating_duration_since(epoch()).as_micros() as u64 + 1;
        let _ = self
            .first_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |first| (first == 0 || us < first).then_some(us));
        self.last_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The first and the latest moment of work, once there was any.
    pub fn bounds(&self) -> Option<(Instant, Instant)> {
        let at = |us: u64| epoch() + Duration::from_micros(us - 1);
        match (self.first_us.load(Ordering::Relaxed), self.last_us.load(Ordering::Relaxed)) {
            (0, _) | (_, 0) => None,
            (first, last) => Some((at(first), at(last.max(first)))),
        }
    }
}

/// The counters at one moment: two of them give the rates between them.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// When it was taken.
    pub at: Instant,
    /// See [`Progress::done`].
    pub done: u64,
    /// See [`Progress::records`].
    pub records: u64,
    /// See [`Progress::in_flight`].
    pub in_flight: u64,
    /// See [`Progress::failed`].
    pub failed: u64,
    /// The work's span so far ([`WorkSpan::bounds`]).
    pub work: Option<(Instant, Instant)>,
}

impl Progress {
    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            done: self.done.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            work: self.work.bounds(),
        }
    }
}

impl Snapshot {
    /// The time work went on up to this snapshot: to now while repos are in flight, else to
    /// the latest moment of work.
    fn work_end(&self) -> Option<Instant> {
        let (_, last) = self.work?;
        Some(if self.in_flight > 0 { self.at } else { last.min(self.at) })
    }

    /// How long work went on from `from` (or from its first moment, if later) to this
    /// snapshot.
    fn worked_from(&self, from: Instant) -> Duration {
        match (self.work, self.work_end()) {
            (Some((first, _)), Some(end)) => end.saturating_duration_since(from.max(first)),
            _ => Duration::ZERO,
        }
    }

    /// How long work went on between `earlier` and this snapshot.
    pub fn worked_since(&self, earlier: &Snapshot) -> Duration {
        self.worked_from(earlier.at)
    }

    /// How long work went on in all: from its first moment to its latest (or now).
    pub fn work_time(&self) -> Duration {
        self.work.map_or(Duration::ZERO, |(first, _)| self.worked_from(first))
    }

    /// Whether anything happened between `earlier` and this snapshot (or is happening now).
    pub fn busy_since(&self, earlier: &Snapshot) -> bool {
        self.in_flight > 0
            || self.done != earlier.done
            || self.records != earlier.records
            || self.failed != earlier.failed
    }

    /// Records walked per second of work between `earlier` and now.
    pub fn records_per_sec_since(&self, earlier: &Snapshot) -> f64 {
        per_sec(self.records.saturating_sub(earlier.records), self.worked_since(earlier))
    }

    /// Repos done per second of work between `earlier` and now.
    pub fn repos_per_sec_since(&self, earlier: &Snapshot) -> f64 {
        per_sec(self.done.saturating_sub(earlier.done), self.worked_since(earlier))
    }

    /// Records walked per second over the whole work.
    pub fn average_records_per_sec(&self) -> f64 {
        per_sec(self.records, self.work_time())
    }

    /// Repos done per second over the whole work.
    pub fn average_repos_per_sec(&self) -> f64 {
        per_sec(self.done, self.work_time())
    }
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

/// Writes a progress line every `every` while work happens (unless a terminal shows a bar
/// instead), and a summary line when `stop` is cancelled, if any work happened; returns as soon
/// as it is (a run's end waits for it). The memory cap is read at each line, as it may change
/// while running.
pub async fn report(
    progress: &Progress,
    store: &Store,
    memory_cap_mb: &AtomicU64,
    every: Duration,
    stop: &CancellationToken,
) {
    let mut last = progress.snapshot();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until((last.at + every).into()) => {}
            _ = stop.cancelled() => break,
        }
        let now = progress.snapshot();
        let paused = progress.memory_paused.load(Ordering::Relaxed) || progress.idle_paused.load(Ordering::Relaxed);
        if (now.busy_since(&last) || paused) && !progress.bar_shown.load(Ordering::Relaxed) {
            let line = progress_line(progress, store, memory_cap_mb.load(Ordering::Relaxed), &last, &now);
            tracing::info!(target: "sluice::backfill", "{line}");
        }
        last = now;
    }
    let now = progress.snapshot();
    if now.work.is_some() {
        tracing::info!(target: "sluice::backfill", "{}", summary_line(&now, store));
    }
}

/// Repos done of those listed: what a progress bar shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    /// Repos whose turn is over (in any state but queued or in flight).
    pub done: u64,
    /// Repos known: listed by the crawl, named by the filter or queued by hand.
    pub total: u64,
}

/// Repos done of those listed, from the store's counters.
pub fn listed(store: &Store) -> Listed {
    let total: u64 = RepoStatus::ALL.into_iter().map(|s| store.repo_count(s).max(0) as u64).sum();
    Listed { done: total.saturating_sub(queued(store)), total }
}

/// Repos still to be done now ([`RepoStatus::QUEUED`]).
fn queued(store: &Store) -> u64 {
    RepoStatus::QUEUED.into_iter().map(|s| store.repo_count(s).max(0) as u64).sum()
}

/// The repos by status, as `18 synced, 2 discarded` (statuses with none left out).
pub fn repos_by_status(store: &Store) -> String {
    let parts: Vec<String> = RepoStatus::ALL
        .into_iter()
        .map(|s| (s, store.repo_count(s)))
        .filter(|(_, n)| *n != 0)
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect();
    if parts.is_empty() { "none".to_string() } else { parts.join(", ") }
}

/// The line a run ends with: repos by status, records, the time work took and the average
/// rate over it.
pub fn summary_line(now: &Snapshot, store: &Store) -> String {
    format!(
        "backfill summary: {} repos done in this run, repos {}; {} records in {} ({} records/s on average); \
         {} failed attempts",
        crate::units::count(now.done),
        repos_by_status(store),
        crate::units::count(now.records),
        crate::units::duration(now.work_time()),
        crate::units::rate(now.average_records_per_sec()),
        now.failed,
    )
}

/// The line: repos done/pending/failed, records, rates (now and on average, over the time work
/// happened), memory against its cap, cursors.
fn progress_line(p: &Progress, store: &Store, memory_cap_mb: u64, last: &Snapshot, now: &Snapshot) -> String {
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
         {} failed attempts ({} permanent; {} repos in error); records {} ({:.0}/s now, {:.0}/s on average), \
         repos {:.1}/s; memory {memory} MB ({cap}); cursors {}{paused}",
        now.done,
        repos(RepoStatus::Synced),
        repos(RepoStatus::Discarded),
        repos(RepoStatus::Gone),
        queued(store),
        now.in_flight,
        now.failed,
        p.permanent.load(Ordering::Relaxed),
        repos(RepoStatus::Error),
        now.records,
        now.records_per_sec_since(last),
        now.average_records_per_sec(),
        now.repos_per_sec_since(last),
        if cursors.is_empty() { "none".to_string() } else { cursors.join(" ") },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_over_the_time_work_happened_not_the_interval() {
        let t = Instant::now();
        let secs = |s: f64| Duration::from_secs_f64(s);
        let work = Some((t + secs(1.0), t + secs(1.1)));
        let before = Snapshot { at: t, done: 0, records: 0, in_flight: 0, failed: 0, work: None };
        let after = Snapshot { at: t + secs(5.0), done: 10, records: 1000, in_flight: 0, failed: 0, work };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6 * b.max(1.0);
        assert!(close(after.records_per_sec_since(&before), 10_000.0), "{}", after.records_per_sec_since(&before));
        assert!(close(after.average_records_per_sec(), 10_000.0));
        assert!(close(after.repos_per_sec_since(&before), 100.0));
        assert_eq!(after.work_time(), secs(0.1));
        // While a repo is in flight, work goes on up to now.
        let busy = Snapshot { in_flight: 1, ..after };
        assert!(close(busy.records_per_sec_since(&before), 250.0), "{}", busy.records_per_sec_since(&before));
        // After the work: no rate, and nothing to report.
        let later = Snapshot { at: t + secs(10.0), ..after };
        assert_eq!(later.records_per_sec_since(&after), 0.0);
        assert!(!later.busy_since(&after) && after.busy_since(&before) && busy.busy_since(&busy));
        assert_eq!(before.average_records_per_sec(), 0.0, "no work, no rate");
    }

    #[test]
    fn a_work_span_holds_the_first_and_the_latest_moment() {
        let span = WorkSpan::default();
        assert!(span.bounds().is_none());
        let t = epoch() + Duration::from_secs(1);
        span.touch_at(t + Duration::from_millis(300));
        span.touch_at(t);
        span.touch_at(t + Duration::from_millis(200));
        let (first, last) = span.bounds().unwrap();
        assert_eq!(
            last - first,
            Duration::from_millis(300),
            "the earliest and the latest, in whatever order they came"
        );
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
        let snapshot = |at, done, records| Snapshot {
            at,
            done,
            records,
            in_flight: 0,
            failed: 0,
            work: Some((t, t + Duration::from_secs(2))),
        };
        let line = progress_line(&p, &store, 300, &snapshot(t, 0, 0), &snapshot(t + Duration::from_secs(5), 4, 1000));
        for want in [
            "repos 4 done",
            "1 pending",
            "records 1000 (500/s now, 500/s on average)",
            "repos 2.0/s",
            "cap 300 MB",
            "crawler=c9",
            "paused: memory",
        ] {
            assert!(line.contains(want), "{want} missing from {line}");
        }
    }
}
