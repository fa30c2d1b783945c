//! The XRPC queries, one method per file. Every method is a GET whose parameters are checked
//! with errors naming them (`InvalidRequest`), and which reads the store on the blocking pool.
//!
//! Layout:
//! - `get_record`, `list_records`, `describe_repo`: `com.atproto.repo` reads over what sluice
//!   stores, shaped as a PDS answers them.
//! - `list_repos`, `get_repo_status`: `com.atproto.sync` listings of the repos sluice indexes.
//! - `get_repo_state`, `get_stats`, `get_backlinks`: sluice's own methods, under
//!   [`NS`](super::NS).
//! - `query_index`, `count_index`, `describe_indexes`: the indexes declared in the filter
//!   (`index_params`: what they share); an index's own `method` is routed to `query_index`.
//! - `repo_access`: what they share: which repos are shown, the `repo` parameter, records as
//!   JSON, the blocking-pool read.

mod count_index;
mod describe_indexes;
mod describe_repo;
mod get_backlinks;
mod get_record;
mod get_repo_state;
mod get_repo_status;
mod get_stats;
mod index_params;
mod list_records;
mod list_repos;
mod query_index;
mod repo_access;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get};

use super::{NS, ServerState};

/// The routes of every XRPC query.
pub(super) fn routes() -> Router<Arc<ServerState>> {
    let atproto = |method: &str| format!("/xrpc/{method}");
    let ours = |name: &str| format!("/xrpc/{NS}.{name}");
    Router::new()
        .route(&atproto(get_record::METHOD), get(get_record::handle))
        .route(&atproto(list_records::METHOD), get(list_records::handle))
        .route(&atproto(describe_repo::METHOD), get(describe_repo::handle))
        .route(&atproto(list_repos::METHOD), get(list_repos::handle))
        .route(&atproto(get_repo_status::METHOD), get(get_repo_status::handle))
        .route(&ours(get_repo_state::NAME), get(get_repo_state::handle))
        .route(&ours(get_stats::NAME), get(get_stats::handle))
        .route(&ours(get_backlinks::NAME), get(get_backlinks::handle))
        .route(&ours(query_index::NAME), get(query_index::handle))
        .route(&ours(count_index::NAME), get(count_index::handle))
        .route(&ours(describe_indexes::NAME), get(describe_indexes::handle))
        .route("/xrpc/{method}", any(unknown_method))
}

/// Any other method under `/xrpc/`: an index's own `method` (`xyz.statusphere.getStatuses`)
/// is its query; any other is 501 `MethodNotImplemented` in the protocol's shape, as a PDS
/// answers, not an empty 404 that XRPC clients cannot read. Routes with a fixed path (every
/// method above, the event streams, admin) take precedence over this one.
async fn unknown_method(
    axum::extract::State(state): axum::extract::State<Arc<ServerState>>,
    axum::extract::Path(method): axum::extract::Path<String>,
    params: crate::xrpc::Params,
) -> crate::xrpc::XrpcResult {
    if state.store().index_registry().by_method(&method).is_some() {
        return query_index::serve(state, params, Some(method)).await;
    }
    Err(crate::xrpc::XrpcError::not_implemented(&method))
}
