//! Loading one plugin from the plugin folder: `<name>.wasm` plus
//! `<name>.toml`, compiled off the async threads (through the compile cache),
//! checked against the world and smoke-instantiated before it may serve.
//!
//! Each plugin loads independently: a bad file is reported (with its path and
//! the reason) and skipped, and every good plugin still serves.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use wasmtime::component::Linker;

use crate::engine::WasmEngine;
use crate::engine::cache::CompileCache;
use crate::engine::component::{self, CompiledPlugin, ComponentError};
use crate::engine::invoke;
use crate::host::HostState;
use crate::manifest::{Manifest, ManifestError};

/// A plugin ready to serve.
pub struct LoadedPlugin {
    /// Name (file stem).
    pub name: String,
    /// The `.wasm` file.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The compiled component.
    pub compiled: Arc<CompiledPlugin>,
    /// Hash of the `.wasm` and manifest bytes: equal fingerprints, same plugin.
    pub fingerprint: Fingerprint,
}

/// Identifies the exact files a plugin was loaded from.
pub type Fingerprint = [u8; 32];

/// The fingerprint of a plugin's files.
pub fn fingerprint(wasm: &[u8], manifest: &[u8]) -> Fingerprint {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update((wasm.len() as u64).to_be_bytes());
    hash.update(wasm);
    hash.update(manifest);
    hash.finalize().into()
}

/// Why one plugin could not be loaded. The message names the file.
#[derive(Debug, Error)]
#[error("plugin `{name}` ({}): {kind}", path.display())]
pub struct LoadError {
    /// Plugin name.
    pub name: String,
    /// The file that is wrong.
    pub path: PathBuf,
    /// What is wrong.
    pub kind: LoadErrorKind,
}

/// What went wrong loading a plugin.
#[derive(Debug, Error)]
pub enum LoadErrorKind {
    /// The name is not usable.
    #[error("invalid plugin name; use letters, digits, `-` and `_` only")]
    BadName,
    /// The .wasm cannot be read.
    #[error("cannot read the file: {0}")]
    Read(std::io::Error),
    /// The manifest is bad.
    #[error(transparent)]
    Manifest(ManifestError),
    /// The component is bad.
    #[error(transparent)]
    Component(ComponentError),
    /// Compiling the component panicked (a compiler bug reached by this
    /// file). Only this plugin fails to load; the host and every other
    /// plugin carry on.
    #[error(
        "the WebAssembly compiler panicked on this file ({0}); it is not loaded. Rebuild the component, or report the file as a compiler bug"
    )]
    CompilerPanic(String),
}

/// The plugin folder cannot be listed.
#[derive(Debug, Error)]
#[error("plugin folder {}: {source}; create it or pass --plugins DIR", path.display())]
pub struct DirError {
    /// The folder.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// The `.wasm` files in `dir`, sorted by name.
pub fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>, DirError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DirError {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The plugin name of a `.wasm` or `.toml` path, if it is a valid one.
pub fn plugin_name(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_str()?;
    if ext != "wasm" && ext != "toml" {
        return None;
    }
    let name = path.file_stem()?.to_str()?;
    (!name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    .then(|| name.to_string())
}

/// Run `compile` on the blocking pool; a panic in it (a compiler bug on a
/// crafted file) becomes [`LoadErrorKind::CompilerPanic`] instead of taking
/// the supervisor, and with it the host, down.
async fn off_thread<T: Send + 'static>(
    compile: impl FnOnce() -> Result<T, ComponentError> + Send + 'static,
) -> Result<T, LoadErrorKind> {
    match tokio::task::spawn_blocking(compile).await {
        Ok(result) => result.map_err(LoadErrorKind::Component),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(LoadErrorKind::CompilerPanic(message))
        }
        Err(e) => Err(LoadErrorKind::CompilerPanic(e.to_string())),
    }
}

/// Load one plugin: read the manifest, compile off the async threads (through
/// the compile cache), check the world, and smoke-instantiate once.
pub async fn load_plugin(
    engine: &WasmEngine,
    linker: &Linker<HostState>,
    wasm: &Path,
    cache: Option<&CompileCache>,
) -> Result<LoadedPlugin, LoadError> {
    let name = wasm
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let fail = |kind| LoadError {
        name: name.clone(),
        path: wasm.to_path_buf(),
        kind,
    };
    if plugin_name(wasm).is_none() {
        return Err(fail(LoadErrorKind::BadName));
    }
    let manifest_path = wasm.with_extension("toml");
    let manifest = Manifest::load(&manifest_path).map_err(|e| fail(LoadErrorKind::Manifest(e)))?;
    let manifest_bytes = tokio::fs::read(&manifest_path).await.unwrap_or_default();
    let bytes = tokio::fs::read(wasm)
        .await
        .map_err(|e| fail(LoadErrorKind::Read(e)))?;
    let fingerprint = fingerprint(&bytes, &manifest_bytes);
    let compiled = {
        let engine = engine.clone();
        let linker = linker.clone();
        let cache = cache.cloned();
        off_thread(move || component::compile_cached(&engine, &linker, &bytes, cache.as_ref()))
            .await
            .map_err(fail)?
    };
    invoke::smoke(engine, &compiled)
        .await
        .map_err(|e| fail(LoadErrorKind::Component(e)))?;
    Ok(LoadedPlugin {
        name: name.clone(),
        path: wasm.to_path_buf(),
        manifest,
        compiled: Arc::new(compiled),
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // No input is known that panics wasmtime's compiler, so the panic is
    // injected through the closure `load_plugin` hands to `off_thread`.
    #[tokio::test]
    async fn a_compiler_panic_is_a_load_error_not_a_crash() {
        let result = off_thread(|| -> Result<(), ComponentError> {
            panic!("cranelift: unreachable code reached in crafted.wasm")
        })
        .await;
        match result {
            Err(LoadErrorKind::CompilerPanic(message)) => {
                assert!(message.contains("crafted.wasm"), "{message}")
            }
            other => panic!("expected a compiler-panic load error, got {other:?}"),
        }
        let error = LoadError {
            name: "crafted".into(),
            path: "plugins/crafted.wasm".into(),
            kind: off_thread(|| -> Result<(), ComponentError> {
                panic!("{}", String::from("boom"))
            })
            .await
            .unwrap_err(),
        };
        let text = error.to_string();
        assert!(
            text.contains("plugins/crafted.wasm")
                && text.contains("compiler panicked")
                && text.contains("boom"),
            "{text}"
        );
        assert_eq!(off_thread(|| Ok::<_, ComponentError>(7)).await.unwrap(), 7);
    }
}
