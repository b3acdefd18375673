//! The SSH front door's protocol side: the gateway's host key, and a program session carried
//! over an SSH channel.
//!
//! An SSH channel does not get a frame path of its own: it becomes a client of the session
//! protocol (`wire.rs`), in-process, exactly as `sluice connect` and `sluice exec` are over
//! TLS. So a session reached by `ssh` crosses the same steps in `session/exec.rs` (filter,
//! record, review, forward) and nothing about masking, reviews or recording can differ between
//! the two doors. Who may open what is decided in `server/ssh.rs`.
//!
//! ```text
//! ssh client --channel--> [bridge: data, EOF, window changes -> messages] --> session/exec.rs
//! ssh client <--channel-- [bridge: output, notices, exit status <- messages] <-- session/exec.rs
//! ```

pub mod ca;
pub mod sftp;
pub mod upstream;

use std::path::{Path, PathBuf};

use russh::ChannelMsg;
use russh::keys::ssh_key::{self, LineEnding, PrivateKey};
use russh::server::Msg;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::wire::{self, Message};

/// `DATA/ssh/host_ed25519_key`: the gateway's SSH host key, unless configured.
pub fn host_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("ssh").join("host_ed25519_key")
}

/// One of the gateway's SSH keys (its host key, its user CA): from `source` when configured
/// (`env:NAME` holding the key's text, or a file's path: what several gateways share), else
/// from `default`, made there on first start (OpenSSH's format, mode 0600).
pub fn load_key(source: Option<&str>, default: &Path, what: &str) -> anyhow::Result<PrivateKey> {
    let (text, from) = match source {
        Some(source) => match source.strip_prefix("env:") {
            Some(var) => (
                std::env::var(var)
                    .map_err(|_| anyhow::anyhow!("{what}: the environment has no {var}"))?,
                source.to_string(),
            ),
            None => (
                std::fs::read_to_string(source)
                    .map_err(|e| anyhow::anyhow!("{what}: cannot read {source}: {e}"))?,
                source.to_string(),
            ),
        },
        None if default.exists() => (
            std::fs::read_to_string(default)?,
            default.display().to_string(),
        ),
        None => {
            let key = ca::new_ed25519(&format!("sluice {what}"))?;
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| anyhow::anyhow!("cannot encode the {what}: {e}"))?;
            if let Some(dir) = default.parent() {
                std::fs::create_dir_all(dir)?;
            }
            sluice_core::files::write_private(default, text.as_bytes())?;
            return Ok(key);
        }
    };
    PrivateKey::from_openssh(text.trim())
        .map_err(|e| anyhow::anyhow!("{what} ({from}): not an OpenSSH private key: {e}"))
}

/// `SHA256:...`, as `ssh` shows it when it asks whether to trust a host.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string()
}

/// A `known_hosts` line for the gateway whose data folder is `data_dir`, reached at `host`
/// (`[127.0.0.1]:2222`, or a name).
pub fn known_hosts_entry(data_dir: &Path, host: &str) -> anyhow::Result<String> {
    let path = host_key_path(data_dir);
    if !path.exists() {
        anyhow::bail!(
            "no SSH host key at {} (start the gateway once with [gateway] ssh_listen set; with ssh_host_key configured, `sluice ssh-config` prints the line)",
            path.display()
        );
    }
    let key = load_key(None, &path, "SSH host key")?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| anyhow::anyhow!("cannot encode the SSH host key: {e}"))?;
    Ok(format!("{host} {public}"))
}

/// What a session channel asked to run.
#[derive(Debug)]
pub enum Start {
    /// `shell`: interactive with a terminal of (rows, cols), else a script read from stdin.
    Shell { terminal: Option<(u16, u16)> },
    /// `exec COMMAND`: the command is the whole one-shot input.
    Exec(Vec<u8>),
    /// `subsystem NAME` (`sftp`).
    Subsystem(String),
}

