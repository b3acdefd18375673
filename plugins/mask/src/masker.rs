//! One compiled pass over a text for every enabled detector, and the replacement styles.

use std::ops::Range;

use hmac::{Hmac, KeyInit, Mac};
use regex_automata::meta::{self, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, Match, PatternID};
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
    /// Literals one of which every value contains or has within [`NEAR`] bytes of it. A
    /// detector with keywords runs only where one appears, and is compiled the first time one
    /// does; one without runs everywhere, in the combined pass.
    pub keywords: Vec<Keyword>,
}

/// An ASCII literal, matched in its exact case (`ghp_`) or in any (`password`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyword {
    pub text: String,
    pub any_case: bool,
    /// Counts only with no ASCII letter right before or after it (`SIN:`, not `using`).
    pub alone: bool,
}

/// How far (bytes) a keyword may lie from a value it confirms.
pub const NEAR: usize = 64;
/// How far before a keyword a value may begin (its own bytes before the keyword, then the
/// distance to it) and how far after the keyword it may end.
const REACH_BEFORE: usize = 320;
const REACH_AFTER: usize = 4096;

/// One regex of one detector.
#[derive(Clone, Debug)]
pub struct PatternSpec {
    pub detector: usize,
    pub regex: String,
    pub opens_block: bool,
    pub rescans: bool,
    /// A built-in pattern (tested to compile), so a keyword detector's may wait for its
    /// first keyword to be compiled. A policy's own patterns are compiled at load, so a bad
    /// one is refused there.
    pub builtin: bool,
}

#[derive(Clone, Copy)]
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

/// Patterns compiled into one automaton, searched leftmost-first.
struct Pass {
    regex: Regex,
    cache: meta::Cache,
    captures: Captures,
    /// Per pattern; `None` is the combined pass's keyword pattern.
    patterns: Vec<Option<PatternInfo>>,
}

/// A detector with keywords: its patterns, compiled when first needed.
struct KeywordDetector {
    specs: Vec<PatternSpec>,
    pass: Option<Pass>,
}

pub struct Masker {
    /// Every detector without keywords, and one pattern matching any keyword.
    combined: Pass,
    keyword_detectors: Vec<KeywordDetector>,
    /// Which keyword is which (the combined pass only says that one of them is there), and
    /// what each wakes.
    keywords: Option<Keywords>,
    detectors: Vec<Detector>,
    block_close: Regex,
    /// Per scan: keyword occurrences (start, end, keyword) and keyword detectors' windows.
    occurrences: Vec<(usize, usize, usize)>,
    windows: Vec<(usize, Range<usize>)>,
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
    builder_with(Regex::config())
}

fn builder_with(config: meta::Config) -> meta::Builder {
    let mut builder = Regex::builder();
    builder
        // Bytes, not text: terminal output need not be UTF-8, and ASCII classes are enough.
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .configure(config.utf8_empty(false));
    builder
}

