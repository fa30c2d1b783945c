//! Malformed repo exports are refused with an error that names the problem, and nothing of
//! them is written.

use cid::Cid;
use sluice::repo::{CarLimits, RepoError, read_car};
use sluice::{IndexError, IndexOptions, Sluice};
use sluice_devnet::{Account, RepoContents, export_car_blocking, rev_at};
use sluice_testkit as testkit;

/// (root, blocks in order) of a CAR.
fn blocks_of(car: &[u8]) -> (Cid, Vec<(Cid, Vec<u8>)>) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let reader = iroh_car::CarReader::new(car).await.unwrap();
        let root = reader.header().roots()[0];
        let mut stream = std::pin::pin!(reader.stream());
        let mut out = Vec::new();
        while let Some(b) = n0_future::StreamExt::next(&mut stream).await {
            out.push(b.unwrap());
        }
        (root, out)
    })
}

fn car_of(root: Cid, blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut out = Vec::new();
        let mut w = iroh_car::CarWriter::new(iroh_car::CarHeader::new_v1(vec![root]), &mut out);
        for (cid, data) in blocks {
            w.write(*cid, data).await.unwrap();
        }
        w.finish().await.unwrap();
        out
    })
}

fn sample_car() -> (Account, Vec<u8>) {
    let account = Account::new(11);
    let mut records = RepoContents::new();
    for i in 0..40 {
        let v = serde_json::json!({
            "$type": "app.bsky.feed.post",
            "text": format!("post {i}"),
            "createdAt": "2024-01-01T00:00:00Z"
        });
        records
            .insert(format!("app.bsky.feed.post/3kaaaaaaa{i:03}2"), sluice::handlers::value::json_to_cbor(&v).unwrap());
    }
    let long = serde_json::json!({
        "$type": "app.bsky.feed.post",
        "text": "x".repeat(1500),
        "createdAt": "2024-01-01T00:00:00Z"
    });
    records.insert("app.bsky.feed.post/3kzzzzzzzzzz2".into(), sluice::handlers::value::json_to_cbor(&long).unwrap());
    let car = export_car_blocking(&account, &rev_at(1), &records).unwrap();
    (account, car)
}

/// Indexes `car` into a fresh store and checks it is refused with nothing written.
fn refused(car: &[u8], limits: Option<CarLimits>) -> String {
    refused_in_batches(car, limits, sluice::Config::default().backfill.batch_size)
}

/// [`refused`] with walks committed in batches of `batch_size` records. A tracked repo with
/// more blocks than that is walked on its own thread while its first batches are staged.
fn refused_in_batches(car: &[u8], limits: Option<CarLimits>, batch_size: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sluice::Config::default();
    config.backfill.batch_size = batch_size;
    if let Some(l) = limits {
        config.limits.max_car_mb = l.max_car_bytes >> 20;
        config.limits.max_block_kb = l.max_block_bytes >> 10;
        config.limits.max_blocks = l.max_blocks;
    }
    let s = Sluice::builder()
        .config(config)
        .data_dir(dir.path())
        .filter(testkit::filter("mode = \"full\""))
        .open()
        .unwrap();
    let err = s.index_car(car, &IndexOptions::default()).expect_err("the CAR must be refused");
    assert_eq!(s.store().next_event_id(), 1, "no event written for a refused CAR");
    assert!(s.store().repos().is_empty().unwrap(), "no repo state written for a refused CAR");
    assert!(s.store().records().is_empty().unwrap());
    let limits = limits.unwrap_or_default();
    assert!(refused_from_a_file(car, &limits, false), "the spooled-file reader refuses it too");
    assert!(refused_from_a_file(car, &limits, true), "so does the reader of a spooled file into memory");
    err.to_string()
}

/// Whether reading `car` from a file (as a spooled download is: indexed in place, or taken
/// `into_memory`) and walking it fails.
fn refused_from_a_file(car: &[u8], limits: &CarLimits, into_memory: bool) -> bool {
    let file = testkit::car_file(car);
    let read = match into_memory {
        true => sluice::repo::read_car_file_into_memory(&file, limits),
        false => sluice::repo::read_car_file(file, limits),
    };
    let walked = read.and_then(|repo| {
        repo.check_commit(None)?;
        repo.records().try_for_each(|r| r.map(|_| ()))
    });
    walked.is_err()
}

#[test]
fn truncated_cars_are_refused_at_every_cut() {
    let (_, car) = sample_car();
    for cut in [0, 5, 40, car.len() / 3, car.len() / 2, car.len() - 1] {
        let e = refused(&car[..cut], None);
        assert!(e.contains("truncated") || e.contains("missing block"), "cut at {cut}: {e}");
    }
}

#[test]
fn a_block_that_does_not_match_its_cid_is_refused() {
    let (_, car) = sample_car();
    let (root, mut blocks) = blocks_of(&car);
    let last = blocks.len() - 1;
    let data = &mut blocks[last].1;
    let n = data.len() - 1;
    data[n] ^= 0x01;
    let e = refused(&car_of(root, &blocks), None);
    assert!(e.contains("does not match its CID"), "{e}");
}

/// A CAR of over 4 MiB, whose blocks are hashed on a thread of their own while it is read.
fn large_car() -> Vec<u8> {
    let account = Account::new(12);
    let mut records = RepoContents::new();
    for i in 0..1_500 {
        let v = serde_json::json!({
            "$type": "app.bsky.feed.post",
            "text": format!("{i} {}", "y".repeat(3_000)),
            "createdAt": "2024-01-01T00:00:00Z"
        });
        records
            .insert(format!("app.bsky.feed.post/3kaaaaaa{i:04}2"), sluice::handlers::value::json_to_cbor(&v).unwrap());
    }
    let car = export_car_blocking(&account, &rev_at(1), &records).unwrap();
    assert!(car.len() > 4 << 20, "{} bytes", car.len());
    car
}

