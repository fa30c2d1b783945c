//! What a storage failure says, and the first one kept.
//!
//! fjall answers the first write that fails with its I/O error (a journal write returns it to
//! the committer; a flush or compaction keeps it, see `vendor/README.md`) and poisons the
//! database: every write after that gets `Poisoned`, which says nothing of why. Every write of
//! the store goes through [`Db`], which keeps the first I/O failure with the data directory's
//! path, so that the error of that write and of every later one names the cause (a full disk,
//! say) rather than `Poisoned`. Reads go on as before (fjall still answers them).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};

use super::{Result, StoreError};

/// A write to the data directory failed: the store takes no more writes until it is opened
/// again. What was committed before it stays committed (fjall's journal).
#[derive(Debug, Clone)]
pub struct DiskFailure {
    path: PathBuf,
    error: Arc<io::Error>,
}

impl DiskFailure {
    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The I/O error of the first write that failed.
    pub fn io_error(&self) -> &io::Error {
        &self.error
    }

    /// Whether the disk (or the user's quota) is full.
    pub fn is_full(&self) -> bool {
        matches!(self.error.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
    }
}

impl std::error::Error for DiskFailure {}

/// The I/O error is part of the message (before the path and what to do), not a source of its
/// own: a chain printed with `{:#}` would repeat it after the advice.
impl std::fmt::Display for DiskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (error, path) = (&self.error, self.path.display());
        match self.is_full() {
            true => write!(f, "storage full: {error} at {path}; free space and run again, nothing is lost"),
            false => write!(f, "storage failed: {error} at {path}; check the disk and run again, nothing is lost"),
        }
    }
}

/// The database, and the first write failure it met. Parts that write hold a clone.
#[derive(Clone)]
pub(super) struct Db {
    db: Database,
    state: Arc<State>,
}

struct State {
    path: PathBuf,
    first: OnceLock<DiskFailure>,
}

impl Db {
    /// Opens (or creates) the database in `dir` with a block cache of `cache_bytes` (journal
    /// uncompressed: see `Store::open_with`).
    pub(super) fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        let path = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let state = Arc::new(State { path, first: OnceLock::new() });
        let opened =
            Database::builder(dir).journal_compression(fjall::CompressionType::None).cache_size(cache_bytes).open();
        match opened {
            Ok(db) => Ok(Self { db, state }),
            Err(e) => Err(state.failed(e, None)),
        }
    }

    /// A new batch for about `n` writes, written to the journal without a sync (fjall's own
    /// syncs and [`Db::persist`] make it durable).
    pub(super) fn batch(&self, n: usize) -> OwnedWriteBatch {
        OwnedWriteBatch::with_capacity(self.db.clone(), n).durability(Some(PersistMode::Buffer))
    }

    /// A snapshot of every keyspace as it stands.
    pub(super) fn snapshot(&self) -> fjall::Snapshot {
        self.db.snapshot()
    }

    /// Commits `batch`.
    pub(super) fn commit(&self, batch: OwnedWriteBatch) -> Result<()> {
        batch.commit().map_err(|e| self.failed(e))
    }

    /// A write of its own (a keyspace's `insert`).
    pub(super) fn write<T>(&self, write: impl FnOnce() -> fjall::Result<T>) -> Result<T> {
        write().map_err(|e| self.failed(e))
    }

    /// Opens (or creates) keyspace `name`.
    pub(super) fn keyspace(&self, name: &str, options: impl FnOnce() -> KeyspaceCreateOptions) -> Result<Keyspace> {
        self.db.keyspace(name, options).map_err(|e| self.failed(e))
    }

    /// The bytes of decompressed blocks the block cache holds now.
    pub(super) fn cache_bytes(&self) -> u64 {
        self.db.cache_size()
    }

    /// The names of every keyspace.
    pub(super) fn keyspace_names(&self) -> Vec<String> {
        self.db.list_keyspace_names().iter().map(|name| name.to_string()).collect()
    }

    /// Deletes a keyspace and everything in it.
    pub(super) fn delete_keyspace(&self, keyspace: Keyspace) -> Result<()> {
        self.db.delete_keyspace(keyspace).map_err(|e| self.failed(e))
    }

    /// Flushes the journal to disk.
    pub(super) fn persist(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll).map_err(|e| self.failed(e))
    }

    /// What a failed write of this database means (see the module's doc).
    pub(super) fn failed(&self, e: fjall::Error) -> StoreError {
        self.state.failed(e, Some(&self.db))
    }
}

