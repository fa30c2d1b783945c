//! Fetching a repo export with `com.atproto.sync.getRepo`, per-PDS rate limits (429 and
//! `Retry-After`), and the classification of what went wrong.
//!
//! A download is spooled: kept in memory up to [`SPOOL_IN_MEMORY`], else written to a temporary
//! file as it arrives, so the many repos waiting on the network hold almost no memory; only the
//! few being walked (one per core) hold their blocks, and only when they are up to
//! [`WALK_IN_MEMORY`]: a bigger export is walked from its file.
//!
//! Everything from the host is hostile: the answer has a deadline ([`FetchOptions`]: connect,
//! idle, and a minimum average rate after a grace period, so a large repo from a slow host
//! arrives and a trickle is cut), an error body is read to a small cap, a `Content-Length` over
//! the CAR limit is refused before the body is read, and the CAR's framing is scanned as it
//! arrives ([`CarScanner`]) so that an oversized block or too many blocks stop the download.
//! Files in the spool share a total cap ([`SpoolRoom`]). Each host has a limit on requests in
//! flight and a circuit breaker ([`super::hosts`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::hosts::{HostLimits, HostPaused, HostPolicy, Outcome};
use crate::http::{
    AddressPolicy, AddressRefused, BodyError, ERROR_BODY_CAP, is_address_refused, read_capped, retry_after,
    truncate_foreign,
};
use crate::repo::{
    CarLimits, CarScanner, LoadedRepo, RepoError, read_car_file, read_car_file_into_memory, read_car_owned,
};

/// Downloads up to this size stay in memory; bigger ones go to a file in the spool directory.
pub const SPOOL_IN_MEMORY: usize = 8 << 20;

/// A spooled export up to this size is read back into memory to be walked (a read for the
/// whole file instead of one per block); a bigger one is walked from its file, so that memory
/// stays bounded whatever the repo's size.
pub const WALK_IN_MEMORY: u64 = 32 << 20;

/// A downloaded repo export.
pub enum Spooled {
    /// Small: the bytes.
    Memory(Vec<u8>),
    /// Large: a temporary file, deleted when dropped, and its room in the spool's cap.
    File(SpoolFile),
}

/// A spooled export's file and the room it holds in the spool, freed when it is dropped, that
/// is once [`Spooled::read`] has read it. An export walked from its file keeps the (unlinked)
/// file open during its walk: up to one per walk thread holds disk beyond the cap.
pub struct SpoolFile {
    file: tempfile::NamedTempFile,
    _room: SpoolRoom,
}

