//! `sluice.toml`: gateway settings, identity sources and connections. Plugin chains, roles
//! and retention live in the policies. Secrets are never written here: connection
//! environment values can name an environment variable to read at start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The configuration `sluice serve` uses when there is no `sluice.toml`.
pub const DEFAULT: &str = include_str!("../../../sluice.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: Gateway,
    /// Static tokens (service accounts), stored as SHA-256 hashes.
    #[serde(default)]
    pub tokens: Vec<StaticToken>,
    /// The OpenID provider whose tokens identify people (and machines).
    pub oidc: Option<OidcConfig>,
    #[serde(default)]
    pub connections: BTreeMap<String, Connection>,
    /// How sink plugins' outgoing requests resolve names.
    #[serde(default)]
    pub egress: Egress,
    /// The timers of agents' connections.
    #[serde(default)]
    pub agents: AgentSettings,
    /// How long a browser stays signed in to the web console.
    #[serde(default)]
    pub console: ConsoleSettings,
    /// Where the record is kept: the embedded store (default) or a PostgreSQL database that
    /// several gateways share.
    #[serde(default)]
    pub store: StoreSettings,
}

/// `[store]`: `kind = "redb"` (the default: `DATA/record.redb`) or `kind = "postgres"` with
/// `url` (`env:NAME` to keep the password out of the file), this gateway's `node` name
/// (unique in the cluster; default: the host name) and the `cluster_key` every node shares
/// (`env:NAME` or a file holding 64 hexadecimal digits, an Ed25519 seed): it endorses each
/// node's own record key, so verify trusts one key for all of them. Each node beats every
/// `heartbeat_ms`; one silent for `node_timeout_ms` is declared gone, and a survivor closes
/// its sessions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    #[serde(default)]
    pub kind: StoreKind,
    pub url: Option<String>,
    pub node: Option<String>,
    pub cluster_key: Option<String>,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    #[serde(default = "default_node_timeout_ms")]
    pub node_timeout_ms: u64,
    /// Where payload bytes end up: in PostgreSQL (no `[store.payloads]`) or in a bucket.
    pub payloads: Option<PayloadSettings>,
    /// `host:port` other nodes reach this one's listener by, to relay sessions to agents
    /// whose tunnel this node holds. Default: the listen address, unless it is a wildcard.
    pub advertise: Option<String>,
}

/// `[store.payloads]`: payloads move to an S3-compatible bucket once they are durable in
/// PostgreSQL; the chain keeps their digests, PostgreSQL where each one went. Keys may be
/// `env:NAME`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadSettings {
    pub kind: PayloadKind,
    /// `https://host:port`; the bucket is `bucket`.
    pub endpoint: String,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Put before every key, so one bucket can hold several records.
    #[serde(default)]
    pub prefix: String,
    /// `host/bucket/key` URLs (MinIO, most servers); false: `bucket.host/key` (AWS).
    #[serde(default = "default_path_style")]
    pub path_style: bool,
    /// A live session's payloads move once this many bytes wait (an ended session's all
    /// move); each object holds about this much.
    #[serde(default = "default_part_bytes")]
    pub part_bytes: usize,
    /// How often the mover looks for payloads to move.
    #[serde(default = "default_move_ms")]
    pub move_ms: u64,
    /// One request's bound.
    #[serde(default = "default_bucket_timeout_ms")]
    pub timeout_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    S3,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_path_style() -> bool {
    true
}
fn default_part_bytes() -> usize {
    8 << 20
}
fn default_move_ms() -> u64 {
    1_000
}
fn default_bucket_timeout_ms() -> u64 {
    30_000
}

impl PayloadSettings {
    /// The bucket as the record takes it, keys resolved.
    pub fn bucket(&self) -> sluice_record_pg::BucketSettings {
        sluice_record_pg::BucketSettings {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            access_key_id: resolve(&self.access_key_id),
            secret_access_key: resolve(&self.secret_access_key),
            prefix: self.prefix.clone(),
            path_style: self.path_style,
            timeout: std::time::Duration::from_millis(self.timeout_ms),
        }
    }

    pub fn moving(&self) -> sluice_record_pg::MoveSettings {
        sluice_record_pg::MoveSettings {
            bucket: self.bucket(),
            part_bytes: self.part_bytes,
            every: std::time::Duration::from_millis(self.move_ms),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.endpoint.is_empty() || self.bucket.is_empty() {
            anyhow::bail!("[store.payloads] needs endpoint = \"https://HOST:PORT\" and bucket");
        }
        if resolve(&self.access_key_id).is_empty() || resolve(&self.secret_access_key).is_empty() {
            anyhow::bail!(
                "[store.payloads] needs access_key_id and secret_access_key (\"env:NAME\", set)"
            );
        }
        if self.part_bytes == 0 || self.move_ms == 0 || self.timeout_ms == 0 {
            anyhow::bail!("[store.payloads] part_bytes, move_ms and timeout_ms: at least 1");
        }
        // The same checks the record makes when it opens, made before anything starts.
        sluice_record_pg::BucketSettings::check(&self.bucket()).map_err(|e| anyhow::anyhow!("{e}"))
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            kind: StoreKind::default(),
            url: None,
            node: None,
            cluster_key: None,
            heartbeat_ms: default_heartbeat_ms(),
            node_timeout_ms: default_node_timeout_ms(),
            payloads: None,
            advertise: None,
        }
    }
}

fn default_heartbeat_ms() -> u64 {
    2_000
}

fn default_node_timeout_ms() -> u64 {
    10_000
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Redb,
    Postgres,
}

