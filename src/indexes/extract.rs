//! What one record puts in one index: its key tuples (a path with `[]` fans out, so a record
//! may have several) and its sort value, read from the record's DAG-CBOR with jacquard's data
//! model. A record whose key or sort field is missing, of another type or too large gets no
//! entry, and the reason is counted.

use jacquard_common::types::value::RawData;

use super::encode::{self, MAX_KEY_PART_BYTES};
use super::spec::{FieldPath, IndexSpec, Segment, Sort, SortType};

/// The most entries one record may put in one index (the product of its key paths' fan-outs):
/// a record that would put more gets none.
pub const MAX_ENTRIES_PER_RECORD: usize = 64;

/// What a record puts in an index.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordEntries {
    /// The encoded sort value.
    pub sort: Vec<u8>,
    /// The encoded key tuples, sorted and without duplicates; never empty.
    pub keys: Vec<Vec<u8>>,
}

/// Why a record has no entry in an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// A key or sort field is absent (or a fanned-out array is empty).
    Missing,
    /// A key or sort field holds a value of another type (an object, a string where a
    /// datetime is wanted, ...).
    WrongType,
    /// A key value is over [`MAX_KEY_PART_BYTES`].
    TooLarge,
    /// The key paths fan out to more than [`MAX_ENTRIES_PER_RECORD`] entries.
    TooMany,
    /// The body does not decode (never for a stored record, which passed the record rule).
    Unreadable,
}

impl Skip {
    /// Every reason, for `/metrics`.
    pub const ALL: [Skip; 5] = [Skip::Missing, Skip::WrongType, Skip::TooLarge, Skip::TooMany, Skip::Unreadable];

    /// The reason as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Missing => "missing",
            Skip::WrongType => "wrong_type",
            Skip::TooLarge => "too_large",
            Skip::TooMany => "too_many",
            Skip::Unreadable => "unreadable",
        }
    }

    /// Its index in [`Skip::ALL`].
    pub fn ordinal(self) -> usize {
        Skip::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }
}

/// The entries of the record `rkey` with DAG-CBOR `body` in the index `spec`; `now_us` is the
/// time it is indexed (the bound of `sortAt`).
pub fn entries(spec: &IndexSpec, rkey: &str, body: &[u8], now_us: i64) -> Result<RecordEntries, Skip> {
    let paths = read_paths(spec);
    let value = match paths.is_empty() {
        false => Some(super::pruned::decode(body, &paths).ok_or(Skip::Unreadable)?),
        true => None,
    };
    entries_of(spec, rkey, value.as_ref(), now_us)
}

/// The paths of the record `spec` reads: its key paths and its sort field's.
fn read_paths(spec: &IndexSpec) -> Vec<&[Segment]> {
    let mut paths: Vec<&[Segment]> = spec.key.iter().map(FieldPath::segments).collect();
    if let Sort::Field(path, _) | Sort::SortAt(path) = &spec.sort {
        paths.push(path.segments());
    }
    paths
}

/// The entries of the record `rkey` whose body decoded to `value` (`None`: not needed).
fn entries_of(spec: &IndexSpec, rkey: &str, value: Option<&RawData<'_>>, now_us: i64) -> Result<RecordEntries, Skip> {
    let sort = sort_value(&spec.sort, rkey, value, now_us)?;
    let mut tuples: Vec<Vec<String>> = vec![Vec::new()];
    for path in &spec.key {
        let parts = key_values(path, value.expect("a key path reads the body"))?;
        if tuples.len() * parts.len() > MAX_ENTRIES_PER_RECORD {
            return Err(Skip::TooMany);
        }
        tuples = tuples
            .iter()
            .flat_map(|t| {
                parts.iter().map(move |p| {
                    let mut t = t.clone();
                    t.push(p.clone());
                    t
                })
            })
            .collect();
    }
    let mut keys: Vec<Vec<u8>> = tuples.iter().map(|t| encode::key_tuple(t)).collect();
    keys.sort_unstable();
    keys.dedup();
    Ok(RecordEntries { sort, keys })
}

