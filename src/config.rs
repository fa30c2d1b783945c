//! Configuration: `config.toml` (every key optional, defaults below), then environment
//! overrides, then CLI flags. Every variable sluice reads is listed once, in [`ENVIRONMENT`]:
//! the README's table and `sluice --help` show that list, and tests keep the three and
//! [`Config::apply_env`] in step.

use std::path::{Path, PathBuf};

use EnvKind::{Process, Secret, Setting};
use serde::Deserialize;

use crate::http::{AddressPolicy, AllowedNetwork};
use crate::repo::CarLimits;

/// What a variable of [`ENVIRONMENT`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKind {
    /// Overrides a `config.toml` setting ([`Config::apply_env`] reads it).
    Setting,
    /// Holds a secret under a name the config gives (these are the default names).
    Secret,
    /// Read by the command line or the runtime, not by the config.
    Process,
}

/// A variable sluice reads.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    /// Its name.
    pub name: &'static str,
    /// What it is for.
    pub kind: EnvKind,
    /// The setting it overrides or stands for, in `config.toml`'s terms (or the flag).
    pub setting: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

/// Every environment variable sluice reads, in the order the README lists them. Tests check
/// that [`Config::apply_env`] reads exactly the [`EnvKind::Setting`] ones, and that the README
/// and `sluice --help` name each.
pub const ENVIRONMENT: &[EnvVar] = &[
    env(Setting, "SLUICE_DATA", "[storage] path", "where the store lives"),
    env(Setting, "SLUICE_FILTER", "[filter] path", "the filter file"),
    env(Setting, "RELAY_URL", "[network] relay", "the relay: listRepos, and the firehose unless SLUICE_FIREHOSE_URL"),
    env(Setting, "SLUICE_PLC_URL", "[network] plc", "the PLC directory (ends with /)"),
    env(
        Setting,
        "SLUICE_HANDLE_RESOLVER",
        "[network] handle_resolver",
        "a resolveHandle service; empty: DNS and HTTPS",
    ),
    env(Setting, "SLUICE_FIREHOSE", "[firehose] enabled", "false: no live ingestion"),
    env(Setting, "SLUICE_FIREHOSE_URL", "[firehose] url", "subscribeRepos from this host instead of the relay"),
    env(Setting, "SLUICE_SERVER", "[server] enabled", "false: no HTTP server"),
    env(Setting, "SLUICE_LISTEN", "[server] listen", "the HTTP server's address"),
    env(Setting, "SLUICE_EVENTS_RETENTION_HOURS", "[events] retention_hours", "0: keep every event"),
    env(Setting, "SLUICE_SHARD", "[cluster] shard", "I/N: index only the DIDs of shard I of N"),
    env(Setting, "SLUICE_NODE", "[cluster] node", "this node's name in NATS message ids"),
    env(Setting, "SLUICE_NATS_URL", "[sink.nats] url", "publish the event log to this NATS server"),
    env(Setting, "BACKFILL_DAYS", "[backfill] days", "-1: whole history; 0: no backfill; N: the last N days"),
    env(Setting, "BACKFILL_BATCH_SIZE", "[backfill] batch_size", "record changes per committed batch of a repo"),
    env(Setting, "BACKFILL_BATCH_DELAY_MS", "[backfill] batch_delay_ms", "pause between those batches"),
    env(Setting, "BACKFILL_MAX_CONCURRENT", "[backfill] max_concurrent", "repos in flight"),
    env(Setting, "BACKFILL_MAX_MEMORY_MB", "[backfill] max_memory_mb", "no new repo starts above this RSS; 0: no cap"),
    env(Setting, "BACKFILL_USE_IDLE", "[backfill] use_idle", "new repos wait while live ingestion has a backlog"),
    env(Setting, "WORKER_ID", "[backfill] worker_id", "backfill runs only where it is unset or 0"),
    env(Secret, "SLUICE_ADMIN_TOKEN", "[server] admin_token_env", "the admin API's bearer token; unset: no admin API"),
    env(Secret, "SLUICE_NATS_USER", "[sink.nats] user_env", "NATS user (with SLUICE_NATS_PASSWORD)"),
    env(Secret, "SLUICE_NATS_PASSWORD", "[sink.nats] password_env", "NATS password"),
    env(Secret, "SLUICE_NATS_TOKEN", "[sink.nats] token_env", "NATS token"),
    env(Secret, "SLUICE_NATS_CREDS", "[sink.nats] creds_file_env", "a NATS .creds file"),
    env(Process, "SLUICE_LOG_FORMAT", "--log-format", "text or json (one JSON object per log line)"),
    env(Process, "RUST_LOG", "", "what is logged (tracing's filter syntax), info by default"),
    env(Process, "MIMALLOC_*", "", "the allocator's options; those set here win over sluice's"),
];

