//! `dev.sluice.getStats` -> what sluice holds:
//! `{repos: {status: n}, records: {collection: n}, events: {last, next}, cursors: {service:
//! {cursor, savedAt}}}`. Every status is listed (zero included); counters come from the
//! store's in-memory copy, so this is cheap.

use std::sync::Arc;

use axum::extract::State;
use serde_json::{Map, Value, json};

use super::repo_access::{blocking, store_error};
use crate::server::ServerState;
use crate::store::Store;
use crate::syntax::datetime_from_ms as datetime;
use crate::xrpc::{Params, XrpcError, XrpcResult, ok_json};

/// The method's name under the project's namespace.
pub(super) const NAME: &str = "getStats";

pub(super) async fn handle(State(state): State<Arc<ServerState>>, _: Params) -> XrpcResult {
    ok_json(blocking(&state, read).await?)
}

fn read(store: &Store) -> Result<Value, XrpcError> {
    let (repos, records) = store.repos_and_records();
    let next = store.next_event_id();
    let cursors: Map<String, Value> = store
        .cursors()
        .all()
        .map_err(store_error)?
        .into_iter()
        .map(|(service, (cursor, ms))| (service, json!({ "cursor": cursor, "savedAt": datetime(ms) })))
        .collect();
    Ok(json!({ "repos": repos, "records": records, "events": { "last": next - 1, "next": next }, "cursors": cursors }))
}
