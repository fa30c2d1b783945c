//! The one DAG-CBOR <-> AT Protocol JSON codec (`$link` for CIDs, `$bytes` for bytes), built
//! on jacquard's data model. Events, handlers and XRPC responses all use it.

use jacquard_common::types::value::Data;

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

/// Upper bound on a value's size, in bytes, before any decoding is attempted (1 MiB: the
/// protocol's record limit).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Decodes DAG-CBOR bytes into AT Protocol JSON.
pub fn cbor_to_json(bytes: &[u8]) -> Result<serde_json::Value, ValueError> {
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(ValueError::Cbor(format!("{} bytes is over the {MAX_VALUE_BYTES}-byte limit", bytes.len())));
    }
    let data: Data = serde_ipld_dagcbor::from_slice(bytes).map_err(|e| ValueError::Cbor(e.to_string()))?;
    serde_json::to_value(&data).map_err(|e| ValueError::Cbor(e.to_string()))
}

/// Encodes AT Protocol JSON as canonical DAG-CBOR.
pub fn json_to_cbor(json: &serde_json::Value) -> Result<Vec<u8>, ValueError> {
    let data: Data = serde_json::from_value(json.clone()).map_err(|e| ValueError::Json(e.to_string()))?;
    if contains_float(json) {
        return Err(ValueError::Json("floats are not allowed in the AT Protocol data model".into()));
    }
    serde_ipld_dagcbor::to_vec(&data).map_err(|e| ValueError::Json(e.to_string()))
}

fn contains_float(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => !(n.is_i64() || n.is_u64()),
        serde_json::Value::Array(a) => a.iter().any(contains_float),
        serde_json::Value::Object(o) => o.values().any(contains_float),
        _ => false,
    }
}

/// The fuzz body for `cbor_json`: decode arbitrary bytes; whatever decodes must re-encode and
/// decode again to the same JSON. Panics only on a real round-trip bug.
pub fn fuzz_cbor_json(bytes: &[u8]) {
    if let Ok(json) = cbor_to_json(bytes) {
        let again = json_to_cbor(&json).expect("decoded JSON re-encodes");
        let json2 = cbor_to_json(&again).expect("re-encoded CBOR decodes");
        assert_eq!(json, json2, "DAG-CBOR -> JSON -> DAG-CBOR -> JSON is stable");
    }
}
