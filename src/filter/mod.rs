//! The filter: which repos and collections sluice indexes, and which handlers run.
//!
//! A [`Filter`] is immutable; the indexer reads the current one from a [`FilterHandle`]
//! (an `ArcSwap`) once per repo walk or commit, so a reload never changes the rules halfway
//! through a repo. [`Filter::from_toml`] reads the TOML file (errors name file, line and reason),
//! [`watch`] reloads it on save.
//!
//! Architecture invariant: the filter knows nothing of storage or the network.

#[cfg(test)]
mod arbitrary;
mod edit;
mod parse;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sluice_handlers::{CollectionHandler, HandlerSettings, nsid_matches};

pub use edit::rewrite_keeping_layout;
pub use parse::{FilterError, fuzz_filter_toml};

/// The text of `filters/everything.toml`, the default filter file: full mode, every
/// collection, every built-in handler. Written where a devnet run finds no filter file.
pub const EVERYTHING_TOML: &str = include_str!("../../filters/everything.toml");

/// Which repos are indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every repo.
    #[default]
    Full,
    /// Only repos holding at least one record in a signal collection.
    Signal,
}

impl Mode {
    /// The name used in the filter file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Signal => "signal",
        }
    }
}

/// A handler's switch and settings from the filter's `[handlers.<name>]` table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HandlerConfig {
    /// `enabled = true/false`; `None` means the handler's own default.
    pub enabled: Option<bool>,
    /// Every other key of the table.
    pub settings: HandlerSettings,
}

/// The filter model (see DESIGN.md, "Filter file"). Patterns and DIDs are validated on parse.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// Full or signal mode.
    pub mode: Mode,
    /// Signal collections (patterns); used in signal mode.
    pub signals: Vec<String>,
    /// Collections stored (patterns); empty means all.
    pub collections: Vec<String>,
    /// Collections never stored (patterns); wins over `collections`.
    pub exclude_collections: Vec<String>,
    /// Repos always tracked, whatever the mode.
    pub dids: BTreeSet<String>,
    /// Repos never tracked; wins over everything.
    pub exclude_dids: BTreeSet<String>,
    /// Per-handler switches and settings, by handler name.
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// Indexes over record fields (`[indexes.NAME]`), by name.
    pub indexes: Vec<crate::indexes::IndexSpec>,
    /// Records checked against lexicons (`[lexicons]`).
    pub lexicons: Option<LexiconSettings>,
}

/// The `[lexicons]` table: where the lexicons are and what becomes of a record that fails.
#[derive(Debug, Clone)]
pub struct LexiconSettings {
    /// `dir` as written (relative to the filter file).
    pub dir: String,
    /// `dir` resolved.
    pub path: std::path::PathBuf,
    /// What happens to a record that fails its lexicon.
    pub validate: crate::lexicon::ValidateMode,
    /// What happens to a record of a collection with no lexicon in `dir`.
    pub unknown: crate::lexicon::UnknownMode,
    /// The lexicons of the collections stored, loaded when `validate` is not `off`.
    pub loaded: Option<Arc<crate::lexicon::Lexicons>>,
}

/// Two settings are equal when they say the same (a reload of the same files is no change).
impl PartialEq for LexiconSettings {
    fn eq(&self, other: &Self) -> bool {
        (&self.dir, self.validate, self.unknown) == (&other.dir, other.validate, other.unknown)
    }
}

/// What the lexicon check says of a record (see [`CompiledFilter::check_lexicon`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LexiconVerdict {
    /// Store it (valid, not checked, or an unknown collection let through).
    Pass,
    /// Store it, and count and log why it fails (`validate = "log"`).
    Log(crate::lexicon::Rejection),
    /// Do not store it; count and log why (`validate = "drop"`).
    Drop(crate::lexicon::Rejection),
}

/// How the filter treats a repo before looking at its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoRule {
    /// In `exclude_dids`: never indexed.
    Excluded,
    /// In `dids`, or full mode: indexed.
    Tracked,
    /// Signal mode: indexed only if it holds a signal record.
    NeedsSignal,
}

