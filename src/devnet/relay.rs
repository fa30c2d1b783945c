//! The fake relay: `com.atproto.sync.listRepos` over every PDS host,
//! `com.atproto.sync.listReposByCollection`, and `com.atproto.sync.subscribeRepos` with every
//! host's events (`firehose_ws`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::listing;
use super::world::World;
use crate::xrpc::{Params, XrpcError};

/// The relay's routes.
pub(crate) fn router(world: Arc<World>) -> Router {
    Router::new()
        .route("/xrpc/com.atproto.sync.subscribeRepos", get(subscribe_repos))
        .route("/xrpc/{nsid}", get(xrpc_get))
        .with_state(world)
}

/// `GET /xrpc/com.atproto.sync.subscribeRepos`: every host's events (a websocket).
async fn subscribe_repos(
    State(world): State<Arc<World>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: WebSocketUpgrade,
) -> Response {
    super::firehose_ws::subscribe(&world, None, query, ws)
}

/// `GET /xrpc/{nsid}`.
async fn xrpc_get(
    State(world): State<Arc<World>>,
    Path(nsid): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    world.count(&nsid);
    let params = match Params::from_query(query) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let result = match nsid.as_str() {
        "com.atproto.sync.listRepos" => listing::list_repos(&world, None, &params).await,
        "com.atproto.sync.listReposByCollection" => listing::list_repos_by_collection(&world, &params),
        "com.atproto.identity.resolveHandle" => super::pds_repo::resolve_handle(&world, &params),
        other => Err(XrpcError::not_implemented(other)),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}
