//! SSH servers as targets (`kind = "ssh"`): the gateway's own SSH client, signed in with the
//! connection's credentials, to the server whose host key the connection pins.
//!
//! An upstream SSH session is a [`Process`] like a program's: its input is the channel's
//! data, its output the channel's data and standard error merged, its exit status the
//! server's `exit-status`. So it crosses the frame path of `session/exec.rs` unchanged, and
//! `ssh`, `sluice connect` and `sluice exec` all reach it. A one-shot session's script is
//! sent as the `exec` request's command, once the gates passed it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use russh::ChannelMsg;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::{SshConnection, resolve};
use crate::exec::{Process, Remote};
use crate::wire::Message;

/// What the gateway signs in upstream with, read and checked at start.
pub struct Credentials {
    host_key: PublicKey,
    private_key: Option<Arc<PrivateKey>>,
    password: Option<String>,
}

impl Credentials {
    pub fn load(conn: &SshConnection) -> Result<Credentials, String> {
        let host_key = PublicKey::from_openssh(conn.host_key.trim()).map_err(|e| {
            format!(
                "host_key: not a public key as known_hosts writes it (`ssh-ed25519 AAAA…`): {e}"
            )
        })?;
        let private_key = match conn.private_key.as_deref() {
            None => None,
            Some(source) => {
                let text = match source.strip_prefix("env:") {
                    Some(var) => std::env::var(var)
                        .map_err(|_| format!("private_key: the environment has no {var}"))?,
                    None => std::fs::read_to_string(source)
                        .map_err(|e| format!("private_key: cannot read {source}: {e}"))?,
                };
                let key = PrivateKey::from_openssh(text.trim())
                    .map_err(|e| format!("private_key: not an OpenSSH private key: {e}"))?;
                if key.is_encrypted() {
                    return Err("private_key: encrypted with a passphrase; the gateway needs it in the clear (keep it in env: or a 0600 file)".into());
                }
                if key.algorithm().is_rsa() {
                    return Err(
                        "private_key: RSA keys are not supported; use Ed25519 or ECDSA".into(),
                    );
                }
                Some(Arc::new(key))
            }
        };
        if let Some(var) = conn
            .password
            .as_deref()
            .and_then(|p| p.strip_prefix("env:"))
            && std::env::var_os(var).is_none()
        {
            return Err(format!("password: the environment has no {var}"));
        }
        let password = conn.password.as_deref().map(resolve);
        if private_key.is_none() && password.is_none() {
            return Err(
                "an SSH connection signs in with `private_key` or `password` (or both)".into(),
            );
        }
        Ok(Credentials {
            host_key,
            private_key,
            password,
        })
    }
}

/// Checks the server's host key against the pinned one.
struct Pinned {
    expected: PublicKey,
    /// The key a refused server presented, for the error.
    presented: Arc<std::sync::Mutex<Option<PublicKey>>>,
}

impl russh::client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // A host certificate is judged by its key: the pin names the key.
        let key = match presented {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            russh::keys::PublicKeyOrCertificate::Certificate(cert) => {
                PublicKey::from(cert.public_key().clone())
            }
        };
        if key.key_data() == self.expected.key_data() {
            return Ok(true);
        }
        *self.presented.lock().unwrap_or_else(|e| e.into_inner()) = Some(key);
        Ok(false)
    }
}

/// How long signing in upstream may take.
const SIGN_IN: Duration = Duration::from_secs(20);

