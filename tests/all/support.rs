//! Helpers shared by the test modules.

use std::path::PathBuf;

use sluice::frame::{Content, Direction, Frame, SessionInfo};
use sluice::plugin_host::{HostConfig, LoadedPlugin, PluginHost};
use sluice::policy::{PluginSpec, Source, World};

/// A test guest's component, built from `tests/guests/NAME`.
pub fn guest(name: &str) -> PathBuf {
    PathBuf::from(env!("SLUICE_TEST_GUESTS")).join(format!("{name}.wasm"))
}

pub fn host() -> PluginHost {
    PluginHost::new(HostConfig::default()).expect("plugin host starts")
}

pub fn spec(name: &str, source: Source, config_json: &str) -> PluginSpec {
    PluginSpec::standalone(name, source, World::Filter, config_json.to_string())
}

pub fn builtin(name: &str) -> Source {
    Source::Builtin(name.to_string())
}

pub fn file(path: PathBuf) -> Source {
    Source::File(path)
}

pub fn load(host: &PluginHost, spec: &PluginSpec) -> LoadedPlugin {
    host.load(spec).unwrap_or_else(|e| panic!("{e}"))
}

pub fn session(id: &str) -> SessionInfo {
    SessionInfo {
        id: id.into(),
        connection: "test".into(),
        protocol: "exec".into(),
        ..SessionInfo::default()
    }
}

pub fn line(seq: u64, text: &str) -> Frame {
    Frame {
        seq,
        direction: Direction::ClientToTarget,
        timestamp_ms: 0,
        content: Content::Line(text.into()),
    }
}

/// The `sluice` binary under test.
pub fn sluice() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
}
