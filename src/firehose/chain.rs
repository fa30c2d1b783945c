//! Sync 1.1 checks of a `#commit` against what is stored for its repo: the rev moves forward
//! and is not in the future, `prevData` continues the stored MST root, and the commit is
//! within the relay limits. Pure: the caller holds the state and acts on the verdict.

use jacquard_api::com_atproto::sync::subscribe_repos::Commit;

use crate::store::{RepoState, RepoStatus};

/// Largest CAR slice a commit may carry.
pub const MAX_COMMIT_BLOCKS: usize = 2 << 20;
/// Most ops in one commit.
pub const MAX_COMMIT_OPS: usize = 200;
/// Largest record body.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// How far ahead of our clock a rev may be.
pub const MAX_FUTURE_US: u64 = 5 * 60 * 1_000_000;

/// What to do with a commit, given the stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It continues the stored chain: apply its ops.
    Apply,
    /// Sluice holds no synced state for the repo: discovery (or hold, while it backfills).
    Untracked,
    /// Its rev is at or below the stored rev: already applied or stale; skip it.
    Stale,
    /// It does not continue the stored chain (or cannot be checked): mark the repo
    /// desynchronized and backfill it.
    Desync(String),
    /// It breaks the protocol's rules: refuse it.
    Invalid(String),
}

/// Checks `commit` against `state` at `now_us` (unix µs).
pub fn check(commit: &Commit, state: Option<&RepoState>, now_us: u64) -> Verdict {
    if let Err(reason) = check_limits(commit) {
        return Verdict::Invalid(reason);
    }
    let rev = commit.rev.as_str();
    if crate::repo::age::tid_time_us(rev).is_some_and(|t| t > now_us + MAX_FUTURE_US) {
        return Verdict::Invalid(format!("rev {rev} is more than 5 minutes in the future"));
    }
    let Some(state) = state.filter(|s| s.status == RepoStatus::Synced) else { return Verdict::Untracked };
    if state.rev.as_deref().is_some_and(|stored| stored >= rev) {
        return Verdict::Stale;
    }
    let prev_data = commit.prev_data.as_ref().map(|c| c.as_str().to_string());
    match (prev_data, state.data.as_deref()) {
        (Some(prev), Some(stored)) if prev == stored => Verdict::Apply,
        (Some(prev), Some(stored)) => Verdict::Desync(format!("prevData {prev} does not continue the stored root {stored}")),
        (None, _) => Verdict::Desync("no prevData (not a sync 1.1 commit)".into()),
        (Some(_), None) => Verdict::Desync("no stored root to continue".into()),
    }
}

/// The relay limits: blocks, op count.
pub fn check_limits(commit: &Commit) -> Result<(), String> {
    if commit.blocks.len() > MAX_COMMIT_BLOCKS {
        return Err(format!("{} bytes of blocks, over the {MAX_COMMIT_BLOCKS}-byte limit", commit.blocks.len()));
    }
    if commit.ops.len() > MAX_COMMIT_OPS {
        return Err(format!("{} ops, over the limit of {MAX_COMMIT_OPS}", commit.ops.len()));
    }
    Ok(())
}
