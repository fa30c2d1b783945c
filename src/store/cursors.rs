//! Saved positions: `cursors` (service -> [`Cursor`]: a position and when it was saved).
//!
//! A cursor that covers a change is staged into that change's batch ([`Cursors::stage`], from
//! `RepoChange::cursor` or `Store::set_states`), so it is never ahead of what it covers. A
//! position that covers no single batch (the firehose's, which many shards advance together; a
//! consumer's ack) is saved on its own ([`Cursors::save`]), after what it covers committed.

use std::collections::BTreeMap;

use fjall::Keyspace;

use super::Result;
use super::failure::Db;
use super::values::{Cursor, Stored, now_ms};

/// The cursors part: owns `cursors`.
pub struct Cursors {
    db: Db,
    cursors: Keyspace,
}

impl Cursors {
    pub(super) fn new(db: Db, cursors: Keyspace) -> Self {
        Self { db, cursors }
    }

    /// Puts `service`'s cursor in `batch`, stamped now.
    pub(super) fn stage(&self, batch: &mut fjall::OwnedWriteBatch, service: &str, value: String) {
        batch.insert(&self.cursors, service.as_bytes(), Cursor { value, updated_ms: now_ms() }.encode());
    }

    /// Saves `service`'s cursor on its own (positions that cover no single batch, like the
    /// firehose's, which many workers advance together).
    pub fn save(&self, service: &str, value: &str) -> Result<()> {
        let value = Cursor { value: value.to_string(), updated_ms: now_ms() }.encode();
        self.db.write(|| self.cursors.insert(service.as_bytes(), value))
    }

    /// `service`'s saved cursor, if any.
    pub fn get(&self, service: &str) -> Result<Option<String>> {
        match self.cursors.get(service.as_bytes())? {
            Some(v) => Ok(Some(Cursor::decode(&v)?.value)),
            None => Ok(None),
        }
    }

    /// Saved cursors: service -> (position, unix ms of the save).
    pub fn all(&self) -> Result<BTreeMap<String, (String, u64)>> {
        self.cursors
            .iter()
            .map(|kv| {
                let (k, v) = kv.into_inner()?;
                let c = Cursor::decode(&v)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), (c.value, c.updated_ms)))
            })
            .collect()
    }

    /// Makes the next crawl list the relay from the start (every `crawler` cursor emptied).
    pub fn reset_crawl(&self) -> Result<()> {
        let services: Vec<String> =
            self.all()?.into_keys().filter(|k| k == "crawler" || k.starts_with("crawler/")).collect();
        for service in services {
            let mut batch = self.db.batch(1);
            self.stage(&mut batch, &service, String::new());
            self.db.commit(batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    #[test]
    fn cursors_saved_alone_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.cursors().get("firehose").unwrap(), None);
        store.cursors().save("firehose", "42").unwrap();
        assert_eq!(store.cursors().get("firehose").unwrap().as_deref(), Some("42"));
    }

    #[test]
    fn a_crawl_reset_empties_every_crawler_cursor_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (service, value) in [("crawler", "a"), ("crawler/relay2", "b"), ("firehose", "7"), ("crawlers", "c")] {
            store.cursors().save(service, value).unwrap();
        }
        store.cursors().reset_crawl().unwrap();
        let values: Vec<(String, String)> =
            store.cursors().all().unwrap().into_iter().map(|(service, (value, _))| (service, value)).collect();
        let want = [("crawler", ""), ("crawler/relay2", ""), ("crawlers", "c"), ("firehose", "7")];
        assert_eq!(values, want.map(|(s, v)| (s.to_string(), v.to_string())));
    }
}
