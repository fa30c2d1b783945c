//! The real relay capture in ../shared/fixtures/firehose: 150 contiguous subscribeRepos frames.
//! Every frame decodes, the counts in manifest.json come out exactly, and every commit passes
//! sync 1.1 validation (jacquard's `validate_v1_1`) against its DID document's key.

use std::collections::BTreeMap;
use std::io::Read;

use jacquard_api::com_atproto::sync::subscribe_repos::RepoOpAction;
use sluice::firehose::{Frame, decode_frame};
use sluice_testkit as testkit;

fn unzstd(name: &str) -> Vec<u8> {
    let compressed = testkit::read_fixture(&format!("firehose/{name}"));
    let mut out = Vec::new();
    ruzstd::decoding::StreamingDecoder::new(&compressed[..]).unwrap().read_to_end(&mut out).unwrap();
    out
}

/// The capture's frames: each stored as a little-endian u32 length, then the frame.
fn frames() -> Vec<Vec<u8>> {
    let bytes = unzstd("frames.bin.zst");
    let mut rest = &bytes[..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>().unwrap();
        let len = u32::from_le_bytes(*len) as usize;
        out.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    out
}

#[tokio::test]
async fn every_frame_decodes_and_every_commit_validates() {
    let manifest: serde_json::Value = serde_json::from_slice(&testkit::read_fixture("firehose/manifest.json")).unwrap();
    let docs: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&unzstd("did_docs.json.zst")).unwrap();
    let frames = frames();
    assert_eq!(frames.len() as u64, manifest["frames"].as_u64().unwrap());

    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut seqs = Vec::new();
    for bytes in &frames {
        let frame = decode_frame(bytes).unwrap();
        seqs.push(frame.seq().unwrap());
        match frame {
            Frame::Commit(commit) => {
                *counts.entry("commit").or_default() += 1;
                for op in &commit.ops {
                    let action = match op.action {
                        RepoOpAction::Create => "creates",
                        RepoOpAction::Update => "updates",
                        RepoOpAction::Delete => "deletes",
                        _ => "other",
                    };
                    *counts.entry(action).or_default() += 1;
                }
                let did = commit.repo.as_str();
                let doc = serde_json::to_vec(&docs[did]).unwrap();
                let identity = sluice::identity::identity_from_document(did, &doc).unwrap();
                jacquard_repo::commit::firehose::validate_v1_1(&commit, &identity.key)
                    .await
                    .unwrap_or_else(|e| panic!("{did} seq {}: {e}", commit.seq));
            }
            Frame::Identity(_) => *counts.entry("identity").or_default() += 1,
            Frame::Account(_) => *counts.entry("account").or_default() += 1,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    let want = |k: &str| manifest[k].as_u64().unwrap();
    assert_eq!(counts["commit"], want("commit_frames"));
    for k in ["creates", "updates", "deletes", "identity", "account"] {
        assert_eq!(counts[k], want(k), "{k}");
    }
    assert_eq!(seqs.first().copied(), manifest["seq_first"].as_i64());
    assert_eq!(seqs.last().copied(), manifest["seq_last"].as_i64());
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers increase");
}

#[test]
fn commit_ops_become_pipeline_ops_and_apply_in_order() {
    use sluice::firehose::ops::{commit_blocks, record_ops};
    let (_dir, s) = testkit::sluice_with("mode = \"full\"");
    let (mut puts, mut deletes, mut events) = (0, 0, 0);
    for bytes in frames() {
        let Ok(Frame::Commit(commit)) = decode_frame(&bytes) else { continue };
        let blocks = commit_blocks(&commit, &Default::default()).unwrap();
        let ops = record_ops(&commit, &blocks).unwrap();
        assert_eq!(ops.len(), commit.ops.len());
        for op in &ops {
            match op {
                sluice::RecordOp::Put { .. } => puts += 1,
                sluice::RecordOp::Delete { .. } => deletes += 1,
            }
        }
        let data = blocks.data();
        let out = s
            .pipeline()
            .apply_commit(commit.repo.as_str(), blocks.commit_cid(), commit.rev.as_str(), data, ops, None)
            .unwrap();
        assert_eq!(
            blocks.commit_cid().to_string(),
            commit.commit.to_string(),
            "a commit's CAR is rooted at the commit"
        );
        events += out.committed.events;
    }
    assert_eq!((puts, deletes), (144 + 2, 4));
    // Deletes and updates of records this store never saw: deletes emit nothing, updates create.
    assert_eq!(events, 144 + 2);
    assert_eq!(s.store().next_event_id() - 1, events);
}

#[test]
fn truncated_and_corrupted_frames_are_refused_not_panicked_on() {
    for bytes in frames().iter().take(20) {
        for cut in [1, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode_frame(&bytes[..cut]).is_err(), "a frame cut at {cut} of {} is refused", bytes.len());
        }
        let mut flipped = bytes.clone();
        flipped[0] ^= 0xff;
        assert!(decode_frame(&flipped).is_err());
    }
}

#[test]
fn chain_checks_follow_the_stored_state() {
    use sluice::firehose::chain::{Verdict, check};
    use sluice::store::{RepoState, RepoStatus};
    let commit = frames().iter().find_map(|b| match decode_frame(b) {
        Ok(Frame::Commit(c)) if c.prev_data.is_some() => Some(c),
        _ => None,
    });
    let commit = commit.expect("the capture has sync 1.1 commits");
    let rev = commit.rev.as_str().to_string();
    let prev = commit.prev_data.as_ref().unwrap().as_str().to_string();
    let now = sluice::repo::age::tid_time_us(&rev).unwrap();
    let synced = |rev: &str, data: &str| RepoState {
        status: RepoStatus::Synced,
        rev: Some(rev.into()),
        data: Some(data.into()),
        ..Default::default()
    };

    assert_eq!(check(&commit, None, now), Verdict::Untracked);
    assert_eq!(
        check(&commit, Some(&RepoState { status: RepoStatus::Backfilling, ..Default::default() }), now),
        Verdict::Untracked
    );
    assert_eq!(check(&commit, Some(&synced("2222222222222", &prev)), now), Verdict::Apply);
    assert_eq!(check(&commit, Some(&synced(&rev, &prev)), now), Verdict::Stale, "the same rev again");
    assert_eq!(check(&commit, Some(&synced("zzzzzzzzzzzzz", &prev)), now), Verdict::Stale);
    assert!(
        matches!(check(&commit, Some(&synced("2222222222222", "bafyother")), now), Verdict::Desync(_)),
        "a broken prevData chain"
    );
    let early = now - 10 * 60 * 1_000_000;
    assert!(matches!(check(&commit, None, early), Verdict::Invalid(r) if r.contains("future")));
    let mut big = (*commit).clone();
    big.ops = (0..201).map(|_| commit.ops[0].clone()).collect();
    assert!(matches!(check(&big, None, now), Verdict::Invalid(r) if r.contains("201 ops")));
}
