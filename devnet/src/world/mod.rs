//! The devnet's shared state, which every server reads and the test API changes: accounts and
//! their repos (`repos`, `state`), the exports built from them (`cache`), bulk population
//! (`populate`), and the queue of jobs that tells the firehose what changed (`events`). It
//! knows no HTTP and no firehose frames.

pub(crate) mod cache;
pub(crate) mod events;
pub(crate) mod populate;
pub(crate) mod repos;
pub(crate) mod state;