impl Pass {
    /// `keywords`, when given, becomes a last pattern matching any of them.
    fn compile(specs: &[&PatternSpec], keywords: Option<&[Keyword]>) -> Result<Pass, PatternError> {
        let mut sources: Vec<String> = specs.iter().map(|s| s.regex.clone()).collect();
        if let Some(words) = keywords {
            let escaped: Vec<String> = words
                .iter()
                .map(|w| match w.any_case {
                    true => format!("(?i:{})", literal(&w.text)),
                    false => literal(&w.text),
                })
                .collect();
            sources.push(escaped.join("|"));
        }
        // The combined pass starts with classes (digits, letters) that no literal prefilter
        // can skip ahead for, and extracting literals from hundreds of keywords in any case
        // costs milliseconds: it goes without one.
        let config = Regex::config().auto_prefilter(keywords.is_none());
        let regex = builder_with(config).build_many(&sources).map_err(|e| {
            let spec = e.pattern().and_then(|p| specs.get(p.as_usize()));
            PatternError {
                detector: spec.map_or(0, |s| s.detector),
                message: match spec {
                    Some(spec) => sluice_plugin_sdk::pattern_error(&spec.regex, &e),
                    None => format!("invalid pattern: {e}"),
                },
            }
        })?;
        let group_info = regex.group_info().clone();
        let mut patterns: Vec<Option<PatternInfo>> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                Some(PatternInfo {
                    detector: spec.detector,
                    opens_block: spec.opens_block,
                    rescans: spec.rescans,
                    grouped: group_info.group_len(PatternID::must(i)) > 1,
                })
            })
            .collect();
        if keywords.is_some() {
            patterns.push(None);
        }
        // A pattern that matches nothing at all would mask every position. (Built-in
        // patterns are tested for this.)
        for (i, spec) in specs.iter().enumerate().filter(|(_, s)| !s.builtin) {
            let empty = Input::new(b"").anchored(Anchored::Pattern(PatternID::must(i)));
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
        Ok(Pass {
            cache: regex.create_cache(),
            captures: regex.create_captures(),
            regex,
            patterns,
        })
    }

    /// Appends what it finds in `hay[range]` to `hits` (unmerged, left to right) and, for
    /// the combined pass, where a keyword may begin to `keywords_at`. Bytes outside `range`
    /// are context only (for `\b`).
    fn run(
        &mut self,
        hay: &[u8],
        range: Range<usize>,
        detectors: &[Detector],
        hits: &mut Vec<Hit>,
        mut keywords_at: Option<&mut Vec<Range<usize>>>,
        explain: bool,
    ) {
        let mut keyword_may_begin = |span: Range<usize>| {
            if let Some(at) = keywords_at.as_deref_mut() {
                at.push(span);
            }
        };
        let mut at = range.start;
        while at < range.end {
            let input = Input::new(hay).range(at..range.end);
            let Some(m) = self.regex.search_with(&mut self.cache, &input) else {
                break;
            };
            let Some(info) = self.patterns[m.pattern().as_usize()] else {
                // A keyword: which, and what it wakes, is sorted out after the pass.
                keyword_may_begin(m.start()..m.start() + 1);
                at = m.start() + 1;
                continue;
            };
            if info.opens_block {
                // Everything from here on belongs to the block until its close.
                hits.push(Hit {
                    start: m.start(),
                    end: hay.len(),
                    detector: info.detector,
                    open: true,
                    matched: m.start(),
                });
                break;
            }
            let (start, end) = if info.grouped {
                self.secret_span(hay, m)
            } else {
                (m.start(), m.end())
            };
            let accepted = match detectors[info.detector].validator {
                None => Some(end),
                Some(v) => longest_valid(v, &hay[start..end]).map(|n| start + n),
            };
            match accepted {
                Some(end) if end > start => {
                    hits.push(Hit {
                        start,
                        end,
                        detector: info.detector,
                        open: false,
                        matched: m.start().min(start),
                    });
                    // The combined pass jumps past the value: a keyword inside it is
                    // looked for there afterwards.
                    keyword_may_begin(m.start()..end);
                    at = if info.rescans {
                        start.max(m.start() + 1)
                    } else {
                        end
                    };
                }
                _ => {
                    if explain && let Some(v) = detectors[info.detector].validator {
                        let why = v.refusal(&hay[start..end]);
                        explain_refusal(&detectors[info.detector].name, start..end, why);
                    }
                    keyword_may_begin(m.start()..m.start() + 1);
                    at = m.start() + 1;
                }
            }
        }
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

/// `--explain`'s line for a candidate that was not masked.
fn explain_refusal(detector: &str, at: Range<usize>, why: &str) {
    sluice_plugin_sdk::log::debug(
        &format!(
            "{detector} candidate at bytes {}..{} not masked: {why}",
            at.start, at.end
        ),
        &[("detector", detector)],
    );
}

/// Every keyword detector's keywords, indexed by first byte: the combined pass says a keyword
/// begins somewhere, and this says which ones (a few comparisons per position).
struct Keywords {
    words: Vec<Keyword>,
    /// Per keyword: the keyword detectors it wakes.
    wakes: Vec<Vec<usize>>,
    /// Per first byte (lower case): the keywords that begin with it.
    by_first: Vec<Vec<usize>>,
}

impl Keywords {
    fn new(words: Vec<Keyword>, wakes: Vec<Vec<usize>>) -> Keywords {
        let mut by_first = vec![Vec::new(); 256];
        for (i, word) in words.iter().enumerate() {
            by_first[usize::from(word.text.as_bytes()[0].to_ascii_lowercase())].push(i);
        }
        Keywords {
            words,
            wakes,
            by_first,
        }
    }

    /// The keywords that begin in `starts` (and may run on past it), as (start, end, keyword),
    /// in their case when it matters and alone when they must be.
    fn in_text<'a>(
        &'a self,
        hay: &'a [u8],
        starts: Range<usize>,
    ) -> impl Iterator<Item = (usize, usize, usize)> + 'a {
        let letter = |i: usize| hay.get(i).is_some_and(u8::is_ascii_alphabetic);
        starts.flat_map(move |at| {
            self.by_first[usize::from(hay[at].to_ascii_lowercase())]
                .iter()
                .filter_map(move |&word| {
                    let keyword = &self.words[word];
                    let end = at + keyword.text.len();
                    let text = hay.get(at..end)?;
                    let matches = match keyword.any_case {
                        true => text.eq_ignore_ascii_case(keyword.text.as_bytes()),
                        false => text == keyword.text.as_bytes(),
                    };
                    let inside_a_word =
                        keyword.alone && ((at > 0 && letter(at - 1)) || letter(end));
                    (matches && !inside_a_word).then_some((at, end, word))
                })
        })
    }
}

