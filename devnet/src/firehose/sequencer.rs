//! The devnet's firehose sequencer: every event gets the next devnet-wide `seq` (from 1), its
//! encoded frame is kept for replay and broadcast to live subscribers. A subscription takes its
//! replay and its live receiver under the same lock as publishing, so a subscriber sees every
//! event after its cursor exactly once. The events are made in `feed`, served in `ws`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::frame::{Body, EncodeError};
use crate::lock::lock;

/// Live events a subscriber may fall behind by before its connection is closed.
const LIVE_CAPACITY: usize = 4096;

/// One sequenced event.
pub(crate) struct Event {
    /// Its `seq`.
    pub seq: i64,
    /// The index of the PDS host of its account.
    pub host: usize,
    /// The encoded frame.
    pub frame: Bytes,
}

struct Log {
    events: Vec<Arc<Event>>,
    live: broadcast::Sender<Arc<Event>>,
}

/// The history, the live channel and the tokens that close or stall every open subscription.
pub(crate) struct Sequencer {
    log: Mutex<Log>,
    stop: Mutex<CancellationToken>,
    stall: Mutex<CancellationToken>,
    /// While set, new subscriptions are refused (the host looks down).
    refusing: AtomicBool,
}

/// What a new subscriber gets: the events after its cursor, then the live ones.
pub(crate) struct Subscription {
    /// Events with `seq` above the cursor, in order.
    pub replay: Vec<Arc<Event>>,
    /// Events published after `replay` was taken.
    pub live: broadcast::Receiver<Arc<Event>>,
    /// Cancelled by [`Sequencer::drop_connections`].
    pub stop: CancellationToken,
    /// Cancelled by [`Sequencer::stall_connections`]: the connection stays open but sends and
    /// reads nothing more, so pings go unanswered.
    pub stall: CancellationToken,
}

impl Default for Sequencer {
    fn default() -> Self {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Self {
            log: Mutex::new(Log { events: Vec::new(), live }),
            stop: Mutex::default(),
            stall: Mutex::default(),
            refusing: AtomicBool::new(false),
        }
    }
}

impl Sequencer {
    /// Numbers, encodes, stores and broadcasts `body`; returns its `seq`.
    pub fn publish(&self, host: usize, body: Body) -> Result<i64, EncodeError> {
        let mut log = lock(&self.log);
        let seq = log.events.len() as i64 + 1;
        let event = Arc::new(Event { seq, host, frame: Bytes::from(body.encode(seq)?) });
        log.events.push(event.clone());
        let _ = log.live.send(event);
        Ok(seq)
    }

    /// The last `seq` (0 before any event).
    pub fn last_seq(&self) -> i64 {
        lock(&self.log).events.len() as i64
    }

    /// Subscribes from `cursor` (`None`: live only). `Err(last seq)` when the cursor is ahead.
    pub fn subscribe(&self, cursor: Option<i64>) -> Result<Subscription, i64> {
        let log = lock(&self.log);
        let last = log.events.len() as i64;
        let replay = match cursor {
            Some(c) if c > last => return Err(last),
            Some(c) => log.events[log.events.partition_point(|e| e.seq <= c)..].to_vec(),
            None => Vec::new(),
        };
        Ok(Subscription {
            replay,
            live: log.live.subscribe(),
            stop: lock(&self.stop).clone(),
            stall: lock(&self.stall).clone(),
        })
    }

    /// Closes every open subscription (new ones are not affected).
    pub fn drop_connections(&self) {
        std::mem::take(&mut *lock(&self.stop)).cancel();
    }

    /// Makes every open subscription go silent without closing: no events, no pongs (a
    /// dead peer whose TCP connection stays up). New ones are not affected.
    pub fn stall_connections(&self) {
        std::mem::take(&mut *lock(&self.stall)).cancel();
    }

    /// Refuses new subscriptions (503) while `refusing`.
    pub fn set_refusing(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::Relaxed);
    }

    /// Whether new subscriptions are refused.
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }
}
