//! A `#commit`'s ops as the pipeline's [`RecordOp`]s: each create or update takes its record
//! body from the commit's CAR slice (CID-checked when the slice is read). A body is not judged
//! here: the pipeline applies the record rule (size, nesting, data model) to it as to a walked
//! record, so one bad record is refused alone and the rest of its commit applies.

use jacquard_api::com_atproto::sync::subscribe_repos::{Commit, RepoOpAction};

use crate::pipeline::RecordOp;
use crate::repo::{CarLimits, LoadedRepo, RepoError};

/// Why a commit's ops could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The block slice is not a valid CAR.
    #[error(transparent)]
    Blocks(#[from] RepoError),
    /// An op is malformed: a bad path or CID, or a create/update without its record.
    #[error("op {path}: {problem}")]
    Op {
        /// The op's `collection/rkey`.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Reads a commit's CAR slice (within `limits`).
pub fn commit_blocks(commit: &Commit, limits: &CarLimits) -> Result<LoadedRepo, RepoError> {
    crate::repo::read_car(&commit.blocks, limits)
}

/// The commit's ops in order, with record bodies from `blocks` (see [`commit_blocks`]).
pub fn record_ops(commit: &Commit, blocks: &LoadedRepo) -> Result<Vec<RecordOp>, OpsError> {
    commit
        .ops
        .iter()
        .map(|op| {
            let path = op.path.as_str();
            let bad = |problem: String| OpsError::Op { path: path.to_string(), problem };
            let (collection, rkey) = path
                .split_once('/')
                .filter(|(c, r)| crate::syntax::is_nsid(c) && crate::syntax::is_rkey(r))
                .ok_or_else(|| bad("not a collection/rkey path".into()))?;
            let (collection, rkey) = (collection.to_string(), rkey.to_string());
            match op.action {
                RepoOpAction::Delete => Ok(RecordOp::Delete { collection, rkey }),
                RepoOpAction::Create | RepoOpAction::Update => {
                    let cid = op
                        .cid
                        .as_ref()
                        .ok_or_else(|| bad("no record CID".into()))?
                        .to_ipld()
                        .map_err(|e| bad(format!("bad CID: {e}")))?;
                    let bytes = blocks.block(&cid, "record").map_err(|e| bad(e.to_string()))?;
                    Ok(RecordOp::Put { collection, rkey, cid, bytes })
                }
                RepoOpAction::Other(ref other) => Err(bad(format!("unknown action {}", other.as_str()))),
            }
        })
        .collect()
}
