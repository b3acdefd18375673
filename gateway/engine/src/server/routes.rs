//! The `/api/...` routes (listed in `mod.rs`): authentication first, then each route checks
//! the caller's role on what it touches.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::Gateway;
use crate::review::Review;
use crate::roles::Role;
use sluice_core::frame::Identity;

/// What every route answers with.
pub(super) type Reply = Response<BoxBody<Bytes, Infallible>>;

pub(super) fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    response
}

pub(super) fn error(status: StatusCode, message: &str) -> Reply {
    reply(status, json!({ "error": message }).to_string())
}

impl Gateway {
    pub(super) async fn route(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        let path = req.uri().path().to_string();
        let query = query_of(&req);
        if path == "/api/ca" {
            return reply(StatusCode::OK, self.ca_pem.clone());
        }
        if path == crate::agent::tunnel::ENROLL_PATH
            || path == crate::agent::tunnel::CONNECT_PATH
            || path == crate::agent::relay::PATH
        {
            return self.agent_route(req, peer).await;
        }
        if path == "/"
            || path == "/favicon.ico"
            || path == "/console"
            || path.starts_with("/console/")
        {
            return self.console_route(req, peer).await;
        }
        if path == super::mcp::PATH {
            return self.mcp_route(req, peer).await;
        }
        if let Some(name) = path.strip_prefix("/mcp/") {
            let name = name.to_string();
            return self.mcp_connection_route(req, &name, peer).await;
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
            Err((status, why)) => {
                tracing::warn!(%peer, %path, %why, "authentication refused");
                return error(status, &why);
            }
        };
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method(), segments.as_slice()) {
            (&Method::POST, ["api", "sessions"]) => {
                self.open_session(req, &query, identity, peer).await
            }
            (&Method::GET, ["api", "reviews"]) => {
                let status = query.get("status").map(String::as_str);
                match self.reviews_elsewhere().await {
                    Ok(others) => {
                        let list = self.reviews().visible(&identity, status, &others);
                        reply(StatusCode::OK, json!(list).to_string())
                    }
                    Err(why) => error(StatusCode::SERVICE_UNAVAILABLE, &why),
                }
            }
            (&Method::GET, ["api", "reviews", "events"]) => match self.reviews_elsewhere().await {
                Ok(others) => self.review_events(identity, others),
                Err(why) => error(StatusCode::SERVICE_UNAVAILABLE, &why),
            },
            (&Method::GET, ["api", "reviews", id]) => {
                let found = match self.reviews().get(id) {
                    Some(r) => Some(r),
                    None => match self.reviews_elsewhere().await {
                        Ok(others) => others.into_iter().find(|r| r.id == *id),
                        Err(why) => return error(StatusCode::SERVICE_UNAVAILABLE, &why),
                    },
                };
                match found {
                    Some(r) if self.reviews().may_see(&identity, &r) => {
                        reply(StatusCode::OK, json!(r).to_string())
                    }
                    _ => error(
                        StatusCode::NOT_FOUND,
                        &format!("no review {id} that you may see"),
                    ),
                }
            }
            (&Method::POST, ["api", "reviews", id, verb @ ("approve" | "reject")]) => {
                let reason = query
                    .get("reason")
                    .cloned()
                    .filter(|r| !r.trim().is_empty());
                // A frame held on another node is decided there, where it waits; an access
                // request, on the node that made it while that node runs.
                let elsewhere = match self.reviews().get(id) {
                    None => self.node_holding_review(id).await,
                    Some(_) => None,
                };
                let elsewhere = match elsewhere {
                    Some(node) => Some(node),
                    None => self.access_decided_elsewhere(id).await,
                };
                if let Some(node) = elsewhere {
                    return self
                        .decide_elsewhere(&node, id, &identity, *verb == "approve", reason)
                        .await;
                }
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
                self.live_sessions(&identity).await
            }
            (&Method::GET, ["api", "sessions"]) => self.list_sessions(&identity),
            (&Method::GET, ["api", "sessions", "search"]) => {
                self.search_sessions(&identity, &query).await
            }
            (&Method::GET, ["api", "sessions", id, "follow"]) => {
                self.follow_session(&identity, id).await
            }
            (&Method::POST, ["api", "sessions", id, "kill"]) => {
                self.kill_session(&identity, id, peer).await
            }
            (&Method::GET, ["api", "sessions", id, "replay"]) => {
                self.session_replay(&identity, id, None).await
            }
            (&Method::GET, ["api", "sessions", id, "replay", segment]) => {
                self.session_replay(&identity, id, Some(segment)).await
            }
            (&Method::GET, ["api", "sessions", id, "events"]) => {
                let form = query.get("form").map_or("jsonl", String::as_str);
                self.session_events(&identity, id, form).await
            }
            (method, ["api", "agents", ..]) => {
                self.manage_agents(method, &segments, &query, &identity)
                    .await
            }
            (&Method::GET, ["api", "connections"]) => self.list_connections(&identity),
            (&Method::POST, ["api", "connections"]) | (&Method::PUT, ["api", "connections", _]) => {
                let edit = req.method() == Method::PUT;
                let named = segments.get(2).map(|s| s.to_string());
                self.put_connection(req, &identity, named, edit).await
            }
            (&Method::DELETE, ["api", "connections", name]) => {
                let name = name.to_string();
                self.remove_connection(&identity, &name).await
            }
            (&Method::GET, ["api", "ssh"]) => self.ssh_door(&identity),
            (&Method::POST, ["api", "ssh", "certificate"]) => {
                self.ssh_certificate(req, &identity).await
            }
            (&Method::GET, ["api", "whoami"]) => {
                let roles: serde_json::Map<String, serde_json::Value> = self
                    .connections
                    .all()
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
            (&Method::GET, ["api", "nodes"]) => {
                let allowed =
                    self.roles()
                        .require_anywhere(&identity, Role::Admin, "list the nodes");
                if let Err(why) = allowed.await {
                    return error(StatusCode::FORBIDDEN, &why);
                }
                self.nodes().await
            }
            (&Method::POST, ["api", "reload"]) => {
                let allowed =
                    self.roles()
                        .require_anywhere(&identity, Role::Admin, "reload the policy");
                if let Err(why) = allowed.await {
                    return error(StatusCode::FORBIDDEN, &why);
                }
                match self.reload(&identity.subject).await {
                    Ok(applied) => {
                        reply(StatusCode::OK, self.everywhere(applied).await.to_string())
                    }
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

    /// `POST /api/connections` `{"name", "table"}` (or `PUT /api/connections/NAME`
    /// `{"table"}`): admins of the connection (the policy's `default` roles, for a name it
    /// does not know) add or change a runtime connection.
    async fn put_connection(
        &self,
        req: Request<Incoming>,
        identity: &Identity,
        named: Option<String>,
        edit: bool,
    ) -> Reply {
        let body = match http_body_util::Limited::new(req.into_body(), 64 << 10)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("the body: {e}")),
        };
        let request: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body must be JSON: {e}"),
                );
            }
        };
        let Some(name) = named.or_else(|| request["name"].as_str().map(str::to_string)) else {
            return error(StatusCode::BAD_REQUEST, "name the connection (\"name\")");
        };
        let action = format!(
            "{} connection `{name}`",
            if edit { "change" } else { "add" }
        );
        if let Err(why) = self
            .roles()
            .require(identity, Role::Admin, &name, &action)
            .await
        {
            return error(StatusCode::FORBIDDEN, &why);
        }
        let change = super::operations::ConnectionChange::Put {
            name: name.clone(),
            table: request["table"].clone(),
            edit,
        };
        match self.reload_with(&identity.subject, Some(change)).await {
            Ok(applied) => {
                let applied = self.everywhere(applied).await;
                reply(
                    StatusCode::OK,
                    json!({"connection": name, "nodes": applied["nodes"]}).to_string(),
                )
            }
            Err(why) => error(StatusCode::UNPROCESSABLE_ENTITY, &why),
        }
    }

    /// `DELETE /api/connections/NAME`: admins remove a runtime connection.
    async fn remove_connection(&self, identity: &Identity, name: &str) -> Reply {
        let action = format!("remove connection `{name}`");
        if let Err(why) = self
            .roles()
            .require(identity, Role::Admin, name, &action)
            .await
        {
            return error(StatusCode::FORBIDDEN, &why);
        }
        let change = super::operations::ConnectionChange::Remove {
            name: name.to_string(),
        };
        match self.reload_with(&identity.subject, Some(change)).await {
            Ok(applied) => {
                let applied = self.everywhere(applied).await;
                reply(
                    StatusCode::OK,
                    json!({"removed": name, "nodes": applied["nodes"]}).to_string(),
                )
            }
            Err(why) => error(StatusCode::UNPROCESSABLE_ENTITY, &why),
        }
    }

    /// The connections `identity` holds a role on (admins: all), with their kind, agents,
    /// own listener and the roles held; never a secret.
    fn list_connections(&self, identity: &Identity) -> Reply {
        use crate::config::Connection;
        let list: Vec<_> = self
            .connections
            .list()
            .into_iter()
            .filter(|(name, ..)| {
                self.roles().any(identity, name) || self.roles().has(identity, Role::Admin, name)
            })
            .map(|(name, connection, source, shown)| {
                let (kind, listen) = match &connection {
                    Connection::Exec(_) => ("exec", None),
                    Connection::Postgres(pg) => ("postgres", Some(pg.listen.to_string())),
                    Connection::Tcp(_) => ("tcp", None),
                    Connection::Ssh(_) => ("ssh", None),
                    Connection::Mcp(_) => ("mcp", Some(format!("/mcp/{name}"))),
                };
                let roles: Vec<_> = Role::ALL
                    .iter()
                    .filter(|r| self.roles().has(identity, **r, &name))
                    .map(|r| r.name())
                    .collect();
                json!({
                    "name": name,
                    "kind": kind,
                    "listen": listen,
                    "agents": connection.agents().map(|a| a.names().to_vec()),
                    "roles": roles,
                    "source": match source {
                        crate::connections::Source::File => "sluice.toml",
                        crate::connections::Source::Runtime => "runtime",
                    },
                    "table": shown,
                })
            })
            .collect();
        reply(StatusCode::OK, json!(list).to_string())
    }

    /// Who is asking: the bearer token's identity, or, without one, that of the token a
    /// browser signed in to the console with (its CSRF token checked where it changes
    /// something).
    async fn authenticate(
        &self,
        req: &Request<Incoming>,
    ) -> Result<Identity, (StatusCode, String)> {
        let unauthorized = |why: &str| (StatusCode::UNAUTHORIZED, why.to_string());
        let Some(header) = req.headers().get(hyper::header::AUTHORIZATION) else {
            return match self.console.signed_in(req) {
                Ok(Some((token, _))) => self
                    .auth
                    .authenticate(&token)
                    .await
                    .map_err(|why| (StatusCode::UNAUTHORIZED, why)),
                Ok(None) => Err(unauthorized(MISSING)),
                Err(refused) => Err((refused.status, refused.why)),
            };
        };
        let token = bearer(header)?;
        self.auth
            .authenticate(token)
            .await
            .map_err(|why| (StatusCode::UNAUTHORIZED, why))
    }
}

