//! The gateway as an MCP server for agents: `POST /mcp`, the Streamable HTTP transport
//! (stateless, JSON answers), signed in with a Sluice token or an access token from the
//! identity provider, as every API call is (docs/ai-agents.md).
//!
//! | tool               | does                                                              |
//! |--------------------|-------------------------------------------------------------------|
//! | `list_connections` | the connections the caller may use, with their kind and tool      |
//! | `exec`             | a one-shot script on a program (or SSH) connection                |
//! | `query`            | SQL on a PostgreSQL connection, through its front door            |
//! | `review_status`    | a review's state; waits for a decision; a held call's result      |
//!
//! *Invariants:* every `exec` and `query` is a session like any other: opened with the
//! caller's identity, roles and just-in-time access checked, its frames through the chain and
//! the record (`session/exec.rs`, `pg/session.rs` unchanged), so what the agent reads is
//! what the masker let through. A call a gate holds answers at once as pending; the session
//! waits on, and runs the call exactly once when it is approved; its result is kept for the
//! caller alone until `KEEP_MS` after it arrived. No identity may decide its own review, and
//! an agent may decide none (`Reviews::decide`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, StatusCode};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeRequestParams, InitializeResult, JsonObject, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::Gateway;
use super::routes::{Reply, bearer, error};
use crate::config::Connection;
use crate::review::{Review, Status};
use crate::roles::Role;
use crate::session::exec::Target;
use crate::session::{self, Mode};
use crate::wire::{self, Message};
use sluice_core::frame::Identity;

pub(super) const PATH: &str = "/mcp";

/// A JSON-RPC message's largest body; larger ones are answered `413`.
const MAX_MESSAGE: usize = 1 << 20;
/// A held call's result waits this long to be collected.
const KEEP_MS: u64 = 60 * 60 * 1000;
/// `review_status` waits for a decision at most this long (under clients' request timeouts).
const MAX_WAIT_SECONDS: u64 = 50;
/// Output an `exec` call returns; the rest is counted.
const MAX_OUTPUT: usize = 1 << 20;

impl Gateway {
    /// `/mcp`: a bearer token (never the console's cookie: this is no browser's endpoint),
    /// then the MCP transport, whose handler acts as the token's identity.
    pub(super) async fn mcp_route(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Reply {
        let (identity, token) = match self.bearer_identity(&req, peer).await {
            Ok(known) => known,
            Err(reply) => return reply,
        };
        let req = match checked(req).await {
            Ok(req) => req,
            Err(refused) => return refused,
        };
        let tools = Tools {
            gateway: self,
            identity,
            token,
            peer,
        };
        let mut config = StreamableHttpServerConfig::default()
            // Who may call is the token's business; any host name the gateway is reached by.
            .disable_allowed_hosts()
            // Agents are not browsers: a request a web page makes is refused.
            .enforce_origin_validation();
        config.legacy_session_mode = false;
        config.json_response = true;
        config.max_request_body_bytes = MAX_MESSAGE;
        let service = StreamableHttpService::new(
            move || Ok(tools.clone()),
            Arc::new(NeverSessionManager::default()),
            config,
        );
        service.handle(req).await
    }
}

/// Who sent a request to an `mcp` connection's endpoint (put in the request's extensions).
#[derive(Clone)]
struct Caller {
    identity: Identity,
    peer: SocketAddr,
}

/// The endpoints of `mcp` connections, made on first use; their MCP sessions live in them.
pub(super) type Fronted = StreamableHttpService<Front, LocalSessionManager>;

impl Gateway {
    /// `/mcp/NAME`: an MCP session with the connection's server, one per client session.
    pub(super) async fn mcp_connection_route(
        self: Arc<Self>,
        req: Request<Incoming>,
        name: &str,
        peer: SocketAddr,
    ) -> Reply {
        let identity = match self.bearer_identity(&req, peer).await {
            Ok((identity, _)) => identity,
            Err(reply) => return reply,
        };
        let connection = match self.connectable(&identity, name).await {
            Ok(Connection::Mcp(mcp)) => mcp,
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("`{name}` is not an MCP connection: its tools are at /mcp"),
                );
            }
            Err((status, why)) => return error(status, &why),
        };
        let mut req = match checked(req).await {
            Ok(req) => req,
            Err(refused) => return refused,
        };
        req.extensions_mut().insert(Caller { identity, peer });
        let service = {
            let mut services = self.mcp_fronts.lock().unwrap_or_else(|e| e.into_inner());
            services
                .entry(name.to_string())
                .or_insert_with(|| {
                    let (gateway, name) = (Arc::downgrade(&self), name.to_string());
                    let mut config = StreamableHttpServerConfig::default()
                        .disable_allowed_hosts()
                        .enforce_origin_validation();
                    config.max_request_body_bytes = MAX_MESSAGE;
                    // An MCP session nobody used for this long ends (its server stops).
                    let mut sessions = LocalSessionManager::default();
                    sessions.session_config.keep_alive = Some(Duration::from_secs(30 * 60));
                    StreamableHttpService::new(
                        move || {
                            Ok(Front {
                                gateway: gateway.clone(),
                                name: name.clone(),
                                connection: connection.clone(),
                                session: Arc::new(FrontSession::default()),
                            })
                        },
                        Arc::new(sessions),
                        config,
                    )
                })
                .clone()
        };
        service.handle(req).await
    }
}

