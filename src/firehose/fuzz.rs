//! The fuzz body for `frame` (cargo-fuzz target `frame`, and `tests/fuzz_corpus.rs` over the
//! seeds).
//!
//! Any bytes decode to a frame or are refused, never a panic. A `#commit` then goes as far as
//! live ingestion takes it without a store or a network: the relay limits and the sync 1.1
//! verdict against stored states ([`chain::check`]), its CAR slice, and its ops with their
//! bodies ([`ops::record_ops`]). What each step decides is held to the protocol's rules, written
//! here from the spec rather than from the code under test: an untracked repo is never applied
//! to, a stored rev at or past the commit's makes it stale, a commit continuing the stored root
//! applies, one breaking it (or without `prevData`) desynchronizes; every op taken keeps its
//! path and action, and every body taken hashes to its op's CID.

use jacquard_api::com_atproto::sync::subscribe_repos::{Commit, RepoOpAction};
use sha2::Digest;

use super::chain::{self, MAX_COMMIT_BLOCKS, MAX_COMMIT_OPS, MAX_FUTURE_US, Verdict};
use super::frame::{Frame, decode_frame};
use super::ops;
use crate::pipeline::RecordOp;
use crate::repo::CarLimits;
use crate::store::{RepoState, RepoStatus};

/// The smallest TID: a stored rev that every other rev is after.
const FIRST_REV: &str = "2222222222222";

/// A stored MST root that no commit's `prevData` names (a CID of no block).
const OTHER_ROOT: &str = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm";

/// A clock far past any rev's time, so that no commit is "in the future".
const LATE_CLOCK_US: u64 = u64::MAX / 4;

/// The fuzz body for `frame` (see the module's head).
pub fn fuzz_frame(bytes: &[u8]) {
    if let Ok(Frame::Commit(commit)) = decode_frame(bytes) {
        verdicts_follow_the_rules(&commit);
        ops_follow_the_commit(&commit);
    }
}

/// [`chain::check`] against the states a repo can be in, held to the sync 1.1 rules.
fn verdicts_follow_the_rules(commit: &Commit) {
    let rev = commit.rev.as_str();
    let prev = commit.prev_data.as_ref().map(|c| c.as_str().to_string());
    let synced = |stored_rev: &str, data: Option<&str>| RepoState {
        status: RepoStatus::Synced,
        rev: Some(stored_rev.into()),
        data: data.map(str::to_string),
        ..Default::default()
    };
    let verdict = |state: Option<&RepoState>| chain::check(commit, state, LATE_CLOCK_US);
    if commit.ops.len() > MAX_COMMIT_OPS || commit.blocks.len() > MAX_COMMIT_BLOCKS {
        for state in [None, Some(&synced(FIRST_REV, prev.as_deref()))] {
            assert!(matches!(verdict(state), Verdict::Invalid(_)), "a commit over the relay limits is refused");
        }
        return;
    }
    assert_eq!(verdict(None), Verdict::Untracked, "a repo with no state is never applied to");
    for status in RepoStatus::ALL.into_iter().filter(|s| *s != RepoStatus::Synced) {
        let state = RepoState { status, ..synced(FIRST_REV, prev.as_deref()) };
        assert_eq!(verdict(Some(&state)), Verdict::Untracked, "a repo {status:?} is not applied to");
    }
    assert_eq!(verdict(Some(&synced(rev, prev.as_deref()))), Verdict::Stale, "the stored rev itself is stale");
    if FIRST_REV < rev {
        let continued = verdict(Some(&synced(FIRST_REV, prev.as_deref())));
        match &prev {
            Some(_) => assert_eq!(continued, Verdict::Apply, "a commit continuing the stored root applies"),
            None => assert!(matches!(continued, Verdict::Desync(_)), "no prevData: {continued:?}"),
        }
        if prev.as_deref() != Some(OTHER_ROOT) {
            let broken = verdict(Some(&synced(FIRST_REV, Some(OTHER_ROOT))));
            assert!(matches!(broken, Verdict::Desync(_)), "a broken chain desynchronizes: {broken:?}");
        }
    }
    if commit.rev.timestamp() > MAX_FUTURE_US {
        let early = chain::check(commit, None, 0);
        assert!(matches!(early, Verdict::Invalid(_)), "a rev over 5 minutes ahead of the clock: {early:?}");
    }
}

/// The commit's CAR slice and ops: every op taken keeps its path and action, every body taken
/// hashes to its op's CID and is within the commit's blocks.
fn ops_follow_the_commit(commit: &Commit) {
    let Ok(blocks) = ops::commit_blocks(commit, &CarLimits::default()) else { return };
    let _ = blocks.check_commit(Some(commit.repo.as_str()));
    let Ok(taken) = ops::record_ops(commit, &blocks) else { return };
    assert_eq!(taken.len(), commit.ops.len(), "every op is taken or the commit is refused");
    for (op, record_op) in commit.ops.iter().zip(&taken) {
        let path = op.path.as_str();
        match record_op {
            RecordOp::Put { collection, rkey, cid, bytes } => {
                assert_eq!(format!("{collection}/{rkey}"), path);
                assert!(matches!(op.action, RepoOpAction::Create | RepoOpAction::Update), "{path}: a put");
                assert_eq!(op.cid.as_ref().map(|c| c.as_str().to_string()), Some(cid.to_string()), "{path}: its CID");
                assert_eq!(cid.hash().digest(), &sha2::Sha256::digest(bytes)[..], "{path}: its body is its CID's");
                // The record rule is the pipeline's: a body over the record limit is taken
                // here and refused there, alone.
                assert!(bytes.len() <= MAX_COMMIT_BLOCKS, "{path}: within the commit's blocks");
            }
            RecordOp::Delete { collection, rkey } => {
                assert_eq!(format!("{collection}/{rkey}"), path);
                assert!(matches!(op.action, RepoOpAction::Delete), "{path}: a delete");
            }
        }
    }
}
