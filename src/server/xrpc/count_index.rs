//! `dev.sluice.countIndex?index&key...` -> `{count}`: the entries under a key of an index kept
//! with `count = true`, exact and read in constant time.

use std::sync::Arc;

use axum::extract::State;
use serde_json::json;

use super::index_params::{find, key, ready};
use super::repo_access::{point_read, store_error};
use crate::server::ServerState;
use crate::xrpc::{Params, XrpcError, XrpcResult, ok_json};

/// The method's name under [`NS`](crate::server::NS).
pub(super) const NAME: &str = "countIndex";

pub(super) async fn handle(State(state): State<Arc<ServerState>>, params: Params) -> XrpcResult {
    ok_json(point_read(&state, |store| {
        let index = find(store, &params, None)?;
        if !index.spec.count {
            return Err(XrpcError::invalid(format!(
                "index: `{}` keeps no count (add `count = true` to its table)",
                index.spec.name
            )));
        }
        ready(store, &index)?;
        let key = key(&params, &index)?;
        Ok(json!({ "count": index.count(&key).map_err(store_error)? }))
    })?)
}
