//! The plugin manifest, `<name>.toml` beside `<name>.wasm`: which subjects the
//! plugin consumes, which it may publish to, per-plugin limits (which may only
//! lower the host's, see [`crate::limits`]) and retry overrides. See
//! docs/manifest.md for every key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::config::value::KeyValues;
use crate::delivery::breaker::BreakerOverrides;
use crate::host::http::OriginPattern;
use crate::limits::{LimitOverrides, with_limit_keys};
use crate::subject::{self, PublishGrants};

with_limit_keys! {
    /// The manifest as written (unknown keys are errors).
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawManifest {
        subjects: Vec<String>,
        queue_group: Option<String>,
        #[serde(default)]
        publish: Vec<String>,
        #[serde(default)]
        retry: RetryOverrides,
        #[serde(default)]
        mode: DeliveryMode,
        jetstream: Option<RawJetStream>,
        #[serde(default)]
        idempotency: RawIdempotency,
        #[serde(default)]
        outbox: RawOutbox,
        #[serde(default)]
        breaker: BreakerOverrides,
        core_buffer: Option<usize>,
        #[serde(default)]
        isolation: Isolation,
        reuse_limit: Option<u32>,
        #[serde(default)]
        config: toml::Table,
        #[serde(default)]
        state: bool,
        #[serde(default)]
        request: Vec<String>,
        #[serde(default)]
        http: Vec<String>,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJetStream {
    stream: String,
    durable: Option<String>,
    #[serde(default)]
    create_stream: bool,
    #[serde(default, with = "humantime_serde")]
    ack_wait: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdempotency {
    key: Option<String>,
    #[serde(default)]
    hash_headers: Vec<String>,
    dedup: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    confirm: Option<bool>,
}

/// How a plugin consumes its subjects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// A core NATS subscription: at-most-once from the broker, retries in the host.
    #[default]
    Core,
    /// A durable JetStream pull consumer: at-least-once, acked after success.
    Jetstream,
}

/// JetStream settings of a plugin in `jetstream` mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamSettings {
    /// The stream to consume.
    pub stream: String,
    /// Durable consumer name.
    pub durable: String,
    /// Create the stream (capturing `subjects`) when it does not exist.
    pub create_stream: bool,
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Option<Duration>,
}

/// Where the idempotency key comes from, when the manifest overrides the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The value of this header.
    Header(String),
    /// The value at this JSON pointer in the payload.
    JsonPointer(String),
    /// A hash of subject, reply subject, payload and `hash_headers` (core
    /// NATS): identical messages are one event. Opt-in only, since a sensor
    /// repeating a reading would otherwise lose the repeats.
    ContentHash,
}

/// Idempotency settings of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdempotencySettings {
    /// Override of the key source.
    pub key: Option<KeySource>,
    /// Headers folded into the content hash (`key = "content-hash"`).
    pub hash_headers: Vec<String>,
    /// Skip events whose key already completed (default true).
    pub dedup: bool,
}

/// Per-plugin overrides of the host's retry defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryOverrides {
    /// Attempts in total, including the first.
    pub max_attempts: Option<u32>,
    /// Upper bound of the first retry delay.
    #[serde(default, with = "humantime_serde")]
    pub initial_delay: Option<Duration>,
    /// Growth of the delay bound per attempt.
    pub multiplier: Option<f64>,
    /// Cap on a single delay.
    #[serde(default, with = "humantime_serde")]
    pub max_delay: Option<Duration>,
    /// Stop retrying after this long since the first attempt.
    #[serde(default, with = "humantime_serde")]
    pub max_elapsed: Option<Duration>,
    /// `full` (default), `equal` or `none`.
    pub jitter: Option<crate::delivery::Jitter>,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Subscription patterns (NATS wildcards allowed).
    pub subjects: Vec<String>,
    /// Queue group, so several hosts share the work; `None` = every host gets every event.
    pub queue_group: Option<String>,
    /// Subjects the plugin may publish to (the operator may narrow them).
    pub publish: PublishGrants,
    /// Limits asked for (timeout, concurrency, memory, ...); each may only
    /// lower the host's.
    pub limits: LimitOverrides,
    /// Retry overrides.
    pub retry: RetryOverrides,
    /// Core NATS or JetStream.
    pub mode: DeliveryMode,
    /// JetStream settings (present in `jetstream` mode).
    pub jetstream: Option<JetStreamSettings>,
    /// Idempotency key and dedup settings.
    pub idempotency: IdempotencySettings,
    /// Wait for JetStream to confirm each outbox publish before acking the event.
    pub confirm_publishes: bool,
    /// Circuit breaker overrides.
    pub breaker: BreakerOverrides,
    /// Core NATS: events buffered while every slot is busy (then dropped and counted).
    pub core_buffer: Option<usize>,
    /// A fresh instance per event, or warm instances reused.
    pub isolation: Isolation,
    /// With `isolation = "reuse"`: events one instance handles before it is
    /// replaced by a fresh one.
    pub reuse_limit: u32,
    /// `[config]`: values the plugin reads with `config.get` (contract
    /// 0.2.0), which the operator may override; never secrets.
    pub config: KeyValues,
    /// Asks for key-value state (contract 0.2.0 `state`), which the operator
    /// may refuse (`state_bucket = "off"`).
    pub state: bool,
    /// Subjects the plugin may send requests to (contract 0.2.0
    /// `requester`; the operator may narrow them with `request_allow`).
    pub request: PublishGrants,
    /// HTTP origins the plugin may call (`wasi:http`, contract 0.2.0; the
    /// operator may narrow them with `http_allow`).
    pub http: Vec<OriginPattern>,
}

