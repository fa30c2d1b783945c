//! The store's side of the declarative indexes: putting the filter's definitions in force,
//! building a new index from the stored records a step at a time, and what the queries and
//! `/metrics` read. The rows themselves are `indexes.rs`'s.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, MutexGuard};

use smol_str::SmolStr;

use super::index_rows::SortedRun;
use super::indexes::{Build, Found, LiveIndex, Phase, Progress, Registry, ScannedStep, Update, inline_value};
use super::{Result, Store, Writer, keys, log};
use crate::indexes::{IndexSpec, Skip};

/// A build under way, as it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildState {
    /// What the build is doing.
    pub phase: Phase,
    /// Records of the index's collection read so far.
    pub done: u64,
    /// About how many there are: the stored count of the collection, or `done` if more.
    pub total: u64,
}

/// What one build batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildStep {
    /// The index built.
    pub name: String,
    /// Records of its collection read in this batch.
    pub records: u64,
    /// Whether the build is done.
    pub ready: bool,
}

impl Store {
    /// The indexes in force.
    pub fn index_registry(&self) -> Arc<Registry> {
        self.indexes.registry()
    }

    /// Every index in force with its progress, by name.
    pub fn index_progress(&self) -> BTreeMap<String, (Arc<LiveIndex>, Progress)> {
        self.indexes.progress()
    }

    /// The progress of one index in force.
    pub fn index_progress_of(&self, index: &LiveIndex) -> Progress {
        self.indexes.progress_of(index.id)
    }

    /// Where `index`'s build stands, given its `progress`; `None` once it is ready. What every
    /// surface that shows an index's state (`describeIndexes`, `IndexNotReady`, `/health`, the
    /// status page) renders.
    pub fn build_state(&self, index: &LiveIndex, progress: &Progress) -> Option<BuildState> {
        let build = progress.building.as_ref()?;
        let total = self.records_in(&index.spec.collection).max(0) as u64;
        Some(BuildState { phase: build.phase, done: build.done, total: total.max(build.done) })
    }

    /// Records given no entry since start, by index name and reason.
    pub fn index_skips(&self) -> Vec<(String, Skip, u64)> {
        self.indexes.skips()
    }

    /// Puts the definitions `specs` in force (see `IndexParts::set`); returns the names of the
    /// indexes that start building and of those dropped. Under the writer lock, so that no
    /// change is half applied to an index that comes or goes.
    pub fn set_indexes(&self, specs: &[IndexSpec]) -> Result<(Vec<String>, Vec<String>)> {
        let _writer = self.writer.lock().expect("writer lock");
        self.indexes.set(specs)
    }

    /// Moves one step of the counts of a repo that started or stopped being answered with more
    /// entries than a step (see `indexes/moves.rs`), in a batch of its own under the writer
    /// lock. Returns whether there was one to move.
    pub fn move_index_counts_step(&self) -> Result<bool> {
        let _writer = self.writer.lock().expect("writer lock");
        let mut batch = self.db.batch(self.indexes.move_rows() + 4);
        let Some(moved) = self.indexes.stage_move_step(&mut batch)? else { return Ok(false) };
        self.indexes.committing(&moved);
        self.db.commit(batch)?;
        self.indexes.committed(moved);
        Ok(true)
    }

    /// Sets how many entries a count move step reads, and so the most a repo moves in the batch
    /// of its account event before its counts move in steps ([`super::MOVE_ROWS`], or
    /// `[storage] index_build_batch` when lower).
    pub fn set_index_move_rows(&self, rows: usize) {
        self.indexes.set_move_rows(rows);
    }

    /// Builds one step of the first index still building: reads up to `max_keys` stored
    /// records keys past its position off the writer lock, then, under it, reads again the
    /// records changed since the scan began, and ingests their entries with the new position
    /// (see `index_rows.rs`). While it writes, another thread reads the next step's records,
    /// which the next call takes up. Once every entry is in, a counted index's steps sum its
    /// counts ([`Phase::Counts`]). `None` when no index is building.
    pub fn build_index_step(&self, max_keys: usize) -> Result<Option<BuildStep>> {
        self.build_index_step_during_scan(max_keys, || {})
    }

