//! Records checked against lexicons (`sluice::lexicon`) on real data: every record of the
//! fixture CARs in ../shared/fixtures/car against the lexicons in ../shared/fixtures/lexicons
//! (all of atproto's and statusphere's, plus the few others the directory holds); mutations of
//! those records that break a rule, rejected at the path of what was broken; and unknown
//! members of open unions, accepted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde_json::{Value, json};
use sluice::handlers::value::{cbor_to_json, json_to_cbor};
use sluice::lexicon::{Lexicons, Rejection, Verdict};
use sluice::repo::{CarLimits, RecordEntry, read_car};
use sluice_testkit::{fixture, read_fixture};

const CARS: [&str; 5] = ["tiny.car", "little.car", "empty.car", "calabro.car", "jetstream-repo.car"];

/// Records of the fixture CARs that do not validate, and why: (CAR, collection/rkey, rule, path).
/// Empty: every record with a lexicon in the directory validates. (A first run found nine
/// `site.standard.document`s whose `site` is an at-uri refused as a `uri`; that was the check's
/// fault, an RFC 3986 parser that reads the DID as a host and port, now the reference
/// implementations' rule.)
const EXCEPTIONS: &[(&str, &str, &str, &str)] = &[];

/// Every record collection of the fixture directory.
static LEX: LazyLock<Lexicons> =
    LazyLock::new(|| Lexicons::load(&fixture("lexicons"), &[]).expect("fixture lexicons load"));

/// The fixture lexicon documents as JSON, by id (to find each collection's rules generically).
static DOCS: LazyLock<HashMap<String, Value>> = LazyLock::new(|| {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out)
            } else if path.extension().is_some_and(|x| x == "json") {
                out.push(path)
            }
        }
    }
    let mut files = Vec::new();
    walk(&fixture("lexicons"), &mut files);
    files
        .iter()
        .map(|f| serde_json::from_slice::<Value>(&std::fs::read(f).unwrap()).unwrap())
        .map(|doc| (doc["id"].as_str().unwrap().to_string(), doc))
        .collect()
});

fn records(car: &str) -> Vec<RecordEntry> {
    let repo = read_car(&read_fixture(&format!("car/{car}")), &CarLimits::default()).unwrap();
    repo.records().collect::<Result<_, _>>().unwrap()
}

/// Every valid record of the fixture CARs, as (collection, JSON).
static VALID: LazyLock<Vec<(String, Value)>> = LazyLock::new(|| {
    let mut out = Vec::new();
    for car in CARS {
        for e in records(car) {
            if LEX.check(&e.collection, &e.bytes) == Verdict::Valid {
                out.push((e.collection.to_string(), cbor_to_json(&e.bytes).unwrap()));
            }
        }
    }
    out
});

fn check(collection: &str, v: &Value) -> Verdict {
    LEX.check(collection, &json_to_cbor(v).unwrap())
}

fn rejection(collection: &str, v: &Value) -> Rejection {
    match check(collection, v) {
        Verdict::Invalid(r) => r,
        other => panic!("{collection} {v} was {other:?}, not rejected"),
    }
}

#[test]
fn every_fixture_record_validates_against_the_fixture_lexicons() {
    let mut invalid = Vec::new();
    let mut tally: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for car in CARS {
        for e in records(car) {
            let (valid, unknown) = tally.entry(car).or_default();
            match LEX.check(&e.collection, &e.bytes) {
                Verdict::Valid => *valid += 1,
                Verdict::Unknown => {
                    *unknown += 1;
                    // Unknown only because the directory has no lexicon for it (third-party apps).
                    assert!(!DOCS.contains_key(e.collection.as_str()), "{car} {}: a lexicon exists", e.collection);
                }
                Verdict::Invalid(r) => invalid.push((
                    car,
                    format!("{}/{}", e.collection, e.rkey),
                    r.rule.clone(),
                    r.path.clone(),
                    r.message,
                )),
            }
        }
    }
    let got: Vec<_> =
        invalid.iter().map(|(car, at, rule, path, _)| (*car, at.as_str(), rule.as_str(), path.as_str())).collect();
    assert_eq!(got, EXCEPTIONS, "records that do not validate: {invalid:#?}");
    // What validated (and, in the third-party collections, had no lexicon): every record counted.
    assert_eq!(tally["tiny.car"], (8, 0));
    assert_eq!(tally["little.car"], (211, 67));
    assert_eq!(tally["calabro.car"].0 + tally["calabro.car"].1, 4_347);
    assert!(tally["calabro.car"].0 >= 4_280, "{tally:?}");
    assert_eq!(tally["jetstream-repo.car"], (23, 0));
}

/// The record def's object of `collection`'s lexicon.
fn record_schema(collection: &str) -> &'static Value {
    &DOCS[collection]["defs"]["main"]["record"]
}

