//! Sessions: what every protocol's frame path shares.
//!
//! ```text
//! client --> [frame] --> [filter chain] --> [record] --> [forward] --> target
//! client <-- [forward] <-- [record] <-- [filter chain] <-- [frame] <-- target
//! ```
//!
//! A protocol (`exec.rs` for programs, `crate::pg` for PostgreSQL) turns its traffic into
//! frames and hands each to [`Core`]: `filter` runs the chain, `record_frame` records the
//! decision, and only then does the protocol forward what the decision allows. There is no
//! other path. In strict mode `record_frame` returns only when the commit that holds the
//! frame is durable, and a failed commit ends the session (fails closed).

pub mod exec;
pub mod mcp;
pub mod sftp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;

use crate::chain::{Call, Chain, Decision, Outcome};
use crate::config::RecordMode;
use crate::review::{Kind, Pending, Review, Reviews, Status};
use sluice_core::frame::{Content, Direction, Frame, Identity, SessionInfo};
use sluice_plugin_host::LoadedPlugin;
use sluice_record::{NewEvent, Receipt, RecordFailed, Recorder};

pub use exec::{MAX_SCRIPT_BYTES, Mode, run};

/// Quiet time after which plugins release what they hold back, in sessions where a person
/// waits on each byte (a terminal, a TCP tunnel): a plugin holding a partial line (the
/// masker, which waits to see whether a value continues) must not make typing echo late.
pub const INTERACTIVE_FLUSH: Duration = Duration::from_millis(20);

/// What a session needs from the gateway.
pub struct Context {
    pub recorder: Recorder,
    pub record_mode: RecordMode,
    pub reviews: Arc<Reviews>,
    /// Who may do what (from the policy's `[roles]`).
    pub roles: Arc<crate::roles::Roles>,
    /// Live sessions, so auditors can list and end them.
    pub active: Mutex<HashMap<String, Active>>,
    /// The filter chains new sessions get; `sluice reload` replaces them whole.
    pub chains: std::sync::RwLock<Arc<Chains>>,
    /// Agents, for connections reached through them.
    pub agents: Arc<crate::agent::Agents>,
    /// This gateway's node name (recorded with each session it opens), when several
    /// gateways share one record; `None` on the embedded store.
    pub node: Option<String>,
    /// After this long without one-shot output, plugins are asked to release what they
    /// buffer, so output is never held back without bound (`gateway.flush_ms`).
    pub flush: std::time::Duration,
}

/// The plugins of each connection's chain, and the policy files they come from (recorded
/// with every session). Sessions keep the chain they opened with until they end.
#[derive(Clone, Debug, Default)]
pub struct Chains {
    pub plugins: std::collections::BTreeMap<String, Vec<LoadedPlugin>>,
    pub policy_files: Vec<serde_json::Value>,
}

impl Context {
    /// The chain a new session on `connection` gets, with the policy files it comes from.
    pub fn chain(&self, connection: &str) -> (Vec<LoadedPlugin>, Vec<serde_json::Value>) {
        let chains = self
            .chains
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (
            chains.plugins.get(connection).cloned().unwrap_or_default(),
            chains.policy_files.clone(),
        )
    }

    pub fn set_chains(&self, chains: Chains) {
        *self.chains.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(chains);
    }
}

/// A live session as `sluice sessions --active` shows it; `kill` ends it.
pub struct Active {
    pub subject: String,
    pub connection: String,
    pub started_ms: u64,
    kill: Option<oneshot::Sender<String>>,
}

impl Context {
    /// Ends a live session with `reason`; false when there is no such live session.
    pub fn kill(&self, id: &str, reason: String) -> bool {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        match active.get_mut(id).and_then(|a| a.kill.take()) {
            Some(kill) => kill.send(reason).is_ok(),
            None => false,
        }
    }

    /// (id, subject, connection, started) of every live session.
    pub fn live(&self) -> Vec<(String, String, String, u64)> {
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active
            .iter()
            .map(|(id, a)| {
                (
                    id.clone(),
                    a.subject.clone(),
                    a.connection.clone(),
                    a.started_ms,
                )
            })
            .collect()
    }
}

