//! What the XRPC methods share: reading the store (on the blocking pool, or inline for point
//! reads), the `repo` parameter (an at-identifier: a DID, or a handle looked up in the index
//! of handles found to be their repo's own), and the rule for which repos a method may show.
//!
//! The rule: a repo sluice has no state for, or keeps nothing of (`discarded`), is not found.
//! A `gone` repo answers as a PDS would for its account status, which its state's `error`
//! holds (`deactivated`, `takendown`, `suspended`, `deleted`, or a relay's own word):
//! deactivated, taken down and suspended accounts are known but unreadable; deleted ones (and
//! DIDs that no longer resolve) are not found. Every other state (synced, or pending,
//! backfilling, failing or desynchronized with what was stored before) is readable.
//!
//! What a method answers for a repo it cannot show follows Bluesky's reference PDS, method by
//! method ([`Unshown`]): `describeRepo` names the reason (`RepoNotFound`, `RepoDeactivated`,
//! `RepoTakendown`), while `listRecords` and `getRecord` answer every unknown or unreadable
//! repo alike, with `InvalidRequest`.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::super::ServerState;
use crate::cluster::Shard;
use crate::pipeline::PipelineMetrics;
use crate::store::values::RecordRef;
use crate::store::{RepoState, RepoStatus, Store, StoreError};
use crate::xrpc::{Params, XrpcError};

/// Runs `read` on the blocking pool with the store: reads may touch many keys.
pub(super) async fn blocking<T: Send + 'static>(
    state: &Arc<ServerState>,
    read: impl FnOnce(&Store) -> Result<T, XrpcError> + Send + 'static,
) -> Result<T, XrpcError> {
    let store = state.store().clone();
    tokio::task::spawn_blocking(move || read(&store))
        .await
        .map_err(|e| XrpcError::internal(format!("read task failed: {e}")))?
}

/// Runs `read` right on the server's worker: for reads of a few keys (a record, a repo's
/// state), where a hop to the blocking pool costs more than the read and adds its own wait.
pub(super) fn point_read<T>(
    state: &ServerState,
    read: impl FnOnce(&Store) -> Result<T, XrpcError>,
) -> Result<T, XrpcError> {
    read(state.store())
}

/// A storage failure as a 500.
pub(super) fn store_error(e: StoreError) -> XrpcError {
    XrpcError::internal(crate::error::chain(&e).to_string())
}

/// The `repo` parameter: a DID or a handle, as given; a DID of another shard's repo is
/// refused (see [`on_this_shard`]).
pub(super) fn repo_param(p: &Params, shard: Shard) -> Result<String, XrpcError> {
    let repo = p.req("repo")?;
    if crate::syntax::is_did(repo) {
        on_this_shard(repo, shard)?;
        return Ok(repo.to_string());
    }
    match crate::syntax::is_handle(repo) {
        true => Ok(repo.to_string()),
        false => Err(XrpcError::invalid("repo must be a valid did or handle")),
    }
}

/// Refuses a DID this node's shard does not hold, naming the shard that does: with
/// `[cluster] shard`, each node answers for its own repos only.
pub(super) fn on_this_shard(did: &str, shard: Shard) -> Result<(), XrpcError> {
    if shard.owns(did) {
        return Ok(());
    }
    Err(XrpcError::new(
        StatusCode::BAD_REQUEST,
        "RepoOnOtherShard",
        format!("{did} is indexed by shard {}; this node serves shard {shard}", shard.holder(did)),
    ))
}

/// The DID an at-identifier names: a DID itself, or the repo whose own handle it is; `None`
/// for a handle no stored repo was found to have.
pub(super) fn did_of(store: &Store, repo: &str) -> Result<Option<String>, XrpcError> {
    match crate::syntax::is_did(repo) {
        true => Ok(Some(repo.to_string())),
        false => store.handles().did_for(repo).map_err(store_error),
    }
}

/// How a method answers for a repo it cannot show, as the reference PDS answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unshown {
    /// `describeRepo`: the reason, by name.
    Described,
    /// `listRecords`: `InvalidRequest`, "Could not find repo".
    Listed,
    /// `getRecord`: `InvalidRequest`, "Could not locate record".
    Fetched,
}

/// The DID and state of `repo` (a DID or handle) when its records may be read; otherwise the
/// error `method` answers with.
pub(super) fn readable_repo(store: &Store, repo: &str, method: Unshown) -> Result<(String, RepoState), XrpcError> {
    let found = match did_of(store, repo)? {
        Some(did) => readable(store, &did).map(|state| (did, state)),
        None => Err(XrpcError::repo_not_found(repo)),
    };
    match (found, method) {
        (Ok(found), _) => Ok(found),
        (Err(e), _) if e.status() == StatusCode::INTERNAL_SERVER_ERROR => Err(e),
        (Err(e), Unshown::Described) => Err(e),
        (Err(_), Unshown::Listed) => Err(XrpcError::invalid(format!("Could not find repo: {repo}"))),
        (Err(_), Unshown::Fetched) => Err(XrpcError::invalid("Could not locate record")),
    }
}

