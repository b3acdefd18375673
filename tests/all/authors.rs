//! A plugin author's path, as they walk it: `sluice plugin new`, native tests, a build, `plugin
//! run`, the policy snippet in a running gateway, and a rebuild that `serve --watch` applies.
//! Also: what each kind of session really sends plugins, checked against the statement of it
//! that the SDK, the docs and `sluice policy` use.

use std::time::Duration;

use sluice_core::frame::{ContentKind, Direction, SessionKind};

use crate::support::*;

#[test]
fn a_new_plugin_tests_builds_and_works_in_a_gateway_and_a_rebuild_applies_under_watch() {
    let root = tempfile::tempdir().unwrap();
    let (code, out, err) = run_command(
        sluice()
            .args(["plugin", "new", "deny-words"])
            .current_dir(root.path()),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    let krate = root.path().join("deny-words");
    // Made again, nothing is overwritten.
    let (code, _, err) = run_command(
        sluice()
            .args(["plugin", "new", "deny-words"])
            .current_dir(root.path()),
        "",
    );
    assert_ne!(code, 0);
    assert!(err.contains("not empty"), "{err}");
    share_builds(&krate);

    let (code, out, err) = run_command(
        &mut author_shell(
            &krate,
            "cargo test && cargo build --release --target wasm32-wasip2 && \
             sluice plugin run target/wasm32-wasip2/release/deny_words.wasm \
               --config forbidden='[\"shutdown\"]' --config mask='CUST-[0-9]{8}' < frames.jsonl",
        ),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("test result: ok. 3 passed"), "{out}");
    let reports: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let verdicts: Vec<&str> = reports
        .iter()
        .map(|r| r["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["deny", "pass", "replace", "replace"], "{out}");

    // The snippet enables it beside the shipped policy, and `sluice policy` finds it sound.
    let snippet = std::fs::read_to_string(krate.join("sluice-policy.toml")).unwrap();
    let policies = root.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::copy(
        repo().join("policies/default.toml"),
        policies.join("default.toml"),
    )
    .unwrap();
    std::fs::write(policies.join("deny-words.toml"), &snippet).unwrap();
    let policy = |dir: &std::path::Path| {
        run_command(sluice().arg("policy").arg(dir).current_dir(root.path()), "")
    };
    let (code, out, err) = policy(&policies);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("chain shell: shell-gate -> mask -> deny-words"),
        "{out}"
    );
    assert!(!err.contains("warning"), "{err}");

    let gateway = Gateway::start_full("watch_ms = 50", "", Some(&snippet));
    let (code, _, err) = gateway.run(&["exec", "shell", "--", "echo shutdown"], "");
    assert_ne!(code, 0);
    assert!(err.contains("`shutdown` is not allowed here"), "{err}");
    let (code, out, _) = gateway.run(&["exec", "shell", "--", "echo owner CUST-00123456"], "");
    assert_eq!(code, 0);
    assert_eq!(out, "owner [masked]\n");

    // The story of issue 18: a gate that judges only typed lines. Its tests of lines pass,
    // but one-shot scripts are statements: `sluice policy` says so ...
    let lib = krate.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let lines_only = source.replace(
        "client_to_target: vec![ContentKind::Statement, ContentKind::Line]",
        "client_to_target: vec![ContentKind::Line]",
    );
    assert_ne!(
        source, lines_only,
        "the template's interest changed: update this test"
    );
    std::fs::write(&lib, lines_only).unwrap();
    let (code, out, err) = run_command(
        &mut author_shell(&krate, "cargo build --release --target wasm32-wasip2"),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = policy(&policies);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("plugin `deny-words` on connection `shell` never sees the commands of exec-script sessions"),
        "{err}"
    );
    // ... and the gateway, watching, applies the rebuild by itself: the script now runs.
    eventually(
        "the watching gateway applies the rebuilt plugin",
        Duration::from_secs(30),
        || gateway.run(&["exec", "shell", "--", "echo shutdown"], "").0 == 0,
    );
    let (_, _, err) = gateway.run(&["connect", "shell"], "echo shutdown\nexit\n");
    assert!(
        err.contains("`shutdown` is not allowed here"),
        "typed lines are still judged: {err}"
    );
}

#[test]
fn plugin_run_as_a_session_kind_sends_what_the_gateway_sends() {
    let run = |kind: &str, input: &str| {
        let (code, out, err) = run_command(
            sluice().args([
                "plugin",
                "run",
                "builtin:approve",
                "--config",
                "rules=[\"shell\"]",
                "--as",
                kind,
                "--input",
                input,
            ]),
            "",
        );
        assert_eq!(code, 0, "{err}");
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let script = run("exec-script", "rm -rf /");
    assert_eq!(script.len(), 1);
    assert_eq!(script[0]["frame"]["statement"]["text"], "rm -rf /");
    assert_eq!(script[0]["verdict"], "hold");
    let typed = run("terminal", "rm -rf /\n");
    assert_eq!(typed[0]["frame"]["bytes"], "rm -rf /");
    assert_eq!(typed[1]["frame"]["line"], "rm -rf /");
    assert_eq!(typed[1]["verdict"], "hold");

    let (code, _, err) = run_command(
        sluice().args([
            "plugin",
            "run",
            "builtin:mask",
            "--as",
            "ssh",
            "--input",
            "x",
        ]),
        "",
    );
    assert_ne!(code, 0);
    assert!(err.contains("exec-script, terminal, pg, tcp"), "{err}");
}

#[test]
fn plugin_run_explain_says_what_the_shipped_plugins_matched_where_never_the_values() {
    let run = |args: &[&str]| {
        let (code, out, err) = run_command(sluice().args(args), "");
        assert_eq!(code, 0, "{err}");
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let masked = run(&[
        "plugin",
        "run",
        "builtin:mask",
        "--explain",
        "--as",
        "tcp",
        "--input",
        "card 4242 4242 4242 4242 and bob@example.com, not 4242 4242 4242 4241",
    ]);
    // What was masked, and why a near miss was not.
    assert_eq!(
        masked[0]["explain"],
        serde_json::json!([
            "card candidate at bytes 50..69 not masked: the Luhn check fails",
            "card at bytes 5..24, masked as label",
            "email at bytes 29..44, masked as label"
        ])
    );
    let gated = run(&[
        "plugin",
        "run",
        "builtin:approve",
        "--config",
        "rules=[\"sql\"]",
        "--explain",
        "--as",
        "pg",
        "--input",
        "SELECT 1; DROP TABLE users",
    ]);
    assert_eq!(
        gated[0]["explain"],
        serde_json::json!([
            "statement 1: no rule matched",
            "statement 2: rule drop -> hold: DROP statement"
        ])
    );
    // Without --explain, nothing is logged into the report.
    let quiet = run(&[
        "plugin",
        "run",
        "builtin:mask",
        "--as",
        "tcp",
        "--input",
        "bob@example.com",
    ]);
    assert!(quiet[0].get("explain").is_none(), "{:?}", quiet[0]);
}

/// `plugin run` holds a result's columns as the gateway does: kept from the masker, they reach
/// it before the first row it is asked about, so a column the policy never masks is honoured.
#[test]
fn plugin_run_holds_prescreened_columns_for_their_first_row() {
    let frames = [
        r#"{"direction": "target-to-client", "columns": [{"name": "notes"}]}"#,
        r#"{"direction": "target-to-client", "row": ["no digits"]}"#,
        r#"{"direction": "target-to-client", "row": ["4242 4242 4242 4242"]}"#,
        r#"{"direction": "target-to-client", "columns": [{"name": "comment"}]}"#,
        r#"{"direction": "target-to-client", "row": ["4242 4242 4242 4242"]}"#,
    ];
    let (code, out, err) = run_command(
        sluice().args([
            "plugin",
            "run",
            "builtin:mask",
            "--config",
            r#"columns={notes="never"}"#,
        ]),
        &(frames.join("\n") + "\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("prescreened [line, statement, columns, row]"),
        "{err}"
    );
    let reports: Vec<serde_json::Value> = (out.lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reason = |i: usize| {
        reports[i]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(reason(0).contains("before the first of its rows"), "{out}");
    assert!(reason(1).contains("prescreen matched nothing"), "{out}");
    assert_eq!(
        (&reports[2]["verdict"], reason(2)),
        (&serde_json::json!("pass"), String::new()),
        "asked, and the never rule held: {out}"
    );
    assert_eq!(reports[4]["content"]["row"][0], "[MASKED:card]", "{out}");
}

#[test]
fn sluice_policy_warns_about_a_gate_that_never_sees_its_connections_commands() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        "[connections.shell]\nkind = \"exec\"\ninteractive = [\"bash\", \"-i\"]\nscript = [\"bash\", \"-s\"]\n\n\
         [connections.redis]\nkind = \"tcp\"\nupstream = \"127.0.0.1:6379\"\n",
    )
    .unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    // The shipped gate judges statements, typed lines and MCP tool calls: every command of a
    // shell, but nothing of a raw TCP stream (bytes).
    std::fs::write(
        policies.join("a.toml"),
        "[plugins.gate]\nsource = \"builtin:approve\"\nconfig = { rules = [\"shell\"] }\n\
         [chains]\nshell = [\"gate\"]\nredis = [\"gate\"]\n",
    )
    .unwrap();
    let (code, out, err) = run_command(
        sluice()
            .args(["policy", "policies", "--config", "sluice.toml"])
            .current_dir(dir.path()),
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("chain redis: gate"), "{out}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains(
            "plugin `gate` on connection `redis` never sees the commands of tcp sessions"
        ) && warnings[0].contains("[line, statement, tool-call]")
            && warnings[0].contains("[bytes]"),
        "{err}"
    );
}

#[test]
fn every_session_kind_sends_what_the_sdk_says_it_sends() {
    use crate::postgres::{Cluster, UPSTREAM_PASSWORD, free_port, psql, tunnel};
    use std::io::{BufRead, BufReader, Write};
    let cluster = Cluster::start("scram-sha-256");
    // A line service for the TCP session.
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let service_port = service.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in service.incoming().flatten() {
            let mut out = stream.try_clone().unwrap();
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = writeln!(out, "you said {line}");
            }
        }
    });
    let pg_port = free_port();
    let config = format!(
        "\n[connections.pg]\nkind = \"postgres\"\nlisten = \"127.0.0.1:{pg_port}\"\nupstream = \"127.0.0.1:{}\"\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"{UPSTREAM_PASSWORD}\"\n\
         [connections.lines]\nkind = \"tcp\"\nupstream = \"127.0.0.1:{service_port}\"\n",
        cluster.port
    );
    let gateway = Gateway::start_with_policy(&config, Some("[chains]\nlines = [\"mask\"]\n"));
    let newest = |connection: &str| gateway.newest_session(&["--connection", connection]);

    let (code, _, err) = gateway.run(&["exec", "shell", "--", "echo hello"], "");
    assert_eq!(code, 0, "{err}");
    let exec_script = newest("shell");
    let (code, _, err) = gateway.run(&["connect", "shell"], "echo typed\nexit\n");
    assert_eq!(code, 0, "{err}");
    let terminal = newest("shell");
    assert_ne!(exec_script, terminal);
    // A result, and an error (whose text crosses the chain as lines).
    psql(
        pg_port,
        &gateway.user_token,
        &["-c", "SELECT 1 AS one", "-c", "SELECT nosuch"],
    );
    let pg = newest("pg");
    let (mut child, port) = tunnel(&gateway, "lines");
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    socket.write_all(b"ping\n").unwrap();
    BufReader::new(socket.try_clone().unwrap())
        .read_line(&mut String::new())
        .unwrap();
    drop(socket);
    let _ = child.kill();
    let _ = child.wait();
    // The TCP session's record is complete once it has ended.
    eventually("the TCP session ends", Duration::from_secs(30), || {
        let (_, out, _) = gateway.run(&["sessions", "--connection", "lines"], "");
        out.lines().count() == 2 && !out.contains("live")
    });
    let tcp = newest("lines");

    for (kind, session) in [
        (SessionKind::ExecScript, exec_script),
        (SessionKind::Terminal, terminal),
        (SessionKind::Postgres, pg),
        (SessionKind::Tcp, tcp),
    ] {
        let frames = recorded_frames(&gateway, &session);
        for direction in [Direction::ClientToTarget, Direction::TargetToClient] {
            let seen: Vec<ContentKind> = frames
                .iter()
                .filter(|(d, _)| *d == direction)
                .map(|(_, k)| *k)
                .collect();
            assert!(
                !seen.is_empty(),
                "{} sent nothing {direction:?}",
                kind.name()
            );
            for k in &seen {
                assert!(
                    kind.sends(direction).contains(k),
                    "{} sessions sent a {direction:?} {} frame, which SessionKind::sends leaves out",
                    kind.name(),
                    k.name()
                );
            }
        }
        assert!(
            frames
                .iter()
                .any(|(d, k)| *d == Direction::ClientToTarget && kind.commands().contains(k)),
            "{}: its command arrived in none of {:?}: {frames:?}",
            kind.name(),
            kind.commands()
        );
    }
}

/// The (direction, kind) of each frame event of a session, from `sluice export`.
fn recorded_frames(gateway: &Gateway, session: &str) -> Vec<(Direction, ContentKind)> {
    let mut cmd = gateway.cli();
    cmd.env("SLUICE_TOKEN", &gateway.reviewer_token);
    let (code, out, err) = run_command(cmd.args(["export", session, "--format", "jsonl"]), "");
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "frame")
        .map(|e| {
            let direction = match e["meta"]["dir"].as_str().unwrap() {
                "in" | "client-to-target" => Direction::ClientToTarget,
                _ => Direction::TargetToClient,
            };
            // The record keeps a result's rows as one event (`rows`, with its columns).
            let name = match e["meta"]["content"].as_str().unwrap() {
                "rows" => "row",
                name => name,
            };
            let kind = ContentKind::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .unwrap_or_else(|| panic!("recorded content {name:?}"));
            (direction, kind)
        })
        .collect()
}

