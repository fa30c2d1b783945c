//! Hot reload: edits to the filter file under a running indexer take effect within a second;
//! an invalid save is refused with file, line and reason, and the old filter stays in force.

use std::time::{Duration, Instant};

use sluice::filter::Mode;
use sluice::{IndexOptions, Sluice};

const WITHIN: Duration = Duration::from_secs(1);

fn wait_for(mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < WITHIN * 3 {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn saves_are_swapped_in_and_invalid_saves_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("filter.toml");
    std::fs::write(&path, "mode = \"full\"\n").unwrap();
    let s = Sluice::builder().data_dir(dir.path().join("data")).filter_file(&path).open().unwrap();
    let current = || s.pipeline().filter().load();
    assert_eq!(current().filter.mode, Mode::Full);

    // A plain write.
    std::fs::write(&path, "mode = \"signal\"\nsignals = [\"xyz.statusphere.status\"]\n").unwrap();
    let took = wait_for(|| current().filter.mode == Mode::Signal).expect("the save was picked up");
    assert!(took < WITHIN, "took {took:?}");

    // An invalid save: refused, named, and the signal filter stays.
    std::fs::write(&path, "mode = \"signal\"\nsignals = [\"xyz.statusphere.status\"]\ncollections = [\"app.bs*\"]\n")
        .unwrap();
    let took = wait_for(|| s.filter_error().is_some()).expect("the invalid save was noticed");
    assert!(took < WITHIN, "took {took:?}");
    let err = s.filter_error().unwrap();
    assert_eq!(err.line, Some(3));
    assert!(err.origin.ends_with("filter.toml") && err.reason.contains("app.bs*"), "{err}");
    // Read once for the save, and not again while the file is left alone (reading it raises
    // notifications too, which must not count as saves: they once made every read trigger
    // the next, logging the refusal ~30 times a second). A rate is checked, so over a time:
    // 600 ms spans two of the watcher's 250 ms stat polls, and would have seen ~18 reads.
    let loads = s.filter_loads();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(s.filter_loads(), loads, "the unchanged file was read again");
    let saves = s.pipeline().filter().saves();
    assert_eq!(
        (saves.refused, saves.error.as_ref()),
        (1, Some(&err)),
        "the refusal is on record for /health and /metrics"
    );
    assert_eq!(current().filter.mode, Mode::Signal);
    assert!(current().filter.collections.is_empty());

    // An editor-style save (write a temp file, rename over): picked up, and the error clears.
    let tmp = dir.path().join(".filter.toml.swp");
    std::fs::write(&tmp, "mode = \"full\"\ncollections = [\"app.bsky.feed.post\"]\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let took =
        wait_for(|| current().filter.collections == ["app.bsky.feed.post"]).expect("the renamed save was picked up");
    assert!(took < WITHIN, "took {took:?}");
    assert!(s.filter_error().is_none());
    let saves = s.pipeline().filter().saves();
    assert!(saves.accepted >= 2 && saves.refused == 1 && saves.error.is_none(), "{saves:?}");

    // The new filter is what the pipeline applies: of a post and a like, only the post.
    assert_eq!(s.index_car(&a_post_and_a_like(), &IndexOptions::default()).unwrap().created, 1);
}

/// A repo export holding one post and one like.
fn a_post_and_a_like() -> Vec<u8> {
    let mut records = sluice_devnet::RepoContents::new();
    for (key, v) in [
        ("app.bsky.feed.post/3kaaaaaaaaaa2", serde_json::json!({"text": "hi", "createdAt": "2024-01-01T00:00:00Z"})),
        (
            "app.bsky.feed.like/3kaaaaaaaaaa2",
            serde_json::json!({
                "subject": {
                    "uri": "at://did:plc:a/app.bsky.feed.post/1",
                    "cid": "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"
                },
                "createdAt": "2024-01-01T00:00:00Z"
            }),
        ),
    ] {
        records.insert(key.to_string(), sluice::handlers::value::json_to_cbor(&v).unwrap());
    }
    sluice_devnet::export_car_blocking(&sluice_devnet::Account::new(5), &sluice_devnet::rev_at(1), &records).unwrap()
}

#[test]
fn a_missing_filter_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Sluice::builder().data_dir(dir.path()).filter_file(dir.path().join("nope.toml")).open().err().unwrap();
    assert!(err.to_string().contains("nope.toml") && err.to_string().contains("cannot read"), "{err}");
}
