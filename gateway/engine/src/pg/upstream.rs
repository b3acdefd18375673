//! The gateway as a PostgreSQL client: connects to the real server and authenticates with
//! the connection's credentials (trust, cleartext, MD5 or SCRAM-SHA-256), which never leave
//! the gateway.

use postgres_protocol::authentication::{md5_hash, sasl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Io;
use super::message::{self, Message};
use crate::agent::Reach;
use crate::config::{PostgresConnection, UpstreamTls};

/// An authenticated upstream connection, ready for queries.
pub struct Upstream {
    pub stream: Box<dyn Io>,
    /// The server's `ParameterStatus` messages, relayed to the client.
    pub parameters: Vec<Message>,
    /// The server's cancel key, kept by the gateway; the client gets a key of its own.
    pub pid: i32,
    pub secret: i32,
}

/// Errors are phrased for the client and the log; none carries the password.
pub async fn connect(conn: &PostgresConnection, reach: &Reach) -> Result<Upstream, String> {
    let agent_env = conn
        .password
        .as_deref()
        .and_then(|p| p.strip_prefix(crate::config::AGENT_ENV));
    if let (Some(name), Reach::Agents(agents, pool)) = (agent_env, reach) {
        return crate::agent::sign_in_pg(agents, pool, conn, name).await;
    }
    let tcp = reach
        .dial(&conn.upstream)
        .await
        .map_err(|e| format!("cannot reach the database: {e}"))?;
    let mut stream = secure(conn, tcp).await?;
    let startup = message::startup(&[
        ("user", &conn.user),
        ("database", &conn.database),
        ("application_name", "sluice"),
    ]);
    stream
        .write_all(&startup)
        .await
        .map_err(|e| format!("database connection: {e}"))?;
    let password = conn.resolved_password();
    let need_password = || {
        password.as_deref().ok_or_else(|| {
            "the database asks for a password and the connection has none configured".to_string()
        })
    };
    let mut scram: Option<sasl::ScramSha256> = None;
    let mut parameters = Vec::new();
    let (mut pid, mut secret) = (0, 0);
    loop {
        let m = message::read(&mut stream)
            .await
            .map_err(|e| format!("database connection: {e}"))?;
        let mut body = m.reader();
        match m.tag {
            b'R' => {
                let code = body.i32().map_err(|e| e.to_string())?;
                let reply = match code {
                    0 => None, // AuthenticationOk
                    3 => Some(password_message(need_password()?.as_bytes())),
                    5 => {
                        let salt = body.bytes(4).map_err(|e| e.to_string())?;
                        let hash = md5_hash(
                            conn.user.as_bytes(),
                            need_password()?.as_bytes(),
                            salt.try_into().unwrap_or_default(),
                        );
                        Some(password_message(hash.as_bytes()))
                    }
                    10 => {
                        let mechanisms = String::from_utf8_lossy(body.rest()).into_owned();
                        if !mechanisms.split('\0').any(|m| m == sasl::SCRAM_SHA_256) {
                            return Err(format!(
                                "the database offers no SASL mechanism the gateway supports ({})",
                                mechanisms.trim_matches('\0').replace('\0', ", ")
                            ));
                        }
                        let client = sasl::ScramSha256::new(
                            need_password()?.as_bytes(),
                            sasl::ChannelBinding::unsupported(),
                        );
                        let mut body = Vec::new();
                        message::put_cstr(&mut body, sasl::SCRAM_SHA_256);
                        message::put_value(&mut body, Some(client.message()));
                        scram = Some(client);
                        Some(Message::new(b'p', body))
                    }
                    11 => {
                        let client = scram.as_mut().ok_or("SASL continue before SASL start")?;
                        client.update(body.rest()).map_err(|e| {
                            format!("SCRAM authentication with the database failed: {e}")
                        })?;
                        Some(Message::new(b'p', client.message().to_vec()))
                    }
                    12 => {
                        let mut client = scram.take().ok_or("SASL final before SASL start")?;
                        client
                            .finish(body.rest())
                            .map_err(|e| format!("the database's SCRAM signature is wrong: {e}"))?;
                        None
                    }
                    other => {
                        return Err(format!(
                            "the database asks for an authentication method the gateway does not \
                             support (code {other})"
                        ));
                    }
                };
                if let Some(reply) = reply {
                    message::write(&mut stream, &[reply])
                        .await
                        .map_err(|e| format!("database connection: {e}"))?;
                }
            }
            b'S' => parameters.push(m),
            b'K' => {
                pid = body.i32().map_err(|e| e.to_string())?;
                secret = body.i32().map_err(|e| e.to_string())?;
            }
            b'Z' => {
                return Ok(Upstream {
                    stream,
                    parameters,
                    pid,
                    secret,
                });
            }
            b'E' => {
                return Err(format!(
                    "the database refused the gateway: {}",
                    error_text(&m)
                ));
            }
            b'N' => {}
            other => {
                return Err(format!(
                    "unexpected '{}' message from the database during startup",
                    other.escape_ascii()
                ));
            }
        }
    }
}

/// TLS toward the server, as the connection asks.
async fn secure(conn: &PostgresConnection, mut tcp: Box<dyn Io>) -> Result<Box<dyn Io>, String> {
    let config = match conn.upstream_tls {
        UpstreamTls::Off => return Ok(tcp),
        UpstreamTls::Require => {
            crate::tls::unverified_client_config().map_err(|e| e.to_string())?
        }
        UpstreamTls::Verify => {
            let ca = conn
                .upstream_ca
                .as_deref()
                .ok_or("upstream_tls = \"verify\" needs upstream_ca")?;
            let pem = std::fs::read_to_string(ca)
                .map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            crate::tls::client_config(&pem).map_err(|e| e.to_string())?
        }
    };
    tcp.write_all(&message::ssl_request())
        .await
        .map_err(|e| format!("database connection: {e}"))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| format!("database connection: {e}"))?;
    if answer[0] != b'S' {
        return Err(
            "the database does not accept TLS, but the connection's upstream_tls asks for it"
                .into(),
        );
    }
    let host = conn
        .upstream
        .rsplit_once(':')
        .map_or(conn.upstream.as_str(), |(h, _)| h);
    let name = rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
        .map_err(|e| format!("upstream host {host}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with the database failed: {e}"))?;
    Ok(Box::new(tls))
}

