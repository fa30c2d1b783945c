//! An index's definition as the filter file declares it: the collection, the key paths, the
//! sort, and what else is kept. Parsing a path or a sort checks it; what is stored (and so
//! what a change of definition rebuilds) is named by [`IndexSpec::fingerprint`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// The most segments a field path may have.
pub const MAX_PATH_SEGMENTS: usize = 8;
/// The most key parts an index may have.
pub const MAX_KEY_PARTS: usize = 4;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A field of an object (`subject`, `$type`).
    Field(String),
    /// Every element of an array (`[]` after a field): the path fans out.
    Each,
}

/// A dotted field path into a record: `subject.uri`, `langs[]`, `facets[].features[].did`,
/// `embed.$type`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    text: String,
    segments: Vec<Segment>,
}

impl FieldPath {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        if text.is_empty() {
            return Err("an empty field path".into());
        }
        let mut segments = Vec::new();
        for part in text.split('.') {
            let (name, arrays) = match part.find("[]") {
                Some(at) => (&part[..at], &part[at..]),
                None => (part, ""),
            };
            if name.is_empty() {
                return Err(format!("`{text}`: an empty field name"));
            }
            if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '-'))) {
                return Err(format!("`{text}`: `{bad}` in a field name (letters, digits, `_`, `$`, `-`)"));
            }
            if arrays.len() % 2 != 0 || arrays.as_bytes().chunks(2).any(|c| c != b"[]") {
                return Err(format!("`{text}`: `[]` must follow a field name, as in `langs[]`"));
            }
            segments.push(Segment::Field(name.to_string()));
            segments.extend(std::iter::repeat_n(Segment::Each, arrays.len() / 2));
        }
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(format!("`{text}`: more than {MAX_PATH_SEGMENTS} steps"));
        }
        Ok(FieldPath { text: text.to_string(), segments })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Its steps.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether it fans out over an array.
    pub fn fans_out(&self) -> bool {
        self.segments.contains(&Segment::Each)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a field sort orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortType {
    /// An AT Protocol datetime, in time order whatever its offset (the default).
    Datetime,
    /// An integer, in numeric order.
    Integer,
    /// A string, in byte order.
    String,
}

impl SortType {
    /// The name in the filter file.
    pub fn as_str(self) -> &'static str {
        match self {
            SortType::Datetime => "datetime",
            SortType::Integer => "integer",
            SortType::String => "string",
        }
    }

    /// Parses a `sort_type` value.
    pub fn parse(text: &str) -> Result<SortType, String> {
        match text {
            "datetime" => Ok(SortType::Datetime),
            "integer" => Ok(SortType::Integer),
            "string" => Ok(SortType::String),
            other => Err(format!("sort_type: `{other}` is none of \"datetime\", \"integer\", \"string\"")),
        }
    }
}

/// How an index orders a key's records.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sort {
    /// By record key (TIDs sort by time): the default.
    Rkey,
    /// By a field's value.
    Field(FieldPath, SortType),
    /// `sortAt(field)`: the earlier of the field's datetime and the time sluice indexed the
    /// record, so that a date in the future cannot pin a record on top.
    SortAt(FieldPath),
}

impl Sort {
    /// Parses `sort` (with the optional `sort_type`).
    pub fn parse(text: &str, sort_type: Option<&str>) -> Result<Sort, String> {
        let typed = |path: &str| -> Result<FieldPath, String> {
            let path = FieldPath::parse(path)?;
            if path.fans_out() {
                return Err(format!("sort: `{path}` fans out over an array; a record has one sort value"));
            }
            Ok(path)
        };
        let sort = if text == "rkey" {
            Sort::Rkey
        } else if let Some(inner) = text.strip_prefix("sortAt(").and_then(|t| t.strip_suffix(')')) {
            Sort::SortAt(typed(inner)?)
        } else {
            let kind = sort_type.map(SortType::parse).transpose()?.unwrap_or(SortType::Datetime);
            return Ok(Sort::Field(typed(text)?, kind));
        };
        match sort_type {
            Some(_) => Err(format!("sort_type applies to a field sort, not to `{text}`")),
            None => Ok(sort),
        }
    }

    /// The sort as the filter file writes it.
    pub fn as_text(&self) -> String {
        match self {
            Sort::Rkey => "rkey".into(),
            Sort::Field(path, _) => path.to_string(),
            Sort::SortAt(path) => format!("sortAt({path})"),
        }
    }

    /// The type its values have.
    pub fn value_type(&self) -> SortType {
        match self {
            Sort::Rkey => SortType::String,
            Sort::Field(_, kind) => *kind,
            Sort::SortAt(_) => SortType::Datetime,
        }
    }
}

/// `per_repo`: which of a repo's records an index holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PerRepo {
    /// Every record.
    #[default]
    All,
    /// Only each repo's newest record by the sort.
    Latest,
}

