//! Sessions over an upgraded request (`Upgrade: sluice-session/1`): just-in-time access,
//! then a session on the stream, or a tunnel that carries the connection's own protocol.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hyper::body::{Bytes, Incoming};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::routes::{Reply, error, reply};
use super::{Gateway, new_session_id};
use crate::config::Connection;
use crate::roles::Role;
use crate::session::exec::Target;
use crate::session::{self, Mode};
use sluice_core::frame::Identity;
use tracing::Instrument;

impl Gateway {
    /// Just-in-time access for a session about to open: `Err` says why it is refused.
    pub(super) async fn access(
        &self,
        identity: &Identity,
        connection: &str,
        reason: Option<&str>,
    ) -> Result<Option<u64>, String> {
        self.reviews().access(identity, connection, reason).await
    }

    /// Connection `name`, once `identity` may connect to it (a refusal is recorded).
    pub(super) async fn connectable(
        &self,
        identity: &Identity,
        name: &str,
    ) -> Result<Connection, (StatusCode, String)> {
        let Some(connection) = self.connections.get(name) else {
            let known: Vec<_> = self.connections.all().into_keys().collect();
            return Err((
                StatusCode::NOT_FOUND,
                format!("unknown connection `{name}` (known: {})", known.join(", ")),
            ));
        };
        let action = format!("connect to `{name}`");
        self.roles()
            .require(identity, Role::Connect, name, &action)
            .await
            .map_err(|why| (StatusCode::FORBIDDEN, why))?;
        Ok(connection)
    }

    /// A session about to open on connection `name`, with the chain in force now.
    pub(super) fn opening(
        &self,
        name: &str,
        identity: Identity,
        client: String,
    ) -> session::Opening {
        let (plugins, policy) = self.session_ctx.chain(name);
        session::Opening {
            id: new_session_id(),
            connection_name: name.to_string(),
            protocol: "exec",
            plugins,
            policy,
            identity,
            client,
            meta: serde_json::Value::Null,
            access_until: None,
        }
    }

    pub(super) async fn open_session(
        &self,
        req: Request<Incoming>,
        query: &BTreeMap<String, String>,
        identity: Identity,
        peer: SocketAddr,
    ) -> Reply {
        let upgrade = req
            .headers()
            .get(hyper::header::UPGRADE)
            .and_then(|v| v.to_str().ok());
        if upgrade != Some(crate::wire::PROTOCOL) {
            return error(
                StatusCode::BAD_REQUEST,
                "sessions need `Upgrade: sluice-session/1`",
            );
        }
        let Some(name) = query.get("connection") else {
            return error(StatusCode::BAD_REQUEST, "missing ?connection=NAME");
        };
        let connection = match self.connectable(&identity, name).await {
            Ok(connection) => connection,
            Err((status, why)) => return error(status, &why),
        };
        let mut opening = self.opening(name, identity, peer.to_string());
        let reason = query.get("reason").map(String::as_str);
        let mode = query.get("mode").map(String::as_str).unwrap_or_default();
        let exec = match (&connection, mode) {
            (Connection::Exec(exec), "exec" | "connect") => Target::Program(exec.clone()),
            (Connection::Ssh(ssh), "exec" | "connect") => Target::Ssh(ssh.clone()),
            (Connection::Postgres(_) | Connection::Tcp(_), "tunnel") => {
                return self
                    .tunnel(req, name, &connection, opening, peer, reason)
                    .await;
            }
            (Connection::Exec(_) | Connection::Ssh(_), _) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "`{name}` runs a program: use `sluice connect {name}` or `sluice exec {name}`"
                    ),
                );
            }
            (Connection::Mcp(_), _) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("`{name}` is an MCP server: MCP clients connect to /mcp/{name}"),
                );
            }
            (Connection::Postgres(_) | Connection::Tcp(_), _) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("`{name}` forwards a port: use `sluice connect {name} --port PORT`"),
                );
            }
        };
        opening.access_until = match self.access(&opening.identity, name, reason).await {
            Ok(until) => until,
            Err(why) => return error(StatusCode::FORBIDDEN, &why),
        };
        let mode = if mode == "exec" {
            Mode::Exec
        } else {
            let dim = |k: &str, d: u16| query.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
            Mode::Connect {
                rows: dim("rows", 24),
                cols: dim("cols", 80),
            }
        };
        let request = session::exec::Request {
            opening,
            connection: exec,
            mode,
        };
        let id = request.opening.id.clone();
        let ctx = self.session_ctx.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let o = &request.opening;
                    let span = tracing::info_span!("session", id = %o.id, connection = %o.connection_name, user = %o.identity.subject);
                    session::run(ctx, request, TokioIo::new(upgraded))
                        .instrument(span)
                        .await
                }
                Err(e) => tracing::info!(%peer, error = %e, "session upgrade failed"),
            }
        });
        upgraded(&id)
    }

    /// `sluice connect NAME --port`: after the upgrade the stream carries the connection's
    /// own protocol. A PostgreSQL client still signs in with its token at startup; a TCP
    /// session is the tunnel's user's.
    async fn tunnel(
        &self,
        req: Request<Incoming>,
        name: &str,
        connection: &Connection,
        mut opening: session::Opening,
        peer: SocketAddr,
        reason: Option<&str>,
    ) -> Reply {
        let id = opening.id.clone();
        match connection {
            Connection::Postgres(_) => {
                let Some(front) = self.fronts.get(name) else {
                    return error(StatusCode::NOT_FOUND, "no such PostgreSQL connection");
                };
                // The PostgreSQL client signs in (and is checked for access) at startup.
                let reason = reason.map(String::from);
                tokio::spawn(async move {
                    if let Ok(upgraded) = hyper::upgrade::on(req).await
                        && let Err(e) = front
                            .client(Box::new(TokioIo::new(upgraded)), peer, true, reason, None)
                            .await
                    {
                        tracing::info!(%peer, error = %e, "postgres client refused");
                    }
                });
            }
            Connection::Tcp(tcp) => {
                opening.access_until = match self.access(&opening.identity, name, reason).await {
                    Ok(until) => until,
                    Err(why) => return error(StatusCode::FORBIDDEN, &why),
                };
                let (ctx, tcp) = (self.session_ctx.clone(), tcp.clone());
                opening.protocol = "tcp";
                tokio::spawn(async move {
                    let Ok(upgraded) = hyper::upgrade::on(req).await else {
                        return;
                    };
                    let span = tracing::info_span!("session", id = %opening.id, connection = %opening.connection_name, user = %opening.identity.subject);
                    crate::tcp::session(ctx, opening, Box::new(TokioIo::new(upgraded)), tcp)
                        .instrument(span)
                        .await;
                });
            }
            Connection::Exec(_) | Connection::Ssh(_) | Connection::Mcp(_) => {
                return error(StatusCode::BAD_REQUEST, "not a tunnel");
            }
        }
        upgraded(&id)
    }
}

/// `101 Switching Protocols` to the session stream.
fn upgraded(id: &str) -> Reply {
    let mut response = reply(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static(crate::wire::PROTOCOL),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    if let Ok(value) = hyper::header::HeaderValue::from_str(id) {
        headers.insert("sluice-session", value);
    }
    response
}
