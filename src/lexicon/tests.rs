use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/lexicons")
}

/// The fixture lexicons for the collections these tests use, loaded once.
static LEX: LazyLock<Lexicons> = LazyLock::new(|| {
    let wanted = ["app.bsky.feed.*", "app.bsky.graph.follow", "app.bsky.actor.profile", "xyz.statusphere.status"];
    Lexicons::load(&fixture_dir(), &wanted.map(String::from)).expect("fixture lexicons load")
});

fn cbor(v: &Value) -> Vec<u8> {
    sluice_handlers::value::json_to_cbor(v).unwrap()
}

fn check(collection: &str, v: &Value) -> Verdict {
    LEX.check(collection, &cbor(v))
}

/// `record` with `$type` set to `nsid`, as a record of that collection holds it.
fn typed(nsid: &str, mut record: Value) -> Value {
    record["$type"] = nsid.into();
    record
}

fn rejected(collection: &str, v: &Value) -> Rejection {
    match check(collection, v) {
        Verdict::Invalid(r) => r,
        other => panic!("{collection} {v} was {other:?}, not rejected"),
    }
}

const CID: &str = "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq";
const POST_URI: &str = "at://did:plc:abcdefghijklmnopqrstuvwx/app.bsky.feed.post/3kabc2defgh22";

fn post() -> Value {
    json!({
        "$type": "app.bsky.feed.post",
        "text": "hello @alice.test, see https://example.com",
        "langs": ["en", "fr", "pt-BR"],
        "facets": [{
            "index": {"byteStart": 6, "byteEnd": 17},
            "features": [{"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:abcdefghijklmnopqrstuvwx"}]
        }],
        "reply": {"root": {"uri": POST_URI, "cid": CID}, "parent": {"uri": POST_URI, "cid": CID}},
        "createdAt": "2024-05-01T12:00:00.000Z"
    })
}

fn like() -> Value {
    json!({"$type": "app.bsky.feed.like", "subject": {"uri": POST_URI, "cid": CID}, "createdAt": "2024-05-01T12:00:00Z"})
}

fn status() -> Value {
    json!({"$type": "xyz.statusphere.status", "status": "👍", "createdAt": "2024-05-01T12:00:00.000Z"})
}

fn image(n: usize) -> Value {
    json!({
        "image": {"$type": "blob", "ref": {"$link": CID}, "mimeType": "image/jpeg", "size": 1000 + n},
        "alt": format!("image {n}")
    })
}

#[test]
fn valid_records_are_valid() {
    assert_eq!(check("app.bsky.feed.post", &post()), Verdict::Valid);
    assert_eq!(check("app.bsky.feed.like", &like()), Verdict::Valid);
    assert_eq!(check("xyz.statusphere.status", &status()), Verdict::Valid);
    let follow = json!({"$type": "app.bsky.graph.follow", "subject": "did:plc:abcdefghijklmnopqrstuvwx", "createdAt": "2024-05-01T12:00:00Z"});
    assert_eq!(check("app.bsky.graph.follow", &follow), Verdict::Valid);
    let mut with_images = post();
    with_images["embed"] = json!({"$type": "app.bsky.embed.images", "images": [image(0), image(1)]});
    assert_eq!(check("app.bsky.feed.post", &with_images), Verdict::Valid);
}

#[test]
fn a_collection_without_a_lexicon_is_unknown() {
    assert_eq!(check("com.example.thing", &json!({"$type": "com.example.thing"})), Verdict::Unknown);
    // Loaded only for what was asked: app.bsky.graph.block is in the directory but not asked for.
    assert_eq!(check("app.bsky.graph.block", &json!({"$type": "app.bsky.graph.block"})), Verdict::Unknown);
    assert!(LEX.knows("app.bsky.feed.repost") && !LEX.knows("app.bsky.graph.block"));
}

