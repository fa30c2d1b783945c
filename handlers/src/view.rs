//! What a handler sees of a record: identity, position in the repo, bytes and a lazy value.

use std::cell::OnceCell;

use serde::Deserialize;

use crate::HandlerError;

/// The stored version of a record that is being replaced or deleted.
#[derive(Debug, Clone, Copy)]
pub struct PreviousRecord<'a> {
    /// CID of the old version, as a string.
    pub cid: &'a str,
    /// Its DAG-CBOR bytes.
    pub bytes: &'a [u8],
}

impl<'a> PreviousRecord<'a> {
    /// Decodes the old version into a typed struct, which may borrow its strings.
    pub fn decode<T: Deserialize<'a>>(&self) -> Result<T, HandlerError> {
        decode_cbor(self.bytes)
    }
}

/// A created or updated record.
pub struct RecordView<'a> {
    /// Repository DID.
    pub did: &'a str,
    /// Collection NSID.
    pub collection: &'a str,
    /// Record key.
    pub rkey: &'a str,
    /// CID of the record; [`RecordView::cid`] formats it on first use (few handlers want it,
    /// and formatting every record's CID showed in profiles).
    cid: &'a dyn std::fmt::Display,
    cid_text: OnceCell<String>,
    /// Revision of the commit that holds it.
    pub rev: &'a str,
    /// True on live (firehose) commits, false in backfill walks.
    pub live: bool,
    /// The raw DAG-CBOR bytes.
    pub bytes: &'a [u8],
    /// The version this one replaces, on updates.
    pub previous: Option<PreviousRecord<'a>>,
    value: OnceCell<Result<serde_json::Value, String>>,
}

impl<'a> RecordView<'a> {
    /// A view over one record; `previous` is set on updates.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        did: &'a str,
        collection: &'a str,
        rkey: &'a str,
        cid: &'a dyn std::fmt::Display,
        rev: &'a str,
        live: bool,
        bytes: &'a [u8],
        previous: Option<PreviousRecord<'a>>,
    ) -> Self {
        Self {
            did,
            collection,
            rkey,
            cid,
            cid_text: OnceCell::new(),
            rev,
            live,
            bytes,
            previous,
            value: OnceCell::new(),
        }
    }

    /// The record's CID as a string.
    pub fn cid(&self) -> &str {
        self.cid_text.get_or_init(|| self.cid.to_string())
    }

    /// The record as AT Protocol JSON (`$link`, `$bytes`), decoded on first use.
    pub fn value(&self) -> Result<&serde_json::Value, HandlerError> {
        self.value
            .get_or_init(|| crate::value::cbor_to_json(self.bytes).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| HandlerError::Decode(e.clone()))
    }

    /// Decodes the record straight from DAG-CBOR into a typed struct (faster than `value`).
    /// The struct may borrow its strings from the record (`&'a str`, or `Cow<'a, str>` with
    /// `#[serde(borrow)]`) instead of allocating them.
    pub fn decode<T: Deserialize<'a>>(&self) -> Result<T, HandlerError> {
        decode_cbor(self.bytes)
    }

    /// `at://did/collection/rkey`.
    pub fn uri(&self) -> String {
        format!("at://{}/{}/{}", self.did, self.collection, self.rkey)
    }
}

/// A deleted record.
#[derive(Debug, Clone, Copy)]
pub struct RecordKeyView<'a> {
    /// Repository DID.
    pub did: &'a str,
    /// Collection NSID.
    pub collection: &'a str,
    /// Record key.
    pub rkey: &'a str,
    /// Revision of the commit that deleted it.
    pub rev: &'a str,
    /// True on live commits.
    pub live: bool,
    /// The deleted version, when sluice had stored it.
    pub previous: Option<PreviousRecord<'a>>,
}

impl RecordKeyView<'_> {
    /// `at://did/collection/rkey`.
    pub fn uri(&self) -> String {
        format!("at://{}/{}/{}", self.did, self.collection, self.rkey)
    }
}

fn decode_cbor<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, HandlerError> {
    serde_ipld_dagcbor::from_slice(bytes).map_err(|e| HandlerError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cid_is_formatted_once_on_first_use() {
        struct Counted(std::cell::Cell<u32>);
        impl std::fmt::Display for Counted {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.set(self.0.get() + 1);
                f.write_str("bafyreitest")
            }
        }
        let cid = Counted(std::cell::Cell::new(0));
        let rec = RecordView::new("did:plc:a", "app.bsky.feed.post", "3k", &cid, "3krev", false, &[], None);
        assert_eq!(cid.0.get(), 0, "nothing is formatted until a handler asks");
        assert_eq!(rec.cid(), "bafyreitest");
        assert_eq!(rec.cid(), "bafyreitest");
        assert_eq!(cid.0.get(), 1);
    }
}
