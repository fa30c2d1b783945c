//! Stored formats last: every value version ever written to fjall has golden files here that
//! must still decode to the same value. Regenerate only for a *new* version, with
//! `SLUICE_WRITE_GOLDEN=1 cargo test --test golden` (existing files must never change).

use std::path::PathBuf;

use sluice::store::values::{AccountEvent, Cursor, EventSpan, IdentityEvent, RecordRef};
use sluice::store::{Action, EventPage, HeldCommit, RecordEvent, RepoState, RepoStatus, Stored, StoredEvent};

/// The events of the golden event pages; pages before version 3 carry no record bodies.
fn page_events() -> Vec<StoredEvent> {
    vec![
        StoredEvent::Record(RecordEvent {
            live: true,
            did: "did:plc:alice".into(),
            rev: "3l3qo2vuowo2b".into(),
            collection: "app.bsky.feed.post".into(),
            rkey: "3l3qo2vutsw2b".into(),
            action: Action::Update,
            cid: vec![1, 113, 18, 32, 9],
            replaced: Some("{\"text\":\"x\"}".into()),
            handled: vec![("post".into(), "{}".into())],
            body: None,
        }),
        StoredEvent::Identity(IdentityEvent { did: "did:plc:alice".into(), handle: Some("alice.test".into()) }),
        StoredEvent::Account(AccountEvent {
            did: "did:plc:alice".into(),
            active: false,
            status: Some("takendown".into()),
        }),
    ]
}

fn golden<T: Stored + PartialEq + std::fmt::Debug>(name: &str, value: T) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("SLUICE_WRITE_GOLDEN").is_some() && !path.exists() {
        std::fs::write(&path, value.encode()).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(T::decode(&bytes).unwrap(), value, "{name} no longer decodes to its value");
}

#[test]
fn version_1_values_still_decode() {
    golden(
        "v1-repo-state.bin",
        RepoState {
            status: RepoStatus::Synced,
            rev: Some("3l3qo2vuowo2b".into()),
            data: Some("bafyreidigqr65jj2zsmitco3fcuag6pi7std6quxa2bcp2xrpin44ikzsy".into()),
            handle: Some("alice.test".into()),
            error: None,
            retries: 2,
            next_retry_ms: Some(1_700_000_000_000),
            updated_ms: 1_700_000_000_001,
            commit: None,
            handle_ok: None,
            account_status: None,
        },
    );
    golden("v1-record-ref.bin", RecordRef { cid: vec![1, 113, 18, 32, 7, 7, 7], body: None });
    // Version 1 pages carry no times: they read back with time 0.
    golden("v1-event-page.bin", EventPage { first_time: 0, events: page_events() });
    golden("v1-cursor.bin", Cursor { value: "31527015322".into(), updated_ms: 1_700_000_000_000 });
    golden("v1-held-commit.bin", HeldCommit { frame: vec![0xa2, 0x61, 0x74, 0x67, 1, 2, 3] });
    golden(
        "v1-repo-state-desynchronized.bin",
        RepoState {
            status: RepoStatus::Desynchronized,
            rev: Some("3l3qo2vuowo2b".into()),
            data: None,
            handle: None,
            error: Some("prevData does not continue the stored root".into()),
            retries: 0,
            next_retry_ms: None,
            updated_ms: 1_700_000_000_002,
            commit: None,
            handle_ok: None,
            account_status: None,
        },
    );
}

#[test]
fn version_2_repo_states_still_decode() {
    // Version 2: the CID of the last applied commit.
    golden(
        "v2-repo-state.bin",
        RepoState {
            status: RepoStatus::Synced,
            rev: Some("3l3qo2vuowo2b".into()),
            data: Some("bafyreidigqr65jj2zsmitco3fcuag6pi7std6quxa2bcp2xrpin44ikzsy".into()),
            handle: Some("alice.test".into()),
            error: None,
            retries: 0,
            next_retry_ms: None,
            updated_ms: 1_700_000_000_003,
            commit: Some("bafyreihffx5a2e7k5uwrmmgofbvzujc5cmw5h4espouwuxt3liqoflx3ee".into()),
            handle_ok: None,
            account_status: None,
        },
    );
}

#[test]
fn version_3_repo_states_still_decode() {
    // Version 3: whether the handle was found to be the repo's own.
    golden(
        "v3-repo-state.bin",
        RepoState {
            status: RepoStatus::Synced,
            rev: Some("3l3qo2vuowo2b".into()),
            data: Some("bafyreidigqr65jj2zsmitco3fcuag6pi7std6quxa2bcp2xrpin44ikzsy".into()),
            handle: Some("alice.test".into()),
            error: None,
            retries: 0,
            next_retry_ms: None,
            updated_ms: 1_700_000_000_004,
            commit: Some("bafyreihffx5a2e7k5uwrmmgofbvzujc5cmw5h4espouwuxt3liqoflx3ee".into()),
            handle_ok: Some(true),
            account_status: None,
        },
    );
}

#[test]
fn version_4_repo_states_still_decode() {
    // Version 4: the status of an #account frame that left the repo indexed.
    golden(
        "v4-repo-state.bin",
        RepoState {
            status: RepoStatus::Synced,
            rev: Some("3l3qo2vuowo2b".into()),
            data: Some("bafyreidigqr65jj2zsmitco3fcuag6pi7std6quxa2bcp2xrpin44ikzsy".into()),
            handle: Some("alice.test".into()),
            error: None,
            retries: 0,
            next_retry_ms: None,
            updated_ms: 1_700_000_000_005,
            commit: Some("bafyreihffx5a2e7k5uwrmmgofbvzujc5cmw5h4espouwuxt3liqoflx3ee".into()),
            handle_ok: Some(true),
            account_status: Some("throttled".into()),
        },
    );
}

#[test]
fn version_2_event_pages_still_decode() {
    // Version 2: the first event's time (unix µs); the others follow it one µs apart.
    golden("v2-event-page.bin", EventPage { first_time: 1_700_000_000_000_123, events: page_events() });
    golden("v1-event-span.bin", EventSpan { first_id: 4_242, count: 512 });
}

#[test]
fn version_3_event_pages_and_version_2_record_refs_still_decode() {
    // Record events carry the body of the version they created; records keep theirs.
    let mut events = page_events();
    events.push(StoredEvent::Record(RecordEvent {
        live: false,
        did: "did:plc:alice".into(),
        rev: "3l3qo2vuowo2c".into(),
        collection: "app.bsky.feed.like".into(),
        rkey: "3l3qo2vutsw2c".into(),
        action: Action::Create,
        cid: vec![1, 113, 18, 32, 10],
        replaced: None,
        handled: vec![],
        body: Some(vec![0xa1, 0x61, 0x61, 0x01].into()),
    }));
    golden("v3-event-page.bin", EventPage { first_time: 1_700_000_000_000_456, events });
    golden(
        "v2-record-ref.bin",
        RecordRef { cid: vec![1, 113, 18, 32, 7, 7, 8], body: Some(vec![0xa1, 0x61, 0x61, 0x02]) },
    );
}
