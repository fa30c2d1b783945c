//! Fuzz target `car`: the body is [`sluice::fuzz::car`], which `tests/fuzz_corpus.rs` also runs
//! over `fuzz/seeds/car/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::car(data));
