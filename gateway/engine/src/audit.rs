//! What auditors see: recorded events as JSON, replay, asciicast export, verify reports.
//! Shared by the gateway (which serves events) and the CLI (which renders them).

use serde::Deserialize;
use serde_json::json;

use sluice_record::{Recorded, VerifyReport};

/// One recorded event as the API serves it. Payloads travel as hex so bytes survive exactly.
pub fn event_json(e: &Recorded) -> serde_json::Value {
    json!({
        "index": e.entry.index,
        "session": e.entry.session,
        "seq": e.entry.seq,
        "kind": e.entry.kind,
        "time_ms": e.entry.time_ms,
        "meta": serde_json::from_str::<serde_json::Value>(&e.entry.meta).unwrap_or_default(),
        "payload_hex": e.payload.as_ref().map(hex::encode),
    })
}

/// An event as the CLI reads it back.
#[derive(Clone, Debug, Deserialize)]
pub struct EventView {
    pub index: u64,
    pub seq: u64,
    pub kind: String,
    pub time_ms: u64,
    pub meta: serde_json::Value,
    /// The payload's bytes (served as hex, `payload_hex`); empty when it has none or it
    /// was purged.
    #[serde(rename = "payload_hex", default, deserialize_with = "from_hex")]
    pub payload: Vec<u8>,
}

fn from_hex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map_or(Ok(Vec::new()), |h| {
        hex::decode(h).map_err(serde::de::Error::custom)
    })
}

impl EventView {
    /// A recorded event as the API would serve it (its payload moved, not copied).
    pub fn of(e: Recorded) -> EventView {
        EventView {
            index: e.entry.index,
            seq: e.entry.seq,
            meta: serde_json::from_str(&e.entry.meta).unwrap_or_default(),
            kind: e.entry.kind,
            time_ms: e.entry.time_ms,
            payload: e.payload.unwrap_or_default(),
        }
    }

    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// What the event put on the client's screen: stream bytes as they were; a result's
    /// column names and each of its rows on a line of their own (a `rows` event holds a
    /// batch of rows, a line each, and the column names before a result's first batch).
    pub fn shown(&self) -> Vec<u8> {
        let mut bytes = self.payload.clone();
        match self.meta["content"].as_str() {
            Some("tool-result") => return tool_result_text(&self.payload).into_bytes(),
            // An MCP server's request to the client (sampling, elicitation).
            Some("tool-call") => {
                return format!("< {}\n", tool_call_text(&self.payload)).into_bytes();
            }
            Some("columns" | "row") => bytes.push(b'\n'),
            Some("rows") if self.meta.get("columns").is_some() => {
                let mut names = self.meta["columns"].to_string().into_bytes();
                names.push(b'\n');
                bytes.splice(0..0, names);
            }
            _ => {}
        }
        bytes
    }

    pub fn is_output(&self) -> bool {
        self.kind == "frame" && self.meta["dir"] == "out" && self.meta["outcome"] == "pass"
    }

    pub fn is_input(&self) -> bool {
        self.kind == "frame" && self.meta["dir"] == "in" && self.meta["content"] == "bytes"
    }

    /// A whole input the client sent at once: a one-shot script, an SQL statement, an MCP
    /// tool call or its answer to a server's request. Unlike keystrokes, no terminal echoes
    /// it, so a replay of the output alone would not show it.
    pub fn is_statement(&self) -> bool {
        self.kind == "frame"
            && self.meta["dir"] == "in"
            && matches!(
                self.meta["content"].as_str(),
                Some("statement" | "tool-call" | "tool-result")
            )
    }

    /// A statement's text; an MCP tool call as `TOOL ARGUMENTS` (the arguments' JSON), and
    /// the client's answer to a server's request as `(answer) TEXT`.
    pub fn statement_text(&self) -> String {
        match self.meta["content"].as_str() {
            Some("tool-call") => tool_call_text(&self.payload),
            Some("tool-result") => {
                format!("(answer) {}", tool_result_text(&self.payload).trim_end())
            }
            _ => String::from_utf8_lossy(&self.payload).into_owned(),
        }
    }

