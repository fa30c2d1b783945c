//! One repo's backfill: resolve, fetch, verify, walk through the pipeline, and the state the
//! outcome leaves it in.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::chain;
use crate::identity::IdentityError;
use crate::pipeline::{PipelineError, RepoOutcome, WalkOptions};
use crate::repo::{LoadedRepo, RepoError};
use crate::store::values::now_ms;
use crate::store::{RepoState, StoreError};

use super::Backfill;
use super::fetch::FetchError;
use super::progress::FailureKind;
use crate::store::schedule::{self, RetryPolicy};

/// How one attempt ended, other than applied.
#[derive(Debug)]
enum Failure {
    /// The network no longer serves the repo: why (an account status, "DID not found"), the
    /// reason its state keeps.
    Gone(String),
    /// A failed attempt: retried after the backoff, or not until the repo changes, by its
    /// [`Attempt::kind`].
    Failed(Attempt),
    /// Not the repo's fault (a rate limit): queued again at this unix ms, retries not counted.
    Later(u64),
    /// The stored rev is newer than the export: already current.
    Current,
    /// The backfill is stopping: the attempt was abandoned before its outcome was written,
    /// so the repo stays queued as it was.
    Cancelled,
    /// Storage failed: the run stops.
    Fatal(StoreError),
}

/// Why an attempt failed. Its text, causes and all (truncated), is the reason the repo's
/// state keeps; [`Attempt::kind`] says whether it is retried.
#[derive(Debug, thiserror::Error)]
enum Attempt {
    /// The DID did not resolve (a transport failure, an unusable document).
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The download failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The export is invalid.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A walk thread panicked while reading the export.
    #[error("the walk thread failed (a panic)")]
    ReadPanicked,
    /// A walk thread panicked in the pipeline.
    #[error("the walk thread failed (a panic in the pipeline)")]
    WalkPanicked,
}

impl From<Attempt> for Failure {
    fn from(e: Attempt) -> Self {
        Failure::Failed(e)
    }
}

impl Attempt {
    /// Whether this failure is retried after the backoff (transient) or left until the repo
    /// changes (permanent). The one place failures are classified: each error type says
    /// which of its kinds are permanent (`is_permanent`), and an address the outbound policy
    /// refused is, wherever it shows in the chain. A walk thread's panic is transient.
    fn kind(&self) -> FailureKind {
        let permanent = crate::http::address_refused(self).is_some()
            || match self {
                Attempt::Identity(e) => e.is_permanent(),
                Attempt::Fetch(e) => e.is_permanent(),
                Attempt::Repo(e) => e.is_permanent(),
                Attempt::ReadPanicked | Attempt::WalkPanicked => false,
            };
        match permanent {
            true => FailureKind::Permanent,
            false => FailureKind::Transient,
        }
    }

    /// The reason without per-repo text (DIDs, URLs, CIDs), for counting repos that failed
    /// alike: the error's kind, and an HTTP status where there is one.
    fn group(&self) -> String {
        if crate::http::address_refused(self).is_some() {
            return "address refused by the outbound policy".into();
        }
        match self {
            Attempt::Identity(IdentityError::InvalidDocument { .. }) => "invalid DID document".into(),
            Attempt::Identity(IdentityError::Unsupported(_)) => "unsupported DID method".into(),
            Attempt::Identity(_) => "DID lookup failed".into(),
            Attempt::Fetch(FetchError::Repo(e)) | Attempt::Repo(e) => repo_error_group(e).into(),
            Attempt::Fetch(e) => fetch_error_group(e),
            Attempt::ReadPanicked | Attempt::WalkPanicked => "a walk thread panicked".into(),
        }
    }
}

/// [`Attempt::group`] of a download's error.
fn fetch_error_group(e: &FetchError) -> String {
    match e {
        FetchError::Status { status, .. } => format!("getRepo answered HTTP {status}"),
        FetchError::RateLimited(_) => "rate limited by the PDS".into(),
        FetchError::HostPaused(_) => "the PDS is paused after repeated failures".into(),
        FetchError::Request { .. } => "getRepo request failed".into(),
        FetchError::Deadline { deadline, .. } => format!("getRepo cut by a deadline: {}", deadline_group(deadline)),
        FetchError::Body(_) => "reading the repo failed".into(),
        FetchError::Spool(_) => "spooling the repo to disk failed".into(),
        FetchError::SpoolFull { .. } => "the spool is full".into(),
        FetchError::OverSpoolCap { .. } => "the repo is over the spool's cap".into(),
        FetchError::Repo(e) => repo_error_group(e).into(),
        FetchError::Gone(_) => "the repo is gone".into(),
        FetchError::AddressRefused(_) => "address refused by the outbound policy".into(),
    }
}

