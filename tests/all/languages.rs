//! Plugins in Python and JavaScript, as their authors make them: `sluice plugin new --lang`,
//! native tests, the language's component tooling (componentize-py from PyPI,
//! componentize-js from npm), and the plugin in a real gateway, masking output and refusing
//! commands through `sluice exec` and `psql`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

use sluice_cli::scaffold::{COMPONENTIZE_JS, COMPONENTIZE_PY, PREVIEW2_SHIM};

/// A folder with `componentize-py` in `bin/`: on `PATH` if it is there at the pinned version,
/// else a virtual environment installed once into `target/tools/python`.
pub fn componentize_py_bin() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let venv = repo().join("target/tools/python");
            let bin = venv.join("bin");
            let pinned = |program: &Path| {
                Command::new(program)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(COMPONENTIZE_PY))
            };
            if !pinned(&bin.join("componentize-py")) {
                let made = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status();
                assert!(made.is_ok_and(|s| s.success()), "python3 -m venv failed");
                let installed = Command::new(bin.join("pip"))
                    .args([
                        "install",
                        "--quiet",
                        &format!("componentize-py=={COMPONENTIZE_PY}"),
                    ])
                    .status();
                assert!(
                    installed.is_ok_and(|s| s.success()),
                    "pip install componentize-py failed"
                );
            }
            bin
        })
        .clone()
}

/// `node_modules` with componentize-js, from `tests/plugin-js` (npm ci once, from its lock).
pub fn componentize_js_modules() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let dir = npm_ci(
                "plugin-js",
                "@bytecodealliance/componentize-js",
                "JavaScript plugins",
            );
            // The tests build with what `sluice plugin new` writes into projects.
            let manifest: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("package.json")).unwrap())
                    .unwrap();
            let pinned = &manifest["dependencies"];
            assert_eq!(pinned["@bytecodealliance/componentize-js"], COMPONENTIZE_JS);
            assert_eq!(pinned["@bytecodealliance/preview2-shim"], PREVIEW2_SHIM);
            dir.join("node_modules")
        })
        .clone()
}

/// A shell command in a plugin project, with the component tools of every language at hand.
pub fn in_project(dir: &Path, script: &str) -> Command {
    let mut cmd = author_shell(dir, script);
    let path = format!(
        "{}:{}",
        componentize_py_bin().display(),
        std::env::var("PATH").unwrap()
    );
    let sluice_dir = Path::new(env!("CARGO_BIN_EXE_sluice")).parent().unwrap();
    cmd.env("PATH", format!("{}:{path}", sluice_dir.display()));
    cmd
}

