//! `GET /metrics`: Prometheus text exposition. Events by kind, the backfill queue by state,
//! live ingestion (frames by outcome, cursor, lag), filter saves, stream clients and memory. Rates are for
//! Prometheus to take (`rate(sluice_events_total[1m])`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::ServerState;
use crate::store::RepoStatus;

pub(super) fn routes() -> Router<Arc<ServerState>> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render(&state))
}

/// One metric family, written as Prometheus text.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn start<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) -> &mut Self {
        let labels: Vec<String> =
            labels.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))).collect();
        let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
        let _ = writeln!(self.out, "{name}{labels} {value}");
        self
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// The declarative indexes: entries, records skipped, build progress, repos whose counts move,
/// and records given no entry since start by reason (a key or sort field missing, of another
/// type, too large...).
fn indexes(out: &mut String, state: &ServerState) {
    let store = state.store();
    let progress = store.index_progress();
    let name = "sluice_index_entries";
    let mut family = Family::start(out, name, "gauge", "Entries of each index (rows a query can return).");
    for (index, (_, p)) in &progress {
        family.sample(name, &[("index", index)], p.entries);
    }
    let name = "sluice_index_skipped_records";
    let mut family =
        Family::start(out, name, "gauge", "Stored records of each index's collection that have no entry in it.");
    for (index, (_, p)) in &progress {
        family.sample(name, &[("index", index)], p.skipped);
    }
    let name = "sluice_index_building";
    let mut family = Family::start(out, name, "gauge", "1 while an index is built from the stored records.");
    for (index, (_, p)) in &progress {
        family.sample(name, &[("index", index)], u8::from(p.building.is_some()));
    }
    let name = "sluice_index_build_counting";
    let mut family =
        Family::start(out, name, "gauge", "1 while a counted index's build sums its counts (its last phase).");
    for (index, (_, p)) in &progress {
        let counting = p.building.as_ref().is_some_and(|b| b.phase == crate::store::Phase::Counts);
        family.sample(name, &[("index", index)], u8::from(counting));
    }
    let name = "sluice_index_build_records";
    let mut family = Family::start(out, name, "gauge", "Records an index under construction has read so far.");
    for (index, (_, p)) in &progress {
        family.sample(name, &[("index", index)], p.building.as_ref().map_or(0, |b| b.done));
    }
    let name = "sluice_index_moving_repos";
    let mut family = Family::start(
        out,
        name,
        "gauge",
        "Repos hidden or shown again whose entries' counts an index still moves, a step at a time \
         (counts stay exact meanwhile).",
    );
    for (index, (ix, _)) in &progress {
        family.sample(name, &[("index", index)], ix.moving_repos());
    }
    let name = "sluice_index_skips_total";
    let mut family = Family::start(
        out,
        name,
        "counter",
        "Records given no entry in an index since start, by index and reason \
         (missing, wrong_type, too_large, too_many, unreadable).",
    );
    for (index, reason, n) in store.index_skips() {
        family.sample(name, &[("index", &index), ("reason", reason.as_str())], n);
    }
}

/// Records that failed their lexicon (`[lexicons]`), by collection and reason (the rule's
/// first word: `type`, `required`, `maxGraphemes`, `format`, `unknown`...).
fn records_rejected(out: &mut String, m: &crate::pipeline::PipelineMetrics) {
    let name = "sluice_records_rejected_total";
    let mut family = Family::start(
        out,
        name,
        "counter",
        "Records that failed their lexicon since start, by collection and reason \
         (with validate = \"drop\" not stored; with \"log\" stored all the same).",
    );
    for ((collection, reason), n) in m.records_rejected.lock().expect("rejection counts lock").iter() {
        family.sample(name, &[("collection", collection), ("reason", reason)], n);
    }
}

/// Every metric, as Prometheus text.
pub fn render(state: &ServerState) -> String {
    let mut out = String::with_capacity(4096);
    events(&mut out, state);
    repos(&mut out, state);
    fetch_hosts(&mut out, state);
    live(&mut out, state);
    sink(&mut out, state);
    filter(&mut out, state);
    indexes(&mut out, state);
    records_rejected(&mut out, state.pipeline.metrics());
    stream_clients(&mut out, state);
    let name = "sluice_resident_memory_bytes";
    let rss = crate::process::resident_bytes().unwrap_or(0);
    Family::start(&mut out, name, "gauge", "Resident memory of the process.").sample(name, &[], rss);
    let name = "sluice_block_cache_bytes";
    let cached = state.store().block_cache_bytes();
    Family::start(
        &mut out,
        name,
        "gauge",
        "Decompressed blocks the store's block cache holds (up to [storage] cache_mb).",
    )
    .sample(name, &[], cached);
    out
}

