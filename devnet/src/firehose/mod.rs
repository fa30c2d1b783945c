//! The devnet's firehose: `com.atproto.sync.subscribeRepos` with real, signed sync 1.1 frames.
//! `feed` turns the World's jobs (`world::events`) into events, `commit` keeps each account's
//! MST between commits, `frame` encodes, `sequencer` numbers, keeps and broadcasts, `ws` serves
//! them to the PDS hosts' and the relay's subscribers; `synth` makes the same frames without
//! servers, for benchmarks.

pub(crate) mod commit;
pub(crate) mod feed;
pub(crate) mod frame;
pub(crate) mod sequencer;
pub(crate) mod synth;
pub(crate) mod ws;
