//! Filter TOML: parsing with errors that name the file, line and reason, and writing back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use sluice_handlers::HandlerSettings;
use toml::Spanned;

use super::{Filter, HandlerConfig, LexiconSettings, Mode};
use crate::indexes::spec::MAX_KEY_PARTS;
use crate::indexes::{FieldPath, IndexSpec, PerRepo, Sort};
use crate::lexicon::{Lexicons, UnknownMode, ValidateMode};
use crate::syntax::{is_did, is_nsid, nsid_pattern_problem};

/// A refused filter: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FilterError {
    /// The file (or other origin) of the text.
    pub origin: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.origin, line, self.reason),
            None => write!(f, "{}: {}", self.origin, self.reason),
        }
    }
}

impl FilterError {
    pub(super) fn io(origin: &str, e: &std::io::Error) -> Self {
        Self { origin: origin.to_string(), line: None, reason: format!("cannot read: {e}") }
    }
}

/// The file as written, with spans for error lines.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    mode: Option<Spanned<String>>,
    #[serde(default)]
    signals: Vec<Spanned<String>>,
    #[serde(default)]
    collections: Vec<Spanned<String>>,
    #[serde(default)]
    exclude_collections: Vec<Spanned<String>>,
    #[serde(default)]
    dids: Vec<Spanned<String>>,
    #[serde(default)]
    exclude_dids: Vec<Spanned<String>>,
    #[serde(default)]
    handlers: BTreeMap<String, Spanned<toml::Table>>,
    #[serde(default)]
    indexes: BTreeMap<String, Spanned<RawIndex>>,
    lexicons: Option<Spanned<RawLexicons>>,
}

/// The `[lexicons]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLexicons {
    dir: Spanned<String>,
    validate: Option<Spanned<String>>,
    unknown: Option<Spanned<String>>,
}

/// One `[indexes.NAME]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIndex {
    collection: Spanned<String>,
    #[serde(default)]
    key: Vec<Spanned<String>>,
    sort: Option<Spanned<String>>,
    sort_type: Option<Spanned<String>>,
    #[serde(default)]
    count: bool,
    per_repo: Option<Spanned<String>>,
    method: Option<Spanned<String>>,
}

struct Ctx<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Ctx<'_> {
    fn err(&self, offset: Option<usize>, reason: impl Into<String>) -> FilterError {
        let line = offset.map(|o| self.text[..o.min(self.text.len())].matches('\n').count() + 1);
        FilterError { origin: self.origin.to_string(), line, reason: reason.into() }
    }

    fn patterns(&self, field: &str, raw: Vec<Spanned<String>>) -> Result<Vec<String>, FilterError> {
        raw.into_iter()
            .map(|p| match nsid_pattern_problem(p.get_ref()) {
                Some(problem) => Err(self.err(Some(p.span().start), format!("{field}: {problem}"))),
                None => Ok(p.into_inner()),
            })
            .collect()
    }

    fn dids(&self, field: &str, raw: Vec<Spanned<String>>) -> Result<BTreeSet<String>, FilterError> {
        raw.into_iter()
            .map(|d| {
                if is_did(d.get_ref()) {
                    Ok(d.into_inner())
                } else {
                    Err(self.err(Some(d.span().start), format!("{field}: `{}` is not a valid DID", d.get_ref())))
                }
            })
            .collect()
    }

    fn handler(&self, name: &str, table: Spanned<toml::Table>) -> Result<HandlerConfig, FilterError> {
        let at = Some(table.span().start);
        let Some(handler) = sluice_handlers::find(name) else {
            let known: Vec<_> = sluice_handlers::registered().iter().map(|h| h.name()).collect();
            return Err(self.err(at, format!("[handlers.{name}]: no such handler (registered: {})", known.join(", "))));
        };
        let mut table = table.into_inner();
        let enabled = match table.remove("enabled") {
            None => None,
            Some(toml::Value::Boolean(b)) => Some(b),
            Some(_) => return Err(self.err(at, format!("[handlers.{name}]: `enabled` must be true or false"))),
        };
        let settings = HandlerSettings::new(table);
        handler.configure(&settings).map_err(|e| self.err(at, format!("[handlers.{name}]: {e}")))?;
        Ok(HandlerConfig { enabled, settings })
    }
}

