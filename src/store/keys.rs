//! Order-preserving key codecs. DIDs, NSIDs, record keys and TIDs never contain a NUL byte, so
//! `\0` separates parts and sorts below every character: `(did, collection, rkey)` tuples sort
//! exactly as their keys do. Integers are big-endian so byte order is numeric order.

/// Why a stored key did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} key: {reason}")]
pub struct KeyError {
    what: &'static str,
    reason: &'static str,
}

fn join(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(p.as_bytes());
    }
    out
}

fn split<'k, const N: usize>(key: &'k [u8], what: &'static str) -> Result<[&'k str; N], KeyError> {
    let s = std::str::from_utf8(key).map_err(|_| KeyError { what, reason: "not UTF-8" })?;
    let mut parts = s.split('\0');
    let mut out = [""; N];
    for slot in &mut out {
        *slot = parts.next().ok_or(KeyError { what, reason: "too few parts" })?;
    }
    match parts.next() {
        Some(_) => Err(KeyError { what, reason: "too many parts" }),
        None => Ok(out),
    }
}

/// `records` key: `did \0 collection \0 rkey`.
pub fn record(did: &str, collection: &str, rkey: &str) -> Vec<u8> {
    join(&[did, collection, rkey])
}

/// Decodes a `records` key into `(did, collection, rkey)`.
pub fn parse_record(key: &[u8]) -> Result<(&str, &str, &str), KeyError> {
    split::<3>(key, "record").map(|[d, c, r]| (d, c, r))
}

/// Prefix of every record of `did`.
pub fn record_prefix(did: &str) -> Vec<u8> {
    let mut k = did.as_bytes().to_vec();
    k.push(0);
    k
}

/// Prefix of the records of `did` in `collection`.
pub fn record_collection_prefix(did: &str, collection: &str) -> Vec<u8> {
    record(did, collection, "")
}

/// `held` key: `did \0 rev` (revs are TIDs, which sort by time).
pub fn held(did: &str, rev: &str) -> Vec<u8> {
    join(&[did, rev])
}

/// Decodes a `held` key into `(did, rev)`.
pub fn parse_held(key: &[u8]) -> Result<(&str, &str), KeyError> {
    split::<2>(key, "held").map(|[d, r]| (d, r))
}

/// `events` key: the id, big-endian.
pub fn event(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Decodes an `events` key.
pub fn parse_event(key: &[u8]) -> Result<u64, KeyError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| KeyError { what: "event", reason: "not 8 bytes" })?;
    Ok(u64::from_be_bytes(bytes))
}

/// `pending` key: the unix ms a repo is due, big-endian, then its DID, so a scan from the start
/// meets the repos due first.
pub fn pending(due_ms: u64, did: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + did.len());
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(did.as_bytes());
    k
}

/// Decodes a `pending` key into `(due_ms, did)`.
pub fn parse_pending(key: &[u8]) -> Result<(u64, &str), KeyError> {
    const WHAT: &str = "pending";
    let (due, did) = key.split_first_chunk::<8>().ok_or(KeyError { what: WHAT, reason: "shorter than 8 bytes" })?;
    let did = std::str::from_utf8(did).map_err(|_| KeyError { what: WHAT, reason: "not UTF-8" })?;
    Ok((u64::from_be_bytes(*due), did))
}

/// `counts` key of the number of stored records in `collection`.
pub fn count_records(collection: &str) -> Vec<u8> {
    join(&["records", collection])
}

/// `counts` key of the number of repos in `status`.
pub fn count_repos(status: &str) -> Vec<u8> {
    join(&["repos", status])
}

/// Decodes a `counts` key into `(kind, name)`.
pub fn parse_count(key: &[u8]) -> Result<(&str, &str), KeyError> {
    split::<2>(key, "count").map(|[k, n]| (k, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Strings without NUL, like every identifier these keys hold.
    fn part() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9:._~-]{0,20}"
    }

    proptest! {
        #[test]
        fn record_keys_round_trip(d in part(), c in part(), r in part()) {
            let k = record(&d, &c, &r);
            prop_assert_eq!(parse_record(&k).unwrap(), (d.as_str(), c.as_str(), r.as_str()));
            prop_assert!(k.starts_with(&record_prefix(&d)));
            prop_assert!(k.starts_with(&record_collection_prefix(&d, &c)));
        }

        #[test]
        fn record_keys_sort_as_tuples(a in (part(), part(), part()), b in (part(), part(), part())) {
            let (ka, kb) = (record(&a.0, &a.1, &a.2), record(&b.0, &b.1, &b.2));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn held_keys_round_trip_and_sort(a in (part(), part()), b in (part(), part())) {
            let (ka, kb) = (held(&a.0, &a.1), held(&b.0, &b.1));
            prop_assert_eq!(parse_held(&ka).unwrap(), (a.0.as_str(), a.1.as_str()));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn event_keys_round_trip_and_sort(a: u64, b: u64) {
            prop_assert_eq!(parse_event(&event(a)).unwrap(), a);
            prop_assert_eq!(event(a).cmp(&event(b)), a.cmp(&b));
        }

        #[test]
        fn pending_keys_round_trip_and_sort(a in (any::<u64>(), part()), b in (any::<u64>(), part())) {
            let (ka, kb) = (pending(a.0, &a.1), pending(b.0, &b.1));
            prop_assert_eq!(parse_pending(&ka).unwrap(), (a.0, a.1.as_str()));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn count_keys_round_trip(n in part()) {
            let (records, repos) = (count_records(&n), count_repos(&n));
            prop_assert_eq!(parse_count(&records).unwrap(), ("records", n.as_str()));
            prop_assert_eq!(parse_count(&repos).unwrap(), ("repos", n.as_str()));
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(parse_record(b"a\0b").is_err());
        assert!(parse_record(b"a\0b\0c\0d").is_err());
        assert!(parse_record(b"\xff\0b\0c").is_err());
        assert!(parse_event(b"1234").is_err());
        assert!(parse_pending(b"1234").is_err());
    }
}
