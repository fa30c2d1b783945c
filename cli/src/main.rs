//! The `sluice` command line. Errors end here: one readable line and a non-zero exit.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::{Config, Filter, IndexOptions, Sluice, Store};

/// mimalloc: the pipeline allocates and frees many small buffers per record, where glibc's
/// allocator cost a quarter of the time (see BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs among the executable's initializers, before Rust's runtime allocates anything.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = sluice::alloc::before_first_allocation;

#[derive(Parser)]
#[command(name = "sluice", version, about = "An AT Protocol indexer for custom appviews")]
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

/// The shape of a devnet.
#[derive(clap::Args, Clone)]
struct DevnetArgs {
    /// Accounts created at start.
    #[arg(long, default_value_t = 20)]
    repos: usize,
    /// Records per account.
    #[arg(long, default_value_t = 50)]
    records: usize,
    /// PDS hosts.
    #[arg(long, default_value_t = 2)]
    pds: usize,
    /// DIDs the relay also lists with no account behind them (each ends `gone` at once): a
    /// network-sized listing for the crawler and the queue, e.g. 1000000.
    #[arg(long, default_value_t = 0)]
    unresolvable: usize,
    /// First port: PLC on it, the relay on +1, PDS hosts from +2 (0 = any free ports).
    #[arg(long, default_value_t = 2580)]
    port: u16,
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
        .with_writer(std::io::stderr);
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
            match devnet {
                true => run_on_devnet(config),
                false => run_backfill(config, &[], false, sluice::backfill::RunMode::Forever),
            }
        }
        Command::Devnet { opts, write_config } => serve_devnet(&opts, &write_config),
        Command::Backfill { net, dids, recrawl } => {
            net.apply(&mut config);
            run_backfill(config, &dids, recrawl, sluice::backfill::RunMode::UntilEmpty)
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

/// `sluice cursors`: each service's saved cursor and when it was saved.
fn print_cursors(out: &mut impl Write, store: &Store) -> anyhow::Result<()> {
    for (service, (value, ms)) in store.cursors()? {
        writeln!(out, "{service}\t{value}\t{}", sluice::syntax::datetime_from_ms(ms))?;
    }
    Ok(())
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

/// Starts a devnet in a runtime of its own (it outlives the indexer's runtime); returns it with
/// the runtime that serves it.
fn start_devnet(opts: &DevnetArgs) -> anyhow::Result<(tokio::runtime::Runtime, sluice::devnet::Devnet)> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("devnet").enable_all().build()?;
    let net = runtime.block_on(async {
        let net =
            sluice::devnet::Devnet::start(sluice::devnet::DevnetOptions { pds_hosts: opts.pds, base_port: opts.port })
                .await?;
        net.populate(opts.repos, opts.records, 1).await;
        net.list_unresolvable(opts.unresolvable, 1);
        anyhow::Ok(net)
    })?;
    Ok((runtime, net))
}

/// The config that points the indexer at `net`, keeping its data apart from the default's.
fn devnet_config(net: &sluice::devnet::Devnet, filter: &std::path::Path) -> String {
    format!(
        "# Written by `sluice devnet`: points `sluice run` at the local devnet.\n\
         [storage]\npath = \"data-devnet\"\n\n\
         [filter]\npath = {:?}\n\n\
         [network]\nrelay = \"{}\"\nplc = \"{}\"\nhandle_resolver = \"{}\"\n",
        filter.display().to_string(),
        net.relay_url(),
        net.plc_url(),
        net.relay_url()
    )
}

/// Writes the default filter (full mode) to `path` when no file is there, so that a devnet
/// runs from any directory, not only from a checkout that has `filters/`; an existing file,
/// edits and all, is kept. Says so on stdout when it writes one.
fn ensure_devnet_filter(path: &std::path::Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, sluice::filter::EVERYTHING_TOML).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} (full mode: every repo and collection; edit it to choose)", path.display());
    Ok(())
}

