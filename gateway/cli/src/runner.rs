//! The local plugin runner behind `sluice plugin check` and `sluice plugin run`: lets a
//! plugin author validate a component and feed it frames without a gateway.
//!
//! Frames are JSON lines; the content is keyed by its kind:
//!
//! ```text
//! {"line": "rm -rf /"}
//! {"direction": "target-to-client", "bytes": "card 4242 4242 4242 4242\n"}
//! {"statement": {"text": "SELECT * FROM users WHERE id = $1", "params": ["7"]}}
//! {"direction": "target-to-client", "columns": [{"name": "ssn", "table": "users"}]}
//! {"direction": "target-to-client", "row": ["078-05-1120", null]}
//! ```

use std::io::{BufRead, Write};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use sluice_core::frame::{
    Action, CellFormat, Column, Content, Direction, FileChunk, Frame, HttpRequest, HttpResponse,
    SessionInfo, SessionKind, Statement, ToolCall, ToolResult, Verdict,
};
use sluice_engine::policy::{PluginSpec, Source, World};
use sluice_plugin_host::{LoadError, LoadedPlugin, PluginHost};

/// One input line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonFrame {
    #[serde(default)]
    direction: JsonDirection,
    #[serde(flatten)]
    content: JsonContent,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
enum JsonDirection {
    #[default]
    ClientToTarget,
    TargetToClient,
}

/// Content as JSON. Bytes and cells are text here; bytes that are not UTF-8 are shown with
/// replacement characters.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonContent {
    Bytes(String),
    Line(String),
    Statement {
        text: String,
        #[serde(default)]
        params: Vec<Option<String>>,
    },
    Columns(Vec<JsonColumn>),
    Row(Vec<Option<String>>),
    File {
        path: String,
        #[serde(default)]
        offset: u64,
        data: String,
        #[serde(default)]
        size: Option<u64>,
        /// Hex.
        #[serde(default)]
        digest: Option<String>,
    },
    ToolCall {
        server: String,
        tool: String,
        #[serde(default)]
        id: String,
        /// JSON text.
        arguments: String,
    },
    ToolResult {
        server: String,
        tool: String,
        #[serde(default)]
        id: String,
        /// JSON text.
        output: String,
        #[serde(default)]
        is_error: bool,
    },
    HttpRequest {
        method: String,
        uri: String,
        #[serde(default)]
        headers: Vec<(String, String)>,
    },
    HttpResponse {
        status: u16,
        #[serde(default)]
        headers: Vec<(String, String)>,
    },
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonColumn {
    name: String,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    type_oid: u32,
    #[serde(default)]
    binary: bool,
}

/// One output line: the verdict on one frame, with what the call cost.
#[derive(Debug, Serialize)]
pub struct Report {
    pub seq: u64,
    pub frame: ShownFrame,
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<JsonContent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_as: Option<JsonContent>,
    pub time_us: f64,
    /// The instance's memory after the call (0 once it was renewed or failed).
    pub memory_bytes: usize,
    /// A stateless plugin's instance passed the memory at which it is swapped for a fresh
    /// one before the next call.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub renewed: bool,
    /// What the plugin logged during the call (with `--explain`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub explain: Vec<String>,
}

/// What `plugin check` found.
#[derive(Debug)]
pub struct CheckReport {
    pub world: World,
    /// The contract version it is built against.
    pub version: &'static str,
    pub sha256: String,
    pub imports: Vec<String>,
}

/// Validates a component against the contract: which world it implements, that its imports
/// are ones Sluice provides, and that it links.
pub fn check(host: &PluginHost, source: Source) -> Result<CheckReport, LoadError> {
    let spec = PluginSpec::standalone("checked", source, World::Filter, "{}".into());
    let bytes = sluice_plugin_host::read_source(&spec)?;
    let inspection = host.inspect(&bytes).map_err(|what| LoadError::Invalid {
        at: spec.source.to_string(),
        what,
    })?;
    let spec = PluginSpec {
        world: inspection.world,
        ..spec
    };
    let (plugin, _) = host.load_bytes(&spec, &bytes)?;
    Ok(CheckReport {
        world: inspection.world,
        version: inspection.version,
        sha256: hex::encode(plugin.digest()),
        imports: inspection.imports,
    })
}

/// The frame keys `plugin run` reads, for its error messages.
const FRAME_KEYS: &str = "one of `bytes`, `line`, `statement`, `columns`, `row`, `file`, `tool_call`, \
    `tool_result`, `http_request`, `http_response` (and `direction`: \
    `client-to-target`, the default, or `target-to-client`), e.g. {\"line\": \"ls\"} or \
    {\"direction\": \"target-to-client\", \"row\": [\"42\", null]}";

