//! The record's signing key: where it comes from, and how a new key is announced in the chain.
//!
//! The key signs every commit's head. It need not live beside the store: `[gateway]
//! record_key` names a file (made, mode 0600, on first start) or `env:NAME` (64 hexadecimal
//! digits, the Ed25519 seed). Whoever can write the store but not read the key cannot forge
//! a head; an auditor who keeps the public key (or any head) outside the gateway can tell.
//!
//! Rotation: the old key signs the new public key together with the hash of the entry before
//! the announcement, and the announcement (kind `key-rotation`) is an ordinary chained entry;
//! every head from that commit on is signed by the new key. `verify` follows the sequence, and
//! a key announced by a trusted key is trusted.
//!
//! Architecture invariant: no I/O but reading and creating the key file.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::entry::Hash;

/// The kind of the entry that announces a new signing key.
pub const ROTATION_KIND: &str = "key-rotation";
const ROTATION_DOMAIN: &[u8] = b"sluice-record-key-rotation-v1";

/// Where the signing key is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding the 32-byte seed; made on first use.
    File(PathBuf),
    /// An environment variable holding the seed as 64 hexadecimal digits.
    Env(String),
}

impl KeySource {
    /// `env:NAME`, or a path (relative paths as given).
    pub fn parse(text: &str) -> KeySource {
        match text.strip_prefix("env:") {
            Some(name) => KeySource::Env(name.to_string()),
            None => KeySource::File(PathBuf::from(text)),
        }
    }

    /// Reads the key; a missing key file is created (a missing variable is an error).
    pub fn load(&self) -> anyhow::Result<SigningKey> {
        match self {
            KeySource::Env(name) => {
                let text = std::env::var(name)
                    .map_err(|_| anyhow::anyhow!("record key: ${name} is not set"))?;
                seed_from_hex(text.trim()).map_err(|e| anyhow::anyhow!("record key: ${name}: {e}"))
            }
            KeySource::File(path) => load_or_create(path),
        }
    }

    /// Reads the key, never creating one (for commands that need an existing key).
    pub fn load_existing(&self) -> anyhow::Result<SigningKey> {
        match self {
            KeySource::File(path) if !path.exists() => {
                anyhow::bail!("record key: no key file at {}", path.display())
            }
            _ => self.load(),
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "{}", path.display()),
            KeySource::Env(name) => write!(f, "env:{name}"),
        }
    }
}

fn seed_from_hex(text: &str) -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text, &mut seed)
        .map_err(|_| anyhow::anyhow!("expected 64 hexadecimal digits (an Ed25519 seed)"))?;
    Ok(SigningKey::from_bytes(&seed))
}

fn load_or_create(path: &Path) -> anyhow::Result<SigningKey> {
    if let Ok(bytes) = std::fs::read(path) {
        // The 32-byte seed, or its 64 hexadecimal digits (a key shared through configuration).
        if let Ok(seed) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(SigningKey::from_bytes(&seed));
        }
        return std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| seed_from_hex(text.trim()).ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} is not an Ed25519 key (32 bytes, or 64 hexadecimal digits)",
                    path.display()
                )
            });
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| anyhow::anyhow!("no randomness for the record key: {e}"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    sluice_core::files::write_private(path, &seed)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A public key as auditors pass it: 64 hexadecimal digits, or a file holding them.
pub fn parse_public_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let from_hex = |s: &str| {
        let mut key = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut key).ok().map(|_| key)
    };
    if let Some(key) = from_hex(text) {
        return Ok(key);
    }
    let contents = std::fs::read_to_string(text).map_err(|_| {
        anyhow::anyhow!("public key: `{text}` is neither 64 hexadecimal digits nor a readable file")
    })?;
    from_hex(&contents)
        .ok_or_else(|| anyhow::anyhow!("public key: {text} does not hold 64 hexadecimal digits"))
}

/// What a `key-rotation` entry's meta holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    #[serde(with = "hex::serde")]
    pub old_public_key: [u8; 32],
    #[serde(with = "hex::serde")]
    pub new_public_key: [u8; 32],
    /// The old key's signature over the new key and the previous entry's hash.
    #[serde(with = "hex::serde")]
    pub signature: [u8; 64],
}

