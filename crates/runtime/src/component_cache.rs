//! The on-disk cache of precompiled components. Cranelift takes from tens of milliseconds to
//! seconds per component; loading its output back takes well under one. Entries are named by
//! the SHA-256 of the component and a SHA-256 of the engine's compatibility settings, so a new
//! wasmtime or a different `Config` never reads an incompatible entry (and, unlike std's
//! `DefaultHasher`, whose algorithm may change between Rust releases, a new toolchain does not
//! invalidate entries that are still valid).

use crate::{LoadError, error_chain};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

pub(crate) struct ComponentCache {
    dir: Option<PathBuf>,
    engine_hash: u64,
}

impl ComponentCache {
    pub(crate) fn new(dir: Option<PathBuf>, engine: &Engine) -> Self {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        ComponentCache {
            dir,
            engine_hash: hasher.finish(),
        }
    }

    fn entry_path(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{sha256}-{:016x}.cwasm", self.engine_hash)))
    }

    /// Whether the precompiled form of the component `sha256` is on disk.
    pub(crate) fn holds(&self, sha256: &str) -> bool {
        self.entry_path(sha256).is_some_and(|path| path.exists())
    }

    /// The precompiled component `sha256`, if the cache holds a readable one.
    pub(crate) fn load(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.entry_path(sha256).filter(|p| p.exists())?;
        // SAFETY: the file was written by `store` below from `Component::serialize` of this
        // engine configuration (the name carries both the content hash and the engine hash),
        // in a directory owned by this server; wasmtime still checks its header.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %error_chain(&e),
                    "ignoring unreadable precompiled component");
                None
            }
        }
    }

    /// Loads the precompiled form of `bytes`, compiling and storing it on a miss. A cache that
    /// cannot be read or written only costs time: it is logged and compilation goes on.
    pub(crate) fn get_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<Component, LoadError> {
        if let Some(component) = self.load(engine, sha256) {
            return Ok(component);
        }
        let component =
            Component::new(engine, bytes).map_err(|e| LoadError::Invalid(error_chain(&e)))?;
        if let Some(path) = self.entry_path(sha256)
            && let Err(e) = store(&component, &path)
        {
            tracing::warn!(path = %path.display(), error = %e, "could not cache the compiled component");
        }
        Ok(component)
    }
}

/// A [`Hasher`] that feeds SHA-256, whose output is fixed for good.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"))
    }
}

/// Writes atomically: to a temporary file in the same directory, then renamed into place.
fn store(component: &Component, path: &Path) -> std::io::Result<()> {
    let serialized = component
        .serialize()
        .map_err(|e| std::io::Error::other(error_chain(&e)))?;
    let dir = path.parent().expect("cache entries live in a directory");
    std::fs::create_dir_all(dir)?;
    // Unique per process and thread, so concurrent loads of one component do not collide.
    let temp = dir.join(format!(
        ".{}.{}.{:?}.tmp",
        path.file_name().unwrap().to_string_lossy(),
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&temp, serialized)?;
    std::fs::rename(&temp, path)
}