#[test]
fn rejections_name_the_path_and_the_rule() {
    let mut p = post();
    p.as_object_mut().unwrap().remove("createdAt");
    let r = rejected("app.bsky.feed.post", &p);
    assert_eq!((r.path.as_str(), r.rule.as_str(), r.reason()), ("createdAt", "required", "required"));

    let mut p = post();
    p["text"] = json!(42);
    let r = rejected("app.bsky.feed.post", &p);
    assert_eq!((r.path.as_str(), r.rule.as_str()), ("text", "type"));
    assert_eq!(r.message, "expected string, got integer");

    let mut p = post();
    p["text"] = json!("é".repeat(301));
    let r = rejected("app.bsky.feed.post", &p);
    assert_eq!((r.path.as_str(), r.rule.as_str()), ("text", "maxGraphemes"));

    let mut p = post();
    p["text"] = json!("x".repeat(3001));
    let r = rejected("app.bsky.feed.post", &p);
    assert_eq!((r.path.as_str(), r.rule.as_str()), ("text", "maxLength"));

    let mut p = post();
    p["createdAt"] = json!("yesterday");
    let r = rejected("app.bsky.feed.post", &p);
    assert_eq!((r.path.as_str(), r.rule.as_str(), r.reason()), ("createdAt", "format datetime", "format"));

    let mut p = post();
    p["langs"][2] = json!("not a language!");
    let r = rejected("app.bsky.feed.post", &p);
    assert_eq!((r.path.as_str(), r.rule.as_str()), ("langs[2]", "format language"));

    let mut l = like();
    l["subject"]["uri"] = json!("https://example.com/not-at-uri");
    let r = rejected("app.bsky.feed.like", &l);
    assert_eq!((r.path.as_str(), r.rule.as_str()), ("subject.uri", "format at-uri"));

    let mut l = like();
    l["subject"].as_object_mut().unwrap().remove("cid");
    let r = rejected("app.bsky.feed.like", &l);
    assert_eq!((r.path.as_str(), r.rule.as_str()), ("subject.cid", "required"));

    // Inside a union member (jacquard's constraint pass does not go there).
    let mut p = post();
    p["facets"][0]["features"][0]["did"] = json!("not-a-did");
    let r = rejected("app.bsky.feed.post", &p);
    assert_eq!((r.path.as_str(), r.rule.as_str()), ("facets[0].features[0].did", "format did"));

    let mut p = post();
    p["embed"] = json!({"$type": "app.bsky.embed.images", "images": (0..5).map(image).collect::<Vec<_>>()});
    let r = rejected("app.bsky.feed.post", &p);
    assert_eq!((r.path.as_str(), r.rule.as_str()), ("embed.images", "maxLength"));

    let mut p = post();
    p["embed"] = json!({"$type": "app.bsky.embed.images", "images": [image(0)]});
    p["embed"]["images"][0]["image"]["mimeType"] = json!("text/html");
    let r = rejected("app.bsky.feed.post", &p);
    assert_eq!((r.path.as_str(), r.rule.as_str()), ("embed.images[0].image", "accept"));

    let mut s = status();
    s["status"] = json!("👍👍");
    let r = rejected("xyz.statusphere.status", &s);
    assert_eq!((r.path.as_str(), r.rule.as_str()), ("status", "maxGraphemes"));
    s["status"] = json!("");
    assert_eq!(rejected("xyz.statusphere.status", &s).rule, "minLength");
    assert!(rejected("xyz.statusphere.status", &s).to_string().starts_with("status: "));
}

#[test]
fn open_unions_take_unknown_members_and_closed_ones_do_not() {
    let mut p = post();
    p["embed"] = json!({"$type": "com.example.embed.hologram", "anything": [1, 2, 3]});
    assert_eq!(check("app.bsky.feed.post", &p), Verdict::Valid);
    let mut p = post();
    p["facets"][0]["features"][0] = json!({"$type": "com.example.facet#sparkle", "level": 9});
    assert_eq!(check("app.bsky.feed.post", &p), Verdict::Valid);
    // A union member still needs its $type.
    let mut p = post();
    p["embed"] = json!({"images": []});
    assert_eq!(rejected("app.bsky.feed.post", &p).rule, "$type");
}

