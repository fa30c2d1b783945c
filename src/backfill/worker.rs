//! One repo's backfill: resolve, fetch, verify, walk through the pipeline, and the state the
//! outcome leaves it in.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::identity::IdentityError;
use crate::pipeline::{PipelineError, RepoOutcome, WalkOptions};
use crate::repo::LoadedRepo;
use crate::store::RepoState;
use crate::store::values::now_ms;

use super::Backfill;
use super::fetch::FetchError;
use crate::store::schedule::{self, RetryPolicy};

/// How one attempt ended, other than applied.
#[derive(Debug)]
enum Failure {
    /// The network no longer serves the repo.
    Gone(String),
    /// A failed attempt: retried after the backoff.
    Retry(String),
    /// Not the repo's fault (a rate limit): queued again at this unix ms, retries not counted.
    Later(u64),
    /// The stored rev is newer than the export: already current.
    Current,
    /// Storage failed: the run stops.
    Fatal(String),
}

impl Backfill {
    /// Backfills one repo taken off the queue and records how it went. Nothing is written when
    /// it starts: the repo stays queued, as it was, until its outcome is committed (a crash
    /// meanwhile leaves it to be taken again), and `Progress::in_flight` counts it.
    pub(super) async fn backfill_repo(self: &Arc<Self>, did: &str, state: RepoState) {
        let in_flight = self.progress.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.progress.peak_in_flight.fetch_max(in_flight, Ordering::Relaxed);
        let result = self.fetch_and_apply(did).await;
        self.progress.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = now_ms();
        // Every attempt that ends the repo's turn counts as done, whatever state it leaves.
        if !matches!(result, Err(Failure::Later(_) | Failure::Fatal(_))) {
            self.progress.done.fetch_add(1, Ordering::Relaxed);
        }
        let next = match result {
            Ok(outcome) => {
                self.progress.records.fetch_add(outcome.walked, Ordering::Relaxed);
                return self.synced(did);
            }
            Err(Failure::Fatal(reason)) => return self.fail_run(reason),
            Err(Failure::Gone(reason)) => {
                tracing::debug!(did, %reason, "repo is gone");
                self.progress.gone.fetch_add(1, Ordering::Relaxed);
                schedule::gone(&state, reason, now)
            }
            Err(Failure::Retry(reason)) => {
                self.progress.failed.fetch_add(1, Ordering::Relaxed);
                let next = self.retry_policy().failed(&state, reason.clone(), now, schedule::jitter(did, now));
                match next.next_retry_ms {
                    Some(at) => {
                        tracing::warn!(
                            did,
                            %reason,
                            retry_in_ms = at - now,
                            attempt = next.retries,
                            "repo failed; will retry"
                        )
                    }
                    None => {
                        tracing::error!(
                            did,
                            %reason,
                            attempts = next.retries,
                            "repo failed; no retries left (queue it again with `sluice backfill --did`)"
                        )
                    }
                }
                next
            }
            Err(Failure::Later(at)) => schedule::requeued(&state, at, now),
            Err(Failure::Current) => schedule::current(&state, now),
        };
        let synced = next.status == crate::store::RepoStatus::Synced;
        if let Err(e) = self.store().set_states(&[(did.to_string(), next)], None) {
            return self.fail_run(format!("storage: {e}"));
        }
        if synced {
            self.synced(did);
        }
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

    /// Stops the run with `reason` (the first one wins).
    fn fail_run(&self, reason: String) {
        tracing::error!(%reason, "fatal backfill error; stopping");
        self.fatal.lock().expect("fatal").get_or_insert(reason);
    }

    /// Resolves, downloads, reads, verifies and walks one repo. The usual case (the cached key
    /// verifies the commit) takes one trip to a walk thread; a signature that fails is checked
    /// once more against a freshly resolved key before the walk.
    async fn fetch_and_apply(&self, did: &str) -> Result<RepoOutcome, Failure> {
        let identity = self.resolver.resolve(did).await.map_err(identity_failure)?;
        let spooled = match self.fetcher.download(&identity.pds, did).await {
            Ok(spooled) => spooled,
            Err(FetchError::Gone(reason)) => return Err(Failure::Gone(reason)),
            Err(FetchError::RateLimited(host)) => return Err(Failure::Retry(format!("rate limited by {host}"))),
            Err(e) => return Err(Failure::Retry(e.to_string())),
        };
        let _walking = self.walk_permits.clone().acquire_owned().await.map_err(|e| Failure::Retry(e.to_string()))?;
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
        match read
            .await
            .ok_or_else(|| Failure::Retry("the walk thread failed (a panic)".into()))?
            .map_err(|e| Failure::Retry(e.to_string()))?
        {
            Read::Walked(walked) => walk_outcome(Some(walked)),
            // The key may have rotated since it was cached: look it up again, once.
            Read::Unverified(loaded, opts) => {
                let fresh = self.resolver.refresh(did).await.map_err(identity_failure)?;
                let pipeline = self.pipeline.clone();
                let walked = self
                    .walkers
                    .run(move || loaded.verify_signature(&fresh.key).map(|()| pipeline.apply_walk(&loaded, &opts)))
                    .await;
                match walked {
                    Some(Err(e)) => Err(Failure::Retry(e.to_string())),
                    Some(Ok(walked)) => walk_outcome(Some(walked)),
                    None => walk_outcome(None),
                }
            }
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
        Some(Err(PipelineError::Repo(e))) => Err(Failure::Retry(e.to_string())),
        Some(Err(PipelineError::Store(e))) => Err(Failure::Fatal(format!("storage: {e}"))),
        None => Err(Failure::Retry("the walk thread failed (a panic in the pipeline)".into())),
    }
}

fn identity_failure(e: IdentityError) -> Failure {
    match e {
        IdentityError::NotFound(_) => Failure::Gone("DID not found".into()),
        IdentityError::RateLimited { retry_after, .. } => {
            Failure::Later(now_ms() + retry_after.unwrap_or(Duration::from_secs(60)).as_millis() as u64)
        }
        other => Failure::Retry(other.to_string()),
    }
}
