//! The counters behind the status page's rates: sampled every [`EVERY`] for the last hour. The
//! rates "now" are taken from the latest sample to the moment asked; the charts are the rates
//! between consecutive samples. The backfill's rates count only the time work happened.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::model::History;
use crate::backfill::Snapshot;
use crate::server::ServerState;

/// Time between samples.
pub const EVERY: Duration = Duration::from_secs(5);

/// Samples kept: an hour's.
const KEEP: usize = 720;

/// The counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// The backfill's counters, when this process runs one.
    pub backfill: Option<Snapshot>,
    /// Live frames applied.
    pub applied: u64,
    /// The id of the last event.
    pub events: u64,
}

impl Sample {
    /// The counters of `state` now.
    pub fn take(state: &ServerState) -> Self {
        Self {
            at: Instant::now(),
            backfill: state.backfill.as_ref().map(|b| b.progress().snapshot()),
            applied: state.firehose.as_ref().map_or(0, |f| f.live().metrics().applied.load(Ordering::Relaxed)),
            events: state.store().next_event_id() - 1,
        }
    }

    /// Backfill records walked per second of work since `earlier`.
    pub fn records_per_sec_since(&self, earlier: &Sample) -> f64 {
        match (&self.backfill, &earlier.backfill) {
            (Some(now), Some(then)) => now.records_per_sec_since(then),
            _ => 0.0,
        }
    }

    /// Backfill repos done per second of work since `earlier`.
    pub fn repos_per_sec_since(&self, earlier: &Sample) -> f64 {
        match (&self.backfill, &earlier.backfill) {
            (Some(now), Some(then)) => now.repos_per_sec_since(then),
            _ => 0.0,
        }
    }

    /// Live frames applied per second since `earlier`.
    pub fn commits_per_sec_since(&self, earlier: &Sample) -> f64 {
        crate::units::per_sec(self.applied.saturating_sub(earlier.applied), self.at - earlier.at)
    }

    /// Events written per second since `earlier`.
    pub fn events_per_sec_since(&self, earlier: &Sample) -> f64 {
        crate::units::per_sec(self.events.saturating_sub(earlier.events), self.at - earlier.at)
    }
}

/// The samples of the last hour.
#[derive(Debug, Default)]
pub struct Samples(Mutex<VecDeque<Sample>>);

impl Samples {
    /// Keeps `sample`, forgetting those older than an hour.
    pub fn push(&self, sample: Sample) {
        let mut samples = self.0.lock().expect("status samples");
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The latest sample taken at least a second before `now` (else the oldest there is): what
    /// rates "now" are taken from.
    pub fn before(&self, now: Instant) -> Option<Sample> {
        let samples = self.0.lock().expect("status samples");
        let older = samples.iter().rev().find(|s| now.saturating_duration_since(s.at) >= Duration::from_secs(1));
        older.or(samples.front()).copied()
    }

    /// The rates between consecutive samples, oldest first, to a hundredth (an hour of three
    /// series is then ~15 KB of JSON, which an open page reads every 2 s).
    pub fn history(&self) -> History {
        let samples = self.0.lock().expect("status samples");
        let rates = |rate: fn(&Sample, &Sample) -> f64| -> Vec<f64> {
            samples.iter().zip(samples.iter().skip(1)).map(|(a, b)| (rate(b, a) * 100.0).round() / 100.0).collect()
        };
        History {
            every_secs: EVERY.as_secs(),
            records_per_sec: rates(Sample::records_per_sec_since),
            commits_per_sec: rates(Sample::commits_per_sec_since),
            events_per_sec: rates(Sample::events_per_sec_since),
        }
    }
}

/// Takes a sample of `state` every [`EVERY`] until it stops.
pub async fn sample_every(state: std::sync::Arc<ServerState>) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.stop.cancelled() => return,
            _ = ticks.tick() => state.status_samples.push(Sample::take(&state)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, applied: u64, events: u64) -> Sample {
        Sample { at, backfill: None, applied, events }
    }

    #[test]
    fn the_history_is_the_rate_between_consecutive_samples_for_an_hour() {
        let samples = Samples::default();
        let t = Instant::now();
        for i in 0..(KEEP as u64 + 10) {
            samples.push(sample(t + EVERY * i as u32, i * 50, i * 10));
        }
        let history = samples.history();
        assert_eq!(history.commits_per_sec.len(), KEEP - 1, "an hour of samples is kept, no more");
        assert!(
            history.commits_per_sec.iter().all(|r| (*r - 10.0).abs() < 1e-9),
            "{:?}",
            &history.commits_per_sec[..3]
        );
        assert!(history.events_per_sec.iter().all(|r| (*r - 2.0).abs() < 1e-9));
        assert!(history.records_per_sec.iter().all(|r| *r == 0.0), "no backfill here");
        samples.push(sample(t + EVERY * (KEEP as u32 + 10), (KEEP as u64 + 10) * 50 + 1, 0));
        assert_eq!(samples.history().commits_per_sec.last(), Some(&10.2), "to a hundredth");
    }

    #[test]
    fn rates_now_start_from_a_sample_at_least_a_second_old() {
        let samples = Samples::default();
        let t = Instant::now();
        assert!(samples.before(t).is_none());
        samples.push(sample(t, 0, 0));
        samples.push(sample(t + Duration::from_secs(5), 100, 0));
        let now = t + Duration::from_millis(5300);
        assert_eq!(samples.before(now).unwrap().applied, 0, "the newest is too recent to measure from");
        assert_eq!(samples.before(t + Duration::from_secs(7)).unwrap().applied, 100);
    }
}
