//! Bulk synthetic repos for tests and benchmarks: a deterministic mix of posts, likes and
//! follows with TID record keys and matching `createdAt` times.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat};
use futures_util::{StreamExt, stream};
use jacquard_common::types::tid::Tid;
use serde::Serialize;

use super::state::{AccountSpec, World, Write};

/// 2024-01-01T00:00:00Z in microseconds.
pub(crate) const START_US: u64 = 1_704_067_200_000_000;

const POST: &str = "app.bsky.feed.post";
const LIKE: &str = "app.bsky.feed.like";
const FOLLOW: &str = "app.bsky.graph.follow";

const WORDS: &[&str] = &[
    "the", "a", "devnet", "record", "sky", "blue", "today", "coffee", "reading", "about", "protocol", "repo", "new",
    "post", "thinking", "weekend", "music", "garden", "rust", "code", "morning", "good", "great", "little", "walk",
    "again",
];

/// splitmix64: a tiny deterministic generator.
pub(crate) struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Creates `repos` accounts in `world`, each holding `records_per_repo` generated records, all
/// determined by `seed`, then builds their exports (what
/// [`Devnet::populate`](crate::Devnet::populate) does). Returns the DIDs.
pub(crate) async fn populate(world: &Arc<World>, repos: usize, records_per_repo: usize, seed: u64) -> Vec<String> {
    let hosts = world.hosts.len();
    let dids: Arc<Vec<String>> = Arc::new(
        (0..repos)
            .map(|i| {
                world.create_account(&AccountSpec {
                    seed: (1 << 63) | (seed << 32) | i as u64,
                    pds: i % hosts,
                    ..Default::default()
                })
            })
            .collect(),
    );
    let fills = (0..repos).map(|i| {
        let (world, dids) = (world.clone(), dids.clone());
        tokio::task::spawn_blocking(move || fill(&world, &dids, i, records_per_repo, seed))
    });
    for r in stream::iter(fills).buffer_unordered(2).collect::<Vec<_>>().await {
        r.expect("populate task");
    }
    let warm = stream::iter(dids.to_vec()).map(|d| {
        let world = world.clone();
        async move { world.built(&d).await.map(|r| r.map(|_| ())) }
    });
    warm.buffer_unordered(2).collect::<Vec<_>>().await;
    dids.to_vec()
}

/// Writes `n` generated records into repo `i` of `dids`, as one commit.
fn fill(world: &World, dids: &[String], i: usize, n: usize, seed: u64) {
    let mut rng = Rng(seed ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let start = START_US + rng.below(86_400_000_000);
    let mut writes = Vec::with_capacity(n);
    for j in 0..n as u64 {
        let us = start + j * 37_000_000 + rng.below(30_000_000);
        let rkey = Tid::from_time(us, rng.below(1024) as u32).as_str().to_string();
        let created_at =
            DateTime::from_timestamp_micros(us as i64).expect("in range").to_rfc3339_opts(SecondsFormat::Millis, true);
        let (collection, cbor) = record(&mut rng, dids, &created_at);
        writes.push(Write::Put { collection: collection.to_string(), rkey, cbor });
    }
    world.apply_writes_quiet(&dids[i], writes).expect("generated writes are valid");
}

/// `app.bsky.feed.post`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Post<'a> {
    #[serde(rename = "$type")]
    kind: &'static str,
    text: String,
    langs: [&'static str; 1],
    created_at: &'a str,
}

/// `app.bsky.feed.like` and `app.bsky.graph.follow` (`subject` a strong ref or a DID).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Subjected<'a, S> {
    #[serde(rename = "$type")]
    kind: &'static str,
    subject: S,
    created_at: &'a str,
}

/// `com.atproto.repo.strongRef`.
#[derive(Serialize)]
struct StrongRef {
    uri: String,
    cid: String,
}

/// One generated record: its collection and DAG-CBOR (serde_ipld_dagcbor writes map keys in
/// canonical order, structs included).
pub(crate) fn record(rng: &mut Rng, dids: &[String], created_at: &str) -> (&'static str, Vec<u8>) {
    let other = &dids[rng.below(dids.len() as u64) as usize];
    let kind = match rng.below(10) {
        0..=5 => POST,
        6..=8 => LIKE,
        _ => FOLLOW,
    };
    (kind, record_of(kind, rng, other, created_at))
}

/// A generated record of collection `kind` (a follow for any other); `other` is the DID a like
/// or follow points at.
pub(crate) fn record_of(kind: &str, rng: &mut Rng, other: &str, created_at: &str) -> Vec<u8> {
    let bytes = match kind {
        POST => {
            let words = 3 + rng.below(25);
            let text: Vec<&str> = (0..words).map(|_| WORDS[rng.below(WORDS.len() as u64) as usize]).collect();
            serde_ipld_dagcbor::to_vec(&Post { kind: POST, text: text.join(" "), langs: ["en"], created_at })
        }
        LIKE => {
            let post = Tid::from_time(START_US + rng.below(1 << 40), 0);
            let cid = jacquard_repo::mst::util::compute_cid(&rng.next().to_be_bytes()).expect("sha2-256 wraps");
            let subject =
                StrongRef { uri: format!("at://{other}/app.bsky.feed.post/{}", post.as_str()), cid: cid.to_string() };
            serde_ipld_dagcbor::to_vec(&Subjected { kind: LIKE, subject, created_at })
        }
        _ => serde_ipld_dagcbor::to_vec(&Subjected { kind: FOLLOW, subject: other, created_at }),
    };
    bytes.expect("generated records serialize")
}
