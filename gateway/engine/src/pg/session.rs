//! The frame path of a PostgreSQL session, in both directions:
//!
//! ```text
//! psql --> Query / Execute --> [statement frame] --> [chain] --> [record] --> server
//! psql <-- RowDescription, DataRow, CopyData <-- [record] <-- [chain] <-- [row frames] <-- server
//! ```
//!
//! Every other message passes through unchanged, in order. To know what each server message
//! answers (which columns a `DataRow` has, in which formats), the session keeps the queue of
//! what the client asked for ([`Expect`]), as the server answers in order.
//!
//! A refused statement never reaches the server as sent: a simple query is replaced by a
//! statement that raises the refusal as an error; an extended-protocol batch is cut at the
//! refused `Execute` and the same error is raised in its place at the `Sync`. Either way the
//! client gets a proper `ErrorResponse` at the right place in the stream, the server's
//! transaction state follows, and the session stays usable.

use std::collections::{HashMap, VecDeque};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::message::{self, BUFFER, Inbound, Message};
use crate::chain::{Decision, Outcome};
use crate::config::PostgresConnection;
use crate::session::{Core, RowBatch};
use sluice_core::frame::{CellFormat, Column, Content, Direction, Statement};
use sluice_record::{Receipt, RecordFailed};

/// Why a session ended; told to the client as a FATAL error.
#[derive(Debug, thiserror::Error)]
pub enum End {
    #[error("{0}")]
    Record(#[from] RecordFailed),
    #[error("the client's connection: {0}")]
    Client(message::Error),
    #[error("the database connection was lost: {0}")]
    Upstream(message::Error),
    #[error("{0}")]
    Ended(String),
}

/// What the client asked for, in order; the server's answers are matched against it.
#[derive(Debug)]
enum Expect {
    /// A simple query: everything up to `ReadyForQuery`.
    Query,
    Parse {
        swallow: bool,
    },
    Bind {
        swallow: bool,
    },
    DescribeStatement(String),
    DescribePortal(String),
    Execute(String),
    Close,
    Sync,
}

/// A prepared statement as far as the session knows it.
#[derive(Default, Clone)]
struct Prepared {
    text: String,
    columns: Vec<Column>,
}

/// A bound portal: its statement, parameters and result formats.
#[derive(Default, Clone)]
struct Portal {
    statement: String,
    params: Vec<Option<Vec<u8>>>,
    formats: Vec<i16>,
    /// From a `Describe` of the portal, when the client asked.
    columns: Option<Vec<Column>>,
}

/// What the rows now arriving look like.
struct Rows {
    /// Inside a `COPY TO STDOUT`, in this format (text: rows are tab-separated lines).
    copy: Option<CellFormat>,
    /// The result's columns as they crossed the chain, and the message that announced them
    /// (`RowDescription`, `CopyOutResponse`; none when the statement was described before):
    /// recorded with the first batch of rows (alone when no row comes) and sent only then.
    header: Option<(Decision, Option<Message>)>,
}

/// Table names by OID, shared by a connection's sessions.
pub type Tables = std::sync::Arc<std::sync::Mutex<HashMap<u32, String>>>;

pub struct Session<C, U> {
    pub core: Core,
    /// For looking up the tables result columns come from.
    conn: PostgresConnection,
    tables: Tables,
    client_in: Inbound<tokio::io::ReadHalf<C>>,
    client_out: tokio::io::WriteHalf<C>,
    upstream_in: Inbound<tokio::io::ReadHalf<U>>,
    upstream_out: tokio::io::WriteHalf<U>,
    /// Messages for the server, written together once the client's pipeline is drained.
    to_upstream: Vec<u8>,
    /// Messages for the client, written together once the server's answers are drained.
    to_client: Vec<u8>,
    expect: VecDeque<Expect>,
    statements: HashMap<String, Prepared>,
    portals: HashMap<String, Portal>,
    result: Option<Rows>,
    /// Client messages are dropped until `Sync`: an `Execute` of this batch was refused.
    refused: Option<String>,
    /// The server's answer to this batch is cut short: a result row was refused.
    cut: bool,
    /// COPY data was refused (the server was sent CopyFail): the client's end of the data
    /// is not passed on.
    refused_copy: bool,
}

/// Messages read ahead per direction: bounds memory whatever the size of a result.
const QUEUE: usize = 256;
const SQLSTATE_REFUSED: &str = "42501";

impl<
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    U: AsyncRead + AsyncWrite + Send + Unpin + 'static,
> Session<C, U>
{
    pub fn new(
        core: Core,
        client: C,
        upstream: U,
        conn: PostgresConnection,
        tables: Tables,
    ) -> Self {
        let (client_in, client_out) = tokio::io::split(client);
        let (upstream_in, upstream_out) = tokio::io::split(upstream);
        Session {
            core,
            conn,
            tables,
            client_in: Inbound::new(client_in),
            client_out,
            upstream_in: Inbound::new(upstream_in),
            upstream_out,
            to_upstream: Vec::new(),
            to_client: Vec::new(),
            expect: VecDeque::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            result: None,
            refused: None,
            cut: false,
            refused_copy: false,
        }
    }

    /// Relays until either side ends; `Ok` when the client said goodbye. Everything already
    /// read is handled before waiting again, so pipelined messages leave together.
    pub async fn run(&mut self) -> Result<(), End> {
        loop {
            while let Some(m) = self.client_in.next_message().map_err(End::Client)? {
                if m.tag == b'X' {
                    return Ok(());
                }
                self.client_message(m).await?;
                if self.to_upstream.len() >= BUFFER {
                    self.send_upstream().await?;
                }
            }
            self.send_upstream().await?;
            while let Some(m) = self.upstream_in.next_message().map_err(End::Upstream)? {
                self.server_messages(m).await?;
                if self.to_client.len() >= BUFFER {
                    self.send_client().await?;
                }
            }
            self.send_client().await?;
            tokio::select! {
                read = self.client_in.fill() => match read {
                    Err(message::Error::Closed) => return Ok(()),
                    other => other.map_err(End::Client)?,
                },
                read = self.upstream_in.fill() => read.map_err(End::Upstream)?,
            }
        }
    }

    /// Tells the client why the session ends, as PostgreSQL would (a FATAL error).
    pub async fn fatal(&mut self, end: &End) {
        let code = match end {
            End::Upstream(_) => "08006",
            End::Ended(_) => "57P01",
            _ => "58000",
        };
        self.queue_client(&message::error(
            b'E',
            "FATAL",
            code,
            &format!("sluice: {end}"),
        ));
        let _ = self.send_client().await;
        let _ = self.client_out.shutdown().await;
    }

    /// Sends `messages` to the client at once.
    pub async fn greet(&mut self, messages: &[Message]) -> Result<(), End> {
        for m in messages {
            self.queue_client(m);
        }
        self.send_client().await
    }

    async fn send_client(&mut self) -> Result<(), End> {
        message::drain(&mut self.client_out, &mut self.to_client)
            .await
            .map_err(End::Client)
    }

    fn queue_client(&mut self, m: &Message) {
        m.encode_into(&mut self.to_client);
    }

    async fn send_upstream(&mut self) -> Result<(), End> {
        message::drain(&mut self.upstream_out, &mut self.to_upstream)
            .await
            .map_err(End::Upstream)
    }

    fn forward(&mut self, m: &Message) {
        m.encode_into(&mut self.to_upstream);
    }

    /// One client message: statements cross the chain; the rest passes in order.
    async fn client_message(&mut self, m: Message) -> Result<(), End> {
        let malformed = |e: message::Error| End::Client(e);
        if self.refused.is_some() && m.tag != b'S' {
            return Ok(()); // the rest of a refused batch, up to its Sync
        }
        let mut body = m.reader();
        match m.tag {
            b'Q' => {
                let text = body.cstr().map_err(malformed)?;
                let statement = Statement {
                    text,
                    params: vec![],
                };
                self.expect.push_back(Expect::Query);
                match self.statement(statement, true).await? {
                    // The query as the client sent it, when that is what the chain passed
                    // (byte for byte: text that was not UTF-8 crossed the chain repaired).
                    Ok(text) if m.body.strip_suffix(&[0]) == Some(text.as_bytes()) => {
                        self.forward(&m)
                    }
                    Ok(text) => self.forward(&message::query(&text)),
                    Err(refusal) => self.forward(&message::query(&raise(&refusal))),
                }
            }
            b'P' => {
                let name = body.cstr().map_err(malformed)?;
                let text = body.cstr().map_err(malformed)?;
                self.statements.insert(
                    name.clone(),
                    Prepared {
                        text,
                        columns: vec![],
                    },
                );
                self.expect.push_back(Expect::Parse { swallow: false });
                self.forward(&m);
            }
            b'B' => {
                let bind = message::bind(&mut body).map_err(malformed)?;
                self.expect.push_back(Expect::Bind { swallow: false });
                let portal = Portal {
                    statement: bind.statement,
                    params: bind.params,
                    formats: bind.formats,
                    columns: None,
                };
                self.portals.insert(bind.portal, portal);
                self.forward(&m);
            }
            b'D' => {
                let kind = body.u8().map_err(malformed)?;
                let name = body.cstr().map_err(malformed)?;
                self.expect.push_back(match kind {
                    b'S' => Expect::DescribeStatement(name),
                    _ => Expect::DescribePortal(name),
                });
                self.forward(&m);
            }
            b'E' => {
                let portal_name = body.cstr().map_err(malformed)?;
                let portal = self.portals.get(&portal_name).cloned().unwrap_or_default();
                let text = self
                    .statements
                    .get(&portal.statement)
                    .map(|s| s.text.clone())
                    .unwrap_or_default();
                let statement = Statement {
                    text,
                    params: portal.params,
                };
                // The server parsed and bound the statement as sent already: a plugin's
                // rewrite cannot reach it here, so a rewrite is a refusal, never dropped.
                match self.statement(statement, false).await? {
                    Ok(_) => {
                        self.expect.push_back(Expect::Execute(portal_name));
                        self.forward(&m);
                    }
                    Err(refusal) => self.refused = Some(refusal),
                }
            }
            b'C' => {
                self.expect.push_back(Expect::Close);
                self.forward(&m);
            }
            b'S' => {
                if let Some(refusal) = self.refused.take() {
                    // Raise the refusal where the refused Execute was: the server answers
                    // it with an error, then discards up to this Sync, as for its own errors.
                    let mut parse = Vec::new();
                    message::put_cstr(&mut parse, "");
                    message::put_cstr(&mut parse, &raise(&refusal));
                    parse.extend_from_slice(&0i16.to_be_bytes());
                    self.forward(&Message::new(b'P', parse));
                    self.forward(&Message::new(b'B', vec![0, 0, 0, 0, 0, 0, 0, 0]));
                    self.forward(&Message::new(b'E', vec![0, 0, 0, 0, 0]));
                    self.expect.push_back(Expect::Parse { swallow: true });
                    self.expect.push_back(Expect::Bind { swallow: true });
                    self.expect.push_back(Expect::Execute(String::new()));
                }
                self.expect.push_back(Expect::Sync);
                self.forward(&m);
            }
            b'd' => {
                // COPY FROM STDIN: the data crosses the chain like any bytes (a masker keeps
                // input intact for the server and masks only what is recorded).
                let decision = self
                    .core
                    .filter(Direction::ClientToTarget, Content::Bytes(m.body.clone()));
                self.core
                    .record_frame(Direction::ClientToTarget, &decision)
                    .await?;
                match (&decision.outcome, decision.forward) {
                    (Outcome::Pass, Content::Bytes(bytes)) => {
                        if !bytes.is_empty() {
                            self.forward(&Message::new(b'd', bytes));
                        }
                    }
                    (outcome, _) => {
                        let reason = refusal(outcome);
                        let mut body = Vec::new();
                        message::put_cstr(&mut body, &reason);
                        self.forward(&Message::new(b'f', body)); // CopyFail
                        self.refused_copy = true;
                    }
                }
            }
            b'c' | b'f' => {
                // The end of COPY data: what plugins held back is released (and recorded)
                // before the server hears that the data is complete.
                for content in self.core.flush(Direction::ClientToTarget).await? {
                    if let (b'c', false, Content::Bytes(bytes)) =
                        (m.tag, self.refused_copy, content)
                        && !bytes.is_empty()
                    {
                        self.forward(&Message::new(b'd', bytes));
                    }
                }
                if !std::mem::take(&mut self.refused_copy) {
                    self.forward(&m);
                }
            }
            b'H' => self.forward(&m), // Flush: carries nothing
            b'F' => {
                // The fast-path function call (psql's \lo_import, \lo_export) carries no
                // statement a gate can read: refused and recorded, answered like a refused
                // statement (an error, then ready for the next query).
                let (oid, params) = message::function_call(&m).map_err(malformed)?;
                let statement = Statement {
                    text: format!("-- fast-path function call: function OID {oid}"),
                    params,
                };
                let reason = "sluice: fast-path function calls are refused (a gate cannot read them); call the function in SQL, e.g. SELECT lo_import(...)";
                let decision = self.core.refuse(
                    Direction::ClientToTarget,
                    Content::Statement(statement),
                    reason,
                );
                self.core
                    .record_frame(Direction::ClientToTarget, &decision)
                    .await?;
                self.expect.push_back(Expect::Query);
                self.forward(&message::query(&raise(reason)));
            }
            tag => {
                return Err(End::Client(message::Error::Malformed(format!(
                    "a message of type `{}` is not one a client sends in a session",
                    tag as char
                ))));
            }
        }
        Ok(())
    }

    /// A statement through the chain and into the record: `Ok(text to run)` or
    /// `Err(refusal)`. A hold tells the client it waits.
    async fn statement(
        &mut self,
        statement: Statement,
        rewritable: bool,
    ) -> Result<Result<String, String>, End> {
        let mut decision = self
            .core
            .filter(Direction::ClientToTarget, Content::Statement(statement));
        if !rewritable && decision.outcome == Outcome::Pass && decision.replaced {
            decision.outcome = Outcome::Deny {
                plugin: "sluice".into(),
                reason: "a plugin rewrote this statement, which the extended query protocol cannot carry (the server has parsed it as sent); send it as a simple query".into(),
            };
        }
        if let Outcome::Hold { reasons } = &decision.outcome {
            let mut pending = self
                .core
                .request_review(&decision, &reasons.join("; "))
                .await?;
            self.queue_client(&message::error(b'N', "NOTICE", "00000", &pending.notice()));
            self.send_client().await?;
            self.send_upstream().await?;
            // Both sides are watched while the statement waits: if the server ends the
            // connection (an idle timeout, a restart) or the client goes away (Ctrl-C, a
            // killed program), the review ends with the session at once, so an approval
            // can never run the statement for nobody.
            let review = loop {
                tokio::select! {
                    review = pending.decided() => break review,
                    // (Up to a bound: what either side sends meanwhile waits in memory.)
                    read = self.upstream_in.fill(), if self.upstream_in.buffered() < 16 * BUFFER => {
                        read.map_err(End::Upstream)?
                    }
                    read = self.client_in.fill(), if self.client_in.buffered() < 16 * BUFFER => {
                        read.map_err(End::Client)?
                    }
                }
            };
            decision = self.core.reviewed(decision, &review);
        }
        self.core
            .record_frame(Direction::ClientToTarget, &decision)
            .await?;
        let refusal = refusal(&decision.outcome);
        Ok(match (decision.outcome, decision.forward) {
            (Outcome::Pass, Content::Statement(s)) => Ok(s.text),
            _ => Err(refusal),
        })
    }

    /// Server messages, matched against what the client asked.
    async fn server_messages(&mut self, mut m: Message) -> Result<(), End> {
        // Rows are taken in batches; the message that ends a batch comes back to be handled.
        while let Some(next) = self.server_message(m).await? {
            m = next;
        }
        Ok(())
    }

    async fn server_message(&mut self, m: Message) -> Result<Option<Message>, End> {
        let malformed = |e: message::Error| End::Upstream(e);
        if !self.is_row(&m) {
            self.result_without_rows().await?;
        }
        match m.tag {
            b'1' => {
                if let Some(Expect::Parse { swallow, .. }) = self.expect.pop_front()
                    && swallow
                {
                    return Ok(None);
                }
            }
            b'2' => {
                if let Some(Expect::Bind { swallow }) = self.expect.pop_front()
                    && swallow
                {
                    return Ok(None);
                }
            }
            b'3' => {
                self.expect.pop_front();
            }
            b't' => {} // ParameterDescription: part of a statement's Describe
            b'n' => {
                if matches!(
                    self.expect.front(),
                    Some(Expect::DescribeStatement(_) | Expect::DescribePortal(_))
                ) {
                    self.expect.pop_front();
                }
            }
            b'T' => {
                let columns = message::row_description(&m).map_err(malformed)?;
                match self.expect.front() {
                    Some(Expect::DescribeStatement(name)) => {
                        let name = name.clone();
                        self.expect.pop_front();
                        if let Some(s) = self.statements.get_mut(&name) {
                            s.columns = columns;
                        }
                    }
                    Some(Expect::DescribePortal(name)) => {
                        let name = name.clone();
                        self.expect.pop_front();
                        if let Some(p) = self.portals.get_mut(&name) {
                            p.columns = Some(columns);
                        }
                    }
                    _ => {
                        self.begin_result(columns, None, Some(m)).await?;
                        return Ok(None);
                    }
                }
            }
            b'D' => {
                if self.result.is_none() {
                    let columns = self.execute_columns();
                    self.begin_result(columns, None, None).await?;
                }
                return self.rows(m).await;
            }
            b'H' => {
                // CopyOutResponse: a text COPY's lines become rows.
                let mut body = m.reader();
                let format = body.u8().map_err(malformed)?;
                let n = body.count().map_err(malformed)?;
                let format = if format == 0 {
                    CellFormat::Text
                } else {
                    CellFormat::Binary
                };
                let columns = (1..=n)
                    .map(|i| Column {
                        name: format!("column{i}"),
                        table: None,
                        table_oid: 0,
                        type_oid: 0,
                        format,
                    })
                    .collect();
                self.begin_result(columns, Some(format), Some(m)).await?;
                return Ok(None);
            }
            b'd' if self.result.as_ref().is_some_and(|r| r.copy.is_some()) => {
                return self.rows(m).await;
            }
            b'C' | b'I' | b's' => {
                self.result = None;
                if matches!(self.expect.front(), Some(Expect::Execute(_))) {
                    self.expect.pop_front();
                }
            }
            b'E' => {
                self.result = None;
                // After an error the server skips to the Sync; so does the queue.
                while let Some(front) = self.expect.front() {
                    if matches!(front, Expect::Sync | Expect::Query) {
                        break;
                    }
                    self.expect.pop_front();
                }
                if let Some(clean) = own_refusal(&m) {
                    self.queue_client(&clean);
                    return Ok(None);
                }
                if !self.cut {
                    let masked = self.notice(&m).await?;
                    self.queue_client(&masked);
                }
                return Ok(None);
            }
            b'N' => {
                let masked = self.notice(&m).await?;
                self.queue_client(&masked);
                return Ok(None);
            }
            b'Z' => {
                self.result = None;
                self.cut = false;
                self.expect.pop_front();
            }
            _ => {}
        }
        if self.cut && m.tag != b'Z' {
            return Ok(None); // the rest of a response whose row was refused
        }
        self.queue_client(&m);
        Ok(None)
    }

    /// A server error or notice: each field that carries data crosses the chain as an output
    /// line (a masker masks it like any output) and is recorded; the client gets the fields
    /// as the chain passed them. A refused field replaces the data-bearing fields with the
    /// refusal.
    async fn notice(&mut self, m: &Message) -> Result<Message, End> {
        let out = Direction::TargetToClient;
        let fields = message::fields(m).map_err(End::Upstream)?;
        let mut kept = Vec::with_capacity(fields.len());
        let mut refused = None;
        for (tag, value) in fields {
            if !DATA_FIELDS.contains(&tag) {
                kept.push((tag, value));
                continue;
            }
            if refused.is_some() {
                continue;
            }
            let decision = self.core.filter(out, Content::Line(value));
            self.core.record_frame(out, &decision).await?;
            match (&decision.outcome, decision.forward) {
                (Outcome::Pass, Content::Line(text)) => kept.push((tag, text)),
                (outcome, _) => refused = Some(refusal(outcome)),
            }
        }
        if let Some(reason) = refused {
            kept.retain(|(tag, _)| !DATA_FIELDS.contains(tag));
            kept.push((b'M', format!("{reason} (in place of the server's message)")));
        }
        let mut body = Vec::new();
        for (tag, value) in kept {
            body.push(tag);
            // A NUL would end the field early: a plugin's text never carries one through.
            message::put_cstr(&mut body, &value.replace('\0', ""));
        }
        body.push(0);
        Ok(Message::new(m.tag, body))
    }

    /// The columns of an `Execute` whose portal was not described: the statement's, in the
    /// formats its `Bind` asked for.
    fn execute_columns(&self) -> Vec<Column> {
        let Some(Expect::Execute(portal)) = self.expect.front() else {
            return vec![];
        };
        let Some(portal) = self.portals.get(portal) else {
            return vec![];
        };
        if let Some(columns) = &portal.columns {
            return columns.clone();
        }
        let mut columns = self
            .statements
            .get(&portal.statement)
            .map(|s| s.columns.clone())
            .unwrap_or_default();
        for (i, c) in columns.iter_mut().enumerate() {
            let code = match portal.formats.len() {
                0 => 0,
                1 => portal.formats[0],
                _ => portal.formats.get(i).copied().unwrap_or(1),
            };
            c.format = if code == 0 {
                CellFormat::Text
            } else {
                CellFormat::Binary
            };
        }
        columns
    }

    /// A result begins, announced by `message`: its columns cross the chain (a masker learns
    /// its column rules) and wait to be recorded with the first rows. Columns the chain
    /// refuses end the response with an error.
    async fn begin_result(
        &mut self,
        mut columns: Vec<Column>,
        copy: Option<CellFormat>,
        message: Option<Message>,
    ) -> Result<(), End> {
        self.name_tables(&mut columns).await;
        let decision = self
            .core
            .filter(Direction::TargetToClient, Content::Columns(columns));
        let header = if decision.outcome == Outcome::Pass {
            Some((decision, message))
        } else {
            self.core
                .record_frame(Direction::TargetToClient, &decision)
                .await?;
            let reason = format!("{} (a result's columns)", refusal(&decision.outcome));
            self.queue_client(&message::error(b'E', "ERROR", SQLSTATE_REFUSED, &reason));
            self.cut = true;
            None
        };
        self.result = Some(Rows { copy, header });
        Ok(())
    }

    /// A result that ends before any row: its columns are recorded alone, then sent.
    async fn result_without_rows(&mut self) -> Result<(), End> {
        let Some((decision, message)) = self.result.as_mut().and_then(|r| r.header.take()) else {
            return Ok(());
        };
        self.core
            .record_frame(Direction::TargetToClient, &decision)
            .await?;
        if let Some(m) = message {
            self.queue_client(&m);
        }
        Ok(())
    }

    /// Fills in `schema.table` for columns that come from a table, so that per-column rules
    /// (`users.ssn`) apply. A lookup that fails leaves the names out; rules on bare column
    /// names and the detectors still apply.
    async fn name_tables(&mut self, columns: &mut [Column]) {
        let tables = self.tables.clone();
        let lock = || tables.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing: Vec<u32> = {
            let known = lock();
            columns
                .iter()
                .map(|c| c.table_oid)
                .filter(|oid| *oid != 0 && !known.contains_key(oid))
                .collect()
        };
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let reach = crate::agent::Reach::of(&self.core.ctx.agents, self.conn.agent.as_ref());
            match super::upstream::table_names(&self.conn, &reach, &missing).await {
                Ok(names) => lock().extend(names),
                Err(e) => tracing::warn!(error = %e, "cannot look up table names"),
            }
        }
        let known = lock();
        for c in columns {
            c.table = known.get(&c.table_oid).cloned();
        }
    }

