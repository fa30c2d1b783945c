//! A fake PDS host: XRPC under `/xrpc/{nsid}` for its own accounts, `did:web` documents under
//! `/u/{seed}/did.json`, and `POST /devnet/createAccount`. The methods live in `pds_sync`,
//! `pds_repo`, `pds_write` and `firehose_ws` (subscribeRepos); this file routes, counts,
//! rate-limits and checks repo status.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::world::{AccountSpec, AccountState, World};
use super::{diddoc, firehose_ws, pds_repo, pds_sync, pds_write};
use crate::xrpc::{Params, XrpcError, XrpcResult};

/// The request-count key of a `did:web` document fetch.
pub const DID_WEB_RESOLVE: &str = "did.json";

/// One PDS host: the shared world and this host's index.
#[derive(Clone)]
pub(crate) struct Pds {
    pub world: Arc<World>,
    pub index: usize,
}

/// Routes of PDS host `index`.
pub(crate) fn router(world: Arc<World>, index: usize) -> Router {
    Router::new()
        .route("/xrpc/com.atproto.sync.subscribeRepos", get(subscribe_repos))
        .route("/xrpc/{nsid}", get(xrpc_get).post(xrpc_post))
        .route("/u/{seed}/did.json", get(did_web))
        .route("/devnet/createAccount", post(pds_write::create_account))
        .with_state(Pds { world, index })
}

/// `GET /xrpc/com.atproto.sync.subscribeRepos`: this host's accounts' events (a websocket).
async fn subscribe_repos(
    State(pds): State<Pds>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: WebSocketUpgrade,
) -> Response {
    firehose_ws::subscribe(&pds.world, Some(pds.index), query, ws)
}

/// `GET /xrpc/{nsid}`: the queries.
async fn xrpc_get(
    State(pds): State<Pds>,
    Path(nsid): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    pds.world.count(&nsid);
    if nsid.starts_with("com.atproto.sync.")
        && let Some(secs) = pds.world.take_rate_limit(pds.index)
    {
        return XrpcError::rate_limited(secs).into_response();
    }
    let result = match Params::from_query(query) {
        Ok(p) => query_method(&pds, &nsid, &p).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn query_method(pds: &Pds, nsid: &str, p: &Params) -> XrpcResult {
    match nsid {
        "com.atproto.sync.getRepo" => pds_sync::get_repo(pds, p).await,
        "com.atproto.sync.getLatestCommit" => pds_sync::get_latest_commit(pds, p).await,
        "com.atproto.sync.getRepoStatus" => pds_sync::get_repo_status(pds, p),
        "com.atproto.sync.listRepos" => super::listing::list_repos(&pds.world, Some(pds.index), p).await,
        "com.atproto.repo.describeRepo" => pds_repo::describe_repo(pds, p),
        "com.atproto.repo.listRecords" => pds_repo::list_records(pds, p),
        "com.atproto.repo.getRecord" => pds_repo::get_record(pds, p),
        "com.atproto.identity.resolveHandle" => pds_repo::resolve_handle(&pds.world, p),
        other => Err(XrpcError::not_implemented(other)),
    }
}

/// `POST /xrpc/{nsid}`: the write procedures (no auth).
async fn xrpc_post(State(pds): State<Pds>, Path(nsid): Path<String>, body: Bytes) -> Response {
    pds.world.count(&nsid);
    let result = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(input) => match nsid.as_str() {
            "com.atproto.repo.createRecord" => pds_write::create_record(&pds, &input),
            "com.atproto.repo.putRecord" => pds_write::put_record(&pds, &input),
            "com.atproto.repo.deleteRecord" => pds_write::delete_record(&pds, &input),
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

impl Pds {
    /// Runs `f` on `did`'s account when it is hosted here and readable (active); otherwise the
    /// XRPC error its status calls for.
    pub fn with_repo<R>(&self, did: &str, f: impl FnOnce(&mut AccountState) -> R) -> Result<R, XrpcError> {
        self.world
            .update(did, |a| {
                if a.pds != self.index {
                    return Err(XrpcError::repo_not_found(did));
                }
                status_error(did, a.status).map_or(Ok(()), Err)?;
                Ok(f(a))
            })
            .unwrap_or_else(|| Err(XrpcError::repo_not_found(did)))
    }

    /// The DID of a `repo` parameter when that account is hosted here and active: what the
    /// reference PDS's `getDidForActor` gives `listRecords` and `getRecord`.
    pub fn available(&self, repo: &str) -> Option<String> {
        let did = self.resolve_repo(repo).ok()?;
        self.world
            .read(&did, |a| a.pds == self.index && a.status == super::world::AccountStatus::Active)
            .filter(|ok| *ok)?;
        Some(did)
    }

    /// The DID for a `repo` parameter (a DID, or a handle of an account on this host).
    pub fn resolve_repo(&self, repo: &str) -> Result<String, XrpcError> {
        if repo.starts_with("did:") {
            return Ok(repo.to_string());
        }
        let mut found = None;
        self.world.scan(None, |a| {
            if a.pds == self.index && a.handle.eq_ignore_ascii_case(repo) {
                found = Some(a.account.did.clone());
            }
            found.is_none()
        });
        found.ok_or_else(|| XrpcError::invalid(format!("Could not find repo: {repo}")))
    }
}

/// The error a repo read gets for an account with `status`; `None` when active.
pub(crate) fn status_error(did: &str, status: super::world::AccountStatus) -> Option<XrpcError> {
    let (error, what) = match status {
        super::world::AccountStatus::Active => return None,
        super::world::AccountStatus::Deleted => return Some(XrpcError::repo_not_found(did)),
        super::world::AccountStatus::Deactivated => ("RepoDeactivated", "deactivated"),
        super::world::AccountStatus::Takendown => ("RepoTakendown", "takendown"),
        super::world::AccountStatus::Suspended => ("RepoSuspended", "suspended"),
    };
    Some(XrpcError::new(axum::http::StatusCode::BAD_REQUEST, error, format!("Repo has been {what}: {did}")))
}
