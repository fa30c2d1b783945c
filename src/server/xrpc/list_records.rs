//! `com.atproto.repo.listRecords?repo&collection&limit&cursor&reverse` -> `{records: [{uri, cid,
//! value}], cursor?}`.
//!
//! As the reference PDS: rkeys descending by default (newest first for TIDs), ascending with
//! `reverse=true`; `cursor` is an rkey, and a page holds the rkeys strictly past it in the
//! page's order. The answer's `cursor` is the last rkey of every non-empty page, so the page
//! after the last one is empty and has none. (The devnet PDS leaves the cursor off the last
//! page instead; both page the same records.)

use std::sync::Arc;

use axum::extract::State;

use super::repo_access::{RecordList, Unshown, blocking, readable_repo, repo_param, store_error};
use crate::pipeline::PipelineMetrics;
use crate::server::ServerState;
use crate::store::Store;
use crate::xrpc::{Params, XrpcError, XrpcResult, ok_json_text};

/// The XRPC method's name.
pub(super) const METHOD: &str = "com.atproto.repo.listRecords";

/// One request's page.
struct Page {
    repo: String,
    collection: String,
    cursor: Option<String>,
    limit: usize,
    ascending: bool,
}

pub(super) async fn handle(State(state): State<Arc<ServerState>>, p: Params) -> XrpcResult {
    let repo = repo_param(&p, state.config.cluster.shard)?;
    let collection = p.nsid("collection")?.to_string();
    let page = Page {
        repo,
        collection,
        limit: p.limit(50, 100)?,
        ascending: p.flag("reverse")?,
        cursor: p.opt("cursor")?.map(str::to_string),
    };
    let pipeline = state.pipeline.clone();
    ok_json_text(blocking(&state, move |store| read(store, pipeline.metrics(), &page)).await?)
}

/// The page as JSON text: a record that does not render is left out (see
/// [`RecordList::push`]), and the cursor still moves past it.
fn read(store: &Store, metrics: &PipelineMetrics, page: &Page) -> Result<Vec<u8>, XrpcError> {
    let (did, _) = readable_repo(store, &page.repo, Unshown::Listed)?;
    let rows = store
        .records()
        .page(&did, &page.collection, page.cursor.as_deref(), page.limit, page.ascending)
        .map_err(store_error)?;
    let mut records = RecordList::new(metrics);
    for (rkey, record) in &rows {
        records.push(&did, &page.collection, rkey, record, &[])?;
    }
    Ok(records.finish(rows.last().map(|(last, _)| last.as_str())))
}
