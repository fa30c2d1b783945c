//! Applying decoded frames: the synchronous core of live ingestion. One [`Live`] serves every
//! shard; a shard calls it for the frames of its DIDs, one at a time and in order.
//!
//! What a `#commit` leads to, by the stored state of its repo:
//! - synced, and it continues the chain: signature checked, ops applied (one batch);
//! - synced, rev at or below the stored rev: skipped;
//! - synced, chain broken (prevData differs): the repo is marked desynchronized and queued for
//!   backfill, and the commit is held;
//! - queued or being backfilled (pending, backfilling, error, desynchronized): held in fjall
//!   until the backfill commits, then applied in rev order ([`Live::drain`]);
//! - failed for good (error with no retry: refused, or out of retries): the repo changed, so
//!   it is queued for a backfill again, and the commit held (it cannot be applied on top of
//!   nothing). A `#sync` or `#identity` of such a repo queues it too;
//! - unknown (or discarded): discovery. Signal mode queues the repo only when an op path is in
//!   a signal collection, judged without reading the blocks; full mode and the filter's `dids`
//!   queue it always. With backfill off (`BACKFILL_DAYS=0`) the repo is tracked from this
//!   commit on instead;
//! - gone: dropped (a reactivation queues a backfill).
//!
//! Architecture invariant: no network I/O here except identity lookups, which go through the
//! shared resolver's cache; frames are CPU work on the caller's (blocking) thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jacquard_api::com_atproto::sync::subscribe_repos::Commit;

use super::chain::{self, Verdict};
use super::frame::{Frame, decode_frame};
use super::ops;
use crate::error::chain;
use crate::filter::RepoRule;
use crate::identity::{Identity, IdentityError, Resolver};
use crate::pipeline::{Pipeline, PipelineError};
use crate::repo::{CarLimits, LoadedRepo, RepoError};
use crate::store::schedule;
use crate::store::values::now_ms;
use crate::store::{RepoState, RepoStatus, Store, StoreError};

/// What became of a frame. A refusal's or a desync's reason is text (the error with its causes):
/// what the warning and the repo's state say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Its changes were committed.
    Applied,
    /// Held until its repo's backfill commits.
    Held,
    /// Its repo was queued for backfill (discovery), and the commit held.
    Discovered,
    /// Its repo's chain is broken: queued for backfill, the commit held.
    Desynchronized(String),
    /// Already applied, or older than what is stored.
    Stale,
    /// Not wanted (unknown repo outside the filter, gone account): nothing read or written.
    Dropped,
    /// Refused as invalid; nothing written.
    Refused(String),
}

