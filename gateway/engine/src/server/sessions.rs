//! The routes that read sessions: the list and its search, one session's events (JSON lines,
//! or asciicast for a player), following a live one, and ending it. Every read of a
//! recording, and every search of their content, is recorded first (kind `audit`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use hyper::body::Bytes;
use serde_json::json;

use super::Gateway;
use super::routes::{Reply, error, event_stream, reply};
use crate::roles::Role;
use sluice_core::frame::Identity;
use sluice_record::SessionSummary;

/// The most sessions one page of a search holds.
const MAX_PAGE: usize = 500;
/// How much of a session's first input a list shows.
const FIRST_INPUT_CHARS: usize = 200;

impl Gateway {
    /// A recorded session is visible to its auditors, and to its own user while they hold
    /// a role on its connection; to nobody else.
    pub(super) fn may_read(&self, identity: &Identity, subject: &str, connection: &str) -> bool {
        self.roles().has(identity, Role::Audit, connection)
            || (subject == identity.subject && self.roles().any(identity, connection))
    }

    /// Live sessions: this node's, and on a shared record every other live node's.
    pub(super) async fn live_sessions(&self, identity: &Identity) -> Reply {
        let here = self.peers.as_ref().map(|p| p.node().to_string());
        let mut live: Vec<_> = self
            .session_ctx
            .live()
            .into_iter()
            .map(|(id, subject, connection, started_ms)| {
                (id, subject, connection, started_ms, here.clone())
            })
            .collect();
        match self.elsewhere().await {
            Ok(elsewhere) => live.extend(
                elsewhere
                    .into_iter()
                    .map(|(node, s)| (s.id, s.subject, s.connection, s.started_ms, Some(node))),
            ),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e),
        }
        let visible: Vec<_> = live
            .into_iter()
            .filter(|(_, subject, connection, _, _)| {
                self.may_read(identity, subject, connection)
                    || self.roles().has(identity, Role::Admin, connection)
            })
            .map(|(id, subject, connection, started_ms, node)| json!({"id": id, "subject": subject, "connection": connection, "started_ms": started_ms, "node": node}))
            .collect();
        reply(StatusCode::OK, serde_json::Value::from(visible).to_string())
    }

    /// Sessions open on the other nodes sharing the record (none on a gateway of its own).
    pub(super) async fn elsewhere(
        &self,
    ) -> Result<Vec<(String, sluice_record::SessionSummary)>, String> {
        match &self.peers {
            None => Ok(Vec::new()),
            Some(peers) => peers.live_elsewhere().await,
        }
    }

    /// Admins of its connection end a live session.
    pub(super) async fn kill_session(
        &self,
        identity: &Identity,
        id: &str,
        peer: SocketAddr,
    ) -> Reply {
        let live = self.session_ctx.live();
        let local = live.iter().find(|(live_id, ..)| live_id == id);
        // A session another node holds is ended there: it is told through the record.
        let (connection, holder) = match local {
            Some((_, _, connection, _)) => (connection.clone(), None),
            None => match self.elsewhere().await {
                Ok(elsewhere) => match elsewhere.into_iter().find(|(_, s)| s.id == id) {
                    Some((node, s)) => (s.connection, Some(node)),
                    None => return error(StatusCode::NOT_FOUND, &format!("no live session {id}")),
                },
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e),
            },
        };
        let action = format!("end session {id}");
        if let Err(why) = self
            .roles()
            .require(identity, Role::Admin, &connection, &action)
            .await
        {
            tracing::warn!(%peer, subject = %identity.subject, session = id, "kill refused");
            return error(StatusCode::FORBIDDEN, &why);
        }
        if let (Some(node), Some(peers)) = (holder, &self.peers) {
            let reason = format!("ended by {}", identity.subject);
            return match peers.kill(&node, id, reason).await {
                Ok(()) => {
                    tracing::info!(subject = %identity.subject, session = id, %node, "kill sent to the node holding the session");
                    reply(
                        StatusCode::OK,
                        json!({"killed": id, "node": node}).to_string(),
                    )
                }
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
            };
        }
        if self
            .session_ctx
            .kill(id, format!("ended by {}", identity.subject))
        {
            tracing::info!(subject = %identity.subject, session = id, "session killed");
            reply(StatusCode::OK, json!({"killed": id}).to_string())
        } else {
            error(StatusCode::NOT_FOUND, &format!("no live session {id}"))
        }
    }

    pub(super) fn list_sessions(&self, identity: &Identity) -> Reply {
        match self.store.sessions() {
            Ok(all) => {
                let visible: Vec<_> = all
                    .into_iter()
                    .filter(|s| self.may_read(identity, &s.subject, &s.connection))
                    .collect();
                reply(
                    StatusCode::OK,
                    serde_json::to_string(&visible).unwrap_or_default(),
                )
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    pub(super) async fn session_events(&self, identity: &Identity, id: &str, form: &str) -> Reply {
        let form = match self.open_to_read(identity, id, form).await {
            Ok((_, form)) => form,
            Err(refused) => return refused,
        };
        match self.store.session_events(id) {
            Ok(events) if form == "asciicast" => {
                let views: Vec<_> = events
                    .into_iter()
                    .map(crate::audit::EventView::of)
                    .collect();
                reply(StatusCode::OK, crate::audit::asciicast(&views))
            }
            Ok(events) => {
                let lines: String = events
                    .iter()
                    .map(|e| crate::audit::event_json(e).to_string() + "\n")
                    .collect();
                reply(StatusCode::OK, lines)
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    /// Checks `identity` may read session `id` and records that they do (in `form`), before
    /// anything is served; the session, and the form as recorded.
    pub(super) async fn open_to_read(
        &self,
        identity: &Identity,
        id: &str,
        form: &str,
    ) -> Result<(SessionSummary, String), Reply> {
        let summary = self.readable(identity, id).await?;
        let form: String = form
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(32)
            .collect();
        let audited =
            json!({"by": identity.subject, "action": "read", "session": id, "form": form});
        if let Err(why) = self.record_gateway_event("audit", &audited).await {
            return Err(error(StatusCode::INTERNAL_SERVER_ERROR, &why));
        }
        Ok((summary, form))
    }

    /// Session `id`, if `identity` may read it; a refusal is said (and logged) as roles do.
    pub(super) async fn readable(
        &self,
        identity: &Identity,
        id: &str,
    ) -> Result<SessionSummary, Reply> {
        match self.store.session(id) {
            Ok(Some(s)) if self.may_read(identity, &s.subject, &s.connection) => Ok(s),
            Ok(Some(s)) => {
                let action = format!("read session {id}");
                let why = self
                    .roles()
                    .refuse(identity, Role::Audit, &s.connection, &action)
                    .await;
                Err(error(StatusCode::FORBIDDEN, &why))
            }
            Ok(None) => Err(error(StatusCode::NOT_FOUND, &format!("no session {id}"))),
            Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
        }
    }

    /// `GET /api/sessions/search?user=&connection=&since=MS&until=MS&status=&text=&offset=&limit=`:
    /// the sessions `identity` may read that match, newest first, a page at a time, each
    /// with its status and first input. A text search reads recorded content, so it is
    /// recorded first; it runs on a reader (the record's writer never waits for it).
    pub(super) async fn search_sessions(
        self: &Arc<Self>,
        identity: &Identity,
        query: &BTreeMap<String, String>,
    ) -> Reply {
        let search = match Search::parse(query) {
            Ok(search) => search,
            Err(why) => return error(StatusCode::BAD_REQUEST, &why),
        };
        if let Some(text) = &search.text {
            let audited = json!({"by": identity.subject, "action": "search", "text": text});
            if let Err(why) = self.record_gateway_event("audit", &audited).await {
                return error(StatusCode::INTERNAL_SERVER_ERROR, &why);
            }
        }
        let (gateway, identity) = (self.clone(), identity.clone());
        let found = tokio::task::spawn_blocking(move || gateway.find_sessions(&identity, &search))
            .await
            .map_err(|e| e.to_string())
            .and_then(|found| found);
        match found {
            Ok(page) => reply(StatusCode::OK, page.to_string()),
            Err(why) => error(StatusCode::INTERNAL_SERVER_ERROR, &why),
        }
    }

    fn find_sessions(
        &self,
        identity: &Identity,
        search: &Search,
    ) -> Result<serde_json::Value, String> {
        let held = self.reviews().held_sessions();
        let live: std::collections::BTreeSet<String> = self
            .session_ctx
            .live()
            .into_iter()
            .map(|(id, ..)| id)
            .collect();
        let status = |s: &SessionSummary| {
            if held.contains(&s.id) {
                "held"
            } else if live.contains(&s.id) || s.ended_ms.is_none() {
                "live"
            } else if s.refused > 0 {
                "refused"
            } else {
                "ended"
            }
        };
        // The index rows narrow the search; each row shown is read again from the chain.
        let mut matching = Vec::new();
        for s in self.store.session_rows().map_err(|e| e.to_string())? {
            let wanted = self.may_read(identity, &s.subject, &s.connection)
                && search.user.as_ref().is_none_or(|u| *u == s.subject)
                && search
                    .connection
                    .as_ref()
                    .is_none_or(|c| *c == s.connection)
                && search.since.is_none_or(|t| s.started_ms >= t)
                && search.until.is_none_or(|t| s.started_ms < t)
                && search.status.as_ref().is_none_or(|st| match st.as_str() {
                    // A held session is live too, and a refusal can end a live one.
                    "live" => s.ended_ms.is_none(),
                    "refused" => s.refused > 0,
                    other => status(&s) == other,
                });
            if !wanted {
                continue;
            }
            if let Some(text) = &search.text
                && !self.contains_text(&s, text)?
            {
                continue;
            }
            matching.push(s);
        }
        let total = matching.len();
        let page: Vec<serde_json::Value> = matching
            .into_iter()
            .skip(search.offset)
            .take(search.limit)
            .filter_map(|row| {
                // Who and where, from the session's chained opening entry: a row altered in
                // the store shows (and grants) nothing.
                let checked = self.store.session(&row.id).ok()??;
                let same = checked.subject == row.subject
                    && checked.connection == row.connection
                    && checked.started_ms == row.started_ms;
                if !same || !self.may_read(identity, &checked.subject, &checked.connection) {
                    tracing::warn!(session = %row.id, "sessions index row differs from the chain; left out of the list");
                    return None;
                }
                Some(checked)
            })
            .map(|s| {
                let first_input = s.first_input_at.and_then(|i| self.first_input(i));
                let mut row = json!(s);
                row["status"] = json!(status(&s));
                row["first_input"] = json!(first_input);
                row
            })
            .collect();
        Ok(
            json!({"sessions": page, "total": total, "offset": search.offset, "limit": search.limit}),
        )
    }

    /// Whether any payload of session `s` contains `text` (ASCII letters in any case).
    fn contains_text(&self, s: &SessionSummary, text: &str) -> Result<bool, String> {
        let needle = text.to_ascii_lowercase().into_bytes();
        let events = self
            .store
            .session_events(&s.id)
            .map_err(|e| e.to_string())?;
        Ok(events.iter().any(|e| {
            e.payload.as_ref().is_some_and(|p| {
                p.len() >= needle.len()
                    && p.windows(needle.len())
                        .any(|w| w.eq_ignore_ascii_case(&needle))
            })
        }))
    }

    /// The text of the input recorded at entry `index`, on one line and cut short; none once
    /// retention purged it.
    fn first_input(&self, index: u64) -> Option<String> {
        let payload = self.store.entry(index).ok()??.payload?;
        let text = String::from_utf8_lossy(&payload);
        let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        Some(line.chars().take(FIRST_INPUT_CHARS).collect())
    }

    /// `GET /api/sessions/ID/follow`: server-sent events, each a recorded event of the
    /// session as JSON (`event: entry`): what it recorded so far, then each new one as it is
    /// committed, until the session closes (`event: end`). What is shown is what was
    /// recorded: masked values stay masked.
    pub(super) async fn follow_session(&self, identity: &Identity, id: &str) -> Reply {
        let summary = match self.open_to_read(identity, id, "follow").await {
            Ok((summary, _)) => summary,
            Err(refused) => return refused,
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let (store, id) = (self.store.clone(), id.to_string());
        tokio::task::spawn_blocking(move || {
            let mut next = summary.first_index;
            loop {
                let batch = match store.entries_from(next, 256) {
                    Ok(batch) => batch,
                    Err(e) => {
                        let _ = tx.blocking_send(Bytes::from(format!(
                            "event: error\ndata: {}\n\n",
                            json!(e.to_string())
                        )));
                        return;
                    }
                };
                if batch.is_empty() {
                    // Nothing new: wait for the next commit (a bounded wait, so a reader
                    // that went away is noticed).
                    if !store.wait_for(next, Duration::from_secs(15))
                        && tx
                            .blocking_send(Bytes::from_static(b": keep-alive\n\n"))
                            .is_err()
                    {
                        return;
                    }
                    continue;
                }
                for recorded in batch {
                    next = recorded.entry.index + 1;
                    if recorded.entry.session != id {
                        continue;
                    }
                    let closed = recorded.entry.kind == sluice_record::kinds::SESSION_CLOSE;
                    let event = crate::audit::event_json(&recorded);
                    if tx
                        .blocking_send(Bytes::from(format!("event: entry\ndata: {event}\n\n")))
                        .is_err()
                    {
                        return;
                    }
                    if closed {
                        let _ = tx.blocking_send(Bytes::from_static(b"event: end\ndata: {}\n\n"));
                        return;
                    }
                }
            }
        });
        event_stream(rx)
    }
}

/// A search of the sessions, from its query.
struct Search {
    user: Option<String>,
    connection: Option<String>,
    since: Option<u64>,
    until: Option<u64>,
    status: Option<String>,
    text: Option<String>,
    offset: usize,
    limit: usize,
}

impl Search {
    fn parse(query: &BTreeMap<String, String>) -> Result<Search, String> {
        let text = |k: &str| {
            query
                .get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let number = |k: &str| -> Result<Option<u64>, String> {
            text(k)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{k}: expected a whole number, got `{v}`"))
                })
                .transpose()
        };
        let status = text("status");
        if let Some(s) = &status
            && !["live", "ended", "refused", "held"].contains(&s.as_str())
        {
            return Err(format!(
                "status: expected live, ended, refused or held, got `{s}`"
            ));
        }
        let limit = number("limit")?.map_or(50, |n| n as usize);
        if limit == 0 || limit > MAX_PAGE {
            return Err(format!("limit: 1 to {MAX_PAGE}"));
        }
        Ok(Search {
            user: text("user"),
            connection: text("connection"),
            since: number("since")?,
            until: number("until")?,
            status,
            text: text("text"),
            offset: number("offset")?.unwrap_or(0) as usize,
            limit,
        })
    }
}

impl Gateway {
    /// The node whose session waits on review `id`, when another node holds it.
    pub(super) async fn node_holding_review(&self, id: &str) -> Option<String> {
        self.peers.as_ref()?;
        let store = self.store.clone();
        let rows = tokio::task::spawn_blocking(move || store.reviews())
            .await
            .ok()?
            .ok()?;
        let session = rows
            .iter()
            .filter_map(|row| serde_json::from_slice::<serde_json::Value>(row).ok())
            .find(|review| review["id"] == id)?["session"]
            .as_str()?
            .to_string();
        let elsewhere = self.elsewhere().await.ok()?;
        elsewhere
            .into_iter()
            .find(|(_, s)| s.id == session)
            .map(|(node, _)| node)
    }

    /// `GET /api/nodes`: the nodes sharing the record, with their state (`live`, `silent`:
    /// its beat is late but nobody declared it gone yet, `gone`: it left or was declared gone),
    /// when each last beat and the live sessions each holds.
    pub(super) async fn nodes(&self) -> Reply {
        let Some(membership) = self.membership.clone() else {
            return error(
                StatusCode::NOT_FOUND,
                "this gateway keeps its record to itself ([store] kind = \"redb\"): it has no other nodes",
            );
        };
        let me = membership.node().to_string();
        let timeout = self.config.store.node_timeout_ms;
        let nodes = match tokio::task::spawn_blocking(move || membership.nodes()).await {
            Ok(Ok(nodes)) => nodes,
            Ok(Err(e)) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        let now = sluice_core::now_ms();
        let rows: Vec<_> = nodes
            .into_iter()
            .map(|n| {
                let ago = now.saturating_sub(n.beat_ms);
                let state = match n.gone_ms {
                    Some(_) => "gone",
                    None if ago > timeout => "silent",
                    None => "live",
                };
                json!({"node": n.node, "state": state, "this": n.node == me,
                       "beat_ago_ms": ago, "gone_ms": n.gone_ms, "sessions": n.sessions})
            })
            .collect();
        reply(StatusCode::OK, json!(rows).to_string())
    }

    /// On a shared record, the reviews other nodes hold, as recorded; none on a gateway of
    /// its own. An unreachable record is an error, not a shorter list.
    pub(super) async fn reviews_elsewhere(&self) -> Result<Vec<crate::review::Review>, String> {
        if self.peers.is_none() {
            return Ok(Vec::new());
        }
        let reviews = self.reviews().clone();
        tokio::task::spawn_blocking(move || reviews.held_elsewhere())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| {
                format!("the reviews other gateways hold cannot be read from the record: {e:#}")
            })
    }

    /// The live node other than this one that made access request `id`, where it is
    /// decided (one node at a time decides it, so two reviewers cannot both win). When that
    /// node is gone, this node decides it.
    pub(super) async fn access_decided_elsewhere(&self, id: &str) -> Option<String> {
        let peers = self.peers.as_ref()?;
        // Brings access requests made or decided elsewhere up to date here.
        self.reviews_elsewhere().await.ok()?;
        let node = self.reviews().access_made_elsewhere(id)?;
        peers
            .other_nodes()
            .await
            .ok()?
            .contains(&node)
            .then_some(node)
    }

    /// Review `id` decided on `node`, where its frame waits; its answer as this node's reply.
    pub(super) async fn decide_elsewhere(
        &self,
        node: &str,
        id: &str,
        identity: &Identity,
        approve: bool,
        reason: Option<String>,
    ) -> Reply {
        let Some(peers) = &self.peers else {
            return error(StatusCode::NOT_FOUND, &format!("no review {id}"));
        };
        match peers.decide(node, id, identity, approve, reason).await {
            Ok(answer) => {
                let status = answer["status"]
                    .as_u64()
                    .and_then(|s| StatusCode::from_u16(s as u16).ok())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                if status == StatusCode::OK {
                    tracing::info!(review = %id, by = %identity.subject, %node, "review decided on the node holding it");
                    reply(status, answer["review"].to_string())
                } else {
                    error(status, answer["error"].as_str().unwrap_or("refused"))
                }
            }
            Err(why) => error(StatusCode::SERVICE_UNAVAILABLE, &why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_search_says_which_parameter_is_wrong() {
        let refused = |pairs: &[(&str, &str)]| Search::parse(&query(pairs)).err().unwrap();
        assert!(refused(&[("status", "paused")]).starts_with("status:"));
        assert!(refused(&[("since", "yesterday")]).starts_with("since:"));
        assert!(refused(&[("limit", "0")]).starts_with("limit:"));
        assert!(refused(&[("limit", "501")]).starts_with("limit:"));
        assert!(refused(&[("offset", "-1")]).starts_with("offset:"));
        let search = Search::parse(&query(&[
            ("user", " alice "),
            ("text", ""),
            ("status", "held"),
        ]))
        .unwrap();
        assert_eq!(search.user.as_deref(), Some("alice"));
        assert_eq!(search.text, None, "an empty box searches for nothing");
        assert_eq!((search.offset, search.limit), (0, 50));
    }
}
