//! What `sluice backfill` and `sluice index-car` write while they work (127.0.0.1 only): on a
//! terminal (a pseudo-terminal here) a progress bar that ends at done of total; otherwise plain
//! log lines with no escape codes, and a final summary line (repos by status, records, time,
//! average rate; `cli.rs` checks index-car's).

use std::time::Duration;

use sluice_devnet::{Devnet, DevnetOptions};
use sluice_testkit as testkit;

/// A run of the child ends within this.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// Repos the devnet serves.
const REPOS: usize = 30;

/// A devnet of [`REPOS`] repos of 5 records, and a config for a child on it (progress lines
/// every second) in `dir`.
async fn devnet(dir: &std::path::Path) -> (Devnet, std::path::PathBuf) {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    net.populate(REPOS, 5, 7).await;
    let config = testkit::devnet_config_file(dir, &net, "[backfill]\nprogress_secs = 1\n");
    (net, config)
}

/// What the terminal shows last: the bar's last drawing (each starts by clearing its line) and
/// what came after it.
fn last_draw(terminal: &str) -> &str {
    terminal.rsplit("\x1b[2K").next().unwrap_or_default()
}

fn backfill(config: &std::path::Path) -> std::process::Command {
    let mut command = testkit::sluice_command(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["--config", config.to_str().unwrap(), "backfill"])
        .env_remove("RUST_LOG")
        .env("TERM", "xterm-256color");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_on_a_terminal_the_log_has_no_escape_codes_and_ends_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (_net, config) = devnet(dir.path()).await;
    let mut command = backfill(&config);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains('\x1b'), "no escape codes in a log that is not a terminal:\n{log}");
    let summary = log.lines().find(|l| l.contains("backfill summary:")).unwrap_or_else(|| panic!("no summary:\n{log}"));
    for want in
        [format!("{REPOS} repos done in this run"), format!("repos {REPOS} synced"), "records/s on average".into()]
    {
        assert!(summary.contains(&want), "{want} missing from the summary: {summary}");
    }
    assert!(summary.contains(&format!("{} records in ", REPOS * 5)), "{summary}");
    assert!(!log.contains("0/s now, 0/s on average"), "no line without work:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_a_bar_ends_at_done_of_total() {
    let dir = tempfile::tempdir().unwrap();
    let (_net, config) = devnet(dir.path()).await;
    let mut command = backfill(&config);
    command.stdout(std::fs::File::create(dir.path().join("stdout")).unwrap());
    let (status, terminal) =
        tokio::task::spawn_blocking(move || testkit::run_on_pty(command, 160, RUN_LIMIT)).await.unwrap();
    assert!(status.success(), "{terminal}");
    assert!(terminal.contains("\x1b["), "a terminal gets a bar drawn with escape codes:\n{terminal:?}");
    let done = format!("{REPOS}/{REPOS} repos");
    assert!(last_draw(&terminal).contains(&done), "the bar ends at {done}:\n{terminal:?}");
    assert!(terminal.contains(&format!("{} records", REPOS * 5)), "records on the bar:\n{terminal:?}");
    assert!(!terminal.contains("backfill: repos"), "the bar stands in for the periodic line:\n{terminal:?}");
    assert!(terminal.contains("backfill summary:"), "the summary still comes:\n{terminal:?}");
    let printed = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    assert!(printed.contains(&format!("repos: {REPOS} synced")), "{printed}");
}

#[test]
fn index_car_over_many_files_on_a_terminal_draws_a_bar_over_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let cars = ["car/calabro.car", "car/tiny.car", "car/jetstream-repo.car"].map(testkit::fixture);
    let mut command = testkit::sluice_command(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["index-car", "--filter", "filters/everything.toml", "--data"])
        .arg(dir.path().join("data"))
        .args(&cars)
        .current_dir(testkit::root())
        .env("TERM", "xterm-256color")
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap());
    let (status, terminal) = testkit::run_on_pty(command, 160, RUN_LIMIT);
    assert!(status.success(), "{terminal}");
    assert!(terminal.contains("\x1b["), "{terminal:?}");
    assert!(last_draw(&terminal).contains("3/3 files"), "the bar ends at 3/3 files:\n{terminal:?}");
    assert!(terminal.contains("\nindex-car summary:"), "the summary starts a line of its own:\n{terminal:?}");
    assert!(terminal.contains("index-car summary: 3 files (3 indexed, 0 failed)"), "{terminal:?}");
    let printed = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    assert_eq!(printed.lines().filter(|l| l.contains(": synced: ")).count(), 3, "a line per file: {printed}");
}