impl Handled {
    /// A refusal for `why` (a cold path: one allocation for the text).
    pub(super) fn refused(why: &(dyn std::error::Error + 'static)) -> Self {
        Handled::Refused(chain(why).to_string())
    }

    /// Whether the repo now has a held commit.
    pub fn holds(&self) -> bool {
        matches!(self, Handled::Held | Handled::Discovered | Handled::Desynchronized(_))
    }
}

/// Why live ingestion must stop: storage failed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct LiveError(#[from] pub StoreError);

/// Why a commit's (or a `#sync`'s) blocks were refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// The CAR slice does not read.
    #[error("blocks")]
    Blocks(#[source] RepoError),
    /// The frame's `commit` is not a CID.
    #[error("commit CID")]
    CommitCid(#[source] cid::Error),
    /// The slice's root is not the frame's commit.
    #[error("the blocks' root {root} is not the commit {commit}")]
    Root { root: cid::Cid, commit: cid::Cid },
    /// The commit block is not the repo's (DID, version).
    #[error(transparent)]
    Commit(RepoError),
    /// The commit block's rev is not the frame's.
    #[error("the commit block's rev {found} is not the frame's {frame}")]
    Rev { found: String, frame: String },
    /// The signing key could not be had.
    #[error("signing key")]
    Signer(#[source] IdentityError),
    /// The signature does not verify.
    #[error(transparent)]
    Signature(RepoError),
}

/// Running totals of live ingestion.
#[derive(Debug, Default)]
pub struct LiveMetrics {
    /// Frames by what became of them (commits, syncs, identity and account frames).
    pub applied: AtomicU64,
    /// See `applied`.
    pub held: AtomicU64,
    /// See `applied`.
    pub discovered: AtomicU64,
    /// See `applied`.
    pub desynchronized: AtomicU64,
    /// See `applied`.
    pub stale: AtomicU64,
    /// See `applied`.
    pub dropped: AtomicU64,
    /// See `applied`.
    pub refused: AtomicU64,
    /// The `time` of the latest frame handled (unix µs).
    pub last_frame_time_us: AtomicU64,
    /// How long after its `time` the latest frame was handled (µs): how far behind the
    /// network live ingestion is (it stays put while no frame comes).
    pub lag_us: AtomicU64,
}

impl LiveMetrics {
    fn count(&self, handled: &Handled) {
        let counter = match handled {
            Handled::Applied => &self.applied,
            Handled::Held => &self.held,
            Handled::Discovered => &self.discovered,
            Handled::Desynchronized(_) => &self.desynchronized,
            Handled::Stale => &self.stale,
            Handled::Dropped => &self.dropped,
            Handled::Refused(_) => &self.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How live ingestion treats repos it does not have.
#[derive(Debug, Clone, Default)]
pub struct LiveOptions {
    /// Whether a backfill takes discovered and desynchronized repos (else new repos are
    /// tracked from their first commit).
    pub backfill: bool,
    /// Limits for commit block slices.
    pub limits: CarLimits,
}

/// The live applier.
pub struct Live {
    pub(super) pipeline: Pipeline,
    pub(super) resolver: Arc<Resolver>,
    runtime: tokio::runtime::Handle,
    pub(super) opts: LiveOptions,
    metrics: LiveMetrics,
}

impl Live {
    /// An applier writing through `pipeline`, looking keys up with `resolver` on `runtime`.
    pub fn new(
        pipeline: Pipeline,
        resolver: Arc<Resolver>,
        runtime: tokio::runtime::Handle,
        opts: LiveOptions,
    ) -> Self {
        Self { pipeline, resolver, runtime, opts, metrics: LiveMetrics::default() }
    }

    /// Running totals.
    pub fn metrics(&self) -> &LiveMetrics {
        &self.metrics
    }

    pub(super) fn store(&self) -> &Arc<Store> {
        self.pipeline.store()
    }

    /// Handles one decoded frame (`raw` is its bytes, kept when the commit is held). Must not
    /// be called from an async task: identity lookups block.
    pub fn handle(&self, frame: &Frame, raw: &[u8]) -> Result<Handled, LiveError> {
        let handled = match frame {
            Frame::Commit(c) => self.commit(c, raw)?,
            Frame::Sync(s) => self.sync(s)?,
            Frame::Identity(i) => self.identity(i)?,
            Frame::Account(a) => self.account(a)?,
            Frame::Info(_) | Frame::Error { .. } | Frame::Unknown { .. } => Handled::Dropped,
        };
        // After the frame: an `#identity` has dropped the cached document the backfill would
        // otherwise use again.
        if let Frame::Sync(_) | Frame::Identity(_) = frame {
            self.requeue_if_failed(frame_did(frame))?;
        }
        if let Handled::Refused(reason) | Handled::Desynchronized(reason) = &handled {
            let what = if matches!(handled, Handled::Refused(_)) {
                "frame refused"
            } else {
                "repo desynchronized; queued for backfill"
            };
            tracing::warn!(did = frame_did(frame), seq = frame.seq(), %reason, "{}", what);
        }
        self.metrics.count(&handled);
        if let Some(t) = frame.time_us() {
            self.metrics.last_frame_time_us.fetch_max(t, Ordering::Relaxed);
            self.metrics.lag_us.store((now_ms() * 1000).saturating_sub(t), Ordering::Relaxed);
        }
        Ok(handled)
    }

    fn commit(&self, c: &Commit, raw: &[u8]) -> Result<Handled, LiveError> {
        let did = c.repo.as_str();
        let state = self.store().repos().state(did)?;
        match chain::check(c, state.as_ref(), now_ms() * 1000) {
            Verdict::Invalid(reason) => Ok(Handled::Refused(reason)),
            Verdict::Stale => Ok(Handled::Stale),
            Verdict::Apply => self.apply(c),
            Verdict::Desync(reason) => {
                if let Err(refusal) = self.verified_blocks(c) {
                    return Ok(Handled::refused(&refusal));
                }
                self.desynchronize(did, state.unwrap_or_default(), reason.clone())?;
                self.store().held().hold(did, c.rev.as_str(), raw)?;
                Ok(Handled::Desynchronized(reason))
            }
            Verdict::Untracked => match state.as_ref().map(|s| s.status) {
                Some(RepoStatus::Error)
                    if self.opts.backfill && state.as_ref().is_some_and(schedule::awaits_change) =>
                {
                    self.queue_backfill(did, state)?;
                    self.store().held().hold(did, c.rev.as_str(), raw)?;
                    Ok(Handled::Held)
                }
                Some(
                    RepoStatus::Pending | RepoStatus::Backfilling | RepoStatus::Error | RepoStatus::Desynchronized,
                ) => {
                    self.store().held().hold(did, c.rev.as_str(), raw)?;
                    Ok(Handled::Held)
                }
                Some(RepoStatus::Gone | RepoStatus::Synced) => Ok(Handled::Dropped),
                None | Some(RepoStatus::Discarded) => self.discover(c, raw, state),
            },
        }
    }

    /// Verifies and applies a commit that continues the chain (or starts it, live only).
    fn apply(&self, c: &Commit) -> Result<Handled, LiveError> {
        let loaded = match self.verified_blocks(c) {
            Ok(loaded) => loaded,
            Err(refusal) => return Ok(Handled::refused(&refusal)),
        };
        let ops = match ops::record_ops(c, &loaded) {
            Ok(ops) => ops,
            Err(e) => return Ok(Handled::refused(&e)),
        };
        match self.pipeline.apply_commit(c.repo.as_str(), loaded.commit_cid(), c.rev.as_str(), loaded.data(), ops, None)
        {
            Ok(_) => Ok(Handled::Applied),
            Err(PipelineError::StaleRev { .. }) => Ok(Handled::Stale),
            Err(PipelineError::Repo(e)) => Ok(Handled::refused(&e)),
            Err(PipelineError::Store(e)) => Err(e.into()),
            // A commit has no stop of its own (only walks do).
            Err(e @ PipelineError::Stopped) => Ok(Handled::refused(&e)),
        }
    }

    /// A commit of a repo sluice does not index: queue it when the filter wants it.
    fn discover(&self, c: &Commit, raw: &[u8], state: Option<RepoState>) -> Result<Handled, LiveError> {
        let did = c.repo.as_str();
        if state.as_ref().and_then(|s| s.rev.as_deref()).is_some_and(|stored| stored >= c.rev.as_str()) {
            return Ok(Handled::Stale);
        }
        let compiled = self.pipeline.filter().load();
        let filter = &compiled.filter;
        let wanted = match filter.repo_rule(did) {
            RepoRule::Excluded => false,
            RepoRule::Tracked => true,
            RepoRule::NeedsSignal => c
                .ops
                .iter()
                .any(|op| op.path.split_once('/').is_some_and(|(collection, _)| filter.is_signal(collection))),
        };
        if !wanted {
            return Ok(Handled::Dropped);
        }
        if !self.opts.backfill {
            return self.apply(c);
        }
        self.queue_backfill(did, state)?;
        self.store().held().hold(did, c.rev.as_str(), raw)?;
        Ok(Handled::Discovered)
    }

    /// Queues `did` for backfill now.
    pub(super) fn queue_backfill(&self, did: &str, state: Option<RepoState>) -> Result<(), LiveError> {
        let now = now_ms();
        let state = schedule::requeued(&state.unwrap_or_default(), 0, now);
        self.store().set_states(&[(did.to_string(), state)], None)?;
        Ok(())
    }

    /// Queues `did` for a backfill again when its last one failed for good (refused, or out of
    /// retries) and backfill is on: a `#sync` or `#identity` says the repo changed. Its
    /// stored reason stays until the next attempt's outcome replaces it.
    fn requeue_if_failed(&self, did: &str) -> Result<(), LiveError> {
        if !self.opts.backfill {
            return Ok(());
        }
        match self.store().repos().state(did)? {
            Some(state) if schedule::awaits_change(&state) => {
                tracing::info!(did, "a repo whose backfill failed changed; queued again");
                self.queue_backfill(did, Some(state))
            }
            _ => Ok(()),
        }
    }

    /// Marks `did` desynchronized: queued for a backfill, its stored rev and root kept.
    pub(super) fn desynchronize(&self, did: &str, state: RepoState, reason: String) -> Result<(), LiveError> {
        let state = RepoState {
            status: RepoStatus::Desynchronized,
            error: Some(reason),
            retries: 0,
            next_retry_ms: None,
            updated_ms: now_ms(),
            ..state
        };
        self.store().set_states(&[(did.to_string(), state)], None)?;
        Ok(())
    }

    /// Reads a commit's block slice and checks its commit block: the frame's DID and rev, the
    /// CAR root, and the signature (with the key looked up again once when it fails).
    fn verified_blocks(&self, c: &Commit) -> Result<LoadedRepo, Refusal> {
        let loaded = ops::commit_blocks(c, &self.opts.limits).map_err(Refusal::Blocks)?;
        let commit_cid = c.commit.to_ipld().map_err(Refusal::CommitCid)?;
        if loaded.commit_cid != commit_cid {
            return Err(Refusal::Root { root: loaded.commit_cid, commit: commit_cid });
        }
        self.check_signed(c.repo.as_str(), c.rev.as_str(), &loaded)?;
        Ok(loaded)
    }

    /// Checks a loaded commit block against the frame's `did` and `rev`, and its signature.
    pub(super) fn check_signed(&self, did: &str, rev: &str, loaded: &LoadedRepo) -> Result<(), Refusal> {
        loaded.check_commit(Some(did)).map_err(Refusal::Commit)?;
        if loaded.rev() != rev {
            return Err(Refusal::Rev { found: loaded.rev().to_string(), frame: rev.to_string() });
        }
        if loaded.verify_signature(&self.signer(did, false)?.key).is_ok() {
            return Ok(());
        }
        // The key may have rotated since it was cached: look it up again, once.
        loaded.verify_signature(&self.signer(did, true)?.key).map_err(Refusal::Signature)
    }

    /// `did`'s identity: from the resolver's cache without leaving the thread when it is
    /// there, else looked up (`fresh` always looks it up).
    fn signer(&self, did: &str, fresh: bool) -> Result<Arc<Identity>, Refusal> {
        let cached = if fresh { None } else { self.resolver.cached(did) };
        match cached {
            Some(identity) => Ok(identity),
            None => self.runtime.block_on(self.resolver.refresh(did)).map_err(Refusal::Signer),
        }
    }

    /// Applies `did`'s held commits in rev order, if its backfill has committed. Returns
    /// whether none is left held.
    pub fn drain(&self, did: &str) -> Result<bool, LiveError> {
        match self.store().repos().state(did)?.map(|s| s.status) {
            Some(RepoStatus::Synced | RepoStatus::Discarded) | None => {}
            Some(RepoStatus::Gone) => {
                // The account is gone: a reactivation backfills it whole.
                let revs = self.store().held().commits(did)?.into_iter().map(|(rev, _)| rev).collect::<Vec<_>>();
                self.store().held().release(did, &revs)?;
                return Ok(true);
            }
            Some(_) => return Ok(false),
        }
        let mut done = Vec::new();
        let mut cleared = true;
        for (rev, raw) in self.store().held().commits(did)? {
            let handled = match decode_frame(&raw) {
                Ok(Frame::Commit(c)) => self.commit(&c, &raw)?,
                _ => Handled::Refused("a held frame no longer decodes as a commit".into()),
            };
            if handled.holds() {
                // Held again under the same key (the backfill must run again first).
                cleared = false;
                break;
            }
            self.metrics.count(&handled);
            done.push(rev);
        }
        self.store().held().release(did, &done)?;
        Ok(cleared)
    }
}

fn frame_did(frame: &Frame) -> &str {
    match frame {
        Frame::Commit(c) => c.repo.as_str(),
        Frame::Sync(s) => s.did.as_str(),
        Frame::Identity(i) => i.did.as_str(),
        Frame::Account(a) => a.did.as_str(),
        Frame::Info(_) | Frame::Error { .. } | Frame::Unknown { .. } => "",
    }
}
