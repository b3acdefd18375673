//! The `sluice` binary as a plugin author uses it: `plugin check`, `plugin run`, `policy`.

use std::io::Write;
use std::process::Stdio;

use crate::support::*;

fn run_with_input(args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = sluice()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses its arguments exits without reading: a closed pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn plugin_check_names_the_world_and_refuses_foreign_files() {
    let (ok, out, _) = run_with_input(&["plugin", "check", "builtin:example-redact"], "");
    assert!(ok);
    assert!(
        out.contains("a `filter` plugin of sluice:plugin@0.4.0"),
        "{out}"
    );
    assert!(out.contains("sha256: "), "{out}");

    let sink = guest("sink-count");
    let (ok, out, _) = run_with_input(&["plugin", "check", sink.to_str().unwrap()], "");
    assert!(ok);
    assert!(out.contains("a `sink` plugin"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("m.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    let (ok, _, err) = run_with_input(&["plugin", "check", module.to_str().unwrap()], "");
    assert!(!ok);
    assert!(err.contains("not a component"), "{err}");
}

/// `sluice plugin run SOURCE --config CONFIG` on `input`: its reports, and its raw output.
fn plugin_run(source: &str, config: &str, input: &str) -> (Vec<serde_json::Value>, String) {
    let (ok, out, err) = run_with_input(&["plugin", "run", source, "--config", config], input);
    assert!(ok, "{err}");
    let reports = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (reports, out)
}

#[test]
fn plugin_run_prints_a_verdict_per_frame_with_time_and_memory() {
    let input = "{\"line\": \"echo hunter2\"}\n{\"direction\": \"target-to-client\", \"row\": [\"hunter2\", null]}\n{\"line\": \"ls\"}\n";
    let (reports, _) = plugin_run("builtin:example-redact", "literal=hunter2", input);
    assert_eq!(reports.len(), 3);
    assert_eq!(reports[0]["verdict"], "replace");
    assert_eq!(reports[0]["content"]["line"], "echo [REDACTED]");
    assert_eq!(
        reports[1]["content"]["row"],
        serde_json::json!(["[REDACTED]", null])
    );
    assert_eq!(reports[2]["verdict"], "pass");
    for r in &reports {
        assert!(r["time_us"].as_f64().unwrap() > 0.0);
        assert!(r["memory_bytes"].as_u64().unwrap() > 0);
    }
}

#[test]
fn plugin_run_passes_frames_outside_the_plugins_interest_uncalled() {
    // The SQL gate asks for client statements and lines only, as the gateway would honour.
    let input = "{\"statement\": {\"text\": \"DROP TABLE t\", \"params\": []}}\n{\"direction\": \"target-to-client\", \"row\": [\"DROP TABLE t\"]}\n";
    let (reports, out) = plugin_run("builtin:approve", "rules=[\"sql\"]", input);
    assert_eq!(reports[0]["verdict"], "hold", "{out}");
    assert_eq!(reports[1]["verdict"], "pass", "{out}");
    assert!(
        reports[1]["reason"]
            .as_str()
            .unwrap()
            .contains("outside the plugin's interest"),
        "{out}"
    );
}

#[test]
fn plugin_run_takes_a_config_file_and_reports_bad_input_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("redact.toml");
    std::fs::write(&config, "literal = \"tiger\"\nreplacement = \"#\"\n").unwrap();
    let args = [
        "plugin",
        "run",
        "builtin:example-redact",
        "--config",
        config.to_str().unwrap(),
    ];
    let (ok, out, _) = run_with_input(&args, "{\"bytes\": \"a tiger\"}\n");
    assert!(ok);
    assert!(out.contains(r#""bytes":"a #""#), "{out}");

    let (ok, _, err) = run_with_input(&args, "{\"bytes\": \"fine\"}\n{\"colour\": 1}\n");
    assert!(!ok);
    assert!(err.contains("input line 2"), "{err}");
}

#[test]
fn policy_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        "[plugins.mask]\nsource = \"mask.wasm\"\n",
    )
    .unwrap();
    let (ok, _, err) = run_with_input(&["policy", dir.path().to_str().unwrap()], "");
    assert!(!ok);
    assert!(
        err.contains("a.toml: plugins.mask.source: no file at"),
        "{err}"
    );

    // A plugin's own config is checked at load too: its refusal names the entry.
    for (config, says) in [
        (
            "detectors = [\"crad\"]",
            "unknown detector \"crad\" (known: default, secrets, pii, payment, pem",
        ),
        (
            "custom = [{ name = \"emp\", pattern = \"EMP-(\" }]",
            "custom[0] (\"emp\"): invalid pattern",
        ),
    ] {
        let policy =
            format!("[plugins.mask]\nsource = \"builtin:mask\"\nconfig = {{ {config} }}\n");
        std::fs::write(dir.path().join("a.toml"), policy).unwrap();
        let (ok, _, err) = run_with_input(&["policy", dir.path().to_str().unwrap()], "");
        assert!(!ok);
        assert!(
            err.contains("a.toml: plugins.mask (builtin:mask): its config is refused: "),
            "{err}"
        );
        assert!(err.contains(says), "{err}");
    }

    std::fs::write(dir.path().join("a.toml"), "[plugins.redact]\nsource = \"builtin:example-redact\"\nconfig = { literal = \"x\" }\n[chains]\nshell = [\"redact\"]\n").unwrap();
    let (ok, out, err) = run_with_input(&["policy", dir.path().to_str().unwrap()], "");
    assert!(ok, "{err}");
    assert!(out.contains("chain shell: redact"), "{out}");
}

#[test]
fn the_shipped_policies_load() {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies");
    let (ok, _, err) = run_with_input(&["policy", policies], "");
    assert!(ok, "{err}");
}

#[test]
fn plugin_run_flushes_what_a_plugin_buffered_at_the_end_of_input() {
    let antics = guest("antics");
    let (ok, out, err) = run_with_input(
        &["plugin", "run", antics.to_str().unwrap()],
        "{\"line\": \"stash held back\"}\n",
    );
    assert!(ok, "{err}");
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        last,
        serde_json::json!({"flushed": "client-to-target", "content": {"line": "held back"}})
    );
}

#[test]
fn plugin_run_refuses_deadlines_a_policy_would_refuse() {
    for bad in ["0", "86400000"] {
        let (ok, _, err) = run_with_input(
            &["plugin", "run", "builtin:mask", "--deadline-ms", bad],
            "{\"line\": \"x\"}\n",
        );
        assert!(!ok, "--deadline-ms {bad} was taken");
        assert!(err.contains("out of range (1 to 60000)"), "{err}");
    }
}