/// `sluice plugin new NAME --lang LANG` in `root`, its native tests and its component build;
/// the project folder.
fn made_and_built(root: &Path, name: &str, lang: &str) -> PathBuf {
    let (code, out, err) = run_command(
        sluice()
            .args(["plugin", "new", name, "--lang", lang])
            .current_dir(root),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    let project = root.join(name);
    let wasm = name.replace('-', "_");
    let script = match lang {
        "python" => format!(
            "python3 -m unittest 2>&1 && componentize-py -d wit -w filter componentize app -o {wasm}.wasm"
        ),
        _ => {
            // What `npm install` would fetch, from the tests' own lock.
            std::os::unix::fs::symlink(componentize_js_modules(), project.join("node_modules"))
                .unwrap();
            "npm test 2>&1 && npm run build".to_string()
        }
    };
    let (code, out, err) = run_command(&mut in_project(&project, &script), "");
    assert_eq!(code, 0, "{lang}: {out}{err}");
    assert!(
        out.contains("OK") || out.contains("# pass 3"),
        "{lang}: the native tests did not run: {out}"
    );
    assert!(project.join(format!("{wasm}.wasm")).exists(), "{out}{err}");
    project
}

#[test]
fn python_and_javascript_plugins_mask_and_refuse_through_exec_and_psql() {
    use crate::postgres::{Cluster, UPSTREAM_PASSWORD, free_port, psql};
    let root = tempfile::tempdir().unwrap();
    let cluster = Cluster::start("scram-sha-256");
    let python = made_and_built(root.path(), "py-guard", "python");
    let js = made_and_built(root.path(), "js-guard", "js");

    // Each plugin guards a shell and a PostgreSQL connection of its own.
    let mut config = String::new();
    let mut policy = String::new();
    let mut ports = Vec::new();
    for (lang, project) in [("py", &python), ("js", &js)] {
        let port = free_port();
        ports.push(port);
        config.push_str(&format!(
            "\n[connections.{lang}-shell]\nkind = \"exec\"\ninteractive = [\"bash\", \"--norc\", \"-i\"]\nscript = [\"bash\", \"-s\"]\n\
             [connections.{lang}-pg]\nkind = \"postgres\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{}\"\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"{UPSTREAM_PASSWORD}\"\n",
            cluster.port
        ));
        let wasm = project.join(format!("{lang}_guard.wasm"));
        policy.push_str(&format!(
            "[plugins.{lang}-guard]\nsource = \"{}\"\nconfig = {{ forbidden = [\"shutdown\", \"payroll\"], mask = \"CUST-[0-9]{{8}}\" }}\n",
            wasm.display()
        ));
    }
    policy.push_str(
        "[chains]\npy-shell = [\"py-guard\"]\npy-pg = [\"py-guard\"]\njs-shell = [\"js-guard\"]\njs-pg = [\"js-guard\"]\n",
    );
    let gateway = Gateway::start_with_policy(&config, Some(&policy));

    for (lang, port) in ["py", "js"].into_iter().zip(ports) {
        let shell = format!("{lang}-shell");
        let (code, out, err) = gateway.run(&["exec", &shell, "--", "echo owner CUST-00123456"], "");
        assert_eq!(
            (code, out.as_str()),
            (0, "owner [masked]\n"),
            "{lang}: {err}"
        );
        let (code, _, err) = gateway.run(&["exec", &shell, "--", "echo shutdown"], "");
        assert_ne!(code, 0, "{lang}");
        assert!(
            err.contains("`shutdown` is not allowed here"),
            "{lang}: {err}"
        );

        let token = &gateway.user_token;
        let (code, out, err) = psql(port, token, &["-t", "-c", "SELECT 'CUST-00123456' AS id"]);
        assert_eq!((code, out.trim()), (0, "[masked]"), "{lang}: {err}");
        let (code, _, err) = psql(port, token, &["-c", "SELECT 1 AS payroll"]);
        assert_ne!(code, 0, "{lang}");
        assert!(
            err.contains("`payroll` is not allowed here"),
            "{lang}: {err}"
        );
        // The refusal ended that query only: the connection and the server are fine.
        let (code, out, err) = psql(port, token, &["-t", "-c", "SELECT 41 + 1"]);
        assert_eq!((code, out.trim()), (0, "42"), "{lang}: {err}");
    }

    // Both runtimes keep memory per call (JavaScript about 1.5 KB a frame, CPython far less);
    // the skeleton says it is stateless, so a long, busy session renews its instance before
    // the limit instead of having a frame denied there. 12,000 masked frames would take a
    // JavaScript instance past 20 MiB.
    let frames: String = (0..12_000)
        .map(|i| {
            format!(
                "{{\"direction\":\"target-to-client\",\"bytes\":\"row {i} CUST-00123456\\n\"}}\n"
            )
        })
        .collect();
    for (lang, project) in [("py", &python), ("js", &js)] {
        let wasm = project.join(format!("{lang}_guard.wasm"));
        let (code, out, err) = run_command(
            sluice().args(["plugin", "run"]).arg(&wasm).args([
                "--config",
                "mask=CUST-[0-9]{8}",
                "--max-memory-bytes",
                &(20 << 20).to_string(),
            ]),
            &frames,
        );
        assert_eq!(code, 0, "{lang}: {err}");
        assert!(err.contains("], stateless"), "{lang}: {err}");
        let reports: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(reports.len(), 12_000, "{lang}");
        let unmasked = reports.iter().find(|r| r["verdict"] != "replace");
        assert!(unmasked.is_none(), "{lang}: {unmasked:?}");
        if lang == "js" {
            let renewed = reports.iter().filter(|r| r["renewed"] == true).count();
            assert!(renewed >= 2, "{lang}: renewed {renewed} times");
        }
    }
}

#[test]
fn a_python_plugin_that_raises_fails_closed_and_is_named() {
    let root = tempfile::tempdir().unwrap();
    let (code, out, err) = run_command(
        sluice()
            .args(["plugin", "new", "py-raises", "--lang", "python"])
            .current_dir(root.path()),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    let project = root.path().join("py-raises");
    let app = std::fs::read_to_string(project.join("app.py")).unwrap();
    let raising = app.replace(
        "    def on_frame(self, frame):\n",
        "    def on_frame(self, frame):\n        if 'boom' in (frame.content.text() or ''):\n            raise RuntimeError('boom asked for')\n",
    );
    assert_ne!(
        app, raising,
        "the template's on_frame changed: update this test"
    );
    std::fs::write(project.join("app.py"), raising).unwrap();
    let script = "componentize-py -d wit -w filter componentize app -o py_raises.wasm && \
        printf '%s\\n' '{\"line\": \"boom\"}' '{\"line\": \"ls\"}' | \
        sluice plugin run py_raises.wasm --config mask=x";
    let (code, out, err) = run_command(&mut in_project(&project, script), "");
    assert_eq!(code, 0, "{out}{err}");
    let reports: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports[0]["verdict"], "deny", "{out}");
    let reason = reports[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("fails closed") && reason.contains("RuntimeError: boom asked for"),
        "{reason}"
    );
    // The next frame gets a fresh instance.
    assert_eq!(reports[1]["verdict"], "pass", "{out}");
}

#[test]
fn the_example_plugins_pass_their_native_tests_and_build() {
    let python = repo().join("plugins/examples/python");
    let sdk = repo().join("plugin-sdk-python");
    let script = format!(
        "PYTHONPATH={} python3 -m unittest -v 2>&1 && \
         componentize-py -d ../../../wit -w filter componentize -p . -p {} deny_words -o \"$OUT/deny_words.wasm\"",
        sdk.display(),
        sdk.display()
    );
    let out_dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run_command(in_project(&python, &script).env("OUT", out_dir.path()), "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Ran 3 tests") && out.contains("OK"), "{out}");

    let js = repo().join("plugins/examples/js");
    // What `npm install` there would fetch (ignored by git), from the tests' own lock.
    if !js.join("node_modules").exists() {
        let _ = std::os::unix::fs::symlink(componentize_js_modules(), js.join("node_modules"));
    }
    let script = "node --test 2>&1 && SLUICE_WIT=../../../wit node --preserve-symlinks --preserve-symlinks-main sluice-plugin/build.mjs deny-words.component.js \"$OUT/deny_words_js.wasm\"";
    let (code, out, err) = run_command(in_project(&js, script).env("OUT", out_dir.path()), "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("# pass 3") && out.contains("# fail 0"),
        "{out}"
    );

    // Both gates refuse through the real host, as built.
    for wasm in ["deny_words.wasm", "deny_words_js.wasm"] {
        let path = out_dir.path().join(wasm);
        let (code, out, err) = run_command(
            sluice().args(["plugin", "run"]).arg(&path).args([
                "--config",
                "words=[\"shutdown\"]",
                "--as",
                "exec-script",
                "--input",
                "shutdown now",
            ]),
            "",
        );
        assert_eq!(code, 0, "{wasm}: {err}");
        assert!(
            out.contains(r#""verdict":"deny","reason":"`shutdown` is not allowed here""#),
            "{wasm}: {out}"
        );
        // Its prescreen crossed the component boundary: a line without the word is kept
        // from it, one with it is not.
        let (code, out, err) = run_command(
            sluice()
                .args(["plugin", "run"])
                .arg(&path)
                .args(["--config", "words=[\"a.b\"]"]),
            "{\"line\": \"ls aXb\"}\n{\"line\": \"ls a.b\"}\n",
        );
        assert_eq!(code, 0, "{wasm}: {err}");
        assert!(
            err.contains("prescreened [statement, line] (1 pattern)"),
            "{wasm}: {err}"
        );
        let reports: Vec<serde_json::Value> = (out.lines())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(reports[0]["verdict"], "pass", "{wasm}: {out}");
        assert!(
            reports[0]["reason"]
                .as_str()
                .unwrap()
                .contains("prescreen matched nothing"),
            "{wasm}: {out}"
        );
        assert_eq!(reports[1]["verdict"], "deny", "{wasm}: {out}");
    }
}
