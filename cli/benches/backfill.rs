//! Network backfill throughput and memory: `sluice backfill` (the release binary, in a child
//! process) against a devnet on loopback HTTP, signatures checked, 16 repos in flight.
//!
//! `cargo bench --bench backfill` prints a Markdown table for BENCHMARKS.md: wall time,
//! records/s, repos/s, records per CPU-second, the child's CPU per repo and its peak RSS, for
//! 16 repos of 50k records, for the same with one ~100 MB repo among them, and for the
//! network's shape: 2,500, 20,000 and 100,000 repos of 20 records (handlers off and on). The
//! devnet runs in this process, so its CPU and memory (it holds every CAR) are not counted.
//!
//! `SLUICE_BENCH_CASES` picks cases (comma-separated): `large` (16 x 50k), `huge` (the same
//! plus the ~100 MB repo), `many` (the small repos); `small` is the old name of `large` alone.
//! Four more run only when named: `sink` (the NATS sink on against off, against a local
//! `nats-server -js`), `sink-split` (the same with sluice on a core of its own) and `shards`
//! (two shards at once against one node), see [`sink_and_shards`]; and `filters` (the cost of
//! declarative indexes and of lexicon validation; `SLUICE_FILTER_VARIANTS` picks which, and
//! several `SLUICE_BIN` builds run interleaved), see [`filter_variants`].
//! `SLUICE_MANY_REPOS=n[,n...]` sets the sizes of `many` (default 2500,20000,100000).
//!
//! To compare builds on the same devnet data (this machine's speed drifts within the hour, so
//! only interleaved runs compare): `SLUICE_BIN=path[,path...]` runs those builds as the child,
//! in turn, `SLUICE_BENCH_ROUNDS` times (default 1), each row labelled with its build;
//! `SLUICE_BENCH_CASES=small` skips the case with the large repo.

use std::time::Instant;

