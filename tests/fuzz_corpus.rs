//! Runs each fuzz target's body (the same library function cargo-fuzz calls) over its seed
//! corpus in `fuzz/seeds/`, and over random mutations of it, so fuzz findings stay fixed.

use std::path::PathBuf;

use proptest::prelude::*;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let out: Vec<_> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// A fuzz target: its name (the folder of its seeds) and its body.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 6] = [
    ("car", sluice::fuzz::car),
    ("filter_toml", sluice::fuzz::filter_toml),
    ("cbor_json", sluice::fuzz::cbor_json),
    ("frame", sluice::fuzz::frame),
    ("index_entries", sluice::fuzz::index_entries),
    ("lexicon_check", |body| {
        sluice::fuzz::lexicon_check(body);
    }),
];

#[test]
fn every_seed_runs_clean() {
    for (name, body) in TARGETS {
        for seed in seeds(name) {
            body(&seed);
        }
    }
}

/// Each malformed CAR seed (`fuzz/seeds/car/bad-*.car`, see its README) is refused by the reader
/// the backfill uses, with a message naming its problem.
#[test]
fn malformed_car_seeds_are_refused_naming_their_problem() {
    let expected = [
        ("bad-block-bytes.car", "does not match its CID"),
        ("bad-missing-block.car", "missing block"),
        ("bad-no-roots.car", "empty CAR file"),
        ("bad-truncated.car", "malformed or truncated CAR"),
        ("bad-version-2.car", "Only CAR file version 1 is supported"),
    ];
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/car");
    let named: Vec<String> = expected.iter().map(|(name, _)| name.to_string()).collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("bad-"))
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, named, "every malformed seed has its expected refusal here");
    for (name, problem) in expected {
        let bytes = bytes::Bytes::from(std::fs::read(dir.join(name)).unwrap());
        let walked = sluice::repo::read_car_owned(bytes, &Default::default()).and_then(|repo| {
            repo.check_commit(None)?;
            repo.records().collect::<Result<Vec<_>, _>>()
        });
        match walked {
            Ok(records) => panic!("{name}: accepted with {} records", records.len()),
            Err(e) => assert!(e.to_string().contains(problem), "{name}: {e}"),
        }
    }
}

#[test]
fn seeds_exercise_the_accepting_paths() {
    // A corpus that only holds garbage would fuzz nothing but the first check.
    assert!(seeds("car").iter().any(|s| sluice::repo::read_car(s, &Default::default()).is_ok()));
    assert!(
        seeds("filter_toml").iter().any(|s| sluice::Filter::from_toml(std::str::from_utf8(s).unwrap(), "seed").is_ok())
    );
    assert!(seeds("cbor_json").iter().any(|s| sluice::handlers::value::cbor_to_json(s).is_ok()));
    assert!(
        seeds("frame")
            .iter()
            .any(|s| matches!(sluice::firehose::decode_frame(s), Ok(sluice::firehose::Frame::Commit(_))))
    );
    assert!(
        seeds("frame")
            .iter()
            .any(|s| matches!(sluice::firehose::decode_frame(s), Ok(sluice::firehose::Frame::Error { .. })))
    );
    // The frame body reaches a commit's ops: some seed's commit has its records taken.
    let ops_taken = seeds("frame").iter().any(|s| match sluice::firehose::decode_frame(s) {
        Ok(sluice::firehose::Frame::Commit(commit)) => {
            let blocks = sluice::firehose::ops::commit_blocks(&commit, &Default::default()).unwrap();
            let ops = sluice::firehose::ops::record_ops(&commit, &blocks).unwrap();
            ops.iter().any(|op| matches!(op, sluice::RecordOp::Put { .. }))
        }
        _ => false,
    });
    assert!(ops_taken, "no frame seed is a commit with a record");
    // Some index entry seed reaches an entry through a blob (`post-media-blob`).
    let spec = sluice::indexes::IndexSpec {
        name: "seeds".into(),
        collection: "app.bsky.feed.post".into(),
        key: vec![sluice::indexes::FieldPath::parse("embed.media.image.mimeType").unwrap()],
        sort: sluice::indexes::Sort::parse("n", Some("integer")).unwrap(),
        count: false,
        per_repo: sluice::indexes::PerRepo::All,
        method: None,
    };
    assert!(seeds("index_entries").iter().any(|s| sluice::indexes::entries(&spec, "3kx", s, 0).is_ok()));
}

