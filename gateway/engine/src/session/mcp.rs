//! An MCP server as a connection (`kind = "mcp"`): the gateway is an MCP server to the client
//! (`/mcp/NAME`, `server/mcp.rs`) and an MCP client to the upstream server: a program it
//! starts per session, here or on an agent, and speaks to over stdio, or an HTTP endpoint
//! (Streamable HTTP). Between the two, every call is a frame:
//!
//! ```text
//! client --tools/call--> [budget, allow/deny, pin] --tool-call frame--> chain --> record --> server
//! client <--result------ record <-- chain <--tool-result frame---------------------------- server
//! ```
//!
//! `tools/list` shows only tools the connection allows whose definition (name, description,
//! input schema) has the fingerprint pinned when it was first seen; a changed definition (a
//! "rug pull") is hidden, its calls refused, and the change recorded. The server's requests
//! that act through the client (sampling, elicitation) are refused and recorded, unless the
//! connection relays them: then each crosses the chain as a `tool-call` frame toward the
//! client, and its answer as a `tool-result` frame back.
//!
//! *Invariants:* a call reaches the server only after its frame crossed the chain (a held one
//! after its review) and is durable in the record; a result reaches the client only as the
//! chain passed it, after it is durable; a tool not shown is never called.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http::{HeaderName, HeaderValue};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock, ElicitRequestParams, ElicitResult, Tool,
};
use rmcp::service::Peer;
use rmcp::service::{ClientInitializeError, RequestContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransportConfig, StreamableHttpError,
};
use rmcp::{ClientHandler, ErrorData, RoleClient, RoleServer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_core::frame::{Content, Direction, ToolCall, ToolResult};

use super::{Core, Opening, Outcome};
use crate::chain::Decision;
use crate::config::{McpConnection, ToolChange};
use crate::exec::Process;

/// What rmcp's HTTP client transport fails with.
type HttpError = StreamableHttpError<reqwest::Error>;

/// Pinned tool fingerprints per connection, kept in the data folder.
pub struct Pins {
    path: PathBuf,
    pins: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
}

/// What the pin says of a tool's definition now.
#[derive(Debug, PartialEq, Eq)]
pub enum Pin {
    /// First seen: pinned now.
    New,
    Same,
    /// Differs from the pinned fingerprint.
    Changed {
        pinned: String,
    },
}

impl Pins {
    pub fn open(data_dir: &std::path::Path) -> anyhow::Result<Pins> {
        let path = data_dir.join("mcp-pins.json");
        let pins = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => anyhow::bail!("{}: {e}", path.display()),
        };
        Ok(Pins {
            path,
            pins: Mutex::new(pins),
        })
    }

    /// Checks `fingerprint` for `tool` of `connection`, pinning it when first seen.
    pub fn check(&self, connection: &str, tool: &str, fingerprint: &str) -> Result<Pin, String> {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        let of = pins.entry(connection.to_string()).or_default();
        match of.get(tool) {
            Some(pinned) if pinned == fingerprint => Ok(Pin::Same),
            Some(pinned) => Ok(Pin::Changed {
                pinned: pinned.clone(),
            }),
            None => {
                of.insert(tool.to_string(), fingerprint.to_string());
                self.save(&pins)?;
                Ok(Pin::New)
            }
        }
    }

    /// Pins `fingerprint` for `tool` in place of what was pinned (a reviewer approved it).
    pub fn replace(&self, connection: &str, tool: &str, fingerprint: &str) -> Result<(), String> {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        pins.entry(connection.to_string())
            .or_default()
            .insert(tool.to_string(), fingerprint.to_string());
        self.save(&pins)
    }

    fn save(&self, pins: &BTreeMap<String, BTreeMap<String, String>>) -> Result<(), String> {
        let text = serde_json::to_string_pretty(pins).map_err(|e| e.to_string())?;
        sluice_core::files::write_private(&self.path, text.as_bytes())
            .map_err(|e| format!("cannot save the tool pins: {e}"))
    }
}

