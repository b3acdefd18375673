//! The `sluice` command line: its arguments (clap) and what each command runs.

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sluice_core::frame::SessionKind;
use sluice_engine::policy::{PluginSpec, Source};
use sluice_plugin_host::{HostConfig, PluginHost};

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

/// Where the gateway is and who you are, for the client commands.
#[derive(clap::Args)]
struct Target {
    /// The gateway, HOST:PORT.
    #[arg(long, env = "SLUICE_GATEWAY", default_value = "127.0.0.1:7443")]
    gateway: String,
    /// Your token.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The gateway's CA certificate (default: sluice-data/tls/ca.pem here).
    #[arg(long, env = "SLUICE_CA")]
    ca: Option<PathBuf>,
}

impl Target {
    /// A client with `--token`/`SLUICE_TOKEN`, else the tokens `sluice login` saved for this
    /// gateway (renewed first when they expire).
    fn client(self) -> anyhow::Result<crate::client::Client> {
        // An empty SLUICE_TOKEN is no token: say so, rather than send an empty one.
        let token = match self.token.filter(|t| !t.trim().is_empty()) {
            Some(token) => Some(token),
            None => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(crate::login::token(&self.gateway))?,
        };
        crate::client::Client::new(&self.gateway, token, self.ca)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Sign in at the gateway's identity provider (OpenID Connect, in a browser); every other
    /// command then uses the saved tokens.
    Login {
        /// Print the sign-in page's address instead of opening a browser.
        #[arg(long)]
        no_browser: bool,
        /// The device flow, for machines without a browser: enter the printed code on any
        /// other device.
        #[arg(long, conflicts_with = "no_browser")]
        device: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Who the gateway takes you for: your subject, groups and roles on each connection.
    Whoami {
        #[command(flatten)]
        target: Target,
    },
    /// Get an SSH certificate for yourself from the gateway's SSH CA, written beside your
    /// public key (`id_ed25519-cert.pub`, where `ssh` looks): `ssh -p 2222 CONNECTION@HOST`
    /// then signs in without a token until it expires (docs/ssh.md).
    SshCert {
        /// Your public key (default: ~/.ssh/id_ed25519.pub; make one with `ssh-keygen -t ed25519`).
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Print `Host` blocks for ~/.ssh/config, one per connection you may reach over SSH, and
    /// the gateway's `known_hosts` line: then `ssh CONNECTION` just works (docs/ssh.md).
    SshConfig {
        /// The private key whose certificate `sluice ssh-cert` made (default: ~/.ssh/id_ed25519).
        #[arg(long)]
        identity: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Forget the tokens `sluice login` saved for the gateway.
    Logout {
        #[command(flatten)]
        target: Target,
    },
    /// Start the gateway (default: ./sluice.toml if present, else the built-in default).
    Serve {
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// Development only: reload the policy by itself when a policy file or a plugin file
        /// it names changes (a rebuilt plugin applies without `sluice reload`).
        #[arg(long)]
        watch: bool,
    },
    /// Open an interactive session on a connection; with --port, forward a local port to a
    /// PostgreSQL or TCP connection.
    Connect {
        connection: String,
        /// Listen on 127.0.0.1:PORT (0: any free port) and tunnel each client to the connection.
        #[arg(long)]
        port: Option<u16>,
        /// Why you connect; reviewers see it when the connection needs approved access.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Run a script or a command line on a connection; its exit status becomes this one's.
    Exec {
        connection: String,
        /// The script to run.
        #[arg(short = 'f', long = "file", conflicts_with = "words")]
        file: Option<PathBuf>,
        /// A command line, run as one line of the connection's script program.
        #[arg(last = true)]
        words: Vec<String>,
        /// Why you run it; reviewers see it when the connection needs approved access.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Carry an MCP client's stdio to an `mcp` connection (`sluice mcp NAME` is the command an
    /// MCP client launches; docs/ai-agents.md). Signs in with your saved or given token.
    Mcp {
        connection: String,
        #[command(flatten)]
        target: Target,
    },
    /// List reviews: held commands and access requests you asked for or may decide.
    Reviews {
        /// pending, approved, rejected, expired or session-ended (default: all).
        #[arg(long, conflicts_with = "watch")]
        status: Option<String>,
        /// Stay and print each change as it happens (pending reviews first).
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Show, approve or reject one review.
    #[command(subcommand)]
    Review(ReviewCommand),
    /// List recorded sessions.
    Sessions {
        /// Only live sessions.
        #[arg(long)]
        active: bool,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        connection: Option<String>,
        /// Only sessions started at or after: unix seconds, or an age like 30m, 2h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// Only sessions started before: unix seconds, or an age like 30m, 2h, 7d.
        #[arg(long)]
        until: Option<String>,
        /// Only sessions whose recorded payloads contain TEXT.
        #[arg(long)]
        grep: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// End a live session (auditors).
    Kill {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Play a session back in this terminal, with its timing: its output, and each script
    /// or SQL statement the client sent (and each review of one) marked `> `.
    Replay {
        id: String,
        /// Playback speed; 0 prints everything at once.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// The output alone, as the client's terminal showed it.
        #[arg(long)]
        output_only: bool,
        #[command(flatten)]
        target: Target,
    },
    /// A session frame by frame: each frame decoded (as recorded), which plugin answered
    /// what and how long each call took, refusals, holds and reviews.
    Trace {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Export a session: asciicast (for `asciinema play`) or jsonl (every event).
    Export {
        id: String,
        #[arg(long, value_parser = ["asciicast", "jsonl"])]
        format: String,
        #[command(flatten)]
        target: Target,
    },
    /// Verify the record: through the running gateway, or offline with --store.
    Verify {
        /// A store to verify offline: a file (a copy, an export, or the gateway's while it is
        /// stopped) or a PostgreSQL URL (or env:NAME holding one).
        #[arg(long)]
        store: Option<PathBuf>,
        /// The record's public key (64 hex digits, or a file holding them) to trust; offline,
        /// without it or a --head, only the store's consistency with itself can be checked.
        #[arg(long)]
        public_key: Vec<String>,
        /// A head kept outside the gateway: `--print-head`'s output, a sink's NDJSON export
        /// or a folder of them (an S3 bucket's files), or the JSON itself. The store must
        /// reach it and agree with it. Any number.
        #[arg(long = "head")]
        heads: Vec<String>,
        /// Accept entries that were lost (a repair after a crash), reporting them.
        #[arg(long)]
        accept_loss: bool,
        /// Print the signed head, to anchor it elsewhere.
        #[arg(long)]
        print_head: bool,
        /// With --store URL: the configuration whose `[store.payloads]` names the bucket
        /// holding the record's moved payloads (default: ./sluice.toml when there is one).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Run an agent: next to runtimes in a private network, it dials out to the gateway and
    /// carries the sessions of connections that name it (`agent = "NAME"`). It never listens.
    Agent {
        /// The gateway, HOST:PORT.
        #[arg(long, env = "SLUICE_GATEWAY")]
        gateway: String,
        /// The gateway's CA certificate (`sluice ca export` where it runs): the only one
        /// trusted.
        #[arg(long, env = "SLUICE_CA")]
        ca: PathBuf,
        /// The name the gateway's certificate carries, when the agent dials it by another
        /// (the gateway's own CA makes it for `localhost` and `127.0.0.1`).
        #[arg(long)]
        server_name: Option<String>,
        /// The one-time enrollment token from `sluice agents add NAME` (first run only).
        #[arg(long, env = "SLUICE_AGENT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Where the agent keeps its key and name.
        #[arg(long, default_value = "sluice-agent")]
        state: PathBuf,
        /// Ping the gateway this often (ms); two unanswered ends the connection.
        #[arg(long, default_value_t = 15_000)]
        keepalive_ms: u64,
        /// Reconnect after this long at first (ms), doubling up to --retry-max-ms.
        #[arg(long, default_value_t = 500)]
        retry_min_ms: u64,
        #[arg(long, default_value_t = 30_000)]
        retry_max_ms: u64,
    },
    /// The gateway's agents (admin): list them, add one (prints its enrollment token), or
    /// revoke one (its connection and sessions end at once).
    Agents {
        #[command(subcommand)]
        command: Option<AgentsCommand>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// The connections: list them; admins add, change or remove runtime ones (no restart;
    /// secrets are write-only).
    Connections {
        #[command(subcommand)]
        command: Option<ConnectionsCommand>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// The gateways sharing the record (admin): each node's state, last heartbeat and live
    /// sessions.
    Nodes {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Where the record is delivered: each sink's position, lag, state and last error.
    Sinks {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Apply the policy folder again without a restart (as `kill -HUP` does); a policy that
    /// does not load is refused and the running one stays.
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Run retention now: purge the payloads of expired sessions and decisions, then compact.
    Retention {
        #[command(flatten)]
        target: Target,
    },
    /// The gateway's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Maintain the record store while the gateway is stopped: restore a backup, change keys.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Check and run plugins locally, without a gateway.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Load the policies in a folder and report what they declare, or the first error; warn
    /// about plugins that never see the frames their connection's sessions send.
    Policy {
        /// The policy folder.
        #[arg(default_value = "policies")]
        dir: PathBuf,
        /// The gateway's configuration, for the kinds of its connections (default:
        /// ./sluice.toml if present, else the built-in one).
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ReviewCommand {
    /// Everything about a review: what was held, why, who asked, who decided.
    Show {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Approve: the held command runs (once enough distinct reviewers approved).
    Approve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Reject: the held command is refused with your reason.
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// A new agent: prints its one-time enrollment token (good for `[agents]
    /// enroll_ttl_seconds`, an hour by default).
    Add { name: String },
    /// Refuse the agent from now on; its connection and sessions end at once.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum ConnectionsCommand {
    /// A new connection, from a TOML file (`-` for standard input) holding its table as in
    /// sluice.toml: `kind = "exec"`, `interactive = [...]`, ...
    Add { name: String, file: PathBuf },
    /// Change a runtime connection; secrets the file leaves out are kept.
    Edit { name: String, file: PathBuf },
    /// Remove a runtime connection.
    Rm { name: String },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the CA certificate (PEM) that clients and psql should trust; with `--ssh`, a
    /// `known_hosts` line for the SSH front door's host key.
    Export {
        /// The gateway's data folder.
        #[arg(long, default_value = "sluice-data")]
        data_dir: PathBuf,
        /// The SSH host key, as a `known_hosts` line.
        #[arg(long)]
        ssh: bool,
        /// The host the line names: as clients reach the gateway (`ssh -p 2222 …@HOST`).
        #[arg(long, default_value = "[127.0.0.1]:2222", requires = "ssh")]
        host: String,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Put a backup copy of the store in place and record it (a signed `restore` entry that
    /// declares the entries it abandons), so verify tells the restore from a rollback.
    Restore {
        /// The backup: a copy of record.redb.
        backup: PathBuf,
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Announce the configured record key (`[gateway] record_key`) in the chain, signed by
    /// the key in use until now; start the gateway with the new key afterwards.
    RotateKey {
        /// The key in use until now: a key file or env:NAME.
        #[arg(long)]
        old_key: String,
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Copy the embedded store (the gateway stopped) into an empty PostgreSQL database, with
    /// its chain intact, and verify the copy there.
    Copy {
        /// The PostgreSQL URL (or env:NAME holding it).
        #[arg(long)]
        to: String,
        /// The store file (default: the configured data folder's record.redb).
        #[arg(long)]
        from: Option<PathBuf>,
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Write the shared PostgreSQL record to a store file, from one snapshot, for
    /// `sluice verify --store FILE` away from the database.
    Export {
        /// The new file.
        #[arg(long)]
        to: PathBuf,
        /// The PostgreSQL URL (or env:NAME; default: the configured [store] url).
        #[arg(long)]
        from: Option<String>,
        #[arg(long, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Make a plugin project in the folder NAME: a filter skeleton with native tests, a
    /// sample frames.jsonl, the policy snippet that enables it, and the SDK and contract it
    /// builds with (carried inside this binary).
    New {
        /// The project folder; its last component names the plugin (e.g. mask-customer-ids).
        name: PathBuf,
        /// The plugin's language: rust (cargo), python (componentize-py) or js
        /// (componentize-js).
        #[arg(long, value_enum, default_value = "rust")]
        lang: crate::scaffold::Lang,
    },
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
        #[arg(long, default_value_t = sluice_engine::policy::FILTER_DEADLINE_MS)]
        deadline_ms: u64,
        /// The instance's memory limit, as `max_memory_bytes` in a policy.
        #[arg(long, default_value_t = sluice_engine::policy::DEFAULT_MAX_MEMORY_BYTES)]
        max_memory_bytes: u64,
        /// Instead of JSON lines on standard input, send the frames a session of this kind
        /// makes of --input and --output: exec-script (a one-shot script), terminal (lines
        /// typed at a terminal), pg (a PostgreSQL query, output as rows) or tcp.
        #[arg(long = "as", value_name = "KIND", value_parser = session_kind)]
        session: Option<SessionKind>,
        /// What the client sends (with --as).
        #[arg(long, requires = "session")]
        input: Option<String>,
        /// What the target answers (with --as).
        #[arg(long, requires = "session")]
        output: Option<String>,
        /// Show what the plugin logged for each frame; the shipped `mask` and `approve` are
        /// told to explain (which detector masked which bytes with which style; which rule
        /// matched which statement or command), never showing the values.
        #[arg(long)]
        explain: bool,
    },
}

fn session_kind(name: &str) -> Result<SessionKind, String> {
    SessionKind::from_name(name).ok_or_else(|| {
        let names: Vec<_> = SessionKind::ALL.iter().map(|k| k.name()).collect();
        format!("one of {}", names.join(", "))
    })
}

/// The `sluice` command: parses the arguments and runs the command. The binary hands the
/// built-in plugins to the plugin host first.
pub fn main() -> ExitCode {
    quiet_on_closed_pipe();
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

/// `sluice sessions | head -1`: the reader closing the pipe ends the command quietly (exit
/// 141, as a shell reports SIGPIPE) instead of with a panic and a backtrace.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Serve { config, watch } => {
            runtime()?.block_on(crate::commands::serve(config, watch))
        }
        Command::Login {
            no_browser,
            device,
            target,
        } => {
            let gateway = target.gateway.clone();
            let client = crate::client::Client::new(&gateway, None, target.ca)?;
            let flow = if device {
                crate::login::Flow::Device
            } else {
                crate::login::Flow::Browser
            };
            runtime()?.block_on(crate::commands::login(client, &gateway, flow, !no_browser))
        }
        Command::Logout { target } => {
            if crate::login::logout(&target.gateway)? {
                eprintln!("signed out of {}", target.gateway);
            } else {
                eprintln!("not signed in to {}", target.gateway);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Connect {
            connection,
            port,
            reason,
            target,
        } => {
            let client = target.client()?.with_reason(reason);
            let (runtime, status) = match port {
                Some(port) => {
                    let runtime = runtime()?;
                    let status =
                        runtime.block_on(crate::client::tunnel(&client, &connection, port));
                    (runtime, status)
                }
                None => {
                    // One person's terminal is one session: a runtime on this thread alone
                    // wakes once per keystroke and per output, where workers would hand each over.
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let status = runtime.block_on(crate::client::connect(&client, &connection));
                    (runtime, status)
                }
            };
            // Standard input that the reactor cannot poll (a file) is read on a blocking
            // thread that cannot be cancelled: once the session is over (ended by the program,
            // an auditor or a lost agent), do not wait for a read that would only end it.
            runtime.shutdown_background();
            Ok(ExitCode::from(status?))
        }
        Command::Exec {
            connection,
            file,
            words,
            reason,
            target,
        } => {
            let script = match file {
                Some(path) => std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None if words.is_empty() => {
                    bail!("give a script with -f FILE or a command after --")
                }
                None => format!("{}\n", words.join(" ")).into_bytes(),
            };
            let client = target.client()?.with_reason(reason);
            Ok(ExitCode::from(runtime()?.block_on(crate::client::exec(
                &client,
                &connection,
                script,
            ))?))
        }
        Command::Mcp { connection, target } => {
            runtime()?.block_on(crate::mcp::bridge(target.client()?, &connection))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reviews {
            status,
            watch,
            target,
        } => runtime()?.block_on(crate::commands::reviews(target.client()?, status, watch)),
        Command::Review(ReviewCommand::Show { id, target }) => {
            runtime()?.block_on(crate::commands::review_show(target.client()?, &id))
        }
        Command::Review(ReviewCommand::Approve { id, reason, target }) => runtime()?.block_on(
            crate::commands::review_decide(target.client()?, &id, "approve", reason),
        ),
        Command::Review(ReviewCommand::Reject { id, reason, target }) => runtime()?.block_on(
            crate::commands::review_decide(target.client()?, &id, "reject", Some(reason)),
        ),
        Command::Sessions {
            active,
            user,
            connection,
            since,
            until,
            grep,
            target,
        } => {
            let filter = crate::commands::SessionFilter {
                active,
                user,
                connection,
                since,
                until,
                grep,
            };
            runtime()?.block_on(crate::commands::sessions(target.client()?, filter))
        }
        Command::SshCert { key, target } => {
            let key = key.unwrap_or_else(|| crate::ssh::home_ssh("id_ed25519.pub"));
            runtime()?.block_on(crate::ssh::certificate(target.client()?, &key))
        }
        Command::SshConfig { identity, target } => {
            let identity = identity.unwrap_or_else(|| crate::ssh::home_ssh("id_ed25519"));
            let gateway = target.gateway.clone();
            runtime()?.block_on(crate::ssh::config(target.client()?, &gateway, &identity))
        }
        Command::Whoami { target } => {
            runtime()?.block_on(crate::commands::whoami(target.client()?))
        }
        Command::Agent {
            gateway,
            ca,
            server_name,
            token,
            state,
            keepalive_ms,
            retry_min_ms,
            retry_max_ms,
        } => {
            if keepalive_ms == 0 || retry_min_ms == 0 || retry_max_ms < retry_min_ms {
                bail!(
                    "--keepalive-ms and --retry-min-ms: at least 1; --retry-max-ms: at least --retry-min-ms"
                );
            }
            let client =
                crate::client::Client::new(&gateway, None, Some(ca))?.with_server_name(server_name);
            let options = crate::agent::Options {
                client,
                state,
                token: token.filter(|t| !t.trim().is_empty()),
                keepalive: std::time::Duration::from_millis(keepalive_ms),
                retry_min: std::time::Duration::from_millis(retry_min_ms),
                retry_max: std::time::Duration::from_millis(retry_max_ms),
            };
            runtime()?.block_on(crate::agent::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Connections {
            command,
            json,
            target,
        } => {
            let client = target.client()?;
            runtime()?.block_on(async move {
                match command {
                    None => crate::commands::connections(client, json).await,
                    Some(ConnectionsCommand::Add { name, file }) => {
                        crate::commands::put_connection(client, &name, &file, false).await
                    }
                    Some(ConnectionsCommand::Edit { name, file }) => {
                        crate::commands::put_connection(client, &name, &file, true).await
                    }
                    Some(ConnectionsCommand::Rm { name }) => {
                        crate::commands::remove_connection(client, &name).await
                    }
                }
            })
        }
        Command::Agents {
            command,
            json,
            target,
        } => {
            let client = target.client()?;
            runtime()?.block_on(async move {
                match command {
                    None => crate::commands::agents(client, json).await,
                    Some(AgentsCommand::Add { name }) => {
                        crate::commands::add_agent(client, &name).await
                    }
                    Some(AgentsCommand::Revoke { name }) => {
                        crate::commands::revoke_agent(client, &name).await
                    }
                }
            })
        }
        Command::Nodes { json, target } => {
            runtime()?.block_on(crate::commands::nodes(target.client()?, json))
        }
        Command::Sinks { json, target } => {
            runtime()?.block_on(crate::commands::sinks(target.client()?, json))
        }
        Command::Reload { target } => {
            runtime()?.block_on(crate::commands::reload(target.client()?))
        }
        Command::Retention { target } => {
            runtime()?.block_on(crate::commands::retention(target.client()?))
        }
        Command::Kill { id, target } => {
            runtime()?.block_on(crate::commands::kill(target.client()?, &id))
        }
        Command::Replay {
            id,
            speed,
            output_only,
            target,
        } => runtime()?.block_on(crate::commands::replay(
            target.client()?,
            &id,
            speed,
            output_only,
        )),
        Command::Trace { id, target } => {
            runtime()?.block_on(crate::commands::trace(target.client()?, &id))
        }
        Command::Export { id, format, target } => {
            runtime()?.block_on(crate::commands::export(target.client()?, &id, &format))
        }
        Command::Verify {
            store,
            public_key,
            heads,
            accept_loss,
            print_head,
            config,
            target,
        } => {
            let check = crate::commands::VerifyArgs {
                public_keys: public_key,
                heads,
                accept_loss,
                print_head,
            };
            match store {
                Some(path) => crate::commands::verify_offline(&path, config, &check),
                None => {
                    runtime()?.block_on(crate::commands::verify_online(target.client()?, &check))
                }
            }
        }
        Command::Store(StoreCommand::Restore { backup, config }) => {
            crate::commands::store_restore(config, &backup)
        }
        Command::Store(StoreCommand::RotateKey { old_key, config }) => {
            crate::commands::store_rotate_key(config, &old_key)
        }
        Command::Store(StoreCommand::Copy { to, from, config }) => {
            crate::commands::store_copy(config, from, &to)
        }
        Command::Store(StoreCommand::Export { to, from, config }) => {
            crate::commands::store_export(config, from, &to)
        }
        Command::Ca(CaCommand::Export {
            data_dir,
            ssh: true,
            host,
        }) => {
            println!(
                "{}",
                sluice_engine::ssh::known_hosts_entry(&data_dir, &host)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca(CaCommand::Export { data_dir, .. }) => {
            let path = sluice_engine::tls::ca_path(&data_dir);
            let pem = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read {} (start the gateway once to make it)",
                    path.display()
                )
            })?;
            print!("{pem}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::New { name, lang }) => {
            use crate::scaffold::Lang;
            let dir = crate::scaffold::new_plugin(&name, lang)?;
            let wasm = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .replace('-', "_");
            let (test, build, built) = match lang {
                Lang::Rust => (
                    "cargo test",
                    "cargo build --release --target wasm32-wasip2".to_string(),
                    format!("target/wasm32-wasip2/release/{wasm}.wasm"),
                ),
                Lang::Python => (
                    "python3 -m unittest",
                    format!("componentize-py -d wit -w filter componentize app -o {wasm}.wasm"),
                    format!("{wasm}.wasm"),
                ),
                Lang::Js => (
                    "npm install && npm test",
                    "npm run build".to_string(),
                    format!("{wasm}.wasm"),
                ),
            };
            println!("made {}", dir.display());
            println!("  cd {}", name.display());
            println!("  {test}    # native tests");
            println!("  {build}    # the component");
            println!("  sluice plugin run {built} --config mask='CUST-[0-9]{{8}}' < frames.jsonl");
            println!("then copy sluice-policy.toml into the gateway's policy folder (README.md)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Check { plugin }) => {
            let host = PluginHost::new(HostConfig::default())?;
            let report = crate::runner::check(&host, source(&plugin))?;
            println!(
                "{plugin}: a `{}` plugin of sluice:plugin@{}{}",
                report.world,
                report.version,
                if report.version == sluice_plugin_host::CONTRACT_VERSION {
                    String::new()
                } else {
                    format!(
                        " (still loaded; the SDK of {} adds content kinds it cannot ask for)",
                        sluice_plugin_host::CONTRACT_VERSION
                    )
                }
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
            max_memory_bytes,
            session,
            input,
            output,
            explain,
        }) => {
            let mut config = config;
            if explain && matches!(plugin.as_str(), "builtin:mask" | "builtin:approve") {
                config.push("explain=true".into());
            }
            let config = plugin_config(&config)?;
            let mut spec = PluginSpec::standalone(
                "local",
                source(&plugin),
                sluice_engine::policy::World::Filter,
                config,
            );
            let max = sluice_engine::policy::MAX_DEADLINE_MS;
            if deadline_ms == 0 || deadline_ms > max {
                bail!("--deadline-ms: {deadline_ms} is out of range (1 to {max}), as in a policy");
            }
            spec.deadline = std::time::Duration::from_millis(deadline_ms);
            let memory =
                sluice_engine::policy::MIN_MEMORY_BYTES..=sluice_engine::policy::MAX_MEMORY_BYTES;
            if !memory.contains(&max_memory_bytes) {
                bail!(
                    "--max-memory-bytes: {max_memory_bytes} is out of range ({} to {}), as in a policy",
                    memory.start(),
                    memory.end()
                );
            }
            spec.max_memory_bytes = max_memory_bytes as usize;
            let host = PluginHost::new(HostConfig::default())?;
            let loaded = host.load(&spec)?;
            let stdout = std::io::stdout();
            match session {
                Some(kind) => {
                    if input.is_none() && output.is_none() {
                        bail!(
                            "--as {} needs --input TEXT, --output TEXT or both",
                            kind.name()
                        );
                    }
                    let frames =
                        crate::runner::session_frames(kind, input.as_deref(), output.as_deref());
                    crate::runner::run(&loaded, kind.protocol(), frames, explain, stdout.lock())?;
                }
                None => {
                    let frames = crate::runner::json_frames(BufReader::new(std::io::stdin()));
                    crate::runner::run(&loaded, "exec", frames, explain, stdout.lock())?;
                }
            }
            stdout.lock().flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { dir, config } => {
            let config = crate::commands::load_config(config)?;
            let policy = sluice_engine::policy::Policy::load_dir(&dir)?;
            let host = PluginHost::new(HostConfig::default())?;
            let mut loaded = std::collections::BTreeMap::new();
            for spec in policy.plugins.values() {
                let plugin = host.load(spec)?;
                println!(
                    "plugin {} ({}, {}): sha256 {}",
                    spec.name,
                    spec.world,
                    spec.source,
                    hex::encode(plugin.digest())
                );
                loaded.insert(spec.name.clone(), plugin);
            }
            let mut blind_spots = Vec::new();
            for (connection, chain) in &policy.chains {
                println!("chain {connection}: {}", chain.join(" -> "));
                match config.connections.get(connection) {
                    Some(kind) => {
                        let plugins: Vec<_> = chain.iter().map(|p| loaded[p].clone()).collect();
                        blind_spots.extend(sluice_engine::coverage::chain_blind_spots(
                            connection, kind, &plugins,
                        ));
                    }
                    None => eprintln!(
                        "warning: chain `{connection}` names no connection of the configuration; it applies to nothing"
                    ),
                }
            }
            for spot in blind_spots {
                eprintln!("warning: {spot}");
            }
            for (name, sink) in &policy.sinks {
                let allowed = &policy.plugins[&sink.plugin].allow_hosts;
                println!(
                    "sink {name}: plugin {}, batches of {}, may reach {}",
                    sink.plugin,
                    sink.batch_events,
                    if allowed.is_empty() {
                        "nothing".to_string()
                    } else {
                        allowed.join(", ")
                    }
                );
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