    /// Result rows: this one and every further one already read cross the chain and are
    /// recorded as one event (with the result's columns, before its first rows), then go to
    /// the client. Returns the first message that is not a row.
    async fn rows(&mut self, first: Message) -> Result<Option<Message>, End> {
        let out = Direction::TargetToClient;
        let header = self.result.as_mut().and_then(|r| r.header.take());
        let mut batch = RowBatch::default();
        let mut refused: Option<Decision> = None;
        let mut ready = Vec::new();
        let mut m = first;
        let after = loop {
            if !self.cut {
                let cells = self.row(&m).map_err(End::Upstream)?;
                let decision = self.core.filter(out, Content::Row(cells));
                let binary_copy = m.tag == b'd'
                    && self.result.as_ref().and_then(|r| r.copy) != Some(CellFormat::Text);
                match (&decision.outcome, &decision.forward) {
                    // A binary COPY chunk cannot become NULL: that is a refusal.
                    (Outcome::Pass, Content::Row(cells))
                        if binary_copy && cells.first().is_none_or(Option::is_none) =>
                    {
                        let text = "sluice: binary COPY data held a value to mask; use COPY in text format";
                        ready.push(message::error(b'E', "ERROR", SQLSTATE_REFUSED, text));
                        // Recorded as what it is: refused, not passed.
                        refused = Some(Decision {
                            outcome: Outcome::Deny {
                                plugin: "sluice".into(),
                                reason: text.into(),
                            },
                            ..decision
                        });
                        self.cut = true;
                    }
                    (Outcome::Pass, Content::Row(cells)) => {
                        batch.push(self.core.seq(out), &decision);
                        // A row no plugin changed goes on as the server sent it.
                        ready.push(if decision.replaced {
                            self.encode_row(m.tag, cells)
                        } else {
                            m
                        });
                    }
                    (outcome, _) => {
                        // A refused row ends its response with an error.
                        let reason = format!("{} (a result row)", refusal(outcome));
                        ready.push(message::error(b'E', "ERROR", SQLSTATE_REFUSED, &reason));
                        refused = Some(decision);
                        self.cut = true;
                    }
                }
            }
            // Rows already read join this event, up to a batch; anything else ends it.
            if ready.len() >= QUEUE {
                break None;
            }
            match self.upstream_in.next_message().map_err(End::Upstream)? {
                Some(next) if self.is_row(&next) => m = next,
                other => break other,
            }
        };
        let columns = header.as_ref().map(|(decision, _)| decision);
        let mut last: Option<Receipt> = None;
        if !batch.is_empty() {
            last = Some(self.core.submit_rows(columns, batch).await?);
        } else if let Some(columns) = columns {
            last = Some(self.core.submit_frame(out, columns).await?);
        }
        if let Some(refused) = &refused {
            last = Some(self.core.submit_frame(out, refused).await?);
        }
        if let Some(receipt) = last {
            receipt.durable().await?;
        }
        if let Some((_, Some(message))) = header {
            self.queue_client(&message);
        }
        for m in &ready {
            self.queue_client(m);
        }
        Ok(after)
    }