#[test]
fn bytes_that_are_not_dag_cbor_are_rejected_not_panicked_on() {
    match LEX.check("app.bsky.feed.like", &[0xff, 0x00, 0x12]) {
        Verdict::Invalid(r) => assert_eq!(r.reason(), "decode"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn load_keeps_only_what_the_collections_reach() {
    let lex = Lexicons::load(&fixture_dir(), &["app.bsky.feed.like".to_string()]).unwrap();
    assert_eq!(lex.collections().collect::<Vec<_>>(), ["app.bsky.feed.like"]);
    let mut docs: Vec<&str> = lex.docs.keys().map(|k| k.as_str()).collect();
    docs.sort_unstable();
    assert_eq!(docs, ["app.bsky.feed.like", "com.atproto.repo.strongRef"]);
    // A pattern takes every record collection under it, and only records.
    let lex = Lexicons::load(&fixture_dir(), &["app.bsky.graph.*".to_string()]).unwrap();
    assert!(lex.knows("app.bsky.graph.follow") && lex.knows("app.bsky.graph.listitem"));
    assert!(!lex.knows("app.bsky.graph.getFollows") && !lex.knows("app.bsky.feed.like"));
    // No collections: every record collection in the directory.
    let all = Lexicons::load(&fixture_dir(), &[]).unwrap();
    assert!(all.knows("xyz.statusphere.status") && all.knows("chat.bsky.actor.declaration"));
}

#[test]
fn constraints_are_checked_through_refs_without_jacquards_constraint_pass() {
    // A like holds no constraint; its types are still checked through its ref to `strongRef`.
    assert_eq!(
        rejected(
            "app.bsky.feed.like",
            &typed(
                "app.bsky.feed.like",
                json!({"subject": {"uri": 1, "cid": "x"}, "createdAt": "2024-01-01T00:00:00Z"})
            )
        )
        .path,
        "subject.uri"
    );
    // A reply's refs: the format of a `strongRef`'s uri, two refs down.
    let mut reply = post();
    reply["reply"]["parent"]["uri"] = json!("at://did:plc:abc/app.bsky.feed.post/");
    let wrong = rejected("app.bsky.feed.post", &reply);
    assert_eq!((wrong.path.as_str(), wrong.rule.as_str()), ("reply.parent.uri", "format at-uri"));

    // A constraint reached through refs in a cycle.
    let tree = |label: &str| {
        format!(
            r##"{{"lexicon": 1, "id": "com.example.tree", "defs": {{"main": {{"type": "record", "key": "tid",
            "record": {{"type": "object", "properties": {{"root": {{"type": "ref", "ref": "#node"}}}}}}}},
            "node": {{"type": "object", "properties": {{"child": {{"type": "ref", "ref": "#leaf"}}, "label": {label}}}}},
            "leaf": {{"type": "object", "properties": {{"up": {{"type": "ref", "ref": "#node"}}}}}}}}}}"##
        )
    };
    let tree_id = vec!["com.example.tree".to_string()];
    let dir = dir_with(&[("tree.json", &tree(r#"{"type": "string", "maxLength": 3}"#))]);
    let lex = Lexicons::load(dir.path(), &tree_id).unwrap();
    // (jacquard refuses data that enters a def twice down one path, so one level is all a record holds.)
    let deep = |label: &str| typed("com.example.tree", json!({"root": {"child": {}, "label": label}}));
    assert_eq!(lex.check("com.example.tree", &cbor(&deep("abc"))), Verdict::Valid);
    match lex.check("com.example.tree", &cbor(&deep("abcd"))) {
        Verdict::Invalid(r) => assert_eq!((r.path.as_str(), r.rule.as_str()), ("root.label", "maxLength")),
        other => panic!("{other:?}"),
    }
}

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

const THING: &str = r#"{"lexicon": 1, "id": "com.example.thing", "defs": {"main": {"type": "record", "key": "tid",
    "record": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "maximum": 3},
    "at": {"type": "ref", "ref": "com.example.defs#when"}}}}}}"#;
const DEFS: &str =
    r#"{"lexicon": 1, "id": "com.example.defs", "defs": {"when": {"type": "string", "format": "datetime"}}}"#;

