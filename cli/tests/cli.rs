//! The `sluice` binary: index-car, events, stats, cursors, filter check, handlers, devnet. Errors are one clear
//! line and a non-zero exit, never a panic.

use std::process::Output;

use sluice_testkit as testkit;

fn sluice(args: &[&str]) -> Output {
    testkit::sluice_command(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("RUST_LOG", "warn")
        .current_dir(testkit::root())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn index_car_then_events_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let calabro = testkit::fixture("car/calabro.car");
    let tiny = testkit::fixture("car/tiny.car");
    // One at a time, so the event ids follow the order of the files.
    let out = sluice(&[
        "index-car",
        "--jobs",
        "1",
        "--filter",
        "filters/everything.toml",
        "--data",
        data,
        calabro.to_str().unwrap(),
        tiny.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("calabro.car: synced: 4347 created"), "{stdout}");
    assert!(stdout.contains("events 1..=4347"), "{stdout}");
    assert!(stdout.contains("tiny.car: synced: 8 created") && stdout.contains("events 4348..=4355"), "{stdout}");
    let log = text(&out.stderr);
    assert!(log.contains("index-car summary: 2 files (2 indexed, 0 failed), 4,355 records in "), "{log}");
    assert!(!log.contains('\x1b'), "no bar and no escape codes when stderr is not a terminal: {log:?}");

    let again =
        sluice(&["index-car", "--filter", "filters/everything.toml", "--data", data, calabro.to_str().unwrap()]);
    assert!(
        text(&again.stdout).contains("0 created, 0 updated, 0 deleted, 4347 unchanged")
            && text(&again.stdout).contains("no events")
    );

    let stats = sluice(&["stats", "--data", data, "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["records"]["app.bsky.feed.like"], 2312 + 2, "calabro and tiny likes");
    assert_eq!(stats["events"], 4347 + 8);
    assert_eq!(stats["oldest_event"], 1, "nothing is past a retention");
    assert_eq!(stats["repos"]["synced"], 2);

    let events = sluice(&["events", "--data", data, "--cursor", "4347", "--limit", "2"]);
    let lines: Vec<serde_json::Value> =
        text(&events.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], 4347);
    assert_eq!(lines[1]["id"], 4348);
    let rec = &lines[1]["record"];
    assert_eq!(lines[1]["type"], "record");
    for field in ["live", "did", "rev", "collection", "rkey", "action", "cid", "record"] {
        assert!(!rec[field].is_null(), "event lacks {field}: {rec}");
    }
    assert_eq!(rec["live"], false);
    assert_eq!(rec["action"], "create");
}

#[test]
fn bad_input_is_one_clear_line_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.car");
    std::fs::write(&junk, b"not a car at all").unwrap();
    let data = dir.path().join("data");
    let tiny = testkit::fixture("car/tiny.car");
    let out = sluice(&[
        "index-car",
        "--filter",
        "filters/everything.toml",
        "--data",
        data.to_str().unwrap(),
        junk.to_str().unwrap(),
        tiny.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("junk.car: malformed or truncated CAR"), "{err}");
    assert!(!err.contains("panicked"));
    assert!(text(&out.stdout).contains("tiny.car: synced: 8 created"), "a bad CAR does not stop the others");

    let out = sluice(&["stats", "--data", dir.path().join("nowhere").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).starts_with("error: no data in"), "{}", text(&out.stderr));
}

#[test]
fn filter_check_names_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "mode = \"full\"\n\nexclude_dids = [\"alice\"]\n").unwrap();
    let out = sluice(&["filter", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("bad.toml:3: exclude_dids: `alice` is not a valid DID"), "{err}");
    assert_eq!(err.lines().count(), 1);

    for good in ["filters/everything.toml", "filters/statusphere.toml", "filters/posts.toml"] {
        let out = sluice(&["filter", "check", good]);
        assert!(out.status.success(), "{good}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(": ok: mode "));
    }
}

#[test]
fn handlers_lists_the_built_ins() {
    let out = text(&sluice(&["handlers"]).stdout);
    for name in ["backlinks\t", "post\tapp.bsky.feed.post", "profile\tapp.bsky.actor.profile"] {
        assert!(out.contains(name), "{out}");
    }
}

#[test]
fn cursors_lists_each_service_with_its_position_and_save_time() {
    let dir = tempfile::tempdir().unwrap();
    let before_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    {
        let store = sluice::Store::open(dir.path()).unwrap();
        for (service, at) in [("crawler", "done"), ("backfill", "did:plc:a")] {
            let change = sluice::store::RepoChange {
                did: "did:plc:a".into(),
                cursor: Some((service.into(), at.into())),
                ..Default::default()
            };
            store.commit(change).unwrap();
        }
    }
    let out = sluice(&["cursors", "--data", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Vec<String>> =
        text(&out.stdout).lines().map(|l| l.split('\t').map(str::to_string).collect()).collect();
    assert_eq!(
        lines.iter().map(|l| (l[0].as_str(), l[1].as_str())).collect::<Vec<_>>(),
        [("backfill", "did:plc:a"), ("crawler", "done")]
    );
    for line in &lines {
        let saved_ms = chrono::DateTime::parse_from_rfc3339(&line[2]).unwrap().timestamp_millis() as u64;
        assert!(saved_ms >= before_ms && saved_ms < before_ms + 60_000, "saved just now: {line:?}");
    }
}

#[test]
fn backfill_refuses_to_start_with_the_reason_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let data = not_a_dir.join("data");
    // Nothing listens on port 1: a run that started would fail the crawl, not the store.
    let out = sluice(&[
        "backfill",
        "--data",
        data.to_str().unwrap(),
        "--relay",
        "http://127.0.0.1:1",
        "--plc",
        "http://127.0.0.1:1/",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("error: opening the store in") && err.contains("file/data"), "{err}");

    let bad_env = testkit::sluice_command(env!("CARGO_BIN_EXE_sluice"))
        .args(["backfill", "--data", dir.path().join("d").to_str().unwrap()])
        .env("BACKFILL_DAYS", "lots")
        .current_dir(testkit::root())
        .output()
        .unwrap();
    assert!(!bad_env.status.success());
    assert!(text(&bad_env.stderr).contains("BACKFILL_DAYS=\"lots\""), "{}", text(&bad_env.stderr));
}

/// A `sluice devnet` serving from `dir`, and what it printed up to "Ctrl-C stops it.", which
/// comes once its config is written and the network serves. Dropping it stops the devnet.
struct DevnetProcess {
    child: std::process::Child,
    printed: Vec<String>,
}

impl DevnetProcess {
    fn start(dir: &std::path::Path, repos: &str, records: &str) -> Self {
        use std::io::BufRead;
        let mut child = testkit::sluice_command(env!("CARGO_BIN_EXE_sluice"))
            .args(["devnet", "--repos", repos, "--records", records, "--port", "0"])
            .env("RUST_LOG", "warn")
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            std::io::BufReader::new(stdout).lines().map_while(Result::ok).try_for_each(|line| tx.send(line))
        });
        let mut printed = Vec::new();
        while !printed.last().is_some_and(|l: &String| l.starts_with("Ctrl-C")) {
            match rx.recv_timeout(std::time::Duration::from_secs(60)) {
                Ok(line) => printed.push(line),
                Err(e) => panic!("devnet did not start ({e}); printed: {printed:?}"),
            }
        }
        DevnetProcess { child, printed }
    }
}

impl Drop for DevnetProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sluice devnet` works from any directory: it writes a config and, with no `filters/` there,
/// the default filter, and `sluice --config devnet.toml backfill` indexes the devnet with them.
#[test]
fn devnet_writes_a_config_and_filter_that_backfill_runs_on_from_any_directory() {
    let dir = tempfile::tempdir().unwrap();
    let in_dir = |args: &[&str]| {
        testkit::sluice_command(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env("RUST_LOG", "warn")
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let filter = dir.path().join("filters/everything.toml");
    let devnet = DevnetProcess::start(dir.path(), "3", "4");
    assert!(devnet.printed.iter().any(|l| l.starts_with("wrote filters/everything.toml")), "{:?}", devnet.printed);
    assert_eq!(std::fs::read_to_string(&filter).unwrap(), sluice::filter::EVERYTHING_TOML);

    let backfill = in_dir(&["--config", "devnet.toml", "backfill"]);
    let stats = in_dir(&["--config", "devnet.toml", "stats"]);
    drop(devnet);
    assert!(backfill.status.success(), "{}", text(&backfill.stderr));
    assert!(text(&backfill.stdout).contains("repos: 3 synced; events: 12"), "{}", text(&backfill.stdout));
    let stats = text(&stats.stdout);
    assert!(
        stats.lines().any(|l| l.split_whitespace().eq(["synced", "3"])) && stats.contains("records: 12"),
        "{stats}"
    );

    // A second devnet keeps the filter as the user left it.
    std::fs::write(&filter, "mode = \"signal\"\nsignals = [\"app.bsky.feed.post\"]\n").unwrap();
    let again = DevnetProcess::start(dir.path(), "1", "1");
    assert!(!again.printed.iter().any(|l| l.starts_with("wrote")), "{:?}", again.printed);
    assert!(std::fs::read_to_string(&filter).unwrap().starts_with("mode = \"signal\""));
}

#[test]
fn help_lists_every_environment_variable() {
    let out = sluice(&["--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for var in sluice::config::ENVIRONMENT {
        assert!(help.contains(var.name), "--help does not name {}:\n{help}", var.name);
    }
}
