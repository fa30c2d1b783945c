//! A repo's state transitions, beside [`RepoState`]: failed with a retry after a backoff,
//! refused for good (until the repo changes), gone, queued again, current. Pure: the backfill, live ingestion and the crawler decide which
//! applies and write the states ([`crate::store::Store::set_states`], or the pipeline's final
//! commit); the queue follows from the state the store is given.

use super::{RepoState, RepoStatus};

/// Exponential backoff for failed repos: `min_ms` doubled per failure up to `max_ms`, ±20%
/// jitter so that repos failing together do not retry together; none after `max_retries`.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First delay.
    pub min_ms: u64,
    /// Longest delay.
    pub max_ms: u64,
    /// Failures after which no retry is scheduled.
    pub max_retries: u32,
}

impl RetryPolicy {
    /// The delay after the `retries`-th failure (1-based), with `jitter` in [-1, 1].
    pub fn delay_ms(&self, retries: u32, jitter: f64) -> u64 {
        let doublings = retries.saturating_sub(1).min(40);
        let base = self.min_ms.saturating_mul(1u64 << doublings).min(self.max_ms);
        let factor = 1.0 + 0.2 * jitter.clamp(-1.0, 1.0);
        (base as f64 * factor) as u64
    }

    /// `state` after a failed attempt at `now_ms`: `error`, queued again after the backoff
    /// unless the retries are used up.
    pub fn failed(&self, state: &RepoState, reason: String, now_ms: u64, jitter: f64) -> RepoState {
        let retries = state.retries.saturating_add(1);
        let next_retry_ms = (retries <= self.max_retries).then(|| now_ms + self.delay_ms(retries, jitter));
        RepoState {
            status: RepoStatus::Error,
            error: Some(reason),
            retries,
            next_retry_ms,
            updated_ms: now_ms,
            ..state.clone()
        }
    }
}

/// `state` after a permanent refusal at `now_ms` (a bad signature, another DID's commit, a
/// malformed or oversized CAR): `error` with `reason` and no retry scheduled, so the queue
/// leaves it until something changes (see [`awaits_change`]). Counted as one failure.
pub fn refused(state: &RepoState, reason: String, now_ms: u64) -> RepoState {
    RepoState {
        status: RepoStatus::Error,
        error: Some(reason),
        retries: state.retries.saturating_add(1),
        next_retry_ms: None,
        updated_ms: now_ms,
        ..state.clone()
    }
}

/// Whether `state` failed and waits for a change before it is tried again: refused for good,
/// or out of retries. A new commit, `#sync` or `#identity` of the repo, a filter edit or an
/// explicit `--did` queues it again ([`requeued`]).
pub fn awaits_change(state: &RepoState) -> bool {
    state.status == RepoStatus::Error && state.next_retry_ms.is_none()
}

/// `state` of a repo the network no longer serves: deactivated, taken down, suspended or
/// deleted. Its stored records are left as they are.
pub fn gone(state: &RepoState, reason: String, now_ms: u64) -> RepoState {
    RepoState {
        status: RepoStatus::Gone,
        error: Some(reason),
        next_retry_ms: None,
        updated_ms: now_ms,
        ..state.clone()
    }
}

/// `state` queued again, due at `due_ms` (a filter edit, `--did`, or a rate limit that is
/// not the repo's fault: retries are not counted).
pub fn requeued(state: &RepoState, due_ms: u64, now_ms: u64) -> RepoState {
    RepoState {
        status: RepoStatus::Pending,
        next_retry_ms: (due_ms > 0).then_some(due_ms),
        updated_ms: now_ms,
        ..state.clone()
    }
}

/// A repo whose stored rev is already newer than the fetched export (live ingestion got
/// ahead): synced as it stands.
pub fn current(state: &RepoState, now_ms: u64) -> RepoState {
    RepoState {
        status: RepoStatus::Synced,
        error: None,
        retries: 0,
        next_retry_ms: None,
        updated_ms: now_ms,
        ..state.clone()
    }
}

/// A jitter in [-1, 1] from `seed` (a DID and a time): cheap, and different per repo.
pub fn jitter(seed: &str, now_ms: u64) -> f64 {
    use std::hash::BuildHasher;
    let h = foldhash::fast::FixedState::with_seed(now_ms).hash_one(seed);
    (h % 2001) as f64 / 1000.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: RetryPolicy = RetryPolicy { min_ms: 60_000, max_ms: 3_600_000, max_retries: 5 };

    #[test]
    fn backoff_doubles_from_a_minute_to_an_hour() {
        let delays: Vec<u64> = (1..=8).map(|n| POLICY.delay_ms(n, 0.0)).collect();
        assert_eq!(delays, [60_000, 120_000, 240_000, 480_000, 960_000, 1_920_000, 3_600_000, 3_600_000]);
        assert_eq!(POLICY.delay_ms(1, 1.0), 72_000);
        assert_eq!(POLICY.delay_ms(1, -1.0), 48_000);
    }

    #[test]
    fn failures_queue_a_retry_until_they_run_out() {
        let mut s = RepoState::default();
        for n in 1..=5 {
            s = POLICY.failed(&s, "boom".into(), 1_000, 0.0);
            assert_eq!(
                (s.status, s.retries, s.queue_due()),
                (RepoStatus::Error, n, Some(1_000 + POLICY.delay_ms(n, 0.0)))
            );
        }
        s = POLICY.failed(&s, "boom".into(), 1_000, 0.0);
        assert_eq!(s.queue_due(), None, "the sixth failure leaves it in error, unqueued");
        let again = requeued(&s, 0, 2_000);
        assert_eq!((again.status, again.queue_due(), again.retries), (RepoStatus::Pending, Some(0), 6));
        assert_eq!(gone(&s, "takendown".into(), 3).queue_due(), None);
        assert_eq!(current(&s, 5).retries, 0);
    }

    #[test]
    fn a_refusal_waits_for_a_change_and_a_requeue_takes_it() {
        let s = POLICY.failed(&RepoState::default(), "HTTP 500".into(), 1_000, 0.0);
        assert!(!awaits_change(&s), "a transient failure is queued for its retry");
        let s = refused(&s, "malformed CAR".into(), 2_000);
        assert_eq!((s.status, s.retries, s.queue_due()), (RepoStatus::Error, 2, None));
        assert_eq!(s.error.as_deref(), Some("malformed CAR"));
        assert!(awaits_change(&s));
        let again = requeued(&s, 0, 3_000);
        assert_eq!((again.status, again.queue_due()), (RepoStatus::Pending, Some(0)));
        assert!(!awaits_change(&again));
    }

    proptest! {
        /// Only error states with no retry scheduled wait for a change; a requeue always
        /// queues them again.
        #[test]
        fn only_unscheduled_errors_await_a_change(status in 0usize..7, next in proptest::option::of(0u64..10_000)) {
            let s = RepoState { status: RepoStatus::ALL[status], next_retry_ms: next, ..Default::default() };
            prop_assert_eq!(awaits_change(&s), s.status == RepoStatus::Error && next.is_none());
            prop_assert!(requeued(&s, 0, 1).queue_due().is_some());
        }

        #[test]
        fn delays_stay_within_jitter_of_the_capped_doubling(n in 1u32..100, j in -1.0f64..=1.0) {
            let d = POLICY.delay_ms(n, j);
            prop_assert!((48_000..=4_320_000).contains(&d), "{}", d);
        }

        #[test]
        fn jitter_is_in_range(seed in ".{0,40}", now: u64) {
            let j = jitter(&seed, now);
            prop_assert!((-1.0..=1.0).contains(&j));
        }
    }
}
