//! Reading a lexicon directory: every file's `id` (and main def's type) in one cheap pass,
//! whole documents only for the collections asked for and what their record defs reach.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use jacquard_common::IntoStatic;
use jacquard_common::deps::smol_str::SmolStr;
use jacquard_lexicon::lexicon::{LexArrayItem, LexObject, LexObjectProperty, LexRecordRecord, LexUserType, LexiconDoc};
use jacquard_lexicon::ref_utils::RefPath;
use jacquard_lexicon::schema::SchemaRegistry;
use jacquard_lexicon::validation::SchemaValidator;
use sluice_handlers::nsid_matches;

use super::{LexiconError, Lexicons};

/// What the first pass reads of a file: its id and whether its main def is a record.
#[derive(serde::Deserialize)]
struct Head {
    id: String,
    #[serde(default)]
    defs: HeadDefs,
}

#[derive(serde::Deserialize, Default)]
struct HeadDefs {
    main: Option<HeadDef>,
}

#[derive(serde::Deserialize)]
struct HeadDef {
    #[serde(rename = "type")]
    kind: String,
}

/// A file of the directory, read but (until needed) not parsed.
struct File {
    path: PathBuf,
    text: Vec<u8>,
    is_record: bool,
}

pub(super) fn load(dir: &Path, collections: &[String]) -> Result<Lexicons, LexiconError> {
    let mut paths = Vec::new();
    json_files(dir, &mut paths)?;
    paths.sort();
    let mut files: BTreeMap<String, File> = BTreeMap::new();
    for path in paths {
        let text = std::fs::read(&path).map_err(|e| LexiconError::new(&path, format!("cannot read: {e}")))?;
        let head: Head = serde_json::from_slice(&text).map_err(|e| LexiconError::new(&path, json_problem(&e)))?;
        if let Some(other) = files.get(&head.id) {
            let reason = format!("id {} is also the id of {}", head.id, other.path.display());
            return Err(LexiconError::new(&path, reason));
        }
        let is_record = head.defs.main.is_some_and(|m| m.kind == "record");
        files.insert(head.id, File { path, text, is_record });
    }

    let wanted = |id: &str| collections.is_empty() || collections.iter().any(|p| nsid_matches(p, id));
    let records: Vec<String> =
        files.iter().filter(|(id, f)| f.is_record && wanted(id)).map(|(id, _)| id.clone()).collect();

    let mut docs: HashMap<SmolStr, LexiconDoc<'static>> = HashMap::new();
    let mut validators = HashMap::new();
    for collection in records {
        let reached = reach(&files, &mut docs, &collection)?;
        let registry = SchemaRegistry::new();
        for (nsid, defs) in reached {
            let doc = &docs[nsid.as_str()];
            let mut pruned = LexiconDoc { lexicon: doc.lexicon, id: doc.id.clone(), ..Default::default() };
            for def in defs {
                pruned.defs.insert(def.clone(), doc.defs[&def].clone());
            }
            registry.insert(nsid, pruned);
        }
        validators.insert(SmolStr::new(&collection), SchemaValidator::from_registry(registry));
    }
    Ok(Lexicons { validators, docs })
}