/// The values `path` reaches in `value` (several when it fans out), as canonical texts.
/// Elements of a fanned-out array that lack the field or hold another type are passed over
/// (a union's members differ); the record is skipped only when no value is left. More than
/// [`MAX_ENTRIES_PER_RECORD`] distinct values are [`Skip::TooMany`] at once: the values are
/// not collected past that, so a hostile array of a million strings costs one pass over it,
/// not a comparison of each with all the others.
fn key_values(path: &FieldPath, value: &RawData<'_>) -> Result<Vec<String>, Skip> {
    let mut found: Vec<String> = Vec::new();
    let mut worst = Skip::Missing;
    let mut too_many = false;
    walk(value, path.segments(), &mut |v| {
        if too_many {
            return;
        }
        match key_text(v) {
            Ok(text) if found.contains(&text) => {}
            Ok(_) if found.len() == MAX_ENTRIES_PER_RECORD => too_many = true,
            Ok(text) => found.push(text),
            Err(skip) => worst = worst.max(skip),
        }
    });
    match (too_many, found.is_empty()) {
        (true, _) => Err(Skip::TooMany),
        (false, true) => Err(worst),
        (false, false) => Ok(found),
    }
}

/// Calls `each` on every value `segments` reach from `value`; a missing step reaches nothing.
fn walk<'v, 'd>(value: &'v RawData<'d>, segments: &[Segment], each: &mut dyn FnMut(Step<'v, 'd>)) {
    let Some((first, rest)) = segments.split_first() else {
        each(Step::Value(value));
        return;
    };
    match (first, value) {
        (Segment::Field(name), RawData::Object(map)) => {
            if let Some(inner) = map.get(name.as_str()) {
                walk(inner, rest, each)
            }
        }
        (Segment::Field(name), RawData::Blob(blob)) if rest.is_empty() => match name.as_str() {
            "$type" => each(Step::Text("blob".into())),
            "ref" => each(Step::Text(blob.cid().to_string())),
            "mimeType" => each(Step::Text(blob.mime_type.as_str().to_string())),
            "size" => each(Step::Text(blob.size.to_string())),
            _ => {}
        },
        (Segment::Each, RawData::Array(items)) => {
            for item in items {
                walk(item, rest, each);
            }
        }
        // A step into a value of another kind: a wrong type, reported as one.
        _ => each(Step::Mismatch),
    }
}

/// What a walk reached.
enum Step<'v, 'd> {
    Value(&'v RawData<'d>),
    Text(String),
    Mismatch,
}

/// A key value's canonical text: strings (datetimes normalised), integers, booleans and CID
/// links; anything else is of the wrong type.
fn key_text(step: Step<'_, '_>) -> Result<String, Skip> {
    let text = match step {
        Step::Text(text) => text,
        Step::Mismatch => return Err(Skip::WrongType),
        Step::Value(value) => match value {
            RawData::String(s) => encode::canonical_text(s.as_ref()).into_owned(),
            RawData::SignedInt(i) => i.to_string(),
            RawData::UnsignedInt(u) => u.to_string(),
            RawData::Boolean(b) => b.to_string(),
            RawData::CidLink(cid) => cid.to_string(),
            RawData::Null => return Err(Skip::Missing),
            _ => return Err(Skip::WrongType),
        },
    };
    if text.len() > MAX_KEY_PART_BYTES { Err(Skip::TooLarge) } else { Ok(text) }
}

/// The encoded sort value of a record.
fn sort_value(sort: &Sort, rkey: &str, value: Option<&RawData<'_>>, now_us: i64) -> Result<Vec<u8>, Skip> {
    let field = |path: &FieldPath| -> Result<&RawData<'_>, Skip> {
        let mut at = value.ok_or(Skip::Missing)?;
        for segment in path.segments() {
            let Segment::Field(name) = segment else { return Err(Skip::WrongType) };
            at = match at {
                RawData::Object(map) => map.get(name.as_str()).ok_or(Skip::Missing)?,
                _ => return Err(Skip::WrongType),
            };
        }
        Ok(at)
    };
    match sort {
        Sort::Rkey => Ok(encode::ordered_text(rkey)),
        Sort::SortAt(path) => Ok(encode::ordered_i64(datetime(field(path)?)?.min(now_us)).to_vec()),
        Sort::Field(path, SortType::Datetime) => Ok(encode::ordered_i64(datetime(field(path)?)?).to_vec()),
        Sort::Field(path, SortType::Integer) => match field(path)? {
            RawData::SignedInt(i) => Ok(encode::ordered_i64(*i).to_vec()),
            RawData::UnsignedInt(u) => {
                i64::try_from(*u).map(|i| encode::ordered_i64(i).to_vec()).map_err(|_| Skip::TooLarge)
            }
            _ => Err(Skip::WrongType),
        },
        Sort::Field(path, SortType::String) => match field(path)? {
            RawData::String(s) if s.len() <= MAX_KEY_PART_BYTES => Ok(encode::ordered_text(s.as_ref())),
            RawData::String(_) => Err(Skip::TooLarge),
            _ => Err(Skip::WrongType),
        },
    }
}

