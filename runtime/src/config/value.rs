//! The value types a setting can have, and the three ways each is read and
//! the one way it is written: [`SettingValue`] parses a flag or environment
//! value, reads a TOML value and builds the clap argument; [`Show`] writes a
//! value the way a config file would hold it (what `sluice config check` and
//! the generated docs print).
//!
//! A new setting type needs one impl of each here; a new setting of an
//! existing type needs none.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches};
use serde::{Deserialize, Deserializer};

use crate::limits::ByteSize;

/// What `config check`, logs and `Debug` show instead of a secret.
pub const MASK: &str = "********";

/// A secret value (password, token): `Debug` and [`Show`] never show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for handing to the NATS client; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// A value as a config file holds it; `None` leaves the key out.
pub trait Show {
    /// The TOML value, or `None` when there is nothing to write.
    fn show(&self) -> Option<toml::Value>;
}

/// `value` as text for docs and messages: strings bare, others as TOML.
pub fn text<T: Show + ?Sized>(value: &T) -> String {
    match value.show() {
        Some(toml::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => "none".into(),
    }
}

/// A type a setting can be declared with: how a flag, an environment
/// variable and the config file spell it.
pub trait SettingValue: Show + Clone + Send + Sync + 'static {
    /// The placeholder in `--help` and the docs (`N`, `DURATION`, ...).
    const VALUE_NAME: &'static str;

    /// Parse a flag or environment value; the error says what to write.
    fn parse(text: &str) -> Result<Self, String>;

    /// Read the value from the config file.
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;

    /// The clap argument with this type's parser.
    fn arg(arg: Arg) -> Arg {
        arg.value_parser(|s: &str| Self::parse(s))
            .action(ArgAction::Set)
    }

    /// The value clap parsed for argument `id`, if given.
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches.try_get_one::<Self>(id).ok().flatten().cloned()
    }
}

/// serde `deserialize_with` for an optional setting of any [`SettingValue`] type.
pub fn optional<'de, D: Deserializer<'de>, T: SettingValue>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl Show for String {
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.clone()))
    }
}

impl SettingValue for String {
    const VALUE_NAME: &'static str = "TEXT";
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_string())
    }
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as Deserialize>::deserialize(d)
    }
}

impl Show for PathBuf {
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.display().to_string()))
    }
}

impl SettingValue for PathBuf {
    const VALUE_NAME: &'static str = "PATH";
    fn parse(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <PathBuf as Deserialize>::deserialize(d)
    }
}

impl Show for Secret {
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::String(MASK.into()))
    }
}

impl SettingValue for Secret {
    const VALUE_NAME: &'static str = "SECRET";
    fn parse(text: &str) -> Result<Self, String> {
        Ok(Secret::new(text))
    }
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <Secret as Deserialize>::deserialize(d)
    }
}

/// Whole numbers: one impl per integer type a setting uses.
macro_rules! integer_value {
    ($($t:ty),*) => {$(
        impl Show for $t {
            fn show(&self) -> Option<toml::Value> {
                Some(toml::Value::Integer(i64::try_from(*self).unwrap_or(i64::MAX)))
            }
        }

        impl SettingValue for $t {
            const VALUE_NAME: &'static str = "N";
            fn parse(text: &str) -> Result<Self, String> {
                text.trim().parse().map_err(|_| {
                    format!("`{text}` is not a whole number from {} to {}", <$t>::MIN, <$t>::MAX)
                })
            }
            fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <$t as Deserialize>::deserialize(d)
            }
        }
    )*};
}
integer_value!(u32, usize);

impl Show for bool {
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::Boolean(*self))
    }
}

/// A yes/no setting as given: `true` or `false` in the file (a TOML boolean
/// or the same as text), flag or variable. Kept as written until the
/// setting's check ([`Switch::on`]), so a bad value is refused naming the
/// setting (and the plugin, in a `[plugin.<name>]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch(pub String);

impl Switch {
    /// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`), or what to write.
    pub fn on(&self) -> Result<bool, String> {
        match self.0.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(format!("`{}` is not true or false", self.0)),
        }
    }
}