#[test]
fn trace_shows_each_frame_decoded_with_the_plugins_answers_and_the_review() {
    let gateway = Gateway::start();
    let (code, out, err) = gateway.run(
        &["exec", "shell", "--", "echo card 4242 4242 4242 4242"],
        "",
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "card **** **** **** 4242\n"),
        "{err}"
    );
    let masked = gateway.newest_session(&[]);
    // Held by the shipped gate; nobody decides, so it expires (hold_timeout_ms = 200).
    let (code, _, _) = gateway.run(
        &["exec", "shell", "--", "rm -rf /tmp/sluice-trace-test"],
        "",
    );
    assert_ne!(code, 0);
    let held = gateway.newest_session(&[]);

    let trace = |id: &str| {
        let mut cmd = gateway.cli();
        cmd.env("SLUICE_TOKEN", &gateway.reviewer_token);
        let (code, out, err) = run_command(cmd.args(["trace", id]), "");
        assert_eq!(code, 0, "{err}");
        out
    };
    let out = trace(&masked);
    assert!(out.contains("chain: shell-gate ("), "{out}");
    assert!(
        out.contains(r#"-> statement pass  "echo card **** **** **** 4242\n""#),
        "{out}"
    );
    assert!(
        out.contains(r#"<- bytes     pass  "card **** **** **** 4242\n""#),
        "{out}"
    );
    // Which plugin did what, and the time each call took.
    let calls = out
        .lines()
        .filter(|l| l.trim_start().starts_with("plugins: "))
        .collect::<Vec<_>>();
    assert!(
        calls[0].contains("shell-gate: pass (") && calls[0].contains("mask: "),
        "{out}"
    );
    assert!(
        calls[1].contains("mask: replace (") && calls[1].contains(" us)"),
        "{out}"
    );
    assert!(
        !out.contains("4242 4242 4242 4242"),
        "the record is masked: {out}"
    );
    assert!(out.contains("closed, exit status 0"), "{out}");

    let out = trace(&held);
    assert!(out.contains("created: pending"), "{out}");
    assert!(out.contains("expired"), "{out}");
    assert!(out.contains("shell-gate: hold ("), "{out}");
    assert!(out.contains("why: "), "{out}");
}
