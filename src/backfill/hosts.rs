//! What each PDS host may be asked, shared by every backfill worker: how many requests at once
//! (a per-host limit), when again after a 429 (`Retry-After`), and whether at all (a circuit
//! breaker that pauses a host after consecutive transient failures, for a growing interval,
//! while the other hosts go on).
//!
//! The breaker ([`Breaker`]) is a pure state machine over explicit times, so that its rules are
//! tested as data; [`HostLimits`] holds one per host behind a mutex.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How hosts are held: concurrency and the breaker's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPolicy {
    /// Requests in flight to one host at most.
    pub max_concurrent: usize,
    /// Consecutive transient failures that pause a host.
    pub failures_to_pause: u32,
    /// The first pause; each pause after a failed probe doubles it.
    pub first_pause: Duration,
    /// The longest pause.
    pub max_pause: Duration,
}

impl Default for HostPolicy {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            failures_to_pause: 5,
            first_pause: Duration::from_secs(30),
            max_pause: Duration::from_secs(30 * 60),
        }
    }
}

/// One host's circuit breaker: closed (requests go), open (paused until a time), or half-open
/// (the pause is over and one probe request is out; the others wait for its result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    /// Requests go; `failures` transient failures in a row so far.
    Closed { failures: u32 },
    /// Paused until `until`; this is pause number `trips` in a row.
    Open { until: Instant, trips: u32 },
    /// Paused `trips` times in a row; one probe is out when `probing`.
    HalfOpen { trips: u32, probing: bool },
}

/// What the breaker says to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go.
    Go,
    /// Go, as the probe of a paused host: its result closes or reopens the breaker.
    Probe,
    /// Refused: the host is paused for this long still (zero while a probe is out).
    Paused(Duration),
}

/// How a request to a host ended, for its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The host answered (whatever the answer: a refusal is not an outage).
    Answered,
    /// A transient failure: no connection, a deadline, a 5xx.
    Failed,
    /// Nothing learnt about the host (a 429, a cancelled request).
    Neutral,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::Closed { failures: 0 }
    }
}

impl Breaker {
    /// Whether a request may go at `now`.
    pub fn admit(&mut self, now: Instant) -> Admit {
        match *self {
            Breaker::Closed { .. } => Admit::Go,
            Breaker::Open { until, .. } if now < until => Admit::Paused(until - now),
            Breaker::Open { trips, .. } | Breaker::HalfOpen { trips, probing: false } => {
                *self = Breaker::HalfOpen { trips, probing: true };
                Admit::Probe
            }
            Breaker::HalfOpen { probing: true, .. } => Admit::Paused(Duration::ZERO),
        }
    }

    /// Takes a request's `outcome` at `now`; `probe` says whether it was admitted as the probe.
    pub fn record(&mut self, outcome: Outcome, probe: bool, now: Instant, policy: &HostPolicy) {
        *self = match (*self, outcome) {
            (_, Outcome::Answered) => Breaker::Closed { failures: 0 },
            (Breaker::HalfOpen { trips, .. }, Outcome::Neutral) if probe => Breaker::HalfOpen { trips, probing: false },
            (state, Outcome::Neutral) => state,
            (Breaker::Closed { failures }, Outcome::Failed) if failures + 1 < policy.failures_to_pause => {
                Breaker::Closed { failures: failures + 1 }
            }
            (Breaker::Closed { .. }, Outcome::Failed) => Breaker::Open { until: now + pause(0, policy), trips: 1 },
            (Breaker::HalfOpen { trips, .. }, Outcome::Failed) if probe => {
                Breaker::Open { until: now + pause(trips, policy), trips: trips + 1 }
            }
            // A request that went before the pause failing late: the pause stands.
            (state, Outcome::Failed) => state,
        };
    }

