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

const TARGETS: [Target; 5] = [
    ("car", sluice::fuzz::car),
    ("filter_toml", sluice::fuzz::filter_toml),
    ("cbor_json", sluice::fuzz::cbor_json),
    ("frame", sluice::fuzz::frame),
    ("index_entries", sluice::fuzz::index_entries),
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
