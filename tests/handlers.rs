//! Handlers through the pipeline: outputs land in events and handler keyspaces in the same
//! batch; a failing or panicking handler is counted and the record is still stored; handlers
//! registered in another crate (this test binary) run with no edit to sluice.

use serde_json::json;
use sluice::IndexOptions;
use sluice::handlers::{CollectionHandler, HandlerError, HandlerOutput, HandlerSettings, RecordView, backlinks};
use sluice::store::StoredEvent;
use sluice_devnet::{Account, RepoContents, export_car_blocking, rev_at};
use sluice_testkit as testkit;

struct Exploding;
impl CollectionHandler for Exploding {
    fn name(&self) -> &'static str {
        "exploding"
    }
    fn collections(&self) -> &'static [&'static str] {
        &["com.example.*"]
    }
    fn on_record(
        &self,
        rec: &RecordView<'_>,
        _: &HandlerSettings,
        out: &mut HandlerOutput,
    ) -> Result<(), HandlerError> {
        match rec.rkey {
            "panic" => panic!("this handler always panics on rkey `panic`"),
            "error" => Err(HandlerError::Other("refused".into())),
            _ => out.emit(json!({"seen": rec.rkey})),
        }
    }
}
sluice::handlers::register_handler!(Exploding);

fn cbor(v: serde_json::Value) -> Vec<u8> {
    sluice::handlers::value::json_to_cbor(&v).unwrap()
}

fn like(subject: &str) -> Vec<u8> {
    cbor(json!({"$type": "app.bsky.feed.like", "createdAt": "2024-01-01T00:00:00Z",
        "subject": {"uri": subject, "cid": "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"}}))
}

#[test]
fn a_failing_handler_costs_only_its_own_output() {
    let account = Account::new(21);
    let mut records = RepoContents::new();
    for rkey in ["panic", "error", "fine"] {
        records.insert(format!("com.example.thing/{rkey}"), cbor(json!({"n": 1})));
    }
    let (_dir, s) = testkit::sluice_with("mode = \"full\"");
    let out =
        s.index_car(&export_car_blocking(&account, &rev_at(1), &records).unwrap(), &IndexOptions::default()).unwrap();
    assert_eq!((out.created, out.handler_errors), (3, 2));
    assert_eq!(
        s.store().records().of_repo(&account.did).unwrap().len(),
        3,
        "records are stored despite handler failures"
    );
    let handled: Vec<_> = s
        .store()
        .log()
        .from(0, 10)
        .unwrap()
        .into_iter()
        .map(|(_, e)| match e {
            StoredEvent::Record(r) => (r.rkey, r.handled.len()),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(handled, vec![("error".into(), 0), ("fine".into(), 1), ("panic".into(), 0)]);
    assert_eq!(s.pipeline().metrics().handler_errors.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn a_handler_can_be_switched_off_in_the_filter() {
    let account = Account::new(22);
    let mut records = RepoContents::new();
    records.insert("com.example.thing/panic".into(), cbor(json!({"n": 1})));
    let (_dir, s) = testkit::sluice_with("mode = \"full\"\n[handlers.exploding]\nenabled = false\n");
    let out =
        s.index_car(&export_car_blocking(&account, &rev_at(1), &records).unwrap(), &IndexOptions::default()).unwrap();
    assert_eq!((out.created, out.handler_errors), (1, 0));
}

#[test]
fn backlinks_follow_creates_updates_and_deletes() {
    let account = Account::new(23);
    let (_dir, s) = testkit::sluice_with("mode = \"full\"");
    let links_to = |subject: &str| -> Vec<String> {
        s.store()
            .handlers()
            .keys("backlinks", &backlinks::backlink_prefix(subject, None), None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|k| {
                let (_, _, did, rkey) = backlinks::parse_backlink_key(&k).unwrap();
                format!("{did}/{rkey}")
            })
            .collect()
    };
    let (a, b) = ("at://did:plc:x/app.bsky.feed.post/a", "at://did:plc:x/app.bsky.feed.post/b");
    let mut records = RepoContents::new();
    records.insert("app.bsky.feed.like/3kaaaaaaaaaa2".into(), like(a));
    records.insert("app.bsky.feed.like/3kaaaaaaaaab2".into(), like(a));
    s.index_car(&export_car_blocking(&account, &rev_at(1), &records).unwrap(), &IndexOptions::default()).unwrap();
    assert_eq!(links_to(a).len(), 2);

    // One like now points elsewhere, the other is deleted.
    records.insert("app.bsky.feed.like/3kaaaaaaaaaa2".into(), like(b));
    records.remove("app.bsky.feed.like/3kaaaaaaaaab2");
    let out =
        s.index_car(&export_car_blocking(&account, &rev_at(2), &records).unwrap(), &IndexOptions::default()).unwrap();
    assert_eq!((out.updated, out.deleted), (1, 1));
    assert!(links_to(a).is_empty());
    assert_eq!(links_to(b), vec![format!("{}/3kaaaaaaaaaa2", account.did)]);
}

#[test]
fn the_post_handler_can_drop_records_by_language() {
    let account = Account::new(24);
    let mut records = RepoContents::new();
    records.insert(
        "app.bsky.feed.post/3kaaaaaaaaaa2".into(),
        cbor(json!({"text": "hello", "langs": ["en"], "createdAt": "2024-01-01T00:00:00Z"})),
    );
    records.insert(
        "app.bsky.feed.post/3kaaaaaaaaab2".into(),
        cbor(json!({"text": "こんにちは", "langs": ["ja"], "createdAt": "2024-01-01T00:00:00Z"})),
    );
    let (_dir, s) = testkit::sluice_with("mode = \"full\"\n[handlers.post]\nlangs = [\"en\"]\n");
    let out =
        s.index_car(&export_car_blocking(&account, &rev_at(1), &records).unwrap(), &IndexOptions::default()).unwrap();
    assert_eq!(out.created, 1);
    let (_, event) = &s.store().log().from(0, 1).unwrap()[0];
    let json = sluice::wire::event_json(s.store(), 1, event).unwrap();
    assert_eq!(json["record"]["handled"]["post"]["text"], "hello");
    assert_eq!(json["record"]["record"]["text"], "hello");
}
