//! All integration and end-to-end tests, in one binary (one link step). A module per area.
//! The Wasm guests and plugins they load are real components, built from `tests/guests/` and
//! `plugins/` by the gateway's build script.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agents;
mod authors;
mod cli;
mod cluster;
mod connections;
mod console;
mod docs;
mod front_doors;
mod languages;
mod lifecycle;
mod masking;
mod mcp;
mod oidc;
mod plugin_host;
mod postgres;
mod record;
mod reviews;
mod sessions;
mod sinks;
mod ssh;
mod support;
