//! The review queue: frames a gate plugin held, and requests for access to connections that
//! need approval before a session opens. Reviews are kept in the record's store (they outlive
//! restarts) and every change is an event in the hash chain (`kind = "review"`), so who asked,
//! who decided and why is as tamper-evident as the sessions themselves.
//!
//! ```text
//! session --hold--> request() --> [store + chain] --> reviewers: CLI, /api/reviews, SSE
//!    ^                                                        |
//!    +------------- Pending::decided() <-- decide() <---------+
//! ```
//!
//! Who may decide: members of the connection's reviewer groups (policy `[reviews.NAME]`),
//! never the requester; `approvals` distinct reviewers are needed. A pending review expires
//! at its deadline. A held frame whose session is gone (ended, or the gateway restarted) is
//! marked `session-ended` and can no longer be approved.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{broadcast, watch};

use crate::policy::ReviewRules;
use crate::roles::{Role, Roles};
use sluice_core::frame::Identity;
use sluice_core::now_ms;
use sluice_record::{NewEvent, Record, RecordFailed, Recorder};

mod decision;

use decision::refused;
pub use decision::{Kind, Refused, Review, Status, Vote};

pub struct Reviews {
    store: Arc<dyn Record>,
    recorder: Recorder,
    /// Replaced whole by `sluice reload`.
    rules: std::sync::RwLock<BTreeMap<String, ReviewRules>>,
    roles: Arc<Roles>,
    /// How long a held frame waits, unless its connection's rules say otherwise.
    hold_timeout: Duration,
    state: Mutex<State>,
    /// Every change, for the live stream (`/api/reviews/events`).
    changes: broadcast::Sender<Review>,
    /// One change at a time, from the check through the durable write to what waiters see:
    /// two reviewers cannot both win, and nothing is published before it is recorded.
    deciding: tokio::sync::Mutex<()>,
    /// This node's name on a shared record; `None` on a gateway of its own.
    node: Option<String>,
}

/// A gateway's place on a shared record, for its reviews.
#[derive(Debug, Default)]
pub struct Sharing {
    /// This node's name; `None` on a gateway of its own.
    pub node: Option<String>,
    /// Sessions live on other nodes: frames they hold are those nodes' to decide.
    pub held_elsewhere: std::collections::HashSet<String>,
}

#[derive(Default)]
struct State {
    all: BTreeMap<String, Review>,
    /// Held frames' sessions wait on these.
    waiters: HashMap<String, watch::Sender<Review>>,
}

