//! Fetching a repo export with `com.atproto.sync.getRepo`, per-PDS rate limits (429 and
//! `Retry-After`), and the classification of what went wrong.
//!
//! A download is spooled: kept in memory up to [`SPOOL_IN_MEMORY`], else written to a temporary
//! file as it arrives, so the many repos waiting on the network hold almost no memory; only the
//! few being walked (one per core) hold their blocks, and only when they are up to
//! [`WALK_IN_MEMORY`]: a bigger export is walked from its file. The CAR limits apply while
//! downloading.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::http::retry_after;
use crate::repo::{CarLimits, LoadedRepo, RepoError, read_car_file, read_car_file_into_memory, read_car_owned};

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
    /// Large: a temporary file, deleted when dropped.
    File(tempfile::NamedTempFile),
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
        let reader = file.reopen().map_err(|e| RepoError::Read { what: "the spooled export", source: e.into() })?;
        match reader.metadata().map(|m| m.len()) {
            Ok(len) if len <= walk_in_memory => read_car_file_into_memory(&reader, limits),
            _ => read_car_file(reader, limits),
        }
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Spooled::Memory(b) => b.len() as u64,
            Spooled::File(f) => f.as_file().metadata().map(|m| m.len()).unwrap_or(0),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a repo could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The PDS no longer serves it: the reason is the account status.
    #[error("repo is {0}")]
    Gone(String),
    /// The PDS kept answering 429.
    #[error("rate limited by {0}")]
    RateLimited(String),
    /// The export is invalid.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The request failed (connection, TLS, timeout): worth retrying.
    #[error("{pds}")]
    Request {
        /// The PDS asked.
        pds: String,
        /// What failed.
        source: reqwest::Error,
    },
    /// The PDS answered an error that does not say the repo is gone: worth retrying.
    #[error("getRepo answered HTTP {status}{}", xrpc_detail(error, message))]
    Status {
        /// The HTTP status.
        status: u16,
        /// The XRPC error name, when the answer had one.
        error: String,
        /// Its message.
        message: String,
    },
    /// Reading the answer's body failed: worth retrying.
    #[error("reading the repo")]
    Body(#[source] reqwest::Error),
    /// Writing the download to a spool file failed: worth retrying.
    #[error("reading the repo: spooling it to a file")]
    Spool(#[source] std::io::Error),
}

/// `: <error>: <message>` after an XRPC error status, when the answer named an error.
fn xrpc_detail(error: &str, message: &str) -> String {
    match error.is_empty() {
        true => String::new(),
        false => format!(": {error}: {message}"),
    }
}

/// When each PDS host may be asked again after a 429.
#[derive(Default)]
pub struct HostLimits {
    blocked_until: Mutex<HashMap<String, Instant>>,
}

impl HostLimits {
    /// Waits until `host` may be asked.
    pub async fn wait(&self, host: &str) {
        loop {
            let until = self.blocked_until.lock().expect("host limits").get(host).copied();
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => return,
            }
        }
    }

    /// Holds every request to `host` for `pause`.
    pub fn block(&self, host: &str, pause: Duration) {
        let until = Instant::now() + pause;
        let mut map = self.blocked_until.lock().expect("host limits");
        let slot = map.entry(host.to_string()).or_insert(until);
        *slot = (*slot).max(until);
    }

    /// Hosts held now.
    pub fn blocked_hosts(&self) -> usize {
        let now = Instant::now();
        self.blocked_until.lock().expect("host limits").values().filter(|t| **t > now).count()
    }
}

/// Fetches repo exports from PDS hosts.
pub struct RepoFetcher {
    http: reqwest::Client,
    limits: CarLimits,
    spool_dir: PathBuf,
    /// Per-host 429 state, shared by all workers.
    pub hosts: HostLimits,
    /// 429 answers in a row before a repo counts as failed.
    pub max_rate_limited: u32,
    /// Downloads up to this size stay in memory (default [`SPOOL_IN_MEMORY`]).
    pub spool_in_memory: usize,
}

/// Wait after a 429 without `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

impl RepoFetcher {
    /// A fetcher with its own HTTP client; CARs over `limits` are refused; large downloads are
    /// spooled in `spool_dir`.
    pub fn new(limits: CarLimits, spool_dir: PathBuf) -> Self {
        let http = crate::http::client_builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        Self {
            http,
            limits,
            spool_dir,
            hosts: HostLimits::default(),
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

    /// Removes spool files a killed process left behind (call before the first download).
    pub fn clear_spool(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.spool_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::create_dir_all(&self.spool_dir),
        }
    }

    /// Downloads the repo export of `did` from the PDS at `pds`, waiting out its rate limits.
    pub async fn download(&self, pds: &str, did: &str) -> Result<Spooled, FetchError> {
        let url = format!("{pds}/xrpc/com.atproto.sync.getRepo");
        let mut limited = 0;
        let resp = loop {
            self.hosts.wait(pds).await;
            let resp = self
                .http
                .get(&url)
                .query(&[("did", did)])
                .send()
                .await
                .map_err(|source| FetchError::Request { pds: pds.to_string(), source })?;
            if resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
                break resp;
            }
            limited += 1;
            let pause = retry_after(resp.headers()).unwrap_or(DEFAULT_RETRY_AFTER);
            tracing::debug!(pds, pause_ms = pause.as_millis() as u64, "PDS rate limit; holding its requests");
            self.hosts.block(pds, pause);
            if limited >= self.max_rate_limited {
                return Err(FetchError::RateLimited(pds.to_string()));
            }
        };
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.bytes().await.unwrap_or_default();
            return Err(classify_error(status.as_u16(), &body));
        }
        self.spool(resp).await
    }

    /// Takes a body into memory, or into a spool file once it passes [`SPOOL_IN_MEMORY`].
    async fn spool(&self, resp: reqwest::Response) -> Result<Spooled, FetchError> {
        let (mut memory, mut file) = (Vec::new(), None::<tempfile::NamedTempFile>);
        let mut total = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(FetchError::Body)?;
            total += chunk.len() as u64;
            if total > self.limits.max_car_bytes {
                return Err(FetchError::Repo(RepoError::TooLarge(format!(
                    "more than the {}-byte limit",
                    self.limits.max_car_bytes
                ))));
            }
            match file.as_mut() {
                // Blocking writes of one chunk into the page cache: short, and cheaper than a
                // thread hop per chunk.
                Some(f) => f.write_all(&chunk).map_err(FetchError::Spool)?,
                None => memory.extend_from_slice(&chunk),
            }
            if file.is_none() && memory.len() > self.spool_in_memory {
                let mut f = spool_file(&self.spool_dir).map_err(FetchError::Spool)?;
                f.write_all(&memory).map_err(FetchError::Spool)?;
                memory = Vec::new();
                file = Some(f);
            }
        }
        Ok(match file {
            Some(f) => Spooled::File(f),
            None => Spooled::Memory(memory),
        })
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
        None => FetchError::Status { status, error, message },
    }
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
    async fn a_blocked_host_waits_and_others_do_not() {
        let limits = HostLimits::default();
        limits.block("a", Duration::from_millis(80));
        assert_eq!(limits.blocked_hosts(), 1);
        let start = Instant::now();
        limits.wait("b").await;
        assert!(start.elapsed() < Duration::from_millis(50));
        limits.wait("a").await;
        assert!(start.elapsed() >= Duration::from_millis(80));
        assert_eq!(limits.blocked_hosts(), 0);
    }
}
