//! The one path every record takes, backfill and live alike:
//! filter -> handlers -> diff against stored CIDs -> fjall batches with their events.
//!
//! [`Pipeline::apply_walk`] takes a whole repo (a verified CAR): records whose CID is unchanged
//! are skipped, new or changed ones are created or updated, and stored records of wanted
//! collections that the walk no longer holds are deleted. [`Pipeline::apply_commit`] takes the
//! [`RecordOp`]s of one live commit. Both read the filter once (one `ArcSwap` load).
//!
//! Commit contract: a live commit is one fjall batch. A walk commits in batches of at most
//! `batch_size` record changes, each atomically with its events; the last batch carries the
//! repo's new state and cursor. After a crash between batches the repo's state is unchanged and
//! the next walk finds the committed records current, so no event is lost or emitted twice.
//! While one batch commits, a second thread stages and encodes the next (both cores busy).
//!
//! Signal mode: a walk that finds no record in a signal collection (and a repo not listed in
//! `dids`) stores nothing and marks the repo discarded; if it had been indexed before, its
//! records are deleted, with delete events, so consumers stay consistent.
//!
//! Records of collections the filter no longer wants are left as they are: not updated, not
//! deleted, no events. Callers serialize work per DID (one walk or commit of a repo at a time).
//!
//! The record rule ([`sluice_handlers::rules::check_record`]: size, nesting depth, DAG-CBOR of
//! the data model) is one check in [`Pipeline::stage`], which walks and live commits share: a
//! record that sluice's readers could not show is taken as not in the repo. It is not stored,
//! emits no event, and handlers never see it; the rest of the repo or commit applies as usual.
//! If an older version of it is stored, that version is deleted, with its delete event (and
//! the handlers' `on_delete`), since the repo no longer holds a record sluice can serve. So a
//! backfill and the live commits of the same records end in the same store and the same
//! events. It runs on what would be stored only: after the filter, the age cut and the
//! unchanged-CID skip. Each refusal is logged once (a warning naming the record and the rule)
//! and counted by reason ([`PipelineMetrics::records_refused`]). In signal mode a refused
//! record does not count as a signal either: a repo whose only signal records are refused is
//! discarded.
//!
//! Architecture invariant: the pipeline never does network I/O and never blocks on async code.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cid::Cid;
use sluice_handlers::rules::{RecordRefusal, check_record};
use sluice_handlers::{Emit, HandlerOutput, IndexWrite, PreviousRecord, RecordKeyView, RecordView};
use smol_str::SmolStr;

mod account;
mod batches;
pub mod index_builds;
mod walk_diff;
mod walk_stream;

use crate::filter::{ActiveHandler, CompiledFilter, FilterHandle, LexiconVerdict, RepoRule};
use crate::repo::{LoadedRepo, RepoError};
use crate::store::{
    Action, Committed, Prepared, RecordEvent, RecordWrite, RepoChange, RepoState, RepoStatus, Store, StoreError,
    StoredEvent, values::now_ms,
};
use batches::{Batches, WalkCount};
use walk_diff::{WalkChanges, WalkKeys};
use walk_stream::Walk;

/// Why a repo or commit was not applied. Nothing of it was written.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The repo data is invalid.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The repo is older than what is stored.
    #[error("rev {rev} of {did} is older than the stored rev {stored}; skipped")]
    StaleRev { did: String, rev: String, stored: String },
    /// A walk was stopped between two batches ([`WalkOptions::stop`]): the repo's state is
    /// unchanged.
    #[error("the walk was stopped before its last batch (shutting down)")]
    Stopped,
}

/// One record operation of a live commit.
#[derive(Debug, Clone)]
pub enum RecordOp {
    /// Create or update `collection/rkey` to `cid` with `bytes`.
    Put { collection: String, rkey: String, cid: Cid, bytes: Bytes },
    /// Delete `collection/rkey`.
    Delete { collection: String, rkey: String },
}

/// How a repo walk is applied, beyond the filter.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// A cursor `(service, position)` saved with the walk's last batch.
    pub cursor: Option<(String, String)>,
    /// Leave out records older than this (unix µs), judged by [`crate::repo::age`]; stored
    /// ones are kept as they are (`BACKFILL_DAYS`).
    pub since_us: Option<u64>,
    /// Pause between committed batches (`BACKFILL_BATCH_DELAY_MS`).
    pub batch_delay: std::time::Duration,
    /// The repo's handle, as its DID document claims it; kept in its state (else the stored
    /// one stays).
    pub handle: Option<String>,
    /// Cancelled when the walk is to stop (shutdown): it stops before its next batch and ends
    /// with [`PipelineError::Stopped`]. The batches committed stay (the next walk finds their
    /// records current); the repo's state, written only with the last batch, is unchanged.
    pub stop: Option<tokio_util::sync::CancellationToken>,
}

