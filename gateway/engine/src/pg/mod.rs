//! PostgreSQL connections (`kind = "postgres"`): a listener per connection that speaks the
//! PostgreSQL protocol to any client (psql, drivers, BI tools), authenticates the person by
//! their Sluice token given as the password, connects upstream with credentials the client
//! never sees, and runs the session's frame path (`session.rs`).
//!
//! Client side: `SSLRequest` is answered with TLS (the gateway's certificate) unless
//! `client_tls = "off"`; `GSSENCRequest` is refused so the client goes on without it; the
//! token travels as a cleartext password, so it is asked for only inside TLS or from
//! loopback. `CancelRequest` carries a key the gateway made and is forwarded to the upstream
//! backend the key stands for.

pub mod message;
pub mod query;
mod session;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::auth::Authenticator;
use crate::config::{ClientTls, PostgresConnection};
use crate::roles::Role;
use crate::session::{Context, Core, Opening};
use message::Startup;

/// What a PostgreSQL connection's listener needs.
pub struct Front {
    pub name: String,
    pub conn: PostgresConnection,
    pub auth: Arc<Authenticator>,
    pub ctx: Arc<Context>,
    pub tls: tokio_rustls::TlsAcceptor,
    /// What the front doors admit before authentication (shared by every listener).
    pub limits: Arc<crate::limits::Limits>,
    /// Cancel keys given to clients -> the upstream backend's key.
    cancels: Mutex<HashMap<(i32, i32), (i32, i32)>>,
    tables: session::Tables,
}

/// A client stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What a client may send before it has authenticated, in one message: a startup packet is
/// far smaller; a password (a Sluice or OIDC token) runs to a few KiB.
const MAX_BEFORE_AUTH: usize = 64 << 10;

impl Front {
    pub fn new(
        name: String,
        conn: PostgresConnection,
        auth: Arc<Authenticator>,
        ctx: Arc<Context>,
        tls: tokio_rustls::TlsAcceptor,
        limits: Arc<crate::limits::Limits>,
    ) -> Front {
        Front {
            name,
            conn,
            auth,
            ctx,
            tls,
            limits,
            cancels: Mutex::new(HashMap::new()),
            tables: Default::default(),
        }
    }

    /// How this connection reaches its server: from here, or through one of its agents.
    pub fn reach(&self) -> crate::agent::Reach {
        crate::agent::Reach::of(&self.ctx.agents, self.conn.agent.as_ref())
    }
}

/// Refuses a client the front-door limits do not admit, telling it which limit.
async fn refuse(front: &Front, tcp: &mut tokio::net::TcpStream, peer: SocketAddr, why: &str) {
    tracing::warn!(%peer, connection = %front.name, %why, "connection refused");
    let text = format!("sluice: too many connections: {why}");
    let _ = message::write(tcp, &[message::error(b'E', "FATAL", "53300", &text)]).await;
}

