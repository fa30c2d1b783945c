//! The keys of an index that may have a count row (`C key`), kept in memory from the moment
//! the index held no entry: a key not among them has no count row, so the first entry under a
//! new key (most likes are the first of their post in a backfill) moves its count without
//! reading the store.
//!
//! A bloom filter of fixed size: it answers "maybe" for every key added, and for some that were
//! not (a read, as without it), never "no" for a key added. It fills as keys are added; full, it
//! answers "maybe" more often, and costs a read where it would have saved one, never a wrong
//! count. It lives as long as the process: a store opened again keeps one only for indexes that
//! hold no entry and no count row, since it cannot know the keys of those that do (a building
//! index may hold count rows with no entry: a removed entry's -1 against a step row's +1).

use std::hash::BuildHasher;
use std::sync::Mutex;

/// Bits of one filter: 2 MiB, touched as keys are added. Five hashes keep false answers under 2%
/// up to two million keys.
const BITS: u64 = 1 << 24;
const HASHES: u64 = 5;

/// The keys that may have a count row in one index.
pub(super) struct CountedKeys {
    bits: Mutex<Vec<u64>>,
}

impl CountedKeys {
    /// A filter for an index that holds no count row.
    pub(super) fn empty() -> CountedKeys {
        CountedKeys { bits: Mutex::new(vec![0; (BITS / 64) as usize]) }
    }

    /// The bits of `key`: double hashing over the two halves of one 64-bit hash.
    fn positions(key: &[u8]) -> impl Iterator<Item = u64> {
        let hash = foldhash::quality::FixedState::with_seed(0xc0_417).hash_one(key);
        let (a, b) = (hash & 0xffff_ffff, (hash >> 32) | 1);
        (0..HASHES).map(move |i| a.wrapping_add(i.wrapping_mul(b)) % BITS)
    }

    /// Whether `key` may have a count row (`false`: it has none).
    pub(super) fn may_hold(&self, key: &[u8]) -> bool {
        let bits = self.bits.lock().expect("counted keys lock");
        Self::positions(key).all(|p| bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }

    /// Notes that `key` has (or is about to have) a count row.
    pub(super) fn add(&self, key: &[u8]) {
        let mut bits = self.bits.lock().expect("counted keys lock");
        for p in Self::positions(key) {
            bits[(p / 64) as usize] |= 1 << (p % 64);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn a_key_added_is_never_denied(added in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..200)) {
            let keys = CountedKeys::empty();
            for key in &added {
                keys.add(key);
            }
            for key in &added {
                prop_assert!(keys.may_hold(key));
            }
        }
    }

    #[test]
    fn keys_never_added_are_mostly_denied() {
        let keys = CountedKeys::empty();
        for i in 0..100_000u32 {
            keys.add(&i.to_be_bytes());
        }
        let false_answers = (100_000..200_000u32).filter(|i| keys.may_hold(&i.to_be_bytes())).count();
        assert!(false_answers < 100, "{false_answers} of 100,000 keys never added were taken for added ones");
    }
}
