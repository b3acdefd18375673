//! Policies: TOML files that declare plugins with their settings and bind them, in order, to
//! connections. Parsed into [`PolicyFile`] (what the user wrote), then validated into a
//! [`Policy`] that cannot be invalid: every error names the file, the key and the fix.
//!
//! ```toml
//! [plugins.redact]
//! source = "builtin:example-redact"   # or a .wasm path, relative to this file
//! world = "filter"                    # or "sink"
//! deadline_ms = 50                    # per call
//! max_memory_bytes = 67108864
//! on_error = "deny"                   # "pass" only for plugins that guard nothing
//! sha256 = "…"                        # optional pin of the component's digest
//! config = { literal = "hunter2" }    # the plugin's own settings, passed to init as JSON
//!                                     # (a string `env:NAME` is read from the environment)
//!
//! [chains]
//! shell = ["redact"]
//!
//! [plugins.siem]
//! source = "builtin:sink-http"
//! world = "sink"
//! allow_hosts = ["logs.example.com"]  # sinks only: where it may send HTTP requests
//! config = { url = "https://logs.example.com/ingest" }
//!
//! [sinks.siem]                        # deliver the record to it (see `SinkRules`)
//! plugin = "siem"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use sluice_plugin_host::spec::{
    DEFAULT_MAX_MEMORY_BYTES, FILTER_DEADLINE_MS, MAX_DEADLINE_MS, MAX_MEMORY_BYTES,
    MIN_MEMORY_BYTES, OnError, PluginSpec, SINK_DEADLINE_MS, Source, World,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    plugins: BTreeMap<String, PluginEntry>,
    #[serde(default)]
    chains: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    reviews: BTreeMap<String, ReviewRules>,
    #[serde(default)]
    roles: BTreeMap<String, RoleGroups>,
    #[serde(default)]
    sinks: BTreeMap<String, SinkRules>,
    #[serde(default)]
    agents: Option<Agents>,
}

/// Which identities are agents (`[agents]`): members of these groups (from tokens or the
/// identity provider) act for themselves, not for a person, and never decide a review.
/// Static tokens say so themselves (`kind = "agent"` in the configuration).
///
/// ```toml
/// [agents]
/// groups = ["ai-agents"]
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agents {
    pub groups: Vec<String>,
}

/// Where the record is delivered (`[sinks.NAME]`): every recorded event, in order, in
/// batches, to a sink plugin; see `crate::sinks`.
///
/// ```toml
/// [sinks.siem]
/// plugin = "siem"             # a [plugins.siem] with world = "sink"
/// batch_events = 500          # events per delivery, at most
/// from = "start"              # a new sink starts with the oldest entry, or "now"
/// linger_ms = 1000            # a batch not yet full waits this long for more events
/// retry_max_seconds = 60      # backoff between failed deliveries grows to this
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkRules {
    pub plugin: String,
    #[serde(default = "default_batch_events")]
    pub batch_events: usize,
    #[serde(default)]
    pub from: StartAt,
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    #[serde(default = "default_retry_max_seconds")]
    pub retry_max_seconds: u64,
}

fn default_batch_events() -> usize {
    500
}
fn default_linger_ms() -> u64 {
    1000
}
fn default_retry_max_seconds() -> u64 {
    60
}

/// Where a sink without a cursor yet starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// With the oldest entry of the record: nothing is left out.
    #[default]
    Start,
    /// With the next entry recorded (a chat notification has no use for history).
    Now,
}

/// Which groups hold each role on a connection (`[roles.NAME]`, or `[roles.default]`); see
/// `crate::roles`. A role left out comes from `[roles.default]`.
///
/// ```toml
/// [roles.default]
/// connect = ["developers"]
/// review = ["reviewers"]
/// audit = ["auditors"]
/// admin = ["admins"]
///
/// [roles.pg]
/// connect = ["dba"]
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleGroups {
    pub connect: Option<Vec<String>>,
    pub review: Option<Vec<String>>,
    pub audit: Option<Vec<String>>,
    pub admin: Option<Vec<String>>,
}

impl RoleGroups {
    pub fn get(&self, role: crate::roles::Role) -> Option<&Vec<String>> {
        use crate::roles::Role;
        match role {
            Role::Connect => self.connect.as_ref(),
            Role::Review => self.review.as_ref(),
            Role::Audit => self.audit.as_ref(),
            Role::Admin => self.admin.as_ref(),
        }
    }
}

