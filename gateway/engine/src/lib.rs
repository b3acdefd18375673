//! The Sluice gateway's engine: sessions and their protocols, reviews, policy, identity and
//! the server. The record (`sluice-record`) and the plugin host (`sluice-plugin-host`) are
//! crates of their own; see ARCHITECTURE.md for the map. `chain` holds the frame path.

pub mod agent;
pub mod audit;
pub mod auth;
pub mod chain;
pub mod config;
pub mod connections;
pub mod coverage;
pub mod exec;
pub mod limits;
pub mod pg;
pub mod policy;
pub mod replay;
pub mod review;
pub mod roles;
pub mod sealed;
pub mod server;
pub mod session;
pub mod sinks;
pub mod ssh;
pub mod tcp;
pub mod tls;
pub mod wire;
