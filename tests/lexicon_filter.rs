//! The filter's `[lexicons]` table through the pipeline (issue 32): with `validate = "drop"` a
//! record that fails its lexicon is not stored, gets no event and no index entry, and a stored
//! version it replaces is deleted; with `"log"` it is stored and counted; `unknown = "drop"`
//! drops collections with no lexicon (in both modes); a repo with one invalid record keeps its valid ones; a
//! bad table is refused by line. Uses the real lexicons in `../shared/fixtures/lexicons/`.

use serde_json::{Value, json};
use sluice::filter::{Filter, LexiconVerdict};
use sluice::handlers::value::json_to_cbor;
use sluice::pipeline::RecordOp;
use sluice::store::StoredEvent;
use sluice::{Config, Sluice};
use sluice_testkit as testkit;

const DID: &str = "did:plc:alice";
const STATUS: &str = "xyz.statusphere.status";

fn filter_text(validate: &str, unknown: &str) -> String {
    let dir = testkit::fixture("lexicons");
    format!(
        "mode = \"full\"\n\
         [indexes.by_status]\ncollection = \"{STATUS}\"\nkey = [\"status\"]\nsort = \"createdAt\"\ncount = true\n\
         [lexicons]\ndir = {:?}\nvalidate = \"{validate}\"\nunknown = \"{unknown}\"\n",
        dir.display().to_string()
    )
}

struct Run {
    sluice: Sluice,
    rev: u64,
    _dir: tempfile::TempDir,
}

impl Run {
    fn new(validate: &str, unknown: &str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let filter = Filter::from_toml(&filter_text(validate, unknown), "test").unwrap();
        let sluice = Sluice::builder().config(Config::default()).data_dir(dir.path()).filter(filter).open().unwrap();
        // The index starts building (over nothing) in the background; the checks want it ready.
        testkit::wait_for_index_builds(sluice.store(), std::time::Duration::from_secs(10));
        Run { sluice, rev: 0, _dir: dir }
    }

    /// Commits `puts` of (collection, rkey, record) as one live commit.
    fn commit(&mut self, puts: &[(&str, &str, Value)]) {
        self.rev += 1;
        let rev = format!("3l{:011}", self.rev);
        let ops = puts
            .iter()
            .map(|(collection, rkey, value)| {
                let bytes = json_to_cbor(value).unwrap();
                RecordOp::Put {
                    collection: collection.to_string(),
                    rkey: rkey.to_string(),
                    cid: testkit::cid_of(&bytes),
                    bytes: bytes.into(),
                }
            })
            .collect();
        self.sluice
            .pipeline()
            .apply_commit(DID, testkit::cid_of(rev.as_bytes()), &rev, testkit::cid_of(b"d"), ops, None)
            .unwrap();
    }

    fn stored(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self
            .sluice
            .store()
            .records()
            .of_repo(DID)
            .unwrap()
            .into_keys()
            .map(|(c, r)| (c.to_string(), r.to_string()))
            .collect();
        out.sort();
        out
    }

    fn events(&self) -> Vec<(String, String)> {
        let log = self.sluice.store().log().from(0, 100).unwrap();
        log.into_iter()
            .filter_map(|(_, e)| match e {
                StoredEvent::Record(r) => Some((format!("{:?}", r.action), r.rkey.to_string())),
                _ => None,
            })
            .collect()
    }

    fn rejected(&self) -> Vec<((String, String), u64)> {
        self.sluice.pipeline().metrics().records_rejected.lock().unwrap().clone().into_iter().collect()
    }
}

fn status(s: &str, at: &str) -> Value {
    json!({"$type": STATUS, "status": s, "createdAt": at})
}

