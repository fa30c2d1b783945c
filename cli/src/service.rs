//! `sluice run` and `sluice backfill`: the service until it is done or a signal stops it.

use std::process::ExitCode;

use sluice::backfill::RunMode;
use sluice::{Config, Sluice};

/// Runs the backfill (and, in `Forever` mode, everything `sluice run` runs: live ingestion
/// and the server) until it ends or a signal stops it; prints where the repos stand and, when
/// some failed, how many and why. `UntilEmpty` (`sluice backfill`) ends when nothing is left
/// to do now: repos waiting for a retry are left to the next run (see [`RunMode::UntilSettled`]).
pub fn run_backfill(config: Config, dids: &[String], recrawl: bool, mode: RunMode) -> anyhow::Result<ExitCode> {
    // A bar on a terminal for a backfill that ends; `sluice run` goes on forever and logs.
    let bar = mode != RunMode::Forever;
    let mode = match mode {
        RunMode::UntilEmpty => RunMode::UntilSettled,
        other => other,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let sluice = Sluice::builder().config(config.clone()).filter_file(config.filter.path.clone()).open()?;
        let opts = sluice::service::ServiceOptions { dids: dids.to_vec(), recrawl };
        let service = sluice::service::Service::start(&sluice, &config, mode, &opts).await?;
        let (stop, backfill) = (service.stopper(), service.backfill.clone());
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!(
                "stopping: fetches in flight are cancelled (their repos stay queued); walks started and \
                 queued live frames finish first"
            );
            stop();
        });
        let bar = if bar { crate::progress::BackfillBar::start(backfill.clone()) } else { None };
        let result = service.run(mode, dids.is_empty()).await;
        if let Some(bar) = bar {
            bar.finish().await;
        }
        let events = sluice.store().next_event_id() - 1;
        println!("repos: {}; events: {events}", sluice::backfill::repos_by_status(sluice.store()));
        for line in sluice::backfill::failure_report(&backfill.failure_summary()) {
            println!("{line}");
        }
        result?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
