//! The `sluice` command: parses the command line and calls into the library.

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sluice::plugin_host::{HostConfig, PluginHost};
use sluice::policy::{PluginSpec, Source};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "An identity-aware gateway that records, masks and gates sessions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check and run plugins locally, without a gateway.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Load the policies in a folder and report what they declare, or the first error.
    Policy {
        /// The policy folder.
        #[arg(default_value = "policies")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Validate a component against the plugin contract: its world, its imports, its digest.
    Check {
        /// A .wasm file, or builtin:NAME.
        plugin: String,
    },
    /// Feed frames (JSON lines on standard input) to a filter plugin and print each verdict,
    /// with the time per call and the memory used.
    Run {
        /// A .wasm file, or builtin:NAME.
        plugin: String,
        /// The plugin's config: a TOML or JSON FILE with the whole table, or one KEY=VALUE
        /// setting (VALUE read as TOML when it parses: numbers, booleans, arrays; else as a
        /// string). Repeatable; settings apply on top of the file.
        #[arg(long = "config", value_name = "FILE|KEY=VALUE")]
        config: Vec<String>,
        /// Per-call deadline in milliseconds.
        #[arg(long, default_value_t = sluice::policy::FILTER_DEADLINE_MS)]
        deadline_ms: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("sluice: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugin(PluginCommand::Check { plugin }) => {
            let host = PluginHost::new(HostConfig::default())?;
            let report = sluice::runner::check(&host, source(&plugin))?;
            println!(
                "{plugin}: a `{}` plugin of sluice:plugin@0.1.0",
                report.world
            );
            println!("sha256: {}", report.sha256);
            println!(
                "imports: {}",
                if report.imports.is_empty() {
                    "none".into()
                } else {
                    report.imports.join(", ")
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Run {
            plugin,
            config,
            deadline_ms,
        }) => {
            let config = plugin_config(&config)?;
            let mut spec = PluginSpec::standalone(
                "local",
                source(&plugin),
                sluice::policy::World::Filter,
                config,
            );
            spec.deadline = std::time::Duration::from_millis(deadline_ms);
            let host = PluginHost::new(HostConfig::default())?;
            let loaded = host.load(&spec)?;
            let stdout = std::io::stdout();
            sluice::runner::run(&loaded, BufReader::new(std::io::stdin()), stdout.lock())?;
            stdout.lock().flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { dir } => {
            let policy = sluice::policy::Policy::load_dir(&dir)?;
            let host = PluginHost::new(HostConfig::default())?;
            for spec in policy.plugins.values() {
                let loaded = host.load(spec)?;
                println!(
                    "plugin {} ({}, {}): sha256 {}",
                    spec.name,
                    spec.world,
                    spec.source,
                    hex::encode(loaded.digest())
                );
            }
            for (connection, chain) in &policy.chains {
                println!("chain {connection}: {}", chain.join(" -> "));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn source(arg: &str) -> Source {
    match arg.strip_prefix("builtin:") {
        Some(name) => Source::Builtin(name.to_string()),
        None => Source::File(PathBuf::from(arg)),
    }
}

/// Builds the plugin's config (JSON, as `init` receives it) from files and KEY=VALUE pairs.
fn plugin_config(args: &[String]) -> anyhow::Result<String> {
    let (settings, files): (Vec<&String>, Vec<&String>) =
        args.iter().partition(|a| a.contains('='));
    if files.len() > 1 {
        bail!("--config takes one FILE (and any number of KEY=VALUE settings)");
    }
    let mut table = match files.first().map(std::path::Path::new) {
        None => serde_json::Map::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let value: serde_json::Value = if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not valid JSON", path.display()))?
            } else {
                let table: toml::Table = toml::from_str(&text)
                    .with_context(|| format!("{} is not valid TOML", path.display()))?;
                serde_json::to_value(table)?
            };
            match value {
                serde_json::Value::Object(map) => map,
                _ => bail!("{}: the config must be a table", path.display()),
            }
        }
    };
    for setting in settings {
        let Some((key, value)) = setting.split_once('=') else {
            unreachable!("partitioned on '='")
        };
        let value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
            Ok(mut t) => serde_json::to_value(t.remove("v"))?,
            Err(_) => serde_json::Value::String(value.to_string()),
        };
        table.insert(key.to_string(), value);
    }
    Ok(serde_json::Value::Object(table).to_string())
}
