//! The agents' routes: enrollment and the agent's connection (signed in by their own means,
//! not a bearer token), and the admin's `sluice agents` commands.
//!
//! - `POST /api/agents/enroll` (body `{"token", "public_key", "version"}`): registers an
//!   agent's key with its one-time token; answers `{"name"}`.
//! - `GET /api/agents/connect` with `Upgrade: sluice-agent/1` and `Sluice-Agent: NAME`: the
//!   agent's connection (`agent/tunnel.rs` says what follows).
//! - `GET /api/agents`, `POST /api/agents?name=NAME` (a token), `POST
//!   /api/agents/NAME/revoke` (admin).

use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;

use super::Gateway;
use super::routes::{Reply, error, reply};
use crate::agent::{relay, tunnel};
use crate::roles::Role;
use sluice_core::frame::Identity;

/// An enrollment request is a token, a key and a version: well under this.
const MAX_ENROLL_BODY: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Enrollment {
    token: String,
    public_key: String,
    #[serde(default)]
    version: String,
}

impl Gateway {
    /// The routes an agent calls before it has a bearer token (it never gets one).
    pub(super) async fn agent_route(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        match (req.method(), req.uri().path()) {
            (&Method::POST, tunnel::ENROLL_PATH) => self.enroll_agent(req, peer).await,
            (&Method::GET, tunnel::CONNECT_PATH) => self.connect_agent(req, peer),
            (&Method::POST, relay::PATH) => self.relay_for_node(req, peer).await,
            (method, path) => error(StatusCode::NOT_FOUND, &format!("no route {method} {path}")),
        }
    }