#[test]
fn load_errors_name_the_file_and_the_reason() {
    let thing = vec!["com.example.thing".to_string()];
    let dir = dir_with(&[("a/thing.json", THING), ("defs.json", DEFS), ("notes.txt", "not json")]);
    let lex = Lexicons::load(dir.path(), &thing).unwrap();
    assert_eq!(lex.check_value("com.example.thing", &Data::Null), lex.check_value("com.example.thing", &Data::Null));
    assert_eq!(LEX.check("x", &[]), Verdict::Unknown);
    // A ref to a string def: checked here, as jacquard does not.
    let r = match lex.check("com.example.thing", &cbor(&json!({"$type": "com.example.thing", "n": 1, "at": "soon"}))) {
        Verdict::Invalid(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!((r.path.as_str(), r.rule.as_str()), ("at", "format datetime"));
    assert_eq!(
        lex.check("com.example.thing", &cbor(&json!({"$type": "com.example.thing", "n": 4}))),
        Verdict::Invalid(Rejection::new("n", "maximum", "4 is over 3"))
    );

    let dir = dir_with(&[("a/thing.json", THING), ("broken.json", "{\"id\": ")]);
    let e = Lexicons::load(dir.path(), &thing).unwrap_err();
    assert!(e.file.ends_with("broken.json") && e.reason.starts_with("bad JSON"), "{e}");

    let dir = dir_with(&[("a/thing.json", THING), ("b.json", r#"{"lexicon": 1, "defs": {}}"#)]);
    let e = Lexicons::load(dir.path(), &thing).unwrap_err();
    assert!(e.file.ends_with("b.json") && e.reason.contains("not a lexicon document"), "{e}");

    let dir = dir_with(&[("a/thing.json", THING), ("b/thing.json", THING), ("defs.json", DEFS)]);
    let e = Lexicons::load(dir.path(), &thing).unwrap_err();
    assert!(e.file.ends_with("b/thing.json") && e.reason.contains("also the id of"), "{e}");

    let dir = dir_with(&[("a/thing.json", THING)]);
    let e = Lexicons::load(dir.path(), &thing).unwrap_err();
    assert!(e.file.ends_with("a/thing.json") && e.reason.contains("com.example.defs#when"), "{e}");
    // Not asked for, so its dangling ref does not matter.
    assert!(Lexicons::load(dir.path(), &["com.other.*".to_string()]).unwrap().collections().next().is_none());

    let bad_def = THING.replace(r#""type": "integer""#, r#""type": "float""#);
    let dir = dir_with(&[("thing.json", &bad_def), ("defs.json", DEFS)]);
    let e = Lexicons::load(dir.path(), &thing).unwrap_err();
    assert!(e.file.ends_with("thing.json") && e.reason.contains("not a lexicon document"), "{e}");

    let e = Lexicons::load(Path::new("/nonexistent/lexicons"), &thing).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/lexicons: cannot list"), "{e}");
}

#[test]
fn modes_parse_with_errors_that_say_what_is_allowed() {
    assert_eq!(ValidateMode::parse("off"), Ok(ValidateMode::Off));
    assert_eq!("log".parse::<ValidateMode>(), Ok(ValidateMode::Log));
    assert_eq!(ValidateMode::parse("drop"), Ok(ValidateMode::Drop));
    assert_eq!(ValidateMode::parse("Drop").unwrap_err(), r#"validate must be "off", "log" or "drop", not "Drop""#);
    assert_eq!(ValidateMode::default(), ValidateMode::Off);
    assert_eq!(UnknownMode::parse("pass"), Ok(UnknownMode::Pass));
    assert_eq!("drop".parse::<UnknownMode>(), Ok(UnknownMode::Drop));
    assert_eq!(UnknownMode::parse("").unwrap_err(), r#"unknown must be "pass" or "drop", not """#);
    assert_eq!(UnknownMode::default(), UnknownMode::Pass);
    for m in [ValidateMode::Off, ValidateMode::Log, ValidateMode::Drop] {
        assert_eq!(m.to_string().parse::<ValidateMode>(), Ok(m));
    }
    for m in [UnknownMode::Pass, UnknownMode::Drop] {
        assert_eq!(m.to_string().parse::<UnknownMode>(), Ok(m));
    }
}

/// A valid record of one of the checked collections, with arbitrary content within its rules.
fn any_record() -> impl Strategy<Value = (&'static str, Value)> {
    let text = "\\PC{0,100}";
    let time = (2000u32..2100, 1u32..=12, 1u32..=28, 0u32..24)
        .prop_map(|(y, mo, d, h)| format!("{y}-{mo:02}-{d:02}T{h:02}:00:00.000Z"));
    prop_oneof![
        (text, time.clone(), prop::collection::vec(prop::sample::select(vec!["en", "fr", "ja", "pt-BR"]), 0..3))
            .prop_map(|(text, at, langs)| (
                "app.bsky.feed.post",
                json!({"$type": "app.bsky.feed.post", "text": text, "langs": langs, "createdAt": at})
            )),
        time.clone().prop_map(|at| (
            "app.bsky.feed.like",
            json!({"$type": "app.bsky.feed.like", "subject": {"uri": POST_URI, "cid": CID}, "createdAt": at})
        )),
        time.clone().prop_map(|at| (
            "app.bsky.graph.follow",
            json!({"$type": "app.bsky.graph.follow", "subject": "did:plc:abcdefghijklmnopqrstuvwx", "createdAt": at})
        )),
        ("\\PC", time).prop_map(|(s, at)| (
            "xyz.statusphere.status",
            json!({"$type": "xyz.statusphere.status", "status": s, "createdAt": at})
        )),
    ]
}

/// Every field path of `v` that the lexicon requires (top level and nested objects).
fn required_paths(collection: &str, v: &Value) -> Vec<Vec<String>> {
    let top: &[&str] = match collection {
        "app.bsky.feed.post" => &["text", "createdAt"],
        "app.bsky.feed.like" => &["subject", "createdAt"],
        "app.bsky.graph.follow" => &["subject", "createdAt"],
        _ => &["status", "createdAt"],
    };
    let mut out: Vec<Vec<String>> = top.iter().map(|f| vec![f.to_string()]).collect();
    if collection == "app.bsky.feed.like" && v["subject"].is_object() {
        out.extend([vec!["subject".into(), "uri".into()], vec!["subject".into(), "cid".into()]]);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn generated_valid_records_are_valid((collection, v) in any_record()) {
        prop_assert_eq!(check(collection, &v), Verdict::Valid);
    }

    #[test]
    fn removing_a_required_field_is_rejected_at_its_path((collection, v) in any_record(), pick in any::<prop::sample::Index>()) {
        let paths = required_paths(collection, &v);
        let path = pick.get(&paths);
        let mut mutated = v.clone();
        let (last, parents) = path.split_last().unwrap();
        let mut at = &mut mutated;
        for p in parents {
            at = &mut at[p.as_str()];
        }
        at.as_object_mut().unwrap().remove(last.as_str());
        let r = rejected(collection, &mutated);
        prop_assert_eq!(r.path, path.join("."));
        prop_assert_eq!(r.rule, "required");
    }

    #[test]
    fn a_field_of_another_type_is_rejected_at_its_path((collection, v) in any_record(), pick in any::<prop::sample::Index>(), n in any::<i64>()) {
        let fields: Vec<String> = v.as_object().unwrap().keys().filter(|k| *k != "$type").cloned().collect();
        let field = pick.get(&fields);
        let mut mutated = v.clone();
        mutated[field.as_str()] = json!(n);
        let r = rejected(collection, &mutated);
        prop_assert_eq!(r.path, field.clone());
        prop_assert_eq!(r.rule, "type");
    }

    #[test]
    fn any_string_that_is_not_a_datetime_is_rejected_as_one((collection, v) in any_record(), junk in "\\PC{0,40}") {
        prop_assume!(!crate::syntax::is_datetime(&junk));
        let mut mutated = v.clone();
        mutated["createdAt"] = json!(junk);
        let r = rejected(collection, &mutated);
        prop_assert_eq!(r.path, "createdAt");
        prop_assert_eq!(r.rule, "format datetime");
    }

    #[test]
    fn any_open_union_member_type_passes(kind in "[a-z]{2,8}\\.[a-z]{2,8}\\.[a-z]{2,8}(#[a-z]{1,8})?", payload in "\\PC{0,20}") {
        prop_assume!(!kind.starts_with("app.bsky."));
        let mut p = post();
        p["embed"] = json!({"$type": kind, "x": payload});
        prop_assert_eq!(check("app.bsky.feed.post", &p), Verdict::Valid);
    }
}

const BOX: &str = r##"{"lexicon": 1, "id": "com.example.box", "defs": {
    "main": {"type": "record", "key": "tid", "record": {"type": "object", "properties": {
        "shut": {"type": "union", "refs": ["#a", "com.example.box#b"], "closed": true},
        "open": {"type": "union", "refs": ["#a"]},
        "many": {"type": "array", "items": {"type": "union", "refs": ["#a"]}},
        "link": {"type": "string", "format": "uri"},
        "kind": {"type": "string", "enum": ["x", "y"]}}}},
    "a": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "minimum": 1}, "cid": {"type": "string", "format": "cid"}}},
    "b": {"type": "token"}}}"##;

#[test]
fn closed_unions_refuse_unlisted_members_and_members_are_checked_in_full() {
    let dir = dir_with(&[("box.json", BOX)]);
    let lex = Lexicons::load(dir.path(), &["com.example.box".to_string()]).unwrap();
    let verdict = |v: Value| lex.check("com.example.box", &cbor(&typed("com.example.box", v)));
    let invalid = |v: Value| match verdict(v.clone()) {
        Verdict::Invalid(r) => (r.path, r.rule),
        other => panic!("{v}: {other:?}"),
    };
    let a = |n: i64| json!({"$type": "com.example.box#a", "n": n});
    assert_eq!(verdict(json!({"shut": a(1), "open": a(2), "many": [a(3), a(4)]})), Verdict::Valid);
    assert_eq!(
        invalid(json!({"shut": {"$type": "com.example.other", "n": 1}})),
        ("shut".into(), "closed union".into())
    );
    assert_eq!(verdict(json!({"open": {"$type": "com.example.other"}})), Verdict::Valid);
    // In a union member, constraints jacquard does not check there: minimum, formats.
    assert_eq!(invalid(json!({"shut": a(0)})), ("shut.n".into(), "minimum".into()));
    assert_eq!(invalid(json!({"many": [a(1), a(0)]})), ("many[1].n".into(), "minimum".into()));
    assert_eq!(
        invalid(json!({"open": {"$type": "com.example.box#a", "n": 1, "cid": "bafynope"}})),
        ("open.cid".into(), "format cid".into())
    );
    assert_eq!(invalid(json!({"many": [{"$type": "com.example.box#a"}]})), ("many[0].n".into(), "required".into()));
    assert_eq!(invalid(json!({"kind": "z"})), ("kind".into(), "enum".into()));
    assert_eq!(verdict(json!({"kind": "y"})), Verdict::Valid);
}

#[test]
fn uri_format_takes_any_scheme_but_not_spaces_or_no_scheme() {
    use jacquard_lexicon::lexicon::LexStringFormat::Uri;
    for ok in
        ["https://example.com/a?b=c", "at://did:plc:abc/app.bsky.feed.post/3k", "mailto:a@b.c", "did:web:example.com"]
    {
        assert!(extra::format_ok(Uri, ok), "{ok}");
    }
    for bad in ["", "example.com", "https://a b", "://x", "1http://x", "https:"] {
        assert!(!extra::format_ok(Uri, bad), "{bad}");
    }
}

#[test]
fn lexicons_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Lexicons>();
    let posts: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let mut p = post();
                p["text"] = json!(format!("thread {i}"));
                check("app.bsky.feed.post", &p)
            })
        })
        .collect();
    for p in posts {
        assert_eq!(p.join().unwrap(), Verdict::Valid);
    }
}

