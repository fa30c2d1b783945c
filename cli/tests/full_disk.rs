//! `sluice backfill` on a disk that fills up, as a user sees it: the run stops with the first
//! failure, and the last line it prints names the cause and the data directory. With room
//! again, a second run finishes every repo. The disk is a small tmpfs, so this needs root.

use sluice::store::{RepoStatus, Store};
use sluice_devnet::{Devnet, DevnetOptions};
use sluice_testkit::{self as testkit, SmallDisk};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_that_fills_the_disk_ends_saying_so_and_resumes_with_room() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = net.populate(24, 400, 3).await;
    let disk = SmallDisk::mount("2m");
    let dir = tempfile::tempdir().unwrap();
    let data = disk.mount.join("data");
    let config = testkit::devnet_config_file(dir.path(), &net, "");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(&format!("{:?}", dir.path().join("data")), &format!("{data:?}"));
    std::fs::write(&config, text).unwrap();

    let backfill = || {
        let mut child = testkit::sluice_command(env!("CARGO_BIN_EXE_sluice"));
        child.args(["--config", config.to_str().unwrap(), "backfill"]).env_remove("RUST_LOG");
        let out = child.output().unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (status, stderr) = tokio::task::block_in_place(backfill);
    assert!(!status.success(), "2 MB is not enough; the run said:\n{stderr}");
    let last_line = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last_line,
        format!(
            "error: backfill stopped: storage full: No space left on device (os error 28) at {}; \
             free space and run again, nothing is lost",
            data.display()
        ),
        "the whole output:\n{stderr}"
    );

    disk.grow("256m");
    let (status, stderr) = tokio::task::block_in_place(backfill);
    assert!(status.success(), "with room, the backfill finishes; it said:\n{stderr}");
    let store = Store::open(&data).unwrap();
    for did in &dids {
        let state = store.repos().state(did).unwrap().expect("every repo has a state");
        assert_eq!(state.status, RepoStatus::Synced, "{did}");
    }
    net.shutdown().await;
}
