//! The gateway's SSH user CA: short-lived certificates for signed-in people, so plain `ssh`
//! (and everything built on it) signs in without a token at hand.
//!
//! `sluice ssh-cert` sends a public key with the person's token; the gateway signs a user
//! certificate whose one principal (and key id) is the person's subject and whose extension
//! `groups@sluice` carries their groups, valid for `[gateway] ssh_cert_ttl_seconds`. The SSH
//! front door accepts a certificate only if this CA signed it, it is valid now, and it names
//! exactly one principal, its own key id: the identity is read from the certificate alone.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use russh::keys::Certificate;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{Fingerprint, HashAlg, PrivateKey, PublicKey};

use sluice_core::frame::Identity;

/// The extension that carries the person's groups (comma-separated).
const GROUPS: &str = "groups@sluice";
/// Accepted this far ahead of the gateway's clock, for clocks slightly apart.
const SKEW_SECONDS: u64 = 60;

pub struct UserCa {
    key: PrivateKey,
    fingerprint: Fingerprint,
}

impl UserCa {
    /// The CA's key from `source` (`env:NAME` or a file, shared by several gateways), else
    /// `DATA/ssh/user_ca_ed25519_key`, made on first start.
    pub fn load(source: Option<&str>, data_dir: &Path) -> anyhow::Result<UserCa> {
        let default = data_dir.join("ssh").join("user_ca_ed25519_key");
        let key = super::load_key(source, &default, "SSH user CA")?;
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256);
        Ok(UserCa { key, fingerprint })
    }

    /// The CA's public key, as `@cert-authority` lines and `TrustedUserCAKeys` take it.
    pub fn public_key(&self) -> String {
        self.key.public_key().to_openssh().unwrap_or_default()
    }

    /// A user certificate for `identity`'s `public_key` (OpenSSH's one-line form), valid
    /// for `ttl_seconds` from now.
    pub fn sign(
        &self,
        identity: &Identity,
        public_key: &str,
        ttl_seconds: u64,
    ) -> Result<String, String> {
        let public = PublicKey::from_openssh(public_key.trim())
            .map_err(|e| format!("not an OpenSSH public key (`ssh-ed25519 AAAA…`): {e}"))?;
        if identity.groups.iter().any(|g| g.contains(',')) {
            return Err("a group name holds a comma, which a certificate cannot carry".into());
        }
        let now = now();
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        let mut serial = [0u8; 8];
        getrandom::fill(&mut serial).map_err(|e| format!("no randomness: {e}"))?;
        let field = |e: russh::keys::ssh_key::Error| format!("cannot make the certificate: {e}");
        let mut builder = Builder::new(
            nonce.to_vec(),
            public.key_data().clone(),
            now.saturating_sub(SKEW_SECONDS),
            now + ttl_seconds,
        )
        .map_err(field)?;
        builder
            .serial(u64::from_be_bytes(serial))
            .map_err(field)?
            .cert_type(CertType::User)
            .map_err(field)?
            .key_id(identity.subject.clone())
            .map_err(field)?
            .valid_principal(identity.subject.clone())
            .map_err(field)?
            .extension("permit-pty", "")
            .map_err(field)?
            .extension(GROUPS, identity.groups.join(","))
            .map_err(field)?;
        let cert = builder.sign(&self.key).map_err(field)?;
        cert.to_openssh().map_err(field)
    }

    /// The identity `cert` stands for, or why it stands for none (for the log: the client
    /// hears only that it was refused, as SSH has no way to say why).
    pub fn verify(&self, cert: &Certificate) -> Result<Identity, String> {
        let now = now();
        if cert.valid_before() <= now {
            return Err(format!(
                "the certificate expired {} s ago",
                now - cert.valid_before()
            ));
        }
        if cert.valid_after() > now + SKEW_SECONDS {
            return Err("the certificate is not valid yet".into());
        }
        cert.validate_at(now.max(cert.valid_after()), [&self.fingerprint])
            .map_err(|_| "the certificate is not signed by this gateway's SSH CA".to_string())?;
        if cert.cert_type() != CertType::User {
            return Err("a host certificate, not a user certificate".into());
        }
        if !cert.critical_options().is_empty() {
            return Err("the certificate has critical options this gateway does not apply".into());
        }
        let subject = match cert.valid_principals() {
            [one] if one == cert.key_id() => one.clone(),
            [one] => {
                return Err(format!(
                    "the certificate names principal `{one}` but was issued to `{}`",
                    cert.key_id()
                ));
            }
            [] => return Err("the certificate names no principal".into()),
            _ => return Err("the certificate names more than one principal".into()),
        };
        let groups = cert
            .extensions()
            .get(GROUPS)
            .map(|g| {
                g.split(',')
                    .filter(|g| !g.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Identity {
            name: None,
            subject,
            groups,
        })
    }
}

/// A new Ed25519 key from the system's randomness.
pub(super) fn new_ed25519(comment: &str) -> anyhow::Result<PrivateKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    PrivateKey::new(
        KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)),
        comment,
    )
    .map_err(|e| anyhow::anyhow!("cannot make an SSH key: {e}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (tempfile::TempDir, UserCa) {
        let dir = tempfile::tempdir().unwrap();
        let ca = UserCa::load(None, dir.path()).unwrap();
        (dir, ca)
    }

    fn person() -> Identity {
        Identity {
            subject: "ann".into(),
            name: None,
            groups: vec!["developers".into(), "oncall".into()],
        }
    }

    fn user_key() -> String {
        new_ed25519("ann")
            .unwrap()
            .public_key()
            .to_openssh()
            .unwrap()
    }

    #[test]
    fn a_certificate_stands_for_the_person_it_was_issued_to() {
        let (_dir, ca) = ca();
        let text = ca.sign(&person(), &user_key(), 60).unwrap();
        let cert = Certificate::from_openssh(&text).unwrap();
        let identity = ca.verify(&cert).unwrap();
        assert_eq!(identity.subject, "ann");
        assert_eq!(identity.groups, ["developers", "oncall"]);
    }

    #[test]
    fn another_ca_expired_or_ambiguous_certificates_are_refused() {
        let (_dir, ca) = ca();
        let (_other_dir, other) = super::tests::ca();
        let text = other.sign(&person(), &user_key(), 60).unwrap();
        let cert = Certificate::from_openssh(&text).unwrap();
        assert!(
            ca.verify(&cert)
                .unwrap_err()
                .contains("not signed by this gateway")
        );

        // Signed by this CA, but with two principals, or one other than its key id.
        let sign = |principals: &[&str], key_id: &str, after: u64, before: u64| {
            let public = PublicKey::from_openssh(&user_key()).unwrap();
            let mut b =
                Builder::new(vec![0; 32], public.key_data().clone(), after, before).unwrap();
            b.cert_type(CertType::User).unwrap().key_id(key_id).unwrap();
            for p in principals {
                b.valid_principal(*p).unwrap();
            }
            b.sign(&ca.key).unwrap()
        };
        let now = now();
        let two = sign(&["ann", "root"], "ann", now - 10, now + 60);
        assert!(
            ca.verify(&two)
                .unwrap_err()
                .contains("more than one principal")
        );
        let mismatched = sign(&["root"], "ann", now - 10, now + 60);
        assert!(
            ca.verify(&mismatched)
                .unwrap_err()
                .contains("names principal `root`")
        );
        let expired = sign(&["ann"], "ann", now - 100, now - 10);
        assert!(ca.verify(&expired).unwrap_err().contains("expired"));
        assert!(ca.sign(&person(), "not a key", 60).is_err());
    }
}
