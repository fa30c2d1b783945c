//! sluice's own lexicons, `lexicons/dev/sluice/*.json`, against sluice itself:
//! - every file under `lexicons/` is a Lexicon v1 document whose `id` is its path, whose
//!   schema nodes are well formed (known types, only the keys each type has, `required` and
//!   `nullable` naming properties, bounds in order, errors named once), and whose refs resolve
//!   in these files or in the `com.atproto.*` lexicons of `../shared/fixtures/lexicons/`;
//! - every `dev.sluice.*` method the server answers has a lexicon, and every lexicon names a
//!   method it answers: the server on a devnet is asked for each word of the sources under
//!   `/xrpc/dev.sluice.<word>`, so a method added anywhere without a lexicon fails here; the
//!   parameters a method's own file reads are all declared;
//! - the answers of every method (queries, their errors, and the event stream's messages) match
//!   their lexicon, strictly: a field the lexicon does not declare fails, so the lexicons stay
//!   a complete description. The check is this file's own small conformance walk (formats by
//!   `sluice::syntax`), as jacquard-lexicon's runtime validation checks records, not a query's
//!   inline output schema, and ignores `nullable`. The index queries (issue 32) are asked too
//!   once `describeIndexes` is served, over two indexes declared in the test's filter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice::backfill::{Backfill, RunMode};
use sluice::handles::{HandleChecker, HandleResolver};
use sluice::server::ServerState;
use sluice::store::RepoStatus;
use sluice::{Config, Filter, Sluice};
use sluice_devnet::{AccountStatus, Devnet, DevnetOptions};
use sluice_testkit as testkit;
use sluice_testkit::server::{LIMIT, Socket, next_json, start_server};

/// sluice's XRPC namespace.
const NS: &str = "dev.sluice";

/// Methods whose lexicon is written ahead of their code (issue 32): not failed for being
/// unserved. Once served, they are checked as every other method is.
const WRITTEN_AHEAD: &[&str] = &["dev.sluice.queryIndex", "dev.sluice.countIndex", "dev.sluice.describeIndexes"];

/// The string formats of Lexicon v1.
const FORMATS: &[&str] =
    &["at-identifier", "at-uri", "cid", "datetime", "did", "handle", "nsid", "tid", "record-key", "uri", "language"];

/// `lexicons/`, at the project root.
fn lexicon_dir() -> PathBuf {
    testkit::root().join("lexicons")
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() { todo.push(path) } else { out.push(path) }
        }
    }
    out.sort();
    out
}

/// Lexicon documents by id: sluice's own, and the fixture documents their refs reach.
struct Lexicons {
    docs: BTreeMap<String, Value>,
}

impl Lexicons {
    /// sluice's lexicons (panics on a file that is not JSON) and the `com.atproto.*` fixture
    /// lexicons they refer to, transitively. A ref to a document that is in neither is left
    /// for [`Lexicons::def`] to miss.
    fn load() -> (Self, BTreeMap<String, PathBuf>) {
        let mut docs = BTreeMap::new();
        let mut paths = BTreeMap::new();
        for path in files_under(&lexicon_dir()) {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let doc: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            let id = doc["id"].as_str().unwrap_or_default().to_string();
            assert!(paths.insert(id.clone(), path.clone()).is_none(), "{id} is in two files");
            docs.insert(id, doc);
        }
        let mut todo: Vec<String> = docs.keys().cloned().collect();
        while let Some(id) = todo.pop() {
            let mut refs = Vec::new();
            refs_in(&docs[&id], &mut refs);
            for r in refs {
                let (target, _) = split_ref(&id, &r);
                if docs.contains_key(&target) || !target.starts_with("com.atproto.") {
                    continue;
                }
                let file = testkit::fixture(&format!("lexicons/{}.json", target.replace('.', "/")));
                if let Ok(text) = std::fs::read_to_string(&file) {
                    docs.insert(target.clone(), serde_json::from_str(&text).unwrap());
                    todo.push(target);
                }
            }
        }
        (Self { docs }, paths)
    }

    /// The def `r` names, seen from document `from`, and the id of its document.
    fn def(&self, from: &str, r: &str) -> Option<(String, &Value)> {
        let (id, name) = split_ref(from, r);
        let def = self.docs.get(&id)?.get("defs")?.get(&name)?;
        Some((id, def))
    }

    /// sluice's own documents.
    fn ours(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.docs.iter().filter(|(id, _)| id.starts_with(&format!("{NS}.")))
    }