/// The account status of a gone repo, as `getRepoStatus` and `listRepos` report it (one word,
/// e.g. `takendown`), or `None` when the account no longer exists (deleted, or its DID does not
/// resolve) and the repo is answered as not found.
pub(super) fn gone_status(state: &RepoState) -> Option<&str> {
    let reason = state.error.as_deref()?;
    let word = !reason.is_empty() && reason.bytes().all(|b| b.is_ascii_lowercase());
    (word && reason != "deleted").then_some(reason)
}

/// `did`'s state if sluice shows the repo at all: known, not discarded, and not gone for good.
pub(super) fn shown(did: &str, state: Option<RepoState>) -> Result<RepoState, XrpcError> {
    match state {
        Some(s) if s.status == RepoStatus::Discarded => Err(XrpcError::repo_not_found(did)),
        Some(s) if s.status == RepoStatus::Gone && gone_status(&s).is_none() => Err(XrpcError::repo_not_found(did)),
        Some(s) => Ok(s),
        None => Err(XrpcError::repo_not_found(did)),
    }
}

/// `did`'s state if its records may be read; a gone repo gets its status's error, as a PDS
/// answers for a deactivated, taken down or suspended account.
pub(super) fn readable(store: &Store, did: &str) -> Result<RepoState, XrpcError> {
    let state = shown(did, store.repos().state(did).map_err(store_error)?)?;
    if state.status != RepoStatus::Gone {
        return Ok(state);
    }
    let bad =
        |error, what: &str| XrpcError::new(StatusCode::BAD_REQUEST, error, format!("Repo has been {what}: {did}"));
    Err(match gone_status(&state).unwrap_or_default() {
        "deactivated" => bad("RepoDeactivated", "deactivated"),
        "takendown" => bad("RepoTakendown", "takendown"),
        "suspended" => bad("RepoSuspended", "suspended"),
        other => {
            XrpcError::new(StatusCode::BAD_REQUEST, "RepoNotFound", format!("Repo is not available ({other}): {did}"))
        }
    })
}

/// `at://did/collection/rkey`.
pub(super) fn at_uri(did: &str, collection: &str, rkey: &str) -> String {
    format!("at://{did}/{collection}/{rkey}")
}

/// A binary CID as its string form (base32 CIDv1).
pub(super) fn cid_string(cid: &[u8]) -> Result<String, XrpcError> {
    cid::Cid::try_from(cid)
        .map(|c| c.to_string())
        .map_err(|e| XrpcError::internal(format!("stored CID does not decode: {e}")))
}

/// `{uri, cid, value}` of one stored record, or `None` when its body does not render.
///
/// Such a record was stored before the record rule (an older sluice kept what its readers
/// could not show); the rule takes it as not in the repo, and so do the reads: `listRecords`
/// leaves it out and `getRecord` answers `RecordNotFound` for it, each naming the rule in a
/// warning and counting it in `metrics` (`records_unreadable`), so that one record never fails
/// a whole listing.
pub(super) fn record_json(
    did: &str,
    collection: &str,
    rkey: &str,
    record: &RecordRef,
    metrics: &PipelineMetrics,
) -> Result<Option<Value>, XrpcError> {
    let uri = at_uri(did, collection, rkey);
    let body = body_of(&uri, record)?;
    let value = match sluice_handlers::value::cbor_to_json(body) {
        Ok(value) => value,
        Err(e) => {
            unreadable(&uri, body, e, metrics);
            return Ok(None);
        }
    };
    let mut out = Map::new();
    out.insert("uri".into(), uri.into());
    out.insert("cid".into(), cid_string(&record.cid)?.into());
    out.insert("value".into(), value);
    Ok(Some(Value::Object(out)))
}

fn body_of<'r>(uri: &str, record: &'r RecordRef) -> Result<&'r [u8], XrpcError> {
    record.body.as_deref().ok_or_else(|| XrpcError::internal(format!("the body of {uri} is missing")))
}

/// Counts and logs a stored record that does not render (see [`record_json`]).
fn unreadable(uri: &str, body: &[u8], e: impl std::fmt::Display, metrics: &PipelineMetrics) {
    metrics.records_unreadable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let rule = sluice_handlers::rules::check_record(body).err();
    tracing::warn!(
        %uri,
        reason = rule.as_ref().map_or("not_dag_cbor", |r| r.reason()),
        "a stored record does not render (stored before the record rule); read as not in the repo: {e}"
    );
}

/// An answer `{"records": [{uri, cid, value, ...}], "cursor"?}` written as JSON text as the
/// records are read: each body goes from DAG-CBOR straight into the answer, with no value
/// tree (`listRecords` and `queryIndex` pages, where that was most of a page's time).
pub(super) struct RecordList<'m> {
    out: Vec<u8>,
    len: usize,
    metrics: &'m PipelineMetrics,
}

impl<'m> RecordList<'m> {
    pub(super) fn new(metrics: &'m PipelineMetrics) -> Self {
        let mut out = Vec::with_capacity(16 * 1024);
        out.extend_from_slice(b"{\"records\":[");
        RecordList { out, len: 0, metrics }
    }

