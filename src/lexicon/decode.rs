//! A record's DAG-CBOR read into jacquard's [`Data`] for its validators, every string kept as
//! it was written.
//!
//! jacquard's own `Deserialize` for `Data` guesses a type for each string from its field's name
//! and parses it to see (a datetime, a DID, an AT-URI, a handle, a language...), and for most
//! names tries them all in turn. Neither of jacquard's passes looks at what it guessed (they
//! check a string as a string), and [`super::extra`] checks each `format` the lexicon names
//! against the text: the guessing was a third of a check's time and told nothing. It also read
//! DAG-JSON's conventions into DAG-CBOR, where they do not hold: a map `{"$link": "..."}` or a
//! string under `$bytes` is a map or a string in DAG-CBOR, not a link or bytes.
//!
//! The bytes are decoded by `serde_ipld_dagcbor` as before; only the tree built from them differs.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use jacquard_common::deps::smol_str::SmolStr;
use jacquard_common::types::blob::{Blob, MimeType};
use jacquard_common::types::cid::{Cid, CidLink, IpldCid};
use jacquard_common::types::string::AtprotoStr;
use jacquard_common::types::value::{Array, Data, Object};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use sluice_handlers::rules;

/// Decodes a record's DAG-CBOR into [`Data`] with no string read as anything but a string.
///
/// A typed blob (`$type: "blob"` with a link `ref`, a string `mimeType` and a size, and no other
/// field, as the data model defines it) becomes [`Data::Blob`]; any other map stays an object,
/// for the validators to judge against the schema. Floats become [`Data::InvalidNumber`] (the
/// validators name their path); integers outside `i64`, links that are not CIDs and maps and
/// arrays nested deeper than [`rules::MAX_NESTING`] (as the record rule refuses them) are errors, so
/// that a hostile record cannot take the stack.
pub fn decode_plain(bytes: &[u8]) -> Result<Data, serde_ipld_dagcbor::DecodeError<std::convert::Infallible>> {
    let mut deserializer = serde_ipld_dagcbor::de::Deserializer::from_slice(bytes);
    let data = Plain { depth: 0 }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(data)
}

/// A value inside `depth` maps and arrays.
#[derive(Clone, Copy)]
struct Plain {
    depth: usize,
}

impl Plain {
    /// The seed of the values inside a map or an array at this depth.
    fn inside<E: de::Error>(self) -> Result<Plain, E> {
        rules::nested(self.depth).map(|depth| Plain { depth })
    }
}

impl<'de> DeserializeSeed<'de> for Plain {
    type Value = Data;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Data, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Plain {
    type Value = Data;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value of the AT Protocol data model")
    }

    fn visit_unit<E>(self) -> Result<Data, E> {
        Ok(Data::Null)
    }