/// What an upstream session runs.
pub enum Run<'a> {
    /// A shell in a terminal of (rows, cols).
    Shell { rows: u16, cols: u16 },
    /// One command, without a terminal.
    Exec(&'a [u8]),
    /// A subsystem (`sftp`): its output is the channel's data alone, as its standard error
    /// would corrupt the protocol.
    Subsystem(&'a str),
}

/// Reaches the connection's SSH server (directly or through its agents) and opens a session
/// there that runs `run`. Errors are phrased for the client; a refusal (a host key that is not
/// the pinned one) starts with `refused: `.
pub async fn open(
    agents: &Arc<crate::agent::Agents>,
    conn: &SshConnection,
    run: Run<'_>,
) -> Result<Process, String> {
    let stream = crate::agent::Reach::of(agents, conn.agent.as_ref())
        .dial(&conn.upstream)
        .await?;
    start(conn, stream, run).await
}

/// Opens a session on the SSH server behind `stream` that runs `run`. Errors are phrased for
/// the client; none carries a credential.
pub async fn start<S>(conn: &SshConnection, stream: S, run: Run<'_>) -> Result<Process, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let credentials = Credentials::load(conn)?;
    let upstream = &conn.upstream;
    let config = Arc::new(russh::client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    });
    let presented = Arc::new(std::sync::Mutex::new(None));
    let handler = Pinned {
        expected: credentials.host_key.clone(),
        presented: presented.clone(),
    };
    let handle = tokio::time::timeout(SIGN_IN, async {
        let mut handle = russh::client::connect_stream(config, stream, handler)
            .await
            .map_err(|e| {
                let presented = presented.lock().unwrap_or_else(|e| e.into_inner()).take();
                match presented {
                    Some(key) => host_key_mismatch(upstream, &credentials.host_key, &key),
                    None => format!("SSH handshake with {upstream} failed: {e}"),
                }
            })?;
        sign_in(&mut handle, conn, &credentials).await?;
        Ok::<_, String>(handle)
    })
    .await
    .map_err(|_| {
        format!(
            "signing in to {upstream} took longer than {} s",
            SIGN_IN.as_secs()
        )
    })??;
    let channel = handle
        .channel_open_session()
        .await
        .map_err(|e| format!("{upstream} refused a session channel: {e}"))?;
    let (mut reader, writer) = channel.split();
    let merge_stderr = !matches!(run, Run::Subsystem(_));
    match run {
        Run::Shell { rows, cols } => {
            writer
                .request_pty(true, "xterm-256color", cols.into(), rows.into(), 0, 0, &[])
                .await
                .map_err(|e| format!("{upstream}: terminal request failed: {e}"))?;
            replied(&mut reader, upstream, "a terminal").await?;
            writer
                .request_shell(true)
                .await
                .map_err(|e| format!("{upstream}: shell request failed: {e}"))?;
            replied(&mut reader, upstream, "a shell").await?;
        }
        Run::Exec(command) => {
            writer
                .exec(true, command.to_vec())
                .await
                .map_err(|e| format!("{upstream}: exec request failed: {e}"))?;
            replied(&mut reader, upstream, "the command").await?;
        }
        Run::Subsystem(name) => {
            writer
                .request_subsystem(true, name)
                .await
                .map_err(|e| format!("{upstream}: subsystem request failed: {e}"))?;
            replied(&mut reader, upstream, &format!("the `{name}` subsystem")).await?;
        }
    }
    let input = Box::new(writer.make_writer());
    let (output_end, output) = tokio::io::duplex(256 << 10);
    let echoes = Arc::new(AtomicBool::new(true));
    let (exit_tx, exit) = tokio::sync::oneshot::channel();
    let (control, mut controls) = tokio::sync::mpsc::channel(16);
    // Output and the exit status, in the channel's order; the connection lives as long.
    let reading = tokio::spawn(read_channel(
        reader,
        output_end,
        merge_stderr,
        echoes.clone(),
        exit_tx,
        handle,
    ));
    // Resizes and the end of input, in order with the input.
    let controlling = tokio::spawn(async move {
        while let Some(message) = controls.recv().await {
            let sent = match message {
                Message::Resize { rows, cols } => {
                    writer.window_change(cols.into(), rows.into(), 0, 0).await
                }
                Message::InputEnd => writer.eof().await,
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
    });
    Ok(Process::remote(
        input,
        Box::new(output),
        Remote {
            control,
            echoes,
            exit,
            tasks: vec![reading, controlling],
        },
    ))
}

async fn sign_in(
    handle: &mut russh::client::Handle<Pinned>,
    conn: &SshConnection,
    credentials: &Credentials,
) -> Result<(), String> {
    let upstream = &conn.upstream;
    let failed = |e: russh::Error| format!("signing in to {upstream} failed: {e}");
    if let Some(key) = &credentials.private_key {
        let key = PrivateKeyWithHashAlg::new(key.clone(), None);
        if handle
            .authenticate_publickey(&conn.user, key)
            .await
            .map_err(failed)?
            .success()
        {
            return Ok(());
        }
    }
    if let Some(password) = &credentials.password
        && handle
            .authenticate_password(&conn.user, password)
            .await
            .map_err(failed)?
            .success()
    {
        return Ok(());
    }
    Err(format!(
        "{upstream} refused the connection's credentials for `{}`",
        conn.user
    ))
}

/// Waits for the server's answer to a request made with `want_reply`.
async fn replied(
    reader: &mut russh::ChannelReadHalf,
    upstream: &str,
    what: &str,
) -> Result<(), String> {
    loop {
        match reader.wait().await {
            Some(ChannelMsg::Success) => return Ok(()),
            Some(ChannelMsg::Failure) => return Err(format!("{upstream} refused {what}")),
            Some(ChannelMsg::WindowAdjusted { .. }) => continue,
            Some(_) => continue,
            None => return Err(format!("{upstream} closed the channel")),
        }
    }
}

fn host_key_mismatch(upstream: &str, pinned: &PublicKey, presented: &PublicKey) -> String {
    let sha256 = |key: &PublicKey| key.fingerprint(russh::keys::HashAlg::Sha256);
    format!(
        "refused: {upstream} presented host key {}, not the one the connection pins ({}): the server's key changed, or something stands between; an admin must confirm the new key and set host_key",
        sha256(presented),
        sha256(pinned)
    )
}

/// Carries the channel's output (data, and standard error merged in when `merge_stderr`)
/// into `output` and the exit status into `exit`; keeps `handle` (the connection) alive as
/// long.
async fn read_channel(
    mut reader: russh::ChannelReadHalf,
    mut output: tokio::io::DuplexStream,
    merge_stderr: bool,
    echoes: Arc<AtomicBool>,
    exit: tokio::sync::oneshot::Sender<Result<i32, String>>,
    handle: russh::client::Handle<Pinned>,
) {
    let mut status = Err("the SSH server closed the session without an exit status".to_string());
    let mut prompt = Prompt::default();
    while let Some(message) = reader.wait().await {
        match message {
            ChannelMsg::ExtendedData { .. } if !merge_stderr => {}
            ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => {
                echoes.store(!prompt.seen(&data), Ordering::Release);
                if output.write_all(&data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::ExitStatus { exit_status } => {
                status = Ok(i32::try_from(exit_status).unwrap_or(i32::MAX));
            }
            ChannelMsg::ExitSignal { signal_name, .. } => {
                status = Ok(128 + signal_number(&signal_name));
            }
            ChannelMsg::Eof => {}
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    drop(output);
    let _ = exit.send(status);
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "")
        .await;
}

/// 128 + this number is how a shell reports a signal's end.
fn signal_number(signal: &russh::Sig) -> i32 {
    match signal {
        russh::Sig::HUP => 1,
        russh::Sig::INT => 2,
        russh::Sig::QUIT => 3,
        russh::Sig::ABRT => 6,
        russh::Sig::KILL => 9,
        russh::Sig::SEGV => 11,
        russh::Sig::PIPE => 13,
        russh::Sig::ALRM => 14,
        russh::Sig::TERM => 15,
        _ => 0,
    }
}

/// Password prompt detection. An SSH server never says whether its terminal echoes, so
/// what is typed after output whose last line ends like a password prompt (`Password:`,
/// `[sudo] password for ann:`, `Enter passphrase for key …:`) is taken as a secret, until
/// the next Enter brings new output. A prompt worded otherwise is not recognised: the limit
/// `docs/ssh.md` states.
#[derive(Default)]
struct Prompt {
    /// The output's last line so far (its tail).
    line: Vec<u8>,
}

impl Prompt {
    /// Takes output; whether it now ends at a password prompt.
    fn seen(&mut self, data: &[u8]) -> bool {
        match data.iter().rposition(|&b| b == b'\n' || b == b'\r') {
            Some(end) => self.line = data[end + 1..].to_vec(),
            None => self.line.extend_from_slice(data),
        }
        if self.line.len() > 256 {
            self.line.drain(..self.line.len() - 256);
        }
        let line = String::from_utf8_lossy(&self.line).to_lowercase();
        let line = line.trim_end();
        line.ends_with(':')
            && ["password", "passphrase", "passcode", "pin"]
                .iter()
                .any(|word| line.contains(word))
    }
}

#[cfg(test)]
mod tests {
    use super::Prompt;

    #[test]
    fn password_prompts_are_recognised_and_ordinary_output_is_not() {
        for prompt in [
            "Password: ",
            "[sudo] password for ann: ",
            "Enter passphrase for key '/home/ann/.ssh/id_ed25519': ",
            "ann@db's password:",
            "Verification PIN:",
        ] {
            assert!(Prompt::default().seen(prompt.as_bytes()), "{prompt}");
        }
        for output in [
            "$ ",
            "password changed\r\n$ ",
            "total: 4\n",
            "Password:\r\nok\n",
        ] {
            assert!(!Prompt::default().seen(output.as_bytes()), "{output}");
        }
        // A prompt split across chunks is seen once whole.
        let mut prompt = Prompt::default();
        assert!(!prompt.seen(b"output\r\n[sudo] pass"));
        assert!(prompt.seen(b"word for ann: "));
        assert!(!prompt.seen(b"\r\n$ "));
    }
}
