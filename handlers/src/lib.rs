//! Collection handlers for sluice: the [`CollectionHandler`] trait, the `inventory` registry,
//! the shared DAG-CBOR/JSON value codec and the built-in handlers.
//!
//! A handler sees every stored record of the collections it names (NSID patterns, exact or a
//! trailing `.*`), during backfill walks and on live commits alike, and can
//! - emit a JSON value that rides along in the record's event under `handled.<name>`,
//! - drop the record (it is then neither stored nor emitted) or replace the emitted value,
//! - write index entries into its own keyspace, in the same atomic batch as the record.
//!
//! To add one, write a new file in `src/handlers/` that implements the trait and calls
//! [`register_handler!`]; nothing else needs an edit (the build script declares the module,
//! `inventory` registers the handler). `sluice handlers` lists what is registered. Users
//! embedding sluice can do the same from their own crate: registration is link-time.
//!
//! Architecture invariant: this crate knows nothing of fjall, networking or the filter file; it
//! sees records, settings and an output buffer.

mod output;
mod registry;
pub mod rules;
pub mod testing;
pub mod transcode;
pub mod value;
mod view;

// One module per file of `src/handlers/` (post, backlinks, profile, ...), declared by build.rs.
include!(concat!(env!("OUT_DIR"), "/handler_modules.rs"));

pub use output::{Emit, HandlerOutput, IndexWrite};
pub use registry::{HandlerRegistration, HandlerSettings, find, registered};
pub use view::{PreviousRecord, RecordKeyView, RecordView};

/// A failure inside a handler. The pipeline logs and counts it; the record is still stored.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The record's bytes did not decode into what the handler expects.
    #[error("record does not decode: {0}")]
    Decode(String),
    /// The handler's settings (the filter's `[handlers.<name>]` table) are invalid.
    #[error("invalid settings: {0}")]
    Settings(String),
    /// Anything else the handler wants to report.
    #[error("{0}")]
    Other(String),
}

/// A transformation run on the records of the collections it names.
///
/// Implementations must be deterministic (the same record gives the same output), must not
/// panic (a panic is caught, logged and counted, but costs the record its handler output) and
/// write only through [`HandlerOutput`], which scopes writes to the handler's own keyspace.
/// [`testing::check_contract`] checks these rules for a handler.
pub trait CollectionHandler: Send + Sync + 'static {
    /// Stable name: the key under `handled` in events, the `[handlers.<name>]` table in the
    /// filter, and the handler's keyspace. Lowercase letters, digits and `-`.
    fn name(&self) -> &'static str;

    /// NSID patterns (exact, or a trailing `.*` over whole segments) this handler wants.
    fn collections(&self) -> &'static [&'static str];

    /// Whether the handler runs when the filter does not mention it. Defaults to on.
    fn enabled_by_default(&self) -> bool {
        true
    }

    /// Checks and takes the handler's settings from the filter's `[handlers.<name>]` table.
    /// Called on every filter (re)load, before the filter is swapped in; an error refuses it.
    fn configure(&self, _settings: &HandlerSettings) -> Result<(), HandlerError> {
        Ok(())
    }

    /// A record was created or updated (`rec.previous` holds the old version on update).
    fn on_record(
        &self,
        rec: &RecordView<'_>,
        settings: &HandlerSettings,
        out: &mut HandlerOutput,
    ) -> Result<(), HandlerError>;

    /// A record was deleted (`key.previous` holds the deleted version when sluice had it).
    fn on_delete(
        &self,
        _key: &RecordKeyView<'_>,
        _settings: &HandlerSettings,
        _out: &mut HandlerOutput,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Registers a handler value (a `static` or a const expression) with the global registry.
///
/// ```
/// use sluice_handlers::{CollectionHandler, HandlerError, HandlerOutput, HandlerSettings, RecordView};
///
/// pub struct Statuses;
///
/// impl CollectionHandler for Statuses {
///     fn name(&self) -> &'static str { "statuses" }
///     fn collections(&self) -> &'static [&'static str] { &["xyz.statusphere.*"] }
///     fn on_record(
///         &self,
///         rec: &RecordView<'_>,
///         _: &HandlerSettings,
///         out: &mut HandlerOutput,
///     ) -> Result<(), HandlerError> {
///         out.emit(serde_json::json!({ "uri": rec.uri() }))
///     }
/// }
///
/// sluice_handlers::register_handler!(Statuses);
/// assert!(sluice_handlers::find("statuses").is_some());
/// ```
#[macro_export]
macro_rules! register_handler {
    ($handler:expr) => {
        $crate::inventory::submit! {
            $crate::HandlerRegistration { handler: &$handler }
        }
    };
}

#[doc(hidden)]
pub use inventory;

/// Whether `nsid` matches `pattern`: equal, or `pattern` is `prefix.*` and `nsid` starts with
/// `prefix.` (whole segments only: `app.bsky.*` matches `app.bsky.feed.post`, not `app.bskyx.a`).
/// `*` alone matches everything. Patterns are validated where they are read (the filter file).
pub fn nsid_matches(pattern: &str, nsid: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => {
            nsid.len() > prefix.len() + 1 && nsid.starts_with(prefix) && nsid.as_bytes()[prefix.len()] == b'.'
        }
        None => pattern == nsid,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::nsid_matches;

    /// NSID segments over a tiny alphabet, so that prefixes and lookalikes are common.
    fn segments() -> impl Strategy<Value = Vec<&'static str>> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", "ba"]), 3..6)
    }

    proptest! {
        /// `prefix.*` matches exactly the NSIDs that start with all of the prefix's segments
        /// and have more; a pattern without `*` matches only itself.
        #[test]
        fn patterns_match_whole_segments_only(pattern in segments(), keep in 1usize..5, nsid in segments()) {
            let text = nsid.join(".");
            let prefix = &pattern[..keep.min(pattern.len() - 1)];
            let starts_with_prefix = nsid.len() > prefix.len() && nsid[..prefix.len()] == *prefix;
            prop_assert_eq!(nsid_matches(&format!("{}.*", prefix.join(".")), &text), starts_with_prefix);
            prop_assert_eq!(nsid_matches(&pattern.join("."), &text), pattern == nsid);
            prop_assert!(nsid_matches("*", &text));
        }
    }

    #[test]
    fn pattern_matching_is_by_whole_segment() {
        assert!(nsid_matches("app.bsky.*", "app.bsky.feed.post"));
        assert!(!nsid_matches("app.bsky.*", "app.bskyx.feed"));
        assert!(!nsid_matches("app.bsky.*", "app.bsky"));
        assert!(nsid_matches("app.bsky.feed.post", "app.bsky.feed.post"));
        assert!(!nsid_matches("app.bsky.feed.post", "app.bsky.feed.postx"));
        assert!(nsid_matches("*", "a.b.c"));
    }
}