    /// The ids of sluice's methods (documents whose `main` is a query, procedure or
    /// subscription).
    fn methods(&self) -> BTreeSet<String> {
        self.ours()
            .filter(|(_, doc)| {
                matches!(doc["defs"]["main"]["type"].as_str(), Some("query" | "procedure" | "subscription"))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// `(document id, def name)` of ref `r` seen from document `from`: `#x`, `a.b.c#x` or `a.b.c`
/// (its `main`).
fn split_ref(from: &str, r: &str) -> (String, String) {
    match r.split_once('#') {
        Some(("", name)) => (from.to_string(), name.to_string()),
        Some((id, name)) => (id.to_string(), name.to_string()),
        None => (r.to_string(), "main".to_string()),
    }
}

/// Every ref (of `ref` and `union` nodes) under `node`.
fn refs_in(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            match map.get("type").and_then(Value::as_str) {
                Some("ref") => out.extend(map.get("ref").and_then(Value::as_str).map(str::to_string)),
                Some("union") => out.extend(
                    map.get("refs")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_string),
                ),
                _ => {}
            }
            map.values().for_each(|v| refs_in(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs_in(v, out)),
        _ => {}
    }
}

/// The keys a schema node of `kind` may have besides `type` and `description`.
fn allowed_keys(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "query" => &["parameters", "output", "errors"],
        "procedure" => &["parameters", "input", "output", "errors"],
        "subscription" => &["parameters", "message", "errors"],
        "record" => &["key", "record"],
        "params" | "object" => &["required", "nullable", "properties"],
        "string" => &[
            "format",
            "minLength",
            "maxLength",
            "minGraphemes",
            "maxGraphemes",
            "knownValues",
            "enum",
            "const",
            "default",
        ],
        "integer" => &["minimum", "maximum", "enum", "const", "default"],
        "boolean" => &["default", "const"],
        "array" => &["items", "minLength", "maxLength"],
        "bytes" => &["minLength", "maxLength"],
        "blob" => &["accept", "maxSize"],
        "ref" => &["ref"],
        "union" => &["refs", "closed"],
        "unknown" | "cid-link" | "token" => &[],
        _ => return None,
    })
}

/// Where a schema node sits, which limits its type.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    /// A document's `main` def.
    Main,
    /// Any other def.
    Def,
    /// A property, an array's items, a body's schema.
    Field,
    /// A method's `parameters`.
    Params,
    /// A property of `params`.
    Param,
    /// The items of an array in `params`.
    ParamItem,
}

/// Problems with one schema node and the nodes under it, each prefixed with `at`.
fn lint(node: &Value, place: Place, at: &str, errs: &mut Vec<String>) {
    let mut err = |what: String| errs.push(format!("{at}: {what}"));
    let Some(map) = node.as_object() else { return err("a schema node is a JSON object".into()) };
    let kind = map.get("type").and_then(Value::as_str).unwrap_or_default();
    let Some(allowed) = allowed_keys(kind) else {
        return err(format!("unknown type {kind:?}"));
    };
    let fits = match place {
        Place::Main => kind != "params",
        Place::Def => !matches!(kind, "query" | "procedure" | "subscription" | "record" | "params"),
        Place::Field => !matches!(kind, "query" | "procedure" | "subscription" | "record" | "params" | "token"),
        Place::Params => kind == "params",
        Place::Param => matches!(kind, "boolean" | "integer" | "string" | "unknown" | "array"),
        Place::ParamItem => matches!(kind, "boolean" | "integer" | "string"),
    };
    if !fits {
        err(format!("a {kind} cannot be here"));
    }
    for key in map.keys() {
        if key != "type" && key != "description" && !allowed.contains(&key.as_str()) {
            err(format!("a {kind} has no key {key:?}"));
        }
    }
    if map.get("description").is_some_and(|d| !d.is_string()) {
        err("description is a string".into());
    }
    let strings = |key: &str| -> Option<Vec<String>> {
        map.get(key).map(|v| v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect())
    };
    match kind {
        "object" | "params" => {
            let Some(props) = map.get("properties").and_then(Value::as_object) else {
                return err(format!("a {kind} has properties"));
            };
            for key in ["required", "nullable"] {
                for name in strings(key).unwrap_or_default() {
                    if !props.contains_key(&name) {
                        err(format!("{key} names {name:?}, which is not a property"));
                    }
                }
            }
            for (name, prop) in props {
                let inner = if kind == "params" { Place::Param } else { Place::Field };
                lint(prop, inner, &format!("{at}.{name}"), errs);
            }
        }
        "query" | "procedure" | "subscription" => {
            if let Some(params) = map.get("parameters") {
                lint(params, Place::Params, &format!("{at}.parameters"), errs);
            }
            for body in ["input", "output", "message"] {
                let Some(b) = map.get(body) else { continue };
                let keys: BTreeSet<&str> = b.as_object().into_iter().flatten().map(|(k, _)| k.as_str()).collect();
                let want_encoding = body != "message";
                if want_encoding && !b["encoding"].is_string() {
                    errs.push(format!("{at}.{body}: an encoding"));
                }
                if let Some(extra) = keys.iter().find(|k| !["encoding", "schema", "description"].contains(k)) {
                    errs.push(format!("{at}.{body}: no key {extra:?}"));
                }
                match b.get("schema") {
                    Some(s) if matches!(s["type"].as_str(), Some("object" | "ref" | "union")) => {
                        lint(s, Place::Field, &format!("{at}.{body}.schema"), errs)
                    }
                    Some(_) => errs.push(format!("{at}.{body}.schema: an object, ref or union")),
                    None if body == "message" => errs.push(format!("{at}.message: a schema")),
                    None => {}
                }
            }
            let mut names = BTreeSet::new();
            for e in map.get("errors").and_then(Value::as_array).into_iter().flatten() {
                let name = e["name"].as_str().unwrap_or_default();
                let camel = name.starts_with(|c: char| c.is_ascii_uppercase())
                    && name.chars().all(|c| c.is_ascii_alphanumeric());
                if !camel || !names.insert(name) {
                    errs.push(format!("{at}.errors: {name:?} is not an UpperCamel name given once"));
                }
                if e.as_object().is_some_and(|o| o.keys().any(|k| k != "name" && k != "description")) {
                    errs.push(format!("{at}.errors: {name} has a key other than name and description"));
                }
            }
        }
        "string" => {
            if let Some(f) = map.get("format").and_then(Value::as_str).filter(|f| !FORMATS.contains(f)) {
                err(format!("unknown format {f:?}"));
            }
            for key in ["knownValues", "enum"] {
                if map.get(key).is_some_and(|v| v.as_array().is_none_or(|a| a.iter().any(|x| !x.is_string()))) {
                    err(format!("{key} is an array of strings"));
                }
            }
            in_order(map, "minLength", "maxLength", None, &mut err);
            in_order(map, "minGraphemes", "maxGraphemes", None, &mut err);
        }
        "integer" => in_order(map, "minimum", "maximum", map.get("default"), &mut err),
        "array" => {
            in_order(map, "minLength", "maxLength", None, &mut err);
            match map.get("items") {
                Some(items) => {
                    let inner = if place == Place::Param { Place::ParamItem } else { Place::Field };
                    lint(items, inner, &format!("{at}[]"), errs);
                }
                None => err("an array has items".into()),
            }
        }
        "ref" if !map.get("ref").is_some_and(Value::is_string) => err("a ref has a ref".into()),
        "union" if strings("refs").is_none_or(|r| r.is_empty()) => err("a union has refs".into()),
        "record" => lint(&map["record"], Place::Field, &format!("{at}.record"), errs),
        _ => {}
    }
}

