//! Compiled guests on disk: a component is compiled once per content and
//! engine, and later starts (and swaps back to it) only map the result.
//!
//! Entries are named by the SHA-256 of the component's bytes and of the
//! engine's compatibility hash (SHA-256 again, so the name is the same
//! whichever Rust built the host), written to a temporary file and renamed,
//! so a reader never sees half an entry and an entry can only be what this
//! host's wasmtime wrote for exactly those bytes.
//!
//! The directory is kept under `HIO_CACHE_MAX_MIB` (default 512 MiB): after
//! each new entry, the least recently used ones go (a hit counts as a use).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use anyhow::Result;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a compiled component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cached,
}

/// Default bound on the cache directory, in MiB (a Python guest's entry
/// is about 35 MiB, a Rust guest's well under 1 MiB).
pub const DEFAULT_MAX_MIB: u64 = 512;

fn entry(dir: &Path, engine: &Engine, bytes: &[u8]) -> PathBuf {
    let mut engine_hash = StableHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut engine_hash);
    let engine_hash = hex(&engine_hash.0.finalize()[..8]);
    dir.join(format!("{}-{engine_hash}.cwasm", hex(&Sha256::digest(bytes))))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `Hasher` whose result depends only on the bytes written to it (std's
/// `DefaultHasher` may change between Rust releases).
struct StableHasher(Sha256);

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
    }
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
            Ok(c) => {
                // A use, for the eviction order.
                let _ =
                    std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
                return Ok((c, Origin::Cached));
            }
            Err(e) => {
                tracing::warn!(entry = %path.display(), "unusable compiled-guest cache entry, recompiling: {e:#}")
            }
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = store(&path, &component) {
        tracing::debug!(dir = %dir.display(), "cannot cache the compiled guest: {e:#}");
    }
    evict(dir, max_bytes(), &path);
    Ok((component, Origin::Compiled))
}

/// `HIO_CACHE_MAX_MIB` in bytes, else the default.
fn max_bytes() -> u64 {
    let mib = std::env::var("HIO_CACHE_MAX_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MAX_MIB);
    mib.saturating_mul(1 << 20)
}

/// Remove the least recently used entries until the directory holds at
/// most `max` bytes; `keep` (the entry just written) stays.
fn evict(dir: &Path, max: u64, keep: &Path) {
    let Ok(listing) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<(SystemTime, u64, PathBuf)> = listing
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
    entries.sort();
    for (_, len, path) in entries {
        if total <= max {
            break;
        }
        if path != keep && std::fs::remove_file(&path).is_ok() {
            tracing::debug!(entry = %path.display(), "compiled-guest cache over its bound: removed");
            total -= len;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_least_recently_used_entries_go_first_and_the_new_one_stays() {
        let dir = std::env::temp_dir().join(format!("hio-cache-evict-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = SystemTime::now() - Duration::from_secs(100);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let path = dir.join(format!("{name}.cwasm"));
            std::fs::write(&path, vec![0u8; 1000]).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(old + Duration::from_secs(i as u64)).unwrap();
        }
        // "a" is the oldest but was just written: it stays; "b" and "c" go.
        evict(&dir, 2000, &dir.join("a.cwasm"));
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["a.cwasm", "d.cwasm"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn entry_names_do_not_depend_on_the_std_hasher() {
        let engine = Engine::default();
        let a = entry(Path::new("/c"), &engine, b"guest");
        assert_eq!(a, entry(Path::new("/c"), &engine, b"guest"));
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&hex(&Sha256::digest(b"guest"))) && name.ends_with(".cwasm"), "{name}");
    }
}
