//! The frame path of a file-transfer session (`sftp`, and `scp`, which speaks SFTP since
//! OpenSSH 9) to an SSH server, packet by packet (`ssh/sftp.rs` reads them):
//!
//! ```text
//! client --> [request naming a path: statement frame --> chain --> record] --> server
//!            [file data: recorded]                                  [forward]
//! client <-- [forward] <-- [file data: recorded] <------------------------------ server
//! ```
//!
//! A request that touches a file (`put PATH`, `get PATH`, `rm PATH`, `ls PATH`, ...) crosses
//! the chain as a statement frame, so gates hold or deny transfers by path; a refused request
//! is answered "permission denied" by the gateway and never reaches the server. File bytes are
//! recorded (`file-data`: path, offset, size; the bytes themselves as the connection's
//! `file_contents` says) before they are forwarded, and a file's `file-transfer` event
//! (direction, path, size, SHA-256) is durable before the CLOSE that ends it reaches the
//! server. Other packets (listings' replies, stat, realpath) pass unrecorded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Context, Core, Opening};
use crate::chain::Outcome;
use crate::config::SshConnection;
use crate::ssh::sftp::{self, Packets, Request as Packet};
use crate::ssh::upstream::{self, Run};
use sluice_core::frame::{Content, Direction, Statement};
use sluice_record::{Receipt, RecordFailed, kinds};

/// Packets that may wait for their commit at once.
const PIPELINE: usize = 64;
const READ_CHUNK: usize = 256 << 10;
/// Bytes on their way to one side but not yet taken by it, beyond which the other side is
/// not read until it catches up (a client reads and writes at once, as SFTP has it, so only
/// one that stops reading altogether waits on this).
const MAX_BACKLOG: usize = 32 << 20;

/// A file-transfer session about to start.
pub struct Request {
    pub opening: Opening,
    pub connection: SshConnection,
}

/// Why a session ended early; told to the client and recorded.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("{0}")]
    Record(#[from] RecordFailed),
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Target(String),
    #[error("{0}")]
    Client(String),
    #[error("session ended: {0}")]
    Ended(String),
}

#[derive(Clone, Copy)]
enum Toward {
    Client,
    Server,
}

/// A packet on its way, forwarded once its record is durable (at once when nothing of it is
/// recorded).
type Queued = (Option<Receipt>, Toward, Vec<u8>);

struct Session {
    core: Core,
    transfers: sftp::Transfers,
    to_client: Outbox,
    to_server: Outbox,
    /// The client's standard error: why a request waits or was refused.
    notices: Outbox,
}

/// Bytes on their way to one peer, written by a task of its own. An SSH connection carries
/// both directions on one loop, which stops taking a channel's data while that data is not
/// read: a session that waited on a write to the client without reading it would wait
/// forever. So writes never block the session; what waits is counted, and bounded by what
/// the session reads (see `MAX_BACKLOG`).
struct Outbox {
    tx: mpsc::UnboundedSender<Option<Vec<u8>>>,
    waiting: Arc<AtomicUsize>,
    /// Signalled after each write, so a session waiting on the backlog wakes.
    written: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Outbox {
    fn new<W: AsyncWrite + Unpin + Send + 'static>(mut writer: W) -> Outbox {
        let (tx, mut rx) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
        let waiting = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(tokio::sync::Notify::new());
        let (counted, signal) = (waiting.clone(), written.clone());
        let task = tokio::spawn(async move {
            while let Some(next) = rx.recv().await {
                // `None`: the end of this direction (EOF).
                let Some(bytes) = next else {
                    let _ = writer.shutdown().await;
                    return;
                };
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
                counted.fetch_sub(bytes.len(), Ordering::Relaxed);
                signal.notify_one();
            }
        });
        Outbox {
            tx,
            waiting,
            written,
            task,
        }
    }

    /// False once the peer can no longer be written to.
    fn send(&self, bytes: Vec<u8>) -> bool {
        self.waiting.fetch_add(bytes.len(), Ordering::Relaxed);
        self.tx.send(Some(bytes)).is_ok()
    }