/// `lo <= default <= hi` for the bounds present.
fn in_order(
    map: &serde_json::Map<String, Value>,
    lo: &str,
    hi: &str,
    default: Option<&Value>,
    err: &mut impl FnMut(String),
) {
    let (l, h, d) =
        (map.get(lo).and_then(Value::as_i64), map.get(hi).and_then(Value::as_i64), default.and_then(Value::as_i64));
    for (a, b) in [(l, h), (l, d), (d, h)] {
        if let (Some(a), Some(b)) = (a, b)
            && a > b
        {
            err(format!("{lo}, default and {hi} are out of order"));
        }
    }
}

#[test]
fn every_file_is_a_lexicon_named_by_its_path_and_well_formed() {
    let dir = lexicon_dir();
    let files = files_under(&dir);
    assert!(files.len() >= 8, "sluice's lexicons are in {}: {files:?}", dir.display());
    let mut errs = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(&dir).unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        let doc: Value = match serde_json::from_str(&text) {
            Ok(doc) => doc,
            Err(e) => {
                errs.push(format!("{rel}: not JSON: {e}"));
                continue;
            }
        };
        if doc["lexicon"] != json!(1) {
            errs.push(format!("{rel}: lexicon is 1"));
        }
        let id = doc["id"].as_str().unwrap_or_default();
        if !sluice::syntax::is_nsid(id) || !id.starts_with(&format!("{NS}.")) {
            errs.push(format!("{rel}: id {id:?} is an NSID under {NS}"));
        }
        if rel != format!("{}.json", id.replace('.', "/")) {
            errs.push(format!("{rel}: the file of id {id:?} is {}.json", id.replace('.', "/")));
        }
        if let Some(extra) = doc
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
            .find(|k| !["lexicon", "id", "defs", "description", "revision"].contains(&k.as_str()))
        {
            errs.push(format!("{rel}: a document has no key {extra:?}"));
        }
        let Some(defs) = doc["defs"].as_object().filter(|d| !d.is_empty()) else {
            errs.push(format!("{rel}: defs is a non-empty object"));
            continue;
        };
        for (name, def) in defs {
            let place = if name == "main" { Place::Main } else { Place::Def };
            lint(def, place, &format!("{id}#{name}"), &mut errs);
        }
    }
    assert!(errs.is_empty(), "lexicon problems:\n{}", errs.join("\n"));
}

