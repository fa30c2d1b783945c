//! DAG-CBOR to AT Protocol JSON as one pass: the CBOR is decoded (by `serde_ipld_dagcbor`)
//! straight into the JSON serializer, with no value tree between them. The event stream
//! writes every record body this way; [`crate::value::cbor_to_json`] stays the reference,
//! and the tests hold the two to the same JSON.
//!
//! Differences from the reference, none of which changes the JSON value: map keys come in
//! the CBOR's order (DAG-CBOR's canonical order) rather than sorted.

use std::cell::RefCell;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, DeserializeSeed, Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Error as _, SerializeMap, SerializeSeq, Serializer};

use crate::rules::{FLOATS, MapKeys, NOT_A_CID_V1, map_key_problem, nested, over_size_limit};

/// DAG-CBOR bytes that serialize as AT Protocol JSON (`$link` for CIDs, `$bytes` for bytes).
/// Serializing fails on what the data model refuses (floats, non-string keys, tags other than
/// CIDs, trailing bytes), possibly after part of the output is written: serialize it into a
/// buffer of its own (as [`crate::value::write_cbor_json`] does) when a failure must leave
/// nothing behind.
pub struct Transcode<'a>(pub &'a [u8]);

impl ser::Serialize for Transcode<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(problem) = over_size_limit(self.0) {
            return Err(S::Error::custom(problem));
        }
        FIRST_ERROR.with_borrow_mut(|first| *first = None);
        let mut de = serde_ipld_dagcbor::de::Deserializer::from_slice(self.0);
        let out = (&mut de).deserialize_any(Forward(s, 0)).and_then(|out| de.end().map(|()| out));
        out.map_err(|e| S::Error::custom(FIRST_ERROR.take().unwrap_or_else(|| e.to_string())))
    }
}

thread_local! {
    /// The first error of the value being transcoded. An error deep in nested values goes up
    /// through the deserializer's and the serializer's error types in turn, and
    /// `serde_ipld_dagcbor` shows its errors in Debug form: wrapped again at every level, the
    /// message would be escaped again each time, its backslashes doubling, 2^depth bytes (a
    /// fuzz finding). So the first message is kept here, the levels above pass a short marker,
    /// and [`Transcode`] reports the first.
    static FIRST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// What the levels above the first error pass up.
const SEE_FIRST_ERROR: &str = "(an error inside this value)";

/// `e` as the serializer's error, its text kept in [`FIRST_ERROR`] if it is the first.
fn up_ser<E: ser::Error>(e: impl fmt::Display) -> E {
    E::custom(keep_first(e))
}

/// `e` as the deserializer's error, its text kept in [`FIRST_ERROR`] if it is the first.
fn up_de<E: de::Error>(e: impl fmt::Display) -> E {
    E::custom(keep_first(e))
}

fn keep_first(e: impl fmt::Display) -> &'static str {
    FIRST_ERROR.with_borrow_mut(|first| {
        if first.is_none() {
            *first = Some(e.to_string());
        }
    });
    SEE_FIRST_ERROR
}

/// The body as a ready JSON value to embed in a larger serialized structure, or `None` when it
/// does not decode.
pub fn raw_json(bytes: &[u8]) -> Option<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(&Transcode(bytes)).ok()
}

/// A visitor that serializes whatever it is shown, a value held in `.1` maps and arrays
/// (which may nest [`crate::rules::MAX_NESTING`] deep).
struct Forward<S>(S, usize);

/// One value still to be read from `D`, held in `.1` maps and arrays, serialized as it is read.
struct Pending<D>(RefCell<Option<D>>, usize);

impl<'de, D: de::Deserializer<'de>> ser::Serialize for Pending<D> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let de = self.0.borrow_mut().take().ok_or_else(|| S::Error::custom("a value serialized twice"))?;
        de.deserialize_any(Forward(s, self.1)).map_err(up_ser)
    }
}

fn pending<D>(de: D, depth: usize) -> Pending<D> {
    Pending(RefCell::new(Some(de)), depth)
}

/// Serializes the next element of a sequence held in `.1` maps and arrays (the sequence
/// counted).
struct Element<'a, S>(&'a mut S, usize);

impl<'de, S: SerializeSeq> DeserializeSeed<'de> for Element<'_, S> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        self.0.serialize_element(&pending(de, self.1)).map_err(up_de)
    }
}

