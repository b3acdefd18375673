//! Who is asking: a bearer token becomes an [`Identity`].
//!
//! Static tokens (service accounts, CI) are stored as SHA-256 hashes, each mapped to an
//! identity. Dev tokens are made at first start, kept in a 0600 file in the data folder and
//! printed; the configuration never holds a token itself. Every other token must be a JWT
//! from the configured OpenID provider (`oidc.rs`).

pub mod oidc;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::{StaticToken, TokenKind};
use sluice_core::frame::Identity;

#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Identity>,
    /// The subjects of `kind = "agent"` tokens.
    agents: BTreeSet<String>,
}

/// The development tokens, as printed at start.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DevTokens {
    pub user: String,
    pub reviewer: String,
    /// An AI agent's (`dev-agent`, in `developers`): connects, never decides a review.
    /// Made on the first start that lacks it (files from before it existed).
    #[serde(default)]
    pub agent: String,
}

impl Tokens {
    pub fn new(configured: &[StaticToken], dev: Option<&DevTokens>) -> Tokens {
        let mut by_hash = HashMap::new();
        let mut agents = BTreeSet::new();
        for t in configured {
            if t.kind == TokenKind::Agent {
                agents.insert(t.subject.clone());
            }
            let mut hash = [0u8; 32];
            if hex::decode_to_slice(&t.sha256, &mut hash).is_ok() {
                let identity = Identity {
                    subject: t.subject.clone(),
                    name: t.name.clone(),
                    groups: t.groups.clone(),
                };
                by_hash.insert(hash, identity);
            }
        }
        if let Some(dev) = dev {
            let identity = |subject: &str, group: &str| Identity {
                subject: subject.into(),
                name: Some(format!("{subject} (development token)")),
                groups: vec![group.into()],
            };
            by_hash.insert(hash(&dev.user), identity("dev-user", "developers"));
            by_hash.insert(hash(&dev.reviewer), identity("dev-reviewer", "reviewers"));
            by_hash.insert(hash(&dev.agent), identity("dev-agent", "developers"));
            agents.insert("dev-agent".into());
        }
        Tokens { by_hash, agents }
    }

    /// The subjects of agent tokens.
    pub fn agents(&self) -> &BTreeSet<String> {
        &self.agents
    }

    /// The identity a token stands for. Looked up by its hash, so the comparison never
    /// touches the secret byte by byte.
    pub fn authenticate(&self, token: &str) -> Option<Identity> {
        self.by_hash.get(&hash(token)).cloned()
    }
}

/// Static tokens first, then the OpenID provider.
pub struct Authenticator {
    tokens: Tokens,
    oidc: Option<oidc::Oidc>,
}

impl Authenticator {
    pub fn new(tokens: Tokens, oidc: Option<oidc::Oidc>) -> Authenticator {
        Authenticator { tokens, oidc }
    }

    pub fn oidc(&self) -> Option<&oidc::Oidc> {
        self.oidc.as_ref()
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The identity behind `token`, or why there is none (for the client).
    pub async fn authenticate(&self, token: &str) -> Result<Identity, String> {
        if let Some(identity) = self.tokens.authenticate(token) {
            return Ok(identity);
        }
        match &self.oidc {
            Some(oidc) if token.split('.').count() == 3 => {
                oidc.verify(token).await.map_err(|e| e.to_string())
            }
            Some(_) => Err(
                "unknown token (neither a service token nor a JWT from the identity provider)"
                    .into(),
            ),
            None => Err("unknown token".into()),
        }
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Loads the dev tokens from `DATA/dev-tokens.json`, making them on first start.
pub fn dev_tokens(data_dir: &Path) -> anyhow::Result<DevTokens> {
    let path = data_dir.join("dev-tokens.json");
    let make = |role: &str| -> anyhow::Result<String> {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Ok(format!("sluice_dev_{role}_{}", hex::encode(bytes)))
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut tokens: DevTokens = serde_json::from_str(&text)?;
        if !tokens.agent.is_empty() {
            return Ok(tokens);
        }
        tokens.agent = make("agent")?;
        sluice_core::files::write_private(
            &path,
            serde_json::to_string_pretty(&tokens)?.as_bytes(),
        )?;
        return Ok(tokens);
    }
    let tokens = DevTokens {
        user: make("user")?,
        reviewer: make("reviewer")?,
        agent: make("agent")?,
    };
    std::fs::create_dir_all(data_dir)?;
    sluice_core::files::write_private(&path, serde_json::to_string_pretty(&tokens)?.as_bytes())?;
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_identities_by_hash() {
        let configured = [StaticToken {
            sha256: hex::encode(Sha256::digest(b"ci-secret")),
            subject: "ci".into(),
            name: None,
            groups: vec!["deployers".into()],
            kind: TokenKind::Person,
        }];
        let dev = DevTokens {
            user: "u".into(),
            reviewer: "r".into(),
            agent: "a".into(),
        };
        let tokens = Tokens::new(&configured, Some(&dev));
        assert_eq!(
            tokens.authenticate("ci-secret").unwrap().groups,
            ["deployers"]
        );
        assert_eq!(tokens.authenticate("u").unwrap().subject, "dev-user");
        assert_eq!(tokens.authenticate("r").unwrap().subject, "dev-reviewer");
        assert!(tokens.authenticate("ci-secreT").is_none());
        assert!(tokens.authenticate("").is_none());
    }
}