/// A tool definition's fingerprint: SHA-256 of its name, description and input schema as
/// canonical JSON (keys sorted).
pub fn fingerprint(tool: &Tool) -> String {
    hex::encode(Sha256::digest(canonical(&definition(tool)).as_bytes()))
}

/// What a tool's pin covers, and what a reviewer of a changed one reads.
fn definition(tool: &Tool) -> Value {
    json!({
        "name": tool.name,
        "description": tool.description,
        "input_schema": Value::Object((*tool.input_schema).clone()),
    })
}

fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, String> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            let fields: Vec<String> = sorted
                .into_iter()
                .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// The upstream side's handler: what the server asks of the client. Requests that would act
/// through the client, sampling (asking the client's model) and elicitation (asking the
/// person), are refused and recorded unless the connection allows them; allowed, each is a
/// `tool-call` frame from the server through the chain (masked, gated, recorded) before the
/// client sees it, and the client's answer a `tool-result` frame back.
#[derive(Clone)]
pub struct Upstream {
    core: Arc<tokio::sync::Mutex<Core>>,
    connection: String,
    /// The client's side of the session, for the requests the connection lets through.
    client: Option<Peer<RoleServer>>,
    allow_sampling: bool,
    allow_elicitation: bool,
}

impl Upstream {
    /// Records a server request the gateway refuses, and the error the server gets.
    async fn refuse(&self, what: &str, why: &str) -> ErrorData {
        let refused = Content::Bytes(what.as_bytes().to_vec());
        if let Err(e) = cross(&self.core, Direction::TargetToClient, refused, Some(why)).await {
            tracing::error!(error = %e.message, "cannot record a refused server request");
        }
        ErrorData::invalid_request(format!("refused by the gateway: {why}"), None)
    }

    /// The server's request `method` with `params`, refused (`why`) unless `allowed`, else
    /// through the chain to the client (`ask`), and its answer through the chain back.
    async fn relay<P, R, F>(
        &self,
        method: &str,
        (allowed, why): (bool, &str),
        id: &rmcp::model::RequestId,
        params: P,
        ask: impl FnOnce(Peer<RoleServer>, P) -> F,
    ) -> Result<R, ErrorData>
    where
        P: serde::Serialize + serde::de::DeserializeOwned,
        R: serde::Serialize + serde::de::DeserializeOwned,
        F: std::future::Future<Output = Result<R, rmcp::ServiceError>>,
    {
        let Some(client) = self.client.clone().filter(|_| allowed) else {
            return Err(self.refuse(method, why).await);
        };
        let id = serde_json::to_string(id).map_err(internal)?;
        let request = Content::ToolCall(ToolCall {
            server: self.connection.clone(),
            tool: method.to_string(),
            id: id.clone(),
            arguments: serde_json::to_string(&params).map_err(internal)?,
        });
        let decision = cross(&self.core, Direction::TargetToClient, request, None).await?;
        let params: P = match (&decision.outcome, &decision.forward) {
            (Outcome::Pass, Content::ToolCall(passed)) => {
                serde_json::from_str(&passed.arguments).map_err(internal)?
            }
            (Outcome::Deny { plugin, reason }, _) => {
                return Err(ErrorData::invalid_request(
                    format!("refused by {plugin}: {reason}"),
                    None,
                ));
            }
            _ => return Err(internal("the chain changed the request's kind")),
        };
        let answer = ask(client, params)
            .await
            .map_err(|e| ErrorData::internal_error(format!("the client: {e}"), None))?;
        let answer = Content::ToolResult(ToolResult {
            server: self.connection.clone(),
            tool: method.to_string(),
            id,
            output: serde_json::to_string(&answer).map_err(internal)?,
            is_error: false,
        });
        let decision = cross(&self.core, Direction::ClientToTarget, answer, None).await?;
        match (&decision.outcome, &decision.forward) {
            (Outcome::Pass, Content::ToolResult(passed)) => {
                serde_json::from_str(&passed.output).map_err(internal)
            }
            (Outcome::Deny { plugin, reason }, _) => Err(ErrorData::invalid_request(
                format!("the answer was withheld by {plugin}: {reason}"),
                None,
            )),
            _ => Err(internal("the chain changed the answer's kind")),
        }
    }
}

