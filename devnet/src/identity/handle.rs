//! `com.atproto.identity.resolveHandle`, which the PDS hosts and the relay both answer.

use serde_json::json;
use sluice::xrpc::{Params, XrpcError, XrpcResult, ok_json};

use crate::world::state::World;

/// `com.atproto.identity.resolveHandle?handle` -> `{did}`, for a handle that resolves back to
/// its account.
pub(crate) fn resolve_handle(world: &World, p: &Params) -> XrpcResult {
    let handle = p.req("handle")?;
    let did = world.resolve_handle(handle).ok_or_else(|| XrpcError::invalid("Unable to resolve handle"))?;
    ok_json(json!({ "did": did }))
}