fn datetime(value: &RawData<'_>) -> Result<i64, Skip> {
    match value {
        RawData::String(s) => encode::parse_datetime(s.as_ref()).ok_or(Skip::WrongType),
        _ => Err(Skip::WrongType),
    }
}

/// The fuzz body for `index_entries`: any bytes, taken as a record's body, are extracted
/// without a panic; and a body the record rule admits (what a store holds: DAG-CBOR of the data
/// model) gives the same entries, or the same reason for none, in each of a few indexes whether
/// it is decoded whole or only along the index's paths ([`super::pruned`], which skips the
/// fields off them unchecked). Panics only on a real bug.
pub fn fuzz_entries(body: &[u8]) {
    const INDEXES: [(&[&str], &str, Option<&str>); 5] = [
        (&["subject.uri"], "createdAt", Some("datetime")),
        (&["langs[]", "reply.root.cid"], "rkey", None),
        (&["embed.$type"], "sortAt(createdAt)", None),
        (&["facets[].features[].did", "embed.images[].image.mimeType"], "embed.images", Some("string")),
        (&["embed.media.image.ref", "embed.media.image.size"], "n", Some("integer")),
    ];
    let admitted = sluice_handlers::rules::check_record(body).is_ok();
    let whole = serde_ipld_dagcbor::from_slice::<RawData>(body).ok();
    for (key, sort, sort_type) in INDEXES {
        let spec = IndexSpec {
            name: "fuzz".into(),
            collection: "app.bsky.feed.post".into(),
            key: key.iter().map(|k| FieldPath::parse(k).expect("a fuzz index path")).collect(),
            sort: Sort::parse(sort, sort_type).expect("a fuzz index sort"),
            count: false,
            per_repo: super::PerRepo::All,
            method: None,
        };
        let now = 1_704_067_200_000_000;
        let got = entries(&spec, "3kx", body, now);
        if admitted {
            assert_eq!(got, entries_of_whole(&spec, "3kx", whole.as_ref(), now), "index {key:?} by {sort}");
        }
    }
}

