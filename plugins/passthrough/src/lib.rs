//! Passes every frame unchanged. The baseline for measuring the cost of the plugin host.

use sluice_plugin_sdk::{Config, Filter, Frame, SessionInfo, Verdict};

pub struct Passthrough;

impl Filter for Passthrough {
    fn init(_config: &Config, _session: &SessionInfo) -> Result<Self, String> {
        Ok(Passthrough)
    }

    fn on_frame(&mut self, _frame: &Frame) -> Verdict {
        Verdict::pass()
    }
}

sluice_plugin_sdk::export_filter!(Passthrough);
