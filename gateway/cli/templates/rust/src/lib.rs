//! `{{name}}`: a Sluice filter plugin. It refuses commands that contain a forbidden word
//! and masks a pattern in what targets send back. Change both to what you need.

use regex::bytes::Regex;
use serde::Deserialize;
use sluice_plugin_sdk::{
    Config, Content, ContentKind, Direction, Filter, Frame, Interest, SessionInfo, Verdict,
    pattern_error,
};

/// The plugin's table in the policy (`config = { ... }`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)] // a typo in the policy is an error, not a no-op
struct Settings {
    /// Words a command may not contain.
    #[serde(default)]
    forbidden: Vec<String>,
    /// What to mask in output (an ASCII regex).
    mask: String,
    #[serde(default = "default_replacement")]
    replacement: String,
}

fn default_replacement() -> String {
    "[masked]".into()
}

pub struct Plugin {
    forbidden: Vec<String>,
    mask: Regex,
    replacement: Vec<u8>,
}

impl Filter for Plugin {
    // Once per session: parse settings and compile patterns here, not per frame.
    fn init(config: &Config, _session: &SessionInfo) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let mask = Regex::new(&settings.mask).map_err(|e| pattern_error(&settings.mask, &e))?;
        Ok(Plugin {
            forbidden: settings.forbidden,
            mask,
            replacement: settings.replacement.into_bytes(),
        })
    }

    // The frames to judge (docs/plugins.md, "What each session sends"). Commands: a one-shot
    // script or a SQL query is a statement; a line typed at a terminal is a line (at Enter).
    // Output: a program prints bytes; PostgreSQL sends rows, and errors as lines.
    // Each verdict depends on its frame alone, so the plugin is stateless: set it to `false`
    // once it keeps anything between frames (buffered bytes, counters).
    fn interest(&self) -> Interest {
        Interest {
            client_to_target: vec![ContentKind::Statement, ContentKind::Line],
            target_to_client: vec![ContentKind::Bytes, ContentKind::Row, ContentKind::Line],
            stateless: true,
            prescreen: None,
        }
    }

    fn on_frame(&mut self, frame: &Frame) -> Verdict {
        match frame.direction {
            Direction::ClientToTarget => self.judge(&frame.content),
            Direction::TargetToClient => match self.masked(&frame.content) {
                Some(masked) => Verdict::replace(masked),
                None => Verdict::pass(),
            },
        }
    }
}

impl Plugin {
    fn judge(&self, command: &Content) -> Verdict {
        let text = command.as_text().unwrap_or_default();
        match self.forbidden.iter().find(|word| text.contains(word.as_str())) {
            Some(word) => Verdict::deny(format!("`{word}` is not allowed here")),
            None => Verdict::pass(),
        }
    }

    /// The content with every match masked, or `None` when nothing matched.
    fn masked(&self, content: &Content) -> Option<Content> {
        let mask = |bytes: &[u8]| -> Option<Vec<u8>> {
            self.mask
                .is_match(bytes)
                .then(|| self.mask.replace_all(bytes, &self.replacement[..]).into_owned())
        };
        match content {
            Content::Bytes(bytes) => mask(bytes).map(Content::Bytes),
            Content::Line(line) => mask(line.as_bytes())
                .map(|masked| Content::Line(String::from_utf8_lossy(&masked).into_owned())),
            Content::Row(cells) => {
                let masked: Vec<_> = cells
                    .iter()
                    .map(|cell| cell.as_deref().map(|c| mask(c).unwrap_or_else(|| c.to_vec())))
                    .collect();
                (&masked != cells).then_some(Content::Row(masked))
            }
            _ => None,
        }
    }
}

sluice_plugin_sdk::export_filter!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin_sdk::{SessionKind, testing::FilterHarness};

    const CONFIG: &str = r#"{"forbidden": ["shutdown"], "mask": "CUST-[0-9]{8}"}"#;

    #[test]
    fn refuses_forbidden_words_however_the_command_arrives() {
        let mut shell = FilterHarness::<Plugin>::new(CONFIG).unwrap();
        assert!(shell.exec_script("sudo shutdown now").is_deny());
        assert!(shell.typed_line("sudo shutdown now").is_deny());
        assert!(shell.typed_line("ls").is_pass());
        let mut pg = FilterHarness::<Plugin>::session(SessionKind::Postgres, CONFIG).unwrap();
        assert!(pg.query("SELECT shutdown()").is_deny());
    }

    #[test]
    fn masks_output_and_rows() {
        let mut shell = FilterHarness::<Plugin>::new(CONFIG).unwrap();
        let verdict = shell.output("owner CUST-00123456\n");
        assert_eq!(verdict.replaced_text().as_deref(), Some("owner [masked]\n"));
        let mut pg = FilterHarness::<Plugin>::session(SessionKind::Postgres, CONFIG).unwrap();
        let verdict = pg.row(&[Some("CUST-00123456"), None]);
        assert_eq!(verdict.replaced_text().as_deref(), Some("[masked]\tNULL"));
        assert!(pg.row(&[Some("nothing here")]).is_pass());
    }

    #[test]
    fn a_bad_pattern_is_refused_with_the_fix() {
        let error = FilterHarness::<Plugin>::new(r#"{"mask": "\\bCUST"}"#).err().unwrap();
        assert!(error.contains(r"(?-u:\b)"), "{error}");
    }
}
