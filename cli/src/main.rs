//! The `sluice` command line. Errors end here: one readable line and a non-zero exit.
//!
//! This file holds the commands and their small bodies; `service` runs `sluice run` and
//! `sluice backfill`, `store` the commands over a store (`index-car`, `events`, `stats`,
//! `cursors`), `devnet` `sluice devnet` and `run --devnet`, `status` `sluice status`, and
//! `progress` the bars drawn on a terminal.

mod devnet;
mod progress;
mod service;
mod status;
mod store;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::backfill::RunMode;
use sluice::{Config, Filter, IndexOptions};

use devnet::DevnetArgs;
use service::run_backfill;
use store::{index_cars, open_store, print_cursors, print_events, print_stats};

/// mimalloc: the pipeline allocates and frees many small buffers per record, where glibc's
/// allocator cost a quarter of the time (docs/bench-log.md, *Pipeline throughput*).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs among the executable's initializers, before Rust's runtime allocates anything.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = sluice::alloc::before_first_allocation;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "An AT Protocol indexer for custom appviews",
    after_help = sluice::config::environment_help()
)]
struct Cli {
    /// Configuration file (missing = defaults).
    #[arg(long, global = true, default_value = "config.toml")]
    config: PathBuf,
    /// Log format on stderr: `text`, or `json` (one object per line, for log collectors).
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole service until stopped (Ctrl-C or SIGTERM): backfill from the network,
    /// follow the firehose live, follow filter edits, and serve HTTP (`[server] listen`).
    Run {
        #[command(flatten)]
        net: NetArgs,
        /// Start a local devnet in this process (see `sluice devnet`) and index it: a working
        /// indexer with no network at all.
        #[arg(long)]
        devnet: bool,
    },
    /// Run a local network on 127.0.0.1 (a PLC directory, PDS hosts and a relay serving real
    /// signed repos), print its URLs and a config for `sluice run`, until Ctrl-C.
    Devnet {
        #[command(flatten)]
        opts: DevnetArgs,
        /// Where to write the config that points `sluice run` at this devnet.
        #[arg(long, default_value = "devnet.toml")]
        write_config: PathBuf,
    },
    /// Backfill from the network until the queue is empty, then exit 0.
    Backfill {
        #[command(flatten)]
        net: NetArgs,
        /// Backfill only these repos (queued again whatever their state); no crawl.
        #[arg(long = "did", value_name = "DID")]
        dids: Vec<String>,
        /// List the relay's repos again from the start, though an earlier crawl finished.
        #[arg(long)]
        recrawl: bool,
    },
    /// Index local repo exports (CAR files) through the pipeline.
    IndexCar {
        /// Filter file (default: the config's).
        #[arg(long)]
        filter: Option<PathBuf>,
        /// Data directory (default: the config's).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The DID every CAR must belong to.
        #[arg(long)]
        did: Option<String>,
        /// Signing key (did:key:z... or multibase) to verify the commits against.
        #[arg(long)]
        key: Option<String>,
        /// CAR files indexed at once (default: one per core). Exports of one repo are always
        /// applied in the order given; with 1, events also follow the order of the files.
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// CAR files.
        #[arg(required = true)]
        cars: Vec<PathBuf>,
    },
    /// Print events as JSON lines.
    Events {
        /// Data directory.
        #[arg(long)]
        data: Option<PathBuf>,
        /// First event id.
        #[arg(long, default_value_t = 0)]
        cursor: u64,
        /// Most events printed.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Repos by status, records per collection and events.
    Stats {
        /// Data directory.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a running sluice's events as JSON lines, from its event stream (replay from
    /// `--cursor`, then live).
    Tail {
        /// The server (`[server] listen` of the running sluice).
        #[arg(long, default_value = "http://127.0.0.1:2480")]
        server: String,
        /// The last event id you have (0 = from the start; none = live only).
        #[arg(long)]
        cursor: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print a running sluice's status: the backfill, live ingestion, the NATS sink, the event
    /// log, the filter and what was refused (what its status page at `/` shows).
    Status {
        /// The server (`[server] listen` of the running sluice).
        #[arg(long, default_value = "http://127.0.0.1:2480")]
        server: String,
        /// Print the JSON (`/status.json`) instead.
        #[arg(long)]
        json: bool,
    },
    /// Saved cursors and when they were saved.
    Cursors {
        /// Data directory.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Filter file tools.
    Filter {
        #[command(subcommand)]
        command: FilterCommand,
    },
    /// List the registered handlers and the collections they take.
    Handlers,
}

/// Where the indexer keeps data and which network it reads.
#[derive(clap::Args)]
struct NetArgs {
    /// Filter file, hot-reloaded (default: the config's).
    #[arg(long)]
    filter: Option<PathBuf>,
    /// Data directory (default: the config's).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Relay base URL (default: the config's, or RELAY_URL).
    #[arg(long)]
    relay: Option<String>,
    /// PLC directory base URL, ending with / (default: the config's, or SLUICE_PLC_URL).
    #[arg(long)]
    plc: Option<String>,
}

impl NetArgs {
    fn apply(self, config: &mut Config) {
        if let Some(f) = self.filter {
            config.filter.path = f;
        }
        if let Some(d) = self.data {
            config.storage.path = d;
        }
        if let Some(r) = self.relay {
            config.network.relay = r;
        }
        if let Some(mut p) = self.plc {
            if !p.ends_with('/') {
                p.push('/');
            }
            config.network.plc = p;
        }
    }
}

#[derive(Subcommand)]
enum FilterCommand {
    /// Validate a filter file.
    Check {
        /// The filter file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sluice::alloc::tune(match cli.command {
        Command::Run { .. } | Command::Backfill { .. } => sluice::alloc::Workload::Service,
        _ => sluice::alloc::Workload::Batch,
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()),
        )
        .with_ansi(progress::on_terminal())
        .with_writer(|| progress::LogWriter);
    match cli.log_format.as_str() {
        "json" => logs.json().init(),
        _ => logs.init(),
    }
    match run(cli) {
        Ok(code) => code,
        // A closed pipe (`sluice events | head`) is the reader's choice, not a failure.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(Some(&cli.config))?;
    let data_dir = |config: &Config, data: Option<PathBuf>| data.unwrap_or_else(|| config.storage.path.clone());
    match cli.command {
        Command::Run { net, devnet } => {
            net.apply(&mut config);
            // Kept until the service ends: the devnet it indexes.
            let _devnet = if devnet { Some(devnet::start_for_run(&mut config)?) } else { None };
            run_backfill(config, &[], false, RunMode::Forever)
        }
        Command::Devnet { opts, write_config } => {
            devnet::serve(&opts, &write_config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Backfill { net, dids, recrawl } => {
            net.apply(&mut config);
            run_backfill(config, &dids, recrawl, RunMode::UntilEmpty)
        }
        Command::IndexCar { filter, data, did, key, jobs, cars } => {
            config.storage.path = data_dir(&config, data);
            if let Some(f) = filter {
                config.filter.path = f;
            }
            index_cars(config, IndexOptions { expected_did: did, signing_key: key }, jobs, &cars)
        }
        Command::Events { data, cursor, limit } => {
            print_events(&mut std::io::stdout().lock(), &open_store(&data_dir(&config, data))?, cursor, limit)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { data, json } => {
            let store = open_store(&data_dir(&config, data))?;
            print_stats(&mut std::io::stdout().lock(), &store, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail { server, cursor, limit } => tail(&server, cursor, limit),
        Command::Status { server, json } => status::print(&mut std::io::stdout().lock(), &server, json),
        Command::Cursors { data } => {
            print_cursors(&mut std::io::stdout().lock(), &open_store(&data_dir(&config, data))?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Filter { command: FilterCommand::Check { file } } => Ok(check_filter(&file)),
        Command::Handlers => {
            print_handlers(&mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `sluice handlers`: each registered handler and its collections.
fn print_handlers(out: &mut impl Write) -> anyhow::Result<()> {
    for h in sluice::handlers::registered() {
        writeln!(out, "{}\t{}", h.name(), h.collections().join(", "))?;
    }
    Ok(())
}

/// `sluice tail`: the stream of a running sluice as JSON lines.
fn tail(server: &str, cursor: Option<u64>, limit: Option<usize>) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut out = std::io::stdout().lock();
    runtime.block_on(sluice::tail::tail(server, cursor, limit, |event| writeln!(out, "{event}")))?;
    Ok(ExitCode::SUCCESS)
}

/// `sluice filter check FILE`: one line, ok with a summary or the error.
fn check_filter(file: &std::path::Path) -> ExitCode {
    match Filter::load(file) {
        Ok(f) => {
            let handlers: Vec<_> = f.active_handlers().iter().map(|h| h.handler.name()).collect();
            println!(
                "{}: ok: mode {}, {} signal(s), {} collection pattern(s), {} excluded, {} tracked DID(s), handlers: {}",
                file.display(),
                f.mode.as_str(),
                f.signals.len(),
                f.collections.len(),
                f.exclude_collections.len(),
                f.dids.len(),
                if handlers.is_empty() { "none".to_string() } else { handlers.join(", ") }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
