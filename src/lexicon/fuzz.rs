//! The fuzz body for `lexicon_check`: a record's bytes checked against a lexicon that holds
//! every kind of field and constraint sluice checks.

use std::sync::LazyLock;

use super::{Lexicons, Verdict, decode_plain};

/// The collection [`fuzz_check`] checks records against.
pub const FUZZ_COLLECTION: &str = "com.example.fuzz.thing";

/// A lexicon written for fuzzing (no real one holds all of this): strings with byte, grapheme
/// and format bounds, integers with ranges, `enum` and `const`, arrays with lengths, nullable
/// and required fields, refs (one to a `string` def), an open and a closed union, blobs, bytes
/// and links.
const THING: &str = r##"{"lexicon": 1, "id": "com.example.fuzz.thing", "defs": {
  "main": {"type": "record", "key": "tid", "record": {"type": "object", "required": ["text", "createdAt"],
    "nullable": ["note"],
    "properties": {
      "text": {"type": "string", "maxLength": 64, "maxGraphemes": 8, "minGraphemes": 1},
      "note": {"type": "string", "minLength": 2},
      "createdAt": {"type": "string", "format": "datetime"},
      "langs": {"type": "array", "maxLength": 3, "items": {"type": "string", "format": "language"}},
      "n": {"type": "integer", "minimum": -5, "maximum": 5},
      "kind": {"type": "string", "enum": ["a", "b"]},
      "one": {"type": "integer", "const": 1},
      "flag": {"type": "boolean"},
      "subject": {"type": "ref", "ref": "#strongRef"},
      "handle": {"type": "ref", "ref": "#handle"},
      "embed": {"type": "union", "refs": ["#images", "#strongRef"]},
      "closed": {"type": "union", "refs": ["#images"], "closed": true},
      "raw": {"type": "bytes", "maxLength": 8},
      "link": {"type": "cid-link"},
      "tags": {"type": "array", "items": {"type": "union", "refs": ["#tag"]}},
      "any": {"type": "unknown"}
    }}},
  "strongRef": {"type": "object", "required": ["uri", "cid"], "properties": {
    "uri": {"type": "string", "format": "at-uri"}, "cid": {"type": "string", "format": "cid"}}},
  "handle": {"type": "string", "format": "handle"},
  "images": {"type": "object", "required": ["images"], "properties": {"images": {"type": "array", "maxLength": 2,
    "items": {"type": "object", "required": ["image"], "properties": {
      "image": {"type": "blob", "accept": ["image/*"], "maxSize": 1000},
      "alt": {"type": "string", "maxGraphemes": 4}}}}}},
  "tag": {"type": "object", "properties": {"did": {"type": "string", "format": "did"},
    "uri": {"type": "string", "format": "uri"}, "nsid": {"type": "string", "format": "nsid"},
    "tid": {"type": "string", "format": "tid"}, "rkey": {"type": "string", "format": "record-key"},
    "who": {"type": "string", "format": "at-identifier"}}}
}}"##;

static LEXICONS: LazyLock<Lexicons> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("sluice-fuzz-lexicons-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory for the fuzz lexicon");
    std::fs::write(dir.join("thing.json"), THING).expect("the fuzz lexicon written");
    let lexicons = Lexicons::load(&dir, &[FUZZ_COLLECTION.to_string()]).expect("the fuzz lexicon loads");
    let _ = std::fs::remove_dir_all(&dir);
    lexicons
});

/// Any bytes, taken as a record of [`FUZZ_COLLECTION`], are checked without a panic, the same
/// way twice; bytes that do not decode are refused with rule `decode`; and bytes the record
/// rule admits (what the pipeline hands the check) always decode. Panics only on a real bug.
pub fn fuzz_check(body: &[u8]) -> Verdict {
    let verdict = LEXICONS.check(FUZZ_COLLECTION, body);
    assert_eq!(verdict, LEXICONS.check(FUZZ_COLLECTION, body), "a check is deterministic");
    let decoded = decode_plain(body);
    match (&decoded, &verdict) {
        (Err(_), Verdict::Invalid(r)) => assert_eq!(r.rule, "decode", "{r:?}"),
        (Err(e), other) => panic!("undecodable ({e}) but {other:?}"),
        (Ok(_), _) => {}
    }
    if sluice_handlers::rules::check_record(body).is_ok() {
        assert!(decoded.is_ok(), "admitted by the record rule but not decoded: {:?}", decoded.err());
    }
    verdict
}
