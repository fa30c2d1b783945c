// Copyright (c) 2024-present, fjall-rs
// This source code is licensed under both the Apache 2.0 and MIT License
// (found in the LICENSE-* files in the repository)

use std::sync::{atomic::AtomicBool, Arc};

// sluice patch: the signal also keeps the I/O error a background worker failed with (the second
// field), which no caller sees otherwise: its writes only get `Error::Poisoned` afterwards.
#[derive(Clone, Debug, Default)]
pub struct PoisonSignal(Arc<AtomicBool>, Arc<std::sync::OnceLock<std::io::Error>>);

impl PoisonSignal {
    pub fn is_poisoned(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn poison(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    // sluice patch: poisons, keeping the first I/O error behind `error` (see the struct).
    pub fn poison_with(&self, error: &crate::Error) {
        let io = match error {
            crate::Error::Io(e) | crate::Error::Storage(lsm_tree::Error::Io(e)) => Some(e),
            _ => None,
        };
        if let Some(e) = io {
            let copy = match e.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(e.kind(), e.to_string()),
            };
            let _ = self.1.set(copy);
        }
        self.poison();
    }

    // sluice patch: the I/O error kept by `poison_with`, if any (a copy).
    pub fn cause(&self) -> Option<std::io::Error> {
        let e = self.1.get()?;
        Some(match e.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(e.kind(), e.to_string()),
        })
    }
}

/// RAII guard to catch panics in background workers and poison a database
#[derive(Clone)]
pub struct PoisonDart(PoisonSignal);

impl PoisonDart {
    pub fn new(signal: PoisonSignal) -> Self {
        Self(signal)
    }

    pub fn poison(&self) {
        self.0.poison();
    }

    // sluice patch: see `PoisonSignal::poison_with`.
    pub fn poison_with(&self, error: &crate::Error) {
        self.0.poison_with(error);
    }
}

impl Drop for PoisonDart {
    fn drop(&mut self) {
        if std::thread::panicking() {
            log::error!("Poisoning database because of panic in background worker");
            self.poison();
        }
    }
}
