//! Journal writeback. Each time fjall flushes a memtable it fsyncs its journal while holding
//! the journal lock, which every commit needs; with tens of MB of the journal still dirty in
//! the page cache, that fsync took ~100 ms and stalled the pipeline. A thread here asks the
//! kernel to start writing the journal back (`sync_file_range`, as RocksDB's
//! `wal_bytes_per_sync` does) shortly after commits, without waiting and without fjall's locks,
//! so the fsync finds little left to write.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// How long journal writes may stay only in the page cache.
const PERIOD: Duration = Duration::from_millis(50);

/// Starts writeback of the journal in the background; stops when dropped.
pub(super) struct JournalWriteback {
    dirty: Arc<AtomicBool>,
    /// Dropping it tells the thread to stop.
    _stop: mpsc::Sender<()>,
}

impl JournalWriteback {
    /// Watches the journals (`*.jnl`) in the database directory `dir`.
    pub(super) fn start(dir: PathBuf) -> Self {
        let dirty = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let flag = dirty.clone();
        let spawned = std::thread::Builder::new().name("sluice-writeback".into()).spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(PERIOD) {
                if flag.swap(false, Ordering::Relaxed) {
                    start_writeback(&dir);
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no journal writeback thread; commits may stall on fjall's journal fsyncs");
        }
        Self { dirty, _stop: stop }
    }

    /// Notes that a commit wrote to the journal.
    pub(super) fn wrote(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }
}

/// Starts writing back every journal file in `dir`; returns at once.
fn start_writeback(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_some_and(|x| x == "jnl")
            && let Ok(file) = std::fs::File::open(&path)
        {
            sync_file_range_write(&file);
        }
    }
}

#[cfg(target_os = "linux")]
fn sync_file_range_write(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call; the call only starts
    // writeback of the file's dirty pages.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_file_range_write(_: &std::fs::File) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writeback_runs_over_journals_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0.jnl"), vec![1u8; 1 << 16]).unwrap();
        let writeback = JournalWriteback::start(dir.path().to_path_buf());
        writeback.wrote();
        std::thread::sleep(PERIOD * 3);
        assert!(!writeback.dirty.load(Ordering::Relaxed), "the thread took the dirty flag");
        drop(writeback);
    }
}
