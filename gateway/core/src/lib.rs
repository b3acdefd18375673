//! What every crate of the Sluice gateway shares: the frame model (the plugin contract's own
//! types), process metrics, the clock and files only their owner may read. No I/O beyond
//! writing those files; no dependency beyond the plugin SDK.

pub mod files;
pub mod frame;
pub mod metrics;

/// Milliseconds since the Unix epoch: the time the record and the plugins are given.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