impl Reviews {
    /// Loads the reviews; held frames still pending belonged to sessions that died with the
    /// previous run: they become `session-ended`. Frames held for sessions live on other
    /// gateways sharing the record (`sharing`) are that gateway's to decide and expire: they
    /// are left out. Starts the expiry sweep.
    pub async fn open(
        store: Arc<dyn Record>,
        recorder: Recorder,
        rules: BTreeMap<String, ReviewRules>,
        roles: Arc<Roles>,
        hold_timeout: Duration,
        sharing: Sharing,
    ) -> anyhow::Result<Arc<Reviews>> {
        let Sharing {
            node,
            held_elsewhere,
        } = sharing;
        let mut all = BTreeMap::new();
        for bytes in store.reviews()? {
            let review = serde_json::from_slice::<Review>(&bytes)
                .map_err(|e| format!("not a review: {e}"))
                .and_then(|review| match chained(store.as_ref(), &review) {
                    Ok(()) => Ok(review),
                    Err(why) => Err(format!("{}: {why}", review.id)),
                });
            match review {
                Ok(review)
                    if review
                        .session
                        .as_ref()
                        .is_some_and(|session| held_elsewhere.contains(session)) => {}
                Ok(review) => {
                    all.insert(review.id.clone(), review);
                }
                // Fail closed: a row the chain does not back grants and decides nothing.
                Err(why) => {
                    tracing::error!(%why, "a stored review does not match the record; ignored (`sluice verify` names it)")
                }
            }
        }
        let (changes, _) = broadcast::channel(256);
        let reviews = Arc::new(Reviews {
            store,
            recorder,
            rules: std::sync::RwLock::new(rules),
            roles,
            hold_timeout,
            state: Mutex::new(State {
                all,
                waiters: HashMap::new(),
            }),
            changes,
            deciding: tokio::sync::Mutex::new(()),
            node,
        });
        let orphans: Vec<String> = reviews
            .lock()
            .all
            .values()
            .filter(|r| r.kind == Kind::Frame && r.status == Status::Pending)
            .map(|r| r.id.clone())
            .collect();
        for id in orphans {
            reviews.finish(&id, Status::SessionEnded, None).await?;
        }
        let sweeper = Arc::downgrade(&reviews);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(reviews) = sweeper.upgrade() else {
                    return;
                };
                reviews.expire_due().await;
            }
        });
        Ok(reviews)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a reloaded policy's rules (reviews already open keep theirs).
    pub fn set_rules(&self, rules: BTreeMap<String, ReviewRules>) {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = rules;
    }

    /// Drops reviews that retention removed from the store.
    pub fn forget(&self, ids: &[String]) {
        let mut state = self.lock();
        for id in ids {
            state.all.remove(id);
        }
    }

    pub fn rules(&self, connection: &str) -> ReviewRules {
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        rules.get(connection).cloned().unwrap_or_default()
    }

    /// Whether sessions on `connection` need an approved access request first.
    pub fn needs_access(&self, connection: &str) -> bool {
        self.rules(connection).access_grant_seconds.is_some()
    }

    /// Creates a review: stored, recorded, announced. A held frame's session then waits on
    /// the returned [`Pending`].
    pub async fn request(
        self: &Arc<Self>,
        kind: Kind,
        identity: &Identity,
        connection: &str,
        session: Option<&str>,
        text: String,
        reason: String,
    ) -> Result<Pending, RecordFailed> {
        let rules = self.rules(connection);
        let now = now_ms();
        let wait = match kind {
            Kind::Frame => rules
                .expire_seconds
                .map_or(self.hold_timeout, Duration::from_secs),
            Kind::Access => Duration::from_secs(rules.access_request_seconds),
        };
        let review = Review {
            id: new_id()?,
            kind,
            status: Status::Pending,
            requester: identity.subject.clone(),
            requester_name: identity.name.clone(),
            connection: connection.into(),
            session: session.map(String::from),
            text,
            reason,
            created_ms: now,
            expires_ms: now + wait.as_millis() as u64,
            required: rules.approvals.max(1),
            reviewer_groups: self.roles.groups(Role::Review, connection),
            approvals: Vec::new(),
            rejection: None,
            grant_ms: rules.access_grant_seconds.map(|s| s * 1000),
            granted_until_ms: None,
            entry: None,
            node: self.node.clone(),
        };
        let (tx, rx) = watch::channel(review.clone());
        self.lock().waiters.insert(review.id.clone(), tx);
        let _one_at_a_time = self.deciding.lock().await;
        self.save(&review, "created", None).await?;
        Ok(Pending {
            id: review.id.clone(),
            rx,
            reviews: self.clone(),
            // An access request outlives whoever asked; a held frame lives with its session.
            settled: kind == Kind::Access,
        })
    }

    /// Approves or rejects review `id` as `identity`.
    pub async fn decide(
        self: &Arc<Self>,
        id: &str,
        identity: &Identity,
        approve: bool,
        reason: Option<String>,
    ) -> Result<Review, Refused> {
        // On a shared record another node may have made or decided it since: read it again.
        self.read_shared().await.map_err(|why| refused(503, why))?;
        if let Some(review) = self.get(id) {
            let who = &identity.subject;
            let why = if self.roles.is_agent(identity) {
                Some(format!(
                    "`{who}` is an agent and may not decide review {id}: agents never decide reviews, whatever their groups"
                ))
            } else if !review.may_decide(identity) {
                Some(format!(
                    "`{who}` may not decide review {id}: that needs the `review` role on `{}`, held by groups {}",
                    review.connection,
                    review.reviewer_groups.join(", ")
                ))
            } else {
                None
            };
            if let Some(message) = why {
                let action = format!("decide review {id}");
                self.roles
                    .record(
                        identity,
                        Role::Review,
                        &review.connection,
                        &action,
                        &message,
                    )
                    .await;
                return Err(refused(403, message));
            }
        }
        let _one_at_a_time = self.deciding.lock().await;
        let (review, action) = {
            let state = self.lock();
            let Some(review) = state.all.get(id) else {
                return Err(refused(404, format!("no review {id}")));
            };
            review.decide(identity, approve, reason, now_ms())?
        };
        self.save(&review, action, Some(&identity.subject))
            .await
            .map_err(|e| refused(500, e.to_string()))?;
        Ok(review)
    }

    /// Ends review `id` (if still pending) as expired or session-ended.
    async fn finish(&self, id: &str, status: Status, by: Option<&str>) -> Result<(), RecordFailed> {
        let _one_at_a_time = self.deciding.lock().await;
        let review = {
            let state = self.lock();
            match state.all.get(id) {
                Some(r) if r.status == Status::Pending => Review {
                    status,
                    ..r.clone()
                },
                _ => return Ok(()),
            }
        };
        self.save(&review, status.as_str(), by).await
    }

    async fn expire_due(&self) {
        let now = now_ms();
        let due: Vec<String> = self
            .lock()
            .all
            .values()
            .filter(|r| r.status == Status::Pending && r.expires_ms <= now)
            .filter(|r| self.made_here(r))
            .map(|r| r.id.clone())
            .collect();
        for id in due {
            if let Err(e) = self.finish(&id, Status::Expired, None).await {
                tracing::error!(error = %e, review = %id, "cannot record an expired review");
            }
        }
    }

    /// Records the change in the chain (with the whole state), stores the row that points at
    /// that entry, and only then tells the waiter, the stream and the in-memory queue: a write
    /// that fails changes nothing anyone sees. Callers hold `deciding`.
    async fn save(
        &self,
        review: &Review,
        action: &str,
        by: Option<&str>,
    ) -> Result<(), RecordFailed> {
        let event = NewEvent {
            // A held frame's events join its session's record; access requests are the
            // gateway's own.
            session: review.session.clone().unwrap_or_default(),
            seq: 0,
            kind: sluice_record::kinds::REVIEW.into(),
            time_ms: now_ms(),
            meta: json!({
                "review": review.id,
                "action": action,
                "by": by,
                "status": review.status.as_str(),
                "kind": review.kind,
                "requester": review.requester,
                "connection": review.connection,
                "reason": review.reason,
                "approvals": review.approvals.len(),
                "required": review.required,
                "decision_reason": review.rejection.as_ref().and_then(|v| v.reason.clone())
                    .or_else(|| review.approvals.last().and_then(|v| v.reason.clone())),
                "state": review.chained_state(),
            })
            .to_string(),
            payload: review.text.clone().into_bytes(),
        };
        let entry = self.recorder.append(event).await?;
        let review = Review {
            entry: Some(entry),
            ..review.clone()
        };
        let bytes = serde_json::to_vec(&review).map_err(|e| RecordFailed(e.to_string()))?;
        // A durable redb commit blocks (and waits for the record writer's): not on a worker.
        let (store, id) = (self.store.clone(), review.id.clone());
        tokio::task::spawn_blocking(move || store.put_review(&id, &bytes))
            .await
            .map_err(|e| RecordFailed(e.to_string()))?
            .map_err(|e| RecordFailed(e.to_string()))?;
        let mut state = self.lock();
        state.all.insert(review.id.clone(), review.clone());
        if let Some(waiter) = state.waiters.get(&review.id) {
            let _ = waiter.send(review.clone());
        }
        if review.status != Status::Pending {
            state.waiters.remove(&review.id);
        }
        drop(state);
        let _ = self.changes.send(review);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<Review> {
        self.lock().all.get(id).cloned()
    }

    /// What `identity` may see: their own requests and those they may decide; newest first.
    /// `others` are reviews other gateways on a shared record hold (`held_elsewhere`).
    pub fn visible(
        &self,
        identity: &Identity,
        status: Option<&str>,
        others: &[Review],
    ) -> Vec<Review> {
        let mut out: Vec<Review> = self
            .lock()
            .all
            .values()
            .chain(others)
            .filter(|r| self.may_see(identity, r))
            .filter(|r| status.is_none_or(|s| r.status.as_str() == s))
            .cloned()
            .collect();
        out.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        out
    }

    /// The sessions with a frame held for review now.
    /// The pending review of a frame session `session` holds, if any.
    pub fn held_in(&self, session: &str) -> Option<Review> {
        self.lock()
            .all
            .values()
            .find(|r| r.status == Status::Pending && r.session.as_deref() == Some(session))
            .cloned()
    }

    pub fn held_sessions(&self) -> std::collections::BTreeSet<String> {
        self.lock()
            .all
            .values()
            .filter(|r| r.status == Status::Pending)
            .filter_map(|r| r.session.clone())
            .collect()
    }

    pub fn may_see(&self, identity: &Identity, review: &Review) -> bool {
        review.requester == identity.subject
            || review.may_decide(identity)
            || self.roles.has(identity, Role::Audit, &review.connection)
    }

    /// Takes over the pending access requests node `gone` made, once this node has been
    /// handed that node (its heartbeat lapsed): they expire here, and decisions on them come
    /// here. The takeover is recorded. Held frames are not taken: they ended with their
    /// sessions on the dead node.
    pub async fn adopt(self: &Arc<Self>, gone: &str) -> Result<usize, String> {
        self.read_shared().await?;
        let _one_at_a_time = self.deciding.lock().await;
        let orphans: Vec<Review> = self
            .lock()
            .all
            .values()
            .filter(|r| r.kind == Kind::Access && r.status == Status::Pending)
            .filter(|r| r.node.as_deref() == Some(gone))
            .cloned()
            .collect();
        for review in &orphans {
            let adopted = Review {
                node: self.node.clone(),
                ..review.clone()
            };
            self.save(&adopted, "adopted", None)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(orphans.len())
    }

    /// Whether this node made `review` (always, on a gateway of its own). Only the node that
    /// made a review expires it, and announces its changes to the other nodes.
    pub fn made_here(&self, review: &Review) -> bool {
        review.node.is_none() || review.node == self.node
    }

    /// The node other than this one that made review `id`, if it is an access request:
    /// decisions on it go there while that node runs.
    pub fn access_made_elsewhere(&self, id: &str) -> Option<String> {
        self.get(id)
            .filter(|r| r.kind == Kind::Access && !self.made_here(r))
            .and_then(|r| r.node)
    }

    /// Reads the shared record's reviews (only rows the chain backs, as at start). Access
    /// requests are brought up to date here, whichever node made or decided them, since any
    /// node may grant access; the frames other nodes hold are returned, as last recorded.
    /// Blocking: it reads the record.
    pub fn held_elsewhere(&self) -> anyhow::Result<Vec<Review>> {
        let mut others = Vec::new();
        for bytes in self.store.reviews()? {
            let Ok(review) = serde_json::from_slice::<Review>(&bytes) else {
                continue;
            };
            let known = self.get(&review.id);
            let newer = known.as_ref().is_none_or(|k| k.entry < review.entry);
            if !newer || (known.is_some() && review.kind == Kind::Frame) {
                continue;
            }
            if let Err(why) = chained(self.store.as_ref(), &review) {
                tracing::error!(review = %review.id, %why, "a stored review does not match the record; ignored (`sluice verify` names it)");
                continue;
            }
            match review.kind {
                Kind::Frame => others.push(review),
                Kind::Access => {
                    let mut state = self.lock();
                    if review.status != Status::Pending {
                        state.waiters.remove(&review.id);
                    }
                    state.all.insert(review.id.clone(), review);
                }
            }
        }
        Ok(others)
    }

    /// On a shared record, brings access requests up to date (`held_elsewhere`) before
    /// they are decided or consulted; nothing on a gateway of its own. An unreadable record
    /// is an error: access is not granted or asked for on a stale view.
    async fn read_shared(self: &Arc<Self>) -> Result<(), String> {
        if self.node.is_none() {
            return Ok(());
        }
        let reviews = self.clone();
        tokio::task::spawn_blocking(move || reviews.held_elsewhere())
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .map_err(|e| format!("the shared record cannot be read for reviews: {e:#}"))
    }

    /// Shows a change another node made (as the shared record has it) to this node's live
    /// streams; nothing else here changes.
    pub fn publish(&self, review: Review) {
        let _ = self.changes.send(review);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Review> {
        self.changes.subscribe()
    }

    /// Until when `identity` may open sessions on `connection` (an approved access request
    /// not yet over), if at all.
    pub fn access_until(&self, identity: &Identity, connection: &str) -> Option<u64> {
        let now = now_ms();
        self.lock()
            .all
            .values()
            .filter(|r| r.kind == Kind::Access && r.status == Status::Approved)
            .filter(|r| r.requester == identity.subject && r.connection == connection)
            .filter_map(|r| r.granted_until_ms)
            .filter(|until| *until > now)
            .max()
    }

    /// The pending access request of `identity` for `connection`, if any (not asked twice).
    pub fn pending_access(&self, identity: &Identity, connection: &str) -> Option<String> {
        self.lock()
            .all
            .values()
            .find(|r| {
                r.kind == Kind::Access
                    && r.status == Status::Pending
                    && r.requester == identity.subject
                    && r.connection == connection
            })
            .map(|r| r.id.clone())
    }

    /// Just-in-time access: `Ok(None)` when `connection` needs none, `Ok(Some(until))` while an
    /// approved request lasts; otherwise a request is made (once) and `Err` tells the person
    /// its id, to come back once a reviewer approved it.
    pub async fn access(
        self: &Arc<Self>,
        identity: &Identity,
        connection: &str,
        reason: Option<&str>,
    ) -> Result<Option<u64>, String> {
        let Some(seconds) = self.rules(connection).access_grant_seconds else {
            return Ok(None);
        };
        // A grant or request made through another node counts here too.
        self.read_shared().await?;
        if let Some(until) = self.access_until(identity, connection) {
            return Ok(Some(until));
        }
        let id = match self.pending_access(identity, connection) {
            Some(id) => id,
            None => {
                let text = format!("open sessions on `{connection}` for {}", duration(seconds));
                let reason = reason.unwrap_or("(no reason given)").to_string();
                self.request(Kind::Access, identity, connection, None, text, reason)
                    .await
                    .map_err(|e| e.to_string())?
                    .id
                    .clone()
            }
        };
        Err(format!(
            "access to `{connection}` needs approval: review {id} is pending; connect again once a reviewer approved it (`sluice review approve {id}`)"
        ))
    }
}

/// A review a session waits on. Dropped before its decision (the session ended), a held
/// frame's review becomes `session-ended`: it can no longer be approved into nothing.
pub struct Pending {
    id: String,
    rx: watch::Receiver<Review>,
    reviews: Arc<Reviews>,
    settled: bool,
}

impl Pending {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn review(&self) -> Review {
        self.rx.borrow().clone()
    }

    /// What the requester is told while waiting.
    pub fn notice(&self) -> String {
        let r = self.review();
        let subject = match r.kind {
            Kind::Frame => format!("held for review ({})", r.reason),
            Kind::Access => format!("access to `{}` needs approval", r.connection),
        };
        format!(
            "sluice: {subject}: review {id}; a reviewer decides with `sluice review approve {id}` or `sluice review reject {id} --reason …`; waiting up to {} s",
            (r.expires_ms.saturating_sub(now_ms())) / 1000,
            id = r.id,
        )
    }

    /// Waits for the decision (or the deadline). Cancel-safe: call again after a select.
    pub async fn decided(&mut self) -> Review {
        loop {
            let review = self.rx.borrow_and_update().clone();
            if review.status != Status::Pending {
                self.settled = true;
                return review;
            }
            let left = review.expires_ms.saturating_sub(now_ms());
            tokio::select! {
                changed = self.rx.changed() => if changed.is_err() {
                    // The queue let go of the waiter: read the stored outcome.
                    self.settled = true;
                    return self.reviews.get(&self.id).unwrap_or(review);
                },
                () = tokio::time::sleep(Duration::from_millis(left)) => {
                    let _ = self.reviews.finish(&self.id, Status::Expired, None).await;
                }
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (reviews, id) = (self.reviews.clone(), self.id.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = reviews.finish(&id, Status::SessionEnded, None).await;
            });
        }
    }
}

/// Whether a stored review is the state its chain entry recorded. Rows from before entries
/// were referenced are kept only when they grant nothing now.
fn chained(store: &dyn Record, review: &Review) -> Result<(), String> {
    let Some(index) = review.entry else {
        let grants = review.kind == Kind::Access
            && review.status == Status::Approved
            && review
                .granted_until_ms
                .is_some_and(|until| until > now_ms());
        return match grants {
            true => Err("an access grant that names no chain entry".into()),
            false => Ok(()),
        };
    };
    let recorded = store
        .entry(index)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("its chain entry {index} is not in the record"))?;
    let meta: serde_json::Value =
        serde_json::from_str(&recorded.entry.meta).map_err(|e| e.to_string())?;
    if recorded.entry.kind != sluice_record::kinds::REVIEW
        || meta["review"] != review.id.as_str()
        || meta["state"] != review.chained_state()
    {
        return Err(format!(
            "it differs from the state chain entry {index} recorded"
        ));
    }
    Ok(())
}

/// `90 s`, `15 min`, `2 h`.
fn duration(seconds: u64) -> String {
    match seconds {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Short, unambiguous ids a person can type: `r-` and 10 base32 characters.
fn new_id() -> Result<String, RecordFailed> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes)
        .map_err(|e| RecordFailed(format!("no randomness for a review id: {e}")))?;
    let id: String = bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    Ok(format!("r-{id}"))
}
