//! A `/subscribe` client's filter, as Jetstream v1 applies it: `wantedDids` selects events of
//! every kind, `wantedCollections` only commits (identity and account events always pass
//! it), and `maxMessageSizeBytes` skips events whose JSON is larger.

use std::collections::HashSet;

use crate::store::StoredEvent;
use crate::syntax;

/// Most `wantedCollections` entries (after removing duplicates), as Jetstream.
pub(super) const MAX_COLLECTIONS: usize = 100;
/// Most `wantedDids` entries (after removing duplicates), as Jetstream.
pub(super) const MAX_DIDS: usize = 10_000;

/// What one client wants. The default wants everything.
#[derive(Debug, Default)]
pub(super) struct Filter {
    /// `None`: every collection.
    collections: Option<Collections>,
    /// Empty: every repo.
    dids: HashSet<String>,
    /// Largest message sent (bytes of JSON); 0 for no limit.
    pub max_size: usize,
}

#[derive(Debug, Default)]
struct Collections {
    exact: HashSet<String>,
    /// `prefix.*` entries as `prefix.` (a match ends on a segment boundary).
    prefixes: Vec<String>,
}

impl Filter {
    /// A filter from the lists a client sent; the error says which entry is wrong. It is text,
    /// not an error type: the message the client is sent, and nothing inside acts on it.
    pub(super) fn new(collections: &[String], dids: &[String], max_size: usize) -> Result<Filter, String> {
        Ok(Filter { collections: parse_collections(collections)?, dids: parse_dids(dids)?, max_size })
    }

    /// Whether the client wants `event`.
    pub(super) fn wants(&self, event: &StoredEvent) -> bool {
        let (did, collection) = match event {
            StoredEvent::Record(r) => (r.did.as_str(), Some(r.collection.as_str())),
            StoredEvent::Identity(i) => (i.did.as_str(), None),
            StoredEvent::Account(a) => (a.did.as_str(), None),
        };
        if !self.dids.is_empty() && !self.dids.contains(did) {
            return false;
        }
        match (&self.collections, collection) {
            (Some(wanted), Some(collection)) => wanted.matches(collection),
            _ => true,
        }
    }
}

impl Collections {
    fn matches(&self, collection: &str) -> bool {
        self.exact.contains(collection) || self.prefixes.iter().any(|p| collection.starts_with(p.as_str()))
    }
}

/// `wantedCollections`: NSIDs and `prefix.*` patterns over whole segments; none means all.
fn parse_collections(values: &[String]) -> Result<Option<Collections>, String> {
    if values.is_empty() {
        return Ok(None);
    }
    let mut wanted = Collections::default();
    for value in values {
        let valid = value != "*" && syntax::nsid_pattern_problem(value).is_none();
        if !valid {
            return Err(format!(
                "invalid collection {value:?}: \
                 wantedCollections takes NSIDs and prefixes of whole segments such as app.bsky.*"
            ));
        }
        match value.strip_suffix('*') {
            Some(prefix) if !wanted.prefixes.iter().any(|p| p == prefix) => wanted.prefixes.push(prefix.to_string()),
            Some(_) => {}
            None => {
                wanted.exact.insert(value.clone());
            }
        }
        if wanted.exact.len() + wanted.prefixes.len() > MAX_COLLECTIONS {
            return Err(format!("too many wanted collections: at most {MAX_COLLECTIONS}"));
        }
    }
    Ok(Some(wanted))
}

/// `wantedDids`: DIDs; none means all.
fn parse_dids(values: &[String]) -> Result<HashSet<String>, String> {
    let mut dids = HashSet::with_capacity(values.len().min(MAX_DIDS));
    for value in values {
        if !syntax::is_did(value) {
            return Err(format!("invalid DID {value:?} in wantedDids"));
        }
        dids.insert(value.clone());
        if dids.len() > MAX_DIDS {
            return Err(format!("too many wanted DIDs: at most {MAX_DIDS}"));
        }
    }
    Ok(dids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AccountEvent, Action, IdentityEvent, RecordEvent};

    fn record(did: &str, collection: &str) -> StoredEvent {
        StoredEvent::Record(RecordEvent {
            live: true,
            did: did.into(),
            rev: "r".into(),
            collection: collection.into(),
            rkey: "k".into(),
            action: Action::Delete,
            cid: vec![],
            replaced: None,
            handled: vec![],
            body: None,
        })
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn collections_match_exactly_or_by_whole_segments() {
        let f = Filter::new(&strings(&["app.bsky.feed.post", "xyz.statusphere.*"]), &[], 0).unwrap();
        assert!(f.wants(&record("did:plc:a", "app.bsky.feed.post")));
        assert!(f.wants(&record("did:plc:a", "xyz.statusphere.status")));
        assert!(!f.wants(&record("did:plc:a", "xyz.statusphere")));
        assert!(!f.wants(&record("did:plc:a", "xyz.statusphereX.status")));
        assert!(!f.wants(&record("did:plc:a", "app.bsky.feed.like")));
        let identity = StoredEvent::Identity(IdentityEvent { did: "did:plc:a".into(), handle: None });
        assert!(f.wants(&identity), "identity events ignore wantedCollections");
    }

    #[test]
    fn dids_select_every_kind() {
        let f = Filter::new(&[], &strings(&["did:plc:a"]), 0).unwrap();
        assert!(f.wants(&record("did:plc:a", "a.b.c")));
        assert!(!f.wants(&record("did:plc:b", "a.b.c")));
        assert!(!f.wants(&StoredEvent::Account(AccountEvent { did: "did:plc:b".into(), active: true, status: None })));
    }

    #[test]
    fn bad_entries_and_too_many_are_refused() {
        for bad in ["*", "app.bs*", "app..feed", "nope", "app.bsky.feed.post*"] {
            assert!(Filter::new(&strings(&[bad]), &[], 0).is_err(), "{bad}");
        }
        assert!(Filter::new(&[], &strings(&["alice.test"]), 0).unwrap_err().contains("alice.test"));
        let many: Vec<String> = (0..=MAX_COLLECTIONS).map(|i| format!("a.b.c{i}")).collect();
        assert!(Filter::new(&many, &[], 0).unwrap_err().contains("too many"));
        assert!(Filter::new(&many[..MAX_COLLECTIONS], &[], 0).is_ok());
        let repeated = vec!["a.b.c".to_string(); 500];
        assert!(Filter::new(&repeated, &[], 0).is_ok(), "duplicates count once");
    }
}