#[test]
fn every_ref_resolves_to_a_def_of_the_right_kind() {
    let (lexicons, _) = Lexicons::load();
    let mut errs = Vec::new();
    for (id, doc) in lexicons.ours() {
        let mut refs = Vec::new();
        refs_in(doc, &mut refs);
        for r in refs {
            let (target, _) = split_ref(id, &r);
            if target != *id && !target.starts_with(&format!("{NS}.")) && !target.starts_with("com.atproto.") {
                errs.push(format!("{id}: {r} is neither sluice's nor com.atproto's"));
                continue;
            }
            match lexicons.def(id, &r) {
                None => errs.push(format!("{id}: {r} names no def")),
                Some((_, def)) if matches!(def["type"].as_str(), Some("query" | "procedure" | "subscription")) => {
                    errs.push(format!("{id}: {r} names a method, not a data def"))
                }
                Some(_) => {}
            }
        }
    }
    assert!(errs.is_empty(), "refs:\n{}", errs.join("\n"));
    assert!(lexicons.docs.keys().any(|id| id.starts_with(NS)), "sluice's lexicons loaded");
}

/// Checks JSON answers against lexicon schemas, strictly: an object field its schema does not
/// declare is a problem (inside `unknown`, anything goes).
struct Conformance<'a> {
    lexicons: &'a Lexicons,
}

impl Conformance<'_> {
    /// Problems of `v` against `schema` (found in document `doc`), each prefixed with its path.
    fn check(&self, doc: &str, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        let mut err = |what: String| errs.push(format!("{at}: {what} (got {v})"));
        match schema["type"].as_str().unwrap_or_default() {
            "ref" => match self.lexicons.def(doc, schema["ref"].as_str().unwrap_or_default()) {
                Some((target, def)) => self.check(&target, def, v, at, errs),
                None => err(format!("unresolved ref {}", schema["ref"])),
            },
            "union" => {
                let Some(ty) = v.get("$type").and_then(Value::as_str) else {
                    return err("a union member has a $type".into());
                };
                let refs = schema["refs"].as_array().into_iter().flatten().filter_map(Value::as_str);
                let member = refs
                    .map(|r| split_ref(doc, r))
                    .find(|(id, name)| ty == if name == "main" { id.clone() } else { format!("{id}#{name}") });
                match member {
                    Some((id, name)) => {
                        let def = &self.lexicons.docs[&id]["defs"][&name];
                        let mut untyped = v.clone();
                        untyped.as_object_mut().unwrap().remove("$type");
                        self.check(&id, def, &untyped, at, errs)
                    }
                    None if schema["closed"] == json!(true) => err(format!("$type {ty} is not a member")),
                    None => {}
                }
            }
            "object" | "params" => {
                let Some(obj) = v.as_object() else { return err("an object".into()) };
                let props = schema["properties"].as_object().cloned().unwrap_or_default();
                let listed =
                    |key: &str, name: &str| schema[key].as_array().is_some_and(|a| a.iter().any(|n| n == name));
                for (name, _) in props.iter().filter(|(name, _)| listed("required", name)) {
                    if !obj.contains_key(name) {
                        errs.push(format!("{at}: required {name:?} is missing (got {v})"));
                    }
                }
                for (name, value) in obj {
                    match props.get(name) {
                        None => errs.push(format!("{at}.{name}: not declared by the lexicon")),
                        Some(_) if value.is_null() && listed("nullable", name) => {}
                        Some(prop) => self.check(doc, prop, value, &format!("{at}.{name}"), errs),
                    }
                }
            }
            "array" => {
                let Some(items) = v.as_array() else { return err("an array".into()) };
                let n = items.len() as i64;
                if schema["minLength"].as_i64().is_some_and(|min| n < min)
                    || schema["maxLength"].as_i64().is_some_and(|max| n > max)
                {
                    errs.push(format!("{at}: {n} items is out of bounds"));
                }
                for (i, item) in items.iter().enumerate() {
                    self.check(doc, &schema["items"], item, &format!("{at}[{i}]"), errs);
                }
            }
            "string" => {
                let Some(s) = v.as_str() else { return err("a string".into()) };
                let len = s.len() as i64;
                if schema["minLength"].as_i64().is_some_and(|min| len < min)
                    || schema["maxLength"].as_i64().is_some_and(|max| len > max)
                {
                    err("a length out of bounds".into());
                }
                if schema["enum"].as_array().is_some_and(|e| !e.contains(v))
                    || schema.get("const").is_some_and(|c| c != v)
                {
                    err("a value the lexicon allows".into());
                }
                if let Some(format) = schema["format"].as_str()
                    && !format_ok(format, s)
                {
                    err(format!("a {format}"));
                }
            }
            "integer" => {
                let Some(n) = v.as_i64() else { return err("an integer".into()) };
                if schema["minimum"].as_i64().is_some_and(|min| n < min)
                    || schema["maximum"].as_i64().is_some_and(|max| n > max)
                {
                    err("an integer in bounds".into());
                }
            }
            "boolean" if !v.is_boolean() => err("a boolean".into()),
            "unknown" if !v.is_object() => err("an object (unknown)".into()),
            "cid-link" if !v.get("$link").and_then(Value::as_str).is_some_and(sluice::syntax::is_cid) => {
                err("a cid-link".into())
            }
            "bytes" if !v.get("$bytes").is_some_and(Value::is_string) => err("bytes".into()),
            "blob" if v.get("$type") != Some(&json!("blob")) => err("a blob".into()),
            "boolean" | "unknown" | "cid-link" | "bytes" | "blob" => {}
            other => err(format!("a schema of type {other:?} cannot be checked")),
        }
    }

    /// Problems of a method's JSON output against its lexicon's output schema.
    fn output(&self, method: &str, v: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        let main = &self.lexicons.docs[method]["defs"]["main"];
        self.check(method, &main["output"]["schema"], v, method, &mut errs);
        errs
    }

    /// Problems of one message of a subscription: an event carries no `$type`, so it is
    /// checked against the member its keys name (`#info` for `info`, `#event` otherwise).
    fn message(&self, method: &str, v: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        let member = if v.get("info").is_some() { "#info" } else { "#event" };
        let schema = json!({"type": "ref", "ref": member});
        self.check(method, &schema, v, &format!("{method}{member}"), &mut errs);
        errs
    }

    /// The error names a method's lexicon declares, with `InvalidRequest` (every XRPC method's).
    fn errors(&self, method: &str) -> BTreeSet<String> {
        let main = &self.lexicons.docs[method]["defs"]["main"];
        let declared = main["errors"].as_array().into_iter().flatten().filter_map(|e| e["name"].as_str());
        declared.chain(["InvalidRequest"]).map(str::to_string).collect()
    }
}

