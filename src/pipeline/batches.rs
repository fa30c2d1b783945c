//! A walk committed in batches: two workers cut, stage (handlers) and encode batches, and
//! whichever finds the next batch in order ready commits it. Nothing is committed before the
//! walk's tree is checked whole; meanwhile the workers stage ahead.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::filter::CompiledFilter;
use crate::repo::LoadedRepo;
use crate::store::{Prepared, RepoChange, RepoState};

use super::walk_diff::WalkChanges;
use super::walk_stream::Walk;
use super::{Origin, Pipeline, PipelineError, RepoOutcome, Staged, Tally};

/// How a walk's batches are committed: under which filter, for which repo, what the last
/// batch carries, and the pause between commits.
pub(super) struct Batches<'a> {
    pub compiled: &'a CompiledFilter,
    pub origin: &'a Origin,
    pub repo: &'a LoadedRepo,
    /// The repo's new state and the cursor, for the final batch.
    pub last: Option<(RepoState, Option<(String, String)>)>,
    pub delay: std::time::Duration,
    /// Once cancelled, no further batch is cut (see [`super::WalkOptions::stop`]).
    pub stop: Option<&'a tokio_util::sync::CancellationToken>,
}

/// Counts a walk in flight for as long as it lives.
pub(super) struct WalkCount<'a>(&'a AtomicU64);

impl<'a> WalkCount<'a> {
    pub(super) fn new(walks: &'a AtomicU64) -> Self {
        walks.fetch_add(1, Ordering::Relaxed);
        Self(walks)
    }
}

impl Drop for WalkCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A batch of changes cut from a walk, before its handlers run.
pub(super) struct Cut {
    items: Vec<Staged>,
    /// The walk's changes are used up.
    last: bool,
    /// The repo's new state and the cursor, which the last batch carries.
    carries: Option<(RepoState, Option<(String, String)>)>,
}

/// Batches staged ahead of the one being committed, at most, when the walk is the only one in
/// flight: while its tree is checked on one core, the other stages its first batches (each
/// holds up to a batch of bodies).
const READY_AHEAD_ALONE: usize = 6;

/// The same when other walks are in flight (a backfill): their work keeps the cores busy, so
/// staging further ahead would only hold more memory.
const READY_AHEAD_SHARED: usize = 2;

/// Where [`Pipeline::commit_in_batches`]' workers cut their batches from.
pub(super) struct BatchSource<'a> {
    batches: Batches<'a>,
    changes: WalkChanges<'a>,
    /// Batches cut so far (the next one's index).
    cut: usize,
    /// The changes are used up, or a batch failed.
    done: bool,
}

/// What [`Pipeline::commit_in_batches`]' workers share about committing: staged batches by
/// index, the next to commit, and what the commits did.
pub(super) struct Commits<'s> {
    /// How many staged batches may wait for their commit.
    ahead: usize,
    ready: BTreeMap<usize, (Prepared, Tally)>,
    next: usize,
    /// A worker is committing; the other leaves the next batches to it.
    committing: bool,
    /// The walk, until the first commit has waited for its check.
    walk: Option<Walk<'s>>,
    outcome: RepoOutcome,
    /// The first failure: nothing more is committed.
    error: Option<PipelineError>,
    /// A worker panicked: the other stops too, and the panic goes on once both are done.
    panicked: bool,
    /// Once cancelled, no further batch is committed (see [`super::WalkOptions::stop`]).
    stop: Option<&'s tokio_util::sync::CancellationToken>,
}

impl Commits<'_> {
    fn fail(&mut self, error: PipelineError) {
        self.error.get_or_insert(error);
        self.ready.clear();
    }

    /// Whether the workers are to stop: a batch failed or a worker panicked.
    fn stopped(&self) -> bool {
        self.error.is_some() || self.panicked
    }
}

/// Held by a worker: if it unwinds, tells the other worker to stop rather than wait for
/// batches that will never come.
struct StopOnPanic<'a, 'w> {
    commits: &'a Mutex<Commits<'w>>,
    room: &'a Condvar,
}

impl Drop for StopOnPanic<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.commits.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).panicked = true;
            self.room.notify_all();
        }
    }
}