/// Reads frames written as JSON lines, with errors that say which line and what a frame is.
pub fn json_frames(
    input: impl BufRead,
) -> impl Iterator<Item = anyhow::Result<(Direction, Content)>> {
    input
        .lines()
        .enumerate()
        .filter(|(_, line)| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|(n, line)| {
            let line = line?;
            let at = |what: String| anyhow::anyhow!("input line {}: {what}", n + 1);
            let value: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| at(format!("not JSON: {e}")))?;
            let Some(object) = value.as_object() else {
                return Err(at(format!("a frame is a JSON object with {FRAME_KEYS}")));
            };
            let keys: Vec<String> = object
                .keys()
                .filter(|k| *k != "direction")
                .cloned()
                .collect();
            if keys.len() != 1 || !CONTENT_KEYS.contains(&keys[0].as_str()) {
                return Err(at(format!(
                    "found the key(s) {keys:?}; a frame has exactly {FRAME_KEYS}"
                )));
            }
            let parsed: JsonFrame =
                serde_json::from_value(value).map_err(|e| at(format!("{}: {e}", keys[0])))?;
            let direction = match parsed.direction {
                JsonDirection::ClientToTarget => Direction::ClientToTarget,
                JsonDirection::TargetToClient => Direction::TargetToClient,
            };
            Ok((direction, parsed.content.into()))
        })
}

const CONTENT_KEYS: [&str; 10] = [
    "bytes",
    "line",
    "statement",
    "columns",
    "row",
    "file",
    "tool_call",
    "tool_result",
    "http_request",
    "http_response",
];

/// The frames a session of `kind` sends for `input` typed or sent by the client, then for
/// `output` from the target: what the gateway would send the plugin.
pub fn session_frames(
    kind: SessionKind,
    input: Option<&str>,
    output: Option<&str>,
) -> Vec<anyhow::Result<(Direction, Content)>> {
    let input = input.map(|i| kind.input_frames(i)).unwrap_or_default();
    let output = output.map(|o| kind.output_frames(o)).unwrap_or_default();
    input
        .into_iter()
        .map(|c| Ok((Direction::ClientToTarget, c)))
        .chain(
            output
                .into_iter()
                .map(|c| Ok((Direction::TargetToClient, c))),
        )
        .collect()
}

/// Feeds frames to a filter plugin in a session of `protocol` and writes one report line
/// per frame (the frame, the verdict, what the call cost), then what the plugin still
/// buffered at the end of each direction's stream.
pub fn run(
    plugin: &LoadedPlugin,
    protocol: &str,
    frames: impl IntoIterator<Item = anyhow::Result<(Direction, Content)>>,
    explain: bool,
    mut output: impl Write,
) -> anyhow::Result<()> {
    let session = SessionInfo {
        id: "local".into(),
        connection: "local".into(),
        protocol: protocol.into(),
        ..SessionInfo::default()
    };
    let mut instance = plugin.filter_instance(&session)?;
    let interest = instance.interest();
    eprintln!("{}: wants {interest}", plugin.name());
    if explain {
        instance.capture_logs();
    }
    let mut seq = [0u64; 2];
    for next in frames {
        let (direction, content) = next?;
        seq[direction as usize] += 1;
        let frame = Frame {
            seq: seq[direction as usize],
            direction,
            timestamp_ms: sluice_core::now_ms(),
            content,
        };
        let shown = ShownFrame::of(&frame);
        let seq = frame.seq;
        if !instance.wants(&frame) {
            // As in the gateway: a frame outside the plugin's interest, or one its prescreen
            // matches nothing in, passes uncalled.
            let why = match interest.wants(direction, frame.content.kind()) {
                true if matches!(frame.content, Content::Columns(_)) => {
                    "not asked: its prescreen matched nothing in it, passed without a call; \
                     the plugin gets it before the first of its rows it is asked about"
                }
                true => "not asked: its prescreen matched nothing in it, passed without a call",
                false => "not asked: outside the plugin's interest, passed without a call",
            };
            let report = Report {
                reason: Some(why.into()),
                ..report(seq, shown, Verdict::pass(), 0.0, instance.memory_bytes())
            };
            serde_json::to_writer(&mut output, &report)?;
            writeln!(output)?;
            continue;
        }
        let started = Instant::now();
        let renewals = instance.renewals();
        let result = instance.on_frame(&frame);
        let time_us = started.elapsed().as_secs_f64() * 1e6;
        let renewed = instance.renewals() > renewals;
        let report = match result {
            Ok(verdict) => report(seq, shown, verdict, time_us, instance.memory_bytes()),
            Err(error) => Report {
                verdict: "deny",
                reason: Some(format!("fails closed: {error}")),
                ..report(
                    seq,
                    shown,
                    Verdict::pass(),
                    time_us,
                    instance.memory_bytes(),
                )
            },
        };
        let report = Report {
            explain: instance.take_logs(),
            renewed,
            ..report
        };
        serde_json::to_writer(&mut output, &report)?;
        writeln!(output)?;
    }
    for (direction, name) in [
        (Direction::ClientToTarget, JsonDirection::ClientToTarget),
        (Direction::TargetToClient, JsonDirection::TargetToClient),
    ] {
        if let Some(content) = instance.flush(direction)? {
            let flushed =
                serde_json::json!({ "flushed": name, "content": JsonContent::from(content) });
            writeln!(output, "{flushed}")?;
        }
    }
    Ok(())
}

