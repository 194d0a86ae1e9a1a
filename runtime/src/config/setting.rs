//! What the declaration of one setting says about it, as data: the
//! [`Setting`] descriptors that the clap arguments, the generated docs and
//! the precedence test walk. The typed side (structs, merge, checks) is
//! generated from the same declarations by [`super::declare`].

use std::collections::BTreeMap;
use std::fmt;

use clap::Arg;

/// Whether a setting is a host setting or a per-plugin limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A setting of the host as a whole.
    Host,
    /// A per-plugin limit: the host-wide default and every plugin's ceiling;
    /// also a key of `[plugin.<name>]` and of a manifest (which may only lower it).
    Limit,
}

/// One declared setting.
#[derive(Debug)]
pub struct Setting {
    /// The config file key (`nats_url`).
    pub key: &'static str,
    /// The long flag without dashes (`nats-url`).
    pub flag: String,
    /// The environment variable (`SLUICE_NATS_URL`).
    pub env: String,
    /// One line of help (the declaration's doc comment).
    pub help: String,
    /// Placeholder for the value (`DURATION`, `N`, ...).
    pub value_name: &'static str,
    /// The default as `config check` writes it; `None`: no default.
    pub default: Option<String>,
    /// What leaving it unset means, for settings without a default.
    pub unset: Option<&'static str>,
    /// Allowed range (limits), as written.
    pub range: Option<(String, String)>,
    /// Host setting or per-plugin limit.
    pub kind: Kind,
    /// Masked everywhere it is shown.
    pub secret: bool,
    /// Markers from the declaration (`secret`, `hide_env`, `dlq`).
    pub markers: &'static [&'static str],
    /// Adds the type's parser to a clap argument.
    pub(crate) typed: fn(Arg) -> Arg,
}

impl Setting {
    /// A descriptor for `key`; names and help derived from the declaration.
    pub(crate) fn new(
        key: &'static str,
        doc: &[&str],
        kind: Kind,
        markers: &'static [&'static str],
        typed: fn(Arg) -> Arg,
        value_name: &'static str,
    ) -> Setting {
        Setting {
            key,
            flag: key.replace('_', "-"),
            env: format!("SLUICE_{}", key.to_ascii_uppercase()),
            help: doc
                .iter()
                .map(|line| line.trim())
                .collect::<Vec<_>>()
                .join(" "),
            value_name,
            default: None,
            unset: None,
            range: None,
            kind,
            secret: markers.contains(&"secret"),
            markers,
            typed,
        }
    }

    /// Whether the declaration carries `marker`.
    pub fn has(&self, marker: &str) -> bool {
        self.markers.contains(&marker)
    }

    /// The default for docs and `--help`: the value, or what unset means.
    pub fn default_text(&self) -> String {
        match (&self.default, self.unset) {
            (Some(value), _) => value.clone(),
            (None, Some(unset)) => unset.to_string(),
            (None, None) => "none".into(),
        }
    }

    /// The clap argument: `--flag`, `SLUICE_*`, help with the default.
    pub fn arg(&'static self) -> Arg {
        let arg = Arg::new(self.key)
            .long(self.flag.as_str())
            .env(self.env.as_str())
            .value_name(self.value_name)
            .help(format!("{} [default: {}]", self.help, self.default_text()))
            .hide_env_values(self.secret || self.has("hide_env"));
        (self.typed)(arg)
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag (or a value set in code over the flags).
    Flag,
    /// A `SLUICE_*` environment variable.
    Env,
    /// The config file.
    File,
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Flag => "flag",
            Origin::Env => "env",
            Origin::File => "file",
            Origin::Default => "default",
        })
    }
}

/// Where each setting's effective value came from, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins(BTreeMap<&'static str, Origin>);

impl Origins {
    /// Record `key`'s origin: flag/env if `overridden` (as clap said), else
    /// the file if `in_file`, else the default.
    pub(crate) fn note(
        &mut self,
        key: &'static str,
        overridden: bool,
        in_file: bool,
        clap_said: &BTreeMap<&'static str, Origin>,
    ) {
        let origin = if overridden {
            clap_said.get(key).copied().unwrap_or(Origin::Flag)
        } else if in_file {
            Origin::File
        } else {
            Origin::Default
        };
        self.0.insert(key, origin);
    }

    /// Where `key` came from (`None`: not a declared setting).
    pub fn get(&self, key: &str) -> Option<Origin> {
        self.0.get(key).copied()
    }
}
