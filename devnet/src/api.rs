//! The test API on [`Devnet`]: synchronous, cheap and thread-safe calls that change or inspect
//! what the servers hold, and inject faults.

use std::collections::BTreeMap;

use anyhow::Context as _;
use sluice_handlers::value::json_to_cbor;

use crate::Devnet;
use crate::world::events::Tamper;
use crate::world::populate::{self, Rng};
use crate::world::repos::plc_did;
use crate::world::state::{AccountSpec, AccountState, AccountStatus, Write};

impl Devnet {
    /// Creates an account (an empty repo) and returns its DID; an existing DID is left as it is.
    pub fn create_account(&self, spec: AccountSpec) -> String {
        self.world.create_account(&spec)
    }

    /// Creates or replaces a record from AT Protocol JSON; returns its CID.
    pub fn put_record(
        &self,
        did: &str,
        collection: &str,
        rkey: &str,
        value: serde_json::Value,
    ) -> anyhow::Result<String> {
        let cbor = json_to_cbor(&value).with_context(|| format!("record {collection}/{rkey}"))?;
        self.put_record_cbor(did, collection, rkey, cbor)
    }

    /// Creates or replaces a record from DAG-CBOR bytes (not checked, so tests can serve
    /// malformed records); returns its CID.
    pub fn put_record_cbor(&self, did: &str, collection: &str, rkey: &str, cbor: Vec<u8>) -> anyhow::Result<String> {
        let write = Write::Put { collection: collection.into(), rkey: rkey.into(), cbor };
        let (_, cids) = self.world.apply_writes(did, vec![write])?;
        Ok(cids[0].expect("a put gives a CID").to_string())
    }

    /// Deletes a record (an error when there is none).
    pub fn delete_record(&self, did: &str, collection: &str, rkey: &str) -> anyhow::Result<()> {
        self.world.apply_writes(did, vec![Write::Delete { collection: collection.into(), rkey: rkey.into() }])?;
        Ok(())
    }

    /// Sets an account's hosting status and emits its `#account` event (`active`, `status`).
    pub fn set_status(&self, did: &str, status: AccountStatus) {
        self.world.set_status(did, status);
    }

    /// Has the relay alone emit an `#account` event about the account (`active`, `status`: a
    /// relay's own, such as `throttled` or `desynchronized`), leaving its hosting as it is: its
    /// PDS still serves it, and no PDS's firehose carries the event.
    pub fn emit_relay_account(&self, did: &str, active: bool, status: Option<&'static str>) {
        self.world.emit_relay_account(did, active, status);
    }

    /// Emits the account's `#identity` event (with its handle).
    pub fn emit_identity(&self, did: &str) {
        self.world.emit_identity(did);
    }

    /// Gives the account a new handle (its DID document names it) and emits its `#identity`.
    /// `resolves`: whether the handle resolves back to the DID (`resolveHandle` answers with
    /// it); a handle that does not is one the document claims but does not own.
    pub fn set_handle(&self, did: &str, handle: &str, resolves: bool) {
        self.world.set_handle(did, handle, resolves);
    }

    /// Emits the account's `#sync` event: its current rev and signed commit.
    pub fn emit_sync(&self, did: &str) {
        self.world.emit_sync(did);
    }

    /// Alters the account's next `#commit` frame as `tamper` says (its repo advances normally).
    pub fn tamper_next_commit(&self, did: &str, tamper: Tamper) {
        self.world.tamper_next_commit(did, tamper);
    }

    /// The last firehose `seq` (0 before any event). Writes and events are sequenced before
    /// the calls that make them return.
    pub fn firehose_seq(&self) -> i64 {
        self.sequencer.last_seq()
    }

    /// Closes every open subscribeRepos connection (clients should reconnect with their cursor).
    pub fn drop_firehose_connections(&self) {
        self.sequencer.drop_connections();
    }

