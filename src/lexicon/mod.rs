//! Records checked against lexicons (the filter's `[lexicons]` table), by jacquard's runtime
//! validation (`jacquard-lexicon`).
//!
//! [`Lexicons::load`] reads a directory of lexicon JSON files and builds, once, for each record
//! collection the filter stores, a jacquard `SchemaValidator` over only the defs that
//! collection's record def reaches (refs and union members, transitively), descriptions and
//! `knownValues` dropped.
//!
//! [`Lexicons::check`] decodes the record's DAG-CBOR into jacquard's data model (`Data`, every
//! string kept a string: see `decode`), requires its `$type` to be its collection, runs
//! jacquard's structural pass (`validate_by_nsid_structural`: types, required fields, union
//! members by `$type`), then checks every value's constraints and formats (see `extra`):
//! lengths, graphemes, ranges, string formats, `enum` and `const`, blobs and bytes, at every
//! level, union members included. jacquard's constraint pass is not run: `validate_by_nsid`
//! re-runs the structural pass and clones its registry on every call (about 1 ms a record
//! over the ~400 documents of atproto's directory, still a third of a post's check over a
//! registry cut to the post), it does not enter union members nor defs that are not objects,
//! and it checks neither formats nor `enum`; `extra` had to walk the record for those anyway.
//! Two of jacquard's type errors are left to `extra`, which has the schema at hand: `null`
//! (allowed in `nullable` fields) and an object where a blob goes (allowed in the legacy
//! `{cid, mimeType}` form). Open unions accept `$type`s they do not list; closed ones do not.
//!
//! What the directory must hold: every `.json` file under it (recursively) is a JSON object
//! with a string `id`, no two with the same `id`; the documents of the collections asked for
//! parse as lexicon documents, and every ref their record defs reach resolves to a def in the
//! directory. A dangling ref is refused at load (naming the file that holds it), rather than
//! found when the first record that uses it arrives.

mod decode;
mod extra;
mod fuzz;
mod load;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use jacquard_common::deps::smol_str::SmolStr;
use jacquard_common::types::value::Data;
use jacquard_lexicon::lexicon::LexiconDoc;
use jacquard_lexicon::validation::{PathSegment, SchemaValidator, StructuralError, ValidationError, ValidationPath};

pub use decode::decode_plain;
pub use fuzz::{FUZZ_COLLECTION, fuzz_check};

/// The lexicons of the collections a filter stores, each with a validator built once.
pub struct Lexicons {
    /// Per record collection: jacquard's structural validator over the defs its record
    /// reaches, built once.
    validators: HashMap<SmolStr, SchemaValidator>,
    /// The documents those defs come from (whole), for the checks jacquard does not make.
    docs: HashMap<SmolStr, LexiconDoc<'static>>,
}

impl fmt::Debug for Lexicons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.collections().collect();
        names.sort_unstable();
        f.debug_struct("Lexicons").field("collections", &names).field("documents", &self.docs.len()).finish()
    }
}

/// Why a lexicon directory was not loaded: the file (or directory) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct LexiconError {
    /// The file at fault (the directory itself when it cannot be read).
    pub file: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl LexiconError {
    fn new(file: &Path, reason: impl Into<String>) -> Self {
        LexiconError { file: file.to_path_buf(), reason: reason.into() }
    }
}

/// What [`Lexicons::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The record conforms to its collection's lexicon.
    Valid,
    /// No lexicon was loaded for the collection.
    Unknown,
    /// The record does not conform: the first rule it breaks.
    Invalid(Rejection),
}

/// The first rule a record breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Where in the record, dotted with indexes (`subject.uri`, `langs[2]`, `embed.images[0].alt`);
    /// empty for the record itself.
    pub path: String,
    /// The rule, in the lexicon's words: `type`, `required`, `maxLength`, `maxGraphemes`,
    /// `minimum`, `format datetime`, `enum`, `closed union`, ...; its first word is [`Rejection::reason`].
    pub rule: String,
    /// A sentence for the log.
    pub message: String,
}

impl Rejection {
    fn new(path: impl Into<String>, rule: impl Into<String>, message: impl Into<String>) -> Self {
        Rejection { path: path.into(), rule: rule.into(), message: message.into() }
    }

