//! `com.atproto.sync.getRepoStatus?did` -> `{did, active, status?, rev?}`, as a PDS answers for
//! its accounts: an indexed repo is active with the rev sluice last applied (when it has
//! one); a gone one is inactive with its account status and no rev; deleted, discarded and
//! unknown repos are `RepoNotFound`.

use std::sync::Arc;

use axum::extract::State;
use serde_json::json;

use super::repo_access::{gone_status, point_read, shown, store_error};
use crate::server::ServerState;
use crate::store::RepoStatus;
use crate::xrpc::{Params, XrpcResult, ok_json};

/// The XRPC method's name.
pub(super) const METHOD: &str = "com.atproto.sync.getRepoStatus";

pub(super) async fn handle(State(state): State<Arc<ServerState>>, p: Params) -> XrpcResult {
    let did = p.did("did")?.to_string();
    super::repo_access::on_this_shard(&did, state.config.cluster.shard)?;
    let stored = point_read(&state, |store| store.repos().state(&did).map_err(store_error))?;
    let repo = shown(&did, stored)?;
    let mut out = json!({ "did": did, "active": repo.status != RepoStatus::Gone });
    match (repo.status, &repo.rev) {
        (RepoStatus::Gone, _) => out["status"] = json!(gone_status(&repo)),
        (_, Some(rev)) => out["rev"] = json!(rev),
        (_, None) => {}
    }
    ok_json(out)
}
