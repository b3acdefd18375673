//! The gateway's side of agents: who is enrolled (kept in `agents.json` in the data folder,
//! owner-only), who is connected, and opening a session's stream on a live one.
//!
//! *Invariants:* an enrollment token is stored as its SHA-256 only, works once and only
//! before it expires; a revoked agent is refused from then on and its live connection (with
//! every session on it) ends at once; every enrollment, connection, disconnection and
//! revocation is recorded in the hash chain before it takes effect where that is possible
//! (a disconnection is recorded when it is seen).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::tunnel::{self, Stream};
use sluice_core::frame::Identity;
use sluice_record::{NewEvent, Recorder};

/// Timers of the agents' connections (`[agents]` in the config).
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often each side pings the other; a ping unanswered for two of these ends the
    /// connection.
    pub keepalive: Duration,
    /// How long an enrollment token is good for.
    pub enroll_ttl: Duration,
}

/// One enrolled (or invited) agent, as kept on disk.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Entry {
    created_ms: u64,
    created_by: String,
    /// SHA-256 of the enrollment token (hex).
    token_sha256: String,
    token_expires_ms: u64,
    token_used_ms: Option<u64>,
    /// The agent's Ed25519 public key (hex), once it enrolled.
    public_key: Option<String>,
    version: Option<String>,
    revoked_ms: Option<u64>,
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
    file: PathBuf,
    settings: Settings,
    recorder: Recorder,
    enrolled: Mutex<BTreeMap<String, Entry>>,
    live: Mutex<HashMap<String, Live>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Agents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agents").field("file", &self.file).finish()
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
    /// The agents enrolled in `data_dir` (none on a first start).
    pub fn open(
        data_dir: &std::path::Path,
        settings: Settings,
        recorder: Recorder,
    ) -> anyhow::Result<Agents> {
        let file = data_dir.join("agents.json");
        let enrolled = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", file.display()),
        };
        Ok(Agents {
            file,
            settings,
            recorder,
            enrolled: Mutex::new(enrolled),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    fn save(&self, enrolled: &BTreeMap<String, Entry>) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(enrolled).map_err(|e| e.to_string())?;
        let temporary = self.file.with_extension("json.new");
        sluice_core::files::write_private(&temporary, &bytes).map_err(|e| e.to_string())?;
        std::fs::rename(&temporary, &self.file)
            .map_err(|e| format!("cannot write {}: {e}", self.file.display()))
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
        {
            let enrolled = self.lock_enrolled();
            if let Some(existing) = enrolled.get(name) {
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
        }
        self.record(
            "agent-add",
            json!({"agent": name, "by": by.subject, "token_expires_ms": expires}),
        )
        .await?;
        let mut enrolled = self.lock_enrolled();
        enrolled.insert(
            name.to_string(),
            Entry {
                created_ms: now,
                created_by: by.subject.clone(),
                token_sha256: sha256_hex(token.as_bytes()),
                token_expires_ms: expires,
                ..Entry::default()
            },
        );
        self.save(&enrolled)?;
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
        let name = {
            let enrolled = self.lock_enrolled();
            let (name, entry) = enrolled
                .iter()
                .find(|(_, e)| e.token_sha256 == digest)
                .ok_or("unknown enrollment token")?;
            if entry.revoked_ms.is_some() {
                return Err(format!("agent `{name}` is revoked"));
            }
            if entry.token_used_ms.is_some() {
                return Err("this enrollment token was used already: ask for a new one (`sluice agents add NAME`)".into());
            }
            if sluice_core::now_ms() > entry.token_expires_ms {
                return Err("this enrollment token has expired: ask for a new one (`sluice agents add NAME`)".into());
            }
            name.clone()
        };
        self.record(
            "agent-enroll",
            json!({"agent": name, "public_key": hex::encode(key.as_bytes()), "version": version, "address": address}),
        )
        .await?;
        let mut enrolled = self.lock_enrolled();
        let entry = enrolled
            .get_mut(&name)
            .filter(|e| e.token_used_ms.is_none() && e.revoked_ms.is_none())
            .ok_or("this enrollment token was used already")?;
        entry.token_used_ms = Some(sluice_core::now_ms());
        entry.public_key = Some(hex::encode(key.as_bytes()));
        entry.version = Some(version.to_string());
        self.save(&enrolled)?;
        Ok(name)
    }

    /// The key an agent connecting as `name` must sign with, or why it may not connect.
    pub fn key_of(&self, name: &str) -> Result<VerifyingKey, String> {
        let enrolled = self.lock_enrolled();
        let entry = enrolled
            .get(name)
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
        if !self.lock_enrolled().contains_key(name) {
            return Err(format!("unknown agent `{name}`"));
        }
        self.record("agent-revoke", json!({"agent": name, "by": by.subject}))
            .await?;
        {
            let mut enrolled = self.lock_enrolled();
            if let Some(entry) = enrolled.get_mut(name) {
                entry.revoked_ms.get_or_insert(sluice_core::now_ms());
            }
            self.save(&enrolled)?;
        }
        if let Some(live) = self.lock_live().remove(name) {
            let _ = live.end.send(Some(format!("agent `{name}` was revoked")));
        }
        Ok(())
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
    pub fn list(&self) -> Vec<serde_json::Value> {
        let enrolled = self.lock_enrolled().clone();
        let live = self.lock_live();
        enrolled
            .into_iter()
            .map(|(name, e)| {
                let state = if e.revoked_ms.is_some() {
                    "revoked"
                } else if e.public_key.is_none() {
                    "invited"
                } else if live.contains_key(&name) {
                    "connected"
                } else {
                    "disconnected"
                };
                let l = live.get(&name);
                json!({
                    "name": name,
                    "state": state,
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
            .collect()
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
        {
            let mut live = self.lock_live();
            if live.get(&name).is_some_and(|l| l.id == id) {
                live.remove(&name);
            }
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
        let (agent, mut open, sessions) = {
            let live = self.lock_live();
            let chosen = names
                .iter()
                .filter_map(|n| live.get(n).map(|l| (n, l)))
                .min_by_key(|(_, l)| l.sessions.load(Ordering::Relaxed));
            match chosen {
                Some((name, l)) => (name.clone(), l.open.clone(), l.sessions.clone()),
                None => {
                    return Err(format!(
                        "no agent of this connection is connected ({})",
                        self.describe(names, &live)
                    ));
                }
            }
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

    /// Each agent's state, for an error that names them.
    fn describe(&self, names: &[String], live: &HashMap<String, Live>) -> String {
        let enrolled = self.lock_enrolled();
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

    fn lock_enrolled(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.enrolled.lock().unwrap_or_else(|e| e.into_inner())
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
