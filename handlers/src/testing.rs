//! The handler contract harness: every handler's tests (and sluice's) call [`check_contract`].
//!
//! The contract: a handler never panics, is deterministic (same record, same output), writes only
//! non-empty keys into its own keyspace, names valid collection patterns, and its `on_delete`
//! tolerates a record it never saw.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::{CollectionHandler, HandlerError, HandlerOutput, HandlerSettings, RecordKeyView, RecordView};

/// Encodes AT Protocol JSON as DAG-CBOR (for tests). Panics on invalid JSON.
pub fn cbor(json: &serde_json::Value) -> Vec<u8> {
    crate::value::json_to_cbor(json).expect("test record encodes")
}

/// Runs `on_record` on one record of `collection` (rkey `3kabc`) with fixed identity fields.
pub fn run_record(
    handler: &dyn CollectionHandler,
    collection: &str,
    bytes: &[u8],
    settings: &HandlerSettings,
) -> Result<HandlerOutput, HandlerError> {
    run_record_at(handler, collection, "3kabc", bytes, settings)
}

/// Runs `on_record` on one record at `collection/rkey` with fixed identity fields.
pub fn run_record_at(
    handler: &dyn CollectionHandler,
    collection: &str,
    rkey: &str,
    bytes: &[u8],
    settings: &HandlerSettings,
) -> Result<HandlerOutput, HandlerError> {
    let rec = RecordView::new("did:plc:test", collection, rkey, &"bafytest", "3kabcrev", false, bytes, None);
    let mut out = HandlerOutput::new();
    handler.on_record(&rec, settings, &mut out).map(|()| out)
}

/// Checks the contract for `handler` over sample records `(collection, bytes)`; returns the
/// first breach as a message.
pub fn check_contract(handler: &dyn CollectionHandler, samples: &[(&str, Vec<u8>)]) -> Result<(), String> {
    let name = handler.name();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(format!("handler name {name:?} must be lowercase letters, digits and '-'"));
    }
    for pattern in handler.collections() {
        if pattern.is_empty()
            || pattern.contains(char::is_whitespace)
            || (pattern.contains('*') && !pattern.ends_with(".*") && *pattern != "*")
        {
            return Err(format!("{name}: collection pattern {pattern:?} is not an NSID or `prefix.*`"));
        }
    }
    let settings = HandlerSettings::default();
    let garbage: &[&[u8]] = &[b"", b"\xff\xff", b"\xa1\x61a\x01"];
    for (collection, bytes) in
        samples.iter().map(|(c, b)| (*c, b.as_slice())).chain(garbage.iter().map(|g| ("x.y.z", *g)))
    {
        let first = catch_unwind(AssertUnwindSafe(|| run_record(handler, collection, bytes, &settings)))
            .map_err(|_| format!("{name}: panicked on a {collection} record"))?;
        let second = catch_unwind(AssertUnwindSafe(|| run_record(handler, collection, bytes, &settings)))
            .map_err(|_| format!("{name}: panicked on a {collection} record"))?;
        match (&first, &second) {
            (Ok(a), Ok(b)) if a != b => return Err(format!("{name}: not deterministic on a {collection} record")),
            (Ok(a), _) if a.writes().iter().any(|w| w.key.is_empty()) => {
                return Err(format!("{name}: wrote an empty key"));
            }
            (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
                return Err(format!("{name}: not deterministic on a {collection} record"));
            }
            _ => {}
        }
    }
    let key =
        RecordKeyView { did: "did:plc:test", collection: "x.y.z", rkey: "r", rev: "r", live: false, previous: None };
    let mut out = HandlerOutput::new();
    catch_unwind(AssertUnwindSafe(|| handler.on_delete(&key, &settings, &mut out)))
        .map_err(|_| format!("{name}: on_delete panicked on an unknown record"))?
        .map_err(|e| format!("{name}: on_delete failed on an unknown record: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_registered_handler_keeps_the_contract() {
        let samples = vec![
            ("app.bsky.feed.post", cbor(&json!({"text": "hello", "createdAt": "2024-01-01T00:00:00Z"}))),
            (
                "app.bsky.feed.like",
                cbor(&json!({
                    "subject": {
                        "uri": "at://did:plc:a/app.bsky.feed.post/1",
                        "cid": "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"
                    },
                    "createdAt": "2024-01-01T00:00:00Z"
                })),
            ),
            ("app.bsky.graph.follow", cbor(&json!({"subject": "did:plc:b", "createdAt": "2024-01-01T00:00:00Z"}))),
            ("app.bsky.actor.profile", cbor(&json!({"displayName": "x"}))),
        ];
        let all = crate::registered();
        assert!(all.len() >= 3, "built-ins are registered");
        for h in all {
            check_contract(h, &samples).unwrap();
        }
    }

    #[test]
    fn every_file_in_src_handlers_registers_the_handler_it_is_named_after() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/handlers");
        for entry in std::fs::read_dir(dir).unwrap() {
            let stem = entry.unwrap().path().file_stem().unwrap().to_str().unwrap().replace('_', "-");
            assert!(crate::find(&stem).is_some(), "src/handlers/{stem}.rs registers no handler named {stem:?}");
        }
    }

    struct Panicky;
    impl CollectionHandler for Panicky {
        fn name(&self) -> &'static str {
            "panicky"
        }
        fn collections(&self) -> &'static [&'static str] {
            &["a.b.c"]
        }
        fn on_record(
            &self,
            _: &RecordView<'_>,
            _: &HandlerSettings,
            _: &mut HandlerOutput,
        ) -> Result<(), HandlerError> {
            panic!("boom")
        }
    }

    #[test]
    fn the_harness_catches_a_panicking_handler() {
        assert!(check_contract(&Panicky, &[]).unwrap_err().contains("panicked"));
    }
}