/// What applying a repo or commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepoOutcome {
    /// The repo's status afterwards.
    pub status: RepoStatus,
    /// Records created.
    pub created: u64,
    /// Records updated.
    pub updated: u64,
    /// Records deleted.
    pub deleted: u64,
    /// Records whose stored CID was already current.
    pub unchanged: u64,
    /// Records left out as older than [`WalkOptions::since_us`].
    pub too_old: u64,
    /// Records the walk went through (every collection).
    pub walked: u64,
    /// Handler failures (errors and panics) on this repo.
    pub handler_errors: u64,
    /// Events written.
    pub committed: Committed,
}

impl RepoOutcome {
    fn new(status: RepoStatus, unchanged: u64) -> Self {
        Self {
            status,
            created: 0,
            updated: 0,
            deleted: 0,
            unchanged,
            too_old: 0,
            walked: 0,
            handler_errors: 0,
            committed: Committed::default(),
        }
    }
}

/// Running totals, for progress lines and metrics.
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    /// Records walked or received.
    pub records_seen: AtomicU64,
    /// Records created, updated, deleted.
    pub created: AtomicU64,
    /// See `created`.
    pub updated: AtomicU64,
    /// See `created`.
    pub deleted: AtomicU64,
    /// Handler errors and panics.
    pub handler_errors: AtomicU64,
    /// Repos applied as synced.
    pub repos_synced: AtomicU64,
    /// Repos discarded (signal mode or excluded).
    pub repos_discarded: AtomicU64,
    /// Identity events written.
    pub identity_events: AtomicU64,
    /// Account events written.
    pub account_events: AtomicU64,
    /// Records refused by the record rule, by reason, in the order of
    /// [`RecordRefusal::REASONS`] (see [`PipelineMetrics::refused`]).
    pub records_refused: [AtomicU64; RecordRefusal::REASONS.len()],
    /// Stored records a read left out or answered with an error because they do not render
    /// (stored before the record rule).
    pub records_unreadable: AtomicU64,
    /// Records that failed their lexicon (`[lexicons]`), by (collection, reason); at most
    /// [`MAX_REJECTION_SERIES`] pairs, the rest counted under collection `other`.
    pub records_rejected: std::sync::Mutex<std::collections::BTreeMap<(String, String), u64>>,
}

/// The most (collection, reason) pairs `/metrics` counts lexicon rejections under: a full-mode
/// filter stores any collection the network makes up, and each would be a series.
pub const MAX_REJECTION_SERIES: usize = 512;

