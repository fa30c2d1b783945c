//! Repo exports (signed CARs) built on demand, outside the world lock, and kept per (DID, rev)
//! so repeated `getRepo`, `getLatestCommit` and `listRepos` calls are cheap.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cid::Cid;
use tokio::sync::OnceCell;

use super::repos::{Account, BuildError, export_repo};
use crate::lock::lock;

/// A repo export: its rev, commit CID and CAR bytes.
pub(crate) struct Built {
    pub rev: String,
    pub head: Cid,
    pub car: Bytes,
}

/// The export for one (DID, rev), built once however many requests ask at the same time.
struct Slot {
    rev: String,
    cell: OnceCell<Arc<Built>>,
}

/// The latest export per DID.
#[derive(Default)]
pub(crate) struct RepoCache {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl RepoCache {
    /// The export of `did` at `rev`: the cached one, or the one `build` makes (which then
    /// replaces the DID's older one).
    pub async fn get<F, Fut>(&self, did: &str, rev: String, build: F) -> Result<Arc<Built>, BuildError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<Built>, BuildError>>,
    {
        let slot = {
            let mut slots = lock(&self.slots);
            match slots.get(did) {
                Some(s) if s.rev == rev => s.clone(),
                _ => {
                    let s = Arc::new(Slot { rev, cell: OnceCell::new() });
                    slots.insert(did.to_string(), s.clone());
                    s
                }
            }
        };
        slot.cell.get_or_try_init(build).await.cloned()
    }
}

/// Builds the export of `account`'s repo at `rev` holding `entries` (`(collection/rkey,
/// DAG-CBOR)` in key order) on a blocking thread.
pub(crate) async fn build(
    account: Account,
    rev: String,
    entries: Vec<(String, Bytes)>,
) -> Result<Arc<Built>, BuildError> {
    let handle = tokio::runtime::Handle::current();
    let built = tokio::task::spawn_blocking(move || {
        let (head, car) = handle.block_on(export_repo(&account, &rev, entries))?;
        Ok::<_, BuildError>(Built { rev, head, car: Bytes::from(car) })
    });
    built.await?.map(Arc::new)
}
