//! `sluice agent`: runs next to runtimes in a private network, dials out to the gateway and
//! carries the sessions the gateway opens on it. It never listens on a port.
//!
//! First run: the enrollment token (`sluice agents add NAME` at the gateway) registers a key
//! made here (`agent.key` in the state folder, owner-only; only its public half leaves).
//! Every run after: it connects with that key, answers the gateway's challenge, and serves
//! streams until the connection ends, then dials again with exponential backoff and jitter.
//! A refusal that cannot change by trying again (revoked, unknown) ends it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Client;
use sluice_engine::agent::Reach;
use sluice_engine::agent::tunnel::{self, EnvValue, ExecJob, Stream};
use sluice_engine::config::PostgresConnection;
use sluice_engine::exec::{Process, Program};
use sluice_engine::pg::upstream;
use sluice_engine::wire::{self, Message};

/// What `sluice agent` is told.
pub struct Options {
    pub client: Client,
    pub state: PathBuf,
    pub token: Option<String>,
    pub keepalive: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// Who this agent is: its name at the gateway and its key.
struct Identity {
    name: String,
    key: SigningKey,
}

/// A refusal that trying again cannot change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

pub async fn run(options: Options) -> anyhow::Result<()> {
    let identity = identity(&options).await?;
    tracing::info!(agent = %identity.name, "agent starting");
    let mut backoff = options.retry_min;
    loop {
        let started = Instant::now();
        match connect(&options, &identity).await {
            Ok(why) => {
                tracing::warn!(agent = %identity.name, %why, "disconnected from the gateway")
            }
            Err(e) if e.downcast_ref::<Refused>().is_some() => {
                return Err(e.context("the gateway refuses this agent"));
            }
            Err(e) => {
                tracing::warn!(agent = %identity.name, error = %format!("{e:#}"), "cannot connect to the gateway")
            }
        }
        // A connection that lasted starts the backoff over.
        if started.elapsed() > options.keepalive * 4 {
            backoff = options.retry_min;
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(options.retry_max);
    }
}

/// Somewhere between half of `backoff` and all of it, so agents that lost the gateway at the
/// same moment do not all come back at the same moment.
fn jittered(backoff: Duration) -> Duration {
    let mut byte = [0u8; 2];
    let _ = getrandom::fill(&mut byte);
    let fraction = 0.5 + f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX) / 2.0;
    backoff.mul_f64(fraction)
}

/// The enrolled identity in the state folder, or a new key enrolled with the token.
async fn identity(options: &Options) -> anyhow::Result<Identity> {
    let key_file = options.state.join("agent.key");
    let name_file = options.state.join("agent.name");
    if let (Ok(seed), Ok(name)) = (
        std::fs::read_to_string(&key_file),
        std::fs::read_to_string(&name_file),
    ) {
        let seed: [u8; 32] = hex::decode(seed.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow!("{} is damaged", key_file.display()))?;
        return Ok(Identity {
            name: name.trim().to_string(),
            key: SigningKey::from_bytes(&seed),
        });
    }
    let token = options.token.as_deref().ok_or_else(|| {
        anyhow!(
            "this agent has not enrolled: pass --token (or SLUICE_AGENT_TOKEN) from `sluice agents add NAME`"
        )
    })?;
    std::fs::create_dir_all(&options.state)
        .with_context(|| format!("cannot make {}", options.state.display()))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow!("no randomness for a key: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let body = serde_json::json!({
        "token": token,
        "public_key": hex::encode(key.verifying_key().as_bytes()),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let answer = options
        .client
        .post_json(tunnel::ENROLL_PATH, body.to_string().into_bytes())
        .await
        .context("enrollment refused")?;
    let name = serde_json::from_slice::<serde_json::Value>(&answer)?["name"]
        .as_str()
        .ok_or_else(|| anyhow!("the gateway's answer names no agent"))?
        .to_string();
    // The key first: an agent.name without its key would be a broken identity.
    sluice_core::files::write_private(&key_file, hex::encode(seed).as_bytes())?;
    sluice_core::files::write_private(&name_file, name.as_bytes())?;
    tracing::info!(agent = %name, "enrolled");
    Ok(Identity { name, key })
}

/// One connection: answered challenge, then streams until it ends; `Ok` says why it ended.
async fn connect(options: &Options, identity: &Identity) -> anyhow::Result<String> {
    let version = env!("CARGO_PKG_VERSION");
    let upgraded = options
        .client
        .upgrade(
            "GET",
            tunnel::CONNECT_PATH,
            tunnel::PROTOCOL,
            &[
                (tunnel::AGENT_HEADER, identity.name.as_str()),
                (tunnel::VERSION_HEADER, version),
            ],
        )
        .await;
    let (headers, mut io) = match upgraded {
        Ok(pair) => pair,
        // The gateway answered, and no: revoked, unknown, never enrolled.
        Err(e) if e.to_string().contains("(403") => return Err(Refused(format!("{e:#}")).into()),
        Err(e) => return Err(e),
    };
    let challenge = headers
        .get(tunnel::CHALLENGE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| hex::decode(v).ok())
        .ok_or_else(|| anyhow!("the gateway sent no challenge"))?;
    let signature = identity
        .key
        .sign(&tunnel::signed(&identity.name, &challenge));
    io.write_all(&signature.to_bytes()).await?;
    let mut answer = [0u8; 1];
    io.read_exact(&mut answer).await?;
    if answer[0] != tunnel::ACCEPTED {
        let mut len = [0u8; 2];
        io.read_exact(&mut len).await?;
        let mut why = vec![0u8; u16::from_be_bytes(len) as usize];
        io.read_exact(&mut why).await?;
        return Err(Refused(String::from_utf8_lossy(&why).into_owned()).into());
    }
    let mut connection = h2::server::Builder::new()
        .initial_window_size(tunnel::WINDOW)
        .initial_connection_window_size(tunnel::WINDOW * 8)
        .max_frame_size(tunnel::MAX_FRAME)
        .max_header_list_size(tunnel::MAX_HEADERS)
        .handshake::<_, Bytes>(io)
        .await?;
    tracing::info!(agent = %identity.name, "connected to the gateway");
    let pings = connection.ping_pong();
    let alive = tunnel::keep_alive(pings, options.keepalive, Arc::new(AtomicU64::new(0)));
    tokio::pin!(alive);
    let name: Arc<str> = identity.name.as_str().into();
    loop {
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    tokio::spawn(job(request, respond, name.clone()));
                }
                Some(Err(e)) => return Ok(format!("the connection failed: {e}")),
                None => return Ok("the gateway closed the connection".into()),
            },
            why = &mut alive => return Ok(why),
        }
    }
}