#[test]
fn a_large_car_hashed_beside_its_read_is_refused_at_its_first_bad_block() {
    let car = large_car();
    assert_eq!(read_car(&car, &CarLimits::default()).unwrap().records().count(), 1_500);
    let (root, blocks) = blocks_of(&car);
    let flip = |at: usize| {
        let mut bad = blocks.clone();
        let data = &mut bad[at].1;
        data[0] ^= 0x01;
        bad
    };
    for at in [0, blocks.len() / 2, blocks.len() - 1] {
        let e = refused(&car_of(root, &flip(at)), None);
        assert!(e.contains("does not match its CID") && e.contains(&blocks[at].0.to_string()), "block {at}: {e}");
    }
    // A bad block comes before the cut that ends the CAR early, so it is what is reported,
    // as when blocks are hashed as they are read.
    let bad = car_of(root, &flip(10));
    let e = refused(&bad[..bad.len() - 100], None);
    assert!(e.contains("does not match its CID"), "{e}");
    // Later cuts still read as truncated.
    let e = refused(&car[..car.len() - 100], None);
    assert!(e.contains("truncated") || e.contains("missing block"), "{e}");
}

#[test]
fn missing_record_node_and_commit_blocks_are_named() {
    let (_, car) = sample_car();
    let (root, blocks) = blocks_of(&car);
    let repo = read_car(&car, &CarLimits::default()).unwrap();
    let record_cid = repo.records().next().unwrap().unwrap().cid;
    let cases = [(record_cid, "(record)"), (repo.data(), "(MST node)"), (root, "(root commit)")];
    for (drop, what) in cases {
        let kept: Vec<_> = blocks.iter().filter(|(c, _)| *c != drop).cloned().collect();
        let e = refused(&car_of(root, &kept), None);
        assert!(e.contains("missing block") && e.contains(what), "{what}: {e}");
    }
}

#[test]
fn a_tree_found_malformed_late_is_refused_though_batches_were_staged_while_walking() {
    let (_, car) = sample_car();
    let (root, blocks) = blocks_of(&car);
    let repo = read_car(&car, &CarLimits::default()).unwrap();
    let last_record = repo.records().last().unwrap().unwrap().cid;
    let kept: Vec<_> = blocks.iter().filter(|(c, _)| *c != last_record).cloned().collect();
    let e = refused_in_batches(&car_of(root, &kept), None, 4);
    assert!(e.contains("missing block") && e.contains("(record)"), "{e}");
}

#[test]
fn a_root_that_is_not_a_commit_is_refused() {
    let (_, car) = sample_car();
    let (_, blocks) = blocks_of(&car);
    let record = blocks.last().unwrap().0;
    let e = refused(&car_of(record, &blocks), None);
    assert!(e.contains("is not a repo commit"), "{e}");
}

#[test]
fn version_2_repos_are_refused() {
    use jacquard_repo::commit::Commit;
    let (account, car) = sample_car();
    let repo = read_car(&car, &CarLimits::default()).unwrap();
    let (_, mut blocks) = blocks_of(&car);
    let mut v2: Commit<smol_str::SmolStr> = repo.commit.clone();
    v2.version = 2;
    let unsigned = jacquard_repo::commit::UnsignedCommit {
        did: v2.did.clone(),
        version: 2,
        data: v2.data,
        rev: v2.rev.clone(),
        prev: None,
    };
    let signed = unsigned.sign(&account.key).unwrap();
    let bytes = signed.to_cbor().unwrap();
    let cid = jacquard_repo::mst::util::compute_cid(&bytes).unwrap();
    blocks[0] = (cid, bytes);
    let e = refused(&car_of(cid, &blocks), None);
    assert!(e.contains("commit version 2 is not supported"), "{e}");
}

#[test]
fn cars_over_the_limits_are_refused() {
    let (_, car) = sample_car();
    let small = CarLimits { max_car_bytes: 1 << 20, max_block_bytes: 1 << 10, max_blocks: 10 };
    let e = refused(&car, Some(CarLimits { max_blocks: 1_000_000, ..small }));
    assert!(e.contains("over the") && e.contains("limit"), "{e}");
    let e = refused(&car, Some(CarLimits { max_block_bytes: 1 << 20, ..small }));
    assert!(e.contains("more than 10 blocks"), "{e}");
    let big = vec![0u8; (1 << 20) + 1];
    let e = refused(&big, Some(CarLimits { max_car_bytes: 1 << 20, max_block_bytes: 1 << 20, max_blocks: 100 }));
    assert!(e.contains("-byte limit"), "{e}");
}

#[test]
fn errors_keep_their_kind_for_callers() {
    let (_, car) = sample_car();
    let dir = tempfile::tempdir().unwrap();
    let s = Sluice::builder().data_dir(dir.path()).filter(testkit::filter("mode = \"full\"")).open().unwrap();
    assert!(matches!(s.index_car(&car[..10], &IndexOptions::default()), Err(IndexError::Repo(RepoError::Car(_)))));
    assert!(matches!(
        s.index_car(&car, &IndexOptions { signing_key: Some("did:key:zNotAKey".into()), ..Default::default() }),
        Err(IndexError::Key(_))
    ));
    // The indexer keeps working after refusals.
    assert_eq!(s.index_car(&car, &IndexOptions::default()).unwrap().created, 41);
}