/// Serializes the next key of a map, which must be a string, neither reserved nor one the
/// map already had (`seen`).
struct Key<'a, 'de, S>(&'a mut S, &'a mut MapKeys<'de>);

impl<'de, S: SerializeMap> DeserializeSeed<'de> for Key<'_, 'de, S> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        let (out, seen) = (self.0, self.1);
        let key = <std::borrow::Cow<'de, str> as de::Deserialize>::deserialize(de)?;
        if let Some(problem) = map_key_problem(seen, &key) {
            return Err(de::Error::custom(problem));
        }
        out.serialize_key(&*key).map_err(up_de)?;
        seen.push(key);
        Ok(())
    }
}

/// Serializes the value of the key just serialized, held in `.1` maps and arrays (the map
/// counted).
struct Value<'a, S>(&'a mut S, usize);

impl<'de, S: SerializeMap> DeserializeSeed<'de> for Value<'_, S> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        self.0.serialize_value(&pending(de, self.1)).map_err(up_de)
    }
}

/// Reads what `serde_ipld_dagcbor` hands over for tag 42: a CID's bytes, as its string form;
/// bytes that are not a CID stay bytes, as the reference (jacquard's data model) reads them,
/// and a CID of another version than 1 is refused, as the reference refuses it.
struct CidText;

/// What a tag 42 held.
enum Tagged {
    Link(String),
    NotACid(Vec<u8>),
}

impl<'de> Visitor<'de> for CidText {
    type Value = Tagged;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the bytes of a CID")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Tagged, E> {
        match jacquard_common::types::cid::IpldCid::try_from(v) {
            Ok(cid) if u64::from(cid.version()) == 1 => Ok(Tagged::Link(cid.to_string())),
            Ok(_) => Err(E::custom(NOT_A_CID_V1)),
            Err(_) => Ok(Tagged::NotACid(v.to_vec())),
        }
    }
}

fn one_entry<S: Serializer>(s: S, key: &str, value: &str) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(1))?;
    map.serialize_entry(key, value)?;
    map.end()
}

