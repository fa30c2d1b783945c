//! The AT Protocol data model's rules that both DAG-CBOR readers apply: [`crate::value`], the
//! reference, and [`crate::transcode`], the one-pass writer the event stream uses. Kept apart so
//! that the two readers share them without naming each other in a circle, and so that a rule
//! changed here changes for both.

/// Upper bound on a value's size, in bytes, before any decoding is attempted: the sync
/// spec's hard limit on one record block in a `#commit` ("one million bytes"), which the
/// reference PDS keeps its records under. A record over it is one no honest repo holds.
pub const MAX_VALUE_BYTES: usize = 1_000_000;

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
/// error when it is deeper than [`MAX_NESTING`]. Every reader of record bodies bounds its
/// recursion with this.
pub fn nested<E: serde::de::Error>(depth: usize) -> Result<usize, E> {
    if depth < MAX_NESTING { Ok(depth + 1) } else { Err(E::custom(TOO_DEEP)) }
}

/// The keys a map has had so far, for [`map_key_problem`]. Records' maps have a handful, kept
/// without allocating and looked through in turn; past [`FEW_KEYS`] they move to a hash set,
/// so that a hostile map of a few hundred thousand keys (a megabyte of them) costs one hash
/// each, not a look through all the others (a quadratic hang).
pub(crate) enum MapKeys<'de> {
    /// Up to [`FEW_KEYS`] keys, in a list.
    Few(smallvec::SmallVec<[std::borrow::Cow<'de, str>; 8]>),
    /// More, in a set (SipHash: keys chosen to collide cost no more).
    Many(std::collections::HashSet<std::borrow::Cow<'de, str>>),
}

/// How many keys [`MapKeys`] keeps in a list before it moves them to a set.
const FEW_KEYS: usize = 16;

impl<'de> MapKeys<'de> {
    /// No keys yet.
    pub(crate) fn new() -> Self {
        Self::Few(smallvec::SmallVec::new())
    }

    /// Whether the map has had `key`.
    fn contains(&self, key: &str) -> bool {
        match self {
            Self::Few(keys) => keys.iter().any(|k| k == key),
            Self::Many(keys) => keys.contains(key),
        }
    }

    /// Adds `key` (which [`map_key_problem`] found new).
    pub(crate) fn push(&mut self, key: std::borrow::Cow<'de, str>) {
        match self {
            Self::Few(keys) if keys.len() < FEW_KEYS => keys.push(key),
            Self::Few(keys) => {
                let mut set: std::collections::HashSet<_> = keys.drain(..).collect();
                set.insert(key);
                *self = Self::Many(set);
            }
            Self::Many(keys) => {
                keys.insert(key);
            }
        }
    }
}

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
    } else if seen.contains(key) {
        Some("a map with the same key twice")
    } else {
        None
    }
}

/// Why a link that parses as a CID, but not a version 1 one, is refused: the data model links
/// only to CIDv1s, and jacquard shows a CIDv0 as an empty string (a fuzz finding).
pub(crate) const NOT_A_CID_V1: &str = "a link that is not a CIDv1";

/// Why sluice refuses a record body: one of the rules above, which both readers apply, so that
/// neither could show it. See [`check_record`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordRefusal {
    /// The body has this many bytes, over [`MAX_VALUE_BYTES`].
    #[error("record of {0} bytes is over the {MAX_VALUE_BYTES}-byte limit")]
    TooLarge(usize),
    /// Maps and arrays nest deeper than [`MAX_NESTING`] levels.
    #[error("record nests maps and arrays more than {MAX_NESTING} levels deep")]
    TooDeep,
    /// The body is not DAG-CBOR of the AT Protocol data model (what the reader said of it:
    /// a float, a reserved or repeated key, a link that is not a CIDv1, bad CBOR, ...).
    #[error("record is not DAG-CBOR of the AT Protocol data model: {0}")]
    NotDagCbor(String),
}