const MISSING: &str = "no token given: run `sluice login`, pass --token or set SLUICE_TOKEN";

/// The token of an `Authorization: Bearer TOKEN` header.
pub(super) fn bearer(header: &hyper::header::HeaderValue) -> Result<&str, (StatusCode, String)> {
    let unauthorized = |why: &str| (StatusCode::UNAUTHORIZED, why.to_string());
    let value = header
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header: not text"))?
        .trim();
    // `Bearer` with nothing after it (an empty token, trailing space trimmed away).
    match value.strip_prefix("Bearer") {
        Some(rest) if rest.trim().is_empty() => Err(unauthorized(MISSING)),
        Some(rest) if rest.starts_with(' ') => Ok(rest.trim()),
        _ => Err(unauthorized(
            "malformed Authorization header: expected `Bearer TOKEN`",
        )),
    }
}

impl Gateway {
    /// Server-sent events: every review `identity` may see, pending ones first (with those
    /// other gateways on a shared record hold, `others`), then each change on this gateway as
    /// it happens (`event: review`, the review as JSON), with a keep-alive comment every 15 s.
    fn review_events(&self, identity: Identity, others: Vec<Review>) -> Reply {
        let reviews = self.reviews().clone();
        let mut changes = reviews.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let event = |r: &Review| Bytes::from(format!("event: review\ndata: {}\n\n", json!(r)));
        tokio::spawn(async move {
            for r in reviews
                .visible(&identity, Some("pending"), &others)
                .iter()
                .rev()
            {
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
        event_stream(rx)
    }
}

/// A request's query parameters, decoded.
pub(super) fn query_of<B>(req: &Request<B>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), percent_decode(v)))
                .collect()
        })
        .unwrap_or_default()
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

/// A server-sent-events reply: whatever the feeding task sends on `rx`'s sender.
pub(super) fn event_stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Reply {
    let mut response = Response::new(BodyExt::boxed(EventStream(rx)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    response
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
