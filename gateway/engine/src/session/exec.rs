//! The frame path of a program session (`kind = "exec"`), in both directions:
//!
//! ```text
//! client --wire--> [frame] --> [filter chain] --> [record] --> [forward] --> process
//! client <--wire-- [forward] <-- [record] <-- [filter chain] <-- [frame] <-- process
//! ```
//!
//! `sluice exec` sends a whole script as one statement frame; `sluice connect` runs the program
//! in a terminal, with keystrokes as byte frames and each typed line as a line frame.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Context, Core, INTERACTIVE_FLUSH, Opening, content_bytes};
use crate::chain::{Decision, Outcome};
use crate::config::{ExecConnection, SshConnection};
use crate::exec::Process;
use crate::ssh::upstream::Run;
use crate::wire::{self, Message, WireError};
use sluice_core::frame::{Content, Direction, Statement};
use sluice_record::{Receipt, RecordFailed};

/// The largest script `sluice exec` may send.
pub const MAX_SCRIPT_BYTES: usize = 16 << 20;
/// Output is read in chunks of up to this size: in strict mode each chunk waits for a durable
/// commit, so bigger chunks mean fewer waits on a fast producer (a terminal gives at most 4 KiB).
const READ_CHUNK: usize = 256 << 10;
const CTRL_U: u8 = 0x15;
const CTRL_D: u8 = 0x04;
/// Quiet time after the client's input ended before Ctrl-D is typed again.
const EOF_RETRY: Duration = Duration::from_millis(500);
/// One-shot output chunks that may wait for their commit at once (at most this many times
/// `READ_CHUNK` bytes are held back).
const PIPELINE: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One-shot: the whole input is one frame, then the program runs to its end.
    Exec,
    /// An interactive terminal of this size.
    Connect { rows: u16, cols: u16 },
}

/// What a program session runs.
#[derive(Clone, Debug)]
pub enum Target {
    /// The connection's program, here or through one of its agents.
    Program(ExecConnection),
    /// A shell or command on an SSH server (`ssh/upstream.rs`).
    Ssh(SshConnection),
}

impl Target {
    fn max_session_seconds(&self) -> Option<u64> {
        match self {
            Target::Program(conn) => conn.max_session_seconds,
            Target::Ssh(conn) => conn.max_session_seconds,
        }
    }
}

/// A program session about to start.
pub struct Request {
    pub opening: Opening,
    pub connection: Target,
    pub mode: Mode,
}

