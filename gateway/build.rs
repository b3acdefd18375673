//! Builds every plugin in `plugins/` (shipped, embedded as `builtin:NAME`) and every test guest
//! in `tests/guests/` (used by the tests only) as wasm32-wasip2 components, so that building
//! or testing the gateway never needs a manual step.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A build script should fail loudly.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let gateway = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = gateway
        .parent()
        .expect("gateway/ lives in the workspace root")
        .to_path_buf();
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    // <target>/<profile>/build/<pkg>/out: keep the Wasm build beside the host build, so that
    // debug and release builds of the gateway share it.
    let wasm_target = out
        .ancestors()
        .nth(4)
        .expect("OUT_DIR is inside the target dir")
        .join("wasm");

    for dir in ["plugins", "plugin-sdk", "wit", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }

    let plugins = build_workspace(&root.join("plugins"), &wasm_target, &out.join("plugins"));
    build_workspace(
        &root.join("tests/guests"),
        &wasm_target,
        &out.join("guests"),
    );

    // The shipped plugins, embedded in the binary.
    let mut builtins = String::from("pub const BUILTIN_PLUGINS: &[(&str, &[u8])] = &[\n");
    for (name, path) in &plugins {
        writeln!(
            builtins,
            "    ({name:?}, include_bytes!({:?})),",
            path.display()
        )
        .unwrap();
    }
    builtins.push_str("];\n");
    fs::write(out.join("builtin_plugins.rs"), builtins).unwrap();
    println!(
        "cargo:rustc-env=SLUICE_TEST_GUESTS={}",
        out.join("guests").display()
    );
    println!(
        "cargo:rustc-env=SLUICE_PLUGINS={}",
        out.join("plugins").display()
    );
}

/// Builds the Wasm workspace at `dir` in release mode and copies each member's component to
/// `dest/NAME.wasm`. Returns (NAME, path) for each, NAME being the member's folder name.
fn build_workspace(dir: &Path, target_dir: &Path, dest: &Path) -> Vec<(String, PathBuf)> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(dir.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(target_dir)
    .current_dir(dir);
    // Settings meant for the host build must not leak into the Wasm build.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the Wasm plugins");
    assert!(
        status.success(),
        "building the Wasm components in {} failed (is the wasm32-wasip2 target installed? \
         rust-toolchain.toml lists it, so rustup installs it on first use)",
        dir.display()
    );

    fs::create_dir_all(dest).unwrap();
    let built = target_dir.join("wasm32-wasip2/release");
    let mut members: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    members.sort();
    members
        .into_iter()
        .map(|name| {
            let file = format!("{}.wasm", name.replace('-', "_"));
            let to = dest.join(format!("{name}.wasm"));
            fs::copy(built.join(&file), &to)
                .unwrap_or_else(|e| panic!("copy {file} from {}: {e}", built.display()));
            (name, to)
        })
        .collect()
}