    fn is_row(&self, m: &Message) -> bool {
        m.tag == b'D' || (m.tag == b'd' && self.result.as_ref().is_some_and(|r| r.copy.is_some()))
    }

    /// The cells of a `DataRow`, or of a text `COPY` line.
    fn row(&self, m: &Message) -> Result<Vec<Option<Vec<u8>>>, message::Error> {
        if m.tag == b'd' {
            let copy = self.result.as_ref().and_then(|r| r.copy);
            return Ok(match copy {
                Some(CellFormat::Text) => message::copy_text_cells(&m.body),
                _ => vec![Some(m.body.clone())],
            });
        }
        message::data_row_cells(m)
    }

    fn encode_row(&self, tag: u8, cells: &[Option<Vec<u8>>]) -> Message {
        if tag == b'd' {
            if self.result.as_ref().and_then(|r| r.copy) == Some(CellFormat::Text) {
                return Message::new(b'd', message::copy_text_line(cells));
            }
            return Message::new(b'd', cells.first().cloned().flatten().unwrap_or_default());
        }
        message::data_row(cells)
    }
}

/// What the client is told of a frame the chain did not pass.
fn refusal(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Deny { plugin, reason } => format!("sluice: refused by {plugin}: {reason}"),
        Outcome::Hold { reasons } => format!("sluice: held: {}", reasons.join("; ")),
        Outcome::Pass => "sluice: refused".into(),
    }
}

