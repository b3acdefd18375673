//! Sessions end to end: the real `sluice` binary as gateway and client, real bash and
//! python3, the real record.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;
use sluice_engine::wire::{self, Message};
use sluice_record::tamper::Log;

use crate::support::*;

/// The ids of the recorded sessions, newest first.
fn session_ids(gw: &Gateway) -> Vec<String> {
    let (code, out, err) = gw.run(&["sessions"], "");
    assert_eq!(code, 0, "{err}");
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

fn events(gw: &Gateway, id: &str) -> Vec<Value> {
    let (code, out, err) = gw.run(&["export", id, "--format", "jsonl"], "");
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn payload(event: &Value) -> Vec<u8> {
    hex::decode(event["payload_hex"].as_str().unwrap_or_default()).unwrap()
}

/// All output the record holds for a session, in order.
fn recorded_output(events: &[Value]) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e["kind"] == "frame" && e["meta"]["dir"] == "out")
        .flat_map(payload)
        .collect()
}

#[test]
fn one_shot_bash_and_python_carry_output_and_exit_status_and_are_recorded_in_order() {
    let gw = Gateway::start();
    let (code, out, err) = gw.run(
        &[
            "exec",
            "shell",
            "--",
            "echo hello; echo password=hunter2; exit 3",
        ],
        "",
    );
    assert_eq!(
        (code, out.as_str()),
        (3, "hello\npassword=[MASKED:assignment]\n"),
        "{err}"
    );

    std::fs::write(
        gw.dir.path().join("fix.py"),
        "import sys\nprint(6 * 7)\nsys.exit(5)\n",
    )
    .unwrap();
    let (code, out, err) = gw.run(&["exec", "python", "-f", "fix.py"], "");
    assert_eq!((code, out.as_str()), (5, "42\n"), "{err}");

    let ids = session_ids(&gw);
    assert_eq!(ids.len(), 2);
    // The auditor's filters.
    let listed = |args: &[&str]| {
        let (code, out, err) = gw.run(&[&["sessions"], args].concat(), "");
        assert_eq!(code, 0, "{err}");
        out.lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(&["--connection", "python"]), [ids[0].clone()]);
    assert_eq!(listed(&["--grep", "password=[MASKED"]), [ids[1].clone()]);
    assert_eq!(listed(&["--user", "dev-user", "--since", "1h"]).len(), 2);
    assert!(listed(&["--user", "somebody-else"]).is_empty());
    assert!(listed(&["--until", "1h"]).is_empty());
    let shell = events(&gw, &ids[1]);
    let kinds: Vec<_> = shell.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"session-open"));
    assert_eq!(kinds.last(), Some(&"session-close"));
    assert_eq!(shell[0]["meta"]["subject"], "dev-user");
    assert_eq!(shell[0]["meta"]["connection"], "shell");
    assert_eq!(shell[0]["meta"]["plugins"][0]["name"], "shell-gate");
    assert_eq!(shell[0]["meta"]["plugins"][1]["name"], "mask");
    assert_eq!(
        shell[0]["meta"]["plugins"][0]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert!(
        shell[0]["meta"]["policy"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("default.toml")
    );
    assert_eq!(
        shell[0]["meta"]["policy"][0]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    // The script is one statement frame: bash got it as sent, the record has it masked.
    assert_eq!(shell[1]["meta"]["dir"], "in");
    assert_eq!(shell[1]["meta"]["content"], "statement");
    assert_eq!(
        String::from_utf8(payload(&shell[1])).unwrap(),
        "echo hello; echo password=[MASKED:assignment]; exit 3\n"
    );
    assert_eq!(
        recorded_output(&shell),
        b"hello\npassword=[MASKED:assignment]\n"
    );
    assert_eq!(shell.last().unwrap()["meta"]["exit_status"], 3);
    let indices: Vec<_> = shell.iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert!(indices.windows(2).all(|w| w[0] < w[1]), "{indices:?}");
}

#[test]
fn interactive_bash_and_python_sessions_work_and_are_recorded() {
    let gw = Gateway::start();
    let (code, out, err) = gw.run(&["connect", "shell"], "echo $((6 * 7))\nexit 4\n");
    assert_eq!(code, 4, "{err}");
    assert!(out.contains("42"), "{out}");

    let (code, out, err) = gw.run(&["connect", "python"], "print('py' * 2)\nexit(6)\n");
    assert_eq!(code, 6, "{err}");
    assert!(out.contains("pypy"), "{out}");

    let ids = session_ids(&gw);
    let python = events(&gw, &ids[0]);
    let lines: Vec<_> = python
        .iter()
        .filter(|e| e["meta"]["content"] == "line")
        .map(|e| String::from_utf8(payload(e)).unwrap())
        .collect();
    assert_eq!(lines, ["print('py' * 2)", "exit(6)"]);
    assert!(String::from_utf8_lossy(&recorded_output(&python)).contains("pypy"));
}

/// The client reads a pipe on its runtime through a description of its own: whoever shares the
/// pipe's (the rest of a shell's pipeline) finds it blocking after the session, as before.
#[test]
fn a_session_typed_from_a_pipe_leaves_the_pipe_blocking() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let gw = Gateway::start();
    let (reader, mut writer) = std::io::pipe().unwrap();
    let shared = reader.try_clone().unwrap();
    let mut connect = gw.cli();
    connect.args(["connect", "shell"]).stdin(reader);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(connect.output()));
    writer.write_all(b"echo $((6 * 7))\nexit 4\n").unwrap();
    drop(writer);
    let out = finished
        .recv_timeout(std::time::Duration::from_secs(360))
        .expect("the session ends")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("42"), "{err}");
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", shared.as_raw_fd()));
    let flags = info
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("flags:").map(str::trim).map(String::from));
    let flags = u32::from_str_radix(&flags.unwrap(), 8).unwrap();
    const O_NONBLOCK: u32 = 0o4000; // Linux
    assert_eq!(flags & O_NONBLOCK, 0, "the pipe was left non-blocking");
}