/// `sluice devnet`: serves until Ctrl-C.
fn serve_devnet(opts: &DevnetArgs, write_config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (runtime, net) = start_devnet(opts)?;
    let filter = sluice::config::FilterConfig::default().path;
    ensure_devnet_filter(&filter)?;
    std::fs::write(write_config, devnet_config(&net, &filter))
        .with_context(|| format!("writing {}", write_config.display()))?;
    let pds = net.pds_urls();
    println!("devnet: {} accounts with {} records each on {} PDS host(s)", opts.repos, opts.records, pds.len());
    if opts.unresolvable > 0 {
        println!("  and {} more DIDs listed by the relay whose documents do not resolve", opts.unresolvable);
    }
    println!("  PLC directory  {}", net.plc_url());
    println!("  relay          {}", net.relay_url());
    for (i, url) in pds.iter().enumerate() {
        println!("  PDS {i}          {url}");
    }
    println!(
        "config for the indexer: {} (run: sluice --config {} run)",
        write_config.display(),
        write_config.display()
    );
    println!(
        "write a record: curl -X POST {}/xrpc/com.atproto.repo.createRecord -H 'content-type: application/json' \\",
        pds[0]
    );
    println!(
        "  -d '{{\"repo\":\"<did>\",\"collection\":\"app.bsky.feed.post\",\
         \"record\":{{\"text\":\"hi\",\"createdAt\":\"2026-01-01T00:00:00Z\"}}}}'"
    );
    println!("Ctrl-C stops it.");
    runtime.block_on(shutdown_signal());
    runtime.block_on(net.shutdown());
    Ok(ExitCode::SUCCESS)
}

/// `sluice run --devnet`: a devnet on free ports and the indexer pointed at it.
fn run_on_devnet(mut config: Config) -> anyhow::Result<ExitCode> {
    let opts = DevnetArgs { repos: 20, records: 50, pds: 2, port: 0, unresolvable: 0 };
    ensure_devnet_filter(&config.filter.path)?;
    let (_devnet_runtime, net) = start_devnet(&opts)?;
    config.network.relay = net.relay_url();
    config.network.plc = net.plc_url();
    // Devnet handles (`*.test`) resolve through the relay's resolveHandle, not DNS.
    config.network.handle_resolver = Some(net.relay_url());
    if config.storage.path == std::path::Path::new("data") {
        config.storage.path = "data-devnet".into();
    }
    tracing::info!(
        relay = %net.relay_url(),
        plc = %net.plc_url(),
        data = %config.storage.path.display(),
        "devnet started with {} accounts",
        opts.repos
    );
    print_walkthrough(&net, &config);
    run_backfill(config, &[], false, sluice::backfill::RunMode::Forever)
}

/// What to try while `sluice run --devnet` runs.
fn print_walkthrough(net: &sluice::devnet::Devnet, config: &Config) {
    let did = net.accounts().into_iter().next().unwrap_or_default();
    let (pds, server) =
        (net.pds_urls().remove(net.pds_of(&did).unwrap_or(0)), format!("http://{}", config.server.listen));
    println!("sluice is indexing a local devnet ({} accounts); try, in another terminal:", net.accounts().len());
    println!("  watch events:   sluice tail --server {server} --cursor 0");
    println!(
        "  query a record: curl '{server}/xrpc/com.atproto.repo.listRecords?\
         repo={did}&collection=app.bsky.feed.post&limit=2'"
    );
    println!(
        "  write one:      curl -X POST {pds}/xrpc/com.atproto.repo.createRecord -H 'content-type: application/json' \\"
    );
    println!(
        "                    -d '{{\"repo\":\"{did}\",\"collection\":\"app.bsky.feed.post\",\
         \"record\":{{\"text\":\"hi\",\"createdAt\":\"2026-01-01T00:00:00Z\"}}}}'"
    );
    println!("                  (it shows up in `sluice tail` as a live event within a second)");
    println!("  edit the filter: {} (saved changes apply within a second)", config.filter.path.display());
    println!("  metrics:        curl {server}/metrics");
}

