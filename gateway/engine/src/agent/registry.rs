//! The gateway's side of agents: who is enrolled (`book.rs`: `agents.json` in the data
//! folder, owner-only, or the shared record), who is connected, and opening a session's
//! stream on a live one (here, or through the node that holds its tunnel: `relay.rs`).
//!
//! *Invariants:* an enrollment token is stored as its SHA-256 only, works once and only
//! before it expires; a revoked agent is refused from then on and its live connection (with
//! every session on it) ends at once; every enrollment, connection, disconnection and
//! revocation is recorded in the hash chain before it takes effect where that is possible
//! (a disconnection is recorded when it is seen).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::book::{Book, Entry, blocking};
use super::tunnel::{self, Stream};
use sluice_core::frame::Identity;
use sluice_record::{Membership, NewEvent, Recorder};

/// Timers of the agents' connections (`[agents]` in the config).
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often each side pings the other; a ping unanswered for two of these ends the
    /// connection.
    pub keepalive: Duration,
    /// How long an enrollment token is good for.
    pub enroll_ttl: Duration,
}

/// A connected agent.
struct Live {
    /// Tells this connection apart from an earlier or later one of the same agent.
    id: u64,
    since_ms: u64,
    address: String,
    version: String,
    open: h2::client::SendRequest<Bytes>,
    sessions: Arc<AtomicUsize>,
    last_seen_ms: Arc<AtomicU64>,
    /// Dropped (or sent) to end the connection.
    end: tokio::sync::watch::Sender<Option<String>>,
}

pub struct Agents {
    book: Book,
    settings: Settings,
    recorder: Recorder,
    live: Mutex<HashMap<String, Live>>,
    next_id: AtomicU64,
    /// On a shared record: the other nodes, which may hold an agent's tunnel.
    cluster: Option<Arc<dyn Membership>>,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents")
            .field("shared", &self.cluster.is_some())
            .finish()
    }
}

