//! Glue between the bindings that wit-bindgen generates and the SDK's plain types. Only
//! compiled for Wasm; the export macros call into it.

use std::cell::RefCell;

use crate::{Filter, Sink};

pub mod filter {
    wit_bindgen::generate!({
        path: "../wit",
        world: "filter",
        pub_export_macro: true,
        export_macro_name: "__export_filter_world",
        default_bindings_module: "sluice_plugin_sdk::__wasm::filter",
    });
}

pub mod sink {
    wit_bindgen::generate!({
        path: "../wit",
        world: "sink",
        pub_export_macro: true,
        export_macro_name: "__export_sink_world",
        default_bindings_module: "sluice_plugin_sdk::__wasm::sink",
        with: {
            "sluice:plugin/types@0.4.0": crate::__wasm::filter::sluice::plugin::types,
            "sluice:plugin/log@0.4.0": crate::__wasm::filter::sluice::plugin::log,
        },
    });
}

use filter::sluice::plugin::types as wit;

/// A panic is logged to the gateway (which names it as the plugin's failure) instead of
/// written to stderr: a blocking WASI write is not allowed in the data path.
fn report_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            log(
                crate::log::Level::Error,
                &format!("panicked: {info}"),
                &[("panic", "true")],
            );
        }));
    });
}

pub fn filter_init<F: Filter>(
    state: &RefCell<Option<F>>,
    config: String,
    session: wit::SessionInfo,
) -> Result<wit::Interest, String> {
    report_panics();
    let plugin = F::init(&crate::Config::from_json(config), &session.into())?;
    let interest = plugin.interest().into();
    *state.borrow_mut() = Some(plugin);
    Ok(interest)
}

pub fn filter_on_frame<F: Filter>(state: &RefCell<Option<F>>, frame: wit::Frame) -> wit::Verdict {
    let verdict = match state.borrow_mut().as_mut() {
        Some(plugin) => plugin.on_frame(&frame.into()),
        None => crate::Verdict::deny("plugin was not initialised"),
    };
    verdict.into()
}

pub fn filter_flush<F: Filter>(
    state: &RefCell<Option<F>>,
    direction: wit::Direction,
) -> Option<wit::Content> {
    state
        .borrow_mut()
        .as_mut()?
        .flush(direction.into())
        .map(Into::into)
}

pub fn sink_init<S: Sink>(state: &RefCell<Option<S>>, config: String) -> Result<(), String> {
    report_panics();
    *state.borrow_mut() = Some(S::init(&crate::Config::from_json(config))?);
    Ok(())
}

pub fn sink_deliver<S: Sink>(
    state: &RefCell<Option<S>>,
    batch: Vec<wit::Event>,
) -> Result<(), wit::SinkError> {
    let mut state = state.borrow_mut();
    let Some(sink) = state.as_mut() else {
        return Err(wit::SinkError::Permanent(
            "plugin was not initialised".into(),
        ));
    };
    sink.deliver(batch.into_iter().map(Into::into).collect())
        .map_err(Into::into)
}

pub fn log(level: crate::log::Level, message: &str, fields: &[(&str, &str)]) {
    use crate::log::Level;
    use filter::sluice::plugin::log as host;
    let level = match level {
        Level::Trace => host::Level::Trace,
        Level::Debug => host::Level::Debug,
        Level::Info => host::Level::Info,
        Level::Warn => host::Level::Warn,
        Level::Error => host::Level::Error,
    };
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    host::log(level, message, &fields);
}

mod conversions {
    use super::filter::sluice::plugin::types as wit;
    crate::__impl_contract_conversions!();
}
