//! A plugin's configuration and secrets, as its `config.get(key)` import
//! reads them (contract 0.2.0).
//!
//! Three layers, highest first: the operator's secrets (`plugin_secrets`:
//! `env:NAME` or `file:PATH` references, resolved when the plugin loads, so
//! a secret never sits in a config file or a manifest), the operator's values
//! (`plugin_config`), and the manifest's `[config]` table. A secret's value
//! is never shown: `Debug` and [`PluginConfig::shown`] mask it, and the host
//! never logs what a plugin reads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

use crate::config::value::MASK;

/// Where a secret comes from (`env:NAME` or `file:PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable of the host process.
    Env(String),
    /// A file; its content, without a trailing newline.
    File(PathBuf),
}

/// A secret reference that cannot be parsed or resolved.
#[derive(Debug, Error)]
pub enum SecretError {
    /// Not `env:NAME` or `file:PATH`.
    #[error(
        "secret `{key}` is not a reference: write `env:VARIABLE` or `file:/path/to/file` (a secret's value never goes in a config file; what was written is not repeated here in case it is one)"
    )]
    NotAReference {
        /// The secret's key.
        key: String,
    },
    /// The variable is not set (or not UTF-8).
    #[error("secret `{key}`: environment variable `{variable}` is not set (or not UTF-8)")]
    EnvUnset {
        /// The secret's key.
        key: String,
        /// The variable.
        variable: String,
    },
    /// The file cannot be read.
    #[error("secret `{key}`: cannot read {}: {source}", path.display())]
    File {
        /// The secret's key.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl SecretRef {
    /// Parse the reference given for secret `key`.
    pub fn parse(key: &str, reference: &str) -> Result<SecretRef, SecretError> {
        let not_a_reference = || SecretError::NotAReference {
            key: key.to_string(),
        };
        match reference.split_once(':') {
            Some(("env", name)) if !name.is_empty() => Ok(SecretRef::Env(name.to_string())),
            Some(("file", path)) if !path.is_empty() => Ok(SecretRef::File(PathBuf::from(path))),
            _ => Err(not_a_reference()),
        }
    }

    /// Read the secret's value.
    pub fn resolve(&self, key: &str) -> Result<String, SecretError> {
        match self {
            SecretRef::Env(variable) => {
                std::env::var(variable).map_err(|_| SecretError::EnvUnset {
                    key: key.to_string(),
                    variable: variable.clone(),
                })
            }
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|source| SecretError::File {
                    key: key.to_string(),
                    path: path.clone(),
                    source,
                }),
        }
    }
}

/// Where an effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// The manifest's `[config]`.
    Manifest,
    /// The operator's `plugin_config`.
    Operator,
    /// The operator's `plugin_secrets`.
    Secret,
}

#[derive(Clone, PartialEq, Eq)]
struct Entry {
    value: String,
    source: ConfigSource,
}

/// The effective configuration of one plugin.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PluginConfig {
    entries: BTreeMap<String, Entry>,
}

impl PluginConfig {
    /// Merge the layers; a secret reference that cannot be resolved is an error.
    pub fn resolve(
        manifest: &BTreeMap<String, String>,
        operator: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, String>,
    ) -> Result<PluginConfig, SecretError> {
        let mut entries = BTreeMap::new();
        let layers = [
            (manifest, ConfigSource::Manifest),
            (operator, ConfigSource::Operator),
        ];
        for (layer, source) in layers {
            for (key, value) in layer {
                let value = value.clone();
                entries.insert(key.clone(), Entry { value, source });
            }
        }
        for (key, reference) in secrets {
            let value = SecretRef::parse(key, reference)?.resolve(key)?;
            let source = ConfigSource::Secret;
            entries.insert(key.clone(), Entry { value, source });
        }
        Ok(PluginConfig { entries })
    }

    /// The manifest's values alone (`sluice invoke`, which has no operator config).
    pub fn of_manifest(manifest: Option<&BTreeMap<String, String>>) -> PluginConfig {
        let entries = manifest
            .into_iter()
            .flatten()
            .map(|(key, value)| {
                let value = value.clone();
                let source = ConfigSource::Manifest;
                (key.clone(), Entry { value, source })
            })
            .collect();
        PluginConfig { entries }
    }

    /// The value of `key`, for the plugin only.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(|e| e.value.as_str())
    }

    /// Every key with what may be shown of it (a secret masked) and its source.
    pub fn shown(&self) -> Vec<(&str, &str, ConfigSource)> {
        self.entries
            .iter()
            .map(|(key, e)| {
                let value = match e.source {
                    ConfigSource::Secret => MASK,
                    _ => e.value.as_str(),
                };
                (key.as_str(), value, e.source)
            })
            .collect()
    }
}

impl fmt::Debug for PluginConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.shown().into_iter().map(|(k, v, _)| (k, v)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn secrets_beat_operator_values_which_beat_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-from-file\n").unwrap();
        let config = PluginConfig::resolve(
            &map(&[("url", "http://manifest"), ("mode", "fast"), ("token", "m")]),
            &map(&[("url", "http://operator"), ("token", "o")]),
            &map(&[("token", &format!("file:{}", file.display()))]),
        )
        .unwrap();
        assert_eq!(config.get("url"), Some("http://operator"));
        assert_eq!(config.get("mode"), Some("fast"));
        assert_eq!(config.get("token"), Some("s3cret-from-file"));
        assert_eq!(config.get("missing"), None);
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains(MASK), "{debug}");
    }

    #[test]
    fn secret_references_are_checked_and_name_the_key() {
        let e = SecretRef::parse("token", "hunter2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`token`") && e.contains("env:"), "{e}");
        assert!(
            !e.contains("hunter2"),
            "a mistyped secret is not echoed: {e}"
        );
        let e = PluginConfig::resolve(
            &BTreeMap::new(),
            &BTreeMap::new(),
            &map(&[("token", "env:SLUICE_TEST_SURELY_UNSET_VARIABLE")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("SLUICE_TEST_SURELY_UNSET_VARIABLE"), "{e}");
    }
}
