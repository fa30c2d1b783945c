//! Fuzz target `cbor_json`: the body is [`sluice::fuzz::cbor_json`], which `tests/fuzz_corpus.rs` also runs
//! over `fuzz/seeds/cbor_json/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzz::cbor_json(data));
