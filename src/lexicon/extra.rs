//! Each value's constraints and formats, run after jacquard's structural pass on records it
//! passed, at every level of the record (union members included):
//!
//! - string `minLength`/`maxLength` (bytes), `minGraphemes`/`maxGraphemes` (graphemes counted
//!   only when the byte length leaves the bound in doubt, a grapheme being at least a byte),
//!   `format` (by [`crate::syntax`]'s checks), `enum` and `const`;
//! - integer `minimum`/`maximum`, `enum` and `const`; array `minLength`/`maxLength`;
//! - blob `accept` and `maxSize` (and the legacy `{cid, mimeType}` form), bytes lengths.
//!
//! jacquard's constraint pass is not run (see the module above for why). Types and required
//! fields are checked here too wherever this walk goes (a match per value): jacquard's
//! structural pass has checked them except in defs it skips (a ref to a `string` def), so on
//! records it passed these checks fire only where it did not look.

use std::collections::HashMap;
use std::fmt::Write;

use jacquard_common::deps::smol_str::SmolStr;
use jacquard_common::types::value::Data;
use jacquard_lexicon::lexicon::{
    LexArray, LexArrayItem, LexBlob, LexBytes, LexInteger, LexObject, LexObjectProperty, LexRecordRecord, LexRefUnion,
    LexString, LexStringFormat, LexUserType, LexiconDoc,
};
use jacquard_lexicon::ref_utils::RefPath;
use unicode_segmentation::UnicodeSegmentation;

use super::{Rejection, type_name};

/// As jacquard's: refs and union members followed at most this deep.
const MAX_DEPTH: usize = 32;

type Docs = HashMap<SmolStr, LexiconDoc<'static>>;
type Checked = Result<(), Rejection>;

pub(super) fn check(docs: &Docs, collection: &str, data: &Data) -> Checked {
    let mut walk = Walk { docs, path: Vec::new(), depth: 0 };
    let Some(main) = docs.get(collection).and_then(|d| d.defs.get("main")) else {
        return Err(Rejection::new("", "ref", format!("no lexicon def {collection}")));
    };
    walk.def(collection, main, data)
}

enum Seg<'a> {
    Field(&'a str),
    Index(usize),
}

struct Walk<'a> {
    docs: &'a Docs,
    path: Vec<Seg<'a>>,
    depth: usize,
}

