//! Per-plugin sandbox limits and the operator's publish allow-lists.
//!
//! A plugin is untrusted, and so is its manifest: anyone who can copy files
//! into the plugin folder can write one. So limits come in three layers:
//!
//! 1. host-wide defaults (config file, `SLUICE_*` env, flags), which are also
//!    the ceiling for every plugin;
//! 2. the operator's per-plugin rules, `[plugin.<name>]` in the host config,
//!    which may raise or lower that plugin's ceiling and narrow what it may
//!    publish to;
//! 3. the manifest, which may only *lower* a limit: a value above the ceiling
//!    is capped (and the capping is logged), never honoured.
//!
//! The same key names are used in all three places; [`with_limit_keys!`]
//! declares them once.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::engine::invoke::InvokeLimits;
use crate::host::PublishLimits;
use crate::subject::{self, PublishGrants};

/// A size in bytes, written as an integer or with a 1024-based unit
/// (`"512KiB"`, `"4MiB"`, `"1GiB"`; `KB`/`MB`/`GB` mean the same, as in nats-server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Why a size could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("`{0}` is not a size; write bytes (1048576) or a number with KiB, MiB or GiB (\"1MiB\")")]
pub struct ByteSizeError(String);

impl ByteSize {
    /// The size in bytes, saturating at `usize::MAX`.
    pub fn bytes(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }
}

impl std::str::FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            _ => return Err(ByteSizeError(s.to_string())),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .map(ByteSize)
            .ok_or_else(|| ByteSizeError(s.to_string()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n >= 1 << 30 && n % (1 << 30) == 0 => write!(f, "{}GiB", n >> 30),
            n if n >= 1 << 20 && n % (1 << 20) == 0 => write!(f, "{}MiB", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => write!(f, "{}KiB", n >> 10),
            n => write!(f, "{n}B"),
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Declares a serde struct carrying every per-plugin limit key (all optional)
/// besides its own fields, plus `limit_overrides()` to extract them. Used for
/// the manifest, the host config, and the operator's `[plugin.<name>]` rules,
/// so the three always accept the same keys.
macro_rules! with_limit_keys {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $fty:ty, )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field : $fty, )*
            /// Time limit per event (instantiate + handle).
            #[serde(default, with = "humantime_serde")]
            pub timeout: Option<std::time::Duration>,
            /// Most events of the plugin handled at once.
            pub max_concurrency: Option<u32>,
            /// Linear memory cap per instance, in MiB.
            pub max_memory_mb: Option<u32>,
            /// Table size cap per instance, in elements.
            pub max_table_elements: Option<u32>,
            /// Core WebAssembly instances one plugin instance may create.
            pub max_core_instances: Option<u32>,
            /// Largest event payload handed to the plugin.
            pub max_payload: Option<$crate::limits::ByteSize>,
            /// Most messages one event may publish.
            pub max_publishes: Option<u32>,
            /// Most payload bytes one event may publish, summed.
            pub max_publish_bytes: Option<$crate::limits::ByteSize>,
            /// Most log records plus stdout/stderr lines logged per event.
            pub max_log_lines: Option<u32>,
            /// Most log lines per second per plugin, across all its events.
            pub max_log_rate: Option<u32>,
        }

        impl $name {
            /// The limit keys set in this table.
            pub fn limit_overrides(&self) -> $crate::limits::LimitOverrides {
                $crate::limits::LimitOverrides {
                    timeout: self.timeout,
                    max_concurrency: self.max_concurrency,
                    max_memory_mb: self.max_memory_mb,
                    max_table_elements: self.max_table_elements,
                    max_core_instances: self.max_core_instances,
                    max_payload: self.max_payload,
                    max_publishes: self.max_publishes,
                    max_publish_bytes: self.max_publish_bytes,
                    max_log_lines: self.max_log_lines,
                    max_log_rate: self.max_log_rate,
                }
            }
        }
    };
}
pub(crate) use with_limit_keys;

with_limit_keys! {
    /// Limit keys as written in one place; `None` = not set there.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct LimitOverrides {}
}

