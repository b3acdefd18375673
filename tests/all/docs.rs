//! The plugin author's guide (`docs/plugins.md`), run as written: its ```` ```LANG file=PATH ````
//! blocks are written into a fresh crate beside this checkout, and its ```` ```sh run ````
//! blocks are run in order, with the `sluice` under test on `PATH`.

use crate::support::{repo, run_command, share_builds};

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

/// Walks a guide: its file blocks written into the project its first command makes, its
/// run blocks run in order; returns what they printed. `made` readies the project once it
/// exists (what the guide's non-run steps, like `npm install`, would do).
fn walk(guide: &str, made: impl Fn(&std::path::Path)) -> (String, Vec<String>) {
    let guide = std::fs::read_to_string(repo().join("docs").join(guide)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let project = root.path().join("mask-customer-ids");
    let mut outputs = String::new();
    let mut written = Vec::new();
    for block in blocks(&guide) {
        if let Some(file) = block
            .info
            .split_whitespace()
            .find_map(|w| w.strip_prefix("file="))
        {
            // The guide's first block for a file replaces the template's; later ones add.
            let path = project.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut text = match written.contains(&file.to_string()) {
                false => String::new(),
                true => std::fs::read_to_string(&path).unwrap(),
            };
            text.push_str(&block.body);
            std::fs::write(&path, text).unwrap();
            if !written.contains(&file.to_string()) {
                written.push(file.to_string());
            }
        } else if block.info == "sh run" {
            // Commands run in the project once `sluice plugin new` has made it.
            let existed = project.exists();
            let dir = if existed {
                project.clone()
            } else {
                root.path().to_path_buf()
            };
            let mut cmd = crate::languages::in_project(&dir, &block.body);
            let (code, out, err) = run_command(&mut cmd, "");
            assert_eq!(code, 0, "`{}` failed:\n{out}\n{err}", block.body.trim());
            outputs.push_str(&out);
            outputs.push_str(&err);
            if !existed && project.exists() {
                made(&project);
            }
        }
    }
    (outputs, written)
}

/// Walks `guide` and checks the files it wrote and what its commands printed.
fn walks(guide: &str, made: impl Fn(&std::path::Path), files: &[&str], printed: &[&str]) {
    let (outputs, written) = walk(guide, made);
    assert_eq!(written, files, "{guide}");
    for expected in printed {
        assert!(outputs.contains(expected), "{guide}: {expected}: {outputs}");
    }
}

/// What every guide's `plugin run --as terminal` and `sluice policy` print.
const DENIED_AND_CHAINED: [&str; 2] = [
    r#""line":"cat payroll.csv"},"verdict":"deny","reason":"payroll is guarded""#,
    "chain shell: customer-ids",
];

#[test]
fn the_plugin_authors_walkthrough_works_as_written() {
    let printed = [
        "test tests::masks_customer_ids_in_output ... ok",
        "test tests::refuses_the_guarded_table_however_it_is_asked_for ... ok",
        r#""bytes":"owner [customer]""#,
    ];
    let files = ["src/lib.rs", "policies/team-masks.toml"];
    walks(
        "plugins.md",
        share_builds,
        &files,
        &[&printed[..], &DENIED_AND_CHAINED].concat(),
    );
}

#[test]
fn the_python_walkthrough_works_as_written() {
    let printed = [
        "test_masks_customer_ids_in_output (test_app.MaskCustomerIdsTest.test_masks_customer_ids_in_output) ... ok",
        "a `filter` plugin of sluice:plugin@0.4.0",
        r#""content":{"bytes":"owner [customer]"}"#,
    ];
    let files = ["app.py", "test_app.py", "policies/team-masks.toml"];
    walks(
        "plugins-python.md",
        |_| {},
        &files,
        &[&printed[..], &DENIED_AND_CHAINED].concat(),
    );
}

#[test]
fn the_javascript_walkthrough_works_as_written() {
    // What `npm install` fetches, from the tests' own lock.
    let installed = |project: &std::path::Path| {
        let modules = crate::languages::componentize_js_modules();
        std::os::unix::fs::symlink(modules, project.join("node_modules")).unwrap();
    };
    let printed = [
        "# pass 2",
        "a `filter` plugin of sluice:plugin@0.4.0",
        r#""content":{"bytes":"owner [customer]"}"#,
    ];
    let files = ["plugin.js", "plugin.test.js", "policies/team-masks.toml"];
    walks(
        "plugins-js.md",
        installed,
        &files,
        &[&printed[..], &DENIED_AND_CHAINED].concat(),
    );
}

/// The guide's table of what each session sends is the SDK's `SessionKind`, row by row.
#[test]
fn the_guides_table_of_frames_is_what_the_sdk_states() {
    use sluice_core::frame::{ContentKind, Direction, SessionKind};
    let guide = std::fs::read_to_string(repo().join("docs/plugins.md")).unwrap();
    let kinds_in = |cell: &str| -> Vec<ContentKind> {
        // Words in parentheses explain; the kinds are the words outside them.
        let mut bare = String::new();
        let mut depth = 0;
        for c in cell.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                c if depth == 0 => bare.push(c),
                _ => {}
            }
        }
        let mut kinds: Vec<ContentKind> = bare
            .split([',', ' '])
            .filter_map(|w| ContentKind::ALL.into_iter().find(|k| k.name() == w.trim()))
            .collect();
        kinds.sort_by_key(|k| *k as u8);
        kinds
    };
    let sorted = |kinds: &[ContentKind]| {
        let mut kinds = kinds.to_vec();
        kinds.sort_by_key(|k| *k as u8);
        kinds
    };
    let mut rows = 0;
    for line in guide.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].split('`').nth(1).unwrap();
        let Some(kind) = SessionKind::from_name(name) else {
            continue;
        };
        rows += 1;
        assert_eq!(
            kinds_in(cells[2]),
            sorted(kind.sends(Direction::ClientToTarget)),
            "{line}"
        );
        assert_eq!(
            kinds_in(cells[3]),
            sorted(kind.sends(Direction::TargetToClient)),
            "{line}"
        );
        assert_eq!(kinds_in(cells[4]), sorted(kind.commands()), "{line}");
    }
    assert_eq!(rows, SessionKind::ALL.len(), "a row per kind of session");
}
