//! `sluice serve`: one TLS listener for session upgrades and `/api/...`.
//!
//! Routes (each checks the caller's role on what it touches, see `roles.rs`):
//! - `POST /api/sessions?connection=NAME&mode=exec|connect|tunnel&rows=R&cols=C` with
//!   `Upgrade: sluice-session/1`: opens a session on the upgraded stream (connect).
//! - `GET /api/sessions[?active]`: recorded (or live) sessions the caller may read.
//! - `GET /api/sessions/ID/events[?form=F]`: one session's events, as JSON lines (own, or
//!   audit). Every read is recorded (kind `audit`: who, which session, which form).
//! - `POST /api/sessions/ID/kill`: ends a live session (admin).
//! - `GET /api/reviews[?status=S]`, `GET /api/reviews/events` (SSE), `GET /api/reviews/ID`,
//!   `POST /api/reviews/ID/approve|reject?reason=R` (review).
//! - `GET /api/verify[?accept_loss]`, or `POST` with heads kept outside (JSON array) as the
//!   body: verifies the record; the report as JSON (audit). Recorded.
//! - `GET /api/whoami`: the caller's identity and roles per connection.
//! - `GET /api/sinks`: each sink's cursor, lag and state (admin).
//! - `POST /api/reload`: reads the policy again and applies it, or keeps the old one (admin).
//! - `POST /api/retention`: runs retention now (admin).
//! - `GET /metrics`: Prometheus text (admin).
//! - `GET /api/ca`, `GET /api/auth`: the gateway's CA certificate and where to sign in (public).
//!
//! Every other request needs `Authorization: Bearer TOKEN`; a refusal says why and is logged
//! with the client's address, never the token.
//!
//! The parts: this file starts and stops the gateway; `routes.rs` answers `/api/...`;
//! `upgrade.rs` turns an upgraded request into a session or a tunnel; `operations.rs` holds
//! what admins and the gateway itself do to the whole (reload, retention, stop), each
//! recorded before it takes effect.

mod agents;
mod console;
mod fronts;
mod mcp;
mod operations;
mod peers;
mod replay;
mod routes;
mod sessions;
mod ssh;
mod upgrade;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::auth::{Authenticator, Tokens};
use crate::config::{Config, Connection, StoreKind};
use crate::connections::Connections;
use crate::policy::Policy;
use crate::review::Reviews;
use crate::roles::Roles;
use crate::session::{self, Chains};
use crate::sinks::{SinkPlan, Sinks};
use sluice_plugin_host::{HostConfig, PluginHost};
use sluice_record::{Membership, NewEvent, Record, Recorder, RetentionRules, Store};

