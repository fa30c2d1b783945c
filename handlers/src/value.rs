//! The one DAG-CBOR <-> AT Protocol JSON codec (`$link` for CIDs, `$bytes` for bytes), built
//! on jacquard's data model. Events, handlers and XRPC responses all use it.

use jacquard_common::types::value::{Data, RawData};
use serde_json::Value;

use crate::rules::{FLOATS, NOT_A_CID_V1, TOO_DEEP};
pub use crate::rules::{MAX_NESTING, MAX_VALUE_BYTES};

/// Why a value could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// The bytes are not valid DAG-CBOR for the AT Protocol data model.
    #[error("invalid DAG-CBOR: {0}")]
    Cbor(String),
    /// The JSON is not valid for the AT Protocol data model (floats, bad `$link`, ...).
    #[error("invalid AT Protocol JSON: {0}")]
    Json(String),
}

/// Decodes DAG-CBOR bytes into AT Protocol JSON.
pub fn cbor_to_json(bytes: &[u8]) -> Result<serde_json::Value, ValueError> {
    let raw = raw_value(bytes)?;
    serde_json::to_value(AtJson(&raw)).map_err(|e| ValueError::Cbor(e.to_string()))
}

/// Writes DAG-CBOR bytes as AT Protocol JSON text to `out`, in one pass with no value tree
/// ([`crate::transcode`]). On an error `out` is left as it was.
pub fn write_cbor_json(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
    let start = out.len();
    serde_json::to_writer(&mut *out, &crate::transcode::Transcode(bytes)).map_err(|e| {
        out.truncate(start);
        ValueError::Cbor(e.to_string())
    })
}

/// A DAG-CBOR value that serializes as AT Protocol JSON (`null` when it does not decode), to
/// embed a record body in a larger serialized structure. Decoded in one pass, with no value
/// tree ([`crate::transcode`]): the event stream writes every body this way.
pub struct CborAsJson<'a>(pub &'a [u8]);

impl serde::Serialize for CborAsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match crate::transcode::raw_json(self.0) {
            Some(json) => json.serialize(s),
            None => s.serialize_none(),
        }
    }
}

/// Decodes DAG-CBOR into jacquard's untyped data model (strings are not sniffed for formats,
/// which cost a regex per string), refusing what the AT Protocol data model does not allow.
fn raw_value(bytes: &[u8]) -> Result<RawData<'_>, ValueError> {
    // jacquard's reader takes a map whose first key is `$link` or `$bytes` for JSON's link or
    // bytes form and misreads the rest of such a map, keeps only the last value of a key given
    // twice, and can read past a float: the record rule, which refuses these (and bodies over
    // the size or nesting limits), is checked first.
    crate::rules::check_record(bytes).map_err(|refusal| ValueError::Cbor(refusal.to_string()))?;
    let raw: RawData = serde_ipld_dagcbor::from_slice(bytes).map_err(|e| ValueError::Cbor(e.to_string()))?;
    match invalid_part(&raw) {
        Some(problem) => Err(ValueError::Cbor(problem.into())),
        None => Ok(raw),
    }
}

/// What in `raw` the data model refuses (floats, unknown CBOR), if anything.
fn invalid_part(raw: &RawData<'_>) -> Option<&'static str> {
    match raw {
        RawData::InvalidNumber(_) => Some(FLOATS),
        RawData::InvalidData(_) => Some("a value outside the AT Protocol data model"),
        RawData::Array(a) => a.iter().find_map(invalid_part),
        RawData::Object(o) => o.values().find_map(invalid_part),
        RawData::InvalidBlob(inner) => invalid_part(inner),
        RawData::CidLink(cid) if !is_cid_v1(cid) => Some(NOT_A_CID_V1),
        RawData::Blob(blob) if !is_cid_v1(blob.cid()) => Some(NOT_A_CID_V1),
        _ => None,
    }
}

fn is_cid_v1(cid: &jacquard_common::types::cid::Cid<jacquard_common::CowStr<'_>>) -> bool {
    cid.to_ipld().is_ok_and(|cid| u64::from(cid.version()) == 1)
}

/// AT Protocol JSON of an untyped value: jacquard's own JSON form (`$link`), with `$bytes`
/// in unpadded base64 as the protocol writes it.
struct AtJson<'a, 'd>(&'a RawData<'d>);

impl serde::Serialize for AtJson<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        use serde::ser::SerializeMap as _;
        match self.0 {
            RawData::Bytes(bytes) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("$bytes", &base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes))?;
                map.end()
            }
            RawData::Array(a) => s.collect_seq(a.iter().map(AtJson)),
            RawData::Object(o) => s.collect_map(o.iter().map(|(k, v)| (k.as_str(), AtJson(v)))),
            RawData::InvalidBlob(inner) => AtJson(inner).serialize(s),
            other => other.serialize(s),
        }
    }
}

