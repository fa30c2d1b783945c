//! What the World tells the firehose: a job per change, queued while the World holds its lock
//! (so an account's jobs keep the order of its revs), which the World then waits on, without
//! the lock, until its event is sequenced. The consumer (the firehose's worker, `firehose::feed`)
//! is passed in and started on the first job, so a World that never changes starts nothing.
//! Also the faults [`Tamper`] injects into an account's next `#commit`.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use cid::Cid;

use super::repos::Account;
use crate::lock::lock;

/// How [`Devnet::tamper_next_commit`](crate::Devnet::tamper_next_commit) alters an account's
/// next `#commit` frame (the repo itself advances normally).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// The commit block is signed with another key; the frame is otherwise valid.
    ForgedSignature,
    /// The frame's `rev` and the commit's rev are the account's previous rev.
    StaleRev,
    /// `prevData` names some other CID.
    BrokenPrevData,
    /// The ops list names its first op's path twice: no diff of two trees does.
    RepeatedOp,
}

/// One record change: `collection/rkey` and the new record (`None` deletes it).
pub(crate) type Change = (String, Option<(Cid, Bytes)>);

/// What one job turns into.
pub(crate) enum Emit {
    /// A `#commit` of `changes` at `rev`.
    Commit { rev: String, changes: Vec<Change>, tamper: Option<Tamper> },
    /// An `#account`: whether it is active, and its status string (`None` when active).
    Account { active: bool, status: Option<&'static str> },
    /// An `#identity` with this handle.
    Identity(String),
    /// A `#sync` of the current commit.
    Sync,
}

/// The host of a job only the relay sends: no PDS's `subscribeRepos` carries it.
pub(crate) const RELAY_ONLY: usize = usize::MAX;

/// A repo as it was before a job: what the consumer (re)builds an account's chain from.
pub(crate) struct Base {
    pub account: Account,
    pub rev: String,
    /// `(collection/rkey, DAG-CBOR)` in key order.
    pub records: Vec<(String, Bytes)>,
}

/// One change of one account, for the consumer; it sends on `done` once the event is
/// sequenced (or dropped on error).
pub(crate) struct Job {
    pub did: String,
    /// The index of the account's PDS host ([`RELAY_ONLY`]: none).
    pub host: usize,
    pub emit: Emit,
    /// The repo before the change, when the consumer's chain does not follow every write.
    pub base: Option<Base>,
    pub done: SyncSender<()>,
}

/// What takes the jobs: started once, with the receiving end of the queue.
pub(crate) type Consumer = Box<dyn FnOnce(Receiver<Job>) + Send>;

/// The queue to the consumer (started on the first job).
pub(crate) struct EventQueue {
    jobs: OnceLock<Sender<Job>>,
    consumer: Mutex<Option<Consumer>>,
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

impl EventQueue {
    /// A queue whose jobs `consumer` takes once the first one comes.
    pub fn new(consumer: Consumer) -> Self {
        Self { jobs: OnceLock::new(), consumer: Mutex::new(Some(consumer)) }
    }

    /// Queues `emit` for account `did` on host `host`. Call it under the World lock (that fixes
    /// the order), then wait on the result without the lock.
    pub fn enqueue(&self, did: &str, host: usize, emit: Emit, base: Option<Base>) -> Pending {
        let (done, rx) = mpsc::sync_channel(1);
        let job = Job { did: did.to_string(), host, emit, base, done };
        Pending(self.sender().send(job).ok().map(|()| rx))
    }

    fn sender(&self) -> &Sender<Job> {
        self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            if let Some(start) = lock(&self.consumer).take() {
                start(rx);
            }
            tx
        })
    }
}
