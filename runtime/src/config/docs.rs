//! The settings tables of the docs, generated from the declarations so they
//! cannot drift: [`reference`] (docs/operations.md: every key with its
//! meaning) and [`summary`] (README.md). Each sits between marker lines in
//! its file; a test compares them and rewrites them when run with
//! `UPDATE=1` (`UPDATE=1 cargo test -p sluice --lib config::docs`), and
//! `sluice config docs` prints the reference table.

use super::setting::{Kind, Setting};
use super::table::TABLES;

/// A generated block: its marker name, file (from the repository root) and text.
pub struct Block {
    /// The name in the marker lines.
    pub name: &'static str,
    /// The file, relative to the repository root.
    pub file: &'static str,
    /// The generated markdown.
    pub text: fn() -> String,
}

/// Every generated block of the docs.
pub const BLOCKS: &[Block] = &[
    Block {
        name: "settings-reference",
        file: "docs/operations.md",
        text: reference,
    },
    Block {
        name: "settings-summary",
        file: "README.md",
        text: summary,
    },
];

/// The marker line that opens block `name`.
pub fn begin(name: &str) -> String {
    format!(
        "<!-- BEGIN {name}: generated from the settings declarations; edit those, then run `UPDATE=1 cargo test -p sluice --lib config::docs` -->"
    )
}

/// The marker line that closes block `name`.
pub fn end(name: &str) -> String {
    format!("<!-- END {name} -->")
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn code(text: &str) -> String {
    format!("`{}`", cell(text))
}

fn flag(s: &Setting) -> String {
    code(&format!("--{} {}", s.flag, s.value_name))
}

fn default(s: &Setting) -> String {
    match &s.default {
        Some(value) => code(value),
        None => cell(s.unset.unwrap_or("none")),
    }
}

fn meaning(s: &Setting) -> String {
    let mut text = s.help.clone();
    if s.secret {
        text.push_str(" Secret: masked in `config check` and logs.");
    }
    if s.has("per_plugin") {
        text.push_str(" Also a key of `[plugin.<name>]`, which replaces it for that plugin.");
    }
    if let (Kind::Limit, Some((min, max))) = (s.kind, &s.range) {
        text.push_str(&format!(
            " Per-plugin limit ({min} to {max}): the host-wide default and every plugin's ceiling; `[plugin.<name>]` may raise or lower it, a manifest only lower it."
        ));
    }
    cell(&text)
}

/// The full table of docs/operations.md: file key, flag, env, default, meaning.
pub fn reference() -> String {
    let mut out = String::from(
        "| file key | flag | env | default | meaning |\n|---|---|---|---|---|\n\
         | | `--config FILE` | `SLUICE_CONFIG` | none | the TOML file |\n",
    );
    for s in super::flags::all() {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            code(s.key),
            flag(s),
            code(&s.env),
            default(s),
            meaning(s)
        ));
    }
    for t in TABLES {
        out.push_str(&format!(
            "| {} table | | | {} | {} |\n",
            code(t.key),
            cell(&t.default.replace("{docs}", "")),
            cell(t.meaning)
        ));
    }
    out
}

/// The short table of README.md: flag, env, file key, default.
pub fn summary() -> String {
    let mut out = String::from(
        "| flag | env | file key | default |\n|---|---|---|---|\n\
         | `--config FILE` | `SLUICE_CONFIG` | | none |\n",
    );
    for s in super::flags::all() {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            flag(s),
            code(&s.env),
            code(s.key),
            default(s)
        ));
    }
    for t in TABLES {
        out.push_str(&format!(
            "| | | {} table | {} |\n",
            code(t.key),
            cell(&t.default.replace("{docs}", "docs/"))
        ));
    }
    out
}

/// `text` with block `name` replaced by `generated`; `None` if the markers are missing.
pub fn replace_block(text: &str, name: &str, generated: &str) -> Option<String> {
    let (begin, end) = (begin(name), end(name));
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    Some(format!(
        "{}\n{}{}",
        &text[..start],
        generated,
        &text[stop..]
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The docs hold exactly the generated tables; `UPDATE=1` rewrites them.
    #[test]
    fn the_docs_settings_tables_match_the_declarations() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let update = std::env::var_os("UPDATE").is_some_and(|v| v == "1");
        for block in BLOCKS {
            let path = root.join(block.file);
            let text = std::fs::read_to_string(&path).unwrap();
            let generated = (block.text)();
            let Some(wanted) = replace_block(&text, block.name, &generated) else {
                panic!(
                    "{}: no `{}` / `{}` marker lines; add them where the table belongs",
                    block.file,
                    begin(block.name),
                    end(block.name)
                );
            };
            if wanted == text {
                continue;
            }
            if update {
                std::fs::write(&path, wanted).unwrap();
            } else {
                panic!(
                    "{}: the settings table differs from the declarations; run `UPDATE=1 cargo test -p sluice --lib config::docs` and commit the result",
                    block.file
                );
            }
        }
    }

    #[test]
    fn every_setting_is_in_the_reference_once_with_flag_and_env() {
        let table = reference();
        for s in crate::config::flags::all() {
            let row = format!("| `{}` | `--{} ", s.key, s.flag);
            assert_eq!(table.matches(&row).count(), 1, "{row}");
            assert!(table.contains(&format!("`{}`", s.env)), "{}", s.env);
        }
    }
}
