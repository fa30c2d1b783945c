//! `sluice tail`, the event stream's command-line client, against a server in this process:
//! replay from a cursor up to a limit, and one error line for a refused stream.

use sluice_testkit as testkit;
use sluice_testkit::server::serving;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_tail_prints_the_stream() {
    let (_dir, sluice) = testkit::sluice_with("mode = \"full\"\n");
    sluice.index_car(&testkit::read_fixture("car/tiny.car"), &Default::default()).unwrap();
    let (base, _state) = serving(&sluice).await;
    let tail = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            testkit::sluice_command(env!("CARGO_BIN_EXE_sluice")).arg("tail").args(args).output().unwrap()
        })
    };
    let output =
        tail(vec!["--server".into(), base.clone(), "--cursor".into(), "3".into(), "--limit".into(), "4".into()])
            .await
            .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let ids: Vec<u64> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![4, 5, 6, 7]);
    let refused = tail(vec!["--server".into(), base, "--cursor".into(), "99".into()]).await.unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("error"), "a refused stream is one error line");
}
