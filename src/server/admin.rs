//! The admin API under `/admin`, for operators. Every route needs `Authorization: Bearer
//! <token>`, the token being the environment variable `[server] admin_token_env` names
//! (`SLUICE_ADMIN_TOKEN`); without one configured the routes do not exist (404).
//!
//! - `GET /admin/filter`, `PATCH /admin/filter` (JSON: any of `mode`, `signals`,
//!   `collections`, `exclude_collections`, `dids`, `exclude_dids`): the change is validated as
//!   a filter file is, takes effect at once and is written back to the filter file (as
//!   canonical TOML: comments are not kept). A widening edit queues repos as a file edit does.
//! - `POST /admin/repos/track` and `/untrack` (`{"dids": [...]}`): add to `dids` (and queue a
//!   backfill), or move to `exclude_dids`; `POST /admin/repos/resync`: queue a backfill now.
//! - `GET /admin/ingestion`, `POST /admin/ingestion/pause` and `/resume`: backfill and live
//!   ingestion stop taking new work (repos in flight finish; the firehose backs up).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ServerState;
use crate::filter::{Filter, Mode};
use crate::xrpc::{XrpcError, XrpcResult, ok_json};

pub(super) fn routes(state: &Arc<ServerState>) -> Router<Arc<ServerState>> {
    if state.admin_token.is_none() {
        return Router::new();
    }
    Router::new()
        .route("/admin/filter", get(get_filter).patch(patch_filter))
        .route("/admin/repos/track", post(track))
        .route("/admin/repos/untrack", post(untrack))
        .route("/admin/repos/resync", post(resync))
        .route("/admin/ingestion", get(ingestion))
        .route("/admin/ingestion/pause", post(pause))
        .route("/admin/ingestion/resume", post(resume))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
}

/// Refuses requests without the admin bearer token (compared in constant time).
async fn authorize(State(state): State<Arc<ServerState>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let want = state.admin_token.as_deref().unwrap_or_default();
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), want.as_bytes()) => next.run(request).await,
        Some(_) => XrpcError::unauthorized("the admin token is wrong").into_response(),
        None => XrpcError::unauthorized("admin routes need Authorization: Bearer <token>").into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The filter as JSON.
fn filter_json(f: &Filter) -> Value {
    json!({
        "mode": f.mode.as_str(),
        "signals": f.signals,
        "collections": f.collections,
        "exclude_collections": f.exclude_collections,
        "dids": f.dids,
        "exclude_dids": f.exclude_dids,
        "handlers": f.handlers.keys().collect::<Vec<_>>(),
    })
}

async fn get_filter(State(state): State<Arc<ServerState>>) -> XrpcResult {
    let compiled = state.pipeline.filter().load();
    ok_json(json!({"filter": filter_json(&compiled.filter), "toml": compiled.filter.to_toml()}))
}

/// `PATCH /admin/filter`: the fields given replace the filter's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterPatch {
    mode: Option<String>,
    signals: Option<Vec<String>>,
    collections: Option<Vec<String>>,
    exclude_collections: Option<Vec<String>>,
    dids: Option<Vec<String>>,
    exclude_dids: Option<Vec<String>>,
}

async fn patch_filter(State(state): State<Arc<ServerState>>, body: Bytes) -> XrpcResult {
    let patch: FilterPatch = parse_body(&body)?;
    let mode = match patch.mode.as_deref() {
        None => None,
        Some("full") => Some(Mode::Full),
        Some("signal") => Some(Mode::Signal),
        Some(other) => return Err(XrpcError::invalid(format!("mode must be \"full\" or \"signal\", not {other:?}"))),
    };
    let filter = edit_filter(&state, |f| {
        f.mode = mode.unwrap_or(f.mode);
        f.signals = patch.signals.unwrap_or(std::mem::take(&mut f.signals));
        f.collections = patch.collections.unwrap_or(std::mem::take(&mut f.collections));
        f.exclude_collections = patch.exclude_collections.unwrap_or(std::mem::take(&mut f.exclude_collections));
        f.dids = patch.dids.map_or(std::mem::take(&mut f.dids), |d| d.into_iter().collect());
        f.exclude_dids = patch.exclude_dids.map_or(std::mem::take(&mut f.exclude_dids), |d| d.into_iter().collect());
    })?;
    ok_json(json!({"filter": filter_json(&filter)}))
}