impl ClientHandler for Upstream {
    /// What the gateway declares to the server: of the client's own capabilities, sampling
    /// and elicitation only when the connection relays them.
    fn get_info(&self) -> rmcp::model::ClientConfig {
        let mut info = rmcp::model::ClientConfig::default();
        if let Some(client) = self.client.as_ref().and_then(|c| c.peer_info()) {
            if self.allow_sampling {
                info.capabilities.sampling = client.capabilities.sampling.clone();
            }
            if self.allow_elicitation {
                info.capabilities.elicitation = client.capabilities.elicitation.clone();
            }
        }
        info
    }

    // Sampling is deprecated by the MCP specification (SEP-2577); still relayed when allowed.
    #[allow(deprecated)]
    async fn create_message(
        &self,
        params: rmcp::model::CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, ErrorData> {
        let refusal = (
            self.allow_sampling,
            "the server may not ask the client's model (sampling; `allow_sampling` lets it)",
        );
        self.relay(
            "sampling/createMessage",
            refusal,
            &context.id,
            params,
            |client, params| async move { client.create_message(params).await },
        )
        .await
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let refusal = (
            self.allow_elicitation,
            "the server may not ask the person (elicitation; `allow_elicitation` lets it)",
        );
        self.relay(
            "elicitation/create",
            refusal,
            &context.id,
            params,
            |client, params| async move { client.create_elicitation(params).await },
        )
        .await
    }
}

/// `frame` through the chain (or refused with `refusal`, the chain not asked) and into the
/// record, under one lock; a held frame waits for its review with the lock let go.
async fn cross(
    core: &tokio::sync::Mutex<Core>,
    direction: Direction,
    frame: Content,
    refusal: Option<&str>,
) -> Result<Decision, ErrorData> {
    let mut locked = core.lock().await;
    let mut decision = match refusal {
        Some(why) => locked.refuse(direction, frame, why),
        None => locked.filter(direction, frame),
    };
    if let Outcome::Hold { reasons } = &decision.outcome {
        let reasons = reasons.join("; ");
        let mut pending = (locked.request_review(&decision, &reasons).await).map_err(internal)?;
        drop(locked);
        let review = pending.decided().await;
        locked = core.lock().await;
        decision = locked.reviewed(decision, &review);
    }
    (locked.record_frame(direction, &decision).await).map_err(internal)?;
    Ok(decision)
}

/// Starts the server (a `command`, here or on an agent) or reaches it (a `url`), and speaks
/// MCP to it as a client with `handler` answering its requests.
async fn connect(
    agents: &Arc<crate::agent::Agents>,
    connection: &McpConnection,
    handler: Upstream,
) -> Result<(RunningService<RoleClient, Upstream>, Option<Process>), String> {
    if let Some(url) = &connection.url {
        let server = rmcp::serve_client(handler, http_transport(url, connection)?)
            .await
            .map_err(|e| {
                // rmcp's message names its generic types, and the reason (a refused
                // certificate, say) is in the transport error's sources.
                let why = match &e {
                    ClientInitializeError::TransportError { error, .. } => {
                        match error.error.downcast_ref::<HttpError>() {
                            Some(StreamableHttpError::Client(e)) => causes(e),
                            _ => causes(&*error.error),
                        }
                    }
                    other => other.to_string(),
                };
                format!("the MCP server at {url} did not answer: {why}")
            })?;
        return Ok((server, None));
    }
    let mut process = match &connection.agent {
        Some(pool) => {
            let job = crate::agent::tunnel::ExecJob {
                argv: connection.command.clone(),
                env: crate::agent::agent_env(&connection.env),
                cwd: connection.cwd.clone(),
                terminal: None,
                stdio: true,
            };
            crate::agent::run(agents, pool, &job).await?
        }
        None => Process::stdio(&connection.program())
            .map_err(|e| format!("cannot start the MCP server: {e}"))?,
    };
    let (input, output) = process.take_io();
    // Spawned so the boxed streams' types stay out of the caller's future (rustc cannot
    // prove that future `Send` through rmcp's generic transport otherwise).
    let server = tokio::spawn(rmcp::serve_client(handler, (output, input)))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the MCP server did not start: {e}"))?;
    Ok((server, Some(process)))
}

/// `error` and what went wrong underneath it.
fn causes(error: &dyn std::error::Error) -> String {
    let mut why = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        why.push(e.to_string());
        source = e.source();
    }
    why.join(": ")
}

