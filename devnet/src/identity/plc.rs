//! The fake PLC directory: `GET /{did}` answers the DID document of a devnet `did:plc` account.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::diddoc::did_document;
use crate::world::state::World;

/// The request-count key of a PLC document fetch.
pub const PLC_RESOLVE: &str = "plc.resolve";

/// The PLC directory's routes.
pub(crate) fn router(world: Arc<World>) -> Router {
    Router::new().route("/{did}", get(resolve)).with_state(world)
}

/// `GET /{did}`: the document, or 404 for a DID not registered (unknown, removed or not did:plc).
async fn resolve(State(world): State<Arc<World>>, Path(did): Path<String>) -> Response {
    world.count(PLC_RESOLVE);
    let doc = if did.starts_with("did:plc:") {
        world.read(&did, |a| (!a.identity_removed).then(|| did_document(a, &world.hosts[a.pds].url))).flatten()
    } else {
        None
    };
    match doc {
        Some(doc) => Json(doc).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"message": format!("DID not registered: {did}")}))).into_response(),
    }
}