impl<'de, S: Serializer> Visitor<'de> for Forward<S> {
    type Value = S::Ok;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value of the AT Protocol data model")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<S::Ok, E> {
        self.0.serialize_bool(v).map_err(up_de)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<S::Ok, E> {
        self.0.serialize_i64(v).map_err(up_de)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<S::Ok, E> {
        self.0.serialize_u64(v).map_err(up_de)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<S::Ok, E> {
        Err(E::custom(FLOATS))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<S::Ok, E> {
        self.0.serialize_str(v).map_err(up_de)
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<S::Ok, E> {
        one_entry(self.0, "$bytes", &base64::engine::general_purpose::STANDARD_NO_PAD.encode(v)).map_err(up_de)
    }
    fn visit_none<E: de::Error>(self) -> Result<S::Ok, E> {
        self.0.serialize_none().map_err(up_de)
    }
    fn visit_unit<E: de::Error>(self) -> Result<S::Ok, E> {
        self.0.serialize_unit().map_err(up_de)
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, de: D) -> Result<S::Ok, D::Error> {
        match de.deserialize_bytes(CidText)? {
            Tagged::Link(cid) => one_entry(self.0, "$link", &cid).map_err(up_de),
            Tagged::NotACid(bytes) => self.visit_bytes(&bytes),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<S::Ok, A::Error> {
        let depth = nested(self.1)?;
        let mut out = self.0.serialize_seq(seq.size_hint()).map_err(up_de)?;
        while seq.next_element_seed(Element(&mut out, depth))?.is_some() {}
        out.end().map_err(up_de)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<S::Ok, A::Error> {
        let depth = nested(self.1)?;
        let mut out = self.0.serialize_map(map.size_hint()).map_err(up_de)?;
        let mut seen = MapKeys::new();
        while map.next_key_seed(Key(&mut out, &mut seen))?.is_some() {
            map.next_value_seed(Value(&mut out, depth))?;
        }
        out.end().map_err(up_de)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{MAX_NESTING, MAX_VALUE_BYTES, cbor_to_json, json_to_cbor, write_cbor_json};
    use proptest::prelude::*;
    use serde_json::{Value as Json, json};

    fn transcoded(bytes: &[u8]) -> Option<Json> {
        let mut out = b"prefix".to_vec();
        let ok = write_cbor_json(bytes, &mut out).is_ok();
        let text = out.strip_prefix(b"prefix").expect("the output's start is kept");
        if !ok {
            assert!(text.is_empty(), "a failed transcode leaves nothing behind");
            return None;
        }
        Some(serde_json::from_slice(text).expect("the output is JSON"))
    }

    #[test]
    fn a_tag_42_that_holds_no_cid_reads_as_bytes_as_the_reference_does() {
        // A fuzz finding: tag 42 over `00 00 71 12 20 ...` (a CID's bytes with its version byte
        // flipped to 0). The transcoder refused it; the reference shows the bytes.
        let mut content = vec![0x00, 0x00, 0x71, 0x12, 0x20];
        content.extend([7u8; 32]);
        let mut cbor = vec![0xa1, 0x61, b'a', 0xd8, 0x2a, 0x58, content.len() as u8];
        cbor.extend(&content);
        let reference = cbor_to_json(&cbor).unwrap();
        assert!(reference["a"]["$bytes"].is_string(), "{reference}");
        assert_eq!(transcoded(&cbor), Some(reference));
    }

    #[test]
    fn a_cid_v0_link_is_refused_by_both_readers() {
        // A fuzz finding: tag 42 over a CIDv0 (a bare sha2-256 multihash). The transcoder wrote
        // its base58 form, the reference an empty string (jacquard formats links in base32,
        // which a CIDv0 has none of). The data model links only to CIDv1s: both refuse it.
        let mut v0 = vec![0x00, 0x12, 0x20];
        v0.extend([7u8; 32]);
        let mut cbor = vec![0xa1, 0x61, b'a', 0xd8, 0x2a, 0x58, v0.len() as u8];
        cbor.extend(&v0);
        assert_eq!(transcoded(&cbor), None);
        let err = cbor_to_json(&cbor).unwrap_err().to_string();
        assert!(err.contains("not a CIDv1"), "{err}");
    }

    #[test]
    fn a_map_with_a_key_reserved_for_links_or_bytes_is_refused_by_both_readers() {
        // A fuzz finding: {"$bytes": -7, "zzzzzz": ...}. jacquard's reader took the first key
        // for JSON's bytes form and misread the rest of the map; the transcoder wrote the map
        // out, as JSON that reads back as bytes. Both refuse such a map now, at any depth.
        for value in [json!({"$bytes": 1, "zzzzzz": 2}), json!({"$link": "x"}), json!({"a": [{"$bytes": "AAEC"}]})] {
            let cbor = serde_ipld_dagcbor::to_vec(&value).unwrap();
            assert_eq!(transcoded(&cbor), None, "{value}");
            let err = cbor_to_json(&cbor).unwrap_err().to_string();
            assert!(err.contains("reserved"), "{value}: {err}");
        }
    }

    #[test]
    fn a_map_with_a_key_twice_is_refused_by_both_readers() {
        // A fuzz finding: {"": <a bad value>, "": []}. jacquard's reader keeps the last value of
        // a key, so the bad one went unseen; the transcoder wrote both. DAG-CBOR allows a key
        // once: both refuse such a map.
        let cbor = [0xa2, 0x60, 0x01, 0x60, 0x80];
        assert_eq!(transcoded(&cbor), None);
        let err = cbor_to_json(&cbor).unwrap_err().to_string();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn links_bytes_and_nesting_read_as_the_reference_does() {
        let value = json!({
            "$type": "app.bsky.feed.post",
            "text": "hi \"there\"\n",
            "n": -5,
            "big": 9007199254740993u64,
            "ok": true,
            "none": null,
            "embed": {
                "images": [{
                    "image": {
                        "$type": "blob",
                        "ref": {"$link": "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"},
                        "mimeType": "image/png",
                        "size": 10
                    }
                }]
            },
            "data": {"$bytes": "AAEC"},
            "empty": {},
            "list": []
        });
        let cbor = json_to_cbor(&value).unwrap();
        assert_eq!(transcoded(&cbor), Some(value.clone()));
        assert_eq!(transcoded(&cbor), cbor_to_json(&cbor).ok());
    }

    #[test]
    fn what_the_data_model_refuses_is_refused() {
        let float = serde_ipld_dagcbor::to_vec(&std::collections::BTreeMap::from([("a", 1.5f64)])).unwrap();
        let int_key = serde_ipld_dagcbor::to_vec(&std::collections::BTreeMap::from([(1u8, 1u8)])).unwrap();
        let mut trailing = json_to_cbor(&json!({"a": 1})).unwrap();
        trailing.push(0);
        for bad in [float, int_key, trailing, vec![0xa1], vec![0xff], Vec::new()] {
            assert_eq!(transcoded(&bad), None, "{bad:?}");
            assert!(cbor_to_json(&bad).is_err(), "{bad:?}");
        }
        assert!(raw_json(&vec![0x60; MAX_VALUE_BYTES + 1]).is_none(), "over the size limit");
    }

    #[test]
    fn an_error_deep_in_nested_values_is_told_once_whatever_the_depth() {
        // A fuzz finding: each level of nesting passed the error below it up through both
        // serde error types, and serde_ipld_dagcbor shows its errors in Debug form, so every
        // level escaped the message again, doubling its backslashes: 2^depth bytes, a hang at
        // a few dozen levels (below the decoder's depth limit). Here, a float inside 20 and then 60
        // one-element arrays.
        for depth in [20, 60] {
            let mut cbor = vec![0x81; depth];
            cbor.extend([0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
            let mut out = Vec::new();
            let err = write_cbor_json(&cbor, &mut out).unwrap_err().to_string();
            assert!(
                err.contains("floats are not allowed") && err.len() < 200,
                "{} bytes: {}",
                err.len(),
                &err[..err.len().min(200)]
            );
            assert!(out.is_empty());
        }
    }

    #[test]
    fn bodies_nested_deeper_than_json_parsers_take_are_refused_by_both_readers() {
        // A fuzz finding: maps and arrays nested well over 128 deep. Both readers wrote them
        // out as valid JSON, which serde_json (as many clients' parsers) then refused. Both
        // readers, and the writer, take MAX_NESTING levels and refuse one more.
        let nested = |levels: usize| {
            let mut cbor = vec![0xa1, 0x61, b'a'];
            cbor.extend(vec![0x81; levels - 1]);
            cbor.push(0x01);
            cbor
        };
        let deepest = nested(MAX_NESTING);
        let json = cbor_to_json(&deepest).expect("MAX_NESTING levels are read");
        assert_eq!(transcoded(&deepest), Some(json.clone()));
        assert_eq!(json_to_cbor(&json).unwrap(), deepest, "and written");
        let event = json!({"id": 1, "record": {"record": json}});
        assert!(
            serde_json::from_str::<Json>(&event.to_string()).is_ok(),
            "inside an event, a JSON parser still takes it"
        );

        for levels in [MAX_NESTING + 1, 200, 100_000] {
            let too_deep = nested(levels);
            assert_eq!(transcoded(&too_deep), None, "{levels} levels");
            let err = cbor_to_json(&too_deep).unwrap_err().to_string();
            assert!(err.contains("more than 64 levels"), "{levels} levels: {err}");
        }
        let mut too_deep = json!(1);
        for _ in 0..MAX_NESTING {
            too_deep = json!([too_deep]);
        }
        let err = json_to_cbor(&json!({"a": too_deep})).unwrap_err().to_string();
        assert!(err.contains("nested more than 64 levels"), "{err}");
    }

    fn data_model() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
            any::<u64>().prop_map(Json::from),
            ".{0,12}".prop_map(Json::from),
            prop::collection::vec(any::<u8>(), 0..12)
                .prop_map(|b| json!({"$bytes": base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)})),
            Just(json!({"$link": "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"})),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Json::from),
                prop::collection::btree_map("[a-zA-Z$]{0,8}", inner, 0..6)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Whether `value` holds an integer over the data model's 64-bit signed range.
    fn has_big_integer(value: &Json) -> bool {
        match value {
            Json::Number(n) => n.as_i64().is_none(),
            Json::Object(map) => map.values().any(has_big_integer),
            Json::Array(items) => items.iter().any(has_big_integer),
            _ => false,
        }
    }

    /// Whether any object in `value` has a key starting with `$` (a `$link` or `$bytes` that
    /// may not be one).
    fn has_dollar_key(value: &Json) -> bool {
        match value {
            Json::Object(map) => map.iter().any(|(k, v)| k.starts_with('$') || has_dollar_key(v)),
            Json::Array(items) => items.iter().any(has_dollar_key),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn any_data_model_value_transcodes_to_the_reference_json(value in data_model()) {
            let top = json!({"v": value});
            match json_to_cbor(&top) {
                Ok(_) if has_big_integer(&top) => prop_assert!(false, "an integer over i64 was taken"),
                Ok(cbor) => {
                    prop_assert_eq!(transcoded(&cbor), cbor_to_json(&cbor).ok());
                    prop_assert_eq!(transcoded(&cbor), Some(top));
                }
                // The generator also makes what the data model has no room for: integers over
                // i64, and `$`-keys that may not be a `$link` or `$bytes`. Only those are refused.
                Err(e) => prop_assert!(
                    has_big_integer(&top) || has_dollar_key(&top),
                    "a data model value refused: {}",
                    e
                ),
            }
        }

        #[test]
        fn arbitrary_bytes_are_refused_or_read_as_the_reference_reads_them(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            crate::value::fuzz_cbor_json(&bytes);
        }
    }
}
