//! A synthetic firehose for benchmarks, without servers: [`synthetic_stream`] makes valid,
//! signed sync 1.1 `#commit` frames spread round-robin over some accounts, each continuing its
//! account's `prevData` chain from the empty repo given in [`SyntheticStream::initial`].
//! Deterministic for a seed; accounts are split over the available cores. [`SyntheticRepo`]
//! makes one account's events one at a time, of every kind, for tests that model a stream.

use chrono::{DateTime, SecondsFormat};
use jacquard_api::com_atproto::sync::subscribe_repos::{self as lex, AccountStatus as LexStatus};
use jacquard_common::types::string::{Datetime, Did, Handle};
use jacquard_common::types::tid::Tid;
use smol_str::SmolStr;

use super::commit::Chain;
use super::frame::Body;
use crate::world::events::{Change, Tamper};
use crate::world::populate::{Rng, START_US, record, record_of};
use crate::world::repos::{Account, BuildError, err, rev_at};

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

/// One account's repo, changed one commit at a time, and its events (`#commit`, `#sync`,
/// `#account`, `#identity`) as [`synthetic_stream`] signs them, for tests that decide the stream
/// themselves. Blocking: it keeps a runtime of its own for jacquard's MST.
pub struct SyntheticRepo {
    rt: tokio::runtime::Runtime,
    did: Did<SmolStr>,
    chain: Chain,
}

/// An event of a [`SyntheticRepo`] before it is numbered: the same event can be framed again
/// under a later `seq`, as a relay replaying it would.
#[derive(Clone)]
pub struct SyntheticEvent(Body);

impl SyntheticEvent {
    /// The frame of this event numbered `seq`.
    pub fn frame(&self, seq: i64) -> Vec<u8> {
        self.0.clone().encode(seq).expect("a synthetic event encodes")
    }
}

impl SyntheticRepo {
    /// The empty repo of `account` at `rev`.
    pub fn new(account: &Account, rev: &str) -> Result<Self, BuildError> {
        let rt = tokio::runtime::Builder::new_current_thread().build().map_err(err)?;
        let chain = rt.block_on(Chain::build(account, rev, &[]))?;
        let did = Did::new(SmolStr::new(&account.did)).map_err(err)?;
        Ok(Self { rt, did, chain })
    }

    /// The current rev.
    pub fn rev(&self) -> &str {
        self.chain.rev()
    }

    /// The current MST root.
    pub fn data(&self) -> Result<cid::Cid, BuildError> {
        self.rt.block_on(self.chain.data())
    }

    /// Commits `changes` (`collection/rkey` and the new DAG-CBOR record, `None` to delete) at
    /// `rev` and returns the `#commit`, altered as `tamper` says; the repo moves on either way.
    pub fn commit(
        &mut self,
        rev: &str,
        changes: &[(String, Option<Vec<u8>>)],
        tamper: Option<Tamper>,
    ) -> Result<SyntheticEvent, BuildError> {
        let changes: Vec<Change> = changes
            .iter()
            .map(|(key, record)| {
                let put = record.as_ref().map(|cbor| -> Result<_, BuildError> {
                    Ok((jacquard_repo::mst::util::compute_cid(cbor).map_err(err)?, cbor.clone().into()))
                });
                Ok((key.clone(), put.transpose()?))
            })
            .collect::<Result<_, BuildError>>()?;
        let event = self.rt.block_on(self.chain.commit(rev, &changes, tamper, Datetime::now()))?;
        Ok(SyntheticEvent(Body::Commit(Box::new(event))))
    }

    /// A `#sync` of the current commit.
    pub fn sync(&self) -> Result<SyntheticEvent, BuildError> {
        let blocks = self.rt.block_on(self.chain.sync_blocks())?;
        Ok(SyntheticEvent(Body::Sync(Box::new(lex::Sync {
            blocks: blocks.into(),
            did: self.did.clone(),
            rev: SmolStr::new(self.chain.rev()),
            seq: 0,
            time: Datetime::now(),
            extra_data: None,
        }))))
    }

    /// An `#account`: whether it is active, and its status (`takendown`, `deleted`, ...).
    pub fn account(&self, active: bool, status: Option<&str>) -> SyntheticEvent {
        SyntheticEvent(Body::Account(Box::new(lex::Account {
            active,
            did: self.did.clone(),
            seq: 0,
            status: status.map(|s| LexStatus::from_value(SmolStr::new(s))),
            time: Datetime::now(),
            extra_data: None,
        })))
    }

    /// An `#identity` naming `handle`.
    pub fn identity(&self, handle: &str) -> SyntheticEvent {
        SyntheticEvent(Body::Identity(Box::new(lex::Identity {
            did: self.did.clone(),
            handle: Some(Handle::raw(SmolStr::new(handle))),
            seq: 0,
            time: Datetime::now(),
            extra_data: None,
        })))
    }
}
