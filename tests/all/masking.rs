//! The shipped `mask` plugin end to end: what the client sees, and what reaches the disk.

use crate::support::Gateway;

/// Whether the raw bytes of the record's file hold `needle` anywhere (live or free pages).
const RECORDS: &str = r#"
import json, sys
cards = ["4242 4242 4242 4242", "4111-1111-1111-1111", "5555555555554444"]
for i in range(3000):
    print(json.dumps({"id": i, "card": cards[i % 3], "email": f"user{i}@example.com", "note": "visible-marker"}))
# One key split across two writes (two reads for the gateway, as a rule).
sys.stdout.write("key AKIAIOSFOD")
sys.stdout.flush()
sys.stdout.write("NN7EXAMPLE and aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n")
"#;

#[test]
fn python_output_is_masked_for_the_client_and_the_store_never_holds_the_values() {
    // A split value is caught when the pause between its halves is shorter than the flush
    // interval. A loaded machine can stall the script for longer than the default 100 ms, so
    // the interval is long here; the end of the output still flushes at once.
    let gw = Gateway::start_with_gateway_settings("flush_ms = 60000", "");
    std::fs::write(gw.dir.path().join("records.py"), RECORDS).unwrap();
    let (code, out, err) = gw.run(&["exec", "python", "-f", "records.py"], "");
    assert_eq!(code, 0, "{err}");

    // The shipped policy: cards keep their last four, everything else is labelled.
    let masked_cards = [
        "**** **** **** 4242",
        "****-****-****-1111",
        "************4444",
    ];
    let mut expected = String::new();
    for i in 0..3000 {
        expected.push_str(&format!(
            "{{\"id\": {i}, \"card\": \"{}\", \"email\": \"[MASKED:email]\", \"note\": \"visible-marker\"}}\n",
            masked_cards[i % 3]
        ));
    }
    expected.push_str("key [MASKED:aws-key] and aws_secret_access_key=[MASKED:aws-key]\n");
    // Compare line counts first: a mismatch in 300 KB is easier to read that way.
    assert_eq!(out.lines().count(), expected.lines().count());
    let diff = out.lines().zip(expected.lines()).find(|(a, b)| a != b);
    assert!(diff.is_none(), "first difference (got, expected): {diff:?}");

    // The values reached neither the record (output frames, and the script as a statement
    // frame) nor any free page of the file; the marker shows the search would find them.
    assert!(gw.store_holds("visible-marker"));
    for value in [
        "4242 4242 4242 4242",
        "4111-1111-1111-1111",
        "5555555555554444",
        "user17@example.com",
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ] {
        assert!(!gw.store_holds(value), "the store holds {value}");
    }
}

#[test]
fn an_interactive_shell_shows_and_records_only_masked_values() {
    let gw = Gateway::start();
    let (code, out, err) = gw.run(
        &["connect", "shell"],
        "echo card 4242424242424242 mail bob@example.com\nexit\n",
    );
    assert_eq!(code, 0, "{err}");
    // Both the echo of what was typed and the command's output come back masked.
    assert!(
        out.contains("card ************4242 mail [MASKED:email]"),
        "{out}"
    );
    assert!(
        !out.contains("4242424242424242") && !out.contains("bob@example.com"),
        "{out}"
    );
    assert!(gw.store_holds("[MASKED:email]"));
    assert!(!gw.store_holds("4242424242424242"));
    assert!(!gw.store_holds("bob@example.com"));
}