/// Every `*.json` file under `dir`, recursively.
fn json_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LexiconError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LexiconError::new(dir, format!("cannot list: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| LexiconError::new(dir, format!("cannot list: {e}")))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| LexiconError::new(&path, format!("cannot stat: {e}")))?;
        if kind.is_dir() {
            json_files(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// A JSON error as a reason: broken JSON, or JSON that is not a lexicon document.
fn json_problem(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => format!("not a lexicon document: {e}"),
        _ => format!("bad JSON: {e}"),
    }
}

/// Parses `id`'s document into `docs` (once).
fn parse<'d>(
    files: &BTreeMap<String, File>,
    docs: &'d mut HashMap<SmolStr, LexiconDoc<'static>>,
    id: &str,
) -> Result<Option<&'d LexiconDoc<'static>>, LexiconError> {
    if !docs.contains_key(id) {
        let Some(file) = files.get(id) else { return Ok(None) };
        let problem = |e: serde_json::Error| LexiconError::new(&file.path, json_problem(&e));
        // Parsed as written first, so that errors give the file's own lines and columns.
        serde_json::from_slice::<LexiconDoc<'_>>(&file.text).map_err(problem)?;
        let mut value: serde_json::Value = serde_json::from_slice(&file.text).map_err(problem)?;
        strip(&mut value);
        let text = value.to_string();
        let doc: LexiconDoc<'_> = serde_json::from_str(&text).map_err(problem)?;
        docs.insert(SmolStr::new(id), doc.into_static());
    }
    Ok(docs.get(id))
}

/// Removes what no check reads, descriptions and `knownValues`: jacquard clones the defs it
/// looks up on every record, and these were most of their strings (a post's check took a
/// third less time without them).
fn strip(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            // Only string descriptions: a property may be named `description`.
            map.retain(|k, v| !((k == "description" && v.is_string()) || (k == "knownValues" && v.is_array())));
            map.values_mut().for_each(strip);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

/// The defs `collection`'s record def reaches, by document: itself, and every ref and union
/// member, transitively. A ref to a def the directory lacks is an error of the file holding it.
fn reach(
    files: &BTreeMap<String, File>,
    docs: &mut HashMap<SmolStr, LexiconDoc<'static>>,
    collection: &str,
) -> Result<BTreeMap<SmolStr, BTreeSet<SmolStr>>, LexiconError> {
    let mut reached: BTreeMap<SmolStr, BTreeSet<SmolStr>> = BTreeMap::new();
    let mut todo = vec![(SmolStr::new(collection), SmolStr::new_static("main"), None::<(SmolStr, String)>)];
    while let Some((nsid, def, from)) = todo.pop() {
        if reached.get(&nsid).is_some_and(|defs| defs.contains(&def)) {
            continue;
        }
        let missing = |what: String| match &from {
            Some((holder, r)) => {
                let path = files.get(holder.as_str()).map(|f| f.path.clone()).unwrap_or_default();
                LexiconError::new(&path, format!("ref {r} ({what}) is not in the directory"))
            }
            None => LexiconError::new(Path::new(collection), what),
        };
        let Some(doc) = parse(files, docs, &nsid)? else { return Err(missing(format!("no document {nsid}"))) };
        let Some(body) = doc.defs.get(def.as_str()) else { return Err(missing(format!("no def {def} in {nsid}"))) };
        let mut refs = Vec::new();
        def_refs(body, &mut refs);
        for r in refs {
            let target = RefPath::parse(&r, Some(nsid.as_str()));
            let (t_nsid, t_def) = (SmolStr::new(target.nsid()), SmolStr::new(target.def()));
            todo.push((t_nsid, t_def, Some((nsid.clone(), r))));
        }
        reached.entry(nsid).or_default().insert(def);
    }
    Ok(reached)
}

/// The refs (and union members) a def names, as written.
pub(super) fn def_refs(def: &LexUserType<'_>, out: &mut Vec<String>) {
    match def {
        LexUserType::Record(r) => {
            let LexRecordRecord::Object(o) = &r.record;
            object_refs(o, out);
        }
        LexUserType::Object(o) => object_refs(o, out),
        LexUserType::Array(a) => item_refs(&a.items, out),
        LexUserType::Union(u) => out.extend(u.refs.iter().map(|r| r.to_string())),
        _ => {}
    }
}

fn object_refs(o: &LexObject<'_>, out: &mut Vec<String>) {
    for prop in o.properties.values() {
        match prop {
            LexObjectProperty::Ref(r) => out.push(r.r#ref.to_string()),
            LexObjectProperty::Union(u) => out.extend(u.refs.iter().map(|r| r.to_string())),
            LexObjectProperty::Array(a) => item_refs(&a.items, out),
            LexObjectProperty::Object(o) => object_refs(o, out),
            _ => {}
        }
    }
}

fn item_refs(item: &LexArrayItem<'_>, out: &mut Vec<String>) {
    match item {
        LexArrayItem::Ref(r) => out.push(r.r#ref.to_string()),
        LexArrayItem::Union(u) => out.extend(u.refs.iter().map(|r| r.to_string())),
        LexArrayItem::Object(o) => object_refs(o, out),
        _ => {}
    }
}
