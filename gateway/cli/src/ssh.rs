//! `sluice ssh-cert` and `sluice ssh-config`: what a person needs so that plain `ssh`
//! reaches the gateway's SSH front door without a token at hand.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::client::Client;

/// `~/.ssh/NAME`.
pub fn home_ssh(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
    home.join(".ssh").join(name)
}

/// Where `ssh` looks for the certificate of the key `public` is the public half of:
/// `id_ed25519.pub` → `id_ed25519-cert.pub`.
fn certificate_path(public: &Path) -> PathBuf {
    let text = public.to_string_lossy();
    let stem = text.strip_suffix(".pub").unwrap_or(&text);
    PathBuf::from(format!("{stem}-cert.pub"))
}

pub async fn certificate(client: Client, key: &Path) -> anyhow::Result<ExitCode> {
    let public = std::fs::read_to_string(key).with_context(|| {
        format!(
            "cannot read your public key {} (make a key with `ssh-keygen -t ed25519`, or name one with --key)",
            key.display()
        )
    })?;
    let answer: serde_json::Value = serde_json::from_slice(
        &client
            .post_json("/api/ssh/certificate", public.into_bytes())
            .await?,
    )?;
    let Some(certificate) = answer["certificate"].as_str() else {
        bail!("the gateway sent no certificate");
    };
    let path = certificate_path(key);
    std::fs::write(&path, format!("{certificate}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let hours = answer["ttl_seconds"].as_u64().unwrap_or_default() as f64 / 3600.0;
    println!(
        "wrote {} (valid {hours:.1} h): ssh -p PORT CONNECTION@GATEWAY now signs in with it",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn config(client: Client, gateway: &str, identity: &Path) -> anyhow::Result<ExitCode> {
    let door: serde_json::Value = serde_json::from_slice(&client.get("/api/ssh").await?)?;
    let listen: std::net::SocketAddr = door["listen"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .context("the gateway named no SSH address")?;
    // A gateway listening on every address is reached the way the CLI reaches it.
    let host = if listen.ip().is_unspecified() {
        gateway
            .rsplit_once(':')
            .map_or(gateway, |(host, _)| host)
            .to_string()
    } else {
        listen.ip().to_string()
    };
    let port = listen.port();
    let certificate = certificate_path(&PathBuf::from(format!("{}.pub", identity.display())));
    println!(
        "# The Sluice gateway's SSH front door (`sluice ssh-config`): add this to ~/.ssh/config,"
    );
    println!("# this line to ~/.ssh/known_hosts, and get a certificate with `sluice ssh-cert`:");
    println!(
        "#   [{host}]:{port} {}",
        door["host_key"].as_str().unwrap_or_default()
    );
    for name in door["connections"].as_array().into_iter().flatten() {
        let Some(name) = name.as_str() else { continue };
        println!("Host {name}");
        println!("    HostName {host}");
        println!("    Port {port}");
        println!("    User {name}");
        println!("    IdentityFile {}", identity.display());
        println!("    CertificateFile {}", certificate.display());
        println!("    IdentitiesOnly yes");
    }
    Ok(ExitCode::SUCCESS)
}
