//! AT Protocol identifier syntax (DID, NSID, handle, record key, TID, at-uri), by jacquard's
//! validators, with the small wrappers the filter, codecs and queries need.

use jacquard_common::types::string::Tid;

/// Whether `s` is a syntactically valid DID: `did:`, a lowercase method, `:`, then
/// `A-Za-z0-9._:%-` not ending in `:` or `%`; 2048 bytes at most.
///
/// Every repo a backfill takes and every identity it resolves checks one, so this is a byte
/// loop rather than jacquard's regex (`Did::new`, several µs a call); a property test keeps
/// the two in agreement.
pub fn is_did(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("did:") else { return false };
    let Some((method, id)) = rest.split_once(':') else { return false };
    s.len() <= 2048
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_lowercase())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-'))
        && id.bytes().last().is_some_and(|b| b != b':' && b != b'%')
}

/// Whether `s` is a syntactically valid NSID: three or more `.`-separated segments of 1-63
/// `A-Za-z0-9-`, not starting or ending with `-`, the first starting with a letter, the last
/// (the name) a letter then letters and digits; 317 bytes at most.
///
/// A byte loop rather than jacquard's regex (`Nsid::new`), for the same reason as
/// [`is_did`], and held to it the same way.
pub fn is_nsid(s: &str) -> bool {
    let segment_ok = |seg: &str| {
        (1..=63).contains(&seg.len())
            && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !seg.starts_with('-')
            && !seg.ends_with('-')
    };
    let mut segments = s.split('.');
    let first = segments.next().unwrap_or_default();
    let Some(name) = s.rsplit('.').next() else { return false };
    s.len() <= 317
        && s.split('.').count() >= 3
        && segment_ok(first)
        && first.starts_with(|c: char| c.is_ascii_alphabetic())
        && segments.all(segment_ok)
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Whether `s` is a syntactically valid handle. This is syntax only: jacquard's `Handle` also
/// applies registration policy (no `.local`, `.onion`, ... and lowercase only), which the
/// protocol's syntax rules, and so sluice, accept.
pub fn is_handle(s: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let labels: Vec<&str> = s.split('.').collect();
    s.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| label_ok(l))
        && labels.last().is_some_and(|tld| tld.starts_with(|c: char| c.is_ascii_alphabetic()))
}

/// Whether `s` is a syntactically valid record key: 1-512 of `A-Za-z0-9._:~-`, not `.` or `..`.
///
/// This is the hot check of every MST walk, so it is a byte loop rather than jacquard's regex
/// (`Rkey::new`), which took half of a walk's time; a property test keeps the two in agreement.
pub fn is_rkey(s: &str) -> bool {
    (1..=512).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'~' | b'-'))
}

/// Whether `s` is a syntactically valid TID.
pub fn is_tid(s: &str) -> bool {
    Tid::new(s).is_ok()
}

/// Whether `s` is a syntactically valid at-uri: `at://`, an authority ([`is_at_identifier`]),
/// then optionally `/` and a collection ([`is_nsid`]), then optionally `/` and a record key
/// ([`is_rkey`]), and optionally a fragment (`#/` then URI characters).
///
/// Lexicon checks run this on every `at-uri` field (a like's subject, a reply's parent), so it
/// is these byte loops rather than jacquard's `AtUri::new`, which runs four regexes (~1.3 µs a
/// call); a property test keeps the two in agreement. One difference is deliberate: jacquard
/// takes the authority as a handle only when lowercase and outside the TLDs it disallows
/// (registration policy); here, as for handles elsewhere, the syntax alone decides.
pub fn is_at_uri(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("at://") else { return false };
    let (path, fragment) = match rest.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment)),
        None => (rest, None),
    };
    let fragment_ok = |f: &str| {
        f.starts_with('/') && f.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~:@!$&%')(*+,;=-[]/\\".contains(&b))
    };
    let mut parts = path.splitn(3, '/');
    let authority = parts.next().unwrap_or_default();
    is_at_identifier(authority)
        && fragment.is_none_or(fragment_ok)
        && match (parts.next(), parts.next()) {
            (None, _) => true,
            (Some(collection), None) => is_nsid(collection),
            (Some(collection), Some(rkey)) => is_nsid(collection) && is_rkey(rkey),
        }
}

/// Whether `s` is a DID or a handle (an at-identifier).
pub fn is_at_identifier(s: &str) -> bool {
    is_did(s) || is_handle(s)
}

