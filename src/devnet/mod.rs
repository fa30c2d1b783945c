//! devnet: an in-process fake AT Protocol network on 127.0.0.1 (a PLC directory, PDS hosts and
//! a relay) serving real, signed repos built with jacquard-repo, for tests, benchmarks and
//! `sluice devnet`.
//!
//! # Layout
//! - `repos`: deterministic accounts and signed CAR exports.
//! - `world`: the shared state (accounts, records, revs, statuses, faults, request counts);
//!   every repo write goes through `World::apply_writes`, which also emits its `#commit`.
//! - `cache`: CAR exports per (DID, rev), built outside the lock.
//! - `api`: the synchronous test API on [`Devnet`]; `populate`: bulk synthetic repos.
//! - `plc`, `pds` (+ `pds_sync`, `pds_repo`, `pds_write`), `relay`: the servers; `listing`:
//!   listRepos pages; `diddoc`: DID documents (XRPC errors and parameters are the crate's `xrpc`).
//! - The firehose: `firehose_feed` turns World changes into events in rev order (one worker
//!   thread); `firehose_commit`, an account's MST between commits and its signed `#commit`s;
//!   `firehose_frame`, the wire encoding; `firehose`, the sequencer (seq, history, live
//!   broadcast); `firehose_ws`, subscribeRepos on the PDS hosts and the relay;
//!   `firehose_synth`, [`synthetic_stream`] for benchmarks.
//!
//! Architecture invariant: nothing outside `devnet/` depends on these servers; the indexer
//! talks to them over HTTP only, as it would to the real network.

mod api;
mod cache;
mod diddoc;
mod firehose;
mod firehose_commit;
mod firehose_feed;
mod firehose_frame;
mod firehose_synth;
mod firehose_ws;
mod listing;
mod pds;
mod pds_repo;
mod pds_sync;
mod pds_write;
mod plc;
mod populate;
mod relay;
mod repos;
mod world;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use firehose_commit::Tamper;
pub use firehose_synth::{SyntheticStream, synthetic_stream};
pub use pds::DID_WEB_RESOLVE;
pub use plc::PLC_RESOLVE;
pub use repos::{Account, BuildError, RepoContents, export_car, export_car_blocking, export_repo, rev_at};
pub use world::{AccountSpec, AccountStatus, WriteError};

use world::{Host, World};

/// Where the devnet listens.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// Number of PDS hosts (at least 1).
    pub pds_hosts: usize,
    /// 0: ephemeral ports. Otherwise PLC on `base_port`, the relay on `base_port + 1` and PDS
    /// `i` on `base_port + 2 + i`.
    pub base_port: u16,
}

impl Default for DevnetOptions {
    fn default() -> Self {
        Self { pds_hosts: 2, base_port: 0 }
    }
}

/// A running devnet. Dropping it stops the servers; [`Devnet::shutdown`] also waits for them.
pub struct Devnet {
    world: Arc<World>,
    plc: SocketAddr,
    relay: SocketAddr,
    pds: Vec<SocketAddr>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Binds 127.0.0.1 on `base_port + offset` (or an ephemeral port when `base_port` is 0).
async fn bind(base_port: u16, offset: usize) -> anyhow::Result<TcpListener> {
    let port = if base_port == 0 { 0 } else { base_port.checked_add(offset as u16).context("port out of range")? };
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await.with_context(|| format!("binding 127.0.0.1:{port}"))
}

impl Devnet {
    /// Binds every server and starts serving; connections are accepted once this returns.
    pub async fn start(opts: DevnetOptions) -> anyhow::Result<Devnet> {
        anyhow::ensure!(opts.pds_hosts >= 1, "a devnet needs at least one PDS host");
        let plc = bind(opts.base_port, 0).await?;
        let relay = bind(opts.base_port, 1).await?;
        let mut pds = Vec::with_capacity(opts.pds_hosts);
        for i in 0..opts.pds_hosts {
            pds.push(bind(opts.base_port, 2 + i).await?);
        }
        let pds_addrs = pds.iter().map(TcpListener::local_addr).collect::<Result<Vec<_>, _>>()?;
        let hosts = pds_addrs.iter().map(|a| Host { url: format!("http://{a}"), port: a.port() }).collect();
        let world = Arc::new(World::new(hosts));
        let mut net = Devnet {
            world: world.clone(),
            plc: plc.local_addr()?,
            relay: relay.local_addr()?,
            pds: pds_addrs,
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        };
        net.serve(plc, plc::router(world.clone()));
        net.serve(relay, relay::router(world.clone()));
        for (i, listener) in pds.into_iter().enumerate() {
            net.serve(listener, pds::router(world.clone(), i));
        }
        Ok(net)
    }

    /// Serves `router` on `listener` until the devnet stops.
    fn serve(&mut self, listener: TcpListener, router: axum::Router) {
        let stop = self.stop.clone();
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await {
                tracing::warn!(error = %e, "devnet server stopped");
            }
        }));
    }

    /// The PLC directory's URL (ends with `/`).
    pub fn plc_url(&self) -> String {
        format!("http://{}/", self.plc)
    }

    /// The relay's URL.
    pub fn relay_url(&self) -> String {
        format!("http://{}", self.relay)
    }

    /// The PDS hosts' URLs, by index.
    pub fn pds_urls(&self) -> Vec<String> {
        self.pds.iter().map(|a| format!("http://{a}")).collect()
    }

    /// The `ws://` URL of `com.atproto.sync.subscribeRepos` on PDS `pds`, or on the relay when
    /// `None` (no cursor: append `?cursor=N`).
    pub fn firehose_url(&self, pds: Option<usize>) -> String {
        let addr = pds.map_or(self.relay, |i| self.pds[i]);
        format!("ws://{addr}/xrpc/com.atproto.sync.subscribeRepos")
    }

    /// Stops the servers and waits (up to 5 s) for them to finish.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        self.world.feed.sequencer.drop_connections();
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        self.stop.cancel();
        self.world.feed.sequencer.drop_connections();
    }
}
