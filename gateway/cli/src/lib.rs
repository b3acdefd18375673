//! The command line of `sluice`: its arguments and commands, the client side that talks to a
//! gateway (`client`, `login`), the local plugin runner, and the plugin project template
//! (`scaffold`). The `sluice` binary
//! (`gateway/sluice`) is this crate's [`main`] with the built-in plugins linked in.

pub mod agent;
mod cli;
pub mod client;
pub mod commands;
pub mod login;
pub mod mcp;
pub mod runner;
pub mod scaffold;
pub mod ssh;
mod stdin;
pub mod trace;

pub use cli::main;