impl State {
    /// An I/O error becomes the first failure if there was none; `Poisoned` is the first
    /// failure, ours or (`db`) a background worker's.
    fn failed(&self, e: fjall::Error, db: Option<&Database>) -> StoreError {
        let io = match e {
            fjall::Error::Io(io) | fjall::Error::Storage(fjall::LsmError::Io(io)) => io,
            fjall::Error::Poisoned => match self.first.get() {
                Some(first) => return StoreError::Disk(first.clone()),
                None => match db.and_then(Database::poison_cause) {
                    Some(io) => io,
                    None => return StoreError::Poisoned { path: self.path.clone() },
                },
            },
            other => return StoreError::Fjall(other),
        };
        let failure = self.first.get_or_init(|| DiskFailure { path: self.path.clone(), error: Arc::new(io) });
        StoreError::Disk(failure.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_testkit::SmallDisk;

    fn failure(e: fjall::Error) -> StoreError {
        let state = State { path: "/srv/sluice/data".into(), first: OnceLock::new() };
        state.failed(e, None)
    }

    #[test]
    fn a_full_disk_says_so_with_the_path() {
        let e = failure(fjall::Error::Io(io::ErrorKind::StorageFull.into()));
        let text = e.to_string();
        assert!(text.starts_with("storage full: "), "{text}");
        assert!(text.contains(" at /srv/sluice/data; free space and run again, nothing is lost"), "{text}");
        let os = failure(fjall::Error::Io(io::Error::from_raw_os_error(libc::ENOSPC))).to_string();
        assert_eq!(
            os,
            "storage full: No space left on device (os error 28) at /srv/sluice/data; \
             free space and run again, nothing is lost"
        );
        assert!(std::error::Error::source(&e).is_none(), "the I/O error is in the message, not repeated");
    }

    #[test]
    fn other_io_errors_say_storage_failed_and_the_first_one_stays() {
        let state = State { path: "/data".into(), first: OnceLock::new() };
        let eio = state.failed(fjall::Error::Io(io::Error::from_raw_os_error(libc::EIO)), None);
        assert_eq!(
            eio.to_string(),
            "storage failed: Input/output error (os error 5) at /data; check the disk and run again, nothing is lost"
        );
        // A later write is refused as `Poisoned`; a later I/O error is not the cause either.
        for later in [fjall::Error::Poisoned, fjall::Error::Io(io::ErrorKind::StorageFull.into())] {
            assert_eq!(state.failed(later, None).to_string(), eio.to_string());
        }
    }

    /// Incompressible text of `len` bytes (the journal is not compressed; tables are).
    fn noise(seed: u64, len: usize) -> String {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'!' + (x % 90) as u8)
            })
            .collect()
    }

    /// Commits on a 2 MB disk until it is full: the commit that fails says so, with the path,
    /// and so does every later write (fjall answers them `Poisoned`); what was committed
    /// before is all there once the store is opened again with room.
    #[test]
    fn a_full_disk_is_named_by_the_failing_write_and_every_later_one() {
        let disk = SmallDisk::mount("2m");
        let data = disk.mount.join("data");
        let store = crate::store::Store::open(&data).unwrap();
        let mut committed = Vec::new();
        let failed = loop {
            let (service, value) = (format!("c{}", committed.len()), noise(committed.len() as u64, 32 << 10));
            match store.set_states(&[], Some((&service, &value))) {
                Ok(()) => committed.push((service, value)),
                Err(e) => break e,
            }
            assert!(committed.len() < 1000, "2 MB took {} commits of 32 KB", committed.len());
        };
        let want = format!(
            "storage full: No space left on device (os error 28) at {}; free space and run again, nothing is lost",
            data.display()
        );
        assert_eq!(failed.to_string(), want);
        assert!(failed.disk_failure().is_some_and(DiskFailure::is_full));
        assert!(committed.len() > 10, "only {} commits before the disk was full", committed.len());
        // Later writes, each way the store writes: the same first cause, not `Poisoned`.
        assert_eq!(store.cursors().save("later", "x").unwrap_err().to_string(), want);
        assert_eq!(store.set_states(&[], Some(("later", "x"))).unwrap_err().to_string(), want);
        assert_eq!(store.persist().unwrap_err().to_string(), want);
        // Reads still work.
        assert_eq!(store.cursors().get("c0").unwrap().as_deref(), Some(committed[0].1.as_str()));
        drop(store);

        disk.grow("64m");
        let store = crate::store::Store::open(&data).unwrap();
        for (service, value) in &committed {
            assert_eq!(store.cursors().get(service).unwrap().as_deref(), Some(value.as_str()), "{service}");
        }
        store.cursors().save("after", "room again").unwrap();
    }

    /// Takes all the free space of `dir`'s filesystem but `margin` bytes.
    fn fill(dir: &Path, margin: u64) {
        use std::io::Write;
        let path = dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        let mut len = 0u64;
        while let Ok(n) = file.write(&chunk) {
            len += n as u64;
        }
        file.set_len(len.saturating_sub(margin)).unwrap();
    }

    /// The disk fills while fjall flushes a memtable on a worker thread: the flush fails there,
    /// and the next write, which fjall answers `Poisoned`, names the flush's error.
    #[test]
    fn a_disk_filled_by_a_background_flush_is_named_by_the_next_write() {
        let disk = SmallDisk::mount("4m");
        let data = disk.mount.join("data");
        let db = Db::open(&data, 1 << 20).unwrap();
        let ks = db.keyspace("k", KeyspaceCreateOptions::default).unwrap();
        for i in 0..16 {
            db.write(|| ks.insert(format!("k{i}"), noise(i, 32 << 10))).unwrap();
        }
        db.persist().unwrap();
        // Room for a small journal write, not for the memtable's 512 KB table.
        fill(&disk.mount, 64 << 10);
        db.write(|| ks.rotate_memtable()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while db.db.poison_cause().is_none() {
            assert!(std::time::Instant::now() < deadline, "the flush did not fail on a full disk");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let failed = db.write(|| ks.insert("later", "x")).unwrap_err();
        assert_eq!(
            failed.to_string(),
            format!(
                "storage full: No space left on device (os error 28) at {}; free space and run again, \
                 nothing is lost",
                data.display()
            )
        );
        drop((ks, db));

        disk.grow("64m");
        let db = Db::open(&data, 1 << 20).unwrap();
        let ks = db.keyspace("k", KeyspaceCreateOptions::default).unwrap();
        for i in 0..16 {
            assert_eq!(ks.get(format!("k{i}")).unwrap().as_deref(), Some(noise(i, 32 << 10).as_bytes()));
        }
    }

    #[test]
    fn poisoned_with_no_cause_known_still_names_the_directory() {
        let text = failure(fjall::Error::Poisoned).to_string();
        assert!(text.starts_with("storage failed at /srv/sluice/data"), "{text}");
    }
}