    /// [`Store::build_index_step`], calling `during_scan` once its scan is done and before it
    /// takes the writer lock: where a change committed by another thread lands (for tests).
    #[doc(hidden)]
    pub fn build_index_step_during_scan(
        &self,
        max_keys: usize,
        during_scan: impl FnOnce(),
    ) -> Result<Option<BuildStep>> {
        let step = match self.next_step(max_keys)? {
            NextStep::Scanned(step) => step,
            NextStep::Counted(step) => return Ok(Some(step)),
            NextStep::None => return Ok(None),
        };
        during_scan();
        let writer = self.writer.lock().expect("writer lock");
        let changed = self.indexes.end_scan(step.ticket);
        let ScannedStep { index, from, now, scanned, .. } = step;
        let (mut found, last) = scanned?;
        let Some(build) = self.indexes.building_from(&index, &from) else {
            // Redefined, dropped or moved while the scan ran: its work is not this index's.
            return Ok(Some(BuildStep { name: index.spec.name.clone(), records: 0, ready: false }));
        };
        self.read_changed_again(&index, &mut found, &changed, last.as_deref(), now)?;
        let records = found.len() as u64;
        let done = build.done + records;
        let next = match last {
            Some(after) => Some(Build { after, done, phase: Phase::Entries }),
            None if index.spec.count => Some(Build { after: Vec::new(), done, phase: Phase::Counts }),
            None => None,
        };
        self.write_reading_ahead(writer, &index, (found, build.done), next.clone(), max_keys)?;
        let ready = next.is_none();
        if ready {
            tracing::info!(index = %index.spec.name, "index built");
        }
        Ok(Some(BuildStep { name: index.spec.name.clone(), records, ready }))
    }

    /// This step: the scan read ahead by the step before, else a scan read now of the first
    /// index still building, or that index's counts summed when its entries are all in.
    fn next_step(&self, max_keys: usize) -> Result<NextStep> {
        if let Some(step) = self.indexes.take_prefetched() {
            return Ok(NextStep::Scanned(step));
        }
        let (index, from, ticket) = {
            let writer = self.writer.lock().expect("writer lock");
            let Some((index, build)) = self.indexes.next_build() else { return Ok(NextStep::None) };
            if build.phase == Phase::Counts {
                return self.sum_counts(writer, &index, &build, max_keys).map(NextStep::Counted);
            }
            let ticket = self.indexes.begin_scan(index.id, build.after.clone());
            (index, build.after, ticket)
        };
        Ok(NextStep::Scanned(self.scan_for_build(index, from, ticket, max_keys)))
    }

    /// A step of the count phase under `writer`, the writer lock: whole keys' step rows, at
    /// least `max_keys` rows, summed into their counts and removed, with the new position, as
    /// one ingested run.
    fn sum_counts(
        &self,
        writer: MutexGuard<'_, Writer>,
        index: &Arc<LiveIndex>,
        build: &Build,
        max_keys: usize,
    ) -> Result<BuildStep> {
        let mut run = SortedRun::new(index.space(), 2 * max_keys + 1);
        let next = self.indexes.stage_count_sums(&mut run, index, build, max_keys)?;
        run.ingest(&self.db)?;
        let ready = next.is_none();
        self.indexes.built(index.id, next);
        drop(writer);
        if ready {
            tracing::info!(index = %index.spec.name, "index built and counted");
        }
        Ok(BuildStep { name: index.spec.name.clone(), records: 0, ready })
    }

