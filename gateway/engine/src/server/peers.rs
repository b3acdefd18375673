//! The other gateways sharing the record: what this node asks of them, and what it does when
//! they ask. Messages travel through the record's notifications (`Membership::tell`, its
//! inbox); a question carries a ticket, and its answer comes back to the asker's inbox.
//!
//! Three requests cross nodes: ending a session another node holds, deciding a review whose
//! held frame waits on another node, and applying a reload (the policy, runtime connections)
//! made on one node. A review is decided where its frame waits, under that node's
//! one-decision-at-a-time lock, so two reviewers on two nodes cannot both win.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::review::Reviews;
use crate::session;
use sluice_core::frame::Identity;
use sluice_record::Membership;

/// How long a question to another node waits for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

pub struct Peers {
    membership: Arc<dyn Membership>,
    /// Questions asked and not yet answered, by ticket.
    waiting: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    /// The gateway, for reloads other nodes ask for (set once it exists).
    gateway: OnceLock<Weak<super::Gateway>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    /// Starts answering what other nodes ask of this one.
    pub fn start(
        membership: Arc<dyn Membership>,
        sessions: Arc<session::Context>,
        reviews: Arc<Reviews>,
    ) -> Arc<Peers> {
        let peers = Arc::new(Peers {
            membership,
            waiting: Mutex::new(HashMap::new()),
            gateway: OnceLock::new(),
        });
        let inbox = peers.membership.inbox();
        let (announcing, mut changes, made) = (peers.clone(), reviews.subscribe(), reviews.clone());
        let (answering, runtime) = (peers.clone(), tokio::runtime::Handle::current());
        let spawned = std::thread::Builder::new()
            .name("sluice-peers".into())
            .spawn(move || {
                for message in inbox {
                    answering.receive(message, &sessions, &reviews, &runtime);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start answering other nodes");
        }
        // Each change to a review made here is announced, so the other nodes' live streams
        // (`sluice reviews --watch`, the console) show it as it happens.
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(review) if made.made_here(&review) => {
                        if let Err(e) = announcing.tell("*", json!({"review": review.id})).await {
                            tracing::warn!(error = %e, review = %review.id, "cannot announce a review change to the other nodes");
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        peers
    }

    pub fn node(&self) -> &str {
        self.membership.node()
    }

    /// Reloads other nodes ask for apply to `gateway`.
    pub(super) fn reload_with(&self, gateway: Weak<super::Gateway>) {
        let _ = self.gateway.set(gateway);
    }

    fn receive(
        self: &Arc<Self>,
        message: Value,
        sessions: &session::Context,
        reviews: &Arc<Reviews>,
        runtime: &tokio::runtime::Handle,
    ) {
        if let Some(ticket) = message["answer"].as_str() {
            let waiter = self
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(ticket);
            if let Some(waiter) = waiter {
                let _ = waiter.send(message);
            }
            return;
        }
        if let (Some(id), Some(reason)) = (message["kill"].as_str(), message["reason"].as_str()) {
            if !sessions.kill(id, reason.to_string()) {
                tracing::warn!(
                    session = id,
                    "asked to end a session this node does not hold"
                );
            }
            return;
        }
        if let Some(by) = message["reload"].as_str() {
            let (peers, by) = (self.clone(), by.to_string());
            let gateway = self.gateway.get().and_then(Weak::upgrade);
            runtime.spawn(async move {
                let answer = match gateway {
                    Some(gateway) => match gateway.reload_as_asked(&by).await {
                        Ok(applied) => json!({"status": 200, "applied": applied}),
                        Err(why) => json!({"status": 422, "error": why}),
                    },
                    None => json!({"status": 503, "error": "the node is stopping"}),
                };
                peers.answer(&message, answer);
            });
            return;
        }
        if let Some(agent) = message["agent_revoked"].as_str() {
            // Revoked through another node: its tunnel here ends now.
            sessions.agents.revoked(agent);
            return;
        }
        if let Some(id) = message["review"].as_str() {
            // Another node changed a review: show it here as the record has it (chain-checked),
            // not as the message says.
            let (reviews, id) = (reviews.clone(), id.to_string());
            runtime.spawn(async move {
                let reading = reviews.clone();
                let others = tokio::task::spawn_blocking(move || reading.held_elsewhere()).await;
                let review = match others {
                    Ok(Ok(others)) => others.into_iter().find(|r| r.id == id).or_else(|| reviews.get(&id)),
                    Ok(Err(e)) => return tracing::warn!(error = %e, review = %id, "cannot read a review another node changed"),
                    Err(_) => return,
                };
                if let Some(review) = review {
                    reviews.publish(review);
                }
            });
            return;
        }
        if let Some(id) = message["decide"].as_str() {
            let (peers, reviews, id) = (self.clone(), reviews.clone(), id.to_string());
            runtime.spawn(async move {
                let identity = Identity {
                    subject: message["by"]["subject"].as_str().unwrap_or_default().into(),
                    name: message["by"]["name"].as_str().map(String::from),
                    groups: serde_json::from_value(message["by"]["groups"].clone())
                        .unwrap_or_default(),
                };
                let reason = message["reason"].as_str().map(String::from);
                let approve = message["approve"].as_bool().unwrap_or(false);
                let answer = match reviews.decide(&id, &identity, approve, reason).await {
                    Ok(review) => json!({"status": 200, "review": review}),
                    Err(refused) => json!({"status": refused.status, "error": refused.message}),
                };
                peers.answer(&message, answer);
            });
        }
    }

    /// Sends `answer` back to whoever asked `question`.
    fn answer(&self, question: &Value, mut answer: Value) {
        let (Some(from), Some(ticket)) = (question["from"].as_str(), question["ticket"].as_str())
        else {
            return;
        };
        answer["answer"] = json!(ticket);
        let membership = self.membership.clone();
        let from = from.to_string();
        std::thread::spawn(move || {
            if let Err(e) = membership.tell(&from, &answer) {
                tracing::warn!(error = %e, node = %from, "cannot answer another node");
            }
        });
    }

    /// Tells node `node` to end session `id`.
    pub async fn kill(&self, node: &str, id: &str, reason: String) -> Result<(), String> {
        self.tell(node, json!({"kill": id, "reason": reason})).await
    }

    /// Asks node `node` to decide review `id` as `identity`; its answer (`status`, and
    /// `review` or `error`).
    pub async fn decide(
        &self,
        node: &str,
        id: &str,
        identity: &Identity,
        approve: bool,
        reason: Option<String>,
    ) -> Result<Value, String> {
        let question = json!({
            "decide": id,
            "approve": approve,
            "reason": reason,
            "by": {"subject": identity.subject, "name": identity.name, "groups": identity.groups},
        });
        self.ask(node, question).await
    }

    /// Asks every other node to apply the reload `by` made here (each reads its own policy
    /// files and the shared record's runtime connections); what each said, by node:
    /// `"applied"` or why not.
    pub async fn reload_others(self: &Arc<Self>, by: &str) -> BTreeMap<String, String> {
        let nodes = match self.other_nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                return BTreeMap::from([(
                    "*".into(),
                    format!("the other nodes cannot be listed: {e}"),
                )]);
            }
        };
        let mut asked = tokio::task::JoinSet::new();
        for node in nodes {
            let (peers, question) = (self.clone(), json!({"reload": by}));
            asked.spawn(async move {
                let said = match peers.ask(&node, question).await {
                    Ok(answer) if answer["status"] == 200 => "applied".to_string(),
                    Ok(answer) => answer["error"].as_str().unwrap_or("refused").to_string(),
                    Err(why) => why,
                };
                (node, said)
            });
        }
        asked.join_all().await.into_iter().collect()
    }

    async fn ask(&self, node: &str, mut question: Value) -> Result<Value, String> {
        let mut ticket = [0u8; 8];
        getrandom::fill(&mut ticket).map_err(|e| e.to_string())?;
        let ticket = hex::encode(ticket);
        question["ticket"] = json!(ticket);
        question["from"] = json!(self.node());
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ticket.clone(), tx);
        let sent = self.tell(node, question).await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(ANSWER_WITHIN, rx).await,
            Err(why) => {
                self.forget(&ticket);
                return Err(why);
            }
        };
        self.forget(&ticket);
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            _ => Err(format!(
                "node {node} did not answer within {} s",
                ANSWER_WITHIN.as_secs()
            )),
        }
    }

    fn forget(&self, ticket: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ticket);
    }

    async fn tell(&self, node: &str, message: Value) -> Result<(), String> {
        let (membership, node) = (self.membership.clone(), node.to_string());
        tokio::task::spawn_blocking(move || membership.tell(&node, &message))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// The other nodes not declared gone.
    pub async fn other_nodes(&self) -> Result<Vec<String>, String> {
        let membership = self.membership.clone();
        tokio::task::spawn_blocking(move || membership.other_nodes())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Sessions the other live nodes hold, with the node of each.
    pub async fn live_elsewhere(
        &self,
    ) -> Result<Vec<(String, sluice_record::SessionSummary)>, String> {
        let membership = self.membership.clone();
        tokio::task::spawn_blocking(move || membership.live_elsewhere())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}
