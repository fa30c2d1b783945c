//! A repo walk run beside the pipeline: its keys stream to the staging thread as the tree is
//! read, so handlers start at once, while nothing is committed until the whole tree is checked.

use std::sync::mpsc;
use std::thread::{Scope, ScopedJoinHandle};

use crate::repo::{LoadedRepo, RecordKey, RepoError};

use super::walk_diff::WalkKeys;

/// Keys sent to the staging thread at a time.
const CHUNK: usize = 1024;

/// The walk behind a walk's changes: checked already, or still running on its own thread.
pub(super) enum Walk<'s> {
    /// Checked whole before staging; it found this many records.
    Checked(u64),
    /// Running; ends with its record count, or with why the tree is malformed.
    Running(ScopedJoinHandle<'s, Result<u64, RepoError>>),
}

impl Walk<'_> {
    /// Whether [`Walk::finish`] would return at once.
    pub(super) fn is_over(&self) -> bool {
        match self {
            Walk::Checked(_) => true,
            Walk::Running(handle) => handle.is_finished(),
        }
    }

    /// Waits until the whole tree is checked; returns how many records it holds.
    pub(super) fn finish(self) -> Result<u64, RepoError> {
        match self {
            Walk::Checked(n) => Ok(n),
            Walk::Running(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        }
    }
}

/// Walks `repo` on a thread of `scope`; its keys come out of the returned iterator, in key
/// order, as they are found. If the tree turns out malformed the keys just stop, and
/// [`Walk::finish`] says why.
pub(super) fn spawn<'s, 'a: 's>(scope: &'s Scope<'s, '_>, repo: &'a LoadedRepo) -> (Walk<'s>, WalkKeys<'a>) {
    // Unbounded, so the walk never waits for staging: the committer waits for the walk.
    let (tx, rx) = mpsc::channel::<Vec<RecordKey>>();
    let handle = scope.spawn(move || {
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut found = 0;
        for key in repo.record_keys() {
            chunk.push(key?);
            found += 1;
            // A closed channel means staging failed: the walk's outcome no longer matters.
            if chunk.len() == CHUNK && tx.send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK))).is_err() {
                return Ok(found);
            }
        }
        let _ = tx.send(chunk);
        Ok(found)
    });
    (Walk::Running(handle), Box::new(rx.into_iter().flatten()))
}
