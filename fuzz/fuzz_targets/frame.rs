//! Fuzz target `frame`: the body is [`sluice::fuzz::frame`], which `tests/fuzz_corpus.rs` also
//! runs over `fuzz/seeds/frame/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::frame(data));
