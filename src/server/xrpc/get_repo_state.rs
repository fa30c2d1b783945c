//! `dev.sluice.getRepoState?did` -> the whole stored state of a repo, whatever it is
//! (discarded and gone repos included: this is sluice's own view, for operators):
//! `{did, status, rev?, data?, handle?, error?, retries, nextRetryAt?, updatedAt, records}`.
//! `records` counts its stored records (a scan of its keys). Unknown repos are `RepoNotFound`.

use std::sync::Arc;

use axum::extract::State;
use serde_json::{Value, json};

use super::repo_access::{point_read, store_error};
use crate::server::ServerState;
use crate::store::Store;
use crate::syntax::datetime_from_ms as datetime;
use crate::xrpc::{Params, XrpcError, XrpcResult, ok_json};

/// The method's name under the project's namespace.
pub(super) const NAME: &str = "getRepoState";

pub(super) async fn handle(State(state): State<Arc<ServerState>>, p: Params) -> XrpcResult {
    let did = p.did("did")?.to_string();
    super::repo_access::on_this_shard(&did, state.config.cluster.shard)?;
    ok_json(point_read(&state, |store| read(store, &did))?)
}

fn read(store: &Store, did: &str) -> Result<Value, XrpcError> {
    let state = store.repos().state(did).map_err(store_error)?.ok_or_else(|| XrpcError::repo_not_found(did))?;
    let records = store.records().count(did).map_err(store_error)?;
    let mut out = json!({
        "did": did,
        "status": state.status.as_str(),
        "retries": state.retries,
        "updatedAt": datetime(state.updated_ms),
        "records": records,
    });
    let optional = [("rev", state.rev), ("data", state.data), ("handle", state.handle), ("error", state.error)];
    for (name, value) in optional {
        if let Some(v) = value {
            out[name] = json!(v);
        }
    }
    if let Some(ms) = state.next_retry_ms {
        out["nextRetryAt"] = json!(datetime(ms));
    }
    Ok(out)
}
