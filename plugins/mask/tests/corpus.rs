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

/// The masker's prescreen, as the gateway compiles and runs it.
mod prescreen {
    use super::*;
    use sluice_plugin_sdk::prescreen::Screen;
    use sluice_plugin_sdk::{
        CellFormat, Column, Config, Content, ContentKind, Direction, Filter, Frame, Identity,
        SessionInfo, Statement, Verdict,
    };

    fn filter(config: &str) -> Mask {
        let session = SessionInfo {
            id: "s".into(),
            connection: "pg".into(),
            protocol: "postgres".into(),
            identity: Identity {
                subject: "u".into(),
                name: None,
                groups: vec![],
            },
            started_at_ms: 0,
        };
        Mask::init(&Config::from_json(config), &session).unwrap()
    }

    fn screen(mask: &Mask) -> Screen {
        Screen::new(mask.interest().prescreen.as_ref().expect("a prescreen")).unwrap()
    }

    /// Every detector of every group, on or off by default.
    const EVERY: &str = r#"{"detectors": ["secrets", "pii", "payment"]}"#;

    /// The texts to try: every corpus input, each value alone, and pieces of them cut and
    /// joined at pseudo-random places (values with a byte more or less, two glued together).
    fn texts() -> Vec<String> {
        let cases = corpus();
        let mut texts: Vec<String> = cases.iter().map(|c| c.input.clone()).collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..20_000 {
            let a = &cases[next(cases.len())].input;
            let b = &cases[next(cases.len())].input;
            let (i, j) = (next(a.len() + 1), next(b.len() + 1));
            let (i, j) = (floor(a, i), floor(b, j));
            let glue = [" ", "", "\n", "=", "\t", ": "][next(6)];
            texts.push(format!("{}{glue}{}", &a[i..], &b[..j]));
        }
        texts
    }

    fn floor(s: &str, mut i: usize) -> usize {
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    }

    fn changed(verdict: &Verdict) -> bool {
        *verdict != Verdict::pass()
    }

    /// What the prescreen is for: a frame it keeps from the masker is one the masker would
    /// have passed as it is. Tried on lines, statements (text and parameter) and row cells,
    /// under a column name that confirms keyword detectors, for every detector there is.
    #[test]
    fn every_frame_the_masker_changes_passes_its_prescreen() {
        for config in ["{}", EVERY] {
            let mut mask = filter(config);
            let screen = screen(&mask);
            let columns = Content::Columns(
                ["password", "ssn", "iban", "note"]
                    .iter()
                    .map(|name| Column {
                        name: (*name).into(),
                        table: Some("t".into()),
                        table_oid: 1,
                        type_oid: 25,
                        format: CellFormat::Text,
                    })
                    .collect(),
            );
            mask.on_frame(&Frame::new(Direction::TargetToClient, columns));
            let (mut acted, mut tried) = (0, 0);
            for text in texts() {
                let contents = [
                    (Direction::ClientToTarget, Content::Line(text.clone())),
                    (
                        Direction::ClientToTarget,
                        Content::Statement(Statement {
                            text: text.clone(),
                            params: vec![],
                        }),
                    ),
                    (
                        Direction::ClientToTarget,
                        Content::Statement(Statement {
                            text: "SELECT $1".into(),
                            params: vec![Some(text.clone().into_bytes())],
                        }),
                    ),
                    (
                        Direction::TargetToClient,
                        Content::Row(vec![Some(text.clone().into_bytes()); 4]),
                    ),
                ];
                for (direction, content) in contents {
                    tried += 1;
                    let verdict = mask.on_frame(&Frame::new(direction, content.clone()));
                    if changed(&verdict) {
                        acted += 1;
                        assert!(
                            screen.admits(&content),
                            "{config}: the masker changed {content:?}, which its prescreen keeps from it"
                        );
                    }
                }
            }
            // The test means something only if the masker acts on many of them, not all.
            assert!(acted > tried / 10 && acted < tried, "{acted} of {tried}");
        }
    }

    #[test]
    fn what_pgbench_sends_and_gets_never_reaches_the_masker() {
        let screen = screen(&filter("{}"));
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "UPDATE pgbench_accounts SET abalance = abalance + -4231 WHERE aid = 93412;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 93412, -4231, CURRENT_TIMESTAMP);",
        ] {
            let statement = Content::Statement(Statement {
                text: sql.into(),
                params: vec![],
            });
            assert!(!screen.admits(&statement), "{sql}");
        }
        let columns = Content::Columns(vec![Column {
            name: "abalance".into(),
            table: Some("public.pgbench_accounts".into()),
            table_oid: 1,
            type_oid: 23,
            format: CellFormat::Text,
        }]);
        assert!(!screen.admits(&columns));
        assert!(!screen.admits(&Content::Row(vec![Some(b"-2345".to_vec())])));
        assert!(screen.admits(&Content::Row(vec![Some(b"4242 4242 4242 4242".to_vec())])));
    }

    /// What naming columns in the prescreen promises: the masker passes every result's
    /// columns as they are (they only set up the rows after them), whatever they are named.
    #[test]
    fn the_masker_passes_every_columns_frame() {
        let rules = r#"{"columns": {"users.ssn": "always", "note": "never"}}"#;
        for config in ["{}", EVERY, rules] {
            let mut mask = filter(config);
            for text in texts() {
                let columns = [text.as_str(), "ssn", "note"].map(|name| Column {
                    name: name.into(),
                    table: Some("users".into()),
                    table_oid: 1,
                    type_oid: 25,
                    format: CellFormat::Text,
                });
                let frame = Frame::new(Direction::TargetToClient, Content::Columns(columns.into()));
                assert_eq!(mask.on_frame(&frame), Verdict::pass(), "{config}: {text:?}");
            }
        }
    }

    #[test]
    fn rows_are_not_prescreened_where_a_rule_masks_a_cell_whatever_it_holds() {
        let kinds = |config: &str| filter(config).interest().prescreen.unwrap().kinds;
        assert!(kinds("{}").contains(&ContentKind::Row));
        assert!(kinds(r#"{"columns": {"notes": "never"}}"#).contains(&ContentKind::Row));
        assert!(!kinds(r#"{"columns": {"users.ssn": "always"}}"#).contains(&ContentKind::Row));
        assert!(!kinds(r#"{"columns": {"ssn": "fill"}}"#).contains(&ContentKind::Row));
        assert!(!kinds(r#"{"json": {"ssn": "never"}}"#).contains(&ContentKind::Row));
        // Columns always pass: prescreened, they reach it before their first row that does.
        for config in ["{}", r#"{"columns": {"users.ssn": "always"}}"#] {
            assert!(kinds(config).contains(&ContentKind::Columns), "{config}");
        }
        // Bytes (held across chunks) and tool calls always reach it.
        for kind in [
            ContentKind::Bytes,
            ContentKind::ToolCall,
            ContentKind::ToolResult,
        ] {
            assert!(!kinds("{}").contains(&kind), "{kind:?}");
        }
        // A custom detector's pattern is part of it.
        let custom = r#"{"detectors": [], "custom": [{"name": "emp", "pattern": "EMP-[0-9]{6}"}]}"#;
        let screen = screen(&filter(custom));
        assert!(screen.admits(&Content::Line("id EMP-123456".into())));
        assert!(!screen.admits(&Content::Line("id 4242 4242 4242 4242".into())));
    }
}
