//! Live ingestion from `com.atproto.sync.subscribeRepos` (issue 4). So far: frame decoding
//! ([`frame`]) and a commit's ops as pipeline ops ([`ops`]); the client, sync 1.1 checks against
//! the stored state, ordering with backfill and the cursor come next.
//!
//! Architecture invariant: decoding is synchronous and CPU-only; it knows nothing of the store.

pub mod frame;
pub mod ops;

pub use frame::{Frame, FrameError, decode_frame, fuzz_frame};