impl Spooled {
    /// Reads and CID-checks the export (blocking: call it on a walk thread). A spooled file up
    /// to `walk_in_memory` bytes (normally [`WALK_IN_MEMORY`]) is read into memory; a bigger
    /// one is indexed and walked from the file.
    pub fn read(self, limits: &CarLimits, walk_in_memory: u64) -> Result<LoadedRepo, RepoError> {
        let file = match self {
            Spooled::Memory(bytes) => return read_car_owned(bytes.into(), limits),
            Spooled::File(file) => file,
        };
        // A new handle, at the start of the file (the writer's is at its end).
        let reader =
            file.file.reopen().map_err(|e| RepoError::Read { what: "the spooled export", source: e.into() })?;
        match reader.metadata().map(|m| m.len()) {
            Ok(len) if len <= walk_in_memory => read_car_file_into_memory(&reader, limits),
            _ => read_car_file(reader, limits),
        }
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Spooled::Memory(b) => b.len() as u64,
            Spooled::File(f) => f.file.as_file().metadata().map(|m| m.len()).unwrap_or(0),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a repo could not be fetched. [`FetchError::is_permanent`] says which are not worth
/// fetching again until something changes.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The PDS no longer serves it: the reason is the account status.
    #[error("repo is {0}")]
    Gone(String),
    /// The PDS kept answering 429.
    #[error("rate limited by {0}")]
    RateLimited(String),
    /// The host's circuit breaker holds it paused after repeated transient failures.
    #[error(transparent)]
    HostPaused(#[from] HostPaused),
    /// The export is invalid or over a limit (also refused while downloading).
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The PDS endpoint is an address the outbound policy refuses (checked before connecting;
    /// a name resolving to one fails in [`FetchError::Request`], the refusal in its chain).
    #[error("the PDS endpoint is refused by the outbound address policy")]
    AddressRefused(#[from] AddressRefused),
    /// The request failed (connection, TLS, a refused address).
    #[error("{pds}")]
    Request {
        /// The PDS asked.
        pds: String,
        /// What failed.
        source: reqwest::Error,
    },
    /// A deadline cut the request: which one, and how much had arrived.
    #[error("getRepo from {pds} cut after {:.1}s with {received} bytes received: {deadline}", elapsed.as_secs_f64())]
    Deadline {
        /// The PDS asked.
        pds: String,
        /// Which deadline.
        deadline: Deadline,
        /// Body bytes received.
        received: u64,
        /// Time since the request was sent.
        elapsed: Duration,
    },
    /// The PDS answered an error that does not say the repo is gone. Its texts are cut to
    /// one short line ([`truncate_foreign`]).
    #[error("getRepo answered HTTP {status}{}", xrpc_detail(error, message))]
    Status {
        /// The HTTP status.
        status: u16,
        /// The XRPC error name, when the answer had one.
        error: String,
        /// Its message.
        message: String,
    },
    /// Reading the answer's body failed.
    #[error("reading the repo")]
    Body(#[source] reqwest::Error),
    /// Writing the download to a spool file failed.
    #[error("reading the repo: spooling it to a file")]
    Spool(#[source] std::io::Error),
    /// The spool had no room for the download within the wait: others hold it.
    #[error("the spool is full ({held} of {cap} bytes held by other downloads); this one needed {needed} bytes")]
    SpoolFull {
        /// Bytes the download wanted held.
        needed: u64,
        /// Bytes held by all downloads.
        held: u64,
        /// The spool's cap.
        cap: u64,
    },
    /// The download alone is bigger than the spool's cap (`spool_max_mb`).
    #[error("the export needs more than the spool's {cap}-byte cap (spool_max_mb)")]
    OverSpoolCap {
        /// The spool's cap.
        cap: u64,
    },
}

/// Which deadline cut a request ([`FetchOptions`] has their values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Deadline {
    /// No answer (status and headers) within the idle timeout.
    #[error("no answer within {}s (idle timeout)", .0.as_secs_f64())]
    Answer(Duration),
    /// Nothing arrived for the idle timeout.
    #[error("nothing arrived for {}s (idle timeout)", .0.as_secs_f64())]
    Idle(Duration),
    /// Fewer bytes than the minimum rate asks after the grace period.
    #[error("slower than {min_bytes_per_sec} bytes/s after a {}s grace (minimum rate)", grace.as_secs_f64())]
    Rate {
        /// The grace period.
        grace: Duration,
        /// The minimum rate.
        min_bytes_per_sec: u64,
    },
}

impl FetchError {
    /// Whether fetching the repo again cannot help until something changes (a new commit, an
    /// identity change, a filter edit, a requeue by hand): the repo is gone, its export is
    /// invalid or over a limit, the address is refused by the outbound policy, or the host
    /// answered a client error (4xx other than 408 and 429). Everything else is transient:
    /// timeouts, connection errors, 5xx, 429, a paused host, the spool.
    pub fn is_permanent(&self) -> bool {
        match self {
            FetchError::Gone(_) | FetchError::OverSpoolCap { .. } | FetchError::AddressRefused(_) => true,
            FetchError::Repo(e) => e.is_permanent(),
            FetchError::Request { source, .. } => is_address_refused(source),
            FetchError::Status { status, .. } => (400..500).contains(status) && !matches!(status, 408 | 429),
            FetchError::RateLimited(_)
            | FetchError::HostPaused(_)
            | FetchError::Deadline { .. }
            | FetchError::Body(_)
            | FetchError::Spool(_)
            | FetchError::SpoolFull { .. } => false,
        }
    }

    /// What the failure says about the host, for its circuit breaker: an outage (no
    /// connection, a deadline, a 5xx, a broken body) or an answer.
    fn host_outcome(&self) -> Outcome {
        match self {
            FetchError::Request { source, .. } if !is_address_refused(source) => Outcome::Failed,
            FetchError::Deadline { .. } | FetchError::Body(_) => Outcome::Failed,
            FetchError::Status { status, .. } if *status >= 500 => Outcome::Failed,
            FetchError::RateLimited(_) | FetchError::HostPaused(_) | FetchError::Spool(_) => Outcome::Neutral,
            FetchError::SpoolFull { .. } | FetchError::OverSpoolCap { .. } => Outcome::Neutral,
            FetchError::AddressRefused(_) => Outcome::Neutral,
            _ => Outcome::Answered,
        }
    }
}

/// `: <error>: <message>` after an XRPC error status, when the answer named an error (or
/// `: <message>` when only sluice has something to say, such as a body over its cap).
fn xrpc_detail(error: &str, message: &str) -> String {
    match (error.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (true, false) => format!(": {message}"),
        (false, _) => format!(": {error}: {message}"),
    }
}

/// How downloads are held: deadlines, the spool, and the hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// To open the connection.
    pub connect_timeout: Duration,
    /// With nothing arriving (also the wait for the answer's headers).
    pub idle_timeout: Duration,
    /// Before the minimum rate applies.
    pub grace: Duration,
    /// After the grace, at least this many bytes a second must have arrived on average,
    /// counted from the end of the grace: a body of `n` bytes has `grace + n / rate` in all.
    /// 0: no minimum.
    pub min_bytes_per_sec: u64,
    /// Bytes all spool files may hold together.
    pub spool_cap_bytes: u64,
    /// Longest wait for room in the spool once a download holds some (then it fails, and
    /// frees its room, so that waiting downloads never hold each other up).
    pub spool_wait: Duration,
    /// Per-host concurrency and circuit breaker.
    pub hosts: HostPolicy,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(60),
            min_bytes_per_sec: 64 << 10,
            spool_cap_bytes: 4 << 30,
            spool_wait: Duration::from_secs(30),
            hosts: HostPolicy::default(),
        }
    }
}

impl FetchOptions {
    /// The options `[limits]` sets.
    pub fn from_config(limits: &crate::config::LimitsConfig) -> Self {
        Self {
            connect_timeout: Duration::from_secs(limits.fetch_connect_timeout_secs),
            idle_timeout: Duration::from_secs(limits.fetch_idle_timeout_secs),
            grace: Duration::from_secs(limits.fetch_grace_secs),
            min_bytes_per_sec: limits.fetch_min_rate_kib << 10,
            spool_cap_bytes: limits.spool_max_mb << 20,
            spool_wait: Duration::from_secs(limits.fetch_idle_timeout_secs),
            hosts: HostPolicy {
                max_concurrent: limits.host_max_concurrent,
                failures_to_pause: limits.host_failures_to_pause,
                first_pause: Duration::from_secs(limits.host_pause_secs),
                max_pause: Duration::from_secs(limits.host_max_pause_secs),
            },
        }
    }

    /// A client builder with the connect timeout, and the idle timeout as a backstop a second
    /// later: [`RepoFetcher`] keeps the idle timeout itself, to say which deadline cut a
    /// download.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        crate::http::client_builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.idle_timeout + Duration::from_secs(1))
    }
}

/// The spool's cap, in units of [`SPOOL_UNIT`] bytes: downloads hold room before writing.
struct SpoolBudget {
    room: Arc<Semaphore>,
    cap_units: u32,
}

/// Room in the spool is counted in units of this many bytes.
const SPOOL_UNIT: u64 = 64 << 10;

/// Room a download holds in the spool, given back when dropped.
pub struct SpoolRoom {
    room: Arc<Semaphore>,
    units: u32,
}

impl Drop for SpoolRoom {
    fn drop(&mut self) {
        self.room.add_permits(self.units as usize);
    }
}

impl SpoolBudget {
    fn new(cap_bytes: u64) -> Self {
        let cap_units = cap_bytes.div_ceil(SPOOL_UNIT).min(u32::MAX as u64 / 2) as u32;
        Self { room: Arc::new(Semaphore::new(cap_units as usize)), cap_units }
    }

