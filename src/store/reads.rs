//! Paged reads for the XRPC queries: a repo's records in one collection from a cursor, repo
//! states from a DID cursor, a repo's collections and record count, and a handler keyspace's
//! keys under a prefix. Each reads only the keys its page needs (plus one, to tell whether more
//! follow), so a request costs the same however large the store is.

use std::ops::Bound::{self, Excluded, Included, Unbounded};

use super::values::RecordRef;
use super::{RepoState, Result, Store, Stored, keys};

/// A page of repo states in DID order, and where the next page starts (the DID after which to
/// go on), `None` when the scan reached the end.
pub type StatePage = (Vec<(String, RepoState)>, Option<String>);

/// The first key after every key starting with `prefix`, when `prefix` ends with the `\0`
/// separator: the same bytes with that last `\0` raised to `\x01`.
fn past_prefix(mut prefix: Vec<u8>) -> Vec<u8> {
    debug_assert_eq!(prefix.last(), Some(&0));
    if let Some(last) = prefix.last_mut() {
        *last = 1;
    }
    prefix
}

impl Store {
    /// Up to `limit` records of `did` in `collection` as (rkey, CID and body): rkeys descending
    /// (newest first for TIDs), or ascending when `ascending`; with `after`, only the rkeys past
    /// it in that order (below it descending, above it ascending). Any `after` string is
    /// accepted: it is only compared with the stored rkeys.
    pub fn collection_page(
        &self,
        did: &str,
        collection: &str,
        after: Option<&str>,
        limit: usize,
        ascending: bool,
    ) -> Result<Vec<(String, RecordRef)>> {
        let start = keys::record_collection_prefix(did, collection);
        let end = past_prefix(start.clone());
        let cursor = after.map(|rkey| keys::record(did, collection, rkey));
        let (lo, hi): (Bound<Vec<u8>>, Bound<Vec<u8>>) = match (ascending, cursor) {
            (true, Some(c)) => (Excluded(c), Excluded(end)),
            (false, Some(c)) => (Included(start), Excluded(c)),
            (_, None) => (Included(start), Excluded(end)),
        };
        let range = self.records.range((lo, hi));
        let iter: Box<dyn Iterator<Item = fjall::Guard>> =
            if ascending { Box::new(range) } else { Box::new(range.rev()) };
        let mut out = Vec::with_capacity(limit.min(128));
        for kv in iter.take(limit) {
            let (k, v) = kv.into_inner()?;
            let (_, _, rkey) = keys::parse_record(&k)?;
            out.push((rkey.to_string(), self.with_body(RecordRef::view(&v)?)?));
        }
        Ok(out)
    }

    /// The collections `did` holds records in, sorted. One seek per collection: after the
    /// first key of a collection the scan jumps past all of its keys.
    pub fn repo_collections(&self, did: &str) -> Result<Vec<String>> {
        let prefix = keys::record_prefix(did);
        let mut out = Vec::new();
        let mut from = prefix.clone();
        loop {
            let Some(kv) = self.records.range(from.as_slice()..).next() else { break };
            let key = kv.key()?;
            if !key.starts_with(&prefix) {
                break;
            }
            let (_, collection, _) = keys::parse_record(&key)?;
            from = past_prefix(keys::record_collection_prefix(did, collection));
            out.push(collection.to_string());
        }
        Ok(out)
    }

    /// How many records `did` holds: a scan of its keys (values are not decoded).
    pub fn repo_record_count(&self, did: &str) -> Result<u64> {
        let mut n = 0;
        for kv in self.records.prefix(keys::record_prefix(did)) {
            kv.key()?;
            n += 1;
        }
        Ok(n)
    }

    /// Repo states in DID order after `after` (exclusive), those `keep` accepts, up to `limit`.
    /// At most `max_scan` states are read: a store of mostly unwanted repos (say, discarded
    /// ones) ends a page short, with a `next` cursor at the last DID read. A full page reads
    /// on to the next kept state, so `next` is `None` exactly when nothing more is kept.
    pub fn repo_state_page(
        &self,
        after: Option<&str>,
        limit: usize,
        max_scan: usize,
        mut keep: impl FnMut(&RepoState) -> bool,
    ) -> Result<StatePage> {
        let lo = after.map_or(Unbounded, |did| Excluded(did.as_bytes()));
        let (mut states, mut last_read) = (Vec::new(), None);
        for (scanned, kv) in self.repos.range::<&[u8], _>((lo, Unbounded)).enumerate() {
            let (k, v) = kv.into_inner()?;
            let did = String::from_utf8_lossy(&k).into_owned();
            if scanned >= max_scan.max(1) {
                return Ok((states, last_read));
            }
            let state = RepoState::decode(&v)?;
            if keep(&state) {
                if states.len() == limit {
                    let next = states.last().map(|(d, _): &(String, RepoState)| d.clone());
                    return Ok((states, next));
                }
                states.push((did.clone(), state));
            }
            last_read = Some(did);
        }
        Ok((states, None))
    }

