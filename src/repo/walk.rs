//! The MST walk: an explicit-stack, in-order traversal over jacquard's MST node codec.
//!
//! It checks what a reader must not trust: every node and record block is present, prefix
//! lengths stay inside the previous key, keys are valid `collection/rkey` paths in strictly
//! increasing order, and every key in a node sits at that node's height (so each subtree is
//! visited once and a malformed tree cannot loop or recurse without bound).

use bytes::Bytes;
use cid::Cid;
use smol_str::SmolStr;

use jacquard_repo::mst::node::NodeData;
use jacquard_repo::mst::util::layer_for_key;

use super::{LoadedRepo, RepoError};

/// One record found in the walk, without its body (see [`LoadedRepo::record_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordKey {
    /// Collection NSID.
    pub collection: SmolStr,
    /// Record key.
    pub rkey: SmolStr,
    /// Record CID (its block is in the CAR).
    pub cid: RecordCid,
}

/// A record's CID as the walk keeps it. `Cid` has room for a 64-byte digest (96 bytes in
/// all); a record block's CID always has a 32-byte one (the CAR indexes its blocks by their
/// sha2-256 digest), so this takes 56, and the keys a large repo's walk holds until it is
/// checked whole take a third less memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordCid {
    version: cid::Version,
    codec: u64,
    code: u64,
    digest: [u8; 32],
}

impl RecordCid {
    /// `None` when the digest is not 32 bytes long (no block of a CAR has such a CID).
    pub fn new(cid: &Cid) -> Option<Self> {
        Some(Self {
            version: cid.version(),
            codec: cid.codec(),
            code: cid.hash().code(),
            digest: cid.hash().digest().try_into().ok()?,
        })
    }

    /// The CID.
    pub fn cid(&self) -> Cid {
        let hash =
            multihash::Multihash::wrap(self.code, &self.digest).expect("a 32-byte digest fits a 64-byte multihash");
        Cid::new(self.version, self.codec, hash).expect("the parts of a valid CID make it again")
    }
}

/// One record found in the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordEntry {
    /// Collection NSID.
    pub collection: SmolStr,
    /// Record key.
    pub rkey: SmolStr,
    /// Record CID.
    pub cid: Cid,
    /// The record's DAG-CBOR bytes (checked against `cid`).
    pub bytes: Bytes,
}

enum Item {
    Node { cid: Cid, layer: Option<usize> },
    Leaf { key: String, cid: Cid },
}

/// Iterator over a repo's records in MST key order, bodies included.
pub struct Records<'a>(RecordKeys<'a>);

/// Iterator over a repo's record keys and CIDs in MST key order.
pub struct RecordKeys<'a> {
    repo: &'a LoadedRepo,
    stack: Vec<Item>,
    last_key: Option<String>,
    failed: bool,
    /// Collections already seen valid: a repo has few, and NSID checks are costly.
    collections: std::collections::HashSet<String, foldhash::fast::RandomState>,
}

impl LoadedRepo {
    /// Walks the MST, yielding every record with its body in key order; stops after the first
    /// error.
    pub fn records(&self) -> Records<'_> {
        Records(self.record_keys())
    }

    /// Walks the MST like [`LoadedRepo::records`] (every node read and checked, every record's
    /// block known to be present) without reading record bodies.
    pub fn record_keys(&self) -> RecordKeys<'_> {
        RecordKeys {
            repo: self,
            stack: vec![Item::Node { cid: self.data(), layer: None }],
            last_key: None,
            failed: false,
            collections: Default::default(),
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<RecordEntry, RepoError>;

    fn next(&mut self) -> Option<Self::Item> {
        let key = match self.0.next()? {
            Ok(key) => key,
            Err(e) => return Some(Err(e)),
        };
        let cid = key.cid.cid();
        let entry = self.0.repo.block(&cid, "record").map(|bytes| RecordEntry {
            collection: key.collection,
            rkey: key.rkey,
            cid,
            bytes,
        });
        self.0.failed |= entry.is_err();
        Some(entry)
    }
}