/// Accepts PostgreSQL clients on `listener` for as long as the gateway runs.
pub async fn serve(front: Arc<Front>, listener: TcpListener) {
    loop {
        let (mut tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors: retrying at once would spin without freeing any.
                tracing::warn!(connection = %front.name, error = %e, "accept failed; pausing before the next");
                tokio::time::sleep(crate::server::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let accepted = match front.limits.accept(peer) {
            Ok(accepted) => accepted,
            Err(why) => {
                refuse(&front, &mut tcp, peer, &why).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        crate::limits::keepalive(&tcp);
        let front = front.clone();
        tokio::spawn(async move {
            let (peer, _admitted) = match accepted.enter(&mut tcp).await {
                Ok(entered) => entered,
                Err(crate::limits::Refused::Limit(client, why)) => {
                    return refuse(&front, &mut tcp, client, &why).await;
                }
                Err(crate::limits::Refused::Header(peer, why)) => {
                    return tracing::warn!(%peer, connection = %front.name, %why, "connection refused");
                }
            };
            if let Err(e) = front.client(Box::new(tcp), peer, false, None, None).await {
                tracing::info!(%peer, connection = %front.name, error = %e, "postgres client refused");
            }
        });
    }
}

impl Front {
    /// One client: startup, authentication, the upstream connection, then the session.
    /// `tunneled`: the client came through `sluice connect --port`, inside the gateway's TLS
    /// (or is the gateway's own, in-process). `session`: the id to give the session, when the
    /// caller must know it (the MCP `query` tool watches it for holds).
    pub async fn client(
        &self,
        tcp: Box<dyn Io>,
        peer: SocketAddr,
        tunneled: bool,
        reason: Option<String>,
        session: Option<String>,
    ) -> Result<(), String> {
        // One deadline and one permit from the first byte to an authenticated client.
        let mut tcp = tcp;
        let Some(signing_in) = self.limits.signing_in() else {
            let text = "sluice: too many connections are signing in at once; try again";
            let _ = message::write(&mut tcp, &[message::error(b'E', "FATAL", "53300", text)]).await;
            return Err(text.into());
        };
        let deadline = tokio::time::Instant::now() + self.limits.sign_in;
        let started = tokio::time::timeout_at(deadline, self.startup(tcp, peer, tunneled)).await;
        let Some((mut client, params, tls)) = started.map_err(|_| "startup timed out")?? else {
            return Ok(()); // a cancel request, served
        };
        let refuse = |code: &'static str, text: String| (code, text);
        let authenticated = tokio::time::timeout_at(deadline, async {
            if !tls && !peer.ip().is_loopback() {
                return Err(refuse(
                    "28000",
                    "the password (your Sluice token) may only travel inside TLS: connect with \
                     sslmode=require"
                        .into(),
                ));
            }
            message::write(&mut client, &[message::auth(3, &[])])
                .await
                .map_err(|e| refuse("08006", e.to_string()))?;
            let m = message::read_bounded(&mut client, MAX_BEFORE_AUTH)
                .await
                .map_err(|e| refuse("08P01", e.to_string()))?;
            if m.tag != b'p' {
                return Err(refuse("08P01", "expected a password message".into()));
            }
            let token = m
                .reader()
                .cstr()
                .map_err(|e| refuse("08P01", e.to_string()))?;
            self.auth.authenticate(&token).await.map_err(|why| {
                refuse(
                    "28P01",
                    format!("password authentication failed: the password must be a valid Sluice token ({why})"),
                )
            })
        })
        .await
        .unwrap_or_else(|_| Err(("08006", "authentication timed out".into())));
        drop(signing_in);
        let identity = match authenticated {
            Ok(identity) => identity,
            Err((code, text)) => {
                turn_away(&mut client, code, &text).await;
                return Err(text);
            }
        };
        let role = self
            .ctx
            .roles
            .require(
                &identity,
                Role::Connect,
                &self.name,
                &format!("connect to `{}`", self.name),
            )
            .await;
        if let Err(text) = role {
            turn_away(&mut client, "28000", &format!("sluice: {text}")).await;
            return Err(text);
        }
        let access = self
            .ctx
            .reviews
            .access(&identity, &self.name, reason.as_deref())
            .await;
        let access_until = match access {
            Ok(until) => until,
            Err(text) => {
                turn_away(&mut client, "28000", &format!("sluice: {text}")).await;
                return Err(text);
            }
        };
        let upstream = match upstream::connect(&self.conn, &self.reach()).await {
            Ok(upstream) => upstream,
            Err(text) => {
                turn_away(&mut client, "08006", &format!("sluice: {text}")).await;
                return Err(text);
            }
        };
        let client_user = params
            .iter()
            .find(|(k, _)| k == "user")
            .map(|(_, v)| v.clone());
        let (plugins, policy) = self.ctx.chain(&self.name);
        let opening = Opening {
            id: session.unwrap_or_else(crate::server::new_session_id),
            connection_name: self.name.clone(),
            protocol: "postgres",
            plugins,
            policy,
            identity,
            client: peer.to_string(),
            meta: json!({"tls": tls, "client_user": client_user, "database": self.conn.database}),
            access_until,
        };
        let span = tracing::info_span!("session", id = %opening.id, connection = %self.name, user = %opening.identity.subject);
        self.session(client, upstream, opening)
            .instrument(span)
            .await;
        Ok(())
    }

    /// The session, once the client is known and the server connected.
    async fn session(
        &self,
        mut client: Box<dyn Io>,
        upstream: upstream::Upstream,
        opening: Opening,
    ) {
        let (core, killed) = match Core::open(self.ctx.clone(), opening).await {
            Ok(opened) => opened,
            Err(text) => {
                let text = format!("sluice: session refused: {text}");
                turn_away(&mut client, "42501", &text).await;
                tracing::info!(error = %text, "session refused");
                return;
            }
        };
        // The client gets a cancel key of the gateway's; the server's stays here.
        let key = (rand_i32(), rand_i32());
        self.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (upstream.pid, upstream.secret));
        let mut hello = vec![message::auth(0, &[])];
        hello.extend(upstream.parameters.iter().cloned());
        hello.push(message::backend_key_data(key.0, key.1));
        hello.push(message::ready_for_query(b'I'));
        let mut session = session::Session::new(
            core,
            client,
            upstream.stream,
            self.conn.clone(),
            self.tables.clone(),
        );
        let result = match session.greet(&hello).await {
            Err(e) => Err(e),
            Ok(()) => {
                let max = self
                    .conn
                    .max_session_seconds
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::MAX);
                tokio::select! {
                    result = tokio::time::timeout(max, session.run()) => result.unwrap_or_else(|_| Err(session::End::Ended(format!("the connection's maximum session duration of {} s was reached", max.as_secs())))),
                    Ok(reason) = killed => Err(session::End::Ended(reason)),
                }
            }
        };
        self.cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let reason = result.as_ref().err().map(ToString::to_string);
        if let Err(end) = &result {
            session.fatal(end).await;
        }
        let _ = session.core.end(json!({"reason": reason})).await;
        tracing::info!(reason = ?reason, "session closed");
    }

    /// Reads the startup packets: TLS and GSS negotiation, then the real startup (or a
    /// cancel request, served here: `None`).
    #[allow(clippy::type_complexity)]
    async fn startup(
        &self,
        mut tcp: Box<dyn Io>,
        peer: SocketAddr,
        tunneled: bool,
    ) -> Result<Option<(Box<dyn Io>, Vec<(String, String)>, bool)>, String> {
        let mut first = message::read_startup(&mut tcp)
            .await
            .map_err(|e| e.to_string())?;
        if first == Startup::GssEnc {
            tcp.write_all(b"N").await.map_err(|e| e.to_string())?;
            first = message::read_startup(&mut tcp)
                .await
                .map_err(|e| e.to_string())?;
        }
        let (mut client, tls, next): (Box<dyn Io>, bool, Startup) = match first {
            // Through the tunnel the bytes already travel inside the gateway's TLS.
            Startup::Ssl if tunneled => {
                tcp.write_all(b"N").await.map_err(|e| e.to_string())?;
                let next = message::read_startup(&mut tcp)
                    .await
                    .map_err(|e| e.to_string())?;
                (tcp, true, next)
            }
            other if tunneled => (tcp, true, other),
            Startup::Ssl if self.conn.client_tls != ClientTls::Off => {
                tcp.write_all(b"S").await.map_err(|e| e.to_string())?;
                let mut tls = self
                    .tls
                    .accept(tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                let next = message::read_startup(&mut tls)
                    .await
                    .map_err(|e| e.to_string())?;
                (Box::new(tls), true, next)
            }
            Startup::Ssl => {
                tcp.write_all(b"N").await.map_err(|e| e.to_string())?;
                let next = message::read_startup(&mut tcp)
                    .await
                    .map_err(|e| e.to_string())?;
                (Box::new(tcp), false, next)
            }
            other => (Box::new(tcp), false, other),
        };
        match next {
            Startup::Start { params } => {
                if self.conn.client_tls == ClientTls::Required && !tls {
                    let text = "this connection requires TLS: connect with sslmode=require";
                    turn_away(&mut client, "28000", text).await;
                    return Err(text.into());
                }
                Ok(Some((client, params, tls)))
            }
            Startup::Cancel { pid, secret } => {
                let target = self
                    .cancels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&(pid, secret))
                    .copied();
                match target {
                    Some((pid, secret)) => {
                        upstream::cancel(&self.conn, &self.reach(), pid, secret).await
                    }
                    None => tracing::info!(%peer, "cancel request with an unknown key"),
                }
                Ok(None)
            }
            other => {
                let text = format!("unexpected {other:?} after negotiation");
                turn_away(&mut client, "08P01", &text).await;
                Err(text)
            }
        }
    }
}

/// Tells a client that is not let in why, as PostgreSQL would (a FATAL error), and ends.
async fn turn_away(client: &mut Box<dyn Io>, code: &str, text: &str) {
    let _ = message::write(client, &[message::error(b'E', "FATAL", code, text)]).await;
}

fn rand_i32() -> i32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    i32::from_be_bytes(b)
}