/// Whether `s` is of `format`.
fn format_ok(format: &str, s: &str) -> bool {
    use sluice::syntax as syn;
    match format {
        "did" => syn::is_did(s),
        "handle" => syn::is_handle(s),
        "nsid" => syn::is_nsid(s),
        "at-uri" => syn::is_at_uri(s),
        "at-identifier" => syn::is_at_identifier(s),
        "cid" => syn::is_cid(s),
        "datetime" => syn::is_datetime(s),
        "tid" => syn::is_tid(s),
        "record-key" => syn::is_rkey(s),
        "language" => syn::is_language(s),
        "uri" => s.split_once(':').is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty()),
        _ => false,
    }
}

/// Every distinct word (`[a-z][A-Za-z0-9]*`) of sluice's sources (`src/`, `handlers/src/`):
/// any method name sluice routes is one of them.
fn source_words() -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    for dir in ["src", "handlers/src"] {
        for path in
            files_under(&testkit::root().join(dir)).into_iter().filter(|p| p.extension().is_some_and(|e| e == "rs"))
        {
            let text = std::fs::read_to_string(&path).unwrap();
            for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
                if word.starts_with(|c: char| c.is_ascii_lowercase()) && word.len() <= 63 {
                    words.insert(word.to_string());
                }
            }
        }
    }
    words
}

/// The `dev.sluice.*` methods the server at `base` answers: every candidate name whose
/// `/xrpc/` path gets anything but the not-implemented answer (501 `MethodNotImplemented`, or
/// a 404).
async fn served_methods(http: &reqwest::Client, base: &str, candidates: &BTreeSet<String>) -> BTreeSet<String> {
    let probes = futures_util::stream::iter(candidates.iter().cloned()).map(|method| {
        let url = format!("{base}/xrpc/{method}");
        async move {
            let res = http.get(url).send().await.expect("the server answers");
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let unknown = status == 404 || (status == 501 && body["error"] == "MethodNotImplemented");
            (!unknown).then_some(method)
        }
    });
    probes.buffer_unordered(16).filter_map(std::future::ready).collect().await
}

/// The query parameters `file` reads with [`sluice::xrpc::Params`] (`req`, `opt`, `did`,
/// `nsid`, `rkey`, `flag`, and `limit`), or with the index queries' raw pairs (`all` too).
fn params_read(file: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for reader in ["req", "opt", "all", "did", "nsid", "rkey", "flag"] {
        for (i, _) in file.match_indices(&format!(".{reader}(\"")) {
            let rest = &file[i + reader.len() + 3..];
            out.extend(rest.split_once('"').map(|(name, _)| name.to_string()));
        }
    }
    if file.contains(".limit(") {
        out.insert("limit".into());
    }
    out
}

/// A devnet backfilled and followed live by sluice, served on 127.0.0.1, with a post its
/// likes and follows point at, gone accounts, identity and account events in the log.
struct Setup {
    net: Devnet,
    sluice: Sluice,
    backfill: Arc<Backfill>,
    base: String,
    addr: String,
    state: Arc<ServerState>,
    http: reqwest::Client,
    dids: Vec<String>,
    gone: String,
    post: String,
    /// Why the filter refused the indexes, if it did.
    indexes_refused: Option<String>,
    _dir: tempfile::TempDir,
}

const POST: &str = "app.bsky.feed.post";
const LIKE: &str = "app.bsky.feed.like";