    async fn enroll_agent(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        let body = match http_body_util::Limited::new(req.into_body(), MAX_ENROLL_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the enrollment: {e}"),
                );
            }
        };
        let enrollment: Enrollment = match serde_json::from_slice(&body) {
            Ok(e) => e,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("an enrollment is {{\"token\", \"public_key\", \"version\"}}: {e}"),
                );
            }
        };
        let agents = &self.session_ctx.agents;
        match agents
            .enroll(
                &enrollment.token,
                &enrollment.public_key,
                &enrollment.version,
                &peer.to_string(),
            )
            .await
        {
            Ok(name) => {
                tracing::info!(agent = %name, %peer, "agent enrolled");
                reply(StatusCode::OK, json!({ "name": name }).to_string())
            }
            Err(why) => {
                tracing::warn!(%peer, %why, "agent enrollment refused");
                error(StatusCode::FORBIDDEN, &why)
            }
        }
    }

    /// Another node of the cluster asks for a stream on an agent whose tunnel this node
    /// holds: checked (a live node's signature), opened here, and carried both ways.
    async fn relay_for_node(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        let agents = self.session_ctx.agents.clone();
        let Some(cluster) = agents.cluster() else {
            return error(
                StatusCode::NOT_FOUND,
                "this gateway is not part of a cluster",
            );
        };
        if req
            .headers()
            .get(hyper::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            != Some(relay::PROTOCOL)
        {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("relays upgrade to `{}`", relay::PROTOCOL),
            );
        }
        let (agent, job) = match relay::check(cluster.as_ref(), req.headers()) {
            Ok(checked) => checked,
            Err(why) => {
                tracing::warn!(%peer, %why, "relay refused");
                return refused(StatusCode::FORBIDDEN, &why);
            }
        };
        let (stream, head) = match agents.open_here(std::slice::from_ref(&agent), job).await {
            Ok(opened) => opened,
            Err(why) => return refused(StatusCode::BAD_GATEWAY, &why),
        };
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let (mut node, mut stream) = (TokioIo::new(upgraded), stream);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut node, &mut stream).await {
                        tracing::debug!(%agent, error = %e, "relayed stream ended");
                    }
                }
                Err(e) => tracing::info!(%peer, error = %e, "relay upgrade failed"),
            }
        });
        let mut response = switching_to(relay::PROTOCOL);
        let headers = response.headers_mut();
        let (name, value) = relay::answer_head(&head);
        if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
        response
    }

    /// An agent's connection: refused here with the reason, or switched to the tunnel
    /// protocol with a fresh challenge (the signature is checked on the upgraded stream).
    fn connect_agent(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if header(hyper::header::UPGRADE.as_str()).as_deref() != Some(tunnel::PROTOCOL) {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("agents connect with `Upgrade: {}`", tunnel::PROTOCOL),
            );
        }
        let Some(name) = header(tunnel::AGENT_HEADER) else {
            return error(
                StatusCode::BAD_REQUEST,
                "which agent? (`Sluice-Agent: NAME`)",
            );
        };
        let agents = self.session_ctx.agents.clone();
        if let Err(why) = agents.key_of(&name) {
            tracing::warn!(agent = %name, %peer, %why, "agent refused");
            return error(StatusCode::FORBIDDEN, &why);
        }
        let version = header(tunnel::VERSION_HEADER).unwrap_or_default();
        let mut challenge = [0u8; 32];
        if getrandom::fill(&mut challenge).is_err() {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no randomness for a challenge",
            );
        }
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    agents
                        .serve(
                            TokioIo::new(upgraded),
                            name,
                            version,
                            peer.to_string(),
                            challenge,
                        )
                        .await
                }
                Err(e) => tracing::info!(%peer, error = %e, "agent upgrade failed"),
            }
        });
        let mut response = switching_to(tunnel::PROTOCOL);
        let headers = response.headers_mut();
        if let Ok(value) = hyper::header::HeaderValue::from_str(&hex::encode(challenge)) {
            headers.insert(tunnel::CHALLENGE_HEADER, value);
        }
        response
    }

    /// `sluice agents ...` (admin anywhere).
    pub(super) async fn manage_agents(
        &self,
        method: &Method,
        segments: &[&str],
        query: &std::collections::BTreeMap<String, String>,
        identity: &Identity,
    ) -> Reply {
        let action = match (method, segments) {
            (&Method::GET, _) => "list the agents",
            (&Method::POST, [_, _, _, "revoke"]) => "revoke an agent",
            _ => "add an agent",
        };
        if let Err(why) = self
            .roles()
            .require_anywhere(identity, Role::Admin, action)
            .await
        {
            return error(StatusCode::FORBIDDEN, &why);
        }
        let agents = &self.session_ctx.agents;
        match (method, segments) {
            (&Method::GET, ["api", "agents"]) => match agents.list() {
                Ok(listed) => reply(StatusCode::OK, json!(listed).to_string()),
                Err(why) => error(StatusCode::SERVICE_UNAVAILABLE, &why),
            },
            (&Method::POST, ["api", "agents"]) => {
                let Some(name) = query.get("name") else {
                    return error(StatusCode::BAD_REQUEST, "missing ?name=NAME");
                };
                match agents.add(name, identity).await {
                    Ok((token, expires_ms)) => {
                        tracing::info!(agent = %name, by = %identity.subject, "agent added");
                        reply(
                            StatusCode::OK,
                            json!({"name": name, "token": token, "expires_ms": expires_ms})
                                .to_string(),
                        )
                    }
                    Err(why) => error(StatusCode::BAD_REQUEST, &why),
                }
            }
            (&Method::POST, ["api", "agents", name, "revoke"]) => {
                match agents.revoke(name, identity).await {
                    Ok(()) => {
                        tracing::info!(agent = %name, by = %identity.subject, "agent revoked");
                        reply(StatusCode::OK, json!({"revoked": name}).to_string())
                    }
                    Err(why) => error(StatusCode::NOT_FOUND, &why),
                }
            }
            _ => error(StatusCode::NOT_FOUND, "no such agents route"),
        }
    }
}

/// A refusal another node reads: the reason in the error header too.
fn refused(status: StatusCode, why: &str) -> Reply {
    let mut response = error(status, why);
    if let Ok(value) = hyper::header::HeaderValue::from_str(why) {
        response.headers_mut().insert(tunnel::ERROR_HEADER, value);
    }
    response
}

/// The `101` that switches the connection to `protocol`.
fn switching_to(protocol: &'static str) -> Reply {
    let mut response = reply(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static(protocol),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    response
}
