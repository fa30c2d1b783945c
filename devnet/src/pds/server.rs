//! A fake PDS host's routes: XRPC under `/xrpc/{nsid}` for its own accounts, `did:web` documents
//! under `/u/{seed}/did.json`, and `POST /devnet/createAccount`. The methods live in `sync`,
//! `repo`, `write`, `relay::listing` (listRepos), `identity::handle` (resolveHandle) and
//! `firehose::ws` (subscribeRepos); this file routes, counts and rate-limits.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sluice::xrpc::{Params, XrpcError, XrpcResult};

use super::host::Pds;
use super::{repo, sync, write};
use crate::firehose::sequencer::Sequencer;
use crate::firehose::ws;
use crate::identity::diddoc;
use crate::identity::handle::resolve_handle;
use crate::relay::listing;
use crate::world::state::{AccountSpec, World};

/// The request-count key of a `did:web` document fetch.
pub const DID_WEB_RESOLVE: &str = "did.json";

/// Routes of PDS host `index`.
pub(crate) fn router(world: Arc<World>, sequencer: Arc<Sequencer>, index: usize) -> Router {
    Router::new()
        .route("/xrpc/com.atproto.sync.subscribeRepos", get(subscribe_repos))
        .route("/xrpc/{nsid}", get(xrpc_get).post(xrpc_post))
        .route("/u/{seed}/did.json", get(did_web))
        .route("/devnet/createAccount", post(write::create_account))
        .with_state(Pds { world, sequencer, index })
}

/// `GET /xrpc/com.atproto.sync.subscribeRepos`: this host's accounts' events (a websocket).
async fn subscribe_repos(State(pds): State<Pds>, query: Params, upgrade: WebSocketUpgrade) -> Response {
    ws::subscribe(&pds.world, &pds.sequencer, Some(pds.index), query, upgrade)
}

/// `GET /xrpc/{nsid}`: the queries.
async fn xrpc_get(State(pds): State<Pds>, Path(nsid): Path<String>, query: Params) -> Response {
    pds.world.count(&nsid);
    if nsid.starts_with("com.atproto.sync.")
        && let Some(secs) = pds.world.take_rate_limit(pds.index)
    {
        return XrpcError::rate_limited(secs).into_response();
    }
    query_method(&pds, &nsid, &query).await.unwrap_or_else(IntoResponse::into_response)
}

async fn query_method(pds: &Pds, nsid: &str, p: &Params) -> XrpcResult {
    match nsid {
        "com.atproto.sync.getRepo" => sync::get_repo(pds, p).await,
        "com.atproto.sync.getLatestCommit" => sync::get_latest_commit(pds, p).await,
        "com.atproto.sync.getRepoStatus" => sync::get_repo_status(pds, p),
        "com.atproto.sync.listRepos" => listing::list_repos(&pds.world, Some(pds.index), p).await,
        "com.atproto.repo.describeRepo" => repo::describe_repo(pds, p),
        "com.atproto.repo.listRecords" => repo::list_records(pds, p),
        "com.atproto.repo.getRecord" => repo::get_record(pds, p),
        "com.atproto.identity.resolveHandle" => resolve_handle(&pds.world, p),
        other => Err(XrpcError::not_implemented(other)),
    }
}

/// `POST /xrpc/{nsid}`: the write procedures (no auth).
async fn xrpc_post(State(pds): State<Pds>, Path(nsid): Path<String>, body: Bytes) -> Response {
    pds.world.count(&nsid);
    let result = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(input) => match nsid.as_str() {
            "com.atproto.repo.createRecord" => write::create_record(&pds, &input),
            "com.atproto.repo.putRecord" => write::put_record(&pds, &input),
            "com.atproto.repo.deleteRecord" => write::delete_record(&pds, &input),
            other => Err(XrpcError::not_implemented(other)),
        },
        Err(e) => Err(XrpcError::invalid(format!("request body is not JSON: {e}"))),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /u/{seed}/did.json`: the document of this host's `did:web` account for `seed`.
async fn did_web(State(pds): State<Pds>, Path(seed): Path<String>) -> Response {
    pds.world.count(DID_WEB_RESOLVE);
    let doc = seed.parse::<u64>().ok().and_then(|seed| {
        let did = pds.world.did_for(&AccountSpec { seed, pds: pds.index, did_web: true, ..Default::default() });
        let url = &pds.world.hosts[pds.index].url;
        pds.world.read(&did, |a| (!a.identity_removed).then(|| diddoc::did_document(a, url))).flatten()
    });
    match doc {
        Some(doc) => axum::Json(doc).into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