with_limit_keys! {
    /// The operator's rules for one plugin: `[plugin.<name>]` in the host config.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PluginRules {
        /// Subject patterns this plugin may publish to, whatever its manifest
        /// grants; replaces the host-wide `publish_allow` for this plugin.
        pub publish_allow: Option<Vec<String>>,
    }
}

/// A limit value outside its allowed range; names the key.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("key `{key}`: {message}")]
pub struct LimitError {
    /// The key.
    pub key: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl LimitOverrides {
    /// Check every set value against its allowed range.
    pub fn validate(&self) -> Result<(), LimitError> {
        fn range<T: PartialOrd + fmt::Display + Copy>(
            key: &'static str,
            value: Option<T>,
            min: T,
            max: T,
        ) -> Result<(), LimitError> {
            match value {
                Some(v) if v < min || v > max => Err(LimitError {
                    key,
                    message: format!("{v} is out of range; use {min} to {max}"),
                }),
                _ => Ok(()),
            }
        }
        if let Some(t) = self.timeout
            && (t.is_zero() || t > Duration::from_secs(3600))
        {
            return Err(LimitError {
                key: "timeout",
                message: "must be greater than zero and at most 1h, e.g. \"5s\"".into(),
            });
        }
        range("max_concurrency", self.max_concurrency, 1, 100_000)?;
        range("max_memory_mb", self.max_memory_mb, 1, 4096)?;
        range("max_table_elements", self.max_table_elements, 1, 10_000_000)?;
        range("max_core_instances", self.max_core_instances, 1, 1000)?;
        range(
            "max_payload",
            self.max_payload,
            ByteSize(1),
            ByteSize(1 << 30),
        )?;
        range("max_publishes", self.max_publishes, 0, 1_000_000)?;
        range(
            "max_publish_bytes",
            self.max_publish_bytes,
            ByteSize(0),
            ByteSize(1 << 30),
        )?;
        range("max_log_lines", self.max_log_lines, 0, 1_000_000)?;
        range("max_log_rate", self.max_log_rate, 0, 1_000_000)?;
        Ok(())
    }
}

/// The resolved limits of one plugin (or the host-wide defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time limit per event (instantiate + handle), wall clock.
    pub timeout: Duration,
    /// Most events handled at once.
    pub max_concurrency: u32,
    /// Linear memory cap per instance, in MiB.
    pub max_memory_mb: u32,
    /// Table size cap per instance, in elements.
    pub max_table_elements: u32,
    /// Core WebAssembly instances per plugin instance.
    pub max_core_instances: u32,
    /// Largest payload handed to the plugin.
    pub max_payload: ByteSize,
    /// Most publishes per event.
    pub max_publishes: u32,
    /// Most published payload bytes per event.
    pub max_publish_bytes: ByteSize,
    /// Most log records plus output lines per event.
    pub max_log_lines: u32,
    /// Most log lines per second for the plugin as a whole.
    pub max_log_rate: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(5),
            max_concurrency: 32,
            max_memory_mb: 64,
            max_table_elements: 20_000,
            max_core_instances: 16,
            max_payload: ByteSize::mib(4),
            max_publishes: 100,
            max_publish_bytes: ByteSize::mib(4),
            max_log_lines: 100,
            max_log_rate: 100,
        }
    }
}

/// A manifest value above the plugin's ceiling, which was capped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capped {
    /// The key.
    pub key: &'static str,
    /// What the manifest asked for.
    pub asked: String,
    /// What the plugin got (the ceiling).
    pub granted: String,
}