/// The client transport to an HTTP server: its headers (the gateway's credentials for it)
/// on every request, its certificate checked against `upstream_ca` or the system's roots.
fn http_transport(
    url: &str,
    connection: &McpConnection,
) -> Result<StreamableHttpClientTransport<reqwest::Client>, String> {
    let mut client = reqwest::Client::builder();
    if let Some(ca) = &connection.upstream_ca {
        let pem = std::fs::read_to_string(ca)
            .map_err(|e| format!("cannot read upstream_ca {}: {e}", ca.display()))?;
        let tls = crate::tls::client_config(&pem).map_err(|e| e.to_string())?;
        client = client.tls_backend_preconfigured((*tls).clone());
    }
    let client = client
        .build()
        .map_err(|e| format!("the HTTP client: {e}"))?;
    let headers = (connection.headers.iter())
        .map(|(name, value)| {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(&crate::config::resolve(value))
                .map_err(|e| format!("header {name}: {e}"))?;
            Ok((name, value))
        })
        .collect::<Result<_, String>>()?;
    let config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(headers);
    Ok(StreamableHttpClientTransport::with_client(client, config))
}

/// One client session: the open session's core, the server, and what the client was shown.
pub struct Relay {
    pub name: String,
    pub connection: McpConnection,
    pub core: Arc<tokio::sync::Mutex<Core>>,
    pub server: RunningService<RoleClient, Upstream>,
    /// A stdio server's process, here or on an agent: it ends with the session. (In a
    /// mutex only so the relay is `Sync`; it is never locked.)
    _process: Mutex<Option<Process>>,
    pins: Arc<Pins>,
    /// Tools shown (allowed, pin unchanged), by name.
    shown: Mutex<Option<BTreeSet<String>>>,
    /// Changed definitions waiting for a reviewer in this session (`on_tool_change = "hold"`).
    asked: Mutex<BTreeSet<String>>,
    calls: Mutex<u32>,
    /// Why the session ended before the client ended it (`kill`, its time limit).
    ended: Arc<Mutex<Option<String>>>,
}

impl Relay {
    /// Opens the session (`Core::open`) and starts the server.
    pub async fn open(
        ctx: Arc<super::Context>,
        opening: Opening,
        connection: McpConnection,
        pins: Arc<Pins>,
        client: Option<Peer<RoleServer>>,
    ) -> Result<Relay, String> {
        let name = opening.connection_name.clone();
        let ctx_agents = ctx.agents.clone();
        let (core, killed) = Core::open(ctx, opening).await?;
        let core = Arc::new(tokio::sync::Mutex::new(core));
        let upstream = Upstream {
            core: core.clone(),
            connection: name.clone(),
            client,
            allow_sampling: connection.allow_sampling,
            allow_elicitation: connection.allow_elicitation,
        };
        let (server, process) = connect(&ctx_agents, &connection, upstream).await?;
        // `sluice kill` or the time limit ends the session at once: the server stops, the
        // record closes, and later calls are refused with the reason.
        let ended = Arc::new(Mutex::new(None));
        let limit = connection
            .max_session_seconds
            .map(std::time::Duration::from_secs);
        let (stop, core_at_end, ended_at_end) =
            (server.cancellation_token(), core.clone(), ended.clone());
        tokio::spawn(async move {
            let why = tokio::select! {
                Ok(reason) = killed => reason,
                () = async {
                    match limit {
                        Some(limit) => tokio::time::sleep(limit).await,
                        None => std::future::pending().await,
                    }
                } => "the session reached its time limit (max_session_seconds)".to_string(),
            };
            *ended_at_end.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
            stop.cancel();
            if let Err(e) = core_at_end.lock().await.close(json!({"reason": why})).await {
                tracing::error!(error = %e, "cannot record the end of an MCP session");
            }
        });
        Ok(Relay {
            name,
            connection,
            core,
            server,
            _process: Mutex::new(process),
            pins,
            shown: Mutex::new(None),
            asked: Mutex::new(BTreeSet::new()),
            calls: Mutex::new(0),
            ended,
        })
    }

