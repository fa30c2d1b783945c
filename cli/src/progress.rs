//! Progress on a terminal: an indicatif bar for `sluice backfill` and `index-car`, and the log
//! writer that prints log lines above the bar instead of through it. When stderr is not a
//! terminal there is no bar: the library's periodic line (only while work happens) and its
//! summary line say the same.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice::backfill::{Backfill, Snapshot};
use sluice::units::{count, rate};
use tokio_util::sync::CancellationToken;

/// The bar on the terminal now, if any: log lines are written above it.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Whether stderr is a terminal, where bars are drawn and log lines may have colours.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Where log lines go: stderr, above the bar while one is shown.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let shown = SHOWN.lock().expect("shown bar").clone();
        match shown {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A bar on stderr, shown until [`Bar::finish`].
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar of `len` steps with `template`, or `None` when stderr is not a terminal.
    pub fn start(len: u64, template: &str) -> Option<Self> {
        if !on_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(10));
        bar.set_style(style(template));
        bar.enable_steady_tick(Duration::from_millis(200));
        *SHOWN.lock().expect("shown bar") = Some(bar.clone());
        Some(Self(bar))
    }

    /// The bar itself.
    pub fn bar(&self) -> &ProgressBar {
        &self.0
    }

    /// Draws the bar as it ends and leaves it on the terminal, the cursor on the next line.
    pub fn finish(self) {
        self.0.finish();
        *SHOWN.lock().expect("shown bar") = None;
        eprintln!();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("the bar templates are valid").progress_chars("=> ")
}

/// While the crawl lists repos the total grows: no ETA yet.
const LISTING: &str = "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} repos (listing) {msg}";
/// Every repo is listed: the ETA means something.
const LISTED: &str = "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} repos, ETA {eta} {msg}";

/// The bar of a backfill: repos done of listed, records and their rate, failures. Shown in
/// place of the periodic line (the summary line is still written at the end).
pub struct BackfillBar {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl BackfillBar {
    /// Follows `backfill` with a bar, when stderr is a terminal.
    pub fn start(backfill: Arc<Backfill>) -> Option<Self> {
        let bar = Bar::start(0, LISTING)?;
        backfill.progress().bar_shown.store(true, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(backfill, bar, stop.clone()));
        Some(Self { stop, task })
    }

    /// Draws the final state and leaves the bar on the terminal.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn follow(backfill: Arc<Backfill>, bar: Bar, stop: CancellationToken) {
    let progress = backfill.progress();
    // Rates "now" are taken over the last few seconds of work.
    let mut recent: std::collections::VecDeque<Snapshot> = Default::default();
    let mut listed_all = false;
    loop {
        let now = progress.snapshot();
        if recent.back().is_none_or(|last| now.at - last.at >= Duration::from_secs(1)) {
            recent.push_back(now);
            if recent.len() > 5 {
                recent.pop_front();
            }
        }
        if !listed_all && progress.listed.load(Ordering::Relaxed) {
            listed_all = true;
            bar.bar().set_style(style(LISTED));
        }
        let listed = sluice::backfill::listed(backfill.store());
        let since = recent.front().copied().unwrap_or(now);
        bar.bar().set_length(listed.total);
        bar.bar().set_position(listed.done);
        bar.bar().set_message(format!(
            "{} records, {}/s, {} failed",
            count(now.records),
            rate(if stop.is_cancelled() { now.average_records_per_sec() } else { now.records_per_sec_since(&since) }),
            count(now.failed)
        ));
        if stop.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    bar.finish();
}
