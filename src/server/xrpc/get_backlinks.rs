//! `dev.sluice.getBacklinks?subject&collection?&limit&cursor` -> `{subject, links: [{uri, did,
//! collection, rkey}], cursor?}`: the stored records that point at `subject` (likes and
//! reposts of an at-uri, follows of a DID), read from the `backlinks` handler's keyspace.
//!
//! `collection` narrows the links to one source collection. Links are in key order: by source
//! collection, then source DID, then rkey. The `cursor` (`collection/did/rkey` of the last
//! link) is given only when more links follow. Links come from every stored record, whatever
//! the source repo's status now is. A subject named by handle (`at://alice.test/...`, or the
//! handle alone) is looked up in the index of checked handles; an unknown one has no links.

use std::sync::Arc;

use axum::extract::State;
use serde_json::{Value, json};
use sluice_handlers::backlinks::{backlink_key, backlink_prefix, parse_backlink_key};

use super::repo_access::{at_uri, blocking, did_of, store_error};
use crate::server::ServerState;
use crate::xrpc::{Params, XrpcError, XrpcResult, ok_json};

/// The method's name under the project's namespace.
pub(super) const NAME: &str = "getBacklinks";

/// The handler whose keyspace holds the links.
const HANDLER: &str = "backlinks";

/// One request.
struct Request {
    subject: String,
    collection: Option<String>,
    cursor: Option<String>,
    limit: usize,
}

pub(super) async fn handle(State(state): State<Arc<ServerState>>, p: Params) -> XrpcResult {
    let req = request(&p)?;
    let (subject, collection, cursor, limit) =
        (req.subject.clone(), req.collection.clone(), req.cursor.clone(), req.limit);
    let mut keys = blocking(&state, move |store| {
        let Some(subject) = by_did(store, &subject)? else { return Ok(Vec::new()) };
        let after = cursor.map(|c| cursor_key(&subject, collection.as_deref(), &c)).transpose()?;
        let prefix = backlink_prefix(&subject, collection.as_deref());
        store.handlers().keys(HANDLER, &prefix, after.as_deref(), limit + 1).map_err(store_error)
    })
    .await?;
    let more = keys.len() > limit;
    keys.truncate(limit);
    let links: Vec<(&str, &str, &str)> =
        keys.iter().filter_map(|k| parse_backlink_key(k)).map(|(_, c, d, r)| (c, d, r)).collect();
    let items: Vec<Value> =
        links.iter().map(|(c, d, r)| json!({ "uri": at_uri(d, c, r), "did": d, "collection": c, "rkey": r })).collect();
    let mut out = json!({ "subject": req.subject, "links": items });
    if let (true, Some((c, d, r))) = (more, links.last()) {
        out["cursor"] = json!(format!("{c}/{d}/{r}"));
    }
    ok_json(out)
}

/// The request's parameters, checked.
fn request(p: &Params) -> Result<Request, XrpcError> {
    let subject = p.req("subject")?;
    if !crate::syntax::is_at_identifier(subject) && !crate::syntax::is_at_uri(subject) {
        return Err(XrpcError::invalid("subject must be an at-uri, a did or a handle"));
    }
    let collection = match p.opt("collection")? {
        Some(_) => Some(p.nsid("collection")?.to_string()),
        None => None,
    };
    let limit = p.limit(50, 100)?;
    let cursor = p.opt("cursor")?.map(str::to_string);
    if let Some(c) = &cursor {
        cursor_key(subject, collection.as_deref(), c)?;
    }
    Ok(Request { subject: subject.to_string(), collection, cursor, limit })
}

/// `subject` with a handle authority replaced by its repo's DID; `None` when no stored repo
/// has that handle.
fn by_did(store: &crate::store::Store, subject: &str) -> Result<Option<String>, XrpcError> {
    let (authority, rest) = match subject.strip_prefix("at://") {
        Some(uri) => uri.split_once('/').map_or((uri, ""), |(a, r)| (a, r)),
        None => (subject, ""),
    };
    if crate::syntax::is_did(authority) {
        return Ok(Some(subject.to_string()));
    }
    let Some(did) = did_of(store, authority)? else { return Ok(None) };
    Ok(Some(match (subject.starts_with("at://"), rest.is_empty()) {
        (false, _) => did,
        (true, true) => format!("at://{did}"),
        (true, false) => format!("at://{did}/{rest}"),
    }))
}

/// The backlink key a cursor `collection/did/rkey` names.
fn cursor_key(subject: &str, collection: Option<&str>, cursor: &str) -> Result<Vec<u8>, XrpcError> {
    let bad = || XrpcError::invalid("cursor must be a cursor this method gave (collection/did/rkey)");
    let mut parts = cursor.splitn(3, '/');
    let (c, d, r) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
    let valid = crate::syntax::is_nsid(c)
        && crate::syntax::is_did(d)
        && crate::syntax::is_rkey(r)
        && collection.is_none_or(|want| want == c);
    valid.then(|| backlink_key(subject, c, d, r)).ok_or_else(bad)
}
