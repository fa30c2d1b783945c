//! What the benches share: the generated, signed 100k-record repos (cached in
//! `target/bench-cache/`, built on first use), and the process's CPU time.

#![allow(dead_code)]

use std::path::PathBuf;

use sluice::devnet::{Account, RepoContents, export_car_blocking, rev_at};

/// Records in a generated repo.
pub const GENERATED_RECORDS: usize = 100_000;

/// User + system CPU seconds of this process, all threads (fjall's background work counts).
pub fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The project root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A signed repo of 100k records (posts, likes, follows) of account `seed`, built once and cached.
pub fn generated_car(seed: u64) -> (PathBuf, Account) {
    let account = Account::new(seed);
    let path = root().join(format!("target/bench-cache/repo-100k-{seed}.car"));
    if !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut records = RepoContents::new();
        for i in 0..GENERATED_RECORDS {
            let tid = rev_at(i as u64 * 1000);
            let (key, v) = match i % 10 {
                0..=4 => (format!("app.bsky.feed.like/{tid}"), serde_json::json!({"$type": "app.bsky.feed.like", "createdAt": "2024-01-01T00:00:00.000Z",
                    "subject": {"uri": format!("at://did:plc:abcdefghijklmnopqrstuvwx/app.bsky.feed.post/{}", rev_at(i as u64)), "cid": "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"}})),
                5..=7 => (format!("app.bsky.feed.post/{tid}"), serde_json::json!({"$type": "app.bsky.feed.post", "text": format!("post number {i} with some ordinary text in it, about this long"), "langs": ["en"], "createdAt": "2024-01-01T00:00:00.000Z"})),
                _ => (format!("app.bsky.graph.follow/{tid}"), serde_json::json!({"$type": "app.bsky.graph.follow", "subject": "did:plc:abcdefghijklmnopqrstuvwx", "createdAt": "2024-01-01T00:00:00.000Z"})),
            };
            records.insert(key, sluice::handlers::value::json_to_cbor(&v).unwrap());
        }
        let car = export_car_blocking(&account, &rev_at(GENERATED_RECORDS as u64 * 1000 + 1), &records).unwrap();
        std::fs::write(&path, car).unwrap();
    }
    (path, account)
}

