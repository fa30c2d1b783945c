//! Fuzz target `filter_toml`: the body is [`sluice::fuzz::filter_toml`], which `tests/fuzz_corpus.rs` also runs
//! over `fuzz/seeds/filter_toml/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::filter_toml(data));