pub struct Gateway {
    config: Config,
    auth: Arc<Authenticator>,
    store: Arc<dyn Record>,
    /// This node's place among gateways sharing the record (`None` on the embedded store).
    membership: Option<Arc<dyn Membership>>,
    /// The other gateways sharing the record, to ask and to answer.
    peers: Option<Arc<peers::Peers>>,
    session_ctx: Arc<session::Context>,
    sinks: Arc<Sinks>,
    /// PostgreSQL connections' front doors, each on its own port (and for clients that
    /// come through the tunnel).
    fronts: fronts::Fronts,
    ca_pem: String,
    /// Loads plugins (again, on reload); keeps the engine and its epoch thread alive.
    host: Arc<PluginHost>,
    /// The connections served: the file's and those added at runtime.
    connections: Arc<Connections>,
    /// Browsers signed in to the web console.
    console: console::Console,
    /// Terminal replays' indexes, and whose replay reads are recorded.
    replays: replay::Replays,
    /// One reload (or retention run) at a time.
    maintenance: tokio::sync::Mutex<()>,
    /// The SSH front door's host key and user CA, when it is on.
    ssh: Option<ssh::Keys>,
    /// Results of MCP calls that were held, kept for their callers.
    mcp: Arc<mcp::Kept>,
    /// `mcp` connections' endpoints (with their live MCP sessions), made on first use.
    mcp_fronts: std::sync::Mutex<BTreeMap<String, mcp::Fronted>>,
    /// Tool definitions' pinned fingerprints, per `mcp` connection.
    mcp_pins: Arc<session::mcp::Pins>,
    /// Accept loops (the HTTPS listener's and each PostgreSQL front door's), ended at stop.
    listeners: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Gateway {
    fn reviews(&self) -> &Arc<Reviews> {
        &self.session_ctx.reviews
    }

    fn roles(&self) -> &Arc<Roles> {
        &self.session_ctx.roles
    }
}

/// A policy read and every plugin it names loaded: what start and reload apply, whole.
struct LoadedPolicy {
    policy: Policy,
    chains: Chains,
    sinks: Vec<SinkPlan>,
}

/// Reads the policy folder and loads its plugins; any error leaves nothing half-applied.
fn load_policy(
    host: &PluginHost,
    policies: &std::path::Path,
    connections: &BTreeMap<String, Connection>,
) -> anyhow::Result<LoadedPolicy> {
    let policy = Policy::load_dir(policies)?;
    let mut plugins = BTreeMap::new();
    for (name, connection) in connections {
        let chain = policy
            .chain(name)
            .into_iter()
            .map(|spec| host.load(spec))
            .collect::<Result<Vec<_>, _>>()?;
        for spot in crate::coverage::chain_blind_spots(name, connection, &chain) {
            tracing::warn!("{spot}");
        }
        plugins.insert(name.clone(), chain);
    }
    let mut sinks = Vec::new();
    for (name, rules) in &policy.sinks {
        let spec = policy
            .plugins
            .get(&rules.plugin)
            .ok_or_else(|| anyhow::anyhow!("sinks.{name}: no plugin `{}`", rules.plugin))?;
        sinks.push(SinkPlan {
            name: name.clone(),
            rules: rules.clone(),
            plugin: host.load(spec)?,
        });
    }
    let policy_files = policy
        .files
        .iter()
        .map(|f| {
            let digest = std::fs::read(f)
                .map(|b| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&b)))
                .unwrap_or_default();
            json!({"file": f.display().to_string(), "sha256": digest})
        })
        .collect();
    Ok(LoadedPolicy {
        policy,
        chains: Chains {
            plugins,
            policy_files,
        },
        sinks,
    })
}

/// Retention as the configuration sets it.
fn retention_rules(config: &Config, connections: &BTreeMap<String, Connection>) -> RetentionRules {
    let days = |d: f64| Duration::from_secs_f64(d * 86_400.0);
    RetentionRules {
        sessions: connections
            .iter()
            .filter_map(|(name, c)| Some((name.clone(), days(c.retention_days()?))))
            .collect(),
        reviews: config.gateway.review_retention_days.map(days),
    }
}

/// What `serve` prints at start.
pub struct Started {
    pub addr: SocketAddr,
    pub ca_fingerprint: String,
    pub dev_tokens: Option<crate::auth::DevTokens>,
    /// The record's public key (hex): auditors keep it to verify copies of the store. On a
    /// shared record, the cluster key's, which verify trusts for every node.
    pub record_key: String,
    /// This node's name, on a record shared with other gateways.
    pub node: Option<String>,
    /// Sessions a previous run left open (it crashed), now closed in the record.
    pub closed_after_crash: usize,
    /// The SSH front door's address and host key fingerprint, when it is on.
    pub ssh: Option<(SocketAddr, String)>,
}

/// A started gateway: `stopped` resolves if its listener dies; `stop` ends it cleanly.
pub struct Running {
    gateway: Arc<Gateway>,
}

impl Running {
    /// Stops accepting, ends live sessions (each records why), records the stop, waits for
    /// the record's queue to be committed and closes the store, so the next start finds it
    /// closed cleanly. Returns how many sessions it ended.
    pub async fn stop(self, why: &str) -> anyhow::Result<usize> {
        self.gateway.stop(why).await
    }
}

