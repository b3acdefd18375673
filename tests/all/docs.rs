//! The plugin author's guide (`docs/plugins.md`), run as written: its ```` ```LANG file=PATH ````
//! blocks are written into a fresh crate beside this checkout, and its ```` ```sh run ````
//! blocks are run in order, with the `sluice` under test on `PATH`.

use std::os::unix::fs::symlink;

use crate::support::{author_shell, repo, run_command, share_builds};

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

#[test]
fn the_plugin_authors_walkthrough_works_as_written() {
    let repo = repo();
    let guide = std::fs::read_to_string(repo.join("docs/plugins.md")).unwrap();
    let root = tempfile::tempdir().unwrap();
    // The guide's crate sits beside a checkout named `sluice`.
    symlink(repo, root.path().join("sluice")).unwrap();
    let krate = root.path().join("mask-customer-ids");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    share_builds(&krate);
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
            let mut cmd = author_shell(&krate, &block.body);
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