/// A handler that runs under the current filter, with its settings.
#[derive(Clone)]
pub struct ActiveHandler {
    /// The registered handler.
    pub handler: &'static dyn CollectionHandler,
    /// Its settings from the filter.
    pub settings: HandlerSettings,
}

impl Filter {
    /// Parses a filter file's text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Filter, FilterError> {
        parse::parse(text, origin)
    }

    /// Reads and parses a filter file.
    pub fn load(path: &std::path::Path) -> Result<Filter, FilterError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| FilterError::io(&origin, &e))?;
        Self::from_toml(&text, &origin)
    }

    /// The filter as TOML text that parses back to an equal filter.
    pub fn to_toml(&self) -> String {
        parse::to_toml(self)
    }

    /// Whether records of `collection` are stored.
    pub fn wants_collection(&self, collection: &str) -> bool {
        (self.collections.is_empty() || self.collections.iter().any(|p| nsid_matches(p, collection)))
            && !self.exclude_collections.iter().any(|p| nsid_matches(p, collection))
    }

    /// Whether `collection` is a signal collection.
    pub fn is_signal(&self, collection: &str) -> bool {
        self.signals.iter().any(|p| nsid_matches(p, collection))
    }

    /// How the repo `did` is treated.
    pub fn repo_rule(&self, did: &str) -> RepoRule {
        if self.exclude_dids.contains(did) {
            RepoRule::Excluded
        } else if self.dids.contains(did) || self.mode == Mode::Full {
            RepoRule::Tracked
        } else {
            RepoRule::NeedsSignal
        }
    }

    /// The registered handlers switched on by this filter, with their settings.
    pub fn active_handlers(&self) -> Vec<ActiveHandler> {
        sluice_handlers::registered()
            .into_iter()
            .filter_map(|handler| {
                let config = self.handlers.get(handler.name());
                let enabled = config.and_then(|c| c.enabled).unwrap_or_else(|| handler.enabled_by_default());
                enabled.then(|| ActiveHandler {
                    handler,
                    settings: config.map(|c| c.settings.clone()).unwrap_or_default(),
                })
            })
            .collect()
    }
}

/// The filter in force, shared by every part of the indexer; swapped whole on reload. It also
/// holds what became of the file's last save, for `/health` and `/metrics` to show.
#[derive(Clone)]
pub struct FilterHandle {
    current: Arc<ArcSwap<CompiledFilter>>,
    saves: Arc<std::sync::Mutex<SaveStatus>>,
}

/// What became of the filter file's saves since the watch started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveStatus {
    /// Saves read and put in force (or found unchanged).
    pub accepted: u64,
    /// Saves refused.
    pub refused: u64,
    /// Why the last save was refused, while it stands: cleared by the next good one.
    pub error: Option<FilterError>,
    /// When the latest save was put in force (unix ms; none since start).
    pub accepted_at_ms: Option<u64>,
    /// When the latest save was refused (unix ms; none since start).
    pub refused_at_ms: Option<u64>,
}

/// A filter with its active handlers resolved, as the pipeline uses it.
pub struct CompiledFilter {
    /// The filter itself.
    pub filter: Filter,
    /// Handlers that run under it.
    pub handlers: Vec<ActiveHandler>,
}

impl CompiledFilter {
    /// Resolves the handlers of `filter`.
    pub fn new(filter: Filter) -> Self {
        let handlers = filter.active_handlers();
        Self { filter, handlers }
    }

