//! The store's side of the declarative indexes: putting the filter's definitions in force,
//! building a new index from the stored records a batch at a time, and what the queries and
//! `/metrics` read. The rows themselves are `indexes.rs`'s.

use std::collections::BTreeMap;
use std::sync::Arc;

use smol_str::SmolStr;

use super::indexes::{Build, LiveIndex, Progress, Registry, Update, inline_value};
use super::{Result, Store, keys, log};
use crate::indexes::{IndexSpec, Skip};

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

    /// How far a build is: (records of the index's collection read, about how many there are:
    /// the stored count of the collection, or what was read if more).
    pub fn build_progress(&self, index: &LiveIndex, build: &Build) -> (u64, u64) {
        let total = self.records_in(&index.spec.collection).max(0) as u64;
        (build.done, total.max(build.done))
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

    /// Builds one batch of the first index still building: reads up to `max_keys` stored
    /// records past its position, under the writer lock, and commits their entries with the new
    /// position. `None` when no index is building.
    pub fn build_index_step(&self, max_keys: usize) -> Result<Option<BuildStep>> {
        let _writer = self.writer.lock().expect("writer lock");
        let Some((index, build)) = self.indexes.next_build() else { return Ok(None) };
        let now = log::now_us() as i64;
        let mut found: Vec<(String, Update)> = Vec::new();
        let last =
            self.records.scan_collection(&build.after, max_keys, &index.spec.collection, |did, rkey, cid, body| {
                let update = Update {
                    rkey: SmolStr::new(rkey),
                    existed: false,
                    new: Some(crate::indexes::entries(&index.spec, rkey, body, now)),
                    value: index.inlines().then(|| inline_value(cid, body)).flatten(),
                };
                found.push((did.to_string(), update));
                Ok(())
            })?;
        let records = found.len() as u64;
        let next = last.map(|after| Build { after, done: build.done + records });
        let mut batch = self.db.batch(4 * found.len() + 4);
        let answered = |did: &str| Ok(self.repos.state(did)?.is_some_and(|s| s.answered()));
        let moved = self.indexes.stage_build(&mut batch, &index, found, next.clone(), answered)?;
        self.db.commit(batch)?;
        self.indexes.committed(moved);
        let ready = next.is_none();
        self.indexes.built(index.id, next);
        if ready {
            tracing::info!(index = %index.spec.name, "index built");
        }
        Ok(Some(BuildStep { name: index.spec.name.clone(), records, ready }))
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
