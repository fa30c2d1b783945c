//! From World changes to firehose events. The World queues a job per change while it holds its
//! lock (so an account's events keep the order of its revs) and waits, without the lock, until
//! the job's event is sequenced (`world::events`). One worker thread, with its own tokio runtime
//! for jacquard's MST, keeps each account's [`Chain`] (built lazily from a snapshot the first job
//! carries, so `populate`'s quiet writes cost nothing here) and turns jobs into frames for the
//! [`Sequencer`].

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use jacquard_api::com_atproto::sync::subscribe_repos::{self as lex, AccountStatus as LexStatus};
use jacquard_common::types::string::{Datetime, Did, Handle};
use smol_str::SmolStr;

use super::commit::Chain;
use super::frame::{Body, EncodeError};
use super::sequencer::Sequencer;
use crate::world::events::{Base, Consumer, Emit, Job};
use crate::world::repos::BuildError;

/// Why an event was dropped instead of sequenced.
#[derive(Debug, thiserror::Error)]
enum EventError {
    /// The account's commit chain or blocks could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The frame could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The DID is not one jacquard's lexicon types take.
    #[error("not a DID: {0}")]
    Did(String),
    /// An event for an account whose chain the feed never saw.
    #[error("no firehose state for the account")]
    NoChain,
    /// Building it panicked.
    #[error("panicked")]
    Panicked,
}

/// What takes the World's jobs: the worker thread, started on the first job, publishing to
/// `sequencer`.
pub(crate) fn worker(sequencer: Arc<Sequencer>) -> Consumer {
    Box::new(move |jobs| {
        if let Err(e) = std::thread::Builder::new().name("devnet-firehose".into()).spawn(move || run(jobs, &sequencer))
        {
            tracing::warn!(error = %e, "devnet firehose thread did not start");
        }
    })
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
            Ok(body) => body.and_then(|b| sequencer.publish(host, b).map_err(EventError::from)),
            Err(_) => Err(EventError::Panicked),
        };
        if let Err(e) = result {
            tracing::warn!(did, error = %sluice::error::chain(&e), "devnet firehose event dropped");
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
) -> Result<Body, EventError> {
    if let Some(b) = base {
        chains.insert(did.to_string(), Chain::build(&b.account, &b.rev, &b.records).await?);
    }
    let (time, lex_did) = (Datetime::now(), Did::new(SmolStr::new(did)).map_err(|_| EventError::Did(did.to_string()))?);
    let chain = chains.get_mut(did).ok_or(EventError::NoChain);
    Ok(match emit {
        Emit::Commit { rev, changes, tamper } => {
            Body::Commit(Box::new(chain?.commit(&rev, &changes, tamper, time).await?))
        }
        Emit::Sync => {
            let chain = chain?;
            let blocks = chain.sync_blocks().await?;
            Body::Sync(Box::new(lex::Sync {
                blocks: blocks.into(),
                did: lex_did,
                rev: SmolStr::new(chain.rev()),
                seq: 0,
                time,
                extra_data: None,
            }))
        }
        Emit::Account { active, status } => Body::Account(Box::new(lex::Account {
            active,
            did: lex_did,
            seq: 0,
            status: status.map(|s| LexStatus::from_value(SmolStr::new(s))),
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