#[test]
fn drop_keeps_invalid_records_out_and_the_valid_ones_in() {
    let mut run = Run::new("drop", "pass");
    run.commit(&[
        (STATUS, "good", status("👍", "2024-01-01T00:00:00Z")),
        (STATUS, "long", status("👍👍", "2024-01-01T00:00:00Z")),
        (STATUS, "date", status("🙂", "yesterday")),
        (STATUS, "none", json!({"$type": STATUS, "status": "🙂"})),
        (STATUS, "type", json!({"$type": STATUS, "status": 5, "createdAt": "2024-01-01T00:00:00Z"})),
        ("com.example.nolexicon", "x", json!({"anything": true})),
    ]);
    let stored = run.stored();
    assert_eq!(
        stored,
        [("com.example.nolexicon".to_string(), "x".to_string()), (STATUS.to_string(), "good".to_string())],
        "only the valid status, and the collection with no lexicon (unknown = pass)"
    );
    assert_eq!(run.events(), [("Create".to_string(), "good".to_string()), ("Create".to_string(), "x".to_string())]);
    let reasons: Vec<String> = run.rejected().into_iter().map(|((c, r), n)| format!("{c}:{r}:{n}")).collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons.iter().all(|r| r.starts_with(STATUS)), "{reasons:?}");
    let index = run.sluice.store().index_registry().indexes["by_status"].clone();
    assert_eq!(index.count(&sluice::indexes::encode::key_tuple(&["👍"])).unwrap(), 1, "no entry for a dropped record");

    // A stored version replaced by an invalid one is deleted, with its event.
    run.commit(&[(STATUS, "good", status("way too long", "2024-01-01T00:00:00Z"))]);
    assert_eq!(run.stored(), [("com.example.nolexicon".to_string(), "x".to_string())]);
    assert_eq!(run.events().last().unwrap(), &("Delete".to_string(), "good".to_string()));
    assert_eq!(index.count(&sluice::indexes::encode::key_tuple(&["👍"])).unwrap(), 0);
}

#[test]
fn log_stores_and_counts_and_unknown_drop_drops() {
    let mut run = Run::new("log", "drop");
    run.commit(&[
        (STATUS, "long", status("👍👍", "2024-01-01T00:00:00Z")),
        ("com.example.nolexicon", "x", json!({"a": 1})),
    ]);
    assert_eq!(
        run.stored(),
        [(STATUS.to_string(), "long".to_string())],
        "log stores the failing status; unknown = drop drops"
    );
    let rejected = run.rejected();
    assert!(rejected.iter().any(|((c, r), n)| c == STATUS && r == "maxGraphemes" && *n == 1), "{rejected:?}");
    assert!(rejected.iter().any(|((c, r), _)| c == "com.example.nolexicon" && r == "unknown"), "{rejected:?}");

    let mut run = Run::new("drop", "drop");
    run.commit(&[
        ("com.example.nolexicon", "x", json!({"a": 1})),
        (STATUS, "ok", status("👍", "2024-01-01T00:00:00Z")),
    ]);
    assert_eq!(run.stored(), [(STATUS.to_string(), "ok".to_string())]);
}

#[test]
fn bad_lexicon_tables_are_refused_by_line() {
    let bad = |text: &str| Filter::from_toml(text, "f.toml").unwrap_err();
    let e = bad("mode = \"full\"\n[lexicons]\ndir = \"x\"\nvalidate = \"strict\"\n");
    assert_eq!(e.line, Some(4));
    assert!(e.reason.contains("strict"), "{e}");
    let e = bad("mode = \"full\"\n[lexicons]\ndir = \"/nonexistent/lexicons\"\nvalidate = \"drop\"\n");
    assert_eq!(e.line, Some(3));
    assert!(e.reason.contains("nonexistent"), "{e}");
    let e = bad("mode = \"full\"\n[lexicons]\ndir = \"x\"\nunknown = \"maybe\"\n");
    assert!(e.reason.contains("maybe"), "{e}");
    // Off: the directory is not read.
    assert!(Filter::from_toml("mode = \"full\"\n[lexicons]\ndir = \"/nonexistent\"\n", "f.toml").is_ok());
}

