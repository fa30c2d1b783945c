//! Fetching a repo export with `com.atproto.sync.getRepo`, per-PDS rate limits (429 and
//! `Retry-After`), and the classification of what went wrong.
//!
//! The CAR is read as it arrives, on the blocking pool: the body is never held whole, only its
//! verified blocks (bounded by the CAR limits).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use tokio_util::io::StreamReader;

use crate::identity::{error_chain, retry_after};
use crate::repo::{CarLimits, LoadedRepo, RepoError, read_car_from};

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
    /// Network or server failure: worth retrying.
    #[error("{0}")]
    Failed(String),
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
    /// Per-host 429 state, shared by all workers.
    pub hosts: HostLimits,
    /// 429 answers in a row before a repo counts as failed.
    pub max_rate_limited: u32,
}

/// Wait after a 429 without `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

impl RepoFetcher {
    /// A fetcher with its own HTTP client; CARs over `limits` are refused.
    pub fn new(limits: CarLimits) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("HTTP client");
        Self { http, limits, hosts: HostLimits::default(), max_rate_limited: 20 }
    }

    /// The repo of `did` from the PDS at `pds`, read and CID-checked (the commit is not yet
    /// checked against the DID or key).
    pub async fn get_repo(&self, pds: &str, did: &str) -> Result<LoadedRepo, FetchError> {
        let url = format!("{pds}/xrpc/com.atproto.sync.getRepo");
        let mut limited = 0;
        let resp = loop {
            self.hosts.wait(pds).await;
            let resp = self.http.get(&url).query(&[("did", did)]).send().await.map_err(|e| FetchError::Failed(format!("{pds}: {}", error_chain(&e))))?;
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
        let handle = tokio::runtime::Handle::current();
        let limits = self.limits;
        let body = StreamReader::new(resp.bytes_stream().map_err(std::io::Error::other));
        let read = tokio::task::spawn_blocking(move || handle.block_on(read_car_from(body, &limits)));
        Ok(read.await.map_err(|e| FetchError::Failed(format!("reader task: {e}")))??)
    }
}

/// What an XRPC error answer of getRepo means for the repo.
pub fn classify_error(status: u16, body: &[u8]) -> FetchError {
    #[derive(serde::Deserialize)]
    struct XrpcError {
        error: Option<String>,
        message: Option<String>,
    }
    let parsed: Option<XrpcError> = serde_json::from_slice(body).ok();
    let (error, message) = parsed.map(|e| (e.error.unwrap_or_default(), e.message.unwrap_or_default())).unwrap_or_default();
    let gone = match error.as_str() {
        "RepoNotFound" => Some("deleted (RepoNotFound)"),
        "RepoDeactivated" => Some("deactivated"),
        "RepoTakendown" => Some("takendown"),
        "RepoSuspended" => Some("suspended"),
        _ => None,
    };
    match gone {
        Some(reason) => FetchError::Gone(reason.to_string()),
        None if error.is_empty() => FetchError::Failed(format!("getRepo answered HTTP {status}")),
        None => FetchError::Failed(format!("getRepo answered HTTP {status}: {error}: {message}")),
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
