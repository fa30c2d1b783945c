//! Encodings of index values: key tuples as canonical text (hashed when long: a key is only
//! compared for equality), sort values as bytes whose order is the values' order, and
//! datetimes normalised to UTC microseconds so that byte order is time order whatever offset a
//! record wrote.

/// The most bytes one key part may hold (its canonical text): a longer value gets no entry.
pub const MAX_KEY_PART_BYTES: usize = 512;

/// Appends `text` so that concatenations sort as tuples: `\0` is written `\0\xff`, and the end
/// is `\0\x01`, below every escaped byte.
pub fn push_text(out: &mut Vec<u8>, text: &[u8]) {
    for &b in text {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// The longest key tuple (as text) an index stores as it is; a longer one is stored hashed.
pub const KEY_TEXT_MAX: usize = 16;

/// A tuple of key parts, as the index stores and a query looks it up: `0` and the tuple's text
/// when at most [`KEY_TEXT_MAX`] bytes, else `1` and the first 16 bytes of the text's SHA-256.
/// A key is only ever compared for equality, and a like's (a post's URI, ~70 bytes) is written
/// in three rows of each entry and compared in every memtable insert: hashed, it is 17 bytes
/// that differ from the first. Distinct tuples get distinct keys (but for a SHA-256 collision
/// in 128 bits), and no key is a prefix of another of a tuple of as many parts.
pub fn key_tuple<S: AsRef<[u8]>>(parts: &[S]) -> Vec<u8> {
    use sha2::Digest;
    let mut text = Vec::with_capacity(1 + parts.iter().map(|p| p.as_ref().len() + 2).sum::<usize>());
    text.push(0);
    for part in parts {
        push_text(&mut text, part.as_ref());
    }
    if text.len() - 1 <= KEY_TEXT_MAX {
        return text;
    }
    let hash = sha2::Sha256::digest(&text[1..]);
    let mut key = Vec::with_capacity(17);
    key.push(1);
    key.extend_from_slice(&hash[..16]);
    key
}

/// The length of the key tuple of `parts` parts at the start of `bytes` (as [`key_tuple`]
/// writes it), or `None` when `bytes` does not start with one.
pub fn key_tuple_len(bytes: &[u8], parts: usize) -> Option<usize> {
    match bytes.first()? {
        1 => (bytes.len() >= 17).then_some(17),
        0 => {
            let mut at = 1;
            for _ in 0..parts {
                at += text_len(&bytes[at..])?;
            }
            Some(at)
        }
        _ => None,
    }
}

/// The length of the text [`push_text`] wrote at the start of `bytes`, its end included.
fn text_len(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let nul = at + bytes[at..].iter().position(|b| *b == 0)?;
        match bytes.get(nul + 1)? {
            1 => return Some(nul + 2),
            0xff => at = nul + 2,
            _ => return None,
        }
    }
}

/// A signed 64-bit value, big-endian with its sign bit flipped: byte order is numeric order.
pub fn ordered_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

/// A string sort value.
pub fn ordered_text(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    push_text(&mut out, text.as_bytes());
    out
}

/// An AT Protocol datetime (`2024-11-02T10:00:00.000Z`, or with an offset) as microseconds
/// since the epoch, UTC; `None` when it is not one.
pub fn parse_datetime(text: &str) -> Option<i64> {
    // RFC 3339 as the protocol writes it: a `T` between date and time, seconds present.
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes.get(10) != Some(&b'T') || bytes.len() > 64 {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros())
}

/// The canonical text of a datetime given as microseconds: UTC, six fraction digits.
pub fn datetime_text(us: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => us.to_string(),
    }
}

/// The canonical text of a string key part: a datetime normalised (so that `+02:00` and `Z`
/// forms of one instant are one key), any other string as it is.
pub fn canonical_text(text: &str) -> std::borrow::Cow<'_, str> {
    match parse_datetime(text) {
        Some(us) => datetime_text(us).into(),
        None => text.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Key parts short enough for a tuple to be stored as text, and long ones (hashed), with
    /// the bytes that need escaping.
    fn short_or_long() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(0xff), any::<u8>()], 0..6),
            proptest::collection::vec(any::<u8>(), 10..80),
        ]
    }

    proptest! {
        #[test]
        fn tuples_are_keyed_apart(a in proptest::collection::vec(short_or_long(), 0..4),
                                  b in proptest::collection::vec(short_or_long(), 0..4)) {
            let (ka, kb) = (key_tuple(&a), key_tuple(&b));
            prop_assert_eq!(ka == kb, a == b);
            prop_assert!(ka.len() <= 1 + KEY_TEXT_MAX);
            // A key is never a prefix of another of a tuple of as many parts (each row's key
            // is followed by its sort value).
            if a.len() == b.len() && a != b {
                prop_assert!(!kb.starts_with(&ka));
            }
        }

        #[test]
        fn a_tuple_read_back_ends_where_it_was_written(a in proptest::collection::vec(short_or_long(), 0..4),
                                                       tail: Vec<u8>) {
            let key = key_tuple(&a);
            let row = [key.as_slice(), &tail].concat();
            prop_assert_eq!(key_tuple_len(&row, a.len()), Some(key.len()));
            prop_assert_eq!(key_tuple_len(&key[..key.len() - 1], a.len()), None);
        }

        #[test]
        fn integers_sort_as_integers(a: i64, b: i64) {
            prop_assert_eq!(ordered_i64(a).cmp(&ordered_i64(b)), a.cmp(&b));
        }

        #[test]
        fn texts_sort_as_texts(a: String, b: String) {
            prop_assert_eq!(ordered_text(&a).cmp(&ordered_text(&b)), a.cmp(&b));
        }

        #[test]
        fn datetimes_sort_by_instant_whatever_the_offset(secs in 0i64..4_000_000_000, micros in 0u32..1_000_000,
                                                         offset_min in -720i32..=840) {
            let utc = chrono::DateTime::from_timestamp(secs, micros * 1000).unwrap();
            let offset = chrono::FixedOffset::east_opt(offset_min * 60).unwrap();
            let written = utc.with_timezone(&offset).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let us = parse_datetime(&written).unwrap();
            prop_assert_eq!(us, utc.timestamp_micros());
            prop_assert_eq!(parse_datetime(&datetime_text(us)), Some(us));
            prop_assert_eq!(canonical_text(&written), datetime_text(us));
        }
    }

    #[test]
    fn only_protocol_datetimes_parse() {
        assert!(parse_datetime("2024-11-02T10:00:00Z").is_some());
        assert!(parse_datetime("2024-11-02T10:00:00.123+02:00").is_some());
        for bad in ["2024-11-02", "2024-11-02 10:00:00Z", "yesterday", "2024-11-02T10:00Z", ""] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
        assert_eq!(canonical_text("hello"), "hello");
        assert_eq!(canonical_text("2024-11-02T12:00:00+02:00"), "2024-11-02T10:00:00.000000Z");
    }
}
