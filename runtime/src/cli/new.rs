//! `sluice new NAME --lang rust|python|js [--dir D]`: scaffold a plugin
//! folder (handler, `NAME.toml` manifest, a Makefile whose one target builds
//! `NAME.wasm`), so a plugin in any of the three languages starts from a
//! working, tested example.
//!
//! The templates live in runtime/templates/ and are compiled in. The
//! generated build refers to the SDKs of a sluice checkout (`SLUICE_ROOT`,
//! else the checkout this binary was built from), since the SDKs and their
//! toolchains are installed there by scripts/setup.sh.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust, with sluice-sdk (cargo, wasm32-wasip2).
    Rust,
    /// Python, with plugin-sdk/python (componentize-py).
    Python,
    /// JavaScript, with plugin-sdk/js (componentize-js).
    Js,
}

/// Arguments of `sluice new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// Plugin name: letters, digits, `-` and `_`. The build yields NAME.wasm.
    name: String,
    /// Language of the handler.
    #[arg(long, value_enum)]
    lang: Lang,
    /// Folder to create [default: ./NAME]. Must not exist or be empty.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const MANIFEST: &str = include_str!("../../templates/manifest.toml");

/// (path in the new folder, template text) per language.
fn templates(lang: Lang) -> &'static [(&'static str, &'static str)] {
    match lang {
        Lang::Rust => &[
            (
                "Cargo.toml",
                include_str!("../../templates/rust/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../templates/rust/src/lib.rs"),
            ),
            ("Makefile", include_str!("../../templates/rust/Makefile")),
        ],
        Lang::Python => &[
            (
                "handler.py",
                include_str!("../../templates/python/handler.py"),
            ),
            ("Makefile", include_str!("../../templates/python/Makefile")),
        ],
        Lang::Js => &[
            ("handler.js", include_str!("../../templates/js/handler.js")),
            ("Makefile", include_str!("../../templates/js/Makefile")),
            (
                "jsconfig.json",
                include_str!("../../templates/js/jsconfig.json"),
            ),
        ],
    }
}

/// Whether `name` can name a plugin (the plugin folder's rule).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The sluice checkout whose SDKs the scaffold builds with.
fn sdk_root() -> anyhow::Result<PathBuf> {
    let has_sdks = |p: &Path| p.join("plugin-sdk/Cargo.toml").is_file() && p.join("wit").is_dir();
    if let Some(root) = std::env::var_os("SLUICE_ROOT") {
        let root = PathBuf::from(root);
        if !has_sdks(&root) {
            bail!(
                "SLUICE_ROOT={} is not a sluice checkout (no plugin-sdk/ and wit/ there)",
                root.display()
            );
        }
        return Ok(root);
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match built_from.canonicalize() {
        Ok(root) if has_sdks(&root) => Ok(root),
        _ => bail!(
            "cannot find the sluice SDKs: set SLUICE_ROOT to a sluice checkout (with plugin-sdk/ and wit/; run scripts/setup.sh there)"
        ),
    }
}

/// Write the scaffold of `name` in `lang` into `dir` (created; it must not
/// exist or be empty). Returns the files written, relative to `dir`.
pub fn scaffold(name: &str, lang: Lang, dir: &Path, root: &Path) -> anyhow::Result<Vec<String>> {
    if !valid_name(name) {
        bail!("invalid plugin name `{name}`: use letters, digits, `-` and `_` only");
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} already exists and is not empty; pick another --dir",
            dir.display()
        );
    }
    let root = root
        .to_str()
        .with_context(|| format!("the sluice checkout path {} is not UTF-8", root.display()))?;
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sdk_root}}", root)
    };
    let manifest = format!("{name}.toml");
    let mut written = Vec::new();
    for (path, text) in templates(lang)
        .iter()
        .copied()
        .chain([(manifest.as_str(), MANIFEST)])
    {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, fill(text))
            .with_context(|| format!("cannot write {}", target.display()))?;
        written.push(path.to_string());
    }
    Ok(written)
}

pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let root = sdk_root()?;
    let files = scaffold(&args.name, args.lang, &dir, &root)?;
    println!(
        "created {} ({:?} plugin `{}`):",
        dir.display(),
        args.lang,
        args.name
    );
    for file in files {
        println!("  {file}");
    }
    println!(
        "build it with `make -C {}` (yields {}.wasm), then `sluice check {}/{}.wasm`",
        dir.display(),
        args.name,
        dir.display(),
        args.name
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled_and_names_are_checked() {
        let root = Path::new("/opt/sluice");
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("p");
            let files = scaffold("my-plugin", lang, &target, root).unwrap();
            assert!(files.contains(&"Makefile".to_string()), "{files:?}");
            assert!(files.contains(&"my-plugin.toml".to_string()), "{files:?}");
            for file in &files {
                let text = std::fs::read_to_string(target.join(file)).unwrap();
                assert!(!text.contains("{{"), "{lang:?} {file}: {text}");
            }
            let makefile = std::fs::read_to_string(target.join("Makefile")).unwrap();
            assert!(makefile.contains("my-plugin.wasm"), "{makefile}");
            let again = scaffold("my-plugin", lang, &target, root).unwrap_err();
            assert!(again.to_string().contains("not empty"), "{again}");
        }
        let dir = tempfile::tempdir().unwrap();
        let e = scaffold("bad name", Lang::Js, &dir.path().join("x"), root).unwrap_err();
        assert!(e.to_string().contains("invalid plugin name"), "{e}");
    }
}
