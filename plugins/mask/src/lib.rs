//! `mask`: finds card numbers, credentials and personal data in every frame and replaces them
//! before the client sees them and before they are recorded.
//!
//! ```toml
//! [plugins.mask]
//! source = "builtin:mask"
//! [plugins.mask.config]
//! detectors = ["default", "ipv4"]        # names, or "default" for the default set
//! style = "label"                        # label | fill | keep-last | pseudonym
//! keep_last = 4
//! pseudonym_key = "…"                    # needed by the pseudonym style
//! styles = { card = "keep-last" }        # per detector
//! columns = { "users.ssn" = "always", "orders.id" = "never" }
//! json = { "customer.ssn" = "always", "debug" = "never" }   # inside JSON values
//! [[plugins.mask.config.custom]]
//! name = "employee-id"
//! pattern = "EMP-[0-9]{6}"
//! keywords = ["employee", "EMP-"]        # optional: runs only in or near one of them
//! validator = "luhn"                     # optional: luhn | mod97 | entropy | entropy>=N
//! style = "fill"                         # optional
//! ```
//!
//! Target-to-client frames are replaced (the client and the record see the masked form).
//! Client-to-target frames reach the target unchanged (masking an `INSERT` would corrupt the
//! data) and are recorded masked. See `docs/masking.md` for every setting and the stream
//! bound.

mod detectors;
mod masker;
mod stream;

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_plugin_sdk::{
    CellFormat, Column, Config, Content, ContentKind, Direction, Filter, Frame, Interest,
    SessionInfo, Statement, ToolCall, ToolResult, Verdict,
};

pub use detectors::{BUILTINS, Group, Validator};
pub use masker::{Detector, Hit, Keyword, Masker, NEAR, PatternSpec, Style};
pub use stream::{Limits, Stream};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Detector names; `"default"` stands for every detector that is on by default, and
    /// `"secrets"`, `"pii"` and `"payment"` for every detector of that group.
    pub detectors: Option<Vec<String>>,
    pub style: Option<String>,
    pub keep_last: Option<usize>,
    pub pseudonym_key: Option<String>,
    #[serde(default)]
    pub styles: BTreeMap<String, String>,
    #[serde(default)]
    pub custom: Vec<CustomDetector>,
    /// `table.column`, `schema.table.column` or `column` -> `never`, `always`, or a style.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// The same for values inside JSON (MCP tool calls and results, JSON text cells): a key
    /// path such as `customer.ssn` (array positions left out), or a last key alone (`ssn`).
    #[serde(default)]
    pub json: BTreeMap<String, String>,
    pub directions: Option<Vec<String>>,
    pub kinds: Option<Vec<String>>,
    pub window_bytes: Option<usize>,
    pub max_hold_ms: Option<u64>,
    /// Log what was masked where (detector, byte range, style; never the value), for
    /// `sluice plugin run --explain`.
    #[serde(default)]
    pub explain: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    pub name: String,
    pub pattern: String,
    /// Words (any case) one of which is in or near every value; the detector runs only
    /// where one appears.
    #[serde(default)]
    pub keywords: Vec<String>,
    pub validator: Option<String>,
    pub style: Option<String>,
}

pub const DEFAULT_WINDOW: usize = 8 << 10;
pub const MAX_CARRY: usize = 64 << 10;
pub const DEFAULT_MAX_HOLD_MS: u64 = 1000;

/// What happens to a result cell.
#[derive(Clone, Debug)]
enum CellRule {
    Scan,
    Never,
    Always(Style),
}

#[derive(Clone, Copy, Default)]
struct Kinds {
    bytes: bool,
    line: bool,
    statement: bool,
    row: bool,
    /// MCP tool calls' arguments and results.
    tool: bool,
}

pub struct Mask {
    masker: Masker,
    limits: Limits,
    directions: [bool; 2],
    kinds: Kinds,
    columns: BTreeMap<String, CellRule>,
    json: BTreeMap<String, CellRule>,
    /// Per direction: the rule and format of each column of the current result.
    cells: [Vec<(String, CellRule, CellFormat)>; 2],
    /// Target-to-client bytes are held across chunks; the other way they cannot be (they
    /// must reach the target as typed), so each chunk is masked on its own for the record.
    output: Stream,
    /// Every enabled detector's patterns: nothing is masked in a text none of them matches.
    patterns: Vec<String>,
}