/// Why a session ended early; told to the client and recorded.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("{0}")]
    Record(#[from] RecordFailed),
    #[error("client: {0}")]
    Client(#[from] WireError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Target(String),
    #[error("session ended: {0}")]
    Ended(String),
}

struct Session<S> {
    core: Core,
    /// Toward the client.
    client: tokio::io::WriteHalf<S>,
    /// From the client, read by a task of its own so that waiting for a message can be
    /// cancelled (by output arriving) without losing half a message.
    from_client: tokio::sync::mpsc::Receiver<Result<Message, WireError>>,
    /// The line being typed (interactive sessions), for the line frame at Enter.
    line: Vec<u8>,
    /// Client messages that arrived while a frame waited for review, in order.
    stash: std::collections::VecDeque<Message>,
}

/// Client messages kept while a frame waits for review; beyond this the client waits.
const MAX_STASH: usize = 1024;

/// Runs a session to its end over `client`, the upgraded stream.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    ctx: Arc<Context>,
    mut request: Request,
    client: S,
) {
    let (mut reader, mut client) = tokio::io::split(client);
    // A terminal's size, for a replay at the size the person saw.
    let mode = match request.mode {
        Mode::Exec => json!({"mode": "exec"}),
        Mode::Connect { rows, cols } => json!({"mode": "connect", "rows": rows, "cols": cols}),
    };
    // Beside what the door said (`"front": "ssh"`).
    match (&mut request.opening.meta, mode) {
        (serde_json::Value::Object(meta), serde_json::Value::Object(mode)) => meta.extend(mode),
        (meta, mode) => *meta = mode,
    }
    let (core, killed) = match Core::open(ctx, request.opening).await {
        Ok(opened) => opened,
        Err(e) => {
            let _ = wire::write(
                &mut client,
                &Message::Error(format!("session refused: {e}")),
            )
            .await;
            return;
        }
    };
    // Bounded: a client that sends faster than the session can filter and record waits.
    let (tx, from_client) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let message = wire::read(&mut reader).await;
            let last = message.is_err();
            if tx.send(message).await.is_err() || last {
                break;
            }
        }
    });
    let mut session = Session {
        core,
        client,
        from_client,
        line: Vec::new(),
        stash: Default::default(),
    };
    let exec = &request.connection;
    let max = exec
        .max_session_seconds()
        .map(Duration::from_secs)
        .unwrap_or(Duration::MAX);
    // Dropping the mode's future drops its process, which kills it.
    let result = tokio::select! {
        result = async {
            match tokio::time::timeout(max, async {
                match request.mode {
                    Mode::Exec => session.exec(exec).await,
                    Mode::Connect { rows, cols } => session.connect(exec, rows, cols).await,
                }
            }).await {
                Ok(result) => result,
                Err(_) => Err(End::Ended(format!("the connection's maximum session duration of {} s was reached", max.as_secs()))),
            }
        } => result,
        Ok(reason) = killed => Err(End::Ended(reason)),
    };
    let (status, reason) = match &result {
        Ok(code) => (Some(*code), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let close = session
        .core
        .close(json!({"exit_status": status, "reason": reason}))
        .await;
    let last = match (result, close) {
        (Ok(code), Ok(())) => Message::Exit(code),
        (Err(e), _) => Message::Error(e.to_string()),
        (Ok(_), Err(e)) => Message::Error(e.to_string()),
    };
    tracing::info!(exit = ?status, reason = ?reason, "session closed");
    let _ = wire::write(&mut session.client, &last).await;
    let _ = session.client.shutdown().await;
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    async fn next_message(&mut self) -> Result<Message, WireError> {
        if let Some(message) = self.stash.pop_front() {
            return Ok(message);
        }
        self.from_client
            .recv()
            .await
            .unwrap_or(Err(WireError::Closed))
    }

    /// One-shot: the whole input is one statement frame; if the chain lets it through, the
    /// program runs and its output streams back.
    async fn exec(&mut self, conn: &Target) -> Result<i32, End> {
        let mut script = Vec::new();
        loop {
            match self.next_message().await? {
                Message::Input(bytes) => {
                    if script.len() + bytes.len() > MAX_SCRIPT_BYTES {
                        return Err(End::Refused(format!(
                            "the script exceeds {MAX_SCRIPT_BYTES} bytes"
                        )));
                    }
                    script.extend_from_slice(&bytes);
                }
                Message::InputEnd => break,
                other => {
                    return Err(WireError::Malformed(format!(
                        "unexpected {other:?} before the script ended"
                    ))
                    .into());
                }
            }
        }
        // A script is one statement; one that is not UTF-8 goes as bytes, so it reaches the
        // program exactly as sent.
        let statement = match String::from_utf8(script) {
            Ok(text) => Content::Statement(Statement {
                text,
                params: vec![],
            }),
            Err(e) => Content::Bytes(e.into_bytes()),
        };
        let Some(forward) = self.client_frame(statement).await? else {
            return Err(End::Refused("the script was not run".into()));
        };
        let mut script = content_bytes(&forward);
        // Whatever a plugin still holds of the input is the script's tail.
        for released in self.core.flush(Direction::ClientToTarget).await? {
            script.extend_from_slice(&content_bytes(&released));
        }
        let (mut process, bytes) = start(self.core.ctx.agents.clone(), conn, None, script).await?;
        let mut input = std::mem::replace(&mut process.input, Box::new(tokio::io::sink()));
        // Feed the script while reading output, so a large script cannot deadlock on a full pipe.
        let feeder = tokio::spawn(async move {
            let _ = input.write_all(&bytes).await;
            let _ = input.shutdown().await;
        });
        self.pump_output(&mut process.output).await?;
        let _ = feeder.await;
        self.flush_output().await?;
        wait(&mut process).await
    }

    /// Interactive: keystrokes cross the chain as byte frames; at Enter the typed line crosses
    /// it too, and the Enter key is held back until the line's verdict.
    async fn connect(&mut self, conn: &Target, rows: u16, cols: u16) -> Result<i32, End> {
        let (mut process, _) = start(
            self.core.ctx.agents.clone(),
            conn,
            Some((rows, cols)),
            Vec::new(),
        )
        .await?;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut since_flush = false;
        // Ctrl-Ds still to type after the client's input ended (see InputEnd below).
        let mut eof_retries = 0;
        loop {
            tokio::select! {
                read = process.output.read(&mut buf) => {
                    match read {
                        Ok(n) if n > 0 => self.target_frame(buf[..n].to_vec()).await?,
                        // A terminal reports EIO once the program has exited.
                        _ => break,
                    }
                    since_flush = true;
                }
                // Quiet for a while after traffic: plugins release what they buffer.
                () = tokio::time::sleep(INTERACTIVE_FLUSH), if since_flush => {
                    self.flush_output().await?;
                    self.flush_input(&mut process.input).await?;
                    since_flush = false;
                }
                // A program still starting up can drop typed-ahead input with the Ctrl-D in it;
                // while it stays quiet, press Ctrl-D again, a few times, as a person would.
                () = tokio::time::sleep(EOF_RETRY), if eof_retries > 0 => {
                    eof_retries -= 1;
                    self.keystrokes(&mut process, vec![CTRL_D]).await?;
                }
                message = self.next_message() => {
                    match message {
                        Ok(Message::Input(bytes)) => {
                            self.keystrokes(&mut process, bytes).await?;
                            since_flush = true;
                        }
                        Ok(Message::Resize { rows, cols }) => {
                            process.resize(rows, cols);
                            // Recorded in order with the output, for a replay that resizes too.
                            let size = serde_json::json!({"rows": rows, "cols": cols});
                            let seq = self.core.seq(Direction::TargetToClient);
                            self.core
                                .submit_event(sluice_record::kinds::RESIZE, seq, &size, Vec::new())
                                .await?;
                        }
                        // The client's input ended (a pipe, not a person): type Ctrl-D, as a
                        // person would, and let the program finish.
                        Ok(Message::InputEnd) => {
                            self.keystrokes(&mut process, vec![CTRL_D]).await?;
                            eof_retries = 3;
                        }
                        Err(WireError::Closed) => {
                            // The client went away: end the program with the session.
                            process.kill();
                            break;
                        }
                        Ok(other) => return Err(WireError::Malformed(format!("unexpected {other:?}")).into()),
                        Err(e) => {
                            process.kill();
                            return Err(e.into());
                        }
                    }
                }
            }
        }
        self.flush_input(&mut process.input).await?;
        self.flush_output().await?;
        wait(&mut process).await
    }

    /// Splits typed input at Enter: the bytes before it go as a byte frame, the assembled
    /// line as a line frame, and the Enter only if the line passed. Both frames are decided
    /// first and recorded in one commit (strict mode: one fsync before the program sees the
    /// keys, not one per frame).
    async fn keystrokes(&mut self, process: &mut Process, bytes: Vec<u8>) -> Result<(), End> {
        let echo = process.echoes();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let enter = rest.iter().position(|&b| b == b'\r' || b == b'\n');
            let (typed, tail) = match enter {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, &rest[rest.len()..]),
            };
            let typed = (!typed.is_empty()).then(|| typed.to_vec());
            let key = tail.first().copied();
            rest = tail.get(1..).unwrap_or_default();
            let typed = match typed {
                Some(typed) => {
                    if echo {
                        self.track_line(&typed);
                    }
                    let recorded_as = (!echo)
                        .then(|| Content::Bytes(b"[redacted: typed with echo off]".to_vec()));
                    Some(
                        self.decide_client(Content::Bytes(typed), recorded_as)
                            .await?,
                    )
                }
                None => None,
            };
            let line = match key {
                Some(_) => {
                    let line =
                        String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
                    match echo && !line.trim().is_empty() {
                        true => Some(self.decide_client(Content::Line(line), None).await?),
                        false => None,
                    }
                }
                None => None,
            };
            let frames = [&typed, &line]
                .into_iter()
                .flatten()
                .map(|(seq, decision)| {
                    self.core
                        .frame_event(Direction::ClientToTarget, *seq, decision)
                })
                .collect();
            self.core.record_frames_together(frames).await?;
            let mut to_program = Vec::new();
            if let Some((_, decision)) = typed
                && let Some(Content::Bytes(out)) = self.settle_client(decision).await?
            {
                to_program = out;
            }
            let line_passed = match line {
                Some((_, decision)) => self.settle_client(decision).await?.is_some(),
                None => true,
            };
            if let Some(key) = key {
                to_program.push(if line_passed { key } else { CTRL_U });
            }
            if !to_program.is_empty() {
                process
                    .input
                    .write_all(&to_program)
                    .await
                    .map_err(|e| End::Target(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Keeps the typed line up to date with editing keys (best effort: see ARCHITECTURE.md for
    /// what line gates cannot see).
    fn track_line(&mut self, typed: &[u8]) {
        for &b in typed {
            match b {
                0x7f | 0x08 => {
                    self.line.pop();
                }
                0x03 | CTRL_U => self.line.clear(),
                b if b >= 0x20 => self.line.push(b),
                _ => {}
            }
        }
    }

    /// Output of a one-shot program, pipelined for throughput: while up to [`PIPELINE`]
    /// chunks wait for their commit (one group commit for them all), the next ones are read
    /// and filtered. Each chunk is still forwarded only once durable, and in order.
    async fn pump_output(&mut self, output: &mut crate::exec::Output) -> Result<(), End> {
        let mut pending: VecDeque<(Receipt, Content)> = VecDeque::new();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if pending.len() >= PIPELINE {
                self.forward_recorded(pending.pop_front()).await?;
                continue;
            }
            let n = if pending.is_empty() {
                match tokio::time::timeout(self.core.ctx.flush, output.read(&mut buf)).await {
                    Ok(read) => read.unwrap_or(0),
                    Err(_idle) => {
                        // Nothing pending and nothing new: plugins release what they buffer.
                        self.flush_output().await?;
                        continue;
                    }
                }
            } else {
                // Read on while the oldest chunk's commit is in flight; forward it as soon as
                // it is durable, so a pause in the output never holds recorded output back.
                let oldest = async {
                    match pending.front_mut() {
                        Some((receipt, _)) => receipt.wait().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    durable = oldest => {
                        durable?;
                        if let Some((_, content)) = pending.pop_front() {
                            self.forward_to_client(&content).await?;
                        }
                        continue;
                    }
                    read = output.read(&mut buf) => read.unwrap_or(0),
                }
            };
            if n == 0 {
                break;
            }
            let decision = self
                .core
                .filter(Direction::TargetToClient, Content::Bytes(buf[..n].to_vec()));
            let receipt = self
                .core
                .submit_frame(Direction::TargetToClient, &decision)
                .await?;
            match decision.outcome {
                Outcome::Pass => pending.push_back((receipt, decision.forward)),
                refused => {
                    // What passed before still goes out; this and everything after does not.
                    while let Some(next) = pending.pop_front() {
                        self.forward_recorded(Some(next)).await?;
                    }
                    receipt.durable().await?;
                    return Err(output_refused(refused));
                }
            }
        }
        while let Some(next) = pending.pop_front() {
            self.forward_recorded(Some(next)).await?;
        }
        Ok(())
    }

    /// Forwards a chunk once the commit recording it is durable.
    async fn forward_recorded(&mut self, entry: Option<(Receipt, Content)>) -> Result<(), End> {
        if let Some((receipt, content)) = entry {
            receipt.durable().await?;
            self.forward_to_client(&content).await?;
        }
        Ok(())
    }

    /// Output of the program: filter, record, forward. A denied output frame ends the session
    /// (a terminal stream has no error frame).
    async fn target_frame(&mut self, bytes: Vec<u8>) -> Result<(), End> {
        let decision = self
            .core
            .filter(Direction::TargetToClient, Content::Bytes(bytes));
        self.core
            .record_frame(Direction::TargetToClient, &decision)
            .await?;
        match decision.outcome {
            Outcome::Pass => self.forward_to_client(&decision.forward).await,
            refused => Err(output_refused(refused)),
        }
    }

    /// Input from the client: filter, record; returns what may be forwarded, or `None` when
    /// refused (the client was told why).
    async fn client_frame(&mut self, content: Content) -> Result<Option<Content>, End> {
        self.client_frame_as(content, None).await
    }

    async fn client_frame_as(
        &mut self,
        content: Content,
        redacted: Option<Content>,
    ) -> Result<Option<Content>, End> {
        let (_, decision) = self.decide_client(content, redacted).await?;
        self.core
            .record_frame(Direction::ClientToTarget, &decision)
            .await?;
        self.settle_client(decision).await
    }

    /// The filter step for client input, and the review when the chain holds it. Returns
    /// the frame's number with the decision, which is recorded next.
    async fn decide_client(
        &mut self,
        content: Content,
        redacted: Option<Content>,
    ) -> Result<(u64, Decision), End> {
        let mut decision = self.core.filter(Direction::ClientToTarget, content);
        let seq = self.core.seq(Direction::ClientToTarget);
        if let Some(redacted) = redacted {
            decision.record_as = Some(redacted);
        }
        if let Outcome::Hold { reasons } = &decision.outcome {
            let mut pending = self
                .core
                .request_review(&decision, &reasons.join("; "))
                .await?;
            self.notice(pending.notice()).await?;
            // The client is watched meanwhile: one that goes away (Ctrl-C on `sluice exec`)
            // takes its held command with it; the review ends as `session-ended`.
            let review = loop {
                tokio::select! {
                    review = pending.decided() => break review,
                    message = self.from_client.recv(), if self.stash.len() < MAX_STASH => {
                        match message {
                            Some(Ok(message)) => self.stash.push_back(message),
                            Some(Err(e)) => return Err(e.into()),
                            None => return Err(WireError::Closed.into()),
                        }
                    }
                }
            };
            decision = self.core.reviewed(decision, &review);
            if review.status == crate::review::Status::Approved {
                self.notice(format!("sluice: review {} approved; running it", review.id))
                    .await?;
            }
        }
        Ok((seq, decision))
    }

    /// After a client frame is recorded: what may be forwarded, or `None` when refused (the
    /// client is told why).
    async fn settle_client(&mut self, decision: Decision) -> Result<Option<Content>, End> {
        match decision.outcome {
            Outcome::Pass => Ok(Some(decision.forward)),
            Outcome::Deny { plugin, reason } => {
                self.notice(format!("sluice: refused by {plugin}: {reason}"))
                    .await?;
                Ok(None)
            }
            Outcome::Hold { .. } => Ok(None),
        }
    }

    /// Flushes output to the client.
    async fn flush_output(&mut self) -> Result<(), End> {
        for content in self.core.flush(Direction::TargetToClient).await? {
            self.forward_to_client(&content).await?;
        }
        Ok(())
    }

    /// Flushes input to the program.
    async fn flush_input(&mut self, input: &mut crate::exec::Input) -> Result<(), End> {
        for content in self.core.flush(Direction::ClientToTarget).await? {
            input
                .write_all(&content_bytes(&content))
                .await
                .map_err(|e| End::Target(e.to_string()))?;
        }
        Ok(())
    }

    /// The forward step, toward the client.
    async fn forward_to_client(&mut self, content: &Content) -> Result<(), End> {
        let bytes = content_bytes(content);
        // A plugin that held the whole chunk back (to see what follows) left nothing to send.
        if !bytes.is_empty() {
            wire::write(&mut self.client, &Message::Output(bytes)).await?;
        }
        Ok(())
    }

    async fn notice(&mut self, text: String) -> Result<(), End> {
        wire::write(&mut self.client, &Message::Notice(text)).await?;
        Ok(())
    }
}

fn output_refused(outcome: Outcome) -> End {
    match outcome {
        Outcome::Deny { plugin, reason } => {
            End::Refused(format!("output refused by {plugin}: {reason}"))
        }
        _ => End::Refused("output cannot be held".into()),
    }
}

/// The connection's program, started here or by one of its agents, or a session on its SSH
/// server: one-shot, or in a terminal of (rows, cols). Returns it with what its input is to
/// be fed: a program reads the one-shot `script` on its input; an SSH server gets it as the
/// command to run.
async fn start(
    agents: Arc<crate::agent::Agents>,
    target: &Target,
    terminal: Option<(u16, u16)>,
    script: Vec<u8>,
) -> Result<(Process, Vec<u8>), End> {
    let conn = match target {
        Target::Program(conn) => conn,
        Target::Ssh(conn) => {
            let run = match terminal {
                Some((rows, cols)) => Run::Shell { rows, cols },
                None => Run::Exec(&script),
            };
            let process = crate::ssh::upstream::open(&agents, conn, run)
                .await
                .map_err(|e| match e.strip_prefix("refused: ") {
                    Some(why) => End::Refused(why.to_string()),
                    None => End::Target(format!("cannot open the SSH session: {e}")),
                })?;
            return Ok((process, Vec::new()));
        }
    };
    let started = match (&conn.agent, terminal) {
        (Some(pool), _) => {
            crate::agent::start(&agents, conn, pool, terminal.is_none(), terminal).await
        }
        (None, None) => Process::script(&conn.program(true)).map_err(|e| e.to_string()),
        (None, Some((rows, cols))) => {
            Process::interactive(&conn.program(false), rows, cols).map_err(|e| e.to_string())
        }
    };
    started
        .map(|process| (process, script))
        .map_err(|e| End::Target(format!("cannot start the program: {e}")))
}

async fn wait(process: &mut Process) -> Result<i32, End> {
    process.wait().await.map_err(End::Target)
}