/// Loads everything `serve` needs, failing at start (not at first use) on any bad input.
pub async fn start(config: Config) -> anyhow::Result<(Started, Running)> {
    crate::tls::install_provider();
    let data = config.gateway.data_dir.clone();
    std::fs::create_dir_all(&data)
        .with_context(|| format!("cannot create the data folder {}", data.display()))?;
    let host = Arc::new(PluginHost::new(HostConfig {
        cache_dir: Some(
            config
                .gateway
                .plugin_cache
                .clone()
                .unwrap_or_else(|| data.join("plugin-cache")),
        ),
        resolver: Arc::new(sluice_plugin_host::egress::Resolver {
            hosts: config.egress.hosts.clone(),
        }),
        // A measuring switch (benches/pg.sh), not a setting: prescreens only skip calls.
        prescreen: std::env::var("SLUICE_PLUGIN_PRESCREEN").map_or(true, |v| v != "off"),
        ..HostConfig::default()
    })?);
    let (store, membership) = open_record(&config, &data)?;
    let node = membership.as_ref().map(|m| m.node().to_string());
    let closed_after_crash = match &membership {
        None => close_open_sessions(store.as_ref(), None, "gateway stopped unexpectedly")?,
        Some(m) if m.inherited() => close_open_sessions(
            store.as_ref(),
            Some(m.node()),
            "gateway stopped unexpectedly",
        )?,
        Some(_) => 0,
    };
    // In async mode nobody waits for a commit: group events over a linger per fsync.
    let recorder = Recorder::spawn_lingering(store.clone(), config.gateway.record_linger());
    let sealer = crate::sealed::Sealer::load(config.gateway.connections_key.as_deref(), &data)?;
    let connections = Arc::new(Connections::open(
        config.connections.clone(),
        store.clone(),
        recorder.clone(),
        sealer,
    )?);
    let LoadedPolicy {
        policy,
        chains,
        sinks: sink_plans,
    } = load_policy(&host, &config.gateway.policies, &connections.all())?;
    let dev_tokens = if config.gateway.dev_tokens {
        Some(crate::auth::dev_tokens(&data)?)
    } else {
        None
    };
    let oidc = config
        .oidc
        .clone()
        .map(crate::auth::oidc::Oidc::new)
        .transpose()
        .context("oidc")?;
    let auth = Arc::new(Authenticator::new(
        Tokens::new(&config.tokens, dev_tokens.as_ref()),
        oidc,
    ));
    let tls = match (&config.gateway.tls_cert, &config.gateway.tls_key) {
        (Some(cert), Some(key)) => crate::tls::load_operator(cert, key)?,
        (None, None) => crate::tls::load_or_create_for(&data, &config.gateway.tls_names)?,
        _ => anyhow::bail!(
            "gateway.tls_cert and gateway.tls_key go together: set both, or neither (the local CA)"
        ),
    };
    let roles = Arc::new(
        Roles::new(policy.roles.clone(), recorder.clone())
            .with_agents(auth.tokens().agents().clone(), policy.agent_groups.clone()),
    );
    // Frames held for sessions another node holds still wait there: not this start's orphans.
    let sharing = match &membership {
        Some(m) => crate::review::Sharing {
            node: Some(m.node().to_string()),
            held_elsewhere: m.live_elsewhere()?.into_iter().map(|(_, s)| s.id).collect(),
        },
        None => Default::default(),
    };
    let reviews = Reviews::open(
        store.clone(),
        recorder.clone(),
        policy.reviews.clone(),
        roles.clone(),
        Duration::from_millis(config.gateway.hold_timeout_ms),
        sharing,
    )
    .await?;
    let agents = Arc::new(crate::agent::Agents::open(
        &config.gateway.data_dir,
        crate::agent::registry::Settings {
            keepalive: Duration::from_millis(config.agents.keepalive_ms),
            enroll_ttl: Duration::from_secs(config.agents.enroll_ttl_seconds),
        },
        recorder.clone(),
        membership.clone(),
    )?);
    let session_ctx = Arc::new(session::Context {
        recorder,
        record_mode: config.gateway.record_mode,
        reviews,
        roles,
        active: Default::default(),
        chains: std::sync::RwLock::new(Arc::new(chains)),
        agents,
        node: node.clone(),
        flush: Duration::from_millis(config.gateway.flush_ms),
    });
    let sinks = Arc::new(Sinks::new(store.clone()));
    sinks.apply(sink_plans);
    let listener = tokio::net::TcpListener::bind(config.gateway.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.gateway.listen))?;
    let addr = listener.local_addr()?;
    if let Some(membership) = &membership {
        // Where the other nodes reach this one, for sessions to agents whose tunnel it holds.
        // (A wildcard listener without `advertise` is refused with the configuration.)
        let advertised = config
            .store
            .advertise
            .clone()
            .unwrap_or_else(|| addr.to_string());
        let (membership, leaf) = (membership.clone(), tls.leaf_sha256);
        tokio::task::spawn_blocking(move || membership.advertise(&advertised, leaf)).await??;
    }
    // The SSH front door's port, taken now so a taken port fails the start.
    let ssh_door = match config.gateway.ssh_listen {
        Some(listen) => {
            let key = crate::ssh::load_key(
                config.gateway.ssh_host_key.as_deref(),
                &crate::ssh::host_key_path(&data),
                "SSH host key",
            )?;
            let fingerprint = crate::ssh::fingerprint(&key);
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen for SSH on {listen}"))?;
            let user_ca =
                crate::ssh::ca::UserCa::load(config.gateway.ssh_ca_key.as_deref(), &data)?;
            Some((listener, key, fingerprint, user_ca))
        }
        None => None,
    };
    let started = Started {
        addr,
        ssh: ssh_door
            .as_ref()
            .map(|(l, _, f, _)| l.local_addr().map(|a| (a, f.clone())))
            .transpose()?,
        ca_fingerprint: crate::tls::fingerprint(&tls.ca_pem)?,
        dev_tokens,
        record_key: hex::encode(
            membership
                .as_ref()
                .map_or_else(|| store.public_key(), |m| m.trusted_key()),
        ),
        node: node.clone(),
        closed_after_crash,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config);
    // PostgreSQL connections listen on ports of their own, bound now so a taken port fails
    // the start.
    let limits = crate::limits::Limits::new(&config.gateway);
    let fronts = fronts::Fronts::new(
        auth.clone(),
        session_ctx.clone(),
        acceptor.clone(),
        limits.clone(),
    );
    for (name, connection) in &connections.all() {
        if let Connection::Postgres(pg) = connection {
            let bound = fronts
                .bind(name, pg.listen)
                .await
                .map_err(anyhow::Error::msg)?;
            fronts.open(bound, pg);
        }
    }
    let listeners = Vec::new();
    let console = console::Console::new(&config.console);
    let replays = replay::Replays::new(crate::replay::Cutting {
        bytes: config.console.keyframe_bytes.max(1),
        every_ms: config.console.keyframe_ms,
    });
    if let Some(membership) = &membership {
        spawn_heartbeat(
            store.clone(),
            membership.clone(),
            session_ctx.reviews.clone(),
            Duration::from_millis(config.store.heartbeat_ms),
        );
    }
    let peers = membership
        .clone()
        .map(|m| peers::Peers::start(m, session_ctx.clone(), session_ctx.reviews.clone()));
    // The SSH door's listener and host key go to its accept loop; what it shows, to routes.
    let (ssh_door, ssh_keys) = match ssh_door {
        Some((listener, key, _, user_ca)) => {
            let keys = ssh::Keys {
                listen: listener.local_addr()?,
                host_key: key.public_key().to_openssh().unwrap_or_default(),
                user_ca,
            };
            (Some((listener, key)), Some(keys))
        }
        None => (None, None),
    };
    let gateway = Arc::new(Gateway {
        config,
        auth,
        membership,
        peers,
        store,
        session_ctx,
        sinks,
        fronts,
        ca_pem: tls.ca_pem,
        console,
        replays,
        connections,
        host,
        maintenance: tokio::sync::Mutex::new(()),
        ssh: ssh_keys,
        mcp: Default::default(),
        mcp_fronts: Default::default(),
        mcp_pins: Arc::new(session::mcp::Pins::open(&data)?),
        listeners: std::sync::Mutex::new(listeners),
    });
    if let Some(peers) = &gateway.peers {
        peers.reload_with(Arc::downgrade(&gateway));
    }
    // `kill -HUP` applies the policy again, as `sluice reload` does.
    let reloader = gateway.clone();
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangups.recv().await.is_some() {
            match reloader.reload("SIGHUP").await {
                Ok(_) => tracing::info!("policy reloaded (SIGHUP)"),
                Err(why) => tracing::error!(%why, "policy reload refused (SIGHUP)"),
            }
        }
    });
    if let Some(every) = gateway.config.gateway.watch_ms.filter(|ms| *ms > 0) {
        watch::spawn(gateway.clone(), Duration::from_millis(every));
    }
    // Retention runs at start and then on schedule, when anything has a retention.
    let rules = retention_rules(&gateway.config, &gateway.connections.all());
    if !rules.sessions.is_empty() || rules.reviews.is_some() {
        let purger = gateway.clone();
        let every = Duration::from_secs(purger.config.gateway.purge_interval_seconds);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                if let Err(why) = purger.retention("schedule").await {
                    tracing::error!(%why, "retention failed");
                }
            }
        });
    }
    if let Some((listener, key)) = ssh_door {
        let door = tokio::spawn(ssh::serve(
            gateway.clone(),
            listener,
            Arc::new(ssh::config(key)),
            limits.clone(),
        ));
        gateway
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(door);
    }
    let accepting = gateway.clone();
    let task = tokio::spawn(async move {
        let gateway = accepting;
        loop {
            let (mut tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors (EMFILE) or the like: retrying at once would
                    // spin a core without freeing anything.
                    tracing::warn!(error = %e, "accept failed; pausing before the next");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let accepted = match limits.accept(peer) {
                Ok(accepted) => accepted,
                Err(why) => {
                    tracing::warn!(%peer, %why, "connection refused");
                    continue;
                }
            };
            let Some(signing_in) = limits.signing_in() else {
                tracing::warn!(%peer, "connection refused: too many connections are signing in (max_signing_in)");
                continue;
            };
            // Small interactive frames must not wait for Nagle's algorithm.
            let _ = tcp.set_nodelay(true);
            crate::limits::keepalive(&tcp);
            let (gateway, acceptor, limits) = (gateway.clone(), acceptor.clone(), limits.clone());
            tokio::spawn(async move {
                let (peer, _admitted) = match accepted.enter(&mut tcp).await {
                    Ok(entered) => entered,
                    Err(refused) => {
                        let (peer, why) = refused.parts();
                        return tracing::warn!(%peer, %why, "connection refused");
                    }
                };
                let sign_in = limits.sign_in;
                let tls = match tokio::time::timeout(sign_in, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return tracing::info!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::info!(%peer, "TLS handshake timed out"),
                };
                drop(signing_in);
                let service = hyper::service::service_fn(move |req| {
                    let gateway = gateway.clone();
                    async move { Ok::<_, std::convert::Infallible>(gateway.route(req, peer).await) }
                });
                // A request head must arrive whole within the sign-in time: a client that
                // trickles it (or sends nothing) is cut off. Sessions, once upgraded, are not.
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(sign_in)
                    .serve_connection(TokioIo::new(tls), service);
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    });
    gateway
        .listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(task);
    Ok((started, Running { gateway }))
}

/// How long an accept loop pauses after a failed accept (out of file descriptors).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Sessions a previous run left open were cut by its crash: close them in the record, with
/// the reason, so they are not listed as active forever.
/// The record, and this node's membership when the record is shared.
type Opened = (Arc<dyn Record>, Option<Arc<dyn Membership>>);

/// The record `[store]` names.
fn open_record(config: &Config, data: &Path) -> anyhow::Result<Opened> {
    let key = config.gateway.record_key(data);
    let signer = key.load().with_context(|| format!("record key {key}"))?;
    let settings = &config.store;
    match settings.kind {
        StoreKind::Redb => Ok((
            Arc::new(Store::open_signed(&data.join("record.redb"), signer)?),
            None,
        )),
        StoreKind::Postgres => {
            let node = settings.node_name();
            let cluster_key = sluice_record::KeySource::parse(
                settings.cluster_key.as_deref().unwrap_or_default(),
            );
            let cluster = cluster_key
                .load_existing()
                .with_context(|| format!("[store] cluster_key {cluster_key}"))?;
            let url = crate::config::resolve(settings.url.as_deref().unwrap_or_default());
            let store = Arc::new(sluice_record_pg::PgStore::open(
                sluice_record_pg::PgOptions {
                    url,
                    node: node.clone(),
                    signer,
                    cluster,
                    node_timeout: Duration::from_millis(settings.node_timeout_ms),
                    payloads: settings.payloads.as_ref().map(|p| p.moving()),
                },
            )?);
            tracing::info!(database = store.label(), node, "record: shared PostgreSQL");
            if config.gateway.tls_cert.is_none() {
                tracing::warn!(
                    "this node serves a CA of its own (DATA/tls): a client that pinned it cannot reach the other nodes behind a load balancer; give every node the same tls_cert and tls_key"
                );
            }
            Ok((store.clone(), Some(store)))
        }
    }
}

/// Closes the sessions a stopped run left open, with `reason`: on a shared record only those
/// node `node` opened (another node's open sessions may be live).
fn close_open_sessions(
    store: &dyn Record,
    node: Option<&str>,
    reason: &str,
) -> anyhow::Result<usize> {
    let mut open = Vec::new();
    for summary in store.sessions()? {
        if summary.ended_ms.is_some() {
            continue;
        }
        if let Some(node) = node {
            let opened_by = store
                .entry(summary.first_index)?
                .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.entry.meta).ok())
                .and_then(|meta| meta.get("node").and_then(|n| n.as_str()).map(String::from));
            if opened_by.as_deref() != Some(node) {
                continue;
            }
        }
        open.push(summary);
    }
    if open.is_empty() {
        return Ok(0);
    }
    let mut events = Vec::new();
    for summary in &open {
        let last_seq = store.entry(summary.last_index)?.map_or(0, |r| r.entry.seq);
        events.push(NewEvent {
            session: summary.id.clone(),
            seq: last_seq + 1,
            kind: sluice_record::kinds::SESSION_CLOSE.into(),
            time_ms: sluice_core::now_ms(),
            meta: json!({"exit_status": null, "reason": reason}).to_string(),
            payload: Vec::new(),
        });
    }
    store.append(&events)?;
    tracing::warn!(
        sessions = open.len(),
        node,
        reason,
        "closed sessions a stopped run left open"
    );
    Ok(open.len())
}

/// Beats for this node, and answers for each node whose beat lapsed that the record hands
/// to this one: closes its sessions and takes over its pending access requests. A database
/// that is down only delays the beats.
fn spawn_heartbeat(
    store: Arc<dyn Record>,
    membership: Arc<dyn Membership>,
    reviews: Arc<crate::review::Reviews>,
    every: Duration,
) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let (store, membership) = (store.clone(), membership.clone());
            let beat = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
                let claimed = membership.beat()?;
                for gone in &claimed {
                    let reason = format!("node {gone} stopped (its heartbeat lapsed)");
                    let closed = close_open_sessions(store.as_ref(), Some(gone), &reason)?;
                    tracing::warn!(node = %gone, closed, "a node stopped beating; closed its sessions");
                }
                Ok(claimed)
            })
            .await;
            let claimed = match beat {
                Ok(Ok(claimed)) => claimed,
                Ok(Err(why)) => {
                    tracing::warn!(%why, "heartbeat failed");
                    continue;
                }
                Err(_) => return,
            };
            for gone in claimed {
                match reviews.adopt(&gone).await {
                    Ok(0) => {}
                    Ok(adopted) => {
                        tracing::warn!(node = %gone, adopted, "took over a stopped node's pending access requests")
                    }
                    Err(why) => {
                        tracing::error!(node = %gone, %why, "cannot take over a stopped node's access requests; they wait for a reviewer")
                    }
                }
            }
        }
    });
}

