//! A filter that does what each input line tells it to, including the things a plugin must
//! never be allowed to get away with.

use sluice_plugin_sdk::{
    Config, Content, ContentKind, Direction, Filter, Frame, Interest, SessionInfo, Verdict,
};

pub struct Antics {
    /// Says so in `interest` (config `{"stateless": true}`), truthfully or not.
    stateless: bool,
    remembered: Option<String>,
    stash: Option<Content>,
    frames_seen: u64,
    /// Lines and columns reach it only when one of these matches (config
    /// `{"prescreen": [...]}`).
    prescreen: Option<Vec<String>>,
}

impl Filter for Antics {
    fn init(config: &Config, session: &SessionInfo) -> Result<Self, String> {
        // Refuses sessions, as a plugin that checks who may connect would; the gateway's
        // config check at load (protocol "check") passes.
        if config.json().contains("fail-init") && session.protocol != "check" {
            return Err("asked to fail".into());
        }
        Ok(Antics {
            stateless: config.json().contains("\"stateless\":true"),
            remembered: None,
            stash: None,
            frames_seen: 0,
            prescreen: config
                .parse::<std::collections::BTreeMap<String, Vec<String>>>()
                .ok()
                .and_then(|mut c| c.remove("prescreen")),
        })
    }

    fn interest(&self) -> Interest {
        let interest = Interest {
            stateless: self.stateless,
            ..Interest::all()
        };
        match &self.prescreen {
            Some(patterns) => {
                interest.prescreen(&[ContentKind::Line, ContentKind::Columns], patterns)
            }
            None => interest,
        }
    }

    fn on_frame(&mut self, frame: &Frame) -> Verdict {
        self.frames_seen += 1;
        let line = match &frame.content {
            // Output to hold back until the host flushes, as a buffering masker would.
            Content::Bytes(bytes) if bytes.windows(8).any(|w| w == b"HOLDBACK") => {
                self.stash = Some(frame.content.clone());
                return Verdict::replace(Content::Bytes(Vec::new()));
            }
            Content::Line(line) => line.as_str(),
            // SQL that asks in a comment, so it stays valid SQL for a real server.
            Content::Statement(statement) if statement.text.contains("--deny") => {
                return Verdict::deny("asked in a comment");
            }
            Content::Statement(statement) if statement.text.contains("--hold") => {
                return Verdict::hold("asked in a comment");
            }
            Content::Statement(statement) => statement.text.trim_end(),
            // Breaks its prescreen's promise when the columns match nothing in it.
            Content::Columns(columns) if columns.iter().any(|c| c.name == "refuse") => {
                return Verdict::deny("a column named refuse");
            }
            _ => return Verdict::pass(),
        };
        match line.split_once(' ').unwrap_or((line, "")) {
            ("loop", _) => loop {
                std::hint::black_box(&mut self.frames_seen);
            },
            ("alloc", _) => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            // Keeps N KiB for good, as an interpreter that does not collect between calls does.
            ("leak", kib) => {
                let kib: usize = kib.parse().unwrap_or(1);
                std::hint::black_box(Vec::leak(vec![1u8; kib << 10]));
                Verdict::pass()
            }
            ("panic", _) => panic!("asked to panic"),
            // Blocks on a WASI clock, as a plugin that sleeps or polls would.
            ("sleep", _) => {
                std::thread::sleep(std::time::Duration::from_millis(2));
                Verdict::pass()
            }
            // A row for a line frame: a malformed verdict the host must refuse.
            ("garbage", _) => Verdict::replace(Content::Row(vec![None])),
            ("hold", reason) => Verdict::hold(reason),
            ("deny", reason) => Verdict::deny(reason),
            ("remember", value) => {
                self.remembered = Some(value.to_string());
                Verdict::pass()
            }
            ("recall", _) => {
                let text = self
                    .remembered
                    .clone()
                    .unwrap_or_else(|| "(nothing)".into());
                Verdict::replace(Content::Line(text))
            }
            // Held back until the host flushes, as a buffering masker does with a partial match.
            ("stash", value) => {
                self.stash = Some(Content::Line(value.to_string()));
                Verdict::replace(Content::Line(String::new()))
            }
            ("count", _) => Verdict::replace(Content::Line(self.frames_seen.to_string())),
            ("secret", value) => Verdict::pass()
                .record_as(Content::Line(format!("secret {}", "*".repeat(value.len())))),
            _ => Verdict::pass(),
        }
    }

    fn flush(&mut self, _direction: Direction) -> Option<Content> {
        self.stash.take()
    }
}

sluice_plugin_sdk::export_filter!(Antics);
