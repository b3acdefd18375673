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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use std::convert::Infallible;

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::auth::{Authenticator, Tokens};
use crate::config::{Config, Connection};
use crate::policy::Policy;
use crate::review::{Review, Reviews};
use crate::roles::{Role, Roles};
use crate::session::{self, Chains, Mode};
use crate::sinks::{SinkPlan, Sinks};
use sluice_core::frame::Identity;
use sluice_plugin_host::{HostConfig, PluginHost};
use sluice_record::{NewEvent, Recorder, RetentionRules, Store};
use tracing::Instrument;

pub struct Gateway {
    config: Config,
    auth: Arc<Authenticator>,
    store: Arc<Store>,
    session_ctx: Arc<session::Context>,
    sinks: Arc<Sinks>,
    /// PostgreSQL connections' front doors, for clients that come through the tunnel.
    fronts: BTreeMap<String, Arc<crate::pg::Front>>,
    ca_pem: String,
    /// Loads plugins (again, on reload); keeps the engine and its epoch thread alive.
    host: Arc<PluginHost>,
    /// One reload (or retention run) at a time.
    maintenance: tokio::sync::Mutex<()>,
    /// Accept loops (the HTTPS listener's and each PostgreSQL front door's), ended at stop.
    listeners: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A policy read and every plugin it names loaded: what start and reload apply, whole.
struct LoadedPolicy {
    policy: Policy,
    chains: Chains,
    sinks: Vec<SinkPlan>,
}

/// Reads the policy folder and loads its plugins; any error leaves nothing half-applied.
fn load_policy(host: &PluginHost, config: &Config) -> anyhow::Result<LoadedPolicy> {
    let policy = Policy::load_dir(&config.gateway.policies)?;
    let mut plugins = BTreeMap::new();
    for name in config.connections.keys() {
        let chain = policy
            .chain(name)
            .into_iter()
            .map(|spec| host.load(spec))
            .collect::<Result<Vec<_>, _>>()?;
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
fn retention_rules(config: &Config) -> RetentionRules {
    let days = |d: f64| Duration::from_secs_f64(d * 86_400.0);
    RetentionRules {
        sessions: config
            .connections
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
    /// The record's public key (hex): auditors keep it to verify copies of the store.
    pub record_key: String,
    /// Sessions a previous run left open (it crashed), now closed in the record.
    pub closed_after_crash: usize,
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
        cache_dir: Some(data.join("plugin-cache")),
        resolver: Arc::new(sluice_plugin_host::egress::Resolver {
            hosts: config.egress.hosts.clone(),
        }),
        ..HostConfig::default()
    })?);
    let LoadedPolicy {
        policy,
        chains,
        sinks: sink_plans,
    } = load_policy(&host, &config)?;
    let key = config.gateway.record_key(&data);
    let signer = key.load().with_context(|| format!("record key {key}"))?;
    let store = Arc::new(Store::open_signed(&data.join("record.redb"), signer)?);
    let closed_after_crash = close_crashed_sessions(&store)?;
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
    let tls = crate::tls::load_or_create(&data)?;
    // In async mode nobody waits for a commit: group events over 10 ms per fsync.
    let recorder = Recorder::spawn_lingering(
        store.clone(),
        match config.gateway.record_mode {
            crate::config::RecordMode::Async => Duration::from_millis(10),
            crate::config::RecordMode::Strict => Duration::ZERO,
        },
    );
    let roles = Arc::new(Roles::new(policy.roles.clone(), recorder.clone()));
    let reviews = Reviews::open(
        store.clone(),
        recorder.clone(),
        policy.reviews.clone(),
        roles.clone(),
        Duration::from_millis(config.gateway.hold_timeout_ms),
    )
    .await?;
    let session_ctx = Arc::new(session::Context {
        recorder,
        record_mode: config.gateway.record_mode,
        reviews,
        roles,
        active: Default::default(),
        chains: std::sync::RwLock::new(Arc::new(chains)),
    });
    let sinks = Arc::new(Sinks::new(store.clone()));
    sinks.apply(sink_plans);
    let listener = tokio::net::TcpListener::bind(config.gateway.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.gateway.listen))?;
    let addr = listener.local_addr()?;
    let started = Started {
        addr,
        ca_fingerprint: crate::tls::fingerprint(&tls.ca_pem)?,
        dev_tokens,
        record_key: hex::encode(store.public_key()),
        closed_after_crash,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config);
    // PostgreSQL connections listen on ports of their own, bound now so a taken port fails
    // the start.
    let limits = crate::limits::Limits::new(&config.gateway);
    let mut fronts = BTreeMap::new();
    let mut listeners = Vec::new();
    for (name, connection) in &config.connections {
        let Connection::Postgres(pg) = connection else {
            continue;
        };
        let listener = tokio::net::TcpListener::bind(pg.listen)
            .await
            .with_context(|| format!("connections.{name}: cannot listen on {}", pg.listen))?;
        let front = Arc::new(crate::pg::Front::new(
            name.clone(),
            pg.clone(),
            auth.clone(),
            session_ctx.clone(),
            acceptor.clone(),
            limits.clone(),
        ));
        listeners.push(tokio::spawn(crate::pg::serve(front.clone(), listener)));
        fronts.insert(name.clone(), front);
    }
    let gateway = Arc::new(Gateway {
        config,
        auth,
        store,
        session_ctx,
        sinks,
        fronts,
        ca_pem: tls.ca_pem,
        host,
        maintenance: tokio::sync::Mutex::new(()),
        listeners: std::sync::Mutex::new(listeners),
    });
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
    // Retention runs at start and then on schedule, when anything has a retention.
    let rules = retention_rules(&gateway.config);
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
    let accepting = gateway.clone();
    let task = tokio::spawn(async move {
        let gateway = accepting;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors (EMFILE) or the like: retrying at once would
                    // spin a core without freeing anything.
                    tracing::warn!(error = %e, "accept failed; pausing before the next");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let admitted = match limits.admit(peer.ip()) {
                Ok(admitted) => admitted,
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
            let (gateway, acceptor, sign_in) = (gateway.clone(), acceptor.clone(), limits.sign_in);
            tokio::spawn(async move {
                let _admitted = admitted;
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
fn close_crashed_sessions(store: &Store) -> anyhow::Result<usize> {
    let open: Vec<_> = store
        .sessions()?
        .into_iter()
        .filter(|s| s.ended_ms.is_none())
        .collect();
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
            meta: json!({"exit_status": null, "reason": "gateway stopped unexpectedly"})
                .to_string(),
            payload: Vec::new(),
        });
    }
    store.append(&events)?;
    tracing::warn!(
        sessions = open.len(),
        "closed sessions a crashed run left open"
    );
    Ok(open.len())
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    response
}

fn error(status: StatusCode, message: &str) -> Reply {
    reply(status, json!({ "error": message }).to_string())
}

impl Gateway {
    async fn route(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        let path = req.uri().path().to_string();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .map(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), percent_decode(v)))
                    .collect()
            })
            .unwrap_or_default();
        if path == "/api/ca" {
            return reply(StatusCode::OK, self.ca_pem.clone());
        }
        if path == "/api/auth" {
            // What `sluice login` needs to sign in: public.
            let oidc = self.auth.oidc().map(|o| {
                let c = o.config();
                json!({"issuer": c.issuer, "client_id": c.client_id, "scopes": c.scopes})
            });
            return reply(StatusCode::OK, json!({ "oidc": oidc }).to_string());
        }
        let identity = match self.authenticate(&req).await {
            Ok(identity) => identity,
            Err(why) => {
                tracing::warn!(%peer, %path, %why, "authentication refused");
                return error(StatusCode::UNAUTHORIZED, &why);
            }
        };
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method(), segments.as_slice()) {
            (&Method::POST, ["api", "sessions"]) => {
                self.open_session(req, &query, identity, peer).await
            }
            (&Method::GET, ["api", "reviews"]) => {
                let status = query.get("status").map(String::as_str);
                let list = self.reviews().visible(&identity, status);
                reply(StatusCode::OK, json!(list).to_string())
            }
            (&Method::GET, ["api", "reviews", "events"]) => self.review_events(identity),
            (&Method::GET, ["api", "reviews", id]) => match self.reviews().get(id) {
                Some(r) if self.reviews().may_see(&identity, &r) => {
                    reply(StatusCode::OK, json!(r).to_string())
                }
                _ => error(
                    StatusCode::NOT_FOUND,
                    &format!("no review {id} that you may see"),
                ),
            },
            (&Method::POST, ["api", "reviews", id, verb @ ("approve" | "reject")]) => {
                let reason = query
                    .get("reason")
                    .cloned()
                    .filter(|r| !r.trim().is_empty());
                match self
                    .reviews()
                    .decide(id, &identity, *verb == "approve", reason)
                    .await
                {
                    Ok(review) => {
                        tracing::info!(review = %id, by = %identity.subject, status = review.status.as_str(), "review decided");
                        reply(StatusCode::OK, json!(review).to_string())
                    }
                    Err(refused) => {
                        tracing::warn!(review = %id, by = %identity.subject, why = %refused.message, "review decision refused");
                        let status = StatusCode::from_u16(refused.status)
                            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        error(status, &refused.message)
                    }
                }
            }
            (&Method::GET, ["api", "sessions"]) if query.contains_key("active") => {
                self.live_sessions(&identity)
            }
            (&Method::GET, ["api", "sessions"]) => self.list_sessions(&identity),
            (&Method::POST, ["api", "sessions", id, "kill"]) => {
                self.kill_session(&identity, id, peer).await
            }
            (&Method::GET, ["api", "sessions", id, "events"]) => {
                let form = query.get("form").map_or("jsonl", String::as_str);
                self.session_events(&identity, id, form).await
            }
            (&Method::GET, ["api", "whoami"]) => {
                let roles: serde_json::Map<String, serde_json::Value> = self
                    .config
                    .connections
                    .keys()
                    .map(|c| {
                        let held: Vec<_> = Role::ALL
                            .iter()
                            .filter(|r| self.roles().has(&identity, **r, c))
                            .map(|r| r.name())
                            .collect();
                        (c.clone(), json!(held))
                    })
                    .collect();
                let who = json!({"subject": identity.subject, "name": identity.name, "groups": identity.groups, "roles": roles});
                reply(StatusCode::OK, who.to_string())
            }
            (&Method::GET, ["metrics"]) => {
                let allowed =
                    self.roles()
                        .require_anywhere(&identity, Role::Admin, "read the metrics");
                if let Err(why) = allowed.await {
                    return error(StatusCode::FORBIDDEN, &why);
                }
                let open = self.session_ctx.live().len() as f64;
                let mut gauges = vec![(
                    "sluice_sessions_open",
                    "Sessions open now.",
                    String::new(),
                    open,
                )];
                for sink in self.sinks.status() {
                    gauges.push((
                        "sluice_sink_lag_events",
                        "Entries recorded but not yet delivered, by sink.",
                        sluice_core::metrics::labels(&[("sink", &sink.name)]),
                        sink.lag as f64,
                    ));
                }
                reply(StatusCode::OK, sluice_core::metrics::render(&gauges))
            }
            (&Method::GET, ["api", "sinks"]) => {
                let allowed =
                    self.roles()
                        .require_anywhere(&identity, Role::Admin, "see the sinks");
                if let Err(why) = allowed.await {
                    return error(StatusCode::FORBIDDEN, &why);
                }
                reply(StatusCode::OK, json!(self.sinks.status()).to_string())
            }
            (&Method::POST, ["api", "reload"]) => {
                let allowed =
                    self.roles()
                        .require_anywhere(&identity, Role::Admin, "reload the policy");
                if let Err(why) = allowed.await {
                    return error(StatusCode::FORBIDDEN, &why);
                }
                match self.reload(&identity.subject).await {
                    Ok(applied) => reply(StatusCode::OK, applied.to_string()),
                    Err(why) => error(StatusCode::UNPROCESSABLE_ENTITY, &why),
                }
            }
            (&Method::POST, ["api", "retention"]) => {
                let allowed =
                    self.roles()
                        .require_anywhere(&identity, Role::Admin, "run retention");
                if let Err(why) = allowed.await {
                    return error(StatusCode::FORBIDDEN, &why);
                }
                match self.retention(&identity.subject).await {
                    Ok(report) => reply(StatusCode::OK, report.to_string()),
                    Err(why) => error(StatusCode::INTERNAL_SERVER_ERROR, &why),
                }
            }
            (&Method::GET | &Method::POST, ["api", "verify"]) => {
                let allowed =
                    self.roles()
                        .require_anywhere(&identity, Role::Audit, "verify the record");
                if let Err(why) = allowed.await {
                    return error(StatusCode::FORBIDDEN, &why);
                }
                let accept_loss = query.contains_key("accept_loss");
                let anchors = match read_anchors(req).await {
                    Ok(anchors) => anchors,
                    Err(why) => return error(StatusCode::BAD_REQUEST, &why),
                };
                let given = anchors.len();
                let options = sluice_record::VerifyOptions {
                    trusted_keys: Vec::new(),
                    anchors,
                    accept_loss,
                };
                let store = self.store.clone();
                // A verification that cannot finish never reads as one that held.
                let report = tokio::task::spawn_blocking(move || store.verify(options))
                    .await
                    .unwrap_or_else(|e| sluice_record::VerifyReport {
                        problem: Some(sluice_record::Problem::Corrupt {
                            index: None,
                            why: format!("verification did not finish: {e}"),
                        }),
                        ..Default::default()
                    });
                let audited = json!({"by": identity.subject, "action": "verify", "heads_given": given, "holds": report.holds()});
                if let Err(why) = self.record_gateway_event("audit", &audited).await {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, &why);
                }
                reply(
                    StatusCode::OK,
                    crate::audit::report_json(&report).to_string(),
                )
            }
            _ => error(
                StatusCode::NOT_FOUND,
                &format!("no route {} {path}", req.method()),
            ),
        }
    }

    async fn authenticate(&self, req: &Request<Incoming>) -> Result<Identity, String> {
        const MISSING: &str =
            "no token given: run `sluice login`, pass --token or set SLUICE_TOKEN";
        let header = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .ok_or(MISSING)?;
        let value = header
            .to_str()
            .map_err(|_| "malformed Authorization header: not text")?
            .trim();
        // `Bearer` with nothing after it (an empty token, trailing space trimmed away).
        let token = match value.strip_prefix("Bearer") {
            Some(rest) if rest.trim().is_empty() => return Err(MISSING.into()),
            Some(rest) if rest.starts_with(' ') => rest.trim(),
            _ => return Err("malformed Authorization header: expected `Bearer TOKEN`".into()),
        };
        self.auth.authenticate(token).await
    }

    /// Reads the policy again and applies it whole: new sessions get the new chains, roles
    /// and review rules at once; sessions in flight keep their plugin instances until they
    /// end; sinks start, stop or restart as their tables changed. A policy that does not
    /// load is refused and the old one stays. Recorded (kind `policy`).
    async fn reload(&self, by: &str) -> Result<serde_json::Value, String> {
        let _one_at_a_time = self.maintenance.lock().await;
        let (host, config) = (self.host.clone(), self.config.clone());
        let loaded = tokio::task::spawn_blocking(move || load_policy(&host, &config))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{e:#} (nothing was applied: the running policy stays)"))?;
        let files = loaded.chains.policy_files.clone();
        let sink_names: Vec<String> = loaded.sinks.iter().map(|s| s.name.clone()).collect();
        let applied = json!({"by": by, "files": files, "sinks": sink_names});
        // Recorded before anything is swapped: the one step that can still fail does so
        // while the running policy is untouched. What follows cannot fail.
        self.record_gateway_event("policy", &applied)
            .await
            .map_err(|e| format!("{e} (nothing was applied: the running policy stays)"))?;
        self.session_ctx.set_chains(loaded.chains);
        self.roles().replace(loaded.policy.roles);
        self.reviews().set_rules(loaded.policy.reviews);
        let sinks = self.sinks.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || sinks.apply(loaded.sinks)).await {
            tracing::error!(error = %e, "applying the sinks of the reloaded policy failed");
        }
        tracing::info!(%by, "policy reloaded");
        Ok(applied)
    }

    /// See [`Running::stop`].
    async fn stop(&self, why: &str) -> anyhow::Result<usize> {
        for listener in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            listener.abort();
        }
        let live = self.session_ctx.live();
        for (id, ..) in &live {
            self.session_ctx
                .kill(id, format!("the gateway is stopping ({why})"));
        }
        // Each session records its close as it ends; wait for them, within the grace.
        let grace = Duration::from_millis(self.config.gateway.stop_grace_ms);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.session_ctx.live().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let unfinished = self.session_ctx.live().len();
        if unfinished > 0 {
            tracing::warn!(
                unfinished,
                "sessions did not end within the stop grace; the next start closes them"
            );
        }
        // Sinks finish the delivery in flight (bounded by the same grace).
        let sinks = self.sinks.clone();
        let stopping = tokio::task::spawn_blocking(move || sinks.apply(Vec::new()));
        let _ = tokio::time::timeout(grace, stopping).await;
        // Recorded in strict order after everything queued before it: once it is durable,
        // so is every event of the sessions that just ended.
        let stopped = json!({"why": why, "sessions_ended": live.len() - unfinished, "unfinished": unfinished});
        self.record_gateway_event("gateway-stop", &stopped)
            .await
            .map_err(|e| anyhow::anyhow!("cannot record the stop: {e}"))?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.close()).await?;
        Ok(live.len() - unfinished)
    }

    /// Purges what retention says has expired, then compacts the store so the purged bytes
    /// are gone from the file. Recorded (kind `retention`) when anything was purged.
    async fn retention(&self, by: &str) -> Result<serde_json::Value, String> {
        let _one_at_a_time = self.maintenance.lock().await;
        let (store, rules) = (self.store.clone(), retention_rules(&self.config));
        let live: std::collections::HashSet<String> = self
            .session_ctx
            .live()
            .into_iter()
            .map(|(id, ..)| id)
            .collect();
        let who = by.to_string();
        let (purged, compacted) = tokio::task::spawn_blocking(move || {
            let purged = store.purge(&rules, sluice_core::now_ms(), &live, &who)?;
            let compacted = if purged.is_empty() {
                None
            } else {
                Some(store.compact()?)
            };
            Ok::<_, sluice_record::RecordError>((purged, compacted))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        self.reviews().forget(&purged.reviews);
        let report = json!({
            "by": by,
            "sessions": purged.sessions,
            "reviews": purged.reviews,
            "payloads": purged.payloads(),
            "ranges": purged.ranges,
            "entry": purged.entry,
            "compacted": compacted,
        });
        if !purged.is_empty() {
            // The purge recorded itself, in the transaction that deleted.
            tracing::info!(%by, payloads = purged.payloads(), sessions = purged.sessions.len(), "retention purged");
        }
        Ok(report)
    }

    /// An event of the gateway's own (no session) in the chain.
    async fn record_gateway_event(
        &self,
        kind: &str,
        meta: &serde_json::Value,
    ) -> Result<(), String> {
        let event = NewEvent {
            session: String::new(),
            seq: 0,
            kind: kind.into(),
            time_ms: sluice_core::now_ms(),
            meta: meta.to_string(),
            payload: Vec::new(),
        };
        self.session_ctx
            .recorder
            .append(event)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn reviews(&self) -> &Arc<Reviews> {
        &self.session_ctx.reviews
    }

    fn roles(&self) -> &Arc<Roles> {
        &self.session_ctx.roles
    }

    /// Server-sent events: every review `identity` may see, pending ones first, then each
    /// change as it happens (`event: review`, the review as JSON), with a keep-alive comment
    /// every 15 s.
    fn review_events(&self, identity: Identity) -> Reply {
        let reviews = self.reviews().clone();
        let mut changes = reviews.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let event = |r: &Review| Bytes::from(format!("event: review\ndata: {}\n\n", json!(r)));
        tokio::spawn(async move {
            for r in reviews.visible(&identity, Some("pending")).iter().rev() {
                if tx.send(event(r)).await.is_err() {
                    return;
                }
            }
            let mut keep_alive = tokio::time::interval(Duration::from_secs(15));
            loop {
                let next = tokio::select! {
                    change = changes.recv() => match change {
                        Ok(r) if reviews.may_see(&identity, &r) => event(&r),
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            Bytes::from(format!(": {n} changes skipped; list /api/reviews\n\n"))
                        }
                        Err(_) => return,
                    },
                    _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
                };
                if tx.send(next).await.is_err() {
                    return; // the reader went away
                }
            }
        });
        let mut response = Response::new(BodyExt::boxed(EventStream(rx)));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        response
    }

    /// Just-in-time access for a session about to open: `Err` is the reply refusing it.
    async fn access(
        &self,
        identity: &Identity,
        connection: &str,
        reason: Option<&str>,
    ) -> Result<Option<u64>, Reply> {
        self.reviews()
            .access(identity, connection, reason)
            .await
            .map_err(|text| error(StatusCode::FORBIDDEN, &text))
    }

    async fn open_session(
        &self,
        req: Request<Incoming>,
        query: &BTreeMap<String, String>,
        identity: Identity,
        peer: SocketAddr,
    ) -> Reply {
        let upgrade = req
            .headers()
            .get(hyper::header::UPGRADE)
            .and_then(|v| v.to_str().ok());
        if upgrade != Some(crate::wire::PROTOCOL) {
            return error(
                StatusCode::BAD_REQUEST,
                "sessions need `Upgrade: sluice-session/1`",
            );
        }
        let Some(name) = query.get("connection") else {
            return error(StatusCode::BAD_REQUEST, "missing ?connection=NAME");
        };
        let Some(connection) = self.config.connections.get(name) else {
            let known: Vec<_> = self.config.connections.keys().cloned().collect();
            return error(
                StatusCode::NOT_FOUND,
                &format!("unknown connection `{name}` (known: {})", known.join(", ")),
            );
        };
        let action = format!("connect to `{name}`");
        if let Err(why) = self
            .roles()
            .require(&identity, Role::Connect, name, &action)
            .await
        {
            return error(StatusCode::FORBIDDEN, &why);
        }
        let (plugins, policy) = self.session_ctx.chain(name);
        let mut opening = session::Opening {
            id: new_session_id(),
            connection_name: name.clone(),
            protocol: "exec",
            plugins,
            policy,
            identity,
            client: peer.to_string(),
            meta: serde_json::Value::Null,
            access_until: None,
        };
        let reason = query.get("reason").map(String::as_str);
        let mode = query.get("mode").map(String::as_str).unwrap_or_default();
        let exec = match (connection, mode) {
            (Connection::Exec(exec), "exec" | "connect") => exec.clone(),
            (Connection::Postgres(_) | Connection::Tcp(_), "tunnel") => {
                return self
                    .tunnel(req, name, connection, opening, peer, reason)
                    .await;
            }
            (Connection::Exec(_), _) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "`{name}` runs a program: use `sluice connect {name}` or `sluice exec {name}`"
                    ),
                );
            }
            (Connection::Postgres(_) | Connection::Tcp(_), _) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("`{name}` forwards a port: use `sluice connect {name} --port PORT`"),
                );
            }
        };
        opening.access_until = match self.access(&opening.identity, name, reason).await {
            Ok(until) => until,
            Err(refused) => return refused,
        };
        let mode = if mode == "exec" {
            Mode::Exec
        } else {
            let dim = |k: &str, d: u16| query.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
            Mode::Connect {
                rows: dim("rows", 24),
                cols: dim("cols", 80),
            }
        };
        let request = session::exec::Request {
            opening,
            connection: exec,
            mode,
        };
        let id = request.opening.id.clone();
        let ctx = self.session_ctx.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let o = &request.opening;
                    let span = tracing::info_span!("session", id = %o.id, connection = %o.connection_name, user = %o.identity.subject);
                    session::run(ctx, request, TokioIo::new(upgraded))
                        .instrument(span)
                        .await
                }
                Err(e) => tracing::info!(%peer, error = %e, "session upgrade failed"),
            }
        });
        upgraded(&id)
    }

    /// `sluice connect NAME --port`: after the upgrade the stream carries the connection's
    /// own protocol. A PostgreSQL client still signs in with its token at startup; a TCP
    /// session is the tunnel's user's.
    async fn tunnel(
        &self,
        req: Request<Incoming>,
        name: &str,
        connection: &Connection,
        mut opening: session::Opening,
        peer: SocketAddr,
        reason: Option<&str>,
    ) -> Reply {
        let id = opening.id.clone();
        match connection {
            Connection::Postgres(_) => {
                let Some(front) = self.fronts.get(name).cloned() else {
                    return error(StatusCode::NOT_FOUND, "no such PostgreSQL connection");
                };
                // The PostgreSQL client signs in (and is checked for access) at startup.
                let reason = reason.map(String::from);
                tokio::spawn(async move {
                    if let Ok(upgraded) = hyper::upgrade::on(req).await
                        && let Err(e) = front
                            .client(Box::new(TokioIo::new(upgraded)), peer, true, reason)
                            .await
                    {
                        tracing::info!(%peer, error = %e, "postgres client refused");
                    }
                });
            }
            Connection::Tcp(tcp) => {
                opening.access_until = match self.access(&opening.identity, name, reason).await {
                    Ok(until) => until,
                    Err(refused) => return refused,
                };
                let (ctx, target) = (self.session_ctx.clone(), tcp.upstream.clone());
                opening.protocol = "tcp";
                tokio::spawn(async move {
                    let Ok(upgraded) = hyper::upgrade::on(req).await else {
                        return;
                    };
                    let span = tracing::info_span!("session", id = %opening.id, connection = %opening.connection_name, user = %opening.identity.subject);
                    crate::tcp::session(ctx, opening, Box::new(TokioIo::new(upgraded)), target)
                        .instrument(span)
                        .await;
                });
            }
            Connection::Exec(_) => return error(StatusCode::BAD_REQUEST, "not a tunnel"),
        }
        upgraded(&id)
    }

    /// A recorded session is visible to its auditors, and to its own user while they hold
    /// a role on its connection; to nobody else.
    fn may_read(&self, identity: &Identity, subject: &str, connection: &str) -> bool {
        self.roles().has(identity, Role::Audit, connection)
            || (subject == identity.subject && self.roles().any(identity, connection))
    }

    fn live_sessions(&self, identity: &Identity) -> Reply {
        let live: Vec<_> = self
            .session_ctx
            .live()
            .into_iter()
            .filter(|(_, subject, connection, _)| {
                self.may_read(identity, subject, connection)
                    || self.roles().has(identity, Role::Admin, connection)
            })
            .map(|(id, subject, connection, started_ms)| json!({"id": id, "subject": subject, "connection": connection, "started_ms": started_ms}))
            .collect();
        reply(StatusCode::OK, serde_json::Value::from(live).to_string())
    }

    /// Admins of its connection end a live session.
    async fn kill_session(&self, identity: &Identity, id: &str, peer: SocketAddr) -> Reply {
        let live = self.session_ctx.live();
        let Some((_, _, connection, _)) = live.iter().find(|(live_id, ..)| live_id == id) else {
            return error(StatusCode::NOT_FOUND, &format!("no live session {id}"));
        };
        let action = format!("end session {id}");
        if let Err(why) = self
            .roles()
            .require(identity, Role::Admin, connection, &action)
            .await
        {
            tracing::warn!(%peer, subject = %identity.subject, session = id, "kill refused");
            return error(StatusCode::FORBIDDEN, &why);
        }
        if self
            .session_ctx
            .kill(id, format!("ended by {}", identity.subject))
        {
            tracing::info!(subject = %identity.subject, session = id, "session killed");
            reply(StatusCode::OK, json!({"killed": id}).to_string())
        } else {
            error(StatusCode::NOT_FOUND, &format!("no live session {id}"))
        }
    }

    fn list_sessions(&self, identity: &Identity) -> Reply {
        match self.store.sessions() {
            Ok(all) => {
                let visible: Vec<_> = all
                    .into_iter()
                    .filter(|s| self.may_read(identity, &s.subject, &s.connection))
                    .collect();
                reply(
                    StatusCode::OK,
                    serde_json::to_string(&visible).unwrap_or_default(),
                )
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    async fn session_events(&self, identity: &Identity, id: &str, form: &str) -> Reply {
        match self.store.session(id) {
            Ok(Some(s)) if self.may_read(identity, &s.subject, &s.connection) => {}
            Ok(Some(s)) => {
                let action = format!("read session {id}");
                let why = self
                    .roles()
                    .refuse(identity, Role::Audit, &s.connection, &action)
                    .await;
                return error(StatusCode::FORBIDDEN, &why);
            }
            Ok(None) => return error(StatusCode::NOT_FOUND, &format!("no session {id}")),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
        // Reading a recording is itself recorded, before anything is served.
        let form: String = form
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(32)
            .collect();
        let audited =
            json!({"by": identity.subject, "action": "read", "session": id, "form": form});
        if let Err(why) = self.record_gateway_event("audit", &audited).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, &why);
        }
        match self.store.session_events(id) {
            Ok(events) => {
                let lines: String = events
                    .iter()
                    .map(|e| crate::audit::event_json(e).to_string() + "\n")
                    .collect();
                reply(StatusCode::OK, lines)
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
}

/// The heads an auditor sends to verify against (a JSON array of signed heads).
async fn read_anchors(req: Request<Incoming>) -> Result<Vec<sluice_record::Anchor>, String> {
    if req.method() != Method::POST {
        return Ok(Vec::new());
    }
    let body = http_body_util::Limited::new(req.into_body(), MAX_ANCHORS_BODY)
        .collect()
        .await
        .map_err(|e| format!("cannot read the heads sent: {e}"))?
        .to_bytes();
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let heads: Vec<sluice_record::SignedHead> = serde_json::from_slice(&body)
        .map_err(|e| format!("the body must be a JSON array of signed heads: {e}"))?;
    Ok(heads
        .into_iter()
        .map(|head| sluice_record::Anchor {
            source: format!("the head for entry {} you gave", head.index),
            head,
            trusted: true,
        })
        .collect())
}

/// Heads an auditor may send to verify against, in bytes (each is about 300).
const MAX_ANCHORS_BODY: usize = 4 << 20;

pub fn new_session_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    format!("{}-{}", sluice_core::now_ms(), hex::encode(bytes))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of a server-sent-events reply: whatever the feeding task sends.
struct EventStream(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|next| next.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
    }
}

/// `101 Switching Protocols` to the session stream.
fn upgraded(id: &str) -> Reply {
    let mut response = reply(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static(crate::wire::PROTOCOL),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    if let Ok(value) = hyper::header::HeaderValue::from_str(id) {
        headers.insert("sluice-session", value);
    }
    response
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
