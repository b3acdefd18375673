//! One compiled pass over a text for every enabled detector, and the replacement styles.

use std::ops::Range;

use hmac::{Hmac, KeyInit, Mac};
use regex_automata::meta::{self, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, Match};
use sha2::Sha256;

use crate::detectors::Validator;

/// How a found value is replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Style {
    /// `[MASKED:card]`
    Label,
    /// `**** **** **** ****`: one `*` per character, whitespace and dashes kept, so terminal
    /// columns and the value's shape stay.
    Fill,
    /// `**** **** **** 4242`: like `Fill`, but the last N letters or digits stay.
    KeepLast(usize),
    /// `card:5e1f0a2b9c3d7e68`: HMAC-SHA256 of the value under a deployment key, so the same
    /// value always gives the same token (joins and counts still work) and nobody without
    /// the key can tell what it was.
    Pseudonym(Vec<u8>),
}

impl Style {
    /// Its name in the policy.
    pub fn name(&self) -> &'static str {
        match self {
            Style::Label => "label",
            Style::Fill => "fill",
            Style::KeepLast(_) => "keep-last",
            Style::Pseudonym(_) => "pseudonym",
        }
    }

    /// Appends the replacement for `value`, found by `label` (a detector or column name).
    /// `strip` says that spaces and dashes are formatting, not part of the value.
    pub fn render(&self, label: &str, value: &[u8], strip: bool, out: &mut Vec<u8>) {
        match self {
            Style::Label => {
                out.extend_from_slice(b"[MASKED:");
                out.extend_from_slice(label.as_bytes());
                out.push(b']');
            }
            Style::Fill => fill(value, value.len(), out),
            Style::KeepLast(n) => {
                // Where the last `n` letters or digits begin.
                let mut seen = 0;
                let mut from = value.len();
                while from > 0 && seen < *n {
                    from -= 1;
                    if significant(value[from]) {
                        seen += 1;
                    }
                }
                fill(value, from, out);
                out.extend_from_slice(&value[from..]);
            }
            Style::Pseudonym(key) => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                    // HMAC takes keys of any length; this cannot happen.
                    return Style::Label.render(label, value, strip, out);
                };
                mac.update(label.as_bytes());
                mac.update(&[0]);
                if strip {
                    let compact: Vec<u8> = value
                        .iter()
                        .copied()
                        .filter(|b| *b != b' ' && *b != b'-')
                        .collect();
                    mac.update(&compact);
                } else {
                    mac.update(value);
                }
                let tag = mac.finalize().into_bytes();
                out.extend_from_slice(label.as_bytes());
                out.push(b':');
                for byte in &tag[..8] {
                    out.extend_from_slice(format!("{byte:02x}").as_bytes());
                }
            }
        }
    }
}

fn significant(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0xc0
}

/// `*` for each character of `value[..upto]` (not each byte: a UTF-8 character is one
/// column), keeping whitespace and dashes.
fn fill(value: &[u8], upto: usize, out: &mut Vec<u8>) {
    for &b in &value[..upto] {
        match b {
            b' ' | b'\t' | b'\r' | b'\n' | b'-' => out.push(b),
            0x80..=0xbf => {} // a UTF-8 continuation byte: its character has its `*`
            _ => out.push(b'*'),
        }
    }
}

/// A detector as the policy enabled it.
#[derive(Clone, Debug)]
pub struct Detector {
    pub name: String,
    pub validator: Option<Validator>,
    pub style: Style,
}

/// One regex of one detector.
#[derive(Clone, Debug)]
pub struct PatternSpec {
    pub detector: usize,
    pub regex: String,
    pub opens_block: bool,
    pub rescans: bool,
}

struct PatternInfo {
    detector: usize,
    opens_block: bool,
    rescans: bool,
    /// Masks its first matching capture group rather than the whole match.
    grouped: bool,
}

