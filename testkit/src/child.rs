//! Child processes of the tests: a guard that kills a child left running, waiting for an exit
//! within a limit, polling a child's JSON endpoints, and running a command on a pseudo-terminal.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A child process, killed if the test ends before it does.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `BINARY --config DIR/config.toml run --devnet` (a `sluice` build) in `dir`, serving on
/// 127.0.0.1:`port`, with its data and filter in `dir`, its stdout in `dir/stdout` and its log
/// (at `info`) in the returned path. `run --devnet` points the network, and handle checks, at
/// its own devnet; the config's resolver only keeps anything from reaching the system's DNS if
/// it did not.
pub fn run_devnet(binary: &str, dir: &Path, port: u16) -> (Running, PathBuf) {
    let (data, filter, config) = (dir.join("data"), dir.join("filter.toml"), dir.join("config.toml"));
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = {data:?}\n[filter]\npath = {filter:?}\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
             [network]\nhandle_resolver = \"http://127.0.0.1:1\"\n"
        ),
    )
    .unwrap();
    let log = dir.join("sluice.log");
    let child = crate::sluice_command(binary)
        .args(["--config", config.to_str().unwrap(), "run", "--devnet"])
        .env("RUST_LOG", "info")
        .current_dir(dir)
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (Running(child), log)
}

/// Waits up to `limit` for `child` to exit; `None` if it has not.
pub async fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET `url` as JSON; `None` while nothing answers there (or not with 2xx JSON).
pub async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    let response = http.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// Polls `GET url` until its JSON answer satisfies `done` and returns it. Panics past `limit`,
/// naming `what`, with what the child logged to `log`.
pub async fn poll_json(
    http: &reqwest::Client,
    url: &str,
    log: &Path,
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    let mut last = None;
    loop {
        if let Some(answer) = get_json(http, url).await {
            if done(&answer) {
                return answer;
            }
            last = Some(answer);
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("timed out waiting for {what}; {url} last said {last:?}; log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `command` with its stderr on a new pseudo-terminal of `cols` columns (stdin from
/// nothing; stdout as the command sets it) until it exits, within `limit`; returns its exit
/// status and everything written to the terminal.
pub fn run_on_pty(mut command: Command, cols: u16, limit: Duration) -> (ExitStatus, String) {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize { ws_row: 40, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    let opened = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
    assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = Running(command.stdin(Stdio::null()).stderr(Stdio::from(slave)).spawn().unwrap());
    // The command holds the terminal's other end until dropped: the reader would never see it close.
    drop(command);
    // The terminal's reader: to the end (EIO once the child, the last holder of the slave, exits).
    let reader = std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the command on the terminal still runs after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}
