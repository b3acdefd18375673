//! The CLI commands that are more than a call: `serve`, and the auditor's commands, which
//! fetch from the gateway and render here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::client::Client;
use sluice_engine::audit::EventView;
use sluice_engine::review::Review;
use sluice_record::SessionSummary;

/// `sluice login`: asks the gateway where to sign in, then signs in there.
pub async fn login(
    client: Client,
    gateway: &str,
    flow: crate::login::Flow,
    browser: bool,
) -> anyhow::Result<ExitCode> {
    let auth: serde_json::Value = serde_json::from_slice(&client.get("/api/auth").await?)?;
    if auth["oidc"].is_null() {
        bail!(
            "the gateway at {gateway} has no identity provider configured ([oidc] in its sluice.toml): use a token (--token or SLUICE_TOKEN)"
        );
    }
    let provider: crate::login::Provider = serde_json::from_value(auth["oidc"].clone())?;
    let who = crate::login::login(gateway, &provider, flow, |text, url| {
        eprintln!("{text}");
        if browser && flow == crate::login::Flow::Browser {
            // Best effort: a headless machine just has the address above.
            let _ = std::process::Command::new("xdg-open")
                .arg(url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
        }
        eprintln!("Waiting for the sign-in (5 minutes at most)...");
    })
    .await?;
    eprintln!("signed in to {gateway} as {who}");
    Ok(ExitCode::SUCCESS)
}

/// `--config`, else ./sluice.toml if present, else the built-in default.
pub(crate) fn load_config(
    config_path: Option<PathBuf>,
) -> anyhow::Result<sluice_engine::config::Config> {
    let path = config_path.or_else(|| {
        Path::new("sluice.toml")
            .exists()
            .then(|| PathBuf::from("sluice.toml"))
    });
    Ok(sluice_engine::config::Config::load(path.as_deref())?)
}

/// Who runs a maintenance command, for the record.
fn operator() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

pub fn store_restore(config_path: Option<PathBuf>, backup: &Path) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let data = &config.gateway.data_dir;
    let key = config.gateway.record_key(data);
    let signer = key
        .load_existing()
        .with_context(|| format!("record key {key}"))?;
    if !backup.is_file() {
        bail!("no backup at {}", backup.display());
    }
    let restored = sluice_record::restore(&data.join("record.redb"), backup, signer, &operator())
        .context("restore refused (is the gateway stopped?)")?;
    println!(
        "restored {} (its last entry: {}); recorded as entry {}",
        backup.display(),
        restored
            .restored_to
            .map_or("none".to_string(), |i| i.to_string()),
        restored.entry
    );
    if let Some((from, to)) = restored.skipped {
        println!("entries {from}-{to} of the replaced store are declared abandoned by the restore");
    }
    if let Some(aside) = &restored.replaced_moved_to {
        println!("the replaced store is kept at {}", aside.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn store_rotate_key(config_path: Option<PathBuf>, old_key: &str) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let data = &config.gateway.data_dir;
    let new_source = config.gateway.record_key(data);
    let old_source = sluice_record::KeySource::parse(old_key);
    if old_source == new_source {
        bail!(
            "--old-key names the configured record key ({new_source}): point `[gateway] record_key` at the new key first"
        );
    }
    let old = old_source
        .load_existing()
        .with_context(|| format!("--old-key {old_source}"))?;
    let new = new_source
        .load()
        .with_context(|| format!("record key {new_source}"))?;
    let store = sluice_record::Store::open_signed(&data.join("record.redb"), old)
        .context("cannot open the store with the old key (is the gateway stopped, and is --old-key the key in use?)")?;
    let entry = store.rotate_key(new)?;
    let public = hex::encode(store.public_key());
    store.close();
    println!("announced the new record key {public} at entry {entry}, signed by the old key");
    println!("give auditors the new public key; the gateway now starts with {new_source}");
    Ok(ExitCode::SUCCESS)
}

/// `VALUE` when it is a PostgreSQL URL, read from the environment for `env:NAME`.
fn postgres_url(value: &str) -> Option<String> {
    let value = sluice_engine::config::resolve(value);
    (value.starts_with("postgres://") || value.starts_with("postgresql://")).then_some(value)
}

/// `sluice store copy --to URL`: the embedded store (the gateway stopped) copied into an empty
/// PostgreSQL record, row for row, then verified there: the same head, the same chain.
pub fn store_copy(
    config_path: Option<PathBuf>,
    from: Option<PathBuf>,
    to: &str,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let from = from.unwrap_or_else(|| config.gateway.data_dir.join("record.redb"));
    let Some(url) = postgres_url(to) else {
        bail!(
            "--to: a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE) or env:NAME holding one"
        );
    };
    let source = sluice_record::verify_store(&from, sluice_record::VerifyOptions::default());
    if let Some(problem) = &source.problem {
        bail!(
            "{} does not verify, so it is not copied: {problem}",
            from.display()
        );
    }
    let copied =
        sluice_record::tables::read_file(&from, |tables| sluice_record_pg::import(&url, tables))??;
    let copy = sluice_record_pg::verify_url(&url, None, &sluice_record::VerifyOptions::default());
    if let Some(problem) = &copy.problem {
        bail!("the copy does not verify: {problem}");
    }
    let head = |report: &sluice_record::VerifyReport| {
        report.head.as_ref().map_or("none".to_string(), |h| {
            format!("entry {} {}", h.index, hex::encode(h.hash))
        })
    };
    if head(&copy) != head(&source) {
        bail!(
            "the copy's head ({}) is not the store's ({})",
            head(&copy),
            head(&source)
        );
    }
    println!(
        "copied {copied} entries from {} into {}; verify holds on the copy; head: {}",
        from.display(),
        sluice_record_pg::parse_url(&url)?.1,
        head(&copy)
    );
    Ok(ExitCode::SUCCESS)
}

/// `sluice store export --to FILE`: the shared PostgreSQL record written to a store file from
/// one snapshot, for `sluice verify --store FILE` away from the database.
pub fn store_export(
    config_path: Option<PathBuf>,
    from: Option<String>,
    to: &Path,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let from = from.or(config.store.url.clone()).unwrap_or_default();
    let Some(url) = postgres_url(&from) else {
        bail!(
            "nothing to export: give --from URL, or configure [store] kind = \"postgres\" with its url"
        );
    };
    let payloads = config.store.payloads.as_ref().map(|p| p.bucket());
    let entries = sluice_record_pg::export_to_file(&url, payloads.as_ref(), to)?;
    println!(
        "exported {entries} entries to {}; check it with `sluice verify --store {}`",
        to.display(),
        to.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn serve(config_path: Option<PathBuf>, watch: bool) -> anyhow::Result<ExitCode> {
    let mut config = load_config(config_path)?;
    if watch && config.gateway.watch_ms.is_none() {
        config.gateway.watch_ms = Some(500);
    }
    // SIGTERM is what `kill`, systemd and Kubernetes send; SIGINT is Ctrl-C. Both stop
    // cleanly: sessions end and are recorded, the record is committed and closed. The
    // handlers go in before anything is printed: whoever saw the listening line may stop
    // us at once, and that must not kill the process uncleanly.
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (started, running) = sluice_engine::server::start(config).await?;
    println!("sluice gateway listening on https://{}", started.addr);
    println!("CA fingerprint (SHA-256): {}", started.ca_fingerprint);
    if let Some((addr, fingerprint)) = &started.ssh {
        println!("SSH front door on ssh://{addr}, host key {fingerprint}");
    }
    match &started.node {
        None => println!(
            "record key (Ed25519, keep it to verify copies): {}",
            started.record_key
        ),
        Some(node) => println!(
            "node {node} on a shared record; cluster key (Ed25519, keep it: verify trusts it for every node): {}",
            started.record_key
        ),
    }
    if started.closed_after_crash > 0 {
        println!(
            "closed {} sessions the previous run left open (it stopped unexpectedly)",
            started.closed_after_crash
        );
    }
    if let Some(dev) = &started.dev_tokens {
        println!();
        println!("DEVELOPMENT TOKENS (dev_tokens = true; never use in production):");
        println!("  user:     export SLUICE_TOKEN={}", dev.user);
        println!("  reviewer: export SLUICE_TOKEN={}", dev.reviewer);
        println!("  agent:    export SLUICE_TOKEN={}", dev.agent);
        println!();
        println!("Try: sluice exec shell -- echo hello   or   sluice connect python");
    }
    std::io::stdout().flush()?;
    let why = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    println!("stopping ({why})");
    std::io::stdout().flush()?;
    let ended = running.stop(why).await?;
    println!("stopped: {ended} sessions ended, record closed");
    Ok(ExitCode::SUCCESS)
}

pub struct SessionFilter {
    pub active: bool,
    pub user: Option<String>,
    pub connection: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub grep: Option<String>,
}

/// `30m`, `2h`, `7d` ago, or unix seconds; in milliseconds.
fn parse_time(text: &str) -> anyhow::Result<u64> {
    let now = sluice_core::now_ms();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .with_context(|| format!("bad time `{text}`: use unix seconds or 30m, 2h, 7d"))?;
    let seconds = match unit {
        "" => return Ok(n * 1000),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("bad time `{text}`: use unix seconds or 30m, 2h, 7d"),
    };
    Ok(now.saturating_sub(seconds * 1000))
}

/// A session's events; `form` says what the reader does with them (the gateway records it).
async fn events(client: &Client, id: &str, form: &str) -> anyhow::Result<Vec<EventView>> {
    let body = client
        .get(&format!("/api/sessions/{id}/events?form={form}"))
        .await?;
    parse_events(&body)
}

fn parse_events(body: &[u8]) -> anyhow::Result<Vec<EventView>> {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).context("malformed event from the gateway"))
        .collect()
}

pub async fn sessions(client: Client, filter: SessionFilter) -> anyhow::Result<ExitCode> {
    if filter.active {
        let live: Vec<serde_json::Value> =
            serde_json::from_slice(&client.get("/api/sessions?active=1").await?)?;
        // On gateways sharing a record, each session's node (where it runs).
        let nodes = live.iter().any(|s| s["node"].is_string());
        println!(
            "{:<32} {:<14} {:<10} {:<13} {}",
            "ACTIVE SESSION",
            "USER",
            "CONNECTION",
            "STARTED",
            if nodes { "NODE" } else { "" }
        );
        for s in live {
            println!(
                "{:<32} {:<14} {:<10} {:<13} {}",
                s["id"].as_str().unwrap_or("?"),
                s["subject"].as_str().unwrap_or("?"),
                s["connection"].as_str().unwrap_or("?"),
                s["started_ms"],
                s["node"].as_str().unwrap_or_default()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The gateway filters (and searches the recorded content, which it records); pages of
    // up to 500 until the last.
    let mut query = Vec::new();
    let mut add =
        |key: &str, value: String| query.push(format!("{key}={}", percent_encode(&value)));
    if let Some(user) = &filter.user {
        add("user", user.clone());
    }
    if let Some(connection) = &filter.connection {
        add("connection", connection.clone());
    }
    if let Some(since) = &filter.since {
        add("since", parse_time(since)?.to_string());
    }
    if let Some(until) = &filter.until {
        add("until", parse_time(until)?.to_string());
    }
    if let Some(text) = &filter.grep {
        add("text", text.clone());
    }
    println!(
        "{:<32} {:<14} {:<10} {:<8} {:<7} {:<22} FIRST INPUT",
        "SESSION", "USER", "CONNECTION", "MINUTES", "EXIT", "CLIENT"
    );
    let mut offset = 0;
    loop {
        let path = format!(
            "/api/sessions/search?limit=500&offset={offset}&{}",
            query.join("&")
        );
        let page: serde_json::Value = serde_json::from_slice(&client.get(&path).await?)?;
        let sessions = page["sessions"].as_array().cloned().unwrap_or_default();
        for row in &sessions {
            let first_input = row["first_input"].as_str().unwrap_or("").to_string();
            let s: SessionSummary = serde_json::from_value(row.clone())?;
            let minutes = s.ended_ms.map_or("active".into(), |end| {
                format!("{:.1}", (end - s.started_ms) as f64 / 60000.0)
            });
            let exit = s.exit_status.map_or("-".into(), |c| c.to_string());
            println!(
                "{:<32} {:<14} {:<10} {:<8} {:<7} {:<22} {}",
                s.id, s.subject, s.connection, minutes, exit, s.client, first_input
            );
        }
        offset += sessions.len();
        if sessions.is_empty() || offset as u64 >= page["total"].as_u64().unwrap_or(0) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `value` safe in a query string.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn reviews(
    client: Client,
    status: Option<String>,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    println!(
        "{:<14} {:<14} {:<7} {:<10} {:<14} {:<9} WHAT",
        "REVIEW", "STATUS", "KIND", "CONNECTION", "REQUESTER", "APPROVALS"
    );
    if watch {
        // The live inbox: pending reviews first, then every change, a line each.
        let mut pending = Vec::new();
        client
            .follow("/api/reviews/events", |bytes| {
                pending.extend_from_slice(bytes);
                while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = pending.drain(..end + 2).collect();
                    for line in String::from_utf8_lossy(&event).lines() {
                        if let Some(data) = line.strip_prefix("data: ")
                            && let Ok(r) = serde_json::from_str::<Review>(data)
                        {
                            print_review_line(&r);
                            let _ = std::io::stdout().flush();
                        }
                    }
                }
            })
            .await?;
        return Ok(ExitCode::SUCCESS);
    }
    let query = status
        .map(|s| format!("?status={}", crate::client::query_value(&s)))
        .unwrap_or_default();
    let all: Vec<Review> =
        serde_json::from_slice(&client.get(&format!("/api/reviews{query}")).await?)?;
    for r in &all {
        print_review_line(r);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_review_line(r: &Review) {
    let mut what = format!("{} ({})", r.text.replace('\n', " "), r.reason);
    if what.chars().count() > 60 {
        what = what.chars().take(59).collect::<String>() + "…";
    }
    println!(
        "{:<14} {:<14} {:<7} {:<10} {:<14} {:<9} {what}",
        r.id,
        r.status.as_str(),
        match r.kind {
            sluice_engine::review::Kind::Frame => "command",
            sluice_engine::review::Kind::Access => "access",
        },
        r.connection,
        r.requester,
        format!("{}/{}", r.approvals.len(), r.required),
    );
}

pub async fn review_show(client: Client, id: &str) -> anyhow::Result<ExitCode> {
    let r: Review = serde_json::from_slice(&client.get(&format!("/api/reviews/{id}")).await?)?;
    print_review(&r);
    Ok(ExitCode::SUCCESS)
}

pub async fn review_decide(
    client: Client,
    id: &str,
    verb: &str,
    reason: Option<String>,
) -> anyhow::Result<ExitCode> {
    let query = reason
        .map(|r| format!("?reason={}", crate::client::query_value(&r)))
        .unwrap_or_default();
    let r: Review = serde_json::from_slice(
        &client
            .post(&format!("/api/reviews/{id}/{verb}{query}"))
            .await?,
    )?;
    match r.status {
        sluice_engine::review::Status::Pending => println!(
            "review {id}: approval {} of {} recorded; it needs more from other reviewers",
            r.approvals.len(),
            r.required
        ),
        status => println!("review {id} {}", status.as_str()),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_review(r: &Review) {
    let time = |ms: u64| {
        let now = sluice_core::now_ms();
        match ms.checked_sub(now) {
            Some(ahead) => format!("in {} s", ahead / 1000),
            None => format!("{} s ago", (now - ms) / 1000),
        }
    };
    println!("review     {}", r.id);
    println!("status     {}", r.status.as_str());
    println!(
        "kind       {}",
        serde_json::to_value(r.kind)
            .unwrap_or_default()
            .as_str()
            .unwrap_or("?")
    );
    println!("connection {}", r.connection);
    println!(
        "requester  {}{}",
        r.requester,
        r.requester_name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    if let Some(session) = &r.session {
        println!("session    {session}");
    }
    println!("reason     {}", r.reason);
    println!("created    {}", time(r.created_ms));
    println!("expires    {}", time(r.expires_ms));
    println!(
        "reviewers  {} ({} approval(s) needed)",
        r.reviewer_groups.join(", "),
        r.required
    );
    for v in &r.approvals {
        println!(
            "approved   by {}{}",
            v.by,
            v.reason
                .as_deref()
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        );
    }
    if let Some(v) = &r.rejection {
        println!(
            "rejected   by {}: {}",
            v.by,
            v.reason.as_deref().unwrap_or("")
        );
    }
    if let Some(until) = r.granted_until_ms {
        println!("granted    until {}", time(until));
    }
    println!("---\n{}", r.text);
}

/// `sluice whoami`: who the gateway takes you for, and your roles on each connection.
pub async fn whoami(client: Client) -> anyhow::Result<ExitCode> {
    let who: serde_json::Value = serde_json::from_slice(&client.get("/api/whoami").await?)?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let list = |v: &serde_json::Value| {
        let items: Vec<String> = v.as_array().into_iter().flatten().map(text).collect();
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let subject = text(&who["subject"]);
    match who["name"].as_str() {
        // A name that already says the subject (dev tokens') is shown alone.
        Some(name) if name.starts_with(&format!("{subject} (")) => println!("{name}"),
        Some(name) => println!("{subject} ({name})"),
        None => println!("{subject}"),
    }
    println!("groups: {}", list(&who["groups"]));
    for (connection, roles) in who["roles"].as_object().into_iter().flatten() {
        println!("{connection}: {}", list(roles));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn nodes(client: Client, raw: bool) -> anyhow::Result<ExitCode> {
    let body = client.get("/api/nodes").await?;
    if raw {
        std::io::stdout().write_all(&body)?;
        println!();
        return Ok(ExitCode::SUCCESS);
    }
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    println!(
        "{:<20} {:<7} {:>10} {:>9}",
        "NODE", "STATE", "LAST BEAT", "SESSIONS"
    );
    for n in &nodes {
        let name = n["node"].as_str().unwrap_or_default();
        let name = match n["this"].as_bool() {
            Some(true) => format!("{name} (this)"),
            _ => name.to_string(),
        };
        println!(
            "{:<20} {:<7} {:>9.1}s {:>9}",
            name,
            n["state"].as_str().unwrap_or_default(),
            n["beat_ago_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
            n["sessions"].as_u64().unwrap_or(0),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn sinks(client: Client, raw: bool) -> anyhow::Result<ExitCode> {
    let body = client.get("/api/sinks").await?;
    if raw {
        std::io::stdout().write_all(&body)?;
        println!();
        return Ok(ExitCode::SUCCESS);
    }
    let sinks: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    if sinks.is_empty() {
        println!("no sinks: the policy enables none (see docs/sinks.md)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<16} {:<11} {:>10} {:>8} {:>10}  LAST ERROR",
        "SINK", "PLUGIN", "STATE", "DELIVERED", "LAG", "FAILURES"
    );
    for s in &sinks {
        let text = |k: &str| s[k].as_str().unwrap_or("").to_string();
        let number = |k: &str| s[k].as_u64().unwrap_or(0);
        println!(
            "{:<16} {:<16} {:<11} {:>10} {:>8} {:>10}  {}",
            text("name"),
            text("plugin"),
            text("state"),
            number("cursor"),
            number("lag"),
            number("failures"),
            s["last_error"].as_str().unwrap_or("-"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn reload(client: Client) -> anyhow::Result<ExitCode> {
    let applied: serde_json::Value = serde_json::from_slice(&client.post("/api/reload").await?)?;
    let files = applied["files"].as_array().map_or(0, Vec::len);
    let sinks: Vec<&str> = applied["sinks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .collect();
    println!(
        "policy applied: {files} file(s); sinks: {}",
        if sinks.is_empty() {
            "none".to_string()
        } else {
            sinks.join(", ")
        }
    );
    Ok(other_nodes(&applied))
}

/// On a shared record: what each other node said of a change applied here; a failure if any
/// did not apply it (the cluster is not uniform until it does).
fn other_nodes(applied: &serde_json::Value) -> ExitCode {
    let mut all_applied = true;
    for (node, said) in applied["nodes"].as_object().into_iter().flatten() {
        let said = said.as_str().unwrap_or_default();
        match said {
            "applied" => println!("node {node}: applied"),
            why => {
                all_applied = false;
                eprintln!("node {node}: NOT applied: {why}");
            }
        }
    }
    if all_applied {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub async fn retention(client: Client) -> anyhow::Result<ExitCode> {
    let report: serde_json::Value = serde_json::from_slice(&client.post("/api/retention").await?)?;
    let count = |k: &str| report[k].as_array().map_or(0, Vec::len);
    println!(
        "purged {} payload(s) of {} session(s); removed {} decided review(s)",
        report["payloads"].as_u64().unwrap_or(0),
        count("sessions"),
        count("reviews"),
    );
    if report["payloads"].as_u64().unwrap_or(0) > 0 {
        println!("entries: {}", entry_ranges(&report["ranges"]));
    }
    if let Some(c) = report["compacted"].as_object() {
        println!(
            "store compacted: {} -> {} bytes",
            c["bytes_before"], c["bytes_after"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `[[3, 31], [88, 88]]` as `3-31, 88`.
fn entry_ranges(ranges: &serde_json::Value) -> String {
    let ranges: Vec<String> = ranges
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| match (r[0].as_u64(), r[1].as_u64()) {
            (Some(a), Some(b)) if a == b => format!("{a}"),
            (a, b) => format!("{}-{}", a.unwrap_or(0), b.unwrap_or(0)),
        })
        .collect();
    ranges.join(", ")
}

pub async fn kill(client: Client, id: &str) -> anyhow::Result<ExitCode> {
    client.post(&format!("/api/sessions/{id}/kill")).await?;
    println!("session {id} ended");
    Ok(ExitCode::SUCCESS)
}

pub async fn replay(
    client: Client,
    id: &str,
    speed: f64,
    output_only: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let events = events(&client, id, "replay").await?;
    if events.is_empty() {
        bail!("session {id} has no recorded events");
    }
    let mut stdout = std::io::stdout();
    let marking = if stdout.is_terminal() {
        sluice_engine::audit::Marking::Styled
    } else {
        sluice_engine::audit::Marking::Plain
    };
    let mut last = None;
    for (time_ms, bytes) in sluice_engine::audit::replay(&events, !output_only, marking) {
        if let Some(previous) = last
            && speed > 0.0
        {
            let gap = Duration::from_millis(time_ms.saturating_sub(previous)).mul_f64(1.0 / speed);
            tokio::time::sleep(gap.min(Duration::from_secs(5))).await;
        }
        last = Some(time_ms);
        stdout.write_all(&bytes)?;
        stdout.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn trace(client: Client, id: &str) -> anyhow::Result<ExitCode> {
    let events = events(&client, id, "trace").await?;
    if events.is_empty() {
        bail!("session {id} has no recorded events");
    }
    std::io::stdout().write_all(crate::trace::render(&events).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

pub async fn export(client: Client, id: &str, format: &str) -> anyhow::Result<ExitCode> {
    // The gateway renders the asciicast (at the session's terminal size, with its resizes).
    let form = if format == "asciicast" {
        "asciicast"
    } else {
        "export-jsonl"
    };
    let body = client
        .get(&format!("/api/sessions/{id}/events?form={form}"))
        .await?;
    std::io::stdout().write_all(&body)?;
    Ok(ExitCode::SUCCESS)
}

/// What `sluice verify` checks the record against.
#[derive(Debug, Default)]
pub struct VerifyArgs {
    pub public_keys: Vec<String>,
    pub heads: Vec<String>,
    pub accept_loss: bool,
    pub print_head: bool,
}

impl VerifyArgs {
    fn anchors(&self) -> anyhow::Result<Vec<sluice_record::Anchor>> {
        let mut anchors = Vec::new();
        for arg in &self.heads {
            anchors.extend(sluice_record::anchors_from(arg)?);
        }
        Ok(anchors)
    }
}

fn print_report(report: &serde_json::Value, print_head: bool) -> ExitCode {
    let holds = report["holds"].as_bool().unwrap_or(false);
    let entries = &report["entries"];
    if holds {
        println!("record verified: {entries} entries hold");
        if report["purged"].as_u64().unwrap_or(0) > 0 {
            println!(
                "purged by retention (payloads deleted, digests kept): {} entries: {}",
                report["purged"],
                entry_ranges(&report["purged_ranges"])
            );
        }
        let confirmed = report["anchors_confirmed"].as_u64().unwrap_or(0);
        if confirmed > 0 {
            println!("heads kept outside: {confirmed} reached and matched");
        }
        if report["trust"] == "self-consistent" {
            println!(
                "note: no trusted key was given (--public-key, or --head with a head kept outside), so only the store's consistency with itself was checked: whoever can write the store could have rewritten and re-signed it"
            );
        }
    } else {
        println!(
            "record does NOT verify: {}",
            report["problem"].as_str().unwrap_or("unknown problem")
        );
    }
    for gap in report["gaps"].as_array().into_iter().flatten() {
        println!(
            "gap: entries {}-{} are not in the store: {} recorded at entry {}",
            gap["from"],
            gap["to"],
            gap["kind"].as_str().unwrap_or("?"),
            gap["at"]
        );
    }
    for rotation in report["rotations"].as_array().into_iter().flatten() {
        println!("key rotation at entry {rotation} (signed by the previous key)");
    }
    for node in report["node_keys"].as_array().into_iter().flatten() {
        println!(
            "node {} announced its key at entry {} (endorsed by the cluster key)",
            node["node"].as_str().unwrap_or("?"),
            node["at"]
        );
    }
    for note in report["notes"].as_array().into_iter().flatten() {
        println!("note: {}", note.as_str().unwrap_or_default());
    }
    if report["repaired"] == true {
        println!("note: the store was not closed cleanly; a repaired copy was verified");
    }
    if print_head {
        println!(
            "{}",
            serde_json::to_string_pretty(&report["head"]).unwrap_or_default()
        );
    }
    if holds {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

pub async fn verify_online(client: Client, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    if !args.public_keys.is_empty() {
        bail!("--public-key is for offline verify (--store): the gateway checks its own key");
    }
    let heads: Vec<_> = args.anchors()?.into_iter().map(|a| a.head).collect();
    let path = if args.accept_loss {
        "/api/verify?accept_loss"
    } else {
        "/api/verify"
    };
    let body = client.post_json(path, serde_json::to_vec(&heads)?).await?;
    let report: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(print_report(&report, args.print_head))
}

pub fn verify_offline(
    store: &Path,
    config_path: Option<PathBuf>,
    args: &VerifyArgs,
) -> anyhow::Result<ExitCode> {
    let database = postgres_url(&store.to_string_lossy());
    if database.is_none() && !store.is_file() {
        bail!("no store at {}", store.display());
    }
    let trusted_keys = args
        .public_keys
        .iter()
        .map(|k| sluice_record::parse_public_key(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = sluice_record::VerifyOptions {
        trusted_keys,
        anchors: args.anchors()?,
        accept_loss: args.accept_loss,
    };
    let report = match database {
        Some(url) => {
            let config = load_config(config_path)?;
            let payloads = config.store.payloads.as_ref().map(|p| p.bucket());
            sluice_record_pg::verify_url(&url, payloads.as_ref(), &options)
        }
        None => sluice_record::verify_store(store, options),
    };
    Ok(print_report(
        &sluice_engine::audit::report_json(&report),
        args.print_head,
    ))
}

/// `sluice agents`: each agent's state, address, version, live sessions and when it was last
/// heard from.
pub async fn agents(client: Client, raw: bool) -> anyhow::Result<ExitCode> {
    let body = client.get("/api/agents").await?;
    if raw {
        std::io::stdout().write_all(&body)?;
        println!();
        return Ok(ExitCode::SUCCESS);
    }
    let agents: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    if agents.is_empty() {
        println!("no agents: add one with `sluice agents add NAME` (see docs/agents.md)");
        return Ok(ExitCode::SUCCESS);
    }
    let time = |v: &serde_json::Value| {
        v.as_u64()
            .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
            .map_or("-".to_string(), |t| {
                t.format("%Y-%m-%d %H:%M:%S").to_string()
            })
    };
    // Several gateways: the node that holds each agent's tunnel.
    let clustered = agents.iter().any(|a| a["node"].is_string());
    let state = |a: &serde_json::Value| {
        let state = a["state"].as_str().unwrap_or("-");
        match a["node"].as_str() {
            Some(node) if clustered => format!("{state}@{node}"),
            _ => state.to_string(),
        }
    };
    println!(
        "{:<16} {:<13} {:<19} {:<22} {:<9} {:>8}  LAST SEEN",
        "AGENT", "STATE", "CONNECTED SINCE", "ADDRESS", "VERSION", "SESSIONS"
    );
    for a in &agents {
        let text = |k: &str| a[k].as_str().unwrap_or("-").to_string();
        println!(
            "{:<16} {:<13} {:<19} {:<22} {:<9} {:>8}  {}",
            text("name"),
            state(a),
            time(&a["connected_since_ms"]),
            text("address"),
            text("version"),
            a["sessions"].as_u64().unwrap_or(0),
            time(&a["last_seen_ms"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice agents add NAME`: the one-time enrollment token, and how to use it.
pub async fn add_agent(client: Client, name: &str) -> anyhow::Result<ExitCode> {
    let path = format!("/api/agents?name={}", crate::client::query_value(name));
    let added: serde_json::Value = serde_json::from_slice(&client.post(&path).await?)?;
    let token = added["token"].as_str().unwrap_or_default();
    let expires = added["expires_ms"]
        .as_u64()
        .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
        .map_or("-".to_string(), |t| {
            t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
        });
    println!("agent `{name}` added; its enrollment token works once, until {expires}:");
    println!("{token}");
    println!("run it where the runtimes are (with the gateway's CA from `sluice ca export`):");
    println!("  SLUICE_AGENT_TOKEN={token} sluice agent --gateway HOST:PORT --ca ca.pem");
    Ok(ExitCode::SUCCESS)
}

/// `sluice agents revoke NAME`.
pub async fn revoke_agent(client: Client, name: &str) -> anyhow::Result<ExitCode> {
    let path = format!("/api/agents/{}/revoke", crate::client::query_value(name));
    client.post(&path).await?;
    println!(
        "agent `{name}` revoked: its connection and sessions ended, and it is refused from now on"
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn connections(client: Client, json: bool) -> anyhow::Result<ExitCode> {
    let body = client.get("/api/connections").await?;
    if json {
        std::io::stdout().write_all(&body)?;
        println!();
        return Ok(ExitCode::SUCCESS);
    }
    let list: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    println!(
        "{:<16} {:<9} {:<12} {:<22} ROLES",
        "CONNECTION", "KIND", "DEFINED IN", "LISTENS"
    );
    for c in list {
        let roles: Vec<&str> = c["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .collect();
        println!(
            "{:<16} {:<9} {:<12} {:<22} {}",
            c["name"].as_str().unwrap_or("?"),
            c["kind"].as_str().unwrap_or("?"),
            c["source"].as_str().unwrap_or("?"),
            c["listen"].as_str().unwrap_or("-"),
            roles.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice connections add|edit NAME FILE`: the file's TOML table, sent as JSON.
pub async fn put_connection(
    client: Client,
    name: &str,
    file: &std::path::Path,
    edit: bool,
) -> anyhow::Result<ExitCode> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not a TOML table", file.display()))?;
    let body = serde_json::json!({"name": name, "table": table});
    let answer = if edit {
        client
            .send_json(
                "PUT",
                &format!("/api/connections/{name}"),
                body.to_string().into_bytes(),
            )
            .await?
    } else {
        client
            .post_json("/api/connections", body.to_string().into_bytes())
            .await?
    };
    println!(
        "connection {name} {}",
        if edit { "changed" } else { "added" }
    );
    Ok(other_nodes(&serde_json::from_slice(&answer)?))
}

pub async fn remove_connection(client: Client, name: &str) -> anyhow::Result<ExitCode> {
    let answer = client
        .send_json("DELETE", &format!("/api/connections/{name}"), Vec::new())
        .await?;
    println!("connection {name} removed");
    Ok(other_nodes(&serde_json::from_slice(&answer)?))
}
