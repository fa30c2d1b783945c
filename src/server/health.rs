//! `GET /health`: 200 with what is running, for load balancers and humans (the status page at
//! `/`, in `status/`, is for people).

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::ServerState;

pub(super) fn routes() -> Router<Arc<ServerState>> {
    Router::new().route("/health", get(health))
}

/// The filter in force and what became of the file's saves: `error` names the file, line and
/// reason while the last save stands refused.
fn filter_status(state: &ServerState) -> serde_json::Value {
    let saves = state.pipeline.filter().saves();
    json!({
        "mode": state.pipeline.filter().load().filter.mode.as_str(),
        "saves_accepted": saves.accepted,
        "saves_refused": saves.refused,
        "error": saves.error.map(|e| e.to_string()),
    })
}

/// Each index's state: `ready`, or `building` with its phase and the records read of about how
/// many.
fn index_status(state: &ServerState) -> serde_json::Value {
    let store = state.store();
    let indexes: serde_json::Map<String, serde_json::Value> = store
        .index_progress()
        .into_iter()
        .map(|(name, (index, p))| {
            let value = match store.build_state(&index, &p) {
                None => json!({"state": "ready", "entries": p.entries}),
                Some(b) => json!({"state": "building", "phase": b.phase.as_str(), "done": b.done, "total": b.total}),
            };
            (name, value)
        })
        .collect();
    serde_json::Value::Object(indexes)
}

async fn health(axum::extract::State(state): axum::extract::State<Arc<ServerState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "events": state.store().next_event_id() - 1,
        "backfill": state.backfill.is_some(),
        "firehose": state.firehose.as_ref().map(|f| json!({"cursor": f.safe_cursor(), "in_flight": f.in_flight()})),
        "filter": filter_status(&state),
        "indexes": index_status(&state),
        "shard": state.config.cluster.shard.to_string(),
        "nats": state.sink.as_ref().map(|s| json!({
            "published": s.published(),
            "behind": s.behind(),
            "connected": s.connected(),
            "duplicates": s.duplicates(),
            "error": s.last_error(),
        })),
    }))
}