/// The server's answer to a refusal the gateway raised in place of a statement ([`raise`]),
/// cut back to what the gateway means: without the `CONTEXT` (the `DO` block that raised
/// it) the server adds, which would only puzzle the client.
fn own_refusal(m: &Message) -> Option<Message> {
    let fields = message::fields(m).ok()?;
    let field = |tag: u8| {
        fields
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| v.as_str())
    };
    let text = field(b'M').filter(|t| t.starts_with("sluice: "))?;
    (field(b'C') == Some(SQLSTATE_REFUSED))
        .then(|| message::error(b'E', "ERROR", SQLSTATE_REFUSED, text))
}

/// The fields of a server error or notice that carry text from the data (a duplicate key's
/// value, a failing row, a query); the others (severity, code, position, names of schema
/// objects, source location) carry none.
const DATA_FIELDS: [u8; 5] = [b'M', b'D', b'H', b'W', b'q'];

/// A statement that fails with `message`, for the server to answer in place of a refused one.
fn raise(message: &str) -> String {
    let mut tag = "m".to_string();
    while message.contains(&format!("${tag}$")) {
        tag.push('m');
    }
    format!(
        "DO $sluice$ BEGIN RAISE EXCEPTION USING ERRCODE = '{SQLSTATE_REFUSED}', MESSAGE = ${tag}${message}${tag}$; END $sluice$"
    )
}