    /// What became of a client's frame, when it was not simply passed: `refused: WHY`,
    /// `held: WHY`, or `masked` (a plugin replaced it).
    pub fn verdict(&self) -> Option<String> {
        let reason = self.meta["reason"].as_str().unwrap_or("");
        match self.meta["outcome"].as_str() {
            Some("deny") => Some(format!("refused: {reason}")),
            Some("hold") => Some(format!("held: {reason}")),
            _ => {
                let replaced = self.meta["calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c[1].as_str().is_some_and(|v| v.starts_with("replace")));
                replaced.then(|| "masked".to_string())
            }
        }
    }

    /// The terminal size a session opened with (`cols`, `rows`), 80x24 when it says none.
    pub fn terminal_size(&self) -> (u64, u64) {
        self.size_or((80, 24))
    }

    /// The size this event names, each part of `default` where it names none.
    pub fn size_or(&self, default: (u64, u64)) -> (u64, u64) {
        let part = |key: &str, default: u64| {
            self.meta[key]
                .as_u64()
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        (part("cols", default.0), part("rows", default.1))
    }

    /// A review's step in this session, in words: `review R approved by bob (1 of 2)`.
    pub fn review_note(&self) -> Option<String> {
        if self.kind != sluice_record::kinds::REVIEW {
            return None;
        }
        let m = &self.meta;
        let text = |k: &str| m[k].as_str().unwrap_or("").to_string();
        let mut note = format!("review {} {}", text("review"), text("status"));
        if let Some(by) = m["by"].as_str() {
            note += &format!(" by {by}");
        }
        if m["required"].as_u64().is_some_and(|r| r > 1) {
            note += &format!(" ({} of {})", m["approvals"], m["required"]);
        }
        if let Some(why) = m["decision_reason"].as_str().or(m["reason"].as_str()) {
            note += &format!(": {why}");
        }
        Some(note)
    }
}

/// How replay marks what the client sent, so inputs stand apart from the output around them.
#[derive(Clone, Copy, Debug)]
pub enum Marking {
    /// `> ` before each line.
    Plain,
    /// The same, in bold cyan (for a terminal).
    Styled,
}

impl Marking {
    /// `lines` as replay shows an input (or a note on one): each line after `> `, and
    /// `[note]` after the last.
    pub fn mark(self, lines: &str, note: Option<&str>) -> Vec<u8> {
        let (on, off) = match self {
            Marking::Plain => ("", ""),
            Marking::Styled => ("\x1b[1;36m", "\x1b[0m"),
        };
        let mut out = String::new();
        let body = lines.strip_suffix('\n').unwrap_or(lines);
        for line in body.split('\n') {
            out += &format!("{on}> {line}{off}\n");
        }
        if let Some(note) = note {
            out.insert_str(out.len() - 1, &format!("{on}  [{note}]{off}"));
        }
        out.into_bytes()
    }
}

/// A session as `sluice replay` prints it: the output as it was, with each statement the
/// client sent (and each review of one) marked, in the order they happened. Outputs only
/// when `with_inputs` is false. Returns each piece with its time.
pub fn replay(events: &[EventView], with_inputs: bool, marking: Marking) -> Vec<(u64, Vec<u8>)> {
    let mut pieces = Vec::new();
    let mut at_line_start = true;
    for e in events {
        let piece = if e.is_output() {
            e.shown()
        } else if !with_inputs {
            continue;
        } else if e.is_statement() {
            marking.mark(&e.statement_text(), e.verdict().as_deref())
        } else if let Some(note) = e.review_note() {
            marking.mark(&note, None)
        } else {
            continue;
        };
        let mut bytes = Vec::with_capacity(piece.len() + 1);
        if !e.is_output() && !at_line_start {
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(&piece);
        if let Some(last) = bytes.last() {
            at_line_start = *last == b'\n';
        }
        pieces.push((e.time_ms, bytes));
    }
    pieces
}

/// A recorded MCP tool call (or a server's request) as `TOOL ARGUMENTS`.
fn tool_call_text(payload: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(call) => format!(
            "{} {}",
            call["tool"].as_str().unwrap_or("?"),
            call["arguments"].as_str().unwrap_or("{}")
        ),
        Err(_) => String::from_utf8_lossy(payload).into_owned(),
    }
}

/// A recorded MCP tool result as a person reads it: its text contents (each on its own
/// line), marked when the tool reported an error; anything else as the result's JSON.
fn tool_result_text(payload: &[u8]) -> String {
    let recorded: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let output = recorded["output"].as_str().unwrap_or_default();
    let result: serde_json::Value = serde_json::from_str(output).unwrap_or_default();
    let texts: Vec<&str> = result["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|block| block["text"].as_str())
        .collect();
    let mut text = match texts.is_empty() {
        true => output.to_string(),
        false => texts.join("\n"),
    };
    if recorded["is_error"] == true {
        text.insert_str(0, "(error) ");
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

pub fn report_json(report: &VerifyReport) -> serde_json::Value {
    json!({
        "holds": report.holds(),
        "entries": report.entries,
        "purged": report.purged.len(),
        "purged_ranges": report.purged_ranges(),
        "problem": report.problem.as_ref().map(|p| p.to_string()),
        "head": report.head,
        "repaired": report.repaired,
        "trust": report.trust,
        "gaps": report.gaps,
        "rotations": report.rotations,
        "node_keys": report.node_keys.iter().map(|(node, at)| serde_json::json!({"node": node, "at": at})).collect::<Vec<_>>(),
        "anchors_confirmed": report.anchors_confirmed,
        "notes": report.notes,
    })
}

/// asciicast v2 (what `asciinema play` and the console's player read): a header line at
/// the terminal's size when the session opened, then `[seconds, code, text]` lines: `o`
/// output, `i` input (keystrokes, scripts, statements), `r` a resize (`COLSxROWS`), `m` a
/// marker on each statement and review, so a player can jump to them.
pub fn asciicast(events: &[EventView]) -> String {
    let start = events.first().map_or(0, |e| e.time_ms);
    let (width, height) = events
        .iter()
        .find(|e| e.kind == sluice_record::kinds::SESSION_OPEN)
        .map_or((80, 24), EventView::terminal_size);
    let mut out =
        json!({"version": 2, "width": width, "height": height, "timestamp": start / 1000})
            .to_string();
    out.push('\n');
    let mut clock = CastClock::starting(start);
    for e in events {
        let t = clock.at(e.time_ms);
        for (code, text) in cast_lines(e, (width, height)) {
            out.push_str(&json!([seconds(t), code, text]).to_string());
            out.push('\n');
        }
    }
    out
}

/// What one event adds to an asciicast (and to a replay segment): output (`o`), keystrokes
/// (`i`), a statement as a marker and its text (`m`, `i`), a review as a marker, a resize
/// (`r`, `COLSxROWS`; `size` fills in what the event leaves out).
pub fn cast_lines(e: &EventView, size: (u64, u64)) -> Vec<(&'static str, String)> {
    if e.is_output() {
        vec![("o", String::from_utf8_lossy(&e.shown()).into_owned())]
    } else if e.is_input() {
        vec![("i", String::from_utf8_lossy(e.payload()).into_owned())]
    } else if e.is_statement() {
        let text = e.statement_text();
        let first: String = text.lines().next().unwrap_or("").chars().take(60).collect();
        vec![("m", first), ("i", text)]
    } else if let Some(note) = e.review_note() {
        vec![("m", note)]
    } else if e.kind == sluice_record::kinds::RESIZE {
        let (cols, rows) = e.size_or(size);
        vec![("r", format!("{cols}x{rows}"))]
    } else {
        vec![]
    }
}

/// Milliseconds as an asciicast's seconds. Every time a player compares (a segment's start,
/// its first event) goes through here, so equal milliseconds stay equal seconds.
pub fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// A session's times as milliseconds since it started, never going back (a player refuses
/// an event earlier than the one before it; a wall clock may step back).
#[derive(Clone, Copy, Debug)]
pub struct CastClock {
    start: u64,
    last: u64,
}

impl CastClock {
    pub fn starting(start_ms: u64) -> CastClock {
        CastClock {
            start: start_ms,
            last: 0,
        }
    }

    /// A clock that has reached `offset` already (a segment's start).
    pub fn resumed(start_ms: u64, offset: u64) -> CastClock {
        CastClock {
            start: start_ms,
            last: offset,
        }
    }

    pub fn at(&mut self, time_ms: u64) -> u64 {
        self.last = self.last.max(time_ms.saturating_sub(self.start));
        self.last
    }
}
