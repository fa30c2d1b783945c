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

const TARGETS: [Target; 4] = [
    ("car", sluice::fuzz::car),
    ("filter_toml", sluice::fuzz::filter_toml),
    ("cbor_json", sluice::fuzz::cbor_json),
    ("frame", sluice::fuzz::frame),
];

#[test]
fn every_seed_runs_clean() {
    for (name, body) in TARGETS {
        for seed in seeds(name) {
            body(&seed);
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