    /// How many records the list holds.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Adds `{uri, cid, value}` and the string fields of `extra`; a record whose body does not
    /// render is left out as [`record_json`] does. Returns whether it was added.
    pub(super) fn push(
        &mut self,
        did: &str,
        collection: &str,
        rkey: &str,
        record: &RecordRef,
        extra: &[(&str, &str)],
    ) -> Result<bool, XrpcError> {
        let uri = at_uri(did, collection, rkey);
        let body = body_of(&uri, record)?;
        let cid = cid_string(&record.cid)?;
        let start = self.out.len();
        if self.len > 0 {
            self.out.push(b',');
        }
        self.out.extend_from_slice(b"{\"uri\":");
        json_string(&mut self.out, &uri);
        self.out.extend_from_slice(b",\"cid\":");
        json_string(&mut self.out, &cid);
        self.out.extend_from_slice(b",\"value\":");
        if let Err(e) = sluice_handlers::value::write_cbor_json(body, &mut self.out) {
            self.out.truncate(start);
            unreadable(&uri, body, e, self.metrics);
            return Ok(false);
        }
        for (name, value) in extra {
            self.out.push(b',');
            json_string(&mut self.out, name);
            self.out.push(b':');
            json_string(&mut self.out, value);
        }
        self.out.push(b'}');
        self.len += 1;
        Ok(true)
    }

    /// The answer, with `cursor` when given.
    pub(super) fn finish(mut self, cursor: Option<&str>) -> Vec<u8> {
        self.out.push(b']');
        if let Some(cursor) = cursor {
            self.out.extend_from_slice(b",\"cursor\":");
            json_string(&mut self.out, cursor);
        }
        self.out.push(b'}');
        self.out
    }
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("a string serializes into memory");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone(reason: &str) -> RepoState {
        RepoState { status: RepoStatus::Gone, error: Some(reason.into()), ..Default::default() }
    }

    #[test]
    fn gone_repos_keep_their_status_unless_deleted() {
        for s in ["deactivated", "takendown", "suspended", "throttled", "inactive"] {
            assert_eq!(gone_status(&gone(s)), Some(s));
            assert!(shown("did:x:a", Some(gone(s))).is_ok());
        }
        for s in ["deleted", "deleted (RepoNotFound)", "DID not found", ""] {
            assert_eq!(gone_status(&gone(s)), None, "{s}");
            assert_eq!(shown("did:x:a", Some(gone(s))).unwrap_err().error(), "RepoNotFound");
        }
        let discarded = RepoState { status: RepoStatus::Discarded, ..Default::default() };
        assert_eq!(shown("did:x:a", Some(discarded)).unwrap_err().error(), "RepoNotFound");
        assert_eq!(shown("did:x:a", None).unwrap_err().error(), "RepoNotFound");
    }

    fn stored(value: &serde_json::Value) -> RecordRef {
        let cid = cid::Cid::new_v1(0x71, multihash::Multihash::wrap(0x12, &[7; 32]).unwrap());
        RecordRef { cid: cid.to_bytes(), body: Some(serde_ipld_dagcbor::to_vec(value).unwrap()) }
    }

    #[test]
    fn a_record_list_is_the_json_of_its_records_without_the_unreadable_ones() {
        let metrics = PipelineMetrics::default();
        let (a, b) = (serde_json::json!({"text": "a \"quoted\" é"}), serde_json::json!({"n": 2, "l": [true]}));
        // A float: DAG-CBOR the record rule refuses, so it does not render.
        let unreadable = RecordRef { body: Some(serde_ipld_dagcbor::to_vec(&1.5f64).unwrap()), ..stored(&a) };
        let mut list = RecordList::new(&metrics);
        assert!(list.push("did:plc:a", "x.y.z", "1", &stored(&a), &[("did", "did:plc:a")]).unwrap());
        assert!(!list.push("did:plc:a", "x.y.z", "2", &unreadable, &[]).unwrap());
        assert!(list.push("did:plc:a", "x.y.z", "3", &stored(&b), &[("handle", "h.test")]).unwrap());
        assert_eq!(list.len(), 2);
        let text = list.finish(Some("3"));
        let answer: serde_json::Value = serde_json::from_slice(&text).unwrap();
        let mut first = record_json("did:plc:a", "x.y.z", "1", &stored(&a), &metrics).unwrap().unwrap();
        first["did"] = "did:plc:a".into();
        let mut second = record_json("did:plc:a", "x.y.z", "3", &stored(&b), &metrics).unwrap().unwrap();
        second["handle"] = "h.test".into();
        assert_eq!(answer, serde_json::json!({"records": [first, second], "cursor": "3"}));
        assert_eq!(metrics.records_unreadable.load(std::sync::atomic::Ordering::Relaxed), 1);
        let empty = RecordList::new(&metrics).finish(None);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&empty).unwrap(), serde_json::json!({"records": []}));
    }
}
