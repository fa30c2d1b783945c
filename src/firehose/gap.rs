//! No gap before the first frame. Until a connection has delivered a frame, sluice knows no
//! `seq` to resume from, so a connection lost before then would resume live and miss what was
//! sequenced while it was down. Instead, sluice remembers since when it has been without a
//! position (`StreamPosition::gap_since`, also saved as the `firehose-since` cursor, so a
//! restart keeps it), and before connecting again it finds the last `seq` sequenced before that
//! time and resumes after it.
//!
//! The search asks the server for the first frame after a cursor, one short connection per
//! cursor, and reads that frame's `time`: first from the oldest event kept, then at cursors
//! ever further on (1, 2, 4, ... events), then by halving between the last cursor found old and
//! the first found new. The number of connections grows with the logarithm of the server's
//! `seq`, not with the network's size, and what is replayed is only what was sequenced since
//! (stale frames among it are skipped). Clocks may disagree, so the search looks
//! [`CLOCK_SKEW_US`] further back.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::client::{Probe, ProbeError, probe, subscribe_url};

/// How far the server's clock may be behind ours: the search looks this much further back.
pub const CLOCK_SKEW_US: u64 = 30_000_000;

/// How long a probe waits for a frame before taking the cursor for the stream's head.
const PROBE_QUIET: Duration = Duration::from_secs(1);

/// The most probes one search makes (enough for any 63-bit `seq`, twice over).
const MAX_PROBES: usize = 130;

/// The cursor after which every event sequenced at or after `since_us` (unix µs) comes: the
/// `seq` of the last event sequenced before it (by the server's clock, less the skew), or 0.
pub(super) async fn resume_point(base: &str, since_us: u64, stop: &CancellationToken) -> Result<i64, ProbeError> {
    search(base, since_us.saturating_sub(CLOCK_SKEW_US), stop).await.map(|(cursor, _)| cursor)
}

/// The `seq` of the last event sequenced before `before` (unix µs), or 0; and the probes made.
/// Public only for `tests/firehose_live.rs`, which checks it against the devnet's relay.
#[doc(hidden)]
pub async fn search(base: &str, before: u64, stop: &CancellationToken) -> Result<(i64, usize), ProbeError> {
    // What is known: the events up to `lo` are older than `before`; the one after `hi` (when
    // there is one) is not.
    let (mut lo, mut hi) = (0i64, None::<i64>);
    let mut step = 1i64;
    for probes in 0..MAX_PROBES {
        let cursor = match hi {
            Some(hi) if hi <= lo => return Ok((lo, probes)),
            Some(hi) => lo + (hi - lo) / 2,
            None if lo == 0 => 0,
            None => lo.saturating_add(step),
        };
        if stop.is_cancelled() {
            return Err(ProbeError::Stopped);
        }
        let url = subscribe_url(base, Some(cursor))?;
        match probe(&url, stop, PROBE_QUIET).await? {
            Probe::First { seq, time_us } if time_us.is_some_and(|t| t < before) && seq > cursor => {
                lo = seq;
                step = step.saturating_mul(2);
            }
            // Newer, without a readable time, or nothing after the cursor yet.
            _ => hi = Some(cursor),
        }
    }
    Ok((lo, MAX_PROBES))
}
