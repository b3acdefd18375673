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
    pub payload_hex: Option<String>,
}

impl EventView {
    pub fn payload(&self) -> Vec<u8> {
        self.payload_hex
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
            .unwrap_or_default()
    }

    /// What the event put on the client's screen: stream bytes as they were; a result's
    /// column names and each of its rows on a line of their own (a `rows` event holds a
    /// batch of rows, a line each, and the column names before a result's first batch).
    pub fn shown(&self) -> Vec<u8> {
        let mut bytes = self.payload();
        match self.meta["content"].as_str() {
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
        "anchors_confirmed": report.anchors_confirmed,
        "notes": report.notes,
    })
}

/// asciicast v2 (what `asciinema play` reads): a header line, then `[seconds, "o", text]`
/// for output and `[seconds, "i", text]` for input.
pub fn asciicast(events: &[EventView], width: u16, height: u16) -> String {
    let start = events.first().map_or(0, |e| e.time_ms);
    let mut out =
        json!({"version": 2, "width": width, "height": height, "timestamp": start / 1000})
            .to_string();
    out.push('\n');
    for e in events {
        let code = if e.is_output() {
            "o"
        } else if e.is_input() {
            "i"
        } else {
            continue;
        };
        let t = (e.time_ms.saturating_sub(start)) as f64 / 1000.0;
        out.push_str(&json!([t, code, String::from_utf8_lossy(&e.shown())]).to_string());
        out.push('\n');
    }
    out
}
