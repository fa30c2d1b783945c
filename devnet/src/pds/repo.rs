//! A PDS host's `com.atproto.repo` queries: describeRepo, listRecords and getRecord, values
//! rendered as AT Protocol JSON. A repo that is unknown, deleted, deactivated or taken down is
//! answered as Bluesky's reference PDS answers each method: describeRepo by the reason's name,
//! listRecords and getRecord with `InvalidRequest` (as a PDS without an appview behind it).

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included};

use axum::http::StatusCode;
use bytes::Bytes;
use cid::Cid;
use serde_json::{Value, json};
use sluice::xrpc::{Params, XrpcError, XrpcResult, ok_json};
use sluice_handlers::value::cbor_to_json;

use super::host::Pds;
use crate::identity::diddoc::did_document;

type Records = BTreeMap<(String, String), (Cid, Bytes)>;

/// `describeRepo?repo` -> `{handle, did, didDoc, collections, handleIsCorrect}`.
pub(crate) fn describe_repo(pds: &Pds, p: &Params) -> XrpcResult {
    let repo = p.req("repo")?;
    let did = pds.resolve_repo(repo).map_err(|_| XrpcError::repo_not_found(repo))?;
    let url = &pds.world.hosts[pds.index].url;
    let out = pds.with_repo(&did, |a| {
        let mut collections: Vec<&str> = a.records.keys().map(|(c, _)| c.as_str()).collect();
        collections.dedup();
        json!({
            "handle": a.handle,
            "did": did,
            "didDoc": did_document(a, url),
            "collections": collections,
            "handleIsCorrect": a.handle_resolves,
        })
    })?;
    ok_json(out)
}

/// `listRecords?repo&collection&limit&cursor&reverse`: newest rkey first unless `reverse`; the
/// cursor (last rkey) present only when more records follow.
pub(crate) fn list_records(pds: &Pds, p: &Params) -> XrpcResult {
    let repo = p.req("repo")?;
    let did = pds.available(repo).ok_or_else(|| XrpcError::invalid(format!("Could not find repo: {repo}")))?;
    let collection = p.req("collection")?;
    let limit = p.limit(50, 100)?;
    let ascending = p.flag("reverse")?;
    let cursor = p.opt("cursor")?;
    let (page, more) = pds.with_repo(&did, |a| page_records(&a.records, collection, cursor, limit, ascending))?;
    let mut records = Vec::with_capacity(page.len());
    for (rkey, cid, bytes) in &page {
        records.push(json!({"uri": at_uri(&did, collection, rkey), "cid": cid.to_string(), "value": value(bytes)?}));
    }
    let mut out = json!({"records": records});
    if let (true, Some((last, _, _))) = (more, page.last()) {
        out["cursor"] = json!(last);
    }
    ok_json(out)
}

/// One page of `collection`'s records after `cursor` in the chosen order, and whether more follow.
fn page_records(
    records: &Records,
    collection: &str,
    cursor: Option<&str>,
    limit: usize,
    ascending: bool,
) -> (Vec<(String, Cid, Bytes)>, bool) {
    let key = |rkey: &str| (collection.to_string(), rkey.to_string());
    let lo = match (ascending, cursor) {
        (true, Some(c)) => Excluded(key(c)),
        _ => Included(key("")),
    };
    let hi = match (ascending, cursor) {
        (false, Some(c)) => Excluded(key(c)),
        _ => Excluded((format!("{collection}\0"), String::new())),
    };
    let range = records.range((lo, hi));
    let iter: Box<dyn Iterator<Item = _>> = if ascending { Box::new(range) } else { Box::new(range.rev()) };
    let mut page: Vec<_> = iter.take(limit + 1).map(|((_, r), (cid, b))| (r.clone(), *cid, b.clone())).collect();
    let more = page.len() > limit;
    page.truncate(limit);
    (page, more)
}

/// `getRecord?repo&collection&rkey` -> `{uri, cid, value}`, or RecordNotFound.
pub(crate) fn get_record(pds: &Pds, p: &Params) -> XrpcResult {
    let did = pds.available(p.req("repo")?).ok_or_else(|| XrpcError::invalid("Could not locate record"))?;
    let (collection, rkey) = (p.req("collection")?, p.req("rkey")?);
    let uri = at_uri(&did, collection, rkey);
    let found = pds.with_repo(&did, |a| a.records.get(&(collection.to_string(), rkey.to_string())).cloned())?;
    let Some((cid, bytes)) = found else {
        return Err(XrpcError::new(
            StatusCode::BAD_REQUEST,
            "RecordNotFound",
            format!("Could not locate record: {uri}"),
        ));
    };
    ok_json(json!({"uri": uri, "cid": cid.to_string(), "value": value(&bytes)?}))
}

/// `at://did/collection/rkey`.
pub(crate) fn at_uri(did: &str, collection: &str, rkey: &str) -> String {
    format!("at://{did}/{collection}/{rkey}")
}

/// A record as AT Protocol JSON (a record put as malformed CBOR is a 500).
fn value(bytes: &[u8]) -> Result<Value, XrpcError> {
    cbor_to_json(bytes).map_err(|e| XrpcError::internal(format!("stored record does not decode: {e}")))
}