impl StoreSettings {
    /// Checks what `kind` needs is there (at start, never at first use).
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.kind {
            StoreKind::Redb => {
                if self.payloads.is_some() {
                    anyhow::bail!(
                        "[store.payloads] is for kind = \"postgres\": the embedded store keeps payloads in its file"
                    );
                }
                if self.url.is_some() || self.cluster_key.is_some() || self.advertise.is_some() {
                    anyhow::bail!(
                        "[store] url, cluster_key and advertise are for kind = \"postgres\"; the embedded store (kind = \"redb\") lives in the data folder"
                    );
                }
            }
            StoreKind::Postgres => {
                if self.url.as_deref().is_none_or(|u| resolve(u).is_empty()) {
                    anyhow::bail!(
                        "[store] kind = \"postgres\" needs url = \"postgres://USER:PASSWORD@HOST:PORT/DATABASE\" (or \"env:NAME\", set)"
                    );
                }
                if self.heartbeat_ms == 0 || self.node_timeout_ms <= self.heartbeat_ms {
                    anyhow::bail!(
                        "[store] heartbeat_ms must be at least 1 and node_timeout_ms longer than it (a node is declared gone after several missed beats)"
                    );
                }
                if self.cluster_key.is_none() {
                    anyhow::bail!(
                        "[store] kind = \"postgres\" needs cluster_key = \"env:NAME\" or a file: the key every node shares to endorse each node's record key"
                    );
                }
                if let Some(payloads) = &self.payloads {
                    payloads.validate()?;
                }
            }
        }
        Ok(())
    }

    /// This node's name: configured, or the host name.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "gateway".into())
        })
    }
}

/// `[console]`: a browser's sign-in ends after this long without a request, and after
/// `max_age_seconds` in any case (and with the token it was made from). A replay's keyframes
/// come every `keyframe_bytes` of output, or `keyframe_ms` after the last if the screen
/// changed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    #[serde(default = "default_console_idle")]
    pub idle_timeout_seconds: u64,
    #[serde(default = "default_console_max_age")]
    pub max_age_seconds: u64,
    #[serde(default = "default_keyframe_bytes")]
    pub keyframe_bytes: usize,
    #[serde(default = "default_keyframe_ms")]
    pub keyframe_ms: u64,
}

fn default_keyframe_bytes() -> usize {
    crate::replay::Cutting::default().bytes
}

fn default_keyframe_ms() -> u64 {
    crate::replay::Cutting::default().every_ms
}

fn default_console_idle() -> u64 {
    30 * 60
}

fn default_console_max_age() -> u64 {
    8 * 3600
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            idle_timeout_seconds: default_console_idle(),
            max_age_seconds: default_console_max_age(),
            keyframe_bytes: default_keyframe_bytes(),
            keyframe_ms: default_keyframe_ms(),
        }
    }
}

/// `[agents]`: how long an enrollment token is good for, and how often the gateway and its
/// agents check on each other.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// An unanswered ping for two of these ends an agent's connection (default 15 s).
    #[serde(default = "default_keepalive_ms")]
    pub keepalive_ms: u64,
    /// How long `sluice agents add` tokens are good for (default one hour).
    #[serde(default = "default_enroll_ttl_seconds")]
    pub enroll_ttl_seconds: u64,
}

fn default_keepalive_ms() -> u64 {
    15_000
}

fn default_enroll_ttl_seconds() -> u64 {
    3600
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            keepalive_ms: default_keepalive_ms(),
            enroll_ttl_seconds: default_enroll_ttl_seconds(),
        }
    }
}

/// `[egress]`: the resolver of sink plugins' outgoing HTTP (what they may reach is each
/// plugin's `allow_hosts` in the policy).
///
/// ```toml
/// [egress]
/// hosts = { "logs.internal.example" = ["10.0.4.7"] }   # looked up here before DNS
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    #[serde(default)]
    pub hosts: BTreeMap<String, Vec<std::net::IpAddr>>,
}

impl Connection {
    /// The agents that carry its sessions, if it is reached through agents.
    pub fn agents(&self) -> Option<&AgentPool> {
        match self {
            Connection::Exec(c) => c.agent.as_ref(),
            Connection::Postgres(c) => c.agent.as_ref(),
            Connection::Tcp(c) => c.agent.as_ref(),
            Connection::Mcp(c) => c.agent.as_ref(),
            Connection::Ssh(c) => c.agent.as_ref(),
        }
    }

