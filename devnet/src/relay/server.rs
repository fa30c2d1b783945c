//! The fake relay: `com.atproto.sync.listRepos` over every PDS host,
//! `com.atproto.sync.listReposByCollection`, `com.atproto.identity.resolveHandle`, and
//! `com.atproto.sync.subscribeRepos` with every host's events (`firehose::ws`).

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use sluice::xrpc::{Params, XrpcError};

use super::listing;
use crate::firehose::sequencer::Sequencer;
use crate::firehose::ws;
use crate::identity::handle::resolve_handle;
use crate::world::state::World;

/// What the relay serves from: the world and the firehose.
#[derive(Clone)]
struct Relay {
    world: Arc<World>,
    sequencer: Arc<Sequencer>,
}

/// The relay's routes.
pub(crate) fn router(world: Arc<World>, sequencer: Arc<Sequencer>) -> Router {
    Router::new()
        .route("/xrpc/com.atproto.sync.subscribeRepos", get(subscribe_repos))
        .route("/xrpc/{nsid}", get(xrpc_get))
        .with_state(Relay { world, sequencer })
}

/// `GET /xrpc/com.atproto.sync.subscribeRepos`: every host's events (a websocket).
async fn subscribe_repos(State(relay): State<Relay>, query: Params, upgrade: WebSocketUpgrade) -> Response {
    ws::subscribe(&relay.world, &relay.sequencer, None, query, upgrade)
}

/// `GET /xrpc/{nsid}`.
async fn xrpc_get(State(Relay { world, .. }): State<Relay>, Path(nsid): Path<String>, query: Params) -> Response {
    world.count(&nsid);
    let params = query;
    let result = match nsid.as_str() {
        "com.atproto.sync.listRepos" => listing::list_repos(&world, None, &params).await,
        "com.atproto.sync.listReposByCollection" => listing::list_repos_by_collection(&world, &params),
        "com.atproto.identity.resolveHandle" => resolve_handle(&world, &params),
        other => Err(XrpcError::not_implemented(other)),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}
