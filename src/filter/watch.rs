//! Hot reload: watch the filter file and swap each valid save into the [`FilterHandle`].
//!
//! The parent directory is watched (editors save by rename), and the file's length and mtime are
//! also polled every 250 ms as a fallback where inotify is missing, so a save is in force
//! within a second. An invalid save is logged with file, line and reason, recorded as the
//! watcher's last error, and the old filter stays in force.
//!
//! Only changes to the file count: reading it raises access notifications too, and taking
//! those as saves made every reload trigger the next (a refused save was logged ~30 times a
//! second until the file was fixed).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};

use super::{Filter, FilterError, FilterHandle};

const POLL: Duration = Duration::from_millis(250);
const SETTLE: Duration = Duration::from_millis(30);

/// A running watcher; dropping it stops the watch.
pub struct FilterWatcher {
    last_error: Arc<Mutex<Option<FilterError>>>,
    loads: Arc<AtomicU64>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl FilterWatcher {
    /// The error of the last refused save, cleared by the next good one.
    pub fn last_error(&self) -> Option<FilterError> {
        self.last_error.lock().expect("filter error lock").clone()
    }

    /// How many times the file was read since the watch started: once per save (or touch),
    /// none while it is left alone.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }
}

impl Drop for FilterWatcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts watching `path`, putting every valid save in force in `handle`.
pub fn watch(path: &Path, handle: FilterHandle) -> std::io::Result<FilterWatcher> {
    let path = std::path::absolute(path)?;
    let (tx, rx) = mpsc::channel::<()>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let name = path.file_name().map(|n| n.to_owned());
    let notify_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !matches!(ev.kind, EventKind::Access(_))
            && ev.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = notify_tx.send(());
        }
    })
    .and_then(|mut w| {
        let dir = path.parent().unwrap_or(Path::new("."));
        w.watch(dir, RecursiveMode::NonRecursive).map(|()| w)
    });
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "filter file notifications unavailable; polling only");
            None
        }
    };
    let (last_error, loads) = (Arc::new(Mutex::new(None)), Arc::new(AtomicU64::new(0)));
    let state = ReloadLoop { path, handle, last_error: last_error.clone(), loads: loads.clone(), stamp: None };
    let thread = std::thread::Builder::new().name("filter-watch".into()).spawn(move || state.run(rx, stop_rx))?;
    drop(tx);
    Ok(FilterWatcher { last_error, loads, stop: Some(stop_tx), thread: Some(thread), _watcher: watcher })
}

struct ReloadLoop {
    path: PathBuf,
    handle: FilterHandle,
    last_error: Arc<Mutex<Option<FilterError>>>,
    loads: Arc<AtomicU64>,
    stamp: Option<(u64, SystemTime)>,
}

impl ReloadLoop {
    fn run(mut self, events: mpsc::Receiver<()>, stop: mpsc::Receiver<()>) {
        self.stamp = self.read_stamp();
        loop {
            if !matches!(stop.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                return;
            }
            let notified = match events.recv_timeout(POLL) {
                Ok(()) => true,
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(POLL);
                    false
                }
            };
            let stamp = self.read_stamp();
            if notified || stamp != self.stamp {
                std::thread::sleep(SETTLE);
                while events.try_recv().is_ok() {}
                self.stamp = self.read_stamp();
                self.reload();
            }
        }
    }

    fn read_stamp(&self) -> Option<(u64, SystemTime)> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.len(), meta.modified().ok()?))
    }

    fn reload(&self) {
        let result = Filter::load(&self.path);
        self.loads.fetch_add(1, Ordering::Relaxed);
        let mut last_error = self.last_error.lock().expect("filter error lock");
        match result {
            Ok(filter) => {
                if self.handle.load().filter != filter {
                    tracing::info!(file = %self.path.display(), mode = filter.mode.as_str(), "filter reloaded");
                    self.handle.store(filter);
                }
                *last_error = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "filter save refused; the previous filter stays in force");
                *last_error = Some(e);
            }
        }
    }
}
