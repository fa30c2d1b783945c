//! Allocator settings. The binaries use mimalloc (see `cli/src/main.rs`), whose defaults suit a batch
//! job: memory freed is kept for a second before it goes back to the system, and arenas are
//! committed whole. A long-running service pays for both in resident memory: the backfill's
//! peak was ~100 MB higher with them (docs/bench-log.md, *What shapes memory now*). The environment still wins: options set
//! in `MIMALLOC_*` variables are left as they are.

use std::ffi::c_long;

/// mimalloc v3's option numbers (`mi_option_e` in `mimalloc.h`); the crate names only v2's.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the allocator in a service, in milliseconds.
pub const SERVICE_PURGE_DELAY_MS: c_long = 10;

/// What the process is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// A command that runs to the end of its input (`index-car`): speed first. Returning
    /// memory promptly costs it a fifth of its time, as freed pages are faulted in again.
    Batch,
    /// The service or the backfill: memory first, as it runs beside other work under a cap.
    Service,
}

/// Commits arena memory as it is used: no cost measured, ~40 MB less at the backfill's peak,
/// and with it the memory a purge frees leaves the resident set. mimalloc reads this option when
/// it reserves its first arena, at the first allocation, so it must run before Rust's runtime
/// starts: the binary's `main.rs` calls it from the executable's initializers.
pub extern "C" fn before_first_allocation() {
    // SAFETY: stores an option value; nothing else runs yet.
    unsafe { libmimalloc_sys::mi_option_set_default(ARENA_EAGER_COMMIT, 0) }
}

/// Sets mimalloc's options for `workload`; call it before the work starts.
pub fn tune(workload: Workload) {
    if workload == Workload::Service {
        // SAFETY: stores an option value, which mimalloc reads when it purges.
        unsafe { libmimalloc_sys::mi_option_set_default(PURGE_DELAY, SERVICE_PURGE_DELAY_MS) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child processes the test below starts: run the check itself.
    const CHILD: &str = "SLUICE_ALLOC_TEST_CHILD";
    const TEST: &str = "alloc::tests::a_service_sets_a_short_purge_delay_and_lazy_arena_commit_over_mimallocs_defaults";

    fn options() -> (c_long, c_long) {
        // SAFETY: reading options.
        unsafe { (libmimalloc_sys::mi_option_get(PURGE_DELAY), libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT)) }
    }

    /// Runs this test again in a child process with no `MIMALLOC_*` variable but `env`, so that
    /// the outcome does not depend on the environment the tests run in.
    fn run_child(env: &[(&str, &str)]) {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child.args(["--exact", TEST, "--nocapture", "--test-threads=1"]).env(CHILD, "1");
        for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("MIMALLOC_")) {
            child.env_remove(name);
        }
        let out = child.envs(env.iter().copied()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("1 passed"), "child with {env:?}: {text}");
    }

    #[test]
    fn a_service_sets_a_short_purge_delay_and_lazy_arena_commit_over_mimallocs_defaults() {
        if std::env::var_os(CHILD).is_none() {
            run_child(&[]);
            run_child(&[("MIMALLOC_PURGE_DELAY", "77"), ("MIMALLOC_ARENA_EAGER_COMMIT", "1")]);
            return;
        }
        let from_env = std::env::var("MIMALLOC_PURGE_DELAY").is_ok();
        // mimalloc v3's defaults (the numbers name the options meant), or what the environment set.
        assert_eq!(options(), if from_env { (77, 1) } else { (1000, 2) });
        before_first_allocation();
        tune(Workload::Service);
        // Ours over the defaults; the environment's stay.
        assert_eq!(options(), if from_env { (77, 1) } else { (SERVICE_PURGE_DELAY_MS, 0) });
    }
}
