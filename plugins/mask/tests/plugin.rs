//! The plugin as the gateway drives it: settings, styles, directions, rows, streams.

use mask::Mask;
use sluice_plugin_sdk::testing::FilterHarness;
use sluice_plugin_sdk::{
    Action, CellFormat, Column, Content, Direction::*, Frame, Statement, Verdict,
};

fn harness(config: &str) -> FilterHarness<Mask> {
    FilterHarness::new(config).unwrap()
}

fn init_error(config: &str) -> String {
    FilterHarness::<Mask>::new(config)
        .err()
        .expect("init refuses it")
}

fn line(h: &mut FilterHarness<Mask>, text: &str) -> String {
    match h.send(TargetToClient, Content::Line(text.into())).action {
        Action::Replace(Content::Line(out)) => out,
        Action::Pass => text.into(),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn styles_label_fill_and_keep_last() {
    let mut h = harness(r#"{"styles": {"card": "keep-last", "email": "fill"}}"#);
    assert_eq!(
        line(
            &mut h,
            "card 4242 4242 4242 4242, mail bob@example.com, ssn 123-45-6789"
        ),
        "card **** **** **** 4242, mail ***************, ssn [MASKED:ssn]"
    );
    let mut h = harness(r#"{"style": "keep-last", "keep_last": 2}"#);
    assert_eq!(line(&mut h, "4242424242424242"), "**************42");
}

#[test]
fn pseudonyms_are_stable_per_value_and_differ_between_values() {
    let config = r#"{"style": "pseudonym", "pseudonym_key": "0123456789abcdef-deployment"}"#;
    let mut h = harness(config);
    let a = line(&mut h, "4242 4242 4242 4242");
    let a_again = harness(config)
        .plugin()
        .masker()
        .mask(b"4242424242424242")
        .unwrap();
    let b = line(&mut h, "4111 1111 1111 1111");
    assert!(
        a.starts_with("card:") && a.len() == "card:".len() + 16,
        "{a}"
    );
    // Formatting is not part of the value: the same card gives the same token.
    assert_eq!(a.as_bytes(), a_again.as_slice());
    assert_ne!(a, b);
    let other_key = line(
        &mut harness(r#"{"style": "pseudonym", "pseudonym_key": "another-deployment-key"}"#),
        "4242 4242 4242 4242",
    );
    assert_ne!(a, other_key);
}

#[test]
fn custom_detectors_with_validators_and_ipv4_on_request() {
    let mut h = harness(
        r#"{"detectors": ["default", "ipv4"],
            "custom": [{"name": "employee", "pattern": "EMP-[0-9]{6}", "style": "fill"},
                       {"name": "account", "pattern": "ACC([0-9]{8})", "validator": "luhn"}]}"#,
    );
    assert_eq!(
        line(
            &mut h,
            "EMP-123456 from 10.1.2.3 acct ACC12345674 ACC12345670"
        ),
        // ACC12345674 passes Luhn, ACC12345670 does not; the group alone is masked.
        "***-****** from [MASKED:ipv4] acct ACC[MASKED:account] ACC12345670"
    );
}

#[test]
fn bad_settings_are_refused_with_the_entry_named() {
    let err = init_error(r#"{"detectors": ["crad"]}"#);
    assert!(
        err.contains(r#"unknown detector "crad""#) && err.contains("card"),
        "{err}"
    );
    let err = init_error(r#"{"custom": [{"name": "x", "pattern": "([0-9]+"}]}"#);
    assert!(err.contains(r#"custom[0] ("x"): invalid pattern"#), "{err}");
    // Patterns are ASCII: a Unicode class is refused with its cause and what to write.
    let err = init_error(r#"{"custom": [{"name": "x", "pattern": "EMP-\\p{L}+"}]}"#);
    assert!(
        err.contains("Unicode") && err.contains("list the characters"),
        "{err}"
    );
    let err = init_error(r#"{"custom": [{"name": "x", "pattern": "[0-9]*"}]}"#);
    assert!(err.contains("matches the empty string"), "{err}");
    let err = init_error(r#"{"style": "pseudonym"}"#);
    assert!(err.contains("pseudonym_key"), "{err}");
    let err = init_error(r#"{"styles": {"ipv4": "fill"}}"#);
    assert!(
        err.contains(r#"styles.ipv4: no detector "ipv4" is enabled"#),
        "{err}"
    );
    let err = init_error(r#"{"columns": {"users.ssn": "sometimes"}}"#);
    assert!(err.contains(r#"unknown rule "sometimes""#), "{err}");
    let err = init_error(r#"{"colour": 1}"#);
    assert!(err.contains("unknown field `colour`"), "{err}");
}

#[test]
fn client_input_reaches_the_target_intact_and_is_recorded_masked() {
    let mut h = harness("{}");
    let statement = Statement {
        text: "INSERT INTO cards VALUES ($1, 'bob@example.com')".into(),
        params: vec![Some(b"4242424242424242".to_vec()), None],
    };
    let verdict = h.send(ClientToTarget, Content::Statement(statement));
    let expected = Statement {
        text: "INSERT INTO cards VALUES ($1, '[MASKED:email]')".into(),
        params: vec![Some(b"[MASKED:card]".to_vec()), None],
    };
    assert_eq!(
        verdict,
        Verdict::pass().record_as(Content::Statement(expected))
    );
    // Keystrokes are not held back: each chunk is masked for the record on its own.
    let verdict = h.send(ClientToTarget, Content::Bytes(b"pw: hunter2".to_vec()));
    assert_eq!(verdict, Verdict::pass());
}

#[test]
fn directions_and_kinds_narrow_what_is_masked() {
    let mut h = harness(r#"{"directions": ["client-to-target"], "kinds": ["line"]}"#);
    let card = || "4242 4242 4242 4242".to_string();
    assert_eq!(
        h.send(TargetToClient, Content::Line(card())),
        Verdict::pass()
    );
    assert_eq!(
        h.send(ClientToTarget, Content::Bytes(card().into_bytes())),
        Verdict::pass()
    );
    assert_eq!(
        h.send(ClientToTarget, Content::Line(card())),
        Verdict::pass().record_as(Content::Line("[MASKED:card]".into()))
    );
}

fn column(name: &str, table: Option<&str>, format: CellFormat) -> Column {
    Column {
        name: name.into(),
        table: table.map(Into::into),
        table_oid: 0,
        type_oid: 25,
        format,
    }
}

#[test]
fn rows_follow_column_rules_and_binary_cells_become_null() {
    let mut h =
        harness(r#"{"columns": {"users.ssn": "always", "orders.id": "never", "note": "fill"}}"#);
    let columns = vec![
        column("id", Some("orders"), CellFormat::Text),
        column("ssn", Some("public.users"), CellFormat::Text),
        column("note", None, CellFormat::Text),
        column("card", Some("orders"), CellFormat::Text),
        column("blob", Some("orders"), CellFormat::Binary),
        column("ssn", Some("users"), CellFormat::Binary),
    ];
    assert_eq!(
        h.send(TargetToClient, Content::Columns(columns)),
        Verdict::pass()
    );
    let row = vec![
        Some(b"4242424242424242".to_vec()), // never: an order id that happens to pass Luhn
        Some(b"anything".to_vec()),         // always
        Some(b"hi".to_vec()),               // always, fill
        Some(b"4111 1111 1111 1111".to_vec()),
        Some(b"\x00\x01bob@example.com".to_vec()),
        Some(b"\x00\x00\x00\x07".to_vec()),
    ];
    let expected = vec![
        Some(b"4242424242424242".to_vec()),
        Some(b"[MASKED:ssn]".to_vec()),
        Some(b"**".to_vec()),
        Some(b"[MASKED:card]".to_vec()),
        None,
        None,
    ];
    assert_eq!(
        h.send(TargetToClient, Content::Row(row)),
        Verdict::replace(Content::Row(expected))
    );
    // NULLs stay NULL; a row with nothing to mask passes.
    let clean = vec![
        Some(b"7".to_vec()),
        None,
        None,
        Some(b"x".to_vec()),
        None,
        None,
    ];
    assert_eq!(h.send(TargetToClient, Content::Row(clean)), Verdict::pass());
}

fn bytes_out(verdict: Verdict, sent: &[u8]) -> Vec<u8> {
    match verdict.action {
        Action::Replace(Content::Bytes(out)) => out,
        Action::Pass => sent.to_vec(),
        other => panic!("unexpected {other:?}"),
    }
}

fn send_at(h: &mut FilterHarness<Mask>, at_ms: u64, bytes: &[u8]) -> Vec<u8> {
    use sluice_plugin_sdk::Filter;
    let frame = Frame {
        seq: 0,
        direction: TargetToClient,
        timestamp_ms: at_ms,
        content: Content::Bytes(bytes.to_vec()),
    };
    bytes_out(h.plugin().on_frame(&frame), bytes)
}

#[test]
fn a_trickling_line_is_released_after_max_hold() {
    let mut h = harness(r#"{"max_hold_ms": 500}"#);
    assert_eq!(send_at(&mut h, 1_000, b"progress ."), b"");
    assert_eq!(send_at(&mut h, 1_300, b"."), b"");
    // The oldest held byte has waited 500 ms: everything goes, masked.
    assert_eq!(
        send_at(&mut h, 1_500, b". 4242 4242 4242 4242"),
        b"progress ... [MASKED:card]"
    );
    assert_eq!(h.flush(TargetToClient), None);
}

#[test]
fn a_private_key_cut_by_a_flush_is_masked_to_its_end() {
    let mut h = harness("{}");
    let out = send_at(
        &mut h,
        0,
        b"$ cat key.pem\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN\n",
    );
    assert_eq!(
        out, b"$ cat key.pem\n",
        "the block is held while its end may come"
    );
    // The output pauses: the flush masks what arrived of the block...
    assert_eq!(
        h.flush(TargetToClient),
        Some(Content::Bytes(b"[MASKED:pem]".to_vec()))
    );
    // ...and the rest of it, up to its end marker, when it comes.
    let out = send_at(
        &mut h,
        0,
        b"BgkqhkiG9w0BAQEF\n-----END PRIVATE KEY-----\n$ ",
    );
    assert_eq!(out, b"[MASKED:pem]\n");
    assert_eq!(
        h.flush(TargetToClient),
        Some(Content::Bytes(b"$ ".to_vec()))
    );
}

#[test]
fn a_line_longer_than_the_window_is_released_as_it_comes() {
    let mut h = harness(r#"{"window_bytes": 64}"#);
    let json = format!(
        "{{\"rows\": [{}",
        r#"{"card": "4242 4242 4242 4242"}, "#.repeat(20)
    );
    let mut out = Vec::new();
    for chunk in json.as_bytes().chunks(37) {
        out.extend(send_at(&mut h, 0, chunk));
    }
    // Most of the line went out before it ended; only the window's worth waits.
    assert!(out.len() > json.len() / 2, "{}", out.len());
    if let Some(Content::Bytes(rest)) = h.flush(TargetToClient) {
        out.extend(rest);
    }
    let expected = json.replace("4242 4242 4242 4242", "[MASKED:card]");
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}

#[test]
fn tool_results_and_arguments_are_masked_string_by_string_and_stay_json() {
    use sluice_plugin_sdk::{ToolCall, ToolResult};
    let mut h = harness("{}");
    // A result whose text holds a secret with a quote and backslash around it: the JSON
    // stays valid because each string is masked on its own.
    let output = r#"{"content":[{"type":"text","text":"key \"AKIAIOSFODNN7EXAMPLE\" \\ mail bob@example.com"}],"structuredContent":{"card":4242424242424242,"n":7}}"#;
    let result = ToolResult {
        server: "files".into(),
        tool: "read_file".into(),
        id: "1".into(),
        output: output.into(),
        is_error: false,
    };
    let Action::Replace(Content::ToolResult(masked)) =
        h.send(TargetToClient, Content::ToolResult(result)).action
    else {
        panic!("a tool result with secrets is replaced");
    };
    let value: serde_json::Value = serde_json::from_str(&masked.output).unwrap();
    let text = value["content"][0]["text"].as_str().unwrap();
    assert_eq!(text, r#"key "[MASKED:aws-key]" \ mail [MASKED:email]"#);
    assert_eq!(value["structuredContent"]["card"], "[MASKED:card]");
    assert_eq!(value["structuredContent"]["n"], 7);
    assert_eq!(
        (masked.tool.as_str(), masked.id.as_str()),
        ("read_file", "1")
    );

    // Arguments going to the server pass as sent; the record gets them masked.
    let call = ToolCall {
        server: "files".into(),
        tool: "write_file".into(),
        id: "2".into(),
        arguments: r#"{"path":"/tmp/x","content":"password=hunter2"}"#.into(),
    };
    let verdict = h.send(ClientToTarget, Content::ToolCall(call));
    assert_eq!(verdict.action, Action::Pass);
    let Some(Content::ToolCall(recorded)) = verdict.record_as else {
        panic!("the record gets the arguments masked");
    };
    assert!(
        recorded.arguments.contains("[MASKED:assignment]"),
        "{}",
        recorded.arguments
    );
    // Text that is not JSON is masked as text; `kinds` can leave tool frames out.
    let plain = ToolResult {
        server: "s".into(),
        tool: "t".into(),
        id: "3".into(),
        output: "not json: bob@example.com".into(),
        is_error: false,
    };
    let verdict = h.send(TargetToClient, Content::ToolResult(plain.clone()));
    assert!(
        matches!(verdict.action, Action::Replace(Content::ToolResult(r)) if r.output == "not json: [MASKED:email]")
    );
    let mut lines_only = harness(r#"{"kinds": ["line"]}"#);
    assert_eq!(
        lines_only.send(TargetToClient, Content::ToolResult(plain)),
        Verdict::pass()
    );
}

#[test]
fn a_policy_enables_detectors_by_group() {
    let text =
        "card 4242 4242 4242 4242, mail bob@example.com, key sk_live_4eC39HqLyjWDarjtT1zdp7dc";
    let mut h = harness(r#"{"detectors": ["payment"]}"#);
    assert_eq!(
        line(&mut h, text),
        "card [MASKED:card], mail bob@example.com, key sk_live_4eC39HqLyjWDarjtT1zdp7dc"
    );
    let mut h = harness(r#"{"detectors": ["pii", "secrets"]}"#);
    assert_eq!(
        line(&mut h, text),
        "card 4242 4242 4242 4242, mail [MASKED:email], key [MASKED:stripe]"
    );
    // ipv4 is in `pii`: a group enables all of its detectors, those off by default too.
    assert_eq!(line(&mut h, "host 10.0.0.1"), "host [MASKED:ipv4]");
    let err = init_error(r#"{"detectors": ["secret"]}"#);
    assert!(err.contains("secrets, pii, payment"), "{err}");
}

/// A tool result's output as the plugin replaces it.
fn masked_tool_result(h: &mut FilterHarness<Mask>, output: &str) -> String {
    let result = sluice_plugin_sdk::ToolResult {
        server: "crm".into(),
        tool: "lookup".into(),
        id: "1".into(),
        output: output.into(),
        is_error: false,
    };
    match h.send(TargetToClient, Content::ToolResult(result)).action {
        Action::Replace(Content::ToolResult(masked)) => masked.output,
        other => panic!("the result is replaced, not {other:?}"),
    }
}

#[test]
fn a_column_or_json_key_name_confirms_what_is_in_it() {
    let mut h = harness("{}");
    let columns = vec![
        column("bsn", Some("people"), CellFormat::Text),
        column("ticket", Some("people"), CellFormat::Text),
    ];
    h.send(TargetToClient, Content::Columns(columns));
    // The same eleven-test-valid number: a BSN in the `bsn` column, a ticket number beside it.
    let row = vec![Some(b"111222333".to_vec()), Some(b"111222333".to_vec())];
    assert_eq!(
        h.send(TargetToClient, Content::Row(row)),
        Verdict::replace(Content::Row(vec![
            Some(b"[MASKED:nl-bsn]".to_vec()),
            Some(b"111222333".to_vec())
        ]))
    );
    let mut h = harness("{}");
    let output = r#"{"customer":{"sin":"130 692 544","order":"130 692 544"}}"#;
    assert_eq!(
        masked_tool_result(&mut h, output),
        r#"{"customer":{"order":"130 692 544","sin":"[MASKED:ca-sin]"}}"#
    );
}

#[test]
fn json_rules_mask_or_spare_values_by_key_path_in_tool_results_and_json_cells() {
    let mut h = harness(
        r#"{"json": {"customer.name": "always", "debug": "never", "customer.note": "fill"}}"#,
    );
    let output = r#"{"customer":{"name":"Ada Lovelace","note":"vip","mail":"ada@example.com"},"debug":{"trace":"bob@example.com"},"name":"not the customer's"}"#;
    let masked = masked_tool_result(&mut h, output);
    let value: serde_json::Value = serde_json::from_str(&masked).unwrap();
    assert_eq!(value["customer"]["name"], "[MASKED:name]");
    assert_eq!(value["customer"]["note"], "***");
    assert_eq!(value["customer"]["mail"], "[MASKED:email]");
    assert_eq!(value["debug"]["trace"], "bob@example.com", "never");
    assert_eq!(
        value["name"], "not the customer's",
        "a path, not any `name`"
    );

    // A jsonb cell: the same rules inside it; a cell that is not JSON is scanned as text.
    h.send(
        TargetToClient,
        Content::Columns(vec![column("doc", Some("crm"), CellFormat::Text)]),
    );
    let row = vec![Some(br#"{"customer": {"name": "Ada"}}"#.to_vec())];
    assert_eq!(
        h.send(TargetToClient, Content::Row(row)),
        Verdict::replace(Content::Row(vec![Some(
            br#"{"customer":{"name":"[MASKED:name]"}}"#.to_vec()
        )]))
    );
    let row = vec![Some(b"{not json, mail ada@example.com".to_vec())];
    assert_eq!(
        h.send(TargetToClient, Content::Row(row)),
        Verdict::replace(Content::Row(vec![Some(
            b"{not json, mail [MASKED:email]".to_vec()
        )]))
    );
}

#[test]
fn a_custom_detector_with_keywords_and_an_entropy_check() {
    let mut h = harness(
        r#"{"custom": [{"name": "badge", "pattern": "\\b[0-9]{6}\\b", "keywords": ["badge"]},
                       {"name": "session", "pattern": "sess_([A-Za-z0-9]{12,})", "validator": "entropy>=3"}]}"#,
    );
    // Within 64 bytes of the keyword, a value is confirmed; farther away, it is not.
    let far = "and then, a good while later in the same long line of text, room";
    assert_eq!(
        line(&mut h, &format!("Badge: 314159, {far} 271828")),
        format!("Badge: [MASKED:badge], {far} 271828")
    );
    assert_eq!(
        line(&mut h, "sess_Zx81Lk2Pq7Wn sess_aaaaaaaaaaaa1"),
        "sess_[MASKED:session] sess_aaaaaaaaaaaa1"
    );
    let err = init_error(
        r#"{"custom": [{"name": "x", "pattern": "x[0-9]+", "validator": "entropy>=12"}]}"#,
    );
    assert!(err.contains("entropy>=N"), "{err}");
    let err = init_error(r#"{"custom": [{"name": "x", "pattern": "x[0-9]+", "keywords": [""]}]}"#);
    assert!(err.contains("non-empty ASCII"), "{err}");
}