impl Pipeline {
    /// Commits `changes` in batches of at most `batch_size`, each atomically with its events;
    /// the last also carries the repo's new state and the cursor, and the batches' delay
    /// separates the commits.
    ///
    /// Two workers share the work: each cuts the next batch, runs its handlers and encodes it,
    /// and whichever finds the next batch in order ready commits it, so neither side of the
    /// work waits for the other and both cores stay busy whatever the mix of handlers. While
    /// the walk is still being checked (nothing is committed before), they stage up to
    /// [`READY_AHEAD_ALONE`] batches ahead (fewer beside other walks).
    ///
    /// A crash between batches leaves the repo's earlier batches committed with their events
    /// and its state unchanged, so the next walk finds those records current and emits only
    /// what is missing: nothing is lost or emitted twice.
    pub(super) fn commit_in_batches(
        &self,
        mut batches: Batches<'_>,
        mut changes: WalkChanges<'_>,
        walk: Walk<'_>,
        outcome: &mut RepoOutcome,
    ) -> Result<(), PipelineError> {
        if changes.max_len().is_some_and(|n| n <= self.batch_size) {
            // One batch: no second worker to start.
            self.finish_walk(walk, outcome)?;
            let (change, tally, _) = self.next_batch(&mut batches, &mut changes)?;
            (outcome.unchanged, outcome.too_old) = (changes.unchanged, changes.too_old);
            return self.commit_batch(self.store.prepare(change)?, tally, outcome);
        }
        let (delay, stop) = (batches.delay, batches.stop);
        // What every batch is staged with, the same throughout the walk.
        let staging = (batches.compiled, batches.origin, batches.repo);
        let ahead = if self.walks.load(Ordering::Relaxed) > 1 { READY_AHEAD_SHARED } else { READY_AHEAD_ALONE };
        let source = Mutex::new(BatchSource { batches, changes, cut: 0, done: false });
        let commits = Mutex::new(Commits {
            ahead,
            ready: BTreeMap::new(),
            next: 0,
            committing: false,
            walk: Some(walk),
            outcome: *outcome,
            error: None,
            panicked: false,
            stop,
        });
        let room = Condvar::new();
        let work = || self.batch_worker(&source, &commits, &room, delay, staging);
        std::thread::scope(|scope| {
            let other = scope.spawn(work);
            work();
            if let Err(panic) = other.join() {
                std::panic::resume_unwind(panic);
            }
        });
        let commits = commits.into_inner().expect("commit state");
        debug_assert!(commits.error.is_some() || commits.ready.is_empty(), "every staged batch is committed");
        *outcome = commits.outcome;
        let source = source.into_inner().expect("batch source");
        (outcome.unchanged, outcome.too_old) = (source.changes.unchanged, source.changes.too_old);
        commits.error.map_or(Ok(()), Err)
    }

    /// One of [`Pipeline::commit_in_batches`]' workers: cuts, stages and encodes batches until
    /// the changes are used up or a batch fails, committing every batch that is next in order.
    /// A worker that finds nothing left to cut commits what is ready before it ends, so no
    /// batch is left behind.
    fn batch_worker(
        &self,
        source: &Mutex<BatchSource<'_>>,
        commits: &Mutex<Commits<'_>>,
        room: &Condvar,
        delay: std::time::Duration,
        staging: (&CompiledFilter, &Origin, &LoadedRepo),
    ) {
        let (compiled, origin, repo) = staging;
        let _stop_on_panic = StopOnPanic { commits, room };
        loop {
            let Some((index, cut)) = self.cut_next(source) else {
                drop(self.commit_ready(commits, commits.lock().expect("commit state"), room, delay, true));
                return;
            };
            let last = matches!(cut, Ok(Cut { last: true, .. }));
            let prepared = cut
                .and_then(|cut| self.stage_cut(compiled, origin, repo, cut))
                .and_then(|(change, tally)| Ok((self.store.prepare(change)?, tally)));
            let mut state = commits.lock().expect("commit state");
            match prepared {
                Ok(batch) => {
                    state.ready.insert(index, batch);
                }
                Err(e) => state.fail(e),
            }
            let must = state.ready.len() >= state.ahead || last;
            state = self.commit_ready(commits, state, room, delay, must);
            while !state.stopped() && state.ready.len() >= state.ahead {
                state = room.wait(state).expect("commit state");
            }
            if state.stopped() {
                drop(state);
                source.lock().expect("batch source").done = true;
                room.notify_all();
                return;
            }
        }
    }

