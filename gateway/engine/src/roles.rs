//! Who may do what: the policy's `[roles.CONNECTION]` tables map groups (from tokens) to the
//! four roles, per connection; `[roles.default]` fills in every role a connection's own table
//! leaves out. A role no table grants is nobody's.
//!
//! | role      | lets its groups                                                         |
//! |-----------|-------------------------------------------------------------------------|
//! | `connect` | open sessions on the connection (and see and replay their own)          |
//! | `review`  | approve or reject what the connection's gates hold                      |
//! | `audit`   | list, replay and export every session of the connection; `verify`       |
//! | `admin`   | see and end the connection's live sessions                              |
//!
//! Nobody reads a recording of a connection on which they hold no role. Every refusal names
//! the role that was missing and is recorded (an event of kind `refusal`, in no session).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::policy::RoleGroups;
use sluice_core::frame::Identity;
use sluice_record::{NewEvent, Recorder};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Connect,
    Review,
    Audit,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Connect, Role::Review, Role::Audit, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Connect => "connect",
            Role::Review => "review",
            Role::Audit => "audit",
            Role::Admin => "admin",
        }
    }
}

/// The connection name whose table applies where a connection has none.
pub const DEFAULT: &str = "default";

pub struct Roles {
    /// Replaced whole by `sluice reload`.
    tables: std::sync::RwLock<BTreeMap<String, RoleGroups>>,
    /// The policy's `[agents] groups`, replaced by `sluice reload`.
    agent_groups: std::sync::RwLock<Vec<String>>,
    /// The subjects of static tokens of `kind = "agent"` (the configuration's, fixed).
    agent_subjects: BTreeSet<String>,
    recorder: Recorder,
}

impl Roles {
    pub fn new(tables: BTreeMap<String, RoleGroups>, recorder: Recorder) -> Roles {
        Roles {
            tables: std::sync::RwLock::new(tables),
            agent_groups: Default::default(),
            agent_subjects: BTreeSet::new(),
            recorder,
        }
    }

    /// Who is an agent: these token subjects, and members of these groups.
    pub fn with_agents(mut self, subjects: BTreeSet<String>, groups: Vec<String>) -> Roles {
        self.agent_subjects = subjects;
        *self
            .agent_groups
            .get_mut()
            .unwrap_or_else(|e| e.into_inner()) = groups;
        self
    }

    /// Applies a reloaded policy's tables and agent groups.
    pub fn replace(&self, tables: BTreeMap<String, RoleGroups>, agent_groups: Vec<String>) {
        *self.tables.write().unwrap_or_else(|e| e.into_inner()) = tables;
        *self.agent_groups.write().unwrap_or_else(|e| e.into_inner()) = agent_groups;
    }

    /// Whether `identity` is an agent: a static agent token's subject, or a member of an
    /// agent group. A person whose subject equals an agent token's is taken for the agent:
    /// the mistake can only take a review away, never give one.
    pub fn is_agent(&self, identity: &Identity) -> bool {
        if self.agent_subjects.contains(&identity.subject) {
            return true;
        }
        let groups = self.agent_groups.read().unwrap_or_else(|e| e.into_inner());
        identity.groups.iter().any(|g| groups.contains(g))
    }

    fn tables(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, RoleGroups>> {
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The groups holding `role` on `connection`.
    pub fn groups(&self, role: Role, connection: &str) -> Vec<String> {
        let of = |table: Option<&RoleGroups>| table.and_then(|t| t.get(role)).cloned();
        let tables = self.tables();
        of(tables.get(connection))
            .or_else(|| of(tables.get(DEFAULT)))
            .unwrap_or_default()
    }

    pub fn has(&self, identity: &Identity, role: Role, connection: &str) -> bool {
        let groups = self.groups(role, connection);
        identity.groups.iter().any(|g| groups.contains(g))
    }

    /// Whether `identity` holds any role on `connection`.
    pub fn any(&self, identity: &Identity, connection: &str) -> bool {
        Role::ALL.iter().any(|r| self.has(identity, *r, connection))
    }

    /// Whether `identity` holds `role` on some connection (or the default table).
    pub fn anywhere(&self, identity: &Identity, role: Role) -> bool {
        let connections: Vec<String> = self.tables().keys().cloned().collect();
        connections
            .iter()
            .any(|connection| self.has(identity, role, connection))
    }

    /// `Ok` when `identity` holds `role` on `connection`; otherwise the refusal, recorded,
    /// naming the role, the connection and the groups that hold it. `action` says what was
    /// asked ("open a session", "approve review r-…").
    pub async fn require(
        &self,
        identity: &Identity,
        role: Role,
        connection: &str,
        action: &str,
    ) -> Result<(), String> {
        if self.has(identity, role, connection) {
            return Ok(());
        }
        Err(self.refuse(identity, role, connection, action).await)
    }

    /// Like [`Roles::require`], for what concerns no one connection (`verify`, `/metrics`):
    /// `role` on any connection will do; a refusal names the default table's groups.
    pub async fn require_anywhere(
        &self,
        identity: &Identity,
        role: Role,
        action: &str,
    ) -> Result<(), String> {
        if self.anywhere(identity, role) {
            return Ok(());
        }
        Err(self.refuse(identity, role, DEFAULT, action).await)
    }

    /// Records a refusal of `action` for want of `role` and returns its message.
    pub async fn refuse(
        &self,
        identity: &Identity,
        role: Role,
        connection: &str,
        action: &str,
    ) -> String {
        let groups = self.groups(role, connection);
        let message = format!(
            "`{}` may not {action}: that needs the `{}` role on `{connection}`, held by {}; your groups: {}",
            identity.subject,
            role.name(),
            if groups.is_empty() {
                "no group".to_string()
            } else {
                format!("groups {}", groups.join(", "))
            },
            if identity.groups.is_empty() {
                "none".to_string()
            } else {
                identity.groups.join(", ")
            },
        );
        self.record(identity, role, connection, action, &message)
            .await;
        message
    }

    /// Records that `identity` was refused `action` for want of `role`, with `message`.
    pub async fn record(
        &self,
        identity: &Identity,
        role: Role,
        connection: &str,
        action: &str,
        message: &str,
    ) {
        self.record_refusal(identity, Some(role), connection, action, message)
            .await;
    }

    /// Records that `identity` was refused `action` on `connection` because the connection
    /// does not allow it (whatever the roles), with `message`.
    pub async fn record_not_allowed(
        &self,
        identity: &Identity,
        connection: &str,
        action: &str,
        message: &str,
    ) {
        self.record_refusal(identity, None, connection, action, message)
            .await;
    }

    async fn record_refusal(
        &self,
        identity: &Identity,
        role: Option<Role>,
        connection: &str,
        action: &str,
        message: &str,
    ) {
        let role = role.map(Role::name);
        tracing::warn!(subject = %identity.subject, ?role, connection, action, "refused");
        let labels = sluice_core::metrics::labels(&[("role", role.unwrap_or("none"))]);
        sluice_core::metrics::count(sluice_core::metrics::REFUSALS, &labels, 1);
        let meta = json!({
            "subject": identity.subject,
            "groups": identity.groups,
            "action": action,
            "role": role,
            "connection": connection,
        });
        let event = NewEvent {
            payload: message.as_bytes().to_vec(),
            ..NewEvent::gateway("refusal", &meta)
        };
        if let Err(e) = self.recorder.enqueue(event).await {
            tracing::error!(error = %e, "cannot record a refusal");
        }
    }
}
