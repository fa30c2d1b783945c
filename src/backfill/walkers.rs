//! The threads that read and walk backfilled repos: one per core, at a lower scheduling
//! priority (nice 10), so that while a backfill keeps every core busy, queries and live
//! ingestion are still scheduled first. Jobs wait for a free thread, which also bounds how
//! many repos are read and walked at once.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// A pool of low-priority threads for CPU-bound backfill work.
pub struct Walkers {
    jobs: Mutex<Sender<Job>>,
}

impl Walkers {
    /// Starts `n` threads.
    pub fn new(n: usize) -> Self {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("backfill-walk-{i}")).spawn(move || work(&rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "starting a backfill walk thread");
            }
        }
        Self { jobs: Mutex::new(tx) }
    }

    /// Runs `f` on a walk thread and waits for its result; `None` if the pool is gone or `f`
    /// panicked.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        self.jobs.lock().expect("walk jobs").send(job).ok()?;
        result.await.ok()
    }
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    crate::process::Priority::Walkers.apply_to_this_thread();
    loop {
        let job = match jobs.lock().expect("walk jobs").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        // A panicking job loses its result (the caller sees `None`), not the thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}