    /// Writes a build step (`write_build_step`) under `writer`, the writer lock, while another
    /// thread scans the next step's records from `next`, kept for the next call. `step` is the
    /// records built before this one.
    fn write_reading_ahead(
        &self,
        writer: MutexGuard<'_, Writer>,
        index: &Arc<LiveIndex>,
        (found, step): (Vec<Found>, u64),
        next: Option<Build>,
        max_keys: usize,
    ) -> Result<()> {
        std::thread::scope(|scope| {
            let ahead = next.as_ref().filter(|next| next.phase == Phase::Entries).map(|next| {
                let ticket = self.indexes.begin_scan(index.id, next.after.clone());
                let (index, from) = (index.clone(), next.after.clone());
                std::thread::Builder::new()
                    .name("sluice-index-scan".into())
                    .spawn_scoped(scope, move || self.scan_for_build(index, from, ticket, max_keys))
                    .map_err(|e| (e, ticket))
            });
            let written = self.write_build_step(index, found, step, next.clone());
            drop(writer);
            match ahead {
                Some(Ok(thread)) => match thread.join() {
                    Ok(step) if written.is_ok() => self.indexes.prefetch(step),
                    Ok(step) => drop(self.end_scan_locked(step.ticket)),
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                Some(Err((e, ticket))) => {
                    tracing::warn!(error = %e, "no thread to read the next index build step ahead");
                    drop(self.end_scan_locked(ticket));
                }
                None => {}
            }
            written
        })
    }

    /// Writes a build step: `found`'s entries, their count moves as step rows of `step`, and
    /// the build's `next` position, as one ingested run, and moves the build there. Under the
    /// writer lock: a change committed after it sees the new position.
    fn write_build_step(
        &self,
        index: &Arc<LiveIndex>,
        found: Vec<Found>,
        step: u64,
        next: Option<Build>,
    ) -> Result<()> {
        let mut run = SortedRun::new(index.space(), 4 * found.len() + 4);
        let answered = |did: &str| Ok(self.repos.state(did)?.is_some_and(|s| s.answered()));
        let moved = self.indexes.stage_build(&mut run, index, found, (step, next.clone()), answered)?;
        self.indexes.committing(&moved);
        run.ingest(&self.db)?;
        self.indexes.committed(moved);
        self.indexes.built(index.id, next);
        Ok(())
    }

    /// Ends a scan whose step will not be built.
    fn end_scan_locked(&self, ticket: u64) -> BTreeSet<Vec<u8>> {
        let _writer = self.writer.lock().expect("writer lock");
        self.indexes.end_scan(ticket)
    }

    /// Reads the records of `index`'s collection past `from`, up to `max_keys` records keys, as
    /// creates in key order (the scan `ticket`, begun under the writer lock).
    fn scan_for_build(&self, index: Arc<LiveIndex>, from: Vec<u8>, ticket: u64, max_keys: usize) -> ScannedStep {
        let now = log::now_us() as i64;
        let mut found = Vec::new();
        let collection = &index.spec.collection;
        let last = self.records.scan_collection(&from, max_keys, collection, |did, rkey, cid, body| {
            found.push((did.to_string(), build_update(&index, rkey, cid, body, now)));
            Ok(())
        });
        ScannedStep { ticket, now, scanned: last.map(|last| (found, last)), index, from }
    }

    /// Brings `found`, scanned off the lock, up to date under it: each record of `changed` the
    /// step covers (up to `last`, or all past the position when the scan reached the end) is
    /// taken out and read again from `records`, as it stands now.
    fn read_changed_again(
        &self,
        index: &LiveIndex,
        found: &mut Vec<Found>,
        changed: &BTreeSet<Vec<u8>>,
        last: Option<&[u8]>,
        now: i64,
    ) -> Result<()> {
        let covered = changed.iter().filter(|k| last.is_none_or(|last| k.as_slice() <= last));
        let mut again: HashSet<(&str, &str)> = HashSet::new();
        for key in covered {
            let (did, _, rkey) = keys::parse_record(key)?;
            again.insert((did, rkey));
        }
        if again.is_empty() {
            return Ok(());
        }
        found.retain(|(did, u)| !again.contains(&(did.as_str(), u.rkey.as_str())));
        for (did, rkey) in again {
            let stored = self.records.get(did, &index.spec.collection, rkey)?;
            if let Some(super::values::RecordRef { cid, body: Some(body) }) = stored {
                found.push((did.to_string(), build_update(index, rkey, &cid, &body, now)));
            }
        }
        found.sort_by(|(a, x), (b, y)| (a, &x.rkey).cmp(&(b, &y.rkey)));
        Ok(())
    }

    /// The ids of the index keyspaces the database holds (`index.<id>`): each index in force
    /// has one, and a removed index's is gone.
    pub fn index_keyspaces(&self) -> Vec<u32> {
        self.db.keyspace_names().iter().filter_map(|n| n.strip_prefix("index.")?.parse().ok()).collect()
    }

    /// The number of stored records of `collection` (what a build of an index over it reads).
    fn records_in(&self, collection: &str) -> i64 {
        let writer = self.writer.lock().expect("writer lock");
        writer.counts.get(&keys::count_records(collection)).copied().unwrap_or(0)
    }
}

/// What a build step does next.
enum NextStep {
    /// Writes the entries of the records it read.
    Scanned(ScannedStep),
    /// Nothing more: it summed counts.
    Counted(BuildStep),
    /// Nothing: no index is building.
    None,
}

/// A stored record put in `index` as a create, by a build.
fn build_update(index: &LiveIndex, rkey: &str, cid: &[u8], body: &[u8], now: i64) -> Update {
    Update {
        rkey: SmolStr::new(rkey),
        existed: false,
        new: Some(crate::indexes::entries(&index.spec, rkey, body, now)),
        value: inline_value(cid, body),
    }
}
