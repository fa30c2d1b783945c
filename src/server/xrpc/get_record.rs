//! `com.atproto.repo.getRecord?repo&collection&rkey&cid?` -> `{uri, cid, value}`: one stored
//! record as AT Protocol JSON. `RecordNotFound` when sluice holds no such record, holds
//! another version than `cid`, or holds one that does not render (stored before the record
//! rule, which takes it as not in the repo; the message says so); `InvalidRequest` "Could not locate record" when the repo is
//! unknown or unreadable, as the reference PDS answers (without an appview behind it).

use std::sync::Arc;

use axum::extract::State;
use serde_json::Value;

use super::repo_access::{Unshown, at_uri, point_read, readable_repo, record_json, repo_param, store_error};
use crate::pipeline::PipelineMetrics;
use crate::server::ServerState;
use crate::xrpc::{Params, XrpcError, XrpcResult, ok_json};

/// The XRPC method's name.
pub(super) const METHOD: &str = "com.atproto.repo.getRecord";

pub(super) async fn handle(State(state): State<Arc<ServerState>>, p: Params) -> XrpcResult {
    let repo = repo_param(&p, state.config.cluster.shard)?;
    let (collection, rkey) = (p.nsid("collection")?.to_string(), p.rkey("rkey")?.to_string());
    let want = match p.opt("cid")? {
        Some(s) => Some(cid::Cid::try_from(s).map_err(|_| XrpcError::invalid("cid must be a valid cid"))?),
        None => None,
    };
    let metrics = state.pipeline.metrics();
    ok_json(point_read(&state, |store| read(store, metrics, &repo, &collection, &rkey, want))?)
}

fn read(
    store: &crate::store::Store,
    metrics: &PipelineMetrics,
    repo: &str,
    collection: &str,
    rkey: &str,
    want: Option<cid::Cid>,
) -> Result<Value, XrpcError> {
    let (did, _) = readable_repo(store, repo, Unshown::Fetched)?;
    let did = did.as_str();
    let not_found =
        || XrpcError::record_not_found(format!("Could not locate record: {}", at_uri(did, collection, rkey)));
    let record = store.records().get(did, collection, rkey).map_err(store_error)?.ok_or_else(not_found)?;
    if want.is_some_and(|w| w.to_bytes() != record.cid) {
        return Err(not_found());
    }
    record_json(did, collection, rkey, &record, metrics)?.ok_or_else(|| {
        XrpcError::record_not_found(format!(
            "Could not locate record: {} (stored, but refused by the record rule: sluice does not serve it)",
            at_uri(did, collection, rkey)
        ))
    })
}