#[test]
fn mutations_of_valid_records_are_rejected_with_the_path_named() {
    let mut made: BTreeMap<&str, usize> = BTreeMap::new();
    let mut expect = |collection: &str, mutated: &Value, path: &str, rule: &str, kind: &'static str| {
        let r = rejection(collection, mutated);
        assert_eq!((r.path.as_str(), r.rule.as_str()), (path, rule), "{kind} on {collection}: {r}");
        *made.entry(kind).or_default() += 1;
    };
    for (collection, record) in VALID.iter() {
        let schema = record_schema(collection);
        let fields = record.as_object().unwrap();
        for field in schema["required"].as_array().into_iter().flatten().map(|f| f.as_str().unwrap()) {
            let mut m = record.clone();
            m.as_object_mut().unwrap().remove(field);
            expect(collection, &m, field, "required", "missing required field");
        }
        for (name, prop) in schema["properties"].as_object().unwrap() {
            if !fields.contains_key(name) {
                continue;
            }
            // (A ref may name a string def, so refs too get an integer.)
            let wrong = match prop["type"].as_str().unwrap() {
                "integer" => json!("seven"),
                "unknown" => continue,
                _ => json!(7),
            };
            let mut m = record.clone();
            m[name] = wrong;
            expect(collection, &m, name, "type", "wrong type");
            if prop["type"] != "string" {
                continue;
            }
            if let Some(max) = prop["maxLength"].as_u64() {
                let mut m = record.clone();
                m[name] = json!("a".repeat(max as usize + 1));
                expect(collection, &m, name, "maxLength", "over maxLength");
            }
            if let Some(max) = prop["maxGraphemes"].as_u64() {
                let over = "é".repeat(max as usize + 1);
                if prop["maxLength"].as_u64().is_none_or(|l| over.len() as u64 <= l) {
                    let mut m = record.clone();
                    m[name] = json!(over);
                    expect(collection, &m, name, "maxGraphemes", "over maxGraphemes");
                }
            }
            if prop["format"] == "datetime" {
                for bad in ["yesterday", "2024-13-01T00:00:00Z", "2024-01-01 00:00:00", "2024-01-01T00:00:00"] {
                    let mut m = record.clone();
                    m[name] = json!(bad);
                    expect(collection, &m, name, "format datetime", "bad datetime");
                }
            }
        }
        // Nested: a like's subject, a post's languages.
        if collection == "app.bsky.feed.like" {
            let mut m = record.clone();
            m["subject"]["uri"] = json!("not an at-uri");
            expect(collection, &m, "subject.uri", "format at-uri", "nested bad format");
        }
        if let Some(langs) = record["langs"].as_array().filter(|l| !l.is_empty()) {
            let mut m = record.clone();
            let last = langs.len() - 1;
            m["langs"][last] = json!("not a language tag");
            expect(collection, &m, &format!("langs[{last}]"), "format language", "nested bad format");
        }
    }
    for kind in [
        "missing required field",
        "wrong type",
        "over maxLength",
        "over maxGraphemes",
        "bad datetime",
        "nested bad format",
    ] {
        assert!(made.get(kind).is_some_and(|&n| n >= 100), "{kind}: only {made:?}");
    }
}

#[test]
fn unknown_members_of_open_unions_pass() {
    let mut embeds = 0;
    let mut features = 0;
    for (collection, record) in VALID.iter().filter(|(c, _)| c == "app.bsky.feed.post") {
        if record.get("embed").is_some() {
            let mut m = record.clone();
            m["embed"] = json!({"$type": "com.example.embed.hologram", "depth": 3, "frames": ["a", "b"]});
            assert_eq!(check(collection, &m), Verdict::Valid, "{m}");
            // A known member still has to be right.
            let mut m = record.clone();
            m["embed"] = json!({"$type": "app.bsky.embed.external", "external": {"uri": "https://example.com"}});
            assert_eq!(rejection(collection, &m).path, "embed.external.title");
            embeds += 1;
        }
        if record["facets"][0]["features"].is_array() {
            let mut m = record.clone();
            m["facets"][0]["features"][0] = json!({"$type": "com.example.facet#sparkle", "level": 9});
            assert_eq!(check(collection, &m), Verdict::Valid, "{m}");
            features += 1;
        }
    }
    assert!(embeds >= 50 && features >= 20, "{embeds} embeds, {features} facets");
    // Labels (com.atproto.label.defs#selfLabels in an open union) on any record type that has them.
    let mut p = VALID.iter().find(|(c, _)| c == "app.bsky.feed.post").unwrap().1.clone();
    p["labels"] = json!({"$type": "com.example.labels", "values": 42});
    assert_eq!(check("app.bsky.feed.post", &p), Verdict::Valid);
}
