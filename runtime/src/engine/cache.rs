//! The on-disk compile cache: compiled components keyed by the content hash
//! of the `.wasm` and the engine's compatibility hash (wasmtime version,
//! target and settings), so a restart or a redeploy of a known version skips
//! compilation.
//!
//! An entry is never trusted blindly: it carries a SHA-256 of its payload,
//! checked before wasmtime deserializes it, and wasmtime itself rejects an
//! entry built by another engine configuration. A corrupt, truncated or stale
//! entry is deleted and rebuilt. Entries are written atomically (temp file +
//! rename), so a crash never leaves a half-written entry under a real name.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::engine::WasmEngine;

const MAGIC: &[u8; 8] = b"SLUICEC1";

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Compiled now (and stored, if a cache is configured).
    Compiled,
    /// Loaded from a verified cache entry.
    Cached,
}

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CompileCache { dir: dir.into() }
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry path for `wasm` under `engine`.
    pub fn entry_path(&self, engine: &WasmEngine, wasm: &[u8]) -> PathBuf {
        let content = hex::encode(&Sha256::digest(wasm)[..16]);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine
            .engine()
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        self.dir
            .join(format!("{content}-{:016x}.cwasm", hasher.finish()))
    }

    /// Load a verified entry, or compile `wasm` and store it.
    pub fn load_or_compile(
        &self,
        engine: &WasmEngine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, Provenance)> {
        let path = self.entry_path(engine, wasm);
        if let Ok(entry) = std::fs::read(&path) {
            match verified_payload(&entry) {
                Some(payload) => match deserialize(engine, payload) {
                    Ok(component) => return Ok((component, Provenance::Cached)),
                    Err(e) => {
                        tracing::warn!(entry = %path.display(), "stale compile cache entry ({e:#}); recompiling")
                    }
                },
                None => {
                    tracing::warn!(entry = %path.display(), "corrupt compile cache entry (checksum mismatch); recompiling")
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        let component = Component::new(engine.engine(), wasm)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(dir = %self.dir.display(), "cannot write the compile cache ({e}); continuing without it");
        }
        Ok((component, Provenance::Compiled))
    }

    fn store(&self, path: &Path, component: &Component) -> std::io::Result<()> {
        let payload = component.serialize().map_err(std::io::Error::other)?;
        std::fs::create_dir_all(&self.dir)?;
        let mut entry = Vec::with_capacity(payload.len() + 40);
        entry.extend_from_slice(MAGIC);
        entry.extend_from_slice(&Sha256::digest(&payload));
        entry.extend_from_slice(&payload);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &entry)?;
        std::fs::rename(&tmp, path)
    }
}

/// The payload of an entry whose magic and checksum are right.
fn verified_payload(entry: &[u8]) -> Option<&[u8]> {
    let body = entry.strip_prefix(MAGIC.as_slice())?;
    if body.len() < 32 {
        return None;
    }
    let (sum, payload) = body.split_at(32);
    (Sha256::digest(payload).as_slice() == sum).then_some(payload)
}

#[allow(unsafe_code)]
fn deserialize(engine: &WasmEngine, payload: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` requires bytes produced by
    // `Component::serialize` of a compatible engine. The payload was written
    // by `store` above (our own serialize output) and its SHA-256 matched, so
    // it is byte-for-byte what we wrote; wasmtime additionally checks the
    // engine compatibility header and rejects mismatches with an error.
    unsafe { Component::deserialize(engine.engine(), payload) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_reject_tampered_entries() {
        let payload = b"compiled bytes";
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(&Sha256::digest(payload));
        entry.extend_from_slice(payload);
        assert_eq!(verified_payload(&entry), Some(&payload[..]));
        let mut flipped = entry.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(verified_payload(&flipped), None);
        assert_eq!(verified_payload(&entry[..entry.len() - 1]), None);
        assert_eq!(verified_payload(b"SLUICEC1short"), None);
        assert_eq!(verified_payload(b"garbage"), None);
    }
}
