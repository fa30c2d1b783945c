//! Commit signature checks.
//!
//! Nearly every atproto account signs with a secp256k1 key. Those signatures are checked with
//! libsecp256k1 (the `secp256k1` crate), about three times faster on this machine than the
//! pure-Rust k256 inside jacquard's `Commit::verify`, and each key is parsed once and cached:
//! on the firehose a signature check per commit is most of the work. Other key types (P-256,
//! ed25519) go through jacquard. Both paths refuse high-S signatures, as atproto requires;
//! a property test checks that they agree.

use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};

use jacquard_common::types::crypto::{KeyCodec, PublicKey};
use jacquard_repo::commit::Commit;
use secp256k1::{Message, Secp256k1, VerifyOnly, ecdsa::Signature};
use sha2::{Digest, Sha256};
use smol_str::SmolStr;

use super::RepoError;

/// Most parsed keys kept; the cache is emptied when full (a parse costs a few µs).
const KEY_CACHE_CAPACITY: usize = 100_000;

static SECP: LazyLock<Secp256k1<VerifyOnly>> = LazyLock::new(Secp256k1::verification_only);
static KEYS: LazyLock<RwLock<HashMap<Vec<u8>, secp256k1::PublicKey>>> = LazyLock::new(RwLock::default);

/// Verifies `commit`'s signature against `key`.
pub fn verify_commit(commit: &Commit<SmolStr>, key: &PublicKey<'_>) -> Result<(), RepoError> {
    match key.codec {
        KeyCodec::Secp256k1 => verify_secp256k1(commit, &key.bytes),
        _ => commit.verify(key).map_err(|e| RepoError::Signature(e.to_string())),
    }
}

fn verify_secp256k1(commit: &Commit<SmolStr>, key: &[u8]) -> Result<(), RepoError> {
    let key = parsed_key(key)?;
    let sig =
        Signature::from_compact(commit.sig()).map_err(|e| RepoError::Signature(format!("invalid signature: {e}")))?;
    let unsigned = unsigned_bytes(commit)?;
    let digest = Message::from_digest(Sha256::digest(&unsigned).into());
    // libsecp256k1 accepts only low-S signatures, as atproto asks.
    SECP.verify_ecdsa(digest, &sig, &key).map_err(|_| RepoError::Signature("signature verification failed".into()))
}

/// The bytes the signature covers: the commit without its `sig`, in DAG-CBOR.
fn unsigned_bytes(commit: &Commit<SmolStr>) -> Result<Vec<u8>, RepoError> {
    let unsigned =
        Commit::new_unsigned(commit.did().clone(), *commit.data(), commit.rev().clone(), commit.prev().copied());
    serde_ipld_dagcbor::to_vec(&unsigned)
        .map_err(|e| RepoError::Signature(format!("encoding the unsigned commit: {e}")))
}

fn parsed_key(bytes: &[u8]) -> Result<secp256k1::PublicKey, RepoError> {
    if let Some(key) = KEYS.read().expect("key cache").get(bytes) {
        return Ok(*key);
    }
    let key = secp256k1::PublicKey::from_slice(bytes)
        .map_err(|e| RepoError::Signature(format!("invalid secp256k1 key: {e}")))?;
    let mut cache = KEYS.write().expect("key cache");
    if cache.len() >= KEY_CACHE_CAPACITY {
        cache.clear();
    }
    cache.insert(bytes.to_vec(), key);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use jacquard_common::types::crypto::PublicKey;
    use jacquard_common::types::string::{Did, Tid};
    use k256::ecdsa::SigningKey;
    use k256::ecdsa::signature::Signer;
    use proptest::prelude::*;

    use super::*;

    fn public_key(key: &SigningKey) -> PublicKey<'static> {
        let point = key.verifying_key().to_encoded_point(true);
        PublicKey { codec: KeyCodec::Secp256k1, bytes: point.as_bytes().to_vec().into() }
    }

    /// A commit signed by `key`, with its signature's S flipped to the high half when asked.
    fn signed(key: &SigningKey, rev_micros: u64, high_s: bool) -> Commit<SmolStr> {
        let did = Did::raw(SmolStr::new("did:plc:abcdefghijklmnopqrstuvwx"));
        let data = cid::Cid::new_v1(0x71, multihash::Multihash::wrap(0x12, &[rev_micros as u8; 32]).unwrap());
        let unsigned = Commit::new_unsigned(did, data, Tid::from_time(rev_micros, 0), None);
        let sig: k256::ecdsa::Signature = key.sign(&serde_ipld_dagcbor::to_vec(&unsigned).unwrap());
        let sig = sig.normalize_s().unwrap_or(sig);
        let s = if high_s { -*sig.s().as_ref() } else { *sig.s().as_ref() };
        let sig = [sig.r().to_bytes(), s.to_bytes()].concat();
        Commit { did: unsigned.did, version: 3, data, rev: unsigned.rev, prev: None, sig: sig.into() }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The libsecp256k1 path gives jacquard's verdict: for the right key, a wrong key, and
        /// a high-S signature.
        #[test]
        fn agrees_with_jacquard(seed in 1u8..=254, other in 1u8..=254, rev in 1u64..1 << 50, high_s: bool) {
            let key = SigningKey::from_slice(&[seed; 32]).unwrap();
            let commit = signed(&key, rev, high_s);
            for checked_with in [public_key(&key), public_key(&SigningKey::from_slice(&[other; 32]).unwrap())] {
                let ours = verify_commit(&commit, &checked_with).is_ok();
                let jacquards = commit.verify(&checked_with).is_ok();
                prop_assert_eq!(ours, jacquards);
            }
            prop_assert_eq!(verify_commit(&commit, &public_key(&key)).is_ok(), !high_s);
        }
    }

    #[test]
    fn a_malformed_key_is_refused_by_name() {
        let commit = signed(&SigningKey::from_slice(&[3; 32]).unwrap(), 1_000, false);
        let bad = PublicKey { codec: KeyCodec::Secp256k1, bytes: vec![9; 33].into() };
        let err = verify_commit(&commit, &bad).unwrap_err().to_string();
        assert!(err.contains("invalid secp256k1 key"), "{err}");
    }
}