    fn cap_bytes(&self) -> u64 {
        self.cap_units as u64 * SPOOL_UNIT
    }

    fn held_bytes(&self) -> u64 {
        (self.cap_units as u64 - self.room.available_permits() as u64) * SPOOL_UNIT
    }

    fn empty(&self) -> SpoolRoom {
        SpoolRoom { room: self.room.clone(), units: 0 }
    }

    /// Grows `room` to cover `bytes`, waiting at most `wait` (`None`: as long as it takes),
    /// in turn (the semaphore is fair).
    async fn grow(&self, room: &mut SpoolRoom, bytes: u64, wait: Option<Duration>) -> Result<(), FetchError> {
        let units = bytes.div_ceil(SPOOL_UNIT);
        if units > self.cap_units as u64 {
            return Err(FetchError::OverSpoolCap { cap: self.cap_bytes() });
        }
        let more = (units as u32).saturating_sub(room.units);
        if more == 0 {
            return Ok(());
        }
        let full = || FetchError::SpoolFull { needed: bytes, held: self.held_bytes(), cap: self.cap_bytes() };
        let acquire = self.room.acquire_many(more);
        let permit = match wait {
            Some(wait) => tokio::time::timeout(wait, acquire).await.map_err(|_| full())?,
            None => acquire.await,
        };
        permit.expect("the spool's semaphore is never closed").forget();
        room.units += more;
        Ok(())
    }

