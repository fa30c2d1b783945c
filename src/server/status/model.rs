//! What the status page, `GET /status.json` and `sluice status` show: one snapshot of the whole
//! service. Plain data (serde both ways), so that `sluice status` reads it back from a running
//! sluice and prints it with [`super::text`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The service at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// sluice's version.
    pub version: String,
    /// Seconds since the server started.
    pub uptime_secs: u64,
    /// When this snapshot was taken (RFC 3339).
    pub at: String,
    /// Repos by status, every status listed (what `getStats` says).
    pub repos: BTreeMap<String, i64>,
    /// Records stored by collection, non-zero ones (what `getStats` says).
    pub records: BTreeMap<String, i64>,
    /// The sum of `records`.
    pub records_total: u64,
    /// The backfill, when this process runs one.
    pub backfill: Option<BackfillStatus>,
    /// Live ingestion, when this process runs it.
    pub live: Option<LiveStatus>,
    /// The NATS sink, when this process runs it.
    pub nats: Option<NatsStatus>,
    /// The event log.
    pub events: EventLogStatus,
    /// The filter in force and what became of its file's saves.
    pub filter: FilterStatus,
    /// The declared indexes: each one's state and totals (what `describeIndexes` says).
    #[serde(default)]
    pub indexes: Vec<IndexStatus>,
    /// Records and frames refused since start, by what refused them and why (non-zero only).
    pub refused: Vec<Refused>,
    /// Rates over the last hour, for the charts.
    pub history: History,
}

/// The backfill's progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackfillStatus {
    /// Repos whose turn is over, of `total`.
    pub done: u64,
    /// Repos known (listed so far).
    pub total: u64,
    /// True once the crawl has listed every repo: `total` is final and `eta_secs` is given.
    pub listed_all: bool,
    /// Repos being fetched or walked now.
    pub in_flight: u64,
    /// Records walked since start.
    pub records: u64,
    /// Records walked per second lately (over the time work happened in the last interval).
    pub records_per_sec: f64,
    /// Records walked per second over the whole work's span.
    pub records_per_sec_average: f64,
    /// Repos done per second lately.
    pub repos_per_sec: f64,
    /// How long work went on (seconds).
    pub work_secs: f64,
    /// Seconds until every listed repo is done at the recent rate (once all are listed).
    pub eta_secs: Option<u64>,
    /// Failed attempts since start.
    pub failed_attempts: u64,
    /// Why it waits, when it does: `operator`, `memory` or `live backlog`.
    pub paused: Option<String>,
    /// The hosts failing most now.
    pub failing_hosts: Vec<FailingHost>,
    /// Repos that failed in this run and have not recovered, by reason.
    pub failures: Vec<FailureGroup>,
}

/// A PDS host that fails now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailingHost {
    /// Its base URL.
    pub host: String,
    /// Failures since it last answered.
    pub failures: u64,
    /// Why the latest failed.
    pub last_reason: String,
    /// Whether its circuit breaker holds it paused.
    pub paused: bool,
}

/// Repos that failed alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureGroup {
    /// `transient` (retried) or `permanent` (waits for a change).
    pub kind: String,
    /// The reason.
    pub reason: String,
    /// Repos.
    pub repos: u64,
}

/// Live ingestion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveStatus {
    /// Whether a connection to the relay is open.
    pub connected: bool,
    /// The firehose seq everything up to which is applied.
    pub cursor: i64,
    /// How long after its time the latest frame was handled (seconds): how far behind (none
    /// before the first frame).
    pub behind_secs: Option<f64>,
    /// The time of the latest frame handled (RFC 3339), once one was.
    pub last_frame_at: Option<String>,
    /// Frames applied per second lately.
    pub commits_per_sec: f64,
    /// Frames applied since start.
    pub applied: u64,
    /// Why the latest connection ended, once one has.
    pub last_drop: Option<String>,
}

/// The NATS sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsStatus {
    /// Whether publishing succeeds.
    pub connected: bool,
    /// The id of the last event the stream acked.
    pub published: u64,
    /// Events not yet published.
    pub behind: u64,
    /// The latest error, while publishing fails.
    pub error: Option<String>,
}

/// The event log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventLogStatus {
    /// The id of the last event.
    pub last: u64,
    /// The id of the oldest event kept (none while the log is empty).
    pub oldest: Option<u64>,
    /// When the oldest event kept was written (RFC 3339).
    pub oldest_at: Option<String>,
    /// Events kept.
    pub kept: u64,
    /// The bytes they take on disk (written tables; the newest may still be in memory).
    pub disk_bytes: u64,
    /// Events written per second lately.
    pub events_per_sec: f64,
}

/// The filter in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterStatus {
    /// The file.
    pub path: String,
    /// `full` or `signal`.
    pub mode: String,
    /// Collection patterns stored.
    pub collections: Vec<String>,
    /// Signal collections (signal mode).
    pub signals: Vec<String>,
    /// The declared indexes.
    pub indexes: Vec<String>,
    /// Saves put in force since start.
    pub saves_accepted: u64,
    /// Saves refused since start.
    pub saves_refused: u64,
    /// When the latest save was put in force (RFC 3339).
    pub last_reload: Option<String>,
    /// The refusal that stands (the file's last save), with when it was refused.
    pub refusal: Option<FilterRefusal>,
}

/// A declared index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexStatus {
    /// Its name in the filter.
    pub name: String,
    /// The collection it indexes.
    pub collection: String,
    /// `ready`, or `building` with its phase and how far it is, as text:
    /// `building (entries): 1,234 of 5,000 records`; and the repos whose counts move, if any.
    pub state: String,
    /// The build under way, if any.
    pub build: Option<IndexBuildStatus>,
    /// Entries (rows a query can return).
    pub entries: i64,
    /// Records stored without an entry.
    pub skipped: i64,
    /// Repos hidden or shown again whose counts it still moves, a step at a time.
    #[serde(default)]
    pub moving: u64,
}

/// How far an index's build is (as in `describeIndexes`' `progress`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBuildStatus {
    /// `entries` (the stored records put in), then `counts` (each key's count summed).
    pub phase: String,
    /// Records of the collection read so far.
    pub done: u64,
    /// About how many there are.
    pub total: u64,
}

/// A refused save of the filter file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRefusal {
    /// `file:line: reason`.
    pub reason: String,
    /// When (RFC 3339).
    pub at: Option<String>,
}

/// Records or frames refused for one reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// What refused them: `record rule`, `lexicon <collection>`, `index <name>`, `firehose`.
    pub by: String,
    /// Why.
    pub reason: String,
    /// How many since start.
    pub count: u64,
}

/// Rates sampled every `every_secs` over the last hour, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Seconds between samples.
    pub every_secs: u64,
    /// Backfill records walked per second.
    pub records_per_sec: Vec<f64>,
    /// Live frames applied per second.
    pub commits_per_sec: Vec<f64>,
    /// Events written per second.
    pub events_per_sec: Vec<f64>,
}