/// One client's MCP session on an `mcp` connection.
#[derive(Clone)]
pub(super) struct Front {
    gateway: std::sync::Weak<Gateway>,
    name: String,
    connection: crate::config::McpConnection,
    session: Arc<FrontSession>,
}

/// The relay, once the client initialized; closed when the MCP session ends.
#[derive(Default)]
struct FrontSession {
    relay: tokio::sync::OnceCell<crate::session::mcp::Relay>,
    subject: std::sync::OnceLock<String>,
}

impl Drop for FrontSession {
    fn drop(&mut self) {
        if let Some(relay) = self.relay.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(relay.close("the MCP session ended"));
        }
    }
}

impl Front {
    /// The request's caller, who must be the session's.
    fn caller(&self, context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
        let caller = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| ErrorData::internal_error("no caller on the request", None))?;
        match self.session.subject.get() {
            Some(subject) if *subject != caller.identity.subject => Err(
                ErrorData::invalid_request("this MCP session belongs to another identity", None),
            ),
            _ => Ok(caller),
        }
    }

    fn relay(&self) -> Result<&crate::session::mcp::Relay, ErrorData> {
        self.session
            .relay
            .get()
            .ok_or_else(|| ErrorData::invalid_request("initialize the session first", None))
    }
}

impl ServerHandler for Front {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new(format!("sluice:{}", self.name), env!("CARGO_PKG_VERSION")),
        )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        let caller = self.caller(&context)?;
        let gateway = self
            .gateway
            .upgrade()
            .ok_or_else(|| ErrorData::internal_error("the gateway is stopping", None))?;
        let meta = json!({"front": "mcp", "client": request.client_info.name});
        let mut opening = opening(
            &gateway,
            &caller.identity,
            caller.peer,
            &self.name,
            meta,
            None,
        )
        .await
        .map_err(|why| ErrorData::invalid_request(why, None))?;
        opening.protocol = "mcp";
        let relay = crate::session::mcp::Relay::open(
            gateway.session_ctx.clone(),
            opening,
            self.connection.clone(),
            gateway.mcp_pins.clone(),
            Some(context.peer.clone()),
        )
        .await
        .map_err(|why| ErrorData::internal_error(why, None))?;
        let _ = self.session.subject.set(caller.identity.subject);
        if self.session.relay.set(relay).is_err() {
            return Err(ErrorData::invalid_request("already initialized", None));
        }
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.caller(&context)?;
        Ok(ListToolsResult::with_all_items(
            self.relay()?.tools().await?,
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.caller(&context)?;
        let id = serde_json::to_value(&context.id)
            .map(|v| v.to_string())
            .unwrap_or_default();
        Ok(self.relay()?.call(request, id).await?.into())
    }
}

