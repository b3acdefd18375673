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
use crate::config::Connection;
use crate::limits::Limits;
use crate::session::exec::Target;
use crate::session::{self, Mode};
use crate::ssh::{self, Start};
use sluice_core::frame::Identity;

/// The SSH server's settings.
pub(super) fn config(host_key: russh::keys::PrivateKey) -> russh::server::Config {
    let mut methods = MethodSet::empty();
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
        // Keystrokes must not wait for Nagle's algorithm.
        nodelay: true,
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

/// Accepts SSH connections until the gateway stops; each within the same caps as HTTPS.
pub(super) async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    limits: Arc<Limits>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "SSH accept failed; pausing before the next");
                tokio::time::sleep(super::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let admitted = match limits.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(why) => {
                tracing::warn!(%peer, %why, "SSH connection refused");
                continue;
            }
        };
        let Some(signing_in) = limits.signing_in() else {
            tracing::warn!(%peer, "SSH connection refused: too many connections are signing in (max_signing_in)");
            continue;
        };
        crate::limits::keepalive(&tcp);
        let signed_in = Arc::new(AtomicBool::new(false));
        let client = Client {
            gateway: gateway.clone(),
            peer,
            signed_in: None,
            signing_in: Some(signing_in),
            done: signed_in.clone(),
        };
        let (config, sign_in) = (config.clone(), limits.sign_in);
        tokio::spawn(async move {
            let _admitted = admitted;
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
            Ok(identity) => {
                tracing::info!(peer = %self.peer, user = %identity.subject, %connection, "SSH sign-in");
                self.signed_in = Some((identity, connection.to_string()));
                self.signing_in = None;
                self.done.store(true, Ordering::Release);
                Auth::Accept
            }
            Err(why) => {
                tracing::info!(peer = %self.peer, %connection, %why, "SSH sign-in refused");
                Auth::reject()
            }
        }
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
            Start::Exec(command) => (Mode::Exec, Some(command), false),
            Start::Subsystem(subsystem) => {
                let why = format!(
                    "`{name}` runs a program: the `{subsystem}` subsystem (sftp, scp) is not allowed on it, as it would reach the gateway's own files"
                );
                let action = format!("the `{subsystem}` subsystem");
                self.roles()
                    .record_not_allowed(&identity, name, &action, &why)
                    .await;
                return ssh::refuse(&channel, &why, ssh::EXIT_REFUSED).await;
            }
        };
        let mut opening = self.opening(name, identity, peer.to_string());
        opening.meta = serde_json::json!({"front": "ssh"});
        opening.access_until = match self.access(&opening.identity, name, None).await {
            Ok(until) => until,
            Err(why) => return ssh::refuse(&channel, &why, ssh::EXIT_REFUSED).await,
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
}
