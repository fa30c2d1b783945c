//! `com.atproto.repo.describeRepo?repo` -> `{handle, did, didDoc, collections,
//! handleIsCorrect}` from what sluice stores.
//!
//! - `handle`: the one the repo's DID document names, or the network last announced for it
//!   (`#identity`), stored in its state; `handle.invalid` when none is known.
//!   `handleIsCorrect` is true only once the handle checker found it resolves back to the DID
//!   (see `handles.rs`; checked when the handle is stored or changes, not per request).
//! - `didDoc`: sluice resolves DID documents for keys and endpoints but does not store them,
//!   so this is a minimal document: `@context`, `id` and, when a handle is known,
//!   `alsoKnownAs`. Clients that need keys or the PDS endpoint resolve the DID themselves.
//! - `collections`: the collections sluice holds records of for the repo (what the filter
//!   keeps), not every collection the repo has.

use std::sync::Arc;

use axum::extract::State;
use serde_json::{Value, json};

use super::repo_access::{Unshown, blocking, readable_repo, repo_param, store_error};
use crate::server::ServerState;
use crate::store::Store;
use crate::xrpc::{Params, XrpcError, XrpcResult, ok_json};

/// The XRPC method's name.
pub(super) const METHOD: &str = "com.atproto.repo.describeRepo";

pub(super) async fn handle(State(state): State<Arc<ServerState>>, p: Params) -> XrpcResult {
    let repo = repo_param(&p, state.config.cluster.shard)?;
    ok_json(blocking(&state, move |store| read(store, &repo)).await?)
}

fn read(store: &Store, repo: &str) -> Result<Value, XrpcError> {
    let (did, state) = readable_repo(store, repo, Unshown::Described)?;
    let did = did.as_str();
    let collections = store.records().collections(did).map_err(store_error)?;
    let mut doc = json!({ "@context": ["https://www.w3.org/ns/did/v1"], "id": did });
    if let Some(handle) = &state.handle {
        doc["alsoKnownAs"] = json!([format!("at://{handle}")]);
    }
    Ok(json!({
        "handle": state.handle.as_deref().unwrap_or("handle.invalid"),
        "did": did,
        "didDoc": doc,
        "collections": collections,
        "handleIsCorrect": state.handle.is_some() && state.handle_ok == Some(true),
    }))
}
