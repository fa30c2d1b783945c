//! `#sync`, `#identity` and `#account`: frames about a repo's head, identity or hosting rather
//! than its records. Only repos sluice tracks (any state but discarded) are acted on.
//!
//! Account rule: `deleted` removes every stored record of the repo, with delete events, and
//! leaves it `gone`. `deactivated`, `takendown` and `suspended` leave it `gone` with its records
//! kept as they were (these can be undone); reactivation (`active: true`) queues a backfill,
//! whose diff brings the records up to date. Relay-side statuses (`throttled`,
//! `desynchronized`, others) leave the repo indexed as it is; the state keeps the status
//! (`RepoState::account_status`) so that `active` afterwards is a change. Each change emits one
//! account event; a frame that changes nothing (the status the repo already has) emits none.

use jacquard_api::com_atproto::sync::subscribe_repos::{Account, Identity, Sync};

use super::live::{Handled, Live, LiveError, Refusal};
use crate::filter::RepoRule;
use crate::store::schedule;
use crate::store::values::now_ms;
use crate::store::{AccountEvent, IdentityEvent, RepoState, RepoStatus, StoredEvent};

impl Live {
    /// A tracked repo's state: `None` for repos sluice does not index.
    fn tracked(&self, did: &str) -> Result<Option<RepoState>, LiveError> {
        Ok(self.store().repos().state(did)?.filter(|s| s.status != RepoStatus::Discarded))
    }

    /// `#sync`: a repo's current commit. A root other than the stored one queues a backfill.
    pub(super) fn sync(&self, s: &Sync) -> Result<Handled, LiveError> {
        let did = s.did.as_str();
        let Some(state) = self.store().repos().state(did)? else {
            let tracked =
                self.opts.backfill && self.pipeline.filter().load().filter.repo_rule(did) == RepoRule::Tracked;
            if !tracked {
                return Ok(Handled::Dropped);
            }
            self.queue_backfill(did, None)?;
            return Ok(Handled::Discovered);
        };
        if state.status != RepoStatus::Synced {
            return Ok(Handled::Dropped);
        }
        let loaded = match crate::repo::read_car(&s.blocks, &self.opts.limits) {
            Ok(loaded) => loaded,
            Err(e) => return Ok(Handled::refused(&Refusal::Blocks(e))),
        };
        if let Err(refusal) = self.check_signed(did, s.rev.as_str(), &loaded) {
            return Ok(Handled::refused(&refusal));
        }
        if state.rev.as_deref().is_some_and(|stored| stored >= s.rev.as_str()) {
            return Ok(Handled::Stale);
        }
        let data = loaded.data().to_string();
        if state.data.as_deref() != Some(data.as_str()) {
            let reason =
                format!("#sync names root {data}, not the stored {}", state.data.as_deref().unwrap_or("(none)"));
            self.desynchronize(did, state, reason.clone())?;
            return Ok(Handled::Desynchronized(reason));
        }
        let state = RepoState { rev: Some(s.rev.to_string()), updated_ms: now_ms(), ..state };
        self.store().set_states(&[(did.to_string(), state)], None)?;
        Ok(Handled::Applied)
    }

    /// `#identity`: the cached key and PDS are dropped, the handle is stored and an identity
    /// event is emitted.
    pub(super) fn identity(&self, i: &Identity) -> Result<Handled, LiveError> {
        let did = i.did.as_str();
        self.resolver.invalidate(did);
        let Some(state) = self.tracked(did)? else { return Ok(Handled::Dropped) };
        let handle = i.handle.as_ref().map(|h| h.as_str().to_string());
        let event = StoredEvent::Identity(IdentityEvent { did: did.to_string(), handle: handle.clone() });
        let state = RepoState { handle, updated_ms: now_ms(), ..state };
        let handled = self.apply_status(did, state, event)?;
        // The handle may point elsewhere now even when it is the same: check it again.
        self.store().handles().request_check(did)?;
        Ok(handled)
    }

    /// `#account`: see the module's rule.
    pub(super) fn account(&self, a: &Account) -> Result<Handled, LiveError> {
        let did = a.did.as_str();
        let Some(state) = self.tracked(did)? else { return Ok(Handled::Dropped) };
        let status = (!a.active).then(|| a.status.as_ref().map_or("inactive", |s| s.as_str()).to_string());
        let event =
            StoredEvent::Account(AccountEvent { did: did.to_string(), active: a.active, status: status.clone() });
        let now = now_ms();
        let gone = state.status == RepoStatus::Gone;
        let relay_side = state.account_status.clone();
        // Whatever the frame says next replaces a relay-side status.
        let state = RepoState { account_status: None, ..state };
        match status.as_deref() {
            None if !gone && relay_side.is_none() => Ok(Handled::Stale),
            None if !gone => self.apply_status(did, RepoState { updated_ms: now, ..state }, event),
            None if self.opts.backfill => {
                self.apply_status(did, RepoState { error: None, ..schedule::requeued(&state, 0, now) }, event)
            }
            None => self.apply_status(
                did,
                RepoState { status: RepoStatus::Synced, error: None, updated_ms: now, ..state },
                event,
            ),
            Some(s) if gone && relay_side.is_none() && state.error.as_deref() == Some(s) => Ok(Handled::Stale),
            Some(s) if relay_side.as_deref() == Some(s) => Ok(Handled::Stale),
            Some("deleted") => {
                let rev = state.rev.clone().unwrap_or_default();
                let gone = schedule::gone(&state, "deleted".into(), now);
                match self.pipeline.remove_repo(did, &rev, gone, Some(event)) {
                    Ok(_) => Ok(Handled::Applied),
                    Err(crate::pipeline::PipelineError::Store(e)) => Err(e.into()),
                    Err(e) => Ok(Handled::refused(&e)),
                }
            }
            Some(s @ ("deactivated" | "takendown" | "suspended")) => {
                self.apply_status(did, schedule::gone(&state, s.to_string(), now), event)
            }
            Some(s) => {
                let state = RepoState { account_status: Some(s.to_string()), updated_ms: now, ..state };
                self.apply_status(did, state, event)
            }
        }
    }

    fn apply_status(&self, did: &str, state: RepoState, event: StoredEvent) -> Result<Handled, LiveError> {
        match self.pipeline.apply_status(did, state, event) {
            Ok(()) => Ok(Handled::Applied),
            Err(crate::pipeline::PipelineError::Store(e)) => Err(e.into()),
            Err(e) => Ok(Handled::refused(&e)),
        }
    }
}
