//! Fuzz target `index_entries`: the body is [`sluice::fuzz::index_entries`], which
//! `tests/fuzz_corpus.rs` also runs over `fuzz/seeds/index_entries/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::index_entries(data));
