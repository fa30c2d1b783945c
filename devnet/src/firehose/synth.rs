//! A synthetic firehose for benchmarks, without servers: [`synthetic_stream`] makes valid,
//! signed sync 1.1 `#commit` frames spread round-robin over some accounts, each continuing its
//! account's `prevData` chain from the empty repo given in [`SyntheticStream::initial`].
//! Deterministic for a seed; accounts are split over the available cores.

use chrono::{DateTime, SecondsFormat};
use jacquard_common::types::string::Datetime;
use jacquard_common::types::tid::Tid;

use super::commit::Chain;
use super::frame::Body;
use crate::world::events::Change;
use crate::world::populate::{Rng, START_US, record, record_of};
use crate::world::repos::{Account, rev_at};

/// Frames and what a consumer needs to check and apply them.
pub struct SyntheticStream {
    /// `#commit` frames in `seq` order (`seq` 1, 2, ...).
    pub frames: Vec<Vec<u8>>,
    /// Per account: its DID and signing key as `did:key:z...`.
    pub keys: Vec<(String, String)>,
    /// Per account: DID, rev and MST root CID before its first frame (an empty repo).
    pub initial: Vec<(String, String, String)>,
}

/// `commits` signed `#commit` frames over `accounts` accounts (round-robin), all determined by
/// `seed`. Each commit creates one record (a post, like or follow); about one in eight also
/// updates an earlier record and one in eight deletes one.
pub fn synthetic_stream(accounts: usize, commits: usize, seed: u64) -> SyntheticStream {
    let people: Vec<Account> =
        (0..accounts.max(1)).map(|i| Account::new((1 << 62) | (seed << 32) | i as u64)).collect();
    let dids: Vec<String> = people.iter().map(|a| a.did.clone()).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(people.len());
    let parts: Vec<Part> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn({
                    let (people, dids) = (&people, &dids);
                    move || generate(people, dids, t, threads, commits, seed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("synthetic stream thread")).collect()
    });
    let mut frames = vec![Vec::new(); commits];
    let mut initial = vec![(String::new(), String::new(), String::new()); people.len()];
    for part in parts {
        for (g, frame) in part.frames {
            frames[g] = frame;
        }
        for (a, state) in part.initial {
            initial[a] = state;
        }
    }
    let keys = people.iter().map(|a| (a.did.clone(), a.did_key())).collect();
    SyntheticStream { frames, keys, initial }
}

/// What one thread made: `(global index, frame)` and `(account index, initial state)`.
#[derive(Default)]
struct Part {
    frames: Vec<(usize, Vec<u8>)>,
    initial: Vec<(usize, (String, String, String))>,
}

/// The frames of accounts `t`, `t + step`, ... on a private runtime (jacquard's MST needs one).
fn generate(people: &[Account], dids: &[String], t: usize, step: usize, commits: usize, seed: u64) -> Part {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime");
    let mut part = Part::default();
    for a in (t..people.len()).step_by(step) {
        rt.block_on(account_frames(&people[a], a, dids, commits, seed, &mut part));
    }
    part
}

/// Account `a`'s frames: its commits are the global indices `a`, `a + accounts`, ...
async fn account_frames(account: &Account, a: usize, dids: &[String], commits: usize, seed: u64, part: &mut Part) {
    let initial_rev = rev_at(0);
    let mut chain = Chain::build(account, &initial_rev, &[]).await.expect("an empty repo builds");
    let data = chain.data().await.expect("an empty root");
    part.initial.push((a, (account.did.clone(), initial_rev, data.to_string())));
    let mut rng = Rng(seed ^ (a as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut keys: Vec<String> = Vec::new();
    for g in (a..commits).step_by(dids.len()) {
        let us = START_US + g as u64 * 1_000_000;
        let changes = changes(&mut rng, dids, &mut keys, us);
        let time = Datetime::new(DateTime::from_timestamp_micros(us as i64).expect("in range").fixed_offset());
        let rev = Tid::from_time(us, 0);
        let event = chain.commit(rev.as_str(), &changes, None, time).await.expect("a generated commit builds");
        part.frames.push((g, Body::Commit(Box::new(event)).encode(g as i64 + 1).expect("a commit frame encodes")));
    }
}

/// One commit's changes at time `us`: a new record, sometimes an update or a delete of an
/// earlier one (`keys`: the account's records).
fn changes(rng: &mut Rng, dids: &[String], keys: &mut Vec<String>, us: u64) -> Vec<Change> {
    let created_at =
        DateTime::from_timestamp_micros(us as i64).expect("in range").to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut out = Vec::with_capacity(2);
    match (rng.below(8), keys.len() as u64) {
        (0, n) if n > 0 => {
            let key = keys[rng.below(n) as usize].clone();
            let other = &dids[rng.below(dids.len() as u64) as usize];
            let kind = key.split('/').next().unwrap_or_default();
            out.push(put(&key, record_of(kind, rng, other, &created_at)));
        }
        (1, n) if n > 0 => out.push((keys.swap_remove(rng.below(n) as usize), None)),
        _ => {}
    }
    let (collection, cbor) = record(rng, dids, &created_at);
    let key = format!("{collection}/{}", Tid::from_time(us + rng.below(1_000_000), rng.below(1024) as u32).as_str());
    out.push(put(&key, cbor));
    keys.push(key);
    out
}

/// A create or update of `key`.
fn put(key: &str, cbor: Vec<u8>) -> Change {
    let cid = jacquard_repo::mst::util::compute_cid(&cbor).expect("a sha2-256 digest always wraps");
    (key.to_string(), Some((cid, cbor.into())))
}
