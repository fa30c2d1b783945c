//! Indexing many CAR files (`sluice index-car A.car B.car ...`): several files in flight at
//! once, so that a directory of small exports, each of which is one batch on one core, uses
//! every core; the exports of one repo are still applied in the order given.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use crate::{IndexError, IndexOptions, RepoOutcome, Sluice};

/// Indexes the CAR files at `paths` on up to `workers` threads and hands each file's result
/// to `report`, with its position in `paths`, in the order of `paths`.
///
/// Files are read and verified in parallel. Exports of different repos are applied in
/// parallel; exports of the same repo are applied in the order given (a later export diffs
/// against the earlier one, as when they are indexed one by one). A file that cannot be read
/// or verified is reported and holds nothing up.
pub fn index_files<P: AsRef<Path> + Sync>(
    sluice: &Sluice,
    paths: &[P],
    opts: &IndexOptions,
    workers: usize,
    mut report: impl FnMut(usize, Result<RepoOutcome, IndexError>),
) {
    let turns = Turns::default();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, paths.len().max(1)) {
            let (tx, turns) = (tx.clone(), &turns);
            scope.spawn(move || {
                while let Some(i) = turns.take(paths.len()) {
                    let result = index_file(sluice, paths[i].as_ref(), opts, i, turns);
                    if tx.send((i, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // Results arrive as files finish; they are reported in the order given.
        let (mut finished, mut next) = (BTreeMap::new(), 0);
        for (i, result) in rx {
            finished.insert(i, result);
            while let Some(result) = finished.remove(&next) {
                report(next, result);
                next += 1;
            }
        }
    });
}

/// Reads and verifies file `i`, then applies it once no earlier file of the same repo is left.
fn index_file(
    sluice: &Sluice,
    path: &Path,
    opts: &IndexOptions,
    i: usize,
    turns: &Turns,
) -> Result<RepoOutcome, IndexError> {
    let loaded =
        std::fs::read(path).map_err(IndexError::Read).and_then(|bytes| sluice.load_car_owned(bytes.into(), opts));
    let _turn = turns.wait(i, loaded.as_ref().ok().map(|repo| repo.did()));
    sluice.index_loaded(&loaded?)
}

/// The files in flight, so that each repo's exports are applied in the order given.
#[derive(Default)]
struct Turns {
    state: Mutex<TurnState>,
    changed: Condvar,
}

#[derive(Default)]
struct TurnState {
    /// The next file to take.
    next: usize,
    /// Files taken and not finished: (position, its repo's DID once loaded).
    in_flight: Vec<(usize, Option<Loaded>)>,
}

impl TurnState {
    /// Whether file `i`, of repo `did`, must wait: an earlier file is still loading, or is
    /// of the same repo and unfinished.
    fn must_wait(&self, i: usize, did: &str) -> bool {
        self.in_flight
            .iter()
            .any(|(j, loaded)| *j < i && loaded.as_ref().is_none_or(|other| other.as_deref() == Some(did)))
    }
}

/// What a loaded file is known to be: the DID of its repo, or none when it failed to load.
type Loaded = Option<String>;

impl Turns {
    /// Takes the next file, if any is left of `len`.
    fn take(&self, len: usize) -> Option<usize> {
        let mut state = self.state.lock().expect("turns");
        let i = state.next;
        (i < len).then(|| {
            state.next += 1;
            state.in_flight.push((i, None));
            i
        })
    }

    /// Records that file `i` is loaded (of repo `did`; `None` when it failed to load) and
    /// waits until every earlier file is loaded and none of them of the same repo is still
    /// unfinished. The returned guard marks file `i` finished when dropped.
    ///
    /// Files are taken in order and each is worked on until it finishes, so the earliest
    /// file in flight never waits: the wait always ends.
    fn wait(&self, i: usize, did: Option<&str>) -> TurnGuard<'_> {
        let mut state = self.state.lock().expect("turns");
        if let Some((_, slot)) = state.in_flight.iter_mut().find(|(j, _)| *j == i) {
            *slot = Some(did.map(str::to_string));
        }
        self.changed.notify_all();
        if let Some(did) = did {
            drop(self.changed.wait_while(state, |state| state.must_wait(i, did)).expect("turns"));
        }
        TurnGuard { turns: self, i }
    }
}

/// Marks a file finished (whatever happened to it) and wakes the files waiting on it.
struct TurnGuard<'a> {
    turns: &'a Turns,
    i: usize,
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.turns.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.in_flight.retain(|(j, _)| *j != self.i);
        self.turns.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_waits_for_earlier_files_of_its_repo_and_for_earlier_files_still_loading() {
        let turns = Turns::default();
        let (a, b, c) = (turns.take(3).unwrap(), turns.take(3).unwrap(), turns.take(3).unwrap());
        assert_eq!((a, b, c, turns.take(3)), (0, 1, 2, None));
        let first = turns.wait(a, Some("did:a"));
        {
            let state = turns.state.lock().unwrap();
            assert!(state.must_wait(c, "did:c"), "file 1 is still loading");
        }
        let second = turns.wait(b, None);
        {
            let state = turns.state.lock().unwrap();
            assert!(!state.must_wait(c, "did:c"), "another repo, everything before it loaded");
            assert!(state.must_wait(c, "did:a"), "the same repo as file 0, which is unfinished");
        }
        drop(first);
        drop(second);
        let state = turns.state.lock().unwrap();
        assert!(!state.must_wait(c, "did:a"));
        assert_eq!(state.in_flight.len(), 1);
    }
}
