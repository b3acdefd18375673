//! The plugin host and the filter chain with real components: verdicts in order, and every
//! way a plugin can misbehave contained, failing closed.

use std::time::{Duration, Instant};

use sluice_core::frame::{Content, Direction, Frame};
use sluice_engine::chain::{Chain, Outcome};
use sluice_engine::policy::{OnError, Source, World};
use sluice_plugin_host::{CacheOutcome, Failure, HostConfig, PluginHost};

use crate::support::*;

fn antics(host: &PluginHost, name: &str) -> sluice_plugin_host::LoadedPlugin {
    load(host, &spec(name, file(guest("antics")), "{}"))
}

#[test]
fn verdicts_compose_through_a_chain_in_order() {
    let host = host();
    let chain_plugins = vec![
        load(&host, &spec("pass", builtin("passthrough"), "{}")),
        load(
            &host,
            &spec(
                "redact",
                builtin("example-redact"),
                r#"{"literal":"hunter2","replacement":"***"}"#,
            ),
        ),
        antics(&host, "antics"),
        load(
            &host,
            &spec(
                "redact-again",
                builtin("example-redact"),
                r#"{"literal":"***","replacement":"[gone]"}"#,
            ),
        ),
    ];
    let mut chain = Chain::new(&chain_plugins, &session("s1")).unwrap();
    assert_eq!(chain.len(), 4);

    // pass everywhere.
    let d = chain.on_frame(line(1, "ls"));
    assert_eq!(
        (d.outcome, d.forward),
        (Outcome::Pass, Content::Line("ls".into()))
    );

    // replace, then a later plugin sees the replaced content and replaces it again.
    let d = chain.on_frame(line(2, "echo hunter2"));
    assert_eq!(d.outcome, Outcome::Pass);
    assert_eq!(d.forward, Content::Line("echo [gone]".into()));
    assert_eq!(d.recorded(), &d.forward);

    // hold: the later plugins still run (and could still mask what the reviewer sees).
    let d = chain.on_frame(line(3, "hold needs a second pair of eyes"));
    assert_eq!(
        d.outcome,
        Outcome::Hold {
            reasons: vec!["needs a second pair of eyes".into()]
        }
    );

    // deny stops the chain, naming the plugin.
    let d = chain.on_frame(line(4, "deny not on my watch"));
    assert_eq!(
        d.outcome,
        Outcome::Deny {
            plugin: "antics".into(),
            reason: "not on my watch".into()
        }
    );

    // record-as: forwarded intact, recorded redacted.
    let d = chain.on_frame(line(5, "secret s3cr3t"));
    assert_eq!(d.forward, Content::Line("secret s3cr3t".into()));
    assert_eq!(d.recorded(), &Content::Line("secret ******".into()));
}

#[test]
fn an_infinite_loop_is_stopped_by_the_deadline_and_the_next_frame_gets_a_fresh_instance() {
    let host = host();
    let mut chain = Chain::new(&[antics(&host, "looper")], &session("s")).unwrap();
    chain.on_frame(line(1, "count"));
    let started = Instant::now();
    let d = chain.on_frame(line(2, "loop"));
    // Generous bound: the point is that it stops at all, not how precisely.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(d.outcome, Outcome::Deny { .. }), "{:?}", d.outcome);
    assert!(
        matches!(d.failures[0].failure, Failure::Deadline(_)),
        "{:?}",
        d.failures
    );
    // The instance was thrown away: the counter starts again at 1.
    assert_eq!(
        chain.on_frame(line(3, "count")).forward,
        Content::Line("1".into())
    );
}

#[test]
fn unbounded_allocation_is_stopped_by_the_memory_limit() {
    let host = host();
    let mut spec = spec("hog", file(guest("antics")), "{}");
    spec.max_memory_bytes = 8 << 20;
    let mut chain = Chain::new(&[load(&host, &spec)], &session("s")).unwrap();
    let d = chain.on_frame(line(1, "alloc"));
    assert!(matches!(d.outcome, Outcome::Deny { .. }));
    assert_eq!(d.failures[0].failure, Failure::Memory(8 << 20));
    assert_eq!(
        chain.on_frame(line(2, "count")).forward,
        Content::Line("1".into())
    );
}

