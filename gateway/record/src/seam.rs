//! The seam between the gateway and where its record is kept: everything the engine asks of
//! the record, as a trait. [`Store`] (redb, one file) implements it; a second backend (a
//! PostgreSQL store shared by several gateways) implements the same and keeps the same
//! invariants: one chain, append-only, each commit ending with a signed head.

use std::collections::HashSet;
use std::time::Duration;

use ed25519_dalek::SigningKey;

use super::{
    Compacted, NewEvent, Purged, RecordError, Recorded, RetentionRules, SessionSummary, SignedHead,
    Store, VerifyOptions, VerifyReport,
};

/// The record as the gateway uses it. Every method is safe to call from any thread.
pub trait Record: Send + Sync + std::fmt::Debug {
    /// Appends `events` in one durable commit; returns their indices.
    fn append(&self, events: &[NewEvent]) -> Result<Vec<u64>, RecordError>;
    /// Announces `new` as the signing key, in an entry signed by the current one.
    fn rotate_key(&self, new: SigningKey) -> Result<u64, RecordError>;
    /// The key that signs the heads now.
    fn public_key(&self) -> [u8; 32];
    /// The index the next entry will get.
    fn next_index(&self) -> u64;
    /// Waits up to `timeout` until entry `index` exists; whether it does.
    fn wait_for(&self, index: u64, timeout: Duration) -> bool;
    /// Up to `max` entries from index `from` on, with their payloads.
    fn entries_from(&self, from: u64, max: usize) -> Result<Vec<Recorded>, RecordError>;
    fn entry(&self, index: u64) -> Result<Option<Recorded>, RecordError>;
    /// The first signed head at or after `index`.
    fn covering_head(&self, index: u64) -> Result<Option<SignedHead>, RecordError>;
    fn head(&self) -> Result<Option<SignedHead>, RecordError>;
    fn sessions(&self) -> Result<Vec<SessionSummary>, RecordError>;
    /// Every session's index row as stored, newest first, not checked against the chain:
    /// to narrow a search cheaply. Whatever is shown of one is read again with `session`.
    fn session_rows(&self) -> Result<Vec<SessionSummary>, RecordError>;
    fn session(&self, id: &str) -> Result<Option<SessionSummary>, RecordError>;
    fn session_events(&self, id: &str) -> Result<Vec<Recorded>, RecordError>;
    /// Up to `max` entries of session `id` within `range`: a long session a page at a time.
    fn session_page(
        &self,
        id: &str,
        range: std::ops::RangeInclusive<u64>,
        max: usize,
    ) -> Result<Vec<Recorded>, RecordError>;
    fn sink_cursor(&self, name: &str) -> Result<Option<u64>, RecordError>;
    /// Takes or renews this gateway's lease on `name` (a sink): whether it holds it now.
    /// Gateways sharing a record run each sink once, on the lease's holder; a lease that is
    /// not renewed lapses and another gateway takes it. One gateway alone always holds it.
    fn lease(&self, _name: &str) -> Result<bool, RecordError> {
        Ok(true)
    }
    /// Gives the lease on `name` up (the sink stopped here).
    fn release(&self, _name: &str) {}
    fn set_sink_cursor(&self, name: &str, next: u64) -> Result<(), RecordError>;
    /// Stores a review's row (its state is in the chain first).
    fn put_review(&self, id: &str, review: &[u8]) -> Result<(), RecordError>;
    fn reviews(&self) -> Result<Vec<Vec<u8>>, RecordError>;
    /// Stores (or, with `None`, removes) a runtime connection's row.
    fn put_connection(&self, name: &str, row: Option<&[u8]>) -> Result<(), RecordError>;
    fn connections(&self) -> Result<Vec<(String, Vec<u8>)>, RecordError>;
    /// Deletes expired payloads with the chained entry that lists them, in one commit.
    fn purge(
        &self,
        rules: &RetentionRules,
        now_ms: u64,
        live: &HashSet<String>,
        by: &str,
    ) -> Result<Purged, RecordError>;
    /// Gives the space of purged payloads back.
    fn compact(&self) -> Result<Compacted, RecordError>;
    fn verify(&self, options: VerifyOptions) -> VerifyReport;
    /// Refuses every later write; what is committed stays.
    fn close(&self);
}

