//! The ground floor: facts about this process and the machine it runs on that every part may
//! ask (cores, resident memory) and the scheduling priorities of its background threads, in one
//! place so that no part reaches into another for them.
//!
//! Architecture invariant: imports nothing from the crate; everything may import it.

use std::time::{Duration, Instant};

/// The cores this process may use (2 when unknown): the default for shard, walk and server
/// thread counts.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Resident memory of this process in bytes (Linux `/proc/self/statm`), when known.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// [`resident_bytes`] read at most every `max_age`: for a scheduler that looks before every
/// repo it starts (a read of `/proc` costs more than a small repo's other bookkeeping).
#[derive(Debug)]
pub struct ResidentGauge {
    max_age: Duration,
    last: std::sync::Mutex<Option<(Instant, u64)>>,
}

impl ResidentGauge {
    /// A gauge that reads `/proc` again once its reading is older than `max_age`.
    pub fn new(max_age: Duration) -> Self {
        Self { max_age, last: std::sync::Mutex::new(None) }
    }

    /// Resident memory in bytes (0 when unknown), at most `max_age` old.
    pub fn bytes(&self) -> u64 {
        let mut last = self.last.lock().expect("resident gauge");
        match *last {
            Some((at, bytes)) if at.elapsed() < self.max_age => bytes,
            _ => {
                let bytes = resident_bytes().unwrap_or(0);
                *last = Some((Instant::now(), bytes));
                bytes
            }
        }
    }
}

/// How far a background thread steps back for the rest (its niceness): queries and live
/// ingestion run at the default priority, ahead of both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// The backfill's walk threads (nice 10): they keep every core busy during a backfill.
    Walkers,
    /// The NATS sink (nice 15), below the walkers: indexing comes first, and the sink publishes
    /// with the CPU left over (the log keeps what it has not published yet).
    Sink,
}

impl Priority {
    /// The niceness this priority runs at.
    pub fn niceness(self) -> i32 {
        match self {
            Priority::Walkers => 10,
            Priority::Sink => 15,
        }
    }

    /// Runs the calling thread at this priority (Linux: `setpriority` on a thread id affects
    /// that thread only; elsewhere nothing changes).
    pub fn apply_to_this_thread(self) {
        #[cfg(target_os = "linux")]
        // SAFETY: plain syscalls on this thread's own id.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, self.niceness());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_and_reused_while_fresh() {
        assert!(resident_bytes().unwrap() > 1 << 20, "a running test uses more than 1 MB");
        let gauge = ResidentGauge::new(Duration::from_secs(3600));
        let first = gauge.bytes();
        let grow = std::hint::black_box(vec![1u8; 64 << 20]);
        assert_eq!(gauge.bytes(), first, "a fresh reading is reused");
        assert!(ResidentGauge::new(Duration::ZERO).bytes() > first, "a stale one is read again");
        drop(grow);
    }

    #[test]
    fn a_thread_takes_its_priority() {
        let nice = std::thread::spawn(|| {
            Priority::Sink.apply_to_this_thread();
            // SAFETY: reads this thread's own niceness.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) }
        });
        assert_eq!(nice.join().unwrap(), Priority::Sink.niceness());
        assert!(Priority::Sink.niceness() > Priority::Walkers.niceness(), "the sink steps back further");
    }
}
