//! Turning bytes into a runnable plugin: recognise the file, compile it,
//! check that it implements the sluice world, and pre-link it once
//! ([`InstancePre`](wasmtime::component::InstancePre)) so each event only pays
//! for instantiation.

use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::component::{Component, Linker};

use crate::contract::{CONTRACT_VERSIONS, Capability, Pre, handler_export};
use crate::engine::WasmEngine;
use crate::engine::cache::{CompileCache, Provenance};
use crate::host::HostState;

/// Why bytes are not a usable sluice plugin. Messages say what to do.
#[derive(Debug, Error)]
pub enum ComponentError {
    /// Not WebAssembly at all.
    #[error(
        "not a WebAssembly file (it does not start with the `\\0asm` header); copy the `.wasm` produced by `cargo build --target wasm32-wasip2 --release`"
    )]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component; build it for the `wasm32-wasip2` target (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// Wasm, but compilation failed (truncated, corrupt, unsupported feature).
    #[error("not a valid component (truncated or corrupt?): {0}")]
    Invalid(String),
    /// A component of another world.
    #[error(
        "the component does not implement the sluice world: it exports [{exports}] but must export `sluice:plugin/handler@<version>` (this host accepts versions {accepted})"
    )]
    WrongWorld {
        /// What it exports instead.
        exports: String,
        /// The contract versions this host accepts.
        accepted: String,
    },
    /// An import the host does not provide.
    #[error(
        "the component needs imports this host does not provide: {0}. A plugin may import WASI 0.2 and the sluice:plugin interfaces of its contract version (0.1.0: logging, publisher; 0.2.0: also config, state, requester and wasi:http/outgoing-handler)"
    )]
    UnsatisfiedImport(String),
    /// Instantiation failed (start function trapped, resources exhausted).
    #[error("the component failed to instantiate: {0}")]
    Instantiate(String),
}

/// What a component is, as `sluice check` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// The sluice contract version it implements, e.g. `0.1.0`.
    pub contract_version: String,
    /// Short content hash identifying this exact build.
    pub version: String,
    /// Everything it imports.
    pub imports: Vec<String>,
    /// The sluice capabilities among its imports.
    pub capabilities: Vec<Capability>,
    /// Everything it exports.
    pub exports: Vec<String>,
}

/// A compiled, checked, pre-linked plugin version.
pub struct CompiledPlugin {
    /// What it is.
    pub info: ComponentInfo,
    /// Compiled now or loaded from the compile cache.
    pub provenance: Provenance,
    /// Pre-linked instance template of its contract version; instantiate
    /// once per event.
    pub pre: Pre<HostState>,
}

/// The short content hash used as a plugin's version.
pub fn version_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..6])
}

/// Classify bytes by their header before spending time compiling.
pub fn check_header(bytes: &[u8]) -> Result<(), ComponentError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(ComponentError::NotWasm);
    }
    // Core modules carry version 1 and layer 0; components a different
    // version with layer 1 (bytes 6..8).
    if bytes[6..8] == [0, 0] {
        return Err(ComponentError::CoreModule);
    }
    Ok(())
}

/// Compile `bytes`, check the world and pre-link. CPU-heavy: call it off the
/// async worker threads (e.g. in `spawn_blocking`).
pub fn compile(
    engine: &WasmEngine,
    linker: &Linker<HostState>,
    bytes: &[u8],
) -> Result<CompiledPlugin, ComponentError> {
    compile_cached(engine, linker, bytes, None)
}

/// Like [`compile`], through the on-disk compile cache when one is given.
pub fn compile_cached(
    engine: &WasmEngine,
    linker: &Linker<HostState>,
    bytes: &[u8],
    cache: Option<&CompileCache>,
) -> Result<CompiledPlugin, ComponentError> {
    check_header(bytes)?;
    let (component, provenance) = match cache {
        Some(cache) => cache.load_or_compile(engine, bytes),
        None => Component::new(engine.engine(), bytes).map(|c| (c, Provenance::Compiled)),
    }
    .map_err(|e| ComponentError::Invalid(format!("{e:#}")))?;
    if provenance == Provenance::Compiled {
        release_freed_heap();
    }
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine.engine())
        .map(|(n, _)| n.to_string())
        .collect();
    let exports: Vec<String> = ty
        .exports(engine.engine())
        .map(|(n, _)| n.to_string())
        .collect();
    let Some(contract_version) = CONTRACT_VERSIONS
        .iter()
        .find(|v| exports.contains(&handler_export(v)))
    else {
        return Err(wrong_world(&exports));
    };
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| ComponentError::UnsatisfiedImport(format!("{e:#}")))?;
    let pre = Pre::new(contract_version, pre).map_err(|e| ComponentError::WrongWorld {
        exports: format!("{} ({e:#})", exports.join(", ")),
        accepted: CONTRACT_VERSIONS.join(", "),
    })?;
    Ok(CompiledPlugin {
        provenance,
        info: ComponentInfo {
            contract_version: contract_version.to_string(),
            version: version_hash(bytes),
            capabilities: Capability::of_imports(&imports),
            imports,
            exports,
        },
        pre,
    })
}

/// Hand the heap pages compiling freed back to the kernel. Cranelift's
/// working memory for an interpreter component (componentize-py's or
/// componentize-js's, 12 to 20 MB of wasm) peaks at hundreds of MiB across
/// the compiler's threads; glibc keeps those freed pages in its arenas, so
/// a host that compiled one plugin otherwise stays at ~400 MB of RSS for
/// good although its instances need a few MiB each. `malloc_trim` returns
/// them (every arena's free pages), once per compile: microseconds next to
/// a compile of seconds. An FFI call with no arguments that point anywhere
/// (the crate's other `unsafe` is the compile cache's deserialize).
#[allow(unsafe_code)]
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own
    // arenas; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn wrong_world(exports: &[String]) -> ComponentError {
    ComponentError::WrongWorld {
        exports: if exports.is_empty() {
            "nothing".into()
        } else {
            exports.join(", ")
        },
        accepted: CONTRACT_VERSIONS.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_classified() {
        assert!(matches!(
            check_header(b"garbage!garbage"),
            Err(ComponentError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm"),
            Err(ComponentError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(ComponentError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn version_hash_is_stable_and_short() {
        assert_eq!(version_hash(b"abc"), version_hash(b"abc"));
        assert_ne!(version_hash(b"abc"), version_hash(b"abd"));
        assert_eq!(version_hash(b"abc").len(), 12);
    }
}
