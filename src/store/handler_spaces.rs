//! The handlers' index keyspaces: `handler.<name>`, one per registered handler, holding the
//! keys and values its [`IndexWrite`]s put there.
//!
//! Written only through the commit ([`HandlerSpaces::stage`]), in the batch of the record
//! change that produced the writes, so an index never runs ahead of or behind its records. A
//! keyspace is opened on first use (`Sluice::open` opens every registered handler's up front).
//! Read by the XRPC queries a handler serves ([`HandlerSpaces::keys`]).

use std::collections::HashMap;
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::Mutex;

use fjall::Keyspace;
use sluice_handlers::IndexWrite;

use super::failure::Db;
use super::{Result, keyspace_options};

/// The handler keyspaces part: owns every `handler.<name>` keyspace.
pub struct HandlerSpaces {
    db: Db,
    spaces: Mutex<HashMap<&'static str, Keyspace>>,
}

impl HandlerSpaces {
    pub(super) fn new(db: Db) -> Self {
        Self { db, spaces: Mutex::new(HashMap::new()) }
    }

    /// The keyspace of handler `name`, opened on first use.
    fn space(&self, name: &'static str) -> Result<Keyspace> {
        let mut spaces = self.spaces.lock().expect("handler keyspace lock");
        if let Some(ks) = spaces.get(name) {
            return Ok(ks.clone());
        }
        let keyspace = format!("handler.{name}");
        let ks = self.db.keyspace(&keyspace, || keyspace_options(&keyspace))?;
        spaces.insert(name, ks.clone());
        Ok(ks)
    }

    /// Opens handler `name`'s keyspace now rather than at its first write.
    pub fn open(&self, name: &'static str) -> Result<()> {
        self.space(name).map(drop)
    }

    /// Puts `writes` (handler name, write) in `batch`.
    pub(super) fn stage(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        writes: Vec<(&'static str, IndexWrite)>,
    ) -> Result<()> {
        // A batch's handler writes come in runs of one handler: its keyspace is looked up once
        // a run, not once a write.
        let mut space: Option<(&'static str, Keyspace)> = None;
        for (name, w) in writes {
            if space.as_ref().is_none_or(|(current, _)| *current != name) {
                space = Some((name, self.space(name)?));
            }
            let (_, ks) = space.as_ref().expect("set above");
            match w.value {
                Some(v) => batch.insert(ks, w.key, v),
                None => batch.remove(ks, w.key),
            }
        }
        Ok(())
    }

    /// Up to `limit` keys of handler `name`'s keyspace that start with `prefix`, in key order,
    /// after `after` (exclusive) when given.
    pub fn keys(&self, name: &'static str, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>> {
        let space = self.space(name)?;
        let lo = match after {
            Some(a) if a >= prefix => Excluded(a),
            _ => Included(prefix),
        };
        let mut out = Vec::new();
        for kv in space.range::<&[u8], _>((lo, Unbounded)).take(limit) {
            let key = kv.key()?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push(key.to_vec());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{RepoChange, Store};

    #[test]
    fn handler_keys_page_under_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let writes = ["s\0a", "s\0b", "s\0c", "s2\0a", "r\0z"]
            .map(|k| ("test", sluice_handlers::IndexWrite { key: k.as_bytes().to_vec(), value: Some(vec![]) }));
        store
            .commit(RepoChange { did: "did:a".into(), handler_writes: writes.to_vec(), ..Default::default() })
            .unwrap();
        let keys = |after: Option<&str>, limit| -> Vec<String> {
            store
                .handlers()
                .keys("test", b"s\0", after.map(str::as_bytes), limit)
                .unwrap()
                .into_iter()
                .map(|k| String::from_utf8(k).unwrap())
                .collect()
        };
        assert_eq!(keys(None, 10), ["s\0a", "s\0b", "s\0c"]);
        assert_eq!(keys(None, 2), ["s\0a", "s\0b"]);
        assert_eq!(keys(Some("s\0b"), 10), ["s\0c"]);
        assert_eq!(keys(Some("a"), 10), ["s\0a", "s\0b", "s\0c"], "a cursor before the prefix starts at the prefix");
        assert_eq!(keys(Some("s\0c"), 10), Vec::<String>::new());
    }
}
