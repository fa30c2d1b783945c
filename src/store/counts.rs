//! Counters: `counts` (counter key -> i64 BE): records per collection and repos per status.
//!
//! They are the writer's: every commit adds its moves ([`record_deltas`], [`status_move`]) to
//! the values the writer caches (`Writer::counts`, loaded on open) and stages the new values in
//! its batch, under the writer lock, so a counter always agrees with what its batch wrote and
//! no read of a counter scans the records or the states. [`super::Store::counts`] reads the
//! cache.

use std::collections::{BTreeMap, HashMap};

use fjall::Keyspace;

use super::records::RecordWrite;
use super::values::RepoStatus;
use super::{Result, keys};

/// Counter values by key, as the writer caches them.
pub(super) type Values = BTreeMap<Vec<u8>, i64>;

/// The counters part: owns `counts`.
pub(super) struct Counts {
    counts: Keyspace,
}

impl Counts {
    pub(super) fn new(counts: Keyspace) -> Self {
        Self { counts }
    }

    /// Every stored counter: what the writer starts from on open.
    pub(super) fn load(&self) -> Result<Values> {
        let mut values = Values::new();
        for kv in self.counts.iter() {
            let (k, v) = kv.into_inner()?;
            values.insert(k.to_vec(), decode(&v));
        }
        Ok(values)
    }

    /// Puts the counters moved by `deltas` (against `current`, the writer's values) in
    /// `batch`; returns their new values for the writer to keep once the batch committed.
    pub(super) fn stage(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        current: &Values,
        deltas: Values,
    ) -> Vec<(Vec<u8>, i64)> {
        deltas
            .into_iter()
            .filter(|(_, delta)| *delta != 0)
            .map(|(key, delta)| {
                let value = current.get(&key).copied().unwrap_or(0) + delta;
                batch.insert(&self.counts, key.clone(), value.to_be_bytes());
                (key, value)
            })
            .collect()
    }
}

/// How record writes move the per-collection counters.
pub(super) fn record_deltas(records: &[RecordWrite]) -> Values {
    let mut by_collection: HashMap<&str, i64> = HashMap::new();
    for write in records {
        match write {
            RecordWrite::Put { collection, existed: false, .. } => *by_collection.entry(collection).or_default() += 1,
            RecordWrite::Remove { collection, .. } => *by_collection.entry(collection).or_default() -= 1,
            RecordWrite::Put { existed: true, .. } => {}
        }
    }
    by_collection.into_iter().filter(|(_, d)| *d != 0).map(|(c, d)| (keys::count_records(c), d)).collect()
}

/// Adds to `deltas` a repo's move from status `old` (`None`: a new repo) to `new`.
pub(super) fn status_move(deltas: &mut Values, old: Option<RepoStatus>, new: RepoStatus) {
    if old != Some(new) {
        if let Some(old) = old {
            *deltas.entry(keys::count_repos(old.as_str())).or_default() -= 1;
        }
        *deltas.entry(keys::count_repos(new.as_str())).or_default() += 1;
    }
}

fn decode(v: &[u8]) -> i64 {
    v.try_into().map(i64::from_be_bytes).unwrap_or(0)
}
