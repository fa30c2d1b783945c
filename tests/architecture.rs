//! The architecture's arrows, checked against the sources: which module may name which
//! (ARCHITECTURE.md's invariants), and that no modules name each other in a circle. A module's
//! references are the `crate::` and `super::` paths in its file, outside `#[cfg(test)]` modules
//! and comments; a submodule naming its own ancestors is part of them, not an arrow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A crate's modules (`a::b`, "" for the crate root) and the modules each names.
struct Modules {
    refs: BTreeMap<String, BTreeSet<String>>,
    /// The full paths each module names, for rules on items (e.g. `backfill::Control`).
    paths: BTreeMap<String, BTreeSet<String>>,
}

impl Modules {
    /// Reads every `.rs` file under `src` (a crate's `src/` folder).
    fn read(src: &Path) -> Modules {
        let mut files = Vec::new();
        walk(src, &mut files);
        let mut raw = BTreeMap::new();
        for file in &files {
            let rel = file.strip_prefix(src).unwrap();
            let (module, is_folder) = module_of(rel);
            let text = std::fs::read_to_string(file).unwrap();
            raw.insert(module.clone(), named_paths(&code_of(&text), &module, is_folder));
        }
        let known: BTreeSet<String> = raw.keys().cloned().collect();
        let mut refs = BTreeMap::new();
        let mut paths = BTreeMap::new();
        for (module, named) in raw {
            let targets = named
                .iter()
                .filter_map(|path| resolve(&known, path))
                .filter(|target| *target != module && !is_ancestor(target, &module))
                .collect();
            refs.insert(module.clone(), targets);
            paths.insert(module, named.into_iter().map(|p| p.join("::")).collect());
        }
        Modules { refs, paths }
    }

    /// The top-level modules `top` names (through any of its files).
    fn top_level_refs(&self, top: &str) -> BTreeSet<String> {
        self.refs
            .iter()
            .filter(|(m, _)| top_of(m) == top)
            .flat_map(|(_, targets)| targets.iter().map(|t| top_of(t).to_string()))
            .filter(|t| t != top)
            .collect()
    }

    /// Modules that name each other in a circle (each circle's members), by Tarjan's algorithm.
    fn circles(&self) -> Vec<Vec<String>> {
        let mut t = Tarjan { index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), next: 0, out: vec![] };
        for m in self.refs.keys() {
            if !t.index.contains_key(m) {
                t.visit(m, &self.refs);
            }
        }
        t.out
    }
}

struct Tarjan {
    index: BTreeMap<String, usize>,
    low: BTreeMap<String, usize>,
    stack: Vec<String>,
    next: usize,
    out: Vec<Vec<String>>,
}

impl Tarjan {
    fn visit(&mut self, v: &str, refs: &BTreeMap<String, BTreeSet<String>>) {
        self.index.insert(v.to_string(), self.next);
        self.low.insert(v.to_string(), self.next);
        self.next += 1;
        self.stack.push(v.to_string());
        for w in refs.get(v).into_iter().flatten() {
            if !self.index.contains_key(w) {
                self.visit(w, refs);
                let low = self.low[v].min(self.low[w]);
                self.low.insert(v.to_string(), low);
            } else if self.stack.contains(w) {
                let low = self.low[v].min(self.index[w]);
                self.low.insert(v.to_string(), low);
            }
        }
        if self.low[v] == self.index[v] {
            let at = self.stack.iter().rposition(|m| m == v).unwrap();
            let circle: Vec<String> = self.stack.drain(at..).collect();
            if circle.len() > 1 {
                self.out.push(circle);
            }
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `firehose/live.rs` -> ("firehose::live", false); `firehose/mod.rs` -> ("firehose", true).
fn module_of(rel: &Path) -> (String, bool) {
    let mut parts: Vec<String> =
        rel.with_extension("").components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let is_folder = matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main"));
    if is_folder {
        parts.pop();
    }
    (parts.join("::"), is_folder || parts.is_empty())
}

/// A file's code: without its `#[cfg(test)] mod tests` (at the end of the file, as everywhere
/// here) and its comments.
fn code_of(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The crate paths `code` names, as segments from the crate root: `crate::a::b` and
/// `super::c` (resolved against `module`), each path of a `use crate::{a, b::{c, d}}` apart.
fn named_paths(code: &str, module: &str, is_folder: bool) -> Vec<Vec<String>> {
    let here: Vec<String> = module.split("::").filter(|s| !s.is_empty()).map(String::from).collect();
    let parent: Vec<String> = if is_folder { here.clone() } else { here[..here.len().saturating_sub(1)].to_vec() };
    let mut out = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent[..parent.len().saturating_sub(1)].to_vec())] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                use_tree(rest, base.clone(), &mut out);
            }
        }
    }
    out
}

