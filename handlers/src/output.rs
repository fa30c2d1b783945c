//! What a handler hands back: the fate of the emitted record, its own value and index writes.
//! Values are written as compact JSON text when the handler gives them, so a handler can emit
//! a plain `#[derive(Serialize)]` struct without building a `serde_json::Value` first.

use serde::Serialize;

use crate::HandlerError;

/// What happens to the record in storage and in its event.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Emit {
    /// Stored and emitted as it is (the default).
    #[default]
    Keep,
    /// Neither stored nor emitted: the handler filters it out.
    Drop,
    /// Stored as it is, but the event carries this value (compact JSON text) instead of the
    /// record.
    Replace(String),
}

/// One write into the handler's own keyspace: `Some` puts, `None` deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexWrite {
    /// Key inside the handler's keyspace.
    pub key: Vec<u8>,
    /// New value, or `None` to delete the key.
    pub value: Option<Vec<u8>>,
}

/// The output buffer a handler fills for one record. The pipeline applies it in the same batch.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HandlerOutput {
    emit: Emit,
    json: Option<String>,
    writes: Vec<IndexWrite>,
}

impl HandlerOutput {
    /// An empty output: keep the record, no value, no writes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches `value` (a `json!` value or any `Serialize` type) to the record's event under
    /// `handled.<handler name>`. A value with no JSON form (a map whose keys are not strings)
    /// is refused.
    pub fn emit(&mut self, value: impl Serialize) -> Result<(), HandlerError> {
        self.json = Some(to_json(&value)?);
        Ok(())
    }

    /// Filters the record out: it is neither stored nor emitted.
    pub fn drop_record(&mut self) {
        self.emit = Emit::Drop;
    }

    /// Emits `value` in place of the record in its event; refused as [`HandlerOutput::emit`].
    pub fn replace_record(&mut self, value: impl Serialize) -> Result<(), HandlerError> {
        self.emit = Emit::Replace(to_json(&value)?);
        Ok(())
    }

    /// Puts `key -> value` in the handler's keyspace.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.push(IndexWrite { key: key.into(), value: Some(value.into()) });
    }

    /// Deletes `key` from the handler's keyspace.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.push(IndexWrite { key: key.into(), value: None });
    }

    /// The record's fate.
    pub fn emit_choice(&self) -> &Emit {
        &self.emit
    }

    /// The value for `handled.<name>` as JSON text, if any.
    pub fn json(&self) -> Option<&str> {
        self.json.as_deref()
    }

    /// The value for `handled.<name>`, parsed back (for tests and inspection).
    pub fn value(&self) -> Option<serde_json::Value> {
        self.json.as_deref().map(|j| serde_json::from_str(j).expect("emitted JSON is valid"))
    }

    /// The index writes, in order.
    pub fn writes(&self) -> &[IndexWrite] {
        &self.writes
    }

    /// Takes the parts out: (fate, value as JSON text, writes).
    pub fn into_parts(self) -> (Emit, Option<String>, Vec<IndexWrite>) {
        (self.emit, self.json, self.writes)
    }
}

/// `value` as compact JSON text, in a buffer sized up front (growing a string a few bytes at
/// a time showed in profiles).
fn to_json(value: &impl Serialize) -> Result<String, HandlerError> {
    let mut buf = Vec::with_capacity(256);
    serde_json::to_writer(&mut buf, value)
        .map_err(|e| HandlerError::Other(format!("the emitted value has no JSON form: {e}")))?;
    Ok(String::from_utf8(buf).expect("serde_json writes UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_as_compact_json_text() {
        #[derive(Serialize)]
        struct Out<'a> {
            subject: &'a str,
            n: u32,
        }
        let mut out = HandlerOutput::new();
        out.emit(Out { subject: "did:plc:a", n: 2 }).unwrap();
        assert_eq!(out.json(), Some(r#"{"subject":"did:plc:a","n":2}"#));
        out.replace_record(serde_json::json!({"b": [1, 2], "a": null})).unwrap();
        assert_eq!(out.emit_choice(), &Emit::Replace(r#"{"a":null,"b":[1,2]}"#.into()));
    }

    #[test]
    fn a_value_without_a_json_form_is_refused() {
        let mut out = HandlerOutput::new();
        let map: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        assert!(out.emit(&map).unwrap_err().to_string().contains("no JSON form"));
        assert_eq!(out.json(), None);
    }
}
