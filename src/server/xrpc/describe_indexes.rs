//! `dev.sluice.describeIndexes` -> `{indexes: [...]}`: every index in force, its definition,
//! state (`building` with progress, or `ready`) and totals.

use std::sync::Arc;

use axum::extract::State;
use serde_json::{Value, json};

use super::index_params::progress_json;
use super::repo_access::point_read;
use crate::indexes::PerRepo;
use crate::server::ServerState;
use crate::xrpc::{XrpcResult, ok_json};

/// The method's name under [`NS`](crate::server::NS).
pub(super) const NAME: &str = "describeIndexes";

pub(super) async fn handle(State(state): State<Arc<ServerState>>) -> XrpcResult {
    ok_json(point_read(&state, |store| {
        let indexes: Vec<Value> = store
            .index_progress()
            .values()
            .map(|(index, progress)| {
                let spec = &index.spec;
                let mut out = json!({
                    "name": spec.name,
                    "collection": spec.collection,
                    "key": spec.key.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                    "sort": spec.sort.as_text(),
                    "sortType": spec.sort.value_type().as_str(),
                    "count": spec.count,
                });
                if spec.per_repo == PerRepo::Latest {
                    out["perRepo"] = json!("latest");
                }
                if let Some(method) = &spec.method {
                    out["method"] = json!(method);
                }
                if let (Value::Object(out), Value::Object(p)) = (&mut out, progress_json(store, index, progress)) {
                    out.extend(p);
                }
                out
            })
            .collect();
        Ok(json!({ "indexes": indexes }))
    })?)
}