/// A gateway's place among several that share one record: it beats while it runs, and a
/// node whose beat lapses is handed to exactly one survivor, which closes its sessions.
pub trait Membership: Send + Sync + std::fmt::Debug {
    /// This node's name.
    fn node(&self) -> &str;
    /// The key auditors trust for every node's heads: the cluster key's public half.
    fn trusted_key(&self) -> [u8; 32];
    /// Says this node is alive. Returns the nodes whose beat lapsed that this node now answers
    /// for: each lapsed node is handed to one node only.
    fn beat(&self) -> Result<Vec<String>, RecordError>;
    /// This node stopped cleanly (its sessions closed): nobody needs to answer for it.
    fn leave(&self) -> Result<(), RecordError>;
    /// Whether this node, when it started, took over its own earlier run that stopped without
    /// leaving and that no survivor answered for: then it closes that run's sessions itself.
    fn inherited(&self) -> bool;
    /// Sessions open on the other live nodes, with the node that holds each.
    fn live_elsewhere(&self) -> Result<Vec<(String, SessionSummary)>, RecordError>;
    /// The other nodes not declared gone (one killed a moment ago may still be listed).
    fn other_nodes(&self) -> Result<Vec<String>, RecordError>;
    /// Every node that ever joined, this one too: when each last beat, when it was declared
    /// gone (or left), and how many live sessions it holds.
    fn nodes(&self) -> Result<Vec<NodeStatus>, RecordError>;
    /// Sends `message` (JSON) to node `node` (`*`: every other node); it arrives in that
    /// node's inbox while it runs.
    fn tell(&self, node: &str, message: &serde_json::Value) -> Result<(), RecordError>;
    /// What other nodes tell this one, as it arrives. Call once.
    fn inbox(&self) -> std::sync::mpsc::Receiver<serde_json::Value>;
    /// Says where other nodes reach this one: its gateway address and the SHA-256 of the
    /// certificate it serves there (they pin it).
    fn advertise(&self, address: &str, certificate_sha256: [u8; 32]) -> Result<(), RecordError>;
    /// How to reach live node `node`, and the key it signs with; `None` once it is gone.
    fn peer(&self, node: &str) -> Result<Option<Peer>, RecordError>;
    /// The agents' rows (enrollments), by name.
    fn agents(&self) -> Result<Vec<(String, Vec<u8>)>, RecordError>;
    /// Writes agent `name`'s row if its row is still `expected` (`None`: no row): false when
    /// another node changed it first.
    fn put_agent(
        &self,
        name: &str,
        row: &[u8],
        expected: Option<&[u8]>,
    ) -> Result<bool, RecordError>;
    /// This node holds (or no longer holds) agent `agent`'s tunnel.
    fn hold_tunnel(&self, agent: &str, held: bool) -> Result<(), RecordError>;
    /// Which live node holds each connected agent's tunnel.
    fn tunnels(&self) -> Result<Vec<(String, String)>, RecordError>;
    /// `message` signed with this node's key (the one `peer` gives the other nodes).
    fn sign(&self, message: &[u8]) -> [u8; 64];
}

/// Another gateway node, as this one reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    /// `host:port` of its gateway listener.
    pub address: String,
    /// The SHA-256 of the certificate it serves there.
    pub certificate_sha256: [u8; 32],
    /// The key it signs heads (and its requests to other nodes) with.
    pub public_key: [u8; 32],
}

impl Record for Store {
    fn append(&self, events: &[NewEvent]) -> Result<Vec<u64>, RecordError> {
        Store::append(self, events)
    }
    fn rotate_key(&self, new: SigningKey) -> Result<u64, RecordError> {
        Store::rotate_key(self, new)
    }
    fn public_key(&self) -> [u8; 32] {
        Store::public_key(self)
    }
    fn next_index(&self) -> u64 {
        Store::next_index(self)
    }
    fn wait_for(&self, index: u64, timeout: Duration) -> bool {
        Store::wait_for(self, index, timeout)
    }
    fn entries_from(&self, from: u64, max: usize) -> Result<Vec<Recorded>, RecordError> {
        Store::entries_from(self, from, max)
    }
    fn entry(&self, index: u64) -> Result<Option<Recorded>, RecordError> {
        Store::entry(self, index)
    }
    fn covering_head(&self, index: u64) -> Result<Option<SignedHead>, RecordError> {
        Store::covering_head(self, index)
    }
    fn head(&self) -> Result<Option<SignedHead>, RecordError> {
        Store::head(self)
    }
    fn sessions(&self) -> Result<Vec<SessionSummary>, RecordError> {
        Store::sessions(self)
    }
    fn session_rows(&self) -> Result<Vec<SessionSummary>, RecordError> {
        Store::session_rows(self)
    }
    fn session(&self, id: &str) -> Result<Option<SessionSummary>, RecordError> {
        Store::session(self, id)
    }
    fn session_events(&self, id: &str) -> Result<Vec<Recorded>, RecordError> {
        Store::session_events(self, id)
    }
    fn session_page(
        &self,
        id: &str,
        range: std::ops::RangeInclusive<u64>,
        max: usize,
    ) -> Result<Vec<Recorded>, RecordError> {
        Store::session_page(self, id, range, max)
    }
    fn sink_cursor(&self, name: &str) -> Result<Option<u64>, RecordError> {
        Store::sink_cursor(self, name)
    }
    fn set_sink_cursor(&self, name: &str, next: u64) -> Result<(), RecordError> {
        Store::set_sink_cursor(self, name, next)
    }
    fn put_review(&self, id: &str, review: &[u8]) -> Result<(), RecordError> {
        Store::put_review(self, id, review)
    }
    fn reviews(&self) -> Result<Vec<Vec<u8>>, RecordError> {
        Store::reviews(self)
    }
    fn put_connection(&self, name: &str, row: Option<&[u8]>) -> Result<(), RecordError> {
        Store::put_connection(self, name, row)
    }
    fn connections(&self) -> Result<Vec<(String, Vec<u8>)>, RecordError> {
        Store::connections(self)
    }
    fn purge(
        &self,
        rules: &RetentionRules,
        now_ms: u64,
        live: &HashSet<String>,
        by: &str,
    ) -> Result<Purged, RecordError> {
        Store::purge(self, rules, now_ms, live, by)
    }
    fn compact(&self) -> Result<Compacted, RecordError> {
        Store::compact(self)
    }
    fn verify(&self, options: VerifyOptions) -> VerifyReport {
        Store::verify(self, options)
    }
    fn close(&self) {
        Store::close(self)
    }
}

/// One node of a shared record, as `Membership::nodes` reports it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub beat_ms: u64,
    /// When it left or was declared gone; `None` while it counts as live.
    pub gone_ms: Option<u64>,
    /// Live sessions it holds.
    pub sessions: u64,
}
