//! `sluice config check`'s output: the effective configuration as a TOML
//! config file, every declared setting present, secrets masked, so that it
//! reads back as the same configuration. Which keys there are comes from the
//! declarations; nothing here lists them.

use super::Settings;
use crate::delivery::Jitter;

/// The effective configuration as a TOML config file, secrets masked: what
/// `sluice config check` prints. Every key is present.
pub fn render(settings: &Settings) -> String {
    toml::to_string(&table(settings)).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// [`render`] with each top-level setting followed by where its value came
/// from (`# flag`, `# env`, `# file`, `# default`).
pub fn render_with_origins(settings: &Settings) -> String {
    let mut out = String::new();
    let mut top_level = true;
    for line in render(settings).lines() {
        top_level &= !line.starts_with('[');
        let origin = line
            .split_once(" = ")
            .filter(|_| top_level)
            .and_then(|(key, _)| settings.origins.get(key));
        match origin {
            Some(origin) => out.push_str(&format!("{line} # {origin}\n")),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn table(settings: &Settings) -> toml::Table {
    use toml::Value;
    let mut t = toml::Table::new();
    settings.values.render_into(&mut t);
    crate::limits::render_into(&mut t, &settings.sandbox);
    let duration = |d| Value::String(humantime::format_duration(d).to_string());
    let retry = &settings.retry;
    let mut r = toml::Table::new();
    r.insert(
        "max_attempts".into(),
        Value::Integer(retry.max_attempts.into()),
    );
    r.insert("initial_delay".into(), duration(retry.initial_delay));
    r.insert("multiplier".into(), Value::Float(retry.multiplier));
    r.insert("max_delay".into(), duration(retry.max_delay));
    if let Some(max_elapsed) = retry.max_elapsed {
        r.insert("max_elapsed".into(), duration(max_elapsed));
    }
    r.insert(
        "jitter".into(),
        Value::String(
            match retry.jitter {
                Jitter::Full => "full",
                Jitter::Equal => "equal",
                Jitter::None => "none",
            }
            .into(),
        ),
    );
    t.insert("retry".into(), Value::Table(r));
    t
}
