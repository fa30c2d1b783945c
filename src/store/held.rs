//! Live commits held while their repo is backfilled: `held` (`did \0 rev` -> [`HeldCommit`]).
//!
//! Held commits are applied in rev order once the repo's backfill commits; the firehose decides
//! what to hold and when to release it. TIDs sort by time, so key order is rev order. Holding
//! and releasing write on their own, outside any change's batch: a held commit is a frame not
//! indexed yet, and the change that applies it is a commit of its own.

use fjall::Keyspace;

use super::failure::Db;
use super::values::{HeldCommit, Stored};
use super::{Result, keys};

/// The held commits part: owns `held`.
pub struct Held {
    db: Db,
    held: Keyspace,
}

impl Held {
    pub(super) fn new(db: Db, held: Keyspace) -> Self {
        Self { db, held }
    }

    /// Holds the `#commit` `frame` of `did` at `rev` (holding the same rev twice keeps one).
    pub fn hold(&self, did: &str, rev: &str, frame: &[u8]) -> Result<()> {
        let value = HeldCommit { frame: frame.to_vec() }.encode();
        self.db.write(|| self.held.insert(keys::held(did, rev), value))
    }

    /// `did`'s held commits in rev order: (rev, frame).
    pub fn commits(&self, did: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.held.prefix(keys::record_prefix(did)) {
            let (k, v) = kv.into_inner()?;
            let (_, rev) = keys::parse_held(&k)?;
            out.push((rev.to_string(), HeldCommit::decode(&v)?.frame));
        }
        Ok(out)
    }

    /// Removes `did`'s held commits at `revs` (applied or skipped), in one batch.
    pub fn release(&self, did: &str, revs: &[String]) -> Result<()> {
        let mut batch = self.db.batch(revs.len());
        for rev in revs {
            batch.remove(&self.held, keys::held(did, rev));
        }
        self.db.commit(batch)
    }

    /// Every DID with held commits, once each, in order.
    pub fn dids(&self) -> Result<Vec<String>> {
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
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    #[test]
    fn held_commits_come_back_in_rev_order_per_repo_and_go_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let held = store.held();
        held.hold("did:plc:b", "3l2", b"b2").unwrap();
        held.hold("did:plc:a", "3l3", b"a3").unwrap();
        held.hold("did:plc:a", "3l1", b"a1").unwrap();
        held.hold("did:plc:ab", "3l1", b"ab1").unwrap();
        let a = held.commits("did:plc:a").unwrap();
        assert_eq!(a, vec![("3l1".to_string(), b"a1".to_vec()), ("3l3".to_string(), b"a3".to_vec())]);
        assert_eq!(held.dids().unwrap(), vec!["did:plc:a", "did:plc:ab", "did:plc:b"]);
        held.release("did:plc:a", &["3l1".to_string()]).unwrap();
        assert_eq!(held.commits("did:plc:a").unwrap().len(), 1);
        assert_eq!(held.commits("did:plc:ab").unwrap().len(), 1, "a prefix DID is another repo");
    }
}
