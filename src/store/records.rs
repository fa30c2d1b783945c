//! The records: `records` (`did \0 collection \0 rkey` -> [`RecordRef`]: CID and body), the
//! current version of every stored record.
//!
//! Written only through the commit ([`Records::stage`]), in the batch of the change whose
//! events announce the write. Reads serve the pipeline's diff (a repo's CIDs, one record's
//! CID) and the XRPC queries (one record, a collection page, a repo's collections and record
//! count); each reads only the keys its answer needs, plus one to tell whether more follow, so
//! a request costs the same however large the store is. Values written before bodies moved
//! into `records` hold only the CID; their bodies are read from [`Blocks`].

use std::ops::Bound::{self, Excluded, Included};

use fjall::Keyspace;
use smol_str::SmolStr;

use super::blocks::Blocks;
use super::values::{RecordRef, RecordRefView};
use super::{Result, keys};

/// A repo's stored records: (collection, rkey) -> binary CID. The pipeline's diff looks up
/// every walked record here, so it uses foldhash.
pub type RecordMap = std::collections::HashMap<(SmolStr, SmolStr), Vec<u8>, foldhash::fast::RandomState>;

/// A stored record as a page of a repo's gives it: (collection, rkey) and its binary CID.
pub type StoredRecord = ((SmolStr, SmolStr), Vec<u8>);

/// A record put or removal. The writer states whether the record existed (the pipeline
/// knows from its diff), so commits keep counts without reading every key back.
#[derive(Debug, Clone)]
pub enum RecordWrite {
    /// Store `cid` (binary) with its DAG-CBOR `body` as the current version of
    /// `collection/rkey`; `existed` is true on updates.
    Put { collection: SmolStr, rkey: SmolStr, cid: Vec<u8>, body: bytes::Bytes, existed: bool },
    /// Remove `collection/rkey`, which exists.
    Remove { collection: SmolStr, rkey: SmolStr },
}

impl RecordWrite {
    /// The record written: its collection and rkey.
    pub fn path(&self) -> (&str, &str) {
        match self {
            RecordWrite::Put { collection, rkey, .. } | RecordWrite::Remove { collection, rkey } => (collection, rkey),
        }
    }
}

