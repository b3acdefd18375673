//! The `sluice` binary: the command line (`sluice-cli`) with the built-in plugins linked in.
//! Kept this thin so that editing a plugin rebuilds `sluice-builtins` and this file, and
//! relinks: nothing else.

fn main() -> std::process::ExitCode {
    sluice_plugin_host::builtin::provide(sluice_builtins::ALL);
    sluice_cli::main()
}
