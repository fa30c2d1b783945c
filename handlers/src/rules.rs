//! The AT Protocol data model's rules that both DAG-CBOR readers apply: [`crate::value`], the
//! reference, and [`crate::transcode`], the one-pass writer the event stream uses. Kept apart so
//! that the two readers share them without naming each other in a circle, and so that a rule
//! changed here changes for both.

/// Upper bound on a value's size, in bytes, before any decoding is attempted (1 MiB: the
/// protocol's record limit).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Why `bytes` is refused before any decoding: over [`MAX_VALUE_BYTES`].
pub(crate) fn over_size_limit(bytes: &[u8]) -> Option<String> {
    (bytes.len() > MAX_VALUE_BYTES).then(|| format!("{} bytes is over the {MAX_VALUE_BYTES}-byte limit", bytes.len()))
}

/// Why a float is refused: the data model has none.
pub(crate) const FLOATS: &str = "floats are not allowed";

/// How deep maps and arrays may nest in a record body, the body's own map being the first
/// level. The protocol's data-validation guide calls 32 a reasonable limit; this is twice
/// that, and leaves room for the envelopes sluice puts around a body (events, XRPC
/// responses) under the 128 levels that serde_json and many other JSON parsers take. Deeper
/// bodies were a fuzz finding: both readers wrote them as valid JSON that a client's parser
/// would then refuse. Both readers, and [`crate::value::json_to_cbor`], refuse them.
pub const MAX_NESTING: usize = 64;

/// Why a body nested deeper than [`MAX_NESTING`] is refused.
pub(crate) const TOO_DEEP: &str = "maps and arrays nested more than 64 levels deep";
const _: () = assert!(MAX_NESTING == 64, "TOO_DEEP names the limit");

/// The nesting level of a container inside one at `depth` (0 for the top), or the
/// error when it is deeper than [`MAX_NESTING`].
pub(crate) fn nested<E: serde::de::Error>(depth: usize) -> Result<usize, E> {
    if depth < MAX_NESTING { Ok(depth + 1) } else { Err(E::custom(TOO_DEEP)) }
}

/// The keys a map has had so far, for [`map_key_problem`]; records' maps have a handful, kept
/// without allocating.
pub(crate) type MapKeys<'de> = smallvec::SmallVec<[std::borrow::Cow<'de, str>; 8]>;

/// Why a map's next `key` is refused, given the keys it had before it (`seen`), if it is:
/// - `$link` and `$bytes`: AT Protocol JSON spells links and bytes with those keys, so such a
///   map could not be told from one when shown as JSON (a fuzz finding: jacquard misread one,
///   the transcoder did not);
/// - a key twice: DAG-CBOR allows each key once, and jacquard's reader kept only the last
///   value, so the first went unchecked (a fuzz finding).
///
/// Both readers check every key with it.
pub(crate) fn map_key_problem(seen: &MapKeys<'_>, key: &str) -> Option<&'static str> {
    if key == "$link" || key == "$bytes" {
        Some("a map key reserved for links and bytes ($link, $bytes)")
    } else if seen.iter().any(|k| k == key) {
        Some("a map with the same key twice")
    } else {
        None
    }
}

/// Why a link that parses as a CID, but not a version 1 one, is refused: the data model links
/// only to CIDv1s, and jacquard shows a CIDv0 as an empty string (a fuzz finding).
pub(crate) const NOT_A_CID_V1: &str = "a link that is not a CIDv1";