#[test]
fn a_record_must_be_typed_as_its_collection() {
    let mut like = json!({"$type": "app.bsky.feed.post", "subject": {"uri": POST_URI, "cid": CID}, "createdAt": "2024-05-01T12:00:00Z"});
    let wrong = rejected("app.bsky.feed.like", &like);
    assert_eq!((wrong.path.as_str(), wrong.rule.as_str()), ("$type", "$type"));
    assert!(wrong.message.contains("app.bsky.feed.post") && wrong.message.contains("app.bsky.feed.like"), "{wrong:?}");
    like.as_object_mut().unwrap().remove("$type");
    assert_eq!(rejected("app.bsky.feed.like", &like).message, "a record without $type");
    assert_eq!(
        LEX.check_value("app.bsky.feed.like", &Data::Null),
        Verdict::Invalid(Rejection::new("", "type", "expected object, got null"))
    );
}

#[test]
fn legacy_blobs_are_read_with_their_accept_checked() {
    let legacy = |mime: &str| json!({"cid": CID, "mimeType": mime});
    let profile = |avatar: Value| json!({"$type": "app.bsky.actor.profile", "avatar": avatar});
    assert_eq!(check("app.bsky.actor.profile", &profile(legacy("image/jpeg"))), Verdict::Valid);
    let wrong = rejected("app.bsky.actor.profile", &profile(legacy("text/html")));
    assert_eq!((wrong.path.as_str(), wrong.rule.as_str()), ("avatar", "accept"));
    // Only the legacy shape: a CID string and a MIME type, nothing else.
    for bad in [
        json!({"cid": "not-a-cid", "mimeType": "image/jpeg"}),
        json!({"cid": CID}),
        json!({"cid": CID, "mimeType": "image/jpeg", "size": 3}),
    ] {
        assert_eq!(rejected("app.bsky.actor.profile", &profile(bad.clone())).rule, "type", "{bad}");
    }
    // Inside a union member (an image embed), where jacquard's own passes do not go.
    let mut post = json!({"$type": "app.bsky.feed.post", "text": "hi", "createdAt": "2024-05-01T12:00:00Z"});
    post["embed"] = json!({"$type": "app.bsky.embed.images", "images": [{"image": legacy("image/png"), "alt": ""}]});
    assert_eq!(check("app.bsky.feed.post", &post), Verdict::Valid);
    post["embed"]["images"][0]["image"] = legacy("video/mp4");
    assert_eq!(rejected("app.bsky.feed.post", &post).path, "embed.images[0].image");
}

