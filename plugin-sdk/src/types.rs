//! Plain Rust mirrors of the contract's types (`wit/plugin.wit`), so plugin logic never
//! touches generated bindings and can be tested natively.

use serde::de::DeserializeOwned;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    pub connection: String,
    pub protocol: String,
    pub identity: Identity,
    pub started_at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    ClientToTarget,
    TargetToClient,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellFormat {
    Text,
    Binary,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub table: Option<String>,
    pub table_oid: u32,
    pub type_oid: u32,
    pub format: CellFormat,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub text: String,
    /// Bound parameters; `None` is NULL.
    pub params: Vec<Option<Vec<u8>>>,
}

/// A result row: one cell per column, `None` for NULL.
pub type Cells = Vec<Option<Vec<u8>>>;

/// A piece of a file crossing the session (SFTP, SCP), in order; the frame's direction says
/// which way (client to target: an upload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChunk {
    /// The file's path on the target.
    pub path: String,
    /// Where this chunk starts in the file.
    pub offset: u64,
    pub data: Vec<u8>,
    /// The whole file's size, when the protocol announces it.
    pub size: Option<u64>,
    /// On the transfer's last chunk: the SHA-256 of the whole file as it crossed.
    pub digest: Option<Vec<u8>>,
}

/// An MCP tool call, client to target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub server: String,
    pub tool: String,
    /// The request's id, the same on the call and its result.
    pub id: String,
    /// The arguments, as JSON text.
    pub arguments: String,
}

/// The result of an MCP tool call, target to client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolResult {
    pub server: String,
    pub tool: String,
    pub id: String,
    /// The tool's result (MCP's `CallToolResult`), as JSON text.
    pub output: String,
    pub is_error: bool,
}

/// The head of an HTTP request; its body follows as [`Content::Bytes`] frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

/// The head of an HTTP response; its body follows as [`Content::Bytes`] frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    Line(String),
    Statement(Statement),
    Columns(Vec<Column>),
    Row(Cells),
    File(FileChunk),
    ToolCall(ToolCall),
    ToolResult(ToolResult),
    HttpRequest(HttpRequest),
    HttpResponse(HttpResponse),
}

impl Content {
    /// The content as text, where it is text: bytes that are valid UTF-8, a line, a
    /// statement's text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Content::Bytes(bytes) => std::str::from_utf8(bytes).ok(),
            Content::File(chunk) => std::str::from_utf8(&chunk.data).ok(),
            Content::Line(line) => Some(line),
            Content::Statement(statement) => Some(&statement.text),
            Content::ToolCall(call) => Some(&call.arguments),
            Content::ToolResult(result) => Some(&result.output),
            Content::Columns(_)
            | Content::Row(_)
            | Content::HttpRequest(_)
            | Content::HttpResponse(_) => None,
        }
    }

    /// The content as text for tests and messages: bytes and file data (lossily), a line, a
    /// statement's text, a row's cells joined by tabs (`NULL` for NULL), column names joined
    /// by tabs, a tool call's arguments or result, an HTTP head's first line.
    pub fn text(&self) -> Option<String> {
        Some(match self {
            Content::Bytes(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Content::File(chunk) => String::from_utf8_lossy(&chunk.data).into_owned(),
            Content::ToolCall(call) => call.arguments.clone(),
            Content::ToolResult(result) => result.output.clone(),
            Content::HttpRequest(request) => format!("{} {}", request.method, request.uri),
            Content::HttpResponse(response) => response.status.to_string(),
            Content::Line(line) => line.clone(),
            Content::Statement(statement) => statement.text.clone(),
            Content::Row(cells) => cells
                .iter()
                .map(|c| {
                    c.as_ref()
                        .map_or("NULL".into(), |c| String::from_utf8_lossy(c))
                })
                .collect::<Vec<_>>()
                .join("\t"),
            Content::Columns(columns) => columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join("\t"),
        })
    }
}

/// The kinds of content a frame can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContentKind {
    Bytes,
    Line,
    Statement,
    Columns,
    Row,
    File,
    ToolCall,
    ToolResult,
    HttpRequest,
    HttpResponse,
}

