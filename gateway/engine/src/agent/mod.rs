//! Agents: a small process next to runtimes in a private network that dials out to the
//! gateway and carries sessions back (`sluice agent`). Policy, plugins, reviews, the record
//! and its key stay at the gateway; an agent dials upstreams and starts programs, and sees
//! what the chain forwards to them.
//!
//! `tunnel.rs` is what both sides say (and a tunnel stream as a byte stream); `registry.rs`
//! is the gateway's side (enrollment, live connections, opening streams); this file opens a
//! session's target through an agent. The agent's own loop is `sluice-cli`'s `agent.rs`.

mod book;
pub mod registry;
pub mod relay;
pub mod tunnel;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncReadExt;

pub use registry::Agents;

use crate::config::{AgentPool, ExecConnection};
use crate::exec::{Process, Remote};
use crate::wire::{self, Message};
use tunnel::{EnvValue, ExecJob};

/// Output of a remote program buffered between the tunnel and the session, at most.
const OUTPUT_BUFFER: usize = 256 << 10;

/// A byte stream to `target` (`host:port`), dialed by an agent of `pool`.
pub async fn dial(
    agents: &Agents,
    pool: &AgentPool,
    target: &str,
) -> Result<tunnel::Stream, String> {
    let request = http::Request::post("/dial")
        .header(tunnel::TARGET_HEADER, target)
        .body(())
        .map_err(|e| e.to_string())?;
    agents.open_stream(pool.names(), request).await
}

/// `program` of an exec connection started by an agent of its pool: in a terminal of
/// `terminal` (rows, cols), or with its script on standard input.
pub async fn start(
    agents: &Arc<Agents>,
    conn: &ExecConnection,
    pool: &AgentPool,
    script: bool,
    terminal: Option<(u16, u16)>,
) -> Result<Process, String> {
    let job = ExecJob {
        argv: if script {
            conn.script.clone()
        } else {
            conn.interactive.clone()
        },
        env: agent_env(&conn.env),
        cwd: conn.cwd.clone(),
        terminal,
        stdio: false,
    };
    run(agents, pool, &job).await
}

/// `job` started by an agent of `pool`.
pub async fn run(agents: &Arc<Agents>, pool: &AgentPool, job: &ExecJob) -> Result<Process, String> {
    let header = serde_json::to_string(job).map_err(|e| e.to_string())?;
    let request = http::Request::post("/exec")
        .header(tunnel::EXEC_HEADER, header)
        .body(())
        .map_err(|e| e.to_string())?;
    let stream = agents.open_stream(pool.names(), request).await?;
    Ok(remote(agents.clone(), stream))
}

/// The gateway's view of a program an agent runs over `stream`: input becomes `Input`
/// messages (then `InputEnd`), `Output` messages become output, `Echo` the terminal's echo
/// mode, `Exit` the status.
fn remote(agents: Arc<Agents>, stream: tunnel::Stream) -> Process {
    let agent = stream.agent();
    let (mut from_agent, mut to_agent) = tokio::io::split(stream);
    let (control, mut messages) = tokio::sync::mpsc::channel::<Message>(64);
    let (output, output_writer) = tokio::io::simplex(OUTPUT_BUFFER);
    let (mut input_reader, input) = tokio::io::simplex(OUTPUT_BUFFER);
    let echoes = Arc::new(AtomicBool::new(true));
    let (exit_tx, exit) = tokio::sync::oneshot::channel();

    // Everything towards the agent goes through one writer, in order: input as it comes,
    // resizes, and the input's end.
    let writer = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut input_open = true;
        loop {
            let message = tokio::select! {
                read = input_reader.read(&mut buf), if input_open => match read {
                    Ok(n) if n > 0 => Message::Input(buf[..n].to_vec()),
                    _ => {
                        input_open = false;
                        Message::InputEnd
                    }
                },
                message = messages.recv() => match message {
                    Some(m) => m,
                    None => break,
                },
            };
            if wire::write(&mut to_agent, &message).await.is_err() {
                break;
            }
        }
    });
    let echo = echoes.clone();
    let reader = tokio::spawn(async move {
        let mut output_writer = output_writer;
        let status = loop {
            match wire::read(&mut from_agent).await {
                Ok(Message::Output(bytes)) => {
                    use tokio::io::AsyncWriteExt;
                    if output_writer.write_all(&bytes).await.is_err() {
                        break Err("the session stopped reading".to_string());
                    }
                }
                Ok(Message::Echo(on)) => echo.store(on, Ordering::Release),
                Ok(Message::Exit(code)) => break Ok(code),
                Ok(Message::Error(why)) => break Err(why),
                Err(wire::WireError::Closed) => {
                    break Err("the agent's stream ended without an exit status".into());
                }
                Err(wire::WireError::Io(e)) => break Err(e.to_string()),
                // Not the protocol: the agent is broken or hostile. Its whole connection ends
                // (recorded), not just this session.
                Ok(other) => {
                    let why = format!("agent `{agent}` sent {}, which it may not", other.name());
                    agents.cut(&agent, &why);
                    break Err(why);
                }
                Err(wire::WireError::Malformed(e)) => {
                    let why = format!("agent `{agent}` sent a malformed message: {e}");
                    agents.cut(&agent, &why);
                    break Err(why);
                }
            }
        };
        // The output ends (EOF) before the status is told, as a local program's does. (A
        // simplex pipe's reader sees its end at shutdown, not when the writer is dropped.)
        {
            use tokio::io::AsyncWriteExt;
            let _ = output_writer.shutdown().await;
        }
        let _ = exit_tx.send(status);
    });
    Process::remote(
        Box::new(input),
        Box::new(output),
        Remote {
            control,
            echoes,
            exit,
            tasks: vec![writer, reader],
        },
    )
}