use sluice_devnet::{Devnet, DevnetOptions};
use sluice_testkit::bench::{self, Usage};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs `sluice backfill` on `net` into a fresh store (see [`bench::run_child`] for what is
/// measured and how).
fn backfill(net: &Devnet, binary: &str, concurrency: usize, handlers: bool) -> Usage {
    backfill_with(net, binary, concurrency, handlers, "")
}

/// [`backfill`] with `extra` config sections.
fn backfill_with(net: &Devnet, binary: &str, concurrency: usize, handlers: bool, extra: &str) -> Usage {
    backfill_logged(net, binary, concurrency, handlers, extra).0
}

/// [`backfill_with`], also returning the seconds from the run's first log line to the line
/// saying the backfill is done and the NATS sink publishes what is left (when it says so).
fn backfill_logged(
    net: &Devnet,
    binary: &str,
    concurrency: usize,
    handlers: bool,
    extra: &str,
) -> (Usage, Option<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let filter = match handlers {
        true => sluice_testkit::root().join("filters/everything.toml"),
        false => {
            let path = dir.path().join("no-handlers.toml");
            let toml = "mode = \"full\"\n[handlers.post]\nenabled = false\n[handlers.backlinks]\nenabled = false\n\
                        [handlers.profile]\nenabled = false\n";
            std::fs::write(&path, toml).unwrap();
            path
        }
    };
    let config = sluice_testkit::devnet_config_with_filter(
        dir.path(),
        net,
        &filter,
        &format!("[backfill]\nmax_concurrent = {concurrency}\nmax_memory_mb = 0\n{extra}"),
    );
    let log = dir.path().join("run.log");
    let usage = bench::run_child(binary, &["--config", config.to_str().unwrap(), "backfill"], Some(&log));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // The sink's own lines (a failure, a republish, its batches at exit): its troubles cost
    // CPU the table would hide.
    for line in text.lines().filter(|l| l.contains("sluice::sink")) {
        eprintln!("sink: {line}");
    }
    let first = text.lines().find_map(log_time);
    let done = text.lines().filter(|l| l.contains("the NATS sink publishes what is left")).find_map(log_time);
    let backfill_secs = first.zip(done).map(|(a, b)| (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6);
    (usage, backfill_secs)
}

/// The time a log line starts with (wrapped in colour codes): `...2026-12-05T00:43:36.1Z...`.
fn log_time(line: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    let token = line.split_whitespace().next()?;
    let end = token.find('Z')? + 1;
    let start = token[..end].find('T')?.checked_sub(10)?;
    chrono::DateTime::parse_from_rfc3339(token.get(start..end)?).ok()
}

/// The builds under test: `SLUICE_BIN` (comma-separated) when set, else this build's `sluice`.
fn sluice_binaries() -> Vec<String> {
    match std::env::var("SLUICE_BIN") {
        Ok(list) => list.split(',').map(str::to_string).collect(),
        Err(_) => vec![env!("CARGO_BIN_EXE_sluice").to_string()],
    }
}

/// Runs every build `rounds` times, interleaved, and prints a row for each run.
fn compare(net: &Devnet, label: &str, repos: usize, records: usize, handlers: bool) {
    let (binaries, rounds) =
        (sluice_binaries(), std::env::var("SLUICE_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1));
    for _ in 0..rounds {
        for binary in &binaries {
            let usage = backfill(net, binary, 16, handlers);
            row(&format!("{label}{}", build_name(binary, &binaries)), repos, records, &usage);
        }
    }
}

/// Size of the repo export of `did`, fetched once (which also warms the devnet's cache).
async fn car_bytes(net: &Devnet, did: &str) -> usize {
    let pds = &net.pds_urls()[net.pds_of(did).unwrap()];
    let url = format!("{pds}/xrpc/com.atproto.sync.getRepo");
    sluice_testkit::http().get(url).query(&[("did", did)]).send().await.unwrap().bytes().await.unwrap().len()
}

fn row(label: &str, repos: usize, records: usize, u: &Usage) {
    println!(
        "| {label} | {repos} | {records} | {:.2} | {:.0} | {:.1} | {:.0} | {:.0} | {} |",
        u.secs,
        records as f64 / u.secs,
        repos as f64 / u.secs,
        records as f64 / u.cpu.max(1e-9),
        u.cpu * 1e6 / repos as f64,
        u.peak_kb / 1024
    );
}

/// Whether `SLUICE_BENCH_CASES` asks for `case` (all cases when it is unset).
fn wants(case: &str) -> bool {
    match std::env::var("SLUICE_BENCH_CASES") {
        Ok(list) => list.split(',').map(|c| if c.trim() == "small" { "large" } else { c.trim() }).any(|c| c == case),
        Err(_) => true,
    }
}

/// The network's shape: many repos of 20 records, each size on a devnet of its own, handlers
/// off and on.
async fn many_small_repos() {
    const RECORDS: usize = 20;
    let sizes: Vec<usize> = std::env::var("SLUICE_MANY_REPOS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![2_500, 20_000, 100_000]);
    for repos in sizes {
        let net = Devnet::start(DevnetOptions::default()).await.unwrap();
        let started = Instant::now();
        net.populate(repos, RECORDS, 7).await;
        eprintln!("devnet: {repos} repos of {RECORDS} records built in {:.1} s", started.elapsed().as_secs_f64());
        for handlers in [false, true] {
            let label = format!("{repos} x {RECORDS} records, handlers {}", if handlers { "on" } else { "off" });
            compare(&net, &label, repos, repos * RECORDS, handlers);
        }
        net.shutdown().await;
    }
}

/// `sink`: the backfill with the NATS sink on (publishing to a local JetStream stream, the run
/// ending once all is published) against off; `sink-split`: the same with sluice pinned to
/// CPU 0 and the NATS server and the devnet to CPU 1 (both compare `SLUICE_BIN`'s builds);
/// `shards`: two shards (0/2 and 1/2) backfilling the same devnet at once against one node. On a
/// devnet of `SLUICE_MANY_REPOS` (its first size, default 20,000) repos of 20 records, handlers on,
/// `SLUICE_BENCH_ROUNDS` rounds; `SLUICE_SINK_IN_FLIGHT` sets the sink's `in_flight` (default 512).
async fn sink_and_shards() {
    const RECORDS: usize = 20;
    let repos: usize = std::env::var("SLUICE_MANY_REPOS")
        .ok()
        .and_then(|s| s.split(',').next()?.trim().parse().ok())
        .unwrap_or(20_000);
    let rounds: usize = std::env::var("SLUICE_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    net.populate(repos, RECORDS, 11).await;
    let binaries = sluice_binaries();
    let nats = (wants("sink") || wants("sink-split")).then(sluice_testkit::NatsServer::start);
    for round in 0..rounds {
        for (b, binary) in binaries.iter().enumerate() {
            let label = format!("{repos} x {RECORDS} records{}", build_name(binary, &binaries));
            let stream = format!("r{round}b{b}");
            if let Some(nats) = nats.as_ref().filter(|_| wants("sink")) {
                sink_on_off(
                    &net,
                    binary,
                    &format!("{label}, sink"),
                    (repos, repos * RECORDS),
                    &nats.url(),
                    &format!("shared{stream}"),
                );
            }
            if let Some(nats) = nats.as_ref().filter(|_| wants("sink-split")) {
                // The deployment's shape on this machine: sluice alone on CPU 0; the NATS
                // server and the devnet (this process) on CPU 1, standing for other machines.
                bench::pin_process(std::process::id(), &[1]);
                bench::pin_process(nats.pid().unwrap(), &[1]);
                bench::CHILD_CPU.store(0, std::sync::atomic::Ordering::Relaxed);
                sink_on_off(
                    &net,
                    binary,
                    &format!("{label}, sluice on a core of its own, sink"),
                    (repos, repos * RECORDS),
                    &nats.url(),
                    &format!("split{stream}"),
                );
                bench::CHILD_CPU.store(-1, std::sync::atomic::Ordering::Relaxed);
                bench::pin_process(std::process::id(), &[0, 1]);
                bench::pin_process(nats.pid().unwrap(), &[0, 1]);
            }
        }
        let (binary, label) = (binaries[0].as_str(), format!("{repos} x {RECORDS} records"));
        if wants("shards") {
            row(&format!("{label}, one node"), repos, repos * RECORDS, &backfill(&net, binary, 16, true));
            let started = Instant::now();
            let net = &net;
            let shards: Vec<Usage> = std::thread::scope(|s| {
                let runs: Vec<_> = (0..2)
                    .map(|i| {
                        s.spawn(move || {
                            backfill_with(net, binary, 16, true, &format!("[cluster]\nshard = \"{i}/2\"\n"))
                        })
                    })
                    .collect();
                runs.into_iter().map(|r| r.join().unwrap()).collect()
            });
            let wall = started.elapsed().as_secs_f64();
            for (i, u) in shards.iter().enumerate() {
                row(&format!("{label}, shard {i}/2 (both at once)"), repos / 2, repos * RECORDS / 2, u);
            }
            let both = Usage {
                secs: wall,
                cpu: shards.iter().map(|u| u.cpu).sum(),
                peak_kb: shards.iter().map(|u| u.peak_kb).sum(),
            };
            row(&format!("{label}, two shards together (peak RSS summed)"), repos, repos * RECORDS, &both);
        }
    }
    net.shutdown().await;
}

/// One backfill of `net` with the sink off, then one with it on publishing to stream `tag`
/// at `url` (`SLUICE_SINK_IN_FLIGHT` sets `in_flight`, default 512); rows labelled `label`.
fn sink_on_off(net: &Devnet, binary: &str, label: &str, (repos, records): (usize, usize), url: &str, tag: &str) {
    row(&format!("{label} off"), repos, records, &backfill(net, binary, 16, true));
    let in_flight = std::env::var("SLUICE_SINK_IN_FLIGHT").unwrap_or_else(|_| "512".into());
    let extra = format!(
        "[sink.nats]\nurl = {url:?}\nstream = \"{}\"\nsubject_prefix = \"{tag}\"\nin_flight = {in_flight}\n",
        tag.to_uppercase()
    );
    let (usage, done) = backfill_logged(net, binary, 16, true, &extra);
    row(&format!("{label} on (all published at exit)"), repos, records, &usage);
    if let Some(secs) = done {
        println!(
            "| {label} on: the backfill part (until it logged done) | {repos} | {records} | {secs:.2} | {:.0} \
             | | | | |",
            records as f64 / secs
        );
    }
}

/// The filter variants `filters` compares: (short name, label, what is added to
/// `filters/everything.toml`). The devnet's records are ~60% posts, 30% likes and 10% follows,
/// and no statuses.
fn filter_variants_list() -> Vec<(&'static str, &'static str, String)> {
    const THREE: &str = include_str!("../../filters/indexes.toml");
    const LIKES: &str = "[indexes.likes_by_subject]\ncollection = \"app.bsky.feed.like\"\n\
                         key = [\"subject.uri\"]\nsort = \"createdAt\"\ncount = true\n";
    let lexicons = sluice_testkit::fixture("lexicons");
    let lexicons = lexicons.canonicalize().unwrap_or(lexicons);
    let validate = |mode: &str| {
        format!("[lexicons]\ndir = {:?}\nvalidate = \"{mode}\"\nunknown = \"pass\"\n", lexicons.to_str().unwrap())
    };
    vec![
        ("base", "base", String::new()),
        (
            "three",
            "issue's three indexes (likes by subject + 2 on statuses: only the likes one has records)",
            THREE.to_string(),
        ),
        (
            "every",
            "an index on every record (likes by subject, posts by time, follows by subject)",
            format!(
                "{LIKES}[indexes.posts_by_time]\ncollection = \"app.bsky.feed.post\"\nkey = []\nsort = \"createdAt\"\n\
                 [indexes.follows_by_subject]\ncollection = \"app.bsky.graph.follow\"\nkey = [\"subject\"]\n\
                 sort = \"createdAt\"\ncount = true\n"
            ),
        ),
        ("drop", "validate = \"drop\"", validate("drop")),
        ("log", "validate = \"log\"", validate("log")),
    ]
}

/// What a `filters` run left: records stored by collection, events, each index's state, the
/// records the log says were refused or failed their lexicon, and when each index was built.
#[derive(Default)]
struct FilterRunCheck {
    records: std::collections::BTreeMap<String, i64>,
    events: u64,
    /// (name, ready, entries, records with entries, records skipped).
    indexes: Vec<(String, bool, i64, i64, i64)>,
    /// Log lines by (what, rule, path): "lexicon" for a lexicon failure, "refused" for the
    /// record rule.
    rejected: std::collections::BTreeMap<(String, String, String), u64>,
    /// (index, seconds from the run's first log line to its "index built" line).
    built: Vec<(String, f64)>,
    /// Seconds from the run's first log line to its last.
    first_line_to_end: f64,
}

/// Drops the ANSI colour codes of a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `field=` in a (colourless) log line: up to the next space, or quoted.
fn log_field(line: &str, field: &str) -> String {
    let Some(at) = line.find(&format!(" {field}=")) else { return String::new() };
    let rest = &line[at + field.len() + 2..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next().unwrap_or("").to_string(),
        None => rest.split_whitespace().next().unwrap_or("").to_string(),
    }
}

/// One backfill of `net` (handlers on, 16 in flight) with `filter` (TOML) written into the
/// run's temp dir; then, untimed, what it stored (the store opened in this process) and what
/// its log says.
fn filter_run(net: &Devnet, binary: &str, filter: &str) -> (Usage, FilterRunCheck) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("filter.toml");
    std::fs::write(&path, filter).unwrap();
    let config = sluice_testkit::devnet_config_with_filter(
        dir.path(),
        net,
        &path,
        "[backfill]\nmax_concurrent = 16\nmax_memory_mb = 0\n",
    );
    let log = dir.path().join("run.log");
    let usage = bench::run_child(binary, &["--config", config.to_str().unwrap(), "backfill"], Some(&log));

    let mut check = FilterRunCheck::default();
    let store = sluice::Store::open(&dir.path().join("data")).unwrap();
    for ((kind, name), n) in store.counts() {
        if kind == "records" && n != 0 {
            check.records.insert(name, n);
        }
    }
    check.events = store.next_event_id() - 1;
    for (name, (_, p)) in store.index_progress() {
        check.indexes.push((name, p.building.is_none(), p.entries, p.records, p.skipped));
    }
    drop(store);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut first = None;
    let mut last = None;
    for line in text.lines().map(strip_ansi) {
        let Some(t) = log_time(&line) else { continue };
        let first = *first.get_or_insert(t);
        last = Some(t);
        let secs = |t: chrono::DateTime<_>| (t - first).num_microseconds().unwrap_or(0) as f64 / 1e6;
        if line.contains("record fails its lexicon") {
            let key = ("lexicon".to_string(), log_field(&line, "rule"), log_field(&line, "path"));
            *check.rejected.entry(key).or_default() += 1;
        } else if line.contains("record refused") {
            let key = ("refused".to_string(), log_field(&line, "reason"), log_field(&line, "record"));
            *check.rejected.entry(key).or_default() += 1;
        } else if line.contains("index built") {
            check.built.push((log_field(&line, "index"), secs(t)));
        }
    }
    check.first_line_to_end =
        first.zip(last).map_or(0.0, |(a, b)| (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6);
    (usage, check)
}

/// `filters`: the backfill's cost of declarative indexes and of lexicon validation. On a
/// devnet of 16 repos of 50k records (seed 42, as `large`) and on one of `SLUICE_MANY_REPOS`
/// (its first size, default 20,000) repos of 20 records, handlers on, backfills with the
/// variants of [`filter_variants_list`] added to `filters/everything.toml`, interleaved: each
/// of `SLUICE_BENCH_ROUNDS` rounds (default 1) runs every variant once, the order rotated by
/// one each round. After each shape, a row per variant with its median records/s as a
/// percentage of base's. `SLUICE_FILTER_VARIANTS` picks variants by short name (`base`,
/// `three`, `every`, `drop`, `log`; base is always run). With several builds in `SLUICE_BIN`,
/// every build runs every variant in the same rotation (so builds compare interleaved, as
/// ablations need), each against its own base. Each run's store is checked afterwards (untimed): the same records
/// by collection as base, every index ready, and no record rejected in the log (what differs
/// is printed as a row, not asserted, so that the numbers still come out).
async fn filter_variants() {
    let rounds: usize = std::env::var("SLUICE_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
    let many: usize = std::env::var("SLUICE_MANY_REPOS")
        .ok()
        .and_then(|s| s.split(',').next()?.trim().parse().ok())
        .unwrap_or(20_000);
    let base = std::fs::read_to_string(sluice_testkit::root().join("filters/everything.toml")).unwrap();
    let picked = std::env::var("SLUICE_FILTER_VARIANTS").ok();
    let picked =
        |name: &str| name == "base" || picked.as_deref().is_none_or(|p| p.split(',').any(|v| v.trim() == name));
    let binaries = sluice_binaries();
    let build_label = |binary: &str| match binaries.len() {
        1 => String::new(),
        _ => format!("{}: ", std::path::Path::new(binary).file_name().unwrap().to_string_lossy()),
    };
    // (label, binary, filter, the index of its build's base).
    let mut variants: Vec<(String, String, String, usize)> = Vec::new();
    for binary in &binaries {
        let base_at = variants.len();
        for (_, label, extra) in filter_variants_list().into_iter().filter(|(name, ..)| picked(name)) {
            let label = format!("{}{label}", build_label(binary));
            variants.push((label, binary.clone(), format!("{base}\n{extra}"), base_at));
        }
    }
    for (repos, records, seed) in [(16, 50_000, 42), (many, 20, 11)] {
        let net = Devnet::start(DevnetOptions::default()).await.unwrap();
        let started = Instant::now();
        net.populate(repos, records, seed).await;
        eprintln!("devnet: {repos} repos of {records} records built in {:.1} s", started.elapsed().as_secs_f64());
        let shape = format!("{repos} x {records} records, handlers on");
        let total = repos * records;
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        let mut checks: Vec<Vec<FilterRunCheck>> = (0..variants.len()).map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for k in 0..variants.len() {
                let v = (round + k) % variants.len();
                let (label, binary, filter, _) = &variants[v];
                let (usage, check) = filter_run(&net, binary, filter);
                row(&format!("{shape}, {label} (round {})", round + 1), repos, total, &usage);
                eprintln!(
                    "check: {shape}, {label}: {} events, records {:?}, indexes (name, ready, entries, records, \
                     skipped) {:?}, built at (s after the first log line) {:?}, log spans {:.2} s, rejected {:?}",
                    check.events, check.records, check.indexes, check.built, check.first_line_to_end, check.rejected
                );
                rates[v].push(total as f64 / usage.secs);
                checks[v].push(check);
            }
        }
        let median = |r: &[f64]| {
            let mut r = r.to_vec();
            r.sort_by(f64::total_cmp);
            match r.len() {
                0 => 0.0,
                n if n % 2 == 1 => r[n / 2],
                n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
            }
        };
        for (v, (label, _, _, base_at)) in variants.iter().enumerate() {
            let (m, base_median) = (median(&rates[v]), median(&rates[*base_at]));
            println!(
                "| {shape}, {label}: median of {rounds} | {repos} | {total} | | {m:.0} ({:.1}% of base) | | | | |",
                100.0 * m / base_median
            );
        }
        // The checks: every variant stores what base stores, builds its indexes and rejects
        // nothing.
        let expected = &checks[0][0].records;
        for (v, (label, ..)) in variants.iter().enumerate() {
            for check in &checks[v] {
                if &check.records != expected || check.events != checks[0][0].events {
                    println!(
                        "| CHECK FAILED: {shape}, {label} stored {:?} ({} events), base {expected:?} ({} events) \
                         | | | | | | | | |",
                        check.records, check.events, checks[0][0].events
                    );
                }
                if let Some(ix) = check.indexes.iter().find(|ix| !ix.1) {
                    println!("| CHECK FAILED: {shape}, {label}: index {} not ready at exit | | | | | | | | |", ix.0);
                }
                if !check.rejected.is_empty() {
                    println!(
                        "| CHECK FAILED: {shape}, {label}: rejected (what, rule, path) {:?} | | | | | | | | |",
                        check.rejected
                    );
                }
            }
        }
        net.shutdown().await;
    }
}

/// ` [file name]` of `binary` when several builds are compared, else nothing.
fn build_name(binary: &str, binaries: &[String]) -> String {
    if binaries.len() > 1 { format!(" [{}]", binary.rsplit('/').next().unwrap_or(binary)) } else { String::new() }
}

#[tokio::main]
async fn main() {
    const REPOS: usize = 16;
    const RECORDS: usize = 50_000;
    println!(
        "| case | repos | records | wall (s) | records/s | repos/s | records/CPU-s | CPU µs/repo | peak RSS (MB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    if wants("many") {
        many_small_repos().await;
    }
    if std::env::var("SLUICE_BENCH_CASES").is_ok_and(|c| c.contains("sink") || c.contains("shards")) {
        sink_and_shards().await;
    }
    if std::env::var("SLUICE_BENCH_CASES").is_ok_and(|c| c.split(',').any(|c| c.trim() == "filters")) {
        filter_variants().await;
    }
    if !wants("large") && !wants("huge") {
        return;
    }

    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = net.populate(REPOS, RECORDS, 42).await;
    let mut total = 0;
    for did in &dids {
        total += car_bytes(&net, did).await;
    }
    if wants("large") {
        compare(
            &net,
            &format!("{REPOS} x {RECORDS} records ({} MB of CAR), 16 in flight", total >> 20),
            REPOS,
            REPOS * RECORDS,
            true,
        );
    }
    if wants("huge") {
        let big = net.populate(1, 330_000, 43).await;
        let big_bytes = car_bytes(&net, &big[0]).await;
        let label = format!(
            "the same + one {} MB repo ({} MB of CAR), 16 in flight",
            big_bytes >> 20,
            (total + big_bytes) >> 20
        );
        compare(&net, &label, REPOS + 1, REPOS * RECORDS + 330_000, true);
    }
    net.shutdown().await;
}
