//! A plugin's prescreen, compiled and run natively: by the gateway before it calls the
//! plugin, and by plugins' own tests, which check that the prescreen they declare lets
//! through every frame they act on. One implementation, so the two cannot disagree.

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;

use crate::{Content, ContentKind, Prescreen};

/// The most memory a prescreen's compiled patterns may take: the union of every detector of
/// the shipped masker takes under 1 MiB.
pub const MAX_BYTES: usize = 16 << 20;

/// A [`Prescreen`] compiled: one automaton over all its patterns.
#[derive(Debug)]
pub struct Screen {
    declared: Prescreen,
    /// A bit per kind of content the test applies to.
    kinds: u16,
    regex: Regex,
}

impl Screen {
    pub fn new(prescreen: &Prescreen) -> Result<Screen, String> {
        let regex = Regex::builder()
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .configure(
                // No literal prefilter: on the short texts of frames, a lazy DFA's one pass
                // beats one, and for case-insensitive words (a gate's verbs) the prefilter
                // the engine picks fires on most letters (8× slower on a pgbench statement).
                meta::Config::new()
                    .auto_prefilter(false)
                    .utf8_empty(false)
                    .nfa_size_limit(Some(MAX_BYTES))
                    .onepass_size_limit(Some(MAX_BYTES))
                    .dfa_size_limit(Some(MAX_BYTES)),
            )
            .build_many(&prescreen.patterns)
            .map_err(|e| match e.pattern() {
                Some(i) => format!(
                    "prescreen: {}",
                    crate::pattern_error(&prescreen.patterns[i.as_usize()], &e)
                ),
                None => format!("prescreen: the patterns together are too large: {e}"),
            })?;
        let kinds = prescreen
            .kinds
            .iter()
            .fold(0, |bits, k| bits | 1 << *k as u16);
        Ok(Screen {
            declared: prescreen.clone(),
            kinds,
            regex,
        })
    }

    /// The prescreen it was compiled from.
    pub fn declared(&self) -> &Prescreen {
        &self.declared
    }

    /// Whether the test applies to content of this kind.
    pub fn applies(&self, kind: ContentKind) -> bool {
        self.kinds & 1 << kind as u16 != 0
    }

    /// Whether `content` may reach the plugin: it is of a kind the test leaves alone, or one
    /// of the patterns matches one of its texts.
    pub fn admits(&self, content: &Content) -> bool {
        !self.applies(content.kind()) || content.texts(|text| self.regex.is_match(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Statement, ToolCall};

    fn screen(kinds: &[ContentKind], patterns: &[&str]) -> Screen {
        Screen::new(&Prescreen {
            kinds: kinds.to_vec(),
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn a_frame_passes_when_a_pattern_matches_one_of_its_texts() {
        let s = screen(
            &[ContentKind::Statement, ContentKind::Row],
            &["(?i)drop", r"\d{13}"],
        );
        let statement = |text: &str, param: &[u8]| {
            Content::Statement(Statement {
                text: text.into(),
                params: vec![None, Some(param.to_vec())],
            })
        };
        assert!(s.admits(&statement("Drop table t", b"1")));
        assert!(s.admits(&statement("SELECT $1", b"4242424242424242")));
        assert!(!s.admits(&statement("SELECT $1", b"42")));
        // Texts are matched one by one: a value split across two cells is no match.
        let row = |cells: &[&[u8]]| Content::Row(cells.iter().map(|c| Some(c.to_vec())).collect());
        assert!(!s.admits(&row(&[b"424242", b"4242424"])));
        assert!(s.admits(&row(&[b"x", b"\xff4242424242424"])));
        // Kinds the test does not name always pass it.
        assert!(s.admits(&Content::Line("nothing".into())));
        let call = Content::ToolCall(ToolCall {
            server: "s".into(),
            tool: "t".into(),
            id: "1".into(),
            arguments: "{}".into(),
        });
        assert!(s.admits(&call));
    }

    #[test]
    fn a_literal_matches_itself_and_nothing_else() {
        let word = r"a.b(c)[d]{e}|f*+?^$#&-~\ é_<>";
        let s = screen(&[ContentKind::Line], &[&crate::literal(word)]);
        assert!(s.admits(&Content::Line(format!("x {word} y"))));
        assert!(!s.admits(&Content::Line(word.replace('.', "X"))));
        assert!(!s.admits(&Content::Line("ab".into())));
    }

    #[test]
    fn no_pattern_means_no_frame_of_its_kinds() {
        let s = screen(&[ContentKind::Line], &[]);
        assert!(!s.admits(&Content::Line("anything".into())));
        assert!(s.admits(&Content::Bytes(b"anything".to_vec())));
    }

    #[test]
    fn bad_and_oversized_patterns_are_refused_saying_which() {
        let bad = Screen::new(&Prescreen {
            kinds: vec![ContentKind::Line],
            patterns: vec!["ok".into(), "(unclosed".into()],
        })
        .unwrap_err();
        assert!(bad.contains("(unclosed"), "{bad}");
        let huge = Screen::new(&Prescreen {
            kinds: vec![ContentKind::Line],
            patterns: vec!["(?:(?:[a-z0-9]{1000}){100}){10}".into()],
        })
        .unwrap_err();
        assert!(huge.starts_with("prescreen: "), "{huge}");
    }
}