impl ContentKind {
    pub const ALL: [ContentKind; 10] = [
        ContentKind::Bytes,
        ContentKind::Line,
        ContentKind::Statement,
        ContentKind::Columns,
        ContentKind::Row,
        ContentKind::File,
        ContentKind::ToolCall,
        ContentKind::ToolResult,
        ContentKind::HttpRequest,
        ContentKind::HttpResponse,
    ];

    /// Its name in logs, the record and error messages.
    pub fn name(self) -> &'static str {
        match self {
            ContentKind::Bytes => "bytes",
            ContentKind::Line => "line",
            ContentKind::Statement => "statement",
            ContentKind::Columns => "columns",
            ContentKind::Row => "row",
            ContentKind::File => "file",
            ContentKind::ToolCall => "tool-call",
            ContentKind::ToolResult => "tool-result",
            ContentKind::HttpRequest => "http-request",
            ContentKind::HttpResponse => "http-response",
        }
    }
}

impl Content {
    /// The texts a prescreen is matched on, in order, until `each` returns `true`: the chunk,
    /// the line, a statement's text and each parameter, each column's name, each cell, a file
    /// chunk's data, a tool call's arguments or a result's output, a request's URI, each
    /// header as `name: value`. Whether `each` said `true` for one of them.
    pub fn texts(&self, mut each: impl FnMut(&[u8]) -> bool) -> bool {
        let header = |each: &mut dyn FnMut(&[u8]) -> bool, (name, value): &(String, String)| {
            each(format!("{name}: {value}").as_bytes())
        };
        match self {
            Content::Bytes(b) => each(b),
            Content::Line(l) => each(l.as_bytes()),
            Content::Statement(s) => {
                each(s.text.as_bytes()) || s.params.iter().flatten().any(|p| each(p))
            }
            Content::Columns(columns) => columns.iter().any(|c| each(c.name.as_bytes())),
            Content::Row(cells) => cells.iter().flatten().any(|c| each(c)),
            Content::File(f) => each(&f.data),
            Content::ToolCall(t) => each(t.arguments.as_bytes()),
            Content::ToolResult(t) => each(t.output.as_bytes()),
            Content::HttpRequest(h) => {
                each(h.uri.as_bytes()) || h.headers.iter().any(|h| header(&mut each, h))
            }
            Content::HttpResponse(h) => h.headers.iter().any(|h| header(&mut each, h)),
        }
    }

    pub fn kind(&self) -> ContentKind {
        match self {
            Content::Bytes(_) => ContentKind::Bytes,
            Content::Line(_) => ContentKind::Line,
            Content::Statement(_) => ContentKind::Statement,
            Content::Columns(_) => ContentKind::Columns,
            Content::Row(_) => ContentKind::Row,
            Content::File(_) => ContentKind::File,
            Content::ToolCall(_) => ContentKind::ToolCall,
            Content::ToolResult(_) => ContentKind::ToolResult,
            Content::HttpRequest(_) => ContentKind::HttpRequest,
            Content::HttpResponse(_) => ContentKind::HttpResponse,
        }
    }
}

/// The frames a filter wants to see. The gateway passes every other frame on without calling
/// the plugin, exactly as if it had said `pass`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interest {
    pub client_to_target: Vec<ContentKind>,
    pub target_to_client: Vec<ContentKind>,
    /// The plugin keeps nothing from one call to the next that its verdicts depend on, so the
    /// gateway may swap its instance for a fresh one between calls (see
    /// [`Interest::stateless`]). `false` unless said.
    pub stateless: bool,
    /// Frames of some kinds reach the plugin only when they match (see [`Interest::prescreen`]).
    pub prescreen: Option<Prescreen>,
}

/// `text` as a prescreen pattern that matches it literally (its regex metacharacters
/// escaped): `Prescreen` patterns are regular expressions.
pub fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A test the gateway runs natively on a frame before calling the plugin with it (see
/// [`Interest::prescreen`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Prescreen {
    /// The kinds the test applies to; the interest's other kinds always reach the plugin.
    pub kinds: Vec<ContentKind>,
    /// Patterns (the `regex` crate's syntax, on bytes, ASCII classes); a frame matches when
    /// one of them matches one of its texts ([`Content::texts`]).
    pub patterns: Vec<String>,
}

