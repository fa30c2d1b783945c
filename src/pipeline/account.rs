//! Changes that come from a repo's account or identity rather than its records: a state change
//! with its identity or account event, and the removal of every record of a deleted account.

use crate::store::{RepoChange, RepoState, StoredEvent};

use super::{Origin, Pipeline, PipelineError, RepoOutcome, Staged, Tally};

impl Pipeline {
    /// Commits `did`'s new `state` with `event` (an identity or account event) in one batch.
    pub fn apply_status(&self, did: &str, state: RepoState, event: StoredEvent) -> Result<(), PipelineError> {
        self.count_status_event(&event);
        let change = RepoChange { did: did.to_string(), state: Some(state), events: vec![event], ..Default::default() };
        self.store.commit(change)?;
        Ok(())
    }

    fn count_status_event(&self, event: &StoredEvent) {
        let counter = match event {
            StoredEvent::Identity(_) => &self.metrics.identity_events,
            StoredEvent::Account(_) => &self.metrics.account_events,
            StoredEvent::Record(_) => return,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Deletes every stored record of `did` with delete events (handlers see each delete), in
    /// batches of the pipeline's batch size; the last batch writes `state` and `last_event`.
    /// `rev` is the rev the delete events carry.
    pub fn remove_repo(
        &self,
        did: &str,
        rev: &str,
        state: RepoState,
        last_event: Option<StoredEvent>,
    ) -> Result<RepoOutcome, PipelineError> {
        let compiled = self.filter.load();
        let origin = Origin::new(did, rev, true);
        let mut outcome = RepoOutcome::new(state.status, 0);
        let mut last = Some((state, last_event));
        // A page of the stored records a batch, each read past the last (an account of a million
        // records is never held whole).
        let mut after: Option<Vec<u8>> = None;
        while last.is_some() {
            let page = self.store.records().repo_page(did, after.as_deref(), self.batch_size)?;
            let done = page.len() < self.batch_size;
            after = page.last().map(|((collection, rkey), _)| crate::store::keys::record(did, collection, rkey));
            let batch = page
                .into_iter()
                .map(|((collection, rkey), previous)| Staged::Delete { collection, rkey, previous })
                .collect();
            let (mut change, handler_errors) = self.stage(&compiled, &origin, batch, None)?;
            if done && let Some((state, event)) = last.take() {
                if let Some(event) = &event {
                    self.count_status_event(event);
                }
                change.state = Some(state);
                change.events.extend(event);
            }
            let tally = Tally::of(&change, handler_errors);
            self.commit_batch(self.store.prepare(change)?, tally, &mut outcome)?;
        }
        Ok(outcome)
    }
}
