//! Sync 1.1 checks of a `#commit` against what is stored for its repo: the rev moves forward
//! and is not in the future, `prevData` continues the stored MST root, and the commit is
//! within the sync spec's limits on a commit (blocks, ops). Pure: the caller holds the state and acts on the verdict.

use jacquard_api::com_atproto::sync::subscribe_repos::Commit;

use crate::store::{RepoState, RepoStatus};

// The limits of a `#commit` are the sync spec's (atproto.com/specs/sync, "Commit events have
// the following size limits"), which the reference relay and PDS keep: its `blocks` has at
// most 2,000,000 bytes, it has at most 200 ops, and each record block at most 1,000,000 bytes.
// The first two belong to the commit and refuse it whole (`Verdict::Invalid`); the record
// limit belongs to each record and is the record rule's (`sluice_handlers::rules`), which the
// pipeline applies alike to live commits and backfill walks: an oversized record is refused
// alone, and the rest of its commit applies.

/// Largest CAR slice a commit may carry (the sync spec's 2,000,000 bytes).
pub const MAX_COMMIT_BLOCKS: usize = 2_000_000;
/// Most ops in one commit (the sync spec's 200).
pub const MAX_COMMIT_OPS: usize = 200;
/// Largest record body (the sync spec's 1,000,000 bytes): the record rule's limit, checked by
/// the pipeline per record, not here.
pub const MAX_RECORD_BYTES: usize = sluice_handlers::rules::MAX_VALUE_BYTES;
/// How far ahead of our clock a rev may be.
pub const MAX_FUTURE_US: u64 = 5 * 60 * 1_000_000;

/// What to do with a commit, given the stored state. The reasons are text: what a log line and
/// a desynchronized repo's state say, not errors that stop anything.
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
    if let Err(over) = check_limits(commit) {
        return Verdict::Invalid(over.to_string());
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
        (Some(prev), Some(stored)) => {
            Verdict::Desync(format!("prevData {prev} does not continue the stored root {stored}"))
        }
        (None, _) => Verdict::Desync("no prevData (not a sync 1.1 commit)".into()),
        (Some(_), None) => Verdict::Desync("no stored root to continue".into()),
    }
}

/// A commit over the relay limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverLimit {
    /// Its CAR slice has this many bytes.
    #[error("{0} bytes of blocks, over the {MAX_COMMIT_BLOCKS}-byte limit")]
    Blocks(usize),
    /// It has this many ops.
    #[error("{0} ops, over the limit of {MAX_COMMIT_OPS}")]
    Ops(usize),
}

/// The relay limits: blocks, op count.
pub fn check_limits(commit: &Commit) -> Result<(), OverLimit> {
    if commit.blocks.len() > MAX_COMMIT_BLOCKS {
        return Err(OverLimit::Blocks(commit.blocks.len()));
    }
    if commit.ops.len() > MAX_COMMIT_OPS {
        return Err(OverLimit::Ops(commit.ops.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jacquard_api::com_atproto::sync::subscribe_repos::{RepoOp, RepoOpAction};
    use jacquard_common::types::string::{Datetime, Did, Tid};
    use proptest::prelude::*;

    const ROOT_A: &str = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm";
    const ROOT_B: &str = "bafyreigdmqpykrgxyaxtlafqpqhzrb7qy2rh75nldvfd4tucqmqqme5yje";

    /// The rev at step `n`.
    fn rev_at(n: u64) -> Tid {
        Tid::from_time(1_700_000_000_000_000 + n, 0)
    }

    /// A commit at `rev` with `prev_data` and `ops` ops: what [`check`] reads of one (its
    /// blocks are not looked at, only counted).
    fn commit(rev: u64, prev_data: Option<&str>, ops: usize) -> Commit {
        let cid = |s: &str| s.parse::<cid::Cid>().unwrap().into();
        let op = RepoOp {
            action: RepoOpAction::Create,
            cid: Some(cid(ROOT_B)),
            path: "app.bsky.feed.post/3l2222222222a".into(),
            prev: None,
            extra_data: None,
        };
        Commit {
            blobs: Vec::new(),
            blocks: Default::default(),
            commit: cid(ROOT_A),
            ops: vec![op; ops],
            prev_data: prev_data.map(cid),
            rebase: false,
            repo: Did::new("did:plc:abcdefghijklmnopqrstuvwx".into()).unwrap(),
            rev: rev_at(rev),
            seq: 1,
            since: None,
            time: Datetime::now(),
            too_big: false,
            extra_data: None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Only a synced repo's newer commit that continues its root is applied; older or equal
        /// revs are stale, a broken chain desynchronizes, anything else waits for a backfill.
        #[test]
        fn verdicts_follow_the_stored_state(
            stored in 1u64..1000,
            rev in 1u64..1000,
            s in 0..7usize,
            same_root: bool,
            has_prev: bool,
        ) {
            let status = RepoStatus::ALL[s];
            let state = RepoState {
                status,
                rev: Some(rev_at(stored).to_string()),
                data: Some(ROOT_A.into()),
                ..Default::default()
            };
            let prev = has_prev.then_some(if same_root { ROOT_A } else { ROOT_B });
            let verdict = check(&commit(rev, prev, 1), Some(&state), u64::MAX / 2);
            match verdict {
                Verdict::Untracked => prop_assert!(status != RepoStatus::Synced),
                Verdict::Stale => prop_assert!(status == RepoStatus::Synced && stored >= rev),
                Verdict::Apply => prop_assert!(status == RepoStatus::Synced && stored < rev && has_prev && same_root),
                Verdict::Desync(_) => {
                    prop_assert!(status == RepoStatus::Synced && stored < rev && !(has_prev && same_root))
                }
                Verdict::Invalid(r) => prop_assert!(false, "invalid: {}", r),
            }
        }
    }

    #[test]
    fn limits_and_future_revs_are_invalid_whatever_the_state() {
        let now = 1_700_000_000_000_000 + 5;
        assert_eq!(check(&commit(5, Some(ROOT_A), 1), None, now), Verdict::Untracked);
        assert!(matches!(
            check(&commit(5, Some(ROOT_A), 1), None, now - MAX_FUTURE_US - 1),
            Verdict::Invalid(r) if r.contains("future")
        ));
        assert!(matches!(
            check(&commit(5, Some(ROOT_A), MAX_COMMIT_OPS + 1), None, now),
            Verdict::Invalid(r) if r.contains("ops")
        ));
    }
}