impl From<bool> for Switch {
    fn from(on: bool) -> Switch {
        Switch(on.to_string())
    }
}

impl Show for Switch {
    fn show(&self) -> Option<toml::Value> {
        Some(match self.on() {
            Ok(on) => toml::Value::Boolean(on),
            Err(_) => toml::Value::String(self.0.clone()),
        })
    }
}

impl SettingValue for Switch {
    const VALUE_NAME: &'static str = "BOOL";
    fn parse(text: &str) -> Result<Self, String> {
        Ok(Switch(text.to_string()))
    }
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Bool(on) => Switch::from(on),
            Raw::Text(text) => Switch(text),
        })
    }
}

impl Show for f64 {
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::Float(*self))
    }
}

impl SettingValue for f64 {
    const VALUE_NAME: &'static str = "NUMBER";
    fn parse(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a number, e.g. 0.5"))
    }
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <f64 as Deserialize>::deserialize(d)
    }
}

impl Show for Duration {
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::String(
            humantime::format_duration(*self).to_string(),
        ))
    }
}

impl SettingValue for Duration {
    const VALUE_NAME: &'static str = "DURATION";
    fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text)
            .map_err(|e| format!("`{text}` is not a duration ({e}); use e.g. 5s or 250ms"))
    }
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        humantime_serde::deserialize(d)
    }
}

impl Show for ByteSize {
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.to_string()))
    }
}

impl SettingValue for ByteSize {
    const VALUE_NAME: &'static str = "SIZE";
    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|e: crate::limits::ByteSizeError| e.to_string())
    }
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <ByteSize as Deserialize>::deserialize(d)
    }
}

/// A list: comma-separated in a flag or variable, an array in the file.
impl Show for Vec<String> {
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::Array(
            self.iter()
                .map(|s| toml::Value::String(s.clone()))
                .collect(),
        ))
    }
}

impl SettingValue for Vec<String> {
    const VALUE_NAME: &'static str = "LIST";
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.split(',').map(str::to_string).collect())
    }
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <Vec<String> as Deserialize>::deserialize(d)
    }
    fn arg(arg: Arg) -> Arg {
        arg.value_delimiter(',').action(ArgAction::Append)
    }
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches
            .try_get_many::<String>(id)
            .ok()
            .flatten()
            .map(|values| values.cloned().collect())
    }
}

/// Key/value pairs: `key=value,...` in a flag or variable, a table in the file.
pub type KeyValues = std::collections::BTreeMap<String, String>;

/// Written as an array of `"key=value"` strings, so `config check` keeps it
/// on the setting's own line (a table would become a section of its own).
impl Show for KeyValues {
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::Array(
            self.iter()
                .map(|(k, v)| toml::Value::String(format!("{k}={v}")))
                .collect(),
        ))
    }
}

fn key_value(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{pair}` is not `key=value`")),
    }
}

impl SettingValue for KeyValues {
    const VALUE_NAME: &'static str = "KEY=VALUE,...";
    fn parse(text: &str) -> Result<Self, String> {
        text.split(',')
            .filter(|pair| !pair.trim().is_empty())
            .map(key_value)
            .collect()
    }
    /// A table (`{ key = "value" }`) or an array of `"key=value"` strings.
    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Table(KeyValues),
            Pairs(Vec<String>),
        }
        match Written::deserialize(d) {
            Ok(Written::Table(table)) => Ok(table),
            Ok(Written::Pairs(pairs)) => pairs
                .iter()
                .map(|p| key_value(p))
                .collect::<Result<_, _>>()
                .map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "expected a table of strings or an array of \"key=value\" strings",
            )),
        }
    }
}

impl<T: Show> Show for Option<T> {
    fn show(&self) -> Option<toml::Value> {
        self.as_ref().and_then(Show::show)
    }
}

impl Show for SocketAddr {
    fn show(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.to_string()))
    }
}

/// A resolved value that can be switched off (`None`), written `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrOff<T>(pub Option<T>);

impl<T: Show> Show for OrOff<T> {
    fn show(&self) -> Option<toml::Value> {
        match &self.0 {
            Some(value) => value.show(),
            None => Some(toml::Value::String("off".into())),
        }
    }
}
