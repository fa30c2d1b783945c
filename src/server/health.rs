//! `GET /health`: 200 with what is running, for load balancers and humans.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::ServerState;

pub(super) fn routes() -> Router<Arc<ServerState>> {
    Router::new().route("/health", get(health))
}

async fn health(axum::extract::State(state): axum::extract::State<Arc<ServerState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "events": state.store().next_event_id() - 1,
        "backfill": state.backfill.is_some(),
        "firehose": state.firehose.as_ref().map(|f| json!({"cursor": f.safe_cursor(), "in_flight": f.in_flight()})),
    }))
}
