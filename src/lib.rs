//! sluice: an AT Protocol indexer for custom appviews.
//!
//! Where a record flows: a repo export (CAR) is read and verified by [`repo`], its records
//! are walked in MST order, and [`pipeline`] takes them through the current [`filter`], the
//! registered handlers (crate `sluice-handlers`), a diff against what [`store`] holds, and
//! into fjall batches with their events. Clients read the event log from any cursor
//! ([`wire`] renders it as JSON).
//!
//! # Layout
//! - [`process`]: the ground floor: cores, resident memory, background threads' priorities.
//! - [`error`]: errors shown with their causes, on one line (typed inside, see its doc).
//! - [`config`]: `config.toml` and environment overrides.
//! - [`filter`]: the filter model, TOML parsing, hot reload.
//! - [`syntax`]: AT Protocol identifier syntax (by jacquard).
//! - [`http`]: the HTTP client settings and helpers network code shares.
//! - [`cluster`]: which DIDs this node owns (`--shard I/N`).
//! - [`repo`]: CAR -> verified blocks -> commit -> MST walk (sync, no I/O).
//! - [`pipeline`]: filter -> handlers -> diff -> batch + events.
//! - [`store`]: fjall in parts (event log, records, repo states, queue, handles, handler keyspaces,
//!   held commits, cursors), each change written to them in one batch; key codecs, versioned values.
//! - [`wire`]: events as JSON.
//! - [`identity`]: DID -> PDS endpoint + signing key, cached.
//! - [`handles`]: handles checked against their repos (DNS TXT, well-known), in the background.
//! - [`backfill`]: the repo queue, crawler and workers (getRepo -> pipeline).
//! - [`firehose`]: live ingestion from subscribeRepos (client, shards, chain checks, cursor).
//! - [`sink`]: the event log published to NATS JetStream, in order, after acks.
//! - [`service`]: backfill, live ingestion and the server run together (`sluice run`).
//! - [`server`]: the HTTP server: event stream, XRPC queries, admin, operations.
//! - [`tail`]: a client of the event stream (`sluice tail`).
//! - [`xrpc`]: XRPC error answers and parameters (the server's; crate `sluice-devnet` uses them).
//! - [`index_files`]: `index-car` over many files, in parallel, serialized per DID.
//! - [`alloc`]: mimalloc's options for the binary.
//!
//! # Embedding
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! // Handlers registered with `sluice_handlers::register_handler!` anywhere in the binary run too.
//! let sluice = sluice::Sluice::builder().data_dir("data").filter_file("filters/everything.toml").open()?;
//! let outcome = sluice.index_car(&std::fs::read("repo.car")?, &sluice::IndexOptions::default())?;
//! println!("{} records created", outcome.created);
//! # Ok(()) }
//! ```

pub mod alloc;
pub mod backfill;
pub mod cluster;
pub mod config;
pub mod error;
pub mod filter;
pub mod firehose;
pub mod handles;
pub mod http;
pub mod identity;
pub mod index_files;
pub mod indexes;
pub mod lexicon;
pub mod pipeline;
pub mod process;
pub mod repo;
pub mod server;
pub mod service;
pub mod sink;
pub mod store;
pub mod syntax;
pub mod tail;
pub mod units;
pub mod wire;
pub mod xrpc;

use std::path::PathBuf;
use std::sync::Arc;

pub use config::Config;
pub use filter::{Filter, FilterHandle};
pub use pipeline::{Pipeline, PipelineError, RecordOp, RepoOutcome, WalkOptions};
pub use sluice_handlers as handlers;
pub use store::Store;

/// Checks asked of an indexed CAR beyond its own consistency.
#[derive(Debug, Clone, Default)]
pub struct IndexOptions {
    /// The DID the repo must belong to.
    pub expected_did: Option<String>,
    /// The signing key (`did:key:z...` or multibase) the commit must verify against.
    pub signing_key: Option<String>,
}

/// An open indexer: store, filter (hot-reloaded when built from a file) and pipeline.
pub struct Sluice {
    config: Config,
    pipeline: Pipeline,
    /// Held, not read: the filter file is watched for as long as this lives. What its saves
    /// came to is on the pipeline's filter handle.
    _watcher: Option<filter::watch::FilterWatcher>,
    /// Held, not read: puts the filter's indexes in force and builds new ones while it lives.
    _indexes: pipeline::index_builds::Maintainer,
}

/// Builds a [`Sluice`].
#[derive(Default)]
pub struct SluiceBuilder {
    config: Config,
    filter: Option<Filter>,
    watch: bool,
}

impl SluiceBuilder {
    /// Starts from `config`.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Stores data in `dir`.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.storage.path = dir.into();
        self
    }

    /// Reads the filter from `path` and reloads it on every save.
    pub fn filter_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.filter.path = path.into();
        self.filter = None;
        self.watch = true;
        self
    }

    /// Uses a fixed filter (no file, no reload).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self.watch = false;
        self
    }

    /// Opens the store, loads the filter and starts watching it.
    pub fn open(self) -> Result<Sluice, OpenError> {
        let filter = match self.filter {
            Some(f) => f,
            None => Filter::load(&self.config.filter.path)?,
        };
        let path = &self.config.storage.path;
        let in_store = |source| OpenError::Store { path: path.clone(), source };
        let store = Store::open_with(path, self.config.storage.cache_mb).map_err(in_store)?;
        // Open every registered handler's keyspace now, not on a repo's first record.
        for handler in handlers::registered() {
            store.handlers().open(handler.name()).map_err(in_store)?;
        }
        let handle = FilterHandle::new(filter);
        let watcher = match self.watch {
            true => Some(
                filter::watch::watch(&self.config.filter.path, handle.clone())
                    .map_err(|source| OpenError::Watch { path: self.config.filter.path.clone(), source })?,
            ),
            false => None,
        };
        let store = Arc::new(store);
        let maintainer = pipeline::index_builds::Maintainer::start(
            store.clone(),
            handle.clone(),
            self.config.storage.index_build_batch,
        )
        .map_err(in_store)?;
        let pipeline = Pipeline::new(store, handle).with_batch_size(self.config.backfill.batch_size);
        Ok(Sluice { pipeline, config: self.config, _watcher: watcher, _indexes: maintainer })
    }
}