/// The filter: full mode, with the indexes of issue 32 when this build's filter takes them;
/// otherwise full mode alone, and why the indexes were refused.
fn filter() -> (Filter, Option<String>) {
    let with_indexes = "mode = \"full\"\n\n[indexes.likes_by_subject]\ncollection = \"app.bsky.feed.like\"\n\
                        key = [\"subject.uri\"]\nsort = \"createdAt\"\ncount = true\n\n\
                        [indexes.latest_post]\ncollection = \"app.bsky.feed.post\"\nkey = []\n\
                        sort = \"sortAt(createdAt)\"\nper_repo = \"latest\"\n";
    match Filter::from_toml(with_indexes, "own-lexicons.toml") {
        Ok(filter) => (filter, None),
        Err(e) => (testkit::filter("mode = \"full\""), Some(e.to_string())),
    }
}

async fn setup() -> Setup {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = net.populate(4, 25, 32).await;
    let created = "2026-01-01T00:00:00.000Z";
    let post_cid = net
        .put_record(&dids[0], POST, "3kownlexpost1", json!({"$type": POST, "text": "like me", "createdAt": created}))
        .unwrap();
    let post = format!("at://{}/{POST}/3kownlexpost1", dids[0]);
    for (i, liker) in dids[1..4].iter().enumerate() {
        let like = json!({"$type": LIKE, "subject": {"uri": post, "cid": post_cid}, "createdAt": created});
        net.put_record(liker, LIKE, &format!("3kownlexlike{i}"), like).unwrap();
    }
    let gone = net.create_account(sluice_devnet::AccountSpec { seed: 3200, pds: 1, ..Default::default() });
    net.put_record(&gone, POST, "3kownlexgone1", json!({"$type": POST, "text": "gone", "createdAt": created})).unwrap();
    net.set_status(&gone, AccountStatus::Takendown);

    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.storage.path = dir.path().join("data");
    testkit::on_devnet(&mut c, &net);
    let (filter, indexes_refused) = filter();
    let sluice = Sluice::builder().config(c.clone()).filter(filter).open().unwrap();
    let backfill = Backfill::new(sluice.pipeline().clone(), &c);
    let firehose = sluice::service::firehose_beside(&sluice, &c, &backfill).unwrap();
    let mut state = ServerState::new(sluice.pipeline().clone(), c.clone());
    state.firehose = Some(firehose.clone());
    let (addr, state) = start_server(state).await;
    let (f, stop) = (firehose.clone(), state.stop.clone());
    tokio::spawn(async move { f.run(stop).await });
    let b = backfill.clone();
    tokio::spawn(async move { b.run(RunMode::Forever, true).await });
    testkit::wait_until("the backfill", || sluice.store().repo_count(RepoStatus::Synced) == dids.len() as i64).await;
    // Handles are checked against the devnet relay's resolveHandle, so answers carry them.
    let policy = sluice::http::AddressPolicy::loopback();
    let handles = HandleResolver::new(Some(&net.relay_url()), LIMIT, &policy).unwrap();
    let checker = Arc::new(HandleChecker::new(sluice.store().clone(), backfill.resolver().clone(), handles, 1000));
    tokio::spawn(checker.run(state.stop.clone()));
    testkit::wait_until("every handle to be checked", || {
        dids.iter().all(|d| sluice.store().repos().state(d).unwrap().is_some_and(|s| s.handle_ok == Some(true)))
    })
    .await;
    testkit::wait_until("the firehose to connect", || net.request_count("com.atproto.sync.subscribeRepos") >= 1).await;

    // Live: a create, a delete, an identity and account events.
    let live = json!({"$type": POST, "text": "live", "createdAt": created});
    net.put_record(&dids[1], POST, "3kownlexlive1", live).unwrap();
    net.delete_record(&dids[2], LIKE, "3kownlexlike1").unwrap();
    net.emit_identity(&dids[3]);
    net.emit_relay_account(&dids[3], false, Some("throttled"));
    net.emit_relay_account(&dids[3], true, None);
    testkit::wait_until("live ingestion to catch up", || {
        firehose.safe_cursor() >= net.firehose_seq() && firehose.in_flight() == 0
    })
    .await;
    let http = reqwest::Client::builder().no_proxy().timeout(LIMIT).build().unwrap();
    Setup {
        net,
        sluice,
        backfill,
        base: format!("http://{addr}"),
        addr,
        state,
        http,
        dids,
        gone,
        post,
        indexes_refused,
        _dir: dir,
    }
}

