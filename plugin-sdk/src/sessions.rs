//! What each kind of session sends a filter: the one statement of it that the gateway, the
//! test harness, `sluice plugin run --as` and the check in `sluice policy` all share.
//!
//! A plugin that judges input must want the kinds the sessions it guards produce: a one-shot
//! script is a [`Content::Statement`], a line typed in a terminal is [`Content::Bytes`]
//! (keystrokes) and then a [`Content::Line`] (at Enter).

use crate::{CellFormat, Column, Content, ContentKind, Direction, Statement, ToolCall, ToolResult};

/// PostgreSQL's `text` type.
const TEXT_OID: u32 = 25;

/// A kind of session, as plugins see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionKind {
    /// `sluice exec CONN -- SCRIPT` or a script on standard input: the program's `script`
    /// command reads the whole input at once.
    ExecScript,
    /// `sluice connect CONN`: the program's `interactive` command in a terminal, keystrokes
    /// and typed lines.
    Terminal,
    /// A PostgreSQL client (psql, a driver) through a `postgres` connection.
    Postgres,
    /// A raw TCP stream through a `tcp` connection.
    Tcp,
    /// An MCP client through an `mcp` connection: tool calls and their results.
    Mcp,
}

use ContentKind::{
    Bytes, Columns, Line, Row, Statement as StatementKind, ToolCall as ToolCallKind,
    ToolResult as ToolResultKind,
};

impl SessionKind {
    pub const ALL: [SessionKind; 5] = [
        SessionKind::ExecScript,
        SessionKind::Terminal,
        SessionKind::Postgres,
        SessionKind::Tcp,
        SessionKind::Mcp,
    ];

    /// Its name on the command line (`plugin run --as NAME`) and in messages.
    pub fn name(self) -> &'static str {
        match self {
            SessionKind::ExecScript => "exec-script",
            SessionKind::Terminal => "terminal",
            SessionKind::Postgres => "pg",
            SessionKind::Tcp => "tcp",
            SessionKind::Mcp => "mcp",
        }
    }

    pub fn from_name(name: &str) -> Option<SessionKind> {
        SessionKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// `SessionInfo::protocol` in its sessions.
    pub fn protocol(self) -> &'static str {
        match self {
            SessionKind::ExecScript | SessionKind::Terminal => "exec",
            SessionKind::Postgres => "postgres",
            SessionKind::Tcp => "tcp",
            SessionKind::Mcp => "mcp",
        }
    }

    /// Every kind of content its sessions can send in `direction`.
    pub fn sends(self, direction: Direction) -> &'static [ContentKind] {
        match (self, direction) {
            // A script that is not UTF-8 goes as bytes, exactly as sent.
            (SessionKind::ExecScript, Direction::ClientToTarget) => &[StatementKind, Bytes],
            (SessionKind::Terminal, Direction::ClientToTarget) => &[Bytes, Line],
            (SessionKind::ExecScript | SessionKind::Terminal, Direction::TargetToClient) => {
                &[Bytes]
            }
            // Statements (simple and extended queries) and COPY data.
            (SessionKind::Postgres, Direction::ClientToTarget) => &[StatementKind, Bytes],
            // Result descriptions, rows, and the text of errors and notices as lines.
            (SessionKind::Postgres, Direction::TargetToClient) => &[Columns, Row, Line],
            (SessionKind::Tcp, _) => &[Bytes],
            (SessionKind::Mcp, Direction::ClientToTarget) => &[ToolCallKind],
            (SessionKind::Mcp, Direction::TargetToClient) => &[ToolResultKind],
        }
    }

    /// The kinds that carry what a person asked for (`input`) in the usual case: what a gate
    /// must want to judge these sessions.
    pub fn commands(self) -> &'static [ContentKind] {
        match self {
            SessionKind::ExecScript | SessionKind::Postgres => &[StatementKind],
            SessionKind::Terminal => &[Line],
            SessionKind::Tcp => &[Bytes],
            SessionKind::Mcp => &[ToolCallKind],
        }
    }

    /// The client-to-target frames the gateway makes of `input` typed or sent in such a
    /// session, in order.
    pub fn input_frames(self, input: &str) -> Vec<Content> {
        match self {
            SessionKind::ExecScript | SessionKind::Postgres => {
                vec![Content::Statement(Statement {
                    text: input.to_string(),
                    params: vec![],
                })]
            }
            SessionKind::Terminal => input
                .split_inclusive(['\n', '\r'])
                .flat_map(|line| {
                    let typed = line.trim_end_matches(['\n', '\r']);
                    let mut frames = Vec::new();
                    // The keystrokes first, then, at Enter, the whole line (blank lines are not
                    // judged: they run nothing).
                    if !typed.is_empty() {
                        frames.push(Content::Bytes(typed.as_bytes().to_vec()));
                    }
                    if typed.len() < line.len() && !typed.trim().is_empty() {
                        frames.push(Content::Line(typed.to_string()));
                    }
                    frames
                })
                .collect(),
            SessionKind::Tcp => vec![Content::Bytes(input.as_bytes().to_vec())],
            // `TOOL {"argument": ...}`: a call of TOOL with those arguments (none: `{}`).
            SessionKind::Mcp => {
                let (tool, arguments) =
                    input.trim().split_once(' ').unwrap_or((input.trim(), "{}"));
                vec![Content::ToolCall(ToolCall {
                    server: "server".into(),
                    tool: tool.into(),
                    id: "1".into(),
                    arguments: arguments.trim().into(),
                })]
            }
        }
    }

    /// The target-to-client frames for `output` from the target. A PostgreSQL server
    /// answers with a result: here one column (`?column?`) and a row per line of `output`.
    pub fn output_frames(self, output: &str) -> Vec<Content> {
        match self {
            SessionKind::Postgres => {
                let column = Column {
                    name: "?column?".into(),
                    table: None,
                    table_oid: 0,
                    type_oid: TEXT_OID,
                    format: CellFormat::Text,
                };
                let rows = output
                    .lines()
                    .map(|line| Content::Row(vec![Some(line.as_bytes().to_vec())]));
                std::iter::once(Content::Columns(vec![column]))
                    .chain(rows)
                    .collect()
            }
            // The tool's result: `output` as its one text content.
            SessionKind::Mcp => {
                let output = serde_json::json!({"content": [{"type": "text", "text": output}]});
                vec![Content::ToolResult(ToolResult {
                    server: "server".into(),
                    tool: "tool".into(),
                    id: "1".into(),
                    output: output.to_string(),
                    is_error: false,
                })]
            }
            _ => vec![Content::Bytes(output.as_bytes().to_vec())],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_a_kind_makes_is_one_it_declares() {
        for kind in SessionKind::ALL {
            for frame in kind.input_frames("rm -rf /tmp/x\nls\n") {
                assert!(
                    kind.sends(Direction::ClientToTarget)
                        .contains(&frame.kind())
                );
            }
            for frame in kind.output_frames("total 0") {
                assert!(
                    kind.sends(Direction::TargetToClient)
                        .contains(&frame.kind())
                );
            }
            assert_eq!(SessionKind::from_name(kind.name()), Some(kind));
        }
    }

    #[test]
    fn a_typed_line_is_keystrokes_then_the_line_at_enter() {
        let frames = SessionKind::Terminal.input_frames("ls -l\n\nexit");
        assert_eq!(
            frames,
            vec![
                Content::Bytes(b"ls -l".to_vec()),
                Content::Line("ls -l".into()),
                // No Enter yet: typed, not run.
                Content::Bytes(b"exit".to_vec()),
            ]
        );
    }
}
