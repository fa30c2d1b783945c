//! The devnet's state: accounts, their records and revs, statuses, injected faults and request
//! counts. Every repo write goes through [`World::apply_writes`], which queues its firehose
//! event (see `events`) before it lets go of the lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cid::Cid;

use super::cache::{self, Built, RepoCache};
use super::events::{Base, Change, Emit, EventQueue, Pending, RELAY_ONLY, Tamper};
use super::repos::{Account, BuildError, rev_at};
use crate::lock::lock;

/// An account's hosting status, as `com.atproto.sync.getRepoStatus` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccountStatus {
    /// Serving its repo.
    #[default]
    Active,
    /// Deactivated by its owner.
    Deactivated,
    /// Taken down by the host.
    Takendown,
    /// Suspended for a while by the host.
    Suspended,
    /// Deleted: the host answers `RepoNotFound`.
    Deleted,
}

impl AccountStatus {
    /// The lexicon's status string; `None` when active.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Self::Active => None,
            Self::Deactivated => Some("deactivated"),
            Self::Takendown => Some("takendown"),
            Self::Suspended => Some("suspended"),
            Self::Deleted => Some("deleted"),
        }
    }
}

/// What [`Devnet::create_account`](crate::Devnet::create_account) creates.
#[derive(Debug, Clone, Default)]
pub struct AccountSpec {
    /// Seed of the deterministic key (and of the `did:plc`, or the `did:web` path).
    pub seed: u64,
    /// Index of the PDS host (taken modulo the number of hosts).
    pub pds: usize,
    /// Publish the key in the legacy `EcdsaSecp256k1VerificationKey2019` form.
    pub legacy_key: bool,
    /// The handle; `user{seed}.test` when `None`.
    pub handle: Option<String>,
    /// Make the account `did:web:127.0.0.1%3A{pdsport}:u:{seed}`, its document served by its PDS.
    pub did_web: bool,
}

/// One write to a repo.
#[derive(Debug, Clone)]
pub enum Write {
    /// Creates a record; fails when it exists.
    Create { collection: String, rkey: String, cbor: Vec<u8> },
    /// Creates or replaces a record.
    Put { collection: String, rkey: String, cbor: Vec<u8> },
    /// Deletes a record; fails when it is missing.
    Delete { collection: String, rkey: String },
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No such account.
    #[error("no devnet account {0}")]
    UnknownRepo(String),
    /// The collection is not a valid NSID.
    #[error("invalid collection NSID `{0}`")]
    InvalidCollection(String),
    /// The record key is not valid.
    #[error("invalid record key `{0}`")]
    InvalidRkey(String),
    /// A create found the record already there.
    #[error("record {0}/{1} already exists")]
    Exists(String, String),
    /// A delete found no record.
    #[error("record {0}/{1} not found")]
    NotFound(String, String),
}

/// One account as its PDS holds it.
pub(crate) struct AccountState {
    pub account: Account,
    pub pds: usize,
    pub handle: String,
    /// Whether the handle resolves back to the DID (its DNS or well-known points here); a
    /// handle the document claims but that points elsewhere is not the account's own.
    pub handle_resolves: bool,
    pub legacy_key: bool,
    pub records: BTreeMap<(String, String), (Cid, Bytes)>,
    pub rev: String,
    pub status: AccountStatus,
    pub identity_removed: bool,
    pub fail_next: u32,
    /// Whether the firehose worker's chain follows every write (false after a quiet write).
    pub feed_live: bool,
    /// How the next `#commit` frame is altered.
    pub tamper: Option<Tamper>,
}

/// A PDS host's address.
pub(crate) struct Host {
    pub url: String,
    pub port: u16,
}

#[derive(Default)]
struct RateLimit {
    remaining: u32,
    retry_after_secs: u64,
}

#[derive(Default)]
struct State {
    accounts: BTreeMap<String, AccountState>,
    /// DIDs the relay lists with no account behind them: their documents do not resolve.
    listed_only: std::collections::BTreeSet<String>,
    clock: u64,
    limits: Vec<RateLimit>,
}

impl State {
    /// The next rev (or TID): strictly increasing over the whole devnet.
    fn tick(&mut self) -> String {
        self.clock += 1;
        rev_at(self.clock)
    }
}

/// Everything the servers share.
pub(crate) struct World {
    pub hosts: Vec<Host>,
    state: Mutex<State>,
    counts: Mutex<HashMap<String, u64>>,
    cache: RepoCache,
    /// The firehose's jobs, queued in write order.
    events: EventQueue,
}