/// A POST's body read (at most `MAX_MESSAGE` bytes) and checked to be a JSON-RPC message
/// before the transport sees it, so that what is not gets a JSON-RPC error saying why.
async fn checked(req: Request<Incoming>) -> Result<Request<Full<Bytes>>, Reply> {
    let (parts, body) = req.into_parts();
    // Announced too large: refused before any of it is read (a client that sent `Expect:
    // 100-continue` then never sends it).
    let announced = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if announced.is_some_and(|n| n > MAX_MESSAGE) {
        return Err(jsonrpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            -32600,
            &format!("the message is over {MAX_MESSAGE} bytes"),
        ));
    }
    let bytes = match http_body_util::Limited::new(body, MAX_MESSAGE)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(jsonrpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                &format!("the message is over {MAX_MESSAGE} bytes"),
            ));
        }
        Err(e) => {
            return Err(jsonrpc_error(
                StatusCode::BAD_REQUEST,
                -32600,
                &e.to_string(),
            ));
        }
    };
    if parts.method == hyper::Method::POST {
        let message: Value = serde_json::from_slice(&bytes).map_err(|e| {
            jsonrpc_error(
                StatusCode::BAD_REQUEST,
                -32700,
                &format!("parse error: {e}"),
            )
        })?;
        let is_message = |m: &Value| {
            m.get("jsonrpc") == Some(&json!("2.0"))
                && ["method", "result", "error"]
                    .iter()
                    .any(|k| m.get(k).is_some())
        };
        if !is_message(&message) {
            return Err(jsonrpc_error(
                StatusCode::BAD_REQUEST,
                -32600,
                "invalid request: expected one JSON-RPC 2.0 message (an object with \"jsonrpc\": \"2.0\" and a method, result or error)",
            ));
        }
    }
    Ok(Request::from_parts(parts, Full::new(bytes)))
}

/// A JSON-RPC error answering a message that could not be read (so its id is unknown).
fn jsonrpc_error(status: StatusCode, code: i64, message: &str) -> Reply {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}});
    let mut reply = super::routes::reply(status, body.to_string());
    reply.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    reply
}

impl Gateway {
    /// The bearer token's identity (never the console's cookie: no browser's endpoint), or
    /// `401` saying why, with the scheme to use.
    async fn bearer_identity(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<(Identity, String), Reply> {
        let token = match req.headers().get(hyper::header::AUTHORIZATION) {
            Some(header) => bearer(header).map(str::to_string),
            None => Err((
                StatusCode::UNAUTHORIZED,
                "no token given: send `Authorization: Bearer TOKEN` (a Sluice token or an access token)".into(),
            )),
        };
        let known = match token {
            Ok(token) => self
                .auth
                .authenticate(&token)
                .await
                .map(|identity| (identity, token))
                .map_err(|why| (StatusCode::UNAUTHORIZED, why)),
            Err(refused) => Err(refused),
        };
        known.map_err(|(status, why)| {
            tracing::warn!(%peer, path = %req.uri().path(), %why, "authentication refused");
            let mut reply = error(status, &why);
            reply.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            reply
        })
    }
}

/// The tools, as one caller sees them.
#[derive(Clone)]
struct Tools {
    gateway: Arc<Gateway>,
    identity: Identity,
    /// The caller's token: a `query` signs in at the PostgreSQL door with it, as `psql` would.
    token: String,
    peer: SocketAddr,
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("sluice", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Sluice: run scripts and SQL on the connections you may use. Every call is \
                 recorded; output is masked; a risky call is held for a person to approve \
                 (the result says `pending` with a review id: wait with `review_status`).",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(definitions()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = Value::Object(request.arguments.unwrap_or_default());
        let result = match request.name.as_ref() {
            "list_connections" => Ok(self.list_connections()),
            "exec" => self.exec(&args).await,
            "query" => self.query(&args).await,
            "review_status" => self.review_status(&args).await,
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool `{other}`"),
                    None,
                ));
            }
        };
        // A refusal is the tool's answer (the agent reads why), not a protocol error.
        Ok(result
            .unwrap_or_else(|why| CallToolResult::error(vec![ContentBlock::text(why)]))
            .into())
    }
}

