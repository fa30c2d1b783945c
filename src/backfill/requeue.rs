//! Filter edits reach the data: when an edit widens what is indexed, repos already walked are
//! queued again (throttled) so that the newly wanted records get backfilled, and so are the
//! repos whose backfill failed for good (refused, or out of retries): an edit is one of the
//! changes they wait for. Narrowing needs nothing here: the pipeline stops emitting what the
//! filter no longer wants.

use std::sync::Arc;
use std::time::Duration;

use crate::filter::Filter;
use crate::store::values::now_ms;
use crate::store::{RepoState, RepoStatus, StoreError};

use super::Backfill;
use crate::store::schedule;

/// What a filter edit opens up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Widening {
    /// Synced repos may hold newly wanted records.
    pub synced: bool,
    /// Discarded repos may now qualify (signals or mode changed).
    pub discarded: bool,
    /// DIDs newly listed in `dids`.
    pub new_dids: Vec<String>,
}

impl Widening {
    /// Whether the edit needs any repo walked again.
    pub fn any(&self) -> bool {
        self.synced || self.discarded || !self.new_dids.is_empty()
    }
}

/// What going from `old` to `new` opens up.
pub fn widening(old: &Filter, new: &Filter) -> Widening {
    let added = |old: &[String], new: &[String]| new.iter().any(|p| !old.contains(p));
    let collections_widen = (new.collections.is_empty() && !old.collections.is_empty())
        || (!old.collections.is_empty() && added(&old.collections, &new.collections))
        || added(&new.exclude_collections, &old.exclude_collections);
    let signals_change = old.mode != new.mode || old.signals != new.signals;
    let unexcluded = old.exclude_dids.iter().any(|d| !new.exclude_dids.contains(d));
    Widening {
        synced: collections_widen,
        discarded: signals_change || collections_widen || unexcluded,
        new_dids: new.dids.difference(&old.dids).cloned().collect(),
    }
}

/// Watches the filter in force, from `current` (the one in force when the run started) on, and
/// queues repos again when an edit widens it.
pub(super) async fn follow_filter_edits(backfill: &Arc<Backfill>, mut current: Arc<crate::filter::CompiledFilter>) {
    let filter = backfill.pipeline.filter().clone();
    while !backfill.stopping() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let new = filter.load();
        if Arc::ptr_eq(&new, &current) {
            continue;
        }
        let widened = widening(&current.filter, &new.filter);
        current = new;
        if widened.any() {
            match requeue(backfill, &widened).await {
                Ok(n) => tracing::info!(repos = n, "filter edit widens the index; repos queued again"),
                Err(e) => tracing::error!("queueing repos after a filter edit: {}", crate::error::chain(&e)),
            }
        }
    }
}

/// Whether a widening edit queues a repo in `state` again: synced or discarded ones as the edit
/// says, and those whose backfill failed for good whatever it widens.
fn requeued_by(widened: &Widening, state: &RepoState) -> bool {
    match state.status {
        RepoStatus::Synced => widened.synced,
        RepoStatus::Discarded => widened.discarded,
        _ => schedule::awaits_change(state),
    }
}

/// Queues the repos `widened` names, `requeue_per_sec` at a time, walking the repo states in
/// DID order a chunk at a time (memory stays bounded however many repos the store holds).
async fn requeue(backfill: &Backfill, widened: &Widening) -> Result<usize, StoreError> {
    let store = backfill.store();
    store.queue().enqueue_new(&backfill.owned(&widened.new_dids), None)?;
    let wanted = |state: &RepoState| requeued_by(widened, state);
    let per_sec = backfill.config.requeue_per_sec.max(1);
    // Newly listed DIDs that were discarded are walked again whatever else the edit widens.
    let mut queued = requeue_now(store, widened.new_dids.iter().cloned(), |s| s.status == RepoStatus::Discarded)?;
    let mut after: Option<String> = None;
    loop {
        if backfill.stopping() {
            break;
        }
        let (chunk, next) = store.repos().page(after.as_deref(), per_sec, 100 * per_sec, wanted)?;
        let full = chunk.len() >= per_sec;
        queued += requeue_now(store, chunk.into_iter().map(|(did, _)| did), wanted)?;
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
        if full {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(queued)
}

/// Queues `dids` now, those whose stored state `wanted` still accepts (a worker may have moved
/// one since it was read); returns how many.
fn requeue_now(
    store: &crate::store::Store,
    dids: impl Iterator<Item = String>,
    wanted: impl Fn(&RepoState) -> bool,
) -> Result<usize, StoreError> {
    let now = now_ms();
    let mut states = Vec::new();
    for did in dids {
        if let Some(state) = store.repos().state(&did)?.filter(|s| wanted(s)) {
            states.push((did, schedule::requeued(&state, 0, now)));
        }
    }
    store.set_states(&states, None)?;
    Ok(states.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(text: &str) -> Filter {
        Filter::from_toml(text, "t.toml").unwrap()
    }

    #[test]
    fn widenings() {
        let posts = f("mode = \"full\"\ncollections = [\"app.bsky.feed.post\"]");
        let more = f("mode = \"full\"\ncollections = [\"app.bsky.feed.post\", \"app.bsky.feed.like\"]");
        let all = f("mode = \"full\"");
        assert!(widening(&posts, &more).synced);
        assert!(!widening(&more, &posts).any(), "narrowing needs no rewalk");
        assert!(widening(&posts, &all).synced);
        assert!(!widening(&all, &posts).synced);
        let no_likes = f("mode = \"full\"\nexclude_collections = [\"app.bsky.feed.like\"]");
        assert!(widening(&no_likes, &all).synced);
        let sig = f("mode = \"signal\"\nsignals = [\"a.b.c\"]");
        let sig2 = f("mode = \"signal\"\nsignals = [\"a.b.c\", \"a.b.d\"]\ndids = [\"did:plc:x\"]");
        let w = widening(&sig, &sig2);
        assert!(w.discarded && !w.synced);
        assert_eq!(w.new_dids, vec!["did:plc:x".to_string()]);
    }

    #[test]
    fn a_widening_edit_requeues_repos_that_failed_for_good() {
        let only_discarded = Widening { discarded: true, ..Default::default() };
        let at = |status, next_retry_ms| RepoState { status, next_retry_ms, ..Default::default() };
        assert!(requeued_by(&only_discarded, &at(RepoStatus::Error, None)), "refused: waits for a change");
        assert!(!requeued_by(&only_discarded, &at(RepoStatus::Error, Some(5))), "a retry is queued already");
        assert!(!requeued_by(&only_discarded, &at(RepoStatus::Synced, None)));
        assert!(requeued_by(&only_discarded, &at(RepoStatus::Discarded, None)));
        for status in [RepoStatus::Gone, RepoStatus::Pending, RepoStatus::Desynchronized] {
            assert!(!requeued_by(&only_discarded, &at(status, None)), "{status:?}");
        }
    }
}