impl World {
    /// A world with no accounts, for PDS hosts at `hosts`, telling `events` of its changes.
    pub fn new(hosts: Vec<Host>, events: EventQueue) -> Self {
        let limits = hosts.iter().map(|_| RateLimit::default()).collect();
        Self {
            hosts,
            state: Mutex::new(State { limits, ..Default::default() }),
            counts: Mutex::default(),
            cache: RepoCache::default(),
            events,
        }
    }

    /// The DID `spec` names on this devnet.
    pub fn did_for(&self, spec: &AccountSpec) -> String {
        if spec.did_web {
            let port = self.hosts[spec.pds % self.hosts.len()].port;
            format!("did:web:127.0.0.1%3A{port}:u:{}", spec.seed)
        } else {
            Account::new(spec.seed).did
        }
    }

    /// Creates the account (an empty repo at a fresh rev) unless its DID exists; returns the DID.
    pub fn create_account(&self, spec: &AccountSpec) -> String {
        let did = self.did_for(spec);
        let mut st = lock(&self.state);
        if st.accounts.contains_key(&did) {
            return did;
        }
        let rev = st.tick();
        let account = Account { did: did.clone(), key: Account::new(spec.seed).key };
        let state = AccountState {
            account,
            pds: spec.pds % self.hosts.len(),
            handle: spec.handle.clone().unwrap_or_else(|| format!("user{}.test", spec.seed)),
            handle_resolves: true,
            legacy_key: spec.legacy_key,
            records: BTreeMap::new(),
            rev,
            status: AccountStatus::Active,
            identity_removed: false,
            fail_next: 0,
            feed_live: false,
            tamper: None,
        };
        st.accounts.insert(did.clone(), state);
        did
    }

    /// Applies `writes` to `did`'s repo as one commit (one new rev); returns the rev and, per
    /// write, the new record CID (`None` for deletes). Nothing changes when any write is refused.
    /// The one path for repo writes: it returns once the commit's `#commit` event is sequenced.
    pub fn apply_writes(&self, did: &str, writes: Vec<Write>) -> Result<(String, Vec<Option<Cid>>), WriteError> {
        self.write(did, writes, true)
    }

    /// [`World::apply_writes`] without a firehose event (bulk population); the account's next
    /// event rebuilds its firehose state from the records.
    pub fn apply_writes_quiet(&self, did: &str, writes: Vec<Write>) -> Result<(String, Vec<Option<Cid>>), WriteError> {
        self.write(did, writes, false)
    }

    /// Applies `writes`; queues the `#commit` and waits for it when `emit`.
    fn write(&self, did: &str, writes: Vec<Write>, emit: bool) -> Result<(String, Vec<Option<Cid>>), WriteError> {
        let prepared = writes.into_iter().map(prepare).collect::<Result<Vec<_>, _>>()?;
        let mut st = lock(&self.state);
        let acct = st.accounts.get(did).ok_or_else(|| WriteError::UnknownRepo(did.to_string()))?;
        check_preconditions(&acct.records, &prepared)?;
        let rev = st.tick();
        let acct = st.accounts.get_mut(did).expect("checked above");
        let base = if emit { acct.base_unless_live() } else { None };
        let changes: Vec<Change> = if emit {
            prepared.iter().map(|((c, r), v, _)| (format!("{c}/{r}"), v.clone())).collect()
        } else {
            Vec::new()
        };
        let cids = prepared
            .into_iter()
            .map(|(key, value, _)| match value {
                Some(v) => {
                    let cid = v.0;
                    acct.records.insert(key, v);
                    Some(cid)
                }
                None => {
                    acct.records.remove(&key);
                    None
                }
            })
            .collect();
        acct.rev = rev.clone();
        let pending = if emit {
            let emit = Emit::Commit { rev: rev.clone(), changes, tamper: acct.tamper.take() };
            Some(self.enqueue(acct, emit, base))
        } else {
            acct.feed_live = false;
            None
        };
        drop(st);
        pending.into_iter().for_each(|p| p.wait());
        Ok((rev, cids))
    }

    /// Queues `emit` for `acct` (call it under the lock, which fixes the order; wait on the
    /// result without it). With a `base`, the firehose's chain follows every write from now on.
    fn enqueue(&self, acct: &mut AccountState, emit: Emit, base: Option<Base>) -> Pending {
        if base.is_some() {
            acct.feed_live = true;
        }
        self.events.enqueue(&acct.account.did, acct.pds, emit, base)
    }

