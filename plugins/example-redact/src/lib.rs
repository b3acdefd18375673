//! Replaces a configured literal wherever it appears in a frame: in stream bytes, lines,
//! statements (and their parameters) and result cells. A small, complete example of a
//! filter; the real masking plugin is `mask`.
//!
//! ```toml
//! [plugins.redact]
//! source = "builtin:example-redact"
//! config = { literal = "hunter2", replacement = "[REDACTED]" }
//! ```

use serde::Deserialize;
use sluice_plugin_sdk::{
    Config, Content, FileChunk, Filter, Frame, SessionInfo, Statement, ToolCall, ToolResult,
    Verdict,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    literal: String,
    #[serde(default = "default_replacement")]
    replacement: String,
}

fn default_replacement() -> String {
    "[REDACTED]".into()
}

pub struct Redact {
    literal: Vec<u8>,
    replacement: Vec<u8>,
}

impl Filter for Redact {
    fn init(config: &Config, _session: &SessionInfo) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.literal.is_empty() {
            return Err("`literal` must not be empty".into());
        }
        Ok(Redact {
            literal: settings.literal.into_bytes(),
            replacement: settings.replacement.into_bytes(),
        })
    }

    fn on_frame(&mut self, frame: &Frame) -> Verdict {
        let redacted = match &frame.content {
            Content::Bytes(bytes) => self.redact(bytes).map(Content::Bytes),
            Content::Line(line) => self.redact_text(line).map(Content::Line),
            Content::Statement(statement) => {
                let text = self.redact_text(&statement.text);
                let params: Vec<_> = statement
                    .params
                    .iter()
                    .map(|p| self.redact_cell(p))
                    .collect();
                let changed = text.is_some() || params.iter().any(Option::is_some);
                changed.then(|| {
                    Content::Statement(Statement {
                        text: text.unwrap_or_else(|| statement.text.clone()),
                        params: merge(&statement.params, params),
                    })
                })
            }
            Content::Row(cells) => {
                let new: Vec<_> = cells.iter().map(|c| self.redact_cell(c)).collect();
                new.iter()
                    .any(Option::is_some)
                    .then(|| Content::Row(merge(cells, new)))
            }
            Content::File(chunk) => self.redact(&chunk.data).map(|data| {
                Content::File(FileChunk {
                    data,
                    ..chunk.clone()
                })
            }),
            Content::ToolCall(call) => self.redact_text(&call.arguments).map(|arguments| {
                Content::ToolCall(ToolCall {
                    arguments,
                    ..call.clone()
                })
            }),
            Content::ToolResult(result) => self.redact_text(&result.output).map(|output| {
                Content::ToolResult(ToolResult {
                    output,
                    ..result.clone()
                })
            }),
            Content::Columns(_) | Content::HttpRequest(_) | Content::HttpResponse(_) => None,
        };
        match redacted {
            Some(content) => Verdict::replace(content),
            None => Verdict::pass(),
        }
    }
}

impl Redact {
    /// The input with every occurrence replaced, or `None` when there is none.
    fn redact(&self, input: &[u8]) -> Option<Vec<u8>> {
        let mut matches = memchr::memmem::find_iter(input, &self.literal).peekable();
        matches.peek()?;
        let mut out = Vec::with_capacity(input.len());
        let mut copied = 0;
        for start in matches {
            // find_iter yields non-overlapping matches, left to right.
            out.extend_from_slice(&input[copied..start]);
            out.extend_from_slice(&self.replacement);
            copied = start + self.literal.len();
        }
        out.extend_from_slice(&input[copied..]);
        Some(out)
    }

    fn redact_text(&self, text: &str) -> Option<String> {
        // Literal and replacement are both UTF-8, so the result is too.
        self.redact(text.as_bytes())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    fn redact_cell(&self, cell: &Option<Vec<u8>>) -> Option<Option<Vec<u8>>> {
        cell.as_deref().and_then(|c| self.redact(c)).map(Some)
    }
}

fn merge(old: &[Option<Vec<u8>>], new: Vec<Option<Option<Vec<u8>>>>) -> Vec<Option<Vec<u8>>> {
    old.iter()
        .zip(new)
        .map(|(o, n)| n.unwrap_or_else(|| o.clone()))
        .collect()
}

sluice_plugin_sdk::export_filter!(Redact);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin_sdk::{Direction::*, testing::FilterHarness};

    fn harness() -> FilterHarness<Redact> {
        FilterHarness::new(r#"{"literal": "hunter2", "replacement": "***"}"#).unwrap()
    }

    #[test]
    fn replaces_every_occurrence_in_bytes() {
        let verdict = harness().send(
            TargetToClient,
            Content::Bytes(b"hunter2 and hunter2!".to_vec()),
        );
        assert_eq!(
            verdict,
            Verdict::replace(Content::Bytes(b"*** and ***!".to_vec()))
        );
    }

    #[test]
    fn passes_frames_without_the_literal() {
        assert_eq!(
            harness().send(ClientToTarget, Content::Line("ls -la".into())),
            Verdict::pass()
        );
    }

    #[test]
    fn replaces_only_matching_cells_and_keeps_nulls() {
        let row = Content::Row(vec![
            Some(b"1".to_vec()),
            None,
            Some(b"pw=hunter2".to_vec()),
        ]);
        let verdict = harness().send(TargetToClient, row);
        let expected = Content::Row(vec![Some(b"1".to_vec()), None, Some(b"pw=***".to_vec())]);
        assert_eq!(verdict, Verdict::replace(expected));
    }

    #[test]
    fn rejects_unknown_settings() {
        let err = FilterHarness::<Redact>::new(r#"{"literal": "x", "colour": "red"}"#)
            .err()
            .unwrap();
        assert!(err.contains("unknown field `colour`"), "{err}");
    }
}