/// Runs the backfill (and, in `Forever` mode, everything `sluice run` runs: live ingestion
/// and the server) until it ends or a signal stops it; prints where the repos stand.
fn run_backfill(
    config: Config,
    dids: &[String],
    recrawl: bool,
    mode: sluice::backfill::RunMode,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let sluice = Sluice::builder().config(config.clone()).filter_file(config.filter.path.clone()).open()?;
        let opts = sluice::service::ServiceOptions { dids: dids.to_vec(), recrawl };
        let service = sluice::service::Service::start(&sluice, &config, mode, &opts).await?;
        let (stop, backfill) = (service.stopper(), service.backfill.clone());
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("stopping: repos in flight and queued live frames finish first");
            stop();
        });
        let result = service.run(mode, dids.is_empty()).await;
        let counts: Vec<String> = backfill
            .repo_counts()
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .map(|(s, n)| format!("{n} {}", s.as_str()))
            .collect();
        let events = sluice.store().next_event_id() - 1;
        println!("repos: {}; events: {events}", if counts.is_empty() { "none".to_string() } else { counts.join(", ") });
        result?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

fn open_store(dir: &std::path::Path) -> anyhow::Result<Store> {
    if !dir.exists() {
        anyhow::bail!("no data in {} (index something first, or pass --data)", dir.display());
    }
    Store::open(dir).with_context(|| format!("opening the store in {}", dir.display()))
}

/// Indexes each CAR, `jobs` at a time (default: one per core; the exports of one repo in the
/// order given); prints a line per CAR in the order given. A bad one is reported and skipped,
/// and makes the exit code non-zero.
fn index_cars(config: Config, opts: IndexOptions, jobs: Option<usize>, cars: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let sluice = Sluice::builder().config(config.clone()).filter(Filter::load(&config.filter.path)?).open()?;
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut failed = 0;
    sluice::index_files::index_files(&sluice, cars, &opts, jobs, |i, result| match result {
        Ok(o) => {
            let events = match o.committed.first_event {
                Some(first) => format!("events {first}..={}", first + o.committed.events - 1),
                None => "no events".into(),
            };
            println!(
                "{}: {}: {} created, {} updated, {} deleted, {} unchanged, {} handler error(s); {events}",
                cars[i].display(),
                o.status.as_str(),
                o.created,
                o.updated,
                o.deleted,
                o.unchanged,
                o.handler_errors
            );
        }
        Err(e) => {
            failed += 1;
            eprintln!("error: {}: {e:#}", cars[i].display());
        }
    });
    sluice.store().persist()?;
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints the events from id `cursor` on as JSON lines; says on stderr when retention has
/// removed the first ones asked for.
fn print_events(out: &mut impl Write, store: &Store, cursor: u64, limit: usize) -> anyhow::Result<()> {
    if let Some(oldest) = store.oldest_event_id()?
        && cursor.max(1) < oldest
    {
        eprintln!("note: events {}..{} are past the retention; printing from {oldest}", cursor.max(1), oldest - 1);
    }
    for (id, event) in store.events_from(cursor, limit)? {
        writeln!(out, "{}", sluice::wire::event_json(store, id, &event)?)?;
    }
    Ok(())
}

fn print_stats(out: &mut impl Write, store: &Store, json: bool) -> std::io::Result<()> {
    let counts = store.counts();
    let events = store.next_event_id() - 1;
    // Retention may have removed the oldest events; ids go on from where they were.
    let oldest = store.oldest_event_id().ok().flatten();
    if json {
        let mut repos = serde_json::Map::new();
        let mut records = serde_json::Map::new();
        for ((kind, name), n) in &counts {
            let map = if kind == "repos" { &mut repos } else { &mut records };
            map.insert(name.clone(), (*n).into());
        }
        return writeln!(
            out,
            "{}",
            serde_json::json!({ "repos": repos, "records": records, "events": events, "oldest_event": oldest })
        );
    }
    writeln!(out, "repos:")?;
    for ((_, status), n) in counts.iter().filter(|((k, _), n)| k == "repos" && **n != 0) {
        writeln!(out, "  {status:<12} {n}")?;
    }
    let records: Vec<_> = counts.iter().filter(|((k, _), n)| k == "records" && **n != 0).collect();
    writeln!(out, "records: {}", records.iter().map(|(_, n)| **n).sum::<i64>())?;
    for ((_, collection), n) in records {
        writeln!(out, "  {collection:<40} {n}")?;
    }
    match oldest {
        Some(first) if first > 1 => {
            writeln!(out, "events: {events} (kept from {first} on; older ones are past the retention)")
        }
        _ => writeln!(out, "events: {events}"),
    }
}
