//! The plugin author's guide (`docs/plugins.md`), run as written: its ```` ```LANG file=PATH ````
//! blocks are written into a fresh crate beside this checkout, and its ```` ```sh run ````
//! blocks are run in order, with the `sluice` under test on `PATH`.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use crate::support::run_command;

struct Block {
    info: String,
    body: String,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for line in markdown.lines() {
        match (line.strip_prefix("```"), open.as_mut()) {
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(info), None) => {
                open = Some(Block {
                    info: info.trim().to_string(),
                    body: String::new(),
                })
            }
            (None, Some(block)) => {
                block.body.push_str(line);
                block.body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The toolchain the repository pins: the crate lives outside it, where its
/// `rust-toolchain.toml` does not apply.
fn toolchain(repo: &Path) -> String {
    let pin = std::fs::read_to_string(repo.join("rust-toolchain.toml")).unwrap();
    let line = pin
        .lines()
        .find(|l| l.trim_start().starts_with("channel"))
        .unwrap();
    line.split('"').nth(1).unwrap().to_string()
}

#[test]
fn the_plugin_authors_walkthrough_works_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap();
    let guide = std::fs::read_to_string(repo.join("docs/plugins.md")).unwrap();
    let root = tempfile::tempdir().unwrap();
    // The guide's crate sits beside a checkout named `sluice`.
    symlink(repo, root.path().join("sluice")).unwrap();
    let krate = root.path().join("mask-customer-ids");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    // Builds are kept between runs; the versions are the ones this repository builds with.
    let target = repo.join("target/walkthrough");
    std::fs::create_dir_all(&target).unwrap();
    symlink(&target, krate.join("target")).unwrap();
    std::fs::copy(repo.join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();

    let sluice_dir = Path::new(env!("CARGO_BIN_EXE_sluice")).parent().unwrap();
    let path = format!(
        "{}:{}",
        sluice_dir.display(),
        std::env::var("PATH").unwrap()
    );
    let mut outputs = String::new();
    let mut files = 0;
    for block in blocks(&guide) {
        if let Some(file) = block
            .info
            .split_whitespace()
            .find_map(|w| w.strip_prefix("file="))
        {
            let file = krate.join(file);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            let mut text = std::fs::read_to_string(&file).unwrap_or_default();
            text.push_str(&block.body);
            std::fs::write(&file, text).unwrap();
            files += 1;
        } else if block.info == "sh run" {
            let mut cmd = Command::new("bash");
            cmd.args(["-euo", "pipefail", "-c", &block.body])
                .current_dir(&krate)
                .env("PATH", &path)
                .env("RUSTUP_TOOLCHAIN", toolchain(repo))
                .env("CARGO_NET_OFFLINE", "true")
                .env_remove("CARGO_TARGET_DIR");
            let (code, out, err) = run_command(&mut cmd, "");
            assert_eq!(code, 0, "`{}` failed:\n{out}\n{err}", block.body.trim());
            outputs.push_str(&out);
        }
    }
    assert_eq!(files, 4, "Cargo.toml, two parts of src/lib.rs and a policy");
    assert!(
        outputs.contains("test tests::masks_customer_ids_in_output ... ok"),
        "{outputs}"
    );
    assert!(
        outputs.contains(r#""bytes":"owner [customer]""#),
        "{outputs}"
    );
    assert!(
        outputs.contains("chain shell: shell-gate -> mask -> customer-ids"),
        "{outputs}"
    );
}
