//! A fake PDS host: `host` is its view of the World (which repos it serves, and how it refuses
//! the others); `sync`, `repo` and `write` its XRPC methods; `server` its routes.

pub(crate) mod host;
pub(crate) mod repo;
pub(crate) mod server;
pub(crate) mod sync;
pub(crate) mod write;