/// One row of [`ENVIRONMENT`].
const fn env(kind: EnvKind, name: &'static str, setting: &'static str, meaning: &'static str) -> EnvVar {
    EnvVar { name, kind, setting, meaning }
}

/// [`ENVIRONMENT`] as `sluice --help` shows it.
pub fn environment_help() -> String {
    let width = ENVIRONMENT.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut out = String::from("Environment (overrides config.toml; CLI flags override both):\n");
    for v in ENVIRONMENT {
        let setting = if v.setting.is_empty() { String::new() } else { format!(" ({})", v.setting) };
        out.push_str(&format!("  {:width$}  {}{setting}\n", v.name, v.meaning));
    }
    out
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where data lives.
    pub storage: StorageConfig,
    /// The filter file.
    pub filter: FilterConfig,
    /// Relay and PLC directory.
    pub network: NetworkConfig,
    /// Repo size limits.
    pub limits: LimitsConfig,
    /// Backfill controls.
    pub backfill: BackfillConfig,
    /// Live ingestion.
    pub firehose: FirehoseConfig,
    /// The HTTP server.
    pub server: ServerConfig,
    /// The event log.
    pub events: EventsConfig,
    /// Where the event log is published besides the server.
    pub sink: SinkConfig,
    /// Sharded indexing across nodes.
    pub cluster: ClusterConfig,
}

/// `[sink]`: where else the event log goes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// `[sink.nats]` (or `SLUICE_NATS_URL`): publish every event to a NATS JetStream stream.
    pub nats: Option<NatsSinkConfig>,
}

/// `[sink.nats]`: the JetStream sink (see `sink.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSinkConfig {
    /// `SLUICE_NATS_URL`: the server (`nats://host:port`, several comma-separated).
    pub url: String,
    /// The stream, created when missing (never changed when it exists).
    pub stream: String,
    /// Subjects are `<prefix>.record.<collection>.<action>`, `<prefix>.identity`,
    /// `<prefix>.account`; the stream takes `<prefix>.>`.
    pub subject_prefix: String,
    /// The environment variables holding credentials, when set: a user and password, a
    /// token, or the path of a `.creds` file.
    pub user_env: String,
    /// See `user_env`.
    pub password_env: String,
    /// See `user_env`.
    pub token_env: String,
    /// See `user_env`.
    pub creds_file_env: String,
    /// A stream sluice creates keeps messages this long (0 = for ever).
    pub max_age_hours: f64,
    /// ... and at most this many bytes (-1 = no limit).
    pub max_bytes: i64,
    /// ... with this many replicas (a clustered NATS).
    pub replicas: usize,
    /// ... and drops a message whose `Nats-Msg-Id` it saw within this window: a republish
    /// after a crash is dropped if the restart comes within it.
    pub duplicate_window_secs: u64,
    /// Publishes sent before their acks are awaited.
    pub in_flight: usize,
    /// When the sink has caught up and only a few events wait, it waits this long for more
    /// before it reads and sends them: events then go out in batches (one log read, one
    /// write to the socket, one wake-up for many events), which a backfill's stream of small
    /// commits needs; a live event reaches NATS at most this much later.
    pub linger_ms: u64,
}