/// The first record that `paths` (collection, rkey) name more than once, as
/// `collection/rkey`. Each write is judged against what is stored (`existed`, the
/// per-collection counts, the index rows), so a change naming a record twice would be
/// miscounted: [`crate::store::Store::prepare`] refuses it, and the pipeline refuses a commit
/// whose ops do. Paths in order (a walk's, a diff's) are checked in one pass without a set.
pub(crate) fn first_repeated_path<'a, I>(paths: I) -> Option<String>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
    I::IntoIter: Clone,
{
    let paths = paths.into_iter();
    if paths.clone().zip(paths.clone().skip(1)).all(|(a, b)| a < b) {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    let (collection, rkey) = paths.into_iter().find(|path| !seen.insert(*path))?;
    Some(format!("{collection}/{rkey}"))
}

/// The first key after every key starting with `prefix`, when `prefix` ends with the `\0`
/// separator: the same bytes with that last `\0` raised to `\x01`.
fn past_prefix(mut prefix: Vec<u8>) -> Vec<u8> {
    debug_assert_eq!(prefix.last(), Some(&0));
    if let Some(last) = prefix.last_mut() {
        *last = 1;
    }
    prefix
}

/// Records of other collections [`Records::scan_collection`] reads in a row before it seeks.
const SEEK_AFTER: usize = 64;

/// The records part: owns `records`, reads legacy bodies from `blocks`.
pub struct Records {
    records: Keyspace,
    blocks: Blocks,
}

impl Records {
    pub(super) fn new(records: Keyspace, blocks: Blocks) -> Self {
        Self { records, blocks }
    }

    /// Puts `did`'s record `writes` in `batch`.
    pub(super) fn stage(&self, batch: &mut fjall::OwnedWriteBatch, did: &str, writes: &[RecordWrite]) {
        for write in writes {
            match write {
                RecordWrite::Put { collection, rkey, cid, body, .. } => {
                    batch.insert(&self.records, keys::record(did, collection, rkey), RecordRef::encode_parts(cid, body))
                }
                RecordWrite::Remove { collection, rkey } => {
                    batch.remove(&self.records, keys::record(did, collection, rkey))
                }
            }
        }
    }

    /// Up to `limit` stored records of `did` past the `records` key `after` (from its first
    /// without), in key order (collection, then rkey): ((collection, rkey), binary CID). Reads
    /// what it returns: paging on from the last key skips what the pages before removed.
    pub fn repo_page(&self, did: &str, after: Option<&[u8]>, limit: usize) -> Result<Vec<StoredRecord>> {
        let prefix = keys::record_prefix(did);
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after.to_vec()),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        let end = past_prefix(prefix);
        let mut out = Vec::with_capacity(limit.min(1024));
        for kv in self.records.range((start, std::ops::Bound::Excluded(end))).take(limit) {
            let (k, v) = kv.into_inner()?;
            let (_, collection, rkey) = keys::parse_record(&k)?;
            out.push(((collection.into(), rkey.into()), RecordRef::view(&v)?.cid.to_vec()));
        }
        Ok(out)
    }

    /// Every stored record of `did`: (collection, rkey) -> binary CID.
    pub fn of_repo(&self, did: &str) -> Result<RecordMap> {
        let mut out = RecordMap::default();
        for kv in self.records.prefix(keys::record_prefix(did)) {
            let (k, v) = kv.into_inner()?;
            let (_, collection, rkey) = keys::parse_record(&k)?;
            out.insert((collection.into(), rkey.into()), RecordRef::view(&v)?.cid.to_vec());
        }
        Ok(out)
    }

    /// The stored CID of one record.
    pub fn cid(&self, did: &str, collection: &str, rkey: &str) -> Result<Option<Vec<u8>>> {
        match self.records.get(keys::record(did, collection, rkey))? {
            Some(v) => Ok(Some(RecordRef::view(&v)?.cid.to_vec())),
            None => Ok(None),
        }
    }

    /// One stored record: its CID and body (`None` only when a legacy store lost the body).
    pub fn get(&self, did: &str, collection: &str, rkey: &str) -> Result<Option<RecordRef>> {
        match self.records.get(keys::record(did, collection, rkey))? {
            Some(v) => self.with_body(RecordRef::view(&v)?).map(Some),
            None => Ok(None),
        }
    }

    /// Reads up to `max_keys` records keys past the key `after` (from the start when it is
    /// empty), calling `each(did, rkey, cid, body)` on those of `collection`; returns the last key
    /// read, or `None` when the scan reached the end. What an index build reads, a batch at a
    /// time. Past [`SEEK_AFTER`] records of other collections in a row it seeks instead of reading
    /// on: to `collection` when the last one read is ordered before it, to the next repo when
    /// after it. (A seek opens a new range over every table: seeking at every repo made a
    /// build over many small repos ten times slower than reading them all.)
    pub(super) fn scan_collection(
        &self,
        after: &[u8],
        max_keys: usize,
        collection: &str,
        mut each: impl FnMut(&str, &str, &[u8], &[u8]) -> Result<()>,
    ) -> Result<Option<Vec<u8>>> {
        let mut from: Bound<Vec<u8>> = if after.is_empty() { Bound::Unbounded } else { Excluded(after.to_vec()) };
        let (mut last, mut read, mut passed) = (None, 0, 0);
        'seek: loop {
            for kv in self.records.range((from.clone(), Bound::Unbounded)) {
                if read == max_keys {
                    return Ok(last.map(|k: fjall::Slice| k.to_vec()));
                }
                let (k, v) = kv.into_inner()?;
                read += 1;
                let (did, coll, rkey) = keys::parse_record(&k)?;
                let order = coll.cmp(collection);
                if order == std::cmp::Ordering::Equal {
                    let view = RecordRef::view(&v)?;
                    match view.body {
                        Some(body) => each(did, rkey, view.cid, body)?,
                        None => {
                            if let Some(body) = self.blocks.body(view.cid)? {
                                each(did, rkey, view.cid, &body)?
                            }
                        }
                    }
                    passed = 0;
                } else {
                    passed += 1;
                }
                let seek_from = (passed >= SEEK_AFTER).then(|| match order {
                    std::cmp::Ordering::Less => keys::record_collection_prefix(did, collection),
                    _ => past_prefix(keys::record_prefix(did)),
                });
                last = Some(k);
                if let Some(to) = seek_from {
                    from = Included(to);
                    passed = 0;
                    continue 'seek;
                }
            }
            return Ok(None);
        }
    }

    /// An owned record of a stored `records` value, its body read from `blocks` when the value
    /// predates bodies in `records`.
    fn with_body(&self, view: RecordRefView<'_>) -> Result<RecordRef> {
        let body = match view.body {
            Some(body) => Some(body.to_vec()),
            None => self.blocks.body(view.cid)?,
        };
        Ok(RecordRef { cid: view.cid.to_vec(), body })
    }

    /// Up to `limit` records of `did` in `collection` as (rkey, CID and body): rkeys descending
    /// (newest first for TIDs), or ascending when `ascending`; with `after`, only the rkeys past
    /// it in that order (below it descending, above it ascending). Any `after` string is
    /// accepted: it is only compared with the stored rkeys.
    pub fn page(
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
    pub fn collections(&self, did: &str) -> Result<Vec<String>> {
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
    pub fn count(&self, did: &str) -> Result<u64> {
        let mut n = 0;
        for kv in self.records.prefix(keys::record_prefix(did)) {
            kv.key()?;
            n += 1;
        }
        Ok(n)
    }

    /// Whether no record is stored at all: for integration tests that a refused input wrote
    /// nothing.
    #[doc(hidden)]
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.records.is_empty()?)
    }

    /// Writes a raw `records` value: for tests of values older builds wrote.
    #[cfg(test)]
    pub(super) fn insert_raw(&self, key: Vec<u8>, value: Vec<u8>) {
        self.records.insert(key, value).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RepoChange, Store};

    proptest::proptest! {
        /// `first_repeated_path` finds a repeat in writes in any order, and only a repeat; the
        /// path it names is one that is written twice.
        #[test]
        fn repeated_names_a_record_written_twice(
            paths in proptest::collection::vec((0u8..3, 0u8..6), 0..12),
            sorted in proptest::bool::ANY,
        ) {
            let collections = ["a.b", "a.b.c", "a.bc"];
            let mut writes: Vec<RecordWrite> = paths
                .iter()
                .map(|(c, r)| RecordWrite::Remove { collection: collections[*c as usize].into(), rkey: r.to_string().into() })
                .collect();
            if sorted {
                writes.sort_by(|a, b| a.path().cmp(&b.path()));
            }
            let mut counted = std::collections::HashMap::new();
            for w in &writes {
                *counted.entry(w.path()).or_insert(0) += 1;
            }
            match first_repeated_path(writes.iter().map(RecordWrite::path)) {
                Some(path) => {
                    let twice = counted.iter().filter(|(_, n)| **n > 1).map(|((c, r), _)| format!("{c}/{r}"));
                    proptest::prop_assert!(twice.collect::<Vec<_>>().contains(&path), "{path} is not repeated");
                }
                None => proptest::prop_assert!(counted.values().all(|n| *n == 1)),
            }
        }
    }

    fn put_in(collection: &str, rkey: &str, cid: Vec<u8>) -> RecordWrite {
        RecordWrite::Put {
            collection: collection.into(),
            rkey: rkey.into(),
            cid,
            body: bytes::Bytes::from_static(&[0xa0]),
            existed: false,
        }
    }

    fn store_with(records: &[(&str, &str, &str)]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (did, collection, rkey) in records {
            let put = put_in(collection, rkey, rkey.as_bytes().to_vec());
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
        let records = store.records();
        let rkeys = |after, limit, asc| -> Vec<String> {
            records.page("did:a", "a.b.c", after, limit, asc).unwrap().into_iter().map(|(r, _)| r).collect()
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
            records.page("did:a", "a.b.c", None, 1, true).unwrap()[0].1,
            RecordRef { cid: b"1".to_vec(), body: Some(vec![0xa0]) }
        );
        assert_eq!(records.collections("did:a").unwrap(), ["a.b", "a.b.c", "a.b.cd"]);
        assert_eq!(records.collections("did:none").unwrap(), Vec::<String>::new());
        assert_eq!(records.count("did:a").unwrap(), 5);
    }

    /// A repo's pages, each past the last key of the one before, give its records once each,
    /// in (collection, rkey) order, and none of a repo whose DID it prefixes.
    #[test]
    fn repo_pages_give_a_repos_records_once_in_key_order() {
        let recs = [
            ("did:a", "a.b.c", "1"),
            ("did:a", "a.b.c", "2"),
            ("did:a", "a.b.cd", "0"),
            ("did:a", "a.b", "9"),
            ("did:ab", "a.b.c", "5"),
        ];
        let (_dir, store) = store_with(&recs);
        let records = store.records();
        let (mut all, mut after) = (Vec::new(), None);
        loop {
            let page = records.repo_page("did:a", after.as_deref(), 2).unwrap();
            assert!(page.len() <= 2);
            let Some(((c, r), _)) = page.last() else { break };
            after = Some(keys::record("did:a", c, r));
            all.extend(page.into_iter().map(|((c, r), cid)| (c.to_string(), r.to_string(), cid)));
        }
        let want = [("a.b", "9"), ("a.b.c", "1"), ("a.b.c", "2"), ("a.b.cd", "0")]
            .map(|(c, r)| (c.to_string(), r.to_string(), r.as_bytes().to_vec()));
        assert_eq!(all, want);
        assert!(records.repo_page("did:none", None, 10).unwrap().is_empty());
    }

    #[test]
    fn records_of_older_stores_read_their_bodies_from_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (cid, body) = (vec![1, 113, 18, 32, 7], vec![0xa1, 0x61, 0x61, 0x01]);
        // A version 1 `records` value holds only the CID; the body sits in `blocks`.
        let mut v1 = vec![1];
        postcard::to_io(&serde_bytes::Bytes::new(&cid), &mut v1).unwrap();
        let records = store.records();
        records.insert_raw(keys::record("did:plc:a", "a.b.c", "old"), v1);
        records.blocks.insert(&cid, &body);
        store
            .commit(RepoChange {
                did: "did:plc:a".into(),
                records: vec![put_in("a.b.c", "new", vec![2])],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            records.get("did:plc:a", "a.b.c", "old").unwrap(),
            Some(RecordRef { cid: cid.clone(), body: Some(body) })
        );
        assert_eq!(
            records.get("did:plc:a", "a.b.c", "new").unwrap(),
            Some(RecordRef { cid: vec![2], body: Some(vec![0xa0]) })
        );
        assert_eq!(records.get("did:plc:a", "a.b.c", "none").unwrap(), None);
        assert_eq!(records.blocks.len(), 1, "new records write no block");
        assert_eq!(records.of_repo("did:plc:a").unwrap().len(), 2);
        assert_eq!(records.cid("did:plc:a", "a.b.c", "old").unwrap(), Some(cid));
    }
}