    /// Whether requests are refused at `now` (open and not yet over, or a probe out).
    pub fn is_paused(&self, now: Instant) -> bool {
        match *self {
            Breaker::Closed { .. } => false,
            Breaker::Open { until, .. } => now < until,
            Breaker::HalfOpen { probing, .. } => probing,
        }
    }
}

/// The pause after `trips` pauses in a row: the first pause doubled per trip, capped.
fn pause(trips: u32, policy: &HostPolicy) -> Duration {
    policy.first_pause.saturating_mul(1u32 << trips.min(20)).min(policy.max_pause)
}

/// A host's state: its request slots, its breaker, its 429 hold, and its failures since it
/// last answered.
struct Host {
    slots: Arc<Semaphore>,
    breaker: Breaker,
    blocked_until: Option<Instant>,
    failing: Option<Failing>,
}

/// A host's transient failures since it last answered, and why the latest one failed.
#[derive(Debug, Clone, Default)]
struct Failing {
    failures: u64,
    last_reason: String,
}

/// A host that fails now, as the status page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingHost {
    /// The host (its base URL).
    pub host: String,
    /// Transient failures since it last answered.
    pub failures: u64,
    /// Why the latest failed.
    pub last_reason: String,
    /// Whether its breaker holds it paused now.
    pub paused: bool,
}

impl Host {
    /// Whether forgetting the host loses nothing: no request holds or waits for its slots
    /// (each holds a clone of them), its breaker is closed with no failure, and no 429 holds it.
    fn holds_nothing(&self, now: Instant) -> bool {
        Arc::strong_count(&self.slots) == 1
            && self.breaker == Breaker::default()
            && self.failing.is_none()
            && self.blocked_until.is_none_or(|until| until <= now)
    }
}

/// The hosts with state, pruned of those that hold nothing whenever the map reaches
/// `prune_at`, which is then set to twice what is left (at least [`PRUNE_FROM`]): DID documents
/// may name any number of hosts, and the map stays within twice the hosts that matter, at
/// an amortised constant cost per new host.
struct HostMap {
    hosts: HashMap<String, Host>,
    prune_at: usize,
}

/// The smallest size at which [`HostMap`] is pruned.
const PRUNE_FROM: usize = 1024;

impl HostMap {
    fn prune_if_full(&mut self) {
        if self.hosts.len() < self.prune_at {
            return;
        }
        let now = Instant::now();
        self.hosts.retain(|_, host| !host.holds_nothing(now));
        self.prune_at = (self.hosts.len() * 2).max(PRUNE_FROM);
    }
}

/// Per-host limits, shared by all workers.
pub struct HostLimits {
    policy: HostPolicy,
    hosts: Mutex<HostMap>,
    refused: AtomicU64,
}

impl Default for HostLimits {
    fn default() -> Self {
        Self::new(HostPolicy::default())
    }
}

/// A request slot at one host, taken by [`HostLimits::admit`]. Give it the request's outcome
/// with [`HostPermit::finish`]; dropped without one, it counts as [`Outcome::Neutral`].
pub struct HostPermit<'a> {
    limits: &'a HostLimits,
    host: String,
    probe: bool,
    _slot: OwnedSemaphorePermit,
    finished: bool,
}

impl HostPermit<'_> {
    /// Records how the request ended and frees the slot.
    pub fn finish(self, outcome: Outcome) {
        self.finish_because(outcome, None);
    }

    /// [`HostPermit::finish`], with why a failed request failed (what the status page shows of
    /// a failing host).
    pub fn finish_because(mut self, outcome: Outcome, reason: Option<String>) {
        self.finished = true;
        self.limits.record(&self.host, outcome, self.probe, reason);
    }
}

impl Drop for HostPermit<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.limits.record(&self.host, Outcome::Neutral, self.probe, None);
        }
    }
}

/// A request refused by a host's breaker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host {host} is paused after repeated failures (for {}s more)", left.as_secs())]
pub struct HostPaused {
    /// The host.
    pub host: String,
    /// How long the pause still runs (zero: a probe request is out).
    pub left: Duration,
}

