//! `sluice trace SESSION`: a session's record as a plugin author reads it. Each frame
//! decoded (as recorded: masked where the chain masked it), which plugin answered what and how
//! long each call took, what was refused or held and why, and the reviews. No hex.

use std::fmt::Write;

use sluice_engine::audit::EventView;

/// The trace of one session's events, as text.
pub fn render(events: &[EventView]) -> String {
    let mut out = String::new();
    let start = events.first().map_or(0, |e| e.time_ms);
    for event in events {
        let at = format!("+{} ms", event.time_ms.saturating_sub(start));
        let meta = &event.meta;
        match event.kind.as_str() {
            "session-open" => {
                let mode = meta["mode"]
                    .as_str()
                    .map(|m| format!(", {m}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "session on `{}` ({}{mode}) by {} from {}",
                    text(&meta["connection"]),
                    text(&meta["protocol"]),
                    text(&meta["subject"]),
                    text(&meta["client"]),
                );
                let plugins: Vec<String> = list(&meta["plugins"])
                    .map(|p| format!("{} ({})", text(&p["name"]), short(&p["sha256"])))
                    .collect();
                let chain = if plugins.is_empty() {
                    "none".to_string()
                } else {
                    plugins.join(" -> ")
                };
                let _ = writeln!(out, "chain: {chain}");
            }
            "frame" => frame(&mut out, &at, event),
            "review" => {
                let _ = writeln!(
                    out,
                    "{at:>9}  review {} {}{}: {} ({} of {} approvals){}",
                    text(&meta["review"]),
                    text(&meta["action"]),
                    meta["by"]
                        .as_str()
                        .map(|by| format!(" by {by}"))
                        .unwrap_or_default(),
                    text(&meta["status"]),
                    meta["approvals"],
                    meta["required"],
                    meta["decision_reason"]
                        .as_str()
                        .map(|r| format!(", saying {r:?}"))
                        .unwrap_or_default(),
                );
            }
            "session-close" => {
                let status = meta["exit_status"]
                    .as_i64()
                    .map_or("no exit status".into(), |s| format!("exit status {s}"));
                let reason = meta["reason"]
                    .as_str()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                let _ = writeln!(out, "{at:>9}  closed, {status}{reason}");
            }
            other => {
                let _ = writeln!(out, "{at:>9}  {other} {meta}");
            }
        }
    }
    out
}

fn frame(out: &mut String, at: &str, event: &EventView) {
    let meta = &event.meta;
    let arrow = if meta["dir"] == "in" { "->" } else { "<-" };
    let content = text(&meta["content"]);
    let outcome = text(&meta["outcome"]);
    let payload = String::from_utf8_lossy(event.payload()).into_owned();
    let shown = match content.as_str() {
        "rows" => {
            let count = meta["count"].as_u64().unwrap_or(0);
            let columns = meta
                .get("columns")
                .map(|c| format!(" of {c}"))
                .unwrap_or_default();
            format!("{count} row(s){columns}")
        }
        _ => format!("{payload:?}"),
    };
    let _ = writeln!(out, "{at:>9}  {arrow} {content:<9} {outcome:<5} {shown}");
    let pad = " ".repeat(11);
    if content == "rows" {
        for row in payload.lines() {
            let _ = writeln!(out, "{pad}   {row}");
        }
    }
    if let Some(params) = meta.get("params") {
        let _ = writeln!(out, "{pad}params: {params}");
    }
    if let Some(reason) = meta["reason"].as_str() {
        let _ = writeln!(out, "{pad}why: {reason}");
    }
    let calls: Vec<String> = list(&meta["calls"])
        .map(|call| {
            let micros = call[2].as_u64().unwrap_or(0);
            match call[3].as_u64() {
                Some(n) => format!(
                    "{}: {} x{n} ({micros} us in all)",
                    text(&call[0]),
                    text(&call[1])
                ),
                None => format!("{}: {} ({micros} us)", text(&call[0]), text(&call[1])),
            }
        })
        .collect();
    if !calls.is_empty() {
        let _ = writeln!(out, "{pad}plugins: {}", calls.join(", "));
    }
    for failure in list(&meta["failures"]) {
        let _ = writeln!(out, "{pad}failed: {}", text(failure));
    }
}

fn list(value: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    value.as_array().into_iter().flatten()
}

fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "?".into(),
        other => other.to_string(),
    }
}

fn short(digest: &serde_json::Value) -> String {
    text(digest).chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, time_ms: u64, meta: serde_json::Value, payload: &[u8]) -> EventView {
        EventView {
            index: 0,
            seq: 1,
            kind: kind.into(),
            time_ms,
            meta,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn frames_show_decoded_with_each_plugins_answer_and_time() {
        let events = [
            event(
                "session-open",
                1000,
                serde_json::json!({"connection": "shell", "protocol": "exec", "mode": "exec",
                    "subject": "ana", "client": "127.0.0.1:5",
                    "plugins": [{"name": "gate", "sha256": "d1de4f1142ffd7"}]}),
                b"",
            ),
            event(
                "frame",
                1004,
                serde_json::json!({"content": "statement", "dir": "in", "outcome": "deny",
                    "reason": "gate: no", "failures": [], "calls": [["gate", "deny", 41]]}),
                b"rm -rf /\n",
            ),
            event(
                "frame",
                1010,
                serde_json::json!({"content": "rows", "dir": "out", "outcome": "pass", "count": 2,
                    "columns": ["a"], "failures": [], "calls": [["mask", "pass", 30, 2]]}),
                b"[\"1\"]\n[\"2\"]\n",
            ),
            event(
                "session-close",
                1012,
                serde_json::json!({"exit_status": 1, "reason": null}),
                b"",
            ),
        ];
        let trace = render(&events);
        assert!(trace.contains("chain: gate (d1de4f1142ff)"), "{trace}");
        assert!(
            trace.contains(r#"+4 ms  -> statement deny  "rm -rf /\n""#),
            "{trace}"
        );
        assert!(trace.contains("why: gate: no"), "{trace}");
        assert!(trace.contains("plugins: gate: deny (41 us)"), "{trace}");
        assert!(trace.contains(r#"2 row(s) of ["a"]"#), "{trace}");
        assert!(trace.contains("mask: pass x2 (30 us in all)"), "{trace}");
        assert!(trace.contains("closed, exit status 1"), "{trace}");
        assert!(!trace.contains("payload_hex"), "{trace}");
    }
}
