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
//! The same key names are used in all three places; [`limit_table!`]
//! declares each limit once, and everything else is generated from it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;
#[cfg(test)]
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::config::value::KeyValues;
use crate::config::value::{SettingValue, Show, text};
use crate::config::{Kind, Origin, Origins, Setting};
use crate::engine::invoke::InvokeLimits;
use crate::host::PublishLimits;
use crate::host::config::{PluginConfig, SecretError};
use crate::host::http::{HttpGrants, HttpLimits, HttpPolicy, OriginPattern};
use crate::subject::PublishGrants;

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

/// THE table of per-plugin limits. Each entry is the whole declaration of
/// one limit: key, type, default (host-wide, and every plugin's ceiling),
/// allowed range and help. From it come the limit keys of the host config,
/// of `[plugin.<name>]` and of the manifest ([`with_limit_keys!`]), the
/// flags and `SLUICE_*` variables, [`Limits`] and its defaults, the range
/// checks, the layering (overlay, lower, max), `config check` and the docs.
///
/// It hands the entries to a callback macro: `limit_table!([callback] { prefix })`
/// expands to `callback! { { prefix } entries }`.
macro_rules! limit_table {
    ([$($callback:tt)+] { $($prefix:tt)* }) => {
        $($callback)+! {
            { $($prefix)* }
            /// Time limit per event (instantiate + handle), wall clock, e.g. 5s or 250ms.
            timeout: std::time::Duration = std::time::Duration::from_secs(5),
                range(std::time::Duration::from_nanos(1), std::time::Duration::from_secs(3600));
            /// Events of one plugin handled at once.
            max_concurrency: u32 = 32, range(1, 100_000);
            /// Linear memory per plugin instance, in MiB.
            max_memory_mb: u32 = 64, range(1, 4096);
            /// Table elements per plugin instance.
            max_table_elements: u32 = 20_000, range(1, 10_000_000);
            /// Core WebAssembly instances per plugin instance.
            max_core_instances: u32 = 16, range(1, 1000);
            /// Largest event payload handed to a plugin, e.g. 4MiB.
            max_payload: $crate::limits::ByteSize = $crate::limits::ByteSize::mib(4),
                range($crate::limits::ByteSize(1), $crate::limits::ByteSize(1 << 30));
            /// Messages one event may publish.
            max_publishes: u32 = 100, range(0, 1_000_000);
            /// Bytes one event may publish (payloads, subjects, headers).
            max_publish_bytes: $crate::limits::ByteSize = $crate::limits::ByteSize::mib(4),
                range($crate::limits::ByteSize(0), $crate::limits::ByteSize(1 << 30));
            /// Log records plus stdout/stderr lines logged per event.
            max_log_lines: u32 = 100, range(0, 1_000_000);
            /// Log lines per second per plugin, across its events.
            max_log_rate: u32 = 100, range(0, 1_000_000);
            /// HTTP requests one event may send (`wasi:http`, contract 0.2.0).
            max_http_requests: u32 = $crate::host::http::DEFAULT_MAX_REQUESTS, range(0, 10_000);
            /// Largest HTTP response body a plugin may receive, e.g. 1MiB.
            max_http_response: $crate::limits::ByteSize = $crate::limits::ByteSize::mib(4),
                range($crate::limits::ByteSize(0), $crate::limits::ByteSize(1 << 30));
        }
    };
}
pub(crate) use limit_table;

