//! The fuzz body for `car` (cargo-fuzz target `car`, and `tests/fuzz_corpus.rs` over the seeds).
//!
//! Any bytes either load and walk completely or are refused with an error, never a panic. The
//! four readers the indexer uses agree: a slice ([`read_car`], the firehose's), bytes the repo
//! keeps ([`read_car_owned`], index-car's and small downloads'), and a spooled download read
//! into memory ([`read_car_file_into_memory`]) or walked from the file ([`read_car_file`]) give
//! the same records or the same error. What a walk lets through is held to the protocol's rules,
//! checked here apart from the reader: each record's bytes hash to its CID (sha2-256), its key
//! is a valid NSID and record key (by jacquard's validators), keys come in strictly
//! increasing MST order, and the record rule (`sluice_handlers::rules::check_record`, which
//! the pipeline applies to every record it would store) takes a body exactly when the
//! transcoder shows it.

use std::io::{Seek, Write};

use bytes::Bytes;
use sha2::Digest;

use super::{
    CarLimits, LoadedRepo, RecordEntry, RepoError, read_car, read_car_file, read_car_file_into_memory, read_car_owned,
};

/// What a reader made of a CAR: its walked records, or why it was refused.
type Walked = Result<Vec<RecordEntry>, String>;

/// The fuzz body for `car` (see the module's head).
pub fn fuzz_car(bytes: &[u8]) {
    let limits = CarLimits::default();
    let from_slice = walked(read_car(bytes, &limits));
    let owned = walked(read_car_owned(Bytes::copy_from_slice(bytes), &limits));
    assert_eq!(from_slice, owned, "a CAR reads alike from a slice and from bytes it keeps");
    let mut file = tempfile::tempfile().expect("a temporary file for the spooled readers");
    file.write_all(bytes).expect("writing the temporary CAR");
    file.rewind().expect("rewinding the temporary CAR");
    let into_memory = walked(read_car_file_into_memory(&file, &limits));
    assert_eq!(from_slice, into_memory, "a spooled CAR read into memory reads as its bytes do");
    file.rewind().expect("rewinding the temporary CAR");
    let from_file = walked(read_car_file(file, &limits));
    assert_eq!(from_slice, from_file, "a CAR walked from its file reads as its bytes do");
    if let Ok(records) = &from_slice {
        assert_records_follow_the_protocol(records);
    }
}

/// Reads, checks the commit of, and walks one repo.
fn walked(read: Result<LoadedRepo, RepoError>) -> Walked {
    let repo = read.map_err(|e| e.to_string())?;
    repo.check_commit(None).map_err(|e| e.to_string())?;
    repo.records().collect::<Result<_, _>>().map_err(|e| e.to_string())
}

/// Each record's bytes hash to its CID, its key is valid, keys strictly increase, and the
/// record rule agrees with the readers.
fn assert_records_follow_the_protocol(records: &[RecordEntry]) {
    use jacquard_common::types::string::{Nsid, Rkey};
    let mut last_key: Option<String> = None;
    for r in records {
        let key = format!("{}/{}", r.collection, r.rkey);
        assert_eq!(r.cid.hash().code(), 0x12, "{key}: a record's CID is sha2-256");
        assert_eq!(r.cid.hash().digest(), &sha2::Sha256::digest(&r.bytes)[..], "{key}: bytes match the CID");
        assert!(Nsid::new(r.collection.as_str()).is_ok(), "{key}: the collection is an NSID");
        assert!(Rkey::new(r.rkey.as_str()).is_ok(), "{key}: the record key is valid");
        let ruled = sluice_handlers::rules::check_record(&r.bytes);
        let shown = sluice_handlers::transcode::raw_json(&r.bytes).is_some();
        assert_eq!(ruled.is_ok(), shown, "{key}: the record rule takes what the readers show: {ruled:?}");
        if let Some(last) = &last_key {
            assert!(last.as_bytes() < key.as_bytes(), "{key} comes after {last} in MST order");
        }
        last_key = Some(key);
    }
}
