//! A session on one node reaching an agent whose tunnel another node holds (several gateways
//! on one shared record). The session stays on its node (its chain, its record); the node
//! with the tunnel only carries bytes.
//!
//! The session's node dials the other node's gateway listener (TLS, pinned to the certificate
//! that node advertised in the shared record) and asks to upgrade `POST /api/nodes/relay` to
//! [`PROTOCOL`]. The request names the node asking, the time, the agent and the job (the
//! agent's request head), signed with the asking node's key; the other node checks the
//! signature against the key the shared record holds for a live node, opens the stream on
//! its own tunnel, and answers `101` with the agent's answer head, then carries bytes both
//! ways until either side ends. Any other status carries the reason in
//! [`super::tunnel::ERROR_HEADER`].
//!
//! *Invariants:* only a live node of the cluster, signing with its announced key, within
//! [`SKEW`] of the receiver's clock, is relayed for; a relayed stream is never relayed again.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use sluice_record::Membership;

use super::book::blocking;
use super::tunnel::{ERROR_HEADER, Stream};

pub const PROTOCOL: &str = "sluice-relay/1";
pub const PATH: &str = "/api/nodes/relay";
const FROM_HEADER: &str = "sluice-node";
const TIME_HEADER: &str = "sluice-time";
const AGENT_HEADER: &str = "sluice-relay-agent";
/// The job and the agent's answer head: JSON, header values in hex.
const JOB_HEADER: &str = "sluice-relay-job";
const HEAD_HEADER: &str = "sluice-relay-head";
const SIGNATURE_HEADER: &str = "sluice-signature";
/// How far the asking node's clock may be from the receiver's.
pub const SKEW: Duration = Duration::from_secs(30);
/// Dialing the other node and its answer.
const DIAL: Duration = Duration::from_secs(10);

/// A request head (path and headers), as it crosses between nodes.
#[derive(Serialize, Deserialize)]
struct Head {
    path: String,
    /// Names and values (hex: a value may hold any byte).
    headers: Vec<(String, String)>,
}

impl Head {
    fn of(path: &str, headers: &http::HeaderMap) -> String {
        let head = Head {
            path: path.to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), hex::encode(v.as_bytes())))
                .collect(),
        };
        serde_json::to_string(&head).unwrap_or_default()
    }

    fn parse(text: &str) -> Result<(String, http::HeaderMap), String> {
        let head: Head =
            serde_json::from_str(text).map_err(|e| format!("a malformed head: {e}"))?;
        let mut headers = http::HeaderMap::new();
        for (name, value) in head.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            let value = hex::decode(value)
                .ok()
                .and_then(|v| http::HeaderValue::from_bytes(&v).ok())
                .ok_or("a malformed header value")?;
            headers.append(name, value);
        }
        Ok((head.path, headers))
    }
}

/// What the asking node signs: who asks whom, when, for which agent and job.
fn signed(from: &str, to: &str, time_ms: u64, agent: &str, job: &str) -> Vec<u8> {
    format!("{PROTOCOL}\n{from}\n{to}\n{time_ms}\n{agent}\n{job}").into_bytes()
}

/// Opens `request` on agent `agent` through node `node`, which holds its tunnel.
pub async fn open(
    cluster: Arc<dyn Membership>,
    node: &str,
    agent: &str,
    request: http::Request<()>,
) -> Result<(Stream, http::HeaderMap), String> {
    let failed = |why: String| format!("agent `{agent}` (through node {node}): {why}");
    let peer = blocking(|| cluster.peer(node))
        .map_err(|e| failed(format!("the shared record: {e}")))?
        .ok_or_else(|| failed("that node is gone".into()))?;
    let job = Head::of(request.uri().path(), request.headers());
    let time = sluice_core::now_ms();
    let signature = cluster.sign(&signed(cluster.node(), node, time, agent, &job));

    let dial = async {
        let tcp = tokio::net::TcpStream::connect(&peer.address)
            .await
            .map_err(|e| format!("cannot reach it at {}: {e}", peer.address))?;
        let tls =
            crate::tls::pinned_client_config(peer.certificate_sha256).map_err(|e| e.to_string())?;
        // The certificate is pinned: the name only has to be well formed.
        let name =
            rustls_pki_types::ServerName::try_from("sluice-node").map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", peer.address))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection.with_upgrades());
        let relay = hyper::Request::post(PATH)
            .header(hyper::header::HOST, &peer.address)
            .header(hyper::header::UPGRADE, PROTOCOL)
            .header(hyper::header::CONNECTION, "upgrade")
            .header(FROM_HEADER, cluster.node())
            .header(TIME_HEADER, time.to_string())
            .header(AGENT_HEADER, agent)
            .header(JOB_HEADER, &job)
            .header(SIGNATURE_HEADER, hex::encode(signature))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.send_request(relay).await.map_err(|e| e.to_string())
    };
    let response = tokio::time::timeout(DIAL, dial)
        .await
        .map_err(|_| failed("no answer in time".into()))?
        .map_err(failed)?;
    if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let why = response
            .headers()
            .get(ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map_or_else(
                || format!("refused ({})", response.status()),
                str::to_string,
            );
        // The other node's reason names the agent already.
        return Err(format!("through node {node}: {why}"));
    }
    let head = response
        .headers()
        .get(HEAD_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| failed("no answer head".into()))
        .and_then(|text| Head::parse(text).map_err(&failed))?
        .1;
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok((
        Stream::relayed(Box::new(TokioIo::new(upgraded)), agent.into()),
        head,
    ))
}

/// A relay request another node sent, checked: the agent and the job to open on it.
pub fn check(
    cluster: &dyn Membership,
    headers: &http::HeaderMap,
) -> Result<(String, http::Request<()>), String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("missing {name}"))
    };
    let (from, agent, job) = (
        header(FROM_HEADER)?,
        header(AGENT_HEADER)?,
        header(JOB_HEADER)?,
    );
    let time: u64 = header(TIME_HEADER)?
        .parse()
        .map_err(|_| "a malformed time".to_string())?;
    if sluice_core::now_ms().abs_diff(time) > SKEW.as_millis() as u64 {
        return Err(format!(
            "node {from}'s request is stale (or its clock is off by more than {} s)",
            SKEW.as_secs()
        ));
    }
    let signature: [u8; 64] = hex::decode(header(SIGNATURE_HEADER)?)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or("a malformed signature")?;
    let peer = blocking(|| cluster.peer(from))
        .map_err(|e| format!("the shared record: {e}"))?
        .ok_or_else(|| format!("`{from}` is not a live node of this cluster"))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&peer.public_key)
        .map_err(|_| format!("node {from}'s key is malformed"))?;
    key.verify_strict(
        &signed(from, cluster.node(), time, agent, job),
        &ed25519_dalek::Signature::from_bytes(&signature),
    )
    .map_err(|_| format!("the signature is not node {from}'s"))?;
    let (path, job_headers) = Head::parse(job)?;
    let mut request = http::Request::post(path)
        .body(())
        .map_err(|e| e.to_string())?;
    *request.headers_mut() = job_headers;
    Ok((agent.to_string(), request))
}

/// The `101` head's header carrying the agent's answer head.
pub fn answer_head(headers: &http::HeaderMap) -> (&'static str, String) {
    (HEAD_HEADER, Head::of("", headers))
}
