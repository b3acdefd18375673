//! The detector corpus (`policies/cases/mask.txt`), whole and split across chunks at every
//! byte offset.

use mask::{Limits, Mask, Settings, Stream};

struct Case {
    line: usize,
    input: String,
    expected: String,
}

/// Each case's input (markers removed) and expected output (marked values as labels).
fn corpus() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies/cases/mask.txt");
    let text = std::fs::read_to_string(path).expect("the corpus is readable");
    let mut cases = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() || raw.starts_with('#') {
            continue;
        }
        let raw = raw.replace("\\n", "\n");
        let (mut input, mut expected) = (String::new(), String::new());
        let mut rest = raw.as_str();
        while let Some(open) = rest.find("{{") {
            let close = rest[open..].find("}}").expect("every {{ has its }}") + open;
            let (detector, value) = rest[open + 2..close]
                .split_once(':')
                .expect("{{detector:value}}");
            input.push_str(&rest[..open]);
            expected.push_str(&rest[..open]);
            input.push_str(value);
            expected.push_str(&format!("[MASKED:{detector}]"));
            rest = &rest[close + 2..];
        }
        input.push_str(rest);
        expected.push_str(rest);
        cases.push(Case {
            line: i + 1,
            input,
            expected,
        });
    }
    assert!(cases.len() > 50, "the corpus lost its cases");
    cases
}

fn mask() -> Mask {
    Mask::new(Settings::default()).unwrap()
}

#[test]
fn every_case_is_masked_exactly_as_marked() {
    let mut mask = mask();
    let mut failures = Vec::new();
    for case in corpus() {
        let out = mask
            .masker()
            .mask(case.input.as_bytes())
            .map_or(case.input.clone(), |b| String::from_utf8(b).unwrap());
        if out != case.expected {
            failures.push(format!(
                "line {}:\n  input    {:?}\n  expected {:?}\n  got      {:?}",
                case.line, case.input, case.expected, out
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Streams `chunks` through one output stream (no flush between them), then flushes.
fn stream(mask: &mut Mask, limits: Limits, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut stream = Stream::default();
    let outs = chunks
        .iter()
        .map(|c| {
            stream
                .push(mask.masker(), c, 0, limits)
                .unwrap_or(c.to_vec())
        })
        .collect();
    let rest = stream.flush(mask.masker());
    (outs, rest)
}

#[test]
fn a_value_split_at_any_byte_across_two_chunks_is_masked() {
    let mut mask = mask();
    // A small window, so long lines are released mid-line too (but no shorter than the
    // longest single value, which a window must hold whole: an Anthropic key is 108 bytes).
    let limits = Limits {
        window: 256,
        max_carry: 64 << 10,
        max_hold_ms: 1000,
    };
    for case in corpus() {
        let text = format!("before\n{}\nafter\n", case.input);
        let expected = format!("before\n{}\nafter\n", case.expected);
        for at in 0..=text.len() {
            let (a, b) = text.as_bytes().split_at(at);
            let (outs, rest) = stream(&mut mask, limits, &[a, b]);
            let got = [outs.concat(), rest].concat();
            assert_eq!(
                String::from_utf8_lossy(&got),
                expected,
                "line {} split at byte {at}",
                case.line
            );
            // Nothing after the last line break is pending once the text is complete.
            assert_eq!(
                outs.concat(),
                expected.as_bytes(),
                "line {} split at {at}: held back",
                case.line
            );
        }
    }
}

#[test]
fn complete_lines_go_out_at_once_and_a_partial_line_waits_for_the_flush() {
    let mut mask = mask();
    let limits = Limits {
        window: 8 << 10,
        max_carry: 64 << 10,
        max_hold_ms: 1000,
    };
    let (outs, rest) = stream(
        &mut mask,
        limits,
        &[b"card 4242 4242 4242 4242\nprompt$ 4242 4242"],
    );
    assert_eq!(outs[0], b"card [MASKED:card]\n");
    assert_eq!(rest, b"prompt$ 4242 4242");
}

#[test]
fn every_detector_on_by_default_has_cases_and_every_pattern_compiles() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../policies/cases/mask.txt"
    ))
    .unwrap();
    for builtin in mask::BUILTINS {
        assert!(
            !builtin.on_by_default || text.contains(&format!("{{{{{}:", builtin.name)),
            "{} has no case in the corpus",
            builtin.name
        );
        // Keyword detectors compile on first use, where a failure could only be skipped:
        // each is compiled here, alone, and must not match the empty string.
        for pattern in builtin.patterns {
            let settings: Settings = Settings {
                detectors: Some(vec![]),
                custom: vec![mask::CustomDetector {
                    name: "probe".into(),
                    pattern: pattern.regex.into(),
                    keywords: vec![],
                    validator: None,
                    style: None,
                }],
                ..Settings::default()
            };
            if let Err(e) = Mask::new(settings) {
                panic!("{}: {e}", builtin.name);
            }
        }
    }
}

#[test]
fn keyword_detectors_are_compiled_only_once_a_keyword_appears() {
    let mut mask = mask();
    let plain = "2026-11-30 12:00:01 INFO GET /orders?page=2 200 5120 bytes in 12 ms\n".repeat(50);
    assert_eq!(mask.masker().mask(plain.as_bytes()), None);
    assert_eq!(mask.masker().compiled_keyword_detectors(), 0);
    let token = "export GH=ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789\n";
    assert_eq!(
        mask.masker().mask(token.as_bytes()).unwrap(),
        b"export GH=[MASKED:github]\n"
    );
    assert_eq!(mask.masker().compiled_keyword_detectors(), 1);
}