    /// Gives back what `room` holds beyond `bytes`.
    fn shrink(room: &mut SpoolRoom, bytes: u64) {
        let keep = bytes.div_ceil(SPOOL_UNIT).min(room.units as u64) as u32;
        room.room.add_permits((room.units - keep) as usize);
        room.units = keep;
    }
}

/// Fetches repo exports from PDS hosts.
pub struct RepoFetcher {
    http: reqwest::Client,
    limits: CarLimits,
    options: FetchOptions,
    spool_dir: PathBuf,
    spool: SpoolBudget,
    /// The outbound address policy, when the client has it installed ([`RepoFetcher::with_policy`]).
    policy: Option<AddressPolicy>,
    /// Per-host slots, breakers and 429 holds, shared by all workers.
    pub hosts: HostLimits,
    /// 429 answers in a row before a repo counts as failed.
    pub max_rate_limited: u32,
    /// Downloads up to this size stay in memory (default [`SPOOL_IN_MEMORY`]).
    pub spool_in_memory: usize,
}

/// Wait after a 429 without `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

impl RepoFetcher {
    /// A fetcher with its own HTTP client and the default [`FetchOptions`]; CARs over
    /// `limits` are refused; large downloads are spooled in `spool_dir`.
    pub fn new(limits: CarLimits, spool_dir: PathBuf) -> Self {
        Self::with_options(limits, spool_dir, FetchOptions::default())
    }

    /// A fetcher held to `options`, with its own HTTP client.
    pub fn with_options(limits: CarLimits, spool_dir: PathBuf, options: FetchOptions) -> Self {
        let http = options.client_builder().build().expect("HTTP client");
        Self::with_client(limits, spool_dir, options, http)
    }

    /// A fetcher held to `options` that connects only where `policy` allows: the PDS URL is
    /// checked before anything is sent, resolved names and redirects by the client.
    pub fn with_policy(limits: CarLimits, spool_dir: PathBuf, options: FetchOptions, policy: AddressPolicy) -> Self {
        let http = policy.guarded(options.client_builder()).build().expect("HTTP client");
        Self { policy: Some(policy), ..Self::with_client(limits, spool_dir, options, http) }
    }

    /// A fetcher using `http` (build it from [`FetchOptions::client_builder`]).
    pub fn with_client(limits: CarLimits, spool_dir: PathBuf, options: FetchOptions, http: reqwest::Client) -> Self {
        Self {
            http,
            limits,
            options,
            policy: None,
            spool_dir,
            spool: SpoolBudget::new(options.spool_cap_bytes),
            hosts: HostLimits::new(options.hosts),
            max_rate_limited: 20,
            spool_in_memory: SPOOL_IN_MEMORY,
        }
    }

