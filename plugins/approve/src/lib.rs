//! `approve`: the gate. It reads each statement or command line a client sends and holds the
//! risky ones for review (the gateway asks reviewers and lets the frame through only when
//! approved) or denies them outright.
//!
//! ```toml
//! [plugins.sql-gate]
//! source = "builtin:approve"
//! [plugins.sql-gate.config]
//! rules = ["sql"]                          # "sql", "shell", or single rule names
//! action = "hold"                          # for every rule, unless `actions` says otherwise
//! actions = { truncate = "deny", alter = "off" }
//! [[plugins.sql-gate.config.custom]]
//! name = "payroll"
//! pattern = "(?i)\\bpayroll\\b"            # over the normalized statement or the command
//! action = "hold"
//! reason = "touches payroll"
//! ```
//!
//! Rules: `sql.rs` and `shell.rs`; every setting: `docs/approvals.md`.

pub mod shell;
pub mod sql;

use std::collections::BTreeMap;

use regex_automata::meta::Regex;
use regex_automata::util::syntax;
use serde::Deserialize;
use sluice_plugin_sdk::{
    Config, Content, ContentKind, Direction, Filter, Frame, Interest, SessionInfo, Verdict,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub rules: Vec<String>,
    pub action: Option<String>,
    #[serde(default)]
    pub actions: BTreeMap<String, String>,
    #[serde(default)]
    pub custom: Vec<CustomRule>,
    /// Rules for MCP tool calls, by tool name and argument values.
    #[serde(default)]
    pub tools: Vec<ToolRule>,
    /// Log which rule matched which statement or command, and what it does (never the
    /// text), for `sluice plugin run --explain`.
    #[serde(default)]
    pub explain: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    pub name: String,
    pub pattern: String,
    pub action: Option<String>,
    pub reason: Option<String>,
    /// `sql` (matched per statement, normalized) or `shell` (per simple command); needed
    /// only when both sets are on.
    pub on: Option<String>,
}

/// A rule for MCP tool calls: the tool (`*`: any), and conditions on its arguments that
/// must all hold. An argument that is a list matches when one of its items does.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRule {
    pub tool: String,
    /// Argument name -> a pattern its value matches (a string as it is, anything else as JSON).
    #[serde(default)]
    pub arguments: BTreeMap<String, String>,
    /// Argument name -> folders: the value, a path with `.` and `..` resolved, is one of
    /// them or inside one. A relative path counts as inside (where the server resolves it is
    /// not known here).
    #[serde(default)]
    pub under: BTreeMap<String, Vec<String>>,
    pub action: Option<String>,
    pub reason: Option<String>,
}

struct ToolGate {
    tool: String,
    arguments: Vec<(String, Regex)>,
    under: Vec<(String, Vec<String>)>,
    action: Action,
    reason: String,
}

impl ToolGate {
    fn matches(&self, tool: &str, arguments: &serde_json::Value) -> bool {
        let each = |name: &str, test: &dyn Fn(&serde_json::Value) -> bool| match arguments.get(name)
        {
            Some(serde_json::Value::Array(items)) => items.iter().any(test),
            Some(value) => test(value),
            None => false,
        };
        (self.tool == "*" || self.tool == tool)
            && self.arguments.iter().all(|(name, regex)| {
                each(name, &|v| match v {
                    serde_json::Value::String(s) => regex.is_match(s),
                    other => regex.is_match(&other.to_string()),
                })
            })
            && self.under.iter().all(|(name, folders)| {
                each(name, &|v| {
                    v.as_str()
                        .is_some_and(|path| folders.iter().any(|f| inside(path, f)))
                })
            })
    }
}

/// Whether `path` (resolved lexically) is `folder` or inside it; a relative path is.
fn inside(path: &str, folder: &str) -> bool {
    if !path.starts_with('/') {
        return true;
    }
    // Segment by segment: `/etcetera` is not inside `/etc`.
    resolved(path).starts_with(&resolved(folder))
}

/// An absolute path's segments with `.`, `..` and empty ones resolved away.
fn resolved(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Hold,
    Deny,
    Off,
}