/// Encodes AT Protocol JSON as canonical DAG-CBOR. The top level must be an object, and the
/// data model's rules are checked first (see [`data_model_problem`]).
pub fn json_to_cbor(json: &Value) -> Result<Vec<u8>, ValueError> {
    if !json.is_object() {
        return Err(ValueError::Json("the top level must be an object".into()));
    }
    if let Some(problem) = data_model_problem(json) {
        return Err(ValueError::Json(problem));
    }
    let data: Data = serde_json::from_value(json.clone()).map_err(|e| ValueError::Json(e.to_string()))?;
    serde_ipld_dagcbor::to_vec(&data).map_err(|e| ValueError::Json(e.to_string()))
}

/// What breaks the AT Protocol data model in `v`, if anything: floats; `$type` that is not a
/// non-empty string; `$link` or `$bytes` objects with other keys or non-string values; blobs
/// without a `ref` link, a string `mimeType` and an integer `size`; nesting deeper than
/// [`MAX_NESTING`].
pub fn data_model_problem(v: &Value) -> Option<String> {
    problem_within(v, 0)
}

/// [`data_model_problem`] of `v`, held in `depth` maps and arrays.
fn problem_within(v: &Value, depth: usize) -> Option<String> {
    if matches!(v, Value::Array(_) | Value::Object(_)) && depth >= MAX_NESTING {
        return Some(TOO_DEEP.into());
    }
    match v {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => Some(format!("float {n} is not allowed")),
        Value::Array(a) => a.iter().find_map(|v| problem_within(v, depth + 1)),
        Value::Object(o) => object_problem(o).or_else(|| o.values().find_map(|v| problem_within(v, depth + 1))),
        _ => None,
    }
}

fn object_problem(o: &serde_json::Map<String, Value>) -> Option<String> {
    for special in ["$link", "$bytes"] {
        if let Some(inner) = o.get(special)
            && (o.len() != 1 || !inner.is_string())
        {
            return Some(format!("a `{special}` object must hold exactly one string"));
        }
    }
    match o.get("$type") {
        None => None,
        Some(Value::String(t)) if t.is_empty() => Some("`$type` must not be empty".into()),
        Some(Value::String(t)) if t == "blob" => {
            let link_ok = o.get("ref").and_then(|r| r.get("$link")).is_some_and(Value::is_string);
            let mime_ok = o.get("mimeType").is_some_and(Value::is_string);
            let size_ok = o.get("size").is_some_and(|s| s.is_i64() || s.is_u64());
            (!(link_ok && mime_ok && size_ok))
                .then(|| "a blob needs `ref` (a $link), a string `mimeType` and an integer `size`".into())
        }
        Some(Value::String(_)) => None,
        Some(_) => Some("`$type` must be a string".into()),
    }
}

/// The fuzz body for `cbor_json`: decoding arbitrary bytes never panics, and whatever decodes
/// into valid data-model JSON re-encodes to DAG-CBOR that decodes to the same JSON. (Reading is
/// lenient, writing strict: a record the network already accepted is shown as it is.)
///
/// The one-pass transcoder ([`crate::transcode`]) must read every input as this module does,
/// and the record rule ([`crate::rules::check_record`]) take exactly what both read.
pub fn fuzz_cbor_json(bytes: &[u8]) {
    let transcoded = crate::transcode::raw_json(bytes)
        .map(|raw| serde_json::from_str::<Value>(raw.get()).expect("transcoded JSON parses"));
    assert_eq!(transcoded, cbor_to_json(bytes).ok(), "the transcoder and the reference read the bytes alike");
    let checked = crate::rules::check_record(bytes);
    assert_eq!(checked.is_ok(), transcoded.is_some(), "the record rule takes what the readers take: {checked:?}");
    if let Ok(json) = cbor_to_json(bytes)
        && let Ok(again) = json_to_cbor(&json)
    {
        let json2 = cbor_to_json(&again).expect("re-encoded CBOR decodes");
        assert_eq!(json, json2, "DAG-CBOR -> JSON -> DAG-CBOR -> JSON is stable");
    }
}