    /// Where large downloads are spooled.
    pub fn spool_dir(&self) -> &Path {
        &self.spool_dir
    }

    /// The CAR limits downloads are held to.
    pub fn limits(&self) -> &CarLimits {
        &self.limits
    }

    /// The deadlines, spool cap and host policy in force.
    pub fn options(&self) -> &FetchOptions {
        &self.options
    }

    /// Bytes the spool files of downloads hold now (room taken, in [`SPOOL_UNIT`]s).
    pub fn spool_held_bytes(&self) -> u64 {
        self.spool.held_bytes()
    }

    /// Removes spool files a killed process left behind (call before the first download).
    pub fn clear_spool(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.spool_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::create_dir_all(&self.spool_dir),
        }
    }

    /// Downloads the repo export of `did` from the PDS at `pds`, waiting out its rate limits
    /// and its slots; refused at once while its breaker holds it paused.
    pub async fn download(&self, pds: &str, did: &str) -> Result<Spooled, FetchError> {
        if let Some(policy) = &self.policy {
            policy.check_url_str(pds)?;
        }
        let mut limited = 0;
        loop {
            let permit = self.hosts.admit(pds).await?;
            let result = self.request(pds, did).await;
            let outcome = match &result {
                Ok(Answer::RateLimited(_)) => Outcome::Neutral,
                Ok(Answer::Body(..)) => Outcome::Answered,
                Err(e) => e.host_outcome(),
            };
            let (resp, sent) = match result {
                Ok(Answer::Body(resp, sent)) => (resp, sent),
                Ok(Answer::RateLimited(pause)) => {
                    permit.finish(outcome);
                    tracing::debug!(pds, pause_ms = pause.as_millis() as u64, "PDS rate limit; holding its requests");
                    self.hosts.block(pds, pause);
                    limited += 1;
                    match limited >= self.max_rate_limited {
                        true => return Err(FetchError::RateLimited(truncate_foreign(pds))),
                        false => continue,
                    }
                }
                Err(e) => {
                    permit.finish_because(outcome, Some(e.to_string()));
                    return Err(e);
                }
            };
            let spooled = self.answer(pds, resp, sent).await;
            match &spooled {
                Ok(_) => permit.finish(Outcome::Answered),
                Err(e) => permit.finish_because(e.host_outcome(), Some(e.to_string())),
            }
            return spooled;
        }
    }

    /// Sends the request and waits for the answer's head (within the idle timeout).
    async fn request(&self, pds: &str, did: &str) -> Result<Answer, FetchError> {
        let url = format!("{pds}/xrpc/com.atproto.sync.getRepo");
        let sent = Instant::now();
        let send = self.http.get(&url).query(&[("did", did)]).send();
        let idle = self.options.idle_timeout;
        let resp = tokio::time::timeout(idle, send)
            .await
            .map_err(|_| FetchError::Deadline {
                pds: truncate_foreign(pds),
                deadline: Deadline::Answer(idle),
                received: 0,
                elapsed: sent.elapsed(),
            })?
            .map_err(|source| FetchError::Request { pds: truncate_foreign(pds), source })?;
        match resp.status() {
            reqwest::StatusCode::TOO_MANY_REQUESTS => {
                Ok(Answer::RateLimited(retry_after(resp.headers()).unwrap_or(DEFAULT_RETRY_AFTER)))
            }
            _ => Ok(Answer::Body(resp, sent)),
        }
    }