impl RecordRefusal {
    /// Every [`RecordRefusal::reason`], in a fixed order (for metrics that show each).
    pub const REASONS: [&'static str; 3] = ["too_large", "too_deep", "not_dag_cbor"];

    /// The refusal's kind, one word for a metrics label: `too_large`, `too_deep` or
    /// `not_dag_cbor`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => Self::REASONS[0],
            Self::TooDeep => Self::REASONS[1],
            Self::NotDagCbor(_) => Self::REASONS[2],
        }
    }
}

/// Whether sluice's readers take `bytes` as a record body: `Ok` exactly when the transcoder
/// ([`crate::transcode`]) writes it as JSON, and so when the reference ([`crate::value`])
/// decodes it (the fuzz target `cbor_json` and the proptests below hold the three together).
///
/// Cheap enough for every stored record: one pass of the same DAG-CBOR decoder the readers
/// use, with a visitor that writes nothing and allocates nothing (strings and keys are borrowed
/// from `bytes`; a map's keys are kept on the stack up to 8, in a set past 16) except for the
/// message of a refusal.
pub fn check_record(bytes: &[u8]) -> Result<(), RecordRefusal> {
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(RecordRefusal::TooLarge(bytes.len()));
    }
    let too_deep = std::cell::Cell::new(false);
    let mut de = serde_ipld_dagcbor::de::Deserializer::from_slice(bytes);
    let checked = serde::de::DeserializeSeed::deserialize(Check { depth: 0, too_deep: &too_deep }, &mut de)
        .and_then(|()| de.end());
    match checked {
        Ok(()) => Ok(()),
        Err(serde_ipld_dagcbor::DecodeError::DepthLimit) => Err(RecordRefusal::TooDeep),
        Err(_) if too_deep.get() => Err(RecordRefusal::TooDeep),
        Err(e) => Err(RecordRefusal::NotDagCbor(cut(e.to_string()))),
    }
}

/// The most of a decoder's message a [`RecordRefusal`] keeps: the messages are short, but one
/// that quotes the record (serde's "invalid type" ones can) must stay one short log line.
const MAX_MESSAGE: usize = 200;

/// `message` cut to [`MAX_MESSAGE`] bytes (on a character boundary), with `...` when cut.
fn cut(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let end = (0..=MAX_MESSAGE).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// One value read and checked as the transcoder's visitor reads it, writing nothing: `depth`
/// maps and arrays hold it; `too_deep` is set when the refusal is the nesting limit.
///
/// It takes exactly what the transcoder's visitor takes: booleans, 64-bit integers, strings,
/// bytes, null, tag-42 links (a CIDv1, or bytes that are no CID), arrays, and maps with string
/// keys that are neither reserved nor repeated. Everything else (floats, integers beyond 64
/// bits, other tags) is refused, as there, by serde's defaults or the rules above.
struct Check<'c> {
    depth: usize,
    too_deep: &'c std::cell::Cell<bool>,
}

impl Check<'_> {
    /// The level of a container this value opens, or the nesting error (flagged).
    fn nested<E: serde::de::Error>(&self) -> Result<usize, E> {
        nested(self.depth).inspect_err(|_| self.too_deep.set(true))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Check<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Check<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a value of the AT Protocol data model")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FLOATS))
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_bytes(Link)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.nested()?;
        while seq.next_element_seed(Check { depth, too_deep: self.too_deep })?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let depth = self.nested()?;
        let mut seen = MapKeys::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if let Some(problem) = map_key_problem(&seen, &key) {
                return Err(serde::de::Error::custom(problem));
            }
            map.next_value_seed(Check { depth, too_deep: self.too_deep })?;
            seen.push(key);
        }
        Ok(())
    }
}

/// The content of a tag 42, as the transcoder reads it: a CIDv1 is a link, bytes that are no
/// CID are bytes, and a CID of another version is refused ([`NOT_A_CID_V1`]).
struct Link;