#[test]
fn in_strict_mode_the_keys_before_enter_and_the_typed_line_share_one_durable_commit() {
    // Strict mode writes a typed line to the program only once it is durable: the keys and
    // the line frame in one commit make that one fsync, not two.
    let mut gw = Gateway::start();
    let (code, out, err) = gw.run(&["connect", "shell"], "echo $((6 * 7))\nexit 4\n");
    assert_eq!(code, 4, "{err}");
    assert!(out.contains("42"), "{out}");
    gw.stop_with("TERM");
    let store =
        sluice_record::Store::open(&gw.store(), &gw.dir.path().join("data/record.key")).unwrap();
    let entries = store.entries_from(0, usize::MAX).unwrap();
    let content = |r: &sluice_record::Recorded| {
        let meta: Value = serde_json::from_str(&r.entry.meta).unwrap();
        (meta["dir"].clone(), meta["content"].clone())
    };
    let commit = |index: u64| store.covering_head(index).unwrap().unwrap().index;
    let mut lines = 0;
    for (at, line) in entries.iter().enumerate() {
        if content(line) != ("in".into(), "line".into()) {
            continue;
        }
        lines += 1;
        let keys = &entries[at - 1];
        assert_eq!(content(keys), ("in".into(), "bytes".into()));
        assert_eq!(keys.payload, line.payload, "the keys typed are the line");
        assert_eq!(
            commit(keys.entry.index),
            commit(line.entry.index),
            "entries {} and {} were committed apart",
            keys.entry.index,
            line.entry.index
        );
    }
    assert_eq!(lines, 2);
}