impl HostLimits {
    /// Limits with `policy`.
    pub fn new(policy: HostPolicy) -> Self {
        let hosts = HostMap { hosts: HashMap::new(), prune_at: PRUNE_FROM };
        Self { policy, hosts: Mutex::new(hosts), refused: AtomicU64::new(0) }
    }

    /// The policy in force.
    pub fn policy(&self) -> &HostPolicy {
        &self.policy
    }

    fn with_host<T>(&self, host: &str, f: impl FnOnce(&mut Host) -> T) -> T {
        let mut map = self.hosts.lock().expect("host limits");
        if !map.hosts.contains_key(host) {
            map.prune_if_full();
            let slots = Arc::new(Semaphore::new(self.policy.max_concurrent.max(1)));
            map.hosts.insert(
                host.to_string(),
                Host { slots, breaker: Breaker::default(), blocked_until: None, failing: None },
            );
        }
        f(map.hosts.get_mut(host).expect("inserted above"))
    }

    /// Takes a request slot at `host`: waits out its 429 hold and for a free slot, and is
    /// refused at once while its breaker holds it paused (before and after the wait).
    pub async fn admit(&self, host: &str) -> Result<HostPermit<'_>, HostPaused> {
        self.check_breaker(host, false)?;
        self.wait(host).await;
        let slots = self.with_host(host, |h| h.slots.clone());
        let slot = slots.acquire_owned().await.expect("host slots are never closed");
        let probe = self.check_breaker(host, true)?;
        Ok(HostPermit { limits: self, host: host.to_string(), probe, _slot: slot, finished: false })
    }

    /// Refuses a request to a paused host; with `take`, admits it (maybe as the probe).
    fn check_breaker(&self, host: &str, take: bool) -> Result<bool, HostPaused> {
        let now = Instant::now();
        let admitted = self.with_host(host, |h| match take {
            true => h.breaker.admit(now),
            false if h.breaker.is_paused(now) => {
                let mut peek = h.breaker;
                peek.admit(now)
            }
            false => Admit::Go,
        });
        match admitted {
            Admit::Go => Ok(false),
            Admit::Probe => Ok(true),
            Admit::Paused(left) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(HostPaused { host: crate::http::truncate_foreign(host), left })
            }
        }
    }

    fn record(&self, host: &str, outcome: Outcome, probe: bool, reason: Option<String>) {
        let now = Instant::now();
        let policy = self.policy;
        self.with_host(host, |h| {
            h.breaker.record(outcome, probe, now, &policy);
            match outcome {
                Outcome::Answered => h.failing = None,
                Outcome::Failed => {
                    let failing = h.failing.get_or_insert_default();
                    failing.failures += 1;
                    failing.last_reason = reason.unwrap_or_else(|| "failed".into());
                }
                Outcome::Neutral => {}
            }
        });
    }

    /// The `n` hosts with the most failures since they last answered, most first.
    pub fn failing(&self, n: usize) -> Vec<FailingHost> {
        let now = Instant::now();
        let map = self.hosts.lock().expect("host limits");
        let mut failing: Vec<FailingHost> = map
            .hosts
            .iter()
            .filter_map(|(host, h)| {
                let f = h.failing.as_ref()?;
                Some(FailingHost {
                    host: host.clone(),
                    failures: f.failures,
                    last_reason: f.last_reason.clone(),
                    paused: h.breaker.is_paused(now),
                })
            })
            .collect();
        drop(map);
        failing.sort_by(|a, b| b.failures.cmp(&a.failures).then_with(|| a.host.cmp(&b.host)));
        failing.truncate(n);
        failing
    }

    /// Waits until `host`'s 429 hold is over.
    pub async fn wait(&self, host: &str) {
        loop {
            match self.with_host(host, |h| h.blocked_until) {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => return,
            }
        }
    }

    /// Holds every request to `host` for `pause` (a 429).
    pub fn block(&self, host: &str, pause: Duration) {
        let until = Instant::now() + pause;
        self.with_host(host, |h| h.blocked_until = Some(h.blocked_until.map_or(until, |t| t.max(until))));
    }

    /// Hosts held by a 429 now.
    pub fn blocked_hosts(&self) -> usize {
        let now = Instant::now();
        let map = self.hosts.lock().expect("host limits");
        map.hosts.values().filter(|h| h.blocked_until.is_some_and(|t| t > now)).count()
    }

    /// Hosts their breaker holds paused now.
    pub fn paused_hosts(&self) -> usize {
        let now = Instant::now();
        self.hosts.lock().expect("host limits").hosts.values().filter(|h| h.breaker.is_paused(now)).count()
    }

    /// Requests the breakers refused since start.
    pub fn refused_requests(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test]
    async fn failing_hosts_are_listed_most_failures_first_until_they_answer() {
        let limits = HostLimits::new(HostPolicy { failures_to_pause: 2, ..Default::default() });
        let fail = |host: &'static str, reason: &'static str| {
            let limits = &limits;
            async move { limits.admit(host).await.unwrap().finish_because(Outcome::Failed, Some(reason.into())) }
        };
        fail("a", "timed out").await;
        fail("b", "HTTP 502").await;
        fail("b", "HTTP 503").await;
        fail("c", "refused").await;
        limits.admit("d").await.unwrap().finish(Outcome::Answered);
        let failing = limits.failing(10);
        let summary: Vec<_> =
            failing.iter().map(|h| (h.host.as_str(), h.failures, h.last_reason.as_str(), h.paused)).collect();
        assert_eq!(summary, [("b", 2, "HTTP 503", true), ("a", 1, "timed out", false), ("c", 1, "refused", false)]);
        assert_eq!(limits.failing(1).len(), 1, "at most n");
        limits.admit("a").await.unwrap().finish(Outcome::Answered);
        assert!(limits.failing(10).iter().all(|h| h.host != "a"), "a host that answers is not failing");
    }

    #[tokio::test]
    async fn hosts_that_hold_nothing_are_forgotten_and_the_others_kept() {
        let limits = HostLimits::new(HostPolicy { failures_to_pause: 1, ..Default::default() });
        let held = limits.admit("held").await.unwrap();
        limits.admit("failing").await.unwrap().finish(Outcome::Failed);
        limits.block("limited", Duration::from_secs(60));
        for n in 0..10 * PRUNE_FROM {
            limits.admit(&format!("h{n}")).await.unwrap().finish(Outcome::Answered);
        }
        let map = limits.hosts.lock().unwrap();
        assert!(map.hosts.len() <= PRUNE_FROM, "{} hosts kept", map.hosts.len());
        for kept in ["held", "failing", "limited"] {
            assert!(map.hosts.contains_key(kept), "{kept} holds state and is kept");
        }
        drop(map);
        assert_eq!((limits.paused_hosts(), limits.blocked_hosts()), (1, 1));
        drop(held);
    }

    #[tokio::test]
    async fn a_blocked_host_waits_and_others_do_not() {
        let limits = HostLimits::default();
        limits.block("a", Duration::from_millis(80));
        assert_eq!(limits.blocked_hosts(), 1);
        let start = Instant::now();
        limits.wait("b").await;
        assert!(start.elapsed() < Duration::from_millis(50));
        limits.wait("a").await;
        assert!(start.elapsed() >= Duration::from_millis(80));
        assert_eq!(limits.blocked_hosts(), 0);
    }

    #[tokio::test]
    async fn a_host_has_at_most_its_slots_in_flight() {
        let limits = HostLimits::new(HostPolicy { max_concurrent: 2, ..Default::default() });
        let (a, b) = (limits.admit("h").await.unwrap(), limits.admit("h").await.unwrap());
        let third = tokio::time::timeout(Duration::from_millis(50), limits.admit("h")).await;
        assert!(third.is_err(), "a third request to the host waits");
        let other = tokio::time::timeout(Duration::from_millis(50), limits.admit("other")).await;
        assert!(other.is_ok(), "another host does not");
        a.finish(Outcome::Answered);
        assert!(tokio::time::timeout(Duration::from_millis(50), limits.admit("h")).await.is_ok());
        drop(b);
    }

    #[tokio::test]
    async fn failures_pause_a_host_and_a_probe_reopens_or_closes_it() {
        let policy = HostPolicy { failures_to_pause: 2, first_pause: Duration::from_millis(60), ..Default::default() };
        let limits = HostLimits::new(policy);
        for _ in 0..2 {
            limits.admit("h").await.unwrap().finish(Outcome::Failed);
        }
        let e = limits.admit("h").await.err().expect("paused");
        assert!(e.to_string().contains("host h is paused"), "{e}");
        assert_eq!((limits.paused_hosts(), limits.refused_requests()), (1, 1));
        assert!(limits.admit("other").await.is_ok(), "other hosts go on");
        tokio::time::sleep(Duration::from_millis(70)).await;
        let probe = limits.admit("h").await.unwrap();
        assert!(limits.admit("h").await.is_err(), "one probe at a time");
        probe.finish(Outcome::Answered);
        assert!(limits.admit("h").await.is_ok(), "a success closes the breaker");
        assert_eq!(limits.paused_hosts(), 0);
    }

    /// A step of the breaker's model test: a request at `advance_ms` later, ending so.
    #[derive(Debug, Clone)]
    struct Step {
        advance_ms: u64,
        outcome: Outcome,
    }

    fn step() -> impl Strategy<Value = Step> {
        let outcome = prop_oneof![Just(Outcome::Answered), Just(Outcome::Failed), Just(Outcome::Neutral)];
        (0u64..5_000, outcome).prop_map(|(advance_ms, outcome)| Step { advance_ms, outcome })
    }

    proptest! {
        /// Against a model: a host is paused exactly after `failures_to_pause` failures in a row
        /// of admitted requests, stays paused for the pause (doubling per failed probe, capped),
        /// admits one probe once it is over, and any answer closes it.
        #[test]
        fn the_breaker_follows_its_rules(steps in proptest::collection::vec(step(), 1..80), threshold in 1u32..6) {
            let policy = HostPolicy {
                max_concurrent: 1,
                failures_to_pause: threshold,
                first_pause: Duration::from_millis(1_000),
                max_pause: Duration::from_millis(8_000),
            };
            let (mut breaker, mut now) = (Breaker::default(), Instant::now());
            let (mut failures, mut paused_until, mut pauses) = (0u32, None::<Instant>, 0u32);
            for s in steps {
                now += Duration::from_millis(s.advance_ms);
                let admitted = breaker.admit(now);
                let model_paused = paused_until.is_some_and(|t| now < t);
                prop_assert_eq!(matches!(admitted, Admit::Paused(_)), model_paused, "{:?}", breaker);
                if model_paused {
                    continue;
                }
                let probe = admitted == Admit::Probe;
                prop_assert_eq!(probe, paused_until.is_some(), "a request after a pause is its probe");
                breaker.record(s.outcome, probe, now, &policy);
                match s.outcome {
                    Outcome::Answered => (failures, paused_until, pauses) = (0, None, 0),
                    Outcome::Neutral => {}
                    Outcome::Failed if probe || failures + 1 >= threshold => {
                        let pause = Duration::from_millis((1_000u64 << pauses).min(8_000));
                        (failures, paused_until, pauses) = (0, Some(now + pause), pauses + 1);
                    }
                    Outcome::Failed => failures += 1,
                }
                prop_assert_eq!(breaker.is_paused(now), paused_until.is_some_and(|t| now < t));
            }
        }
    }
}
