//! Fuzz target `lexicon_check`: the body is [`sluice::fuzz::lexicon_check`], which
//! `tests/fuzz_corpus.rs` also runs over `fuzz/seeds/lexicon_check/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice::fuzz::lexicon_check(data);
});
