//! Structured logging into the gateway's log. The gateway tags each line with the plugin and
//! the session; natively (in tests) lines go to standard error.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    #[cfg(target_arch = "wasm32")]
    crate::__wasm::log(level, message, fields);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{level:?} {message} {fields:?}");
}

pub fn debug(message: &str, fields: &[(&str, &str)]) {
    log(Level::Debug, message, fields)
}

pub fn info(message: &str, fields: &[(&str, &str)]) {
    log(Level::Info, message, fields)
}

pub fn warn(message: &str, fields: &[(&str, &str)]) {
    log(Level::Warn, message, fields)
}

pub fn error(message: &str, fields: &[(&str, &str)]) {
    log(Level::Error, message, fields)
}