impl<'de> serde::de::Visitor<'de> for Link {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the bytes of a CID")
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<(), E> {
        match jacquard_common::types::cid::IpldCid::try_from(v) {
            Ok(cid) if u64::from(cid.version()) != 1 => Err(E::custom(NOT_A_CID_V1)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whether the transcoder writes `bytes` as JSON.
    fn transcodes(bytes: &[u8]) -> bool {
        crate::transcode::raw_json(bytes).is_some()
    }

    /// `{"a": [[...[1]...]]}`: a map holding arrays, `levels` containers in all.
    fn nested_arrays(levels: usize) -> Vec<u8> {
        let mut cbor = vec![0xa1, 0x61, b'a'];
        cbor.extend(vec![0x81; levels - 1]);
        cbor.push(0x01);
        cbor
    }

    /// `{"a": {"a": ... {"a": 1}}}`: `levels` maps.
    fn nested_maps(levels: usize) -> Vec<u8> {
        let mut cbor = [0xa1, 0x61, b'a'].repeat(levels);
        cbor.push(0x01);
        cbor
    }

    #[test]
    fn each_limit_is_refused_with_its_reason_and_names_the_limit() {
        let cases: [(Vec<u8>, &str, &str); 6] = [
            ([vec![0x5a, 0, 0x18, 0, 0], vec![0; 1_572_864]].concat(), "too_large", "1000000-byte limit"),
            (nested_arrays(100_000), "too_deep", "64 levels"),
            (nested_maps(10_000), "too_deep", "64 levels"),
            (nested_arrays(MAX_NESTING + 1), "too_deep", "64 levels"),
            (vec![0xa1, 0x61, b'a', 0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0], "not_dag_cbor", FLOATS),
            (vec![0xa1, 0x61], "not_dag_cbor", "data model"),
        ];
        for (bytes, reason, names) in cases {
            let refusal = check_record(&bytes).expect_err(reason);
            assert_eq!(refusal.reason(), reason, "{refusal}");
            assert!(refusal.to_string().contains(names), "{refusal} names {names}");
            assert!(!transcodes(&bytes), "the transcoder refuses it too: {refusal}");
        }
    }

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary() {
        assert_eq!(cut("short".into()), "short");
        let long = cut("é".repeat(MAX_MESSAGE));
        assert!(long.len() <= MAX_MESSAGE + 3 && long.ends_with("..."), "{long}");
    }

    #[test]
    fn records_at_the_limits_are_taken() {
        assert_eq!(check_record(&nested_arrays(MAX_NESTING)), Ok(()));
        assert_eq!(check_record(&nested_maps(MAX_NESTING)), Ok(()));
        // A string filling the size limit exactly (a 5-byte header, then the text).
        let mut exact = vec![0x7a];
        exact.extend(u32::try_from(MAX_VALUE_BYTES - 5).unwrap().to_be_bytes());
        exact.resize(MAX_VALUE_BYTES, b'x');
        assert_eq!(check_record(&exact), Ok(()));
        assert!(transcodes(&exact));
    }

    /// `{"k0": 0, "k1": 0, ...}` with `n` distinct keys, then `extra` (already counted in the
    /// map's length when given).
    fn wide_map(n: usize, extra: Option<&str>) -> Vec<u8> {
        let len = u32::try_from(n + usize::from(extra.is_some())).unwrap();
        let mut cbor = vec![0xba];
        cbor.extend(len.to_be_bytes());
        let mut key = |k: &str| {
            cbor.push(0x78);
            cbor.push(u8::try_from(k.len()).unwrap());
            cbor.extend(k.as_bytes());
            cbor.push(0x00);
        };
        (0..n).for_each(|i| key(&format!("k{i}")));
        extra.into_iter().for_each(key);
        cbor
    }

    #[test]
    fn a_map_of_many_keys_is_checked_in_linear_time_and_a_repeat_still_found() {
        // A hostile map: a megabyte of distinct keys. Looked up key by key in a list, that was
        // tens of billions of comparisons.
        let many = wide_map(100_000, None);
        assert!(many.len() <= MAX_VALUE_BYTES);
        let started = std::time::Instant::now();
        assert_eq!(check_record(&many), Ok(()));
        assert!(transcodes(&many));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        for repeated in ["k0", "k17", "k99999"] {
            let twice = wide_map(100_000, Some(repeated));
            let refusal = check_record(&twice).expect_err(repeated);
            assert!(refusal.to_string().contains("same key twice"), "{repeated}: {refusal}");
            assert!(!transcodes(&twice), "{repeated}");
        }
    }

    /// A rough cost of the rule per record against the transcoder's, on a typical post with an
    /// image embed (a blob link) and a facet: `cargo test -p sluice-handlers --lib
    /// the_rule_costs -- --ignored --nocapture` (the test profile, opt-level 1; a benchmark in
    /// release is the real measure).
    #[test]
    #[ignore = "a timing, run on demand"]
    fn the_rule_costs_a_fraction_of_a_transcode() {
        let post = serde_json::json!({
            "$type": "app.bsky.feed.post",
            "text": "a post of a typical length, with a link to https://example.com and a mention",
            "createdAt": "2024-11-01T12:00:00.000Z",
            "langs": ["en"],
            "facets": [{"index": {"byteStart": 40, "byteEnd": 59},
                        "features": [{"$type": "app.bsky.richtext.facet#link", "uri": "https://example.com"}]}],
            "embed": {"$type": "app.bsky.embed.images", "images": [{"alt": "", "image": {
                "$type": "blob", "mimeType": "image/jpeg", "size": 123456,
                "ref": {"$link": "bafkreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"}}}]}
        });
        let cbor = crate::value::json_to_cbor(&post).unwrap();
        let rounds = 200_000u32;
        let time = |f: &dyn Fn() -> bool| {
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                assert!(std::hint::black_box(f()));
            }
            started.elapsed() / rounds
        };
        let rule = time(&|| check_record(std::hint::black_box(&cbor)).is_ok());
        let transcode = time(&|| transcodes(std::hint::black_box(&cbor)));
        println!("{} bytes: the rule {rule:?} a record, the transcoder {transcode:?}", cbor.len());
        assert!(rule < transcode, "the rule writes nothing, so costs less than a transcode");
    }

    /// CBOR that is often DAG-CBOR: the bytes of a generated value with a few changed, cut or
    /// extended, so that the arbitrary inputs are not all refused at their first byte.
    fn near_records() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a$]{0,3}".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(6, 40, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a$]{0,3}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        let edits = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3);
        (value, edits, prop::collection::vec(any::<u8>(), 0..3)).prop_map(|(value, edits, tail)| {
            let mut cbor = serde_ipld_dagcbor::to_vec(&value).expect("JSON values encode");
            for (at, byte) in edits {
                let i = at.index(cbor.len());
                cbor[i] = byte;
            }
            cbor.extend(tail);
            cbor
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The rule is exactly what the transcoder takes, and so what the reference decodes.
        #[test]
        fn the_rule_takes_exactly_what_the_readers_take(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(check_record(&bytes).is_ok(), transcodes(&bytes));
            prop_assert_eq!(check_record(&bytes).is_ok(), crate::value::cbor_to_json(&bytes).is_ok());
        }

        /// The same over bytes that are near records, where most of the rules are met.
        #[test]
        fn the_rule_takes_exactly_what_the_readers_take_near_records(bytes in near_records()) {
            prop_assert_eq!(check_record(&bytes).is_ok(), transcodes(&bytes));
            prop_assert_eq!(check_record(&bytes).is_ok(), crate::value::cbor_to_json(&bytes).is_ok());
        }

        /// Nesting is refused as too deep from MAX_NESTING + 1 levels, whatever the mix of maps
        /// and arrays.
        #[test]
        fn nesting_is_too_deep_past_the_limit(kinds in prop::collection::vec(any::<bool>(), 1..200)) {
            let mut cbor = Vec::new();
            for &map in &kinds {
                cbor.extend_from_slice(if map { &[0xa1, 0x61, b'k'][..] } else { &[0x81][..] });
            }
            cbor.push(0x01);
            let checked = check_record(&cbor);
            prop_assert_eq!(checked.is_ok(), transcodes(&cbor));
            if kinds.len() > MAX_NESTING {
                prop_assert_eq!(checked, Err(RecordRefusal::TooDeep));
            } else {
                prop_assert_eq!(checked, Ok(()));
            }
        }
    }
}
