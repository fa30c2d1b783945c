//! What a handler hands back: the fate of the emitted record, its own value and index writes.

/// What happens to the record in storage and in its event.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Emit {
    /// Stored and emitted as it is (the default).
    #[default]
    Keep,
    /// Neither stored nor emitted: the handler filters it out.
    Drop,
    /// Stored as it is, but the event carries this value instead of the record.
    Replace(serde_json::Value),
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
    value: Option<serde_json::Value>,
    writes: Vec<IndexWrite>,
}

impl HandlerOutput {
    /// An empty output: keep the record, no value, no writes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches `value` to the record's event under `handled.<handler name>`.
    pub fn emit(&mut self, value: serde_json::Value) {
        self.value = Some(value);
    }

    /// Filters the record out: it is neither stored nor emitted.
    pub fn drop_record(&mut self) {
        self.emit = Emit::Drop;
    }

    /// Emits `value` in place of the record in its event.
    pub fn replace_record(&mut self, value: serde_json::Value) {
        self.emit = Emit::Replace(value);
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

    /// The value for `handled.<name>`, if any.
    pub fn value(&self) -> Option<&serde_json::Value> {
        self.value.as_ref()
    }

    /// The index writes, in order.
    pub fn writes(&self) -> &[IndexWrite] {
        &self.writes
    }

    /// Takes the parts out: (fate, value, writes).
    pub fn into_parts(self) -> (Emit, Option<serde_json::Value>, Vec<IndexWrite>) {
        (self.emit, self.value, self.writes)
    }
}
