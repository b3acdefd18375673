//! `builtin:sink-http`: every recorded event, in batches, as one HTTP POST per batch.
//!
//! ```toml
//! [plugins.siem]
//! source = "builtin:sink-http"
//! world = "sink"
//! allow_hosts = ["logs.example.com"]      # the only host it may reach
//! [plugins.siem.config]
//! url = "https://logs.example.com/ingest"
//! format = "ndjson"                       # or "splunk-hec", "loki", "slack"
//! headers = { authorization = "Splunk 1234" }
//! kinds = ["review"]                      # only these kinds of event (default: all)
//! ```
//!
//! Each batch ends with the record's signed head covering it (kind `head`): kept with the
//! events (NDJSON, Splunk, Loki), it lets an auditor check the gateway's store against this
//! copy (`sluice verify --head`). Slack messages leave it out unless `kinds` names it.
//!
//! A 2xx answer delivers the batch; a timeout, 408, 429 or 5xx (or no answer at all) asks
//! the gateway to retry it; any other status is permanent (a wrong token, a wrong URL).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};
use sluice_plugin_sdk::http::{self, Request};
use sluice_plugin_sdk::{Config, Event, HEAD_KIND, Sink, SinkError, json_lines};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    #[serde(default)]
    format: Format,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    kinds: Option<Vec<String>>,
    #[serde(default = "default_timeout")]
    timeout_seconds: u64,
}

