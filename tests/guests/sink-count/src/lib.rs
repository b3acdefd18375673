//! A sink that accepts batches and counts them: a component of the `sink` world, which the
//! host must refuse where a filter is expected.

use sluice_plugin_sdk::{Config, Event, Sink, SinkError};

pub struct Count(u64);

impl Sink for Count {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Count(0))
    }

    fn deliver(&mut self, batch: Vec<Event>) -> Result<(), SinkError> {
        if batch.iter().any(|e| e.kind == "fail") {
            return Err(SinkError::Retryable("asked to fail".into()));
        }
        self.0 += batch.len() as u64;
        Ok(())
    }
}

sluice_plugin_sdk::export_sink!(Count);