fn definitions() -> Vec<Tool> {
    let schema = |properties: Value, required: &[&str]| -> Arc<JsonObject> {
        let schema = json!({"type": "object", "properties": properties, "required": required});
        Arc::new(schema.as_object().cloned().unwrap_or_default())
    };
    let reason = json!({"type": "string", "description": "Why: shown to reviewers when the connection needs approved access"});
    vec![
        Tool::new(
            "list_connections",
            "The connections you may use: name, kind and the tool that reaches it.",
            schema(json!({}), &[]),
        ),
        Tool::new(
            "exec",
            "Run a one-shot script on a program connection (a shell, Python, an SSH server). \
             Returns its output (masked) and exit status, or `pending` with a review id when a \
             gate holds it for a person's approval.",
            schema(
                json!({
                    "connection": {"type": "string"},
                    "script": {"type": "string", "description": "The whole script, as its interpreter reads it"},
                    "reason": reason,
                }),
                &["connection", "script"],
            ),
        ),
        Tool::new(
            "query",
            "Run SQL on a PostgreSQL connection. Returns each statement's columns and rows \
             (masked) and command tag, or the server's error; or `pending` with a review id \
             when a gate holds it for a person's approval.",
            schema(
                json!({
                    "connection": {"type": "string"},
                    "sql": {"type": "string"},
                    "reason": reason,
                }),
                &["connection", "sql"],
            ),
        ),
        Tool::new(
            "review_status",
            "The state of a review. With `wait_seconds`, waits (at most 50 s) for a pending \
             review's decision. For a call of yours that was held, an approved review's answer \
             carries the call's result once it has run.",
            schema(
                json!({
                    "review": {"type": "string", "description": "The review id (r-...)"},
                    "wait_seconds": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
                }),
                &["review"],
            ),
        ),
    ]
}

/// The opening of an MCP caller's session on `name`, with its approved access (`Err` when it
/// needs one it lacks).
async fn opening(
    gateway: &Gateway,
    identity: &Identity,
    peer: SocketAddr,
    name: &str,
    meta: Value,
    reason: Option<&str>,
) -> Result<session::Opening, String> {
    let mut opening = gateway.opening(name, identity.clone(), peer.to_string());
    opening.meta = meta;
    opening.access_until = gateway.access(identity, name, reason).await?;
    Ok(opening)
}

/// A string argument, or why it is missing.
fn text<'a>(args: &'a Value, name: &str) -> Result<&'a str, String> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing argument `{name}` (a string)"))
}

/// How a call's session ended.
type Outcome = Result<Value, String>;

impl Tools {
    fn list_connections(&self) -> CallToolResult {
        let roles = self.gateway.roles();
        let list: Vec<Value> = self
            .gateway
            .connections
            .all()
            .into_iter()
            .filter(|(name, _)| roles.has(&self.identity, Role::Connect, name))
            .map(|(name, connection)| {
                let (kind, tool) = match &connection {
                    Connection::Exec(_) => ("exec", Some("exec")),
                    Connection::Ssh(_) => ("ssh", Some("exec")),
                    Connection::Postgres(_) => ("postgres", Some("query")),
                    Connection::Tcp(_) => ("tcp", None),
                    Connection::Mcp(_) => ("mcp", None),
                };
                let access = self.gateway.reviews().needs_access(&name);
                let mut entry = json!({"name": name, "kind": kind, "tool": tool, "needs_approved_access": access});
                if kind == "mcp" {
                    // An MCP server of its own: the agent connects to it there.
                    entry["endpoint"] = json!(format!("/mcp/{name}"));
                }
                entry
            })
            .collect();
        CallToolResult::structured(json!({ "connections": list }))
    }

    /// A connection the caller may open now, with its session's opening.
    async fn open(
        &self,
        name: &str,
        args: &Value,
    ) -> Result<(Connection, session::Opening), String> {
        let connection = self
            .gateway
            .connectable(&self.identity, name)
            .await
            .map_err(|(_, why)| why)?;
        let reason = args.get("reason").and_then(Value::as_str);
        let meta = json!({"front": "mcp"});
        let opening = opening(&self.gateway, &self.identity, self.peer, name, meta, reason).await?;
        Ok((connection, opening))
    }

    async fn exec(&self, args: &Value) -> Result<CallToolResult, String> {
        let (name, script) = (text(args, "connection")?, text(args, "script")?);
        let (connection, opening) = self.open(name, args).await?;
        let target = match connection {
            Connection::Exec(exec) => Target::Program(exec),
            Connection::Ssh(ssh) => Target::Ssh(ssh),
            Connection::Postgres(_) => {
                return Err(format!("`{name}` is a PostgreSQL connection: use `query`"));
            }
            Connection::Tcp(_) => {
                return Err(format!("`{name}` forwards a port: no tool runs on it"));
            }
            Connection::Mcp(_) => {
                return Err(format!("`{name}` is an MCP server: connect to /mcp/{name}"));
            }
        };
        let session = opening.id.clone();
        let request = session::exec::Request {
            opening,
            connection: target,
            mode: Mode::Exec,
        };
        let ctx = self.gateway.session_ctx.clone();
        let script = script.as_bytes().to_vec();
        let ran = async move {
            let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
            tokio::spawn(session::run(ctx, request, theirs));
            run_script(&mut ours, &script).await
        };
        Ok(self.answer(session, ran).await)
    }