/// One stream: dial or start what it asks for, answer, and carry it to its end.
async fn job(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    agent: Arc<str>,
) {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let refuse = |respond: &mut h2::server::SendResponse<Bytes>, why: String| {
        tracing::info!(%why, "job refused");
        let response = http::Response::builder()
            .status(http::StatusCode::BAD_GATEWAY)
            .header(tunnel::ERROR_HEADER, why.replace(['\r', '\n'], " "))
            .body(());
        if let Ok(response) = response {
            let _ = respond.send_response(response, true);
        }
    };
    let accept = |respond: &mut h2::server::SendResponse<Bytes>| {
        let response = http::Response::builder()
            .status(http::StatusCode::OK)
            .body(())
            .map_err(|e| e.to_string())?;
        respond
            .send_response(response, false)
            .map_err(|e| e.to_string())
    };
    match request.uri().path() {
        "/dial" => {
            let Some(target) = header(tunnel::TARGET_HEADER) else {
                return refuse(&mut respond, "no target".into());
            };
            let mut upstream = match tokio::net::TcpStream::connect(&target).await {
                Ok(tcp) => tcp,
                Err(e) => return refuse(&mut respond, format!("cannot reach {target}: {e}")),
            };
            let _ = upstream.set_nodelay(true);
            let Ok(send) = accept(&mut respond) else {
                return;
            };
            let mut stream = Stream::new(send, request.into_body(), agent);
            let _ = tokio::io::copy_bidirectional(&mut upstream, &mut stream).await;
        }
        "/exec" => {
            let job: ExecJob = match header(tunnel::EXEC_HEADER)
                .ok_or_else(|| "no program".to_string())
                .and_then(|h| serde_json::from_str(&h).map_err(|e| e.to_string()))
            {
                Ok(job) => job,
                Err(why) => return refuse(&mut respond, format!("a malformed job: {why}")),
            };
            let program = match program(&job) {
                Ok(program) => program,
                Err(why) => return refuse(&mut respond, why),
            };
            let started = match job.terminal {
                Some((rows, cols)) => Process::interactive(&program, rows, cols),
                None if job.stdio => Process::stdio(&program),
                None => Process::script(&program),
            };
            let process = match started {
                Ok(process) => process,
                Err(e) => return refuse(&mut respond, format!("cannot start the program: {e}")),
            };
            let Ok(send) = accept(&mut respond) else {
                return;
            };
            let stream = Stream::new(send, request.into_body(), agent);
            run_program(process, stream).await;
        }
        "/pg" => {
            let job: tunnel::PgJob = match header(tunnel::PG_HEADER)
                .ok_or_else(|| "no server".to_string())
                .and_then(|h| serde_json::from_str(&h).map_err(|e| e.to_string()))
            {
                Ok(job) => job,
                Err(why) => return refuse(&mut respond, format!("a malformed job: {why}")),
            };
            let Ok(password) = std::env::var(&job.password_env) else {
                let why = format!(
                    "agent-env:{} is not set in the agent's environment",
                    job.password_env
                );
                return refuse(&mut respond, why);
            };
            let conn = PostgresConnection {
                listen: ([127, 0, 0, 1], 0).into(),
                upstream: job.upstream,
                agent: None,
                database: job.database,
                user: job.user,
                password: Some(password),
                upstream_tls: job.upstream_tls,
                upstream_ca: job.upstream_ca,
                client_tls: Default::default(),
                max_session_seconds: None,
                retention_days: None,
            };
            // The same sign-in the gateway does for a password it holds; its errors never
            // carry the password.
            let mut upstream = match upstream::connect(&conn, &Reach::Direct).await {
                Ok(upstream) => upstream,
                Err(why) => return refuse(&mut respond, why),
            };
            let signed_in = tunnel::SignedIn {
                pid: upstream.pid,
                secret: upstream.secret,
                parameters: upstream
                    .parameters
                    .iter()
                    .map(|m| hex::encode(&m.body))
                    .collect(),
            };
            let response = serde_json::to_string(&signed_in)
                .map_err(|e| e.to_string())
                .and_then(|head| {
                    http::Response::builder()
                        .status(http::StatusCode::OK)
                        .header(tunnel::SIGNED_IN_HEADER, head)
                        .body(())
                        .map_err(|e| e.to_string())
                });
            let send = match response {
                Ok(response) => match respond.send_response(response, false) {
                    Ok(send) => send,
                    Err(_) => return,
                },
                Err(why) => return refuse(&mut respond, why),
            };
            let mut stream = Stream::new(send, request.into_body(), agent);
            let _ = tokio::io::copy_bidirectional(&mut upstream.stream, &mut stream).await;
        }
        other => refuse(&mut respond, format!("no such job `{other}`")),
    }
}