    /// Reads an answer other than a 429: an error (its body capped) or the export.
    async fn answer(&self, pds: &str, resp: reqwest::Response, sent: Instant) -> Result<Spooled, FetchError> {
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let read =
                tokio::time::timeout(self.options.idle_timeout, read_capped(resp, ERROR_BODY_CAP, "error answer"));
            return Err(match read.await {
                Ok(Ok(body)) => classify_error(status, &body),
                Ok(Err(e @ BodyError::TooLarge { .. })) => status_error(status, "", &e.to_string()),
                Ok(Err(BodyError::Read(_))) | Err(_) => status_error(status, "", "(its body did not arrive)"),
            });
        }
        if let Some(len) = resp.content_length().filter(|len| *len > self.limits.max_car_bytes) {
            return Err(RepoError::TooLarge(format!(
                "Content-Length {len} is over the {}-byte limit (max_car_mb); not read",
                self.limits.max_car_bytes
            ))
            .into());
        }
        self.spool(pds, resp, sent).await
    }

    /// Takes a body into memory, or into a spool file once it passes `spool_in_memory`, under
    /// the deadlines, the CAR limits (scanned as it arrives) and the spool's cap.
    async fn spool(&self, pds: &str, resp: reqwest::Response, sent: Instant) -> Result<Spooled, FetchError> {
        let declared = resp.content_length();
        let mut sink = Sink { memory: Vec::new(), file: None, file_len: 0, room: self.spool.empty() };
        let mut clock = Clock::new(sent, &self.options);
        if let Some(len) = declared.filter(|len| *len > self.spool_in_memory as u64) {
            // Known to go to disk: wait for its room before reading (holding none meanwhile).
            let waited = Instant::now();
            self.spool.grow(&mut sink.room, len, None).await?;
            clock.pause(waited.elapsed());
        }
        let mut scanner = CarScanner::new(self.limits);
        let mut body = resp.bytes_stream();
        loop {
            let chunk = match tokio::time::timeout_at(clock.next_deadline().into(), body.next()).await {
                Ok(Some(chunk)) => chunk.map_err(FetchError::Body)?,
                Ok(None) => break,
                Err(_) => return Err(clock.cut(pds)),
            };
            clock.arrived(chunk.len() as u64);
            if clock.received > self.limits.max_car_bytes {
                return Err(RepoError::TooLarge(format!(
                    "more than the {}-byte limit (max_car_mb)",
                    self.limits.max_car_bytes
                ))
                .into());
            }
            scanner.feed(&chunk)?;
            self.keep(&mut sink, &chunk, &mut clock).await?;
        }
        Ok(sink.finish())
    }

    /// Keeps a chunk in memory or the spool file, moving to the file past `spool_in_memory`
    /// and taking room in the spool as the file grows.
    async fn keep(&self, sink: &mut Sink, chunk: &[u8], clock: &mut Clock) -> Result<(), FetchError> {
        if sink.file.is_none() && sink.memory.len() + chunk.len() <= self.spool_in_memory {
            sink.memory.extend_from_slice(chunk);
            return Ok(());
        }
        let size = sink.memory.len() as u64 + sink.file_len + chunk.len() as u64;
        if size > sink.room.units as u64 * SPOOL_UNIT {
            // Room in steps that double, so that a large export asks a few times, not per chunk.
            // Past the cap only when this export alone is (then refused by name).
            let cap = self.limits.max_car_bytes.min(self.spool.cap_bytes());
            let want = (size * 2).max(SPOOL_IN_MEMORY as u64 * 2).min(cap).max(size);
            // Holding no room yet, it waits its turn; holding some, it waits a while, then
            // gives its room back, so that two downloads never wait on each other.
            let wait = (sink.room.units > 0).then_some(self.options.spool_wait);
            let waited = Instant::now();
            self.spool.grow(&mut sink.room, want, wait).await?;
            clock.pause(waited.elapsed());
        }
        let file = match &mut sink.file {
            Some(f) => f,
            None => sink.file.insert(spool_file(&self.spool_dir).map_err(FetchError::Spool)?),
        };
        // Blocking writes of one chunk into the page cache: short, and cheaper than a thread
        // hop per chunk.
        if !sink.memory.is_empty() {
            file.write_all(&sink.memory).map_err(FetchError::Spool)?;
            sink.file_len += std::mem::take(&mut sink.memory).len() as u64;
        }
        file.write_all(chunk).map_err(FetchError::Spool)?;
        sink.file_len += chunk.len() as u64;
        Ok(())
    }
}

/// What a request's head said.
enum Answer {
    /// 429: hold the host this long.
    RateLimited(Duration),
    /// Anything else, with when it was sent.
    Body(reqwest::Response, Instant),
}