/// Applies `change` to the filter in force: validated as a filter file (by writing and
/// parsing it), then put in force and written back to the filter file, where only the fields
/// that changed are rewritten (comments and layout stay; a file that is not a valid filter is
/// replaced whole). Edits are serialized.
fn edit_filter(state: &ServerState, change: impl FnOnce(&mut Filter)) -> Result<Filter, XrpcError> {
    let _one_at_a_time = state.filter_edits.lock().expect("filter edit lock");
    let mut filter = state.pipeline.filter().load().filter.clone();
    change(&mut filter);
    let text = filter.to_toml();
    let (path, origin) = (&state.config.filter.path, state.config.filter.path.display().to_string());
    let checked = Filter::from_toml(&text, &origin)
        .map_err(|e| XrpcError::invalid(format!("the edited filter is invalid: {e}")))?;
    if let Ok(on_disk) = std::fs::read_to_string(path) {
        let text = crate::filter::rewrite_keeping_layout(&on_disk, &origin, &checked).unwrap_or(text);
        let tmp = path.with_extension("toml.admin-edit");
        std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| XrpcError::internal(format!("writing {}: {e}", path.display())))?;
    }
    state.pipeline.filter().store(checked.clone());
    tracing::info!(file = %path.display(), "filter changed through the admin API");
    Ok(checked)
}

/// `{"dids": [...]}`, each a valid DID.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Dids {
    dids: Vec<String>,
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, XrpcError> {
    serde_json::from_slice(body).map_err(|e| XrpcError::invalid(format!("the request body: {e}")))
}

fn parse_dids(body: &[u8]) -> Result<Vec<String>, XrpcError> {
    let Dids { dids } = parse_body(body)?;
    match dids.iter().find(|d| !crate::syntax::is_did(d)) {
        Some(bad) => Err(XrpcError::invalid(format!("{bad:?} is not a valid DID"))),
        None if dids.is_empty() => Err(XrpcError::invalid("dids is empty")),
        None => Ok(dids),
    }
}

async fn track(State(state): State<Arc<ServerState>>, body: Bytes) -> XrpcResult {
    let dids = parse_dids(&body)?;
    edit_filter(&state, |f| {
        for did in &dids {
            f.exclude_dids.remove(did);
            f.dids.insert(did.clone());
        }
    })?;
    let queued = queue(&state, &dids)?;
    ok_json(json!({"tracked": dids, "queued": queued}))
}

async fn untrack(State(state): State<Arc<ServerState>>, body: Bytes) -> XrpcResult {
    let dids = parse_dids(&body)?;
    edit_filter(&state, |f| {
        for did in &dids {
            f.dids.remove(did);
            f.exclude_dids.insert(did.clone());
        }
    })?;
    ok_json(json!({"untracked": dids}))
}

async fn resync(State(state): State<Arc<ServerState>>, body: Bytes) -> XrpcResult {
    let dids = parse_dids(&body)?;
    let queued = queue(&state, &dids)?;
    ok_json(json!({"queued": queued}))
}

/// Queues `dids` for backfill; 0 when this process runs no backfill.
fn queue(state: &ServerState, dids: &[String]) -> Result<usize, XrpcError> {
    match &state.backfill {
        Some(backfill) => backfill.queue(dids).map_err(|e| XrpcError::internal(crate::error::chain(&e).to_string())),
        None => Ok(0),
    }
}

fn ingestion_json(state: &ServerState) -> Value {
    json!({
        "backfill": state.backfill.as_ref().map(|b| json!({"paused": b.is_paused()})),
        "firehose": state.firehose.as_ref().map(|f| json!({"paused": f.is_paused(), "cursor": f.safe_cursor()})),
    })
}

async fn ingestion(State(state): State<Arc<ServerState>>) -> Json<Value> {
    Json(ingestion_json(&state))
}

fn set_paused(state: &ServerState, paused: bool) -> Json<Value> {
    if let Some(b) = &state.backfill {
        b.set_paused(paused);
    }
    if let Some(f) = &state.firehose {
        f.set_paused(paused);
    }
    tracing::info!(paused, "ingestion paused or resumed through the admin API");
    Json(ingestion_json(state))
}

async fn pause(State(state): State<Arc<ServerState>>) -> Json<Value> {
    set_paused(&state, true)
}

async fn resume(State(state): State<Arc<ServerState>>) -> Json<Value> {
    set_paused(&state, false)
}
