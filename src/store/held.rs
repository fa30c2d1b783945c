//! Live commits held while their repo is backfilled (`held`: `did \0 rev` -> [`HeldCommit`]),
//! and cursors saved on their own.
//!
//! Held commits are applied in rev order once the repo's backfill commits; the firehose decides
//! what to hold and when to release it. TIDs sort by time, so key order is rev order.

use fjall::PersistMode;

use super::values::{Cursor, HeldCommit, now_ms};
use super::{Result, Store, Stored, keys};

impl Store {
    /// Holds the `#commit` `frame` of `did` at `rev` (holding the same rev twice keeps one).
    pub fn hold(&self, did: &str, rev: &str, frame: &[u8]) -> Result<()> {
        let value = HeldCommit { frame: frame.to_vec() }.encode();
        self.held.insert(keys::held(did, rev), value)?;
        Ok(())
    }

    /// `did`'s held commits in rev order: (rev, frame).
    pub fn held_commits(&self, did: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.held.prefix(keys::record_prefix(did)) {
            let (k, v) = kv.into_inner()?;
            let (_, rev) = keys::parse_held(&k)?;
            out.push((rev.to_string(), HeldCommit::decode(&v)?.frame));
        }
        Ok(out)
    }

    /// Removes `did`'s held commits at `revs` (applied or skipped).
    pub fn release_held(&self, did: &str, revs: &[String]) -> Result<()> {
        let mut batch =
            fjall::OwnedWriteBatch::with_capacity(self.db.clone(), revs.len()).durability(Some(PersistMode::Buffer));
        for rev in revs {
            batch.remove(&self.held, keys::held(did, rev));
        }
        Ok(batch.commit()?)
    }

    /// Every DID with held commits, once each, in order.
    pub fn held_dids(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for kv in self.held.iter() {
            let key = kv.key()?;
            let (did, _) = keys::parse_held(&key)?;
            if out.last().map(String::as_str) != Some(did) {
                out.push(did.to_string());
            }
        }
        Ok(out)
    }

    /// Saves `service`'s cursor on its own (positions that cover no single batch, like the
    /// firehose's, which many workers advance together).
    pub fn save_cursor(&self, service: &str, value: &str) -> Result<()> {
        self.cursors.insert(service.as_bytes(), Cursor { value: value.to_string(), updated_ms: now_ms() }.encode())?;
        Ok(())
    }

    /// `service`'s saved cursor, if any.
    pub fn cursor(&self, service: &str) -> Result<Option<String>> {
        match self.cursors.get(service.as_bytes())? {
            Some(v) => Ok(Some(Cursor::decode(&v)?.value)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_commits_come_back_in_rev_order_per_repo_and_go_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.hold("did:plc:b", "3l2", b"b2").unwrap();
        store.hold("did:plc:a", "3l3", b"a3").unwrap();
        store.hold("did:plc:a", "3l1", b"a1").unwrap();
        store.hold("did:plc:ab", "3l1", b"ab1").unwrap();
        let a = store.held_commits("did:plc:a").unwrap();
        assert_eq!(a, vec![("3l1".to_string(), b"a1".to_vec()), ("3l3".to_string(), b"a3".to_vec())]);
        assert_eq!(store.held_dids().unwrap(), vec!["did:plc:a", "did:plc:ab", "did:plc:b"]);
        store.release_held("did:plc:a", &["3l1".to_string()]).unwrap();
        assert_eq!(store.held_commits("did:plc:a").unwrap().len(), 1);
        assert_eq!(store.held_commits("did:plc:ab").unwrap().len(), 1, "a prefix DID is another repo");
    }

    #[test]
    fn cursors_saved_alone_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.cursor("firehose").unwrap(), None);
        store.save_cursor("firehose", "42").unwrap();
        assert_eq!(store.cursor("firehose").unwrap().as_deref(), Some("42"));
    }
}
