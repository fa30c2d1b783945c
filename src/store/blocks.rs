//! Legacy record bodies (`blocks`: binary CID -> DAG-CBOR body), where stores written before
//! bodies moved into `records` and the event pages kept them.
//!
//! Invariant: read, never written. Both the records ([`super::Records`]) and the event log
//! ([`super::EventLog`]) fall back to it for values that predate bodies of their own, so each
//! holds a handle to this part; nothing else reads the keyspace.

use fjall::Keyspace;

use super::Result;

/// The `blocks` keyspace, read-only.
#[derive(Clone)]
pub(super) struct Blocks {
    blocks: Keyspace,
}

impl Blocks {
    pub(super) fn new(blocks: Keyspace) -> Self {
        Self { blocks }
    }

    /// The body stored under `cid`, if any.
    pub(super) fn body(&self, cid: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.blocks.get(cid)?.map(|b| b.to_vec()))
    }

    /// Writes a body as builds before bodies moved into `records` did: for tests of the
    /// fallback.
    #[cfg(test)]
    pub(super) fn insert(&self, cid: &[u8], body: &[u8]) {
        self.blocks.insert(cid, body).unwrap();
    }

    /// How many bodies are stored: for tests that no new write lands here.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.blocks.len().unwrap()
    }
}
