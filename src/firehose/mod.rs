//! Live ingestion from `com.atproto.sync.subscribeRepos` (issue 4). So far: frame decoding
//! ([`frame`]), a commit's ops as pipeline ops ([`ops`]) and the sync 1.1 checks against the
//! stored state ([`chain`]); the client, ordering with backfill and the cursor come next.
//!
//! Architecture invariant: decoding is synchronous and CPU-only; it knows nothing of the store.

pub mod chain;
pub mod frame;
pub mod ops;

pub use frame::{Frame, FrameError, decode_frame, fuzz_frame};