#[test]
fn a_stateless_plugin_is_renewed_before_kept_memory_reaches_its_limit() {
    // A plugin that keeps 256 KiB per call, as an interpreter that does not collect between
    // calls does: 100 calls keep 25 MiB, past an 8 MiB limit.
    let host = host();
    let leaky = |name: &str, config: &str| {
        let mut spec = spec(name, file(guest("antics")), config);
        spec.max_memory_bytes = 8 << 20;
        load(&host, &spec)
    };
    let frames = || (1..=100).map(|seq| line(seq, "leak 256"));

    let stateless = leaky("stateless", r#"{"stateless":true}"#);
    let mut instance = stateless.filter_instance(&session("s")).unwrap();
    for frame in frames() {
        let verdict = instance.on_frame(&frame);
        assert!(verdict.as_ref().is_ok_and(|v| v.is_pass()), "{verdict:?}");
    }
    assert!(instance.renewals() >= 3, "{}", instance.renewals());
    assert_eq!(instance.flush(Direction::TargetToClient).unwrap(), None);

    // The same plugin keeping state is never renewed behind its back: its call fails at
    // the limit (closed) and the next call gets a fresh instance.
    let stateful = leaky("stateful", "{}");
    let mut chain = Chain::new(&[stateful], &session("s")).unwrap();
    let failures: Vec<_> = frames()
        .flat_map(|frame| chain.on_frame(frame).failures)
        .collect();
    assert!(!failures.is_empty());
    assert!(
        failures
            .iter()
            .all(|f| f.failure == Failure::Memory(8 << 20)),
        "{failures:?}"
    );
}

#[test]
fn a_panic_fails_closed_unless_the_policy_says_pass() {
    let host = host();
    let closed = antics(&host, "strict");
    let mut open_spec = spec("lenient", file(guest("antics")), "{}");
    open_spec.on_error = OnError::Pass;
    let open = load(&host, &open_spec);

    let mut chain = Chain::new(&[closed], &session("s")).unwrap();
    let d = chain.on_frame(line(1, "panic"));
    let Outcome::Deny { plugin, reason } = &d.outcome else {
        panic!("{:?}", d.outcome)
    };
    assert_eq!(plugin, "strict");
    assert!(reason.contains("trapped"), "{reason}");
    assert!(
        reason.contains("panicked") && reason.contains("asked to panic"),
        "{reason}"
    );

    let mut chain = Chain::new(&[open], &session("s")).unwrap();
    let d = chain.on_frame(line(1, "panic"));
    assert_eq!(d.outcome, Outcome::Pass);
    assert_eq!(d.forward, Content::Line("panic".into()));
    assert!(
        matches!(d.failures[0].failure, Failure::Trap(_)),
        "the failure is still reported"
    );
}

#[test]
fn a_malformed_verdict_fails_closed() {
    let host = host();
    let mut chain = Chain::new(&[antics(&host, "g")], &session("s")).unwrap();
    let d = chain.on_frame(line(1, "garbage"));
    assert!(matches!(d.outcome, Outcome::Deny { .. }));
    assert!(
        matches!(&d.failures[0].failure, Failure::Malformed(why) if why.contains("line frame became a row"))
    );

    // A hold on output is malformed too: only client-to-target frames can be held.
    let mut out = line(2, "hold x");
    out.direction = Direction::TargetToClient;
    let d = chain.on_frame(out);
    assert!(
        matches!(&d.failures[0].failure, Failure::Malformed(why) if why.contains("target-to-client"))
    );
}

#[test]
fn plugin_state_never_crosses_sessions() {
    let host = host();
    let plugin = antics(&host, "memory");
    let mut alice = Chain::new(std::slice::from_ref(&plugin), &session("alice")).unwrap();
    let mut bob = Chain::new(&[plugin], &session("bob")).unwrap();
    alice.on_frame(line(1, "remember alice-secret"));
    assert_eq!(
        bob.on_frame(line(1, "recall")).forward,
        Content::Line("(nothing)".into())
    );
    assert_eq!(
        alice.on_frame(line(2, "recall")).forward,
        Content::Line("alice-secret".into())
    );
}

#[test]
fn init_errors_refuse_the_session_with_the_plugins_message() {
    let host = host();
    let plugin = load(
        &host,
        &spec("picky", file(guest("antics")), r#"{"fail-init":true}"#),
    );
    let err = Chain::new(&[plugin], &session("s")).unwrap_err();
    assert_eq!(err.failure, Failure::Init("asked to fail".into()));

    // A config the plugin refuses is caught at load, before any session.
    let err = host
        .load(&spec(
            "redact",
            builtin("example-redact"),
            r#"{"literl":"x"}"#,
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("its config is refused"), "{err}");
    assert!(err.contains("unknown field `literl`"), "{err}");
}

fn load_err(host: &PluginHost, source: Source, world: World) -> String {
    let mut spec = spec("bad", source, "{}");
    spec.world = world;
    match host.load(&spec) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn foreign_and_broken_components_are_refused_at_load_with_clear_errors() {
    let host = host();
    let dir = tempfile::tempdir().unwrap();

    let corrupt = dir.path().join("corrupt.wasm");
    let mut bytes = std::fs::read(guest("antics")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    let err = load_err(&host, file(corrupt), World::Filter);
    assert!(err.contains("is not a valid component"), "{err}");

    let module = dir.path().join("module.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    let err = load_err(&host, file(module), World::Filter);
    assert!(
        err.contains("is a core WebAssembly module, not a component"),
        "{err}"
    );

    let text = dir.path().join("text.wasm");
    std::fs::write(&text, b"hello").unwrap();
    assert!(load_err(&host, file(text), World::Filter).contains("is not WebAssembly"));

    let err = load_err(&host, file(guest("sink-count")), World::Filter);
    assert!(
        err.contains("implements the `sink` world, but the policy declares `world = \"filter\"`"),
        "{err}"
    );
    let err = load_err(&host, builtin("passthrough"), World::Sink);
    assert!(err.contains("implements the `filter` world"), "{err}");

    let err = load_err(&host, file(dir.path().join("missing.wasm")), World::Filter);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn a_pinned_digest_must_match() {
    let host = host();
    let mut pinned = spec("pinned", builtin("passthrough"), "{}");
    let digest = load(&host, &pinned).digest();
    pinned.sha256 = Some(digest);
    load(&host, &pinned);
    pinned.sha256 = Some([7; 32]);
    let err = host.load(&pinned).unwrap_err().to_string();
    assert!(err.contains("the policy pins 0707"), "{err}");
}

#[test]
fn a_tampered_precompiled_cache_entry_is_detected_and_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let config = HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..HostConfig::default()
    };
    let host = PluginHost::new(config.clone()).unwrap();
    let spec = spec("redact", builtin("example-redact"), r#"{"literal":"x"}"#);
    let bytes = sluice_plugin_host::read_source(&spec).unwrap();

    let (_, first) = host.load_bytes(&spec, &bytes).unwrap();
    assert_eq!(first, CacheOutcome::Compiled);
    let (_, second) = host.load_bytes(&spec, &bytes).unwrap();
    assert_eq!(second, CacheOutcome::Cached);

    // Flip one byte of the compiled code in every cache entry.
    let entries: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1);
    let mut code = std::fs::read(&entries[0]).unwrap();
    let middle = code.len() / 2;
    code[middle] ^= 0x55;
    std::fs::write(&entries[0], &code).unwrap();

    let host = PluginHost::new(config).unwrap();
    let (plugin, outcome) = host.load_bytes(&spec, &bytes).unwrap();
    assert!(
        matches!(&outcome, CacheOutcome::Recompiled { reason } if reason.contains("MAC")),
        "{outcome:?}"
    );
    // The recompiled plugin works, and the entry was rewritten and is trusted again.
    let mut chain = Chain::new(&[plugin], &session("s")).unwrap();
    assert_eq!(
        chain.on_frame(line(1, "x")).forward,
        Content::Line("[REDACTED]".into())
    );
    assert_eq!(
        host.load_bytes(&spec, &bytes).unwrap().1,
        CacheOutcome::Cached
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path))
        } else {
            found.push(path)
        }
    }
    found
}

#[test]
fn a_sink_plugin_delivers_and_reports_retryable_errors() {
    let host = host();
    let mut spec = spec("count", file(guest("sink-count")), "{}");
    spec.world = World::Sink;
    let mut sink = load(&host, &spec).sink_instance().unwrap();
    let event = |kind: &str| sluice_core::frame::Event {
        index: 1,
        session: "s".into(),
        seq: 1,
        kind: kind.into(),
        time_ms: 0,
        meta: "{}".into(),
        payload: b"x".to_vec(),
    };
    assert_eq!(
        sink.deliver(&[event("frame"), event("frame")]).unwrap(),
        Ok(())
    );
    assert_eq!(
        sink.deliver(&[event("fail")]).unwrap(),
        Err(sluice_core::frame::SinkError::Retryable(
            "asked to fail".into()
        ))
    );
}

#[test]
fn buffered_content_is_flushed_through_the_rest_of_the_chain() {
    let host = host();
    let plugins = [
        antics(&host, "buffering"),
        load(
            &host,
            &spec(
                "redact",
                builtin("example-redact"),
                r#"{"literal":"hunter2"}"#,
            ),
        ),
    ];
    let mut chain = Chain::new(&plugins, &session("s")).unwrap();
    // The first plugin holds the content back...
    assert_eq!(
        chain.on_frame(line(1, "stash pw hunter2")).forward,
        Content::Line(String::new())
    );
    // ...and releases it on flush; the plugins after it still see it.
    let mut headers = 0;
    let decisions = chain.flush(Direction::ClientToTarget, |content| {
        headers += 1;
        Frame {
            seq: 2,
            direction: Direction::ClientToTarget,
            timestamp_ms: 0,
            content,
        }
    });
    assert_eq!(headers, 1);
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].forward, Content::Line("pw [REDACTED]".into()));
    // Nothing is left.
    assert!(
        chain
            .flush(Direction::ClientToTarget, |_| panic!("flushed twice"))
            .is_empty()
    );
}