impl fmt::Display for Capped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` = {} capped at the host limit {}",
            self.key, self.asked, self.granted
        )
    }
}

/// Renders a limit value the way it is written in a config file.
trait Show {
    fn show(&self) -> String;
}

impl Show for u32 {
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Show for ByteSize {
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Show for Duration {
    fn show(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

/// Applies one key of a [`LimitOverrides`] to a [`Limits`] field, by a rule.
macro_rules! each_limit {
    ($apply:ident, $limits:expr, $o:expr) => {{
        $apply!($limits, $o, timeout);
        $apply!($limits, $o, max_concurrency);
        $apply!($limits, $o, max_memory_mb);
        $apply!($limits, $o, max_table_elements);
        $apply!($limits, $o, max_core_instances);
        $apply!($limits, $o, max_payload);
        $apply!($limits, $o, max_publishes);
        $apply!($limits, $o, max_publish_bytes);
        $apply!($limits, $o, max_log_lines);
        $apply!($limits, $o, max_log_rate);
    }};
}

impl Limits {
    /// These limits with every key set in `o` replaced (operator rules and
    /// host config: may raise or lower).
    pub fn overlay(mut self, o: &LimitOverrides) -> Limits {
        macro_rules! replace {
            ($l:expr, $o:expr, $k:ident) => {
                if let Some(v) = $o.$k {
                    $l.$k = v;
                }
            };
        }
        each_limit!(replace, self, o);
        self
    }

    /// These limits lowered by `o` (a manifest: may only lower). Values
    /// above the ceiling are capped and reported.
    pub fn lower(mut self, o: &LimitOverrides) -> (Limits, Vec<Capped>) {
        let mut capped = Vec::new();
        macro_rules! lower {
            ($l:expr, $o:expr, $k:ident) => {
                if let Some(v) = $o.$k {
                    if v > $l.$k {
                        capped.push(Capped {
                            key: stringify!($k),
                            asked: v.show(),
                            granted: $l.$k.show(),
                        });
                    } else {
                        $l.$k = v;
                    }
                }
            };
        }
        each_limit!(lower, self, o);
        (self, capped)
    }

    /// The larger of each limit (to size the shared engine for every plugin).
    pub fn max(mut self, other: &Limits) -> Limits {
        macro_rules! larger {
            ($l:expr, $o:expr, $k:ident) => {
                $l.$k = $l.$k.max($o.$k);
            };
        }
        each_limit!(larger, self, other);
        self
    }

    /// Linear memory cap in bytes.
    pub fn max_memory_bytes(&self) -> usize {
        (self.max_memory_mb as usize) << 20
    }

    /// The per-invocation part, as the engine enforces it.
    pub fn invoke_limits(&self) -> InvokeLimits {
        InvokeLimits {
            timeout: self.timeout,
            max_memory_bytes: self.max_memory_bytes(),
            max_table_elements: self.max_table_elements as usize,
            max_core_instances: self.max_core_instances as usize,
            max_payload_bytes: self.max_payload.bytes(),
            publish: PublishLimits {
                max_messages: self.max_publishes,
                max_bytes: self.max_publish_bytes.bytes(),
            },
            max_log_lines: self.max_log_lines,
        }
    }
}

/// The operator's sandbox policy: host-wide limits, a host-wide publish
/// allow-list, and per-plugin rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxPolicy {
    /// Host-wide defaults and ceilings.
    pub defaults: Limits,
    /// Subjects any plugin may publish to (`None` = whatever its manifest grants).
    pub publish_allow: Option<Vec<String>>,
    /// Rules per plugin name.
    pub rules: BTreeMap<String, PluginRules>,
}

/// What one plugin may do: its limits and its publish grants.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSandbox {
    /// Effective limits.
    pub limits: Limits,
    /// Effective publish grants (manifest, narrowed by the operator).
    pub grants: PublishGrants,
    /// Manifest values that asked for more than allowed and were capped.
    pub capped: Vec<Capped>,
}

impl SandboxPolicy {
    /// The ceiling for `plugin`: host limits with its operator rules applied.
    pub fn ceiling(&self, plugin: &str) -> Limits {
        match self.rules.get(plugin) {
            Some(rules) => self.defaults.overlay(&rules.limit_overrides()),
            None => self.defaults,
        }
    }

    /// What `plugin` gets, given what its manifest asks for.
    pub fn resolve(
        &self,
        plugin: &str,
        manifest_limits: &LimitOverrides,
        manifest_grants: &PublishGrants,
    ) -> PluginSandbox {
        let (limits, capped) = self.ceiling(plugin).lower(manifest_limits);
        let allow = self
            .rules
            .get(plugin)
            .and_then(|r| r.publish_allow.clone())
            .or_else(|| self.publish_allow.clone());
        let grants = match allow {
            Some(allow) => manifest_grants.clone().restricted_to(allow),
            None => manifest_grants.clone(),
        };
        PluginSandbox {
            limits,
            grants,
            capped,
        }
    }

    /// The largest limit any plugin may have (the engine's pool is sized for it).
    pub fn largest(&self) -> Limits {
        self.rules.values().fold(self.defaults, |acc, r| {
            acc.max(&self.defaults.overlay(&r.limit_overrides()))
        })
    }

    /// Validate every value and allow-list pattern; errors name the key.
    pub fn validate(&self) -> Result<(), LimitError> {
        let check_patterns = |key: &'static str, list: &Option<Vec<String>>| {
            for pattern in list.iter().flatten() {
                subject::validate_pattern(pattern).map_err(|e| LimitError {
                    key,
                    message: e.to_string(),
                })?;
            }
            Ok(())
        };
        check_patterns("publish_allow", &self.publish_allow)?;
        for (name, rules) in &self.rules {
            rules.limit_overrides().validate().map_err(|e| LimitError {
                key: "plugin.<name>",
                message: format!("[plugin.{name}] {e}"),
            })?;
            check_patterns("plugin.<name>.publish_allow", &rules.publish_allow).map_err(|e| {
                LimitError {
                    key: e.key,
                    message: format!("[plugin.{name}] publish_allow: {}", e.message),
                }
            })?;
        }
        Ok(())
    }
}

impl LimitOverrides {
    /// The keys set here, as config-file values.
    fn rendered(&self) -> toml::Table {
        let mut t = toml::Table::new();
        macro_rules! put {
            ($t:expr, $o:expr, $k:ident) => {
                if let Some(v) = $o.$k {
                    $t.insert(stringify!($k).into(), v.rendered());
                }
            };
        }
        each_limit!(put, t, self);
        t
    }
}

/// A limit value as a TOML value, written the way an operator would.
trait Rendered {
    fn rendered(&self) -> toml::Value;
}

impl Rendered for u32 {
    fn rendered(&self) -> toml::Value {
        toml::Value::Integer(i64::from(*self))
    }
}

impl Rendered for ByteSize {
    fn rendered(&self) -> toml::Value {
        toml::Value::String(self.show())
    }
}

impl Rendered for Duration {
    fn rendered(&self) -> toml::Value {
        toml::Value::String(self.show())
    }
}

impl Limits {
    /// Every limit, as an override with every key set.
    fn as_overrides(&self) -> LimitOverrides {
        let mut o = LimitOverrides::default();
        macro_rules! set {
            ($o:expr, $l:expr, $k:ident) => {
                $o.$k = Some($l.$k);
            };
        }
        each_limit!(set, o, self);
        o
    }
}

/// Put the effective sandbox policy into a rendered config file (`sluice
/// config check`): every host limit, the allow-list and each `[plugin.<name>]`.
pub fn render_into(t: &mut toml::Table, policy: &SandboxPolicy) {
    t.extend(policy.defaults.as_overrides().rendered());
    let list = |l: &[String]| {
        toml::Value::Array(l.iter().map(|p| toml::Value::String(p.clone())).collect())
    };
    if let Some(allow) = &policy.publish_allow {
        t.insert("publish_allow".into(), list(allow));
    }
    let mut plugins = toml::Table::new();
    for (name, rules) in &policy.rules {
        let mut r = rules.limit_overrides().rendered();
        if let Some(allow) = &rules.publish_allow {
            r.insert("publish_allow".into(), list(allow));
        }
        plugins.insert(name.clone(), toml::Value::Table(r));
    }
    if !plugins.is_empty() {
        t.insert("plugin".into(), toml::Value::Table(plugins));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!("1048576".parse(), Ok(ByteSize(1 << 20)));
        assert_eq!("4MiB".parse(), Ok(ByteSize(4 << 20)));
        assert_eq!("4 MB".parse(), Ok(ByteSize(4 << 20)));
        assert_eq!("512KiB".parse(), Ok(ByteSize(512 << 10)));
        assert_eq!("1g".parse(), Ok(ByteSize(1 << 30)));
        assert!("lots".parse::<ByteSize>().is_err());
        assert!("4TiB".parse::<ByteSize>().is_err());
        assert!("-1".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize::mib(4).to_string(), "4MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn limit_keys_parse_from_toml_and_unknown_keys_are_named() {
        let o: LimitOverrides = toml::from_str(
            "timeout = \"2s\"\nmax_memory_mb = 8\nmax_payload = \"64KiB\"\nmax_publish_bytes = 1000",
        )
        .unwrap();
        assert_eq!(o.timeout, Some(Duration::from_secs(2)));
        assert_eq!(o.max_memory_mb, Some(8));
        assert_eq!(o.max_payload, Some(ByteSize(64 << 10)));
        assert_eq!(o.max_publish_bytes, Some(ByteSize(1000)));
        let e = toml::from_str::<LimitOverrides>("max_memry_mb = 8")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_memry_mb"), "{e}");
        let e = toml::from_str::<LimitOverrides>("max_payload = \"huge\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("huge"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let zero = LimitOverrides {
            max_memory_mb: Some(0),
            ..LimitOverrides::default()
        };
        assert_eq!(zero.validate().unwrap_err().key, "max_memory_mb");
        let forever = LimitOverrides {
            timeout: Some(Duration::from_secs(7200)),
            ..LimitOverrides::default()
        };
        assert_eq!(forever.validate().unwrap_err().key, "timeout");
        let none = LimitOverrides {
            max_publishes: Some(0),
            max_log_lines: Some(0),
            ..LimitOverrides::default()
        };
        assert!(
            none.validate().is_ok(),
            "zero publishes and logs are allowed"
        );
    }

    #[test]
    fn a_manifest_can_lower_but_never_raise_a_limit() {
        let ceiling = Limits::default();
        let asks = LimitOverrides {
            max_memory_mb: Some(16),
            timeout: Some(Duration::from_secs(60)),
            max_publishes: Some(10_000),
            ..LimitOverrides::default()
        };
        let (got, capped) = ceiling.lower(&asks);
        assert_eq!(got.max_memory_mb, 16);
        assert_eq!(got.timeout, ceiling.timeout);
        assert_eq!(got.max_publishes, ceiling.max_publishes);
        let keys: Vec<&str> = capped.iter().map(|c| c.key).collect();
        assert_eq!(keys, vec!["timeout", "max_publishes"]);
        assert!(capped[1].to_string().contains("10000"), "{}", capped[1]);
    }

    #[test]
    fn operator_rules_set_one_plugins_ceiling_and_allow_list() {
        let mut policy = SandboxPolicy {
            publish_allow: Some(vec!["events.>".into()]),
            ..SandboxPolicy::default()
        };
        policy.rules.insert(
            "big".into(),
            PluginRules {
                max_memory_mb: Some(256),
                publish_allow: Some(vec!["orders.>".into()]),
                ..PluginRules::default()
            },
        );
        let grants = PublishGrants::new(vec![">".into()]);
        let asks = LimitOverrides {
            max_memory_mb: Some(512),
            ..LimitOverrides::default()
        };
        let big = policy.resolve("big", &asks, &grants);
        assert_eq!(
            big.limits.max_memory_mb, 256,
            "capped at the operator's rule"
        );
        assert_eq!(big.capped.len(), 1);
        assert!(big.grants.check("orders.created").is_ok());
        assert!(
            big.grants.check("events.x").is_err(),
            "rule replaces host list"
        );
        let small = policy.resolve("small", &asks, &grants);
        assert_eq!(small.limits.max_memory_mb, 64, "host ceiling");
        assert!(small.grants.check("events.x").is_ok());
        assert!(small.grants.check("orders.created").is_err());
        assert_eq!(policy.largest().max_memory_mb, 256, "the pool fits `big`");
    }
}