pub fn new_session_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    format!("{}-{}", sluice_core::now_ms(), hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway on a free port with an empty policy (the built-in plugins are the binary's;
    /// the integration tests run the shipped policies), data in `dir`.
    async fn gateway(dir: &std::path::Path) -> Arc<Gateway> {
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        let policies = policies.display();
        let config = format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\npolicies = \"{policies}\"\n\n\
             [connections.shell]\nkind = \"exec\"\ninteractive = [\"bash\"]\nscript = [\"bash\", \"-s\"]\n",
            dir.join("data").display()
        );
        let path = dir.join("sluice.toml");
        std::fs::write(&path, config).unwrap();
        let (_, running) = start(Config::load(Some(&path)).unwrap()).await.unwrap();
        running.gateway
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_reload_that_cannot_be_recorded_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = gateway(dir.path()).await;
        let before = gateway.session_ctx.chains.read().unwrap().clone();
        assert!(gateway.reload("test").await.is_ok());
        let applied = gateway.session_ctx.chains.read().unwrap().clone();
        assert!(
            !Arc::ptr_eq(&before, &applied),
            "a reload applies new chains"
        );

        // The record can no longer commit (its store is gone): the reload is refused, and
        // the chains in force are the very ones from before it.
        gateway.store.close();
        let refused = gateway.reload("test").await.unwrap_err();
        assert!(refused.contains("nothing was applied"), "{refused}");
        let after = gateway.session_ctx.chains.read().unwrap().clone();
        assert!(
            Arc::ptr_eq(&applied, &after),
            "a refused reload swapped the policy in"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_verification_that_cannot_read_the_store_never_says_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = gateway(dir.path()).await;
        assert!(
            gateway
                .store
                .verify(sluice_record::VerifyOptions::default())
                .holds()
        );
        gateway.store.close();
        let report = gateway
            .store
            .verify(sluice_record::VerifyOptions::default());
        assert!(!report.holds(), "a closed store verified");
    }
}