impl Setup {
    /// Status and JSON body of `method?query`.
    async fn call(&self, method: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let res = self.http.get(format!("{}/xrpc/{method}", self.base)).query(query).send().await.unwrap();
        (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
    }
}

/// Every word of the sources, as a `dev.sluice` method, and every method sluice's lexicons
/// name.
fn candidates(lexicons: &Lexicons) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = source_words().into_iter().map(|w| format!("{NS}.{w}")).collect();
    out.extend(lexicons.methods());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_sluice_serves_has_a_lexicon_and_answers_by_it() {
    let (lexicons, _) = Lexicons::load();
    let conform = Conformance { lexicons: &lexicons };
    let s = setup().await;

    // Which methods are served, against which have lexicons.
    let served = served_methods(&s.http, &s.base, &candidates(&lexicons)).await;
    let documented = lexicons.methods();
    assert!(served.contains("dev.sluice.getStats") && served.contains("dev.sluice.subscribeEvents"), "{served:?}");
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(undocumented.is_empty(), "methods served with no lexicon in lexicons/dev/sluice/: {undocumented:?}");
    let unserved: Vec<_> = documented.difference(&served).filter(|m| !WRITTEN_AHEAD.contains(&m.as_str())).collect();
    assert!(unserved.is_empty(), "lexicons of methods sluice does not serve: {unserved:?}");

    // The parameters each method's own file reads are declared.
    for method in &served {
        let name = method.strip_prefix(&format!("{NS}.")).unwrap();
        let declared: BTreeSet<String> = lexicons.docs[method]["defs"]["main"]["parameters"]["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect();
        let own_files = files_under(&testkit::root().join("src/server")).into_iter().filter_map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let code: String =
                text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            let routes_it = code.contains(&format!("\"{name}\"")) || code.contains(&format!(".{name}\""));
            routes_it.then_some((p, code))
        });
        for (path, code) in own_files {
            let read = params_read(&code);
            let missing: Vec<_> = read.difference(&declared).collect();
            assert!(missing.is_empty(), "{method}: {} reads parameters its lexicon lacks: {missing:?}", path.display());
        }
    }

    // Every query's answers, and its errors, match its lexicon.
    let mut errs = Vec::new();
    let mut answered = BTreeMap::<String, usize>::new();
    let did0 = s.dids[0].as_str();
    let mut calls: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("dev.sluice.getStats", vec![]),
        ("dev.sluice.getRepoState", vec![("did", s.gone.clone())]),
        ("dev.sluice.getRepoState", vec![("did", "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into())]),
        ("dev.sluice.getRepoState", vec![("did", "nope".into())]),
        ("dev.sluice.getBacklinks", vec![("subject", s.post.clone()), ("limit", "1".into())]),
        ("dev.sluice.getBacklinks", vec![("subject", s.post.clone()), ("collection", LIKE.into())]),
        ("dev.sluice.getBacklinks", vec![("subject", did0.into())]),
        ("dev.sluice.getBacklinks", vec![("subject", s.post.clone()), ("limit", "101".into())]),
    ];
    calls.extend(s.dids.iter().map(|d| ("dev.sluice.getRepoState", vec![("did", d.clone())])));
    if served.contains("dev.sluice.describeIndexes") {
        index_calls(&s, &mut calls).await;
    }
    let mut cursor_followed = false;
    for (method, query) in &calls {
        assert!(served.contains(*method), "{method} is served");
        let q: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = s.call(method, &q).await;
        if status == 200 {
            errs.extend(conform.output(method, &body));
            *answered.entry(method.to_string()).or_default() += 1;
            // The next page too, when the answer gives a cursor.
            if let Some(cursor) = body["cursor"].as_str() {
                let mut next = q.clone();
                next.push(("cursor", cursor));
                let (status, body) = s.call(method, &next).await;
                assert_eq!(status, 200, "{method} {next:?}: {body}");
                errs.extend(conform.output(method, &body));
                cursor_followed = true;
            }
        } else {
            let name = body["error"].as_str().unwrap_or_default();
            assert!(body["message"].is_string(), "{method} {q:?}: an XRPC error: {status} {body}");
            if !conform.errors(method).contains(name) {
                errs.push(format!("{method} {q:?}: error {name:?} ({status}) is not in its lexicon"));
            }
        }
    }
    assert!(cursor_followed, "a cursor was followed");
    for method in served.iter().filter(|m| lexicons.docs[*m]["defs"]["main"]["type"] == "query") {
        assert!(answered.get(method).is_some_and(|&n| n > 0), "{method} answered 200 at least once: {answered:?}");
    }

    // The event stream: every event in the log, and the refusal of a future cursor.
    let method = "dev.sluice.subscribeEvents";
    let head = s.sluice.store().next_event_id() - 1;
    let mut socket: Socket =
        tokio_tungstenite::connect_async(format!("ws://{}/xrpc/{method}?cursor=0", s.addr)).await.unwrap().0;
    let mut kinds = BTreeMap::<String, usize>::new();
    let mut last = 0;
    while last < head {
        let msg = next_json(&mut socket).await.expect("the stream stays open");
        errs.extend(conform.message(method, &msg));
        last = msg["id"].as_u64().unwrap_or(last);
        let kind = msg["type"].as_str().unwrap_or("info").to_string();
        let action = msg["record"]["action"].as_str().map(|a| format!("/{a}")).unwrap_or_default();
        *kinds.entry(format!("{kind}{action}")).or_default() += 1;
    }
    for kind in ["record/create", "record/delete", "identity", "account"] {
        assert!(kinds.contains_key(kind), "the log has {kind} events: {kinds:?}");
    }
    let future = format!("ws://{}/xrpc/{method}?cursor={}", s.addr, head + 1000);
    match tokio_tungstenite::connect_async(future).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body: Value = serde_json::from_slice(res.body().as_deref().unwrap_or_default()).unwrap();
            let name = body["error"].as_str().unwrap_or_default();
            assert!(conform.errors(method).contains(name), "{method}: error {body} is in its lexicon");
        }
        other => panic!("a cursor after the log is refused: {:?}", other.map(|_| ())),
    }
    assert!(errs.is_empty(), "answers that do not match sluice's lexicons:\n{}", errs.join("\n"));
    s.backfill.stop();
    s.state.stop.cancel();
    drop(s.net);
}

