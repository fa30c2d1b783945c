//! `dev.sluice.queryIndex?index&key...&did&since&until&reverse&limit&cursor` -> `{records:
//! [{uri, cid, value, did, handle?}], cursor?}`: the records under a key of an index, newest
//! first by sort value (`reverse=true`: oldest first). Also served under an index's own
//! `method`.
//!
//! The cursor is the last entry's position (its sort value, repo and rkey), opaque: a page
//! holds the entries strictly past it, so paging while records arrive returns every record that
//! stood throughout exactly once, in order. Records of repos not shown (deactivated, taken
//! down, discarded) are passed over, as `listRecords` does; a page examines at most
//! [`MAX_EXAMINED`] entries, and ends early with a cursor when they were all passed over.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;

use super::index_params::{find, key, ready};
use super::repo_access::{RecordList, blocking, readable, store_error};
use crate::indexes::{SortType, encode};
use crate::pipeline::PipelineMetrics;
use crate::server::ServerState;
use crate::store::{Hit, LiveIndex, PageRange, Store};
use crate::syntax::is_did;
use crate::xrpc::{Params, XrpcError, XrpcResult, ok_json_text};

/// The method's name under [`NS`](crate::server::NS).
pub(super) const NAME: &str = "queryIndex";
/// The most entries one page looks at, shown or not.
pub const MAX_EXAMINED: usize = 1_000;

pub(super) async fn handle(State(state): State<Arc<ServerState>>, params: Params) -> XrpcResult {
    serve(state, params, None).await
}

/// Answers a query of the index named by `index`, or the one served under `method`.
pub(super) async fn serve(state: Arc<ServerState>, params: Params, method: Option<String>) -> XrpcResult {
    let metrics = state.pipeline.clone();
    ok_json_text(blocking(&state, move |store| read(store, metrics.metrics(), &params, method.as_deref())).await?)
}

/// A query's bounds, as encoded sort values and a position.
struct Bounds {
    lo: Option<Vec<u8>>,
    hi: Option<Vec<u8>>,
    after: Option<Vec<u8>>,
    ascending: bool,
}

fn read(store: &Store, metrics: &PipelineMetrics, params: &Params, method: Option<&str>) -> Result<Vec<u8>, XrpcError> {
    let index = find(store, params, method)?;
    ready(store, &index)?;
    let key = key(params, &index)?;
    let kind = index.spec.sort.value_type();
    let bounds = Bounds {
        lo: params.opt("since")?.map(|v| sort_param("since", v, kind)).transpose()?,
        hi: params.opt("until")?.map(|v| sort_param("until", v, kind)).transpose()?,
        after: params.opt("cursor")?.map(decode_cursor).transpose()?,
        ascending: params.flag("reverse")?,
    };
    let limit = params.limit(50, 100)?;
    let did = params.opt("did")?;
    if let Some(did) = did
        && !is_did(did)
    {
        return Err(XrpcError::invalid(format!("did: `{did}` is not a DID")));
    }
    let mut page = Shown::new(store, metrics, &index, limit);
    page.scan(&key, &bounds, did)?;
    Ok(page.answer())
}

/// A page being filled: the records of shown repos, each repo's state read once.
struct Shown<'a> {
    store: &'a Store,
    index: &'a LiveIndex,
    limit: usize,
    /// Per repo: `None` when not shown, else its verified handle, if any.
    repos: HashMap<String, Option<Option<String>>>,
    records: RecordList<'a>,
    examined: usize,
    /// The position of the last entry examined.
    last: Option<Vec<u8>>,
}

impl<'a> Shown<'a> {
    fn new(store: &'a Store, metrics: &'a PipelineMetrics, index: &'a LiveIndex, limit: usize) -> Self {
        let records = RecordList::new(metrics);
        Shown { store, index, limit, repos: HashMap::new(), records, examined: 0, last: None }
    }

