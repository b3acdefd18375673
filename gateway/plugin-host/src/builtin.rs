//! The built-in plugins a policy names `builtin:NAME`. Their components are built and
//! embedded by the `sluice-builtins` crate, which only the `sluice` binary links: the binary
//! hands them over once at start ([`provide`]), so that editing a plugin rebuilds that crate
//! and relinks, and nothing in between.

use std::sync::OnceLock;

/// A built-in plugin: its name and its component's bytes.
pub type Builtin = (&'static str, &'static [u8]);

static BUILTINS: OnceLock<&'static [Builtin]> = OnceLock::new();

/// Makes `builtins` the plugins `builtin:NAME` resolves to. The first call wins: a process
/// has one set.
pub fn provide(builtins: &'static [Builtin]) {
    let _ = BUILTINS.set(builtins);
}

/// The component bytes of the built-in plugin `name`.
pub fn get(name: &str) -> Option<&'static [u8]> {
    BUILTINS
        .get()?
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// The names of all built-in plugins, for error messages.
pub fn names() -> Vec<&'static str> {
    BUILTINS
        .get()
        .map(|all| all.iter().map(|(n, _)| *n).collect())
        .unwrap_or_default()
}
