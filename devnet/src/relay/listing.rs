//! Repo listings: `com.atproto.sync.listRepos` (a PDS lists its own accounts, the relay all of
//! them) and the relay's `com.atproto.sync.listReposByCollection`. Both page by DID cursor.

use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use sluice::xrpc::{Params, XrpcError, XrpcResult, ok_json};

use crate::world::state::{AccountState, AccountStatus, World};

/// The accounts after `cursor` (in DID order) that `keep` accepts: up to `limit` of them, and
/// whether more follow.
fn page<T>(
    world: &World,
    cursor: Option<&str>,
    limit: usize,
    mut keep: impl FnMut(&AccountState) -> Option<T>,
) -> (Vec<T>, bool) {
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
/// active, status?}], cursor?}`, the cursor present only when more repos follow. The relay also
/// lists the DIDs that have no account ([`World::list_only`]), merged in DID order.
pub(crate) async fn list_repos(world: &World, host: Option<usize>, p: &Params) -> XrpcResult {
    let limit = p.limit(500, 1000)?;
    let (accounts, mut more) = page(world, p.opt("cursor")?, limit, |a| {
        host.is_none_or(|h| h == a.pds).then(|| (a.account.did.clone(), Some(a.status)))
    });
    let mut listed = accounts;
    if host.is_none() {
        listed.extend(world.listed_only_after(p.opt("cursor")?, limit + 1).into_iter().map(|did| (did, None)));
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        more |= listed.len() > limit;
        listed.truncate(limit);
    }
    let with_repo: Vec<Option<String>> = listed.iter().map(|(did, status)| status.map(|_| did.clone())).collect();
    let built: Vec<_> = stream::iter(with_repo)
        .map(|did| async move {
            match did {
                Some(did) => world.built(&did).await,
                None => None,
            }
        })
        .buffered(2)
        .collect()
        .await;
    let mut repos = Vec::with_capacity(listed.len());
    for ((did, status), b) in listed.iter().zip(built) {
        let item = match (status, b) {
            (Some(status), Some(b)) => {
                let b = b.map_err(|e| XrpcError::internal(sluice::error::chain(&e).to_string()))?;
                let mut item = json!({
                    "did": did,
                    "head": b.head.to_string(),
                    "rev": b.rev,
                    "active": *status == AccountStatus::Active,
                });
                if let Some(s) = status.as_str() {
                    item["status"] = json!(s);
                }
                item
            }
            (Some(_), None) => continue,
            // A DID with no account: any well-formed head and rev.
            (None, _) => json!({"did": did, "head": LISTED_ONLY_HEAD, "rev": "2222222222222", "active": true}),
        };
        repos.push(item);
    }
    ok_json(with_cursor(json!({"repos": repos}), more, listed.last().map(|(d, _)| d.as_str())))
}

/// The `head` listed for a DID with no account (the CID of an empty DAG-CBOR map).
const LISTED_ONLY_HEAD: &str = "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua";

/// `listReposByCollection?collection&limit&cursor`: `{repos: [{did}], cursor?}`, the accounts
/// (not deleted) holding at least one record in `collection`.
pub(crate) fn list_repos_by_collection(world: &World, p: &Params) -> XrpcResult {
    let collection = p.req("collection")?;
    let limit = p.limit(500, 2000)?;
    let (dids, more) = page(world, p.opt("cursor")?, limit, |a| {
        (a.status != AccountStatus::Deleted && holds_collection(a, collection)).then(|| a.account.did.clone())
    });
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
