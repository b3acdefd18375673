//! The SSH front door (`[gateway] ssh_listen`): `ssh -p 2222 CONNECTION@HOST`.
//!
//! The login name is the connection. A person signs in with a Sluice token as the password
//! (or the answer to a keyboard-interactive prompt), which stands for the same identity as on
//! every other door. Each session channel then opens a session on that connection, checked
//! for the connect role and just-in-time access as `sluice connect` is, and carried by
//! `ssh::bridge` into `session/exec.rs`.
//!
//! Refused unless a connection allows them (none does yet): port forwarding both ways, agent
//! forwarding, X11, and subsystems (`sftp`, and so `scp`), which would reach the gateway
//! host's files that a program connection never exposes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::net::TcpListener;
use tracing::Instrument;

use super::Gateway;
use crate::config::{Connection, SshConnection};
use crate::limits::Limits;
use crate::session::exec::Target;
use crate::session::{self, Mode};
use crate::ssh::{self, Start};
use sluice_core::frame::Identity;

/// What the SSH front door shows of itself and signs with.
pub(super) struct Keys {
    pub listen: SocketAddr,
    /// The host key's public half, `ssh-ed25519 AAAA…`.
    pub host_key: String,
    pub user_ca: crate::ssh::ca::UserCa,
}

/// The SSH server's settings.
pub(super) fn config(host_key: russh::keys::PrivateKey) -> russh::server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    methods.push(MethodKind::Password);
    methods.push(MethodKind::KeyboardInteractive);
    russh::server::Config {
        methods,
        keys: vec![host_key],
        // A refused token costs a second, whatever made it wrong (russh keeps the time
        // constant); OpenSSH's first probe (`none`) is answered at once.
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 3,
        // A signed-in connection's idle time is not bounded here (as on the other doors);
        // keepalives find clients that vanished.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        window_size: 2 << 20,
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-Sluice_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        ..Default::default()
    }
}

/// The least time an SSH client has to sign in.
const SSH_SIGN_IN: Duration = Duration::from_secs(60);

