//! Native test helpers: drive a [`Filter`] the way the gateway does, without Wasm.
//!
//! ```
//! # use sluice_plugin_sdk::{Config, Content, Filter, Frame, SessionInfo, Verdict};
//! # struct NoDrop;
//! # impl Filter for NoDrop {
//! #     fn init(_: &Config, _: &SessionInfo) -> Result<Self, String> { Ok(NoDrop) }
//! #     fn on_frame(&mut self, frame: &Frame) -> Verdict {
//! #         match frame.content.as_text() {
//! #             Some(text) if text.contains("DROP") => Verdict::deny("no DROP"),
//! #             _ => Verdict::pass(),
//! #         }
//! #     }
//! # }
//! use sluice_plugin_sdk::{SessionKind, testing::FilterHarness};
//!
//! // A shell: `sluice exec shell -- SCRIPT` and a terminal send different frames.
//! let mut shell = FilterHarness::<NoDrop>::new("{}").unwrap();
//! assert!(shell.exec_script("psql -c 'DROP TABLE t'").is_deny());
//! assert!(shell.typed_line("psql -c 'DROP TABLE t'").is_deny());
//! let mut pg = FilterHarness::<NoDrop>::session(SessionKind::Postgres, "{}").unwrap();
//! assert!(pg.query("DROP TABLE t").is_deny());
//! ```

use crate::{
    Action, Config, Content, Direction, Filter, Frame, Interest, SessionInfo, SessionKind, Verdict,
};

/// One plugin instance for one test session, numbering frames per direction as the
/// gateway does.
pub struct FilterHarness<F: Filter> {
    plugin: F,
    interest: Interest,
    kind: SessionKind,
    next_seq: [u64; 2],
}

impl<F: Filter> FilterHarness<F> {
    /// Initialise the plugin with `config_json` (the policy table as JSON) for a test
    /// session of a shell (`exec`): both [`FilterHarness::exec_script`] and
    /// [`FilterHarness::typed_line`] apply.
    pub fn new(config_json: &str) -> Result<Self, String> {
        Self::session(SessionKind::ExecScript, config_json)
    }

    /// Initialise the plugin for a test session of `kind` (its `protocol` is the one the
    /// gateway gives such sessions).
    pub fn session(kind: SessionKind, config_json: &str) -> Result<Self, String> {
        let session = SessionInfo {
            id: "test-session".into(),
            connection: "test".into(),
            protocol: kind.protocol().into(),
            ..SessionInfo::default()
        };
        let plugin = F::init(&Config::from_json(config_json), &session)?;
        Ok(FilterHarness {
            interest: plugin.interest(),
            plugin,
            kind,
            next_seq: [1, 1],
        })
    }

    /// The plugin's verdict on the next frame, or `pass` without asking it when the frame is
    /// not one its [`Filter::interest`] names (as the gateway does). A prescreen is not
    /// applied: the plugin must be right on every frame of its interest by itself
    /// (`sluice plugin run` applies it as the gateway does).
    pub fn send(&mut self, direction: Direction, content: Content) -> Verdict {
        let slot = &mut self.next_seq[direction as usize];
        let frame = Frame {
            seq: *slot,
            direction,
            timestamp_ms: 0,
            content,
        };
        *slot += 1;
        if !self.interest.wants(direction, frame.content.kind()) {
            return Verdict::pass();
        }
        self.plugin.on_frame(&frame)
    }

    /// A one-shot script (`sluice exec CONN -- SCRIPT`): one statement frame.
    pub fn exec_script(&mut self, script: &str) -> Verdict {
        self.input_as(SessionKind::ExecScript, script)
    }

    /// A line typed at a terminal and Enter: the keystrokes as a bytes frame, then the line
    /// as a line frame. Returns the first deny or hold, else the line's verdict (whether
    /// Enter reaches the program).
    pub fn typed_line(&mut self, line: &str) -> Verdict {
        self.input_as(SessionKind::Terminal, &format!("{line}\n"))
    }

    /// A PostgreSQL query: one statement frame.
    pub fn query(&mut self, sql: &str) -> Verdict {
        self.input_as(SessionKind::Postgres, sql)
    }

    /// What the target prints (a program's output, a TCP peer's bytes): one bytes frame.
    pub fn output(&mut self, text: &str) -> Verdict {
        self.send(
            Direction::TargetToClient,
            Content::Bytes(text.as_bytes().to_vec()),
        )
    }

    /// One result row from a PostgreSQL server, `None` for NULL.
    pub fn row(&mut self, cells: &[Option<&str>]) -> Verdict {
        let cells = cells.iter().map(|c| c.map(|c| c.as_bytes().to_vec()));
        self.send(Direction::TargetToClient, Content::Row(cells.collect()))
    }

    /// The frames a session of `kind` sends for `input`, each through the plugin; the first
    /// deny or hold decides, else the last frame's verdict.
    pub fn input_as(&mut self, kind: SessionKind, input: &str) -> Verdict {
        let mut last = Verdict::pass();
        for content in kind.input_frames(input) {
            let verdict = self.send(Direction::ClientToTarget, content);
            if matches!(verdict.action, Action::Deny(_) | Action::Hold(_)) {
                return verdict;
            }
            last = verdict;
        }
        last
    }

    pub fn flush(&mut self, direction: Direction) -> Option<Content> {
        self.plugin.flush(direction)
    }

    /// The kind of session this harness plays.
    pub fn kind(&self) -> SessionKind {
        self.kind
    }

    pub fn plugin(&mut self) -> &mut F {
        &mut self.plugin
    }
}
