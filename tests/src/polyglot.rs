//! Python and JavaScript plugins for the end-to-end tests, built from their
//! source in plugins/ (a folder with `handler.py` or `handler.js`) by the SDK
//! build scripts, exactly as an author builds them.
//!
//! A build takes 10 to 25 s, so it is cached by content: the output lands in
//! `plugins/target/polyglot/<plugin>-<hash>.wasm`, where the hash covers the
//! plugin's files, the SDK of its language, its pinned toolchain and the WIT.
//! Change any of them and the next test run rebuilds; otherwise the cached
//! component is reused across test binaries and runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use crate::repo_root;

/// A guest language with its own SDK and build script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// componentize-py, `handler.py`.
    Python,
    /// componentize-js, `handler.js`.
    Js,
}

impl Lang {
    /// The language of the plugin folder `dir`, from its handler file.
    pub fn of(dir: &Path) -> Option<Lang> {
        if dir.join("handler.py").is_file() {
            Some(Lang::Python)
        } else if dir.join("handler.js").is_file() {
            Some(Lang::Js)
        } else {
            None
        }
    }

    /// The SDK folder (build script and library).
    pub fn sdk(self) -> PathBuf {
        repo_root().join(match self {
            Lang::Python => "plugin-sdk/python",
            Lang::Js => "plugin-sdk/js",
        })
    }

    /// The command that builds plugin folder `dir` into `out`.
    pub fn build_command(self, dir: &Path, out: &Path) -> Command {
        let mut cmd = Command::new(self.sdk().join("build.sh"));
        cmd.arg(dir).arg(out);
        cmd
    }
}

/// The component built from plugin folder `plugins/<name>` (cached by content).
pub fn polyglot_wasm(name: &str) -> PathBuf {
    build_folder(&repo_root().join("plugins").join(name))
}

/// Build the plugin folder `dir` (Python or JavaScript) once per content;
/// panics with the build's output when it fails.
pub fn build_folder(dir: &Path) -> PathBuf {
    static BUILDS: OnceLock<Mutex<HashMap<PathBuf, Arc<OnceLock<PathBuf>>>>> = OnceLock::new();
    let slot = BUILDS
        .get_or_init(Mutex::default)
        .lock()
        .expect("build map lock")
        .entry(dir.to_path_buf())
        .or_default()
        .clone();
    slot.get_or_init(|| build_uncached_or_reuse(dir)).clone()
}

fn build_uncached_or_reuse(dir: &Path) -> PathBuf {
    let lang = Lang::of(dir)
        .unwrap_or_else(|| panic!("{} has neither handler.py nor handler.js", dir.display()));
    let root = repo_root();
    let mut inputs = Vec::new();
    collect(dir, &mut inputs);
    collect(&lang.sdk(), &mut inputs);
    collect(&root.join("wit"), &mut inputs);
    inputs.sort();
    let mut content = Vec::new();
    for file in &inputs {
        content.extend_from_slice(file.to_string_lossy().as_bytes());
        content.push(0);
        content.extend_from_slice(&std::fs::read(file).expect("read build input"));
    }
    let name = dir.file_name().expect("folder name").to_string_lossy();
    let cache = root.join("plugins/target/polyglot");
    std::fs::create_dir_all(&cache).expect("create plugins/target/polyglot");
    let out = cache.join(format!("{name}-{}.wasm", crate::version_of(&content)));
    if out.exists() {
        return out;
    }
    let output = lang
        .build_command(dir, &out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {lang:?} build script: {e}"));
    assert!(
        output.status.success() && out.exists(),
        "building {} failed ({}); run `. scripts/setup.sh` to install the toolchains.\nstdout:\n{}\nstderr:\n{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// Every build input under `dir`: source files, not build outputs or installs.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !matches!(name.as_ref(), "node_modules" | "__pycache__" | "target") {
                collect(&path, out);
            }
        } else if !name.ends_with(".wasm") {
            out.push(path);
        }
    }
}
