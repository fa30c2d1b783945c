//! From World changes to firehose events. The World queues a job per change while it holds its
//! lock (so an account's events keep the order of its revs) and waits, without the lock, until
//! the job's event is sequenced. One worker thread, with its own tokio runtime for jacquard's
//! MST, keeps each account's [`Chain`] (built lazily from a snapshot the first job carries, so
//! `populate`'s quiet writes cost nothing here) and turns jobs into frames for the [`Sequencer`].

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use jacquard_api::com_atproto::sync::subscribe_repos::{self as lex, AccountStatus as LexStatus};
use jacquard_common::types::string::{Datetime, Did, Handle};
use smol_str::SmolStr;

use super::firehose::Sequencer;
use super::firehose_commit::{Chain, Change, Tamper};
use super::firehose_frame::Body;
use super::repos::Account;
use super::world::{AccountState, AccountStatus, World};

/// What one job turns into.
pub(crate) enum Emit {
    /// A `#commit` of `changes` at `rev`.
    Commit { rev: String, changes: Vec<Change>, tamper: Option<Tamper> },
    /// An `#account` with this status.
    Account(AccountStatus),
    /// An `#identity` with this handle.
    Identity(String),
    /// A `#sync` of the current commit.
    Sync,
}

/// A repo as it was before a job: what the worker (re)builds an account's chain from.
pub(crate) struct Base {
    account: Account,
    rev: String,
    records: Vec<(String, Bytes)>,
}

impl Base {
    /// `acct` as it is now, unless the worker's chain already follows every write of it.
    pub fn unless_live(acct: &AccountState) -> Option<Base> {
        (!acct.feed_live).then(|| Base {
            account: acct.account.clone(),
            rev: acct.rev.clone(),
            records: acct.records.iter().map(|((c, r), (_, b))| (format!("{c}/{r}"), b.clone())).collect(),
        })
    }
}

struct Job {
    did: String,
    host: usize,
    emit: Emit,
    base: Option<Base>,
    done: SyncSender<()>,
}

/// The sequencer, and the queue to the worker thread (started on the first job).
#[derive(Default)]
pub(crate) struct Feed {
    /// Where events are numbered and kept.
    pub sequencer: Arc<Sequencer>,
    jobs: OnceLock<mpsc::Sender<Job>>,
}

/// A queued job; [`Pending::wait`] returns once its event is sequenced (or dropped on error).
#[must_use]
pub(crate) struct Pending(Option<Receiver<()>>);

impl Pending {
    /// Blocks until the job is done.
    pub fn wait(self) {
        if let Some(rx) = self.0 {
            let _ = rx.recv();
        }
    }
}

impl Feed {
    /// Queues `emit` for `acct`. Call it under the World lock (that fixes the order), then wait
    /// on the result without the lock.
    pub fn enqueue(&self, acct: &mut AccountState, emit: Emit, base: Option<Base>) -> Pending {
        if base.is_some() {
            acct.feed_live = true;
        }
        let (done, rx) = mpsc::sync_channel(1);
        let job = Job { did: acct.account.did.clone(), host: acct.pds, emit, base, done };
        Pending(self.sender().send(job).ok().map(|()| rx))
    }

    fn sender(&self) -> &mpsc::Sender<Job> {
        self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let sequencer = self.sequencer.clone();
            if let Err(e) =
                std::thread::Builder::new().name("devnet-firehose".into()).spawn(move || run(rx, &sequencer))
            {
                tracing::warn!(error = %e, "devnet firehose thread did not start");
            }
            tx
        })
    }
}

/// The worker: jobs in order, until the World (the sender) is gone.
fn run(jobs: Receiver<Job>, sequencer: &Sequencer) {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => return tracing::warn!(error = %e, "devnet firehose runtime"),
    };
    let mut chains = HashMap::new();
    for Job { did, host, emit, base, done } in jobs {
        let made = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(body_of(&mut chains, &did, emit, base))));
        let result = match made {
            Ok(body) => body.and_then(|b| sequencer.publish(host, b)),
            Err(_) => Err("panicked".to_string()),
        };
        if let Err(e) = result {
            tracing::warn!(did, error = %e, "devnet firehose event dropped");
            chains.remove(&did);
        }
        let _ = done.send(());
    }
}

/// The event body of one job (`seq` still 0).
async fn body_of(
    chains: &mut HashMap<String, Chain>,
    did: &str,
    emit: Emit,
    base: Option<Base>,
) -> Result<Body, String> {
    if let Some(b) = base {
        chains.insert(did.to_string(), Chain::build(&b.account, &b.rev, &b.records).await.map_err(|e| e.to_string())?);
    }
    let (time, lex_did) = (Datetime::now(), Did::new(SmolStr::new(did)).map_err(|e| e.to_string())?);
    let chain = chains.get_mut(did).ok_or("no firehose state for the account");
    Ok(match emit {
        Emit::Commit { rev, changes, tamper } => {
            Body::Commit(Box::new(chain?.commit(&rev, &changes, tamper, time).await.map_err(|e| e.to_string())?))
        }
        Emit::Sync => {
            let chain = chain?;
            let blocks = chain.sync_blocks().await.map_err(|e| e.to_string())?;
            Body::Sync(Box::new(lex::Sync {
                blocks: blocks.into(),
                did: lex_did,
                rev: SmolStr::new(chain.rev()),
                seq: 0,
                time,
                extra_data: None,
            }))
        }
        Emit::Account(status) => Body::Account(Box::new(lex::Account {
            active: status == AccountStatus::Active,
            did: lex_did,
            seq: 0,
            status: status.as_str().map(|s| LexStatus::from_value(SmolStr::new(s))),
            time,
            extra_data: None,
        })),
        Emit::Identity(handle) => Body::Identity(Box::new(lex::Identity {
            did: lex_did,
            handle: Some(Handle::raw(SmolStr::new(handle))),
            seq: 0,
            time,
            extra_data: None,
        })),
    })
}

impl World {
    /// Sets `did`'s hosting status and emits its `#account`.
    pub fn set_status(&self, did: &str, status: AccountStatus) {
        let pending = self.update(did, |a| {
            a.status = status;
            self.feed.enqueue(a, Emit::Account(status), None)
        });
        pending.into_iter().for_each(Pending::wait);
    }

    /// Emits `did`'s `#identity` (with its handle).
    pub fn emit_identity(&self, did: &str) {
        let pending = self.update(did, |a| {
            let handle = a.handle.clone();
            self.feed.enqueue(a, Emit::Identity(handle), None)
        });
        pending.into_iter().for_each(Pending::wait);
    }

    /// Gives `did` the handle `handle` (its DID document names it from now on), which
    /// resolves back to it or not, and emits its `#identity`.
    pub fn set_handle(&self, did: &str, handle: &str, resolves: bool) {
        let pending = self.update(did, |a| {
            (a.handle, a.handle_resolves) = (handle.to_string(), resolves);
            self.feed.enqueue(a, Emit::Identity(handle.to_string()), None)
        });
        pending.into_iter().for_each(Pending::wait);
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

    /// Emits `did`'s `#sync` (its current signed commit).
    pub fn emit_sync(&self, did: &str) {
        let pending = self.update(did, |a| {
            let base = Base::unless_live(a);
            self.feed.enqueue(a, Emit::Sync, base)
        });
        pending.into_iter().for_each(Pending::wait);
    }

    /// Alters `did`'s next `#commit` as `tamper` says.
    pub fn tamper_next_commit(&self, did: &str, tamper: Tamper) {
        self.update(did, |a| a.tamper = Some(tamper));
    }
}
