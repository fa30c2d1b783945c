//! A PDS host's view of the World: the accounts it hosts, how a `repo` parameter names one, and
//! the error a repo read gets when its account is not active.

use std::sync::Arc;

use sluice::xrpc::XrpcError;

use crate::firehose::sequencer::Sequencer;
use crate::world::state::{AccountState, AccountStatus, World};

/// One PDS host: the shared world, the firehose, and this host's index.
#[derive(Clone)]
pub(crate) struct Pds {
    pub world: Arc<World>,
    pub sequencer: Arc<Sequencer>,
    pub index: usize,
}

impl Pds {
    /// Runs `f` on `did`'s account when it is hosted here and readable (active); otherwise the
    /// XRPC error its status calls for.
    pub fn with_repo<R>(&self, did: &str, f: impl FnOnce(&mut AccountState) -> R) -> Result<R, XrpcError> {
        self.world
            .update(did, |a| {
                if a.pds != self.index {
                    return Err(XrpcError::repo_not_found(did));
                }
                status_error(did, a.status).map_or(Ok(()), Err)?;
                Ok(f(a))
            })
            .unwrap_or_else(|| Err(XrpcError::repo_not_found(did)))
    }

    /// The DID of a `repo` parameter when that account is hosted here and active: what the
    /// reference PDS's `getDidForActor` gives `listRecords` and `getRecord`.
    pub fn available(&self, repo: &str) -> Option<String> {
        let did = self.resolve_repo(repo).ok()?;
        self.world.read(&did, |a| a.pds == self.index && a.status == AccountStatus::Active).filter(|ok| *ok)?;
        Some(did)
    }

    /// The DID for a `repo` parameter (a DID, or a handle of an account on this host).
    pub fn resolve_repo(&self, repo: &str) -> Result<String, XrpcError> {
        if repo.starts_with("did:") {
            return Ok(repo.to_string());
        }
        let mut found = None;
        self.world.scan(None, |a| {
            if a.pds == self.index && a.handle.eq_ignore_ascii_case(repo) {
                found = Some(a.account.did.clone());
            }
            found.is_none()
        });
        found.ok_or_else(|| XrpcError::invalid(format!("Could not find repo: {repo}")))
    }
}

/// The error a repo read gets for an account with `status`; `None` when active.
pub(crate) fn status_error(did: &str, status: AccountStatus) -> Option<XrpcError> {
    let (error, what) = match status {
        AccountStatus::Active => return None,
        AccountStatus::Deleted => return Some(XrpcError::repo_not_found(did)),
        AccountStatus::Deactivated => ("RepoDeactivated", "deactivated"),
        AccountStatus::Takendown => ("RepoTakendown", "takendown"),
        AccountStatus::Suspended => ("RepoSuspended", "suspended"),
    };
    Some(XrpcError::new(axum::http::StatusCode::BAD_REQUEST, error, format!("Repo has been {what}: {did}")))
}