    pub fn retention_days(&self) -> Option<f64> {
        match self {
            Connection::Exec(c) => c.retention_days,
            Connection::Postgres(c) => c.retention_days,
            Connection::Tcp(c) => c.retention_days,
            Connection::Mcp(c) => c.retention_days,
            Connection::Ssh(c) => c.retention_days,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The SSH front door (`ssh -p 2222 CONNECTION@HOST`, `docs/ssh.md`); off when unset.
    #[serde(default)]
    pub ssh_listen: Option<SocketAddr>,
    /// The SSH front door's host key: `env:NAME` (the key's text, OpenSSH format) or a file.
    /// By default `DATA/ssh/host_ed25519_key`, made on first start. Gateways behind one load
    /// balancer share one, as they share `tls_cert`.
    #[serde(default)]
    pub ssh_host_key: Option<String>,
    /// The key of the SSH CA that signs people's certificates: `env:NAME` or a file; by
    /// default `DATA/ssh/user_ca_ed25519_key`, made on first start. Shared like the host key.
    #[serde(default)]
    pub ssh_ca_key: Option<String>,
    /// How long the SSH certificates `sluice ssh-cert` obtains stay valid.
    #[serde(default = "default_ssh_cert_ttl_seconds")]
    pub ssh_cert_ttl_seconds: u64,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_policies")]
    pub policies: PathBuf,
    #[serde(default)]
    pub record_mode: RecordMode,
    /// Async recording only: how long the record's writer gathers events after the first of
    /// a commit (default 10). Longer groups cost less per event under load, and a crash can
    /// lose that much more of what peers already saw. At most 1000.
    #[serde(default)]
    pub record_linger_ms: Option<u64>,
    /// Generate a user and a reviewer token at first start and print them. For development.
    #[serde(default)]
    pub dev_tokens: bool,
    /// How long a held frame waits before it is refused (until reviews exist).
    #[serde(default = "default_hold_timeout_ms")]
    pub hold_timeout_ms: u64,
    /// Days decided reviews and access requests are kept; None: forever.
    #[serde(default)]
    pub review_retention_days: Option<f64>,
    /// How often retention runs (it also runs at start).
    #[serde(default = "default_purge_interval_seconds")]
    pub purge_interval_seconds: u64,
    /// The key that signs the record's heads: a file (made on first start) or `env:NAME`
    /// (64 hexadecimal digits). Default: `DATA/record.key`. Keep it away from the store to
    /// make a rewritten store impossible to re-sign for whoever can write it.
    #[serde(default)]
    pub record_key: Option<String>,
    /// Development only (`sluice serve --watch` sets 500): look at the policy folder and the
    /// plugin files it names this often, and reload the policy when one changed and stayed
    /// unchanged for one more look (a build still writing its output is not loaded).
    #[serde(default)]
    pub watch_ms: Option<u64>,
    /// How long one-shot output may stay quiet before plugins release what they hold back.
    /// A value split across two chunks is masked whole when the pause between them is
    /// shorter; a longer interval catches slower producers and delays a partial line (a
    /// prompt, a progress bar) by as much. Interactive sessions use 20 ms, so typing echoes.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// Where compiled plugins are kept between starts (default: `DATA_DIR/plugin-cache`).
    /// Entries are MAC-checked with a key kept beside them; several gateways on one machine
    /// may share one (the tests do).
    #[serde(default)]
    pub plugin_cache: Option<PathBuf>,
    /// How long a stop (SIGTERM, SIGINT) waits for live sessions to end and record it.
    #[serde(default = "default_stop_grace_ms")]
    pub stop_grace_ms: u64,
    /// How long a stop lets live sessions finish on their own, with new ones already refused
    /// (a load balancer sends them to another gateway), before it ends the rest. 0: end them
    /// at once.
    #[serde(default)]
    pub drain_ms: u64,
    /// Connections open at once on all front doors together; more are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one address.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Addresses (load balancers) whose connections count towards `max_connections` only.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Connections from `trusted_proxies` begin with a PROXY protocol header (version 1 or
    /// 2, as HAProxy's `send-proxy` and most cloud load balancers send) naming the client:
    /// the per-address cap, logs and recordings see that client instead of the balancer.
    /// Anyone else's header is never read.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Connections that have not authenticated yet, at once; more are refused.
    #[serde(default = "default_max_signing_in")]
    pub max_signing_in: usize,
    /// How long a connection has to authenticate: TLS, then its request head (HTTPS) or its
    /// startup and password (PostgreSQL). Nothing bounds a signed-in connection's idle time.
    #[serde(default = "default_sign_in_timeout_ms")]
    pub sign_in_timeout_ms: u64,
    /// Host names and addresses clients and agents reach the gateway by, beyond `localhost`
    /// and `127.0.0.1`: its certificate names them (made again when they change; the CA stays).
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// A certificate of the operator's (PEM: the server's certificate, then the chain up to the
    /// CA clients should pin) and its key, used by every listener instead of the local CA's:
    /// browsers, load balancers and identity providers trust it. Both or neither.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The key that seals the secrets of connections added at runtime: `env:NAME` or a file
    /// (32 bytes, hex or base64), so several gateways can share it. By default
    /// `DATA/connections.key`, made on first use.
    #[serde(default)]
    pub connections_key: Option<String>,
}

impl Gateway {
    /// Where the record's signing key comes from.
    pub fn record_key(&self, data: &Path) -> sluice_record::KeySource {
        match &self.record_key {
            Some(text) => sluice_record::KeySource::parse(text),
            None => sluice_record::KeySource::File(data.join("record.key")),
        }
    }
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            listen: default_listen(),
            ssh_listen: None,
            ssh_cert_ttl_seconds: default_ssh_cert_ttl_seconds(),
            ssh_host_key: None,
            ssh_ca_key: None,
            data_dir: default_data_dir(),
            policies: default_policies(),
            record_mode: RecordMode::default(),
            record_linger_ms: None,
            dev_tokens: false,
            hold_timeout_ms: default_hold_timeout_ms(),
            review_retention_days: None,
            purge_interval_seconds: default_purge_interval_seconds(),
            record_key: None,
            watch_ms: None,
            flush_ms: default_flush_ms(),
            plugin_cache: None,
            stop_grace_ms: default_stop_grace_ms(),
            drain_ms: 0,
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            max_signing_in: default_max_signing_in(),
            sign_in_timeout_ms: default_sign_in_timeout_ms(),
            tls_names: Vec::new(),
            tls_cert: None,
            tls_key: None,
            connections_key: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("sluice-data")
}
fn default_policies() -> PathBuf {
    PathBuf::from("policies")
}
fn default_hold_timeout_ms() -> u64 {
    30_000
}
fn default_purge_interval_seconds() -> u64 {
    3600
}
fn default_ssh_cert_ttl_seconds() -> u64 {
    8 * 3600
}

fn default_flush_ms() -> u64 {
    100
}
fn default_stop_grace_ms() -> u64 {
    10_000
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_connections_per_source() -> usize {
    256
}
fn default_max_signing_in() -> usize {
    256
}
fn default_sign_in_timeout_ms() -> u64 {
    10_000
}

/// Async recording's default linger: a commit per 10 ms under load.
const DEFAULT_RECORD_LINGER_MS: u64 = 10;
const MAX_RECORD_LINGER_MS: u64 = 1000;

impl Gateway {
    /// How long the record's writer gathers events before a commit: nothing in strict mode.
    pub fn record_linger(&self) -> std::time::Duration {
        match self.record_mode {
            RecordMode::Strict => std::time::Duration::ZERO,
            RecordMode::Async => std::time::Duration::from_millis(
                self.record_linger_ms.unwrap_or(DEFAULT_RECORD_LINGER_MS),
            ),
        }
    }
}

/// When a frame may be forwarded relative to its recording.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordMode {
    /// Only after the commit that records it is durable: nothing reaches a peer unrecorded,
    /// and if the record cannot commit, the session stops. The default.
    #[default]
    Strict,
    /// As soon as it is queued for recording: lower latency, but a crash can lose the last
    /// frames a peer already saw.
    Async,
}

/// `[oidc]`: the identity provider.
///
/// ```toml
/// [oidc]
/// issuer = "https://login.example.com"   # discovery: ISSUER/.well-known/openid-configuration
/// client_id = "sluice-cli"               # `sluice login` signs in as this public client
/// audience = "sluice-gateway"            # JWT access tokens (machines) must name it
/// groups_claim = "groups"                # where a token lists its holder's groups
/// scopes = ["openid", "email", "profile", "offline_access"]
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    /// The client the web console signs browsers in as (its redirect URI is
    /// `https://GATEWAY/console/oidc/callback`); none: the CLI's `client_id`.
    #[serde(default)]
    pub console_client_id: Option<String>,
    /// Its secret, when it is a confidential client: `VALUE` or `env:NAME`.
    #[serde(default)]
    pub console_client_secret: Option<String>,
    pub audience: Option<String>,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Signature algorithms accepted; asymmetric only.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Tolerance for clocks that disagree, on `exp`, `nbf` and `iat`.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    /// The provider's keys are fetched again for an unknown key id at most this often.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u64,
    /// Keys older than this are fetched again on the next token.
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age_seconds: u64,
}

fn default_groups_claim() -> String {
    "groups".into()
}
fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile", "offline_access"]
        .map(String::from)
        .to_vec()
}
fn default_algorithms() -> Vec<String> {
    crate::auth::oidc::ALGORITHMS
        .iter()
        .map(|a| a.to_string())
        .collect()
}
fn default_clock_skew() -> u64 {
    60
}
fn default_jwks_max_age() -> u64 {
    3600
}
fn default_jwks_refresh() -> u64 {
    30
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    /// Hex SHA-256 of the token.
    pub sha256: String,
    pub subject: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// `agent`: the token is an AI agent's or another program's acting on its own; such an
    /// identity never decides a review, whatever its groups (docs/ai-agents.md).
    #[serde(default)]
    pub kind: TokenKind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    #[default]
    Person,
    Agent,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum Connection {
    Exec(ExecConnection),
    Postgres(PostgresConnection),
    Tcp(TcpConnection),
    Ssh(SshConnection),
    Mcp(McpConnection),
}

/// An MCP server reached through the gateway (`docs/ai-agents.md`): a program it starts (here
/// or on an agent) and speaks MCP to over stdio, one per client session, or an HTTP endpoint
/// (Streamable HTTP), one MCP session per client session. Clients connect to `/mcp/NAME`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConnection {
    /// The server's command line (a stdio server); or `url`.
    #[serde(default)]
    pub command: Vec<String>,
    /// Its environment: `VALUE`, `env:NAME` (for secrets; never shown to the client) or
    /// `agent-env:NAME` (read by the agent that runs it).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Run `command` on an agent of this pool (`docs/agents.md`) instead of here.
    #[serde(default)]
    pub agent: Option<AgentPool>,
    /// The server's Streamable HTTP endpoint (an HTTP server); or `command`.
    #[serde(default)]
    pub url: Option<String>,
    /// Headers the gateway sends the HTTP server (`Authorization = "env:NAME"` for its
    /// token): `VALUE` or `env:NAME`; never shown to the client.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// PEM file of the CA that signed the HTTP server's certificate; without it, the system's
    /// trusted roots.
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    /// Only these tools are shown and callable (empty: all but `deny_tools`).
    #[serde(default)]
    pub allow_tools: Vec<String>,
    /// These tools are hidden and their calls refused.
    #[serde(default)]
    pub deny_tools: Vec<String>,
    /// Calls a session may make; beyond it calls are refused.
    #[serde(default)]
    pub max_calls: Option<u32>,
    /// A tool whose definition differs from the one pinned when it was first seen: `refuse`
    /// (hidden, its calls refused) or `hold` (hidden until a reviewer approves the new
    /// definition, which is then pinned).
    #[serde(default)]
    pub on_tool_change: ToolChange,
    /// Relay the server's sampling requests (asking the client's model) to the client, as
    /// frames through the chain; refused when false (the default).
    #[serde(default)]
    pub allow_sampling: bool,
    /// Relay the server's elicitation requests (asking the person) likewise.
    #[serde(default)]
    pub allow_elicitation: bool,
    #[serde(default)]
    pub max_session_seconds: Option<u64>,
    #[serde(default)]
    pub retention_days: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolChange {
    #[default]
    Refuse,
    Hold,
}

/// An SSH server reached through the gateway (`docs/ssh.md`): `ssh -p 2222 NAME@gateway`,
/// `sluice connect NAME` and `sluice exec NAME` open sessions on it. The gateway signs in
/// upstream with the credentials here, which clients never see, and only to the server whose
/// host key is pinned.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConnection {
    /// The server, `host:port`.
    pub upstream: String,
    /// Who the gateway signs in as.
    pub user: String,
    /// The server's host key as `known_hosts` and `*.pub` files write it
    /// (`ssh-ed25519 AAAA…`): a server presenting any other is refused.
    pub host_key: String,
    /// The private key to sign in with (Ed25519 or ECDSA, OpenSSH format): `env:NAME` (the
    /// key's text) or a file's path.
    #[serde(default)]
    pub private_key: Option<String>,
    /// A password to sign in with: `VALUE` or `env:NAME`.
    #[serde(default)]
    pub password: Option<String>,
    /// Reach it through an agent of this pool (`docs/agents.md`) instead of from the gateway.
    #[serde(default)]
    pub agent: Option<AgentPool>,
    /// What the record keeps of a file's contents moved by `sftp` or `scp`, beside its path,
    /// size and SHA-256.
    #[serde(default)]
    pub file_contents: FileContents,
    #[serde(default)]
    pub max_session_seconds: Option<u64>,
    #[serde(default)]
    pub retention_days: Option<f64>,
}

