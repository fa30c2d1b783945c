//! Repo listings: `com.atproto.sync.listRepos` (a PDS lists its own accounts, the relay all of
//! them) and the relay's `com.atproto.sync.listReposByCollection`. Both page by DID cursor.

use futures_util::{StreamExt, stream};
use serde_json::{Value, json};

use super::world::{AccountState, AccountStatus, World};
use crate::xrpc::{Params, XrpcResult, ok_json};

/// The accounts after `cursor` (in DID order) that `keep` accepts: up to `limit` of them, and
/// whether more follow.
fn page<T>(world: &World, cursor: Option<&str>, limit: usize, mut keep: impl FnMut(&AccountState) -> Option<T>) -> (Vec<T>, bool) {
    let mut items = Vec::new();
    let mut more = false;
    world.scan(cursor, |a| match keep(a) {
        Some(_) if items.len() == limit => {
            more = true;
            false
        }
        Some(t) => {
            items.push(t);
            true
        }
        None => true,
    });
    (items, more)
}

/// `listRepos?limit&cursor` over host `host` (all hosts when `None`): `{repos: [{did, head, rev,
/// active, status?}], cursor?}`, the cursor present only when more repos follow.
pub(crate) async fn list_repos(world: &World, host: Option<usize>, p: &Params) -> XrpcResult {
    let limit = p.limit(500, 1000)?;
    let (accounts, more) = page(world, p.opt("cursor"), limit, |a| host.is_none_or(|h| h == a.pds).then(|| (a.account.did.clone(), a.status)));
    let dids: Vec<String> = accounts.iter().map(|(d, _)| d.clone()).collect();
    let built: Vec<_> = stream::iter(dids).map(|did| async move { world.built(&did).await }).buffered(2).collect().await;
    let mut repos = Vec::with_capacity(accounts.len());
    for ((did, status), b) in accounts.iter().zip(built) {
        let Some(b) = b else { continue };
        let b = b.map_err(crate::xrpc::XrpcError::internal)?;
        let mut item = json!({"did": did, "head": b.head.to_string(), "rev": b.rev, "active": *status == AccountStatus::Active});
        if let Some(s) = status.as_str() {
            item["status"] = json!(s);
        }
        repos.push(item);
    }
    ok_json(with_cursor(json!({"repos": repos}), more, accounts.last().map(|(d, _)| d.as_str())))
}

/// `listReposByCollection?collection&limit&cursor`: `{repos: [{did}], cursor?}`, the accounts
/// (not deleted) holding at least one record in `collection`.
pub(crate) fn list_repos_by_collection(world: &World, p: &Params) -> XrpcResult {
    let collection = p.req("collection")?;
    let limit = p.limit(500, 2000)?;
    let (dids, more) =
        page(world, p.opt("cursor"), limit, |a| (a.status != AccountStatus::Deleted && holds_collection(a, collection)).then(|| a.account.did.clone()));
    let repos: Vec<Value> = dids.iter().map(|d| json!({"did": d})).collect();
    ok_json(with_cursor(json!({"repos": repos}), more, dids.last().map(String::as_str)))
}

/// Whether `a` holds a record in `collection`.
fn holds_collection(a: &AccountState, collection: &str) -> bool {
    a.records.range((collection.to_string(), String::new())..).next().is_some_and(|((c, _), _)| c == collection)
}

fn with_cursor(mut out: Value, more: bool, last: Option<&str>) -> Value {
    if let (true, Some(last)) = (more, last) {
        out["cursor"] = json!(last);
    }
    out
}