impl RecordKeys<'_> {
    /// Loads a node and pushes its entries (reversed, so they pop in order). `layer` is the
    /// height the node must have (its parent's minus one); `None` for the root.
    fn expand(&mut self, cid: Cid, layer: Option<usize>) -> Result<(), RepoError> {
        let bytes = self.repo.block(&cid, "MST node")?;
        let node: NodeData = serde_ipld_dagcbor::from_slice(&bytes).map_err(|e| mst_err(cid, e.to_string()))?;
        if node.entries.is_empty() && node.left.is_none() {
            // Only an empty repo's root may hold nothing at all.
            return if layer.is_none() { Ok(()) } else { Err(mst_err(cid, "empty node inside the tree")) };
        }
        let mut items = Vec::with_capacity(node.entries.len() * 2 + 1);
        let mut prev_key = String::new();
        let mut layer = layer;
        for entry in &node.entries {
            let prefix = entry.prefix_len as usize;
            let shared = prev_key
                .get(..prefix)
                .ok_or_else(|| mst_err(cid, format!("prefix length {prefix} exceeds the previous key")))?;
            let suffix = std::str::from_utf8(&entry.key_suffix).map_err(|_| mst_err(cid, "key is not UTF-8"))?;
            let key = format!("{shared}{suffix}");
            let key_layer = layer_for_key(&key);
            if *layer.get_or_insert(key_layer) != key_layer {
                return Err(mst_err(
                    cid,
                    format!("key {key} has height {key_layer}, but its node is at height {}", layer.unwrap_or(0)),
                ));
            }
            items.push(Item::Leaf { key: key.clone(), cid: entry.value });
            if let Some(tree) = entry.tree {
                items.push(Item::Node { cid: tree, layer: child_layer(cid, layer)? });
            }
            prev_key = key;
        }
        if let Some(left) = node.left {
            items.insert(0, Item::Node { cid: left, layer: child_layer(cid, layer)? });
        }
        self.stack.extend(items.into_iter().rev());
        Ok(())
    }

    fn leaf(&mut self, key: String, cid: Cid) -> Result<RecordKey, RepoError> {
        if self.last_key.as_ref().is_some_and(|last| *last >= key) {
            return Err(mst_err(cid, format!("key {key} is out of order")));
        }
        let (collection, rkey) =
            self.split_key(&key).ok_or_else(|| mst_err(cid, format!("`{key}` is not a collection/rkey path")))?;
        let compact = RecordCid::new(&cid).filter(|_| self.repo.has_block(&cid));
        let Some(compact) = compact else { return Err(RepoError::MissingBlock { cid, what: "record" }) };
        let entry = RecordKey { collection: collection.into(), rkey: rkey.into(), cid: compact };
        self.last_key = Some(key);
        Ok(entry)
    }
}

fn mst_err(cid: Cid, problem: impl Into<String>) -> RepoError {
    RepoError::Mst { cid, problem: problem.into() }
}

/// The height of a node's children: one below it. A height-0 node has no children.
fn child_layer(node: Cid, layer: Option<usize>) -> Result<Option<usize>, RepoError> {
    match layer {
        Some(0) => Err(mst_err(node, "a node at height 0 points to a subtree")),
        Some(l) => Ok(Some(l - 1)),
        None => Ok(None),
    }
}

impl RecordKeys<'_> {
    /// Splits an MST key into a valid (collection NSID, record key).
    fn split_key<'k>(&mut self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let (collection, rkey) = key.split_once('/')?;
        if !self.collections.contains(collection) {
            if !crate::syntax::is_nsid(collection) {
                return None;
            }
            self.collections.insert(collection.to_string());
        }
        crate::syntax::is_rkey(rkey).then_some((collection, rkey))
    }
}

impl Iterator for RecordKeys<'_> {
    type Item = Result<RecordKey, RepoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let result = match self.stack.pop()? {
                Item::Node { cid, layer } => match self.expand(cid, layer) {
                    Ok(()) => continue,
                    Err(e) => Err(e),
                },
                Item::Leaf { key, cid } => self.leaf(key, cid),
            };
            self.failed = result.is_err();
            return Some(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A record CID comes back whole from its compact form, whatever its version, codec
        /// and hash code; only digests of 32 bytes have one.
        #[test]
        fn record_cids_round_trip(
            digest in proptest::array::uniform32(any::<u8>()),
            codec in prop_oneof![Just(0x71u64), Just(0x55), any::<u64>()],
            code in prop_oneof![Just(0x12u64), Just(0x1e), 0..1u64 << 40],
            v0 in any::<bool>(),
        ) {
            let hash = multihash::Multihash::wrap(if v0 { 0x12 } else { code }, &digest).unwrap();
            let cid = if v0 { Cid::new_v0(hash).unwrap() } else { Cid::new_v1(codec, hash) };
            prop_assert_eq!(RecordCid::new(&cid).map(|c| c.cid()), Some(cid));
            let long = Cid::new_v1(codec, multihash::Multihash::wrap(code, &[digest, digest].concat()).unwrap());
            prop_assert_eq!(RecordCid::new(&long), None);
        }
    }

    #[test]
    fn a_record_cid_is_smaller_than_a_cid() {
        assert!(
            std::mem::size_of::<RecordCid>() <= 56 && std::mem::size_of::<Cid>() >= 88,
            "{} vs {}",
            std::mem::size_of::<RecordCid>(),
            std::mem::size_of::<Cid>()
        );
    }
}
