//! What the index queries share: the index named by `index` (or by the method it is served
//! under), its state, and the key tuple the `key` parameters make (one per key part:
//! `key=a&key=b`).

use std::sync::Arc;

use axum::http::StatusCode;

use crate::indexes::encode;
use crate::store::{BuildState, LiveIndex, Phase, Progress, Store};
use crate::xrpc::{Params, XrpcError};

/// The index a query names: by `index`, or the one served under `method`.
pub(super) fn find(store: &Store, params: &Params, method: Option<&str>) -> Result<Arc<LiveIndex>, XrpcError> {
    let registry = store.index_registry();
    let (name, found) = match method {
        Some(method) => (method, registry.by_method(method)),
        None => {
            let name = params.req("index")?;
            (name, registry.indexes.get(name))
        }
    };
    found.cloned().ok_or_else(|| {
        XrpcError::new(StatusCode::BAD_REQUEST, "IndexNotFound", format!("no index `{name}` in the filter"))
    })
}

/// `index` once it is ready; while it builds, `IndexNotReady` with its progress.
pub(super) fn ready(store: &Store, index: &LiveIndex) -> Result<(), XrpcError> {
    match store.build_state(index, &store.index_progress_of(index)) {
        None => Ok(()),
        Some(BuildState { phase, done, total }) => Err(XrpcError::new(
            StatusCode::BAD_REQUEST,
            "IndexNotReady",
            match phase {
                Phase::Entries => {
                    format!("index `{}` is building: {done} of about {total} records read", index.spec.name)
                }
                Phase::Counts => {
                    format!("index `{}` is building: its {done} records read, its counts being summed", index.spec.name)
                }
            },
        )),
    }
}

/// The key tuple of the `key` parameters: one per key part of `index`, each in the canonical
/// form entries use (a datetime normalised).
pub(super) fn key(params: &Params, index: &LiveIndex) -> Result<Vec<u8>, XrpcError> {
    let parts: Vec<_> = params.all("key").map(|k| encode::canonical_text(k).into_owned()).collect();
    let want = index.spec.key.len();
    if parts.len() != want {
        let paths: Vec<_> = index.spec.key.iter().map(|p| p.as_str()).collect();
        return Err(XrpcError::invalid(format!(
            "key: index `{}` takes {want} key part(s) ({}), got {}",
            index.spec.name,
            paths.join(", "),
            parts.len()
        )));
    }
    Ok(encode::key_tuple(&parts))
}

/// A progress as JSON for `describeIndexes`.
pub(super) fn progress_json(store: &Store, index: &LiveIndex, p: &Progress) -> serde_json::Value {
    let mut out = serde_json::json!({
        "state": if p.building.is_some() { "building" } else { "ready" },
        "entries": p.entries,
        "records": p.records,
        "skipped": p.skipped,
    });
    if let Some(b) = store.build_state(index, p) {
        out["progress"] = serde_json::json!({ "phase": b.phase.as_str(), "done": b.done, "total": b.total });
    }
    out
}