/// How what a connection's gates hold is reviewed (`[reviews.NAME]`; who reviews is the
/// `review` role of `[roles]`), and whether sessions on it need approved access first.
///
/// ```toml
/// [reviews.pg]
/// approvals = 2                  # distinct reviewers needed (default 1)
/// expire_seconds = 600           # a held statement waits this long (default: hold_timeout_ms)
/// access_grant_seconds = 3600   # sessions need an approved access request, valid this long
/// access_request_seconds = 3600 # an access request waits this long for a decision (default)
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewRules {
    /// Moved to `[roles.NAME] review`; kept only to say so.
    reviewers: Option<Vec<String>>,
    pub approvals: u32,
    pub expire_seconds: Option<u64>,
    pub access_grant_seconds: Option<u64>,
    pub access_request_seconds: u64,
}

impl Default for ReviewRules {
    fn default() -> Self {
        ReviewRules {
            reviewers: None,
            approvals: 1,
            expire_seconds: None,
            access_grant_seconds: None,
            access_request_seconds: 3600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginEntry {
    source: String,
    #[serde(default)]
    world: World,
    deadline_ms: Option<u64>,
    max_memory_bytes: Option<u64>,
    #[serde(default)]
    on_error: OnError,
    sha256: Option<String>,
    /// Sinks only: the hosts it may send HTTP requests to (see `sluice_plugin_host::egress`).
    #[serde(default)]
    allow_hosts: Vec<String>,
    #[serde(default)]
    config: toml::Table,
}

/// All policy files of a deployment, merged and validated.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub plugins: BTreeMap<String, PluginSpec>,
    /// Filter chains by connection name, in order. Chains for the same connection from
    /// several files are concatenated in file-name order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Review rules by connection name.
    pub reviews: BTreeMap<String, ReviewRules>,
    /// Role tables by connection name (and `default`).
    pub roles: BTreeMap<String, RoleGroups>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, SinkRules>,
    /// The groups whose members are agents.
    pub agent_groups: Vec<String>,
    pub files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("policy {file}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub message: String,
}

impl PolicyError {
    fn new(file: &Path, message: impl Into<String>) -> Self {
        PolicyError {
            file: file.display().to_string(),
            message: message.into(),
        }
    }
}

impl Policy {
    /// Loads every `*.toml` in `dir` (not recursively), in file-name order.
    pub fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| PolicyError::new(dir, format!("cannot read the policy folder: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        files.sort();
        Policy::load_files(&files)
    }

    pub fn load_files(files: &[PathBuf]) -> Result<Policy, PolicyError> {
        let mut policy = Policy::default();
        for file in files {
            let text = std::fs::read_to_string(file)
                .map_err(|e| PolicyError::new(file, format!("cannot read: {e}")))?;
            policy.add(file, &text)?;
        }
        policy.check_chains()?;
        Ok(policy)
    }

    /// Parses one file's text and merges it in. `file` names it in errors and anchors
    /// relative plugin paths.
    pub fn add(&mut self, file: &Path, text: &str) -> Result<(), PolicyError> {
        let parsed: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::new(file, e.to_string()))?;
        let base = file.parent().unwrap_or(Path::new("."));
        for (name, entry) in parsed.plugins {
            let at = format!("{}: plugins.{name}", file.display());
            if let Some(existing) = self.plugins.get(&name) {
                return Err(PolicyError::new(
                    file,
                    format!(
                        "plugins.{name} is already defined at {}; plugin names are global, rename one",
                        existing.declared_at
                    ),
                ));
            }
            let spec = validate_plugin(&name, entry, base, at)
                .map_err(|m| PolicyError::new(file, format!("plugins.{name}.{m}")))?;
            self.plugins.insert(name, spec);
        }
        for (connection, chain) in parsed.chains {
            self.chains.entry(connection).or_default().extend(chain);
        }
        for (connection, rules) in parsed.reviews {
            let at = format!("reviews.{connection}");
            if self.reviews.contains_key(&connection) {
                return Err(PolicyError::new(
                    file,
                    format!("{at} is defined twice; keep one"),
                ));
            }
            if rules.reviewers.is_some() {
                return Err(PolicyError::new(
                    file,
                    format!(
                        "{at}.reviewers: reviewers are the `review` role now: write `[roles.{connection}] review = [...]`"
                    ),
                ));
            }
            if rules.approvals == 0 {
                return Err(PolicyError::new(
                    file,
                    format!("{at}: needs at least one approval"),
                ));
            }
            if rules.access_grant_seconds == Some(0) || rules.access_request_seconds == 0 {
                return Err(PolicyError::new(
                    file,
                    format!("{at}: durations must be at least 1 s"),
                ));
            }
            self.reviews.insert(connection, rules);
        }
        for (name, rules) in parsed.sinks {
            let at = format!("sinks.{name}");
            if self.sinks.contains_key(&name) {
                return Err(PolicyError::new(
                    file,
                    format!("{at} is defined twice; keep one"),
                ));
            }
            if !(1..=10_000).contains(&rules.batch_events) {
                return Err(PolicyError::new(
                    file,
                    format!("{at}.batch_events: 1 to 10000"),
                ));
            }
            if rules.linger_ms > 60_000 {
                return Err(PolicyError::new(
                    file,
                    format!("{at}.linger_ms: at most 60000"),
                ));
            }
            if rules.retry_max_seconds == 0 {
                return Err(PolicyError::new(
                    file,
                    format!("{at}.retry_max_seconds: at least 1"),
                ));
            }
            self.sinks.insert(name, rules);
        }
        for (connection, groups) in parsed.roles {
            if self.roles.contains_key(&connection) {
                return Err(PolicyError::new(
                    file,
                    format!("roles.{connection} is defined twice; keep one"),
                ));
            }
            self.roles.insert(connection, groups);
        }
        if let Some(agents) = parsed.agents {
            self.agent_groups.extend(agents.groups);
        }
        self.files.push(file.to_path_buf());
        Ok(())
    }

    /// Every name in a chain must be a filter plugin that some file defines, and every sink a
    /// sink plugin.
    fn check_chains(&self) -> Result<(), PolicyError> {
        let file = self
            .files
            .first()
            .map(PathBuf::as_path)
            .unwrap_or(Path::new("policies"));
        for (name, sink) in &self.sinks {
            match self.plugins.get(&sink.plugin) {
                Some(spec) if spec.world == World::Sink => {}
                Some(_) => {
                    return Err(PolicyError::new(
                        file,
                        format!(
                            "sinks.{name}.plugin: `{}` is a filter plugin; declare a sink plugin (world = \"sink\")",
                            sink.plugin
                        ),
                    ));
                }
                None => {
                    return Err(PolicyError::new(
                        file,
                        format!(
                            "sinks.{name}.plugin: plugin `{}` is not defined (add a [plugins.{}] table)",
                            sink.plugin, sink.plugin
                        ),
                    ));
                }
            }
        }
        for (connection, chain) in &self.chains {
            for name in chain {
                match self.plugins.get(name) {
                    None => {
                        return Err(PolicyError::new(
                            file,
                            format!(
                                "chains.{connection}: plugin `{name}` is not defined (add a [plugins.{name}] table)"
                            ),
                        ));
                    }
                    Some(spec) if spec.world != World::Filter => {
                        return Err(PolicyError::new(
                            file,
                            format!(
                                "chains.{connection}: plugin `{name}` is a {} plugin; chains take filter plugins only",
                                spec.world
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// The filter plugins bound to `connection`, in order.
    /// The plugins connection `connection` runs, in order: its `[chains]` entry, or, for a
    /// connection that has none (one added at runtime, say), `[chains] default`.
    pub fn chain(&self, connection: &str) -> Vec<&PluginSpec> {
        let names = self
            .chains
            .get(connection)
            .or_else(|| self.chains.get(crate::roles::DEFAULT))
            .map(Vec::as_slice)
            .unwrap_or_default();
        names.iter().filter_map(|n| self.plugins.get(n)).collect()
    }
}

/// Validates one plugin table; the error is `KEY: reason` for the caller to prefix.
fn validate_plugin(
    name: &str,
    entry: PluginEntry,
    base: &Path,
    declared_at: String,
) -> Result<PluginSpec, String> {
    let source = match entry.source.strip_prefix("builtin:") {
        Some(builtin) => {
            if sluice_plugin_host::builtin::get(builtin).is_none() {
                return Err(format!(
                    "source: there is no built-in plugin `{builtin}` (built-ins: {})",
                    sluice_plugin_host::builtin::names().join(", ")
                ));
            }
            Source::Builtin(builtin.to_string())
        }
        None => {
            let path = base.join(&entry.source);
            if !path.is_file() {
                return Err(format!(
                    "source: no file at {} (build the plugin with `cargo build --release --target wasm32-wasip2`, or fix the path; relative paths start at the policy file's folder)",
                    path.display()
                ));
            }
            Source::File(path)
        }
    };
    let default_deadline = match entry.world {
        World::Filter => FILTER_DEADLINE_MS,
        World::Sink => SINK_DEADLINE_MS,
    };
    let deadline_ms = entry.deadline_ms.unwrap_or(default_deadline);
    if deadline_ms == 0 || deadline_ms > MAX_DEADLINE_MS {
        return Err(format!(
            "deadline_ms: {deadline_ms} is out of range (1 to {MAX_DEADLINE_MS})"
        ));
    }
    let memory = entry.max_memory_bytes.unwrap_or(DEFAULT_MAX_MEMORY_BYTES);
    if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&memory) {
        return Err(format!(
            "max_memory_bytes: {memory} is out of range ({MIN_MEMORY_BYTES} to {MAX_MEMORY_BYTES})"
        ));
    }
    let sha256 = match entry.sha256 {
        None => None,
        Some(hex_digest) => {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex_digest.trim(), &mut digest).map_err(|_| {
                "sha256: expected 64 hexadecimal digits (see `sluice plugin check FILE`)"
                    .to_string()
            })?;
            Some(digest)
        }
    };
    if !entry.allow_hosts.is_empty() && entry.world != World::Sink {
        return Err(
            "allow_hosts: only sink plugins may reach the network (add `world = \"sink\"`)".into(),
        );
    }
    sluice_plugin_host::egress::Egress::new(&entry.allow_hosts, Default::default())?;
    let mut config = entry.config;
    resolve_env(&mut config, "config")?;
    let config_json = serde_json::to_string(&config).map_err(|e| format!("config: {e}"))?;
    Ok(PluginSpec {
        name: name.to_string(),
        source,
        world: entry.world,
        deadline: Duration::from_millis(deadline_ms),
        max_memory_bytes: memory as usize,
        on_error: entry.on_error,
        sha256,
        allow_hosts: entry.allow_hosts,
        config_json,
        declared_at,
    })
}

/// Replaces every string `env:NAME` in a plugin's config with that environment variable, so
/// secrets (a sink's keys) stay out of policy files.
fn resolve_env(table: &mut toml::Table, at: &str) -> Result<(), String> {
    fn walk(value: &mut toml::Value, at: &str) -> Result<(), String> {
        match value {
            toml::Value::String(text) => {
                if let Some(name) = text.strip_prefix("env:") {
                    *text = std::env::var(name)
                        .map_err(|_| format!("{at}: the environment variable {name} is not set"))?;
                }
            }
            toml::Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item, &format!("{at}[{i}]"))?;
                }
            }
            toml::Value::Table(table) => resolve_env(table, at)?,
            _ => {}
        }
        Ok(())
    }
    for (key, value) in table.iter_mut() {
        walk(value, &format!("{at}.{key}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        // Parsing checks only that a built-in of that name exists; the components themselves
        // are linked by the binary (`sluice-builtins`), so these tests name them without bytes.
        sluice_plugin_host::builtin::provide(&[
            ("example-redact", &[]),
            ("passthrough", &[]),
            ("sink-http", &[]),
        ]);
        let mut policy = Policy::default();
        policy.add(Path::new("policies/test.toml"), text)?;
        policy.check_chains()?;
        Ok(policy)
    }

    #[test]
    fn a_full_plugin_table_parses_with_defaults() {
        let policy = parse(
            r#"
            [plugins.redact]
            source = "builtin:example-redact"
            config = { literal = "hunter2", nested = { list = [1, 2] } }
            [chains]
            shell = ["redact"]
            "#,
        )
        .unwrap();
        let spec = &policy.plugins["redact"];
        assert_eq!(spec.deadline, Duration::from_millis(FILTER_DEADLINE_MS));
        assert_eq!(spec.on_error, OnError::Deny);
        assert_eq!(
            spec.config_json,
            r#"{"literal":"hunter2","nested":{"list":[1,2]}}"#
        );
        assert_eq!(policy.chain("shell").len(), 1);
        assert!(policy.chain("python").is_empty());
    }

    #[test]
    fn connections_the_chains_do_not_name_run_the_default_chain() {
        let text = r#"
            [plugins.redact]
            source = "builtin:example-redact"
            [plugins.pass]
            source = "builtin:passthrough"
            [chains]
            shell = ["pass"]
            default = ["redact", "pass"]
            "#;
        let policy = parse(text).unwrap();
        let names = |c: &str| {
            policy
                .chain(c)
                .iter()
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("shell"), ["pass"]);
        assert_eq!(names("added-at-runtime"), ["redact", "pass"]);
    }

    #[test]
    fn unknown_keys_name_the_file_and_the_key() {
        let err =
            parse("[plugins.x]\nsource = \"builtin:passthrough\"\ndeadline = 5\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("policy policies/test.toml:"), "{text}");
        assert!(text.contains("unknown field `deadline`"), "{text}");
    }

    #[test]
    fn missing_files_and_builtins_are_named_with_a_fix() {
        let err = parse("[plugins.x]\nsource = \"nowhere/mask.wasm\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plugins.x.source: no file at policies/nowhere/mask.wasm"),
            "{err}"
        );
        assert!(err.contains("cargo build"), "{err}");
        let err = parse("[plugins.x]\nsource = \"builtin:nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no built-in plugin `nope` (built-ins: "),
            "{err}"
        );
    }

    #[test]
    fn review_rules_have_safe_defaults_and_refuse_nonsense() {
        let policy = parse("[reviews.pg]\napprovals = 2\n").unwrap();
        let rules = &policy.reviews["pg"];
        assert_eq!((rules.approvals, rules.access_grant_seconds), (2, None));
        for (text, expected) in [
            ("[reviews.pg]\napprovals = 0\n", "at least one approval"),
            (
                "[reviews.pg]\nreviewers = [\"dba\"]\n",
                "write `[roles.pg] review = [...]`",
            ),
            (
                "[roles.pg]\nreviewers = [\"dba\"]\n",
                "unknown field `reviewers`",
            ),
            ("[reviews.pg]\naccess_grant_seconds = 0\n", "at least 1 s"),
            (
                "[reviews.pg]\nreviewer = [\"x\"]\n",
                "unknown field `reviewer`",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn roles_fall_back_to_the_default_table_and_otherwise_to_nobody() {
        let policy = parse(
            "[roles.default]\nconnect = [\"dev\"]\nreview = [\"rev\"]\n[roles.pg]\nconnect = [\"dba\"]\n",
        )
        .unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let roles = crate::roles::Roles::new(policy.roles, sluice_record::Recorder::from_queue(tx));
        use crate::roles::Role;
        assert_eq!(roles.groups(Role::Connect, "pg"), ["dba"]);
        assert_eq!(roles.groups(Role::Review, "pg"), ["rev"]);
        assert_eq!(roles.groups(Role::Connect, "shell"), ["dev"]);
        assert!(roles.groups(Role::Audit, "shell").is_empty());
        let dba = sluice_core::frame::Identity {
            subject: "d".into(),
            name: None,
            groups: vec!["dba".into()],
        };
        assert!(roles.has(&dba, Role::Connect, "pg"));
        assert!(!roles.has(&dba, Role::Connect, "shell"));
        assert!(roles.any(&dba, "pg") && !roles.any(&dba, "shell"));
    }

    #[test]
    fn chains_name_defined_filter_plugins_only() {
        let err = parse("[chains]\nshell = [\"ghost\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("chains.shell: plugin `ghost` is not defined"),
            "{err}"
        );
        let err = parse("[plugins.s]\nsource = \"builtin:passthrough\"\nworld = \"sink\"\n[chains]\nshell = [\"s\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is a sink plugin; chains take filter plugins only"),
            "{err}"
        );
    }

    #[test]
    fn limits_and_pins_are_checked() {
        let err = parse("[plugins.x]\nsource = \"builtin:passthrough\"\ndeadline_ms = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plugins.x.deadline_ms: 0 is out of range"),
            "{err}"
        );
        let err = parse("[plugins.x]\nsource = \"builtin:passthrough\"\nmax_memory_bytes = 1024\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("plugins.x.max_memory_bytes"), "{err}");
        let err = parse("[plugins.x]\nsource = \"builtin:passthrough\"\nsha256 = \"abc\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plugins.x.sha256: expected 64 hexadecimal digits"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_plugin_names_across_files_are_refused() {
        let mut policy = Policy::default();
        policy
            .add(
                Path::new("a.toml"),
                "[plugins.x]\nsource = \"builtin:passthrough\"\n",
            )
            .unwrap();
        let err = policy
            .add(
                Path::new("b.toml"),
                "[plugins.x]\nsource = \"builtin:passthrough\"\n",
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("already defined at a.toml: plugins.x"),
            "{err}"
        );
    }
}
