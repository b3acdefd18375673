//! First-party plugins compiled from `plugins/` by `build.rs` and embedded in the binary, so
//! the shipped policy works from the binary alone. Policies name them `builtin:NAME`.

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// The component bytes of the built-in plugin `name`.
pub fn get(name: &str) -> Option<&'static [u8]> {
    BUILTIN_PLUGINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// The names of all built-in plugins, for error messages.
pub fn names() -> Vec<&'static str> {
    BUILTIN_PLUGINS.iter().map(|(n, _)| *n).collect()
}
