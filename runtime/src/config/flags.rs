//! The clap side of the declared settings: every setting becomes a
//! `--flag` with a `SLUICE_*` variable, built from its descriptor, and the
//! parsed values come back as [`Overrides`](super::Overrides). Commands pick
//! the settings they take (all of them, or those marked `dlq`).

use std::collections::BTreeMap;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches};

use super::setting::{Origin, Setting};
use super::value::SettingValue;

/// Every declared setting: the host table, then the per-plugin limits.
pub fn all() -> impl Iterator<Item = &'static Setting> {
    super::table::HOST
        .iter()
        .chain(crate::limits::LIMITS.iter())
}

/// The clap arguments of the settings `pick` selects.
pub fn args(pick: impl Fn(&Setting) -> bool) -> Vec<Arg> {
    all().filter(|s| pick(s)).map(Setting::arg).collect()
}

/// The value of argument `id` if given, noting whether a flag or the
/// environment gave it.
pub(crate) fn take<T: SettingValue>(
    m: &ArgMatches,
    id: &'static str,
    origins: &mut BTreeMap<&'static str, Origin>,
) -> Option<T> {
    let value = T::from_matches(m, id)?;
    let origin = match m.value_source(id) {
        Some(ValueSource::EnvVariable) => Origin::Env,
        _ => Origin::Flag,
    };
    origins.insert(id, origin);
    Some(value)
}
