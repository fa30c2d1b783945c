//! Sharded indexing: `[cluster] shard = "I/N"` (`SLUICE_SHARD`) makes a node own the DIDs whose
//! stable hash falls in shard I of N. Its crawler queues only those, its firehose drops other
//! repos' frames before any signature check or block read, and its XRPC answers only for them.
//! N nodes reading one relay (and publishing to one stream) hold the whole index between them.
//!
//! The hash is the first 8 bytes of the DID's SHA-256, big-endian, modulo N: the same on every
//! machine and in every version. Changing N moves most repos to another shard, so it means a
//! fresh backfill into new stores (the README says how); a node started on a store indexed
//! under another N still answers only for its own DIDs, and keeps the others' data unused.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

/// Shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This node's shard, from 0.
    pub index: u32,
    /// How many shards there are.
    pub count: u32,
}

impl Default for Shard {
    /// The whole network: one shard.
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Shard {
    /// Which shard of `count` `did` falls in.
    pub fn of(did: &str, count: u32) -> u32 {
        let digest = Sha256::digest(did.as_bytes());
        let head = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        (head % u64::from(count.max(1))) as u32
    }

    /// The shard of this node's layout (the same N) that owns `did`.
    pub fn holder(&self, did: &str) -> Shard {
        Shard { index: Self::of(did, self.count), count: self.count.max(1) }
    }

    /// Whether this node owns `did`.
    pub fn owns(&self, did: &str) -> bool {
        self.is_whole() || Self::of(did, self.count) == self.index
    }

    /// Whether the node holds the whole network (no sharding).
    pub fn is_whole(&self) -> bool {
        self.count <= 1
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    /// The message for the user (a config or environment value, a clap argument): there is no
    /// cause to keep, and nothing acts on the kind.
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("shard {s:?} must be I/N with 0 <= I < N, e.g. 0/2");
        let (i, n) = s.trim().split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shards_parse_and_refuse_what_is_not_one() {
        assert_eq!("1/3".parse::<Shard>().unwrap(), Shard { index: 1, count: 3 });
        assert_eq!(" 0 / 1 ".parse::<Shard>().unwrap(), Shard::default());
        for bad in ["3/3", "1/0", "1", "a/2", "-1/2", ""] {
            assert!(bad.parse::<Shard>().unwrap_err().contains("I/N"), "{bad}");
        }
        // Stable across machines and versions: which node holds a repo depends on these.
        assert_eq!(
            [Shard::of("did:plc:ewvi7nxzyoun6zhxrhs64oiz", 1000), Shard::of("did:web:example.com", 1000)],
            [GOLDEN_A, GOLDEN_B]
        );
    }

    /// The shards of two DIDs out of 1,000, as the first version computed them.
    const GOLDEN_A: u32 = 925;
    const GOLDEN_B: u32 = 661;

    proptest! {
        /// Every DID is owned by exactly one of N shards, and one shard owns everything.
        #[test]
        fn each_did_has_exactly_one_shard(did in "did:plc:[a-z2-7]{24}", n in 1u32..9) {
            let owners = (0..n).filter(|&i| Shard { index: i, count: n }.owns(&did)).count();
            prop_assert_eq!(owners, 1);
            prop_assert!(Shard::default().owns(&did));
        }
    }
}
