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
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .ancestors()
        .nth(2)
        .expect("gateway/builtins/ lives in the workspace root")
        .to_path_buf();
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    // <target>/<profile>/build/<pkg>/out: keep the Wasm build beside the host build, so that
    // debug and release builds share it.
    let wasm_target = out
        .ancestors()
        .nth(4)
        .expect("OUT_DIR is inside the target dir")
        .join("wasm");

    for dir in ["plugins", "plugin-sdk", "wit", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    ensure_wasm_target();

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
}

/// The Wasm build needs the `wasm32-wasip2` standard library. `rust-toolchain.toml` lists
/// it, but rustup adds a missing target by itself only where auto-install is on (it is off
/// on many machines: `RUSTUP_AUTO_INSTALL=0`). Add it here when rustup is around; otherwise
/// say in one line what to run.
fn ensure_wasm_target() {
    const TARGET: &str = "wasm32-wasip2";
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if sysroot.is_some_and(|root| root.join("lib/rustlib").join(TARGET).exists()) {
        return;
    }
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok();
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    if let Some(toolchain) = &toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    println!("cargo:warning=the {TARGET} target is missing: adding it with rustup");
    match rustup.status() {
        Ok(status) if status.success() => {}
        Ok(_) | Err(_) => panic!(
            "the {TARGET} target is not installed and rustup could not add it: run `rustup target add {TARGET}`{}",
            toolchain
                .map(|t| format!(" --toolchain {t}"))
                .unwrap_or_default()
        ),
    }
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
        "building the Wasm components in {} failed (the error is above)",
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