impl Default for NatsSinkConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            stream: "SLUICE".into(),
            subject_prefix: "sluice".into(),
            user_env: "SLUICE_NATS_USER".into(),
            password_env: "SLUICE_NATS_PASSWORD".into(),
            token_env: "SLUICE_NATS_TOKEN".into(),
            creds_file_env: "SLUICE_NATS_CREDS".into(),
            max_age_hours: 72.0,
            max_bytes: -1,
            replicas: 1,
            duplicate_window_secs: 600,
            in_flight: 512,
            linger_ms: 10,
        }
    }
}

/// `[cluster]`: sharded indexing (see `cluster.rs`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `SLUICE_SHARD`: `"I/N"`, this node's shard of N (`"0/1"`: the whole network).
    pub shard: crate::cluster::Shard,
    /// `SLUICE_NODE`: this node's name in message ids (`Nats-Msg-Id` = `<node>:<event id>`);
    /// `shard-I-of-N` when unset.
    pub node: Option<String>,
}

impl ClusterConfig {
    /// The node's name (see `node`).
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| format!("shard-{}-of-{}", self.shard.index, self.shard.count))
    }
}

/// `[events]`: how long the event log keeps events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// `SLUICE_EVENTS_RETENTION_HOURS`: events older than this are removed from the log, a
    /// page (up to 512 events) at a time, by `sluice run`; 0 keeps every event. Records and
    /// handler indexes are not touched, and event ids never repeat. Fractions are allowed.
    pub retention_hours: f64,
    /// Seconds between retention passes.
    pub retention_check_secs: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self { retention_hours: 0.0, retention_check_secs: 60 }
    }
}

impl EventsConfig {
    /// The retention as a duration, `None` when every event is kept.
    pub fn retention(&self) -> Option<std::time::Duration> {
        (self.retention_hours > 0.0).then(|| std::time::Duration::from_secs_f64(self.retention_hours * 3600.0))
    }
}

/// `[server]`: the HTTP server appviews read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `SLUICE_SERVER`: serve at all (in `sluice run`).
    pub enabled: bool,
    /// `SLUICE_LISTEN`: the address, 127.0.0.1 by default.
    pub listen: String,
    /// The environment variable holding the admin bearer token; admin routes are off when it
    /// is unset or empty.
    pub admin_token_env: String,
    /// Events a live stream client may fall behind before it is closed (it resumes from its
    /// last id).
    pub max_lag: u64,
    /// Seconds a send to a stream client may take before it is closed.
    pub send_timeout_secs: u64,
    /// Acked streams: seconds without an ack before events are sent again from the last ack.
    pub ack_timeout_secs: u64,
    /// Event stream clients (`subscribeEvents` and `/subscribe`) connected at once, at most;
    /// 0: no cap.
    pub max_stream_clients: u64,
    /// Event stream clients from one address, at most; 0: no cap (behind a reverse proxy,
    /// where every client has the proxy's address).
    pub max_stream_clients_per_ip: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:2480".into(),
            admin_token_env: "SLUICE_ADMIN_TOKEN".into(),
            max_lag: 100_000,
            send_timeout_secs: 30,
            ack_timeout_secs: 30,
            max_stream_clients: 512,
            max_stream_clients_per_ip: 32,
        }
    }
}

/// `[firehose]`: live ingestion from `com.atproto.sync.subscribeRepos`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirehoseConfig {
    /// `SLUICE_FIREHOSE`: follow the firehose at all.
    pub enabled: bool,
    /// `SLUICE_FIREHOSE_URL`: where to subscribe (`ws://`, `wss://`, `http://` or `https://`);
    /// the relay when unset.
    pub url: Option<String>,
    /// Shards applying commits in parallel (repos are spread by DID); 0 = one per core.
    pub shards: usize,
    /// Frames queued per shard before reading the socket waits.
    pub queue: usize,
    /// Longest wait between reconnects, in seconds (it doubles from 1 s).
    pub max_reconnect_secs: u64,
    /// A websocket ping is sent after this long without a message from the server (ms).
    pub ping_interval_ms: u64,
    /// The connection is dropped when nothing (a pong or a frame) answers a ping this long (ms).
    pub pong_timeout_ms: u64,
}