impl<'a> Walk<'a> {
    fn path(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            match seg {
                Seg::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Seg::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        out
    }

    fn reject(&self, rule: impl Into<String>, message: impl Into<String>) -> Checked {
        Err(Rejection::new(self.path(), rule, message))
    }

    fn wrong_type(&self, expected: &str, data: &Data) -> Checked {
        self.reject("type", format!("expected {expected}, got {}", type_name(&data.data_type())))
    }

    /// The def `reference` names, seen from document `nsid`.
    fn resolve(&self, reference: &str, nsid: &'a str) -> Result<(&'a str, &'a LexUserType<'static>), Rejection> {
        let target = RefPath::parse(reference, Some(nsid));
        let found = self
            .docs
            .get_key_value(target.nsid())
            .and_then(|(id, doc)| Some((id.as_str(), doc.defs.get(target.def())?)));
        found.ok_or_else(|| Rejection::new(self.path(), "ref", format!("no lexicon def {}", target.full_ref())))
    }

    fn deeper(&mut self) -> Checked {
        self.depth += 1;
        match self.depth > MAX_DEPTH {
            true => self.reject("depth", format!("refs nested deeper than {MAX_DEPTH}")),
            false => Ok(()),
        }
    }

    /// `data` against a def, its constraints and formats included.
    fn def(&mut self, nsid: &'a str, def: &'a LexUserType<'static>, data: &Data) -> Checked {
        match def {
            LexUserType::Record(r) => {
                let LexRecordRecord::Object(o) = &r.record;
                self.object(nsid, o, data)
            }
            LexUserType::Object(o) => self.object(nsid, o, data),
            // jacquard checks nothing of these defs, not even the type.
            LexUserType::String(s) => self.string(s, data),
            LexUserType::Integer(i) => self.integer(i, data),
            LexUserType::Boolean(_) => self.expect(data, matches!(data, Data::Boolean(_)), "boolean"),
            LexUserType::Array(a) => self.array(nsid, a, data),
            LexUserType::Blob(b) => self.blob(b, data),
            LexUserType::Bytes(b) => self.bytes(b, data),
            LexUserType::CidLink(_) => self.expect(data, matches!(data, Data::CidLink(_)), "cid-link"),
            LexUserType::Union(u) => self.union(nsid, u, data),
            _ => Ok(()),
        }
    }

    fn expect(&self, data: &Data, ok: bool, expected: &str) -> Checked {
        match ok {
            true => Ok(()),
            false => self.wrong_type(expected, data),
        }
    }

    fn object(&mut self, nsid: &'a str, o: &'a LexObject<'static>, data: &Data) -> Checked {
        let Data::Object(map) = data else { return self.wrong_type("object", data) };
        for field in o.required.iter().flatten() {
            if map.get(field).is_none() {
                self.path.push(Seg::Field(field));
                let rejected = self.reject("required", format!("required field {field} is missing"));
                self.path.pop();
                return rejected;
            }
        }
        for (name, prop) in &o.properties {
            let Some(value) = map.get(name) else { continue };
            if value.is_null() && o.nullable.iter().flatten().any(|n| n == name) {
                continue;
            }
            self.path.push(Seg::Field(name));
            self.property(nsid, prop, value)?;
            self.path.pop();
        }
        Ok(())
    }

    fn property(&mut self, nsid: &'a str, prop: &'a LexObjectProperty<'static>, data: &Data) -> Checked {
        match prop {
            LexObjectProperty::Ref(r) => self.reference(&r.r#ref, nsid, data),
            LexObjectProperty::Union(u) => self.union(nsid, u, data),
            LexObjectProperty::Bytes(b) => self.bytes(b, data),
            LexObjectProperty::CidLink(_) => self.expect(data, matches!(data, Data::CidLink(_)), "cid-link"),
            LexObjectProperty::Array(a) => self.array(nsid, a, data),
            LexObjectProperty::Blob(b) => self.blob(b, data),
            LexObjectProperty::Object(o) => self.object(nsid, o, data),
            LexObjectProperty::Boolean(_) => self.expect(data, matches!(data, Data::Boolean(_)), "boolean"),
            LexObjectProperty::Integer(i) => self.integer(i, data),
            LexObjectProperty::String(s) => self.string(s, data),
            LexObjectProperty::Unknown(_) => Ok(()),
        }
    }

    fn item(&mut self, nsid: &'a str, item: &'a LexArrayItem<'static>, data: &Data) -> Checked {
        match item {
            LexArrayItem::Ref(r) => self.reference(&r.r#ref, nsid, data),
            LexArrayItem::Union(u) => self.union(nsid, u, data),
            LexArrayItem::Bytes(b) => self.bytes(b, data),
            LexArrayItem::CidLink(_) => self.expect(data, matches!(data, Data::CidLink(_)), "cid-link"),
            LexArrayItem::Blob(b) => self.blob(b, data),
            LexArrayItem::Object(o) => self.object(nsid, o, data),
            LexArrayItem::Boolean(_) => self.expect(data, matches!(data, Data::Boolean(_)), "boolean"),
            LexArrayItem::Integer(i) => self.integer(i, data),
            LexArrayItem::String(s) => self.string(s, data),
            LexArrayItem::Unknown(_) => Ok(()),
        }
    }

    fn reference(&mut self, reference: &str, nsid: &'a str, data: &Data) -> Checked {
        self.deeper()?;
        let (target, def) = self.resolve(reference, nsid)?;
        self.def(target, def, data)?;
        self.depth -= 1;
        Ok(())
    }

    /// A union member: matched by `$type` as jacquard does; an unlisted `$type` passes an open union.
    fn union(&mut self, nsid: &'a str, u: &'a LexRefUnion<'static>, data: &Data) -> Checked {
        let Data::Object(map) = data else { return self.wrong_type("object", data) };
        let Some(kind) = map.get("$type").and_then(|t| t.as_str()).filter(|t| !t.is_empty()) else {
            return self.reject("$type", "a union member without $type");
        };
        for member in &u.refs {
            let target = RefPath::parse(member, Some(nsid));
            if kind == target.full_ref() || kind == target.nsid() {
                self.deeper()?;
                let (target, def) = self.resolve(member, nsid)?;
                self.def(target, def, data)?;
                self.depth -= 1;
                return Ok(());
            }
        }
        match u.closed.unwrap_or(false) {
            true => {
                let listed: Vec<&str> = u.refs.iter().map(|r| r.as_ref()).collect();
                self.reject("closed union", format!("$type {kind} is not one of {}", listed.join(", ")))
            }
            false => Ok(()),
        }
    }

    fn array(&mut self, nsid: &'a str, a: &'a LexArray<'static>, data: &Data) -> Checked {
        let Data::Array(items) = data else { return self.wrong_type("array", data) };
        self.lengths(items.len(), a.min_length, a.max_length, "items")?;
        for (i, value) in items.iter().enumerate() {
            self.path.push(Seg::Index(i));
            self.item(nsid, &a.items, value)?;
            self.path.pop();
        }
        Ok(())
    }

    fn lengths(&self, len: usize, min: Option<usize>, max: Option<usize>, unit: &str) -> Checked {
        if let Some(max) = max.filter(|&m| len > m) {
            return self.reject("maxLength", format!("{len} {unit}, over {max}"));
        }
        if let Some(min) = min.filter(|&m| len < m) {
            return self.reject("minLength", format!("{len} {unit}, under {min}"));
        }
        Ok(())
    }

    fn string(&self, s: &LexString<'static>, data: &Data) -> Checked {
        let Data::String(string) = data else { return self.wrong_type("string", data) };
        let value = string.as_str();
        self.lengths(value.len(), s.min_length, s.max_length, "bytes")?;
        // At least one byte a grapheme: a short string is within `maxGraphemes`, and a non-empty
        // one has at least one.
        let max_in_doubt = s.max_graphemes.is_some_and(|m| value.len() > m);
        let min_in_doubt = s.min_graphemes.is_some_and(|m| m > 1 || (m == 1 && value.is_empty()));
        if max_in_doubt || min_in_doubt {
            let graphemes = value.graphemes(true).count();
            if let Some(max) = s.max_graphemes.filter(|&m| graphemes > m) {
                return self.reject("maxGraphemes", format!("{graphemes} graphemes, over {max}"));
            }
            if let Some(min) = s.min_graphemes.filter(|&m| graphemes < m) {
                return self.reject("minGraphemes", format!("{graphemes} graphemes, under {min}"));
            }
        }
        if let Some(format) = s.format
            && !format_ok(format, value)
        {
            let name = format_name(format);
            return self.reject(format!("format {name}"), format!("{value:?} is not a valid {name}"));
        }
        if let Some(allowed) = &s.r#enum
            && !allowed.iter().any(|a| a.as_ref() == value)
        {
            return self.reject("enum", format!("{value:?} is not one of the allowed values"));
        }
        if let Some(c) = &s.r#const
            && c.as_ref() != value
        {
            return self.reject("const", format!("{value:?} is not {:?}", c.as_ref()));
        }
        Ok(())
    }

    fn integer(&self, i: &LexInteger<'static>, data: &Data) -> Checked {
        let Data::Integer(value) = data else { return self.wrong_type("integer", data) };
        let value = *value;
        if let Some(max) = i.maximum.filter(|&m| value > m) {
            return self.reject("maximum", format!("{value} is over {max}"));
        }
        if let Some(min) = i.minimum.filter(|&m| value < m) {
            return self.reject("minimum", format!("{value} is under {min}"));
        }
        if let Some(allowed) = &i.r#enum
            && !allowed.contains(&value)
        {
            return self.reject("enum", format!("{value} is not one of the allowed values"));
        }
        if let Some(c) = i.r#const
            && c != value
        {
            return self.reject("const", format!("{value} is not {c}"));
        }
        Ok(())
    }

    /// A blob, or one in the legacy form `{cid, mimeType}` (no size: `maxSize` cannot apply).
    fn blob(&self, b: &LexBlob<'static>, data: &Data) -> Checked {
        let (mime, size) = match data {
            Data::Blob(blob) => (blob.mime_type.as_str(), Some(blob.size)),
            _ => match legacy_blob(data) {
                Some(mime) => (mime, None),
                None => return self.wrong_type("blob", data),
            },
        };
        if let Some((size, max)) = size.zip(b.max_size).filter(|&(size, max)| size > max) {
            return self.reject("maxSize", format!("blob of {size} bytes, over {max}"));
        }
        if let Some(accept) = &b.accept
            && !accept.iter().any(|pattern| mime_matches(pattern.as_str(), mime))
        {
            let listed: Vec<&str> = accept.iter().map(|a| a.as_str()).collect();
            return self.reject("accept", format!("blob type {mime} is not one of {}", listed.join(", ")));
        }
        Ok(())
    }

    fn bytes(&self, b: &LexBytes<'static>, data: &Data) -> Checked {
        let Data::Bytes(bytes) = data else { return self.wrong_type("bytes", data) };
        self.lengths(bytes.len(), b.min_length, b.max_length, "bytes")
    }
}

/// The MIME type of a blob in the legacy form: an object of exactly a CID string `cid` and a
/// string `mimeType` (what early records hold; the data model asks readers to accept it).
fn legacy_blob(data: &Data) -> Option<&str> {
    let Data::Object(map) = data else { return None };
    let cid = map.get("cid").and_then(|c| c.as_str())?;
    let mime = map.get("mimeType").and_then(|m| m.as_str())?;
    (map.len() == 2 && cid::Cid::try_from(cid).is_ok()).then_some(mime)
}

/// Whether a blob's MIME type matches an `accept` entry (`image/png`, `image/*`, `*/*`).
fn mime_matches(pattern: &str, mime: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some("*") => true,
        Some(kind) => mime.split_once('/').is_some_and(|(k, _)| k.eq_ignore_ascii_case(kind)),
        None => pattern.eq_ignore_ascii_case(mime),
    }
}

fn format_name(format: LexStringFormat) -> &'static str {
    match format {
        LexStringFormat::Datetime => "datetime",
        LexStringFormat::Uri => "uri",
        LexStringFormat::AtUri => "at-uri",
        LexStringFormat::Did => "did",
        LexStringFormat::Handle => "handle",
        LexStringFormat::AtIdentifier => "at-identifier",
        LexStringFormat::Nsid => "nsid",
        LexStringFormat::Cid => "cid",
        LexStringFormat::Language => "language",
        LexStringFormat::Tid => "tid",
        LexStringFormat::RecordKey => "record-key",
    }
}

/// Whether `value` has the lexicon string format.
pub(super) fn format_ok(format: LexStringFormat, value: &str) -> bool {
    use crate::syntax;
    match format {
        LexStringFormat::Datetime => syntax::is_datetime(value),
        LexStringFormat::Uri => is_uri(value),
        LexStringFormat::AtUri => syntax::is_at_uri(value),
        LexStringFormat::Did => syntax::is_did(value),
        LexStringFormat::Handle => syntax::is_handle(value),
        LexStringFormat::AtIdentifier => syntax::is_at_identifier(value),
        LexStringFormat::Nsid => syntax::is_nsid(value),
        LexStringFormat::Cid => syntax::is_cid(value) && cid::Cid::try_from(value).is_ok(),
        LexStringFormat::Language => syntax::is_language(value),
        LexStringFormat::Tid => syntax::is_tid(value),
        LexStringFormat::RecordKey => syntax::is_rkey(value),
    }
}

/// The lexicon `uri` format as the reference implementations take it: a scheme, `:`, and then
/// no whitespace, 8 KB at most. (An RFC 3986 parser such as fluent-uri refuses
/// `at://did:plc:.../...`, whose DID reads as a host with a bad port, and records use those.)
fn is_uri(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once(':') else { return false };
    value.len() <= 8192
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && !rest.contains(char::is_whitespace)
}