/// A program's environment for an agent: `agent-env:NAME` left for the agent to read, the
/// rest resolved here.
pub fn agent_env(
    env: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, EnvValue> {
    env.iter()
        .map(|(k, v)| {
            let value = match v.strip_prefix(crate::config::AGENT_ENV) {
                Some(name) => EnvValue::AgentEnv(name.to_string()),
                None => EnvValue::Value(crate::config::resolve(v)),
            };
            (k.clone(), value)
        })
        .collect()
}

/// A PostgreSQL session's upstream, signed in by an agent of `pool` with the password it
/// reads from its own environment (`password = "agent-env:NAME"`): the gateway never holds it.
pub async fn sign_in_pg(
    agents: &Agents,
    pool: &AgentPool,
    conn: &crate::config::PostgresConnection,
    password_env: &str,
) -> Result<crate::pg::upstream::Upstream, String> {
    let job = tunnel::PgJob {
        upstream: conn.upstream.clone(),
        database: conn.database.clone(),
        user: conn.user.clone(),
        password_env: password_env.to_string(),
        upstream_tls: conn.upstream_tls,
        upstream_ca: conn.upstream_ca.clone(),
    };
    let header = serde_json::to_string(&job).map_err(|e| e.to_string())?;
    let request = http::Request::post("/pg")
        .header(tunnel::PG_HEADER, header)
        .body(())
        .map_err(|e| e.to_string())?;
    let (stream, head) = agents.open_stream_with_head(pool.names(), request).await?;
    let signed_in: tunnel::SignedIn = head
        .get(tunnel::SIGNED_IN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok())
        .ok_or("the agent did not say what the server answered")?;
    let parameters = signed_in
        .parameters
        .iter()
        .map(|body| hex::decode(body).map(|body| crate::pg::message::Message::new(b'S', body)))
        .collect::<Result<_, _>>()
        .map_err(|_| "the agent sent a malformed parameter".to_string())?;
    Ok(crate::pg::upstream::Upstream {
        stream: Box::new(stream),
        parameters,
        pid: signed_in.pid,
        secret: signed_in.secret,
    })
}

/// How a connection reaches its upstream: from the gateway, or through one of its agents.
#[derive(Clone)]
pub enum Reach {
    Direct,
    Agents(Arc<Agents>, AgentPool),
}

impl Reach {
    pub fn of(agents: &Arc<Agents>, pool: Option<&AgentPool>) -> Reach {
        match pool {
            Some(pool) => Reach::Agents(agents.clone(), pool.clone()),
            None => Reach::Direct,
        }
    }

    /// A byte stream to `target` (`host:port`).
    pub async fn dial(&self, target: &str) -> Result<Box<dyn crate::pg::Io>, String> {
        match self {
            Reach::Direct => {
                let tcp = tokio::net::TcpStream::connect(target)
                    .await
                    .map_err(|e| format!("cannot reach {target}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                Ok(Box::new(tcp))
            }
            Reach::Agents(agents, pool) => Ok(Box::new(dial(agents, pool, target).await?)),
        }
    }
}