    /// A short stable label for metrics: the rule's first word (`type`, `required`,
    /// `maxGraphemes`, `format`, `closed`, `decode`, ...).
    pub fn reason(&self) -> &str {
        self.rule.split(' ').next().unwrap_or("")
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path.is_empty() {
            true => write!(f, "(record): {} ({})", self.message, self.rule),
            false => write!(f, "{}: {} ({})", self.path, self.message, self.rule),
        }
    }
}

impl Lexicons {
    /// Reads the lexicon files under `dir` and builds a validator for every record collection
    /// that `collections` matches (NSIDs or patterns as the filter holds them: `a.b.c`,
    /// `a.b.*`, `*`; none means every record collection in `dir`).
    pub fn load(dir: &Path, collections: &[String]) -> Result<Lexicons, LexiconError> {
        load::load(dir, collections)
    }

    /// The collections a lexicon was loaded for.
    pub fn collections(&self) -> impl Iterator<Item = &str> {
        self.validators.keys().map(|k| k.as_str())
    }

    /// Whether a lexicon was loaded for `collection`.
    pub fn knows(&self, collection: &str) -> bool {
        self.validators.contains_key(collection)
    }

    /// jacquard's validator for `collection`, to measure or debug with: the one
    /// [`Lexicons::check`] runs the structural pass with (every def the record reaches).
    pub fn jacquard_validator(&self, collection: &str) -> Option<&SchemaValidator> {
        self.validators.get(collection)
    }

    /// Checks a record (its DAG-CBOR bytes, as stored) against its collection's lexicon.
    ///
    /// The bytes are expected to have passed the record rule already (as every record the
    /// pipeline takes has); bytes [`decode_plain`] refuses are [`Verdict::Invalid`] with rule `decode`.
    pub fn check(&self, collection: &str, record: &[u8]) -> Verdict {
        let Some(validator) = self.validators.get(collection) else { return Verdict::Unknown };
        let data = match decode_plain(record) {
            Ok(data) => data,
            Err(e) => {
                return Verdict::Invalid(Rejection::new("", "decode", format!("not a record of the data model: {e}")));
            }
        };
        self.check_data(validator, collection, &data)
    }

    /// [`Lexicons::check`] over a value already decoded into jacquard's data model.
    pub fn check_value(&self, collection: &str, data: &Data) -> Verdict {
        match self.validators.get(collection) {
            Some(validator) => self.check_data(validator, collection, data),
            None => Verdict::Unknown,
        }
    }

    fn check_data(&self, validator: &SchemaValidator, collection: &str, data: &Data) -> Verdict {
        if let Err(rejection) = own_type(collection, data) {
            return Verdict::Invalid(rejection);
        }
        let structure = validator.validate_by_nsid_structural(collection, data);
        if let Some(first) = structure.all_errors().find(|e| !left_to_extra(e)) {
            return Verdict::Invalid(rejection(&first));
        }
        match extra::check(&self.docs, collection, data) {
            Ok(()) => Verdict::Valid,
            Err(rejection) => Verdict::Invalid(rejection),
        }
    }
}

/// A record's `$type` must name its collection: a record stored under one collection but
/// typed as another would be read by an appview as what its collection says.
fn own_type(collection: &str, data: &Data) -> Result<(), Rejection> {
    let Data::Object(map) = data else {
        return Err(Rejection::new("", "type", format!("expected object, got {}", type_name(&data.data_type()))));
    };
    match map.get("$type").and_then(|t| t.as_str()) {
        Some(t) if t == collection => Ok(()),
        Some(t) => {
            Err(Rejection::new("$type", "$type", format!("the record's $type is {t}, not its collection {collection}")))
        }
        None => Err(Rejection::new("$type", "$type", "a record without $type")),
    }
}

/// jacquard 0.12's type errors that are not errors: `null` in a field its object lists as
/// `nullable`, and a blob in the legacy form (`{cid, mimeType}`, which readers must accept).
/// jacquard reports both as a type mismatch; `extra`'s walk, which checks types wherever it
/// goes, decides them with the schema at hand (and rejects a `null` that is not nullable).
fn left_to_extra(error: &ValidationError) -> bool {
    use jacquard_common::types::DataModelType;
    match error {
        ValidationError::Structural(StructuralError::TypeMismatch { expected, actual, .. }) => {
            matches!(actual, DataModelType::Null)
                || matches!((expected, actual), (DataModelType::Blob, DataModelType::Object))
        }
        _ => false,
    }
}