    fn visit_none<E>(self) -> Result<Data, E> {
        Ok(Data::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Data, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Data, E> {
        Ok(Data::Boolean(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Data, E> {
        Ok(Data::Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Data, E> {
        i64::try_from(v)
            .map(Data::Integer)
            .map_err(|_| E::custom(format!("integer {v} is over the data model's 64-bit range")))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Data, E> {
        i64::try_from(v)
            .map(Data::Integer)
            .map_err(|_| E::custom(format!("integer {v} is outside the data model's 64-bit range")))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Data, E> {
        i64::try_from(v)
            .map(Data::Integer)
            .map_err(|_| E::custom(format!("integer {v} is over the data model's 64-bit range")))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Data, E> {
        Ok(Data::InvalidNumber(SmolStr::new(v.to_string())))
    }

    fn visit_str<E>(self, v: &str) -> Result<Data, E> {
        Ok(Data::String(AtprotoStr::String(SmolStr::new(v))))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Data, E> {
        Ok(Data::Bytes(Bytes::copy_from_slice(v)))
    }

    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Data, E> {
        Ok(Data::Bytes(Bytes::from(v)))
    }

    /// `serde_ipld_dagcbor` hands a link (tag 42) over as a newtype holding the CID's bytes.
    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Data, D::Error> {
        deserializer.deserialize_bytes(LinkVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Data, A::Error> {
        let inside = self.inside()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(inside)? {
            items.push(item);
        }
        Ok(Data::Array(Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
        let inside = self.inside()?;
        let mut fields = BTreeMap::new();
        while let Some(key) = map.next_key::<SmolStr>()? {
            let value = map.next_value_seed(inside)?;
            fields.insert(key, value);
        }
        Ok(typed_blob(fields))
    }
}

/// The map as a [`Data::Blob`] if it is exactly a typed blob, else as an object.
fn typed_blob(mut fields: BTreeMap<SmolStr, Data>) -> Data {
    let is_blob = fields.len() == 4
        && matches!(fields.get("$type"), Some(Data::String(t)) if t.as_str() == "blob")
        && matches!(fields.get("ref"), Some(Data::CidLink(_)))
        && matches!(fields.get("mimeType"), Some(Data::String(_)))
        && matches!(fields.get("size"), Some(Data::Integer(size)) if *size >= 0);
    if !is_blob {
        return Data::Object(Object(fields));
    }
    let (Some(Data::CidLink(cid)), Some(Data::String(mime)), Some(Data::Integer(size))) =
        (fields.remove("ref"), fields.remove("mimeType"), fields.remove("size"))
    else {
        unreachable!("the fields were matched above")
    };
    let mime = SmolStr::new(mime.as_str());
    Data::Blob(Blob { r#ref: CidLink(cid), mime_type: MimeType::new(mime), size: size as usize })
}

struct LinkVisitor;

impl<'de> Visitor<'de> for LinkVisitor {
    type Value = Data;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a CID's bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Data, E> {
        IpldCid::try_from(v)
            .map(|cid| Data::CidLink(Cid::ipld(cid)))
            .map_err(|e| E::custom(format!("a link that is not a CID: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::{Value, json};
    use sluice_handlers::rules::MAX_NESTING;

    use super::*;

    const CID: &str = "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq";

    /// DAG-CBOR with links (`{"$link": ...}` in the JSON) written as tag 42, as records hold them.
    fn record(v: &Value) -> Vec<u8> {
        sluice_handlers::value::json_to_cbor(v).unwrap()
    }

    fn field<'a>(data: &'a Data, name: &str) -> &'a Data {
        data.as_object().and_then(|o| o.get(name)).unwrap_or_else(|| panic!("no {name} in {data:?}"))
    }

    #[test]
    fn strings_stay_strings_whatever_their_field() {
        let v = json!({"createdAt": "2024-05-01T12:00:00Z", "did": "did:plc:abc", "uri": "at://did:plc:abc/a.b/c", "text": "did:web:x.test", "cid": CID});
        let data = decode_plain(&record(&v)).unwrap();
        for (name, text) in v.as_object().unwrap() {
            assert_eq!(field(&data, name), &Data::String(AtprotoStr::String(text.as_str().unwrap().into())), "{name}");
        }
    }

    #[test]
    fn links_bytes_and_typed_blobs_are_read_as_such() {
        let v = json!({
            "ref": {"$link": CID},
            "raw": {"$bytes": "aGVsbG8"},
            "image": {"$type": "blob", "ref": {"$link": CID}, "mimeType": "image/png", "size": 1234},
        });
        let data = decode_plain(&record(&v)).unwrap();
        assert!(matches!(field(&data, "ref"), Data::CidLink(c) if c.as_str() == CID));
        assert_eq!(field(&data, "raw"), &Data::Bytes(Bytes::from_static(b"hello")));
        let Data::Blob(blob) = field(&data, "image") else { panic!("{data:?}") };
        assert_eq!((blob.r#ref.0.as_str(), blob.mime_type.as_str(), blob.size), (CID, "image/png", 1234));
    }

    #[test]
    fn a_map_that_only_looks_like_something_else_stays_a_map() {
        #[derive(serde::Serialize)]
        #[serde(untagged)]
        enum Field {
            Link(IpldCid),
            Text(&'static str),
            Int(i64),
        }
        let link = Field::Link(IpldCid::try_from(CID).unwrap());
        let blob = |size: i64, reference: Field, more: Option<(&'static str, Field)>| {
            let mut map = BTreeMap::from([
                ("$type", Field::Text("blob")),
                ("ref", reference),
                ("mimeType", Field::Text("image/png")),
                ("size", Field::Int(size)),
            ]);
            map.extend(more);
            serde_ipld_dagcbor::to_vec(&BTreeMap::from([("image", map)])).unwrap()
        };
        let exact = decode_plain(&blob(1, link, None)).unwrap();
        assert!(matches!(field(&exact, "image"), Data::Blob(_)), "{exact:?}");
        // A blob with a field too many, a negative size or a `ref` that is no link is not a blob.
        for image in [
            blob(1, Field::Link(IpldCid::try_from(CID).unwrap()), Some(("alt", Field::Text("x")))),
            blob(-1, Field::Link(IpldCid::try_from(CID).unwrap()), None),
            blob(1, Field::Text(CID), None),
        ] {
            let data = decode_plain(&image).unwrap();
            assert!(matches!(field(&data, "image"), Data::Object(_)), "{data:?}");
        }
        // DAG-JSON's `$link` and `$bytes` are plain text keys in DAG-CBOR.
        let map: BTreeMap<&str, BTreeMap<&str, &str>> =
            [("a", [("$link", CID)].into()), ("b", [("$bytes", "aGVsbG8")].into())].into();
        let data = decode_plain(&serde_ipld_dagcbor::to_vec(&map).unwrap()).unwrap();
        for name in ["a", "b"] {
            assert!(matches!(field(&data, name), Data::Object(_)), "{name}: {data:?}");
        }
    }

    #[test]
    fn what_the_data_model_lacks_is_named() {
        let float = decode_plain(&serde_ipld_dagcbor::to_vec(&BTreeMap::from([("n", 1.5f64)])).unwrap()).unwrap();
        assert_eq!(field(&float, "n"), &Data::InvalidNumber("1.5".into()));
        let big = serde_ipld_dagcbor::to_vec(&BTreeMap::from([("n", u64::MAX)])).unwrap();
        let err = decode_plain(&big).unwrap_err().to_string();
        assert!(err.contains("18446744073709551615") && err.contains("64-bit"), "{err}");
        let err = decode_plain(&[0xa1, 0x61]).unwrap_err().to_string();
        assert!(!err.is_empty());
    }

    #[test]
    fn nesting_past_the_limit_is_refused_not_followed() {
        let nested = |levels: usize| {
            let mut v = json!(1);
            for _ in 0..levels {
                v = json!([v]);
            }
            serde_ipld_dagcbor::to_vec(&json!({ "a": v })).unwrap()
        };
        // The record's own map is one level.
        assert!(decode_plain(&nested(MAX_NESTING - 1)).is_ok());
        let err = decode_plain(&nested(MAX_NESTING)).unwrap_err().to_string();
        assert!(err.contains("nested more than 64 levels"), "{err}");
        // Far past it: refused at the limit, the stack untouched by the rest.
        let mut deep = vec![0x81u8; 1_000_000];
        deep.push(0x01);
        assert!(decode_plain(&deep).unwrap_err().to_string().contains("nested more than"));
    }

    /// JSON-like values without links, bytes or floats.
    fn plain_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,24}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z$]{1,10}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Decoding keeps every value as written: read back as JSON, it is the value encoded.
        #[test]
        fn decoding_keeps_every_value_as_written(v in plain_value()) {
            let data = decode_plain(&serde_ipld_dagcbor::to_vec(&v).unwrap()).unwrap();
            prop_assert_eq!(serde_json::to_value(&data).unwrap(), v);
        }
    }
}
