//! The macro that turns the table of host settings ([`super::table`]) into
//! everything a setting needs, so that a setting is declared in one place:
//!
//! - [`Overrides`](super::Overrides): the flag/env layer (clap resolves the two);
//! - [`FileConfig`](super::FileConfig): the file layer, with the limit keys
//!   and the file-only tables;
//! - [`Values`](super::Values): every setting merged (flag > env > file >
//!   default) and checked, the check's error naming the key;
//! - the [`Setting`](super::Setting) descriptors: flag, env var, help,
//!   default, for clap and the generated docs;
//! - [`PluginRules`](super::PluginRules), `[plugin.<name>]`: the per-plugin
//!   limits and the settings of the `per_plugin` section, which one plugin's
//!   table may replace (checked the same way).
//!
//! One entry reads
//!
//! ```text
//! /// Help text (the flag's help and the docs' meaning).
//! key: RawType [as "PLACEHOLDER"] [= default] [, unset "what unset means"]
//!     => Resolved = check_fn [, marker]*;
//! ```
//!
//! `RawType` is what a flag, variable and file key hold (a
//! [`SettingValue`](super::value::SettingValue)). `check_fn` turns the merged
//! raw value into the resolved one or says what is wrong: it takes `RawType`
//! when there is a default and `Option<RawType>` otherwise. Markers:
//! `secret` (masked, env value hidden), `hide_env` (env value hidden in
//! `--help`), `dlq` (also a flag of `sluice dlq`); entries of the
//! `per_plugin` section get `per_plugin`.