fn action(text: &str, at: &str) -> Result<Action, String> {
    match text {
        "hold" => Ok(Action::Hold),
        "deny" => Ok(Action::Deny),
        "off" => Ok(Action::Off),
        other => Err(format!(
            "{at}: unknown action `{other}` (hold, deny or off)"
        )),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Language {
    Sql,
    Shell,
}

struct Custom {
    name: String,
    regex: Regex,
    action: Action,
    reason: String,
    on: Language,
}

pub struct Gate {
    sql: bool,
    shell: bool,
    tools: Vec<ToolGate>,
    /// Built-in rule -> action; rules not listed are off.
    actions: BTreeMap<&'static str, Action>,
    /// The verbs of the built-in SQL rules whose action is not `off`.
    verbs_on: sql::Verbs,
    custom: Vec<Custom>,
    explain: bool,
}

impl Gate {
    pub fn new(settings: Settings) -> Result<Gate, String> {
        let default = action(settings.action.as_deref().unwrap_or("hold"), "action")?;
        let mut actions = BTreeMap::new();
        let (mut sql, mut shell) = (false, false);
        for name in &settings.rules {
            let set: Vec<&'static str> = match name.as_str() {
                "sql" => {
                    sql = true;
                    sql::RULES.iter().map(|r| r.0).collect()
                }
                "shell" => {
                    shell = true;
                    shell::RULES.iter().map(|r| r.0).collect()
                }
                one => {
                    let rule = sql::RULES
                        .iter()
                        .map(|r| (r.0, true))
                        .chain(shell::RULES.iter().map(|r| (r.0, false)))
                        .find(|(r, _)| *r == one)
                        .ok_or_else(|| {
                            format!(
                                "rules: unknown rule `{one}` (sets: sql, shell; rules: {})",
                                all_rules().join(", ")
                            )
                        })?;
                    if rule.1 {
                        sql = true
                    } else {
                        shell = true
                    }
                    vec![rule.0]
                }
            };
            for rule in set {
                actions.insert(rule, default);
            }
        }
        for (rule, text) in &settings.actions {
            let known = all_rules().into_iter().find(|r| r == rule).ok_or_else(|| {
                format!(
                    "actions: unknown rule `{rule}` ({})",
                    all_rules().join(", ")
                )
            })?;
            if !actions.contains_key(known) {
                return Err(format!(
                    "actions.{rule}: the rule is not on; add it (or its set) to `rules`"
                ));
            }
            actions.insert(known, action(text, &format!("actions.{rule}"))?);
        }
        let mut custom = Vec::new();
        for (i, c) in settings.custom.into_iter().enumerate() {
            let at = format!("custom[{i}] ({:?})", c.name);
            let on = match (c.on.as_deref(), sql, shell) {
                (Some("sql"), ..) => Language::Sql,
                (Some("shell"), ..) => Language::Shell,
                (Some(other), ..) => {
                    return Err(format!("{at}: `on` is sql or shell, not `{other}`"));
                }
                (None, true, false) => Language::Sql,
                (None, false, true) => Language::Shell,
                (None, ..) => return Err(format!("{at}: say `on = \"sql\"` or `on = \"shell\"`")),
            };
            let regex = Regex::builder()
                .syntax(syntax::Config::new().unicode(false).utf8(false))
                .build(&c.pattern)
                .map_err(|e| format!("{at}: invalid pattern: {e}"))?;
            custom.push(Custom {
                name: c.name.clone(),
                action: action(c.action.as_deref().unwrap_or("hold"), &at)?,
                reason: c
                    .reason
                    .unwrap_or_else(|| format!("matches rule `{}`", c.name)),
                regex,
                on,
            });
            match on {
                Language::Sql => sql = true,
                Language::Shell => shell = true,
            }
        }
        let mut tools = Vec::new();
        for (i, rule) in settings.tools.into_iter().enumerate() {
            let at = format!("tools[{i}] ({:?})", rule.tool);
            let mut arguments = Vec::new();
            for (name, pattern) in rule.arguments {
                let regex = Regex::builder()
                    .syntax(syntax::Config::new().unicode(false).utf8(false))
                    .build(&pattern)
                    .map_err(|e| format!("{at}: arguments.{name}: invalid pattern: {e}"))?;
                arguments.push((name, regex));
            }
            for (name, folders) in &rule.under {
                if let Some(f) = folders.iter().find(|f| !f.starts_with('/')) {
                    return Err(format!("{at}: under.{name}: `{f}` is not an absolute path"));
                }
            }
            tools.push(ToolGate {
                reason: rule
                    .reason
                    .unwrap_or_else(|| format!("calls `{}`", rule.tool)),
                action: action(rule.action.as_deref().unwrap_or("hold"), &at)?,
                tool: rule.tool,
                arguments,
                under: rule.under.into_iter().collect(),
            });
        }
        if !sql && !shell && tools.is_empty() {
            return Err(
                "nothing to check: set `rules` (sql, shell), or add `custom` or `tools` rules"
                    .into(),
            );
        }
        let rules_on: Vec<_> = actions
            .iter()
            .filter(|(_, a)| **a != Action::Off)
            .map(|(rule, _)| *rule)
            .collect();
        let verbs_on = sql::Verbs::of(&rules_on);
        Ok(Gate {
            sql,
            shell,
            tools,
            verbs_on,
            actions,
            custom,
            explain: settings.explain,
        })
    }

    /// What a statement or a line must contain for [`Gate::check`] to find anything in it,
    /// when that can be said natively: with SQL rules alone, one of their verbs (a keyword
    /// is an unquoted word, spelled out). Shell rules read words after the shell's quoting
    /// (`r''m` is `rm`) and custom patterns may match anything, so then there is none.
    fn prescreen(&self) -> Option<Vec<String>> {
        let sql_only =
            !self.shell && !self.has_custom(Language::Sql) && !self.has_custom(Language::Shell);
        sql_only.then(|| self.verbs_on.patterns())
    }

    /// What to do with `text`, a query or a command line: every hit with its action.
    pub fn check(&self, text: &str) -> Vec<(Action, String)> {
        let mut found = Vec::new();
        if self.sql && (self.has_custom(Language::Sql) || self.verbs_on.mentioned_in(text)) {
            match sql::statements(text) {
                Ok(statements) => {
                    for (i, s) in statements.iter().enumerate() {
                        let before = found.len();
                        for hit in s.hits() {
                            self.explain(
                                &format!("statement {}", i + 1),
                                hit.rule,
                                self.action_of(hit.rule),
                                &hit.reason,
                            );
                            found.push((self.action_of(hit.rule), hit.reason));
                        }
                        self.custom_hits(Language::Sql, &s.normalized, &mut found);
                        if found.len() == before {
                            self.explain(
                                &format!("statement {}", i + 1),
                                "-",
                                Action::Off,
                                "no rule matched",
                            );
                        }
                    }
                }
                // Unreadable SQL (an unterminated literal) cannot be judged: a person must.
                Err(e) => found.push((Action::Hold, format!("the statement cannot be read ({e})"))),
            }
        }
        if self.shell {
            for (i, command) in shell::commands(text).into_iter().enumerate() {
                let before = found.len();
                for hit in command.hits() {
                    self.explain(
                        &format!("command {}", i + 1),
                        hit.rule,
                        self.action_of(hit.rule),
                        &hit.reason,
                    );
                    found.push((self.action_of(hit.rule), hit.reason));
                }
                self.custom_hits(Language::Shell, &command.words.join(" "), &mut found);
                if found.len() == before {
                    self.explain(
                        &format!("command {}", i + 1),
                        "-",
                        Action::Off,
                        "no rule matched",
                    );
                }
            }
        }
        found.retain(|(a, _)| *a != Action::Off);
        found.dedup();
        found
    }

    fn has_custom(&self, on: Language) -> bool {
        self.custom.iter().any(|c| c.on == on)
    }

    /// With `explain`, logs a rule's match on a statement or command (by position).
    fn explain(&self, at: &str, rule: &str, action: Action, reason: &str) {
        if self.explain {
            let does = match action {
                Action::Hold => "hold",
                Action::Deny => "deny",
                Action::Off => "nothing (off)",
            };
            let line = match rule {
                "-" => format!("{at}: no rule matched"),
                _ => format!("{at}: rule {rule} -> {does}: {reason}"),
            };
            // Debug: the gateway's log shows it only when asked (SLUICE_LOG=debug).
            sluice_plugin_sdk::log::debug(&line, &[("rule", rule)]);
        }
    }

    fn action_of(&self, rule: &str) -> Action {
        self.actions.get(rule).copied().unwrap_or(Action::Off)
    }

    fn custom_hits(&self, on: Language, text: &str, found: &mut Vec<(Action, String)>) {
        for c in self.custom.iter().filter(|c| c.on == on) {
            if c.regex.is_match(text) {
                self.explain("custom rule", &c.name, c.action, &c.reason);
                found.push((c.action, c.reason.clone()));
            }
        }
    }

    pub fn verdict(&self, text: &str) -> Verdict {
        verdict_of(self.check(text))
    }

    /// What to do with an MCP tool call: the action of every rule it matches. Arguments that
    /// are not a JSON object cannot be judged by argument rules: a person must.
    pub fn tool_verdict(&self, tool: &str, arguments: &str) -> Verdict {
        let parsed = serde_json::from_str::<serde_json::Value>(arguments)
            .ok()
            .filter(serde_json::Value::is_object);
        let mut found = Vec::new();
        for rule in self
            .tools
            .iter()
            .filter(|r| r.tool == "*" || r.tool == tool)
        {
            match &parsed {
                Some(arguments) if rule.matches(tool, arguments) => {
                    self.explain("tool call", &rule.tool, rule.action, &rule.reason);
                    found.push((rule.action, rule.reason.clone()));
                }
                Some(_) => {}
                None if rule.arguments.is_empty() && rule.under.is_empty() => {
                    found.push((rule.action, rule.reason.clone()));
                }
                None => found.push((
                    Action::Hold,
                    "the call's arguments cannot be read as a JSON object".into(),
                )),
            }
        }
        found.retain(|(a, _)| *a != Action::Off);
        found.dedup();
        verdict_of(found)
    }
}

/// Deny if any hit denies, else hold if any holds, else pass.
fn verdict_of(found: Vec<(Action, String)>) -> Verdict {
    let reasons = |a: Action| {
        let r: Vec<_> = found
            .iter()
            .filter(|(x, _)| *x == a)
            .map(|(_, r)| r.as_str())
            .collect();
        r.join("; ")
    };
    if found.iter().any(|(a, _)| *a == Action::Deny) {
        Verdict::deny(reasons(Action::Deny))
    } else if found.is_empty() {
        Verdict::pass()
    } else {
        Verdict::hold(reasons(Action::Hold))
    }
}

fn all_rules() -> Vec<&'static str> {
    sql::RULES.iter().chain(shell::RULES).map(|r| r.0).collect()
}