/// Who opens which connection, with what.
pub struct Opening {
    pub id: String,
    pub connection_name: String,
    /// `exec`, `postgres`, ...
    pub protocol: &'static str,
    pub plugins: Vec<LoadedPlugin>,
    /// The policy files in force, with their digests, for the record.
    pub policy: Vec<serde_json::Value>,
    pub identity: Identity,
    pub client: String,
    /// More for the session-open event (the exec mode, the database).
    pub meta: serde_json::Value,
    /// When just-in-time access to the connection ends (unix ms): the session ends then.
    pub access_until: Option<u64>,
}

/// One open session's chain, record and frame numbering.
pub struct Core {
    pub ctx: Arc<Context>,
    pub info: SessionInfo,
    chain: Chain,
    seq: [u64; 2],
    /// This session's `/metrics` labels for frames, by direction and outcome, made once.
    frame_labels: [[String; 3]; 2],
}

/// How the record and `/metrics` name a direction.
fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::ClientToTarget => "in",
        Direction::TargetToClient => "out",
    }
}

const OUTCOMES: [&str; 3] = ["pass", "hold", "deny"];

impl Core {
    /// Makes the chain (a plugin may refuse the session), records `session-open` and lists the
    /// session as live. The receiver fires when an auditor ends the session.
    pub async fn open(
        ctx: Arc<Context>,
        opening: Opening,
    ) -> Result<(Core, oneshot::Receiver<String>), String> {
        let info = SessionInfo {
            id: opening.id,
            connection: opening.connection_name,
            protocol: opening.protocol.into(),
            identity: opening.identity,
            started_at_ms: now_ms(),
        };
        let mut meta = json!({
            "subject": info.identity.subject,
            "name": info.identity.name,
            "groups": info.identity.groups,
            "connection": info.connection,
            "protocol": info.protocol,
            "client": opening.client,
            "policy": opening.policy,
            "node": ctx.node,
            "plugins": opening.plugins.iter().map(|p| json!({"name": p.spec().name, "sha256": hex::encode(p.digest())})).collect::<Vec<_>>(),
        });
        if let (Some(meta), serde_json::Value::Object(extra)) = (meta.as_object_mut(), opening.meta)
        {
            meta.extend(extra);
        }
        let chain = Chain::new(&opening.plugins, &info).map_err(|e| e.to_string())?;
        let frame_labels = [Direction::ClientToTarget, Direction::TargetToClient].map(|d| {
            OUTCOMES.map(|outcome| {
                sluice_core::metrics::labels(&[
                    ("connection", &info.connection),
                    ("direction", direction_name(d)),
                    ("outcome", outcome),
                ])
            })
        });
        let mut core = Core {
            ctx,
            info,
            chain,
            seq: [0, 0],
            frame_labels,
        };
        core.record_event("session-open", 0, meta, Vec::new())
            .await
            .map_err(|e| e.to_string())?;
        let (kill, killed) = oneshot::channel();
        let active = Active {
            subject: core.info.identity.subject.clone(),
            connection: core.info.connection.clone(),
            started_ms: core.info.started_at_ms,
            kill: Some(kill),
        };
        core.ctx
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(core.info.id.clone(), active);
        if let Some(until) = opening.access_until {
            let (ctx, id) = (core.ctx.clone(), core.info.id.clone());
            let connection = core.info.connection.clone();
            tokio::spawn(async move {
                let left = until.saturating_sub(now_ms());
                tokio::time::sleep(Duration::from_millis(left)).await;
                ctx.kill(
                    &id,
                    format!("your just-in-time access to `{connection}` ended; request access again to go on"),
                );
            });
        }
        sluice_core::metrics::count(
            sluice_core::metrics::SESSIONS,
            &sluice_core::metrics::labels(&[("connection", &core.info.connection)]),
            1,
        );
        tracing::info!("session opened");
        Ok((core, killed))
    }

    /// Ends the session: what plugins still hold in either direction is released into the
    /// record (the peers are gone or going: nothing more is forwarded), then `close`.
    pub async fn end(&mut self, meta: serde_json::Value) -> Result<(), RecordFailed> {
        for direction in [Direction::ClientToTarget, Direction::TargetToClient] {
            self.flush(direction).await?;
        }
        self.close(meta).await
    }