    /// What the `[lexicons]` check says of a record of `collection` with DAG-CBOR `body`.
    pub fn check_lexicon(&self, collection: &str, body: &[u8]) -> LexiconVerdict {
        use crate::lexicon::{Rejection, UnknownMode, ValidateMode, Verdict};
        let Some(settings) = &self.filter.lexicons else { return LexiconVerdict::Pass };
        let Some(lexicons) = settings.loaded.as_ref().filter(|_| settings.validate != ValidateMode::Off) else {
            return LexiconVerdict::Pass;
        };
        let rejection = match lexicons.check(collection, body) {
            Verdict::Valid => return LexiconVerdict::Pass,
            Verdict::Unknown if settings.unknown == UnknownMode::Pass => return LexiconVerdict::Pass,
            // `unknown = "drop"` drops, whether failing records are dropped or only logged.
            Verdict::Unknown => {
                return LexiconVerdict::Drop(Rejection {
                    path: String::new(),
                    rule: "unknown lexicon".into(),
                    message: format!("no lexicon for {collection} in {}", settings.dir),
                });
            }
            Verdict::Invalid(rejection) => rejection,
        };
        match settings.validate {
            ValidateMode::Drop => LexiconVerdict::Drop(rejection),
            _ => LexiconVerdict::Log(rejection),
        }
    }

    /// The handlers that run on `collection`.
    pub fn handlers_for<'a>(&'a self, collection: &'a str) -> impl Iterator<Item = &'a ActiveHandler> + 'a {
        self.handlers.iter().filter(move |h| h.handler.collections().iter().any(|p| nsid_matches(p, collection)))
    }
}

impl FilterHandle {
    /// A handle holding `filter`.
    pub fn new(filter: Filter) -> Self {
        Self { current: Arc::new(ArcSwap::from_pointee(CompiledFilter::new(filter))), saves: Default::default() }
    }

    /// What became of the filter file's saves.
    pub fn saves(&self) -> SaveStatus {
        self.saves.lock().expect("filter save status lock").clone()
    }

    /// Records a save of the filter file: `Ok` put in force (or unchanged), `Err` refused.
    pub fn record_save(&self, outcome: Result<(), FilterError>) {
        let mut saves = self.saves.lock().expect("filter save status lock");
        match outcome {
            Ok(()) => (saves.accepted, saves.error, saves.accepted_at_ms) = (saves.accepted + 1, None, Some(unix_ms())),
            Err(e) => (saves.refused, saves.error, saves.refused_at_ms) = (saves.refused + 1, Some(e), Some(unix_ms())),
        }
    }

    /// The filter in force now (take it once per repo or commit).
    pub fn load(&self) -> Arc<CompiledFilter> {
        self.current.load_full()
    }

    /// Puts `filter` in force.
    pub fn store(&self, filter: Filter) {
        self.current.store(Arc::new(CompiledFilter::new(filter)));
    }
}