impl PipelineMetrics {
    /// Records refused for `reason` (one of [`RecordRefusal::REASONS`]) since start.
    pub fn refused(&self, reason: &str) -> u64 {
        RecordRefusal::REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.records_refused[i].load(Ordering::Relaxed))
    }

    fn count_rejection(&self, collection: &str, reason: &str) {
        let mut rejected = self.records_rejected.lock().expect("rejection counts lock");
        let mut key = (collection.to_string(), reason.to_string());
        if !rejected.contains_key(&key) && rejected.len() >= MAX_REJECTION_SERIES {
            key.0 = "other".into();
        }
        *rejected.entry(key).or_default() += 1;
    }

    fn count_refusal(&self, refusal: &RecordRefusal) {
        if let Some(i) = RecordRefusal::REASONS.iter().position(|r| *r == refusal.reason()) {
            self.records_refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one batch does, counted before it is encoded.
#[derive(Default)]
struct Tally {
    created: u64,
    updated: u64,
    deleted: u64,
    handler_errors: u64,
}

impl Tally {
    fn of(change: &RepoChange, handler_errors: u64) -> Self {
        let mut t = Tally { handler_errors, ..Default::default() };
        for event in &change.events {
            if let StoredEvent::Record(r) = event {
                match r.action {
                    Action::Create => t.created += 1,
                    Action::Update => t.updated += 1,
                    Action::Delete => t.deleted += 1,
                }
            }
        }
        t
    }
}

/// A record change, before handlers run. A walk's upserts carry no body (`bytes: None`): it is
/// read from the repo when its batch is staged, so a walk holds one batch of bodies at a time.
enum Staged {
    Upsert { collection: SmolStr, rkey: SmolStr, cid: Cid, bytes: Option<Bytes>, previous: Option<Vec<u8>> },
    Delete { collection: SmolStr, rkey: SmolStr, previous: Vec<u8> },
}

/// Where the changes come from.
struct Origin {
    /// Shared by every event of the change: cloning it copies no string.
    did: SmolStr,
    rev: SmolStr,
    live: bool,
}

impl Origin {
    fn new(did: &str, rev: &str, live: bool) -> Self {
        Self { did: did.into(), rev: rev.into(), live }
    }
}

/// The pipeline: a store, the filter in force and running totals.
#[derive(Clone)]
pub struct Pipeline {
    store: Arc<Store>,
    filter: FilterHandle,
    metrics: Arc<PipelineMetrics>,
    batch_size: usize,
    /// Walks being applied now, by any clone of this pipeline.
    walks: Arc<AtomicU64>,
}

impl Pipeline {
    /// A pipeline writing to `store` under the filter in `filter`.
    pub fn new(store: Arc<Store>, filter: FilterHandle) -> Self {
        Self {
            store,
            filter,
            metrics: Arc::default(),
            batch_size: crate::config::DEFAULT_BATCH_SIZE,
            walks: Arc::default(),
        }
    }

    /// Commits a repo walk in batches of at most `n` record changes (at least 1).
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The filter handle.
    pub fn filter(&self) -> &FilterHandle {
        &self.filter
    }

    /// Running totals.
    pub fn metrics(&self) -> &PipelineMetrics {
        &self.metrics
    }

    /// Applies a whole repo (a CAR whose commit the caller has checked).
    ///
    /// The whole tree is walked and checked before anything is committed (nothing is written
    /// for a malformed repo), keeping only record keys and CIDs; the changes are streamed from
    /// those keys into batches, with record bodies read per batch, so a walk never holds the
    /// repo's bodies. A large repo that is kept whatever it holds is walked on a thread of its
    /// own while its first batches are staged.
    pub fn apply_walk(&self, repo: &LoadedRepo, opts: &WalkOptions) -> Result<RepoOutcome, PipelineError> {
        let compiled = self.filter.load();
        let filter = &compiled.filter;
        let did = repo.did();
        let previous_state = self.store.repos().state(did)?;
        check_rev(did, repo.rev(), previous_state.as_ref())?;
        let stored = self.store.records().of_repo(did)?;
        let _walking = WalkCount::new(&self.walks);
        std::thread::scope(|scope| {
            let (walk, keys, kept) = self.start_walk(scope, repo, &compiled)?;
            let status = if kept { RepoStatus::Synced } else { RepoStatus::Discarded };
            let changes = WalkChanges::new(repo, filter, opts.since_us, keys, stored, kept);
            let origin = Origin::new(did, repo.rev(), false);
            let (handle, account_status) = previous_state.map_or((None, None), |s| (s.handle, s.account_status));
            let state = RepoState {
                status,
                // A discarded repo keeps its rev too, so live commits it already had are told apart.
                rev: Some(repo.rev().to_string()),
                data: kept.then(|| repo.data().to_string()),
                commit: kept.then(|| repo.commit_cid().to_string()),
                handle: opts.handle.clone().or(handle),
                // What the relay last said of the account stands: an export says nothing of it.
                account_status,
                updated_ms: now_ms(),
                ..Default::default()
            };
            let mut outcome = RepoOutcome::new(status, 0);
            let batches = Batches {
                compiled: &compiled,
                origin: &origin,
                repo,
                last: Some((state, opts.cursor.clone())),
                delay: opts.batch_delay,
                stop: opts.stop.as_ref(),
            };
            self.commit_in_batches(batches, changes, walk, &mut outcome)?;
            self.count_repo(status);
            Ok(outcome)
        })
    }

    /// Starts the walk of `repo`; returns it, its keys and whether the filter keeps the repo
    /// (tracked, or holding a signal record). A repo that needs a signal record is walked
    /// whole here first, as is one small enough for one batch; a larger tracked one is walked
    /// on a thread of `scope`.
    fn start_walk<'s, 'a: 's>(
        &self,
        scope: &'s std::thread::Scope<'s, '_>,
        repo: &'a LoadedRepo,
        compiled: &CompiledFilter,
    ) -> Result<(Walk<'s>, WalkKeys<'a>, bool), PipelineError> {
        let filter = &compiled.filter;
        let rule = filter.repo_rule(repo.did());
        match rule {
            RepoRule::Excluded => Ok((Walk::Checked(0), Box::new(std::iter::empty()), false)),
            RepoRule::Tracked if repo.block_count() > self.batch_size => {
                let (walk, keys) = walk_stream::spawn(scope, repo);
                Ok((walk, keys, true))
            }
            _ => {
                let keys = repo.record_keys().collect::<Result<Vec<_>, _>>()?;
                let kept = rule == RepoRule::Tracked
                    || keys.iter().any(|k| filter.is_signal(&k.collection) && passes_rule(repo, k, compiled));
                Ok((Walk::Checked(keys.len() as u64), Box::new(keys.into_iter()), kept))
            }
        }
    }

    /// Waits for `walk` to be checked whole and counts its records: nothing of a repo is
    /// committed before.
    fn finish_walk(&self, walk: Walk<'_>, outcome: &mut RepoOutcome) -> Result<(), PipelineError> {
        outcome.walked = walk.finish()?;
        self.metrics.records_seen.fetch_add(outcome.walked, Ordering::Relaxed);
        Ok(())
    }

    /// Applies the ops of one live commit of `did` (CID `commit`) at `rev` (MST root `data`), with an optional
    /// cursor saved in the same batch. Ops on unwanted collections are ignored; a put whose CID
    /// is already stored is skipped. A commit whose ops change a record twice is refused whole
    /// ([`RepoError::RepeatedOp`]): each op is applied against the stored records, and no diff
    /// of two trees names a path twice.
    pub fn apply_commit(
        &self,
        did: &str,
        commit: Cid,
        rev: &str,
        data: Cid,
        ops: Vec<RecordOp>,
        cursor: Option<(String, String)>,
    ) -> Result<RepoOutcome, PipelineError> {
        if let Some(path) = repeated_path(&ops) {
            return Err(RepoError::RepeatedOp { path }.into());
        }
        let compiled = self.filter.load();
        let previous_state = self.store.repos().state(did)?;
        check_rev(did, rev, previous_state.as_ref())?;
        let (mut staged, mut unchanged) = (Vec::new(), 0);
        for op in ops {
            self.metrics.records_seen.fetch_add(1, Ordering::Relaxed);
            match op {
                RecordOp::Put { collection, rkey, cid, bytes } => {
                    if !compiled.filter.wants_collection(&collection) {
                        continue;
                    }
                    let previous = self.store.records().cid(did, &collection, &rkey)?;
                    if is_unchanged(previous.as_deref(), &cid) {
                        unchanged += 1;
                    } else {
                        staged.push(Staged::Upsert {
                            collection: collection.into(),
                            rkey: rkey.into(),
                            cid,
                            bytes: Some(bytes),
                            previous,
                        });
                    }
                }
                RecordOp::Delete { collection, rkey } => {
                    if let Some(previous) = self.store.records().cid(did, &collection, &rkey)? {
                        staged.push(Staged::Delete { collection: collection.into(), rkey: rkey.into(), previous });
                    }
                }
            }
        }
        let (mut change, handler_errors) = self.stage(&compiled, &Origin::new(did, rev, true), staged, None)?;
        let mut state = previous_state.unwrap_or_default();
        state.status = RepoStatus::Synced;
        state.rev = Some(rev.to_string());
        state.data = Some(data.to_string());
        state.commit = Some(commit.to_string());
        state.updated_ms = now_ms();
        change.state = Some(state);
        change.cursor = cursor;
        let mut outcome = RepoOutcome::new(RepoStatus::Synced, unchanged);
        let tally = Tally::of(&change, handler_errors);
        self.commit_batch(self.store.prepare(change)?, tally, &mut outcome)?;
        self.count_repo(RepoStatus::Synced);
        Ok(outcome)
    }

    /// Commits one prepared batch and adds what it did to `outcome` and the running totals.
    fn commit_batch(&self, prepared: Prepared, tally: Tally, outcome: &mut RepoOutcome) -> Result<(), PipelineError> {
        let committed = self.store.commit_prepared(prepared)?;
        outcome.created += tally.created;
        outcome.updated += tally.updated;
        outcome.deleted += tally.deleted;
        outcome.handler_errors += tally.handler_errors;
        outcome.committed.first_event = outcome.committed.first_event.or(committed.first_event);
        outcome.committed.events += committed.events;
        let m = &self.metrics;
        m.created.fetch_add(tally.created, Ordering::Relaxed);
        m.updated.fetch_add(tally.updated, Ordering::Relaxed);
        m.deleted.fetch_add(tally.deleted, Ordering::Relaxed);
        Ok(())
    }

    fn count_repo(&self, status: RepoStatus) {
        let counter = match status {
            RepoStatus::Synced => &self.metrics.repos_synced,
            _ => &self.metrics.repos_discarded,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs handlers over staged changes and builds the batch; also returns the number of
    /// handler failures.
    /// Bodies a walk left out are read from `repo`.
    fn stage(
        &self,
        compiled: &CompiledFilter,
        origin: &Origin,
        staged: Vec<Staged>,
        repo: Option<&LoadedRepo>,
    ) -> Result<(RepoChange, u64), RepoError> {
        let n = staged.len();
        let mut change = RepoChange {
            did: origin.did.to_string(),
            records: Vec::with_capacity(n),
            events: Vec::with_capacity(n),
            handler_writes: Vec::with_capacity(n),
            ..Default::default()
        };
        let mut failures = 0;
        for item in staged {
            match item {
                Staged::Upsert { collection, rkey, cid, bytes, previous } => {
                    let bytes = match (bytes, repo) {
                        (Some(bytes), _) => bytes,
                        (None, Some(repo)) => repo.block(&cid, "record")?,
                        (None, None) => return Err(RepoError::MissingBlock { cid, what: "record" }),
                    };
                    let refused = match check_record(&bytes) {
                        Err(refusal) => {
                            self.refuse(origin, &collection, &rkey, &cid, &refusal);
                            true
                        }
                        Ok(()) => self.lexicon_drops(compiled, origin, &collection, &rkey, &bytes),
                    };
                    if refused {
                        if let Some(previous) = previous {
                            failures += self.stage_delete(compiled, origin, &mut change, collection, rkey, previous);
                        }
                        continue;
                    }
                    failures +=
                        self.stage_upsert(compiled, origin, &mut change, collection, rkey, cid, bytes, previous);
                }
                Staged::Delete { collection, rkey, previous } => {
                    failures += self.stage_delete(compiled, origin, &mut change, collection, rkey, previous);
                }
            }
        }
        Ok((change, failures))
    }

    /// Counts and logs (once, as a warning naming the record and the rule) a record the record
    /// rule refuses: it is taken as not in the repo.
    fn refuse(&self, origin: &Origin, collection: &str, rkey: &str, cid: &Cid, refusal: &RecordRefusal) {
        self.metrics.count_refusal(refusal);
        tracing::warn!(
            did = %origin.did,
            record = format_args!("{collection}/{rkey}"),
            %cid,
            reason = refusal.reason(),
            live = origin.live,
            "record refused, not stored and no event: {refusal}"
        );
    }

    /// Runs the `[lexicons]` check on a record about to be stored; returns whether it is
    /// dropped (`validate = "drop"`: taken as not in the repo, as a refused record is). A
    /// failing record is counted and logged once, naming the path and the rule, either way.
    fn lexicon_drops(
        &self,
        compiled: &CompiledFilter,
        origin: &Origin,
        collection: &str,
        rkey: &str,
        bytes: &[u8],
    ) -> bool {
        let (rejection, dropped) = match compiled.check_lexicon(collection, bytes) {
            LexiconVerdict::Pass => return false,
            LexiconVerdict::Log(rejection) => (rejection, false),
            LexiconVerdict::Drop(rejection) => (rejection, true),
        };
        self.metrics.count_rejection(collection, rejection.reason());
        tracing::warn!(
            did = %origin.did,
            record = format_args!("{collection}/{rkey}"),
            path = %rejection.path,
            rule = %rejection.rule,
            live = origin.live,
            dropped,
            "record fails its lexicon{}: {rejection}",
            if dropped { ", not stored" } else { ", stored all the same" }
        );
        dropped
    }

    /// Stages the delete of a stored record (binary CID `previous`), running the handlers'
    /// `on_delete`; returns the handler failures.
    fn stage_delete(
        &self,
        compiled: &CompiledFilter,
        origin: &Origin,
        change: &mut RepoChange,
        collection: SmolStr,
        rkey: SmolStr,
        previous: Vec<u8>,
    ) -> u64 {
        let run = {
            let mut active = compiled.handlers_for(&collection).peekable();
            if active.peek().is_some() {
                let (prev_cid, prev_bytes) = self.previous_record(&origin.did, &collection, &rkey, Some(&previous));
                let view = RecordKeyView {
                    did: &origin.did,
                    collection: &collection,
                    rkey: &rkey,
                    rev: &origin.rev,
                    live: origin.live,
                    previous: prev_bytes.as_deref().map(|bytes| PreviousRecord { cid: &prev_cid, bytes }),
                };
                self.run_handlers(active, || view.uri(), |h, s, out| h.on_delete(&view, s, out))
            } else {
                HandlerRun::default()
            }
        };
        change.handler_writes.extend(run.writes);
        stage_removal(change, origin, collection, rkey, run.handled);
        run.failures
    }

    #[allow(clippy::too_many_arguments)]
    fn stage_upsert(
        &self,
        compiled: &CompiledFilter,
        origin: &Origin,
        change: &mut RepoChange,
        collection: SmolStr,
        rkey: SmolStr,
        cid: Cid,
        bytes: Bytes,
        previous: Option<Vec<u8>>,
    ) -> u64 {
        let run = {
            let mut active = compiled.handlers_for(&collection).peekable();
            if active.peek().is_some() {
                let (prev_cid, prev_bytes) = self.previous_record(&origin.did, &collection, &rkey, previous.as_deref());
                let view = RecordView::new(
                    &origin.did,
                    &collection,
                    &rkey,
                    &cid,
                    &origin.rev,
                    origin.live,
                    &bytes,
                    prev_bytes.as_deref().map(|bytes| PreviousRecord { cid: &prev_cid, bytes }),
                );
                self.run_handlers(active, || view.uri(), |h, s, out| h.on_record(&view, s, out))
            } else {
                HandlerRun::default()
            }
        };
        change.handler_writes.extend(run.writes);
        let failures = run.failures;
        let replaced = match run.emit {
            // Dropped by a handler: taken as not in the repo, so a stored version goes.
            Emit::Drop => {
                if previous.is_some() {
                    stage_removal(change, origin, collection, rkey, run.handled);
                }
                return failures;
            }
            Emit::Replace(json) => Some(json),
            Emit::Keep => None,
        };
        let cid_bytes = cid.to_bytes();
        let action = if previous.is_some() { Action::Update } else { Action::Create };
        // The event carries the body unless a handler's JSON stands for it.
        let event_body = replaced.is_none().then(|| bytes.clone());
        change.records.push(RecordWrite::Put {
            collection: collection.clone(),
            rkey: rkey.clone(),
            cid: cid_bytes.clone(),
            body: bytes,
            existed: previous.is_some(),
        });
        change.events.push(record_event(
            origin,
            collection,
            rkey,
            action,
            cid_bytes,
            replaced,
            run.handled,
            event_body,
        ));
        failures
    }

    /// The stored version a handler sees as `previous` (`previous` is its CID): its CID as a
    /// string and its body, read only when a handler will look at it.
    fn previous_record(
        &self,
        did: &str,
        collection: &str,
        rkey: &str,
        previous: Option<&[u8]>,
    ) -> (String, Option<Vec<u8>>) {
        let Some(cid) = previous else { return (String::new(), None) };
        let cid_str = Cid::try_from(cid).map(|c| c.to_string()).unwrap_or_default();
        (cid_str, self.store.records().get(did, collection, rkey).ok().flatten().and_then(|r| r.body))
    }

    /// Runs the `active` handlers of a record's collection; an error or panic is logged and
    /// counted, and costs only that handler's output.
    fn run_handlers<'h, F>(
        &self,
        active: impl Iterator<Item = &'h ActiveHandler>,
        uri: impl Fn() -> String,
        call: F,
    ) -> HandlerRun
    where
        F: Fn(
            &dyn sluice_handlers::CollectionHandler,
            &sluice_handlers::HandlerSettings,
            &mut HandlerOutput,
        ) -> Result<(), sluice_handlers::HandlerError>,
    {
        let mut run = HandlerRun::default();
        for active in active {
            let name = active.handler.name();
            let mut out = HandlerOutput::new();
            let result = catch_unwind(AssertUnwindSafe(|| call(active.handler, &active.settings, &mut out)));
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(crate::error::chain(&e).to_string()),
                Err(panic) => Some(format!("panicked: {}", panic_message(&panic))),
            };
            if let Some(error) = failure {
                self.metrics.handler_errors.fetch_add(1, Ordering::Relaxed);
                run.failures += 1;
                tracing::warn!(
                    handler = name,
                    uri = uri(),
                    %error,
                    "handler failed; the record is stored without its output"
                );
                continue;
            }
            let (emit, value, writes) = out.into_parts();
            if emit != Emit::Keep {
                run.emit = emit;
            }
            if let Some(json) = value {
                run.handled.push((SmolStr::new_static(name), json));
            }
            run.writes.extend(writes.into_iter().map(|w: IndexWrite| (name, w)));
        }
        run
    }
}

#[derive(Default)]
struct HandlerRun {
    emit: Emit,
    handled: Vec<(SmolStr, String)>,
    writes: Vec<(&'static str, IndexWrite)>,
    failures: u64,
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Whether the walked record `key` passes the record rule and is not dropped by the lexicon
/// check, its body read from `repo`: a signal record either refuses is not in the repo, so it
/// keeps no repo. A body that cannot be read passes here, and fails the walk where it is
/// staged, as any missing block does.
fn passes_rule(repo: &LoadedRepo, key: &crate::repo::RecordKey, compiled: &CompiledFilter) -> bool {
    repo.block(&key.cid.cid(), "record").map_or(true, |bytes| {
        check_record(&bytes).is_ok()
            && !matches!(compiled.check_lexicon(&key.collection, &bytes), LexiconVerdict::Drop(_))
    })
}

/// Whether a record's stored CID (binary, if it is stored) is `cid`: then the new version
/// changes nothing. `cid` is encoded only when there is a stored one to compare it with.
pub(super) fn is_unchanged(stored: Option<&[u8]>, cid: &Cid) -> bool {
    stored.is_some_and(|stored| stored == cid.to_bytes())
}

/// `BACKFILL_DAYS`: whether a walked record is older than `since_us`; its body is read only
/// when its key is not a TID.
pub(super) fn is_too_old(repo: &LoadedRepo, rkey: &str, cid: &Cid, since_us: u64) -> Result<bool, RepoError> {
    Ok(match crate::repo::age::tid_time_us(rkey) {
        Some(t) => t < since_us,
        None => crate::repo::age::is_older_than(rkey, &repo.block(cid, "record")?, since_us),
    })
}

fn check_rev(did: &str, rev: &str, state: Option<&RepoState>) -> Result<(), PipelineError> {
    match state.and_then(|s| s.rev.as_deref()) {
        Some(stored) if stored > rev => {
            Err(PipelineError::StaleRev { did: did.into(), rev: rev.into(), stored: stored.into() })
        }
        _ => Ok(()),
    }
}

/// Stages the removal of a stored record and its delete event (`handled`: what the handlers
/// made of it).
fn stage_removal(
    change: &mut RepoChange,
    origin: &Origin,
    collection: SmolStr,
    rkey: SmolStr,
    handled: Vec<(SmolStr, String)>,
) {
    change.records.push(RecordWrite::Remove { collection: collection.clone(), rkey: rkey.clone() });
    change.events.push(record_event(origin, collection, rkey, Action::Delete, Vec::new(), None, handled, None));
}

#[allow(clippy::too_many_arguments)]
fn record_event(
    origin: &Origin,
    collection: SmolStr,
    rkey: SmolStr,
    action: Action,
    cid: Vec<u8>,
    replaced: Option<String>,
    handled: Vec<(SmolStr, String)>,
    body: Option<Bytes>,
) -> StoredEvent {
    StoredEvent::Record(RecordEvent {
        live: origin.live,
        did: origin.did.clone(),
        rev: origin.rev.clone(),
        collection,
        rkey,
        action,
        cid,
        replaced,
        handled,
        body,
    })
}

/// The first `collection/rkey` that `ops` change more than once.
fn repeated_path(ops: &[RecordOp]) -> Option<String> {
    crate::store::first_repeated_path(ops.iter().map(|op| match op {
        RecordOp::Put { collection, rkey, .. } | RecordOp::Delete { collection, rkey } => {
            (collection.as_str(), rkey.as_str())
        }
    }))
}