impl Interest {
    /// Every frame, both ways (the default).
    pub fn all() -> Interest {
        Interest {
            client_to_target: ContentKind::ALL.to_vec(),
            target_to_client: ContentKind::ALL.to_vec(),
            stateless: false,
            prescreen: None,
        }
    }

    /// Only frames of these kinds in `direction`.
    pub fn only(direction: Direction, kinds: &[ContentKind]) -> Interest {
        let mut interest = Interest {
            client_to_target: vec![],
            target_to_client: vec![],
            stateless: false,
            prescreen: None,
        };
        match direction {
            Direction::ClientToTarget => interest.client_to_target = kinds.to_vec(),
            Direction::TargetToClient => interest.target_to_client = kinds.to_vec(),
        }
        interest
    }

    /// Says the plugin keeps no state between calls: each verdict depends on its frame (and
    /// the config) alone. The gateway may then replace the instance with a fresh one between
    /// any two calls, which it does before memory the language runtime keeps reaches the
    /// plugin's limit (a Rust plugin's memory stays flat; Python and JavaScript runtimes keep
    /// some per call). Never say it of a plugin that buffers bytes or counts frames.
    pub fn stateless(mut self) -> Interest {
        self.stateless = true;
        self
    }

    /// Frames of `kinds` reach the plugin only when one of `patterns` matches one of their
    /// texts ([`Content::texts`]); the gateway runs the test natively, so a frame the plugin
    /// cannot act on costs no call. Say only what every frame the plugin acts on contains:
    /// the keywords its rules start from, the patterns of its detectors. Leave out kinds whose
    /// verdict depends on state (a row masked because of its column's name, bytes buffered
    /// across chunks). Columns may be named even when the rows after them depend on them: a
    /// result's columns that match nothing reach the plugin just before the first of its rows
    /// that does, and must then be passed.
    pub fn prescreen<P: Into<String>>(
        mut self,
        kinds: &[ContentKind],
        patterns: impl IntoIterator<Item = P>,
    ) -> Interest {
        self.prescreen = Some(Prescreen {
            kinds: kinds.to_vec(),
            patterns: patterns.into_iter().map(Into::into).collect(),
        });
        self
    }

    pub fn wants(&self, direction: Direction, kind: ContentKind) -> bool {
        match direction {
            Direction::ClientToTarget => self.client_to_target.contains(&kind),
            Direction::TargetToClient => self.target_to_client.contains(&kind),
        }
    }
}

/// `client-to-target [statement, line], target-to-client [bytes], stateless`, and
/// `, prescreened [statement] (2 patterns)` when it is.
impl std::fmt::Display for Interest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |kinds: &[ContentKind]| {
            let names: Vec<_> = kinds.iter().map(|k| k.name()).collect();
            names.join(", ")
        };
        write!(
            f,
            "client-to-target [{}], target-to-client [{}], {}",
            names(&self.client_to_target),
            names(&self.target_to_client),
            if self.stateless {
                "stateless"
            } else {
                "keeps state"
            }
        )?;
        if let Some(p) = &self.prescreen {
            let s = if p.patterns.len() == 1 { "" } else { "s" };
            let n = p.patterns.len();
            write!(f, ", prescreened [{}] ({n} pattern{s})", names(&p.kinds))?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub direction: Direction,
    pub timestamp_ms: u64,
    pub content: Content,
}