/// Which deadline, without its values.
fn deadline_group(deadline: &super::fetch::Deadline) -> &'static str {
    use super::fetch::Deadline;
    match deadline {
        Deadline::Answer(_) => "no answer in time",
        Deadline::Idle(_) => "nothing arrived for the idle timeout",
        Deadline::Rate { .. } => "slower than the minimum rate",
    }
}

/// [`Attempt::group`] of an export's error.
fn repo_error_group(e: &RepoError) -> &'static str {
    match e {
        RepoError::TooLarge(_) => "CAR over a limit",
        RepoError::Car(_) => "malformed or truncated CAR",
        RepoError::Read { .. } => "reading the spooled repo failed",
        RepoError::CidMismatch(_) | RepoError::UnsupportedHash(_) => "a block does not match its CID",
        RepoError::MissingBlock { .. } => "a block is missing",
        RepoError::NotACommit(..) | RepoError::Version(_) => "the root is not a supported commit",
        RepoError::Did { .. } => "the commit is not the DID's",
        RepoError::Signature(_) => "bad commit signature",
        RepoError::Mst { .. } => "malformed MST",
        #[allow(unreachable_patterns)]
        _ => "invalid repo export",
    }
}

/// The reason a failure is stored and logged with: its text with causes, made one safe line
/// of at most about 1 KiB (some of it comes from a hostile host).
fn reason(e: &Attempt) -> String {
    crate::http::truncate_foreign(&chain(e).to_string())
}

impl Backfill {
    /// Backfills one repo taken off the queue and records how it went. Nothing is written when
    /// it starts: the repo stays queued, as it was, until its outcome is committed (a crash
    /// or a stop meanwhile leaves it to be taken again), and `Progress::in_flight` counts it.
    pub(super) async fn backfill_repo(self: &Arc<Self>, did: &str, state: RepoState) {
        self.progress.work.touch();
        let in_flight = self.progress.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.progress.peak_in_flight.fetch_max(in_flight, Ordering::Relaxed);
        let result = self.fetch_and_apply(did).await;
        self.progress.work.touch();
        self.progress.in_flight.fetch_sub(1, Ordering::Relaxed);
        let next = match result {
            Ok(outcome) => {
                self.progress.records.fetch_add(outcome.walked, Ordering::Relaxed);
                self.turn_over(did);
                return self.synced(did);
            }
            Err(Failure::Fatal(e)) => return self.fail_run(e),
            Err(Failure::Cancelled) => return tracing::debug!(did, "backfill stopping; the repo stays queued"),
            Err(Failure::Later(at)) => schedule::requeued(&state, at, now_ms()),
            Err(Failure::Gone(reason)) => {
                tracing::debug!(did, %reason, "repo is gone");
                self.progress.gone.fetch_add(1, Ordering::Relaxed);
                self.turn_over(did);
                schedule::gone(&state, reason, now_ms())
            }
            Err(Failure::Current) => {
                self.turn_over(did);
                schedule::current(&state, now_ms())
            }
            Err(Failure::Failed(e)) => self.failed(did, &state, &e),
        };
        let synced = next.status == crate::store::RepoStatus::Synced;
        if let Err(e) = self.store().set_states(&[(did.to_string(), next)], None) {
            return self.fail_run(e);
        }
        if synced {
            self.synced(did);
        }
    }

    /// `did`'s turn ended other than by a failure: it is done, and no longer failed.
    fn turn_over(&self, did: &str) {
        self.progress.done.fetch_add(1, Ordering::Relaxed);
        self.progress.failures.clear(did);
    }

    /// The state `did` is left in after failure `e`, counted and logged once: a transient one
    /// is retried after the backoff, a permanent one (or the last retry) waits for a change.
    fn failed(&self, did: &str, state: &RepoState, e: &Attempt) -> RepoState {
        let (now, kind) = (now_ms(), e.kind());
        let reason = reason(e);
        self.progress.failed.fetch_add(1, Ordering::Relaxed);
        self.progress.failures.record(did, kind, &e.group());
        let next = match kind {
            FailureKind::Permanent => {
                self.progress.permanent.fetch_add(1, Ordering::Relaxed);
                schedule::refused(state, reason.clone(), now)
            }
            FailureKind::Transient => {
                self.retry_policy().failed(state, reason.clone(), now, schedule::jitter(did, now))
            }
        };
        match (kind, next.next_retry_ms) {
            (FailureKind::Transient, Some(at)) => tracing::warn!(
                did,
                %reason,
                retry_in_ms = at - now,
                attempt = next.retries,
                "repo failed; will retry"
            ),
            (FailureKind::Transient, None) => tracing::error!(
                did,
                %reason,
                attempts = next.retries,
                "repo failed; no retries left (retried when it changes, or with `sluice backfill --did`)"
            ),
            (FailureKind::Permanent, _) => tracing::warn!(
                did,
                %reason,
                "repo refused; not retried until it changes (a new commit, #sync or #identity, a filter \
                 edit, or `sluice backfill --did`)"
            ),
        }
        if next.next_retry_ms.is_none() {
            self.progress.done.fetch_add(1, Ordering::Relaxed);
        }
        next
    }

