//! The link-time handler registry and per-handler settings.

use crate::CollectionHandler;

/// One entry of the registry; created by [`crate::register_handler!`].
pub struct HandlerRegistration {
    /// The registered handler.
    pub handler: &'static dyn CollectionHandler,
}

inventory::collect!(HandlerRegistration);

/// Every registered handler, sorted by name (so runs are deterministic).
pub fn registered() -> Vec<&'static dyn CollectionHandler> {
    let mut all: Vec<_> = inventory::iter::<HandlerRegistration>.into_iter().map(|r| r.handler).collect();
    all.sort_by_key(|h| h.name());
    all
}

/// The registered handler called `name`.
pub fn find(name: &str) -> Option<&'static dyn CollectionHandler> {
    registered().into_iter().find(|h| h.name() == name)
}

/// A handler's settings: the filter's `[handlers.<name>]` table, minus the `enabled` switch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HandlerSettings {
    table: toml::Table,
}

impl HandlerSettings {
    /// Settings from a TOML table.
    pub fn new(table: toml::Table) -> Self {
        Self { table }
    }

    /// The raw table.
    pub fn table(&self) -> &toml::Table {
        &self.table
    }

    /// A string setting.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.table.get(key).and_then(|v| v.as_str())
    }

    /// A boolean setting, or `default`.
    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        self.table.get(key).and_then(|v| v.as_bool()).unwrap_or(default)
    }

    /// A list of strings; `None` when absent, an error naming the key when not a string list.
    pub fn str_list(&self, key: &str) -> Result<Option<Vec<String>>, crate::HandlerError> {
        let Some(v) = self.table.get(key) else { return Ok(None) };
        let err = || crate::HandlerError::Settings(format!("`{key}` must be a list of strings"));
        let arr = v.as_array().ok_or_else(err)?;
        arr.iter().map(|x| x.as_str().map(str::to_owned).ok_or_else(err)).collect::<Result<_, _>>().map(Some)
    }

    /// Rejects keys other than `allowed`, naming the first unknown one.
    pub fn only_keys(&self, allowed: &[&str]) -> Result<(), crate::HandlerError> {
        match self.table.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(crate::HandlerError::Settings(format!(
                "unknown setting `{k}` (known: {})",
                if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
            ))),
            None => Ok(()),
        }
    }
}