    /// Lists the session as ended and records `session-close`.
    pub async fn close(&mut self, meta: serde_json::Value) -> Result<(), RecordFailed> {
        self.ctx
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.info.id);
        self.record_event("session-close", 0, meta, Vec::new())
            .await
    }

    /// The filter step: the frame crosses the chain.
    pub fn filter(&mut self, direction: Direction, content: Content) -> Decision {
        let slot = &mut self.seq[direction as usize];
        *slot += 1;
        let frame = Frame {
            seq: *slot,
            direction,
            timestamp_ms: now_ms(),
            content,
        };
        self.chain.on_frame(frame)
    }

    /// A frame the gateway itself refuses (a message it cannot frame soundly): numbered like
    /// any frame and recorded as denied by `sluice`, without reaching a plugin.
    pub fn refuse(&mut self, direction: Direction, content: Content, reason: &str) -> Decision {
        self.seq[direction as usize] += 1;
        Decision {
            outcome: Outcome::Deny {
                plugin: "sluice".into(),
                reason: reason.into(),
            },
            forward: content,
            record_as: None,
            replaced: false,
            failures: Vec::new(),
            calls: Vec::new(),
        }
    }

    /// Asks the chain for what plugins buffer in `direction`; records each piece and returns
    /// the ones that may be forwarded.
    pub async fn flush(&mut self, direction: Direction) -> Result<Vec<Content>, RecordFailed> {
        let mut seq = self.seq[direction as usize];
        let decisions = self.chain.flush(direction, |content| {
            seq += 1;
            Frame {
                seq,
                direction,
                timestamp_ms: now_ms(),
                content,
            }
        });
        self.seq[direction as usize] = seq;
        let mut released = Vec::new();
        for decision in decisions {
            self.record_frame(direction, &decision).await?;
            if decision.outcome == Outcome::Pass {
                released.push(decision.forward);
            }
        }
        Ok(released)
    }

    /// A held frame becomes a review; the caller tells the client `pending.notice()` and
    /// waits on `pending.decided()`, then applies the decision with [`Core::reviewed`].
    pub async fn request_review(
        &mut self,
        decision: &Decision,
        reason: &str,
    ) -> Result<Pending, RecordFailed> {
        let text = match decision.recorded() {
            Content::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            other => String::from_utf8_lossy(&record_payload(other)).into_owned(),
        };
        self.request_review_of(text, reason).await
    }

    /// A review of something this session's peer presented rather than a frame (an MCP
    /// tool's changed definition): `text` is what reviewers see.
    pub async fn request_review_of(
        &mut self,
        text: String,
        reason: &str,
    ) -> Result<Pending, RecordFailed> {
        self.ctx
            .reviews
            .request(
                Kind::Frame,
                &self.info.identity,
                &self.info.connection,
                Some(&self.info.id),
                text,
                reason.into(),
            )
            .await
    }

    /// The held `decision` after its review: passed when approved, refused otherwise.
    pub fn reviewed(&self, decision: Decision, review: &Review) -> Decision {
        let outcome = match review.status {
            Status::Approved => Outcome::Pass,
            _ => Outcome::Deny {
                plugin: "review".into(),
                reason: review.refusal(),
            },
        };
        Decision {
            outcome,
            ..decision
        }
    }

    /// The record step.
    pub async fn record_frame(
        &mut self,
        direction: Direction,
        decision: &Decision,
    ) -> Result<(), RecordFailed> {
        self.submit_frame(direction, decision)
            .await?
            .durable()
            .await
            .map(drop)
    }

    /// Queues a frame for the record; the receipt says when it is durable (strict mode) or
    /// at once (async mode).
    pub async fn submit_frame(
        &mut self,
        direction: Direction,
        decision: &Decision,
    ) -> Result<Receipt, RecordFailed> {
        let event = self.frame_event(direction, self.seq(direction), decision);
        self.submit(event).await
    }

    /// Records frames in one commit, in order (strict mode: returns once it is durable), so
    /// what one keypress decides (the keys before Enter and the typed line) costs one fsync.
    pub async fn record_frames_together(
        &mut self,
        frames: Vec<NewEvent>,
    ) -> Result<(), RecordFailed> {
        let track = self.ctx.record_mode == RecordMode::Strict;
        self.ctx
            .recorder
            .submit_together(frames, track)
            .await?
            .durable()
            .await
            .map(drop)
    }

    /// The event that records `decision` on frame `seq` of `direction`.
    pub fn frame_event(&self, direction: Direction, seq: u64, decision: &Decision) -> NewEvent {
        let (outcome, reason) = match &decision.outcome {
            Outcome::Pass => ("pass", None),
            Outcome::Hold { reasons } => ("hold", Some(reasons.join("; "))),
            Outcome::Deny { plugin, reason } => ("deny", Some(format!("{plugin}: {reason}"))),
        };
        let meta = FrameMeta {
            content: sluice_core::frame::kind(decision.recorded()),
            dir: direction_name(direction),
            failures: decision.failures.iter().map(|f| f.to_string()).collect(),
            outcome,
            params: match decision.recorded() {
                Content::Statement(s) if !s.params.is_empty() => Some(Cells(&s.params)),
                _ => None,
            },
            reason,
            calls: decision.calls.iter().map(CallMeta::of).collect(),
        };
        self.count_frames(direction, outcome, 1);
        self.event("frame", seq, &meta, record_payload(decision.recorded()))
    }

    /// Queues a batch of result rows that all passed as one event, with the result's columns
    /// when the batch is its first (see [`RowBatch`]). The receipt says when it is durable.
    pub async fn submit_rows(
        &mut self,
        columns: Option<&Decision>,
        batch: RowBatch,
    ) -> Result<Receipt, RecordFailed> {
        let mut failures = batch.failures;
        let mut calls = CallSums::default();
        let mut names = None;
        if let Some(columns) = columns {
            failures.extend(columns.failures.iter().map(|f| f.to_string()));
            calls.add_all(&columns.calls);
            if let Content::Columns(c) = columns.recorded() {
                names = Some(c.iter().map(|c| c.name.as_str()).collect());
            }
        }
        for (plugin, verdict, micros, n) in &batch.calls.0 {
            calls.add(plugin, verdict, *micros, *n);
        }
        let meta = RowsMeta {
            calls: calls.meta(),
            columns: names,
            content: "rows",
            count: batch.count,
            dir: "out",
            failures,
            outcome: "pass",
        };
        self.count_frames(Direction::TargetToClient, "pass", batch.count as u64);
        let event = self.event("frame", batch.first_seq, &meta, batch.payload);
        self.submit(event).await
    }

    fn count_frames(&self, direction: Direction, outcome: &str, n: u64) {
        let outcome = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        let labels = &self.frame_labels[direction as usize][outcome];
        sluice_core::metrics::count(sluice_core::metrics::FRAMES, labels, n);
    }

    /// The sequence number of the last frame in `direction`.
    pub fn seq(&self, direction: Direction) -> u64 {
        self.seq[direction as usize]
    }

    pub async fn record_event(
        &mut self,
        kind: &str,
        seq: u64,
        meta: serde_json::Value,
        payload: Vec<u8>,
    ) -> Result<(), RecordFailed> {
        self.submit_event(kind, seq, &meta, payload)
            .await?
            .durable()
            .await
            .map(drop)
    }

    pub async fn submit_event(
        &mut self,
        kind: &str,
        seq: u64,
        meta: &impl Serialize,
        payload: Vec<u8>,
    ) -> Result<Receipt, RecordFailed> {
        let event = self.event(kind, seq, meta, payload);
        self.submit(event).await
    }

    fn event(&self, kind: &str, seq: u64, meta: &impl Serialize, payload: Vec<u8>) -> NewEvent {
        NewEvent {
            session: self.info.id.clone(),
            seq,
            kind: kind.into(),
            time_ms: now_ms(),
            // Serializing plain data into a String cannot fail.
            meta: serde_json::to_string(meta).unwrap_or_default(),
            payload,
        }
    }

    async fn submit(&mut self, event: NewEvent) -> Result<Receipt, RecordFailed> {
        let track = self.ctx.record_mode == RecordMode::Strict;
        self.ctx.recorder.submit(event, track).await
    }
}