    /// Sets `did`'s hosting status and emits its `#account`.
    pub fn set_status(&self, did: &str, status: AccountStatus) {
        let pending = self.update(did, |a| {
            a.status = status;
            let emit = Emit::Account { active: status == AccountStatus::Active, status: status.as_str() };
            self.enqueue(a, emit, None)
        });
        pending.into_iter().for_each(Pending::wait);
    }

    /// Emits an `#account` about `did` from the relay alone, its hosting unchanged: a relay's
    /// own word on an account its PDS still serves.
    pub fn emit_relay_account(&self, did: &str, active: bool, status: Option<&'static str>) {
        let pending = self
            .update(did, |a| self.events.enqueue(&a.account.did, RELAY_ONLY, Emit::Account { active, status }, None));
        pending.into_iter().for_each(Pending::wait);
    }

    /// Emits `did`'s `#identity` (with its handle).
    pub fn emit_identity(&self, did: &str) {
        let pending = self.update(did, |a| {
            let handle = a.handle.clone();
            self.enqueue(a, Emit::Identity(handle), None)
        });
        pending.into_iter().for_each(Pending::wait);
    }

    /// Gives `did` the handle `handle` (its DID document names it from now on), which
    /// resolves back to it or not, and emits its `#identity`.
    pub fn set_handle(&self, did: &str, handle: &str, resolves: bool) {
        let pending = self.update(did, |a| {
            (a.handle, a.handle_resolves) = (handle.to_string(), resolves);
            self.enqueue(a, Emit::Identity(handle.to_string()), None)
        });
        pending.into_iter().for_each(Pending::wait);
    }

    /// Emits `did`'s `#sync` (its current signed commit).
    pub fn emit_sync(&self, did: &str) {
        let pending = self.update(did, |a| {
            let base = a.base_unless_live();
            self.enqueue(a, Emit::Sync, base)
        });
        pending.into_iter().for_each(Pending::wait);
    }

    /// Alters `did`'s next `#commit` as `tamper` says.
    pub fn tamper_next_commit(&self, did: &str, tamper: Tamper) {
        self.update(did, |a| a.tamper = Some(tamper));
    }

    /// The DID whose handle `handle` is and resolves back to it
    /// (`com.atproto.identity.resolveHandle`).
    pub fn resolve_handle(&self, handle: &str) -> Option<String> {
        let mut found = None;
        self.scan(None, |a| {
            if a.handle_resolves && a.handle.eq_ignore_ascii_case(handle) {
                found = Some(a.account.did.clone());
            }
            found.is_none()
        });
        found
    }

    /// Runs `f` on `did`'s account, if there is one.
    pub fn read<R>(&self, did: &str, f: impl FnOnce(&AccountState) -> R) -> Option<R> {
        lock(&self.state).accounts.get(did).map(f)
    }

    /// Runs `f` on `did`'s account mutably, if there is one (not for repo writes).
    pub fn update<R>(&self, did: &str, f: impl FnOnce(&mut AccountState) -> R) -> Option<R> {
        lock(&self.state).accounts.get_mut(did).map(f)
    }

    /// Runs `f` over accounts in DID order from just after `after`, until it returns false.
    pub fn scan(&self, after: Option<&str>, mut f: impl FnMut(&AccountState) -> bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let st = lock(&self.state);
        let lower = after.map_or(Unbounded, |a| Excluded(a.to_string()));
        for (_, acct) in st.accounts.range((lower, Unbounded)) {
            if !f(acct) {
                break;
            }
        }
    }

    /// Has the relay list `dids` too, with no account behind them (their documents do not
    /// resolve, so an indexer finds each gone at once): the network's size without its repos.
    pub fn list_only(&self, dids: impl IntoIterator<Item = String>) {
        lock(&self.state).listed_only.extend(dids);
    }

    /// Up to `limit` of the DIDs listed without an account, in order from just after `after`.
    pub fn listed_only_after(&self, after: Option<&str>, limit: usize) -> Vec<String> {
        use std::ops::Bound::{Excluded, Unbounded};
        let st = lock(&self.state);
        let lower = after.map_or(Unbounded, |a| Excluded(a.to_string()));
        st.listed_only.range((lower, Unbounded)).take(limit).cloned().collect()
    }

    /// A fresh TID (for record keys), from the same clock as revs.
    pub fn next_tid(&self) -> String {
        lock(&self.state).tick()
    }