/// A path as sluice writes field paths: `a.b[2].c` (union variants are not named).
fn path_string(path: &ValidationPath) -> String {
    let mut out = String::new();
    for segment in path.segments() {
        match segment {
            PathSegment::Field(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            PathSegment::Index(i) => {
                use fmt::Write;
                let _ = write!(out, "[{i}]");
            }
            PathSegment::UnionVariant(_) => {}
        }
    }
    out
}

fn joined(parent: &ValidationPath, field: &str) -> String {
    let parent = path_string(parent);
    match parent.is_empty() {
        true => field.to_string(),
        false => format!("{parent}.{field}"),
    }
}

/// A data model type as a lexicon names it (every string is a `string`).
fn type_name(t: &jacquard_common::types::DataModelType) -> String {
    use jacquard_common::types::DataModelType;
    match t {
        DataModelType::String(_) => "string".into(),
        other => other.to_string(),
    }
}

/// jacquard's first error as a [`Rejection`].
fn rejection(error: &ValidationError) -> Rejection {
    match error {
        ValidationError::Structural(e) => match e {
            StructuralError::TypeMismatch { path, expected, actual } => Rejection::new(
                path_string(path),
                "type",
                format!("expected {}, got {}", type_name(expected), type_name(actual)),
            ),
            StructuralError::MissingRequiredField { path, field } => {
                Rejection::new(joined(path, field), "required", format!("required field {field} is missing"))
            }
            StructuralError::MissingUnionDiscriminator { path } => {
                Rejection::new(path_string(path), "$type", "a union member without $type")
            }
            StructuralError::UnionNoMatch { path, actual_type, expected_refs } => Rejection::new(
                path_string(path),
                "closed union",
                format!("$type {actual_type} is not one of {expected_refs}"),
            ),
            StructuralError::UnresolvedRef { path, ref_nsid } => {
                Rejection::new(path_string(path), "ref", format!("no lexicon def {ref_nsid}"))
            }
            StructuralError::RefCycle { path, ref_nsid, .. } => {
                Rejection::new(path_string(path), "ref", format!("a cycle of refs through {ref_nsid}"))
            }
            StructuralError::MaxDepthExceeded { path, max } => {
                Rejection::new(path_string(path), "depth", format!("nested deeper than {max}"))
            }
            other => Rejection::new("", "structure", other.to_string()),
        },
        other => Rejection::new("", "invalid", other.to_string()),
    }
}

/// A filter setting written as one of a few words: `parse` (whose error names the setting and
/// the words allowed), `as_str`, `FromStr` and `Display`.
macro_rules! word_setting {
    ($(#[$doc:meta])* $name:ident, $setting:literal, default $default:ident,
     $($(#[$vdoc:meta])* $variant:ident = $word:literal),+ $(,)?) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }

        impl $name {
            /// Parses the setting's word; the error says what is allowed.
            pub fn parse(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok($name::$variant),)+
                    other => {
                        let words = [$(concat!("\"", $word, "\"")),+];
                        let (last, rest) = words.split_last().expect("a setting has words");
                        Err(format!("{} must be {} or {last}, not {other:?}", $setting, rest.join(", ")))
                    }
                }
            }

            /// The setting as the filter file writes it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

word_setting!(
    /// What happens to a record that fails its lexicon (`[lexicons] validate`).
    ValidateMode, "validate", default Off,
    /// Records are not checked.
    Off = "off",
    /// Checked; a failing record is stored all the same, counted and logged.
    Log = "log",
    /// Checked; a failing record is not stored (no event, no index entry), counted and logged.
    Drop = "drop",
);

word_setting!(
    /// What happens to a record of a collection with no lexicon (`[lexicons] unknown`), when
    /// records are checked.
    UnknownMode, "unknown", default Pass,
    /// Stored as if it were valid.
    Pass = "pass",
    /// Not stored (whether failing records are dropped or only logged), counted and logged.
    Drop = "drop",
);
