//! Compiled guests on disk: a component is compiled once per content and
//! engine, and later starts (and swaps back to it) only map the result.
//!
//! Entries are named by the SHA-256 of the component's bytes and the
//! engine's compatibility hash, written to a temporary file and renamed, so
//! a reader never sees half an entry and an entry can only be what this
//! host's wasmtime wrote for exactly those bytes.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// `$HIO_CACHE_DIR`, else `$XDG_CACHE_HOME/hio-host`, else `~/.cache/hio-host`.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("HIO_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("hio-host"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hio-host"))
}

/// Where a compiled component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cached,
}

fn entry(dir: &Path, engine: &Engine, bytes: &[u8]) -> PathBuf {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let digest: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{digest}-{:016x}.cwasm", h.finish()))
}

/// Compile `bytes`, or map them from the cache in `dir` (none: no cache).
pub fn component(engine: &Engine, bytes: &[u8], dir: Option<&Path>) -> Result<(Component, Origin)> {
    let Some(dir) = dir else { return Ok((Component::new(engine, bytes)?, Origin::Compiled)) };
    let path = entry(dir, engine, bytes);
    if path.exists() {
        // SAFETY: entries are only ever written below by `serialize` for
        // these exact bytes and an engine with this compatibility hash, and
        // appear whole (rename); wasmtime still checks the header.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => return Ok((c, Origin::Cached)),
            Err(e) => {
                tracing::warn!(entry = %path.display(), "unusable compiled-guest cache entry, recompiling: {e:#}")
            }
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = store(&path, &component) {
        tracing::debug!(dir = %dir.display(), "cannot cache the compiled guest: {e:#}");
    }
    Ok((component, Origin::Compiled))
}

fn store(path: &Path, component: &Component) -> Result<()> {
    // Unique per writer, also between threads of one process: two writers
    // sharing a temporary file could rename it into place half-written.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().expect("entries live in a directory");
    std::fs::create_dir_all(dir)?;
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{}-{n}.tmp", std::process::id()));
    std::fs::write(&tmp, component.serialize()?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