/// Calls of the index methods (issue 32), once they are served: waits until every index is
/// ready, then asks each one.
async fn index_calls(s: &Setup, calls: &mut Vec<(&str, Vec<(&str, String)>)>) {
    assert_eq!(s.indexes_refused, None, "describeIndexes is served: the filter takes [indexes]");
    testkit::wait_until_async("every index to be ready", || async {
        let (status, body) = s.call("dev.sluice.describeIndexes", &[]).await;
        status == 200 && body["indexes"].as_array().is_some_and(|a| a.iter().all(|i| i["state"] == "ready"))
    })
    .await;
    calls.push(("dev.sluice.describeIndexes", vec![]));
    let by_subject = || vec![("index", "likes_by_subject".to_string()), ("key", s.post.clone())];
    calls.push(("dev.sluice.queryIndex", [by_subject(), vec![("limit", "1".into())]].concat()));
    calls.push(("dev.sluice.queryIndex", [by_subject(), vec![("reverse", "true".into())]].concat()));
    let bounded = [
        ("did", s.dids[1].clone()),
        ("since", "2025-01-01T00:00:00Z".into()),
        ("until", "2027-01-01T00:00:00Z".into()),
    ];
    calls.push(("dev.sluice.queryIndex", [by_subject(), bounded.to_vec()].concat()));
    calls.push(("dev.sluice.queryIndex", vec![("index", "latest_post".into())]));
    calls.push(("dev.sluice.queryIndex", vec![("index", "no_such_index".into())]));
    calls.push(("dev.sluice.queryIndex", [by_subject(), vec![("limit", "101".into())]].concat()));
    calls.push(("dev.sluice.countIndex", by_subject()));
    calls.push(("dev.sluice.countIndex", vec![("index", "no_such_index".into())]));
}

/// The strict check fails an answer with a field its lexicon lacks, a missing required field,
/// a wrong format and a null where none is allowed; it passes the declared shapes.
#[test]
fn the_conformance_check_finds_what_it_should() {
    let (lexicons, _) = Lexicons::load();
    let conform = Conformance { lexicons: &lexicons };
    let link = json!({"uri": "at://did:plc:a/app.bsky.feed.like/3k", "did": "did:plc:a", "collection": "app.bsky.feed.like", "rkey": "3k"});
    let good = json!({"subject": "did:plc:b", "links": [link], "cursor": "x"});
    assert_eq!(conform.output("dev.sluice.getBacklinks", &good), Vec::<String>::new());
    let bad = [
        json!({"subject": "did:plc:b", "links": [], "extra": 1}),
        json!({"links": []}),
        json!({"subject": "did:plc:b", "links": [{"uri": "x", "did": "did:plc:a", "collection": "a.b.c", "rkey": "k"}]}),
        json!({"subject": null, "links": []}),
        json!({"subject": "did:plc:b", "links": [], "cursor": 5}),
    ];
    for b in bad {
        assert!(!conform.output("dev.sluice.getBacklinks", &b).is_empty(), "{b} is refused");
    }
    let identity = json!({"id": 3, "type": "identity", "identity": {"did": "did:plc:a", "handle": null}});
    assert_eq!(conform.message("dev.sluice.subscribeEvents", &identity), Vec::<String>::new(), "nullable handle");
    let account = json!({"id": 3, "type": "account", "account": {"did": "did:plc:a", "active": true}});
    assert!(!conform.message("dev.sluice.subscribeEvents", &account).is_empty(), "status is always written");
    let info = json!({"info": "OutdatedCursor", "message": "m"});
    assert_eq!(conform.message("dev.sluice.subscribeEvents", &info), Vec::<String>::new());
}

/// The lint finds typos and misplaced types.
#[test]
fn the_lint_finds_what_it_should() {
    let bad = [
        json!({"type": "object", "properties": {"a": {"type": "string"}}, "requried": ["a"]}),
        json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}),
        json!({"type": "object", "properties": {"a": {"type": "string", "format": "didd"}}}),
        json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": 5, "maximum": 1}}}),
        json!({"type": "query", "parameters": {"type": "params", "properties": {"a": {"type": "object", "properties": {}}}}}),
        json!({"type": "query", "errors": [{"name": "A"}, {"name": "A"}]}),
        json!({"type": "strin"}),
    ];
    for b in bad {
        let mut errs = Vec::new();
        lint(&b, Place::Main, "t", &mut errs);
        assert!(!errs.is_empty(), "{b} is refused");
    }
    let mut errs = Vec::new();
    lint(&json!({"type": "query"}), Place::Def, "t", &mut errs);
    assert!(!errs.is_empty(), "a query is only a main def");
}