/// Callback of [`limit_table!`]: the struct given as prefix, with every
/// limit key added as an optional serde field, and `limit_overrides()`.
macro_rules! limit_fields {
    (
        {
            $(#[$meta:meta])*
            $vis:vis struct $name:ident {
                $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $fty:ty, )*
            }
        }
        $( $(#[doc = $doc:literal])+ $key:ident : $ty:ty = $default:expr, range($min:expr, $max:expr); )*
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field : $fty, )*
            $(
                $(#[doc = $doc])+
                #[serde(default, deserialize_with = "crate::config::value::optional")]
                pub $key: Option<$ty>,
            )*
        }

        impl $name {
            /// The limit keys set in this table.
            pub fn limit_overrides(&self) -> $crate::limits::LimitOverrides {
                $crate::limits::LimitOverrides { $( $key: self.$key, )* }
            }
        }
    };
}
pub(crate) use limit_fields;

/// Declares a serde struct carrying every per-plugin limit key (all optional)
/// besides its own fields, plus `limit_overrides()` to extract them. Used for
/// the manifest, the host config, and the operator's `[plugin.<name>]` rules,
/// so the three always accept the keys of [`limit_table!`].
macro_rules! with_limit_keys {
    ($($item:tt)*) => {
        $crate::limits::limit_table!([$crate::limits::limit_fields] { $($item)* });
    };
}
pub(crate) use with_limit_keys;

with_limit_keys! {
    /// Limit keys as written in one place; `None` = not set there.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct LimitOverrides {}
}

pub use crate::config::PluginRules;

/// A limit value outside its allowed range; names the key.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("key `{key}`: {message}")]
pub struct LimitError {
    /// The key.
    pub key: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// `value` (if set) within `min..=max`, else an error naming `key`.
fn check_range<T: PartialOrd + Show>(
    key: &'static str,
    value: Option<T>,
    min: T,
    max: T,
) -> Result<(), LimitError> {
    match value {
        Some(v) if v < min || v > max => Err(LimitError {
            key,
            message: format!(
                "{} is out of range; use {} to {}",
                text(&v),
                text(&min),
                text(&max)
            ),
        }),
        _ => Ok(()),
    }
}

/// Callback of [`limit_table!`]: [`Limits`], its defaults, the range checks,
/// the layering, rendering, the clap side and the descriptors.
macro_rules! limit_core {
    (
        {}
        $( $(#[doc = $doc:literal])+ $key:ident : $ty:ty = $default:expr, range($min:expr, $max:expr); )*
    ) => {
        /// The resolved limits of one plugin (or the host-wide defaults).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Limits {
            $( $(#[doc = $doc])+ pub $key: $ty, )*
        }

        impl Default for Limits {
            fn default() -> Self {
                Limits { $( $key: $default, )* }
            }
        }

        impl LimitOverrides {
            /// Check every set value against its allowed range.
            pub fn validate(&self) -> Result<(), LimitError> {
                $( check_range(stringify!($key), self.$key, $min, $max)?; )*
                Ok(())
            }

            /// The keys set here, as config-file values.
            fn rendered(&self) -> toml::Table {
                let mut t = toml::Table::new();
                $(
                    if let Some(value) = Show::show(&self.$key) {
                        t.insert(stringify!($key).into(), value);
                    }
                )*
                t
            }

            /// The limit flags clap parsed (from flags and env).
            pub(crate) fn from_matches(
                m: &clap::ArgMatches,
                origins: &mut BTreeMap<&'static str, Origin>,
            ) -> LimitOverrides {
                LimitOverrides {
                    $( $key: crate::config::flags::take::<$ty>(m, stringify!($key), origins), )*
                }
            }

            /// Record where each host-wide limit came from: `flags` (as
            /// clap said) over `file` over the default.
            pub(crate) fn note_origins(
                flags: &LimitOverrides,
                file: &LimitOverrides,
                clap_said: &BTreeMap<&'static str, Origin>,
                origins: &mut Origins,
            ) {
                $( origins.note(stringify!($key), flags.$key.is_some(), file.$key.is_some(), clap_said); )*
            }
        }

        impl Limits {
            /// These limits with every key set in `o` replaced (operator rules and
            /// host config: may raise or lower).
            pub fn overlay(mut self, o: &LimitOverrides) -> Limits {
                $( if let Some(v) = o.$key { self.$key = v; } )*
                self
            }

            /// These limits lowered by `o` (a manifest: may only lower). Values
            /// above the ceiling are capped and reported.
            pub fn lower(mut self, o: &LimitOverrides) -> (Limits, Vec<Capped>) {
                let mut capped = Vec::new();
                $(
                    if let Some(v) = o.$key {
                        if v > self.$key {
                            capped.push(Capped {
                                key: stringify!($key),
                                asked: text(&v),
                                granted: text(&self.$key),
                            });
                        } else {
                            self.$key = v;
                        }
                    }
                )*
                (self, capped)
            }

            /// The larger of each limit (to size the shared engine for every plugin).
            pub fn max(mut self, other: &Limits) -> Limits {
                $( self.$key = self.$key.max(other.$key); )*
                self
            }

            /// Every limit, as an override with every key set.
            fn as_overrides(&self) -> LimitOverrides {
                LimitOverrides { $( $key: Some(self.$key), )* }
            }
        }

        /// The descriptors of the per-plugin limits, in declaration order.
        pub static LIMITS: LazyLock<Vec<Setting>> = LazyLock::new(|| {
            vec![$(
                Setting {
                    default: Some(text(&{ let v: $ty = $default; v })),
                    range: Some((text(&{ let v: $ty = $min; v }), text(&{ let v: $ty = $max; v }))),
                    ..Setting::new(
                        stringify!($key),
                        &[$($doc),+],
                        Kind::Limit,
                        &[],
                        <$ty as SettingValue>::arg,
                        <$ty as SettingValue>::VALUE_NAME,
                    )
                }
            ),*]
        });
    };
}

limit_table!([limit_core] {});

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

impl Limits {
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
            http: HttpLimits {
                max_requests: self.max_http_requests,
                max_response_bytes: self.max_http_response.0,
            },
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
    /// Subjects any plugin may send requests to (`None` = whatever its manifest grants).
    pub request_allow: Option<Vec<String>>,
    /// HTTP origins any plugin may call (`None` = whatever its manifest grants).
    pub http_allow: Option<Vec<String>>,
    /// Whether plugins may connect to private, loopback and link-local addresses.
    pub http_allow_private: bool,
    /// Configuration values for every plugin without its own (`plugin_config`).
    pub plugin_config: Option<KeyValues>,
    /// Secret references for every plugin without its own (`plugin_secrets`).
    pub plugin_secrets: Option<KeyValues>,
    /// The state bucket (`state_bucket`); `None`: state is off.
    pub state_bucket: Option<String>,
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

    /// The configuration `plugin` reads: its manifest's `[config]` under the
    /// operator's `plugin_config`, and the operator's `plugin_secrets`
    /// (resolved now; an unset variable or unreadable file is an error).
    pub fn config_of(
        &self,
        plugin: &str,
        manifest_config: &KeyValues,
    ) -> Result<PluginConfig, SecretError> {
        let rules = self.rules.get(plugin);
        let operator = rules
            .and_then(|r| r.plugin_config.as_ref())
            .or(self.plugin_config.as_ref());
        let secrets = rules
            .and_then(|r| r.plugin_secrets.as_ref())
            .or(self.plugin_secrets.as_ref());
        let none = KeyValues::new();
        PluginConfig::resolve(
            manifest_config,
            operator.unwrap_or(&none),
            secrets.unwrap_or(&none),
        )
    }

    /// The subjects `plugin` may send requests to: its manifest's `request`
    /// narrowed by the operator's `request_allow` (its own, else the host's);
    /// `None` when that leaves nothing.
    pub fn request_grants_of(
        &self,
        plugin: &str,
        manifest: &PublishGrants,
    ) -> Option<PublishGrants> {
        if manifest.patterns().is_empty() {
            return None;
        }
        let allow = self
            .rules
            .get(plugin)
            .and_then(|r| r.request_allow.clone())
            .or_else(|| self.request_allow.clone());
        Some(match allow {
            Some(allow) => manifest.clone().restricted_to(allow),
            None => manifest.clone(),
        })
    }

    /// What `plugin` may reach over HTTP: its manifest's origins capped by
    /// the operator's `http_allow` (its own, else the host's), and
    /// `http_allow_private` (likewise); `None` when the manifest grants no
    /// origin.
    pub fn http_policy_of(&self, plugin: &str, manifest: &[OriginPattern]) -> Option<HttpPolicy> {
        if manifest.is_empty() {
            return None;
        }
        let rules = self.rules.get(plugin);
        let allow = rules
            .and_then(|r| r.http_allow.clone())
            .or_else(|| self.http_allow.clone())
            // Checked when the configuration was read.
            .map(|list| crate::host::http::origin::parse_all(&list).unwrap_or_default());
        Some(HttpPolicy {
            grants: HttpGrants::new(manifest.to_vec(), allow),
            // A plugin's own value was checked when the configuration was read.
            allow_private: rules
                .and_then(|r| r.http_allow_private.as_ref())
                .map_or(self.http_allow_private, |s| s.on().unwrap_or(false)),
        })
    }

    /// The state bucket of `plugin` (its `[plugin.<name>] state_bucket`, else
    /// the host's); `None` when the operator turned state off for it.
    pub fn state_bucket_of(&self, plugin: &str) -> Option<String> {
        match self.rules.get(plugin).and_then(|r| r.state_bucket.clone()) {
            Some(raw) => crate::config::check::state_bucket(raw)
                .ok()
                .and_then(|b| b.0),
            None => self.state_bucket.clone(),
        }
    }

    /// The largest limit any plugin may have (the engine's pool is sized for it).
    pub fn largest(&self) -> Limits {
        self.rules.values().fold(self.defaults, |acc, r| {
            acc.max(&self.defaults.overlay(&r.limit_overrides()))
        })
    }

    /// Validate every `[plugin.<name>]` table; errors name the plugin and key
    /// (the host-wide values are checked with the other settings).
    pub fn validate(&self) -> Result<(), LimitError> {
        for (name, rules) in &self.rules {
            rules.limit_overrides().validate().map_err(|e| LimitError {
                key: "plugin.<name>",
                message: format!("[plugin.{name}] {e}"),
            })?;
            rules.check().map_err(|(key, message)| LimitError {
                key: "plugin.<name>",
                message: format!("[plugin.{name}] {key}: {message}"),
            })?;
        }
        Ok(())
    }
}

/// Put the effective sandbox policy into a rendered config file (`sluice
/// config check`): every host limit and each `[plugin.<name>]` (the
/// host-wide `publish_allow` is a host setting, rendered with those).
pub fn render_into(t: &mut toml::Table, policy: &SandboxPolicy) {
    t.extend(policy.defaults.as_overrides().rendered());
    let mut plugins = toml::Table::new();
    for (name, rules) in &policy.rules {
        let mut r = rules.limit_overrides().rendered();
        rules.render_into(&mut r);
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
