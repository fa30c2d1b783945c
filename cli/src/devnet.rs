//! The devnet commands: `sluice devnet` serves a local network until Ctrl-C, `sluice run
//! --devnet` starts one in this process for the service to index (crate `sluice-devnet`).

use std::path::Path;

use anyhow::Context;
use sluice::Config;
use sluice_devnet::{Devnet, DevnetOptions};

use crate::service::shutdown_signal;

/// The shape of a devnet.
#[derive(clap::Args, Clone)]
pub struct DevnetArgs {
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

/// A devnet and the runtime of its own that serves it (it outlives the indexer's runtime). The
/// devnet is dropped, and its servers stopped, before the runtime.
pub struct Running {
    _net: Devnet,
    _runtime: tokio::runtime::Runtime,
}

/// Starts a devnet in a runtime of its own; returns it with the runtime that serves it.
fn start_devnet(opts: &DevnetArgs) -> anyhow::Result<(tokio::runtime::Runtime, Devnet)> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("devnet").enable_all().build()?;
    let net = runtime.block_on(async {
        let net = Devnet::start(DevnetOptions { pds_hosts: opts.pds, base_port: opts.port }).await?;
        net.populate(opts.repos, opts.records, 1).await;
        net.list_unresolvable(opts.unresolvable, 1);
        anyhow::Ok(net)
    })?;
    Ok((runtime, net))
}

/// The config that points the indexer at `net`, keeping its data apart from the default's.
fn devnet_config(net: &Devnet, filter: &Path) -> String {
    format!(
        "# Written by `sluice devnet`: points `sluice run` at the local devnet.\n\
         [storage]\npath = \"data-devnet\"\n\n\
         [filter]\npath = {:?}\n\n\
         [network]\nrelay = \"{}\"\nplc = \"{}\"\nhandle_resolver = \"{}\"\n\
         # The devnet's PDSes are on loopback, which the address policy refuses by default.\n\
         allowed_networks = [\"127.0.0.0/8\"]\n",
        filter.display().to_string(),
        net.relay_url(),
        net.plc_url(),
        net.relay_url()
    )
}

/// Writes the default filter (full mode) to `path` when no file is there, so that a devnet
/// runs from any directory, not only from a checkout that has `filters/`; an existing file,
/// edits and all, is kept. Says so on stdout when it writes one.
fn ensure_devnet_filter(path: &Path) -> anyhow::Result<()> {
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
pub fn serve(opts: &DevnetArgs, write_config: &Path) -> anyhow::Result<()> {
    let (runtime, net) = start_devnet(opts)?;
    let filter = sluice::config::FilterConfig::default().path;
    ensure_devnet_filter(&filter)?;
    std::fs::write(write_config, devnet_config(&net, &filter))
        .with_context(|| format!("writing {}", write_config.display()))?;
    print_servers(opts, &net, write_config);
    println!("Ctrl-C stops it.");
    runtime.block_on(shutdown_signal());
    runtime.block_on(net.shutdown());
    Ok(())
}

/// What `sluice devnet` serves, and how to point an indexer at it and write to it.
fn print_servers(opts: &DevnetArgs, net: &Devnet, write_config: &Path) {
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
}

/// For `sluice run --devnet`: a devnet on free ports, and `config` pointed at it; the service
/// indexes it for as long as the result is kept.
pub fn start_for_run(config: &mut Config) -> anyhow::Result<Running> {
    let opts = DevnetArgs { repos: 20, records: 50, pds: 2, port: 0, unresolvable: 0 };
    ensure_devnet_filter(&config.filter.path)?;
    let (_runtime, net) = start_devnet(&opts)?;
    config.network.relay = net.relay_url();
    config.network.plc = net.plc_url();
    // Devnet handles (`*.test`) resolve through the relay's resolveHandle, not DNS.
    config.network.handle_resolver = Some(net.relay_url());
    // The devnet's PDSes are on loopback, which the address policy refuses by default.
    config.network.allow_loopback();
    if config.storage.path == Path::new("data") {
        config.storage.path = "data-devnet".into();
    }
    tracing::info!(
        relay = %net.relay_url(),
        plc = %net.plc_url(),
        data = %config.storage.path.display(),
        "devnet started with {} accounts",
        opts.repos
    );
    print_walkthrough(&net, config);
    Ok(Running { _net: net, _runtime })
}

/// What to try while `sluice run --devnet` runs.
fn print_walkthrough(net: &Devnet, config: &Config) {
    let did = net.accounts().into_iter().next().unwrap_or_default();
    let (pds, server) =
        (net.pds_urls().remove(net.pds_of(&did).unwrap_or(0)), format!("http://{}", config.server.listen));
    println!("sluice is indexing a local devnet ({} accounts); try, in another terminal:", net.accounts().len());
    println!("  watch it work:  open {server}/ in a browser, or: sluice status --server {server}");
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