impl Default for FirehoseConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            url: None,
            shards: 0,
            queue: 1024,
            max_reconnect_secs: 30,
            ping_interval_ms: 10_000,
            pong_timeout_ms: 5_000,
        }
    }
}

/// `[backfill]`: the controls older appview backfill services have, under the same
/// environment names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackfillConfig {
    /// `BACKFILL_DAYS`: 0 = no backfill (live only), -1 = whole history, N = only records from
    /// the last N days (by TID record key, else `createdAt`; records with neither are kept).
    pub days: i64,
    /// `BACKFILL_BATCH_SIZE`: record changes per committed batch of a repo walk.
    pub batch_size: usize,
    /// `BACKFILL_BATCH_DELAY_MS`: pause between committed batches.
    pub batch_delay_ms: u64,
    /// `BACKFILL_MAX_CONCURRENT`: repos in flight.
    pub max_concurrent: usize,
    /// `BACKFILL_MAX_MEMORY_MB`: above this resident memory no new repo starts (0 = no cap).
    pub max_memory_mb: u64,
    /// `BACKFILL_USE_IDLE`: backfill waits while live ingestion has a backlog.
    pub use_idle: bool,
    /// `WORKER_ID`: backfill runs only where this is unset or 0.
    pub worker_id: Option<u32>,
    /// First retry delay of a failed repo, doubled per failure up to `retry_max_ms` (±20%).
    pub retry_min_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// Failures after which a repo stays in `error` until queued again by hand.
    pub max_retries: u32,
    /// Seconds between progress lines.
    pub progress_secs: u64,
    /// Repos queued again per second after a filter edit widens what is indexed.
    pub requeue_per_sec: usize,
}

/// Record changes per committed batch of a repo walk unless configured otherwise
/// (`BACKFILL_BATCH_SIZE`).
pub const DEFAULT_BATCH_SIZE: usize = 5_000;

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            days: -1,
            batch_size: DEFAULT_BATCH_SIZE,
            batch_delay_ms: 0,
            max_concurrent: 16,
            max_memory_mb: 2048,
            use_idle: false,
            worker_id: None,
            retry_min_ms: 60_000,
            retry_max_ms: 3_600_000,
            max_retries: 5,
            progress_secs: 5,
            requeue_per_sec: 200,
        }
    }
}

impl BackfillConfig {
    /// Whether this process runs backfill at all (`BACKFILL_DAYS` not 0, `WORKER_ID` unset or 0).
    pub fn enabled(&self) -> bool {
        self.days != 0 && self.worker_id.unwrap_or(0) == 0
    }

    /// The oldest record time kept (unix µs) for `BACKFILL_DAYS` = N > 0, as of `now_us`.
    pub fn since_us(&self, now_us: u64) -> Option<u64> {
        (self.days > 0).then(|| now_us.saturating_sub(self.days as u64 * 86_400_000_000))
    }
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The fjall directory.
    pub path: PathBuf,
    /// Stored records keys read per step when an index is built in the background. A step
    /// scans them off the writer lock, then holds it while it writes their entries as tables of
    /// their own (larger steps write fewer, larger tables, faster), so commits wait that long:
    /// at 8,192 on 2 cores, 26-31 ms a step, 40-70 ms for one in ten (BENCHMARKS.md). A
    /// counted index's build ends summing its counts, as many count rows a step (~12 ms).
    pub index_build_batch: usize,
    /// fjall's block cache, in MiB: the decompressed blocks reads find in memory. Reads past it
    /// (a `getRecord` of a cold repo, an index page of records over 2 KiB) go to the disk.
    pub cache_mb: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        // fjall's own default, as `Store::open` uses.
        Self { path: "data".into(), index_build_batch: 8192, cache_mb: 32 }
    }
}