/// Where a download's bytes go: memory, then a spool file and its room.
struct Sink {
    memory: Vec<u8>,
    file: Option<tempfile::NamedTempFile>,
    file_len: u64,
    room: SpoolRoom,
}

impl Sink {
    fn finish(mut self) -> Spooled {
        match self.file {
            Some(file) => {
                SpoolBudget::shrink(&mut self.room, self.file_len);
                Spooled::File(SpoolFile { file, _room: self.room })
            }
            None => Spooled::Memory(self.memory),
        }
    }
}

/// A download's deadlines: the idle timeout since the last bytes, and the minimum rate after
/// the grace, counted from when the request was sent (less time spent waiting for the spool).
struct Clock {
    sent: Instant,
    last: Instant,
    received: u64,
    idle: Duration,
    grace: Duration,
    min_bytes_per_sec: u64,
}

impl Clock {
    fn new(sent: Instant, options: &FetchOptions) -> Self {
        Self {
            sent,
            last: Instant::now(),
            received: 0,
            idle: options.idle_timeout,
            grace: options.grace,
            min_bytes_per_sec: options.min_bytes_per_sec,
        }
    }

    fn arrived(&mut self, n: u64) {
        self.received += n;
        self.last = Instant::now();
    }

    /// Time spent waiting on sluice itself does not count against the host.
    fn pause(&mut self, waited: Duration) {
        self.sent += waited;
        self.last += waited;
    }

    /// When the rate deadline passes with what has arrived: `grace + received / rate`.
    fn rate_deadline(&self) -> Option<Instant> {
        let rate = self.min_bytes_per_sec;
        (rate > 0).then(|| self.sent + self.grace + Duration::from_secs_f64(self.received as f64 / rate as f64))
    }

    fn next_deadline(&self) -> Instant {
        let idle = self.last + self.idle;
        self.rate_deadline().map_or(idle, |rate| rate.min(idle))
    }

    /// The error once [`Clock::next_deadline`] passed.
    fn cut(&self, pds: &str) -> FetchError {
        let deadline = match self.rate_deadline().is_some_and(|rate| rate < self.last + self.idle) {
            true => Deadline::Rate { grace: self.grace, min_bytes_per_sec: self.min_bytes_per_sec },
            false => Deadline::Idle(self.idle),
        };
        FetchError::Deadline {
            pds: truncate_foreign(pds),
            deadline,
            received: self.received,
            elapsed: self.sent.elapsed(),
        }
    }
}

fn spool_file(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    std::fs::create_dir_all(dir)?;
    tempfile::Builder::new().prefix("repo-").suffix(".car").tempfile_in(dir)
}

/// What an XRPC error answer of getRepo means for the repo.
pub fn classify_error(status: u16, body: &[u8]) -> FetchError {
    #[derive(serde::Deserialize)]
    struct XrpcError {
        error: Option<String>,
        message: Option<String>,
    }
    let parsed: Option<XrpcError> = serde_json::from_slice(body).ok();
    let (error, message) =
        parsed.map(|e| (e.error.unwrap_or_default(), e.message.unwrap_or_default())).unwrap_or_default();
    let gone = match error.as_str() {
        "RepoNotFound" => Some("deleted (RepoNotFound)"),
        "RepoDeactivated" => Some("deactivated"),
        "RepoTakendown" => Some("takendown"),
        "RepoSuspended" => Some("suspended"),
        _ => None,
    };
    match gone {
        Some(reason) => FetchError::Gone(reason.to_string()),
        None => status_error(status, &error, &message),
    }
}