    /// A repo's backfill committed: live commits held meanwhile can be applied.
    fn synced(&self, did: &str) {
        if let Some(hook) = self.after_sync.get() {
            hook(did);
        }
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            min_ms: self.config.retry_min_ms,
            max_ms: self.config.retry_max_ms,
            max_retries: self.config.max_retries,
        }
    }

    /// Stops the run with storage failure `e` (the first one wins: later ones may only say
    /// that the store refuses writes since).
    fn fail_run(&self, e: StoreError) {
        tracing::error!(error = %chain(&e), "fatal backfill error; stopping");
        self.fatal.lock().expect("fatal").get_or_insert(e);
    }

    /// Resolves, downloads, reads, verifies and walks one repo. The usual case (the cached key
    /// verifies the commit) takes one trip to a walk thread; a signature that fails is checked
    /// once more against a freshly resolved key before the walk. A stop abandons the attempt
    /// ([`Failure::Cancelled`]): at once before the walk, and a walk started before its next
    /// batch (it writes the repo's state only with its last batch, so the repo stays queued).
    async fn fetch_and_apply(&self, did: &str) -> Result<RepoOutcome, Failure> {
        let identity = self.unless_stopped(self.resolver.resolve(did)).await?.map_err(identity_failure)?;
        let spooled = match self.unless_stopped(self.fetcher.download(&identity.pds, did)).await? {
            Ok(spooled) => spooled,
            Err(FetchError::Gone(reason)) => return Err(Failure::Gone(reason)),
            Err(e) => return Err(Attempt::Fetch(e).into()),
        };
        let walking = self.unless_stopped(self.walk_permits.clone().acquire_owned()).await?;
        let _walking = walking.map_err(|_| Failure::Cancelled)?;
        let (limits, owner, key) = (*self.fetcher.limits(), did.to_string(), identity.key.clone());
        let (pipeline, opts) = (self.pipeline.clone(), self.walk_options(did, identity.handle.clone()));
        let read = self.walkers.run(move || {
            let loaded = spooled.read(&limits, super::fetch::WALK_IN_MEMORY)?;
            loaded.check_commit(Some(&owner))?;
            Ok::<_, crate::repo::RepoError>(match loaded.verify_signature(&key) {
                Ok(()) => Read::Walked(pipeline.apply_walk(&loaded, &opts)),
                Err(_) => Read::Unverified(Box::new(loaded), opts),
            })
        });
        match read.await.ok_or(Attempt::ReadPanicked)?.map_err(Attempt::Repo)? {
            Read::Walked(walked) => walk_outcome(Some(walked)),
            // The key may have rotated since it was cached: look it up again, once.
            Read::Unverified(loaded, opts) => {
                let fresh = self.unless_stopped(self.resolver.refresh(did)).await?.map_err(identity_failure)?;
                let pipeline = self.pipeline.clone();
                let walked = self
                    .walkers
                    .run(move || loaded.verify_signature(&fresh.key).map(|()| pipeline.apply_walk(&loaded, &opts)))
                    .await;
                match walked {
                    Some(Err(e)) => Err(Attempt::Repo(e).into()),
                    Some(Ok(walked)) => walk_outcome(Some(walked)),
                    None => walk_outcome(None),
                }
            }
        }
    }

    /// `work`'s output, or [`Failure::Cancelled`] as soon as the backfill is stopped (`work`
    /// is dropped: a download in flight is cut and its spool file deleted).
    async fn unless_stopped<T>(&self, work: impl std::future::Future<Output = T>) -> Result<T, Failure> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(Failure::Cancelled),
            out = work => Ok(out),
        }
    }

    /// How a backfill walk of `did` commits: in batches with the configured pause, its last
    /// batch carrying the `backfill` cursor.
    fn walk_options(&self, did: &str, handle: Option<String>) -> WalkOptions {
        WalkOptions {
            cursor: Some(("backfill".to_string(), did.to_string())),
            since_us: self.config.since_us(now_ms() * 1000),
            batch_delay: Duration::from_millis(self.config.batch_delay_ms),
            handle,
            stop: Some(self.cancel.clone()),
        }
    }
}

