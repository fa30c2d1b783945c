//! `com.atproto.sync.listRepos?limit&cursor` -> `{repos: [{did, head, rev, active, status?}],
//! cursor?}`: the repos sluice indexes, in DID order, paged by DID.
//!
//! Listed: every repo with a stored commit (rev and MST root) that sluice shows (see
//! `repo_access`): synced ones, those queued again or failing with what was stored before, as
//! `active: true`; and gone ones, as `active: false` with their account status. A gone repo
//! sluice never fetched has no rev or head to give, which the lexicon requires, so it is left
//! out (`getRepoStatus` still answers for it); so are deleted ones, as a PDS does.
//!
//! `head`: the CID of the last commit sluice applied (`getLatestCommit`'s `cid` on the PDS at
//! that rev), and `rev` that commit's. A repo indexed by a build that did not keep commit CIDs
//! gives its MST root (`data`) CID instead, until its next commit or walk.
//!
//! The answer has a `cursor` (the last DID read) whenever more repos may follow. A page reads
//! at most [`MAX_SCAN`] states, so a store of mostly unlisted repos can answer short pages.

use std::sync::Arc;

use axum::extract::State;
use serde_json::{Value, json};

use super::repo_access::{blocking, gone_status, store_error};
use crate::server::ServerState;
use crate::store::{RepoState, RepoStatus};
use crate::xrpc::{Params, XrpcResult, ok_json};

/// The XRPC method's name.
pub(super) const METHOD: &str = "com.atproto.sync.listRepos";

/// Most repo states one page reads.
const MAX_SCAN: usize = 20_000;

pub(super) async fn handle(State(state): State<Arc<ServerState>>, p: Params) -> XrpcResult {
    let limit = p.limit(500, 1000)?;
    let cursor = p.opt("cursor")?.map(str::to_string);
    let (states, next) = blocking(&state, move |store| {
        store.repos().page(cursor.as_deref(), limit, MAX_SCAN, listed).map_err(store_error)
    })
    .await?;
    let repos: Vec<Value> = states.iter().map(|(did, s)| entry(did, s)).collect();
    let mut out = json!({ "repos": repos });
    if let Some(next) = next {
        out["cursor"] = json!(next);
    }
    ok_json(out)
}

/// Whether a repo in `state` is listed.
fn listed(state: &RepoState) -> bool {
    let shown = match state.status {
        RepoStatus::Discarded => false,
        RepoStatus::Gone => gone_status(state).is_some(),
        _ => true,
    };
    shown && state.rev.is_some() && state.data.is_some()
}

/// One listed repo.
fn entry(did: &str, state: &RepoState) -> Value {
    let head = state.commit.as_ref().or(state.data.as_ref());
    let mut item = json!({ "did": did, "head": head, "rev": state.rev, "active": state.status != RepoStatus::Gone });
    if state.status == RepoStatus::Gone {
        item["status"] = json!(gone_status(state));
    }
    item
}
