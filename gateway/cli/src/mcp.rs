//! `sluice mcp NAME`: an MCP client that launches a command (most do) speaks MCP over the
//! command's stdin and stdout; this bridge carries each message to the `mcp` connection's
//! endpoint (`/mcp/NAME`, Streamable HTTP) with the person's or the machine's saved token,
//! and each answer back. The gateway does the rest (docs/ai-agents.md).
//!
//! Messages are one JSON object per line both ways (MCP's stdio transport). Each is posted on
//! its own, so a call a reviewer holds does not hold up the others (a ping, a cancellation).

use std::sync::{Arc, Mutex};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::client::Client;

/// What later requests of the MCP session carry, learned from the answer to `initialize`.
#[derive(Default)]
struct Session {
    id: Option<String>,
    version: Option<String>,
}

pub async fn bridge(client: Client, connection: &str) -> anyhow::Result<()> {
    let client = Arc::new(client);
    let path = Arc::new(format!("/mcp/{connection}"));
    let session = Arc::new(Mutex::new(Session::default()));
    let (out, mut lines_out) = tokio::sync::mpsc::unbounded_channel::<String>();
    // One writer: answers to messages posted at once never interleave.
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines_out.recv().await {
            stdout.write_all(line.as_bytes()).await?;
            stdout.write_all(b"\n").await?;
            stdout.flush().await?;
        }
        anyhow::Ok(())
    });
    let mut stdin = tokio::io::BufReader::new(crate::stdin::open()).lines();
    let mut posted = Vec::new();
    while let Some(line) = stdin.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(e) => {
                let _ = out.send(error_line(
                    &Value::Null,
                    -32700,
                    &format!("parse error: {e}"),
                ));
                continue;
            }
        };
        let is_initialize = message["method"] == "initialize";
        let post = post(
            client.clone(),
            path.clone(),
            session.clone(),
            message,
            out.clone(),
        );
        if is_initialize {
            // Later messages need the session it makes.
            post.await;
        } else {
            posted.push(tokio::spawn(post));
        }
    }
    for post in posted {
        let _ = post.await;
    }
    // The client closed its side: end the MCP session (its server stops).
    let id = session.lock().unwrap_or_else(|e| e.into_inner()).id.clone();
    if let Some(id) = id {
        let _ = send(&client, &path, "DELETE", Some(&id), None, Bytes::new()).await;
    }
    drop(out);
    writer.await??;
    Ok(())
}

/// Posts one message; its answers (none for a notification) go to `out`, and a failure
/// becomes a JSON-RPC error for the request, so the client is told why.
async fn post(
    client: Arc<Client>,
    path: Arc<String>,
    session: Arc<Mutex<Session>>,
    message: Value,
    out: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let (id, version) = {
        let s = session.lock().unwrap_or_else(|e| e.into_inner());
        (s.id.clone(), s.version.clone())
    };
    let body = Bytes::from(message.to_string());
    let answer = send(
        &client,
        &path,
        "POST",
        id.as_deref(),
        version.as_deref(),
        body,
    )
    .await;
    let request_id = message.get("id").cloned();
    let (headers, status, body) = match answer {
        Ok(answer) => answer,
        Err(e) => {
            if let Some(request_id) = &request_id {
                let _ = out.send(error_line(request_id, -32603, &format!("sluice: {e:#}")));
            }
            return;
        }
    };
    if let Some(new) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) {
        session.lock().unwrap_or_else(|e| e.into_inner()).id = Some(new.to_string());
    }
    let event_stream = headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let text = String::from_utf8_lossy(&body);
    let answers: Vec<String> = if event_stream {
        // Server-sent events: each event's `data:` lines are one message.
        text.split("\n\n")
            .map(|event| {
                event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .filter(|data| !data.trim().is_empty())
            .collect()
    } else if !text.trim().is_empty() {
        vec![text.trim().to_string()]
    } else {
        vec![]
    };
    if !status.is_success() && answers.iter().all(|a| !a.contains("\"jsonrpc\"")) {
        if let Some(request_id) = &request_id {
            let why = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or_else(|| text.trim().to_string());
            let _ = out.send(error_line(
                request_id,
                -32603,
                &format!("sluice: the gateway answered {status}: {why}"),
            ));
        }
        return;
    }
    for answer in answers {
        if let Ok(parsed) = serde_json::from_str::<Value>(&answer)
            && let Some(version) = parsed["result"]["protocolVersion"].as_str()
        {
            session.lock().unwrap_or_else(|e| e.into_inner()).version = Some(version.to_string());
        }
        let _ = out.send(answer);
    }
}

type Answer = (hyper::HeaderMap, hyper::StatusCode, Bytes);

async fn send(
    client: &Client,
    path: &str,
    method: &str,
    session: Option<&str>,
    version: Option<&str>,
    body: Bytes,
) -> anyhow::Result<Answer> {
    let io = TokioIo::new(client.tls_stream().await?);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await?;
    tokio::spawn(conn);
    let mut request = client
        .request(method, path)?
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json, text/event-stream");
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    if let Some(version) = version {
        request = request.header("mcp-protocol-version", version);
    }
    let response = sender
        .send_request(request.body(Full::new(body))?)
        .await
        .context("the gateway did not answer")?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.headers, parts.status, body))
}

fn error_line(id: &Value, code: i64, message: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()
}