/// What the record keeps of transferred files' contents. Contents are kept as they crossed:
/// masking plugins judge frames, and rewriting a file's bytes would corrupt it, so keep
/// `none` where files may hold secrets.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileContents {
    /// Path, size and digest only.
    #[default]
    None,
    /// Also the contents of files that read as text (UTF-8, no NUL byte in the first chunk).
    Text,
    /// Also every file's contents.
    All,
}

/// Any TCP service, reached only through `sluice connect NAME --port PORT` (the tunnel is
/// authenticated; a listener of its own would not be). Byte frames both ways.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConnection {
    /// The service, `host:port`.
    pub upstream: String,
    /// Reach it through an agent of this pool (`docs/agents.md`) instead of from the gateway.
    #[serde(default)]
    pub agent: Option<AgentPool>,
    #[serde(default)]
    pub retention_days: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConnection {
    /// Run in a terminal for `sluice connect`.
    pub interactive: Vec<String>,
    /// Reads the program from standard input, for `sluice exec`.
    pub script: Vec<String>,
    /// Environment of the process: `VALUE`, or `env:NAME` to read it from the gateway's
    /// environment at start (for secrets), or `agent-env:NAME` (through an agent only) for
    /// the agent to read from its own, so the gateway never holds it. Nothing of it reaches
    /// the client.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Run the programs through an agent of this pool (`docs/agents.md`) instead of here.
    #[serde(default)]
    pub agent: Option<AgentPool>,
    /// Working directory of the process.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// A session that runs longer is ended.
    #[serde(default)]
    pub max_session_seconds: Option<u64>,
    /// Days a session's recording is kept after it ends; then retention purges its payloads
    /// (the chain stays verifiable). None: kept forever.
    #[serde(default)]
    pub retention_days: Option<f64>,
}

