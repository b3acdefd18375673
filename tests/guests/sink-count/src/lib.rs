//! A sink that accepts batches and counts them: a component of the `sink` world, which the
//! host must refuse where a filter is expected. With `{"trap_on": "KIND"}` it panics (a
//! trap) on any batch holding an event of that kind, as a broken sink would.

use sluice_plugin_sdk::{Config, Event, Sink, SinkError};

pub struct Count {
    delivered: u64,
    trap_on: Option<String>,
}

impl Sink for Count {
    fn init(config: &Config) -> Result<Self, String> {
        let config: serde_json::Value = serde_json::from_str(config.json()).unwrap_or_default();
        Ok(Count {
            delivered: 0,
            trap_on: config["trap_on"].as_str().map(str::to_string),
        })
    }

    fn deliver(&mut self, batch: Vec<Event>) -> Result<(), SinkError> {
        if batch.iter().any(|e| e.kind == "fail") {
            return Err(SinkError::Retryable("asked to fail".into()));
        }
        if let Some(kind) = &self.trap_on
            && batch.iter().any(|e| &e.kind == kind)
        {
            panic!("asked to trap on {kind}");
        }
        self.delivered += batch.len() as u64;
        Ok(())
    }
}

sluice_plugin_sdk::export_sink!(Count);