impl Frame {
    /// A frame for tests: sequence number 1, time 0.
    pub fn new(direction: Direction, content: Content) -> Self {
        Frame {
            seq: 1,
            direction,
            timestamp_ms: 0,
            content,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Replace(Content),
    Hold(String),
    Deny(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub record_as: Option<Content>,
}

impl Verdict {
    pub fn pass() -> Self {
        Self::from(Action::Pass)
    }
    pub fn replace(content: Content) -> Self {
        Self::from(Action::Replace(content))
    }
    pub fn hold(reason: impl Into<String>) -> Self {
        Self::from(Action::Hold(reason.into()))
    }
    pub fn deny(reason: impl Into<String>) -> Self {
        Self::from(Action::Deny(reason.into()))
    }
    /// Record (and ship to sinks) `content` instead of what is forwarded.
    pub fn record_as(mut self, content: Content) -> Self {
        self.record_as = Some(content);
        self
    }

    pub fn is_pass(&self) -> bool {
        self.action == Action::Pass
    }
    pub fn is_deny(&self) -> bool {
        matches!(self.action, Action::Deny(_))
    }
    pub fn is_hold(&self) -> bool {
        matches!(self.action, Action::Hold(_))
    }

    /// The reason of a deny or a hold.
    pub fn reason(&self) -> Option<&str> {
        match &self.action {
            Action::Deny(reason) | Action::Hold(reason) => Some(reason),
            Action::Pass | Action::Replace(_) => None,
        }
    }

    /// The text of a replacement, where it is text (see [`Content::text`]).
    pub fn replaced_text(&self) -> Option<String> {
        match &self.action {
            Action::Replace(content) => content.text(),
            _ => None,
        }
    }

    /// The text the record gets instead, when the verdict sets one.
    pub fn recorded_text(&self) -> Option<String> {
        self.record_as.as_ref().and_then(Content::text)
    }
}

impl From<Action> for Verdict {
    fn from(action: Action) -> Self {
        Verdict {
            action,
            record_as: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub index: u64,
    pub session: String,
    pub seq: u64,
    pub kind: String,
    pub time_ms: u64,
    /// A JSON object.
    pub meta: String,
    pub payload: Vec<u8>,
}

impl Event {
    /// The event as one JSON object, the form first-party sinks ship: `meta` as JSON, the
    /// payload as `payload` when it is UTF-8 text, else as `payload_base64`.
    pub fn to_json(&self) -> serde_json::Value {
        let meta = serde_json::from_str(&self.meta)
            .unwrap_or_else(|_| serde_json::Value::String(self.meta.clone()));
        let mut object = serde_json::json!({
            "index": self.index,
            "session": self.session,
            "seq": self.seq,
            "kind": self.kind,
            "time_ms": self.time_ms,
            "meta": meta,
        });
        match std::str::from_utf8(&self.payload) {
            Ok(text) => object["payload"] = text.into(),
            Err(_) => object["payload_base64"] = base64(&self.payload).into(),
        }
        object
    }
}

/// The kind of the event that ends every batch a sink receives: the record's signed head
/// covering the batch (its meta: `index`, `hash`, `signature`, `public_key`). It is not a
/// chain entry: its `index` is the entry it covers. Keep it with the batch, and an auditor
/// can check the gateway's store against it (`sluice verify --head`).
pub const HEAD_KIND: &str = "head";

/// Newline-delimited JSON: each value on a line of its own (the body sinks ship).
pub fn json_lines(values: impl IntoIterator<Item = serde_json::Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for value in values {
        out.extend_from_slice(value.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkError {
    Retryable(String),
    Permanent(String),
}

/// The plugin's table from the policy, as the gateway passed it (JSON).
#[derive(Clone, Debug)]
pub struct Config {
    json: String,
}

impl Config {
    pub fn from_json(json: impl Into<String>) -> Self {
        Config { json: json.into() }
    }

    /// The raw JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Deserialize the configuration into the plugin's own settings type. Use
    /// `#[serde(deny_unknown_fields)]` on it so a typo in a policy is an error, not a no-op.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        let json = if self.json.trim().is_empty() {
            "{}"
        } else {
            &self.json
        };
        serde_json::from_str(json).map_err(|e| format!("invalid configuration: {e}"))
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    #[test]
    fn events_become_json_with_text_or_base64_payloads() {
        let mut event = Event {
            index: 7,
            session: "s1".into(),
            seq: 2,
            kind: "frame".into(),
            time_ms: 1000,
            meta: r#"{"dir":"out"}"#.into(),
            payload: b"hello".to_vec(),
        };
        let json = event.to_json();
        assert_eq!(json["meta"]["dir"], "out");
        assert_eq!(json["payload"], "hello");
        event.payload = vec![0xff, 0x00, 0x61, 0x62];
        assert_eq!(event.to_json()["payload_base64"], "/wBhYg==");
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
    }
}