/// Reads the path (or group of paths) at the start of `s` after `prefix`: `a::b`, `a::{b, c::d}`.
fn use_tree(mut s: &str, mut path: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        let ident: String = s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if ident.is_empty() {
            if let Some(group) = s.strip_prefix('{') {
                for item in group_items(group) {
                    use_tree(item.trim_start(), path.clone(), out);
                }
                return;
            }
            break;
        }
        s = &s[ident.len()..];
        path.push(ident);
        match s.strip_prefix("::") {
            Some(rest) => s = rest,
            None => break,
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// The comma-separated items of a `{...}` group whose `{` is just before `s`.
fn group_items(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&s[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

/// The longest module that `path` starts with.
fn resolve(known: &BTreeSet<String>, path: &[String]) -> Option<String> {
    (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| known.contains(m))
}

fn is_ancestor(a: &str, m: &str) -> bool {
    a.is_empty() || m.starts_with(&format!("{a}::"))
}

fn top_of(module: &str) -> &str {
    module.split("::").next().unwrap_or("")
}

#[test]
fn no_modules_name_each_other_in_a_circle() {
    for krate in ["src", "devnet/src", "cli/src", "handlers/src", "testkit/src"] {
        let circles = Modules::read(&root().join(krate)).circles();
        assert!(circles.is_empty(), "{krate}: modules in a circle: {circles:?}");
    }
}

#[test]
fn each_module_names_only_what_the_architecture_lets_it() {
    let sluice = Modules::read(&root().join("src"));
    let only = |module: &str, allowed: &[&str]| {
        let names = sluice.top_level_refs(module);
        let extra: Vec<_> = names.iter().filter(|m| !allowed.contains(&m.as_str())).collect();
        assert!(extra.is_empty(), "{module} names {extra:?}; it may name only {allowed:?}");
    };
    let never = |module: &str, forbidden: &[&str]| {
        let names = sluice.top_level_refs(module);
        let found: Vec<_> = names.iter().filter(|m| forbidden.contains(&m.as_str())).collect();
        assert!(found.is_empty(), "{module} names {found:?}, which it must know nothing of");
    };
    // The ground floor, and what sits on it.
    only("process", &[]);
    only("syntax", &[]);
    only("repo", &["syntax", "process"]);
    only("indexes", &[]);
    only("lexicon", &["syntax"]);
    only("filter", &["syntax", "indexes", "lexicon"]);
    only("config", &["process", "cluster", "repo", "syntax", "http"]);
    only("wire", &["store"]);
    // The store knows nothing of CARs, the filter or the network; it keeps index entries, whose
    // definitions and extraction are `indexes`'s.
    only("store", &["process", "syntax", "indexes"]);
    // The pipeline never does network I/O.
    never("pipeline", &["backfill", "firehose", "server", "sink", "identity", "handles", "http", "service"]);
    // Live ingestion stands beside the backfill, not on it; the sink only reads the log.
    never("firehose", &["backfill", "server", "sink", "service"]);
    never("sink", &["backfill", "firehose", "pipeline", "server", "service"]);
    never("backfill", &["firehose", "server", "sink", "service"]);
    // The server holds the backfill's control handle and nothing else of it but the plain
    // values the handle hands out (a snapshot of the counters, kept for rates).
    let into_backfill: BTreeSet<&String> = sluice
        .paths
        .iter()
        .filter(|(m, _)| top_of(m) == "server")
        .flat_map(|(_, paths)| paths.iter().filter(|p| top_of(p) == "backfill"))
        .collect();
    assert!(
        into_backfill.iter().all(|p| ["backfill::Control", "backfill::Snapshot"].contains(&p.as_str())),
        "server/ names {into_backfill:?} of the backfill; it may hold only backfill::Control (and Snapshot)"
    );
}

#[test]
fn the_library_does_not_depend_on_the_devnet_or_test_support() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let normal = manifest.split("[dependencies]").nth(1).unwrap().split("\n[").next().unwrap();
    for crate_name in ["sluice-devnet", "sluice-testkit", "sluice-cli"] {
        assert!(!normal.contains(crate_name), "sluice's [dependencies] name {crate_name}");
    }
}

#[test]
fn the_checker_reads_paths_and_finds_circles() {
    let code = "use crate::store::{self, Store, values::{A, B}};\nfn f() { crate::x::y(); super::z::w(); }";
    let paths: Vec<String> = named_paths(code, "a::b", false).into_iter().map(|p| p.join("::")).collect();
    assert_eq!(paths, ["store::self", "store::Store", "store::values::A", "store::values::B", "x::y", "z::w"]);
    let in_folder: Vec<String> = named_paths("super::c::d", "a::b", true).into_iter().map(|p| p.join("::")).collect();
    assert_eq!(in_folder, ["a::c::d"], "super:: of a folder's mod.rs is the folder's parent");
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    let refs = BTreeMap::from([
        ("a".to_string(), set(&["b"])),
        ("b".to_string(), set(&["c"])),
        ("c".to_string(), set(&["a"])),
        ("d".to_string(), set(&["a"])),
    ]);
    let mut circles = Modules { refs, paths: BTreeMap::new() }.circles();
    circles.iter_mut().for_each(|c| c.sort());
    assert_eq!(circles, [vec!["a".to_string(), "b".to_string(), "c".to_string()]]);
}