    /// Makes the next `requests` sync requests to host `pds` answer 429.
    pub fn set_rate_limit(&self, pds: usize, requests: u32, retry_after_secs: u64) {
        if let Some(l) = lock(&self.state).limits.get_mut(pds) {
            *l = RateLimit { remaining: requests, retry_after_secs };
        }
    }

    /// Consumes one rate-limited answer for host `pds`: `Some(retry_after_secs)` when limited.
    pub fn take_rate_limit(&self, pds: usize) -> Option<u64> {
        let mut st = lock(&self.state);
        let l = st.limits.get_mut(pds)?;
        (l.remaining > 0).then(|| {
            l.remaining -= 1;
            l.retry_after_secs
        })
    }

    /// Counts one request for `method`.
    pub fn count(&self, method: &str) {
        *lock(&self.counts).entry(method.to_string()).or_default() += 1;
    }

    /// Requests counted for `method`.
    pub fn request_count(&self, method: &str) -> u64 {
        lock(&self.counts).get(method).copied().unwrap_or(0)
    }

    /// The export of `did`'s repo as it is now (`None` for an unknown DID), built on a blocking
    /// thread when not cached.
    pub async fn built(&self, did: &str) -> Option<Result<Arc<Built>, BuildError>> {
        let rev = self.read(did, |a| a.rev.clone())?;
        Some(self.cache.get(did, rev, || self.build(did)).await)
    }

    /// Builds the export of `did` as it is now (a snapshot taken under the lock; the export
    /// built without it).
    async fn build(&self, did: &str) -> Result<Arc<Built>, BuildError> {
        let snapshot = self.read(did, |a| (a.account.clone(), a.rev.clone(), a.entries()));
        let (account, rev, entries) = snapshot.ok_or_else(|| BuildError::NoAccount(did.to_string()))?;
        cache::build(account, rev, entries).await
    }
}

impl AccountState {
    /// `(collection/rkey, DAG-CBOR)` of every record, in key order.
    fn entries(&self) -> Vec<(String, Bytes)> {
        self.records.iter().map(|((c, r), (_, b))| (format!("{c}/{r}"), b.clone())).collect()
    }

    /// The repo as it is now, for the firehose to (re)build its chain from, unless its chain
    /// already follows every write of it.
    fn base_unless_live(&self) -> Option<Base> {
        (!self.feed_live).then(|| Base {
            account: self.account.clone(),
            rev: self.rev.clone(),
            records: self.entries(),
        })
    }
}

type Prepared = ((String, String), Option<(Cid, Bytes)>, Must);

/// What a write needs of the record already there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Must {
    Any,
    BeAbsent,
    BePresent,
}

/// Validates one write's key and computes its record CID, outside the lock.
fn prepare(w: Write) -> Result<Prepared, WriteError> {
    let (collection, rkey, cbor, must) = match w {
        Write::Create { collection, rkey, cbor } => (collection, rkey, Some(cbor), Must::BeAbsent),
        Write::Put { collection, rkey, cbor } => (collection, rkey, Some(cbor), Must::Any),
        Write::Delete { collection, rkey } => (collection, rkey, None, Must::BePresent),
    };
    if !sluice::syntax::is_nsid(&collection) {
        return Err(WriteError::InvalidCollection(collection));
    }
    if !sluice::syntax::is_rkey(&rkey) {
        return Err(WriteError::InvalidRkey(rkey));
    }
    let value = cbor.map(|b| {
        let cid = jacquard_repo::mst::util::compute_cid(&b).expect("a sha2-256 digest always wraps");
        (cid, Bytes::from(b))
    });
    Ok(((collection, rkey), value, must))
}

/// Checks creates and deletes against the records there now (and earlier writes in the batch).
fn check_preconditions(
    records: &BTreeMap<(String, String), (Cid, Bytes)>,
    writes: &[Prepared],
) -> Result<(), WriteError> {
    let mut seen: HashMap<&(String, String), bool> = HashMap::new();
    for (key, value, must) in writes {
        let present = seen.get(key).copied().unwrap_or_else(|| records.contains_key(key));
        match must {
            Must::BeAbsent if present => return Err(WriteError::Exists(key.0.clone(), key.1.clone())),
            Must::BePresent if !present => return Err(WriteError::NotFound(key.0.clone(), key.1.clone())),
            _ => {}
        }
        seen.insert(key, value.is_some());
    }
    Ok(())
}