    /// Cuts the next batch from `source`, with its index; `None` when the changes are used up
    /// (or a batch failed).
    fn cut_next(&self, source: &Mutex<BatchSource<'_>>) -> Option<(usize, Result<Cut, PipelineError>)> {
        let mut source = source.lock().expect("batch source");
        if source.done {
            return None;
        }
        let BatchSource { batches, changes, .. } = &mut *source;
        let cut = match batches.stop.is_some_and(|stop| stop.is_cancelled()) {
            true => Err(PipelineError::Stopped),
            false => self.cut_batch(batches, changes),
        };
        source.done = !matches!(cut, Ok(Cut { last: false, .. }));
        source.cut += 1;
        Some((source.cut - 1, cut))
    }

    /// Commits the ready batches that are next in order, unless another worker is at it;
    /// the first waits for the walk to be checked whole, but only once staging cannot go on
    /// (`must` wait: as many batches are ready as may be, or the changes are used up). The
    /// lock is let go while a batch commits, so the other worker goes on staging; `room` is
    /// told after each commit.
    fn commit_ready<'g, 'w>(
        &self,
        commits: &'g Mutex<Commits<'w>>,
        mut state: MutexGuard<'g, Commits<'w>>,
        room: &Condvar,
        delay: std::time::Duration,
        must: bool,
    ) -> MutexGuard<'g, Commits<'w>> {
        while !state.committing && !state.stopped() {
            if !must && state.walk.as_ref().is_some_and(|walk| !walk.is_over()) {
                break;
            }
            let next = state.next;
            let Some((prepared, tally)) = state.ready.remove(&next) else { break };
            state.committing = true;
            let (walk, mut outcome, stop) = (state.walk.take(), state.outcome, state.stop);
            drop(state);
            let mut result = walk.map_or(Ok(()), |walk| self.finish_walk(walk, &mut outcome));
            if next > 0 && !delay.is_zero() {
                std::thread::sleep(delay);
            }
            if result.is_ok() && stop.is_some_and(|stop| stop.is_cancelled()) {
                result = Err(PipelineError::Stopped);
            }
            if result.is_ok() {
                result = self.commit_batch(prepared, tally, &mut outcome);
            }
            state = commits.lock().expect("commit state");
            (state.outcome, state.committing, state.next) = (outcome, false, next + 1);
            if let Err(e) = result {
                state.fail(e);
            }
            room.notify_all();
        }
        state
    }

    /// Cuts and stages the next batch of `changes` (the caller encodes it); the
    /// final one (the changes are used up) also carries the repo's new state and the cursor.
    /// Returns whether it was final.
    pub(super) fn next_batch(
        &self,
        batches: &mut Batches<'_>,
        changes: &mut WalkChanges<'_>,
    ) -> Result<(RepoChange, Tally, bool), PipelineError> {
        let cut = self.cut_batch(batches, changes)?;
        let last = cut.last;
        let (change, tally) = self.stage_cut(batches.compiled, batches.origin, batches.repo, cut)?;
        Ok((change, tally, last))
    }

    /// Takes the next batch of `changes`, before its handlers run; the final one also takes
    /// the repo's new state and the cursor from `batches`.
    fn cut_batch(&self, batches: &mut Batches<'_>, changes: &mut WalkChanges<'_>) -> Result<Cut, PipelineError> {
        // Sized up front: collecting `Result`s grows the vector from nothing, and each growth
        // copied the whole batch into fresh memory.
        let mut items = Vec::with_capacity(changes.max_len().unwrap_or(usize::MAX).min(self.batch_size));
        for change in changes.by_ref().take(self.batch_size) {
            items.push(change?);
        }
        let last = items.len() < self.batch_size || changes.is_done();
        let carries = if last { batches.last.take() } else { None };
        Ok(Cut { items, last, carries })
    }

    /// Runs the handlers over a cut batch and builds its change.
    fn stage_cut(
        &self,
        compiled: &CompiledFilter,
        origin: &Origin,
        repo: &LoadedRepo,
        cut: Cut,
    ) -> Result<(RepoChange, Tally), PipelineError> {
        let (mut change, handler_errors) = self.stage(compiled, origin, cut.items, Some(repo))?;
        if let Some((state, cursor)) = cut.carries {
            (change.state, change.cursor) = (Some(state), cursor);
        }
        let tally = Tally::of(&change, handler_errors);
        Ok((change, tally))
    }
}