/// Accepts SSH connections until the gateway stops; each within the same caps as HTTPS.
pub(super) async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    limits: Arc<Limits>,
) {
    loop {
        let (mut tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "SSH accept failed; pausing before the next");
                tokio::time::sleep(super::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let accepted = match limits.accept(peer) {
            Ok(accepted) => accepted,
            Err(why) => {
                tracing::warn!(%peer, %why, "SSH connection refused");
                continue;
            }
        };
        let Some(signing_in) = limits.signing_in() else {
            tracing::warn!(%peer, "SSH connection refused: too many connections are signing in (max_signing_in)");
            continue;
        };
        // Keystrokes must not wait for Nagle's algorithm (russh sets this only on sockets it
        // accepts itself).
        let _ = tcp.set_nodelay(true);
        crate::limits::keepalive(&tcp);
        // A person may be reading the host key's fingerprint or pasting a token: at least
        // a minute, as OpenSSH's LoginGraceTime gives (longer when sign_in_timeout_ms is).
        let (config, sign_in) = (config.clone(), limits.sign_in.max(SSH_SIGN_IN));
        let gateway = gateway.clone();
        tokio::spawn(async move {
            // Behind a trusted proxy: the client its PROXY header names.
            let (peer, _admitted) = match accepted.enter(&mut tcp).await {
                Ok(entered) => entered,
                Err(refused) => {
                    let (peer, why) = refused.parts();
                    return tracing::warn!(%peer, %why, "SSH connection refused");
                }
            };
            let signed_in = Arc::new(AtomicBool::new(false));
            let client = Client {
                gateway,
                peer,
                signed_in: None,
                signing_in: Some(signing_in),
                done: signed_in.clone(),
            };
            let mut running = match russh::server::run_stream(config, tcp, client).await {
                Ok(running) => running,
                Err(e) => return tracing::info!(%peer, error = %e, "SSH handshake failed"),
            };
            // The handshake and sign-in must finish within the sign-in time (dropping the
            // session ends the connection); a signed-in session then runs on.
            let ended = tokio::select! {
                ended = &mut running => ended,
                () = tokio::time::sleep(sign_in) => {
                    if !signed_in.load(Ordering::Acquire) {
                        return tracing::info!(%peer, "SSH sign-in timed out");
                    }
                    running.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "SSH connection ended with an error");
            }
        });
    }
}

/// One SSH connection.
struct Client {
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    /// Who signed in, and the connection they named as the login.
    signed_in: Option<(Identity, String)>,
    /// Held until signed in: counts towards `max_signing_in`.
    signing_in: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Set once signed in, for the sign-in timer.
    done: Arc<AtomicBool>,
}

impl Client {
    /// A token, from a password or a keyboard-interactive answer.
    async fn token(&mut self, connection: &str, token: &str) -> Auth {
        match self.gateway.auth.authenticate(token.trim()).await {
            Ok(identity) => self.signed_in(identity, connection, "token"),
            Err(why) => {
                tracing::info!(peer = %self.peer, %connection, %why, "SSH sign-in refused");
                Auth::reject()
            }
        }
    }

    fn signed_in(&mut self, identity: Identity, connection: &str, by: &str) -> Auth {
        tracing::info!(peer = %self.peer, user = %identity.subject, %connection, by, "SSH sign-in");
        self.signed_in = Some((identity, connection.to_string()));
        self.signing_in = None;
        self.done.store(true, Ordering::Release);
        Auth::Accept
    }

    /// Records that the connection signed in to does not allow `what`.
    async fn refused(&self, what: &str) {
        let Some((identity, connection)) = &self.signed_in else {
            return;
        };
        let message = format!("`{connection}` does not allow {what} over SSH");
        self.gateway
            .roles()
            .record_not_allowed(identity, connection, what, &message)
            .await;
    }
}

impl russh::server::Handler for Client {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: None,
            partial_success: false,
        })
    }

    /// Plain keys are not registered anywhere: only certificates (below) sign in by key.
    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::reject())
    }

    async fn auth_openssh_certificate(
        &mut self,
        connection: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        let Some(keys) = &self.gateway.ssh else {
            return Ok(Auth::reject());
        };
        match keys.user_ca.verify(certificate) {
            Ok(identity) => Ok(self.signed_in(identity, connection, "certificate")),
            Err(why) => {
                tracing::info!(peer = %self.peer, %connection, %why, "SSH certificate refused");
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(self.token(user, password).await)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let answer = response.and_then(|mut r| r.next());
        match answer {
            None => Ok(Auth::Partial {
                name: "Sluice".into(),
                instructions: "".into(),
                prompts: vec![("Sluice token: ".into(), false)].into(),
            }),
            Some(answer) => {
                let token = String::from_utf8_lossy(&answer).into_owned();
                Ok(self.token(user, &token).await)
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((identity, connection)) = self.signed_in.clone() else {
            return Ok(());
        };
        reply.accept().await;
        let (gateway, peer) = (self.gateway.clone(), self.peer);
        let span = tracing::info_span!("ssh", %peer, user = %identity.subject, %connection);
        tokio::spawn(
            async move {
                gateway
                    .ssh_channel(channel, identity, &connection, peer)
                    .await
            }
            .instrument(span),
        );
        Ok(())
    }

    // The requests a session channel makes are answered here; the channel's own task sees
    // them too and acts on them (`ssh::requested`).
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _command: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Accepted so the channel's task can tell the client why it is refused.
        session.channel_success(channel)
    }

    async fn window_change_request(
        &mut self,
        _channel: ChannelId,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused("X11 forwarding").await;
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused("agent forwarding").await;
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused("remote port forwarding").await;
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        _path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused("socket forwarding").await;
        Ok(false)
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused(&format!("port forwarding to {host}:{port}"))
            .await;
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        path: &str,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused(&format!("forwarding to {path}")).await;
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }
}

/// `scp -t PATH` or `scp -f PATH`: the remote end of `scp -O`, which would carry files inside
/// a command's input and output, where no transfer can be followed or gated.
fn legacy_scp(command: &[u8]) -> bool {
    let text = String::from_utf8_lossy(command);
    let mut words = text.split_whitespace();
    // OpenSSH's scp sends its options as words of their own (`scp -v -d -t -- PATH`).
    words.next() == Some("scp") && words.any(|w| w == "-t" || w == "-f")
}

impl Gateway {
    /// A session channel: waits for what it asks to run, checks that `identity` may, and
    /// runs it as a session on `name`.
    async fn ssh_channel(
        self: Arc<Self>,
        mut channel: Channel<Msg>,
        identity: Identity,
        name: &str,
        peer: SocketAddr,
    ) {
        let Some(start) = ssh::requested(&mut channel).await else {
            return;
        };
        let connection = match self.connectable(&identity, name).await {
            Ok(connection) => connection,
            Err((status, why)) => {
                let hint = if status == StatusCode::NOT_FOUND {
                    " (the login name is the connection: ssh CONNECTION@HOST)"
                } else {
                    ""
                };
                return ssh::refuse(&channel, &format!("{why}{hint}"), ssh::EXIT_REFUSED).await;
            }
        };
        let target = match connection {
            Connection::Exec(exec) => Target::Program(exec),
            Connection::Ssh(ssh) => Target::Ssh(ssh),
            Connection::Mcp(_) => {
                return ssh::refuse(
                    &channel,
                    &format!("`{name}` is an MCP server: MCP clients connect to https://GATEWAY/mcp/{name}"),
                    ssh::EXIT_REFUSED,
                )
                .await;
            }
            Connection::Postgres(_) | Connection::Tcp(_) => {
                return ssh::refuse(
                    &channel,
                    &format!("`{name}` forwards a port, not a shell: use `sluice connect {name} --port PORT`"),
                    ssh::EXIT_REFUSED,
                )
                .await;
            }
        };
        let (mode, command, terminal) = match start {
            Start::Shell {
                terminal: Some((rows, cols)),
            } => (Mode::Connect { rows, cols }, None, true),
            // No terminal: the script comes on standard input (`ssh HOST < script`).
            Start::Shell { terminal: None } => (Mode::Exec, None, false),
            Start::Exec(command) if legacy_scp(&command) => {
                return ssh::refuse(
                    &channel,
                    "the legacy scp protocol (`scp -O`) is not carried: without -O, scp uses SFTP, which is",
                    ssh::EXIT_REFUSED,
                )
                .await;
            }
            Start::Exec(command) => (Mode::Exec, Some(command), false),
            Start::Subsystem(subsystem) => {
                let why = match target {
                    Target::Ssh(ssh) if subsystem == "sftp" => {
                        return self.sftp(channel, identity, name, ssh, peer).await;
                    }
                    Target::Program(_) => format!(
                        "`{name}` runs a program: the `{subsystem}` subsystem (sftp, scp) is not allowed on it, as it would reach the gateway's own files"
                    ),
                    Target::Ssh(_) => {
                        format!("`{name}`: only the `sftp` subsystem is carried, not `{subsystem}`")
                    }
                };
                let action = format!("the `{subsystem}` subsystem");
                self.roles()
                    .record_not_allowed(&identity, name, &action, &why)
                    .await;
                return ssh::refuse(&channel, &why, ssh::EXIT_REFUSED).await;
            }
        };
        let Some(opening) = self.ssh_opening(&channel, identity, name, peer).await else {
            return;
        };
        let request = session::exec::Request {
            opening,
            connection: target,
            mode,
        };
        let (ours, theirs) = tokio::io::duplex(crate::wire::MAX_BODY + 64);
        let ctx = self.session_ctx.clone();
        let span = tracing::info_span!("session", id = %request.opening.id);
        tokio::spawn(session::run(ctx, request, theirs).instrument(span));
        ssh::bridge(channel, ours, command, terminal).await;
    }

    /// A session on `name` opened through the SSH door, once `identity`'s access to it is
    /// checked; `None` when refused (the client was told why).
    async fn ssh_opening(
        &self,
        channel: &Channel<Msg>,
        identity: Identity,
        name: &str,
        peer: SocketAddr,
    ) -> Option<session::Opening> {
        let mut opening = self.opening(name, identity, peer.to_string());
        opening.meta = serde_json::json!({"front": "ssh"});
        match self.access(&opening.identity, name, None).await {
            Ok(until) => opening.access_until = until,
            Err(why) => {
                ssh::refuse(channel, &why, ssh::EXIT_REFUSED).await;
                return None;
            }
        }
        Some(opening)
    }

    /// A `subsystem sftp` channel (`sftp`, `scp`) to an SSH server: a file-transfer session.
    async fn sftp(
        &self,
        channel: Channel<Msg>,
        identity: Identity,
        name: &str,
        connection: SshConnection,
        peer: SocketAddr,
    ) {
        let Some(opening) = self.ssh_opening(&channel, identity, name, peer).await else {
            return;
        };
        let id = opening.id.clone();
        let request = session::sftp::Request {
            opening,
            connection,
        };
        let (mut reader, writer) = channel.split();
        let ended = session::sftp::run(
            self.session_ctx.clone(),
            request,
            reader.make_reader(),
            writer.make_writer(),
            writer.make_writer_ext(Some(1)),
        )
        .instrument(tracing::info_span!("session", id = %id))
        .await;
        let status = match ended {
            Ok(code) => u32::try_from(code).unwrap_or(ssh::EXIT_ENDED),
            Err(why) => {
                let _ = writer
                    .extended_data_bytes(1, format!("sluice: {why}\n").into_bytes())
                    .await;
                u32::from(crate::wire::error_status(&why))
            }
        };
        let _ = writer.exit_status(status).await;
        let _ = writer.eof().await;
        let _ = writer.close().await;
    }

    /// `POST /api/ssh/certificate` with a public key (OpenSSH's one-line form) as the body: a
    /// user certificate for the caller, from the gateway's SSH CA. Recorded.
    pub(super) async fn ssh_certificate(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        identity: &Identity,
    ) -> super::routes::Reply {
        use super::routes::{error, reply};
        use http_body_util::BodyExt;
        let Some(keys) = &self.ssh else {
            return error(
                StatusCode::NOT_FOUND,
                "the SSH front door is off ([gateway] ssh_listen)",
            );
        };
        let body = match http_body_util::Limited::new(req.into_body(), 16 << 10)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("the body: {e}")),
        };
        let ttl = self.config.gateway.ssh_cert_ttl_seconds;
        let text = String::from_utf8_lossy(&body);
        match keys.user_ca.sign(identity, &text, ttl) {
            Ok(certificate) => {
                let meta = serde_json::json!({"subject": identity.subject, "groups": identity.groups, "ttl_seconds": ttl, "public_key": text.trim()});
                if let Err(e) = self
                    .session_ctx
                    .recorder
                    .append(sluice_record::NewEvent::gateway("ssh-certificate", &meta))
                    .await
                {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("cannot record the certificate: {e}"),
                    );
                }
                reply(
                    StatusCode::OK,
                    serde_json::json!({"certificate": certificate, "ttl_seconds": ttl}).to_string(),
                )
            }
            Err(why) => error(StatusCode::BAD_REQUEST, &why),
        }
    }

    /// `GET /api/ssh`: where the SSH front door listens, its host key, the user CA, and the
    /// connections the caller may reach through it (for `sluice ssh-config`).
    pub(super) fn ssh_door(&self, identity: &Identity) -> super::routes::Reply {
        use super::routes::{error, reply};
        let Some(keys) = &self.ssh else {
            return error(
                StatusCode::NOT_FOUND,
                "the SSH front door is off ([gateway] ssh_listen)",
            );
        };
        let reachable: Vec<String> = self
            .connections
            .all()
            .into_iter()
            .filter(|(_, c)| matches!(c, Connection::Exec(_) | Connection::Ssh(_)))
            .filter(|(name, _)| {
                self.roles()
                    .has(identity, crate::roles::Role::Connect, name)
            })
            .map(|(name, _)| name)
            .collect();
        let door = serde_json::json!({
            "listen": keys.listen,
            "host_key": keys.host_key,
            "user_ca": keys.user_ca.public_key(),
            "connections": reachable,
        });
        reply(StatusCode::OK, door.to_string())
    }
}
