//! The filter chain: every frame of a session crosses its connection's plugins, in policy
//! order, before it may reach the other side.
//!
//! How verdicts compose, frame by frame:
//!
//! | a plugin says | the chain does                                                        |
//! |---------------|-----------------------------------------------------------------------|
//! | pass          | hands the frame, unchanged, to the next plugin                         |
//! | (not asked)   | the same: a frame outside a plugin's `interest` skips it               |
//! | replace       | hands the new content to the next plugin; it is what gets forwarded    |
//! | hold          | notes the reason and goes on (a later deny still wins, a later mask   |
//! |               | still masks what the reviewer sees); the frame ends held               |
//! | deny          | stops: the frame is refused with this plugin's reason                  |
//! | (fails)       | deny, unless the plugin's policy says `on_error = "pass"`; the        |
//! |               | failure is logged and the instance re-made for the next frame          |
//!
//! `record-as` content from a plugin becomes what the record and sinks get for this frame,
//! while the forwarded content goes on through the chain. A later plugin's `replace` also
//! applies to the record until some plugin sets `record-as`; after that the record keeps the
//! redacted form. So put redacting plugins last.
//!
//! By direction: `hold` is for client-to-target frames (on a target-to-client frame it is a
//! malformed verdict, so it fails closed). A denied target-to-client frame ends that response
//! with a protocol error, or the session where the protocol has none.

use crate::policy::OnError;
use sluice_core::frame::{Action, Content, Direction, Frame, SessionInfo, Verdict};
use sluice_plugin_host::{FilterInstance, LoadedPlugin, PluginError};

/// The outcome of one frame through the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// What goes to the peer (when the outcome allows).
    pub forward: Content,
    /// What the record and the sinks get when it is not `forward` (a plugin's `record-as`):
    /// read it through [`Decision::recorded`]. Kept apart rather than copied, so a frame no
    /// plugin redacted is never cloned on its way to the record.
    pub record_as: Option<Content>,
    /// Whether a plugin replaced the frame: when not, `forward` is the frame as it was read,
    /// and its bytes as read may go on unchanged.
    pub replaced: bool,
    /// Plugins that failed on this frame, whatever the outcome.
    pub failures: Vec<PluginError>,
    /// Each plugin call the frame took, in chain order (plugins it did not interest are
    /// not called): what `sluice trace` shows.
    pub calls: Vec<Call>,
}

impl Decision {
    /// What the record and the sinks get for this frame.
    pub fn recorded(&self) -> &Content {
        self.record_as.as_ref().unwrap_or(&self.forward)
    }
}

/// One plugin's answer on one frame, and how long the call took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub plugin: std::sync::Arc<str>,
    /// `pass`, `replace`, `hold`, `deny`, or `failed`; `+record-as` when it set one.
    pub verdict: &'static str,
    pub micros: u32,
}

impl Call {
    fn of(link: &FilterInstance, verdict: Result<&Verdict, &PluginError>) -> Call {
        let verdict = match verdict {
            Err(_) => "failed",
            Ok(v) => match (&v.action, v.record_as.is_some()) {
                (Action::Pass, false) => "pass",
                (Action::Pass, true) => "pass+record-as",
                (Action::Replace(_), false) => "replace",
                (Action::Replace(_), true) => "replace+record-as",
                (Action::Hold(_), _) => "hold",
                (Action::Deny(_), _) => "deny",
            },
        };
        Call {
            plugin: link.plugin().name(),
            verdict,
            micros: link.last_call().as_micros().min(u32::MAX as u128) as u32,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// Waits for a reviewer; one reason per plugin that held it.
    Hold {
        reasons: Vec<String>,
    },
    /// Refused, by the named plugin, for the reason shown to the user.
    Deny {
        plugin: String,
        reason: String,
    },
}

/// One session's chain: an instance of each plugin, owned by the session.
#[derive(Debug)]
pub struct Chain {
    links: Vec<FilterInstance>,
}

impl Chain {
    /// Instantiates every plugin for `session`. A plugin whose `init` refuses the session
    /// refuses it for the whole chain.
    pub fn new(plugins: &[LoadedPlugin], session: &SessionInfo) -> Result<Chain, PluginError> {
        let links = plugins
            .iter()
            .map(|p| p.filter_instance(session))
            .collect::<Result<_, _>>()?;
        Ok(Chain { links })
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Runs `frame` through every plugin.
    pub fn on_frame(&mut self, frame: Frame) -> Decision {
        self.run_from(0, frame)
    }

    /// Asks every plugin for what it buffers in `direction` (on an idle timer, and at the end
    /// of the stream). Content a plugin releases still crosses the plugins after it; each
    /// piece gets its frame header from `header`.
    pub fn flush(
        &mut self,
        direction: Direction,
        mut header: impl FnMut(Content) -> Frame,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for i in 0..self.links.len() {
            match self.links[i].flush(direction) {
                Ok(Some(content)) => decisions.push(self.run_from(i + 1, header(content))),
                Ok(None) => {}
                Err(error) => {
                    // What the plugin held back is lost with its instance; say so, loudly.
                    tracing::error!(plugin = %error.plugin, error = %error.failure, "plugin failed to flush");
                }
            }
        }
        decisions
    }

    fn run_from(&mut self, start: usize, mut frame: Frame) -> Decision {
        let mut record: Option<Content> = None;
        let mut replaced = false;
        let mut holds = Vec::new();
        let mut failures = Vec::new();
        let mut calls = Vec::new();
        for link in &mut self.links[start..] {
            if !link.wants(&frame) {
                continue; // as if it said pass, without the call
            }
            let answer = link.on_frame(&frame);
            calls.push(Call::of(link, answer.as_ref()));
            let verdict = match answer {
                Ok(verdict) => verdict,
                Err(error) => {
                    tracing::warn!(plugin = %error.plugin, error = %error.failure, seq = frame.seq, "plugin failed");
                    let on_error = link.plugin().spec().on_error;
                    failures.push(error.clone());
                    match on_error {
                        OnError::Pass => continue,
                        OnError::Deny => {
                            let reason = format!("refused because {error}");
                            let refusal = Refusal {
                                plugin: error.plugin,
                                reason,
                            };
                            return deny(frame.content, replaced, record, refusal, failures, calls);
                        }
                    }
                }
            };
            if let Some(redacted) = verdict.record_as {
                record = Some(redacted);
            }
            match verdict.action {
                Action::Pass => {}
                Action::Replace(content) => {
                    frame.content = content;
                    replaced = true;
                }
                Action::Hold(reason) => holds.push(reason),
                Action::Deny(reason) => {
                    let refusal = Refusal {
                        plugin: link.plugin().spec().name.clone(),
                        reason,
                    };
                    return deny(frame.content, replaced, record, refusal, failures, calls);
                }
            }
        }
        let outcome = if holds.is_empty() {
            Outcome::Pass
        } else {
            Outcome::Hold { reasons: holds }
        };
        Decision {
            outcome,
            forward: frame.content,
            record_as: record,
            replaced,
            failures,
            calls,
        }
    }
}

/// Who refused a frame, and why.
struct Refusal {
    plugin: String,
    reason: String,
}

fn deny(
    content: Content,
    replaced: bool,
    record: Option<Content>,
    refusal: Refusal,
    failures: Vec<PluginError>,
    calls: Vec<Call>,
) -> Decision {
    Decision {
        outcome: Outcome::Deny {
            plugin: refusal.plugin,
            reason: refusal.reason,
        },
        forward: content,
        record_as: record,
        replaced,
        failures,
        calls,
    }
}