/// Reads a channel's requests until it asks to start something (or goes away: `None`).
/// A terminal requested before counts for a shell.
pub async fn requested(channel: &mut russh::Channel<Msg>) -> Option<Start> {
    let mut terminal = None;
    loop {
        match channel.wait().await? {
            ChannelMsg::RequestPty {
                col_width,
                row_height,
                ..
            } => terminal = Some((size(row_height, 24), size(col_width, 80))),
            ChannelMsg::RequestShell { .. } => return Some(Start::Shell { terminal }),
            ChannelMsg::Exec { command, .. } => return Some(Start::Exec(command)),
            ChannelMsg::RequestSubsystem { name, .. } => return Some(Start::Subsystem(name)),
            ChannelMsg::Close => return None,
            // Environment variables are not passed: a connection's environment is its own.
            _ => {}
        }
    }
}

/// A terminal dimension; 0 (a client whose own input is no terminal) means the usual size.
fn size(n: u32, usual: u16) -> u16 {
    match n {
        0 => usual,
        n => u16::try_from(n).unwrap_or(u16::MAX),
    }
}

/// Tells the client why nothing runs, on its standard error, and ends the channel with
/// `status`.
pub async fn refuse(channel: &russh::Channel<Msg>, why: &str, status: u32) {
    let text = format!("sluice: {why}\r\n");
    let _ = channel.extended_data(1, text.as_bytes()).await;
    let _ = channel.exit_status(status).await;
    let _ = channel.eof().await;
    let _ = channel.close().await;
}

/// The exit status the client sees when the gateway refused or ended the session, as
/// `sluice exec` exits with.
pub const EXIT_REFUSED: u32 = wire::EXIT_REFUSED as u32;
pub const EXIT_ENDED: u32 = wire::EXIT_ENDED as u32;

/// Carries a program session between an SSH channel and `session`, the session protocol's
/// other end, until the session ends; then sends its exit status and closes the channel.
/// `command` (an `exec` request) is the whole input; otherwise the channel's data is.
pub async fn bridge<S>(
    channel: russh::Channel<Msg>,
    session: S,
    command: Option<Vec<u8>>,
    terminal: bool,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut from_session, mut to_session) = tokio::io::split(session);
    let (mut reader, writer) = channel.split();
    // Client to session. An `exec` command is sent whole, then the channel's data is not
    // read as input (the command is the one frame the gates judged).
    let inbound = tokio::spawn(async move {
        if let Some(command) = command {
            for chunk in command.chunks(wire::MAX_BODY) {
                wire::write(&mut to_session, &Message::Input(chunk.to_vec())).await?;
            }
            wire::write(&mut to_session, &Message::InputEnd).await?;
        }
        while let Some(msg) = reader.wait().await {
            let message = match msg {
                ChannelMsg::Data { data } if !data.is_empty() => Message::Input(data.to_vec()),
                ChannelMsg::Eof => Message::InputEnd,
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    ..
                } if terminal => Message::Resize {
                    rows: size(row_height, 24),
                    cols: size(col_width, 80),
                },
                ChannelMsg::Close => break,
                _ => continue,
            };
            wire::write(&mut to_session, &message).await?;
        }
        // The client closed the channel: the session sees its input end and stops.
        Ok::<_, wire::WireError>(())
    });
    let status = loop {
        match wire::read(&mut from_session).await {
            Ok(Message::Output(bytes)) => {
                if writer.data_bytes(bytes).await.is_err() {
                    break None;
                }
            }
            Ok(Message::Notice(text)) => {
                // In a terminal the notice stands on a line of its own.
                let text = if terminal {
                    format!("\r\n{text}\r\n")
                } else {
                    format!("{text}\n")
                };
                let _ = writer.extended_data_bytes(1, text.into_bytes()).await;
            }
            Ok(Message::Exit(code)) => break Some(u32::try_from(code).unwrap_or(EXIT_ENDED)),
            Ok(Message::Error(text)) => {
                let line = if terminal { "\r\n" } else { "\n" };
                let _ = writer
                    .extended_data_bytes(1, format!("{line}sluice: {text}{line}").into_bytes())
                    .await;
                break Some(u32::from(wire::error_status(&text)));
            }
            Ok(_) | Err(_) => break Some(EXIT_ENDED),
        }
    };
    inbound.abort();
    if let Some(status) = status {
        let _ = writer.exit_status(status).await;
        let _ = writer.eof().await;
    }
    let _ = writer.close().await;
}
