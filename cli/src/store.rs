//! The commands that read or fill a store directly, without the service: `index-car`, `events`,
//! `stats` and `cursors`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::time::Instant;

use anyhow::Context;
use sluice::units::{count, duration, per_sec, rate};
use sluice::{Config, Filter, IndexOptions, Sluice, Store};

use crate::progress::Bar;

/// The store in `dir`, which must exist.
pub fn open_store(dir: &Path) -> anyhow::Result<Store> {
    if !dir.exists() {
        anyhow::bail!("no data in {} (index something first, or pass --data)", dir.display());
    }
    Store::open(dir).with_context(|| format!("opening the store in {}", dir.display()))
}

/// Indexes each CAR, `jobs` at a time (default: one per core; the exports of one repo in the
/// order given); prints a line per CAR in the order given. A bad one is reported and skipped,
/// and makes the exit code non-zero.
pub fn index_cars(
    config: Config,
    opts: IndexOptions,
    jobs: Option<usize>,
    cars: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let sluice = Sluice::builder().config(config.clone()).filter(Filter::load(&config.filter.path)?).open()?;
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (mut failed, mut records) = (0u64, 0u64);
    let started = Instant::now();
    // On a terminal, a bar over the files (lines printed above it); else the lines alone.
    let bar = match cars.len() {
        0 | 1 => None,
        n => Bar::start(n as u64, "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} files, ETA {eta} {msg}"),
    };
    let above = |line: String, to_stderr: bool| {
        let write = || if to_stderr { eprintln!("{line}") } else { println!("{line}") };
        match &bar {
            Some(bar) => bar.bar().suspend(write),
            None => write(),
        }
    };
    sluice::index_files::index_files(&sluice, cars, &opts, jobs, |i, result| {
        match result {
            Ok(o) => {
                records += o.walked;
                let events = match o.committed.first_event {
                    Some(first) => format!("events {first}..={}", first + o.committed.events - 1),
                    None => "no events".into(),
                };
                above(
                    format!(
                        "{}: {}: {} created, {} updated, {} deleted, {} unchanged, {} handler error(s); {events}",
                        cars[i].display(),
                        o.status.as_str(),
                        o.created,
                        o.updated,
                        o.deleted,
                        o.unchanged,
                        o.handler_errors
                    ),
                    false,
                );
            }
            Err(e) => {
                failed += 1;
                above(format!("error: {}: {e:#}", cars[i].display()), true);
            }
        }
        if let Some(bar) = &bar {
            bar.bar().inc(1);
            let elapsed = started.elapsed();
            bar.bar().set_message(format!(
                "{} records, {}/s, {failed} failed",
                count(records),
                rate(per_sec(records, elapsed))
            ));
        }
    });
    if let Some(bar) = bar {
        bar.finish();
    }
    sluice.store().persist()?;
    let elapsed = started.elapsed();
    eprintln!(
        "index-car summary: {} files ({} indexed, {failed} failed), {} records in {} ({} records/s on average)",
        cars.len(),
        cars.len() as u64 - failed,
        count(records),
        duration(elapsed),
        rate(per_sec(records, elapsed))
    );
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints the events from id `cursor` on as JSON lines; says on stderr when retention has
/// removed the first ones asked for.
pub fn print_events(out: &mut impl Write, store: &Store, cursor: u64, limit: usize) -> anyhow::Result<()> {
    if let Some(oldest) = store.log().oldest_id()?
        && cursor.max(1) < oldest
    {
        eprintln!("note: events {}..{} are past the retention; printing from {oldest}", cursor.max(1), oldest - 1);
    }
    for (id, event) in store.log().from(cursor, limit)? {
        writeln!(out, "{}", sluice::wire::event_json(store, id, &event)?)?;
    }
    Ok(())
}

/// `sluice stats`: repos by state, records by collection, events (text or JSON).
pub fn print_stats(out: &mut impl Write, store: &Store, json: bool) -> std::io::Result<()> {
    let counts = store.counts();
    let events = store.next_event_id() - 1;
    // Retention may have removed the oldest events; ids go on from where they were.
    let oldest = store.log().oldest_id().ok().flatten();
    if json {
        let mut repos = serde_json::Map::new();
        let mut records = serde_json::Map::new();
        for ((kind, name), n) in &counts {
            let map = if kind == "repos" { &mut repos } else { &mut records };
            map.insert(name.clone(), (*n).into());
        }
        return writeln!(
            out,
            "{}",
            serde_json::json!({ "repos": repos, "records": records, "events": events, "oldest_event": oldest })
        );
    }
    writeln!(out, "repos:")?;
    for ((_, status), n) in counts.iter().filter(|((k, _), n)| k == "repos" && **n != 0) {
        writeln!(out, "  {status:<12} {n}")?;
    }
    let records: Vec<_> = counts.iter().filter(|((k, _), n)| k == "records" && **n != 0).collect();
    writeln!(out, "records: {}", records.iter().map(|(_, n)| **n).sum::<i64>())?;
    for ((_, collection), n) in records {
        writeln!(out, "  {collection:<40} {n}")?;
    }
    match oldest {
        Some(first) if first > 1 => {
            writeln!(out, "events: {events} (kept from {first} on; older ones are past the retention)")
        }
        _ => writeln!(out, "events: {events}"),
    }
}

/// `sluice cursors`: each service's saved cursor and when it was saved.
pub fn print_cursors(out: &mut impl Write, store: &Store) -> anyhow::Result<()> {
    for (service, (value, ms)) in store.cursors().all()? {
        writeln!(out, "{service}\t{value}\t{}", sluice::syntax::datetime_from_ms(ms))?;
    }
    Ok(())
}