/// Result rows that passed the chain, recorded together: one event per batch (a `rows` frame
/// event: its payload a line of JSON cells per row, its meta the count and, for a result's
/// first batch, the column names) rather than one per row, which is most of what recording a
/// query's answer costs.
#[derive(Debug, Default)]
pub struct RowBatch {
    first_seq: u64,
    count: usize,
    payload: Vec<u8>,
    failures: Vec<String>,
    calls: CallSums,
}

impl RowBatch {
    /// Adds a passed row frame's decision; `seq` is its sequence number.
    pub fn push(&mut self, seq: u64, decision: &Decision) {
        if self.count == 0 {
            self.first_seq = seq;
        }
        self.count += 1;
        let cells = match decision.recorded() {
            Content::Row(cells) => cells.as_slice(),
            _ => &[],
        };
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.payload, &Cells(cells));
        self.payload.push(b'\n');
        self.failures
            .extend(decision.failures.iter().map(|f| f.to_string()));
        self.calls.add_all(&decision.calls);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Plugin calls summed per plugin and verdict: (plugin, verdict, microseconds, calls).
#[derive(Debug, Default)]
struct CallSums(Vec<(std::sync::Arc<str>, &'static str, u64, u64)>);

impl CallSums {
    fn add(&mut self, plugin: &std::sync::Arc<str>, verdict: &'static str, micros: u64, n: u64) {
        match self.0.iter_mut().find(|s| s.0 == *plugin && s.1 == verdict) {
            Some(sum) => {
                sum.2 += micros;
                sum.3 += n;
            }
            None => self.0.push((plugin.clone(), verdict, micros, n)),
        }
    }

    fn add_all(&mut self, calls: &[Call]) {
        for call in calls {
            self.add(&call.plugin, call.verdict, call.micros.into(), 1);
        }
    }

    fn meta(&self) -> Vec<CallMeta<'_>> {
        self.0
            .iter()
            .map(|(plugin, verdict, micros, n)| CallMeta(plugin, verdict, *micros, *n))
            .collect()
    }
}

/// The bytes of a content, as forwarded to a byte stream: a stream's bytes, a line's or a
/// statement's text. Structured content (results, files, tool calls, HTTP heads) has none.
pub fn content_bytes(content: &Content) -> Vec<u8> {
    match content {
        Content::Bytes(b) => b.clone(),
        Content::Line(l) => l.as_bytes().to_vec(),
        Content::Statement(s) => s.text.as_bytes().to_vec(),
        Content::Columns(_)
        | Content::Row(_)
        | Content::File(_)
        | Content::ToolCall(_)
        | Content::ToolResult(_)
        | Content::HttpRequest(_)
        | Content::HttpResponse(_) => Vec::new(),
    }
}

/// What the record stores as a frame's payload: the bytes of stream content, a statement's
/// text (its parameters go in the meta), a row's cells or a result's column names as JSON,
/// and structured content as a JSON object (bytes as text, or `{"hex": …}`).
pub fn record_payload(content: &Content) -> Vec<u8> {
    let json = match content {
        Content::Row(cells) => serde_json::to_value(Cells(cells)),
        Content::Columns(columns) => {
            let names: Vec<_> = columns.iter().map(|c| c.name.as_str()).collect();
            serde_json::to_value(names)
        }
        Content::File(f) => Ok(json!({
            "path": f.path, "offset": f.offset, "size": f.size,
            "digest": f.digest.as_deref().map(hex::encode),
            "data": Cell(&f.data),
        })),
        Content::ToolCall(c) => Ok(json!({
            "server": c.server, "tool": c.tool, "id": c.id, "arguments": c.arguments,
        })),
        Content::ToolResult(r) => Ok(json!({
            "server": r.server, "tool": r.tool, "id": r.id, "output": r.output,
            "is_error": r.is_error,
        })),
        Content::HttpRequest(h) => Ok(json!({
            "method": h.method, "uri": h.uri, "headers": h.headers,
        })),
        Content::HttpResponse(h) => Ok(json!({"status": h.status, "headers": h.headers})),
        Content::Bytes(_) | Content::Line(_) | Content::Statement(_) => {
            return content_bytes(content);
        }
    };
    // Plain data always serializes.
    json.map(|v| v.to_string().into_bytes()).unwrap_or_default()
}

/// A frame event's meta. Typed rather than a `json!` value, which costs a map and its keys
/// per frame; the fields are in alphabetical order, as `json!` wrote them.
#[derive(Serialize)]
struct FrameMeta<'a> {
    /// Each plugin call: `[plugin, verdict, microseconds]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    calls: Vec<CallMeta<'a>>,
    content: &'static str,
    dir: &'static str,
    failures: Vec<String>,
    outcome: &'static str,
    /// A statement's parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<Cells<'a>>,
    reason: Option<String>,
}

/// A plugin call as recorded: `[plugin, verdict, microseconds]`, or with a fourth element,
/// the number of calls, where a batch of rows sums them per plugin and verdict.
#[derive(Serialize)]
struct CallMeta<'a>(
    &'a str,
    &'static str,
    u64,
    #[serde(skip_serializing_if = "is_one")] u64,
);

