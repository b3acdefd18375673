//! Sluice: an identity-aware gateway in the data path between people and the runtimes they
//! reach. See ARCHITECTURE.md for the map; `frame` and `chain` hold the frame path.

pub mod audit;
pub mod auth;
pub mod builtin;
pub mod chain;
pub mod client;
pub mod commands;
pub mod config;
pub mod egress;
pub mod exec;
mod files;
pub mod frame;
pub mod limits;
pub mod login;
pub mod metrics;
pub mod pg;
pub mod plugin_host;
pub mod policy;
pub mod record;
pub mod review;
pub mod roles;
pub mod runner;
pub mod server;
pub mod session;
pub mod sinks;
pub mod tcp;
pub mod tls;
pub mod wire;
