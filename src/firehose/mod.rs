//! Live ingestion from `com.atproto.sync.subscribeRepos` (issue 4). So far: frame decoding
//! ([`frame`]); the client, sync 1.1 validation, ordering with backfill and the cursor come next.
//!
//! Architecture invariant: decoding is synchronous and CPU-only; it knows nothing of the store.

pub mod frame;

pub use frame::{Frame, FrameError, decode_frame, fuzz_frame};
