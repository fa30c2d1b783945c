//! The status page: `GET /` (HTML, CSS and a little script served from the binary, no build
//! step and nothing fetched from elsewhere), `GET /status.json` (what it shows, for the page's
//! script and `sluice status`), and the samples behind its rates and charts.
//!
//! - `model`: the snapshot's shape; `gather` below fills it from the running service.
//! - `history`: counters sampled every 5 s for an hour (rates now, and the charts).
//! - `page`: the HTML, complete without the script; `status.js` refreshes it from the JSON.
//! - `text`: the same summary for a terminal (`sluice status`).

pub mod history;
pub mod model;
mod page;
pub mod text;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::ServerState;
use crate::syntax::datetime_from_ms;
use history::Sample;
use model::*;

/// The hosts the page lists as failing, at most.
const FAILING_HOSTS: usize = 10;

pub(super) fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/", get(index))
        .route("/status.json", get(json))
        .route("/status.js", get(|| async { asset("text/javascript; charset=utf-8", page::SCRIPT) }))
        .route("/status.css", get(|| async { asset("text/css; charset=utf-8", page::STYLE) }))
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

async fn index(State(state): State<Arc<ServerState>>) -> Response {
    match snapshot(state).await {
        Ok(status) => Html(page::render(&status)).into_response(),
        Err(e) => e,
    }
}

async fn json(State(state): State<Arc<ServerState>>) -> Response {
    match snapshot(state).await {
        Ok(status) => ([(header::CACHE_CONTROL, "no-store")], Json(status)).into_response(),
        Err(e) => e,
    }
}

/// [`gather`] off the server's workers (it reads the store).
async fn snapshot(state: Arc<ServerState>) -> Result<Status, Response> {
    tokio::task::spawn_blocking(move || gather(&state))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("gathering the status failed: {e}")).into_response())
}

/// The whole service now.
pub fn gather(state: &ServerState) -> Status {
    let now = Sample::take(state);
    let since = state.status_samples.before(now.at).unwrap_or(now);
    let (repos, records) = state.store().repos_and_records();
    Status {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: state.started.elapsed().as_secs(),
        at: datetime_from_ms(crate::store::values::now_ms()),
        records_total: records.values().sum::<i64>().max(0) as u64,
        repos,
        records,
        backfill: backfill(state, &now, &since),
        live: live(state, &now, &since),
        nats: state.sink.as_ref().map(|s| NatsStatus {
            connected: s.connected(),
            published: s.published(),
            behind: s.behind(),
            error: s.last_error(),
        }),
        events: event_log(state, &now, &since),
        filter: filter(state),
        indexes: indexes(state),
        refused: refused(state),
        history: state.status_samples.history(),
    }
}

fn backfill(state: &ServerState, now: &Sample, since: &Sample) -> Option<BackfillStatus> {
    let (control, snapshot) = (state.backfill.as_ref()?, now.backfill?);
    let progress = control.progress();
    let listed = control.listed();
    let listed_all = progress.listed.load(Ordering::Relaxed);
    let repos_per_sec = now.repos_per_sec_since(since);
    let left = listed.total.saturating_sub(listed.done);
    let rate = if repos_per_sec > 0.0 { repos_per_sec } else { snapshot.average_repos_per_sec() };
    let eta_secs = match (listed_all, left) {
        (false, _) => None,
        (true, 0) => Some(0),
        (true, left) if rate > 0.0 => Some((left as f64 / rate).ceil() as u64),
        _ => None,
    };
    let paused = if control.is_paused() {
        Some("operator")
    } else if progress.memory_paused.load(Ordering::Relaxed) {
        Some("memory")
    } else if progress.idle_paused.load(Ordering::Relaxed) {
        Some("live backlog")
    } else {
        None
    };
    Some(BackfillStatus {
        done: listed.done,
        total: listed.total,
        listed_all,
        in_flight: snapshot.in_flight,
        records: snapshot.records,
        records_per_sec: now.records_per_sec_since(since),
        records_per_sec_average: snapshot.average_records_per_sec(),
        repos_per_sec,
        work_secs: snapshot.work_time().as_secs_f64(),
        eta_secs,
        failed_attempts: snapshot.failed,
        paused: paused.map(String::from),
        failing_hosts: control
            .failing_hosts(FAILING_HOSTS)
            .into_iter()
            .map(|h| FailingHost { host: h.host, failures: h.failures, last_reason: h.last_reason, paused: h.paused })
            .collect(),
        failures: control
            .failure_summary()
            .into_iter()
            .map(|g| FailureGroup { kind: g.kind.as_str().into(), reason: g.reason, repos: g.repos })
            .collect(),
    })
}

fn live(state: &ServerState, now: &Sample, since: &Sample) -> Option<LiveStatus> {
    let firehose = state.firehose.as_ref()?;
    let m = firehose.live().metrics();
    let last_frame_us = m.last_frame_time_us.load(Ordering::Relaxed);
    Some(LiveStatus {
        connected: firehose.connected(),
        cursor: firehose.safe_cursor(),
        behind_secs: (last_frame_us > 0).then(|| m.lag_us.load(Ordering::Relaxed) as f64 / 1e6),
        last_frame_at: (last_frame_us > 0).then(|| datetime_from_ms(last_frame_us / 1000)),
        commits_per_sec: now.commits_per_sec_since(since),
        applied: now.applied,
        last_drop: firehose.last_drop(),
    })
}