/// A value to mask: `hay[start..end]`, found by `detector`. An `open` hit is a block whose
/// close was not found: it runs to the end of what was scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub start: usize,
    pub end: usize,
    pub detector: usize,
    pub open: bool,
    /// Where the whole match began (before `start` when the value is a group: the
    /// `AccountKey=` of `AccountKey=VALUE`). A stream never releases part of a match: the
    /// value would no longer be found without its context.
    pub matched: usize,
}

pub struct Masker {
    regex: Regex,
    cache: meta::Cache,
    captures: Captures,
    patterns: Vec<PatternInfo>,
    detectors: Vec<Detector>,
    block_close: Regex,
    /// Log each value masked: which detector, where, which style (`sluice plugin run
    /// --explain`). Never the value itself.
    pub explain: bool,
}

/// The error names the detector whose pattern failed.
#[derive(Debug)]
pub struct PatternError {
    pub detector: usize,
    pub message: String,
}

fn builder() -> meta::Builder {
    let mut builder = Regex::builder();
    builder
        // Bytes, not text: terminal output need not be UTF-8, and ASCII classes are enough.
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .configure(Regex::config().utf8_empty(false));
    builder
}

impl Masker {
    pub fn new(detectors: Vec<Detector>, specs: &[PatternSpec]) -> Result<Masker, PatternError> {
        let sources: Vec<&str> = specs.iter().map(|s| s.regex.as_str()).collect();
        let regex = builder().build_many(&sources).map_err(|e| {
            let spec = e.pattern().map(|p| &specs[p.as_usize()]);
            PatternError {
                detector: spec.map_or(0, |s| s.detector),
                message: match spec {
                    Some(spec) => sluice_plugin_sdk::pattern_error(&spec.regex, &e),
                    None => format!("invalid pattern: {e}"),
                },
            }
        })?;
        let group_info = regex.group_info().clone();
        let patterns: Vec<PatternInfo> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| PatternInfo {
                detector: spec.detector,
                opens_block: spec.opens_block,
                rescans: spec.rescans,
                grouped: group_info.group_len(regex_automata::PatternID::must(i)) > 1,
            })
            .collect();
        // A pattern that matches nothing at all would mask every position.
        for (i, spec) in specs.iter().enumerate() {
            let empty =
                Input::new(b"").anchored(Anchored::Pattern(regex_automata::PatternID::must(i)));
            if regex.search(&empty).is_some() {
                return Err(PatternError {
                    detector: spec.detector,
                    message: format!(
                        "invalid pattern `{}`: it matches the empty string, so it would match everywhere",
                        spec.regex
                    ),
                });
            }
        }
        let block_close = builder()
            .build(crate::detectors::BLOCK_CLOSE)
            .map_err(|e| PatternError {
                detector: 0,
                message: e.to_string(),
            })?;
        Ok(Masker {
            cache: regex.create_cache(),
            captures: regex.create_captures(),
            regex,
            patterns,
            detectors,
            block_close,
            explain: false,
        })
    }

    /// Appends the values to mask in `hay[from..]` to `hits`, left to right, overlapping
    /// ones merged. Bytes before `from` are context only (for `\b`).
    pub fn scan(&mut self, hay: &[u8], from: usize, hits: &mut Vec<Hit>) {
        let mut at = from;
        while at < hay.len() {
            let input = Input::new(hay).range(at..);
            let Some(m) = self.regex.search_with(&mut self.cache, &input) else {
                break;
            };
            let info = &self.patterns[m.pattern().as_usize()];
            let detector = info.detector;
            if info.opens_block {
                // Everything from here on belongs to the block until its close.
                push_merged(
                    hits,
                    Hit {
                        start: m.start(),
                        end: hay.len(),
                        detector,
                        open: true,
                        matched: m.start(),
                    },
                );
                break;
            }
            let (grouped, rescans) = (info.grouped, info.rescans);
            let (start, end) = if grouped {
                self.secret_span(hay, m)
            } else {
                (m.start(), m.end())
            };
            let accepted = match self.detectors[detector].validator {
                None => Some(end),
                Some(v) => longest_valid(v, &hay[start..end]).map(|n| start + n),
            };
            match accepted {
                Some(end) if end > start => {
                    push_merged(
                        hits,
                        Hit {
                            start,
                            end,
                            detector,
                            open: false,
                            matched: m.start().min(start),
                        },
                    );
                    at = if rescans {
                        start.max(m.start() + 1)
                    } else {
                        end
                    };
                }
                _ => at = m.start() + 1,
            }
        }
    }

    /// Copies `hay[range]` to `out` with every hit in it replaced. Hits must lie inside
    /// `range`.
    pub fn render(&self, hay: &[u8], hits: &[Hit], range: Range<usize>, out: &mut Vec<u8>) {
        let mut copied = range.start;
        for hit in hits {
            if self.explain {
                let d = &self.detectors[hit.detector];
                let at = format!("{}..{}", hit.start - range.start, hit.end - range.start);
                sluice_plugin_sdk::log::debug(
                    &format!("{} at bytes {at}, masked as {}", d.name, d.style.name()),
                    &[("detector", &d.name), ("at", &at)],
                );
            }
            out.extend_from_slice(&hay[copied..hit.start]);
            self.replace(hit.detector, &hay[hit.start..hit.end], out);
            copied = hit.end;
        }
        out.extend_from_slice(&hay[copied..range.end]);
    }

    /// Appends `detector`'s replacement for `value`.
    pub fn replace(&self, detector: usize, value: &[u8], out: &mut Vec<u8>) {
        let d = &self.detectors[detector];
        let strip = d.validator.is_some_and(Validator::strips_separators);
        d.style.render(&d.name, value, strip, out);
    }

    /// A whole text (a line, a statement, a cell) with every value masked, or `None` when it
    /// has none.
    pub fn mask(&mut self, text: &[u8]) -> Option<Vec<u8>> {
        let mut hits = Vec::new();
        self.scan(text, 0, &mut hits);
        if hits.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(text.len());
        self.render(text, &hits, 0..text.len(), &mut out);
        Some(out)
    }

    /// The end of the marker that closes an open block, searching `hay[from..]`.
    pub fn block_close(&self, hay: &[u8], from: usize) -> Option<usize> {
        self.block_close
            .search(&Input::new(hay).range(from..))
            .map(|m| m.end())
    }

    /// The span of the first capture group that took part in `m`.
    fn secret_span(&mut self, hay: &[u8], m: Match) -> (usize, usize) {
        let input = Input::new(hay)
            .span(m.range())
            .anchored(Anchored::Pattern(m.pattern()));
        self.regex
            .search_captures_with(&mut self.cache, &input, &mut self.captures);
        (1..self.captures.group_len())
            .find_map(|g| self.captures.get_group(g))
            .map_or((m.start(), m.end()), |span| (span.start, span.end))
    }
}

/// The longest prefix of `candidate` the validator accepts, trying the whole and then cuts
/// before each separator: `4242 4242 4242 4242 7` holds a card followed by a digit.
fn longest_valid(validator: Validator, candidate: &[u8]) -> Option<usize> {
    if validator.accepts(candidate) {
        return Some(candidate.len());
    }
    (1..candidate.len())
        .rev()
        .filter(|&i| matches!(candidate[i], b' ' | b'-'))
        .find(|&i| validator.accepts(&candidate[..i]))
}

fn push_merged(hits: &mut Vec<Hit>, hit: Hit) {
    if let Some(last) = hits.last_mut()
        && hit.start < last.end
    {
        // Overlapping values become one, named by the first.
        last.end = last.end.max(hit.end);
        last.open |= hit.open;
        last.matched = last.matched.min(hit.matched);
        return;
    }
    hits.push(hit);
}