/// A [`FetchError::Status`], its foreign texts cut to a short line each.
fn status_error(status: u16, error: &str, message: &str) -> FetchError {
    FetchError::Status { status, error: truncate_foreign(error), message: truncate_foreign(message) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xrpc_errors_are_classified() {
        let gone = |e: &str| match classify_error(400, format!(r#"{{"error":"{e}","message":"m"}}"#).as_bytes()) {
            FetchError::Gone(reason) => reason,
            other => panic!("{e}: {other:?}"),
        };
        assert_eq!(gone("RepoTakendown"), "takendown");
        assert_eq!(gone("RepoDeactivated"), "deactivated");
        assert_eq!(gone("RepoSuspended"), "suspended");
        assert!(gone("RepoNotFound").starts_with("deleted"));
        let failed = classify_error(500, b"<html>oops</html>").to_string();
        assert_eq!(failed, "getRepo answered HTTP 500");
        let failed = classify_error(400, br#"{"error":"InvalidRequest","message":"bad did"}"#).to_string();
        assert!(failed.contains("InvalidRequest: bad did"), "{failed}");
    }

    #[tokio::test]
    async fn downloads_growing_at_once_do_not_wait_on_each_other_for_good() {
        let budget = SpoolBudget::new(10 * SPOOL_UNIT);
        let (mut a, mut b) = (budget.empty(), budget.empty());
        budget.grow(&mut a, 5 * SPOOL_UNIT, None).await.unwrap();
        budget.grow(&mut b, 5 * SPOOL_UNIT, None).await.unwrap();
        assert_eq!(budget.held_bytes(), 10 * SPOOL_UNIT);
        let budget = &budget;
        // Both want more than is left: the first to give up frees its room, and the other goes on.
        let first = async move {
            let grown = budget.grow(&mut a, 8 * SPOOL_UNIT, Some(Duration::from_millis(50))).await;
            drop(a);
            grown
        };
        let second = async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            budget.grow(&mut b, 8 * SPOOL_UNIT, Some(Duration::from_secs(5))).await.map(|()| b)
        };
        let (first, second) = tokio::join!(first, second);
        assert!(matches!(first, Err(FetchError::SpoolFull { .. })), "{first:?}");
        let mut b = second.expect("the other download got the room");
        assert_eq!((b.units, budget.held_bytes()), (8, 8 * SPOOL_UNIT));
        SpoolBudget::shrink(&mut b, 3 * SPOOL_UNIT - 1);
        assert_eq!(budget.held_bytes(), 3 * SPOOL_UNIT);
        drop(b);
        assert_eq!(budget.held_bytes(), 0);
        let mut alone = budget.empty();
        let over = budget.grow(&mut alone, 11 * SPOOL_UNIT, None).await;
        assert!(matches!(over, Err(FetchError::OverSpoolCap { .. })), "one alone over the cap is refused, not held");
    }

    #[test]
    fn permanence_follows_the_kind_of_failure() {
        let status = |status: u16| FetchError::Status { status, error: String::new(), message: String::new() };
        assert!(status(400).is_permanent() && status(404).is_permanent());
        assert!(!status(500).is_permanent() && !status(503).is_permanent() && !status(429).is_permanent());
        assert!(!status(408).is_permanent());
        assert!(FetchError::Repo(RepoError::TooLarge("x".into())).is_permanent());
        assert!(FetchError::Repo(RepoError::Signature("x".into())).is_permanent());
        assert!(!FetchError::RateLimited("h".into()).is_permanent());
        assert!(!FetchError::SpoolFull { needed: 1, held: 1, cap: 1 }.is_permanent());
        assert!(FetchError::OverSpoolCap { cap: 1 }.is_permanent());
        let deadline = FetchError::Deadline {
            pds: "h".into(),
            deadline: Deadline::Idle(Duration::from_secs(1)),
            received: 0,
            elapsed: Duration::ZERO,
        };
        assert!(!deadline.is_permanent() && deadline.host_outcome() == Outcome::Failed);
        assert_eq!(status(503).host_outcome(), Outcome::Failed);
        assert_eq!(status(404).host_outcome(), Outcome::Answered);
    }

    #[tokio::test]
    async fn a_refused_address_is_refused_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let fetcher = RepoFetcher::with_policy(
            CarLimits::default(),
            dir.path().join("spool"),
            FetchOptions::default(),
            AddressPolicy::public_only(),
        );
        let e = fetcher.download("http://127.0.0.1:9", "did:plc:x").await.err().unwrap();
        assert!(matches!(e, FetchError::AddressRefused(_)) && e.is_permanent(), "{e}");
        assert!(crate::error::chain(&e).to_string().contains("loopback"), "{e}");
    }
}