/// A name an agent can have: what connections, logs and file names can carry unquoted.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Agents {
    /// The agents enrolled in `data_dir` (none on a first start), or in the shared record
    /// when `cluster` is given.
    pub fn open(
        data_dir: &std::path::Path,
        settings: Settings,
        recorder: Recorder,
        cluster: Option<Arc<dyn Membership>>,
    ) -> anyhow::Result<Agents> {
        let book = match &cluster {
            Some(membership) => Book::Shared(membership.clone()),
            None => Book::file(data_dir)?,
        };
        Ok(Agents {
            book,
            settings,
            recorder,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            cluster,
        })
    }

    async fn record(&self, kind: &str, meta: serde_json::Value) -> Result<(), String> {
        let event = NewEvent::gateway(kind, &meta);
        self.recorder
            .append(event)
            .await
            .map(drop)
            .map_err(|e| format!("not recorded: {e}"))
    }

    /// `sluice agents add NAME`: a one-time enrollment token for a new agent (or a fresh one
    /// for an agent that has not enrolled yet), and when it expires.
    pub async fn add(&self, name: &str, by: &Identity) -> Result<(String, u64), String> {
        if !valid_name(name) {
            return Err(format!(
                "`{name}` is not a valid agent name (letters, digits, `-`, `_` and `.`, at most 64)"
            ));
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
        let token = format!("sluice-enroll-{}", hex::encode(secret));
        let now = sluice_core::now_ms();
        let expires = now + self.settings.enroll_ttl.as_millis() as u64;
        let existing = self.book.get(name)?;
        if let Some(existing) = &existing {
            if existing.revoked_ms.is_some() {
                return Err(format!(
                    "agent `{name}` was revoked; a revoked name is never used again: add the agent under a new name"
                ));
            }
            if existing.public_key.is_some() {
                return Err(format!(
                    "agent `{name}` is enrolled already; revoke it first to replace it"
                ));
            }
        }
        self.record(
            "agent-add",
            json!({"agent": name, "by": by.subject, "token_expires_ms": expires}),
        )
        .await?;
        let entry = Entry {
            created_ms: now,
            created_by: by.subject.clone(),
            token_sha256: sha256_hex(token.as_bytes()),
            token_expires_ms: expires,
            ..Entry::default()
        };
        if !self.book.put(name, &entry, existing.as_ref())? {
            return Err(format!(
                "agent `{name}` changed meanwhile (through another request): try again"
            ));
        }
        Ok((token, expires))
    }

    /// An agent registers its public key with its enrollment token; the agent's name.
    pub async fn enroll(
        &self,
        token: &str,
        public_key: &str,
        version: &str,
        address: &str,
    ) -> Result<String, String> {
        let key = parse_key(public_key)?;
        let digest = sha256_hex(token.trim().as_bytes());
        let (name, entry) = self
            .book
            .all()?
            .into_iter()
            .find(|(_, e)| e.token_sha256 == digest)
            .ok_or("unknown enrollment token")?;
        if entry.revoked_ms.is_some() {
            return Err(format!("agent `{name}` is revoked"));
        }
        if entry.token_used_ms.is_some() {
            return Err("this enrollment token was used already: ask for a new one (`sluice agents add NAME`)".into());
        }
        if sluice_core::now_ms() > entry.token_expires_ms {
            return Err(
                "this enrollment token has expired: ask for a new one (`sluice agents add NAME`)"
                    .into(),
            );
        }
        self.record(
            "agent-enroll",
            json!({"agent": name, "public_key": hex::encode(key.as_bytes()), "version": version, "address": address}),
        )
        .await?;
        let enrolled = Entry {
            token_used_ms: Some(sluice_core::now_ms()),
            public_key: Some(hex::encode(key.as_bytes())),
            version: Some(version.to_string()),
            ..entry.clone()
        };
        // Written only if nobody used the token meanwhile, here or on another node.
        if !self.book.put(&name, &enrolled, Some(&entry))? {
            return Err("this enrollment token was used already".into());
        }
        Ok(name)
    }

    /// The key an agent connecting as `name` must sign with, or why it may not connect.
    pub fn key_of(&self, name: &str) -> Result<VerifyingKey, String> {
        let entry = self
            .book
            .get(name)?
            .ok_or_else(|| format!("unknown agent `{name}`"))?;
        if entry.revoked_ms.is_some() {
            return Err(format!("agent `{name}` is revoked"));
        }
        parse_key(
            entry
                .public_key
                .as_deref()
                .ok_or_else(|| format!("agent `{name}` has not enrolled"))?,
        )
    }

    /// Revokes `name`: refused from now on, its connection and sessions ended at once.
    pub async fn revoke(&self, name: &str, by: &Identity) -> Result<(), String> {
        if self.book.get(name)?.is_none() {
            return Err(format!("unknown agent `{name}`"));
        }
        self.record("agent-revoke", json!({"agent": name, "by": by.subject}))
            .await?;
        // Another change to the entry (a token used meanwhile) only means reading it again.
        loop {
            let Some(entry) = self.book.get(name)? else {
                return Err(format!("unknown agent `{name}`"));
            };
            let revoked = Entry {
                revoked_ms: entry.revoked_ms.or(Some(sluice_core::now_ms())),
                ..entry.clone()
            };
            if self.book.put(name, &revoked, Some(&entry))? {
                break;
            }
        }
        self.revoked(name);
        if let Some(cluster) = &self.cluster {
            // The node that holds its tunnel ends it too.
            let message = json!({"agent_revoked": name});
            if let Err(e) = blocking(|| cluster.tell("*", &message)) {
                tracing::warn!(agent = %name, error = %e, "cannot tell the other nodes of a revocation; a tunnel they hold ends when it reconnects");
            }
        }
        Ok(())
    }

    /// Ends revoked agent `name`'s connection here, if it has one.
    pub fn revoked(&self, name: &str) {
        if let Some(live) = self.lock_live().remove(name) {
            let _ = live.end.send(Some(format!("agent `{name}` was revoked")));
        }
    }

    /// Ends `name`'s live connection (every session on it) for breaking the protocol; the
    /// disconnection is recorded with `why`. It may connect again.
    pub fn cut(&self, name: &str, why: &str) {
        tracing::warn!(agent = %name, %why, "agent connection cut");
        if let Some(live) = self.lock_live().get(name) {
            let _ = live.end.send(Some(why.to_string()));
        }
    }

    /// Every agent, as `sluice agents` lists them.
    pub fn list(&self) -> Result<Vec<serde_json::Value>, String> {
        let enrolled = self.book.all()?;
        let elsewhere = self.tunnels_elsewhere()?;
        let this_node = self.cluster.as_ref().map(|c| c.node().to_string());
        let live = self.lock_live();
        Ok(enrolled
            .into_iter()
            .map(|(name, e)| {
                let node = if live.contains_key(&name) {
                    this_node.clone()
                } else {
                    elsewhere.get(&name).cloned()
                };
                let state = if e.revoked_ms.is_some() {
                    "revoked"
                } else if e.public_key.is_none() {
                    "invited"
                } else if live.contains_key(&name) || node.is_some() {
                    "connected"
                } else {
                    "disconnected"
                };
                let l = live.get(&name);
                json!({
                    "name": name,
                    "state": state,
                    // The node that holds its tunnel, on a shared record.
                    "node": node,
                    "created_by": e.created_by,
                    "connected_since_ms": l.map(|l| l.since_ms),
                    "address": l.map(|l| l.address.clone()),
                    "version": l.map(|l| l.version.clone()).or(e.version),
                    "sessions": l.map_or(0, |l| l.sessions.load(Ordering::Relaxed)),
                    "last_seen_ms": l.map(|l| l.last_seen_ms.load(Ordering::Relaxed)),
                    "revoked_ms": e.revoked_ms,
                    // Until when an invited agent's token works.
                    "token_expires_ms": (state == "invited").then_some(e.token_expires_ms),
                })
            })
            .collect())
    }

    /// Which other node holds each agent's tunnel (none on a gateway of its own).
    fn tunnels_elsewhere(&self) -> Result<HashMap<String, String>, String> {
        let Some(cluster) = &self.cluster else {
            return Ok(HashMap::new());
        };
        let tunnels =
            blocking(|| cluster.tunnels()).map_err(|e| format!("the shared record: {e}"))?;
        Ok(tunnels
            .into_iter()
            .filter(|(_, node)| node != cluster.node())
            .collect())
    }

    /// Carries an agent's authenticated connection until it ends: checks its signature of
    /// `challenge`, then runs HTTP/2 over it (the gateway as the client) and keeps it live.
    pub async fn serve<S>(
        self: Arc<Self>,
        mut io: S,
        name: String,
        version: String,
        address: String,
        challenge: [u8; 32],
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut signature = [0u8; 64];
        let answered =
            tokio::time::timeout(self.settings.keepalive * 2, io.read_exact(&mut signature)).await;
        let verified = match answered {
            Ok(Ok(_)) => self.key_of(&name).and_then(|key| {
                key.verify(
                    &tunnel::signed(&name, &challenge),
                    &Signature::from_bytes(&signature),
                )
                .map_err(|_| {
                    "the challenge's signature does not verify with the enrolled key".into()
                })
            }),
            Ok(Err(e)) => Err(format!("no answer to the challenge: {e}")),
            Err(_) => Err("no answer to the challenge in time".into()),
        };
        if let Err(why) = verified {
            tracing::warn!(agent = %name, %address, %why, "agent refused");
            let _ = self
                .record(
                    "agent-refused",
                    json!({"agent": name, "address": address, "reason": why}),
                )
                .await;
            let mut refusal = vec![tunnel::REFUSED];
            refusal.extend_from_slice(&(why.len() as u16).to_be_bytes());
            refusal.extend_from_slice(why.as_bytes());
            let _ = io.write_all(&refusal).await;
            return;
        }
        if io.write_all(&[tunnel::ACCEPTED]).await.is_err() {
            return;
        }
        let handshake = h2::client::Builder::new()
            .initial_window_size(tunnel::WINDOW)
            .initial_connection_window_size(tunnel::WINDOW * 8)
            .max_frame_size(tunnel::MAX_FRAME)
            .max_header_list_size(tunnel::MAX_HEADERS)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await;
        let (open, mut connection) = match handshake {
            Ok(pair) => pair,
            Err(e) => {
                tracing::info!(agent = %name, error = %e, "agent connection failed at its start");
                return;
            }
        };
        let pings = connection.ping_pong();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = sluice_core::now_ms();
        let last_seen_ms = Arc::new(AtomicU64::new(now));
        let (end, mut ended) = tokio::sync::watch::channel(None);
        if let Err(why) = self
            .record(
                "agent-connect",
                json!({"agent": name, "address": address, "version": version}),
            )
            .await
        {
            tracing::warn!(agent = %name, %why, "agent connection not recorded: refused");
            return;
        }
        let replaced = self.lock_live().insert(
            name.clone(),
            Live {
                id,
                since_ms: now,
                address: address.clone(),
                version: version.clone(),
                open,
                sessions: Arc::default(),
                last_seen_ms: last_seen_ms.clone(),
                end,
            },
        );
        if let Some(old) = replaced {
            let _ = old.end.send(Some("the agent connected again".into()));
        }
        self.hold_tunnel(&name, true);
        tracing::info!(agent = %name, %address, %version, "agent connected");
        let keepalive = self.settings.keepalive;
        let reason = tokio::select! {
            result = &mut connection => match result {
                Ok(()) => "the agent closed the connection".to_string(),
                Err(e) => format!("the connection failed: {e}"),
            },
            why = tunnel::keep_alive(pings, keepalive, last_seen_ms) => why,
            why = async {
                match ended.wait_for(Option::is_some).await {
                    Ok(why) => why.clone().unwrap_or_default(),
                    Err(_) => "the gateway let go of it".to_string(),
                }
            } => why,
        };
        let was_current = {
            let mut live = self.lock_live();
            let current = live.get(&name).is_some_and(|l| l.id == id);
            if current {
                live.remove(&name);
            }
            current
        };
        if was_current {
            self.hold_tunnel(&name, false);
        }
        tracing::info!(agent = %name, %reason, "agent disconnected");
        let _ = self
            .record("agent-disconnect", json!({"agent": name, "reason": reason}))
            .await;
    }

    /// Opens a stream for one session on a live agent among `names` (the one carrying the
    /// fewest sessions), for the job `request` describes.
    pub async fn open_stream(
        &self,
        names: &[String],
        request: http::Request<()>,
    ) -> Result<Stream, String> {
        self.open_stream_with_head(names, request)
            .await
            .map(|(stream, _)| stream)
    }

    /// Like [`Agents::open_stream`], with the head of the agent's answer.
    pub async fn open_stream_with_head(
        &self,
        names: &[String],
        request: http::Request<()>,
    ) -> Result<(Stream, http::HeaderMap), String> {
        self.open_on(names, request, true).await
    }

    /// A stream on an agent among `names` whose tunnel this node holds, for another node
    /// that relays it (never relayed on again).
    pub async fn open_here(
        &self,
        names: &[String],
        request: http::Request<()>,
    ) -> Result<(Stream, http::HeaderMap), String> {
        self.open_on(names, request, false).await
    }

    async fn open_on(
        &self,
        names: &[String],
        request: http::Request<()>,
        relay: bool,
    ) -> Result<(Stream, http::HeaderMap), String> {
        let chosen = {
            let live = self.lock_live();
            names
                .iter()
                .filter_map(|n| live.get(n).map(|l| (n, l)))
                .min_by_key(|(_, l)| l.sessions.load(Ordering::Relaxed))
                .map(|(name, l)| (name.clone(), l.open.clone(), l.sessions.clone()))
        };
        let Some((agent, mut open, sessions)) = chosen else {
            return match self.cluster.is_some() && relay {
                true => self.open_elsewhere(names, request).await,
                false => Err(format!(
                    "no agent of this connection is connected ({})",
                    self.describe(names)
                )),
            };
        };
        let agent: Arc<str> = agent.into();
        let lost = |e: h2::Error| format!("agent `{agent}`: {e}");
        open = open.ready().await.map_err(lost)?;
        let (response, send) = open.send_request(request, false).map_err(lost)?;
        let response = response.await.map_err(lost)?;
        if response.status() != http::StatusCode::OK {
            let why = response
                .headers()
                .get(tunnel::ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("refused")
                .to_string();
            return Err(format!("agent `{agent}`: {why}"));
        }
        let (head, recv) = response.into_parts();
        sessions.fetch_add(1, Ordering::Relaxed);
        Ok((
            Stream::new(send, recv, agent).counted(sessions),
            head.headers,
        ))
    }

    /// A stream on an agent among `names` whose tunnel another node holds, relayed by that
    /// node; or why there is none.
    async fn open_elsewhere(
        &self,
        names: &[String],
        request: http::Request<()>,
    ) -> Result<(Stream, http::HeaderMap), String> {
        let elsewhere = self.tunnels_elsewhere()?;
        let held = names
            .iter()
            .find_map(|n| elsewhere.get(n).map(|node| (n.clone(), node.clone())));
        match (held, &self.cluster) {
            (Some((agent, node)), Some(cluster)) => {
                super::relay::open(cluster.clone(), &node, &agent, request).await
            }
            _ => Err(format!(
                "no agent of this connection is connected ({})",
                self.describe(names)
            )),
        }
    }

    /// The cluster this node is part of (on a shared record).
    pub fn cluster(&self) -> Option<&Arc<dyn Membership>> {
        self.cluster.as_ref()
    }

    /// Records in the shared record that this node holds (or let go of) `name`'s tunnel.
    fn hold_tunnel(&self, name: &str, held: bool) {
        if let Some(cluster) = &self.cluster
            && let Err(e) = blocking(|| cluster.hold_tunnel(name, held))
        {
            tracing::warn!(agent = %name, error = %e, "cannot note in the shared record which node holds the agent's tunnel");
        }
    }

    /// Each agent's state, for an error that names them.
    fn describe(&self, names: &[String]) -> String {
        let enrolled = match self.book.all() {
            Ok(enrolled) => enrolled,
            Err(why) => return why,
        };
        let live = self.lock_live();
        let states: Vec<String> = names
            .iter()
            .map(|n| match (enrolled.get(n), live.contains_key(n)) {
                (None, _) => format!("`{n}`: unknown"),
                (Some(e), _) if e.revoked_ms.is_some() => format!("`{n}`: revoked"),
                (Some(e), _) if e.public_key.is_none() => format!("`{n}`: not enrolled"),
                (Some(_), true) => format!("`{n}`: connected"),
                (Some(_), false) => format!("`{n}`: not connected"),
            })
            .collect();
        states.join(", ")
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn parse_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("a public key is 32 bytes in hex")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not an Ed25519 public key".to_string())
}