#[test]
fn null_passes_only_where_the_lexicon_says_nullable() {
    // The fixture lexicons use `nullable` only outside records: this one is the test's own.
    let dir = tempfile::tempdir().unwrap();
    let doc = json!({"lexicon": 1, "id": "com.example.nullable", "defs": {"main": {"type": "record", "key": "tid",
        "record": {"type": "object", "required": ["a", "c"], "nullable": ["a", "b"], "properties": {
            "a": {"type": "string", "maxLength": 3}, "b": {"type": "integer", "maximum": 3},
            "c": {"type": "string"}, "d": {"type": "ref", "ref": "#inner"}}}},
        "inner": {"type": "object", "nullable": ["x"], "properties": {"x": {"type": "string"}, "y": {"type": "string"}}}}});
    std::fs::write(dir.path().join("nullable.json"), doc.to_string()).unwrap();
    let lex = Lexicons::load(dir.path(), &["com.example.nullable".to_string()]).unwrap();
    let check = |v: Value| lex.check("com.example.nullable", &cbor(&typed("com.example.nullable", v)));
    assert_eq!(check(json!({"a": null, "c": "x"})), Verdict::Valid, "required and nullable");
    assert_eq!(check(json!({"a": "x", "b": null, "c": "x"})), Verdict::Valid);
    assert_eq!(check(json!({"a": "x", "c": "x", "d": {"x": null, "y": "y"}})), Verdict::Valid, "nullable in a ref");
    for (record, path) in [(json!({"a": "x", "c": null}), "c"), (json!({"a": "x", "c": "x", "d": {"y": null}}), "d.y")]
    {
        match check(record.clone()) {
            Verdict::Invalid(r) => assert_eq!((r.path.as_str(), r.rule.as_str()), (path, "type"), "{record}"),
            other => panic!("{record} was {other:?}"),
        }
    }
    // A nullable field that holds a value still has its constraints checked.
    match check(json!({"a": "xxxxx", "c": "x"})) {
        Verdict::Invalid(r) => assert_eq!((r.path.as_str(), r.rule.as_str()), ("a", "maxLength")),
        other => panic!("{other:?}"),
    }
}