    /// Makes every open subscribeRepos connection go silent without closing it: no events and
    /// no answers to pings, like a peer that died with its TCP connection up.
    pub fn stall_firehose_connections(&self) {
        self.sequencer.stall_connections();
    }

    /// While `down`, subscribeRepos answers 503 to new connections (open ones are untouched).
    pub fn set_firehose_down(&self, down: bool) {
        self.sequencer.set_refusing(down);
    }

    /// Creates `repos` accounts spread over the PDS hosts, each holding `records_per_repo`
    /// records (about 60% `app.bsky.feed.post`, 30% `app.bsky.feed.like`, 10%
    /// `app.bsky.graph.follow`), all determined by `seed`, then builds their exports so first
    /// fetches are quick. Returns the DIDs.
    pub async fn populate(&self, repos: usize, records_per_repo: usize, seed: u64) -> Vec<String> {
        populate::populate(&self.world, repos, records_per_repo, seed).await
    }

    /// Has the relay list `n` more DIDs that have no account (their documents do not resolve,
    /// so an indexer finds each gone at once, with no repo to fetch), derived from `seed`:
    /// the network's size for crawler and queue benchmarks, without building its repos.
    /// Returns them.
    pub fn list_unresolvable(&self, n: usize, seed: u64) -> Vec<String> {
        let mut rng = Rng(seed ^ 0x5EED_0FD1_D5D5);
        let dids: Vec<String> = (0..n)
            .map(|_| {
                let bytes: Vec<u8> = (0..3).flat_map(|_| rng.next().to_le_bytes()).collect();
                plc_did(&bytes)
            })
            .collect();
        self.world.list_only(dids.iter().cloned());
        dids
    }

    /// Makes the account's DID document unresolvable (404), its repo staying on its PDS.
    pub fn remove_identity(&self, did: &str) {
        self.world.update(did, |a| a.identity_removed = true);
    }

    /// The next `requests` requests to PDS `pds`'s `com.atproto.sync.*` methods get 429 with
    /// `Retry-After: retry_after_secs`.
    pub fn rate_limit(&self, pds: usize, requests: u32, retry_after_secs: u64) {
        self.world.set_rate_limit(pds, requests, retry_after_secs);
    }

    /// The next `n` getRepo calls for `did` get 500 InternalServerError.
    pub fn fail_next(&self, did: &str, n: u32) {
        self.world.update(did, |a| a.fail_next = n);
    }

    /// The records `did`'s PDS holds now: `(collection, rkey)` -> `(cid, DAG-CBOR)`.
    pub fn records(&self, did: &str) -> BTreeMap<(String, String), (String, Vec<u8>)> {
        let copy = |a: &AccountState| {
            a.records.iter().map(|(k, (cid, b))| (k.clone(), (cid.to_string(), b.to_vec()))).collect()
        };
        self.world.read(did, copy).unwrap_or_default()
    }

    /// Every account's DID, sorted.
    pub fn accounts(&self) -> Vec<String> {
        let mut dids = Vec::new();
        self.world.scan(None, |a| {
            dids.push(a.account.did.clone());
            true
        });
        dids
    }

    /// The account's current rev.
    pub fn rev(&self, did: &str) -> Option<String> {
        self.world.read(did, |a| a.rev.clone())
    }

    /// The account's signing key as `did:key:z...`.
    pub fn did_key(&self, did: &str) -> Option<String> {
        self.world.read(did, |a| a.account.did_key())
    }

    /// The account's PDS index.
    pub fn pds_of(&self, did: &str) -> Option<usize> {
        self.world.read(did, |a| a.pds)
    }

    /// How many times XRPC method `method` (e.g. `com.atproto.sync.getRepo`) was called over all
    /// hosts; also [`PLC_RESOLVE`](crate::PLC_RESOLVE) and [`DID_WEB_RESOLVE`](crate::DID_WEB_RESOLVE)
    /// for DID document fetches.
    pub fn request_count(&self, method: &str) -> u64 {
        self.world.request_count(method)
    }
}