/// The frame a report is about, as JSON.
#[derive(Debug, Serialize)]
pub struct ShownFrame {
    direction: JsonDirection,
    #[serde(flatten)]
    content: JsonContent,
}

impl ShownFrame {
    fn of(frame: &Frame) -> ShownFrame {
        ShownFrame {
            direction: match frame.direction {
                Direction::ClientToTarget => JsonDirection::ClientToTarget,
                Direction::TargetToClient => JsonDirection::TargetToClient,
            },
            content: frame.content.clone().into(),
        }
    }
}

fn report(
    seq: u64,
    frame: ShownFrame,
    verdict: Verdict,
    time_us: f64,
    memory_bytes: usize,
) -> Report {
    let (name, reason, content) = match verdict.action {
        Action::Pass => ("pass", None, None),
        Action::Replace(content) => ("replace", None, Some(content.into())),
        Action::Hold(reason) => ("hold", Some(reason), None),
        Action::Deny(reason) => ("deny", Some(reason), None),
    };
    Report {
        seq,
        frame,
        verdict: name,
        reason,
        content,
        record_as: verdict.record_as.map(Into::into),
        time_us,
        memory_bytes,
        renewed: false,
        explain: Vec::new(),
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn cells_to_json(cells: Vec<Option<Vec<u8>>>) -> Vec<Option<String>> {
    cells.into_iter().map(|c| c.map(text)).collect()
}

fn cells_from_json(cells: Vec<Option<String>>) -> Vec<Option<Vec<u8>>> {
    cells
        .into_iter()
        .map(|c| c.map(String::into_bytes))
        .collect()
}

impl From<JsonContent> for Content {
    fn from(c: JsonContent) -> Self {
        match c {
            JsonContent::Bytes(s) => Content::Bytes(s.into_bytes()),
            JsonContent::Line(s) => Content::Line(s),
            JsonContent::Statement { text, params } => Content::Statement(Statement {
                text,
                params: cells_from_json(params),
            }),
            JsonContent::Columns(cols) => Content::Columns(
                cols.into_iter()
                    .map(|c| Column {
                        name: c.name,
                        table: c.table,
                        table_oid: 0,
                        type_oid: c.type_oid,
                        format: if c.binary {
                            CellFormat::Binary
                        } else {
                            CellFormat::Text
                        },
                    })
                    .collect(),
            ),
            JsonContent::Row(cells) => Content::Row(cells_from_json(cells)),
            JsonContent::File {
                path,
                offset,
                data,
                size,
                digest,
            } => Content::File(FileChunk {
                path,
                offset,
                data: data.into_bytes(),
                size,
                digest: digest.and_then(|d| hex::decode(d).ok()),
            }),
            JsonContent::ToolCall {
                server,
                tool,
                id,
                arguments,
            } => Content::ToolCall(ToolCall {
                server,
                tool,
                id,
                arguments,
            }),
            JsonContent::ToolResult {
                server,
                tool,
                id,
                output,
                is_error,
            } => Content::ToolResult(ToolResult {
                server,
                tool,
                id,
                output,
                is_error,
            }),
            JsonContent::HttpRequest {
                method,
                uri,
                headers,
            } => Content::HttpRequest(HttpRequest {
                method,
                uri,
                headers,
            }),
            JsonContent::HttpResponse { status, headers } => {
                Content::HttpResponse(HttpResponse { status, headers })
            }
        }
    }
}

impl From<Content> for JsonContent {
    fn from(c: Content) -> Self {
        match c {
            Content::Bytes(b) => JsonContent::Bytes(text(b)),
            Content::Line(s) => JsonContent::Line(s),
            Content::Statement(s) => JsonContent::Statement {
                text: s.text,
                params: cells_to_json(s.params),
            },
            Content::Columns(cols) => JsonContent::Columns(
                cols.into_iter()
                    .map(|c| JsonColumn {
                        name: c.name,
                        table: c.table,
                        type_oid: c.type_oid,
                        binary: c.format == CellFormat::Binary,
                    })
                    .collect(),
            ),
            Content::Row(cells) => JsonContent::Row(cells_to_json(cells)),
            Content::File(f) => JsonContent::File {
                path: f.path,
                offset: f.offset,
                data: text(f.data),
                size: f.size,
                digest: f.digest.map(hex::encode),
            },
            Content::ToolCall(c) => JsonContent::ToolCall {
                server: c.server,
                tool: c.tool,
                id: c.id,
                arguments: c.arguments,
            },
            Content::ToolResult(r) => JsonContent::ToolResult {
                server: r.server,
                tool: r.tool,
                id: r.id,
                output: r.output,
                is_error: r.is_error,
            },
            Content::HttpRequest(h) => JsonContent::HttpRequest {
                method: h.method,
                uri: h.uri,
                headers: h.headers,
            },
            Content::HttpResponse(h) => JsonContent::HttpResponse {
                status: h.status,
                headers: h.headers,
            },
        }
    }
}
