//! sluice-devnet: an in-process fake AT Protocol network on 127.0.0.1 (a PLC directory, PDS
//! hosts and a relay) serving real, signed repos built with jacquard-repo, for sluice's tests,
//! benchmarks and `sluice devnet` / `sluice run --devnet`. The `sluice` library knows nothing of
//! it; it uses sluice's `xrpc` (error answers, parameters) and `syntax`.
//!
//! # Layout
//! Each part uses only the parts above it in this list.
//! - `lock`: a mutex lock that ignores poisoning.
//! - `world/`: the shared state. `repos`: deterministic accounts and signed CAR exports;
//!   `events`: the queue of jobs from World changes to the firehose, and the faults
//!   [`Tamper`] injects; `cache`: CAR exports per (DID, rev), built outside the lock; `state`:
//!   the [`World`](world::World) (accounts, records, revs, statuses, faults, request counts),
//!   whose `apply_writes` is the one write path and queues each commit's event under its lock;
//!   `populate`: bulk synthetic repos.
//! - `firehose/`: `frame`, the wire encoding; `sequencer` (seq, history, live broadcast);
//!   `commit`, an account's MST between commits and its signed `#commit`s; `feed`, the worker
//!   thread that turns the World's jobs into events in rev order; `ws`, subscribeRepos on the
//!   PDS hosts and the relay; `synth`, [`synthetic_stream`] for benchmarks and
//!   [`SyntheticRepo`], one account's events made one at a time, for model tests.
//! - `identity/`: DID documents (`diddoc`), the PLC directory (`plc`), resolveHandle (`handle`).
//! - `relay/`: the relay's routes (`server`) and the repo listings it shares with the PDS hosts
//!   (`listing`).
//! - `pds/`: a PDS host: `host` (a host's view of the World: which repos it serves, and how
//!   it refuses the others), `sync`, `repo` (reads), `write` (the unauthenticated write API),
//!   `server` (routes).
//! - This file: [`Devnet`], which starts the servers; `api`: its synchronous test API.
//!
//! Architecture invariant: the indexer talks to these servers over HTTP (and WebSocket) only,
//! as it would to the real network; `sluice` does not depend on this crate.

mod api;
mod firehose;
mod identity;
mod lock;
mod pds;
mod relay;
mod world;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use firehose::synth::{SyntheticEvent, SyntheticRepo, SyntheticStream, synthetic_stream};
pub use identity::plc::PLC_RESOLVE;
pub use pds::server::DID_WEB_RESOLVE;
pub use world::events::Tamper;
pub use world::repos::{Account, BuildError, RepoContents, export_car, export_car_blocking, export_repo, rev_at};
pub use world::state::{AccountSpec, AccountStatus, WriteError};

use firehose::sequencer::Sequencer;
use world::events::EventQueue;
use world::state::{Host, World};

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
    /// The firehose: events numbered, kept for replay and broadcast.
    sequencer: Arc<Sequencer>,
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
        let sequencer = Arc::new(Sequencer::default());
        let world = Arc::new(World::new(hosts, EventQueue::new(firehose::feed::worker(sequencer.clone()))));
        let mut net = Devnet {
            world: world.clone(),
            sequencer: sequencer.clone(),
            plc: plc.local_addr()?,
            relay: relay.local_addr()?,
            pds: pds_addrs,
            stop: CancellationToken::new(),
            tasks: Vec::new(),
        };
        net.serve(plc, identity::plc::router(world.clone()));
        net.serve(relay, relay::server::router(world.clone(), sequencer.clone()));
        for (i, listener) in pds.into_iter().enumerate() {
            net.serve(listener, pds::server::router(world.clone(), sequencer.clone(), i));
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
        self.sequencer.drop_connections();
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
        self.sequencer.drop_connections();
    }
}