fn is_one(n: &u64) -> bool {
    *n == 1
}

impl<'a> CallMeta<'a> {
    fn of(call: &'a Call) -> CallMeta<'a> {
        CallMeta(&call.plugin, call.verdict, call.micros.into(), 1)
    }
}

/// A batch of result rows' meta (see [`RowBatch`]).
#[derive(Serialize)]
struct RowsMeta<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    calls: Vec<CallMeta<'a>>,
    /// The result's column names, with its first batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    columns: Option<Vec<&'a str>>,
    content: &'static str,
    count: usize,
    dir: &'static str,
    failures: Vec<String>,
    outcome: &'static str,
}

/// Cells as JSON: text where it is UTF-8, `{"hex": …}` where not, `null` for NULL.
struct Cells<'a>(&'a [Option<Vec<u8>>]);

impl Serialize for Cells<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut cells = serializer.serialize_seq(Some(self.0.len()))?;
        for cell in self.0 {
            cells.serialize_element(&cell.as_deref().map(Cell))?;
        }
        cells.end()
    }
}

/// Bytes as JSON: text where they are UTF-8, `{"hex": …}` where not.
struct Cell<'a>(&'a [u8]);

impl Serialize for Cell<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => Hex(self.0).serialize(serializer),
        }
    }
}

