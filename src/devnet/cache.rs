//! Repo exports (signed CARs) built on demand, outside the world lock, and kept per (DID, rev)
//! so repeated `getRepo`, `getLatestCommit` and `listRepos` calls are cheap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cid::Cid;
use tokio::sync::OnceCell;

use super::repos::export_repo;
use super::world::{World, lock};

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

impl World {
    /// The export of `did`'s repo as it is now (`None` for an unknown DID), built on a blocking
    /// thread when not cached.
    pub async fn built(&self, did: &str) -> Option<Result<Arc<Built>, String>> {
        let rev = self.read(did, |a| a.rev.clone())?;
        let slot = {
            let mut slots = lock(&self.cache.slots);
            match slots.get(did) {
                Some(s) if s.rev == rev => s.clone(),
                _ => {
                    let s = Arc::new(Slot { rev, cell: OnceCell::new() });
                    slots.insert(did.to_string(), s.clone());
                    s
                }
            }
        };
        Some(slot.cell.get_or_try_init(|| self.build(did)).await.cloned())
    }

    /// Builds the export of `did` as it is now (a snapshot taken under the lock; the export
    /// built without it).
    async fn build(&self, did: &str) -> Result<Arc<Built>, String> {
        let super::world::Snapshot { account, rev, entries } =
            self.snapshot(did).ok_or_else(|| format!("no devnet account {did}"))?;
        let handle = tokio::runtime::Handle::current();
        let built = tokio::task::spawn_blocking(move || {
            let (head, car) = handle.block_on(export_repo(&account, &rev, entries)).map_err(|e| e.to_string())?;
            Ok::<_, String>(Built { rev, head, car: Bytes::from(car) })
        });
        built.await.map_err(|e| e.to_string())?.map(Arc::new)
    }
}
