//! What the gateway and its agents say to each other, and a tunnel stream as a byte stream.
//!
//! The agent dials the gateway's listener (TLS, the gateway's CA pinned) and asks to upgrade
//! `GET /api/agents/connect` to [`PROTOCOL`], naming itself in [`AGENT_HEADER`]. The `101`
//! carries a fresh challenge ([`CHALLENGE_HEADER`], 32 random bytes in hex); the agent's first
//! 64 bytes on the upgraded stream are its Ed25519 signature of [`signed`] for it, and the
//! gateway answers one byte: [`ACCEPTED`], or [`REFUSED`] then a length (u16) and the reason.
//! From then on the stream is HTTP/2 with the roles reversed: the gateway is the client and
//! opens a stream per session, the agent only answers. That is what keeps an agent from
//! opening sessions, reaching another session's stream or making the gateway dial anything.
//!
//! A stream's request says the job: `POST /dial` with [`TARGET_HEADER`] (`host:port`): the
//! agent dials it and the stream carries its bytes; `POST /exec` with [`EXEC_HEADER`] (a JSON
//! [`ExecJob`]): the agent starts the program and the stream carries `wire` messages (input,
//! resize, input end one way; output, echo, exit the other); `POST /pg` with [`PG_HEADER`] (a
//! JSON [`PgJob`]): the agent signs in to the server with a password only it holds, answers
//! with [`SIGNED_IN_HEADER`] (a [`SignedIn`]) and the stream carries the session's bytes. A
//! `200` means done; any other status carries the reason in [`ERROR_HEADER`].

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The `Upgrade` protocol of an agent's connection.
pub const PROTOCOL: &str = "sluice-agent/1";
pub const CONNECT_PATH: &str = "/api/agents/connect";
pub const ENROLL_PATH: &str = "/api/agents/enroll";
pub const AGENT_HEADER: &str = "sluice-agent";
pub const VERSION_HEADER: &str = "sluice-agent-version";
pub const CHALLENGE_HEADER: &str = "sluice-challenge";
pub const TARGET_HEADER: &str = "sluice-target";
pub const EXEC_HEADER: &str = "sluice-exec";
pub const ERROR_HEADER: &str = "sluice-error";
pub const PG_HEADER: &str = "sluice-pg";
pub const SIGNED_IN_HEADER: &str = "sluice-signed-in";
pub const ACCEPTED: u8 = 0;
pub const REFUSED: u8 = 1;
/// The largest HTTP/2 frame either side accepts; anything larger ends the connection.
pub const MAX_FRAME: u32 = 64 << 10;
/// Each stream's (and the connection's) flow-control window: one session cannot take more
/// than this of the gateway's memory before its reader catches up.
pub const WINDOW: u32 = 1 << 20;
/// The largest request or response head; a job's description fits well within it.
pub const MAX_HEADERS: u32 = 64 << 10;

/// What the agent signs to answer a challenge: the purpose, its name and the challenge, so a
/// signature is good for this one connection of this one agent.
pub fn signed(name: &str, challenge: &[u8]) -> Vec<u8> {
    let mut message = b"sluice-agent-connect/1\0".to_vec();
    message.extend_from_slice(name.as_bytes());
    message.push(0);
    message.extend_from_slice(challenge);
    message
}

/// A program for an agent to start: an exec connection's settings, with the values the
/// agent must take from its own environment left as names.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecJob {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, EnvValue>,
    pub cwd: Option<std::path::PathBuf>,
    /// In a terminal of this size (`sluice connect`), or with the script on standard input.
    pub terminal: Option<(u16, u16)>,
    /// The program speaks a protocol on stdio (an MCP server): the output is its stdout
    /// alone, stderr discarded (`Process::stdio`). Left out when false, so agents that
    /// predate it still take plain jobs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdio: bool,
}

/// A PostgreSQL server for the agent to sign in to with a password only it holds
/// (`password = "agent-env:NAME"`); the stream then carries the signed-in session.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgJob {
    pub upstream: String,
    pub database: String,
    pub user: String,
    /// The name of the agent's environment variable holding the password.
    pub password_env: String,
    pub upstream_tls: crate::config::UpstreamTls,
    /// Read on the agent's host, for `upstream_tls = "verify"`.
    pub upstream_ca: Option<std::path::PathBuf>,
}

/// What the agent learnt signing in: the server's cancel key and parameters (each
/// `ParameterStatus` body in hex), for the gateway to relay as if it had signed in itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedIn {
    pub pid: i32,
    pub secret: i32,
    pub parameters: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EnvValue {
    /// Given by the gateway (a literal, or the gateway's own `env:NAME`).
    Value(String),
    /// `agent-env:NAME`: read by the agent from its own environment; never seen by the gateway.
    AgentEnv(String),
}

/// One tunnel stream as a byte stream: reads take what the peer sent (and give the window
/// back as they do), writes wait for window. On a shared record the stream may run through
/// the node that holds the agent's tunnel (`relay.rs`): then it is that node's connection.
pub struct Stream {
    inner: Inner,
    /// Says whose stream broke, in errors.
    agent: Arc<str>,
    /// The agent's count of live sessions, one less when this stream goes.
    count: Option<Arc<AtomicUsize>>,
}