/// `[filter]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// The filter file, hot-reloaded.
    pub path: PathBuf,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self { path: "filters/everything.toml".into() }
    }
}

/// `[network]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Relay base URL (firehose, listRepos).
    pub relay: String,
    /// PLC directory base URL.
    pub plc: String,
    /// `SLUICE_HANDLE_RESOLVER`: a service whose `com.atproto.identity.resolveHandle` checks
    /// handles; unset: DNS TXT and HTTPS well-known, as the spec says.
    pub handle_resolver: Option<String>,
    /// Handle checks a second at most (each a DNS query and maybe an HTTPS request); 0 = no
    /// checks (no handle is then taken as a repo's own).
    pub handle_checks_per_sec: u32,
    /// Connect to every address the network names, private and loopback included (the
    /// address policy off). False: only public addresses, and `allowed_networks`.
    pub allow_private: bool,
    /// Networks opened although special (`["10.0.0.0/8", "fd00::/8"]`): a deployment whose
    /// PDSes sit on a private network. `sluice devnet` and `run --devnet` open 127.0.0.0/8.
    pub allowed_networks: Vec<AllowedNetwork>,
}

impl NetworkConfig {
    /// The address policy for hosts the network names (PDS endpoints, did:web and handle
    /// hosts, redirects); the relay, PLC directory and handle resolver configured here are
    /// trusted as given.
    pub fn policy(&self) -> AddressPolicy {
        AddressPolicy::new(self.allow_private, &self.allowed_networks)
    }

    /// Opens loopback (127.0.0.0/8) to the address policy: for a devnet on this machine.
    pub fn allow_loopback(&mut self) {
        let loopback: AllowedNetwork = "127.0.0.0/8".parse().expect("loopback network");
        if !self.allowed_networks.contains(&loopback) {
            self.allowed_networks.push(loopback);
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            relay: "https://bsky.network".into(),
            plc: "https://plc.directory/".into(),
            handle_resolver: None,
            handle_checks_per_sec: 50,
            allow_private: false,
            allowed_networks: Vec::new(),
        }
    }
}

/// `[limits]`: what a repo may weigh before it is refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest CAR, in MiB.
    pub max_car_mb: u64,
    /// Largest block, in KiB.
    pub max_block_kb: usize,
    /// Most blocks in one CAR.
    pub max_blocks: usize,
    /// getRepo: seconds to open a connection to a PDS.
    pub fetch_connect_timeout_secs: u64,
    /// getRepo: seconds with nothing arriving (also the wait for the answer) before the
    /// download is cut.
    pub fetch_idle_timeout_secs: u64,
    /// getRepo: seconds before the minimum rate applies.
    pub fetch_grace_secs: u64,
    /// getRepo: after the grace, the body must arrive at this many KiB/s on average (a repo
    /// of `n` KiB has `grace + n / rate` seconds); 0: no minimum. The default, 64, gives a
    /// 500 MiB repo 2¼ hours and cuts a host sending a byte every few seconds after a minute.
    pub fetch_min_rate_kib: u64,
    /// MiB all spooled downloads (those over 8 MiB, written to `<data>/spool`) may hold
    /// together: a download waits for room, and one alone over it is refused. The default,
    /// 4096, holds four exports at the 1 GiB CAR limit at once, and is a fixed size rather
    /// than a share of free disk so that what runs is what was configured.
    pub spool_max_mb: u64,
    /// Requests in flight to one PDS host at most.
    pub host_max_concurrent: usize,
    /// Transient failures in a row (no connection, a deadline, a 5xx) after which a PDS host
    /// is paused; its repos wait while the other hosts go on.
    pub host_failures_to_pause: u32,
    /// Seconds of a host's first pause; doubled after each failed probe.
    pub host_pause_secs: u64,
    /// Longest pause of a host, in seconds.
    pub host_max_pause_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = CarLimits::default();
        Self {
            max_car_mb: d.max_car_bytes >> 20,
            max_block_kb: d.max_block_bytes >> 10,
            max_blocks: d.max_blocks,
            fetch_connect_timeout_secs: 10,
            fetch_idle_timeout_secs: 30,
            fetch_grace_secs: 60,
            fetch_min_rate_kib: 64,
            spool_max_mb: 4096,
            host_max_concurrent: 4,
            host_failures_to_pause: 5,
            host_pause_secs: 30,
            host_max_pause_secs: 1800,
        }
    }
}