/// The most indexes a filter may declare: each costs writes on every record of its collection.
pub const MAX_INDEXES: usize = 32;

impl Ctx<'_> {
    /// Checks one `[indexes.NAME]` table against the rest of the filter (`stored` tells
    /// whether a collection is stored).
    fn index(
        &self,
        name: &str,
        raw: Spanned<RawIndex>,
        stored: &dyn Fn(&str) -> bool,
    ) -> Result<IndexSpec, FilterError> {
        let at = Some(raw.span().start);
        let table = format!("[indexes.{name}]");
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(self.err(at, format!("{table}: an index name is 1 to 64 letters, digits, `_` or `-`")));
        }
        let raw = raw.into_inner();
        self.index_collection(&table, &raw.collection, stored)?;
        if raw.key.len() > MAX_KEY_PARTS {
            return Err(self.err(at, format!("{table}: more than {MAX_KEY_PARTS} key parts")));
        }
        let key = raw
            .key
            .iter()
            .map(|p| {
                FieldPath::parse(p.get_ref()).map_err(|e| self.err(Some(p.span().start), format!("{table}: key: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sort_at = raw.sort.as_ref().map(|s| s.span().start).or(at);
        let sort_type = raw.sort_type.as_ref().map(|t| t.get_ref().as_str());
        let sort = Sort::parse(raw.sort.as_ref().map_or("rkey", |s| s.get_ref()), sort_type)
            .map_err(|e| self.err(sort_at, format!("{table}: {e}")))?;
        Ok(IndexSpec {
            name: name.to_string(),
            collection: raw.collection.into_inner(),
            key,
            sort,
            count: raw.count,
            per_repo: self.index_per_repo(&table, raw.per_repo.as_ref())?,
            method: self.index_method(&table, raw.method)?,
        })
    }

    /// An index's `collection`: one NSID the filter stores.
    fn index_collection(
        &self,
        table: &str,
        collection: &Spanned<String>,
        stored: &dyn Fn(&str) -> bool,
    ) -> Result<(), FilterError> {
        let (at, nsid) = (Some(collection.span().start), collection.get_ref());
        if !is_nsid(nsid) {
            return Err(self.err(at, format!("{table}: collection `{nsid}` is not one NSID")));
        }
        if !stored(nsid) {
            let reason = format!("{table}: collection `{nsid}` is not stored by this filter (see `collections`)");
            return Err(self.err(at, reason));
        }
        Ok(())
    }

    /// An index's `per_repo`: `all` (the default) or `latest`.
    fn index_per_repo(&self, table: &str, per_repo: Option<&Spanned<String>>) -> Result<PerRepo, FilterError> {
        match per_repo.map(|p| (p.get_ref().as_str(), p.span().start)) {
            None | Some(("all", _)) => Ok(PerRepo::All),
            Some(("latest", _)) => Ok(PerRepo::Latest),
            Some((other, at)) => {
                Err(self.err(Some(at), format!("{table}: per_repo: `{other}` is neither \"all\" nor \"latest\"")))
            }
        }
    }

    /// An index's `method`: an NSID of the app's own, outside `com.atproto.*` and sluice's.
    fn index_method(&self, table: &str, method: Option<Spanned<String>>) -> Result<Option<String>, FilterError> {
        match method {
            Some(m)
                if !is_nsid(m.get_ref())
                    || m.get_ref().starts_with("com.atproto.")
                    || m.get_ref().starts_with("dev.sluice.") =>
            {
                let reason = format!("{table}: method `{}` is not an NSID of the app's own", m.get_ref());
                Err(self.err(Some(m.span().start), reason))
            }
            m => Ok(m.map(Spanned::into_inner)),
        }
    }

    fn indexes(
        &self,
        raw: BTreeMap<String, Spanned<RawIndex>>,
        stored: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<IndexSpec>, FilterError> {
        if raw.len() > MAX_INDEXES {
            let at = raw.values().nth(MAX_INDEXES).map(|t| t.span().start);
            return Err(self.err(at, format!("more than {MAX_INDEXES} indexes")));
        }
        let mut methods: BTreeMap<String, String> = BTreeMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for (name, table) in raw {
            let at = Some(table.span().start);
            let spec = self.index(&name, table, stored)?;
            if let Some(method) = &spec.method
                && let Some(other) = methods.insert(method.clone(), name.clone())
            {
                return Err(
                    self.err(at, format!("[indexes.{name}]: method `{method}` is already served by [indexes.{other}]"))
                );
            }
            out.push(spec);
        }
        Ok(out)
    }
}

impl Ctx<'_> {
    /// Checks the `[lexicons]` table and, unless `validate = "off"`, loads the lexicons of the
    /// `collections` stored from `dir` (relative to the filter file).
    fn lexicons(&self, raw: Spanned<RawLexicons>, collections: &[String]) -> Result<LexiconSettings, FilterError> {
        let raw = raw.into_inner();
        let mode = |v: &Option<Spanned<String>>| v.as_ref().map(|v| (v.get_ref().clone(), v.span().start));
        let validate = match mode(&raw.validate) {
            None => ValidateMode::Off,
            Some((v, at)) => ValidateMode::parse(&v).map_err(|e| self.err(Some(at), format!("[lexicons]: {e}")))?,
        };
        let unknown = match mode(&raw.unknown) {
            None => UnknownMode::Pass,
            Some((v, at)) => UnknownMode::parse(&v).map_err(|e| self.err(Some(at), format!("[lexicons]: {e}")))?,
        };
        let dir = raw.dir.get_ref().clone();
        let base = std::path::Path::new(self.origin).parent().unwrap_or(std::path::Path::new(""));
        let path = base.join(&dir);
        let loaded = match validate {
            ValidateMode::Off => None,
            _ => Some(std::sync::Arc::new(
                Lexicons::load(&path, collections)
                    .map_err(|e| self.err(Some(raw.dir.span().start), format!("[lexicons] dir: {e}")))?,
            )),
        };
        Ok(LexiconSettings { dir, path, validate, unknown, loaded })
    }
}

pub(super) fn parse(text: &str, origin: &str) -> Result<Filter, FilterError> {
    let ctx = Ctx { text, origin };
    let raw: RawFilter =
        toml::from_str(text).map_err(|e| ctx.err(e.span().map(|s| s.start), e.message().trim().to_string()))?;
    let mode = match raw.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span().start)) {
        None | Some(("full", _)) => Mode::Full,
        Some(("signal", _)) => Mode::Signal,
        Some((other, at)) => {
            return Err(ctx.err(Some(at), format!("mode: `{other}` is neither \"full\" nor \"signal\"")));
        }
    };
    let signals = ctx.patterns("signals", raw.signals)?;
    if mode == Mode::Signal && signals.is_empty() {
        let at = raw.mode.as_ref().map(|m| m.span().start);
        return Err(ctx.err(at, "mode = \"signal\" needs at least one entry in `signals`"));
    }
    let handlers = raw
        .handlers
        .into_iter()
        .map(|(name, table)| ctx.handler(&name, table).map(|c| (name, c)))
        .collect::<Result<_, _>>()?;
    let mut filter = Filter {
        mode,
        signals,
        collections: ctx.patterns("collections", raw.collections)?,
        exclude_collections: ctx.patterns("exclude_collections", raw.exclude_collections)?,
        dids: ctx.dids("dids", raw.dids)?,
        exclude_dids: ctx.dids("exclude_dids", raw.exclude_dids)?,
        handlers,
        indexes: Vec::new(),
        lexicons: None,
    };
    filter.indexes = ctx.indexes(raw.indexes, &|c| filter.wants_collection(c))?;
    if let Some(lexicons) = raw.lexicons {
        filter.lexicons = Some(ctx.lexicons(lexicons, &filter.collections)?);
    }
    Ok(filter)
}

pub(super) fn to_toml(filter: &Filter) -> String {
    let mut doc = toml::Table::new();
    let list = |items: &mut dyn Iterator<Item = &String>| {
        toml::Value::Array(items.map(|s| toml::Value::String(s.clone())).collect())
    };
    doc.insert("mode".into(), toml::Value::String(filter.mode.as_str().into()));
    doc.insert("signals".into(), list(&mut filter.signals.iter()));
    doc.insert("collections".into(), list(&mut filter.collections.iter()));
    doc.insert("exclude_collections".into(), list(&mut filter.exclude_collections.iter()));
    doc.insert("dids".into(), list(&mut filter.dids.iter()));
    doc.insert("exclude_dids".into(), list(&mut filter.exclude_dids.iter()));
    let mut handlers = toml::Table::new();
    for (name, config) in &filter.handlers {
        let mut table = config.settings.table().clone();
        if let Some(enabled) = config.enabled {
            table.insert("enabled".into(), toml::Value::Boolean(enabled));
        }
        handlers.insert(name.clone(), toml::Value::Table(table));
    }
    doc.insert("handlers".into(), toml::Value::Table(handlers));
    let mut indexes = toml::Table::new();
    for spec in &filter.indexes {
        indexes.insert(spec.name.clone(), toml::Value::Table(index_table(spec)));
    }
    if !indexes.is_empty() {
        doc.insert("indexes".into(), toml::Value::Table(indexes));
    }
    if let Some(l) = &filter.lexicons {
        let mut t = toml::Table::new();
        t.insert("dir".into(), toml::Value::String(l.dir.clone()));
        t.insert("validate".into(), toml::Value::String(l.validate.as_str().into()));
        t.insert("unknown".into(), toml::Value::String(l.unknown.as_str().into()));
        doc.insert("lexicons".into(), toml::Value::Table(t));
    }
    toml::to_string(&doc).expect("a TOML table always serializes")
}

/// An index's table as the filter file writes it.
fn index_table(spec: &IndexSpec) -> toml::Table {
    let mut t = toml::Table::new();
    let text = |s: &str| toml::Value::String(s.to_string());
    t.insert("collection".into(), text(&spec.collection));
    t.insert("key".into(), toml::Value::Array(spec.key.iter().map(|p| text(p.as_str())).collect()));
    t.insert("sort".into(), text(&spec.sort.as_text()));
    if let Sort::Field(_, kind) = &spec.sort {
        t.insert("sort_type".into(), text(kind.as_str()));
    }
    t.insert("count".into(), toml::Value::Boolean(spec.count));
    if spec.per_repo == PerRepo::Latest {
        t.insert("per_repo".into(), text("latest"));
    }
    if let Some(method) = &spec.method {
        t.insert("method".into(), text(method));
    }
    t
}

/// The fuzz body for `filter_toml`: any text either parses into a filter whose written form
/// parses back to the same filter, or is refused with an error. Panics only on a real bug.
pub fn fuzz_filter_toml(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    if let Ok(filter) = parse(text, "fuzz") {
        let again = parse(&to_toml(&filter), "fuzz-roundtrip").expect("a written filter parses");
        assert_eq!(filter, again, "filter survives a write and re-read");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> FilterError {
        parse(text, "f.toml").unwrap_err()
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let e = err("mode = \"signal\"\nsignals = [\"xyz.statusphere.status\"]\ncollections = [\"app.bs*\"]\n");
        assert_eq!((e.origin.as_str(), e.line), ("f.toml", Some(3)));
        assert!(e.reason.contains("app.bs*"), "{e}");
        assert!(e.to_string().starts_with("f.toml:3: "));

        let e = err("mode = \"partial\"\n");
        assert_eq!(e.line, Some(1));
        assert!(e.reason.contains("partial"));

        let e = err("mode = \"full\"\ndids = [\"did:plc:ok\", \"not-a-did\"]\n");
        assert_eq!(e.line, Some(2));

        let e = err("mode = \"full\"\ncolections = []\n");
        assert_eq!(e.line, Some(2));
        assert!(e.reason.contains("colections"), "{e}");

        let e = err("mode = \"full\"\n[handlers.nope]\nx = 1\n");
        assert!(e.reason.contains("no such handler"), "{e}");

        let e = err("mode = \"signal\"\n");
        assert!(e.reason.contains("signals"), "{e}");

        let e = err("mode = [\n");
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn bad_indexes_are_refused_by_line() {
        let base = "mode = \"full\"\ncollections = [\"xyz.statusphere.*\"]\n";
        let e = err(&format!("{base}[indexes.a]\ncollection = \"app.bsky.feed.like\"\n"));
        assert_eq!(e.line, Some(4));
        assert!(e.reason.contains("not stored"), "{e}");
        let e = err(&format!("{base}[indexes.a]\ncollection = \"xyz.statusphere.status\"\nkey = [\"ok\", \"a..b\"]\n"));
        assert_eq!(e.line, Some(5));
        assert!(e.reason.contains("a..b"), "{e}");
        let e = err(&format!("{base}[indexes.a]\ncollection = \"xyz.statusphere.*\"\n"));
        assert!(e.reason.contains("not one NSID"), "{e}");
        let e = err(&format!("{base}[indexes.a]\ncollection = \"xyz.statusphere.status\"\nsort = \"langs[]\"\n"));
        assert!(e.reason.contains("fans out"), "{e}");
        let e = err(&format!("{base}[indexes.a]\ncollection = \"xyz.statusphere.status\"\nper_repo = \"first\"\n"));
        assert!(e.reason.contains("per_repo"), "{e}");
        let e = err(&format!("{base}[indexes.a]\ncollection = \"xyz.statusphere.status\"\nsorted = \"x\"\n"));
        assert!(e.reason.contains("sorted"), "{e}");
        let e =
            err(&format!("{base}[indexes.a]\ncollection = \"xyz.statusphere.status\"\nmethod = \"dev.sluice.x\"\n"));
        assert!(e.reason.contains("method"), "{e}");
        let two = format!(
            "{base}[indexes.a]\ncollection = \"xyz.statusphere.status\"\nmethod = \"a.b.c\"\n\
             [indexes.b]\ncollection = \"xyz.statusphere.status\"\nmethod = \"a.b.c\"\n"
        );
        assert!(err(&two).reason.contains("already served"), "{}", err(&two));
        let many: String =
            (0..=MAX_INDEXES).map(|i| format!("[indexes.i{i}]\ncollection = \"xyz.statusphere.status\"\n")).collect();
        assert!(err(&format!("{base}{many}")).reason.contains("more than"));
    }

    #[test]
    fn indexes_read_back() {
        let f = parse(
            "mode = \"full\"\n[indexes.likes]\ncollection = \"app.bsky.feed.like\"\nkey = [\"subject.uri\"]\n\
             sort = \"createdAt\"\ncount = true\n[indexes.latest]\ncollection = \"xyz.statusphere.status\"\n\
             sort = \"sortAt(createdAt)\"\nper_repo = \"latest\"\nmethod = \"xyz.statusphere.getLatest\"\n\
             [indexes.n]\ncollection = \"a.b.c\"\nsort = \"n\"\nsort_type = \"integer\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(f.indexes.len(), 3);
        assert_eq!(parse(&to_toml(&f), "g").unwrap(), f);
    }

    #[test]
    fn written_filter_reads_back() {
        let f = parse(
            "mode = \"signal\"\nsignals = [\"a.b.c\"]\ncollections = [\"a.b.*\"]\ndids = [\"did:plc:x\"]\n\
             [handlers.post]\nenabled = true\nlangs = [\"en\"]\n",
            "f",
        )
        .unwrap();
        assert_eq!(parse(&to_toml(&f), "g").unwrap(), f);
    }
}