/// One `[indexes.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexSpec {
    /// The table's name, the `index` parameter of the queries.
    pub name: String,
    /// The one NSID whose records it holds.
    pub collection: String,
    /// The equality parts of a query, in order.
    pub key: Vec<FieldPath>,
    /// The order within a key.
    pub sort: Sort,
    /// Keep an exact count per key.
    pub count: bool,
    /// Every record, or each repo's newest.
    pub per_repo: PerRepo,
    /// An NSID under which the query is served too (`xyz.statusphere.getStatuses`).
    pub method: Option<String>,
}

impl IndexSpec {
    /// What the stored entries depend on: a change of it rebuilds the index (a change of
    /// `method` alone does not).
    pub fn fingerprint(&self) -> String {
        let key: Vec<&str> = self.key.iter().map(FieldPath::as_str).collect();
        format!(
            "v1|{}|{}|{}:{}|{}|{}",
            self.collection,
            key.join(","),
            self.sort.as_text(),
            self.sort.value_type().as_str(),
            self.count,
            matches!(self.per_repo, PerRepo::Latest)
        )
    }

    /// The definition as stored beside the index, to tell what it was built from.
    pub fn to_stored(&self) -> StoredSpec {
        StoredSpec {
            name: self.name.clone(),
            collection: self.collection.clone(),
            key: self.key.iter().map(|p| p.to_string()).collect(),
            sort: self.sort.as_text(),
            sort_type: matches!(self.sort, Sort::Field(..)).then(|| self.sort.value_type()),
            count: self.count,
            per_repo_latest: self.per_repo == PerRepo::Latest,
            method: self.method.clone(),
        }
    }
}

/// [`IndexSpec`] in the form the store keeps (JSON in the index's meta row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSpec {
    pub name: String,
    pub collection: String,
    pub key: Vec<String>,
    pub sort: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort_type: Option<SortType>,
    pub count: bool,
    pub per_repo_latest: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl StoredSpec {
    /// Back to a definition; the error names what no longer parses.
    pub fn to_spec(&self) -> Result<IndexSpec, String> {
        Ok(IndexSpec {
            name: self.name.clone(),
            collection: self.collection.clone(),
            key: self.key.iter().map(|p| FieldPath::parse(p)).collect::<Result<_, _>>()?,
            sort: Sort::parse(&self.sort, self.sort_type.map(SortType::as_str))?,
            count: self.count,
            per_repo: if self.per_repo_latest { PerRepo::Latest } else { PerRepo::All },
            method: self.method.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_fan_out() {
        let p = FieldPath::parse("facets[].features[].did").unwrap();
        assert_eq!(
            p.segments(),
            [
                Segment::Field("facets".into()),
                Segment::Each,
                Segment::Field("features".into()),
                Segment::Each,
                Segment::Field("did".into())
            ]
        );
        assert!(p.fans_out());
        assert!(!FieldPath::parse("embed.$type").unwrap().fans_out());
        assert_eq!(FieldPath::parse("m[][]").unwrap().segments().len(), 3);
        for bad in ["", "a..b", ".a", "a.", "a[", "a[]x", "[]", "a b", "a.b.c.d.e.f.g.h.i"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn sorts_parse() {
        assert_eq!(Sort::parse("rkey", None).unwrap(), Sort::Rkey);
        assert_eq!(Sort::parse("createdAt", None).unwrap().value_type(), SortType::Datetime);
        assert_eq!(Sort::parse("n", Some("integer")).unwrap().value_type(), SortType::Integer);
        assert!(matches!(Sort::parse("sortAt(createdAt)", None).unwrap(), Sort::SortAt(_)));
        assert!(Sort::parse("langs[]", None).unwrap_err().contains("fans out"));
        assert!(Sort::parse("rkey", Some("string")).is_err());
        assert!(Sort::parse("x", Some("float")).unwrap_err().contains("float"));
    }

    #[test]
    fn stored_specs_read_back_and_fingerprints_ignore_the_method() {
        let spec = IndexSpec {
            name: "likes".into(),
            collection: "app.bsky.feed.like".into(),
            key: vec![FieldPath::parse("subject.uri").unwrap()],
            sort: Sort::parse("n", Some("integer")).unwrap(),
            count: true,
            per_repo: PerRepo::Latest,
            method: Some("a.b.c".into()),
        };
        let back = spec.to_stored().to_spec().unwrap();
        assert_eq!(back, spec);
        let renamed = IndexSpec { method: None, ..spec.clone() };
        assert_eq!(renamed.fingerprint(), spec.fingerprint());
        let counted = IndexSpec { count: false, ..spec.clone() };
        assert_ne!(counted.fingerprint(), spec.fingerprint());
    }
}
