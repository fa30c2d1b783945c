//! One account's repo as the firehose sees it: a jacquard MST kept between commits, so each
//! write becomes a signed sync 1.1 `#commit` (ops with `prev`, `prevData`, and a CAR slice of the
//! changed MST nodes, the proof paths and the new records) without rebuilding the tree. Also the
//! `#sync` slice (the signed current commit alone), and the faults a [`Tamper`] asks for.
//!
//! The tree is built the way exports build it (the same keys give the same root), so a commit's
//! `data` equals the data root of the `getRepo` CAR at the same rev. Everything here is async
//! only because jacquard's MST is; it needs a tokio runtime (jacquard spawns tasks).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use cid::Cid;
use jacquard_api::com_atproto::sync::subscribe_repos::{Commit as CommitEvent, RepoOp};
use jacquard_common::types::string::{Datetime, Did, Tid};
use jacquard_repo::commit::Commit;
use jacquard_repo::mst::util::compute_cid;
use jacquard_repo::storage::BlockStore;
use jacquard_repo::{CommitData, MemoryBlockStore, Mst, MstDiff};
use k256::ecdsa::SigningKey;
use smol_str::SmolStr;

use crate::world::events::{Change, Tamper};
use crate::world::repos::{Account, BuildError, err};

/// An account's repo between firehose commits.
pub(crate) struct Chain {
    did: Did<SmolStr>,
    key: SigningKey,
    mst: Mst<MemoryBlockStore>,
    rev: String,
}

impl Chain {
    /// The repo of `account` at `rev` holding `records` (`(collection/rkey, DAG-CBOR)`).
    pub async fn build(account: &Account, rev: &str, records: &[(String, Bytes)]) -> Result<Chain, BuildError> {
        let storage = Arc::new(MemoryBlockStore::new());
        let mut mst = Mst::new(storage.clone());
        for (key, bytes) in records {
            let cid = storage.put(bytes).await.map_err(err)?;
            mst = mst.add(key, cid).await.map_err(err)?;
        }
        mst.root().await.map_err(err)?;
        let did = Did::new(SmolStr::new(&account.did)).map_err(err)?;
        Ok(Chain { did, key: account.key.clone(), mst, rev: rev.to_string() })
    }

    /// The current rev.
    pub fn rev(&self) -> &str {
        &self.rev
    }

    /// The current MST root.
    pub async fn data(&self) -> Result<Cid, BuildError> {
        self.mst.root().await.map_err(err)
    }

    /// Applies `changes` as the commit at `rev` and returns its `#commit` body (`seq` 0, `time`
    /// `time`), altered as `tamper` says; the chain moves to the real new state either way.
    pub async fn commit(
        &mut self,
        rev: &str,
        changes: &[Change],
        tamper: Option<Tamper>,
        time: Datetime,
    ) -> Result<CommitEvent, BuildError> {
        let (new, leaves) = self.apply(changes).await?;
        let prev_data = self.data().await?;
        let data = new.root().await.map_err(err)?;
        let diff = self.mst.diff(&new).await.map_err(err)?;
        let relevant = proof_blocks(&self.mst, &new, &diff, changes, &leaves).await?;
        let signed_rev = if tamper == Some(Tamper::StaleRev) { self.rev.clone() } else { rev.to_string() };
        let key = if tamper == Some(Tamper::ForgedSignature) { Account::new(u64::MAX).key } else { self.key.clone() };
        let (cid, block) = sign(&self.did, data, &signed_rev, &key)?;
        let mut ops: Vec<RepoOp> = diff.to_repo_ops();
        if let Some(first) = ops.first().filter(|_| tamper == Some(Tamper::RepeatedOp)) {
            ops.push(first.clone());
        }
        let mut blocks = diff.new_mst_blocks;
        blocks.extend(leaves);
        blocks.insert(cid, block);
        let data_of_commit = CommitData {
            cid,
            rev: Tid::new(&signed_rev).map_err(err)?,
            since: Some(Tid::new(&self.rev).map_err(err)?),
            prev: None,
            data,
            prev_data: Some(prev_data),
            blocks,
            relevant_blocks: relevant,
            deleted_cids: Vec::new(),
        };
        let mut event = data_of_commit.to_firehose_commit(&self.did, 0, time, ops, Vec::new()).await.map_err(err)?;
        if tamper == Some(Tamper::BrokenPrevData) {
            event.prev_data =
                Some(compute_cid(format!("sluice devnet: not the prevData of {rev}").as_bytes()).map_err(err)?.into());
        }
        self.mst = new;
        self.rev = rev.to_string();
        Ok(event)
    }

    /// The tree after `changes`, and the new record blocks.
    async fn apply(&self, changes: &[Change]) -> Result<(Mst<MemoryBlockStore>, BTreeMap<Cid, Bytes>), BuildError> {
        let mut tree = self.mst.clone();
        let mut leaves = BTreeMap::new();
        for (key, value) in changes {
            tree = match value {
                Some((_, bytes)) => {
                    let cid = self.mst.storage().put(bytes).await.map_err(err)?;
                    leaves.insert(cid, bytes.clone());
                    tree.add(key, cid).await.map_err(err)?
                }
                None => tree.delete(key).await.map_err(err)?,
            };
        }
        Ok((tree, leaves))
    }

    /// The current commit, signed, alone in a CAR slice (a `#sync` frame's `blocks`).
    pub async fn sync_blocks(&self) -> Result<Vec<u8>, BuildError> {
        let (cid, block) = sign(&self.did, self.data().await?, &self.rev, &self.key)?;
        jacquard_repo::car::write_car_bytes(cid, BTreeMap::from([(cid, block)])).await.map_err(err)
    }
}

/// The blocks a sync 1.1 consumer needs to invert the ops: the MST nodes on each changed key's
/// path in the old and the new tree (less the nodes the commit removed), and the new records.
async fn proof_blocks(
    old: &Mst<MemoryBlockStore>,
    new: &Mst<MemoryBlockStore>,
    diff: &MstDiff,
    changes: &[Change],
    leaves: &BTreeMap<Cid, Bytes>,
) -> Result<BTreeMap<Cid, Bytes>, BuildError> {
    let mut blocks = leaves.clone();
    for (key, _) in changes {
        new.blocks_for_path(key, &mut blocks).await.map_err(err)?;
        old.blocks_for_path(key, &mut blocks).await.map_err(err)?;
    }
    for removed in &diff.removed_mst_blocks {
        blocks.remove(removed);
    }
    Ok(blocks)
}

/// A signed commit of `data` at `rev` (no `prev`, as sync 1.1 repos have), and its CID.
fn sign(did: &Did<SmolStr>, data: Cid, rev: &str, key: &SigningKey) -> Result<(Cid, Bytes), BuildError> {
    let commit: Commit<SmolStr> =
        Commit::new_unsigned(did.clone(), data, Tid::new(rev).map_err(err)?, None).sign(key).map_err(err)?;
    let bytes = commit.to_cbor().map_err(err)?;
    Ok((compute_cid(&bytes).map_err(err)?, Bytes::from(bytes)))
}
