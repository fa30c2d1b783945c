//! `GET /health`: 200 with what is running, for load balancers and humans; `GET /`: a few
//! lines saying what answers here, for whoever opens the address in a browser.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::ServerState;

pub(super) fn routes() -> Router<Arc<ServerState>> {
    Router::new().route("/health", get(health)).route("/", get(index))
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

/// Each index's state: `ready`, or `building` with the records read of about how many.
fn index_status(state: &ServerState) -> serde_json::Value {
    let store = state.store();
    let indexes: serde_json::Map<String, serde_json::Value> = store
        .index_progress()
        .into_iter()
        .map(|(name, (index, p))| {
            let value = match p.building {
                None => json!({"state": "ready", "entries": p.entries}),
                Some(build) => {
                    let (done, total) = store.build_progress(&index, &build);
                    json!({"state": "building", "done": done, "total": total})
                }
            };
            (name, value)
        })
        .collect();
    serde_json::Value::Object(indexes)
}

/// Names the service and its endpoints, as a PDS's root page does.
async fn index() -> String {
    let ns = super::NS;
    format!(
        "sluice {}: an AT Protocol indexer\n\n\
         GET /health                                  what is running\n\
         GET /metrics                                 Prometheus metrics\n\
         GET /xrpc/{ns}.subscribeEvents?cursor=N   the event log (websocket)\n\
         GET /subscribe                               the same, as Jetstream v1 (websocket)\n\
         GET /xrpc/com.atproto.repo.getRecord, listRecords, describeRepo; com.atproto.sync.listRepos, getRepoStatus\n\
         GET /xrpc/{ns}.getRepoState, getStats, getBacklinks\n\
         GET /xrpc/{ns}.queryIndex, countIndex, describeIndexes   the filter's [indexes]\n",
        env!("CARGO_PKG_VERSION")
    )
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
