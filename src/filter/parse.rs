//! Filter TOML: parsing with errors that name the file, line and reason, and writing back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use sluice_handlers::HandlerSettings;
use toml::Spanned;

use super::{Filter, HandlerConfig, Mode};
use crate::syntax::{is_did, nsid_pattern_problem};

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
    Ok(Filter {
        mode,
        signals,
        collections: ctx.patterns("collections", raw.collections)?,
        exclude_collections: ctx.patterns("exclude_collections", raw.exclude_collections)?,
        dids: ctx.dids("dids", raw.dids)?,
        exclude_dids: ctx.dids("exclude_dids", raw.exclude_dids)?,
        handlers,
    })
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
    toml::to_string(&doc).expect("a TOML table always serializes")
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