impl LimitsConfig {
    /// The limits as the CAR reader takes them.
    pub fn car_limits(&self) -> CarLimits {
        CarLimits {
            max_car_bytes: self.max_car_mb << 20,
            max_block_bytes: self.max_block_kb << 10,
            max_blocks: self.max_blocks,
        }
    }
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read")]
    Io { path: String, source: std::io::Error },
    /// The file is invalid.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// An environment variable does not parse.
    #[error("environment variable {name}={value:?}: {reason}")]
    Env { name: String, value: String, reason: String },
}

impl Config {
    /// Reads `path` (when it exists; otherwise defaults), then applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(p) if p.exists() => Self::from_file(p)?,
            _ => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: shown.clone(), source })?;
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            let path = match line {
                Some(l) => format!("{shown}:{l}"),
                None => shown,
            };
            ConfigError::Invalid { path, message: e.message().trim().to_string() }
        })
    }

    /// Applies environment overrides, read through `get`. A value that does not parse is
    /// refused with the variable's name.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("SLUICE_DATA") {
            self.storage.path = v.into();
        }
        if let Some(v) = get("SLUICE_FILTER") {
            self.filter.path = v.into();
        }
        parsed(&get, "RELAY_URL", &mut self.network.relay)?;
        parsed(&get, "SLUICE_FIREHOSE", &mut self.firehose.enabled)?;
        parsed(&get, "SLUICE_SERVER", &mut self.server.enabled)?;
        parsed(&get, "SLUICE_LISTEN", &mut self.server.listen)?;
        if let Some(v) = non_empty(&get, "SLUICE_FIREHOSE_URL") {
            self.firehose.url = Some(v);
        }
        parsed(&get, "SLUICE_PLC_URL", &mut self.network.plc)?;
        parsed(&get, "SLUICE_SHARD", &mut self.cluster.shard)?;
        if let Some(v) = non_empty(&get, "SLUICE_NODE") {
            self.cluster.node = Some(v);
        }
        if let Some(v) = non_empty(&get, "SLUICE_NATS_URL") {
            self.sink.nats.get_or_insert_with(NatsSinkConfig::default).url = v;
        }
        if get("SLUICE_HANDLE_RESOLVER").is_some() {
            self.network.handle_resolver = non_empty(&get, "SLUICE_HANDLE_RESOLVER");
        }
        parsed(&get, "SLUICE_EVENTS_RETENTION_HOURS", &mut self.events.retention_hours)?;
        self.backfill.apply_env(&get)?;
        self.check()
    }

    /// Refuses values that parse but make no sense.
    fn check(&self) -> Result<(), ConfigError> {
        // `key` is the setting's place in config.toml, which the message names.
        let bad = |key: &str, reason: String| Err(ConfigError::Invalid { path: key.into(), message: reason });
        if self.backfill.days < -1 {
            return bad("backfill.days", "must be -1 (all history), 0 (off) or a number of days".into());
        }
        if self.backfill.max_concurrent == 0 {
            return bad("backfill.max_concurrent", "must be at least 1".into());
        }
        if !(self.events.retention_hours >= 0.0 && self.events.retention_hours < 1e9) {
            return bad("events.retention_hours", "must be 0 (keep every event) or a number of hours".into());
        }
        if self.events.retention_hours > 0.0 && self.events.retention_check_secs == 0 {
            return bad(
                "events.retention_check_secs",
                "must be at least 1 when events are retained for a limited time".into(),
            );
        }
        if !self.network.plc.ends_with('/') {
            return bad("network.plc", format!("{} must end with /", self.network.plc));
        }
        Ok(())
    }
}

