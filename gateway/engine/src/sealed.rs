//! Secrets kept at rest (the passwords and environment values of connections added at
//! runtime): sealed with AES-256-GCM under a key from configuration, so a copy of the store
//! alone reveals none of them. The key is `env:NAME` or a file (hex or base64 of 32 bytes), so
//! several gateways can share it; by default `DATA/connections.key`, made on first use. Each
//! secret is bound to the name it was sealed for: a sealed value moved to another connection
//! does not open.

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// The key `source` names (`env:NAME`, `file:PATH` or a path), or, with none, the one in
    /// `data_dir`, made on first use.
    pub fn load(source: Option<&str>, data_dir: &Path) -> anyhow::Result<Sealer> {
        let text = match source {
            Some(source) if source.starts_with("env:") => {
                let name = &source[4..];
                std::env::var(name).with_context(|| {
                    format!("the connections' key: environment variable {name} is not set")
                })?
            }
            Some(source) => {
                let path = source.strip_prefix("file:").unwrap_or(source);
                std::fs::read_to_string(path)
                    .with_context(|| format!("the connections' key: cannot read {path}"))?
            }
            None => {
                let path = data_dir.join("connections.key");
                if !path.exists() {
                    let mut key = [0u8; 32];
                    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("{e}"))?;
                    sluice_core::files::write_private(&path, hex::encode(key).as_bytes())?;
                }
                std::fs::read_to_string(&path).with_context(|| {
                    format!("the connections' key: cannot read {}", path.display())
                })?
            }
        };
        Sealer::from_text(text.trim())
    }

    fn from_text(text: &str) -> anyhow::Result<Sealer> {
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .filter(|b| b.len() == 32);
        let Some(bytes) = bytes else {
            bail!("the connections' key must be 32 bytes, in hex or base64");
        };
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| anyhow::anyhow!("the connections' key is not an AES-256 key"))?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
        })
    }

    /// `secret`, sealed for `name`: base64 of a fresh nonce, the ciphertext and its tag.
    pub fn seal(&self, name: &str, secret: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        let _ = getrandom::fill(&mut nonce);
        let mut sealed = secret.to_vec();
        // Sealing in place cannot fail for inputs under AES-GCM's limit (64 GiB).
        let _ = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut sealed,
        );
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// The secret `sealed` holds, if it was sealed for `name` under this key.
    pub fn open(&self, name: &str, sealed: &str) -> anyhow::Result<Vec<u8>> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .context("a sealed secret is not base64")?;
        if bytes.len() < NONCE_LEN {
            bail!("a sealed secret is too short");
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| anyhow::anyhow!("a sealed secret's nonce is malformed"))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut body)
            .map_err(|_| anyhow::anyhow!("the secret of `{name}` does not open with this key (another gateway's key, or altered)"))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_opens_for_its_name_under_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::load(None, dir.path()).unwrap();
        let sealed = sealer.seal("pg", b"hunter2");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(sealer.open("pg", &sealed).unwrap(), b"hunter2");
        assert!(sealer.open("other", &sealed).is_err(), "bound to its name");
        // The key made on first use is the one used next time.
        let again = Sealer::load(None, dir.path()).unwrap();
        assert_eq!(again.open("pg", &sealed).unwrap(), b"hunter2");
        let key = std::fs::read_to_string(dir.path().join("connections.key")).unwrap();
        let shared = Sealer::load(
            Some(&format!(
                "file:{}",
                dir.path().join("connections.key").display()
            )),
            dir.path(),
        )
        .unwrap();
        assert_eq!(shared.open("pg", &sealed).unwrap(), b"hunter2");
        // Another key, or a changed byte: refused, never garbage.
        let other = tempfile::tempdir().unwrap();
        let stranger = Sealer::load(None, other.path()).unwrap();
        assert!(stranger.open("pg", &sealed).is_err());
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(&sealed)
            .unwrap();
        bytes[NONCE_LEN] ^= 1;
        let altered = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert!(sealer.open("pg", &altered).is_err());
        assert!(
            Sealer::from_text(&key[..10]).is_err(),
            "a short key is refused"
        );
        assert!(
            Sealer::load(Some("env:SLUICE_TEST_NO_SUCH_KEY"), dir.path())
                .unwrap_err()
                .to_string()
                .contains("SLUICE_TEST_NO_SUCH_KEY")
        );
    }
}