impl Rotation {
    fn message(new_key: &[u8; 32], prev_hash: &Hash) -> Vec<u8> {
        [ROTATION_DOMAIN, new_key, prev_hash].concat()
    }

    /// The old key announces the new one, after the entry whose hash is `prev_hash`.
    pub fn sign(old: &SigningKey, new_key: [u8; 32], prev_hash: &Hash) -> Rotation {
        Rotation {
            old_public_key: old.verifying_key().to_bytes(),
            new_public_key: new_key,
            signature: old.sign(&Self::message(&new_key, prev_hash)).to_bytes(),
        }
    }

    /// Whether the old key really announced the new one at this place in the chain.
    pub fn holds(&self, prev_hash: &Hash) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.old_public_key) else {
            return false;
        };
        key.verify(
            &Self::message(&self.new_public_key, prev_hash),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }
}

/// The kind of the entry in which a gateway node announces the key it signs heads with.
pub const NODE_KEY_KIND: &str = "node-key";
const NODE_KEY_DOMAIN: &[u8] = b"sluice-record-node-key-v1";

/// What a `node-key` entry's meta holds. Several gateways share one chain, each signing the
/// heads of its own commits with a key of its own; the cluster key (shared configuration, like
/// the TLS certificate) endorses each node's key, so an auditor trusts one key for the set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeKey {
    pub node: String,
    #[serde(with = "hex::serde")]
    pub public_key: [u8; 32],
    #[serde(with = "hex::serde")]
    pub endorser: [u8; 32],
    /// The endorser's signature over the node's name and key.
    #[serde(with = "hex::serde")]
    pub signature: [u8; 64],
}

impl NodeKey {
    fn message(node: &str, key: &[u8; 32]) -> Vec<u8> {
        [NODE_KEY_DOMAIN, key, node.as_bytes()].concat()
    }

    /// `cluster` endorses `node`'s key.
    pub fn endorse(cluster: &SigningKey, node: &str, key: [u8; 32]) -> NodeKey {
        NodeKey {
            node: node.to_string(),
            public_key: key,
            endorser: cluster.verifying_key().to_bytes(),
            signature: cluster.sign(&Self::message(node, &key)).to_bytes(),
        }
    }

    /// Whether the endorser really endorsed this node's key.
    pub fn holds(&self) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.endorser) else {
            return false;
        };
        key.verify(
            &Self::message(&self.node, &self.public_key),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_holds_only_where_it_was_signed_and_for_the_key_it_names() {
        let old = SigningKey::from_bytes(&[1; 32]);
        let new = SigningKey::from_bytes(&[2; 32]).verifying_key().to_bytes();
        let rotation = Rotation::sign(&old, new, &[7; 32]);
        assert!(rotation.holds(&[7; 32]));
        assert!(!rotation.holds(&[8; 32]), "moved elsewhere in the chain");
        let forged = Rotation {
            new_public_key: [3; 32],
            ..rotation.clone()
        };
        assert!(!forged.holds(&[7; 32]), "another new key");
    }

    #[test]
    fn a_node_key_holds_only_for_the_node_and_key_the_cluster_key_endorsed() {
        let cluster = SigningKey::from_bytes(&[1; 32]);
        let endorsed = NodeKey::endorse(&cluster, "a", [2; 32]);
        assert!(endorsed.holds());
        let other_key = NodeKey {
            public_key: [3; 32],
            ..endorsed.clone()
        };
        assert!(!other_key.holds());
        let other_node = NodeKey {
            node: "b".into(),
            ..endorsed
        };
        assert!(!other_node.holds());
    }

    #[test]
    fn keys_come_from_hex_in_the_environment_or_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        let made = KeySource::File(file.clone()).load().unwrap();
        assert_eq!(
            KeySource::File(file).load().unwrap().to_bytes(),
            made.to_bytes()
        );
        assert!(
            KeySource::File(dir.path().join("none"))
                .load_existing()
                .is_err()
        );
        let hex_seed = "11".repeat(32);
        assert_eq!(parse_public_key(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        assert!(seed_from_hex(&hex_seed).is_ok());
        assert!(seed_from_hex("xyz").is_err());
        assert_eq!(
            KeySource::parse("env:SLUICE_KEY"),
            KeySource::Env("SLUICE_KEY".into())
        );
    }
}
