//! What the index queries share: the raw query's parameters (a key part may be given more than
//! once: `key=a&key=b`), the index named by `index` (or by the method it is served under), its
//! state, and the key tuple the `key` parameters make.

use std::sync::Arc;

use axum::http::StatusCode;

use crate::indexes::encode;
use crate::store::{LiveIndex, Progress, Store};
use crate::xrpc::XrpcError;

/// A raw query's parameters in order, each as often as it is given.
pub(super) struct Pairs(Vec<(String, String)>);

impl Pairs {
    /// Reads a raw query string (`None`: no query).
    pub(super) fn parse(raw: Option<&str>) -> Pairs {
        Pairs(form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect())
    }

    /// Every value of `name`.
    pub(super) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The one value of `name`, if given; given twice is an error that names it.
    pub(super) fn opt<'a>(&'a self, name: &'a str) -> Result<Option<&'a str>, XrpcError> {
        let mut values = self.all(name);
        let first = values.next();
        match values.next() {
            Some(_) => Err(XrpcError::invalid(format!("{name}: given more than once"))),
            None => Ok(first),
        }
    }

    /// The one value of `name`; missing is an error that names it.
    pub(super) fn req<'a>(&'a self, name: &'a str) -> Result<&'a str, XrpcError> {
        self.opt(name)?.ok_or_else(|| XrpcError::invalid(format!("{name}: required")))
    }

    /// A boolean parameter (`true`/`false`, default false).
    pub(super) fn flag(&self, name: &str) -> Result<bool, XrpcError> {
        match self.opt(name)? {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(XrpcError::invalid(format!("{name}: `{other}` is not true or false"))),
        }
    }

    /// `limit`, 1 to `max`, `default` when absent.
    pub(super) fn limit(&self, default: usize, max: usize) -> Result<usize, XrpcError> {
        match self.opt("limit")? {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(XrpcError::invalid(format!("limit: `{v}` is not a number from 1 to {max}"))),
            },
        }
    }
}

/// The index a query names: by `index`, or the one served under `method`.
pub(super) fn find(store: &Store, pairs: &Pairs, method: Option<&str>) -> Result<Arc<LiveIndex>, XrpcError> {
    let registry = store.index_registry();
    let (name, found) = match method {
        Some(method) => (method, registry.by_method(method)),
        None => {
            let name = pairs.req("index")?;
            (name, registry.indexes.get(name))
        }
    };
    found.cloned().ok_or_else(|| {
        XrpcError::new(StatusCode::BAD_REQUEST, "IndexNotFound", format!("no index `{name}` in the filter"))
    })
}

/// `index` once it is ready; while it builds, `IndexNotReady` with its progress.
pub(super) fn ready(store: &Store, index: &LiveIndex) -> Result<(), XrpcError> {
    match store.index_progress_of(index).building {
        None => Ok(()),
        Some(build) => {
            let (done, total) = store.build_progress(index, &build);
            Err(XrpcError::new(
                StatusCode::BAD_REQUEST,
                "IndexNotReady",
                format!("index `{}` is building: {done} of about {total} records read", index.spec.name),
            ))
        }
    }
}

/// The key tuple of the `key` parameters: one per key part of `index`, each in the canonical
/// form entries use (a datetime normalised).
pub(super) fn key(pairs: &Pairs, index: &LiveIndex) -> Result<Vec<u8>, XrpcError> {
    let parts: Vec<_> = pairs.all("key").map(|k| encode::canonical_text(k).into_owned()).collect();
    let want = index.spec.key.len();
    if parts.len() != want {
        let paths: Vec<_> = index.spec.key.iter().map(|p| p.as_str()).collect();
        return Err(XrpcError::invalid(format!(
            "key: index `{}` takes {want} key part(s) ({}), got {}",
            index.spec.name,
            paths.join(", "),
            parts.len()
        )));
    }
    Ok(encode::key_tuple(&parts))
}

/// A progress as JSON for `describeIndexes`.
pub(super) fn progress_json(store: &Store, index: &LiveIndex, p: &Progress) -> serde_json::Value {
    let mut out = serde_json::json!({
        "state": if p.building.is_some() { "building" } else { "ready" },
        "entries": p.entries,
        "records": p.records,
        "skipped": p.skipped,
    });
    if let Some(build) = &p.building {
        let (done, total) = store.build_progress(index, build);
        out["progress"] = serde_json::json!({ "done": done, "total": total });
    }
    out
}