    /// Whether the peer is this far behind: then what would add to its backlog waits.
    fn behind(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) >= MAX_BACKLOG
    }

    /// Ends this direction once what waits is written (an EOF on an SSH channel).
    fn end(&self) {
        let _ = self.tx.send(None);
    }

    /// Waits until what was sent is written (or the peer is gone); the direction stays
    /// open (the client's channel still gets its exit status).
    async fn finish(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// Runs the session until either side ends it. `Ok` carries the server's exit status; `Err`
/// why the session ended otherwise (already recorded), for the client.
pub async fn run<R, W, N>(
    ctx: Arc<Context>,
    mut request: Request,
    mut from_client: R,
    to_client: W,
    notices: N,
) -> Result<i32, String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
    N: AsyncWrite + Unpin + Send + 'static,
{
    request.opening.protocol = "sftp";
    let (core, killed) = Core::open(ctx.clone(), request.opening)
        .await
        .map_err(|e| format!("session refused: {e}"))?;
    let conn = request.connection;
    let max = conn
        .max_session_seconds
        .map(std::time::Duration::from_secs)
        .unwrap_or(std::time::Duration::MAX);
    let mut session = Session {
        core,
        transfers: sftp::Transfers::new(conn.file_contents),
        to_client: Outbox::new(to_client),
        to_server: Outbox::new(tokio::io::sink()),
        notices: Outbox::new(notices),
    };
    let result = tokio::select! {
        result = async {
            let mut process = upstream::open(&ctx.agents, &conn, Run::Subsystem("sftp"))
                .await
                .map_err(|e| match e.strip_prefix("refused: ") {
                    Some(why) => End::Refused(why.to_string()),
                    None => End::Target(format!("cannot open the SFTP session: {e}")),
                })?;
            let input = std::mem::replace(&mut process.input, Box::new(tokio::io::sink()));
            session.to_server = Outbox::new(input);
            match tokio::time::timeout(max, session.relay(&mut from_client, &mut process.output)).await {
                Ok(relayed) => relayed?,
                Err(_) => return Err(End::Ended(format!("the connection's maximum session duration of {} s was reached", max.as_secs()))),
            }
            process.wait().await.map_err(End::Target)
        } => result,
        Ok(reason) = killed => Err(End::Ended(reason)),
    };
    let (status, reason) = match &result {
        Ok(code) => (Some(*code), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let closed = session
        .core
        .close(json!({"exit_status": status, "reason": reason}))
        .await;
    tracing::info!(exit = ?status, reason = ?reason, "session closed");
    // Everything forwarded reaches the client before its exit status.
    session.to_client.finish().await;
    session.notices.finish().await;
    match (result, closed) {
        (Ok(code), Ok(())) => Ok(code),
        (Err(e), _) => Err(e.to_string()),
        (Ok(_), Err(e)) => Err(e.to_string()),
    }
}

enum Event {
    Durable(Result<(), RecordFailed>),
    /// A peer took some of its backlog.
    Written,
    Client(usize),
    Server(usize),
}

impl Session {
    /// Carries packets both ways until the server ends the subsystem.
    async fn relay<R: AsyncRead + Unpin>(
        &mut self,
        from_client: &mut R,
        from_server: &mut crate::exec::Output,
    ) -> Result<(), End> {
        let mut pending: VecDeque<Queued> = VecDeque::new();
        let (mut client_packets, mut server_packets) = (Packets::default(), Packets::default());
        let (mut client_buf, mut server_buf) = (vec![0u8; READ_CHUNK], vec![0u8; READ_CHUNK]);
        let mut client_open = true;
        loop {
            if pending.len() >= PIPELINE {
                self.forward_when_durable(pending.pop_front()).await?;
                continue;
            }
            // The oldest packet goes as soon as its record is durable, while both sides are
            // read on.
            let oldest = async {
                match pending.front_mut() {
                    Some((Some(receipt), _, _)) => receipt.wait().await.map(drop),
                    Some((None, _, _)) => Ok(()),
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                biased;
                durable = oldest => Event::Durable(durable),
                read = from_client.read(&mut client_buf), if client_open && !self.to_server.behind() => Event::Client(read.unwrap_or(0)),
                read = from_server.read(&mut server_buf), if !self.to_client.behind() => Event::Server(read.unwrap_or(0)),
                () = self.to_server.written.notified(), if self.to_server.behind() => Event::Written,
                () = self.to_client.written.notified(), if self.to_client.behind() => Event::Written,
            };
            match event {
                Event::Durable(durable) => {
                    durable?;
                    if let Some((_, toward, bytes)) = pending.pop_front() {
                        self.forward(toward, bytes)?;
                    }
                }
                Event::Written => {}
                Event::Client(0) => {
                    client_open = false;
                    self.drain(&mut pending).await?;
                    self.to_server.end();
                }
                Event::Client(n) => {
                    client_packets.push(&client_buf[..n]);
                    while let Some(packet) = self
                        .cut(&mut client_packets, Direction::ClientToTarget)
                        .await?
                    {
                        self.client_packet(packet, &mut pending).await?;
                    }
                }
                Event::Server(0) => break,
                Event::Server(n) => {
                    server_packets.push(&server_buf[..n]);
                    while let Some(packet) = self
                        .cut(&mut server_packets, Direction::TargetToClient)
                        .await?
                    {
                        self.server_packet(packet, &mut pending).await?;
                    }
                }
            }
        }
        self.drain(&mut pending).await
    }

    /// The next whole packet; one that cannot be an SFTP packet ends the session, recorded
    /// as refused by the gateway.
    async fn cut(
        &mut self,
        packets: &mut Packets,
        direction: Direction,
    ) -> Result<Option<Vec<u8>>, End> {
        match packets.next_packet() {
            Ok(packet) => Ok(packet),
            Err(e) => Err(self.malformed(direction, &e.to_string()).await),
        }
    }

    async fn malformed(&mut self, direction: Direction, why: &str) -> End {
        let decision = self.core.refuse(direction, Content::Bytes(Vec::new()), why);
        if let Err(e) = self.core.record_frame(direction, &decision).await {
            return e.into();
        }
        match direction {
            Direction::ClientToTarget => End::Client(why.to_string()),
            Direction::TargetToClient => End::Target(why.to_string()),
        }
    }

    /// A client's packet: judged when it names a path, its file data recorded, then queued.
    async fn client_packet(
        &mut self,
        packet: Vec<u8>,
        pending: &mut VecDeque<Queued>,
    ) -> Result<(), End> {
        let request = match sftp::request(&packet) {
            Ok(request) => request,
            Err(e) => {
                return Err(self
                    .malformed(Direction::ClientToTarget, &e.to_string())
                    .await);
            }
        };
        if let (Some(statement), Some(id)) = (request.statement(), request.id()) {
            // What came before goes first, so a review never holds back an earlier answer.
            self.drain(pending).await?;
            if let Err(why) = self.judge(statement).await? {
                pending.push_back((None, Toward::Client, sftp::permission_denied(id, &why)));
                return Ok(());
            }
        }
        let receipt = match &request {
            Packet::Close { handle, .. } => match self.transfers.close(handle) {
                Some(done) => {
                    let meta = json!({"path": done.path, "direction": done.direction, "bytes": done.bytes, "sha256": done.sha256});
                    let seq = self.core.seq(Direction::ClientToTarget);
                    Some(
                        self.core
                            .submit_event(kinds::FILE_TRANSFER, seq, &meta, Vec::new())
                            .await?,
                    )
                }
                None => None,
            },
            Packet::Write { data, .. } => match self.transfers.request(&request) {
                Some(moved) => Some(
                    self.record_data(Direction::ClientToTarget, moved, data)
                        .await?,
                ),
                None => None,
            },
            _ => {
                self.transfers.request(&request);
                None
            }
        };
        pending.push_back((receipt, Toward::Server, sftp::framed(&packet)));
        Ok(())
    }

    /// A server's packet: file data recorded, then queued.
    async fn server_packet(
        &mut self,
        packet: Vec<u8>,
        pending: &mut VecDeque<Queued>,
    ) -> Result<(), End> {
        let reply = match sftp::reply(&packet) {
            Ok(reply) => reply,
            Err(e) => {
                return Err(self
                    .malformed(Direction::TargetToClient, &e.to_string())
                    .await);
            }
        };
        let receipt = match (self.transfers.reply(&reply), &reply) {
            (Some(moved), sftp::Reply::Data { data, .. }) => Some(
                self.record_data(Direction::TargetToClient, moved, data)
                    .await?,
            ),
            _ => None,
        };
        pending.push_back((receipt, Toward::Client, sftp::framed(&packet)));
        Ok(())
    }

    async fn record_data(
        &mut self,
        direction: Direction,
        moved: sftp::Moved,
        data: &[u8],
    ) -> Result<Receipt, End> {
        let dir = match direction {
            Direction::ClientToTarget => "in",
            Direction::TargetToClient => "out",
        };
        let meta =
            json!({"path": moved.path, "dir": dir, "offset": moved.offset, "bytes": data.len()});
        let payload = if moved.keep {
            data.to_vec()
        } else {
            Vec::new()
        };
        let seq = self.core.seq(direction);
        Ok(self
            .core
            .submit_event(kinds::FILE_DATA, seq, &meta, payload)
            .await?)
    }

    /// A request naming a path crosses the chain as a statement frame (a held one waits for
    /// its review) and is recorded; `Err` says why it may not go on.
    async fn judge(&mut self, text: String) -> Result<Result<(), String>, End> {
        let statement = Content::Statement(Statement {
            text,
            params: vec![],
        });
        let mut decision = self.core.filter(Direction::ClientToTarget, statement);
        if let Outcome::Hold { reasons } = &decision.outcome {
            let mut pending = self
                .core
                .request_review(&decision, &reasons.join("; "))
                .await?;
            self.notice(&pending.notice());
            let review = pending.decided().await;
            decision = self.core.reviewed(decision, &review);
        }
        self.core
            .record_frame(Direction::ClientToTarget, &decision)
            .await?;
        Ok(match decision.outcome {
            Outcome::Pass => Ok(()),
            Outcome::Deny { plugin, reason } => {
                let why = format!("refused by {plugin}: {reason}");
                self.notice(&format!("sluice: {why}"));
                Err(why)
            }
            Outcome::Hold { .. } => Err("held".into()),
        })
    }

    /// On the client's standard error (the client may already have gone).
    fn notice(&mut self, text: &str) {
        self.notices.send(format!("{text}\n").into_bytes());
    }

    fn forward(&mut self, toward: Toward, bytes: Vec<u8>) -> Result<(), End> {
        let sent = match toward {
            Toward::Client => self.to_client.send(bytes),
            Toward::Server => self.to_server.send(bytes),
        };
        match (sent, toward) {
            (true, _) => Ok(()),
            (false, Toward::Client) => Err(End::Client("the client went away".into())),
            (false, Toward::Server) => Err(End::Target("the server went away".into())),
        }
    }

    async fn forward_when_durable(&mut self, queued: Option<Queued>) -> Result<(), End> {
        if let Some((receipt, toward, bytes)) = queued {
            if let Some(receipt) = receipt {
                receipt.durable().await?;
            }
            self.forward(toward, bytes)?;
        }
        Ok(())
    }

    /// Forwards everything queued, in order.
    async fn drain(&mut self, pending: &mut VecDeque<Queued>) -> Result<(), End> {
        while let Some(next) = pending.pop_front() {
            self.forward_when_durable(Some(next)).await?;
        }
        Ok(())
    }
}