/// Event stream clients connected, and those refused by a cap ([`super::clients`]).
fn stream_clients(out: &mut String, state: &ServerState) {
    let clients = &state.clients;
    let name = "sluice_stream_clients";
    Family::start(out, name, "gauge", "Event stream clients connected (subscribeEvents and /subscribe).").sample(
        name,
        &[],
        clients.connected(),
    );
    let name = "sluice_stream_sending_bytes";
    Family::start(out, name, "gauge", "Bytes of events being sent to stream clients (each stream's batch in flight).")
        .sample(name, &[], clients.sending_bytes.load(Ordering::Relaxed));
    let name = "sluice_stream_clients_refused_total";
    Family::start(out, name, "counter", "Event stream clients refused, by the cap they were over.")
        .sample(name, &[("cap", "max_stream_clients")], clients.refused_total.load(Ordering::Relaxed))
        .sample(name, &[("cap", "max_stream_clients_per_ip")], clients.refused_per_ip.load(Ordering::Relaxed));
}

/// The filter file's saves: a refused one leaves the old filter in force, which only the log
/// said until now; alert on `sluice_filter_save_refused == 1`.
fn filter(out: &mut String, state: &ServerState) {
    let saves = state.pipeline.filter().saves();
    let name = "sluice_filter_saves_total";
    Family::start(
        out,
        name,
        "counter",
        "Saves of the filter file read since start, by result (refused ones leave the old filter in force).",
    )
    .sample(name, &[("result", "accepted")], saves.accepted)
    .sample(name, &[("result", "refused")], saves.refused);
    let name = "sluice_filter_save_refused";
    Family::start(
        out,
        name,
        "gauge",
        "1 while the filter file's last save stands refused (the filter in force is an older one).",
    )
    .sample(name, &[], u8::from(saves.error.is_some()));
}

fn events(out: &mut String, state: &ServerState) {
    let m = state.pipeline.metrics();
    let name = "sluice_events_total";
    Family::start(out, name, "counter", "Events written to the log since start, by kind (records by action).")
        .sample(name, &[("kind", "record"), ("action", "create")], load(&m.created))
        .sample(name, &[("kind", "record"), ("action", "update")], load(&m.updated))
        .sample(name, &[("kind", "record"), ("action", "delete")], load(&m.deleted))
        .sample(name, &[("kind", "identity")], load(&m.identity_events))
        .sample(name, &[("kind", "account")], load(&m.account_events));
    let name = "sluice_event_log_head";
    Family::start(out, name, "gauge", "Id of the last event in the log.").sample(
        name,
        &[],
        state.store().next_event_id() - 1,
    );
    let name = "sluice_event_log_oldest";
    let oldest = state.store().log().oldest_id().ok().flatten().unwrap_or(0);
    Family::start(
        out,
        name,
        "gauge",
        "Id of the oldest event in the log (older ones are past the retention; 0: none).",
    )
    .sample(name, &[], oldest);
    let name = "sluice_handler_errors_total";
    Family::start(out, name, "counter", "Handler errors and panics since start.").sample(
        name,
        &[],
        load(&m.handler_errors),
    );
    records_refused(out, m);
}

/// Records the record rule refused (not stored, no event), by reason, and stored records that
/// reads left out because they do not render (stored before the rule).
fn records_refused(out: &mut String, m: &crate::pipeline::PipelineMetrics) {
    let name = "sluice_records_refused_total";
    let mut family = Family::start(
        out,
        name,
        "counter",
        "Records refused by the record rule since start (not stored, no event), by reason: \
         too_large, too_deep, not_dag_cbor.",
    );
    for reason in sluice_handlers::rules::RecordRefusal::REASONS {
        family.sample(name, &[("reason", reason)], m.refused(reason));
    }
    let name = "sluice_records_unreadable_total";
    Family::start(
        out,
        name,
        "counter",
        "Stored records that getRecord or listRecords left out since start: they do not render \
         (stored before the record rule).",
    )
    .sample(name, &[], load(&m.records_unreadable));
}

fn repos(out: &mut String, state: &ServerState) {
    let name = "sluice_repos";
    let mut family = Family::start(
        out,
        name,
        "gauge",
        "Repos by state (the backfill queue is pending, error and desynchronized; \
         repos in flight stay pending, see sluice_backfill_in_flight).",
    );
    for status in RepoStatus::ALL {
        family.sample(name, &[("status", status.as_str())], state.store().repo_count(status));
    }
    if let Some(backfill) = &state.backfill {
        let name = "sluice_backfill_in_flight";
        Family::start(out, name, "gauge", "Repos being backfilled now.").sample(name, &[], backfill.in_flight());
        let name = "sluice_backfill_records_total";
        Family::start(out, name, "counter", "Records walked by the backfill since start.").sample(
            name,
            &[],
            backfill.records_walked(),
        );
        backfill_failures(out, backfill);
    }
}

