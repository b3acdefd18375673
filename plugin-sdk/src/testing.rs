//! Native test helpers: drive a [`Filter`] the way the gateway does, without Wasm.

use crate::{Config, Content, Direction, Filter, Frame, Interest, SessionInfo, Verdict};

/// One plugin instance for one test session, numbering frames per direction as the
/// gateway does.
pub struct FilterHarness<F: Filter> {
    plugin: F,
    interest: Interest,
    next_seq: [u64; 2],
}

impl<F: Filter> FilterHarness<F> {
    /// Initialise the plugin with `config_json` (the policy table as JSON) and a test session.
    pub fn new(config_json: &str) -> Result<Self, String> {
        let session = SessionInfo {
            id: "test-session".into(),
            connection: "test".into(),
            protocol: "exec".into(),
            ..SessionInfo::default()
        };
        let plugin = F::init(&Config::from_json(config_json), &session)?;
        Ok(FilterHarness {
            interest: plugin.interest(),
            plugin,
            next_seq: [1, 1],
        })
    }

    /// The plugin's verdict on the next frame, or `pass` without asking it when the frame is
    /// not one its [`Filter::interest`] names (as the gateway does).
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

    pub fn flush(&mut self, direction: Direction) -> Option<Content> {
        self.plugin.flush(direction)
    }

    pub fn plugin(&mut self) -> &mut F {
        &mut self.plugin
    }
}