    async fn query(&self, args: &Value) -> Result<CallToolResult, String> {
        let (name, sql) = (text(args, "connection")?, text(args, "sql")?);
        let connection = self
            .gateway
            .connectable(&self.identity, name)
            .await
            .map_err(|(_, why)| why)?;
        let Connection::Postgres(_) = connection else {
            return Err(format!(
                "`{name}` is not a PostgreSQL connection: use `exec`"
            ));
        };
        let front = self
            .gateway
            .fronts
            .get(name)
            .ok_or_else(|| format!("`{name}`: its front door is not open"))?;
        // The door checks access and opens the session, under the id chosen here.
        let session = super::new_session_id();
        let (token, peer, sql) = (self.token.clone(), self.peer, sql.to_string());
        let reason = args.get("reason").and_then(Value::as_str).map(String::from);
        let id = session.clone();
        let ran = async move {
            let answer = crate::pg::query::run(front, &token, peer, reason, id, &sql).await?;
            Ok(json!(answer))
        };
        Ok(self.answer(session, ran).await)
    }

    /// Runs a call (`ran`, session `session`) and answers with its result, or, as soon as a
    /// gate holds it, with `pending` and the review: the call runs on, and its result is kept
    /// for `review_status`.
    async fn answer(
        &self,
        session: String,
        ran: impl Future<Output = Outcome> + Send + 'static,
    ) -> CallToolResult {
        let reviews = self.gateway.reviews().clone();
        // Subscribed before the session starts: no hold can come unseen.
        let mut changes = reviews.subscribe();
        let (tx, mut done) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(ran.await);
        });
        let held = async {
            loop {
                if let Some(review) = reviews.held_in(&session) {
                    return review;
                }
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = changes.recv().await
                {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            biased;
            outcome = &mut done => result(outcome.unwrap_or_else(|_| Err("the session ended".into()))),
            review = held => {
                let kept = self.gateway.mcp.clone();
                kept.expect(&review.id, &self.identity.subject, &session);
                let id = review.id.clone();
                tokio::spawn(async move {
                    let outcome = done.await.unwrap_or_else(|_| Err("the session ended".into()));
                    kept.fill(&id, outcome);
                });
                CallToolResult::structured(json!({
                    "status": "pending",
                    "review": review.id,
                    "held": review.text,
                    "reason": review.reason,
                    "expires_ms": review.expires_ms,
                    "next": format!(
                        "a person must approve review {}: call review_status with {{\"review\": \"{}\", \"wait_seconds\": {MAX_WAIT_SECONDS}}} to wait for the decision and collect the result",
                        review.id, review.id
                    ),
                }))
            }
        }
    }

    async fn review_status(&self, args: &Value) -> Result<CallToolResult, String> {
        let id = text(args, "review")?;
        let wait = args
            .get("wait_seconds")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(MAX_WAIT_SECONDS);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        let reviews = self.gateway.reviews().clone();
        let mut changes = reviews.subscribe();
        let mut filled = self.gateway.mcp.changed.subscribe();
        loop {
            let review = self.review(id).await?;
            let kept = self.gateway.mcp.get(id, &self.identity.subject);
            let settled = match (review.status, &kept) {
                (Status::Pending, _) => false,
                // Approved: the call runs; its result is on its way.
                (Status::Approved, Some(slot)) => slot.result.is_some(),
                _ => true,
            };
            if settled || tokio::time::Instant::now() >= deadline {
                return Ok(CallToolResult::structured(status(&review, kept, &reviews)));
            }
            tokio::select! {
                _ = changes.recv() => {}
                _ = filled.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Review `id`, if the caller may see it: they asked for it, or may review or audit it.
    async fn review(&self, id: &str) -> Result<Review, String> {
        let found = match self.gateway.reviews().get(id) {
            Some(review) => Some(review),
            None => self
                .gateway
                .reviews_elsewhere()
                .await?
                .into_iter()
                .find(|r| r.id == id),
        };
        found
            .filter(|r| self.gateway.reviews().may_see(&self.identity, r))
            .ok_or_else(|| format!("no review {id} that you may see"))
    }
}

/// A finished call as the tool's result.
fn result(outcome: Outcome) -> CallToolResult {
    match outcome {
        Ok(value) => CallToolResult::structured(value),
        Err(why) => CallToolResult::error(vec![ContentBlock::text(why)]),
    }
}

/// What `review_status` answers: the review's state, and a held call's result for its caller.
fn status(review: &Review, kept: Option<Slot>, reviews: &crate::review::Reviews) -> Value {
    let mut answer = json!({
        "review": review.id,
        "status": review.status.as_str(),
        "connection": review.connection,
        "held": review.text,
        "reason": review.reason,
        "approvals": review.approvals.iter().map(|v| &v.by).collect::<Vec<_>>(),
    });
    if !matches!(review.status, Status::Pending | Status::Approved) {
        answer["refusal"] = json!(review.refusal());
    }
    if let Some(slot) = kept {
        match slot.result {
            Some(Ok(value)) => answer["result"] = value,
            Some(Err(why)) => answer["error"] = json!(why),
            None if review.status == Status::Approved => {
                answer["running"] = json!(true);
                if let Some(again) = reviews.held_in(&slot.session) {
                    answer["held_again"] = json!(again.id);
                }
            }
            None => {}
        }
    }
    answer
}

/// Results of held calls, by review id, for their callers alone, until `KEEP_MS` after
/// they arrived.
#[derive(Default)]
pub(super) struct Kept {
    slots: Mutex<HashMap<String, Slot>>,
    /// Bumped at each result, for `review_status` waiting on one.
    changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Clone)]
struct Slot {
    owner: String,
    session: String,
    result: Option<Outcome>,
    until_ms: u64,
}

impl Kept {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A held call's result will come for review `id`, for `owner`.
    fn expect(&self, id: &str, owner: &str, session: &str) {
        let slot = Slot {
            owner: owner.to_string(),
            session: session.to_string(),
            result: None,
            until_ms: u64::MAX,
        };
        self.lock().insert(id.to_string(), slot);
    }

    fn fill(&self, id: &str, outcome: Outcome) {
        let now = sluice_core::now_ms();
        let mut slots = self.lock();
        slots.retain(|_, slot| slot.until_ms > now);
        if let Some(slot) = slots.get_mut(id) {
            slot.result = Some(outcome);
            slot.until_ms = now + KEEP_MS;
        }
        drop(slots);
        self.changed.send_modify(|n| *n += 1);
    }

    /// What is kept for review `id`, if `subject` made the call.
    fn get(&self, id: &str, subject: &str) -> Option<Slot> {
        let now = sluice_core::now_ms();
        self.lock()
            .get(id)
            .filter(|slot| slot.owner == subject && slot.until_ms > now)
            .cloned()
    }
}

/// Sends a one-shot script into a program session and reads it to its end: the output
/// (masked by the chain; at most `MAX_OUTPUT` bytes returned), notices and the exit status.
async fn run_script(session: &mut tokio::io::DuplexStream, script: &[u8]) -> Outcome {
    let broken = |e: wire::WireError| format!("the session ended: {e}");
    for chunk in script.chunks(wire::MAX_BODY) {
        wire::write(session, &Message::Input(chunk.to_vec()))
            .await
            .map_err(broken)?;
    }
    wire::write(session, &Message::InputEnd)
        .await
        .map_err(broken)?;
    let (mut output, mut left_out, mut notices) = (Vec::new(), 0usize, Vec::new());
    loop {
        match wire::read(session).await.map_err(broken)? {
            Message::Output(bytes) => {
                let room = MAX_OUTPUT.saturating_sub(output.len());
                output.extend_from_slice(&bytes[..bytes.len().min(room)]);
                left_out += bytes.len().saturating_sub(room);
            }
            Message::Notice(text) => notices.push(text),
            Message::Exit(code) => {
                let mut answer = json!({
                    "exit_status": code,
                    "output": String::from_utf8_lossy(&output),
                });
                if left_out > 0 {
                    answer["output_left_out_bytes"] = json!(left_out);
                }
                if !notices.is_empty() {
                    answer["notices"] = json!(notices);
                }
                return Ok(answer);
            }
            Message::Error(text) => return Err(text),
            _ => {}
        }
    }
}
