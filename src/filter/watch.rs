//! Hot reload: watch the filter file and swap each valid save into the [`FilterHandle`].
//!
//! The parent directory is watched (editors save by rename), and the file's length and mtime are
//! also polled every 250 ms as a fallback where inotify is missing, so a save is in force
//! within a second. An invalid save is logged with file, line and reason, recorded in the
//! handle's [`SaveStatus`](super::SaveStatus), and the old filter stays in force.
//!
//! Only changes to the file count: reading it raises access notifications too, and taking
//! those as saves made every reload trigger the next (a refused save was logged ~30 times a
//! second until the file was fixed).
//!
//! The lexicon files of the filter's `[lexicons] dir` are saves too: their lengths and mtimes
//! are polled with the file's, and a change reloads the filter with them (a broken lexicon
//! file is refused like a bad filter, naming the file, and the lexicons in force stay).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};

use super::{Filter, FilterHandle};

const POLL: Duration = Duration::from_millis(250);
const SETTLE: Duration = Duration::from_millis(30);

/// What wakes the reload loop.
enum Wake {
    /// The file's directory changed.
    Changed,
    /// The watcher was dropped.
    Stop,
}

/// A running watcher; dropping it stops the watch at once.
pub struct FilterWatcher {
    wake: mpsc::Sender<Wake>,
    thread: Option<std::thread::JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Drop for FilterWatcher {
    fn drop(&mut self) {
        // Sent, not just hung up: the loop waits on the channel the notifications also use, so
        // it stops now rather than at its next poll (a process exited up to 250 ms late).
        let _ = self.wake.send(Wake::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts watching `path`, putting every valid save in force in `handle`.
pub fn watch(path: &Path, handle: FilterHandle) -> std::io::Result<FilterWatcher> {
    let path = std::path::absolute(path)?;
    let (tx, rx) = mpsc::channel::<Wake>();
    let name = path.file_name().map(|n| n.to_owned());
    let notify_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !matches!(ev.kind, EventKind::Access(_))
            && ev.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = notify_tx.send(Wake::Changed);
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
    let mut state = ReloadLoop { path, handle, stamp: Stamp::default() };
    // Taken now, not when the thread gets going: a save made right after this returns is a
    // change to it.
    state.stamp = state.read_stamp();
    let thread = std::thread::Builder::new().name("filter-watch".into()).spawn(move || state.run(rx))?;
    Ok(FilterWatcher { wake: tx, thread: Some(thread), _watcher: watcher })
}

struct ReloadLoop {
    path: PathBuf,
    handle: FilterHandle,
    stamp: Stamp,
}

/// What a save changes: the filter file's length and mtime, and a digest of the paths, lengths
/// and mtimes of the lexicon files under the filter's `[lexicons] dir` (if it names one).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Stamp {
    file: Option<(u64, SystemTime)>,
    lexicons: Option<u64>,
}

/// The most lexicon files the poll looks at, so a `dir` pointed at a large tree costs a bounded
/// walk every poll.
const MAX_LEXICON_FILES: usize = 20_000;

/// A digest of the `.json` files under `dir`: each one's path, length and mtime.
fn lexicon_digest(dir: &Path) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let (mut dirs, mut seen) = (vec![dir.to_path_buf()], 0);
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let (path, Ok(meta)) = (entry.path(), entry.metadata()) else { continue };
            if meta.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "json") && seen < MAX_LEXICON_FILES {
                seen += 1;
                (path, meta.len(), meta.modified().ok()).hash(&mut hasher);
            }
        }
    }
    hasher.finish()
}

impl ReloadLoop {
    fn run(mut self, events: mpsc::Receiver<Wake>) {
        loop {
            let notified = match events.recv_timeout(POLL) {
                Ok(Wake::Changed) => true,
                Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => false,
            };
            let stamp = self.read_stamp();
            if notified || stamp != self.stamp {
                std::thread::sleep(SETTLE);
                while let Ok(wake) = events.try_recv() {
                    if let Wake::Stop = wake {
                        return;
                    }
                }
                let before = std::mem::take(&mut self.stamp);
                self.stamp = self.read_stamp();
                let dir = self.lexicon_dir();
                self.reload(before.lexicons != self.stamp.lexicons);
                // A save that moved `dir`: the files read are the new dir's.
                if self.lexicon_dir() != dir {
                    self.stamp.lexicons = self.lexicon_dir().map(|d| lexicon_digest(&d));
                }
            }
        }
    }

    fn read_stamp(&self) -> Stamp {
        let meta = std::fs::metadata(&self.path).ok();
        let file = meta.and_then(|m| Some((m.len(), m.modified().ok()?)));
        Stamp { file, lexicons: self.lexicon_dir().map(|d| lexicon_digest(&d)) }
    }

    /// The lexicon directory of the filter in force, if it names one.
    fn lexicon_dir(&self) -> Option<PathBuf> {
        self.handle.load().filter.lexicons.as_ref().map(|l| l.path.clone())
    }

    /// Loads the file and puts it in force if it says something new, or if `lexicons_changed`
    /// (the same settings over edited lexicon files).
    fn reload(&self, lexicons_changed: bool) {
        match Filter::load(&self.path) {
            Ok(filter) => {
                let changed = self.handle.load().filter != filter;
                if changed || (lexicons_changed && filter.lexicons.is_some()) {
                    let what = if changed { "filter reloaded" } else { "lexicons reloaded" };
                    tracing::info!(file = %self.path.display(), mode = filter.mode.as_str(), "{what}");
                    self.handle.store(filter);
                }
                self.handle.record_save(Ok(()));
            }
            Err(e) => {
                tracing::error!(error = %e, "filter save refused; the previous filter stays in force");
                self.handle.record_save(Err(e));
            }
        }
    }
}
