//! Configuration: `config.toml` (every key optional, defaults below), then environment
//! overrides (`SLUICE_DATA`, `SLUICE_FILTER`, `RELAY_URL`, `SLUICE_PLC_URL`,
//! `BACKFILL_BATCH_SIZE`), then CLI flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::repo::CarLimits;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where data lives.
    pub storage: StorageConfig,
    /// The filter file.
    pub filter: FilterConfig,
    /// Relay and PLC directory.
    pub network: NetworkConfig,
    /// Repo size limits.
    pub limits: LimitsConfig,
    /// Backfill controls.
    pub backfill: BackfillConfig,
}

/// `[backfill]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackfillConfig {
    /// Record changes per committed batch when a repo is walked (`BACKFILL_BATCH_SIZE`).
    pub batch_size: usize,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        Self { batch_size: crate::pipeline::DEFAULT_BATCH_SIZE }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The fjall directory.
    pub path: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { path: "data".into() }
    }
}

/// `[filter]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// The filter file, hot-reloaded.
    pub path: PathBuf,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self { path: "filters/everything.toml".into() }
    }
}

/// `[network]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Relay base URL (firehose, listRepos).
    pub relay: String,
    /// PLC directory base URL.
    pub plc: String,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self { relay: "https://bsky.network".into(), plc: "https://plc.directory/".into() }
    }
}

/// `[limits]`: what a repo may weigh before it is refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest CAR, in MiB.
    pub max_car_mb: u64,
    /// Largest block, in KiB.
    pub max_block_kb: usize,
    /// Most blocks in one CAR.
    pub max_blocks: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = CarLimits::default();
        Self { max_car_mb: d.max_car_bytes >> 20, max_block_kb: d.max_block_bytes >> 10, max_blocks: d.max_blocks }
    }
}

impl LimitsConfig {
    /// The limits as the CAR reader takes them.
    pub fn car_limits(&self) -> CarLimits {
        CarLimits { max_car_bytes: self.max_car_mb << 20, max_block_bytes: self.max_block_kb << 10, max_blocks: self.max_blocks }
    }
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io { path: String, source: std::io::Error },
    /// The file is invalid.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Reads `path` (when it exists; otherwise defaults), then applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(p) if p.exists() => Self::from_file(p)?,
            _ => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok());
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: shown.clone(), source })?;
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            let path = match line {
                Some(l) => format!("{shown}:{l}"),
                None => shown,
            };
            ConfigError::Invalid { path, message: e.message().trim().to_string() }
        })
    }

    /// Applies environment overrides, read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("SLUICE_DATA") {
            self.storage.path = v.into();
        }
        if let Some(v) = get("SLUICE_FILTER") {
            self.filter.path = v.into();
        }
        if let Some(v) = get("RELAY_URL") {
            self.network.relay = v;
        }
        if let Some(v) = get("SLUICE_PLC_URL") {
            self.network.plc = v;
        }
        if let Some(n) = get("BACKFILL_BATCH_SIZE").and_then(|v| v.trim().parse().ok()) {
            self.backfill.batch_size = n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_and_env_overrides_it() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let mut c = Config::from_file(&path).unwrap();
        c.apply_env(|k| match k {
            "SLUICE_DATA" => Some("/tmp/x".to_string()),
            "BACKFILL_BATCH_SIZE" => Some("250".to_string()),
            _ => None,
        });
        assert_eq!(c.storage.path, PathBuf::from("/tmp/x"));
        assert_eq!(c.backfill.batch_size, 250);
        assert_eq!(c.limits.car_limits(), CarLimits::default());
    }

    #[test]
    fn unknown_keys_are_refused_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[storage]\npath = \"d\"\ncolour = 1\n").unwrap();
        let e = Config::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("c.toml:3") && e.contains("colour"), "{e}");
    }
}
