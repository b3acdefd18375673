//! First-party plugins compiled from `plugins/` by `build.rs` and embedded in the binary, so
//! the shipped policy works from the binary alone. The binary hands [`ALL`] to the plugin host
//! (`sluice_plugin_host::builtin::provide`); policies name them `builtin:NAME`.

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// Every built-in plugin: (NAME, component bytes).
pub const ALL: &[(&str, &[u8])] = BUILTIN_PLUGINS;

/// The folder of the test guests' components (`tests/guests/`, built beside the plugins).
pub const TEST_GUESTS: &str = env!("SLUICE_TEST_GUESTS");