/// A gateway whose shell connection runs the misbehaving `antics` guest.
fn gateway_with_antics() -> Gateway {
    let guests = sluice_builtins::TEST_GUESTS;
    let mut gw = Gateway::start();
    let policies = gw.dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let policy = format!(
        "[plugins.gate]\nsource = \"{guests}/antics.wasm\"\n[chains]\nshell = [\"gate\"]\n\
         [roles.default]\nconnect = [\"developers\"]\n"
    );
    std::fs::write(policies.join("gate.toml"), policy).unwrap();
    let config = std::fs::read_to_string(gw.dir.path().join("sluice.toml")).unwrap();
    let config = config.replace(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies"),
        "policies",
    );
    std::fs::write(gw.dir.path().join("sluice.toml"), config).unwrap();
    gw.kill();
    gw.restart();
    gw
}

#[test]
fn a_denied_line_is_erased_and_the_session_goes_on() {
    let gw = gateway_with_antics();
    let (code, out, err) = gw.run(
        &["connect", "shell"],
        "deny not today\necho after\nexit 0\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("refused by gate: not today"),
        "err={err} out={out}"
    );
    assert!(out.contains("after"), "{out}");

    let (code, _, err) = gw.run(&["exec", "shell", "--", "deny", "no", "scripts"], "");
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("refused by gate: no scripts"), "{err}");
}

#[test]
fn a_plugin_that_blocks_on_a_wasi_clock_neither_kills_its_session_nor_the_gateway() {
    let gw = gateway_with_antics();
    // Blocking is a failure of the plugin: its frame is refused (fail closed), with the reason.
    let (code, out, err) = gw.run(&["exec", "shell", "--", "sleep", "a little"], "");
    assert_eq!(code, 126, "{out}{err}");
    assert!(err.contains("blocked on a WASI call"), "{err}");
    let (code, out, err) = gw.run(&["exec", "shell", "--", "echo", "still here"], "");
    assert_eq!((code, out.as_str()), (0, "still here\n"), "{err}");
    // A plugin that panics inside the gateway is named as panicking, with its message (its
    // panic no longer goes to stderr through a blocking WASI write).
    let (code, out, err) = gw.run(&["exec", "shell", "--", "panic", "now"], "");
    assert_eq!(code, 126, "{out}{err}");
    assert!(
        err.contains("panicked") && err.contains("asked to panic"),
        "{err}"
    );
}

#[test]
fn replay_and_asciicast_export_reproduce_the_output() {
    let gw = Gateway::start();
    let (code, out, _) = gw.run(
        &[
            "exec",
            "shell",
            "--",
            "printf 'one\\ntwo\\n'; sleep 0.2; echo three",
        ],
        "",
    );
    assert_eq!(code, 0);
    let id = &session_ids(&gw)[0];
    let (code, replayed, _) = gw.run(&["replay", id, "--speed", "0", "--output-only"], "");
    assert_eq!((code, replayed.as_str()), (0, out.as_str()));
    // By default the script the client sent comes first, marked: no terminal echoed it.
    let (code, replayed, _) = gw.run(&["replay", id, "--speed", "0"], "");
    let script = "> printf 'one\\ntwo\\n'; sleep 0.2; echo three\n";
    assert_eq!((code, replayed), (0, format!("{script}{out}")));

    let (code, cast, _) = gw.run(&["export", id, "--format", "asciicast"], "");
    assert_eq!(code, 0);
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    let (mut text, mut inputs) = (String::new(), Vec::new());
    let mut last_time = 0.0;
    for line in lines {
        let event: Value = serde_json::from_str(line).unwrap();
        let time = event[0].as_f64().unwrap();
        assert!(time >= last_time, "times go forward");
        last_time = time;
        match event[1].as_str() {
            Some("o") => text.push_str(event[2].as_str().unwrap()),
            Some(code) => inputs.push((code.to_string(), event[2].as_str().unwrap().to_string())),
            None => panic!("{line}"),
        }
    }
    assert_eq!(text, out);
    // The script is an input, with a marker a player can jump to.
    let script = "printf 'one\\ntwo\\n'; sleep 0.2; echo three";
    let expected = [("m", script.to_string()), ("i", format!("{script}\n"))];
    let expected = expected.map(|(c, s)| (c.to_string(), s));
    assert_eq!(inputs, expected);
}

