//! The status as text for a terminal (`sluice status`): the page's figures, a few lines per part.

use std::fmt::Write as _;
use std::time::Duration;

use super::model::{BackfillStatus, EventLogStatus, FilterStatus, LiveStatus, Status};
use crate::units::{count, duration, rate};

/// `status` as lines of text.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "sluice {}, up {}, as of {}", status.version, secs(status.uptime_secs as f64), status.at);
    let repos: Vec<String> =
        status.repos.iter().filter(|(_, n)| **n != 0).map(|(s, n)| format!("{} {s}", count(*n as u64))).collect();
    let _ = writeln!(
        out,
        "repos: {}; records: {} in {} collection(s)",
        if repos.is_empty() { "none".into() } else { repos.join(", ") },
        count(status.records_total),
        status.records.len()
    );
    if let Some(b) = &status.backfill {
        backfill(&mut out, b);
    }
    if let Some(l) = &status.live {
        live(&mut out, l);
    }
    if let Some(n) = &status.nats {
        let _ = writeln!(
            out,
            "nats: {}, published up to {}, {} behind{}",
            if n.connected { "connected" } else { "not connected" },
            n.published,
            count(n.behind),
            n.error.as_deref().map(|e| format!("; error: {e}")).unwrap_or_default()
        );
    }
    events(&mut out, &status.events);
    filter(&mut out, &status.filter);
    for ix in &status.indexes {
        let _ = writeln!(
            out,
            "index {} ({}): {}, {} {}, {} skipped",
            ix.name,
            ix.collection,
            ix.state,
            count(ix.entries.max(0) as u64),
            if ix.entries == 1 { "entry" } else { "entries" },
            count(ix.skipped.max(0) as u64)
        );
    }
    for r in &status.refused {
        let _ = writeln!(out, "refused by {}: {} {}", r.by, count(r.count), r.reason);
    }
    out
}

fn secs(s: f64) -> String {
    duration(Duration::from_secs_f64(s.max(0.0)))
}

fn backfill(out: &mut String, b: &BackfillStatus) {
    let eta = match (b.listed_all, b.eta_secs) {
        (false, _) => "the crawl is still listing repos".to_string(),
        (true, Some(0)) => "done".to_string(),
        (true, Some(eta)) => format!("{} left", secs(eta as f64)),
        (true, None) => "no rate yet".to_string(),
    };
    let _ = writeln!(
        out,
        "backfill: {} of {} repos done, {} in flight; {} records ({}/s now, {}/s on average over {}); {eta}; \
         {} failed attempts{}",
        count(b.done),
        count(b.total),
        count(b.in_flight),
        count(b.records),
        rate(b.records_per_sec),
        rate(b.records_per_sec_average),
        secs(b.work_secs),
        count(b.failed_attempts),
        b.paused.as_deref().map(|p| format!(" [paused: {p}]")).unwrap_or_default()
    );
    for h in &b.failing_hosts {
        let paused = if h.paused { ", paused" } else { "" };
        let _ =
            writeln!(out, "  failing host {}: {} failures{paused}; last: {}", h.host, count(h.failures), h.last_reason);
    }
}

fn live(out: &mut String, l: &LiveStatus) {
    let _ = writeln!(
        out,
        "live: {}, seq {}, {}, {} commits/s{}",
        if l.connected { "connected" } else { "not connected" },
        l.cursor,
        l.behind_secs.map_or("no frame yet".into(), |b| format!("{} behind", secs(b))),
        rate(l.commits_per_sec),
        l.last_drop.as_deref().map(|d| format!("; last disconnect: {d}")).unwrap_or_default()
    );
}

fn events(out: &mut String, e: &EventLogStatus) {
    let _ = writeln!(
        out,
        "events: last {}, {} kept ({} flushed to disk){}, {}/s",
        e.last,
        count(e.kept),
        crate::units::bytes(e.disk_bytes),
        match (&e.oldest, &e.oldest_at) {
            (Some(id), Some(at)) => format!(" from {id} ({at})"),
            (Some(id), None) => format!(" from {id}"),
            _ => String::new(),
        },
        rate(e.events_per_sec)
    );
}

fn filter(out: &mut String, f: &FilterStatus) {
    let _ = writeln!(
        out,
        "filter: {} mode, collections {}{}{}",
        f.mode,
        list(&f.collections),
        if f.signals.is_empty() { String::new() } else { format!(", signals {}", list(&f.signals)) },
        f.last_reload.as_deref().map(|t| format!("; reloaded {t}")).unwrap_or_default()
    );
    if let Some(r) = &f.refusal {
        let _ = writeln!(out, "  the last save was refused (the filter above stays in force): {}", r.reason);
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "none".into() } else { items.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::status::model::*;

    #[test]
    fn the_text_names_each_part() {
        let status = Status {
            version: "0.1.0".into(),
            repos: [("synced".to_string(), 20), ("pending".to_string(), 0)].into(),
            records_total: 1500,
            backfill: Some(BackfillStatus {
                done: 20,
                total: 20,
                listed_all: true,
                eta_secs: Some(0),
                records: 1500,
                records_per_sec_average: 750.0,
                work_secs: 2.0,
                failing_hosts: vec![FailingHost {
                    host: "http://127.0.0.1:9".into(),
                    failures: 3,
                    last_reason: "connection refused".into(),
                    paused: true,
                }],
                ..Default::default()
            }),
            filter: FilterStatus {
                mode: "signal".into(),
                signals: vec!["xyz.statusphere.status".into()],
                refusal: Some(FilterRefusal { reason: "f.toml:2: bad".into(), at: None }),
                ..Default::default()
            },
            indexes: vec![IndexStatus {
                name: "latest_status".into(),
                collection: "xyz.statusphere.status".into(),
                state: "ready".into(),
                entries: 1,
                skipped: 1,
                ..Default::default()
            }],
            refused: vec![Refused { by: "record rule".into(), reason: "too_large".into(), count: 2 }],
            ..Default::default()
        };
        let text = render(&status);
        for want in [
            "repos: 20 synced; records: 1,500",
            "backfill: 20 of 20 repos done",
            "750/s on average over 2.0 s); done",
            "failing host http://127.0.0.1:9: 3 failures, paused; last: connection refused",
            "filter: signal mode, collections none, signals xyz.statusphere.status",
            "refused (the filter above stays in force): f.toml:2: bad",
            "refused by record rule: 2 too_large",
            "index latest_status (xyz.statusphere.status): ready, 1 entry, 1 skipped",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert!(!text.contains("live:") && !text.contains("nats:"), "parts that do not run are left out");
    }
}
