//! The devnet's one way to take a lock: poisoning is ignored, so that a test thread that
//! panicked while holding one does not wedge the servers.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, ignoring poisoning (a panicking test thread must not wedge the servers).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
