//! The real AT Protocol data in ../shared/fixtures: repo exports with known counts, the
//! interop-tests syntax lists, data-model fixtures and MST key heights.

use std::collections::BTreeMap;

use sluice::IndexOptions;
use sluice::repo::{CarLimits, read_car};
use sluice_testkit::{car_file, fixture, read_fixture, sluice_with, syntax_lines};

fn walk(name: &str) -> Vec<sluice::repo::RecordEntry> {
    let repo = read_car(&read_fixture(&format!("car/{name}")), &CarLimits::default()).unwrap();
    repo.check_commit(None).unwrap();
    repo.records().collect::<Result<_, _>>().unwrap()
}

#[test]
fn a_car_read_from_a_file_walks_exactly_as_from_memory() {
    for name in ["tiny.car", "little.car", "empty.car", "calabro.car", "jetstream-repo.car"] {
        let (car, expected) = (read_fixture(&format!("car/{name}")), walk(name));
        let repo = sluice::repo::read_car_owned(car.clone().into(), &CarLimits::default()).unwrap();
        let owned: Vec<_> = repo.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(owned, expected, "{name} read from bytes it keeps");
        let repo = sluice::repo::read_car_file_into_memory(&car_file(&car), &CarLimits::default()).unwrap();
        let into_memory: Vec<_> = repo.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(into_memory, expected, "{name} read from a file into memory");
        let repo = sluice::repo::read_car_file(car_file(&car), &CarLimits::default()).unwrap();
        let from_file: Vec<_> = repo.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(from_file, expected, "{name}");
    }
}

#[test]
fn fixture_cars_hold_the_expected_records_and_bytes() {
    for (name, records, bytes) in [
        ("tiny.car", 8, Some(2_071)),
        ("little.car", 278, Some(246_960)),
        ("empty.car", 0, Some(0)),
        ("calabro.car", 4_347, None),
    ] {
        let entries = walk(name);
        assert_eq!(entries.len(), records, "{name}");
        if let Some(b) = bytes {
            assert_eq!(entries.iter().map(|e| e.bytes.len()).sum::<usize>(), b, "{name} record bytes");
        }
    }
    let entries = walk("little.car");
    let collections: std::collections::BTreeSet<_> = entries.iter().map(|e| e.collection.clone()).collect();
    assert_eq!(collections.len(), 24);
    let calabro = walk("calabro.car");
    let count = |c: &str| calabro.iter().filter(|e| e.collection == c).count();
    assert_eq!(
        (count("app.bsky.feed.like"), count("app.bsky.graph.follow"), count("app.bsky.feed.post")),
        (2_312, 663, 610)
    );
    // The fixture README says 56 collections; the repo (and jacquard's own MST walk, see
    // `walk_agrees_with_jacquards_mst`) holds 55 distinct ones.
    let collections: std::collections::BTreeSet<_> = calabro.iter().map(|e| e.collection.clone()).collect();
    assert_eq!(collections.len(), 55);
}

#[test]
fn jetstream_repo_matches_every_path_and_cid() {
    let expected: Vec<(String, String)> = String::from_utf8(read_fixture("car/jetstream-repo.expected.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (path, cid) = l.split_once('\t').unwrap();
            (path.to_string(), cid.to_string())
        })
        .collect();
    let got: Vec<(String, String)> = walk("jetstream-repo.car")
        .into_iter()
        .map(|e| (format!("{}/{}", e.collection, e.rkey), e.cid.to_string()))
        .collect();
    assert_eq!(got, expected);

    let commit_text = String::from_utf8(read_fixture("car/jetstream-repo.expected-commit.txt")).unwrap();
    let field = |name: &str| commit_text.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().to_string();
    let repo = read_car(&read_fixture("car/jetstream-repo.car"), &CarLimits::default()).unwrap();
    assert_eq!(repo.commit.version.to_string(), field("ATProto Repo Spec Version:"));
    assert_eq!(repo.did(), field("DID:"));
    assert_eq!(repo.data().to_string(), field("Data CID:"));
    assert_eq!(repo.rev(), field("Revision:"));
    assert!(repo.commit.prev.is_none());
}

#[test]
fn calabro_through_the_pipeline_stores_its_counts() {
    let (_dir, s) = sluice_with("mode = \"full\"");
    let out = s.index_car(&read_fixture("car/calabro.car"), &IndexOptions::default()).unwrap();
    assert_eq!((out.created, out.handler_errors), (4_347, 0));
    let counts = s.store().counts();
    let n = |c: &str| counts.get(&("records".to_string(), c.to_string())).copied().unwrap_or(0);
    assert_eq!((n("app.bsky.feed.like"), n("app.bsky.graph.follow"), n("app.bsky.feed.post")), (2_312, 663, 610));
    assert_eq!(s.store().next_event_id(), 4_348);
}