/// Failed backfill attempts by kind: transient ones are retried after a backoff, permanent
/// ones wait until the repo changes.
fn backfill_failures(out: &mut String, backfill: &crate::backfill::Control) {
    let name = "sluice_backfill_failures_total";
    let mut family = Family::start(
        out,
        name,
        "counter",
        "Failed backfill attempts since start, by kind: transient (retried after a backoff) or \
         permanent (not retried until the repo changes).",
    );
    for (kind, attempts) in backfill.failed_attempts() {
        family.sample(name, &[("kind", kind.as_str())], attempts);
    }
}

fn sink(out: &mut String, state: &ServerState) {
    let Some(sink) = &state.sink else { return };
    let name = "sluice_nats_published_id";
    Family::start(out, name, "gauge", "The id of the last event the NATS stream acked.").sample(
        name,
        &[],
        sink.published(),
    );
    let name = "sluice_nats_behind_events";
    Family::start(out, name, "gauge", "Events in the log not yet published to NATS (retention keeps them).").sample(
        name,
        &[],
        sink.behind(),
    );
    let name = "sluice_nats_connected";
    Family::start(out, name, "gauge", "1 while publishing to NATS succeeds.").sample(
        name,
        &[],
        u8::from(sink.connected()),
    );
    let name = "sluice_nats_duplicates_total";
    Family::start(out, name, "counter", "Republished events the stream dropped as duplicates.").sample(
        name,
        &[],
        sink.duplicates(),
    );
    let name = "sluice_nats_batches_total";
    Family::start(out, name, "counter", "Batches of events read from the log and published together.").sample(
        name,
        &[],
        sink.batches(),
    );
}

fn live(out: &mut String, state: &ServerState) {
    let Some(firehose) = &state.firehose else { return };
    let m = firehose.live().metrics();
    let name = "sluice_firehose_frames_total";
    Family::start(out, name, "counter", "Firehose frames since start, by what became of them.")
        .sample(name, &[("outcome", "applied")], load(&m.applied))
        .sample(name, &[("outcome", "held")], load(&m.held))
        .sample(name, &[("outcome", "discovered")], load(&m.discovered))
        .sample(name, &[("outcome", "desynchronized")], load(&m.desynchronized))
        .sample(name, &[("outcome", "stale")], load(&m.stale))
        .sample(name, &[("outcome", "dropped")], load(&m.dropped))
        .sample(name, &[("outcome", "refused")], load(&m.refused))
        .sample(name, &[("outcome", "malformed")], firehose.malformed())
        .sample(name, &[("outcome", "other_shard")], firehose.other_shards());
    let name = "sluice_firehose_connected";
    Family::start(out, name, "gauge", "1 while a connection to the relay is open.").sample(
        name,
        &[],
        u8::from(firehose.connected()),
    );
    let name = "sluice_firehose_cursor";
    Family::start(out, name, "gauge", "The firehose seq everything up to which is applied.").sample(
        name,
        &[],
        firehose.safe_cursor(),
    );
    let name = "sluice_firehose_in_flight";
    Family::start(out, name, "gauge", "Frames received and not yet finished.").sample(name, &[], firehose.in_flight());
    let name = "sluice_firehose_lag_seconds";
    Family::start(out, name, "gauge", "How long after its time the latest frame was handled.").sample(
        name,
        &[],
        load(&m.lag_us) as f64 / 1e6,
    );
    let name = "sluice_firehose_last_frame_time_seconds";
    Family::start(out, name, "gauge", "The time of the latest frame handled (unix seconds; 0 before any).").sample(
        name,
        &[],
        load(&m.last_frame_time_us) as f64 / 1e6,
    );
}

/// The getRepo download path: hosts paused by their circuit breaker, the requests refused
/// meanwhile, and the spool's bytes (against `[limits] spool_max_mb`).
fn fetch_hosts(out: &mut String, state: &ServerState) {
    let Some(backfill) = &state.backfill else { return };
    let name = "sluice_backfill_hosts_paused";
    Family::start(out, name, "gauge", "PDS hosts paused by their circuit breaker after repeated transient failures.")
        .sample(name, &[], backfill.hosts_paused());
    let name = "sluice_backfill_host_refusals_total";
    Family::start(out, name, "counter", "getRepo requests refused since start because their host was paused.").sample(
        name,
        &[],
        backfill.host_refusals(),
    );
    let name = "sluice_backfill_spool_bytes";
    Family::start(out, name, "gauge", "Bytes spooled downloads hold in the spool (capped by spool_max_mb).").sample(
        name,
        &[],
        backfill.spool_bytes(),
    );
}