/// In signal mode, a repo whose only signal record fails its lexicon (dropped) holds no signal
/// record: the walk discards it; one valid signal record keeps it.
#[test]
fn a_dropped_signal_record_keeps_no_repo() {
    use sluice::store::RepoStatus;
    use sluice_devnet::{Account, RepoContents, export_car_blocking, rev_at};
    let text = filter_text("drop", "pass")
        .replace("mode = \"full\"", "mode = \"signal\"\nsignals = [\"xyz.statusphere.status\"]");
    for (status, kept) in [("👍👍", RepoStatus::Discarded), ("👍", RepoStatus::Synced)] {
        let dir = tempfile::tempdir().unwrap();
        let filter = Filter::from_toml(&text, "test").unwrap();
        let sluice = Sluice::builder().data_dir(dir.path()).filter(filter).open().unwrap();
        let account = Account::new(77);
        let contents: RepoContents = [
            (format!("{STATUS}/3kaaaaaaaaa22"), json_to_cbor(&self::status(status, "2024-01-01T00:00:00Z")).unwrap()),
            (
                "app.bsky.feed.like/3kbbbbbbbbb22".to_string(),
                json_to_cbor(&json!({"$type": "app.bsky.feed.like"})).unwrap(),
            ),
        ]
        .into();
        let car = export_car_blocking(&account, &rev_at(1), &contents).unwrap();
        let repo = sluice::repo::read_car(&car, &Default::default()).unwrap();
        let outcome = sluice.pipeline().apply_walk(&repo, &Default::default()).unwrap();
        assert_eq!(outcome.status, kept, "status {status:?}");
    }
}

/// The lexicon files are saves too: an edited lexicon is in force within a second (here a
/// status of "🙂" refused once the lexicon allows only "👍"), and a broken file is refused
/// naming it, the lexicons in force staying.
#[test]
fn an_edited_lexicon_file_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let lexicons = dir.path().join("lexicons");
    std::fs::create_dir(&lexicons).unwrap();
    let original = std::fs::read_to_string(testkit::fixture("lexicons/xyz/statusphere/status.json")).unwrap();
    let file = lexicons.join("status.json");
    std::fs::write(&file, &original).unwrap();
    let filter = dir.path().join("filter.toml");
    std::fs::write(&filter, "mode = \"full\"\n[lexicons]\ndir = \"lexicons\"\nvalidate = \"drop\"\n").unwrap();
    let sluice = Sluice::builder().data_dir(dir.path().join("data")).filter_file(&filter).open().unwrap();
    let verdict = |s: &str| {
        sluice
            .pipeline()
            .filter()
            .load()
            .check_lexicon(STATUS, &json_to_cbor(&status(s, "2024-01-01T00:00:00Z")).unwrap())
    };
    assert_eq!(verdict("🙂"), LexiconVerdict::Pass);

    let only_thumbs = original.replace("\"maxGraphemes\": 1", "\"maxGraphemes\": 1,\n\"enum\": [\"👍\"]");
    assert_ne!(only_thumbs, original, "the fixture has the field the edit keys on");
    std::fs::write(&file, &only_thumbs).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while verdict("🙂") == LexiconVerdict::Pass {
        assert!(std::time::Instant::now() < deadline, "the edited lexicon was not put in force");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(matches!(verdict("🙂"), LexiconVerdict::Drop(_)), "{:?}", verdict("🙂"));
    assert_eq!(verdict("👍"), LexiconVerdict::Pass);

    std::fs::write(&file, "{ not json").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while sluice.filter_error().is_none() {
        assert!(std::time::Instant::now() < deadline, "the broken lexicon was not refused");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let error = sluice.filter_error().unwrap().to_string();
    assert!(error.contains("status.json"), "the refusal names the file: {error}");
    assert!(matches!(verdict("🙂"), LexiconVerdict::Drop(_)), "the lexicons in force stay");
}