fn password_message(password: &[u8]) -> Message {
    let mut body = password.to_vec();
    body.push(0);
    Message::new(b'p', body)
}

/// The severity, code and message of an `ErrorResponse` or `NoticeResponse`.
pub fn error_text(m: &Message) -> String {
    let mut fields = m.body.split(|&b| b == 0);
    let mut out = Vec::new();
    for field in fields.by_ref() {
        let Some((&kind, value)) = field.split_first() else {
            break;
        };
        if matches!(kind, b'S' | b'C' | b'M') {
            out.push(String::from_utf8_lossy(value).into_owned());
        }
    }
    out.join(" ")
}

/// Asks the server to cancel what the backend `pid` runs (a new connection, as the protocol
/// wants).
pub async fn cancel(conn: &PostgresConnection, reach: &Reach, pid: i32, secret: i32) {
    if let Ok(mut stream) = reach.dial(&conn.upstream).await {
        let _ = stream
            .write_all(&message::cancel_request(pid, secret))
            .await;
        let _ = stream.shutdown().await;
    }
}

/// `schema.table` of each table OID, asked on a connection of its own (the session's is busy
/// with the client's traffic). Unknown OIDs are left out.
pub async fn table_names(
    conn: &PostgresConnection,
    reach: &Reach,
    oids: &[u32],
) -> Result<Vec<(u32, String)>, String> {
    let mut upstream = connect(conn, reach).await?;
    let list: Vec<String> = oids.iter().map(u32::to_string).collect();
    let sql = format!(
        "SELECT c.oid, n.nspname || '.' || c.relname FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid IN ({})",
        list.join(",")
    );
    message::write(&mut upstream.stream, &[message::query(&sql)])
        .await
        .map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    loop {
        let m = message::read(&mut upstream.stream)
            .await
            .map_err(|e| e.to_string())?;
        match m.tag {
            b'D' => {
                let mut body = m.reader();
                let _ = body.count();
                let oid = body
                    .value()
                    .ok()
                    .flatten()
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
                let name = body
                    .value()
                    .ok()
                    .flatten()
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                if let (Some(oid), Some(name)) = (oid, name) {
                    names.push((oid, name));
                }
            }
            b'E' => return Err(error_text(&m)),
            b'Z' => break,
            _ => {}
        }
    }
    let _ = message::write(&mut upstream.stream, &[Message::new(b'X', vec![])]).await;
    Ok(names)
}