    /// Up to `limit` keys of handler `name`'s keyspace that start with `prefix`, in key order,
    /// after `after` (exclusive) when given.
    pub fn handler_keys(
        &self,
        name: &'static str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let space = self.handler_space(name)?;
        let lo = match after {
            Some(a) if a >= prefix => Excluded(a),
            _ => Included(prefix),
        };
        let mut out = Vec::new();
        for kv in space.range::<&[u8], _>((lo, Unbounded)).take(limit) {
            let key = kv.key()?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push(key.to_vec());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RecordWrite, RepoChange, RepoStatus};

    fn store_with(records: &[(&str, &str, &str)]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (did, collection, rkey) in records {
            let put = RecordWrite::Put {
                collection: (*collection).into(),
                rkey: (*rkey).into(),
                cid: rkey.as_bytes().to_vec(),
                body: bytes::Bytes::from_static(&[0xa0]),
                existed: false,
            };
            store.commit(RepoChange { did: did.to_string(), records: vec![put], ..Default::default() }).unwrap();
        }
        (dir, store)
    }

    #[test]
    fn collection_pages_stay_in_their_collection_both_ways() {
        let recs = [
            ("did:a", "a.b.c", "1"),
            ("did:a", "a.b.c", "2"),
            ("did:a", "a.b.c", "3"),
            ("did:a", "a.b.cd", "0"),
            ("did:a", "a.b", "9"),
            ("did:ab", "a.b.c", "5"),
        ];
        let (_dir, store) = store_with(&recs);
        let rkeys = |after, limit, asc| -> Vec<String> {
            store.collection_page("did:a", "a.b.c", after, limit, asc).unwrap().into_iter().map(|(r, _)| r).collect()
        };
        assert_eq!(rkeys(None, 10, false), ["3", "2", "1"]);
        assert_eq!(rkeys(None, 10, true), ["1", "2", "3"]);
        assert_eq!(rkeys(Some("3"), 1, false), ["2"]);
        assert_eq!(rkeys(Some("2"), 10, true), ["3"]);
        assert_eq!(rkeys(Some("25"), 10, false), ["2", "1"], "a cursor need not be a stored rkey");
        assert_eq!(rkeys(Some(""), 10, false), Vec::<String>::new());
        assert_eq!(rkeys(Some(""), 10, true), ["1", "2", "3"]);
        assert_eq!(rkeys(Some("\u{7f}"), 10, false), ["3", "2", "1"]);
        assert_eq!(
            store.collection_page("did:a", "a.b.c", None, 1, true).unwrap()[0].1,
            super::RecordRef { cid: b"1".to_vec(), body: Some(vec![0xa0]) }
        );
        assert_eq!(store.repo_collections("did:a").unwrap(), ["a.b", "a.b.c", "a.b.cd"]);
        assert_eq!(store.repo_collections("did:none").unwrap(), Vec::<String>::new());
        assert_eq!(store.repo_record_count("did:a").unwrap(), 5);
    }

    #[test]
    fn state_pages_cover_every_kept_repo_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let states: Vec<(String, RepoState)> = (0..20)
            .map(|i| {
                let status = if i % 3 == 0 { RepoStatus::Synced } else { RepoStatus::Discarded };
                (format!("did:x:{i:02}"), RepoState { status, ..Default::default() })
            })
            .collect();
        store.set_states(&states, None).unwrap();
        let want: Vec<String> =
            states.iter().filter(|(_, s)| s.status == RepoStatus::Synced).map(|(d, _)| d.clone()).collect();
        for (limit, max_scan) in [(1, 100), (2, 100), (7, 100), (100, 100), (2, 3), (1, 1)] {
            let (mut got, mut after, mut pages) = (Vec::new(), None, 0);
            loop {
                let (states, next) = store
                    .repo_state_page(after.as_deref(), limit, max_scan, |s| s.status == RepoStatus::Synced)
                    .unwrap();
                assert!(states.len() <= limit);
                got.extend(states.into_iter().map(|(d, _)| d));
                pages += 1;
                assert!(pages < 100, "pages end");
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(got, want, "limit {limit}, max_scan {max_scan}");
        }
        let (states, next) =
            store.repo_state_page(Some("did:x:18"), 5, 100, |s| s.status == RepoStatus::Synced).unwrap();
        assert!(states.is_empty() && next.is_none());
    }

    #[test]
    fn handler_keys_page_under_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let writes = ["s\0a", "s\0b", "s\0c", "s2\0a", "r\0z"]
            .map(|k| ("test", sluice_handlers::IndexWrite { key: k.as_bytes().to_vec(), value: Some(vec![]) }));
        store
            .commit(RepoChange { did: "did:a".into(), handler_writes: writes.to_vec(), ..Default::default() })
            .unwrap();
        let keys = |after: Option<&str>, limit| -> Vec<String> {
            store
                .handler_keys("test", b"s\0", after.map(str::as_bytes), limit)
                .unwrap()
                .into_iter()
                .map(|k| String::from_utf8(k).unwrap())
                .collect()
        };
        assert_eq!(keys(None, 10), ["s\0a", "s\0b", "s\0c"]);
        assert_eq!(keys(None, 2), ["s\0a", "s\0b"]);
        assert_eq!(keys(Some("s\0b"), 10), ["s\0c"]);
        assert_eq!(keys(Some("a"), 10), ["s\0a", "s\0b", "s\0c"], "a cursor before the prefix starts at the prefix");
        assert_eq!(keys(Some("s\0c"), 10), Vec::<String>::new());
    }
}