/// A cell that is not text: `{"hex": "…"}`.
struct Hex<'a>(&'a [u8]);

impl Serialize for Hex<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("hex", &hex::encode(self.0))?;
        map.end()
    }
}

use sluice_core::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_text_hex_or_null() {
        let cells = vec![None, Some(b"4242".to_vec()), Some(vec![0xff, 0x00])];
        assert_eq!(
            serde_json::to_string(&Cells(&cells)).unwrap(),
            r#"[null,"4242",{"hex":"ff00"}]"#
        );
    }

    #[test]
    fn structured_content_is_recorded_as_a_json_object() {
        let chunk = Content::File(sluice_core::frame::FileChunk {
            path: "/tmp/a".into(),
            offset: 8,
            data: vec![0xff, 0x00],
            size: None,
            digest: Some(vec![0xab]),
        });
        let recorded: serde_json::Value = serde_json::from_slice(&record_payload(&chunk)).unwrap();
        assert_eq!(
            recorded,
            json!({"path": "/tmp/a", "offset": 8, "size": null, "digest": "ab", "data": {"hex": "ff00"}})
        );
        let text = Content::File(sluice_core::frame::FileChunk {
            path: "/tmp/a".into(),
            offset: 0,
            data: b"key=1".to_vec(),
            size: Some(5),
            digest: None,
        });
        let recorded: serde_json::Value = serde_json::from_slice(&record_payload(&text)).unwrap();
        assert_eq!(recorded["data"], "key=1");
    }

    #[test]
    fn frame_meta_is_written_as_json_objects_are() {
        // The record's meta keeps the bytes it had when it was a `json!` value (sorted keys).
        let params = vec![Some(b"7".to_vec())];
        let call = Call {
            plugin: "sql-gate".into(),
            verdict: "deny",
            micros: 41,
        };
        let meta = FrameMeta {
            calls: vec![CallMeta::of(&call)],
            content: "statement",
            dir: "in",
            failures: vec!["mask: trapped".into()],
            outcome: "deny",
            params: Some(Cells(&params)),
            reason: Some("sql-gate: DROP".into()),
        };
        let value = json!({
            "dir": "in", "content": "statement", "outcome": "deny", "reason": "sql-gate: DROP",
            "failures": ["mask: trapped"], "params": ["7"], "calls": [["sql-gate", "deny", 41]],
        });
        assert_eq!(serde_json::to_string(&meta).unwrap(), value.to_string());
        let mut calls = CallSums::default();
        calls.add_all(&[call.clone(), call]);
        let rows = RowsMeta {
            calls: calls.meta(),
            columns: Some(vec!["id", "email"]),
            content: "rows",
            count: 2,
            dir: "out",
            failures: vec![],
            outcome: "pass",
        };
        let value = json!({
            "dir": "out", "content": "rows", "outcome": "pass", "count": 2,
            "columns": ["id", "email"], "failures": [], "calls": [["sql-gate", "deny", 82, 2]],
        });
        assert_eq!(serde_json::to_string(&rows).unwrap(), value.to_string());
    }
}
