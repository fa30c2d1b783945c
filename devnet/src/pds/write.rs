//! A PDS host's write procedures, without auth (for demos and scripts): createRecord, putRecord,
//! deleteRecord with their real JSON bodies, and `POST /devnet/createAccount`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sluice::xrpc::{XrpcError, XrpcResult, ok_json};
use sluice_handlers::value::json_to_cbor;

use super::host::Pds;
use super::repo::at_uri;
use crate::world::state::{AccountSpec, Write, WriteError};

/// A required string field of a request body.
fn field<'a>(input: &'a Value, name: &str) -> Result<&'a str, XrpcError> {
    input
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| XrpcError::invalid(format!("Input must have the property \"{name}\"")))
}

/// The repo DID a write names, checked to be hosted here.
fn target(pds: &Pds, input: &Value) -> Result<String, XrpcError> {
    let did = pds.resolve_repo(field(input, "repo")?)?;
    pds.with_repo(&did, |_| ())?;
    Ok(did)
}

/// The `record` field as DAG-CBOR. A record object without `$type` gets `collection` as its
/// `$type`, as the reference PDS gives it (a `$type` naming another collection is kept: the
/// devnet writes what it is asked to, as a PDS that does not validate does).
fn record_cbor(input: &Value, collection: &str) -> Result<Vec<u8>, XrpcError> {
    let mut record =
        input.get("record").cloned().ok_or_else(|| XrpcError::invalid("Input must have the property \"record\""))?;
    if let Value::Object(fields) = &mut record {
        fields.entry("$type").or_insert_with(|| json!(collection));
    }
    json_to_cbor(&record).map_err(|e| XrpcError::invalid(format!("Invalid record: {e}")))
}

/// Applies one write, answering `{uri, cid}` (or `{}` for a delete).
fn apply(pds: &Pds, did: &str, write: Write) -> XrpcResult {
    let (collection, rkey) = match &write {
        Write::Create { collection, rkey, .. }
        | Write::Put { collection, rkey, .. }
        | Write::Delete { collection, rkey } => (collection.clone(), rkey.clone()),
    };
    match pds.world.apply_writes(did, vec![write]) {
        Ok((_, cids)) => match cids.first().copied().flatten() {
            Some(cid) => ok_json(json!({"uri": at_uri(did, &collection, &rkey), "cid": cid.to_string()})),
            None => ok_json(json!({})),
        },
        Err(WriteError::NotFound(..)) => ok_json(json!({})),
        Err(WriteError::UnknownRepo(_)) => Err(XrpcError::repo_not_found(did)),
        Err(e) => Err(XrpcError::invalid(e.to_string())),
    }
}

/// `com.atproto.repo.createRecord {repo, collection, rkey?, record}` (a TID rkey when absent).
pub(crate) fn create_record(pds: &Pds, input: &Value) -> XrpcResult {
    let did = target(pds, input)?;
    let collection = field(input, "collection")?.to_string();
    let rkey = match input.get("rkey").and_then(Value::as_str) {
        Some(r) => r.to_string(),
        None => pds.world.next_tid(),
    };
    let cbor = record_cbor(input, &collection)?;
    apply(pds, &did, Write::Create { collection, rkey, cbor })
}

/// `com.atproto.repo.putRecord {repo, collection, rkey, record}`: create or replace.
pub(crate) fn put_record(pds: &Pds, input: &Value) -> XrpcResult {
    let did = target(pds, input)?;
    let (collection, rkey) = (field(input, "collection")?.to_string(), field(input, "rkey")?.to_string());
    let cbor = record_cbor(input, &collection)?;
    apply(pds, &did, Write::Put { collection, rkey, cbor })
}

/// `com.atproto.repo.deleteRecord {repo, collection, rkey}`: `{}`, also when nothing was there.
pub(crate) fn delete_record(pds: &Pds, input: &Value) -> XrpcResult {
    let did = target(pds, input)?;
    let (collection, rkey) = (field(input, "collection")?.to_string(), field(input, "rkey")?.to_string());
    apply(pds, &did, Write::Delete { collection, rkey })
}

/// `POST /devnet/createAccount {seed, handle?, legacyKey?, didWeb?}` -> `{did}`, on this host.
pub(crate) async fn create_account(State(pds): State<Pds>, body: Bytes) -> Response {
    pds.world.count("devnet.createAccount");
    let input: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return XrpcError::invalid(format!("request body is not JSON: {e}")).into_response(),
    };
    let Some(seed) = input.get("seed").and_then(Value::as_u64) else {
        return XrpcError::invalid("Input must have the integer property \"seed\"").into_response();
    };
    let flag = |name: &str| input.get(name).and_then(Value::as_bool).unwrap_or(false);
    let spec = AccountSpec {
        seed,
        pds: pds.index,
        legacy_key: flag("legacyKey"),
        handle: input.get("handle").and_then(Value::as_str).map(str::to_string),
        did_web: flag("didWeb"),
    };
    Json(json!({"did": pds.world.create_account(&spec)})).into_response()
}
