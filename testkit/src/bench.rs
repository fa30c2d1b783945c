//! What the benches share: the generated, signed 100k-record repos (cached in
//! `target/bench-cache/`, built on first use), the process's CPU time and peak memory, and
//! child processes measured and pinned to CPUs.

use std::path::PathBuf;

use sluice_devnet::{Account, RepoContents, export_car_blocking, rev_at};

use crate::root;

/// Records in a generated repo.
pub const GENERATED_RECORDS: usize = 100_000;

/// User + system CPU seconds of this process, all threads (fjall's background work counts).
pub fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A signed repo of 100k records (posts, likes, follows) of account `seed`, built once and cached.
pub fn generated_car(seed: u64) -> (PathBuf, Account) {
    let account = Account::new(seed);
    let path = root().join(format!("target/bench-cache/repo-100k-{seed}.car"));
    if !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut records = RepoContents::new();
        for i in 0..GENERATED_RECORDS {
            let tid = rev_at(i as u64 * 1000);
            let (key, v) = match i % 10 {
                0..=4 => (
                    format!("app.bsky.feed.like/{tid}"),
                    serde_json::json!({
                        "$type": "app.bsky.feed.like",
                        "createdAt": "2024-01-01T00:00:00.000Z",
                        "subject": {
                            "uri": format!(
                                "at://did:plc:abcdefghijklmnopqrstuvwx/app.bsky.feed.post/{}",
                                rev_at(i as u64)
                            ),
                            "cid": "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"
                        }
                    }),
                ),
                5..=7 => (
                    format!("app.bsky.feed.post/{tid}"),
                    serde_json::json!({
                        "$type": "app.bsky.feed.post",
                        "text": format!("post number {i} with some ordinary text in it, about this long"),
                        "langs": ["en"],
                        "createdAt": "2024-01-01T00:00:00.000Z"
                    }),
                ),
                _ => (
                    format!("app.bsky.graph.follow/{tid}"),
                    serde_json::json!({
                        "$type": "app.bsky.graph.follow",
                        "subject": "did:plc:abcdefghijklmnopqrstuvwx",
                        "createdAt": "2024-01-01T00:00:00.000Z"
                    }),
                ),
            };
            records.insert(key, sluice::handlers::value::json_to_cbor(&v).unwrap());
        }
        let car = export_car_blocking(&account, &rev_at(GENERATED_RECORDS as u64 * 1000 + 1), &records).unwrap();
        std::fs::write(&path, car).unwrap();
    }
    (path, account)
}

/// A `kB` field (`VmHWM:`, `VmRSS:`, ...) of a `/proc/<pid>/status` text, when present.
pub fn status_field_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
}

/// A `kB` field of this process's `/proc/self/status` (0 when unknown).
pub fn self_status_kb(field: &str) -> u64 {
    status_field_kb(&std::fs::read_to_string("/proc/self/status").unwrap_or_default(), field).unwrap_or(0)
}

/// The CPU that [`run_child`] pins its children to, when not negative (see [`pin_process`]).
pub static CHILD_CPU: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Restricts every thread of process `pid` to the CPUs `cpus` (threads it starts later inherit
/// it): a bench that gives a server its own core to stand for a server on another machine.
pub fn pin_process(pid: u32, cpus: &[usize]) {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let tid: libc::pid_t = task.file_name().to_string_lossy().parse().unwrap();
        pin_thread(tid, cpus);
    }
}

fn pin_thread(tid: libc::pid_t, cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity only read and
    // write the set they are given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        // A thread that exited meanwhile is no error.
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// What a child process used: wall seconds, CPU seconds (user + system), peak RSS in KB.
pub struct Usage {
    pub secs: f64,
    pub cpu: f64,
    pub peak_kb: i64,
}

/// Runs `binary args` to its end and measures it: wall time, the child's own CPU time (from
/// `wait4`) and its peak RSS, polled from `VmHWM` while it runs (the `ru_maxrss` of `wait4` would
/// also count this process's memory, which the child inherits through the fork before its
/// exec). Its stderr goes to `stderr` when given. Panics unless it exits 0.
pub fn run_child(binary: &str, args: &[&str], stderr: Option<&std::path::Path>) -> Usage {
    use std::process::{Command, Stdio};
    let start = std::time::Instant::now();
    let err = match stderr {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::inherit(),
    };
    let log = if stderr.is_some() { "info" } else { "warn" };
    let mut command = Command::new(binary);
    command.args(args).env("RUST_LOG", log).stdout(Stdio::null()).stderr(err);
    for var in crate::PROXY_VARS {
        command.env_remove(var);
    }
    let cpu = CHILD_CPU.load(std::sync::atomic::Ordering::Relaxed);
    if cpu >= 0 {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure only calls sched_setaffinity, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                pin_thread(0, &[cpu as usize]);
                Ok(())
            });
        }
    }
    // Reaped by the wait4 below, which also reports its CPU time.
    #[allow(clippy::zombie_processes)]
    let child = command.spawn().unwrap();
    let peak_kb = watch_peak_rss(child.id());
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: the pid is our own unreaped child; wait4 fills `status` and `usage`.
    let usage = unsafe {
        let pid = libc::wait4(child.id() as libc::pid_t, &mut status, 0, usage.as_mut_ptr());
        assert_eq!(pid, child.id() as libc::pid_t, "wait4");
        usage.assume_init()
    };
    let secs = start.elapsed().as_secs_f64();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{binary} {args:?} failed");
    let t = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage { secs, cpu: t(usage.ru_utime) + t(usage.ru_stime), peak_kb: peak_kb.join().unwrap() }
}

/// Polls `VmHWM` of process `pid` every 20 ms until it exits; returns the last value (KB).
fn watch_peak_rss(pid: u32) -> std::thread::JoinHandle<i64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        loop {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return peak };
            match status_field_kb(&status, "VmHWM:") {
                Some(kb) => peak = peak.max(kb as i64),
                None => return peak, // a zombie: it has exited
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })
}