enum Inner {
    /// An HTTP/2 stream on the agent's connection to this node.
    Tunnel {
        send: SendStream<Bytes>,
        /// Taken only when the stream is dropped (see `Drop`).
        recv: Option<RecvStream>,
        unread: Bytes,
        /// This side ended its half: dropping the stream then must not reset it, or the
        /// peer could lose the last data sent.
        finished: bool,
    },
    /// A connection to the node that holds the agent's tunnel, which carries the stream.
    Relayed(Pin<Box<dyn crate::pg::Io>>),
}

impl Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream, agent: Arc<str>) -> Stream {
        Stream {
            inner: Inner::Tunnel {
                send,
                recv: Some(recv),
                unread: Bytes::new(),
                finished: false,
            },
            agent,
            count: None,
        }
    }

    /// A stream another node relays.
    pub fn relayed(io: Box<dyn crate::pg::Io>, agent: Arc<str>) -> Stream {
        Stream {
            inner: Inner::Relayed(Box::into_pin(io)),
            agent,
            count: None,
        }
    }

    /// Counts this stream among `sessions` while it lives (already counted).
    pub fn counted(mut self, sessions: Arc<AtomicUsize>) -> Stream {
        self.count = Some(sessions);
        self
    }

    /// The agent this stream runs through.
    pub fn agent(&self) -> Arc<str> {
        self.agent.clone()
    }
}

fn broken(agent: &str, error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        format!("agent `{agent}`: {error}"),
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let (recv, unread) = match &mut this.inner {
            Inner::Relayed(io) => return io.as_mut().poll_read(cx, buf),
            Inner::Tunnel { recv, unread, .. } => (recv, unread),
        };
        while unread.is_empty() {
            let Some(recv) = recv.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    *unread = data;
                }
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => {
                    return Poll::Ready(Err(broken(&this.agent, connection_lost(&e))));
                }
            }
        }
        let n = unread.len().min(buf.remaining());
        let taken = unread.split_to(n);
        buf.put_slice(&taken);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let send = match &mut this.inner {
            Inner::Relayed(io) => return io.as_mut().poll_write(cx, buf),
            Inner::Tunnel { send, .. } => send,
        };
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        send.reserve_capacity(buf.len().min(WINDOW as usize));
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(n)) if n > 0 => {
                let n = n.min(buf.len());
                let data = Bytes::copy_from_slice(&buf[..n]);
                match send.send_data(data, false) {
                    Ok(()) => Poll::Ready(Ok(n)),
                    Err(e) => Poll::Ready(Err(broken(&this.agent, connection_lost(&e)))),
                }
            }
            Some(Ok(_)) | None => Poll::Ready(Err(broken(&this.agent, "the stream was closed"))),
            Some(Err(e)) => Poll::Ready(Err(broken(&this.agent, connection_lost(&e)))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Relayed(io) => io.as_mut().poll_flush(cx),
            Inner::Tunnel { .. } => Poll::Ready(Ok(())),
        }
    }

    /// Ends this side of the stream; the peer reads the end, and may still answer.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Relayed(io) => io.as_mut().poll_shutdown(cx),
            Inner::Tunnel { send, finished, .. } => {
                // An error means it ended already (or was reset): nothing more to say.
                let _ = send.send_data(Bytes::new(), true);
                *finished = true;
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// How long a stream this side ended waits, once dropped, for the peer to end its side.
const LINGER: Duration = Duration::from_secs(10);

impl Drop for Stream {
    /// A stream dropped before this side ended it (its session was cut short) is reset, so
    /// the other side lets go of the program or the socket at once. One this side ended
    /// lingers until the peer ends its side too (bounded): HTTP/2 resets a stream whose
    /// handles are all gone, and the peer could lose the last data sent before it read it.
    /// A relayed stream is a connection of its own: dropping it closes it, and the relaying
    /// node drops its side.
    fn drop(&mut self) {
        if let Inner::Tunnel {
            send,
            recv,
            finished,
            ..
        } = &mut self.inner
        {
            if !*finished {
                send.send_reset(h2::Reason::CANCEL);
            } else if let (Some(mut recv), Ok(runtime)) =
                (recv.take(), tokio::runtime::Handle::try_current())
            {
                runtime.spawn(async move {
                    let drained = async {
                        while let Some(Ok(data)) =
                            std::future::poll_fn(|cx| recv.poll_data(cx)).await
                        {
                            let _ = recv.flow_control().release_capacity(data.len());
                        }
                    };
                    let _ = tokio::time::timeout(LINGER, drained).await;
                });
            }
        }
        if let Some(count) = &self.count {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What a broken stream says: the connection lost, or the stream reset by the peer.
fn connection_lost(e: &h2::Error) -> String {
    if e.is_go_away() || e.is_io() {
        "the connection to the agent was lost".into()
    } else if e.is_reset() {
        "the agent ended the stream".into()
    } else {
        e.to_string()
    }
}

/// Pings every `interval`; returns why the connection should end once a ping goes
/// unanswered for two intervals. Both sides run it.
pub async fn keep_alive(
    pings: Option<h2::PingPong>,
    interval: Duration,
    last_seen_ms: Arc<AtomicU64>,
) -> String {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(interval * 2, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => last_seen_ms.store(sluice_core::now_ms(), Ordering::Relaxed),
            Ok(Err(e)) => return format!("the connection failed: {e}"),
            Err(_) => return format!("no answer to a keepalive in {:?}", interval * 2),
        }
    }
}