#[test]
fn verify_holds_online_and_offline_and_names_a_tampered_entry() {
    let mut gw = Gateway::start();
    gw.run(&["exec", "shell", "--", "echo a; echo b"], "");
    // Verifying is the auditors' (the reviewer dev token's, in the shipped policy).
    let auditor = gw.reviewer_token.clone();
    let (code, out, _) = gw.run_as(Some(&auditor), &["verify", "--print-head"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("record verified"), "{out}");
    assert!(out.contains("\"signature\""), "{out}");

    gw.kill();
    let store = gw.store();
    let store = store.to_str().unwrap();
    let (code, out, _) = gw.run(&["verify", "--store", store], "");
    assert_eq!(code, 0, "{out}");

    // Change one recorded payload in a copy, past the store's checks.
    let copy = gw.dir.path().join("data/copy.redb");
    std::fs::copy(store, &copy).unwrap();
    // A store killed mid-run: its last commits are in its journal, which goes with the copy.
    std::fs::copy(
        gw.store().with_extension("journal"),
        copy.with_extension("journal"),
    )
    .unwrap();
    sluice_record::tamper::tamper(&copy, |store| {
        let mut bytes = store.get(Log::Payloads, 2).unwrap();
        bytes.push(b'!');
        store.put(Log::Payloads, 2, &bytes);
    })
    .unwrap();
    let (code, out, _) = gw.run(&["verify", "--store", copy.to_str().unwrap()], "");
    assert_eq!(code, 2);
    assert!(out.contains("entry 2 was altered"), "{out}");
}

#[test]
fn after_sigkill_mid_session_the_store_opens_verifies_and_holds_every_byte_the_client_saw() {
    let mut gw = Gateway::start();
    let mut client = gw
        .cli()
        .args([
            "exec",
            "shell",
            "--",
            "for i in $(seq 1 200000); do echo line $i; done",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = client.stdout.take().unwrap();
    let mut received = vec![0u8; 64 << 10];
    stdout.read_exact(&mut received).unwrap();
    gw.kill();
    stdout.read_to_end(&mut received).unwrap();
    let _ = client.wait();

    gw.restart();
    let (code, out, _) = gw.run_as(Some(&gw.reviewer_token.clone()), &["verify"]);
    assert_eq!(code, 0, "{out}");
    let id = &session_ids(&gw)[0];
    let recorded = recorded_output(&events(&gw, id));
    assert!(
        recorded.len() >= received.len(),
        "recorded {} < received {}",
        recorded.len(),
        received.len()
    );
    assert!(
        recorded.starts_with(&received),
        "the client saw bytes that are not in the record"
    );
}

#[test]
fn bad_tokens_and_unknown_connections_are_refused_clearly() {
    let gw = Gateway::start();
    let (code, _, err) = gw.run_as(None, &["exec", "shell", "--", "true"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("401") && err.contains("no token given"),
        "{err}"
    );
    // An empty token is no token, from the CLI and from any other client.
    let (code, _, err) = gw.run_as(Some(""), &["exec", "shell", "--", "true"]);
    assert_eq!(code, 1);
    assert!(err.contains("no token given"), "{err}");
    let curl = |header: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(gw.dir.path().join("data/tls/ca.pem"))
            .args(["-H", header])
            .arg(format!("https://{}/api/whoami", gw.addr))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(curl("Authorization: Bearer ").contains("no token given"));
    assert!(curl("Authorization: Basic abc").contains("expected `Bearer TOKEN`"));
    // A reader that went away (`sluice sessions | head -1`) ends the CLI quietly, with the
    // status a shell shows for SIGPIPE, not with a panic.
    for _ in 0..3 {
        gw.run(&["exec", "shell", "--", "true"], "");
    }
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let closed = gw.cli().arg("sessions").stdout(writer).output().unwrap();
    let stderr = String::from_utf8_lossy(&closed.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(closed.status.code(), Some(141), "{stderr}");
    let (code, _, err) = gw.run_as(
        Some("sluice_dev_user_guess"),
        &["exec", "shell", "--", "true"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("unknown token"), "{err}");
    let (code, _, err) = gw.run(&["exec", "nope", "--", "true"], "");
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown connection `nope` (known: python, shell)"),
        "{err}"
    );
    // Nothing was opened but the three sessions above.
    assert_eq!(session_ids(&gw).len(), 3);
}

#[test]
fn malformed_frames_and_vanishing_clients_end_only_their_own_session() {
    let gw = Gateway::start();
    let client = gw.client();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use tokio::io::AsyncWriteExt;
        // Garbage where a message should be: the gateway answers with an error.
        let (_, mut stream) = client.open("connection=shell&mode=exec").await.unwrap();
        stream.write_all(&[0xEE, 0, 0, 0, 1, 0]).await.unwrap();
        match wire::read(&mut stream).await.unwrap() {
            Message::Error(text) => assert!(text.contains("unknown message kind"), "{text}"),
            other => panic!("{other:?}"),
        }
        // A client that vanishes halfway through a message.
        let (_, mut stream) = client.open("connection=shell&mode=exec").await.unwrap();
        stream
            .write_all(&[1, 0, 0, 1, 0, b'e', b'c'])
            .await
            .unwrap();
        drop(stream);
        // An interactive client that vanishes mid-session.
        let (_, mut stream) = client.open("connection=python&mode=connect").await.unwrap();
        wire::write(&mut stream, &Message::Input(b"x = 1\r".to_vec()))
            .await
            .unwrap();
        drop(stream);
    });
    // The gateway still serves everyone else.
    let (code, out, err) = gw.run(&["exec", "shell", "--", "echo still here"], "");
    assert_eq!((code, out.as_str()), (0, "still here\n"), "{err}");
    eventually(
        "the vanished sessions are closed in the record",
        Duration::from_secs(10),
        || {
            let (_, out, _) = gw.run(&["sessions"], "");
            !out.contains("active")
        },
    );
}

#[test]
fn the_ca_export_is_what_the_gateway_serves() {
    let gw = Gateway::start();
    let (code, pem, _) = gw.run(&["ca", "export", "--data-dir", "data"], "");
    assert_eq!(code, 0);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let served = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(gw.client().get("/api/ca"))
        .unwrap();
    assert_eq!(served, pem.as_bytes());
    let _ = std::io::stdout().flush();
}

#[test]
fn input_typed_at_a_password_prompt_is_recorded_redacted() {
    let gw = Gateway::start();
    password_prompt_input_is_recorded_redacted(&gw, "shell");
}

/// At a password prompt (echo off) on `connection`'s shell, the typed password reaches the
/// program but the record holds `[redacted: typed with echo off]`.
pub fn password_prompt_input_is_recorded_redacted(gw: &Gateway, connection: &str) {
    let client = gw.client();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let output = runtime.block_on(async {
        let query = format!("connection={connection}&mode=connect");
        let (_, mut stream) = client.open(&query).await.unwrap();
        let mut seen = Vec::new();
        let mut step = 0;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), wire::read(&mut stream))
                .await
                .unwrap()
                .unwrap();
            match message {
                Message::Output(bytes) => seen.extend_from_slice(&bytes),
                Message::Exit(_) => break,
                other => panic!("{other:?}"),
            }
            let text = String::from_utf8_lossy(&seen).into_owned();
            // Type only once the prompt is there, as a person would.
            if step == 0 && text.contains("$ ") {
                let line = b"read -s -p 'pw: ' PW; echo; echo \"got ${#PW} chars\"\r".to_vec();
                wire::write(&mut stream, &Message::Input(line))
                    .await
                    .unwrap();
                step = 1;
            } else if step == 1 && text.contains("pw: ") {
                wire::write(&mut stream, &Message::Input(b"s3cret-value\r".to_vec()))
                    .await
                    .unwrap();
                step = 2;
            } else if step == 2 && text.contains("got 12 chars") {
                wire::write(&mut stream, &Message::Input(b"exit\r".to_vec()))
                    .await
                    .unwrap();
                step = 3;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    assert!(output.contains("got 12 chars"), "{output}");
    let id = gw.newest_session(&["--connection", connection]);
    let all: Vec<u8> = events(gw, &id).iter().flat_map(payload).collect();
    let all = String::from_utf8_lossy(&all);
    assert!(!all.contains("s3cret"), "the password reached the record");
    assert!(all.contains("[redacted: typed with echo off]"), "{all}");
}

#[test]
fn live_sessions_are_listed_and_only_admins_end_them() {
    let gw = Gateway::start();
    let (sleeper, id) = gw.sleeping_client();
    let (code, _, err) = gw.run(&["kill", &id], "");
    assert_eq!(code, 1);
    assert!(
        err.contains("403") && err.contains("needs the `admin` role on `shell`"),
        "{err}"
    );

    let (code, out, err) = gw.run_as(Some(&gw.reviewer_token.clone()), &["kill", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ended"), "{out}");
    let (status, err) = crate::support::exit_and_stderr(sleeper);
    assert_eq!(status, Some(1));
    assert!(
        err.contains("session ended: ended by dev-reviewer"),
        "{err}"
    );
    let close = events(&gw, &id).pop().unwrap();
    assert_eq!(close["kind"], "session-close");
    assert_eq!(
        close["meta"]["reason"],
        "session ended: ended by dev-reviewer"
    );
    let (_, out, _) = gw.run(&["sessions", "--active"], "");
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn a_session_past_its_connections_maximum_duration_is_ended() {
    let gw = Gateway::start_with(
        "\n[connections.brief]\nkind = \"exec\"\ninteractive = [\"bash\"]\nscript = [\"bash\", \"-s\"]\nmax_session_seconds = 1\n",
    );
    let (code, _, err) = gw.run(&["exec", "brief", "--", "sleep 30"], "");
    assert_eq!(code, 1);
    assert!(err.contains("maximum session duration of 1 s"), "{err}");
}

#[test]
fn output_a_plugin_buffers_is_flushed_when_the_stream_goes_idle() {
    let gw = gateway_with_antics();
    // The plugin holds back the chunk with the marker; only the idle flush (during the
    // sleep) can release it before `done`. The end-of-stream flush alone would put it last.
    let (code, out, err) = gw.run(
        &[
            "exec",
            "shell",
            "--",
            "echo HOLD\"\"BACK; sleep 1; echo done",
        ],
        "",
    );
    assert_eq!((code, out.as_str()), (0, "HOLDBACK\ndone\n"), "{err}");
}

#[test]
fn when_the_record_cannot_commit_frames_stop_and_the_client_is_told() {
    let mut gw = Gateway::start();
    gw.kill();
    // Restart the gateway with its files capped at 4 MiB (and SIGXFSZ ignored, so a write
    // past the cap fails with EFBIG, as on a full disk, instead of killing the process).
    gw.restart_with_wrapper(&[
        "bash",
        "-c",
        "trap '' XFSZ; ulimit -f 4096; exec \"$0\" \"$@\"",
    ]);
    let (code, out, err) = gw.run(
        &[
            "exec",
            "shell",
            "--",
            "for i in $(seq 1 400000); do echo line $i; done",
        ],
        "",
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the record cannot commit"), "{err}");
    assert!(
        !out.contains("line 400000"),
        "output went on past the failed commit"
    );
    // Everything the client saw was recorded before it was forwarded.
    gw.kill();
    gw.restart();
    let id = &session_ids(&gw)[0];
    let recorded = recorded_output(&events(&gw, id));
    assert!(
        recorded.starts_with(out.as_bytes()),
        "the client saw unrecorded bytes"
    );
}

#[test]
fn a_script_that_is_not_utf8_reaches_the_program_byte_for_byte() {
    let gw = Gateway::start();
    let script = [&b"od -An -tx1 <<'END'\n"[..], &[0xff, 0xfe], b"\nEND\n"].concat();
    std::fs::write(gw.dir.path().join("bin.sh"), script).unwrap();
    let (code, out, err) = gw.run(&["exec", "shell", "-f", "bin.sh"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["ff", "fe", "0a"]
    );
}

#[test]
fn piped_input_that_ends_without_exit_still_ends_the_session() {
    let gw = Gateway::start();
    // No `exit()`: the end of the piped input is Ctrl-D, even if Python drops the first one
    // while it starts.
    let (code, out, err) = gw.run(&["connect", "python"], "print(6 * 7)\n");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("42"), "{out}");
}

#[test]
fn metrics_count_sessions_frames_plugin_calls_and_commits_for_admins_only() {
    let gw = Gateway::start();
    let (code, out, err) = gw.run(&["exec", "shell", "--", "echo counted"], "");
    assert_eq!((code, out.as_str()), (0, "counted\n"), "{err}");
    let ca = gw.dir.path().join("data/tls/ca.pem");
    let get = |token: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://{}/metrics", gw.addr))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    // The reviewer dev token is an admin in the shipped policy.
    let text = get(&gw.reviewer_token);
    assert!(text.ends_with("\n200"), "{text}");
    for expected in [
        "sluice_sessions_open 0\n",
        "sluice_sessions_total{connection=\"shell\"} 1\n",
        "sluice_frames_total{connection=\"shell\",direction=\"in\",outcome=\"pass\"} 1\n",
        "# TYPE sluice_plugin_call_seconds histogram\n",
        "sluice_record_commit_seconds_count ",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
    // Both plugins of the shell chain were called (the input, the output), and timed.
    for plugin in ["shell-gate", "mask"] {
        let prefix = format!("sluice_plugin_call_seconds_count{{plugin=\"{plugin}\"}} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{prefix}: {text}"));
        assert!(line[prefix.len()..].parse::<u64>().unwrap() >= 1, "{line}");
    }
    // whoami names the dev user once, with its roles.
    let (code, who, _) = gw.run(&["whoami"], "");
    assert_eq!(code, 0);
    assert!(
        who.starts_with("dev-user (development token)\ngroups: developers\n"),
        "{who}"
    );
    let refused = get(&gw.user_token);
    assert!(refused.ends_with("\n403"), "{refused}");
    assert!(refused.contains("needs the `admin` role"), "{refused}");
}

#[test]
fn memory_of_plugins_that_ran_out_of_it_goes_back_to_the_system() {
    let gw = gateway_with_antics();
    let pid = gw.pid();
    // Warm up (the first session compiles nothing, but loads and touches the runtime).
    let (code, _, err) = gw.run(&["exec", "shell", "--", "echo", "warm"], "");
    assert_eq!(code, 0, "{err}");
    let before = rss_kib(pid);
    // Sessions at once whose plugin fills its memory to the limit and fails (closed).
    let clients: Vec<_> = (0..16)
        .map(|_| {
            gw.cli()
                .args(["exec", "shell", "--", "alloc"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut client in clients {
        assert_eq!(
            client.wait().unwrap().code(),
            Some(126),
            "the frame fails closed"
        );
    }
    let (_, out, _) = gw.run(&["sessions", "--active"], "");
    assert_eq!(out.lines().count(), 1, "{out}");
    // Each held up to its 64 MiB; once they are gone, so is their memory (well under one
    // plugin's worth is left, whatever the allocator keeps warm).
    let after = rss_kib(pid);
    assert!(
        after < before + 48 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
}

/// Drives `sluice connect shell` on a real terminal (a pty) of 30x100, asks the remote shell
/// its size, resizes the terminal to 40x120 and asks again, then exits. Prints what the
/// terminal showed.
const PTY_DRIVER: &str = r#"
import fcntl, os, pty, select, struct, sys, termios, time
def size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
pid, fd = pty.fork()
if pid == 0:
    size(0, 30, 100)
    # After the client, what the shell would find: the terminal as the client found it.
    check = "import fcntl, os; print('stdin-nonblocking=%s' % bool(fcntl.fcntl(0, fcntl.F_GETFL) & os.O_NONBLOCK))"
    os.execvp("sh", ["sh", "-c", '"$@"; exec python3 -c "$0"', check] + sys.argv[1:])
seen = b""
def until(text, count=1):
    global seen
    deadline = time.time() + 30
    while seen.count(text) < count:
        if not select.select([fd], [], [], max(0, deadline - time.time()))[0]:
            sys.exit("timed out waiting for %r; saw %r" % (text, seen))
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            sys.exit("ended before %r; saw %r" % (text, seen))
        seen += chunk
until(b"$ ")
os.write(fd, b"stty size\n")
until(b"30 100")
size(fd, 40, 120)
# The client hears SIGWINCH on its own time, so a command typed just after the resize can reach
# the shell first: ask again, each time after the previous answer's prompt, until it sees it.
for _ in range(50):
    os.write(fd, b"stty size\n")
    until(b"$ ", seen.count(b"$ ") + 1)
    if b"40 120" in seen:
        break
else:
    sys.exit("the shell never saw the resize; saw %r" % seen)
os.write(fd, b"exit\n")
until(b"stdin-nonblocking=False")
os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
"#;

/// Typed through a real terminal (a PTY), and the terminal is left as the client found it
/// (blocking) for the shell after it: the client polls its own description of the terminal.
#[test]
fn a_terminal_session_records_its_size_and_resizes_for_replay() {
    let gw = Gateway::start();
    let connect = gw.cli();
    let program = connect.get_program().to_owned();
    let mut driver = std::process::Command::new("python3");
    driver
        .args(["-c", PTY_DRIVER])
        .arg(program)
        .args(["connect", "shell"]);
    for (key, value) in connect.get_envs() {
        if let Some(value) = value {
            driver.env(key, value);
        }
    }
    driver.current_dir(gw.dir.path());
    let (code, shown, err) = run_command(&mut driver, "");
    assert_eq!(code, 0, "{shown}{err}");

    let id = &session_ids(&gw)[0];
    let (code, cast, err) = gw.run(&["export", id, "--format", "asciicast"], "");
    assert_eq!(code, 0, "{err}");
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(100), Some(30))
    );
    let resizes: Vec<Value> = lines
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e[1] == "r")
        .collect();
    assert_eq!(resizes.len(), 1, "{cast}");
    assert_eq!(resizes[0][2], "120x40");
}

#[test]
fn a_sessions_index_row_altered_in_the_store_shows_nobody_a_session_that_is_not_theirs() {
    let mut gw = Gateway::start();
    let (code, _, err) = gw.run_as(
        Some(&gw.reviewer_token.clone()),
        &["exec", "shell", "--", "echo the-reviewers-own"],
    );
    assert_eq!(code, 0, "{err}");
    let theirs = gw.newest_session_as(&gw.reviewer_token, &[]);
    assert_eq!(gw.stop_with("TERM"), Some(0));
    // Someone with write access to the store makes the row say it is the user's.
    sluice_record::tamper::tamper(&gw.store(), |t| {
        let row = t
            .row(sluice_record::tamper::Rows::Sessions, &theirs)
            .unwrap();
        let mut row: Value = serde_json::from_slice(&row).unwrap();
        row["subject"] = "dev-user".into();
        t.put_row(
            sluice_record::tamper::Rows::Sessions,
            &theirs,
            row.to_string().as_bytes(),
        );
    })
    .unwrap();
    gw.restart();
    let (code, listed, err) = gw.run(&["sessions"], "");
    assert_eq!(code, 0, "{err}");
    assert!(!listed.contains(&theirs), "{listed}");
    let (code, listed, err) = gw.run(&["sessions", "--grep", "the-reviewers-own"], "");
    assert_eq!(code, 0, "{err}");
    assert!(!listed.contains(&theirs), "{listed}");
}