impl Filter for Gate {
    fn init(config: &Config, _session: &SessionInfo) -> Result<Self, String> {
        Gate::new(config.parse()?)
    }

    /// Only what the client sends is judged: statements (PostgreSQL, `exec` scripts), lines
    /// (terminals) and MCP tool calls. Output, rows and raw bytes pass without a call.
    fn interest(&self) -> Interest {
        let judged = [
            ContentKind::Statement,
            ContentKind::Line,
            ContentKind::ToolCall,
        ];
        let interest = Interest::only(Direction::ClientToTarget, &judged);
        match self.prescreen() {
            Some(patterns) => {
                interest.prescreen(&[ContentKind::Statement, ContentKind::Line], patterns)
            }
            None => interest,
        }
    }

    fn on_frame(&mut self, frame: &Frame) -> Verdict {
        if frame.direction != Direction::ClientToTarget {
            return Verdict::pass();
        }
        match &frame.content {
            Content::Statement(s) => self.verdict(&s.text),
            Content::Line(line) => self.verdict(line),
            Content::ToolCall(call) => self.tool_verdict(&call.tool, &call.arguments),
            _ => Verdict::pass(),
        }
    }
}

sluice_plugin_sdk::export_filter!(Gate);

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(toml_rules: &str) -> Result<Gate, String> {
        let settings: Settings = serde_json::from_str(toml_rules).map_err(|e| e.to_string())?;
        Gate::new(settings)
    }

    fn outcome(v: &Verdict) -> String {
        format!("{:?}", v.action)
    }

    #[test]
    fn holds_denies_and_passes() {
        let g =
            gate(r#"{"rules": ["sql"], "actions": {"truncate": "deny", "alter": "off"}}"#).unwrap();
        assert_eq!(
            outcome(&g.verdict("DROP TABLE t")),
            "Hold(\"DROP statement\")"
        );
        assert_eq!(
            outcome(&g.verdict("truncate t")),
            "Deny(\"TRUNCATE statement\")"
        );
        assert_eq!(
            outcome(&g.verdict("DROP TABLE a; TRUNCATE b")),
            "Deny(\"TRUNCATE statement\")"
        );
        assert_eq!(outcome(&g.verdict("ALTER TABLE t ADD c int")), "Pass");
        assert_eq!(outcome(&g.verdict("SELECT 'drop table t'")), "Pass");
        // Unreadable SQL that may hold a rule's statement is held; without any rule's verb
        // it cannot be one, and passes unread (the server will refuse it).
        assert!(matches!(
            g.verdict("DELETE FROM t WHERE x = 'open").action,
            sluice_plugin_sdk::Action::Hold(_)
        ));
        assert_eq!(outcome(&g.verdict("SELECT 'open")), "Pass");
        assert!(matches!(
            g.verdict("SELECT 'x' || $$ $$; dRoP/**/TABLE t").action,
            sluice_plugin_sdk::Action::Hold(_)
        ));
    }

    #[test]
    fn only_queries_naming_a_verb_are_read() {
        let all = sql::Verbs::of(&sql::RULES.iter().map(|r| r.0).collect::<Vec<_>>());
        assert!(all.mentioned_in("delete/**/from t"));
        assert!(sql::Verbs::of(&["grant"]).mentioned_in("x; Revoke all on t from u"));
        assert!(!sql::Verbs::of(&["drop"]).mentioned_in("x; Revoke all on t from u"));
        assert!(all.mentioned_in("SELECT 1;dO"));
        assert!(!all.mentioned_in("SELECT abalance FROM pgbench_accounts WHERE aid = 1"));
    }

    #[test]
    fn asks_only_for_what_the_client_sends() {
        let g = gate(r#"{"rules": ["sql"]}"#).unwrap();
        let interest = g.interest();
        assert!(interest.wants(Direction::ClientToTarget, ContentKind::Statement));
        assert!(!interest.wants(Direction::TargetToClient, ContentKind::Row));
        assert!(!interest.wants(Direction::ClientToTarget, ContentKind::Bytes));
    }

    /// The prescreen the gate declares is its own first test ([`sql::Verbs::mentioned_in`]),
    /// run by the gateway: the two agree on every text, so a statement kept from the gate is
    /// one it would have passed unread.
    #[test]
    fn its_prescreen_is_its_own_first_test() {
        use sluice_plugin_sdk::prescreen::Screen;
        let g = gate(r#"{"rules": ["sql"], "actions": {"alter": "off"}}"#).unwrap();
        let prescreen = g
            .interest()
            .prescreen
            .expect("sql rules alone: a prescreen");
        assert_eq!(prescreen.kinds, [ContentKind::Statement, ContentKind::Line]);
        let screen = Screen::new(&prescreen).unwrap();
        let words = [
            "drop", "DrOp", "alter", "ALTER", "trunc", "ate", "delete", "upDATE", "do", "D", "O",
            "revoke", "grant", "select", " ", ";", "/**/", "'", "$$", "é", "ſ", "K",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..(seed % 6) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(words[(seed % words.len() as u64) as usize]);
            }
            let statement = Content::Statement(sluice_plugin_sdk::Statement {
                text: text.clone(),
                params: vec![],
            });
            assert_eq!(
                screen.admits(&statement),
                g.verbs_on.mentioned_in(&text),
                "{text:?}"
            );
            if !screen.admits(&statement) {
                assert_eq!(outcome(&g.verdict(&text)), "Pass", "{text:?}");
            }
        }
        // Shell rules and custom patterns need no fixed word: no prescreen then.
        for config in [
            r#"{"rules": ["shell"]}"#,
            r#"{"rules": ["sql", "shell"]}"#,
            r#"{"rules": ["sql"], "custom": [{"name": "p", "pattern": "payroll"}]}"#,
        ] {
            assert_eq!(gate(config).unwrap().interest().prescreen, None, "{config}");
        }
    }

    #[test]
    fn custom_rules() {
        let g = gate(r#"{"rules": ["shell"], "custom": [{"name": "prod", "pattern": "--context[= ]prod", "action": "deny", "reason": "prod context"}]}"#).unwrap();
        assert_eq!(
            outcome(&g.verdict("kubectl --context prod get pods")),
            "Deny(\"prod context\")"
        );
        let g = gate(
            r#"{"custom": [{"name": "payroll", "pattern": "(?i)\\bpayroll\\b", "on": "sql"}]}"#,
        )
        .unwrap();
        assert_eq!(
            outcome(&g.verdict("select * from Payroll")),
            "Hold(\"matches rule `payroll`\")"
        );
        assert_eq!(outcome(&g.verdict("select 'payroll'")), "Pass");
    }

    #[test]
    fn tool_calls_are_judged_by_name_and_by_argument_values() {
        let g = gate(
            r#"{"tools": [
                {"tool": "delete_file", "action": "deny", "reason": "deletes"},
                {"tool": "*", "under": {"path": ["/etc", "/root/.ssh"]}, "reason": "system files"},
                {"tool": "write_file", "arguments": {"content": "(?i)begin .*private key"}, "reason": "a key"}
            ]}"#,
        )
        .unwrap();
        let v = |tool: &str, args: &str| match g.tool_verdict(tool, args).action {
            sluice_plugin_sdk::Action::Pass => "pass".to_string(),
            sluice_plugin_sdk::Action::Hold(why) => format!("hold: {why}"),
            sluice_plugin_sdk::Action::Deny(why) => format!("deny: {why}"),
            other => format!("{other:?}"),
        };
        assert_eq!(v("delete_file", "{}"), "deny: deletes");
        assert_eq!(
            v("read_file", r#"{"path": "/etc/shadow"}"#),
            "hold: system files"
        );
        assert_eq!(v("read_file", r#"{"path": "/etc"}"#), "hold: system files");
        // Resolved before it is judged: `..` and doubled slashes do not get around the rule.
        assert_eq!(
            v("read_file", r#"{"path": "/tmp/../etc//passwd"}"#),
            "hold: system files"
        );
        assert_eq!(v("read_file", r#"{"path": "/etcetera/x"}"#), "pass");
        assert_eq!(v("read_file", r#"{"path": "/tmp/x"}"#), "pass");
        // A list matches by any item; a relative path might be anywhere: held.
        assert_eq!(
            v(
                "read_multiple_files",
                r#"{"path": ["/tmp/a", "/root/.ssh/id_ed25519"]}"#
            ),
            "hold: system files"
        );
        assert_eq!(
            v("read_file", r#"{"path": "notes.txt"}"#),
            "hold: system files"
        );
        assert_eq!(
            v(
                "write_file",
                r#"{"path": "/tmp/k", "content": "-----BEGIN OPENSSH PRIVATE KEY-----"}"#
            ),
            "hold: a key"
        );
        assert_eq!(
            v("write_file", r#"{"path": "/tmp/k", "content": "hello"}"#),
            "pass"
        );
        // Arguments that cannot be read cannot pass an argument rule.
        assert_eq!(
            v("read_file", "not json"),
            "hold: the call's arguments cannot be read as a JSON object"
        );
        assert!(
            gate(r#"{"tools": [{"tool": "x", "under": {"path": ["etc"]}}]}"#)
                .err()
                .unwrap()
                .contains("not an absolute path")
        );
    }

    #[test]
    fn config_errors_are_clear() {
        let err = |s: &str| gate(s).err().unwrap();
        assert!(err(r#"{}"#).contains("nothing to check"));
        assert!(err(r#"{"rules": ["sqll"]}"#).contains("unknown rule `sqll`"));
        assert!(err(r#"{"rules": ["sql"], "action": "maybe"}"#).contains("unknown action"));
        assert!(err(r#"{"rules": ["sql"], "actions": {"mkfs": "deny"}}"#).contains("not on"));
        assert!(
            err(r#"{"rules": ["sql", "shell"], "custom": [{"name": "x", "pattern": "x"}]}"#)
                .contains("on = ")
        );
        assert!(
            err(r#"{"rules": ["sql"], "custom": [{"name": "x", "pattern": "("}]}"#)
                .contains("invalid pattern")
        );
    }
}
