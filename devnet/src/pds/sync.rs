//! A PDS host's `com.atproto.sync` queries: getRepo (the signed CAR, with injected failures),
//! getLatestCommit and getRepoStatus. (listRepos is in `relay::listing`, shared with the relay.)

use axum::body::Body;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;
use sluice::xrpc::{Params, XrpcError, XrpcResult, ok_json};

use super::host::Pds;
use crate::world::cache::Built;
use crate::world::state::AccountStatus;

/// `com.atproto.sync.getRepo?did=`: the whole repo as a CAR (`since` is ignored).
pub(crate) async fn get_repo(pds: &Pds, p: &Params) -> XrpcResult {
    let did = p.req("did")?;
    let fail = pds.with_repo(did, |a| {
        let fail = a.fail_next > 0;
        a.fail_next = a.fail_next.saturating_sub(1);
        fail
    })?;
    if fail {
        return Err(XrpcError::internal("Internal Server Error (devnet: injected failure)"));
    }
    let built = current(pds, did).await?;
    let headers = [(header::CONTENT_TYPE, "application/vnd.ipld.car")];
    Ok((headers, Body::from(built.car.clone())).into_response())
}

/// `com.atproto.sync.getLatestCommit?did=` -> `{cid, rev}`.
pub(crate) async fn get_latest_commit(pds: &Pds, p: &Params) -> XrpcResult {
    let did = p.req("did")?;
    pds.with_repo(did, |_| ())?;
    let built = current(pds, did).await?;
    ok_json(json!({"cid": built.head.to_string(), "rev": built.rev}))
}

/// `com.atproto.sync.getRepoStatus?did=` -> `{did, active, status?, rev?}` (rev when active).
pub(crate) fn get_repo_status(pds: &Pds, p: &Params) -> XrpcResult {
    let did = p.req("did")?;
    let found = pds
        .world
        .read(did, |a| (a.pds == pds.index && a.status != AccountStatus::Deleted).then(|| (a.status, a.rev.clone())));
    let Some((status, rev)) = found.flatten() else { return Err(XrpcError::repo_not_found(did)) };
    let mut out = json!({"did": did, "active": status == AccountStatus::Active});
    match status.as_str() {
        Some(s) => out["status"] = json!(s),
        None => out["rev"] = json!(rev),
    }
    ok_json(out)
}

/// The current export of `did`.
async fn current(pds: &Pds, did: &str) -> Result<std::sync::Arc<Built>, XrpcError> {
    match pds.world.built(did).await {
        None => Err(XrpcError::repo_not_found(did)),
        Some(Err(e)) => Err(XrpcError::internal(sluice::error::chain(&e).to_string())),
        Some(Ok(b)) => Ok(b),
    }
}
