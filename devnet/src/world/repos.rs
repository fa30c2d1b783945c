//! Accounts with deterministic keys, and CAR exports of their repos built with jacquard-repo.

use std::collections::BTreeMap;
use std::sync::Arc;

use cid::Cid;
use jacquard_common::types::string::Did;
use jacquard_common::types::tid::Tid;
use jacquard_repo::commit::Commit;
use jacquard_repo::mst::util::compute_cid;
use jacquard_repo::storage::BlockStore;
use jacquard_repo::{MemoryBlockStore, Mst};
use k256::ecdsa::SigningKey;
use sha2::{Digest, Sha256};
use smol_str::SmolStr;

/// A repo's records: `collection/rkey` -> DAG-CBOR bytes.
pub type RepoContents = BTreeMap<String, Vec<u8>>;

/// An account with a deterministic secp256k1 signing key and `did:plc` derived from its seed.
#[derive(Clone)]
pub struct Account {
    /// The account's DID.
    pub did: String,
    /// Its signing key.
    pub key: SigningKey,
}

impl Account {
    /// The account for `seed`: the same seed always gives the same DID and key.
    pub fn new(seed: u64) -> Self {
        let digest = Sha256::digest(format!("sluice-devnet-account-{seed}").as_bytes());
        let key = SigningKey::from_slice(&digest).expect("a sha256 digest is a valid secp256k1 scalar");
        Self { did: plc_did(&digest[8..32]), key }
    }

    /// The public key as a multibase multikey (`z...`).
    pub fn public_multibase(&self) -> String {
        let point = self.key.verifying_key().to_encoded_point(true);
        jacquard_common::types::crypto::multikey(0xE7, point.as_bytes())
    }

    /// The public key as `did:key:z...`.
    pub fn did_key(&self) -> String {
        format!("did:key:{}", self.public_multibase())
    }
}

/// A `did:plc` whose 24-character identifier is made of `bytes` (one base32 letter a byte).
pub(crate) fn plc_did(bytes: &[u8]) -> String {
    const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let id: String = bytes.iter().take(24).map(|b| B32[(*b as usize) % 32] as char).collect();
    format!("did:plc:{id}")
}

/// A TID rev for step `n` (strictly increasing with `n`).
pub fn rev_at(n: u64) -> String {
    Tid::from_time(1_700_000_000_000_000 + n, 0).as_str().to_string()
}

/// Why an export (or a firehose commit's blocks) could not be built: jacquard's error, kept
/// as the source.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// jacquard's repo, MST or signing layer refused.
    #[error("building a repo export")]
    Repo(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The account is not the devnet's.
    #[error("no devnet account {0}")]
    NoAccount(String),
    /// The blocking task that builds exports failed.
    #[error("the export's build task")]
    Task(#[from] tokio::task::JoinError),
}

pub(crate) fn err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BuildError {
    BuildError::Repo(e.into())
}

/// Builds the signed repo of `account` holding `records` at `rev`, as CAR bytes (commit block
/// first, then MST nodes and records, as sync 1.1 streams it).
pub async fn export_car(account: &Account, rev: &str, records: &RepoContents) -> Result<Vec<u8>, BuildError> {
    Ok(export_repo(account, rev, records).await?.1)
}

/// Like [`export_car`] over any `(collection/rkey, DAG-CBOR)` pairs, also giving the commit CID.
pub async fn export_repo<K, V>(
    account: &Account,
    rev: &str,
    records: impl IntoIterator<Item = (K, V)>,
) -> Result<(Cid, Vec<u8>), BuildError>
where
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    let storage = Arc::new(MemoryBlockStore::new());
    let mut mst = Mst::new(storage.clone());
    let mut empty = true;
    for (key, bytes) in records {
        let cid = storage.put(bytes.as_ref()).await.map_err(err)?;
        mst = mst.add(key.as_ref(), cid).await.map_err(err)?;
        empty = false;
    }
    let data = mst.persist().await.map_err(err)?;
    let did = Did::<SmolStr>::new(SmolStr::new(&account.did)).map_err(err)?;
    let commit: Commit<SmolStr> =
        Commit::new_unsigned(did, data, Tid::new(rev).map_err(err)?, None).sign(&account.key).map_err(err)?;
    let commit_bytes = commit.to_cbor().map_err(err)?;
    let commit_cid = compute_cid(&commit_bytes).map_err(err)?;

    let mut out = Vec::new();
    let mut writer = iroh_car::CarWriter::new(iroh_car::CarHeader::new_v1(vec![commit_cid]), &mut out);
    writer.write(commit_cid, &commit_bytes).await.map_err(err)?;
    if empty {
        // jacquard writes no node for an empty tree; an export still needs its empty root node.
        let root = storage.get(&data).await.map_err(err)?.ok_or_else(|| err("empty MST root missing"))?;
        writer.write(data, &root).await.map_err(err)?;
    } else {
        mst.write_blocks_to_car(&mut writer).await.map_err(err)?;
    }
    writer.finish().await.map_err(err)?;
    Ok((commit_cid, out))
}

/// [`export_car`] on a private single-threaded runtime, for synchronous callers.
pub fn export_car_blocking(account: &Account, rev: &str, records: &RepoContents) -> Result<Vec<u8>, BuildError> {
    tokio::runtime::Builder::new_current_thread().build().map_err(err)?.block_on(export_car(account, rev, records))
}