    /// Reads the entries under `key` (only `repo`'s, when given) a chunk at a time until the
    /// page is full, the entries end, or [`MAX_EXAMINED`] were looked at.
    fn scan(&mut self, key: &[u8], bounds: &Bounds, repo: Option<&str>) -> Result<(), XrpcError> {
        // A repo not shown has nothing to show: its entries are not read at all.
        if let Some(did) = repo
            && self.shown(did)?.is_none()
        {
            return Ok(());
        }
        let mut after = bounds.after.clone();
        loop {
            let chunk = (self.limit - self.records.len()).max(16);
            let range = PageRange {
                lo: bounds.lo.as_deref(),
                hi: bounds.hi.as_deref(),
                ascending: bounds.ascending,
                after: after.as_deref(),
                repo,
            };
            let hits = self.index.page(key, &range, chunk).map_err(store_error)?;
            let ended = hits.len() < chunk;
            for hit in hits {
                if self.take(hit)? {
                    return Ok(());
                }
            }
            if ended || self.examined >= MAX_EXAMINED {
                if ended {
                    self.last = None;
                }
                return Ok(());
            }
            after = self.last.clone();
        }
    }

    /// Adds `hit` if its repo is shown and its record is there; returns whether the page is
    /// full (or examined all it may).
    fn take(&mut self, hit: Hit) -> Result<bool, XrpcError> {
        self.examined += 1;
        self.last = Some(hit.position.clone());
        if let Some(handle) = self.shown(&hit.did)? {
            let collection = &self.index.spec.collection;
            let record = match hit.record {
                Some(record) => Some(record),
                None => self.store.records().get(&hit.did, collection, &hit.rkey).map_err(store_error)?,
            };
            if let Some(record) = record {
                // `handle` only when there is one.
                let fields = [("did", hit.did.as_str()), ("handle", handle.as_deref().unwrap_or_default())];
                let extra = &fields[..if handle.is_some() { 2 } else { 1 }];
                self.records.push(&hit.did, collection, &hit.rkey, &record, extra)?;
            }
        }
        Ok(self.full())
    }

    /// `None` when `did`'s repo is not shown, else its verified handle, if any; read once a page.
    fn shown(&mut self, did: &str) -> Result<Option<Option<String>>, XrpcError> {
        if let Some(shown) = self.repos.get(did) {
            return Ok(shown.clone());
        }
        let shown = match readable(self.store, did) {
            Ok(state) => Some(state.handle.filter(|_| state.handle_ok == Some(true))),
            Err(e) if e.status() == StatusCode::INTERNAL_SERVER_ERROR => return Err(e),
            Err(_) => None,
        };
        self.repos.insert(did.to_string(), shown.clone());
        Ok(shown)
    }

    /// Whether the page holds `limit` records or examined all it may.
    fn full(&self) -> bool {
        self.records.len() >= self.limit || self.examined >= MAX_EXAMINED
    }

    fn answer(self) -> Vec<u8> {
        let cursor = self.last.as_deref().filter(|_| self.full()).map(encode_cursor);
        self.records.finish(cursor.as_deref())
    }
}

/// A `since`/`until` value as an encoded sort value of the index's type.
fn sort_param(name: &str, value: &str, kind: SortType) -> Result<Vec<u8>, XrpcError> {
    match kind {
        SortType::Datetime => encode::parse_datetime(value)
            .map(|us| encode::ordered_i64(us).to_vec())
            .ok_or_else(|| XrpcError::invalid(format!("{name}: `{value}` is not a datetime (2024-01-01T00:00:00Z)"))),
        SortType::Integer => value
            .parse::<i64>()
            .map(|i| encode::ordered_i64(i).to_vec())
            .map_err(|_| XrpcError::invalid(format!("{name}: `{value}` is not an integer"))),
        SortType::String => Ok(encode::ordered_text(value)),
    }
}

/// A position as a cursor: lowercase hex, opaque to clients.
fn encode_cursor(position: &[u8]) -> String {
    position.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(cursor: &str) -> Result<Vec<u8>, XrpcError> {
    let bad = || XrpcError::invalid("cursor: not a cursor this method gave");
    if !cursor.len().is_multiple_of(2) || cursor.len() > 4096 {
        return Err(bad());
    }
    (0..cursor.len()).step_by(2).map(|i| u8::from_str_radix(&cursor[i..i + 2], 16).map_err(|_| bad())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn cursors_round_trip(position: Vec<u8>) {
            prop_assert_eq!(decode_cursor(&encode_cursor(&position)).unwrap(), position);
        }
    }

    #[test]
    fn bad_cursors_and_bounds_are_refused_by_name() {
        assert!(decode_cursor("abc").is_err());
        assert!(decode_cursor("zz").is_err());
        assert!(format!("{:?}", sort_param("since", "yesterday", SortType::Datetime).unwrap_err()).contains("since"));
        assert!(sort_param("until", "x", SortType::Integer).is_err());
    }
}