impl Mask {
    pub fn new(settings: Settings) -> Result<Mask, String> {
        let keep_last = settings.keep_last.unwrap_or(4);
        let key = settings.pseudonym_key.as_deref();
        let style_of = |name: &str, at: &str| parse_style(name, keep_last, key, at);
        let default_style = match &settings.style {
            Some(name) => style_of(name, "style")?,
            None => Style::Label,
        };

        let mut detectors = Vec::new();
        let mut specs = Vec::new();
        let names = settings.detectors.unwrap_or_else(|| vec!["default".into()]);
        let mut enabled: Vec<&'static detectors::Builtin> = Vec::new();
        for name in &names {
            if name == "default" {
                enabled.extend(BUILTINS.iter().filter(|b| b.on_by_default));
            } else if let Some(group) = Group::ALL.into_iter().find(|g| g.name() == name) {
                enabled.extend(BUILTINS.iter().filter(|b| b.group == group));
            } else {
                enabled.push(detectors::builtin(name).ok_or_else(|| {
                    format!(
                        "detectors: unknown detector {name:?} (known: {})",
                        detectors::names()
                    )
                })?);
            }
        }
        // In the built-ins' priority order, each once.
        for builtin in BUILTINS {
            if !enabled.iter().any(|b| b.name == builtin.name) {
                continue;
            }
            for pattern in builtin.patterns {
                specs.push(PatternSpec {
                    detector: detectors.len(),
                    regex: pattern.regex.into(),
                    opens_block: pattern.opens_block,
                    rescans: pattern.rescans,
                    builtin: true,
                });
            }
            let keyword = |text: &&str, any_case| Keyword {
                text: text.to_string(),
                any_case,
                alone: any_case && builtin.words_alone,
            };
            detectors.push(Detector {
                name: builtin.name.into(),
                validator: builtin.validator,
                style: default_style.clone(),
                keywords: (builtin.keywords.iter().map(|k| keyword(k, false)))
                    .chain(builtin.words.iter().map(|w| keyword(w, true)))
                    .collect(),
            });
        }
        for (i, custom) in settings.custom.iter().enumerate() {
            let at = format!("custom[{i}] ({:?})", custom.name);
            if custom.name.is_empty() || detectors.iter().any(|d| d.name == custom.name) {
                return Err(format!(
                    "{at}: the name must be non-empty and not a detector's already"
                ));
            }
            let validator = match &custom.validator {
                None => None,
                Some(v) => Some(Validator::from_name(v).ok_or_else(|| {
                    format!(
                        "{at}: unknown validator {v:?} (known: luhn, mod97, entropy, entropy>=N \
                         with N in bits per character, 0 to 8)"
                    )
                })?),
            };
            let style = match &custom.style {
                Some(s) => style_of(s, &format!("{at}.style"))?,
                None => default_style.clone(),
            };
            specs.push(PatternSpec {
                detector: detectors.len(),
                regex: custom.pattern.clone(),
                opens_block: false,
                rescans: false,
                builtin: false,
            });
            detectors.push(Detector {
                name: custom.name.clone(),
                validator,
                style,
                keywords: custom
                    .keywords
                    .iter()
                    .map(|k| Keyword {
                        text: k.clone(),
                        any_case: true,
                        alone: false,
                    })
                    .collect(),
            });
        }
        for (name, style) in &settings.styles {
            let at = format!("styles.{name}");
            let detector = detectors
                .iter_mut()
                .find(|d| &d.name == name)
                .ok_or_else(|| format!("{at}: no detector {name:?} is enabled"))?;
            detector.style = style_of(style, &at)?;
        }
        let patterns = specs.iter().map(|spec| spec.regex.clone()).collect();
        let custom_names: Vec<String> = detectors.iter().map(|d| d.name.clone()).collect();
        let masker = Masker::new(detectors, &specs).map_err(|e| {
            let name = &custom_names[e.detector];
            let index = settings.custom.iter().position(|c| &c.name == name);
            match index {
                Some(i) => format!("custom[{i}] ({name:?}): {}", e.message),
                None => format!("detector {name:?}: {}", e.message),
            }
        })?;

        let mut masker = masker;
        masker.explain = settings.explain;

        let rules = |map: &BTreeMap<String, String>, field: &str| {
            let mut rules = BTreeMap::new();
            for (key, rule) in map {
                let at = format!("{field}.{key:?}");
                let rule = match rule.as_str() {
                    "never" => CellRule::Never,
                    "always" => CellRule::Always(default_style.clone()),
                    style => CellRule::Always(style_of(style, &at).map_err(|_| {
                        format!(
                            "{at}: unknown rule {style:?} (use \"never\", \"always\", or a style: \
                             label, fill, keep-last, pseudonym)"
                        )
                    })?),
                };
                rules.insert(key.clone(), rule);
            }
            Ok::<_, String>(rules)
        };
        let columns = rules(&settings.columns, "columns")?;
        let json = rules(&settings.json, "json")?;

        let mut directions = [true, true];
        if let Some(list) = &settings.directions {
            directions = [false, false];
            for d in list {
                match d.as_str() {
                    "client-to-target" => directions[Direction::ClientToTarget as usize] = true,
                    "target-to-client" => directions[Direction::TargetToClient as usize] = true,
                    other => {
                        return Err(format!(
                            "directions: unknown direction {other:?} (known: client-to-target, \
                             target-to-client)"
                        ));
                    }
                }
            }
        }
        let mut kinds = Kinds {
            bytes: true,
            line: true,
            statement: true,
            row: true,
            tool: true,
        };
        if let Some(list) = &settings.kinds {
            kinds = Kinds::default();
            for k in list {
                match k.as_str() {
                    "bytes" => kinds.bytes = true,
                    "line" => kinds.line = true,
                    "statement" => kinds.statement = true,
                    "row" => kinds.row = true,
                    "tool" => kinds.tool = true,
                    other => {
                        return Err(format!(
                            "kinds: unknown frame kind {other:?} (known: bytes, line, statement, row, tool)"
                        ));
                    }
                }
            }
        }
        let window = settings.window_bytes.unwrap_or(DEFAULT_WINDOW);
        if !(64..=MAX_CARRY).contains(&window) {
            return Err(format!("window_bytes: must be between 64 and {MAX_CARRY}"));
        }
        Ok(Mask {
            masker,
            limits: Limits {
                window,
                max_carry: MAX_CARRY,
                max_hold_ms: settings.max_hold_ms.unwrap_or(DEFAULT_MAX_HOLD_MS),
            },
            directions,
            kinds,
            columns,
            json,
            cells: Default::default(),
            output: Stream::default(),
            patterns,
        })
    }

