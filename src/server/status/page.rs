//! The status page's HTML. The layout is written once, here, as elements that name what they
//! show (`data-k` a value by its path in `/status.json`, `data-f` its format, `data-rows` a
//! table's rows, `data-show` a part shown only when its value is there, `data-chart` a rate's
//! history). This file fills them in on the server, so the page is whole without the script;
//! `status.js` fills the same elements again from `/status.json` every few seconds.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use super::model::Status;

/// The page's script.
pub const SCRIPT: &str = include_str!("status.js");
/// The page's style.
pub const STYLE: &str = include_str!("status.css");

/// The page for `status`.
pub fn render(status: &Status) -> String {
    let data = serde_json::to_value(status).expect("a status is JSON");
    let mut page = Page { data: &data, out: String::with_capacity(16 * 1024) };
    page.document();
    page.out
}

struct Page<'a> {
    data: &'a Value,
    out: String,
}

/// The value at dotted `path` (`backfill.records`), `Null` when absent.
fn lookup<'v>(data: &'v Value, path: &str) -> &'v Value {
    path.split('.').try_fold(data, |v, key| v.get(key)).unwrap_or(&Value::Null)
}

/// Whether a part showing `v` is shown: a value that is there (not null, false, empty).
fn present(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// `v` written in format `f` (the same formats as `status.js`'s `show`).
fn show(v: &Value, f: &str) -> String {
    let n = || v.as_f64().unwrap_or(0.0);
    match (v, f) {
        (Value::Null, _) => "none".into(),
        (_, "count") => crate::units::count(n().max(0.0) as u64),
        (_, "rate") => crate::units::rate(n()),
        (_, "secs") => crate::units::duration(Duration::from_secs_f64(n().max(0.0))),
        (_, "bytes") => crate::units::bytes(n().max(0.0) as u64),
        (Value::Bool(b), _) => if *b { "yes" } else { "no" }.into(),
        (Value::Array(items), _) if items.is_empty() => "none".into(),
        (Value::Array(items), _) => items.iter().map(|i| show(i, "text")).collect::<Vec<_>>().join(", "),
        (Value::String(s), _) => s.clone(),
        (other, _) => other.to_string(),
    }
}

/// HTML-escaped `s`.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Page<'_> {
    fn w(&mut self, s: &str) {
        self.out.push_str(s);
    }

    /// A value, as `<span data-k data-f>`.
    fn value(&mut self, path: &str, f: &str) {
        let text = esc(&show(lookup(self.data, path), f));
        let _ = write!(self.out, r#"<span data-k="{path}" data-f="{f}">{text}</span>"#);
    }

    /// A row of a definition list: `label` and the value at `path`.
    fn field(&mut self, label: &str, path: &str, f: &str) {
        let _ = write!(self.out, "<dt>{label}</dt><dd>");
        self.value(path, f);
        self.w("</dd>");
    }

    /// A part shown only while `path` holds a value.
    fn part(&mut self, tag: &str, path: &str, class: &str, body: impl FnOnce(&mut Self)) {
        let hidden = if present(lookup(self.data, path)) { "" } else { " hidden" };
        let _ = write!(self.out, r#"<{tag} class="{class}" data-show="{path}"{hidden}>"#);
        body(self);
        let _ = write!(self.out, "</{tag}>");
    }

    /// A table of the list (or the object, as key and value) at `path`; `cols` are
    /// `key:format:Heading`.
    fn table(&mut self, path: &str, cols: &[&str]) {
        self.w("<table><thead><tr>");
        for col in cols {
            let heading = col.rsplit(':').next().unwrap_or(col);
            let _ = write!(self.out, "<th>{heading}</th>");
        }
        let spec: Vec<&str> = cols.iter().map(|c| c.rsplit_once(':').map_or(*c, |(spec, _)| spec)).collect();
        let _ = write!(self.out, r#"</tr></thead><tbody data-rows="{path}" data-cols="{}">"#, spec.join(","));
        let rows = rows(lookup(self.data, path));
        if rows.is_empty() {
            let _ = write!(self.out, r#"<tr><td colspan="{}" class="none">none</td></tr>"#, cols.len());
        }
        for row in rows {
            self.w("<tr>");
            for col in &spec {
                let (key, f) = col.split_once(':').unwrap_or((col, "text"));
                let _ = write!(self.out, "<td>{}</td>", esc(&show(lookup(&row, key), f)));
            }
            self.w("</tr>");
        }
        self.w("</tbody></table>");
    }

    /// A chart of the rates at `path` (one per sample interval, oldest first).
    fn chart(&mut self, title: &str, path: &str) {
        let rates: Vec<f64> = lookup(self.data, path)
            .as_array()
            .map_or(Vec::new(), |a| a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect());
        let max = rates.iter().cloned().fold(0.0, f64::max);
        let _ = write!(
            self.out,
            r#"<figure><figcaption>{title} <span class="peak" data-peak="{path}">peak {}/s</span></figcaption>
<svg viewBox="0 0 360 60" preserveAspectRatio="none" role="img" aria-label="{title} over the last hour" data-chart="{path}"><polyline points="{}"/></svg></figure>"#,
            crate::units::rate(max),
            points(&rates, max)
        );
    }

    fn document(&mut self) {
        self.w(r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sluice status</title>
<link rel="stylesheet" href="/status.css">
<link rel="icon" href="data:,">
<noscript><meta http-equiv="refresh" content="10"></noscript>
</head><body>
<header><h1>sluice</h1><p>"#);
        self.value("version", "text");
        self.w(" · up ");
        self.value("uptime_secs", "secs");
        self.w(r#" · as of "#);
        self.value("at", "text");
        self.w(r#" <span id="state" class="state">live</span></p></header>
<main>"#);
        self.backfill();
        self.stored();
        self.live();
        self.events_and_sink();
        self.filter();
        self.indexes();
        self.refused();
        self.charts();
        self.w("</main>");
        self.footer();
        self.w("<script src=\"/status.js\"></script></body></html>\n");
    }

    fn backfill(&mut self) {
        self.part("section", "backfill", "card wide", |p| {
            p.w("<h2>Backfill</h2>");
            let (done, total) = (lookup(p.data, "backfill.done"), lookup(p.data, "backfill.total"));
            let pct = match (done.as_f64(), total.as_f64()) {
                (Some(d), Some(t)) if t > 0.0 => (100.0 * d / t).min(100.0),
                _ => 0.0,
            };
            let _ = write!(
                p.out,
                r#"<div class="meter"><i data-pct="backfill.done:backfill.total" style="width:{pct:.1}%"></i></div><dl>"#
            );
            p.w("<dt>Repos done</dt><dd>");
            p.value("backfill.done", "count");
            p.w(" of ");
            p.value("backfill.total", "count");
            p.part("span", "backfill.listed_all", "note", |p| p.w(" (all listed)"));
            p.w("</dd>");
            p.field("In flight", "backfill.in_flight", "count");
            p.field("Records", "backfill.records", "count");
            p.field("Records/s now", "backfill.records_per_sec", "rate");
            p.field("Records/s on average", "backfill.records_per_sec_average", "rate");
            p.field("Repos/s now", "backfill.repos_per_sec", "rate");
            p.field("Working for", "backfill.work_secs", "secs");
            p.field("Time left", "backfill.eta_secs", "secs");
            p.field("Failed attempts", "backfill.failed_attempts", "count");
            p.field("Paused", "backfill.paused", "text");
            p.w("</dl><h3>Failing hosts</h3>");
            p.table("backfill.failing_hosts", &[
                "host:text:Host",
                "failures:count:Failures",
                "paused:bool:Paused",
                "last_reason:text:Last reason",
            ]);
            p.w("<h3>Failed repos by reason</h3>");
            p.table("backfill.failures", &["repos:count:Repos", "kind:text:Kind", "reason:text:Reason"]);
        });
    }

    fn stored(&mut self) {
        self.w(r#"<section class="card"><h2>Repos</h2>"#);
        self.table("repos", &["key:text:Status", "value:count:Repos"]);
        self.w("</section><section class=\"card\"><h2>Records</h2><p>Total ");
        self.value("records_total", "count");
        self.w("</p>");
        self.table("records", &["key:text:Collection", "value:count:Records"]);
        self.w("</section>");
    }

    fn live(&mut self) {
        self.part("section", "live", "card", |p| {
            p.w("<h2>Live ingestion</h2><dl>");
            p.field("Connected", "live.connected", "bool");
            p.field("Seq", "live.cursor", "count");
            p.field("Behind", "live.behind_secs", "secs");
            p.field("Latest frame", "live.last_frame_at", "text");
            p.field("Commits/s", "live.commits_per_sec", "rate");
            p.field("Applied", "live.applied", "count");
            p.field("Last disconnect", "live.last_drop", "text");
            p.w("</dl>");
        });
    }

    fn events_and_sink(&mut self) {
        self.w("<section class=\"card\"><h2>Event log</h2><dl>");
        self.field("Last event", "events.last", "count");
        self.field("Oldest kept", "events.oldest", "count");
        self.field("Written at", "events.oldest_at", "text");
        self.field("Events kept", "events.kept", "count");
        self.field("On disk (flushed)", "events.disk_bytes", "bytes");
        self.field("Events/s", "events.events_per_sec", "rate");
        self.w("</dl></section>");
        self.part("section", "nats", "card", |p| {
            p.w("<h2>NATS sink</h2><dl>");
            p.field("Connected", "nats.connected", "bool");
            p.field("Published up to", "nats.published", "count");
            p.field("Behind", "nats.behind", "count");
            p.field("Error", "nats.error", "text");
            p.w("</dl>");
        });
    }

    fn filter(&mut self) {
        self.w("<section class=\"card wide\"><h2>Filter</h2>");
        self.part("div", "filter.refusal", "refusal", |p| {
            p.w("<strong>The last save was refused</strong>; the filter below stays in force: ");
            p.value("filter.refusal.reason", "text");
            p.w(" (");
            p.value("filter.refusal.at", "text");
            p.w(")");
        });
        self.w("<dl>");
        self.field("File", "filter.path", "text");
        self.field("Mode", "filter.mode", "text");
        self.field("Collections", "filter.collections", "list");
        self.field("Signals", "filter.signals", "list");
        self.field("Indexes", "filter.indexes", "list");
        self.field("Saves put in force", "filter.saves_accepted", "count");
        self.field("Saves refused", "filter.saves_refused", "count");
        self.field("Last reload", "filter.last_reload", "text");
        self.w("</dl></section>");
    }

    fn indexes(&mut self) {
        self.part("section", "indexes", "card wide", |p| {
            p.w("<h2>Indexes</h2>");
            p.table(
                "indexes",
                &[
                    "name:text:Index",
                    "collection:text:Collection",
                    "state:text:State",
                    "entries:count:Entries",
                    "skipped:count:Skipped",
                ],
            );
        });
    }

    fn refused(&mut self) {
        self.w("<section class=\"card wide\"><h2>Refused since start</h2>");
        self.table("refused", &["by:text:Refused by", "reason:text:Reason", "count:count:Count"]);
        self.w("</section>");
    }

    fn charts(&mut self) {
        self.w("<section class=\"card wide\"><h2>The last hour</h2><div class=\"charts\">");
        self.chart("Backfill records/s", "history.records_per_sec");
        self.chart("Live commits/s", "history.commits_per_sec");
        self.chart("Events/s", "history.events_per_sec");
        self.w("</div></section>");
    }

    fn footer(&mut self) {
        let ns = crate::server::NS;
        let _ = write!(
            self.out,
            r#"<footer><h2>Endpoints</h2><ul>
<li><a href="/status.json">/status.json</a>: this page's figures</li>
<li><a href="/health">/health</a>: what is running · <a href="/metrics">/metrics</a>: Prometheus</li>
<li>/xrpc/{ns}.subscribeEvents?cursor=N: the event log (websocket) · /subscribe: the same as Jetstream v1</li>
<li>/xrpc/com.atproto.repo.getRecord, listRecords, describeRepo · com.atproto.sync.listRepos, getRepoStatus</li>
<li><a href="/xrpc/{ns}.getStats">/xrpc/{ns}.getStats</a>, getRepoState, getBacklinks · queryIndex, countIndex, <a href="/xrpc/{ns}.describeIndexes">describeIndexes</a></li>
</ul></footer>"#
        );
    }
}

/// A table's rows: a list's items, or an object's entries as `{key, value}`.
fn rows(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.clone(),
        Value::Object(map) => map.iter().map(|(k, v)| serde_json::json!({"key": k, "value": v})).collect(),
        _ => Vec::new(),
    }
}

/// An SVG polyline's points for `rates` over a 360 x 60 box, the highest at the top.
fn points(rates: &[f64], max: f64) -> String {
    let step = 360.0 / (rates.len().max(2) - 1) as f64;
    let mut out = String::new();
    for (i, r) in rates.iter().enumerate() {
        let y = if max > 0.0 { 58.0 - 56.0 * r / max } else { 58.0 };
        let _ = write!(out, "{:.1},{y:.1} ", i as f64 * step);
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::status::model::*;

    fn status() -> Status {
        Status {
            version: "0.1.0".into(),
            repos: [("synced".to_string(), 1234), ("pending".to_string(), 0)].into(),
            records: [("app.bsky.feed.post".to_string(), 5678)].into(),
            records_total: 5678,
            indexes: vec![IndexStatus {
                name: "likes_by_subject".into(),
                collection: "app.bsky.feed.like".into(),
                state: "building (entries): 1,234 of 5,000 records".into(),
                entries: 1234,
                ..Default::default()
            }],
            filter: FilterStatus {
                mode: "full".into(),
                collections: vec!["app.bsky.*".into()],
                refusal: Some(FilterRefusal { reason: "f.toml:3: <bad> & worse".into(), at: None }),
                ..Default::default()
            },
            history: History { every_secs: 5, records_per_sec: vec![0.0, 10.0, 5.0], ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn the_page_shows_the_figures_without_a_script() {
        let html = render(&status());
        for want in [
            r#"<td>synced</td><td>1,234</td>"#,
            r#"<td>app.bsky.feed.post</td><td>5,678</td>"#,
            r#"data-k="filter.collections" data-f="list">app.bsky.*</span>"#,
            "f.toml:3: &lt;bad&gt; &amp; worse",
            r#"<polyline points="0.0,58.0 180.0,2.0 360.0,30.0"/>"#,
            "peak 10/s",
            "<td>likes_by_subject</td><td>app.bsky.feed.like</td><td>building (entries): 1,234 of 5,000 records</td>\
             <td>1,234</td><td>0</td>",
        ] {
            assert!(html.contains(want), "{want} missing from the page");
        }
        assert!(html.contains(r#"data-show="backfill" hidden"#), "no backfill here: its part is hidden");
        assert!(!html.contains(r#"data-show="filter.refusal" hidden"#), "the refusal is shown");
        assert!(!html.contains("http://") && !html.contains("https://"), "nothing is fetched from elsewhere");
    }

    #[test]
    fn values_read_as_the_script_writes_them() {
        assert_eq!(show(&Value::Null, "count"), "none");
        assert_eq!(show(&serde_json::json!(1234567), "count"), "1,234,567");
        assert_eq!(show(&serde_json::json!(0.25), "rate"), "0.2");
        assert_eq!(show(&serde_json::json!(185), "secs"), "3 min 05 s");
        assert_eq!(show(&serde_json::json!(0.031), "secs"), "31 ms");
        assert_eq!(show(&serde_json::json!(true), "bool"), "yes");
        assert_eq!(show(&serde_json::json!(3277), "bytes"), "3.2 KiB");
        assert_eq!(show(&serde_json::json!(["a", "b"]), "list"), "a, b");
        assert_eq!(show(&serde_json::json!([]), "list"), "none");
    }
}
