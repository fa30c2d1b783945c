//! Where an index's staged rows go: a change's write batch (through the memtable and the
//! journal), or a build step's sorted run, ingested as tables of its own.
//!
//! A build writes rows no change has written (records past its position), hundreds of
//! thousands at a time; through a batch, each row costs a journal write, a memtable insert
//! among keys sharing long prefixes, and a flush. A [`SortedRun`] sorts them once and hands
//! them to fjall's ingestion, which writes them straight into new tables and registers them
//! in one version: every row of the step, its build position and totals among them, lands at
//! once or not at all, as a batch would.

use fjall::{Keyspace, Slice};

use super::Result;
use super::failure::Db;

/// A sink for staged index rows: puts and removals, the last one for a key winning.
pub(super) trait Rows {
    /// Writes `value` at `key` in `space`.
    fn put(&mut self, space: &Keyspace, key: impl Into<Slice>, value: impl Into<Slice>);
    /// Removes `key` from `space`.
    fn delete(&mut self, space: &Keyspace, key: impl Into<Slice>);
}

impl Rows for fjall::OwnedWriteBatch {
    fn put(&mut self, space: &Keyspace, key: impl Into<Slice>, value: impl Into<Slice>) {
        self.insert(space, key, value);
    }

    fn delete(&mut self, space: &Keyspace, key: impl Into<Slice>) {
        self.remove(space, key);
    }
}

/// The rows of one build step of one index, all in its keyspace, ingested in key order.
pub(super) struct SortedRun {
    space: Keyspace,
    /// In staging order: a key's last row wins.
    rows: Vec<(Slice, Option<Slice>)>,
}

impl SortedRun {
    /// An empty run for `space`, sized for about `n` rows.
    pub(super) fn new(space: &Keyspace, n: usize) -> SortedRun {
        SortedRun { space: space.clone(), rows: Vec::with_capacity(n) }
    }

    /// Sorts the rows by key, keeping each key's last, and ingests them: new tables in
    /// `space`, registered together, newer than every write committed before.
    pub(super) fn ingest(self, db: &Db) -> Result<()> {
        let SortedRun { space, mut rows } = self;
        // Stable: equal keys keep their staging order, so the last of each run is the winner.
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let mut ingestion = db.write(|| space.start_ingestion())?;
        let mut rows = rows.into_iter().peekable();
        while let Some((key, value)) = rows.next() {
            if rows.peek().is_some_and(|(next, _)| *next == key) {
                continue;
            }
            db.write(|| match value {
                Some(value) => ingestion.write(key, value),
                None => ingestion.write_tombstone(key),
            })?;
        }
        db.write(|| ingestion.finish())
    }

    fn check(&self, space: &Keyspace) {
        debug_assert_eq!(space.id(), self.space.id(), "a build step writes its own index's keyspace only");
    }
}

impl Rows for SortedRun {
    fn put(&mut self, space: &Keyspace, key: impl Into<Slice>, value: impl Into<Slice>) {
        self.check(space);
        self.rows.push((key.into(), Some(value.into())));
    }

    fn delete(&mut self, space: &Keyspace, key: impl Into<Slice>) {
        self.check(space);
        self.rows.push((key.into(), None));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Puts (`Some`) and removals (`None`) over a few short keys, so that keys repeat.
    fn ops() -> impl Strategy<Value = Vec<(Vec<u8>, Option<Vec<u8>>)>> {
        let key = proptest::collection::vec(0u8..4, 1..3);
        proptest::collection::vec((key, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))), 0..40)
    }

    fn rows(space: &Keyspace) -> Vec<(Vec<u8>, Vec<u8>)> {
        space.iter().map(|kv| kv.into_inner().map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Over rows already stored, an ingested run leaves what the same rows through a write
        /// batch leave: each key's last row wins, a removal removes a stored row.
        #[test]
        fn an_ingested_run_leaves_what_a_batch_leaves(before in ops(), step in ops()) {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(dir.path(), 1 << 20).unwrap();
            let (batched, ingested) = (
                db.keyspace("batched", Default::default).unwrap(),
                db.keyspace("ingested", Default::default).unwrap(),
            );
            let mut first = db.batch(before.len());
            for (key, value) in &before {
                for space in [&batched, &ingested] {
                    match value {
                        Some(v) => first.put(space, key.clone(), v.clone()),
                        None => first.delete(space, key.clone()),
                    }
                }
            }
            db.commit(first).unwrap();
            let (mut batch, mut run) = (db.batch(step.len()), SortedRun::new(&ingested, step.len()));
            for (key, value) in step {
                match value {
                    Some(v) => {
                        batch.put(&batched, key.clone(), v.clone());
                        run.put(&ingested, key, v);
                    }
                    None => {
                        batch.delete(&batched, key.clone());
                        run.delete(&ingested, key);
                    }
                }
            }
            db.commit(batch).unwrap();
            run.ingest(&db).unwrap();
            prop_assert_eq!(rows(&ingested), rows(&batched));
        }
    }
}
