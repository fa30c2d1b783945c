//! Stored formats last: every value version ever written to fjall has golden files here that
//! must still decode to the same value, and the rows the declarative indexes write are held
//! byte for byte (`v1-index-rows.txt`). Regenerate only for a *new* version, with
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

/// The rows an index writes (`index_meta` and each `index.<id>`: definitions, totals, `E`,
/// `D`, `R`, `C` and `P` rows) for a fixed set of records, one `keyspace key value` line each
/// in hex: the layout `src/store/indexes.rs` describes, held byte for byte. A change here is a
/// new layout, which needs a new layout version (`ROWS_VERSION`, written in each definition)
/// so that stores build their indexes again, and a new file. Version 1 had no `D` rows and
/// kept long key tuples as text; version 2 wrote `R` rows for every index; version 3 kept build
/// positions and totals in `index_meta`; version 4 had no build phase in its `B` rows and no
/// step rows (`C key step`); version 5 carried no record in `per_repo = "latest"` entries.
#[test]
fn index_rows_are_written_as_they_always_were() {
    use sluice_testkit as testkit;

    let dir = tempfile::tempdir().unwrap();
    let filter = concat!(
        "mode = \"full\"\ncollections = [\"xyz.statusphere.*\", \"app.bsky.feed.*\"]\n",
        include_str!("../filters/indexes.toml"),
        "[indexes.posts_by_lang]\ncollection = \"app.bsky.feed.post\"\nkey = [\"langs[]\", \"reply.root.cid\"]\n\
         sort = \"rkey\"\n[indexes.posts_by_length]\ncollection = \"app.bsky.feed.post\"\nkey = []\nsort = \"n\"\nsort_type = \"integer\"\n",
    );
    let sluice = sluice::Sluice::builder()
        .config(sluice::Config::default())
        .data_dir(dir.path())
        .filter(sluice::filter::Filter::from_toml(filter, "golden.toml").unwrap())
        .open()
        .unwrap();
    testkit::wait_for_index_builds(sluice.store(), std::time::Duration::from_secs(30));
    commit_golden_records(&sluice);
    drop(sluice);
    let dump = index_rows_dump(dir.path());
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v6-index-rows.txt");
    if std::env::var_os("SLUICE_WRITE_GOLDEN").is_some() && !path.exists() {
        std::fs::write(&path, &dump).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(dump, golden, "the index rows differ from {}", path.display());
}

/// Six records over the golden indexes: statuses (one with a key of another type), a like, and
/// posts with array and nested keys and an integer sort (one of another type).
fn commit_golden_records(sluice: &sluice::Sluice) {
    use serde_json::json;
    use sluice::pipeline::RecordOp;
    use sluice_testkit as testkit;

    let post = "at://did:plc:alice/app.bsky.feed.post/3kpost";
    let records = [
        (
            "did:plc:alice",
            "xyz.statusphere.status",
            "3ka",
            json!({"status": "👍", "createdAt": "2024-01-01T10:00:00+02:00"}),
        ),
        (
            "did:plc:alice",
            "xyz.statusphere.status",
            "3kb",
            json!({"status": "🙂", "createdAt": "2024-01-02T10:00:00Z"}),
        ),
        ("did:plc:bob", "xyz.statusphere.status", "3kc", json!({"status": 7, "createdAt": "2024-01-03T10:00:00Z"})),
        (
            "did:plc:bob",
            "app.bsky.feed.like",
            "3kd",
            json!({"subject": {"uri": post, "cid": testkit::cid_of(b"p").to_string()}, "createdAt": "2024-01-04T00:00:00Z"}),
        ),
        (
            "did:plc:carol",
            "app.bsky.feed.post",
            "3ke",
            json!({"text": "x", "langs": ["en", "de"], "n": -3, "createdAt": "2024-01-05T00:00:00Z",
            "reply": {"root": {"uri": post, "cid": testkit::cid_of(b"p").to_string()}, "parent": {"uri": post, "cid": testkit::cid_of(b"p").to_string()}}}),
        ),
        (
            "did:plc:carol",
            "app.bsky.feed.post",
            "3kf",
            json!({"text": "y", "n": true, "createdAt": "2024-01-06T00:00:00Z"}),
        ),
    ];
    for (i, (did, collection, rkey, mut value)) in records.into_iter().enumerate() {
        value["$type"] = collection.into();
        let bytes = sluice::handlers::value::json_to_cbor(&value).unwrap();
        let cid = testkit::cid_of(&bytes);
        let op = RecordOp::Put { collection: collection.into(), rkey: rkey.into(), cid, bytes: bytes.into() };
        let rev = format!("3l{i:011}");
        let (commit, data) = (testkit::cid_of(rev.as_bytes()), testkit::cid_of(b"d"));
        sluice.pipeline().apply_commit(did, commit, &rev, data, vec![op], None).unwrap();
    }
}

/// Every row of `index_meta` and the `index.<id>` keyspaces of the store in `dir`, a line each:
/// `keyspace key value`, in hex.
fn index_rows_dump(dir: &std::path::Path) -> String {
    let db = fjall::Database::builder(dir).open().unwrap();
    let mut names: Vec<String> =
        db.list_keyspace_names().iter().map(|n| n.to_string()).filter(|n| n.starts_with("index")).collect();
    names.sort();
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut dump = String::new();
    for name in names {
        let space = db.keyspace(&name, fjall::KeyspaceCreateOptions::default).unwrap();
        for kv in space.iter() {
            let (k, v) = kv.into_inner().unwrap();
            dump.push_str(&format!("{name} {} {}\n", hex(&k), hex(&v)));
        }
    }
    dump
}