fn default_timeout() -> u64 {
    10
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Format {
    /// One JSON object per line (generic webhooks, Vector's `http_server` source).
    #[default]
    Ndjson,
    /// Splunk's HTTP Event Collector: `{"time": …, "event": {…}}` objects, one per line.
    SplunkHec,
    /// Grafana Loki's push API: one stream per event kind.
    Loki,
    /// A Slack incoming webhook: one message, a line per event.
    Slack,
}

pub struct HttpSink {
    settings: Settings,
}

impl Sink for HttpSink {
    fn init(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        http::Url::parse(&settings.url).map_err(|e| format!("url: {e}"))?;
        if settings.timeout_seconds == 0 {
            return Err("timeout_seconds: must be at least 1".into());
        }
        Ok(HttpSink { settings })
    }

    fn deliver(&mut self, batch: Vec<Event>) -> Result<(), SinkError> {
        let wanted = |e: &&Event| match &self.settings.kinds {
            Some(kinds) => kinds.contains(&e.kind),
            // Chat messages are for people; the batch's signed head is for whatever keeps
            // the record (a SIEM, a log store), where it witnesses the chain.
            None => !(e.kind == HEAD_KIND && self.settings.format == Format::Slack),
        };
        let events: Vec<&Event> = batch.iter().filter(wanted).collect();
        if events.iter().all(|e| e.kind == HEAD_KIND) {
            return Ok(());
        }
        let (content_type, body) = encode(self.settings.format, &events);
        let mut request =
            Request::post(&self.settings.url, body).header("content-type", content_type);
        request.timeout = std::time::Duration::from_secs(self.settings.timeout_seconds);
        for (name, value) in &self.settings.headers {
            request = request.header(name, value);
        }
        // Errors name the host only: a webhook's path is its secret.
        let what = format!("POST {}", http::redacted(&self.settings.url));
        http::delivery(http::send(&request), &what)
    }
}

/// The body of one POST for `events`, with its content type.
fn encode(format: Format, events: &[&Event]) -> (&'static str, Vec<u8>) {
    match format {
        Format::Ndjson => (
            "application/x-ndjson",
            json_lines(events.iter().map(|e| e.to_json())),
        ),
        Format::SplunkHec => (
            "application/json",
            json_lines(events.iter().map(|e| {
                json!({
                    "time": e.time_ms as f64 / 1000.0,
                    "source": "sluice",
                    "sourcetype": format!("sluice:{}", e.kind),
                    "event": e.to_json(),
                })
            })),
        ),
        Format::Loki => {
            let mut streams: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
            for e in events {
                let nanos = (e.time_ms as u128 * 1_000_000).to_string();
                streams
                    .entry(&e.kind)
                    .or_default()
                    .push(json!([nanos, e.to_json().to_string()]));
            }
            let streams: Vec<Value> = streams
                .into_iter()
                .map(|(kind, values)| {
                    json!({"stream": {"source": "sluice", "kind": kind}, "values": values})
                })
                .collect();
            (
                "application/json",
                json!({ "streams": streams }).to_string().into_bytes(),
            )
        }
        Format::Slack => {
            let text: Vec<String> = events.iter().map(|e| slack_line(e)).collect();
            (
                "application/json",
                json!({ "text": text.join("\n") }).to_string().into_bytes(),
            )
        }
    }
}

/// One human line per event; reviews say who asked what and what happened.
fn slack_line(e: &Event) -> String {
    let meta: Value = serde_json::from_str(&e.meta).unwrap_or_default();
    let text = |key: &str| {
        meta.get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    if e.kind == "review" {
        let payload = String::from_utf8_lossy(&e.payload);
        let mut line = format!(
            "Review `{}` on `{}` is *{}* ({} by {}): `{}` asked by {}",
            text("review"),
            text("connection"),
            text("status"),
            text("action"),
            text("by"),
            payload.trim(),
            text("requester"),
        );
        let reason = text("reason");
        if !reason.is_empty() {
            line.push_str(&format!(", held because: {reason}"));
        }
        line.push_str(&format!(". `sluice review show {}`", text("review")));
        return line;
    }
    format!(
        "Sluice `{}` event {} (session `{}`)",
        e.kind, e.index, e.session
    )
}

sluice_plugin_sdk::export_sink!(HttpSink);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(index: u64, kind: &str, meta: &str, payload: &str) -> Event {
        Event {
            index,
            session: "s1".into(),
            seq: index,
            kind: kind.into(),
            time_ms: 1_700_000_000_123,
            meta: meta.into(),
            payload: payload.into(),
        }
    }

    #[test]
    fn each_format_encodes_a_batch() {
        let a = event(1, "frame", r#"{"dir":"in"}"#, "ls\n");
        let b = event(2, "session-close", "{}", "");
        let batch = [&a, &b];
        let (ty, body) = encode(Format::Ndjson, &batch);
        assert_eq!(ty, "application/x-ndjson");
        let lines: Vec<Value> = String::from_utf8(body)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (lines[0]["index"].as_u64(), lines[0]["payload"].as_str()),
            (Some(1), Some("ls\n"))
        );

        let (_, body) = encode(Format::SplunkHec, &batch);
        let first: Value =
            serde_json::from_str(String::from_utf8(body).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["time"], 1_700_000_000.123);
        assert_eq!(first["sourcetype"], "sluice:frame");
        assert_eq!(first["event"]["meta"]["dir"], "in");

        let (_, body) = encode(Format::Loki, &batch);
        let push: Value = serde_json::from_slice(&body).unwrap();
        let streams = push["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!(streams[0]["values"][0][0], "1700000000123000000");
    }

    #[test]
    fn slack_messages_say_what_a_review_is_about() {
        let review = event(
            3,
            "review",
            r#"{"review":"r-1","action":"created","by":"alice","status":"pending","connection":"shell","requester":"alice","reason":"rm -r of an absolute path"}"#,
            "rm -rf /srv",
        );
        let (_, body) = encode(Format::Slack, &[&review]);
        let message: Value = serde_json::from_slice(&body).unwrap();
        let text = message["text"].as_str().unwrap();
        assert!(
            text.contains("Review `r-1` on `shell` is *pending* (created by alice): `rm -rf /srv` asked by alice, held because: rm -r"),
            "{text}"
        );
        assert!(text.contains("sluice review show r-1"), "{text}");
    }

    #[test]
    fn settings_are_checked_at_init() {
        assert!(HttpSink::init(&Config::from_json(r#"{"url":"ftp://x"}"#)).is_err());
        assert!(
            HttpSink::init(&Config::from_json(r#"{"url":"http://x","format":"xml"}"#)).is_err()
        );
        assert!(
            HttpSink::init(&Config::from_json(
                r#"{"url":"http://x","kinds":["review"]}"#
            ))
            .is_ok()
        );
    }
}