/// How a plugin's events get their instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A fresh instance per event: nothing survives from one event to the next.
    #[default]
    Fresh,
    /// An instance handles up to `reuse_limit` events, one at a time, and is
    /// dropped after any trap, deadline or resource failure: faster, but the
    /// plugin's memory (its globals, caches) lives on between those events.
    Reuse,
}

/// Default `reuse_limit`.
pub const DEFAULT_REUSE_LIMIT: u32 = 1000;

/// A manifest that cannot be used; the message names the file and the key.
#[derive(Debug, Error)]
#[error("plugin manifest {}: {kind}", path.display())]
pub struct ManifestError {
    /// The manifest file.
    pub path: PathBuf,
    /// What is wrong.
    pub kind: ManifestErrorKind,
}

/// What is wrong with a manifest.
#[derive(Debug, Error)]
pub enum ManifestErrorKind {
    /// The file is missing.
    #[error(
        "missing; every plugin needs a manifest next to its .wasm declaring at least `subjects = [\"...\"]`"
    )]
    Missing,
    /// Cannot be read.
    #[error("cannot be read: {0}")]
    Read(std::io::Error),
    /// Not valid TOML or a key is unknown/mistyped.
    #[error("{0}")]
    Parse(String),
    /// A key has an invalid value.
    #[error("key `{key}`: {message}")]
    Invalid {
        /// The offending key.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

impl Manifest {
    /// Read and validate the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let err = |kind| ManifestError {
            path: path.to_path_buf(),
            kind,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(if e.kind() == std::io::ErrorKind::NotFound {
                ManifestErrorKind::Missing
            } else {
                ManifestErrorKind::Read(e)
            })
        })?;
        Manifest::parse(&text).map_err(err)
    }

    /// Parse and validate manifest text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestErrorKind> {
        let raw: RawManifest = toml::from_str(text)
            .map_err(|e| ManifestErrorKind::Parse(e.to_string().trim_end().to_string()))?;
        let invalid = |key: String, message: String| ManifestErrorKind::Invalid { key, message };
        if raw.subjects.is_empty() {
            return Err(invalid(
                "subjects".into(),
                "is empty; list at least one subject pattern, e.g. subjects = [\"orders.>\"]"
                    .into(),
            ));
        }
        for (i, pattern) in raw.subjects.iter().enumerate() {
            subject::validate_pattern(pattern)
                .map_err(|e| invalid(format!("subjects[{i}]"), e.to_string()))?;
            // Two subscriptions matching one subject would receive each
            // core event twice, and run it twice (its default key is per
            // message); JetStream refuses overlapping consumer filters.
            if let Some(first) = raw.subjects[..i].iter().position(|s| s == pattern) {
                return Err(invalid(
                    format!("subjects[{i}]"),
                    format!(
                        "`{pattern}` is listed twice (also subjects[{first}]); list each subject once"
                    ),
                ));
            }
            // (Core subscriptions in one queue group are one: the server
            // delivers each event once to the group, so overlap is harmless.)
            let grouped = raw.mode == DeliveryMode::Core && raw.queue_group.is_some();
            if let Some(other) = raw.subjects[..i]
                .iter()
                .find(|s| !grouped && subject::overlap(s, pattern))
            {
                return Err(invalid(
                    format!("subjects[{i}]"),
                    format!(
                        "`{pattern}` overlaps `{other}`: an event on a subject both match would be delivered twice; keep the wider pattern only"
                    ),
                ));
            }
        }
        for (i, pattern) in raw.publish.iter().enumerate() {
            subject::validate_pattern(pattern)
                .map_err(|e| invalid(format!("publish[{i}]"), e.to_string()))?;
        }
        for (i, pattern) in raw.request.iter().enumerate() {
            subject::validate_pattern(pattern)
                .map_err(|e| invalid(format!("request[{i}]"), e.to_string()))?;
        }
        let http = raw
            .http
            .iter()
            .enumerate()
            .map(|(i, pattern)| {
                OriginPattern::parse(pattern)
                    .map_err(|e| invalid(format!("http[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(group) = &raw.queue_group
            && (group.is_empty() || group.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid(
                "queue_group".into(),
                format!("`{group}` is not a valid queue group name (non-empty, no whitespace)"),
            ));
        }
        let limits = raw.limit_overrides();
        limits
            .validate()
            .map_err(|e| invalid(e.key.into(), e.message))?;
        if raw.retry.max_attempts == Some(0) {
            return Err(invalid(
                "retry.max_attempts".into(),
                "must be at least 1 (1 = no retries)".into(),
            ));
        }
        if raw
            .retry
            .multiplier
            .is_some_and(|m| !(1.0..=100.0).contains(&m))
        {
            return Err(invalid(
                "retry.multiplier".into(),
                "must be between 1.0 and 100.0".into(),
            ));
        }
        let jetstream = match (raw.mode, raw.jetstream) {
            (DeliveryMode::Jetstream, None) => {
                return Err(invalid(
                    "jetstream".into(),
                    "mode = \"jetstream\" needs a [jetstream] table with at least `stream = \"NAME\"`".into(),
                ));
            }
            (DeliveryMode::Core, Some(_)) => {
                return Err(invalid(
                    "jetstream".into(),
                    "a [jetstream] table needs mode = \"jetstream\" (the default mode is \"core\")"
                        .into(),
                ));
            }
            (DeliveryMode::Core, None) => None,
            (DeliveryMode::Jetstream, Some(js)) => {
                if !valid_name(&js.stream) {
                    return Err(invalid(
                        "jetstream.stream".into(),
                        format!(
                            "`{}` is not a valid stream name (letters, digits, `-`, `_`)",
                            js.stream
                        ),
                    ));
                }
                if let Some(durable) = js.durable.as_deref().filter(|d| !valid_name(d)) {
                    return Err(invalid(
                        "jetstream.durable".into(),
                        format!(
                            "`{durable}` is not a valid consumer name (letters, digits, `-`, `_`)"
                        ),
                    ));
                }
                Some(JetStreamSettings {
                    stream: js.stream,
                    durable: js.durable.unwrap_or_default(),
                    create_stream: js.create_stream,
                    ack_wait: js.ack_wait,
                })
            }
        };
        let key = match raw.idempotency.key.as_deref() {
            None => None,
            Some(spec) => {
                Some(parse_key_source(spec).map_err(|m| invalid("idempotency.key".into(), m))?)
            }
        };
        raw.breaker
            .validate()
            .map_err(|(key, message)| invalid(key.into(), message))?;
        if raw.reuse_limit == Some(0) {
            return Err(invalid(
                "reuse_limit".into(),
                "must be at least 1 (1 = a fresh instance per event)".into(),
            ));
        }
        if raw.reuse_limit.is_some() && raw.isolation != Isolation::Reuse {
            return Err(invalid(
                "reuse_limit".into(),
                "only applies with isolation = \"reuse\"; add that or remove reuse_limit".into(),
            ));
        }
        if raw.core_buffer == Some(0) {
            return Err(invalid("core_buffer".into(), "must be at least 1".into()));
        }
        let config = config_values(raw.config).map_err(|(key, message)| invalid(key, message))?;
        Ok(Manifest {
            config,
            state: raw.state,
            request: PublishGrants::new(raw.request),
            http,
            breaker: raw.breaker,
            core_buffer: raw.core_buffer,
            isolation: raw.isolation,
            reuse_limit: raw.reuse_limit.unwrap_or(DEFAULT_REUSE_LIMIT),
            mode: raw.mode,
            jetstream,
            idempotency: IdempotencySettings {
                key,
                hash_headers: raw.idempotency.hash_headers,
                dedup: raw.idempotency.dedup.unwrap_or(true),
            },
            confirm_publishes: raw
                .outbox
                .confirm
                .unwrap_or(raw.mode == DeliveryMode::Jetstream),
            subjects: raw.subjects,
            queue_group: raw.queue_group,
            publish: PublishGrants::new(raw.publish),
            limits,
            retry: raw.retry,
        })
    }
}

/// `[config]` values as the plugin reads them: text, numbers and booleans
/// as written; a nested table or array is an error naming its key.
fn config_values(table: toml::Table) -> Result<KeyValues, (String, String)> {
    table
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Datetime(d) => d.to_string(),
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    return Err((
                        format!("config.{key}"),
                        "must be a string, number or boolean (a plugin reads each value as text)"
                            .into(),
                    ));
                }
            };
            Ok((key, text))
        })
        .collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn parse_key_source(spec: &str) -> Result<KeySource, String> {
    if let Some(header) = spec.strip_prefix("header:").filter(|h| !h.is_empty()) {
        return Ok(KeySource::Header(header.to_string()));
    }
    if let Some(pointer) = spec.strip_prefix("json:").filter(|p| p.starts_with('/')) {
        return Ok(KeySource::JsonPointer(pointer.to_string()));
    }
    if spec == "content-hash" {
        return Ok(KeySource::ContentHash);
    }
    Err(format!(
        "`{spec}` is not a key source; use \"header:NAME\", \"json:/pointer/into/payload\" or \"content-hash\""
    ))
}