/// Why [`SluiceBuilder::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The filter file is missing or invalid.
    #[error(transparent)]
    Filter(#[from] filter::FilterError),
    /// The store did not open.
    #[error("opening the store in {}", path.display())]
    Store { path: PathBuf, source: store::StoreError },
    /// The filter file cannot be watched.
    #[error("watching the filter file {}", path.display())]
    Watch { path: PathBuf, source: std::io::Error },
}

/// Why a CAR was not indexed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The CAR or its commit is invalid.
    #[error(transparent)]
    Repo(#[from] repo::RepoError),
    /// The pipeline refused it or storage failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The given signing key is invalid.
    #[error(transparent)]
    Key(#[from] repo::KeyError),
    /// The CAR file could not be read.
    #[error("reading the CAR file")]
    Read(#[source] std::io::Error),
}

impl Sluice {
    /// A builder with the default configuration.
    pub fn builder() -> SluiceBuilder {
        SluiceBuilder::default()
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The pipeline (store, filter, metrics).
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        self.pipeline.store()
    }

    /// The last refused filter save, if the latest save was refused.
    pub fn filter_error(&self) -> Option<filter::FilterError> {
        self.pipeline.filter().saves().error
    }

    /// How many times the filter file was read since it was opened for watching (0 when it
    /// is not watched): once per save.
    pub fn filter_loads(&self) -> u64 {
        let saves = self.pipeline.filter().saves();
        saves.accepted + saves.refused
    }

    /// Reads, verifies and indexes one repo export.
    pub fn index_car(&self, car: &[u8], opts: &IndexOptions) -> Result<RepoOutcome, IndexError> {
        self.index_loaded(&self.load_car(car, opts)?)
    }

    /// [`Sluice::index_car`] over bytes the repo may keep, which spares a copy of its blocks.
    pub fn index_car_owned(&self, car: bytes::Bytes, opts: &IndexOptions) -> Result<RepoOutcome, IndexError> {
        self.index_loaded(&self.load_car_owned(car, opts)?)
    }

    /// Reads and verifies one repo export (CIDs, commit, DID and signature as `opts` ask),
    /// without indexing it: the first half of [`Sluice::index_car`].
    pub fn load_car(&self, car: &[u8], opts: &IndexOptions) -> Result<repo::LoadedRepo, IndexError> {
        let key = Self::signing_key(opts)?;
        Self::checked(repo::read_car(car, &self.config.limits.car_limits())?, key, opts)
    }

    /// [`Sluice::load_car`] over bytes the repo keeps: its blocks are used where they lie.
    pub fn load_car_owned(&self, car: bytes::Bytes, opts: &IndexOptions) -> Result<repo::LoadedRepo, IndexError> {
        let key = Self::signing_key(opts)?;
        Self::checked(repo::read_car_owned(car, &self.config.limits.car_limits())?, key, opts)
    }

    /// The key `opts` gives for checking signatures, if any.
    fn signing_key(
        opts: &IndexOptions,
    ) -> Result<Option<jacquard_common::types::crypto::PublicKey<'static>>, IndexError> {
        opts.signing_key.as_deref().map(repo::parse_public_key).transpose().map_err(IndexError::Key)
    }

    /// `loaded` once its commit (and DID, and signature, as `opts` ask) is checked.
    fn checked(
        loaded: repo::LoadedRepo,
        key: Option<jacquard_common::types::crypto::PublicKey<'static>>,
        opts: &IndexOptions,
    ) -> Result<repo::LoadedRepo, IndexError> {
        loaded.check_commit(opts.expected_did.as_deref())?;
        if let Some(key) = &key {
            loaded.verify_signature(key)?;
        }
        Ok(loaded)
    }

    /// Indexes a repo export read by [`Sluice::load_car`]: the second half of
    /// [`Sluice::index_car`].
    pub fn index_loaded(&self, loaded: &repo::LoadedRepo) -> Result<RepoOutcome, IndexError> {
        Ok(self.pipeline.apply_walk(loaded, &pipeline::WalkOptions::default())?)
    }
}

/// The bodies of the cargo-fuzz targets in `fuzz/`; `tests/fuzz_corpus.rs` runs each over the
/// seed corpus in `fuzz/seeds/`, so a crash the fuzzer finds becomes a regular test.
pub mod fuzz {
    pub use crate::filter::fuzz_filter_toml as filter_toml;
    pub use crate::firehose::fuzz_frame as frame;
    pub use crate::indexes::fuzz_entries as index_entries;
    /// `lexicon_check`'s body, returning its verdict (the target drops it).
    pub use crate::lexicon::fuzz_check as lexicon_check;
    pub use crate::repo::fuzz_car as car;
    pub use sluice_handlers::value::fuzz_cbor_json as cbor_json;
}
