//! Repo reading: CAR bytes -> verified blocks -> signed commit -> MST walk -> records.
//!
//! [`read_car`] parses a CAR (its framing read here, so that sluice's limits decide; the header
//! by iroh-car, CIDs by `cid`), refusing it when over the configured limits, and checks every
//! block's CID against its bytes. [`CarScanner`] refuses a CAR still downloading as soon as its
//! framing shows it over the limits. [`LoadedRepo::check_commit`]
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
    CarLimits, CarScanner, KeyError, LoadedRepo, VarintError, parse_public_key, read_car, read_car_file,
    read_car_file_into_memory, read_car_from, read_car_owned,
};
pub use signature::verify_commit;
pub use walk::{RecordCid, RecordEntry, RecordKey, RecordKeys, Records};

use cid::Cid;

/// Why a repo was refused. Each names the problem; nothing is written for a refused repo. The
/// texts describe what is wrong with the repo (the network's input, compared in tests and
/// fuzzing); a local I/O failure is [`RepoError::Read`], with its error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoError {
    /// The CAR is over a configured limit.
    #[error("CAR refused: {0}")]
    TooLarge(String),
    /// The CAR container is malformed or cut short.
    #[error("malformed or truncated CAR: {0}")]
    Car(String),
    /// A CAR file (or a spooled export) could not be read.
    #[error("reading {what}")]
    Read { what: &'static str, source: ReadError },
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
    /// A commit's ops change one record more than once: no diff of two trees does.
    #[error("the commit's ops change {path} more than once (a commit changes each record once)")]
    RepeatedOp { path: String },
}

impl RepoError {
    /// Whether fetching the same repo again cannot help: everything is, as the repo's own
    /// content is at fault (over a limit, malformed, a bad signature, another DID), except a
    /// local read failure ([`RepoError::Read`]), which may pass.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, RepoError::Read { .. })
    }
}

/// The I/O error of [`RepoError::Read`]: shared, so that the error stays `Clone`, and equal to
/// another of the same kind and text, so that it stays `Eq`.
#[derive(Debug, Clone)]
pub struct ReadError(std::sync::Arc<std::io::Error>);

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError(std::sync::Arc::new(e))
    }
}

impl ReadError {
    /// The I/O error.
    pub fn io_error(&self) -> &std::io::Error {
        &self.0
    }
}

impl PartialEq for ReadError {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for ReadError {}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

pub use fuzz::fuzz_car;
