//! Test support: stores whose clock the test sets, and events to fill their logs.

use std::cell::Cell;

use crate::store::{Action, RecordEvent, Store, StoredEvent};

thread_local! {
    /// The clock of the stores [`open`] gives, per test thread, so tests running in parallel
    /// don't move each other's clocks (a store reads it on the thread that commits).
    static CLOCK: Cell<u64> = const { Cell::new(1_000_000) };
}

/// Sets this thread's test clock (unix µs).
pub fn set(time_us: u64) {
    CLOCK.with(|c| c.set(time_us));
}

/// Opens the store in `dir` on this thread's test clock.
pub fn open(dir: &std::path::Path) -> Store {
    let mut store = Store::open(dir).unwrap();
    store.log.clock = || CLOCK.with(Cell::get);
    store
}

/// `n` delete events of `did:plc:a` (the smallest record events there are).
pub fn events(n: usize) -> Vec<StoredEvent> {
    (0..n)
        .map(|i| {
            StoredEvent::Record(RecordEvent {
                live: true,
                did: "did:plc:a".into(),
                rev: "r".into(),
                collection: "a.b.c".into(),
                rkey: format!("k{i}").into(),
                action: Action::Delete,
                cid: vec![],
                replaced: None,
                handled: vec![],
                body: None,
            })
        })
        .collect()
}