/// Now, in unix milliseconds.
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use arbitrary::filters;

    fn filter(text: &str) -> Filter {
        Filter::from_toml(text, "test.toml").unwrap()
    }

    /// The README's pattern rule, by segments: `*` matches all, `p.*` the NSIDs that start with
    /// p's segments and have more, anything else only itself.
    fn pattern_model(pattern: &str, nsid: &str) -> bool {
        match pattern.strip_suffix(".*") {
            _ if pattern == "*" => true,
            Some(prefix) => {
                let (prefix, nsid): (Vec<&str>, Vec<&str>) = (prefix.split('.').collect(), nsid.split('.').collect());
                nsid.len() > prefix.len() && nsid[..prefix.len()] == prefix[..]
            }
            None => pattern == nsid,
        }
    }

    /// Collections a filter may be asked about: those its patterns name, lookalikes and others.
    fn collections() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "app.bsky.feed.post",
            "app.bsky.feed.like",
            "app.bskyx.feed.post",
            "app.bsky",
            "xyz.statusphere.status",
            "xyz.statusphere.statusx",
            "com.example.a-b.c",
            "app.bsky.graph.follow",
        ])
        .prop_map(String::from)
    }

    proptest! {
        /// Stored collections: all when `collections` is empty, else those a pattern matches;
        /// an exclusion always wins. Signals are the collections a signal pattern matches.
        #[test]
        fn collection_rules_follow_the_model(f in filters(), collection in collections()) {
            let any = |patterns: &[String]| patterns.iter().any(|p| pattern_model(p, &collection));
            let wanted = (f.collections.is_empty() || any(&f.collections)) && !any(&f.exclude_collections);
            prop_assert_eq!(f.wants_collection(&collection), wanted);
            prop_assert_eq!(f.is_signal(&collection), any(&f.signals));
        }

        /// A repo in `exclude_dids` is never indexed; one in `dids` always is, as is any in full
        /// mode; in signal mode the rest need a signal record (the README's rules, as a table).
        #[test]
        fn repo_rules_follow_the_model(
            f in filters(),
            did in prop::sample::select(vec!["did:plc:aaaa", "did:web:example.com", "did:plc:zz22", "did:plc:other"]),
        ) {
            use RepoRule::*;
            // (listed in exclude_dids, listed in dids, full mode) -> rule.
            const RULES: [((bool, bool, bool), RepoRule); 8] = [
                ((true, true, true), Excluded),
                ((true, true, false), Excluded),
                ((true, false, true), Excluded),
                ((true, false, false), Excluded),
                ((false, true, true), Tracked),
                ((false, true, false), Tracked),
                ((false, false, true), Tracked),
                ((false, false, false), NeedsSignal),
            ];
            let case = (f.exclude_dids.contains(did), f.dids.contains(did), f.mode == Mode::Full);
            let want = RULES.iter().find(|(c, _)| *c == case).map(|(_, rule)| *rule).unwrap();
            prop_assert_eq!(f.repo_rule(did), want);
        }

        /// Any filter written out as TOML reads back equal.
        #[test]
        fn written_filters_read_back(f in filters()) {
            prop_assert_eq!(Filter::from_toml(&f.to_toml(), "written.toml").unwrap(), f);
        }
    }

    #[test]
    fn collections_empty_means_all_and_exclude_wins() {
        let f = filter(
            r#"mode = "full"
exclude_collections = ["app.bsky.feed.like"]"#,
        );
        assert!(f.wants_collection("app.bsky.feed.post"));
        assert!(!f.wants_collection("app.bsky.feed.like"));
        let f = filter(
            r#"mode = "full"
collections = ["xyz.statusphere.*", "app.bsky.actor.profile"]
exclude_collections = ["xyz.statusphere.secret"]"#,
        );
        assert!(f.wants_collection("xyz.statusphere.status"));
        assert!(f.wants_collection("app.bsky.actor.profile"));
        assert!(!f.wants_collection("app.bsky.feed.post"));
        assert!(!f.wants_collection("xyz.statusphere.secret"));
    }

    #[test]
    fn repo_rules_follow_mode_and_did_lists() {
        let f = filter(
            r#"mode = "signal"
signals = ["xyz.statusphere.status"]
dids = ["did:plc:always"]
exclude_dids = ["did:plc:never"]"#,
        );
        assert_eq!(f.repo_rule("did:plc:never"), RepoRule::Excluded);
        assert_eq!(f.repo_rule("did:plc:always"), RepoRule::Tracked);
        assert_eq!(f.repo_rule("did:plc:other"), RepoRule::NeedsSignal);
        assert!(f.is_signal("xyz.statusphere.status"));
        assert!(!f.is_signal("xyz.statusphere.other"));
    }

    #[test]
    fn handlers_are_switched_from_the_filter() {
        let on = filter("mode = \"full\"");
        assert!(on.active_handlers().iter().any(|h| h.handler.name() == "post"));
        let off = filter("mode = \"full\"\n[handlers.post]\nenabled = false");
        assert!(!off.active_handlers().iter().any(|h| h.handler.name() == "post"));
        let set = filter("mode = \"full\"\n[handlers.post]\nlangs = [\"en\"]");
        let post = set.active_handlers().into_iter().find(|h| h.handler.name() == "post").unwrap();
        assert_eq!(post.settings.str_list("langs").unwrap(), Some(vec!["en".to_string()]));
    }
}
