//! What admins and the gateway itself do to the whole: reload the policy, run retention,
//! stop. Each is recorded in the chain before it takes effect; one that cannot be recorded
//! changes nothing.

use std::time::Duration;

use serde_json::json;

use super::{Gateway, load_policy, retention_rules};
use crate::config::Connection;
use sluice_record::NewEvent;

/// A change to a runtime connection, applied with the policy.
pub(super) enum ConnectionChange {
    Put {
        name: String,
        table: serde_json::Value,
        edit: bool,
    },
    Remove {
        name: String,
    },
    /// Another node changed them: read them again from the shared record.
    Refresh,
}

impl Gateway {
    /// Reads the policy again and applies it whole: new sessions get the new chains, roles
    /// and review rules at once; sessions in flight keep their plugin instances until they
    /// end; sinks start, stop or restart as their tables changed. A policy that does not
    /// load is refused and the old one stays. Recorded (kind `policy`).
    pub(super) async fn reload(&self, by: &str) -> Result<serde_json::Value, String> {
        self.reload_with(by, None).await
    }

    /// A reload that also adds, changes or removes a runtime connection (`change`): the
    /// policy is loaded with the connections as they will be, so a connection whose chain
    /// does not load is refused before anything is recorded; then the change is recorded and
    /// stored, and the policy applied, as `reload` does.
    pub(super) async fn reload_with(
        &self,
        by: &str,
        change: Option<ConnectionChange>,
    ) -> Result<serde_json::Value, String> {
        let _one_at_a_time = self.maintenance.lock().await;
        let (host, policies) = (self.host.clone(), self.config.gateway.policies.clone());
        // Runtime connections another node changed, read again before the policy loads.
        let refreshed = match &change {
            Some(ConnectionChange::Refresh) => {
                let connections = self.connections.clone();
                tokio::task::spawn_blocking(move || connections.refresh())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| {
                        format!("runtime connections cannot be read from the record: {e:#}")
                    })?
            }
            _ => Vec::new(),
        };
        let mut connections = self.connections.all();
        // A changed PostgreSQL connection's new port, and the connection as it was (whose
        // door opens again if the change fails after closing it).
        let (mut listen, mut before) = (None, None);
        match &change {
            Some(ConnectionChange::Put { name, table, edit }) => {
                self.connections.may_put(name, *edit)?;
                let candidate = crate::connections::candidate(name, table)?;
                if let Connection::Postgres(pg) = &candidate {
                    listen = Some(pg.listen);
                }
                before = connections.insert(name.clone(), candidate);
            }
            Some(ConnectionChange::Remove { name }) => {
                connections.remove(name);
            }
            Some(ConnectionChange::Refresh) | None => {}
        }
        let loaded =
            tokio::task::spawn_blocking(move || load_policy(&host, &policies, &connections))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{e:#} (nothing was applied: the running policy stays)"))?;
        match change {
            Some(ConnectionChange::Put { name, table, edit }) => {
                // A PostgreSQL connection's port is taken before the change is applied: one
                // it cannot take refuses the change.
                let bound = match listen {
                    Some(listen) => Some(self.fronts.bind(&name, listen).await?),
                    None => None,
                };
                if let Err(why) = self.connections.put(&name, table, edit, by).await {
                    drop(bound);
                    self.reopen(&name, before.as_ref()).await;
                    return Err(why);
                }
                // Served as stored: with the secrets an edit left out, kept.
                match (bound, self.connections.all().get(&name)) {
                    (Some(bound), Some(Connection::Postgres(pg))) => self.fronts.open(bound, pg),
                    _ => self.fronts.close(&name).await,
                }
            }
            Some(ConnectionChange::Remove { name }) => {
                self.connections.remove(&name, by).await?;
                self.fronts.close(&name).await;
            }
            // Each changed connection's door follows it: reopened where it now listens, or
            // closed. A port this node cannot take is logged; the rest still applies.
            Some(ConnectionChange::Refresh) => {
                for name in &refreshed {
                    self.fronts.close(name).await;
                    if let Some(Connection::Postgres(pg)) = self.connections.get(name) {
                        match self.fronts.bind(name, pg.listen).await {
                            Ok(bound) => self.fronts.open(bound, &pg),
                            Err(why) => {
                                tracing::error!(connection = %name, %why, "front door not opened")
                            }
                        }
                    }
                }
            }
            None => {}
        }
        let files = loaded.chains.policy_files.clone();
        let sink_names: Vec<String> = loaded.sinks.iter().map(|s| s.name.clone()).collect();
        let applied = json!({"by": by, "files": files, "sinks": sink_names});
        // Recorded before anything is swapped: the one step that can still fail does so
        // while the running policy is untouched. What follows cannot fail.
        self.record_gateway_event("policy", &applied)
            .await
            .map_err(|e| format!("{e} (nothing was applied: the running policy stays)"))?;
        self.session_ctx.set_chains(loaded.chains);
        self.roles()
            .replace(loaded.policy.roles, loaded.policy.agent_groups);
        self.reviews().set_rules(loaded.policy.reviews);
        let sinks = self.sinks.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || sinks.apply(loaded.sinks)).await {
            tracing::error!(error = %e, "applying the sinks of the reloaded policy failed");
        }
        tracing::info!(%by, "policy reloaded");
        Ok(applied)
    }

    /// On a shared record, has every other node apply what `applied` (a reload or a change
    /// to a runtime connection made here) changed: each reads its own policy files and the
    /// record's runtime connections again. What each said goes into `applied["nodes"]`.
    pub(super) async fn everywhere(&self, mut applied: serde_json::Value) -> serde_json::Value {
        if let Some(peers) = &self.peers {
            let by = applied["by"].as_str().unwrap_or("another node").to_string();
            applied["nodes"] = json!(peers.reload_others(&by).await);
        }
        applied
    }

    /// What another node asked for (see `everywhere`).
    pub(super) async fn reload_as_asked(&self, by: &str) -> Result<serde_json::Value, String> {
        self.reload_with(by, Some(ConnectionChange::Refresh)).await
    }

    /// Opens connection `name`'s door as it was before a change that failed (an edit may
    /// have closed it to take its port again).
    async fn reopen(&self, name: &str, before: Option<&Connection>) {
        if let Some(Connection::Postgres(pg)) = before
            && self.fronts.get(name).is_none()
        {
            match self.fronts.bind(name, pg.listen).await {
                Ok(bound) => self.fronts.open(bound, pg),
                Err(why) => tracing::error!(connection = %name, %why, "front door not reopened"),
            }
        }
    }

    /// See [`Running::stop`].
    pub(super) async fn stop(&self, why: &str) -> anyhow::Result<usize> {
        for listener in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            listener.abort();
        }
        self.fronts.close_all().await;
        // Draining: nothing new is taken any more; live sessions may finish on their own.
        let drain = Duration::from_millis(self.config.gateway.drain_ms);
        if !drain.is_zero() && !self.session_ctx.live().is_empty() {
            tracing::info!(
                sessions = self.session_ctx.live().len(),
                drain_ms = drain.as_millis() as u64,
                "draining: waiting for live sessions to end"
            );
            let deadline = tokio::time::Instant::now() + drain;
            while !self.session_ctx.live().is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let live = self.session_ctx.live();
        for (id, ..) in &live {
            self.session_ctx
                .kill(id, format!("the gateway is stopping ({why})"));
        }
        // Each session records its close as it ends; wait for them, within the grace.
        let grace = Duration::from_millis(self.config.gateway.stop_grace_ms);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.session_ctx.live().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let unfinished = self.session_ctx.live().len();
        if unfinished > 0 {
            tracing::warn!(
                unfinished,
                "sessions did not end within the stop grace; the next start closes them"
            );
        }
        // Sinks finish the delivery in flight (bounded by the same grace).
        let sinks = self.sinks.clone();
        let stopping = tokio::task::spawn_blocking(move || sinks.apply(Vec::new()));
        let _ = tokio::time::timeout(grace, stopping).await;
        // Recorded in strict order after everything queued before it: once it is durable,
        // so is every event of the sessions that just ended.
        let stopped = json!({"why": why, "sessions_ended": live.len() - unfinished, "unfinished": unfinished});
        self.record_gateway_event("gateway-stop", &stopped)
            .await
            .map_err(|e| anyhow::anyhow!("cannot record the stop: {e}"))?;
        let store = self.store.clone();
        let membership = self.membership.clone();
        tokio::task::spawn_blocking(move || {
            // Its sessions are closed (or left to its next start): nobody answers for it.
            if let Some(membership) = membership
                && unfinished == 0
                && let Err(why) = membership.leave()
            {
                tracing::warn!(%why, "cannot record that this node left");
            }
            store.close()
        })
        .await?;
        Ok(live.len() - unfinished)
    }

    /// Purges what retention says has expired, then compacts the store so the purged bytes
    /// are gone from the file. Recorded (kind `retention`) when anything was purged.
    pub(super) async fn retention(&self, by: &str) -> Result<serde_json::Value, String> {
        let _one_at_a_time = self.maintenance.lock().await;
        let (store, rules) = (
            self.store.clone(),
            retention_rules(&self.config, &self.connections.all()),
        );
        let live: std::collections::HashSet<String> = self
            .session_ctx
            .live()
            .into_iter()
            .map(|(id, ..)| id)
            .collect();
        let who = by.to_string();
        let (purged, compacted) = tokio::task::spawn_blocking(move || {
            let purged = store.purge(&rules, sluice_core::now_ms(), &live, &who)?;
            let compacted = if purged.is_empty() {
                None
            } else {
                Some(store.compact()?)
            };
            Ok::<_, sluice_record::RecordError>((purged, compacted))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        self.reviews().forget(&purged.reviews);
        let report = json!({
            "by": by,
            "sessions": purged.sessions,
            "reviews": purged.reviews,
            "payloads": purged.payloads(),
            "ranges": purged.ranges,
            "entry": purged.entry,
            "compacted": compacted,
        });
        if !purged.is_empty() {
            // The purge recorded itself, in the transaction that deleted.
            tracing::info!(%by, payloads = purged.payloads(), sessions = purged.sessions.len(), "retention purged");
        }
        Ok(report)
    }

    /// An event of the gateway's own (no session) in the chain.
    pub(super) async fn record_gateway_event(
        &self,
        kind: &str,
        meta: &serde_json::Value,
    ) -> Result<(), String> {
        let event = NewEvent::gateway(kind, meta);
        self.session_ctx
            .recorder
            .append(event)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