/// Generates the setting structs, merge and descriptors from the table.
macro_rules! declare_settings {
    (
        file_tables { $($tables:tt)* }
        per_plugin {
            $(
                $(#[doc = $pdoc:literal])+
                $pkey:ident : $pty:ty $( as $pvalue_name:literal )? $( = $pdefault:expr )?
                    $( , unset $punset:literal )?
                    => $pres:ty = $pcheck:path $( , $pmarker:ident )* ;
            )*
        }
        host { $($host:tt)* }
    ) => {
        $crate::config::declare::declare_settings! {
            @host
            file_tables { $($tables)* }
            $(
                $(#[doc = $pdoc])+
                $pkey : $pty $( as $pvalue_name )? $( = $pdefault )? $( , unset $punset )?
                    => $pres = $pcheck $( , $pmarker )* , per_plugin ;
            )*
            $($host)*
        }

        $crate::limits::with_limit_keys! {
            /// The operator's rules for one plugin, `[plugin.<name>]` in the host
            /// config: its limits (its ceiling) and the per-plugin settings, each
            /// replacing the host-wide value for this plugin.
            #[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct PluginRules {
                $(
                    $(#[doc = $pdoc])+
                    #[serde(default, deserialize_with = "crate::config::value::optional")]
                    pub $pkey: Option<$pty>,
                )*
            }
        }

        impl PluginRules {
            /// Check each per-plugin setting given here as the host-wide one is
            /// checked: `(key, message)` of the first bad one.
            pub fn check(&self) -> Result<(), (&'static str, String)> {
                $(
                    if let Some(raw) = self.$pkey.clone() {
                        let raw = Some(raw);
                        $( let raw = raw.unwrap_or_else(|| $pdefault); )?
                        let _: $pres = $pcheck(raw).map_err(|message| (stringify!($pkey), message))?;
                    }
                )*
                Ok(())
            }

            /// Put the per-plugin settings given here into a config file table.
            pub(crate) fn render_into(&self, t: &mut toml::Table) {
                $(
                    if let Some(value) = $crate::config::value::Show::show(&self.$pkey) {
                        t.insert(stringify!($pkey).into(), value);
                    }
                )*
            }
        }
    };
    (
        @host
        file_tables {
            $( $(#[$fmeta:meta])* pub $field:ident : $fty:ty, )*
        }
        $(
            $(#[doc = $doc:literal])+
            $key:ident : $ty:ty $( as $value_name:literal )? $( = $default:expr )?
                $( , unset $unset:literal )?
                => $res:ty = $check:path $( , $marker:ident )* ;
        )*
    ) => {
        /// Values given by flag or SLUICE_* env var (clap resolves those two).
        #[derive(Debug, Default, Clone)]
        pub struct Overrides {
            $( $(#[doc = $doc])+ pub $key: Option<$ty>, )*
            /// The limit flags (`--timeout`, `--max-memory-mb`, ...) and their env vars.
            pub limits: $crate::limits::LimitOverrides,
            /// Whether each value here came from a flag or a variable, by key
            /// (a key missing here counts as a flag).
            pub origins: std::collections::BTreeMap<&'static str, $crate::config::Origin>,
        }

        $crate::limits::with_limit_keys! {
            /// The config file as written (unknown keys are errors).
            #[derive(Debug, Default, serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct FileConfig {
                $(
                    $(#[doc = $doc])+
                    #[serde(default, deserialize_with = "crate::config::value::optional")]
                    pub $key: Option<$ty>,
                )*
                $( $(#[$fmeta])* pub $field: $fty, )*
            }
        }

        /// Every host setting, merged (flag > env > file > default) and checked.
        #[derive(Debug, Clone)]
        pub struct Values {
            $( $(#[doc = $doc])+ pub $key: $res, )*
        }

        impl Values {
            /// Merge `o` over `f` over the defaults and check each value;
            /// records where each came from in `origins`.
            pub(crate) fn merge(
                o: &Overrides,
                f: &FileConfig,
                origins: &mut $crate::config::Origins,
            ) -> Result<Values, $crate::config::ConfigError> {
                $(
                    origins.note(stringify!($key), o.$key.is_some(), f.$key.is_some(), &o.origins);
                    let raw = o.$key.clone().or_else(|| f.$key.clone());
                    $( let raw = raw.unwrap_or_else(|| $default); )?
                    let $key: $res = $check(raw).map_err(|message| {
                        $crate::config::ConfigError::Invalid { key: stringify!($key), message }
                    })?;
                )*
                Ok(Values { $( $key, )* })
            }

            /// Put every value into a config file table, as written.
            pub(crate) fn render_into(&self, t: &mut toml::Table) {
                $(
                    if let Some(value) = $crate::config::value::Show::show(&self.$key) {
                        t.insert(stringify!($key).into(), value);
                    }
                )*
            }
        }

        impl Overrides {
            /// The host settings and limits clap parsed (from flags and env).
            pub(crate) fn from_matches(m: &clap::ArgMatches) -> Overrides {
                let mut origins = std::collections::BTreeMap::new();
                let mut o = Overrides {
                    $(
                        $key: $crate::config::flags::take::<$ty>(m, stringify!($key), &mut origins),
                    )*
                    limits: $crate::limits::LimitOverrides::from_matches(m, &mut origins),
                    origins: std::collections::BTreeMap::new(),
                };
                o.origins = origins;
                o
            }
        }

        /// The descriptors of the host settings, in declaration order.
        pub static HOST: std::sync::LazyLock<Vec<$crate::config::Setting>> =
            std::sync::LazyLock::new(|| vec![$(
                $crate::config::Setting {
                    default: None $( .or_else(|| {
                        let value: $ty = $default;
                        Some($crate::config::value::text(&value))
                    }) )?,
                    unset: None $( .or(Some($unset)) )?,
                    value_name: None $( .or(Some($value_name)) )?
                        .unwrap_or(<$ty as $crate::config::value::SettingValue>::VALUE_NAME),
                    ..$crate::config::Setting::new(
                        stringify!($key),
                        &[$($doc),+],
                        $crate::config::Kind::Host,
                        &[$(stringify!($marker)),*],
                        <$ty as $crate::config::value::SettingValue>::arg,
                        <$ty as $crate::config::value::SettingValue>::VALUE_NAME,
                    )
                }
            ),*]);
    };
}
pub(crate) use declare_settings;