/// The job's program with the agent's own values for `agent-env:` names.
fn program(job: &ExecJob) -> Result<Program, String> {
    let env: Result<Vec<(String, String)>, String> = job
        .env
        .iter()
        .map(|(key, value)| match value {
            EnvValue::Value(v) => Ok((key.clone(), v.clone())),
            EnvValue::AgentEnv(name) => std::env::var(name)
                .map(|v| (key.clone(), v))
                .map_err(|_| format!("agent-env:{name} is not set in the agent's environment")),
        })
        .collect();
    Ok(Program {
        argv: job.argv.clone(),
        env: env?,
        cwd: job.cwd.clone(),
    })
}

/// Carries a program over `stream` (`wire` messages) until it exits or the stream ends
/// (then the program is killed with it).
async fn run_program(mut process: Process, stream: Stream) {
    let (mut from_gateway, mut to_gateway) = tokio::io::split(stream);
    // Input is written by a task of its own, so a program that does not read its input
    // never stops its output from being carried; what waits for it is bounded.
    let (input_tx, mut input_rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(16);
    let mut input = std::mem::replace(&mut process.input, Box::new(tokio::io::sink()));
    let writer = tokio::spawn(async move {
        while let Some(Some(bytes)) = input_rx.recv().await {
            if input.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = input.shutdown().await;
    });
    // Messages are read by a task of their own too: a message is never cut in half by
    // output arriving. Resizes come back here, where the terminal is.
    let (resize_tx, mut resizes) = tokio::sync::mpsc::channel::<(u16, u16)>(4);
    let mut reader = tokio::spawn(async move {
        loop {
            match wire::read(&mut from_gateway).await {
                Ok(Message::Input(bytes)) => {
                    if input_tx.send(Some(bytes)).await.is_err() {
                        break Ok(());
                    }
                }
                Ok(Message::InputEnd) => {
                    let _ = input_tx.send(None).await;
                }
                Ok(Message::Resize { rows, cols }) => {
                    let _ = resize_tx.try_send((rows, cols));
                }
                Ok(other) => {
                    break Err(format!(
                        "the gateway sent {}, which no program takes",
                        other.name()
                    ));
                }
                Err(wire::WireError::Closed) => break Ok(()),
                Err(e) => break Err(e.to_string()),
            }
        }
    });
    let mut buf = vec![0u8; 64 << 10];
    let mut echoes = true;
    let mut reading = true;
    let ended: Result<(), String> = loop {
        tokio::select! {
            read = process.output.read(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    // The echo mode as it is when the output is read: a password prompt is
                    // printed after echo goes off, so the gateway knows before the user types.
                    let now = process.echoes();
                    if now != echoes {
                        echoes = now;
                        if wire::write(&mut to_gateway, &Message::Echo(now)).await.is_err() {
                            break Err("the gateway's stream ended".into());
                        }
                    }
                    if wire::write(&mut to_gateway, &Message::Output(buf[..n].to_vec())).await.is_err() {
                        break Err("the gateway's stream ended".into());
                    }
                }
                // End of output (a terminal reports EIO once the program has exited).
                _ => break Ok(()),
            },
            Some((rows, cols)) = resizes.recv() => process.resize(rows, cols),
            // The gateway reset the stream (its session ended): the program ends with it.
            done = &mut reader, if reading => {
                reading = false;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(why)) => break Err(why),
                    Err(_) => break Err("the stream's reader failed".into()),
                }
            }
        }
    };
    match ended {
        Ok(()) => {
            let last = match process.wait().await {
                Ok(code) => Message::Exit(code),
                Err(why) => Message::Error(why),
            };
            let _ = wire::write(&mut to_gateway, &last).await;
            let _ = to_gateway.shutdown().await;
        }
        Err(why) => {
            tracing::info!(%why, "the program ends with its stream");
            process.kill();
        }
    }
    reader.abort();
    writer.abort();
}
