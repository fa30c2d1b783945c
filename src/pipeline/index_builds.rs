//! Keeps the store's indexes in step with the filter: puts the definitions of every filter put
//! in force into the store (a new or changed index starts building, a removed one is dropped),
//! and builds indexes from the stored records in the background, a batch at a time, while
//! indexing goes on. A build resumes from its stored position after a restart.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::filter::FilterHandle;
use crate::store::Store;

/// How often the filter in force is looked at when nothing is building.
const IDLE: Duration = Duration::from_millis(200);

/// The shortest pause after a step of a repo's count move: the writer lock is not fair, so
/// without it the next step could take it again before the commits waiting for it.
const MOVE_PAUSE: Duration = Duration::from_millis(1);

/// The background thread; stopped and joined on drop.
pub struct Maintainer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Maintainer {
    /// Puts `filter`'s indexes in force now (so that a caller sees them at once), then starts
    /// the thread that follows its edits and builds, reading `batch` records keys a build step
    /// (`[storage] index_build_batch`: each step holds the writer lock while it writes, so it
    /// stays short).
    pub fn start(
        store: Arc<Store>,
        filter: FilterHandle,
        batch: usize,
    ) -> Result<Maintainer, crate::store::StoreError> {
        let mut current = filter.load();
        apply(&store, &current.filter.indexes)?;
        store.set_index_move_rows(batch.min(crate::store::MOVE_ROWS));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-indexes".into())
            .spawn(move || {
                // Whether the last build batch, the last count move step, or the last try to put
                // a save's indexes in force, failed: a failure is logged once, not at every retry.
                let (mut failed, mut move_failed, mut apply_failed) = (false, false, false);
                while !*stopping.0.lock().expect("index maintainer lock") {
                    let now = filter.load();
                    // A save whose indexes could not be put in force (a failed write) is tried
                    // again at every turn until they are, not left until the next save.
                    if !Arc::ptr_eq(&now, &current) {
                        match apply(&store, &now.filter.indexes) {
                            Ok(()) => (current, apply_failed) = (now, false),
                            Err(e) => {
                                if !std::mem::replace(&mut apply_failed, true) {
                                    let e = crate::error::chain(&e);
                                    tracing::error!("putting the filter's indexes in force (retried): {e}");
                                }
                            }
                        }
                    }
                    // Busy while a batch was built: the next look finds the next one, or none.
                    let busy = match store.build_index_step(batch.max(1)) {
                        Ok(step) => {
                            failed = false;
                            step.is_some()
                        }
                        Err(e) => {
                            if !std::mem::replace(&mut failed, true) {
                                tracing::error!("building an index (retried): {}", crate::error::chain(&e));
                            }
                            false
                        }
                    };
                    // A repo whose counts move in steps, a step between build steps, then a pause as
                    // long as the step (at least `MOVE_PAUSE`): a move takes half a core at most,
                    // and the live commits keep the rest.
                    let step = std::time::Instant::now();
                    let moving = match store.move_index_counts_step() {
                        Ok(moving) => {
                            move_failed = false;
                            moving
                        }
                        Err(e) => {
                            if !std::mem::replace(&mut move_failed, true) {
                                tracing::error!("moving an index's counts (retried): {}", crate::error::chain(&e));
                            }
                            false
                        }
                    };
                    if moving {
                        std::thread::sleep(step.elapsed().max(MOVE_PAUSE));
                    }
                    if !busy && !moving {
                        let stopped = stopping.0.lock().expect("index maintainer lock");
                        let _ = stopping.1.wait_timeout(stopped, IDLE);
                    }
                }
            })
            .expect("spawning the index thread");
        Ok(Maintainer { stop, thread: Some(thread) })
    }
}

/// Puts `specs` in force in `store`, logging what starts building and what is dropped.
fn apply(store: &Store, specs: &[crate::indexes::IndexSpec]) -> Result<(), crate::store::StoreError> {
    let (started, dropped) = store.set_indexes(specs)?;
    for name in started {
        tracing::info!(index = %name, "index defined: building it from the stored records");
    }
    for name in dropped {
        tracing::info!(index = %name, "index removed (or redefined): its entries are dropped");
    }
    Ok(())
}

impl Drop for Maintainer {
    fn drop(&mut self) {
        *self.stop.0.lock().expect("index maintainer lock") = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