    /// The masker alone, for native use (benchmarks, tools).
    pub fn masker(&mut self) -> &mut Masker {
        &mut self.masker
    }

    /// The frame's content masked, or `None` when nothing in it needed masking.
    fn masked(&mut self, frame: &Frame) -> Option<Content> {
        let d = frame.direction as usize;
        match &frame.content {
            Content::Bytes(bytes) if self.kinds.bytes => {
                if frame.direction == Direction::TargetToClient {
                    self.output
                        .push(&mut self.masker, bytes, frame.timestamp_ms, self.limits)
                        .map(Content::Bytes)
                } else {
                    self.masker.mask(bytes).map(Content::Bytes)
                }
            }
            Content::Line(line) if self.kinds.line => self.mask_text(line, "").map(Content::Line),
            Content::Statement(s) if self.kinds.statement => {
                let text = self.mask_text(&s.text, "");
                let params: Vec<_> = s
                    .params
                    .iter()
                    .map(|p| p.as_deref().and_then(|p| self.masker.mask(p)))
                    .collect();
                (text.is_some() || params.iter().any(Option::is_some)).then(|| {
                    Content::Statement(Statement {
                        text: text.unwrap_or_else(|| s.text.clone()),
                        params: s
                            .params
                            .iter()
                            .zip(params)
                            .map(|(old, new)| new.map(Some).unwrap_or_else(|| old.clone()))
                            .collect(),
                    })
                })
            }
            Content::Columns(columns) if self.kinds.row => {
                self.cells[d] = columns.iter().map(|c| self.cell_rule(c)).collect();
                None
            }
            Content::Row(cells) if self.kinds.row => self.mask_row(d, cells).map(Content::Row),
            Content::ToolCall(call) if self.kinds.tool => {
                self.mask_json(&call.arguments).map(|arguments| {
                    Content::ToolCall(ToolCall {
                        arguments,
                        ..call.clone()
                    })
                })
            }
            Content::ToolResult(result) if self.kinds.tool => {
                self.mask_json(&result.output).map(|output| {
                    Content::ToolResult(ToolResult {
                        output,
                        ..result.clone()
                    })
                })
            }
            _ => None,
        }
    }