/// Sets `slot` from the variable `name` when it is set; a value that does not parse is refused
/// with the variable's name.
fn parsed<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    slot: &mut T,
) -> Result<(), ConfigError>
where
    T::Err: std::fmt::Display,
{
    if let Some(v) = get(name) {
        *slot = v.trim().parse().map_err(|e: T::Err| ConfigError::Env {
            name: name.into(),
            value: v.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// The variable `name`, trimmed, when it is set to something.
fn non_empty(get: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

impl BackfillConfig {
    /// The environment names older appview backfill services use.
    fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        parsed(get, "BACKFILL_DAYS", &mut self.days)?;
        parsed(get, "BACKFILL_BATCH_SIZE", &mut self.batch_size)?;
        parsed(get, "BACKFILL_BATCH_DELAY_MS", &mut self.batch_delay_ms)?;
        parsed(get, "BACKFILL_MAX_CONCURRENT", &mut self.max_concurrent)?;
        parsed(get, "BACKFILL_MAX_MEMORY_MB", &mut self.max_memory_mb)?;
        if let Some(v) = get("BACKFILL_USE_IDLE") {
            self.use_idle = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" | "" => false,
                _ => {
                    return Err(ConfigError::Env {
                        name: "BACKFILL_USE_IDLE".into(),
                        value: v,
                        reason: "expected true or false".into(),
                    });
                }
            };
        }
        if let Some(v) = non_empty(get, "WORKER_ID") {
            let id = v.parse().map_err(|e: std::num::ParseIntError| ConfigError::Env {
                name: "WORKER_ID".into(),
                value: v.clone(),
                reason: e.to_string(),
            })?;
            self.worker_id = Some(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_env_reads_exactly_the_listed_settings() {
        let asked = std::sync::Mutex::new(std::collections::BTreeSet::new());
        Config::default()
            .apply_env(|name| {
                asked.lock().unwrap().insert(name.to_string());
                None
            })
            .unwrap();
        let listed: std::collections::BTreeSet<String> =
            ENVIRONMENT.iter().filter(|v| v.kind == EnvKind::Setting).map(|v| v.name.to_string()).collect();
        assert_eq!(asked.into_inner().unwrap(), listed);
        let defaults = Config::default();
        let nats = NatsSinkConfig::default();
        let secrets = [
            &defaults.server.admin_token_env,
            &nats.user_env,
            &nats.password_env,
            &nats.token_env,
            &nats.creds_file_env,
        ];
        for name in secrets {
            assert!(ENVIRONMENT.iter().any(|v| v.kind == EnvKind::Secret && v.name == name), "{name} is listed");
        }
        let help = environment_help();
        assert!(ENVIRONMENT.iter().all(|v| help.contains(v.name)), "{help}");
    }

    #[test]
    fn shipped_config_parses_and_env_overrides_it() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let mut c = Config::from_file(&path).unwrap();
        c.apply_env(|k| match k {
            "SLUICE_DATA" => Some("/tmp/x".to_string()),
            "BACKFILL_BATCH_SIZE" => Some("250".to_string()),
            "BACKFILL_DAYS" => Some("7".to_string()),
            "BACKFILL_BATCH_DELAY_MS" => Some("15".to_string()),
            "BACKFILL_MAX_CONCURRENT" => Some("4".to_string()),
            "BACKFILL_MAX_MEMORY_MB" => Some("300".to_string()),
            "BACKFILL_USE_IDLE" => Some("true".to_string()),
            "RELAY_URL" => Some("http://127.0.0.1:1".to_string()),
            "WORKER_ID" => Some("2".to_string()),
            "SLUICE_EVENTS_RETENTION_HOURS" => Some("48".to_string()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.storage.path, PathBuf::from("/tmp/x"));
        let b = &c.backfill;
        assert_eq!(
            (b.batch_size, b.days, b.batch_delay_ms, b.max_concurrent, b.max_memory_mb, b.use_idle),
            (250, 7, 15, 4, 300, true)
        );
        assert_eq!((c.network.relay.as_str(), b.worker_id), ("http://127.0.0.1:1", Some(2)));
        assert!(!b.enabled(), "worker 2 does not backfill");
        assert_eq!(b.since_us(10 * 86_400_000_000), Some(3 * 86_400_000_000));
        assert_eq!(c.limits.car_limits(), CarLimits::default());
        assert_eq!(c.events.retention(), Some(std::time::Duration::from_secs(48 * 3600)));
        assert_eq!(Config::default().events.retention(), None, "every event is kept by default");
    }

    #[test]
    fn backfill_days_and_worker_id_switch_backfill() {
        let mut c = Config::default();
        assert!(c.backfill.enabled() && c.backfill.since_us(1).is_none(), "default: whole history");
        c.apply_env(|k| (k == "BACKFILL_DAYS").then(|| "0".to_string())).unwrap();
        assert!(!c.backfill.enabled(), "0 days: live only");
        c.apply_env(|k| (k == "BACKFILL_DAYS").then(|| "-1".to_string())).unwrap();
        c.apply_env(|k| (k == "WORKER_ID").then(|| "0".to_string())).unwrap();
        assert!(c.backfill.enabled());
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        for (name, value) in [
            ("BACKFILL_DAYS", "x"),
            ("BACKFILL_DAYS", "-2"),
            ("BACKFILL_USE_IDLE", "maybe"),
            ("WORKER_ID", "-1"),
            ("BACKFILL_MAX_CONCURRENT", "0"),
            ("SLUICE_EVENTS_RETENTION_HOURS", "a day"),
            ("SLUICE_EVENTS_RETENTION_HOURS", "-1"),
        ] {
            let e = Config::default().apply_env(|k| (k == name).then(|| value.to_string())).unwrap_err().to_string();
            let field = name.trim_start_matches("BACKFILL_").trim_start_matches("SLUICE_EVENTS_").to_ascii_lowercase();
            assert!(e.contains(name) || e.contains(&field), "{name}={value}: {e}");
        }
    }

    #[test]
    fn network_policy_settings_parse_and_bad_networks_name_their_line() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let default = Config::default().network.policy();
        assert!(!default.allows(ip("10.0.0.1")) && default.allows(ip("8.8.8.8")), "public only by default");
        let c: Config = toml::from_str("[network]\nallowed_networks = [\"10.20.0.0/16\", \"fd00::1\"]\n").unwrap();
        let policy = c.network.policy();
        assert!(policy.allows(ip("10.20.3.4")) && policy.allows(ip("fd00::1")));
        assert!(!policy.allows(ip("10.21.0.1")) && !policy.allows(ip("127.0.0.1")));
        let open: Config = toml::from_str("[network]\nallow_private = true\n").unwrap();
        assert!(open.network.policy().allows(ip("169.254.169.254")));
        let mut devnet = Config::default();
        devnet.network.allow_loopback();
        devnet.network.allow_loopback();
        assert_eq!(devnet.network.allowed_networks.len(), 1);
        assert!(devnet.network.policy().allows(ip("127.0.0.2")));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[network]\nrelay = \"http://x\"\nallowed_networks = [\"10.0.0.0/40\"]\n").unwrap();
        let e = Config::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("c.toml:3") && e.contains("10.0.0.0/40") && e.contains("not a network"), "{e}");
    }

    #[test]
    fn retention_takes_whole_or_fractional_hours() {
        for (text, secs) in [("retention_hours = 24", 86_400.0), ("retention_hours = 0.5", 1_800.0)] {
            let c: Config = toml::from_str(&format!("[events]\n{text}\n")).unwrap();
            assert_eq!(c.events.retention().map(|d| d.as_secs_f64()), Some(secs), "{text}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[storage]\npath = \"d\"\ncolour = 1\n").unwrap();
        let e = Config::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("c.toml:3") && e.contains("colour"), "{e}");
    }
}