/// A sink built against an earlier contract (`tests/guests/sink-count` then) still delivers,
/// and its errors come back as they were.
fn an_old_sink_delivers(host: &PluginHost, path: std::path::PathBuf) {
    let mut spec = spec("count", file(path), "{}");
    spec.world = World::Sink;
    let mut sink = load(host, &spec).sink_instance().unwrap();
    let event = sluice_core::frame::Event {
        index: 1,
        session: "s".into(),
        seq: 1,
        kind: "fail".into(),
        time_ms: 0,
        meta: "{}".into(),
        payload: vec![],
    };
    assert_eq!(
        sink.deliver(&[event]).unwrap(),
        Err(sluice_core::frame::SinkError::Retryable(
            "asked to fail".into()
        ))
    );
}

/// A component built against an earlier `sluice:plugin@VERSION`, kept from before the
/// contract moved on (`tests/fixtures/contract-VERSION/`).
fn built_for(version: &str, name: &str) -> std::path::PathBuf {
    crate::support::repo().join(format!("tests/fixtures/contract-{version}/{name}.wasm"))
}

#[test]
fn plugins_built_against_the_previous_contract_keep_loading_and_never_see_new_kinds() {
    use sluice_core::frame::{ContentKind, ToolCall};
    let host = host();
    let redact = built_for("0.2.0", "example_redact");
    let bytes = std::fs::read(&redact).unwrap();
    let inspection = host.inspect(&bytes).unwrap();
    assert_eq!(
        (inspection.world, inspection.version),
        (World::Filter, "0.2.0")
    );
    let plugin = load(
        &host,
        &spec("old", file(redact), r#"{"literal": "hunter2"}"#),
    );
    let mut chain = Chain::new(std::slice::from_ref(&plugin), &session("s1")).unwrap();
    let decision = chain.on_frame(line(1, "echo hunter2"));
    assert_eq!(decision.forward, Content::Line("echo [REDACTED]".into()));
    let row = Frame::new(
        Direction::TargetToClient,
        Content::Row(vec![Some(b"hunter2".to_vec()), None]),
    );
    let decision = chain.on_frame(row);
    assert_eq!(
        decision.forward,
        Content::Row(vec![Some(b"[REDACTED]".to_vec()), None])
    );
    // Its interest is what 0.2.0 can say: every kind it knows, none it does not.
    let instance = plugin.filter_instance(&session("s2")).unwrap();
    let interest = instance.interest();
    assert!(interest.wants(Direction::ClientToTarget, ContentKind::Row));
    assert!(!interest.wants(Direction::ClientToTarget, ContentKind::ToolCall));
    // So a tool call passes it uncalled, exactly as any frame outside an interest.
    let call = Frame::new(
        Direction::ClientToTarget,
        Content::ToolCall(ToolCall {
            server: "files".into(),
            tool: "read".into(),
            id: "1".into(),
            arguments: r#"{"path": "hunter2"}"#.into(),
        }),
    );
    let decision = chain.on_frame(call.clone());
    assert_eq!(decision.forward, call.content);
    assert!(decision.calls.is_empty(), "{:?}", decision.calls);

    // A 0.2.0 sink delivers as before.
    an_old_sink_delivers(&host, built_for("0.2.0", "sink_count"));
}

#[test]
fn plugins_built_against_0_3_keep_loading_and_see_every_frame_of_their_interest() {
    use sluice_core::frame::{ContentKind, ToolCall};
    let host = host();
    let redact = built_for("0.3.0", "example_redact");
    let inspection = host.inspect(&std::fs::read(&redact).unwrap()).unwrap();
    assert_eq!(
        (inspection.world, inspection.version),
        (World::Filter, "0.3.0")
    );
    let plugin = load(
        &host,
        &spec("old", file(redact), r#"{"literal": "hunter2"}"#),
    );
    let instance = plugin.filter_instance(&session("s1")).unwrap();
    assert_eq!(instance.interest().prescreen, None);
    assert!((instance.interest()).wants(Direction::ClientToTarget, ContentKind::ToolCall));
    let mut chain = Chain::new(std::slice::from_ref(&plugin), &session("s2")).unwrap();
    let decision = chain.on_frame(line(1, "echo hunter2"));
    assert_eq!(decision.forward, Content::Line("echo [REDACTED]".into()));
    // A kind 0.3.0 added reaches it, and it is called for frames it leaves alone too.
    let call = Content::ToolCall(ToolCall {
        server: "files".into(),
        tool: "read".into(),
        id: "1".into(),
        arguments: r#"{"path": "hunter2"}"#.into(),
    });
    let decision = chain.on_frame(Frame::new(Direction::ClientToTarget, call));
    assert!(
        matches!(&decision.forward, Content::ToolCall(c) if c.arguments.contains("[REDACTED]")),
        "{:?}",
        decision.forward
    );
    assert_eq!(chain.on_frame(line(2, "ls")).calls.len(), 1);

    an_old_sink_delivers(&host, built_for("0.3.0", "sink_count"));
}

/// The shipped PostgreSQL chain (the SQL gate, then the masker) with their prescreens: a
/// read that holds nothing to mask or judge costs no call, and whatever they act on still
/// reaches them (a row the masker is asked about, after the columns it was not).
#[test]
fn prescreened_frames_pass_uncalled_and_what_plugins_act_on_still_reaches_them() {
    use sluice_core::frame::{CellFormat, Column, Statement};
    let host = host();
    let plugins = [
        load(
            &host,
            &spec("sql-gate", builtin("approve"), r#"{"rules": ["sql"]}"#),
        ),
        load(
            &host,
            &spec("mask", builtin("mask"), r#"{"detectors": ["default"]}"#),
        ),
    ];
    let mut chain = Chain::new(&plugins, &session("pg")).unwrap();
    let called = |d: &sluice_engine::chain::Decision| -> Vec<String> {
        d.calls
            .iter()
            .map(|c| format!("{}:{}", c.plugin, c.verdict))
            .collect()
    };
    let query = |text: &str| {
        Frame::new(
            Direction::ClientToTarget,
            Content::Statement(Statement {
                text: text.into(),
                params: vec![],
            }),
        )
    };
    let d = chain.on_frame(query(
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    ));
    assert_eq!(called(&d), Vec::<String>::new());
    let columns = Content::Columns(vec![Column {
        name: "abalance".into(),
        table: Some("pgbench_accounts".into()),
        table_oid: 1,
        type_oid: 23,
        format: CellFormat::Text,
    }]);
    let d = chain.on_frame(Frame::new(Direction::TargetToClient, columns));
    assert_eq!(called(&d), Vec::<String>::new());
    let row = |cell: &str| {
        Frame::new(
            Direction::TargetToClient,
            Content::Row(vec![Some(cell.as_bytes().to_vec())]),
        )
    };
    let d = chain.on_frame(row("-2345"));
    assert_eq!(called(&d), Vec::<String>::new());
    assert_eq!(d.forward, row("-2345").content);

    // What they act on reaches them.
    let d = chain.on_frame(row("4242 4242 4242 4242"));
    assert_eq!(called(&d), ["mask:replace"]);
    assert_eq!(d.forward, row("[MASKED:card]").content);
    let d = chain.on_frame(query("drop TABLE t"));
    assert_eq!(called(&d), ["sql-gate:hold"]);
    let d = chain.on_frame(query("SELECT 'bob@example.com'"));
    assert_eq!(called(&d), ["mask:pass+record-as"]);
    assert_eq!(
        d.recorded(),
        &query("SELECT '[MASKED:email]'").content,
        "recorded masked"
    );
}

/// A result's columns the masker's prescreen keeps from it reach it before the first of
/// their rows that does, so what it sets up from them (a column never masked, one always
/// masked) holds for that result's rows and no other's.
#[test]
fn prescreened_columns_reach_the_plugin_before_their_first_row_that_does() {
    let host = host();
    let row = |cell: &str| {
        Frame::new(
            Direction::TargetToClient,
            Content::Row(vec![Some(cell.as_bytes().to_vec())]),
        )
    };
    let called = |d: &sluice_engine::chain::Decision| d.calls.len();
    let card = "4242 4242 4242 4242";

    // Rows prescreened: a card under a column the policy never masks passes as it is.
    let never = load(
        &host,
        &spec(
            "mask",
            builtin("mask"),
            r#"{"columns": {"notes": "never"}}"#,
        ),
    );
    let mut chain = Chain::new(std::slice::from_ref(&never), &session("pg")).unwrap();
    assert_eq!(called(&chain.on_frame(columns(&["notes"]))), 0);
    assert_eq!(called(&chain.on_frame(row("no digits"))), 0);
    let d = chain.on_frame(row(card));
    assert_eq!((called(&d), &d.forward), (1, &row(card).content));
    // The next result's columns replace them, whether or not a row of theirs was asked about.
    chain.on_frame(columns(&["comment"]));
    let d = chain.on_frame(row(card));
    assert_eq!(d.forward, row("[MASKED:card]").content);
    chain.on_frame(columns(&["notes"]));
    chain.on_frame(columns(&["comment"]));
    assert_eq!(
        chain.on_frame(row(card)).forward,
        row("[MASKED:card]").content
    );

    // Rows not prescreened (a column always masked): the columns still wait for the first.
    let always = load(
        &host,
        &spec("mask", builtin("mask"), r#"{"columns": {"ssn": "always"}}"#),
    );
    let mut chain = Chain::new(std::slice::from_ref(&always), &session("pg")).unwrap();
    assert_eq!(called(&chain.on_frame(columns(&["ssn"]))), 0);
    let d = chain.on_frame(row("123-45-6789"));
    assert_ne!(d.forward, row("123-45-6789").content, "masked");
    chain.on_frame(columns(&["id"]));
    assert_eq!(chain.on_frame(row("7")).forward, row("7").content);
}

/// A plugin that breaks its prescreen's promise (columns that matched none of its patterns,
/// which it then does not pass when they reach it before a row of theirs) fails, and fails
/// closed.
#[test]
fn a_verdict_other_than_pass_on_prescreened_columns_fails_closed() {
    let host = host();
    let plugin = load(
        &host,
        &spec(
            "antics",
            file(guest("antics")),
            r#"{"prescreen": ["nothing"]}"#,
        ),
    );
    let mut chain = Chain::new(std::slice::from_ref(&plugin), &session("pg")).unwrap();
    let d = chain.on_frame(columns(&["refuse"]));
    assert_eq!((d.calls.len(), &d.outcome), (0, &Outcome::Pass));
    let row = |direction| Frame::new(direction, Content::Row(vec![Some(b"1".to_vec())]));
    // Columns are held per direction: a row the other way does not bring them.
    let d = chain.on_frame(row(Direction::ClientToTarget));
    assert_eq!((d.calls.len(), &d.outcome), (1, &Outcome::Pass));
    let d = chain.on_frame(row(Direction::TargetToClient));
    assert!(
        matches!(&d.outcome, Outcome::Deny { reason, .. } if reason.contains("was not `pass`")),
        "{:?}",
        d.outcome
    );
}

/// A result's text columns, as the server announces them.
fn columns(names: &[&str]) -> Frame {
    use sluice_core::frame::{CellFormat, Column};
    let columns = names.iter().map(|name| Column {
        name: (*name).into(),
        table: None,
        table_oid: 0,
        type_oid: 25,
        format: CellFormat::Text,
    });
    Frame::new(
        Direction::TargetToClient,
        Content::Columns(columns.collect()),
    )
}

/// A prescreen that does not compile refuses the plugin at load, saying which pattern.
#[test]
fn a_prescreen_that_does_not_compile_refuses_the_plugin() {
    let host = host();
    let err = sluice_plugin_host::PluginHost::load(
        &host,
        &spec(
            "bad",
            file(guest("antics")),
            r#"{"prescreen": ["(unclosed"]}"#,
        ),
    )
    .and_then(|p| p.check_config().map(|()| p))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("prescreen") && err.contains("(unclosed"),
        "{err}"
    );
}

#[test]
fn the_current_contract_carries_files_tool_calls_and_http_heads_both_ways() {
    use sluice_core::frame::{FileChunk, HttpRequest, HttpResponse, ToolCall, ToolResult};
    let host = host();
    let plugin = load(
        &host,
        &spec(
            "redact",
            builtin("example-redact"),
            r#"{"literal": "hunter2"}"#,
        ),
    );
    assert_eq!(
        host.inspect(&std::fs::read(guest("antics")).unwrap())
            .unwrap()
            .version,
        sluice_plugin_host::CONTRACT_VERSION
    );
    let mut chain = Chain::new(&[plugin], &session("s1")).unwrap();
    let mut out = |content: Content| {
        chain
            .on_frame(Frame::new(Direction::TargetToClient, content))
            .forward
    };
    let chunk = FileChunk {
        path: "/etc/app.conf".into(),
        offset: 4096,
        data: b"password=hunter2\n".to_vec(),
        size: Some(5000),
        digest: Some(vec![7; 32]),
    };
    assert_eq!(
        out(Content::File(chunk.clone())),
        Content::File(FileChunk {
            data: b"password=[REDACTED]\n".to_vec(),
            ..chunk
        })
    );
    let result = ToolResult {
        server: "db".into(),
        tool: "query".into(),
        id: "9".into(),
        output: r#"{"content":[{"type":"text","text":"hunter2"}]}"#.into(),
        is_error: false,
    };
    assert_eq!(
        out(Content::ToolResult(result.clone())),
        Content::ToolResult(ToolResult {
            output: r#"{"content":[{"type":"text","text":"[REDACTED]"}]}"#.into(),
            ..result
        })
    );
    let call = ToolCall {
        server: "db".into(),
        tool: "query".into(),
        id: "9".into(),
        arguments: r#"{"sql":"SELECT 1"}"#.into(),
    };
    assert_eq!(
        out(Content::ToolCall(call.clone())),
        Content::ToolCall(call)
    );
    let request = HttpRequest {
        method: "GET".into(),
        uri: "/v1/users?id=7".into(),
        headers: vec![("host".into(), "api".into())],
    };
    assert_eq!(
        out(Content::HttpRequest(request.clone())),
        Content::HttpRequest(request)
    );
    let response = HttpResponse {
        status: 404,
        headers: vec![],
    };
    assert_eq!(
        out(Content::HttpResponse(response.clone())),
        Content::HttpResponse(response)
    );
}
