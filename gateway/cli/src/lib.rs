//! The `sluice` binary's library: the CLI's commands, the client side that talks to a
//! gateway (`client`, `login`), and the local plugin runner.

pub mod client;
pub mod commands;
pub mod login;
pub mod runner;

/// Hands the embedded plugins to the plugin host; the binary and the tests call it first.
pub fn provide_builtins() {
    sluice_plugin_host::builtin::provide(sluice_builtins::ALL);
}