#[test]
fn walk_agrees_with_jacquards_mst() {
    use jacquard_repo::{MemoryBlockStore, Mst};
    let bytes = read_fixture("car/calabro.car");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
    let parsed = rt.block_on(jacquard_repo::car::parse_car_bytes(&bytes)).unwrap();
    let repo = read_car(&bytes, &CarLimits::default()).unwrap();
    let storage = std::sync::Arc::new(MemoryBlockStore::new_from_blocks(parsed.blocks));
    let leaves = rt.block_on(Mst::load(storage, repo.data(), None).leaves_sequential()).unwrap();
    let theirs: Vec<(String, String)> = leaves.into_iter().map(|(k, c)| (k.to_string(), c.to_string())).collect();
    let ours: Vec<(String, String)> =
        walk("calabro.car").into_iter().map(|e| (format!("{}/{}", e.collection, e.rkey), e.cid.to_string())).collect();
    assert_eq!(ours, theirs);
}

#[test]
fn interop_syntax_lists_are_judged_right() {
    type Check = fn(&str) -> bool;
    let kinds: [(&str, Check); 10] = [
        ("atidentifier", sluice::syntax::is_at_identifier),
        ("cid", sluice::syntax::is_cid),
        ("datetime", sluice::syntax::is_datetime),
        ("language", sluice::syntax::is_language),
        ("did", sluice::syntax::is_did),
        ("nsid", sluice::syntax::is_nsid),
        ("handle", sluice::syntax::is_handle),
        ("recordkey", sluice::syntax::is_rkey),
        ("tid", sluice::syntax::is_tid),
        ("aturi", sluice::syntax::is_at_uri),
    ];
    let mut wrong = Vec::new();
    for (kind, check) in kinds {
        for line in syntax_lines(&format!("{kind}_syntax_valid.txt")) {
            if !check(&line) {
                wrong.push(format!("{kind}: valid {line:?} refused"));
            }
        }
        // Every kind has a syntax list of invalid strings; datetimes and languages also one of
        // strings that are well-formed but do not parse. A list missing from the fixtures fails.
        let mut invalid_lists = vec![format!("{kind}_syntax_invalid.txt")];
        if matches!(kind, "datetime" | "language") {
            invalid_lists.push(format!("{kind}_parse_invalid.txt"));
        }
        for list in invalid_lists {
            let lines = syntax_lines(&list);
            assert!(!lines.is_empty(), "{list} holds no strings");
            for line in lines {
                if check(&line) {
                    wrong.push(format!("{kind}: invalid {line:?} accepted ({list})"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn data_model_fixtures_convert_both_ways_with_their_cids() {
    use base64::Engine;
    let fixtures: Vec<serde_json::Value> =
        serde_json::from_slice(&read_fixture("atproto-interop-tests/data-model/data-model-fixtures.json")).unwrap();
    assert!(!fixtures.is_empty());
    for f in fixtures {
        let cbor = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(f["cbor_base64"].as_str().unwrap().trim_end_matches('='))
            .unwrap();
        let json = sluice::handlers::value::cbor_to_json(&cbor).unwrap();
        assert_eq!(json, f["json"], "CBOR -> JSON");
        let again = sluice::handlers::value::json_to_cbor(&f["json"]).unwrap();
        assert_eq!(again, cbor, "JSON -> CBOR");
        assert_eq!(jacquard_repo::mst::util::compute_cid(&again).unwrap().to_string(), f["cid"].as_str().unwrap());
    }
}

#[test]
fn data_model_invalid_json_is_refused() {
    let fixtures: Vec<serde_json::Value> =
        serde_json::from_slice(&read_fixture("atproto-interop-tests/data-model/data-model-invalid.json")).unwrap();
    let mut accepted = Vec::new();
    for f in &fixtures {
        if sluice::handlers::value::json_to_cbor(&f["json"]).is_ok() {
            accepted.push(f["note"].as_str().unwrap_or("?").to_string());
        }
    }
    assert!(accepted.is_empty(), "accepted invalid data: {accepted:?}");
}

#[test]
fn mst_key_heights_match_the_interop_fixture() {
    let cases: Vec<BTreeMap<String, serde_json::Value>> =
        serde_json::from_slice(&read_fixture("atproto-interop-tests/mst/key_heights.json")).unwrap();
    assert!(cases.len() > 5);
    for c in cases {
        let key = c["key"].as_str().unwrap();
        assert_eq!(jacquard_repo::mst::util::layer_for_key(key) as u64, c["height"].as_u64().unwrap(), "{key}");
    }
    assert!(fixture("atproto-interop-tests/mst/common_prefix.json").exists());
}
