//! The precompiled-artifact cache: compiling a component takes 10–400 ms, loading its
//! precompiled form under 2 ms.
//!
//! Loading precompiled code means running machine code from disk, so a cache entry is
//! trusted only if it carries a valid MAC under a key that lives beside the cache (mode 0600).
//! An entry that fails the check (tampered, truncated, from another build) is recompiled and
//! rewritten, never loaded. Entries are keyed by the engine's compatibility hash and the
//! component's SHA-256, so a new wasmtime or new settings never meet old code.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

const MAC_LEN: usize = 32;

/// How a component was obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Compiled from the Wasm (no cache, or first use).
    Compiled,
    /// Loaded from a verified cache entry.
    Cached,
    /// The cache entry failed its check and was replaced by a fresh compilation.
    Recompiled { reason: String },
}

pub struct ArtifactCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl ArtifactCache {
    pub fn open(engine: &Engine, root: PathBuf) -> anyhow::Result<ArtifactCache> {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = root.join(format!("{:016x}", hasher.finish()));
        std::fs::create_dir_all(&dir).map_err(|e| {
            anyhow::anyhow!("cannot create the plugin cache {}: {e}", dir.display())
        })?;
        let key = load_or_create_key(&root.join("cache.key"))?;
        Ok(ArtifactCache { dir, key })
    }

    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        digest: &[u8; 32],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.dir.join(format!("{}.cwasm", hex::encode(digest)));
        let mut outcome = CacheOutcome::Compiled;
        match std::fs::read(&path) {
            Ok(entry) => match self.verify(&entry, digest) {
                Ok(code) => {
                    if let Ok(component) = deserialize(engine, code) {
                        return Ok((component, CacheOutcome::Cached));
                    }
                    outcome = CacheOutcome::Recompiled {
                        reason: "the engine refused the entry".into(),
                    };
                }
                Err(reason) => outcome = CacheOutcome::Recompiled { reason },
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                outcome = CacheOutcome::Recompiled {
                    reason: format!("cannot read it: {e}"),
                }
            }
        }
        if let CacheOutcome::Recompiled { reason } = &outcome {
            tracing::warn!(entry = %path.display(), reason, "precompiled plugin not trusted; recompiling");
        }
        let code = engine.precompile_component(wasm)?;
        // Compile through the same path the cache serves, so a cached and a fresh load behave
        // the same.
        let component = deserialize(engine, &code)?;
        if let Err(e) = self.store(&path, digest, &code) {
            tracing::warn!(entry = %path.display(), error = %e, "cannot write the plugin cache; continuing without it");
        }
        Ok((component, outcome))
    }

    #[allow(clippy::expect_used)] // HMAC accepts keys of any length: this cannot fail.
    fn mac(&self, digest: &[u8; 32], code: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        mac.update(digest);
        mac.update(code);
        mac
    }

    fn verify<'a>(&self, entry: &'a [u8], digest: &[u8; 32]) -> Result<&'a [u8], String> {
        if entry.len() < MAC_LEN {
            return Err("the entry is truncated".into());
        }
        let (tag, code) = entry.split_at(MAC_LEN);
        self.mac(digest, code)
            .verify_slice(tag)
            .map(|()| code)
            .map_err(|_| "its MAC does not match (altered on disk?)".into())
    }

    fn store(&self, path: &Path, digest: &[u8; 32], code: &[u8]) -> std::io::Result<()> {
        let tag = self.mac(digest, code).finalize().into_bytes();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut entry = Vec::with_capacity(MAC_LEN + code.len());
        entry.extend_from_slice(&tag);
        entry.extend_from_slice(code);
        std::fs::write(&tmp, &entry)?;
        std::fs::rename(&tmp, path)
    }
}

/// Loads precompiled code that passed the MAC check (or that this process just compiled).
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, code: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `code` is either output of `precompile_component` from this process, or a cache
    // entry whose MAC, under a key only this deployment holds, proves it was written by
    // `store` from such output. wasmtime additionally checks the engine compatibility header.
    unsafe { Component::deserialize(engine, code) }
}

fn load_or_create_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    if let Ok(bytes) = std::fs::read(path) {
        if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(key);
        }
        tracing::warn!(file = %path.display(), "plugin cache key is malformed; making a new one");
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| anyhow::anyhow!("no randomness for the cache key: {e}"))?;
    sluice_core::files::write_private(path, &key)?;
    Ok(key)
}
