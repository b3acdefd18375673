//! A plugin as the host runs it: where its component comes from, which world it implements,
//! its deadline, memory and failure mode. The policy (in the engine) declares these; the
//! local runner and the tests build them directly.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Defaults per world: filters sit in the data path and get short deadlines; sinks do
/// network I/O and get long ones.
pub const FILTER_DEADLINE_MS: u64 = 50;
pub const SINK_DEADLINE_MS: u64 = 10_000;
pub const MAX_DEADLINE_MS: u64 = 60_000;
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 64 << 20;
/// A Rust guest starts with about 1.1 MiB of linear memory; less cannot even instantiate.
pub const MIN_MEMORY_BYTES: u64 = 2 << 20;
/// The plugin host reserves this much address space per instance; no limit can exceed it.
pub const MAX_MEMORY_BYTES: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    #[default]
    Filter,
    Sink,
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            World::Filter => "filter",
            World::Sink => "sink",
        })
    }
}

/// What happens to a frame when its plugin fails (traps, overruns, answers garbage).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail closed: the frame is denied. The default, and the only sound choice for a plugin
    /// that guards anything.
    #[default]
    Deny,
    /// Fail open: the frame goes on as if the plugin had passed it.
    Pass,
}

/// Where a plugin's component comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Builtin(String),
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Builtin(name) => write!(f, "builtin:{name}"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A plugin as the policy declares it, validated.
#[derive(Clone, Debug)]
pub struct PluginSpec {
    pub name: String,
    pub source: Source,
    pub world: World,
    pub deadline: Duration,
    pub max_memory_bytes: usize,
    pub on_error: OnError,
    pub sha256: Option<[u8; 32]>,
    /// Sinks only: the hosts it may reach.
    pub allow_hosts: Vec<String>,
    /// The plugin's `config` table as JSON, the form `init` receives.
    pub config_json: String,
    /// The policy file and key that declared it, for error messages.
    pub declared_at: String,
}

impl PluginSpec {
    /// A spec for a plugin outside any policy (the local runner, tests): world defaults.
    pub fn standalone(name: &str, source: Source, world: World, config_json: String) -> Self {
        let deadline_ms = match world {
            World::Filter => FILTER_DEADLINE_MS,
            World::Sink => SINK_DEADLINE_MS,
        };
        PluginSpec {
            name: name.to_string(),
            source,
            world,
            deadline: Duration::from_millis(deadline_ms),
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES as usize,
            on_error: OnError::Deny,
            sha256: None,
            allow_hosts: Vec::new(),
            config_json,
            declared_at: format!("plugin {name}"),
        }
    }
}