/// The records `fuzz/seeds/lexicon_check/` holds, by file name, and the rule each breaks (`None`:
/// valid). `SLUICE_WRITE_SEEDS=1` writes them; otherwise the files must be these records.
fn lexicon_seeds() -> Vec<(&'static str, serde_json::Value, Option<&'static str>)> {
    use serde_json::json;
    const CID: &str = "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq";
    let thing = |fields: serde_json::Value| {
        let mut v =
            json!({"$type": sluice::lexicon::FUZZ_COLLECTION, "text": "hi", "createdAt": "2024-05-01T12:00:00Z"});
        v.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        v
    };
    let image = |mime: &str, size: u64| json!({"image": {"$type": "blob", "ref": {"$link": CID}, "mimeType": mime, "size": size}, "alt": "a"});
    vec![
        ("minimal.cbor", thing(json!({})), None),
        (
            "everything.cbor",
            thing(json!({
                "note": null, "langs": ["en", "pt-BR"], "n": -5, "kind": "b", "one": 1, "flag": true,
                "subject": {"uri": "at://did:plc:abc/app.bsky.feed.post/3kabc", "cid": CID},
                "handle": "alice.test",
                "embed": {"$type": "com.example.fuzz.thing#images", "images": [image("image/png", 1000)]},
                "closed": {"$type": "com.example.fuzz.thing#images", "images": []},
                "raw": {"$bytes": "aGVsbG8"}, "link": {"$link": CID},
                "tags": [{"$type": "com.example.fuzz.thing#tag", "did": "did:web:x.test", "uri": "https://x.test/a",
                          "nsid": "app.bsky.feed.post", "tid": "3kabc2defgh22", "rkey": "self", "who": "x.test"}],
                "any": {"deep": [1, {"x": "y"}]}
            })),
            None,
        ),
        ("open-union-unknown-member.cbor", thing(json!({"embed": {"$type": "com.example.other#x", "z": 1}})), None),
        (
            "legacy-blob.cbor",
            thing(
                json!({"embed": {"$type": "com.example.fuzz.thing#images", "images": [{"image": {"cid": CID, "mimeType": "image/gif"}}]}}),
            ),
            None,
        ),
        ("too-many-graphemes.cbor", thing(json!({"text": "👍👍👍👍👍👍👍👍👍"})), Some("maxGraphemes")),
        ("bad-datetime.cbor", thing(json!({"createdAt": "2024-05-01 12:00"})), Some("format datetime")),
        ("integer-over.cbor", thing(json!({"n": 6})), Some("maximum")),
        (
            "images-over.cbor",
            thing(
                json!({"embed": {"$type": "com.example.fuzz.thing#images", "images": [image("image/png", 1), image("image/png", 1), image("image/png", 1)]}}),
            ),
            Some("maxLength"),
        ),
        (
            "blob-not-accepted.cbor",
            thing(json!({"embed": {"$type": "com.example.fuzz.thing#images", "images": [image("video/mp4", 1)]}})),
            Some("accept"),
        ),
        (
            "closed-union-unlisted.cbor",
            thing(json!({"closed": {"$type": "com.example.fuzz.thing#tag"}})),
            Some("closed union"),
        ),
        ("ref-to-string-def.cbor", thing(json!({"handle": "not a handle"})), Some("format handle")),
        ("wrong-type.cbor", thing(json!({"subject": {"uri": 1, "cid": CID}})), Some("type")),
        ("missing-required.cbor", json!({"$type": sluice::lexicon::FUZZ_COLLECTION, "text": "hi"}), Some("required")),
    ]
}

#[test]
fn lexicon_seeds_are_the_records_they_say_with_their_verdicts() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/lexicon_check");
    let seeds = lexicon_seeds();
    for (name, record, rule) in &seeds {
        let bytes = sluice::handlers::value::json_to_cbor(record).unwrap();
        if std::env::var_os("SLUICE_WRITE_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), &bytes).unwrap();
        }
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), bytes, "{name}: write it with SLUICE_WRITE_SEEDS=1");
        match (sluice::fuzz::lexicon_check(&bytes), rule) {
            (sluice::lexicon::Verdict::Valid, None) => {}
            (sluice::lexicon::Verdict::Invalid(r), Some(rule)) => assert_eq!(r.rule, *rule, "{name}: {r:?}"),
            (other, rule) => panic!("{name}: {other:?}, expected {rule:?}"),
        }
    }
    let on_disk = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(on_disk, seeds.len(), "every seed in {} is listed here", dir.display());
}

fn mutate(seed: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for &(pos, op, byte) in edits {
        if out.is_empty() {
            out.push(byte);
            continue;
        }
        let i = pos % out.len();
        match op % 3 {
            0 => out[i] ^= byte | 1,
            1 => out.truncate(i),
            _ => out.insert(i, byte),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn mutated_seeds_never_panic(
        target in 0..TARGETS.len(),
        pick: usize,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let (name, body) = TARGETS[target];
        let all = seeds(name);
        body(&mutate(&all[pick % all.len()], &edits));
    }
}
