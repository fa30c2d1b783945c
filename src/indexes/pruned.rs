//! Decoding only what an index reads: a record's DAG-CBOR into jacquard's `RawData`, keeping the
//! fields its paths go through and skipping every other one undecoded (`serde::de::IgnoredAny`,
//! which `serde_ipld_dagcbor` skips without building anything). A like decoded whole builds a
//! map of four entries, two of them nested, with each string copied; an index reading
//! `subject.uri` and `createdAt` keeps two strings.
//!
//! The result reads the same as the whole record along those paths: a field on a path keeps
//! its whole value at the path's end, and a map or array on the way keeps what the paths go
//! through. Anything else on the way (a string where a map was wanted) stands as `Null`, which
//! every step into it treats as the original: a value of the wrong kind. The one difference
//! would be a map that jacquard reads as something else by its keys (a blob by `$type`, a link
//! by `$link`, bytes by `$bytes`): where one is on the way, the record is decoded whole.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use jacquard_common::deps::smol_str::SmolStr;
use jacquard_common::types::value::RawData;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::spec::Segment;

/// `body` decoded as far as `paths` (each a path's segments) reach, or `None` when it does not
/// decode.
pub fn decode<'b>(body: &'b [u8], paths: &[&[Segment]]) -> Option<RawData<'b>> {
    let whole = Cell::new(false);
    let mut de = serde_ipld_dagcbor::de::Deserializer::from_slice(body);
    let value = Pruned { paths, whole: &whole }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    if whole.get() {
        return serde_ipld_dagcbor::from_slice(body).ok();
    }
    Some(value)
}

/// A value decoded for the `paths` that reach it (the segments left of each); `whole` is set
/// when a map on the way is one jacquard reads by its keys.
#[derive(Clone, Copy)]
struct Pruned<'p> {
    paths: &'p [&'p [Segment]],
    whole: &'p Cell<bool>,
}

/// What a field or element needs decoded.
enum Needs<'p> {
    /// Its whole value: a path ends there.
    Whole,
    /// Nothing: no path goes through it.
    Nothing,
    /// What these paths (the segments left after it) go through.
    Part(Vec<&'p [Segment]>),
}

impl<'p> Pruned<'p> {
    /// What the paths need of the value `step` reaches.
    fn needs(&self, step: impl Fn(&Segment) -> bool) -> Needs<'p> {
        let mut next = Vec::new();
        for path in self.paths {
            if let Some((first, rest)) = path.split_first()
                && step(first)
            {
                if rest.is_empty() {
                    return Needs::Whole;
                }
                next.push(rest);
            }
        }
        if next.is_empty() { Needs::Nothing } else { Needs::Part(next) }
    }
}

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = RawData<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawData<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = RawData<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a DAG-CBOR value")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<RawData<'de>, M::Error> {
        let mut kept = BTreeMap::new();
        while let Some(key) = map.next_key::<SmolStr>()? {
            if key == "$link" || key == "$bytes" {
                self.whole.set(true);
            }
            let needs = self.needs(|s| matches!(s, Segment::Field(f) if *f == key));
            let value = match needs {
                // A `$type` is read whatever the paths need: "blob" makes the map a blob.
                _ if key == "$type" => {
                    let value: RawData<'de> = map.next_value()?;
                    if matches!(&value, RawData::String(s) if s.as_ref() == "blob") {
                        self.whole.set(true);
                    }
                    if matches!(needs, Needs::Nothing) {
                        continue;
                    }
                    value
                }
                Needs::Whole => map.next_value()?,
                Needs::Nothing => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                Needs::Part(next) => map.next_value_seed(Pruned { paths: &next, whole: self.whole })?,
            };
            kept.insert(key, value);
        }
        Ok(RawData::Object(kept))
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<RawData<'de>, S::Error> {
        let mut items = Vec::new();
        match self.needs(|s| matches!(s, Segment::Each)) {
            Needs::Whole => {
                while let Some(item) = seq.next_element::<RawData<'de>>()? {
                    items.push(item);
                }
            }
            Needs::Nothing => while seq.next_element::<IgnoredAny>()?.is_some() {},
            Needs::Part(next) => {
                while let Some(item) = seq.next_element_seed(Pruned { paths: &next, whole: self.whole })? {
                    items.push(item);
                }
            }
        }
        Ok(RawData::Array(items))
    }

    // Anything else where the paths go on: a value of the wrong kind, which `Null` stands for.
    fn visit_bool<E>(self, _: bool) -> Result<RawData<'de>, E> {
        Ok(RawData::Null)
    }
    fn visit_i64<E>(self, _: i64) -> Result<RawData<'de>, E> {
        Ok(RawData::Null)
    }
    fn visit_i128<E>(self, _: i128) -> Result<RawData<'de>, E> {
        Ok(RawData::Null)
    }
    fn visit_u64<E>(self, _: u64) -> Result<RawData<'de>, E> {
        Ok(RawData::Null)
    }
    fn visit_u128<E>(self, _: u128) -> Result<RawData<'de>, E> {
        Ok(RawData::Null)
    }
    fn visit_f64<E>(self, _: f64) -> Result<RawData<'de>, E> {
        Ok(RawData::Null)
    }
    fn visit_str<E>(self, _: &str) -> Result<RawData<'de>, E> {
        Ok(RawData::Null)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<RawData<'de>, E> {
        Ok(RawData::Null)
    }
    fn visit_unit<E>(self) -> Result<RawData<'de>, E> {
        Ok(RawData::Null)
    }
    fn visit_none<E>(self) -> Result<RawData<'de>, E> {
        Ok(RawData::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawData<'de>, D::Error> {
        IgnoredAny::deserialize(d).map(|_| RawData::Null)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<RawData<'de>, D::Error> {
        IgnoredAny::deserialize(d).map(|_| RawData::Null)
    }
}