/// What a walk thread made of a downloaded repo.
enum Read {
    /// Verified and walked through the pipeline.
    Walked(Result<RepoOutcome, PipelineError>),
    /// Read, but its signature did not verify with the cached key: not walked.
    Unverified(Box<LoadedRepo>, WalkOptions),
}

/// A walk's result as the worker sees it (`None`: the walk thread panicked).
fn walk_outcome(walked: Option<Result<RepoOutcome, PipelineError>>) -> Result<RepoOutcome, Failure> {
    match walked {
        Some(Ok(outcome)) => Ok(outcome),
        Some(Err(PipelineError::StaleRev { .. })) => Err(Failure::Current),
        Some(Err(PipelineError::Repo(e))) => Err(Attempt::Repo(e).into()),
        Some(Err(PipelineError::Store(e))) => Err(Failure::Fatal(e)),
        Some(Err(PipelineError::Stopped)) => Err(Failure::Cancelled),
        None => Err(Attempt::WalkPanicked.into()),
    }
}

fn identity_failure(e: IdentityError) -> Failure {
    match e {
        IdentityError::NotFound(_) => Failure::Gone("DID not found".into()),
        IdentityError::RateLimited { retry_after, .. } => {
            Failure::Later(now_ms() + retry_after.unwrap_or(Duration::from_secs(60)).as_millis() as u64)
        }
        other => Attempt::Identity(other).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DocumentError;
    use FailureKind::{Permanent, Transient};

    fn status(status: u16) -> Attempt {
        Attempt::Fetch(FetchError::Status { status, error: String::new(), message: String::new() })
    }

    fn repo(e: RepoError) -> Attempt {
        Attempt::Repo(e)
    }

    #[test]
    fn failures_are_classified_by_kind() {
        let io = || std::io::Error::other("disk");
        let cases: Vec<(Attempt, FailureKind, &str)> = vec![
            (status(500), Transient, "getRepo answered HTTP 500"),
            (status(503), Transient, "getRepo answered HTTP 503"),
            (status(429), Transient, "getRepo answered HTTP 429"),
            (Attempt::Fetch(FetchError::RateLimited("http://pds".into())), Transient, "rate limited by the PDS"),
            (Attempt::Fetch(FetchError::Spool(io())), Transient, "spooling the repo to disk failed"),
            (Attempt::Identity(IdentityError::Unsupported("did:key:z".into())), Permanent, "unsupported DID method"),
            (
                Attempt::Identity(IdentityError::InvalidDocument {
                    did: "did:plc:a".into(),
                    source: DocumentError::NoPds,
                }),
                Permanent,
                "invalid DID document",
            ),
            (repo(RepoError::Car("ld read too large".into())), Permanent, "malformed or truncated CAR"),
            (Attempt::Fetch(FetchError::Repo(RepoError::TooLarge("1 GiB".into()))), Permanent, "CAR over a limit"),
            (repo(RepoError::Signature("does not verify".into())), Permanent, "bad commit signature"),
            (
                repo(RepoError::Did { found: "did:plc:b".into(), problem: "not did:plc:a".into() }),
                Permanent,
                "the commit is not the DID's",
            ),
            (
                repo(RepoError::Read { what: "the spooled export", source: io().into() }),
                Transient,
                "reading the spooled repo failed",
            ),
            (Attempt::WalkPanicked, Transient, "a walk thread panicked"),
        ];
        for (attempt, kind, group) in cases {
            assert_eq!((attempt.kind(), attempt.group().as_str()), (kind, group), "{attempt:?}");
        }
    }

    #[test]
    fn a_refused_address_is_permanent_wherever_it_is_in_the_chain() {
        let refused = crate::http::AddressRefused {
            host: "metadata".into(),
            ip: "169.254.169.254".parse().unwrap(),
            range: "link-local",
        };
        let attempt = Attempt::Identity(IdentityError::InvalidDocument {
            did: "did:plc:a".into(),
            source: DocumentError::PdsRefused { endpoint: "http://169.254.169.254".into(), source: refused },
        });
        assert_eq!((attempt.kind(), attempt.group().as_str()), (Permanent, "address refused by the outbound policy"));
    }

    #[test]
    fn the_stored_reason_is_one_short_line() {
        let message = format!("{}\nforged line\n", "x".repeat(1 << 20));
        let attempt = Attempt::Fetch(FetchError::Status { status: 500, error: "Boom".into(), message });
        let reason = reason(&attempt);
        assert!(reason.len() <= 1100, "{} bytes", reason.len());
        assert!(reason.starts_with("getRepo answered HTTP 500: Boom: xxx"), "{reason}");
        assert!(!reason.contains('\n'));
        assert_eq!(attempt.group(), "getRepo answered HTTP 500", "the group has none of the host's text");
    }
}