/// Whether `s` has the syntax of a CID string: 8-256 of `A-Za-z0-9+=`, and not a CIDv0
/// (`Qmb...`), which the protocol does not use. (Whether it decodes is another matter.)
pub fn is_cid(s: &str) -> bool {
    (8..=256).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'=')
        && !s.starts_with("Qmb")
}

/// Whether `s` is a valid AT Protocol datetime: jacquard's rule (the ISO 8601 shape its
/// regex requires, then chrono's RFC 3339 parse), and a time that falls in year 0 or later
/// once taken to UTC.
///
/// Every record's `createdAt` is checked when lexicons are, so the shape is a byte check
/// rather than jacquard's regex (whose cache pool the walk threads contend for) and the parse
/// is chrono's without jacquard's copy of the string; a property test keeps it to
/// `Datetime::from_str`.
pub fn is_datetime(s: &str) -> bool {
    use chrono::Datelike;
    iso8601_shape(s.as_bytes()) && chrono::DateTime::parse_from_rfc3339(s).is_ok_and(|d| d.naive_utc().year() >= 0)
}

/// jacquard's `ISO8601_REGEX`: `YYYY-MM-DDTHH:MM:SS`, an optional fraction of one or more
/// digits, then `Z`, `+HH:MM` or `-HH:MM` (where jacquard refuses a second hour digit of 0).
fn iso8601_shape(s: &[u8]) -> bool {
    let digits = |range: std::ops::Range<usize>| s.get(range).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let at = |i: usize, b: u8| s.get(i) == Some(&b);
    let head = digits(0..4)
        && at(4, b'-')
        && digits(5..7)
        && at(7, b'-')
        && digits(8..10)
        && at(10, b'T')
        && digits(11..13)
        && at(13, b':')
        && digits(14..16)
        && at(16, b':')
        && digits(17..19);
    if !head {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    match rest {
        [b'Z'] => true,
        [b'+', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()),
        [b'-', h1, h2, b':', m1, m2] => [h1, m1, m2].iter().all(|b| b.is_ascii_digit()) && (b'1'..=b'9').contains(h2),
        _ => false,
    }
}

/// Unix ms as an AT Protocol datetime: RFC 3339, UTC, milliseconds.
pub fn datetime_from_ms(ms: u64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or_default();
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Whether `s` is a valid BCP 47 language tag as the protocol takes it: well-formed (jacquard,
/// by oxilangtag), a primary subtag of 2-3 lowercase letters, `i` or `x`, and no variant or
/// extension singleton repeated (RFC 5646 §2.2.5, §2.2.6).
pub fn is_language(s: &str) -> bool {
    if jacquard_common::types::language::Language::new(s).is_err() {
        return false;
    }
    let mut subtags = s.split('-');
    let primary = subtags.next().unwrap_or("");
    let primary_ok = matches!(primary, "i" | "x" | "X")
        || ((2..=3).contains(&primary.len()) && primary.bytes().all(|b| b.is_ascii_lowercase()));
    if !primary_ok {
        return false;
    }
    let (mut variants, mut singletons) = (Vec::new(), Vec::new());
    for tag in subtags {
        let lower = tag.to_ascii_lowercase();
        if lower == "x" {
            break; // private use: anything goes after it
        }
        let is_variant =
            (5..=8).contains(&tag.len()) || (tag.len() == 4 && tag.starts_with(|c: char| c.is_ascii_digit()));
        let seen = match tag.len() {
            1 => &mut singletons,
            _ if is_variant && singletons.is_empty() => &mut variants,
            _ => continue,
        };
        if seen.contains(&lower) {
            return false;
        }
        seen.push(lower);
    }
    true
}

/// Why an NSID pattern is refused, or `None` when it is valid. A pattern is an NSID, `*`, or
/// `prefix.*` where the prefix is one or more whole NSID segments (`app.bsky.*`; `app.bs*` is not).
pub fn nsid_pattern_problem(pattern: &str) -> Option<String> {
    if pattern == "*" {
        return None;
    }
    let Some(prefix) = pattern.strip_suffix(".*") else {
        if pattern.contains('*') {
            return Some(format!("`{pattern}`: `*` may only stand for whole trailing segments, as in `app.bsky.*`"));
        }
        return (!is_nsid(pattern)).then(|| format!("`{pattern}` is not a valid NSID"));
    };
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if prefix.split('.').all(segment_ok) && prefix.len() <= 253 {
        None
    } else {
        Some(format!("`{pattern}`: the part before `.*` must be whole NSID segments, as in `app.bsky.*`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jacquard_common::types::string::{AtUri, Did, Nsid, Rkey};
    use proptest::prelude::*;

    /// Strings built as at-uris are, each part most often valid.
    fn at_uri_like() -> impl Strategy<Value = String> {
        let scheme = prop_oneof![6 => Just("at://".to_string()), 1 => "(at:/|http://|at//)"];
        let authority = prop_oneof![
            "did:(plc|web):[a-z0-9.:%]{1,6}",
            "[a-z][a-z0-9-]{0,4}\\.[a-z][a-z0-9-]{0,4}",
            "[a-z0-9:.%_-]{0,6}",
        ];
        let collection =
            prop_oneof![Just(String::new()), "/[a-z]{1,3}\\.[a-z]{1,3}\\.[a-zA-Z]{1,3}", "/[a-zA-Z0-9.-]{0,8}",];
        let rkey = prop_oneof![Just(String::new()), "/[a-zA-Z0-9._:~-]{1,5}", "/[a-zA-Z0-9._:~@ /-]{0,5}"];
        let fragment = prop_oneof![Just(String::new()), "#/[a-z/\\[\\]()]{0,4}", "#[a-z/#\\[\\]() ]{0,4}"];
        (scheme, authority, collection, rkey, fragment).prop_map(|(s, a, c, r, f)| format!("{s}{a}{c}{r}{f}"))
    }

    /// Strings built as datetimes, each part most often valid.
    pub(super) fn datetime_like() -> impl Strategy<Value = String> {
        let year = prop_oneof![8 => "(19|20)[0-9]{2}", 1 => "-?[0-9]{3,5}"];
        let month = prop_oneof![8 => "(0[1-9]|1[0-2])", 1 => "[0-9]{1,2}"];
        let day = prop_oneof![8 => "(0[1-9]|1[0-9]|2[0-8])", 1 => "(3[0-9]|[0-9])"];
        let sep = prop_oneof![8 => Just("T".to_string()), 1 => "[t ]"];
        let time = prop_oneof![8 => "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]", 1 => "[0-9]{2}:[0-9]{2}:[0-9]{1,2}"];
        let fraction = prop_oneof![Just(String::new()), "\\.[0-9]{1,9}", "\\.|,5"];
        let zone = prop_oneof![
            4 => Just("Z".to_string()),
            4 => "[+-](0[0-9]|1[0-4]):(00|30)",
            1 => "z|[+-][0-9]{2}:?[0-9]{2}|[+-][0-9]{2}|",
        ];
        let tail = prop_oneof![8 => Just(String::new()), 1 => "x| "];
        ((year, month, day), sep, time, fraction, zone, tail)
            .prop_map(|((y, mo, d), t, hms, f, z, x)| format!("{y}-{mo}-{d}{t}{hms}{f}{z}{x}"))
    }

    proptest! {
        #[test]
        fn fast_did_check_agrees_with_jacquard(s in "(did:)?[a-zA-Z0-9._:%/ -]{0,16}") {
            prop_assert_eq!(is_did(&s), Did::new(s.as_str()).is_ok());
        }

        #[test]
        fn fast_nsid_check_agrees_with_jacquard(
            s in "[a-zA-Z0-9.-]{0,3}([a-zA-Z0-9_-]{0,3}\\.){0,4}[a-zA-Z0-9 -]{0,4}",
        ) {
            prop_assert_eq!(is_nsid(&s), Nsid::new(s.as_str()).is_ok());
        }

        /// Authorities are DIDs or lowercase handles outside the TLDs jacquard refuses (the
        /// one difference, tested below); around them, each part valid, absent or broken.
        #[test]
        fn fast_at_uri_check_agrees_with_jacquard(s in at_uri_like()) {
            prop_assert_eq!(is_at_uri(&s), AtUri::new(s.as_str()).is_ok());
        }

        /// Near-datetimes: every part right, missing or off by a character.
        #[test]
        fn fast_datetime_check_agrees_with_jacquard(s in datetime_like()) {
            let jacquard = s.parse::<jacquard_common::types::datetime::Datetime>().is_ok_and(|d| {
                use chrono::Datelike;
                AsRef::<chrono::DateTime<chrono::FixedOffset>>::as_ref(&d).naive_utc().year() >= 0
            });
            prop_assert_eq!(is_datetime(&s), jacquard);
        }

        #[test]
        fn fast_rkey_check_agrees_with_jacquard(s in "[a-zA-Z0-9._:~!@ /-]{0,12}") {
            prop_assert_eq!(is_rkey(&s), Rkey::new(s.as_str()).is_ok());
        }
    }

    #[test]
    fn at_uris_are_judged_by_their_parts() {
        for s in [
            "at://did:plc:abc",
            "at://did:plc:abc/app.bsky.feed.post",
            "at://did:plc:abc/app.bsky.feed.post/3kabc",
            "at://alice.test/app.bsky.feed.post/3kabc#/text",
        ] {
            assert!(is_at_uri(s) && AtUri::new(s).is_ok(), "{s}");
        }
        for s in [
            "at://did:plc:abc/",
            "at://did:plc:abc/app.bsky.feed.post/",
            "at://did:plc:abc/app.bsky.feed.post/a/b",
            "at://did:plc:abc/app.bsky/3kabc",
            "at://did:plc:abc#text",
            "at://did:plc:abc/app.bsky.feed.post/3kabc#/a#b",
            "at://",
            "did:plc:abc",
        ] {
            assert!(!is_at_uri(s) && AtUri::new(s).is_err(), "{s}");
        }
        // Syntax decides the authority: jacquard refuses these handles by policy.
        for s in ["at://Alice.test/app.bsky.feed.post/3kabc", "at://printer.local"] {
            assert!(is_at_uri(s) && AtUri::new(s).is_err(), "{s}");
        }
    }

    #[test]
    fn did_and_nsid_limits_agree_with_jacquard() {
        for n in [2047, 2048, 2049] {
            let did = format!("did:plc:{}", "a".repeat(n - 8));
            assert_eq!(is_did(&did), Did::new(did.as_str()).is_ok(), "{n}");
        }
        for s in [
            "did:plc:abc",
            "did:web:example.com%3A8080",
            "did:plc:",
            "did::x",
            "did:PLC:x",
            "did:plc:x%",
            "did:plc:x:",
            "did:plc:a:b",
        ] {
            assert_eq!(is_did(s), Did::new(s).is_ok(), "{s}");
        }
        let long = |n: usize| format!("a{}.b.c", "b".repeat(n - 1));
        for (label, nsid) in [
            ("63", long(63)),
            ("64", long(64)),
            (
                "317",
                format!(
                    "{}.{}.{}.{}.{}x",
                    "a".repeat(63),
                    "b".repeat(63),
                    "c".repeat(63),
                    "d".repeat(63),
                    "e".repeat(60)
                ),
            ),
            (
                "318",
                format!(
                    "{}.{}.{}.{}.{}xy",
                    "a".repeat(63),
                    "b".repeat(63),
                    "c".repeat(63),
                    "d".repeat(63),
                    "e".repeat(60)
                ),
            ),
        ] {
            assert_eq!(is_nsid(&nsid), Nsid::new(nsid.as_str()).is_ok(), "{label}: {nsid}");
        }
        for s in [
            "app.bsky.feed.post",
            "a.b.c",
            "a-b.c.d",
            "app.bsky.feed.post-x",
            "app.bsky.9post",
            "1app.bsky.post",
            "app..post",
            "app.bsky",
            "app.-b.c",
            "app.b-.c",
            "com.example.fooBar2",
        ] {
            assert_eq!(is_nsid(s), Nsid::new(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn rkey_length_limit_agrees_with_jacquard() {
        for n in [511, 512, 513] {
            let s = "a".repeat(n);
            assert_eq!(is_rkey(&s), Rkey::new(s.as_str()).is_ok(), "{n}");
        }
    }

    #[test]
    fn patterns_are_whole_segments() {
        assert_eq!(nsid_pattern_problem("app.bsky.*"), None);
        assert_eq!(nsid_pattern_problem("app.bsky.feed.post"), None);
        assert_eq!(nsid_pattern_problem("*"), None);
        assert!(nsid_pattern_problem("app.bs*").is_some());
        assert!(nsid_pattern_problem("app.*.post").is_some());
        assert!(nsid_pattern_problem("app..*").is_some());
        assert!(nsid_pattern_problem("not an nsid").is_some());
    }
}
