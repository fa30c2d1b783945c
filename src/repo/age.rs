//! How old a record is, for `BACKFILL_DAYS`: the time in its TID record key, else its
//! `createdAt` field; a record with neither has no known age (and is kept).

use jacquard_common::types::tid::Tid;
use serde::Deserialize;

/// The record's time in unix microseconds: from a TID rkey, else from a valid RFC 3339
/// `createdAt`; `None` when it has neither.
pub fn record_time_us(rkey: &str, cbor: &[u8]) -> Option<u64> {
    if let Some(t) = tid_time_us(rkey) {
        return Some(t);
    }
    #[derive(Deserialize)]
    struct CreatedAt {
        #[serde(rename = "createdAt")]
        created_at: Option<String>,
    }
    let created = serde_ipld_dagcbor::from_slice::<CreatedAt>(cbor).ok()?.created_at?;
    let time = chrono::DateTime::parse_from_rfc3339(&created).ok()?;
    u64::try_from(time.timestamp_micros()).ok()
}

/// The time in a TID record key (unix µs), when the key is a TID: no body needed.
pub fn tid_time_us(rkey: &str) -> Option<u64> {
    (rkey.len() == 13).then(|| Tid::new(rkey).ok()).flatten().map(|tid| tid.timestamp())
}

/// Whether a record is older than `since_us` (unix µs). Records of unknown age are not.
pub fn is_older_than(rkey: &str, cbor: &[u8], since_us: u64) -> bool {
    record_time_us(rkey, cbor).is_some_and(|t| t < since_us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cbor(v: serde_json::Value) -> Vec<u8> {
        serde_ipld_dagcbor::to_vec(&v).unwrap()
    }

    #[test]
    fn tid_keys_win_then_created_at_then_unknown() {
        let tid = Tid::from_time(1_700_000_000_000_000, 0);
        let body = cbor(serde_json::json!({"createdAt": "2001-01-01T00:00:00Z"}));
        assert_eq!(record_time_us(tid.as_str(), &body), Some(1_700_000_000_000_000));
        assert_eq!(record_time_us("self", &body), Some(978_307_200_000_000));
        assert_eq!(record_time_us("self", &cbor(serde_json::json!({"text": "x"}))), None);
        assert_eq!(record_time_us("self", &cbor(serde_json::json!({"createdAt": "yesterday"}))), None);
        assert_eq!(record_time_us("self", b"\xff not cbor"), None);
        assert!(!is_older_than("self", b"", u64::MAX), "unknown age is kept");
        assert!(is_older_than("self", &body, 978_307_200_000_001));
    }

    proptest! {
        #[test]
        fn tid_record_keys_give_their_time(us in 0u64..(1 << 53)) {
            let tid = Tid::from_time(us, 7);
            prop_assert_eq!(record_time_us(tid.as_str(), b""), Some(us));
            prop_assert_eq!(is_older_than(tid.as_str(), b"", us), false);
            prop_assert!(is_older_than(tid.as_str(), b"", us + 1));
        }
    }
}