impl Manifest {
    /// The durable consumer name: the manifest's, else `sluice-<plugin>`.
    pub fn durable_name(&self, plugin: &str) -> Option<String> {
        self.jetstream.as_ref().map(|js| {
            if js.durable.is_empty() {
                format!("sluice-{plugin}")
            } else {
                js.durable.clone()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_manifest_parses() {
        let m = Manifest::parse(
            r#"
            subjects = ["orders.*", "payments.>"]
            queue_group = "workers"
            publish = ["orders.enriched.>"]
            max_concurrency = 8
            timeout = "2s"
            max_memory_mb = 16
            max_payload = "64KiB"
            max_publishes = 3
            max_log_lines = 50
            [retry]
            max_attempts = 3
            initial_delay = "50ms"
            "#,
        )
        .unwrap();
        assert_eq!(m.subjects, vec!["orders.*", "payments.>"]);
        assert_eq!(m.queue_group.as_deref(), Some("workers"));
        assert_eq!(m.limits.timeout, Some(Duration::from_secs(2)));
        assert_eq!(m.limits.max_concurrency, Some(8));
        assert_eq!(m.limits.max_memory_mb, Some(16));
        assert_eq!(
            m.limits.max_payload,
            Some(crate::limits::ByteSize(64 << 10))
        );
        assert_eq!(m.limits.max_publishes, Some(3));
        assert_eq!(m.limits.max_log_lines, Some(50));
        assert_eq!(m.retry.max_attempts, Some(3));
        assert_eq!(m.retry.initial_delay, Some(Duration::from_millis(50)));
        assert!(m.publish.check("orders.enriched.x").is_ok());
    }

    #[test]
    fn errors_name_the_key() {
        let unknown = Manifest::parse("subjects = [\"a\"]\nsubjcts = 1")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("subjcts"), "{unknown}");
        let missing = Manifest::parse("publish = []").unwrap_err().to_string();
        assert!(missing.contains("subjects"), "{missing}");
        let bad = Manifest::parse("subjects = [\"a\", \"b..c\"]")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("subjects[1]") && bad.contains("b..c"), "{bad}");
        let dur = Manifest::parse("subjects = [\"a\"]\ntimeout = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(dur.contains("timeout"), "{dur}");
        let twice = Manifest::parse("subjects = [\"a\", \"b\", \"a\"]")
            .unwrap_err()
            .to_string();
        assert!(
            twice.contains("subjects[2]") && twice.contains("subjects[0]") && twice.contains("`a`"),
            "{twice}"
        );
        let overlapping = Manifest::parse("subjects = [\"orders.>\", \"orders.eu\"]")
            .unwrap_err()
            .to_string();
        assert!(
            overlapping.contains("subjects[1]")
                && overlapping.contains("`orders.eu` overlaps `orders.>`"),
            "{overlapping}"
        );
        assert!(
            Manifest::parse("subjects = [\"orders.>\", \"orders.eu\"]\nqueue_group = \"g\"")
                .is_ok(),
            "a queue group gets each event once"
        );
        let empty = Manifest::parse("subjects = []").unwrap_err().to_string();
        assert!(empty.contains("subjects"), "{empty}");
        let zero = Manifest::parse("subjects = [\"a\"]\nmax_memory_mb = 0")
            .unwrap_err()
            .to_string();
        assert!(zero.contains("max_memory_mb"), "{zero}");
        let size = Manifest::parse("subjects = [\"a\"]\nmax_payload = \"big\"")
            .unwrap_err()
            .to_string();
        assert!(
            size.contains("max_payload") || size.contains("big"),
            "{size}"
        );
    }

    #[test]
    fn jetstream_mode_and_idempotency_parse_and_validate() {
        let m = Manifest::parse(
            "subjects = [\"orders.>\"]\nmode = \"jetstream\"\n[jetstream]\nstream = \"ORDERS\"\ncreate_stream = true\n[idempotency]\nkey = \"json:/order/id\"",
        )
        .unwrap();
        assert_eq!(m.mode, DeliveryMode::Jetstream);
        assert_eq!(m.jetstream.as_ref().unwrap().stream, "ORDERS");
        assert_eq!(m.durable_name("orders").as_deref(), Some("sluice-orders"));
        assert_eq!(
            m.idempotency.key,
            Some(KeySource::JsonPointer("/order/id".into()))
        );
        assert!(m.idempotency.dedup && m.confirm_publishes);

        let e = Manifest::parse("subjects = [\"a\"]\nmode = \"jetstream\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[jetstream]"), "{e}");
        let e = Manifest::parse("subjects = [\"a\"]\nmode = \"pull\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode"), "{e}");
        let e = Manifest::parse("subjects = [\"a\"]\n[idempotency]\nkey = \"body\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("idempotency.key"), "{e}");
        let core = Manifest::parse("subjects = [\"a\"]").unwrap();
        assert!(!core.confirm_publishes && core.idempotency.dedup);
    }

    #[test]
    fn isolation_defaults_to_fresh_and_reuse_takes_a_limit() {
        let m = Manifest::parse("subjects = [\"a\"]").unwrap();
        assert_eq!(m.isolation, Isolation::Fresh);
        let m = Manifest::parse("subjects = [\"a\"]\nisolation = \"reuse\"").unwrap();
        assert_eq!(
            (m.isolation, m.reuse_limit),
            (Isolation::Reuse, DEFAULT_REUSE_LIMIT)
        );
        let m =
            Manifest::parse("subjects = [\"a\"]\nisolation = \"reuse\"\nreuse_limit = 50").unwrap();
        assert_eq!(m.reuse_limit, 50);
        for bad in [
            "isolation = \"pooled\"",
            "isolation = \"reuse\"\nreuse_limit = 0",
            "reuse_limit = 10",
        ] {
            let e = Manifest::parse(&format!("subjects = [\"a\"]\n{bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("isolation") || e.contains("reuse_limit"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn config_values_are_read_as_text_and_nested_values_are_named() {
        let m = Manifest::parse(
            "subjects = [\"a\"]\n[config]\nurl = \"http://x\"\nretries = 3\nstrict = true",
        )
        .unwrap();
        assert_eq!(m.config.get("url").map(String::as_str), Some("http://x"));
        assert_eq!(m.config.get("retries").map(String::as_str), Some("3"));
        assert_eq!(m.config.get("strict").map(String::as_str), Some("true"));
        let e = Manifest::parse("subjects = [\"a\"]\n[config]\nhosts = [\"a\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.hosts"), "{e}");
    }

    #[test]
    fn http_origins_parse_and_a_bad_one_is_named() {
        let m = Manifest::parse(
            "subjects = [\"a\"]\nhttp = [\"https://api.example.com\", \"http://127.0.0.1:*\"]",
        )
        .unwrap();
        assert_eq!(m.http.len(), 2);
        assert_eq!(m.http[1].to_string(), "http://127.0.0.1:*");
        assert!(
            Manifest::parse("subjects = [\"a\"]")
                .unwrap()
                .http
                .is_empty()
        );
        let e = Manifest::parse(
            "subjects = [\"a\"]\nhttp = [\"https://ok.io\", \"api.example.com/x\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("http[1]") && e.contains("api.example.com/x"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_says_what_to_do() {
        let err = Manifest::load(Path::new("/nonexistent/echo.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/echo.toml") && err.contains("subjects"),
            "{err}"
        );
    }
}