/// What [`entries`] gives from the record decoded whole (`None`: it does not decode), which its
/// decoding only along the paths must match.
fn entries_of_whole(
    spec: &IndexSpec,
    rkey: &str,
    whole: Option<&RawData<'_>>,
    now_us: i64,
) -> Result<RecordEntries, Skip> {
    whole.map_or(Err(Skip::Unreadable), |whole| entries_of(spec, rkey, Some(whole), now_us))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use proptest::prelude::*;

    use super::*;
    use crate::indexes::spec::PerRepo;

    fn spec(key: &[&str], sort: &str) -> IndexSpec {
        IndexSpec {
            name: "t".into(),
            collection: "a.b.c".into(),
            key: key.iter().map(|k| FieldPath::parse(k).unwrap()).collect(),
            sort: Sort::parse(sort, None).unwrap(),
            count: false,
            per_repo: PerRepo::All,
            method: None,
        }
    }

    const CID: &str = "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq";
    /// Field names that paths and records share: mostly plain, sometimes jacquard's special keys
    /// (`$link` in paths only: a record holds it alone, from `leaf`).
    fn name(with_link: bool) -> impl Strategy<Value = &'static str> {
        let special: &[&str] = if with_link {
            &["$type", "ref", "mimeType", "size", "$link"]
        } else {
            &["$type", "ref", "mimeType", "size"]
        };
        prop_oneof![4 => proptest::sample::select(vec!["a", "b"]), 1 => proptest::sample::select(special.to_vec())]
    }

    fn leaf() -> impl Strategy<Value = serde_json::Value> {
        let texts = vec!["blob", "x", "2024-01-01T00:00:00Z", "2024-01-01T02:00:00+02:00", CID, ""];
        prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(|b| json!(b)),
            any::<i64>().prop_map(|i| json!(i)),
            proptest::sample::select(texts).prop_map(|s| json!(s)),
            Just(json!({"$link": CID})),
            Just(json!({"$bytes": "aGVsbG8"})),
            (0u64..5000)
                .prop_map(|n| json!({"$type": "blob", "ref": {"$link": CID}, "mimeType": "image/png", "size": n})),
        ]
    }

    /// An object of the data model: a `$type` is a string (`blob` only in the blobs of
    /// `leaf`), and `$link` only ever stands alone (from `leaf`).
    fn object(inner: impl Strategy<Value = serde_json::Value>) -> impl Strategy<Value = serde_json::Value> {
        let name = name(false).prop_map(String::from);
        let type_name = proptest::sample::select(vec!["app.bsky.feed.like", "x"]);
        proptest::collection::btree_map(name, (inner, type_name), 1..5).prop_map(|m| {
            let typed = m.into_iter().map(|(k, (v, t))| if k == "$type" { (k, json!(t)) } else { (k, v) });
            serde_json::Value::Object(typed.collect())
        })
    }

    fn record() -> impl Strategy<Value = serde_json::Value> {
        let value = leaf().prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                object(inner)
            ]
        });
        object(value)
    }

    fn path() -> impl Strategy<Value = String> {
        let segment = (name(true), proptest::bool::weighted(0.3));
        proptest::collection::vec(segment, 1..4).prop_map(|segments| {
            let names: Vec<String> =
                segments.iter().map(|(n, each)| if *each { format!("{n}[]") } else { n.to_string() }).collect();
            names.join(".")
        })
    }

    fn any_spec() -> impl Strategy<Value = IndexSpec> {
        let sort = prop_oneof![
            Just(("rkey".to_string(), None)),
            path().prop_map(|p| (format!("sortAt({p})"), None)),
            (path(), proptest::sample::select(vec!["datetime", "integer", "string"])).prop_map(|(p, t)| (p, Some(t))),
        ];
        (proptest::collection::vec(path(), 0..3), sort).prop_filter_map(
            "paths the filter refuses",
            |(key, (sort, kind))| {
                Some(IndexSpec {
                    key: key.iter().map(|k| FieldPath::parse(k).ok()).collect::<Option<_>>()?,
                    sort: Sort::parse(&sort, kind).ok()?,
                    ..spec(&[], "rkey")
                })
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]
        #[test]
        fn reading_only_the_paths_gives_what_the_whole_record_gives(value in record(), spec in any_spec()) {
            let body = cbor(value);
            let now = 1_704_067_200_000_000;
            // Each path alone (a failing sort would hide the keys from `entries`).
            let pruned = crate::indexes::pruned::decode(&body, &read_paths(&spec));
            let whole = serde_ipld_dagcbor::from_slice::<RawData>(&body).ok();
            prop_assert_eq!(pruned.is_some(), whole.is_some());
            if let (Some(pruned), Some(whole)) = (&pruned, &whole) {
                for path in &spec.key {
                    prop_assert_eq!(key_values(path, pruned), key_values(path, whole), "key {}", path.as_str());
                }
                let sorts = [pruned, whole].map(|v| sort_value(&spec.sort, "3kx", Some(v), now));
                prop_assert_eq!(&sorts[0], &sorts[1]);
            }
            prop_assert_eq!(entries(&spec, "3kx", &body, now), entries_of_whole(&spec, "3kx", whole.as_ref(), now));
        }
    }

    fn cbor(v: serde_json::Value) -> Vec<u8> {
        sluice_handlers::value::json_to_cbor(&v).unwrap()
    }

    fn keys(parts: &[&[&str]]) -> Vec<Vec<u8>> {
        let mut out: Vec<_> = parts.iter().map(|p| encode::key_tuple(p)).collect();
        out.sort();
        out
    }

    #[test]
    fn keys_fan_out_and_skip_union_members_without_the_field() {
        let post = cbor(json!({
            "text": "hi", "createdAt": "2024-01-01T00:00:00Z", "langs": ["en", "fr", "en"],
            "facets": [{"features": [{"$type": "x#mention", "did": "did:plc:a"}, {"$type": "x#link", "uri": "u"}]},
                       {"features": [{"$type": "x#mention", "did": "did:plc:b"}]}],
            "embed": {"$type": "app.bsky.embed.images"}
        }));
        let e = entries(&spec(&["langs[]"], "createdAt"), "r", &post, 0).unwrap();
        assert_eq!(e.keys, keys(&[&["en"], &["fr"]]));
        assert_eq!(e.sort, encode::ordered_i64(1_704_067_200_000_000).to_vec());
        let e = entries(&spec(&["facets[].features[].did"], "rkey"), "r", &post, 0).unwrap();
        assert_eq!(e.keys, keys(&[&["did:plc:a"], &["did:plc:b"]]));
        let e = entries(&spec(&["embed.$type", "langs[]"], "rkey"), "r", &post, 0).unwrap();
        assert_eq!(e.keys, keys(&[&["app.bsky.embed.images", "en"], &["app.bsky.embed.images", "fr"]]));
        let e = entries(&spec(&[], "rkey"), "3k", &post, 0).unwrap();
        assert_eq!((e.keys, e.sort), (keys(&[&[]]), encode::ordered_text("3k")));
    }

    #[test]
    fn records_without_a_usable_value_get_no_entry() {
        let rec = cbor(json!({"s": {"x": 1}, "n": 3, "t": "not a date", "long": "x".repeat(600), "e": []}));
        let s = |k: &[&str], sort: &str| entries(&spec(k, sort), "r", &rec, 0);
        assert_eq!(s(&["missing"], "rkey"), Err(Skip::Missing));
        assert_eq!(s(&["s"], "rkey"), Err(Skip::WrongType));
        assert_eq!(s(&["n.deeper"], "rkey"), Err(Skip::WrongType));
        assert_eq!(s(&["long"], "rkey"), Err(Skip::TooLarge));
        assert_eq!(s(&["e[]"], "rkey"), Err(Skip::Missing));
        assert_eq!(s(&[], "t"), Err(Skip::WrongType));
        assert_eq!(s(&[], "nope"), Err(Skip::Missing));
        assert_eq!(s(&["n"], "rkey").unwrap().keys, keys(&[&["3"]]));
        assert_eq!(entries(&spec(&["n"], "rkey"), "r", b"\xff", 0), Err(Skip::Unreadable));
        let wide = cbor(json!({"a": (0..9).collect::<Vec<_>>(), "b": (0..9).collect::<Vec<_>>()}));
        assert_eq!(entries(&spec(&["a[]", "b[]"], "rkey"), "r", &wide, 0), Err(Skip::TooMany));
    }

    /// A record built to make extraction slow: one array of 120,000 distinct strings under a
    /// fanned-out key. It gets no entry (too many), and each extraction reads the array once
    /// (comparing each value with every other one took minutes).
    #[test]
    fn a_huge_fanned_out_array_is_too_many_at_once() {
        let values: Vec<String> = (0..120_000).map(|i| format!("{i:x}")).collect();
        let rec = cbor(json!({ "tags": values, "dup": vec!["x"; 20_000] }));
        assert!(rec.len() < sluice_handlers::rules::MAX_VALUE_BYTES, "a record the record rule admits");
        assert_eq!(entries(&spec(&["tags[]"], "rkey"), "r", &rec, 0), Err(Skip::TooMany));
        // 64 distinct values are fine, and repeats of one value are one entry.
        let e = entries(&spec(&["dup[]"], "rkey"), "r", &rec, 0).unwrap();
        assert_eq!(e.keys, keys(&[&["x"]]));
        let sixty_four = cbor(json!({ "tags": (0..64).collect::<Vec<_>>() }));
        assert_eq!(entries(&spec(&["tags[]"], "rkey"), "r", &sixty_four, 0).unwrap().keys.len(), 64);
        let sixty_five = cbor(json!({ "tags": (0..65).collect::<Vec<_>>() }));
        assert_eq!(entries(&spec(&["tags[]"], "rkey"), "r", &sixty_five, 0), Err(Skip::TooMany));
    }

    #[test]
    fn sort_at_takes_the_earlier_of_the_record_and_the_indexing_time() {
        let rec = cbor(json!({"createdAt": "2999-01-01T00:00:00Z"}));
        let e = entries(&spec(&[], "sortAt(createdAt)"), "r", &rec, 1_000).unwrap();
        assert_eq!(e.sort, encode::ordered_i64(1_000).to_vec());
        let rec = cbor(json!({"createdAt": "1970-01-01T00:00:00.000500Z"}));
        let e = entries(&spec(&[], "sortAt(createdAt)"), "r", &rec, 1_000).unwrap();
        assert_eq!(e.sort, encode::ordered_i64(500).to_vec());
    }
}