    /// `Err` when the session was ended (`kill`, its time limit).
    fn live(&self) -> Result<(), ErrorData> {
        match &*self.ended.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(ErrorData::invalid_request(
                format!("sluice: the session was ended: {why}"),
                None,
            )),
            None => Ok(()),
        }
    }

    fn allowed(&self, tool: &str) -> bool {
        let c = &self.connection;
        (c.allow_tools.is_empty() || c.allow_tools.iter().any(|t| t == tool))
            && !c.deny_tools.iter().any(|t| t == tool)
    }

    /// The server's tools the client may see: allowed, and as pinned.
    pub async fn tools(&self) -> Result<Vec<Tool>, ErrorData> {
        self.live()?;
        let all = self
            .server
            .peer()
            .list_all_tools()
            .await
            .map_err(|e| ErrorData::internal_error(format!("the MCP server: {e}"), None))?;
        let mut shown = Vec::new();
        for tool in all {
            if !self.allowed(&tool.name) {
                continue;
            }
            let print = fingerprint(&tool);
            match self.pins.check(&self.name, &tool.name, &print) {
                Ok(Pin::Same) => shown.push(tool),
                Ok(Pin::New) => {
                    self.event(json!({"tool": tool.name, "pinned": print}))
                        .await;
                    shown.push(tool);
                }
                Ok(Pin::Changed { pinned }) => {
                    let hold = self.connection.on_tool_change == ToolChange::Hold;
                    self.event(json!({"tool": tool.name, "changed": print, "pinned": pinned, "held": hold}))
                        .await;
                    if hold {
                        self.ask(&tool, print).await?;
                    }
                }
                Err(why) => return Err(ErrorData::internal_error(why, None)),
            }
        }
        *self.shown.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(shown.iter().map(|t| t.name.to_string()).collect());
        Ok(shown)
    }

    /// Asks a reviewer about `tool`'s changed definition (once per session); approved, the
    /// new fingerprint is pinned and the tool shown from the next listing on.
    async fn ask(&self, tool: &Tool, print: String) -> Result<(), ErrorData> {
        if !self
            .asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tool.name.to_string())
        {
            return Ok(());
        }
        let definition = definition(tool);
        let mut pending = self
            .core
            .lock()
            .await
            .request_review_of(
                format!("MCP tool definition: {definition}"),
                &format!(
                    "the definition of `{}` changed since it was pinned",
                    tool.name
                ),
            )
            .await
            .map_err(internal)?;
        let (pins, name, tool, core) = (
            self.pins.clone(),
            self.name.clone(),
            tool.name.to_string(),
            self.core.clone(),
        );
        tokio::spawn(async move {
            let review = pending.decided().await;
            if review.status != crate::review::Status::Approved {
                return;
            }
            if let Err(e) = pins.replace(&name, &tool, &print) {
                tracing::error!(error = %e, "cannot pin an approved tool definition");
                return;
            }
            let mut core = core.lock().await;
            let seq = core.seq(Direction::TargetToClient);
            let meta = json!({"tool": tool, "pinned": print, "review": review.id});
            if let Err(e) = core
                .record_event(sluice_record::kinds::MCP_TOOL, seq, meta, Vec::new())
                .await
            {
                tracing::error!(error = %e, "cannot record a tool's pin");
            }
        });
        Ok(())
    }

    async fn event(&self, meta: Value) {
        let mut core = self.core.lock().await;
        let seq = core.seq(Direction::TargetToClient);
        if let Err(e) = core
            .record_event(sluice_record::kinds::MCP_TOOL, seq, meta, Vec::new())
            .await
        {
            tracing::error!(error = %e, "cannot record a tool's pin");
        }
    }

    /// One `tools/call`, through the chain both ways.
    pub async fn call(
        &self,
        params: CallToolRequestParams,
        id: String,
    ) -> Result<CallToolResult, ErrorData> {
        self.live()?;
        let tool = params.name.to_string();
        let arguments = Value::Object(params.arguments.clone().unwrap_or_default()).to_string();
        let frame = Content::ToolCall(ToolCall {
            server: self.name.clone(),
            tool: tool.clone(),
            id: id.clone(),
            arguments,
        });
        if self
            .shown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            self.tools().await?;
        }
        let refusal = {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            *calls += 1;
            let shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
            match self.connection.max_calls {
                Some(max) if *calls > max => {
                    Some(format!("this session's budget of {max} calls is spent"))
                }
                _ if !shown.as_ref().is_some_and(|s| s.contains(&tool)) => Some(format!(
                    "`{tool}` is not a tool of `{}` you may call (not allowed, or its definition changed since it was pinned)",
                    self.name
                )),
                _ => None,
            }
        };
        let decision = cross(
            &self.core,
            Direction::ClientToTarget,
            frame,
            refusal.as_deref(),
        )
        .await?;
        if let Outcome::Deny { plugin, reason } = &decision.outcome {
            return Ok(refused(&format!("refused by {plugin}: {reason}")));
        }
        let Content::ToolCall(forward) = &decision.forward else {
            return Err(internal("the chain changed the call's kind"));
        };
        let mut params = params;
        params.arguments = serde_json::from_str::<Value>(&forward.arguments)
            .ok()
            .and_then(|v| v.as_object().cloned());
        let result = match self.server.peer().call_tool(params).await {
            Ok(result) => result,
            Err(e) => {
                CallToolResult::error(vec![ContentBlock::text(format!("the MCP server: {e}"))])
            }
        };
        let output = serde_json::to_string(&result).map_err(internal)?;
        let frame = Content::ToolResult(ToolResult {
            server: self.name.clone(),
            tool,
            id,
            output,
            is_error: result.is_error == Some(true),
        });
        let decision = cross(&self.core, Direction::TargetToClient, frame, None).await?;
        match (&decision.outcome, &decision.forward) {
            (Outcome::Pass, Content::ToolResult(masked)) => {
                serde_json::from_str(&masked.output).map_err(internal)
            }
            (Outcome::Deny { plugin, reason }, _) => Ok(refused(&format!(
                "the result was withheld by {plugin}: {reason}"
            ))),
            _ => Err(internal("the chain changed the result's kind")),
        }
    }

    /// Ends the session: the server stops, the record closes.
    pub async fn close(self, why: &str) {
        let was_ended = self.live().is_err();
        let _ = self.server.cancel().await;
        if was_ended {
            return; // closed when it was ended
        }
        let calls = *self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let mut core = self.core.lock().await;
        if let Err(e) = core.close(json!({"reason": why, "calls": calls})).await {
            tracing::error!(error = %e, "cannot record the end of an MCP session");
        }
    }
}

fn refused(why: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!("sluice: {why}"))])
}

fn internal(e: impl std::fmt::Display) -> ErrorData {
    ErrorData::internal_error(e.to_string(), None)
}