/// A PostgreSQL server reached through the gateway. Clients connect to `listen` with any
/// PostgreSQL client, their Sluice token as the password; the gateway connects upstream with
/// the credentials here, which clients never see.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConnection {
    /// Where PostgreSQL clients connect to the gateway for this connection.
    pub listen: SocketAddr,
    /// The real server, `host:port`.
    pub upstream: String,
    /// Reach it through an agent of this pool (`docs/agents.md`) instead of from the gateway.
    #[serde(default)]
    pub agent: Option<AgentPool>,
    pub database: String,
    pub user: String,
    /// `VALUE` or `env:NAME` (read at start); none for trust authentication.
    #[serde(default)]
    pub password: Option<String>,
    /// TLS toward the server: `"off"` (the default), `"require"` (encrypted, certificate not
    /// checked, as libpq's sslmode=require) or `"verify"` (checked against `upstream_ca` and
    /// the host name in `upstream`).
    #[serde(default)]
    pub upstream_tls: UpstreamTls,
    /// PEM file of the CA that signed the server's certificate, for `upstream_tls = "verify"`.
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    /// Client TLS: `"optional"` (the default: TLS when the client asks for it, and the token
    /// as a cleartext password only inside TLS or from loopback), `"required"`, or `"off"`.
    #[serde(default)]
    pub client_tls: ClientTls,
    #[serde(default)]
    pub max_session_seconds: Option<u64>,
    /// Days a session's recording is kept after it ends; then retention purges its payloads
    /// (the chain stays verifiable). None: kept forever.
    #[serde(default)]
    pub retention_days: Option<f64>,
}