    /// An MCP call's arguments or result: every string (and number) in the JSON masked on its
    /// own, so the JSON stays valid whatever the replacement; text that is not JSON is masked
    /// as text.
    fn mask_json(&mut self, text: &str) -> Option<String> {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text) else {
            return self.mask_text(text, "");
        };
        self.mask_value(&mut value, "", "")
            .then(|| value.to_string())
    }

    /// `path` is the keys down to `value` joined by dots; `key` the last of them, which also
    /// confirms what a detector finds in it (`"bsn": "111222333"`).
    fn mask_value(&mut self, value: &mut serde_json::Value, path: &str, key: &str) -> bool {
        use serde_json::Value;
        let rule = self.json.get(path).or_else(|| self.json.get(key)).cloned();
        match (rule, &mut *value) {
            (Some(CellRule::Never), _) => return false,
            (_, Value::Array(items)) => {
                return items.iter_mut().fold(false, |changed, item| {
                    self.mask_value(item, path, key) | changed
                });
            }
            (_, Value::Object(fields)) => {
                return fields.iter_mut().fold(false, |changed, (name, item)| {
                    let inner = match path {
                        "" => name.clone(),
                        _ => format!("{path}.{name}"),
                    };
                    self.mask_value(item, &inner, name) | changed
                });
            }
            (_, Value::Bool(_) | Value::Null) => return false,
            (Some(CellRule::Always(style)), _) => {
                let text = match &*value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if self.masker.explain {
                    sluice_plugin_sdk::log::debug(
                        &format!("JSON {path}: always masked, as {}", style.name()),
                        &[("path", path)],
                    );
                }
                let mut out = Vec::new();
                style.render(key, text.as_bytes(), false, &mut out);
                *value = Value::String(String::from_utf8_lossy(&out).into_owned());
                return true;
            }
            (Some(CellRule::Scan) | None, _) => {}
        }
        match value {
            Value::String(s) => match self.mask_text(s, key) {
                Some(masked) => {
                    *s = masked;
                    true
                }
                None => false,
            },
            // A card number sent as a number: masked, it becomes a string.
            Value::Number(n) => match self.mask_text(&n.to_string(), key) {
                Some(masked) => {
                    *value = Value::String(masked);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    /// `label`: the name the text goes by (a JSON key), which may confirm what is in it.
    fn mask_text(&mut self, text: &str, label: &str) -> Option<String> {
        self.masker
            .mask_labelled(text.as_bytes(), label.as_bytes())
            .map(|b| {
                String::from_utf8(b)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            })
    }

    fn json_rules_apply(&self, cell: &[u8]) -> bool {
        let first = cell.iter().find(|b| !b.is_ascii_whitespace());
        !self.json.is_empty() && matches!(first, Some(b'{' | b'['))
    }

    /// A text cell holding a JSON object or array (a `jsonb` column) when `json` rules are
    /// set: masked value by value, so those rules apply inside it. `None`: not JSON, or
    /// nothing in it to mask (the cell is then scanned as text).
    fn json_cell(&mut self, cell: &[u8], column: &str) -> Option<Option<Vec<u8>>> {
        let mut value = serde_json::from_slice::<serde_json::Value>(cell).ok()?;
        self.mask_value(&mut value, "", column)
            .then(|| Some(value.to_string().into_bytes()))
    }

    fn cell_rule(&self, column: &Column) -> (String, CellRule, CellFormat) {
        let mut keys = Vec::new();
        if let Some(table) = &column.table {
            keys.push(format!("{table}.{}", column.name));
            if let Some((_schema, bare)) = table.rsplit_once('.') {
                keys.push(format!("{bare}.{}", column.name));
            }
        }
        keys.push(column.name.clone());
        let rule = keys
            .iter()
            .find_map(|k| self.columns.get(k))
            .cloned()
            .unwrap_or(CellRule::Scan);
        (column.name.clone(), rule, column.format)
    }

    /// A binary cell cannot be masked in place: one a rule targets, or in which a detector
    /// finds a value, becomes NULL.
    fn mask_row(&mut self, d: usize, cells: &[Option<Vec<u8>>]) -> Option<Vec<Option<Vec<u8>>>> {
        let mut changed = false;
        let mut out = Vec::with_capacity(cells.len());
        for (i, cell) in cells.iter().enumerate() {
            let Some(value) = cell else {
                out.push(None);
                continue;
            };
            // Borrowed, not cloned: this runs for every cell of every row.
            let (name, rule, format) = match self.cells[d].get(i) {
                Some((name, rule, format)) => (name.as_str(), rule, *format),
                None => ("", &CellRule::Scan, CellFormat::Text),
            };
            let new = match (rule, format) {
                (CellRule::Never, _) => None,
                (CellRule::Always(_), CellFormat::Binary) => Some(None),
                (CellRule::Always(style), CellFormat::Text) => {
                    if self.masker.explain {
                        sluice_plugin_sdk::log::debug(
                            &format!(
                                "column {name} (cell {i}): always masked, as {}",
                                style.name()
                            ),
                            &[("column", name)],
                        );
                    }
                    let mut v = Vec::new();
                    style.render(name, value, false, &mut v);
                    Some(Some(v))
                }
                (CellRule::Scan, CellFormat::Binary) => self
                    .masker
                    .mask_labelled(value, name.as_bytes())
                    .map(|_| None),
                (CellRule::Scan, CellFormat::Text) if self.json_rules_apply(value) => {
                    let name = name.to_owned();
                    self.json_cell(value, &name)
                        .or_else(|| self.masker.mask_labelled(value, name.as_bytes()).map(Some))
                }
                (CellRule::Scan, CellFormat::Text) => {
                    self.masker.mask_labelled(value, name.as_bytes()).map(Some)
                }
            };
            match new {
                Some(new) => {
                    changed = true;
                    out.push(new);
                }
                None => out.push(cell.clone()),
            }
        }
        changed.then_some(out)
    }
}

fn parse_style(name: &str, keep_last: usize, key: Option<&str>, at: &str) -> Result<Style, String> {
    match name {
        "label" => Ok(Style::Label),
        "fill" => Ok(Style::Fill),
        "keep-last" => Ok(Style::KeepLast(keep_last)),
        "pseudonym" => match key {
            Some(key) if key.len() >= 16 => Ok(Style::Pseudonym(key.as_bytes().to_vec())),
            _ => Err(format!(
                "{at}: the pseudonym style needs `pseudonym_key`, a secret of at least 16 characters"
            )),
        },
        other => Err(format!(
            "{at}: unknown style {other:?} (known: label, fill, keep-last, pseudonym)"
        )),
    }
}

impl Filter for Mask {
    fn init(config: &Config, _session: &SessionInfo) -> Result<Self, String> {
        Mask::new(config.parse()?)
    }

    /// Every frame, with a prescreen: a line, a statement or (without rules that mask a
    /// cell whatever it holds) a row reaches the masker only when one of its detectors'
    /// patterns matches it, since a value is masked only where its pattern matches. Columns
    /// set up the rows after them and always pass: prescreened, they reach it just before
    /// the first of their rows that does. Bytes are held across chunks, and tool calls are
    /// JSON whose escapes hide what a value reads as: those always reach it.
    fn interest(&self) -> Interest {
        let mut kinds = vec![
            ContentKind::Line,
            ContentKind::Statement,
            ContentKind::Columns,
        ];
        let always = |rules: &BTreeMap<String, CellRule>| {
            rules.values().any(|r| matches!(r, CellRule::Always(_)))
        };
        // A JSON cell is masked value by value, after its escapes are read.
        if !always(&self.columns) && self.json.is_empty() {
            kinds.push(ContentKind::Row);
        }
        Interest::all().prescreen(&kinds, self.patterns.iter().cloned())
    }

    fn on_frame(&mut self, frame: &Frame) -> Verdict {
        if !self.directions[frame.direction as usize] {
            return Verdict::pass();
        }
        match (self.masked(frame), frame.direction) {
            (None, _) => Verdict::pass(),
            (Some(content), Direction::TargetToClient) => Verdict::replace(content),
            // The target gets what the user sent; the record gets it masked.
            (Some(content), Direction::ClientToTarget) => Verdict::pass().record_as(content),
        }
    }

    fn flush(&mut self, direction: Direction) -> Option<Content> {
        if direction != Direction::TargetToClient || self.output.held() == 0 {
            return None;
        }
        Some(Content::Bytes(self.output.flush(&mut self.masker)))
    }
}

sluice_plugin_sdk::export_filter!(Mask);