/// `word` as a regex matching exactly it.
fn literal(word: &str) -> String {
    word.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!(r"\x{b:02x}")
            }
        })
        .collect()
}

impl Masker {
    pub fn new(detectors: Vec<Detector>, specs: &[PatternSpec]) -> Result<Masker, PatternError> {
        let everywhere: Vec<&PatternSpec> = specs
            .iter()
            .filter(|s| detectors[s.detector].keywords.is_empty())
            .collect();
        // Keyword detectors, in priority order; each keyword with the detectors it wakes.
        let mut keyword_detectors: Vec<KeywordDetector> = Vec::new();
        let mut words: Vec<Keyword> = Vec::new();
        let mut wakes: Vec<Vec<usize>> = Vec::new();
        for (d, detector) in detectors.iter().enumerate() {
            if detector.keywords.is_empty() {
                continue;
            }
            let own: Vec<PatternSpec> = specs.iter().filter(|s| s.detector == d).cloned().collect();
            // A policy's own patterns are compiled now, so a bad one is refused at load.
            let pass = if own.iter().all(|s| s.builtin) {
                None
            } else {
                Some(Pass::compile(&own.iter().collect::<Vec<_>>(), None)?)
            };
            let k = keyword_detectors.len();
            keyword_detectors.push(KeywordDetector { specs: own, pass });
            for word in &detector.keywords {
                if word.text.is_empty() || !word.text.is_ascii() {
                    return Err(PatternError {
                        detector: d,
                        message: format!(
                            "keyword {:?}: keywords are non-empty ASCII words",
                            word.text
                        ),
                    });
                }
                match words.iter().position(|w| w == word) {
                    Some(i) => wakes[i].push(k),
                    None => {
                        words.push(word.clone());
                        wakes.push(vec![k]);
                    }
                }
            }
        }
        let combined = Pass::compile(&everywhere, (!words.is_empty()).then_some(&words[..]))?;
        let keywords = (!words.is_empty()).then(|| Keywords::new(words, wakes));
        let block_close = builder()
            .build(crate::detectors::BLOCK_CLOSE)
            .map_err(|e| PatternError {
                detector: 0,
                message: e.to_string(),
            })?;
        Ok(Masker {
            combined,
            keyword_detectors,
            keywords,
            detectors,
            block_close,
            occurrences: Vec::new(),
            windows: Vec::new(),
            explain: false,
        })
    }

    /// How many keyword detectors have been compiled so far (they are compiled on first use).
    pub fn compiled_keyword_detectors(&self) -> usize {
        self.keyword_detectors
            .iter()
            .filter(|k| k.pass.is_some())
            .count()
    }

    /// Appends the values to mask in `hay[from..]` to `hits`, left to right, overlapping
    /// ones merged. Bytes before `from` are context only (for `\b`).
    pub fn scan(&mut self, hay: &[u8], from: usize, hits: &mut Vec<Hit>) {
        self.scan_labelled(hay, from, b"", hits);
    }