fn event_log(state: &ServerState, now: &Sample, since: &Sample) -> EventLogStatus {
    let (store, last) = (state.store(), now.events);
    let oldest = store.log().oldest_id().ok().flatten();
    let oldest_at = oldest
        .and_then(|id| store.log().from_with_times(id, 1).ok())
        .and_then(|events| events.first().map(|(_, time_us, _)| *time_us))
        .filter(|us| *us > 0)
        .map(|us| datetime_from_ms(us / 1000));
    EventLogStatus {
        last,
        kept: oldest.map_or(0, |o| last.saturating_sub(o) + 1),
        disk_bytes: store.log().disk_bytes(),
        oldest,
        oldest_at,
        events_per_sec: now.events_per_sec_since(since),
    }
}

fn filter(state: &ServerState) -> FilterStatus {
    let in_force = state.pipeline.filter().load();
    let f = &in_force.filter;
    let saves = state.pipeline.filter().saves();
    FilterStatus {
        path: state.config.filter.path.display().to_string(),
        mode: f.mode.as_str().into(),
        // No collections named stores every collection.
        collections: if f.collections.is_empty() { vec!["*".into()] } else { f.collections.clone() },
        signals: f.signals.clone(),
        indexes: f.indexes.iter().map(|i| i.name.clone()).collect(),
        saves_accepted: saves.accepted,
        saves_refused: saves.refused,
        last_reload: saves.accepted_at_ms.map(datetime_from_ms),
        refusal: saves
            .error
            .map(|e| FilterRefusal { reason: e.to_string(), at: saves.refused_at_ms.map(datetime_from_ms) }),
    }
}

/// Each declared index's state and totals, by name.
fn indexes(state: &ServerState) -> Vec<IndexStatus> {
    let store = state.store();
    let progress = store.index_progress();
    progress
        .into_values()
        .map(|(index, p)| {
            let build = store.build_state(&index, &p).map(|b| IndexBuildStatus {
                phase: b.phase.as_str().into(),
                done: b.done,
                total: b.total,
            });
            let moving = index.moving_repos() as u64;
            IndexStatus {
                name: index.spec.name.clone(),
                collection: index.spec.collection.clone(),
                state: index_state(build.as_ref(), moving),
                build,
                entries: p.entries,
                skipped: p.skipped,
                moving,
            }
        })
        .collect()
}

/// An index's state as text: `ready`, or `building (phase): done of total records`, and, while
/// `moving` repos' counts move, `; counts of N repos moving`.
fn index_state(build: Option<&IndexBuildStatus>, moving: u64) -> String {
    let state = match build {
        None => "ready".into(),
        Some(b) => {
            let (done, total) = (crate::units::count(b.done), crate::units::count(b.total));
            format!("building ({}): {done} of {total} records", b.phase)
        }
    };
    match moving {
        0 => state,
        1 => format!("{state}; counts of 1 repo moving"),
        n => format!("{state}; counts of {} repos moving", crate::units::count(n)),
    }
}

/// Everything refused since start, by what refused it and why, non-zero counts only.
fn refused(state: &ServerState) -> Vec<Refused> {
    let m = state.pipeline.metrics();
    let mut rows: Vec<Refused> = sluice_handlers::rules::RecordRefusal::REASONS
        .iter()
        .map(|reason| Refused { by: "record rule".into(), reason: reason.to_string(), count: m.refused(reason) })
        .collect();
    for ((collection, reason), n) in m.records_rejected.lock().expect("rejection counts lock").iter() {
        rows.push(Refused { by: format!("lexicon {collection}"), reason: reason.clone(), count: *n });
    }
    for (index, reason, n) in state.store().index_skips() {
        rows.push(Refused { by: format!("index {index}"), reason: reason.as_str().into(), count: n });
    }
    if let Some(firehose) = &state.firehose {
        let refused = firehose.live().metrics().refused.load(Ordering::Relaxed);
        rows.push(Refused { by: "firehose".into(), reason: "refused frames".into(), count: refused });
        rows.push(Refused { by: "firehose".into(), reason: "malformed frames".into(), count: firehose.malformed() });
    }
    rows.retain(|r| r.count > 0);
    rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| (&a.by, &a.reason).cmp(&(&b.by, &b.reason))));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_state_says_ready_or_how_far_its_build_is() {
        assert_eq!(index_state(None, 0), "ready");
        let build = IndexBuildStatus { phase: "counts".into(), done: 12_345, total: 20_000 };
        assert_eq!(index_state(Some(&build), 0), "building (counts): 12,345 of 20,000 records");
        assert_eq!(index_state(None, 1), "ready; counts of 1 repo moving");
        assert_eq!(
            index_state(Some(&build), 2),
            "building (counts): 12,345 of 20,000 records; counts of 2 repos moving"
        );
    }
}
