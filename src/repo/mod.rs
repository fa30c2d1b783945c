//! Repo reading: CAR bytes -> verified blocks -> signed commit -> MST walk -> records.
//!
//! [`read_car`] parses a CAR with jacquard's CAR reader (iroh-car), refusing it when over the
//! configured limits, and checks every block's CID against its bytes. [`LoadedRepo::check_commit`]
//! checks the root commit (version 3, DID) and [`LoadedRepo::verify_signature`] its signature
//! ([`verify_commit`]: libsecp256k1 for secp256k1 keys, jacquard for the others).
//! [`LoadedRepo::records`] walks the MST in key order, yielding `(collection, rkey, cid, bytes)`.
//!
//! Architecture invariant: repo/ knows nothing of fjall, the filter, handlers or HTTP; every
//! function here is synchronous and CPU-bound (callers put it on a blocking pool).

pub mod age;
mod car;
mod fuzz;
mod signature;
mod walk;

pub use car::{
    CarLimits, LoadedRepo, parse_public_key, read_car, read_car_file, read_car_file_into_memory, read_car_from,
    read_car_owned,
};
pub use signature::verify_commit;
pub use walk::{RecordCid, RecordEntry, RecordKey, RecordKeys, Records};

use cid::Cid;

/// Why a repo was refused. Each names the problem; nothing is written for a refused repo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoError {
    /// The CAR is over a configured limit.
    #[error("CAR refused: {0}")]
    TooLarge(String),
    /// The CAR container is malformed or cut short.
    #[error("malformed or truncated CAR: {0}")]
    Car(String),
    /// A block's bytes do not hash to its CID.
    #[error("block {0} does not match its CID")]
    CidMismatch(Cid),
    /// A CID uses a hash this reader does not check.
    #[error("block {0} uses an unsupported hash function (only sha2-256 is accepted)")]
    UnsupportedHash(Cid),
    /// A referenced block is not in the CAR.
    #[error("missing block {cid} ({what})")]
    MissingBlock { cid: Cid, what: &'static str },
    /// The root block is not a commit.
    #[error("root block {0} is not a repo commit: {1}")]
    NotACommit(Cid, String),
    /// The commit has an unsupported version.
    #[error("commit version {0} is not supported (only version 3 repos are; v2 repos must be re-exported)")]
    Version(i64),
    /// The commit is for another DID, or its DID is invalid.
    #[error("commit DID {found}: {problem}")]
    Did { found: String, problem: String },
    /// The signature does not verify.
    #[error("commit signature: {0}")]
    Signature(String),
    /// An MST node is malformed.
    #[error("malformed MST node {cid}: {problem}")]
    Mst { cid: Cid, problem: String },
}

pub use fuzz::fuzz_car;