    /// [`Masker::scan`] of a value that has a name (a column's, a JSON key's): a keyword
    /// in the name confirms values anywhere in the text (`111222333` in column `bsn`).
    pub fn scan_labelled(&mut self, hay: &[u8], from: usize, label: &[u8], hits: &mut Vec<Hit>) {
        let mut found = Vec::new();
        let mut keywords_at = Vec::new();
        self.combined.run(
            hay,
            from..hay.len(),
            &self.detectors,
            &mut found,
            Some(&mut keywords_at),
            self.explain,
        );
        if self.keywords.is_some() && (!keywords_at.is_empty() || !label.is_empty()) {
            self.run_keyword_detectors(hay, from, &keywords_at, label, &mut found);
        }
        // Values of different passes may overlap: merged, named by the one that starts first
        // (on a tie, the detector listed first).
        found.sort_by_key(|h| (h.start, h.detector));
        for hit in found {
            push_merged(hits, hit);
        }
    }

    /// Runs each keyword detector woken by a keyword in `ranges` around that keyword, and
    /// each woken by one in `label` over the whole text.
    fn run_keyword_detectors(
        &mut self,
        hay: &[u8],
        from: usize,
        ranges: &[Range<usize>],
        label: &[u8],
        found: &mut Vec<Hit>,
    ) {
        let Some(keywords) = &self.keywords else {
            return;
        };
        let wakes = &keywords.wakes;
        self.occurrences.clear();
        self.windows.clear();
        for range in ranges {
            for (at, end, word) in keywords.in_text(hay, range.clone()) {
                self.occurrences.push((at, end, word));
                let window =
                    at.saturating_sub(REACH_BEFORE).max(from)..(end + REACH_AFTER).min(hay.len());
                for &k in &wakes[word] {
                    self.windows.push((k, window.clone()));
                }
            }
        }
        for (_, _, word) in keywords.in_text(label, 0..label.len()) {
            // Near every value of the text.
            self.occurrences.push((0, hay.len(), word));
            for &k in &wakes[word] {
                self.windows.push((k, from..hay.len()));
            }
        }
        self.windows.sort_by_key(|(k, window)| (*k, window.start));
        let mut i = 0;
        while i < self.windows.len() {
            let (k, mut window) = self.windows[i].clone();
            i += 1;
            // Overlapping windows of one detector are searched once.
            while let Some((next, w)) = self.windows.get(i)
                && *next == k
                && w.start <= window.end
            {
                window.end = window.end.max(w.end);
                i += 1;
            }
            let detector = &mut self.keyword_detectors[k];
            if detector.pass.is_none() {
                let specs: Vec<&PatternSpec> = detector.specs.iter().collect();
                // Built-in patterns compile (a test compiles every one); should one not,
                // the log says so rather than the detector going quiet.
                detector.pass = Pass::compile(&specs, None)
                    .inspect_err(|e| {
                        sluice_plugin_sdk::log::error(&e.message, &[]);
                    })
                    .ok();
            }
            let Some(pass) = detector.pass.as_mut() else {
                continue;
            };
            let before = found.len();
            pass.run(hay, window, &self.detectors, found, None, self.explain);
            // Keep only values with one of their detector's keywords in or near them.
            let mut kept = before;
            for h in before..found.len() {
                let hit = found[h];
                let near = self.occurrences.iter().any(|&(at, end, word)| {
                    wakes[word].contains(&k) && at <= hit.end + NEAR && end + NEAR >= hit.matched
                });
                if near {
                    found[kept] = hit;
                    kept += 1;
                } else if self.explain {
                    explain_refusal(
                        &self.detectors[hit.detector].name,
                        hit.start..hit.end,
                        &format!("none of its keywords within {NEAR} bytes"),
                    );
                }
            }
            found.truncate(kept);
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
        self.mask_labelled(text, b"")
    }

    /// [`Masker::mask`] of a value that has a name: a column's, a JSON key's.
    pub fn mask_labelled(&mut self, text: &[u8], label: &[u8]) -> Option<Vec<u8>> {
        let mut hits = Vec::new();
        self.scan_labelled(text, 0, label, &mut hits);
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
