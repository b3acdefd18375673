//! The gateway's own certificate authority: made on first start in `DATA/tls/`, so the
//! listener speaks TLS with no setup and clients pin the CA (`sluice ca export`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

pub struct Tls {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the certificate served: what other nodes of a cluster pin.
    pub leaf_sha256: [u8; 32],
}

fn leaf_sha256(chain: &[CertificateDer<'_>]) -> [u8; 32] {
    chain
        .first()
        .map(|leaf| Sha256::digest(leaf.as_ref()).into())
        .unwrap_or_default()
}

fn paths(data_dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (
        dir.join("ca.pem"),
        dir.join("ca.key"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// Where the CA certificate lives, for the CLI's default.
pub fn ca_path(data_dir: &Path) -> PathBuf {
    paths(data_dir).0
}

/// Installs the ring provider for rustls; call once at start.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Loads the CA and server certificate, making them on first start.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Tls> {
    load_or_create_for(data_dir, &[])
}

/// Loads the CA and a server certificate for `localhost`, `127.0.0.1` and `names` (the host
/// names and addresses clients and agents reach the gateway by: `[gateway] tls_names`),
/// making the CA on first start and the certificate again whenever the names change. The CA
/// stays, so clients that pinned it keep trusting the gateway.
pub fn load_or_create_for(data_dir: &Path, names: &[String]) -> anyhow::Result<Tls> {
    let (ca_pem_path, ca_key_path, cert_path, key_path) = paths(data_dir);
    let mut all = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    all.extend(
        names
            .iter()
            .filter(|n| !all.contains(n))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let names_path = ca_pem_path.with_file_name("server.names");
    if !ca_pem_path.exists() {
        std::fs::create_dir_all(ca_pem_path.parent().unwrap_or(data_dir))?;
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params()?.self_signed(&ca_key)?;
        sluice_core::files::write_private(&ca_key_path, ca_key.serialize_pem().as_bytes())?;
        std::fs::write(&ca_pem_path, ca_cert.pem())?;
    }
    let issued_for = std::fs::read_to_string(&names_path)
        .unwrap_or_else(|_| "localhost\n127.0.0.1\n".to_string());
    if !cert_path.exists() || issued_for != all.join("\n") + "\n" {
        let ca_pem = std::fs::read_to_string(&ca_key_path)
            .with_context(|| format!("read {}", ca_key_path.display()))?;
        let ca_key = KeyPair::from_pem(&ca_pem)?;
        let params = ca_params()?;
        let issuer = Issuer::new(params, &ca_key);
        let server_key = KeyPair::generate()?;
        let mut server_params = CertificateParams::new(all.clone())
            .with_context(|| format!("gateway.tls_names: {}", names.join(", ")))?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "Sluice gateway");
        let server_cert = server_params.signed_by(&server_key, &issuer)?;
        sluice_core::files::write_private(&key_path, server_key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, server_cert.pem())?;
        std::fs::write(&names_path, all.join("\n") + "\n")?;
    }
    let ca_pem = std::fs::read_to_string(&ca_pem_path)
        .with_context(|| format!("read {}", ca_pem_path.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("read {}", cert_path.display()))?
        .collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("read {}", key_path.display()))?;
    let leaf_sha256 = leaf_sha256(&chain);
    let server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Tls {
        ca_pem,
        server_config: Arc::new(server_config),
        leaf_sha256,
    })
}

/// The operator's certificate chain and key (`[gateway] tls_cert`, `tls_key`) for every
/// listener. What clients pin (`/api/ca`, the fingerprint `serve` prints) is the chain's last
/// certificate: the CA the operator put at its top.
pub fn load_operator(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("gateway.tls_cert: cannot read {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "gateway.tls_cert: {} is not PEM certificates",
                cert.display()
            )
        })?;
    let Some(top) = chain.last() else {
        anyhow::bail!("gateway.tls_cert: {} holds no certificate", cert.display());
    };
    let ca_pem = pem_of(top);
    let private = PrivateKeyDer::from_pem_file(key).with_context(|| {
        format!(
            "gateway.tls_key: cannot read a PEM private key from {}",
            key.display()
        )
    })?;
    let leaf_sha256 = leaf_sha256(&chain);
    let server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .with_context(|| {
            format!(
                "gateway.tls_cert and tls_key do not go together ({} and {})",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Tls {
        ca_pem,
        server_config: Arc::new(server_config),
        leaf_sha256,
    })
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// The CA's parameters (its name and constraints), to make it and to sign with it.
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "Sluice gateway local CA");
    Ok(params)
}

/// SHA-256 fingerprint of the first certificate in `pem`, as colon-separated hex.
pub fn fingerprint(pem: &str) -> anyhow::Result<String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())?;
    let digest = Sha256::digest(der.as_ref());
    Ok(digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// A client configuration that trusts only the given CA (the gateway's: pinned).
pub fn client_config(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    anyhow::ensure!(!roots.is_empty(), "the CA file holds no certificate");
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A client configuration that encrypts but does not check who answers, as libpq's
/// `sslmode=require`: protects against eavesdropping only. For upstreams whose certificate
/// the operator cannot provide; `verify` with a CA file is the sound choice.
pub fn unverified_client_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider, None)))
            .with_no_client_auth(),
    ))
}

/// A client configuration that trusts exactly one certificate, by its SHA-256: another node
/// of the cluster, as it advertised itself in the shared record. Names and CAs do not
/// matter; the handshake must still be signed by that certificate's key.
pub fn pinned_client_config(leaf_sha256: [u8; 32]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider, Some(leaf_sha256))))
            .with_no_client_auth(),
    ))
}

/// Accepts any certificate (or only the one whose SHA-256 is pinned), but still checks that
/// the handshake is signed by its key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>, Option<[u8; 32]>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.1 {
            Some(pinned) if <[u8; 32]>::from(Sha256::digest(end_entity.as_ref())) != pinned => Err(
                rustls::Error::General("not the certificate this node advertised".into()),
            ),
            _ => Ok(rustls::client::danger::ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