/// The agents that may carry a connection's sessions: `agent = "NAME"` or `agent = ["a", "b"]`.
/// A new session goes to the live one carrying the fewest.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "OneOrMore")]
pub struct AgentPool(Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMore {
    One(String),
    More(Vec<String>),
}

impl From<OneOrMore> for AgentPool {
    fn from(names: OneOrMore) -> AgentPool {
        AgentPool(match names {
            OneOrMore::One(name) => vec![name],
            OneOrMore::More(names) => names,
        })
    }
}

impl AgentPool {
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

/// A value the agent reads from its own environment (never the gateway).
pub const AGENT_ENV: &str = "agent-env:";

/// `env:NAME` read from the gateway's environment; any other value as it is.
pub fn resolve(value: &str) -> String {
    match value.strip_prefix("env:") {
        Some(var) => std::env::var(var).unwrap_or_default(),
        None => value.to_string(),
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    #[default]
    Off,
    Require,
    Verify,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTls {
    #[default]
    Optional,
    Required,
    Off,
}

#[derive(Debug, thiserror::Error)]
#[error("config {file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

impl Config {
    /// Loads `path`, or the shipped default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (file, text) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    file: p.display().to_string(),
                    message: format!("cannot read: {e}"),
                })?;
                (p.display().to_string(), text)
            }
            None => ("(built-in default)".to_string(), DEFAULT.to_string()),
        };
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError {
            file: file.clone(),
            message: e.to_string(),
        })?;
        config
            .validate()
            .map_err(|message| ConfigError { file, message })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        self.store.validate().map_err(|e| e.to_string())?;
        match (self.gateway.record_mode, self.gateway.record_linger_ms) {
            (RecordMode::Strict, Some(_)) => {
                return Err("gateway.record_linger_ms is for record_mode = \"async\": in strict mode every commit starts as soon as a session waits for it".into());
            }
            (_, Some(ms)) if ms > MAX_RECORD_LINGER_MS => {
                return Err(format!(
                    "gateway.record_linger_ms: at most {MAX_RECORD_LINGER_MS} (a crash can lose what the writer is still gathering)"
                ));
            }
            _ => {}
        }
        if self.store.kind == StoreKind::Postgres && self.gateway.connections_key.is_none() {
            return Err("[store] kind = \"postgres\" needs gateway.connections_key = \"env:NAME\" or a file, the same on every node: each node must open the secrets of connections another node added (a per-node key in the data folder could not)".into());
        }
        if self.store.kind == StoreKind::Postgres
            && self.gateway.ssh_listen.is_some()
            && (self.gateway.ssh_host_key.is_none() || self.gateway.ssh_ca_key.is_none())
        {
            return Err("[store] kind = \"postgres\" with gateway.ssh_listen needs gateway.ssh_host_key and gateway.ssh_ca_key (\"env:NAME\" or a file), the same on every node: clients pin one host key and hold certificates of one CA, whichever node they reach".into());
        }
        if self.store.kind == StoreKind::Postgres
            && self.store.advertise.is_none()
            && self.gateway.listen.ip().is_unspecified()
        {
            return Err(format!(
                "[store] advertise: this node listens on {}; say which host:port the other nodes reach it by (they relay sessions to the agents it holds)",
                self.gateway.listen
            ));
        }
        let days_ok = |days: Option<f64>| days.is_none_or(|d| d.is_finite() && d > 0.0);
        if !days_ok(self.gateway.review_retention_days) {
            return Err("gateway.review_retention_days: a number of days above 0".into());
        }
        if self.gateway.purge_interval_seconds == 0 {
            return Err("gateway.purge_interval_seconds: at least 1".into());
        }
        let g = &self.gateway;
        for (key, value) in [
            ("max_connections", g.max_connections),
            ("max_connections_per_source", g.max_connections_per_source),
            ("max_signing_in", g.max_signing_in),
        ] {
            if value == 0 {
                return Err(format!(
                    "gateway.{key}: at least 1 (0 would refuse everyone)"
                ));
            }
        }
        if g.proxy_protocol && g.trusted_proxies.is_empty() {
            return Err("gateway.proxy_protocol: list the load balancers that send the header in gateway.trusted_proxies (a header from anyone else is never believed)".into());
        }
        if g.sign_in_timeout_ms == 0 || g.stop_grace_ms == 0 || g.flush_ms == 0 {
            return Err(
                "gateway.sign_in_timeout_ms, stop_grace_ms and flush_ms: at least 1".into(),
            );
        }
        if self.agents.keepalive_ms == 0 || self.agents.enroll_ttl_seconds == 0 {
            return Err("agents.keepalive_ms and enroll_ttl_seconds: at least 1".into());
        }
        for (name, connection) in &self.connections {
            if connection
                .agents()
                .is_some_and(|pool| pool.names().is_empty())
            {
                return Err(format!("connections.{name}.agent: name at least one agent"));
            }
            if !days_ok(connection.retention_days()) {
                return Err(format!(
                    "connections.{name}.retention_days: a number of days above 0 (leave it out to keep recordings forever)"
                ));
            }
            let exec = match connection {
                Connection::Exec(exec) => exec,
                Connection::Postgres(pg) => {
                    if pg
                        .password
                        .as_deref()
                        .is_some_and(|p| p.starts_with(AGENT_ENV))
                        && pg.agent.is_none()
                    {
                        return Err(format!(
                            "connections.{name}.password: `agent-env:` is read by the connection's agent, and this connection has none (`agent = \"NAME\"`)"
                        ));
                    }
                    if let Some(var) = pg.password.as_deref().and_then(|p| p.strip_prefix("env:"))
                        && std::env::var_os(var).is_none()
                    {
                        return Err(format!(
                            "connections.{name}.password: environment variable {var} is not set"
                        ));
                    }
                    if pg.upstream_tls == UpstreamTls::Verify {
                        let Some(ca) = &pg.upstream_ca else {
                            return Err(format!(
                                "connections.{name}: upstream_tls = \"verify\" needs upstream_ca (a PEM file)"
                            ));
                        };
                        let pem = std::fs::read_to_string(ca).map_err(|e| {
                            format!(
                                "connections.{name}.upstream_ca: cannot read {}: {e}",
                                ca.display()
                            )
                        })?;
                        crate::tls::client_config(&pem)
                            .map_err(|e| format!("connections.{name}.upstream_ca: {e}"))?;
                    }
                    if pg.listen == self.gateway.listen {
                        return Err(format!(
                            "connections.{name}.listen: {} is the gateway's own listener",
                            pg.listen
                        ));
                    }
                    continue;
                }
                Connection::Tcp(_) => continue,
                Connection::Mcp(mcp) => {
                    mcp.validate()
                        .map_err(|e| format!("connections.{name}{e}"))?;
                    continue;
                }
                Connection::Ssh(ssh) => {
                    crate::ssh::upstream::Credentials::load(ssh)
                        .map_err(|e| format!("connections.{name}: {e}"))?;
                    continue;
                }
            };
            if exec.interactive.is_empty() || exec.script.is_empty() {
                return Err(format!(
                    "connections.{name}: `interactive` and `script` each need a program"
                ));
            }
            check_env(&exec.env, exec.agent.is_some())
                .map_err(|e| format!("connections.{name}.env{e}"))?;
        }
        if let Some(oidc) = &self.oidc {
            oidc.validate()?;
        }
        for (i, token) in self.tokens.iter().enumerate() {
            if token.sha256.len() != 64 || hex::decode(&token.sha256).is_err() {
                return Err(format!(
                    "tokens[{i}].sha256: expected 64 hexadecimal digits (sha256sum of the token)"
                ));
            }
        }
        Ok(())
    }
}

impl OidcConfig {
    fn validate(&self) -> Result<(), String> {
        let url = openidconnect::url::Url::parse(&self.issuer)
            .map_err(|e| format!("oidc.issuer: `{}` is not a URL: {e}", self.issuer))?;
        let loopback = match url.host() {
            Some(openidconnect::url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(openidconnect::url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(openidconnect::url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(format!(
                "oidc.issuer: `{}` must use https (plain http only on loopback, for tests)",
                self.issuer
            ));
        }
        for alg in &self.algorithms {
            if alg == "none" || alg.starts_with("HS") {
                return Err(format!(
                    "oidc.algorithms: `{alg}` is never accepted (unsigned, or HMAC keyed with what is public)"
                ));
            }
            if !crate::auth::oidc::ALGORITHMS.contains(&alg.as_str()) {
                return Err(format!("oidc.algorithms: unknown algorithm `{alg}`"));
            }
        }
        if self.algorithms.is_empty() || self.client_id.is_empty() {
            return Err("oidc: `client_id` and at least one algorithm are needed".into());
        }
        Ok(())
    }
}

impl PostgresConnection {
    /// The upstream password with an `env:NAME` value resolved.
    pub fn resolved_password(&self) -> Option<String> {
        self.password.as_deref().map(resolve)
    }
}

/// A program's environment: `env:NAME` set here, `agent-env:NAME` only with an agent.
/// The error starts with `.KEY`.
fn check_env(env: &BTreeMap<String, String>, agent: bool) -> Result<(), String> {
    for (key, value) in env {
        if value.starts_with(AGENT_ENV) && !agent {
            return Err(format!(
                ".{key}: `agent-env:` is read by the connection's agent, and this connection has none (`agent = \"NAME\"`)"
            ));
        }
        if let Some(var) = value.strip_prefix("env:")
            && std::env::var_os(var).is_none()
        {
            return Err(format!(".{key}: environment variable {var} is not set"));
        }
    }
    Ok(())
}

/// Headers the MCP client transport sets itself; a connection may not set them.
const MCP_TRANSPORT_HEADERS: &[&str] = &[
    "accept",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

impl McpConnection {
    /// The error starts with `.FIELD` (or `:`), for the caller to name the connection.
    fn validate(&self) -> Result<(), String> {
        match (&self.url, self.command.is_empty()) {
            (Some(_), false) => {
                return Err(
                    ": `command` (a stdio server) or `url` (an HTTP server), not both".into(),
                );
            }
            (None, true) => {
                return Err(": name the MCP server: `command` (a program speaking MCP on stdio) or `url` (its Streamable HTTP endpoint)".into());
            }
            (Some(url), true) => {
                let parsed = openidconnect::url::Url::parse(url)
                    .map_err(|e| format!(".url: `{url}` is not a URL: {e}"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(format!(".url: `{url}` is not http or https"));
                }
                if self.agent.is_some() {
                    return Err(".agent: an HTTP server is reached from the gateway; run a stdio server on an agent with `command`".into());
                }
                if !self.env.is_empty() || self.cwd.is_some() {
                    return Err(
                        ": `env` and `cwd` are for a `command`; an HTTP server takes `headers`"
                            .into(),
                    );
                }
            }
            (None, false) => {
                if !self.headers.is_empty() || self.upstream_ca.is_some() {
                    return Err(
                        ": `headers` and `upstream_ca` are for a `url`; a stdio server takes `env`"
                            .into(),
                    );
                }
            }
        }
        check_env(&self.env, self.agent.is_some()).map_err(|e| format!(".env{e}"))?;
        for (key, value) in &self.headers {
            let name = http::HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| format!(".headers: `{key}` is not a header name"))?;
            if MCP_TRANSPORT_HEADERS.contains(&name.as_str()) {
                return Err(format!(".headers.{key}: set by the MCP transport itself"));
            }
            if value.starts_with(AGENT_ENV) {
                return Err(format!(
                    ".headers.{key}: `agent-env:` is for a `command` on an agent"
                ));
            }
            if let Some(var) = value.strip_prefix("env:")
                && std::env::var_os(var).is_none()
            {
                return Err(format!(
                    ".headers.{key}: environment variable {var} is not set"
                ));
            }
            http::HeaderValue::from_str(&resolve(value))
                .map_err(|_| format!(".headers.{key}: not a valid header value"))?;
        }
        if let Some(ca) = &self.upstream_ca {
            let pem = std::fs::read_to_string(ca)
                .map_err(|e| format!(".upstream_ca: cannot read {}: {e}", ca.display()))?;
            crate::tls::client_config(&pem).map_err(|e| format!(".upstream_ca: {e}"))?;
        }
        Ok(())
    }
}

impl ExecConnection {
    /// The program to run here: `script` (one-shot) or `interactive`, with `env:NAME`
    /// values resolved.
    pub fn program(&self, script: bool) -> crate::exec::Program {
        crate::exec::Program {
            argv: if script {
                self.script.clone()
            } else {
                self.interactive.clone()
            },
            env: resolved(&self.env),
            cwd: self.cwd.clone(),
        }
    }
}

impl McpConnection {
    /// The stdio server to run here, with `env:NAME` values resolved.
    pub fn program(&self) -> crate::exec::Program {
        crate::exec::Program {
            argv: self.command.clone(),
            env: resolved(&self.env),
            cwd: self.cwd.clone(),
        }
    }
}

/// A program's environment with `env:NAME` values read from the gateway's.
fn resolved(env: &BTreeMap<String, String>) -> Vec<(String, String)> {
    env.iter().map(|(k, v)| (k.clone(), resolve(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_loads() {
        let config = Config::load(None).unwrap();
        assert!(config.connections.contains_key("shell"));
        assert!(config.connections.contains_key("python"));
        assert!(config.gateway.dev_tokens);
    }

    /// The record's linger: async only, bounded, 10 ms unless set, nothing in strict mode.
    #[test]
    fn the_record_linger_is_for_async_recording() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        let load = |gateway: &str| {
            std::fs::write(&path, format!("[gateway]\n{gateway}\n")).unwrap();
            Config::load(Some(&path)).map_err(|e| e.to_string())
        };
        let linger = |gateway: &str| load(gateway).unwrap().gateway.record_linger();
        assert_eq!(linger("record_mode = \"async\""), Duration::from_millis(10));
        assert_eq!(
            linger("record_mode = \"async\"\nrecord_linger_ms = 100"),
            Duration::from_millis(100)
        );
        assert_eq!(linger("record_mode = \"strict\""), Duration::ZERO);
        let err = load("record_linger_ms = 100").unwrap_err();
        assert!(
            err.contains("record_linger_ms is for record_mode = \"async\""),
            "{err}"
        );
        let err = load("record_mode = \"async\"\nrecord_linger_ms = 1001").unwrap_err();
        assert!(err.contains("record_linger_ms: at most 1000"), "{err}");
    }

    #[test]
    fn unknown_keys_and_missing_secrets_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "[gateway]\nlisten = \"127.0.0.1:1\"\nport = 5\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("unknown field `port`"), "{err}");

        std::fs::write(
            &path,
            "[connections.db]\nkind = \"exec\"\ninteractive = [\"sh\"]\nscript = [\"sh\"]\nenv = { PW = \"env:SLUICE_TEST_SURELY_UNSET\" }\n",
        )
        .unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains(
                "connections.db.env.PW: environment variable SLUICE_TEST_SURELY_UNSET is not set"
            ),
            "{err}"
        );
    }

    #[test]
    fn an_mcp_connection_names_one_server_and_what_it_may_not_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        let err_of = |connection: &str| {
            std::fs::write(
                &path,
                format!("[connections.m]\nkind = \"mcp\"\n{connection}"),
            )
            .unwrap();
            Config::load(Some(&path)).unwrap_err().to_string()
        };
        for (connection, expected) in [
            ("", "connections.m: name the MCP server"),
            (
                "command = [\"srv\"]\nurl = \"http://127.0.0.1:1/mcp\"\n",
                "connections.m: `command` (a stdio server) or `url`",
            ),
            (
                "url = \"ftp://x/\"\n",
                "connections.m.url: `ftp://x/` is not http or https",
            ),
            (
                "url = \"nowhere\"\n",
                "connections.m.url: `nowhere` is not a URL",
            ),
            (
                "url = \"http://127.0.0.1:1/mcp\"\nagent = \"edge\"\n",
                "connections.m.agent: an HTTP server is reached from the gateway",
            ),
            (
                "url = \"http://127.0.0.1:1/mcp\"\nheaders = { Mcp-Session-Id = \"x\" }\n",
                "connections.m.headers.Mcp-Session-Id: set by the MCP transport itself",
            ),
            (
                "url = \"http://127.0.0.1:1/mcp\"\nheaders = { Authorization = \"env:SLUICE_TEST_SURELY_UNSET\" }\n",
                "connections.m.headers.Authorization: environment variable SLUICE_TEST_SURELY_UNSET is not set",
            ),
            (
                "url = \"https://127.0.0.1:1/mcp\"\nupstream_ca = \"/surely/not/here.pem\"\n",
                "connections.m.upstream_ca: cannot read /surely/not/here.pem",
            ),
            (
                "command = [\"srv\"]\nheaders = { Authorization = \"x\" }\n",
                "connections.m: `headers` and `upstream_ca` are for a `url`",
            ),
            (
                "command = [\"srv\"]\nenv = { K = \"agent-env:K\" }\n",
                "connections.m.env.K: `agent-env:` is read by the connection's agent",
            ),
        ] {
            let err = err_of(connection);
            assert!(err.contains(expected), "{connection}: {err}");
        }
    }
}
