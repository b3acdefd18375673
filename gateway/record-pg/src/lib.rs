//! The record kept in PostgreSQL: one chain shared by every gateway node that points at the
//! same database. It implements the same [`Record`] seam as the embedded store, with the same
//! invariants, and stores the same bytes (so a store copies into it, and exports out of it,
//! with its chain intact).
//!
//! Architecture invariants:
//! - This is the only crate on a PostgreSQL client (Cargo enforces it).
//! - One order: every commit (a node's group of events) locks the chain's head row, chains
//!   its events after it, writes them, their payloads, the sessions they touch and a signed
//!   head, and moves the head, in one transaction. Two nodes appending at once queue on that
//!   row; the chain never forks, and throughput grows with the size of each group.
//! - Each node signs the heads of its own commits with its own key, announced in the chain by
//!   a `node-key` entry that the cluster key (shared configuration) endorses; verify accepts
//!   heads by any announced key and trusts those a trusted key endorsed.
//! - Retention deletes payloads, never entries, in the transaction that chains the
//!   `retention` entry listing them.
//! - A lost connection is an error for that call (strict recording refuses the frame), and
//!   the next call reconnects.

mod bucket;
mod mover;
mod pool;
mod schema;
mod tables;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use postgres::{Client, Transaction};
use sluice_record::link::{Linked, link};
use sluice_record::{
    Compacted, Hash, NODE_KEY_KIND, NONCE_LEN, NewEvent, NodeKey, Purged, Record, RecordError,
    Recorded, RetentionRules, SessionSummary, SignedHead, VerifyOptions, VerifyReport,
    decode_stored, kinds,
};

pub use bucket::BucketSettings;
use bucket::{Body, Bucket, Objects};
pub use mover::MoveSettings;
use pool::{Failed, Pool};
pub use tables::{export_to_file, import, verify_url};

/// How this node reaches the shared record.
#[derive(Clone)]
pub struct PgOptions {
    /// A PostgreSQL URL (`postgres://user:password@host:port/db`).
    pub url: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// The key this node signs its commits' heads with.
    pub signer: SigningKey,
    /// The cluster key, shared by every node: it endorses each node's key.
    pub cluster: SigningKey,
    /// A node whose last beat is older than this is declared gone.
    pub node_timeout: Duration,
    /// Payloads move to this bucket once durable here (`[store.payloads]`); `None` keeps them
    /// in PostgreSQL.
    pub payloads: Option<MoveSettings>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

pub struct PgStore {
    /// The database as errors name it: scheme, hosts and database, never the password.
    label: String,
    node: String,
    signer: SigningKey,
    cluster_public: [u8; 32],
    /// Appends and other writes, one at a time from this node.
    writer: Pool,
    readers: Pool,
    /// The newest entry this node knows of (its own commits, and what it read since).
    last: Mutex<Option<u64>>,
    appended: Condvar,
    closed: Arc<AtomicBool>,
    /// For the inbox's own connection.
    target: pool::Target,
    /// This run of the node (its name may outlive a run).
    instance: String,
    node_timeout: Duration,
    /// Took over its own earlier run, which stopped without leaving and was not answered for.
    inherited: bool,
    /// Where moved payloads are read from.
    bucket: Option<Arc<Bucket>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.label)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// The connections each node keeps for reading.
const READERS: usize = 3;
/// How often a waiting reader (a sink) looks for other nodes' commits.
const POLL: Duration = Duration::from_millis(100);

/// A PostgreSQL URL parsed, with how errors name it (never with the password).
pub fn parse_url(url: &str) -> Result<(pool::Target, String), RecordError> {
    let target = pool::Target::parse(url).map_err(|message| RecordError::Io {
        path: "postgres".into(),
        message,
    })?;
    let config = &target.config;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let label = format!(
        "postgres://{}:{port}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or_default()
    );
    Ok((target, label))
}

impl PgStore {
    /// Connects, brings the schema up to date, takes this node's name (waiting, up to the
    /// node timeout, for an earlier run that still seems alive to lapse), and announces this
    /// node's key in the chain unless it already is.
    pub fn open(options: PgOptions) -> Result<PgStore, RecordError> {
        let (target, label) = parse_url(&options.url)?;
        let bucket = options
            .payloads
            .as_ref()
            .map(|p| Bucket::new(&p.bucket).map(Arc::new))
            .transpose()
            .map_err(|message| RecordError::Io {
                path: label.clone(),
                message,
            })?;
        let mut instance = [0u8; 8];
        getrandom::fill(&mut instance).map_err(|e| RecordError::Io {
            path: label.clone(),
            message: format!("no randomness: {e}"),
        })?;
        let mut store = PgStore {
            writer: Pool::new(target.clone(), 1, "record-pg-writer"),
            readers: Pool::new(target.clone(), READERS, "record-pg-reader"),
            label,
            node: options.node.clone(),
            signer: options.signer.clone(),
            cluster_public: options.cluster.verifying_key().to_bytes(),
            last: Mutex::new(None),
            appended: Condvar::new(),
            closed: Arc::new(AtomicBool::new(false)),
            target: target.clone(),
            instance: hex::encode(instance),
            node_timeout: options.node_timeout,
            inherited: false,
            bucket: bucket.clone(),
        };
        store.write(schema::migrate)?;
        store.inherited = store.take_name()?;
        store.announce(&options.cluster)?;
        store.refresh_last()?;
        if let (Some(bucket), Some(settings)) = (bucket, options.payloads) {
            mover::Mover {
                pool: mover::pool(&target),
                bucket,
                settings,
                signer: store.signer.clone(),
                node: store.node.clone(),
                holder: store.holder(),
                lease_ttl: store.node_timeout,
                closed: store.closed.clone(),
            }
            .spawn()
            .map_err(|e| RecordError::Io {
                path: store.label.clone(),
                message: format!("cannot start the payload mover: {e}"),
            })?;
        }
        Ok(store)
    }

    /// Takes this node's name for this run. Another run that beats under it is waited for
    /// (it may be a crashed run whose beat has not lapsed yet); one still beating after the
    /// node timeout is refused: two live nodes never share a name. Returns whether this run
    /// took over an earlier one that stopped without leaving and that no survivor claimed.
    fn take_name(&self) -> Result<bool, RecordError> {
        let deadline = Instant::now() + self.node_timeout + POLL;
        loop {
            let (node, instance) = (self.node.clone(), self.instance.clone());
            let timeout = self.node_timeout.as_millis() as i64;
            let taken: Option<bool> = self.write(move |c| {
                let now = now_ms();
                let mut txn = c.transaction()?;
                let row = txn.query_opt(
                    "SELECT beat_ms, gone_ms FROM sluice.nodes WHERE node = $1 FOR UPDATE",
                    &[&node],
                )?;
                let inherited = match row {
                    None => false,
                    Some(row) => {
                        let (beat, gone): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
                        match (beat, gone) {
                            (Some(beat), None) if now - beat < timeout => return Ok(None),
                            (Some(_), None) => true,
                            _ => false,
                        }
                    }
                };
                txn.execute(
                    "UPDATE sluice.nodes SET instance = $2, beat_ms = $3, gone_ms = NULL
                     WHERE node = $1",
                    &[&node, &instance, &now],
                )?;
                txn.commit()?;
                Ok(Some(inherited))
            })?;
            if let Some(inherited) = taken {
                return Ok(inherited);
            }
            if Instant::now() >= deadline {
                return Err(RecordError::Io {
                    path: self.label.clone(),
                    message: format!(
                        "node `{}` is running elsewhere (it beats in the shared record): give this gateway another `[store] node` name",
                        self.node
                    ),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The database as messages name it.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The cluster key's public half: what verify trusts for every node.
    pub fn cluster_public_key(&self) -> [u8; 32] {
        self.cluster_public
    }

    fn error(&self, failed: Failed) -> RecordError {
        match failed {
            Failed::Corrupt(message) => RecordError::Corrupt {
                path: self.label.clone(),
                message,
            },
            other => RecordError::Io {
                path: self.label.clone(),
                message: other.to_string(),
            },
        }
    }

    fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Client) -> Result<T, Failed> + Send + 'static,
    ) -> Result<T, RecordError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(self.error(Failed::Closed));
        }
        self.writer.run(job).map_err(|e| self.error(e))
    }

    fn read<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Client) -> Result<T, Failed> + Send + 'static,
    ) -> Result<T, RecordError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(self.error(Failed::Closed));
        }
        self.readers.run(job).map_err(|e| self.error(e))
    }

    /// Announces this node's key, endorsed by the cluster key, unless the chain has it.
    fn announce(&self, cluster: &SigningKey) -> Result<(), RecordError> {
        let node = self.node.clone();
        let signer = self.signer.clone();
        let public = signer.verifying_key().to_bytes();
        let announcement = NodeKey::endorse(cluster, &node, public);
        let instance = self.instance.clone();
        let head = self.write(move |c| {
            let mut txn = c.transaction()?;
            lock_head(&mut txn)?;
            let known: Option<Vec<u8>> = txn
                .query_opt(
                    "SELECT public_key FROM sluice.nodes WHERE node = $1",
                    &[&node],
                )?
                .map(|row| row.get(0));
            if known.as_deref() == Some(&public[..]) {
                return Ok(None);
            }
            let meta =
                serde_json::to_value(&announcement).map_err(|e| Failed::Corrupt(e.to_string()))?;
            let event = NewEvent::gateway(NODE_KEY_KIND, &meta);
            let linked = append_in(&mut txn, std::slice::from_ref(&event), &signer, &node)?;
            txn.execute(
                "INSERT INTO sluice.nodes (node, public_key, started_ms, instance, beat_ms)
                 VALUES ($1, $2, $3, $4, $3)
                 ON CONFLICT (node) DO UPDATE SET public_key = $2, started_ms = $3",
                &[&node, &&public[..], &(event.time_ms as i64), &instance],
            )?;
            txn.commit()?;
            Ok(linked.head)
        })?;
        if let Some(head) = head {
            tracing::info!(node = %self.node, entry = head.index, "node key announced in the record");
            self.committed(head.index);
        }
        Ok(())
    }

    fn committed(&self, index: u64) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|l| l < index) {
            *last = Some(index);
        }
        self.appended.notify_all();
    }

    /// Reads the chain's end from the database.
    fn refresh_last(&self) -> Result<Option<u64>, RecordError> {
        let last = self.read(|c| {
            let row = c.query_one("SELECT idx FROM sluice.chain_head WHERE one = 1", &[])?;
            Ok(row.get::<_, Option<i64>>(0).map(|i| i as u64))
        })?;
        if let Some(index) = last {
            self.committed(index);
        }
        Ok(last)
    }

    /// Who holds leases for this run of this node.
    fn holder(&self) -> String {
        format!("{}/{}", self.node, self.instance)
    }

    fn known_last(&self) -> Option<u64> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Up to `max` entries (with payloads) whose index is in `from..=to`, of `session` when
    /// given, in order.
    fn read_entries(
        &self,
        from: u64,
        to: u64,
        session: Option<String>,
        max: usize,
    ) -> Result<Vec<Recorded>, RecordError> {
        let (from, to, max) = (to_i64(from), to_i64(to), to_i64(max as u64));
        let rows = self.read(move |c| {
            let rows = match &session {
                Some(id) => c.query(
                    "SELECT e.stored, p.body, p.object, p.at, p.len FROM sluice.entries e
                     LEFT JOIN sluice.payloads p ON p.idx = e.idx
                     WHERE e.session = $1 AND e.idx BETWEEN $2 AND $3 ORDER BY e.idx LIMIT $4",
                    &[id, &from, &to, &max],
                )?,
                None => c.query(
                    "SELECT e.stored, p.body, p.object, p.at, p.len FROM sluice.entries e
                     LEFT JOIN sluice.payloads p ON p.idx = e.idx
                     WHERE e.idx BETWEEN $1 AND $2 ORDER BY e.idx LIMIT $3",
                    &[&from, &to, &max],
                )?,
            };
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let stored: Vec<u8> = row.get(0);
                let entry = decode_stored(&stored).map_err(Failed::Corrupt)?;
                if session.as_ref().is_some_and(|id| *id != entry.session) {
                    continue;
                }
                let body = Body::from_columns(row.get(1), row.get(2), row.get(3), row.get(4));
                out.push((entry, body));
            }
            Ok(out)
        })?;
        // Moved payloads are fetched here, off the database's connections.
        let mut objects = Objects::new(self.bucket.as_deref());
        rows.into_iter()
            .map(|(entry, body)| {
                let stored = match body {
                    Some(body) => objects
                        .stored(body)
                        .map_err(|why| self.error(Failed::Bucket(why)))?,
                    None => None,
                };
                Ok(Recorded {
                    entry,
                    payload: stored.map(|p| p.get(NONCE_LEN..).unwrap_or_default().to_vec()),
                })
            })
            .collect()
    }

    fn named_rows(&self, sql: &'static str) -> Result<Vec<(String, Vec<u8>)>, RecordError> {
        self.read(move |c| {
            Ok(c.query(sql, &[])?
                .into_iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect())
        })
    }

    /// Every session's summary (or just `id`'s), its identity read from its opening entry.
    fn checked_sessions(&self, id: Option<String>) -> Result<Vec<SessionSummary>, RecordError> {
        let mut all = self.read(move |c| {
            let rows = c.query(
                "SELECT s.id, s.row, e.stored FROM sluice.sessions s
                 LEFT JOIN sluice.entries e ON e.idx = s.first_idx
                 WHERE $1::text IS NULL OR s.id = $1",
                &[&id],
            )?;
            rows.into_iter()
                .map(|row| {
                    let id: String = row.get(0);
                    let index_row: Vec<u8> = row.get(1);
                    let opening: Option<Vec<u8>> = row.get(2);
                    SessionSummary::from_index_row(&id, &index_row, opening.as_deref())
                        .map_err(Failed::Corrupt)
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        SessionSummary::newest_first(&mut all);
        Ok(all)
    }
}

fn now_ms() -> i64 {
    sluice_core::now_ms() as i64
}

impl sluice_record::Membership for PgStore {
    fn node(&self) -> &str {
        &self.node
    }

    fn trusted_key(&self) -> [u8; 32] {
        self.cluster_public
    }

    fn beat(&self) -> Result<Vec<String>, RecordError> {
        let (node, instance) = (self.node.clone(), self.instance.clone());
        let timeout = self.node_timeout.as_millis() as i64;
        let (beating, claimed) = self.write(move |c| {
            let now = now_ms();
            let mut txn = c.transaction()?;
            let beating = txn.execute(
                "UPDATE sluice.nodes SET beat_ms = $3 WHERE node = $1 AND instance = $2",
                &[&node, &instance, &now],
            )?;
            // Row locks make each lapsed node one survivor's: the first to claim it.
            let claimed = txn
                .query(
                    "UPDATE sluice.nodes SET gone_ms = $2
                     WHERE node <> $1 AND gone_ms IS NULL AND beat_ms < $2::bigint - $3::bigint
                     RETURNING node",
                    &[&node, &now, &timeout],
                )?
                .into_iter()
                .map(|row| row.get(0))
                .collect::<Vec<String>>();
            txn.commit()?;
            Ok((beating, claimed))
        })?;
        if beating == 0 {
            // Another run took this name (this one was declared gone): stop recording as it.
            tracing::error!(node = %self.node, "this node's name was taken by another run; it no longer beats");
        }
        Ok(claimed)
    }

    fn leave(&self) -> Result<(), RecordError> {
        let (node, instance) = (self.node.clone(), self.instance.clone());
        self.write(move |c| {
            c.execute(
                "UPDATE sluice.nodes SET gone_ms = $3 WHERE node = $1 AND instance = $2",
                &[&node, &instance, &now_ms()],
            )?;
            Ok(())
        })
    }

    fn inherited(&self) -> bool {
        self.inherited
    }

    fn live_elsewhere(&self) -> Result<Vec<(String, SessionSummary)>, RecordError> {
        let node = self.node.clone();
        self.read(move |c| {
            let rows = c.query(
                "SELECT l.node, s.id, s.row, e.stored FROM sluice.live l
                 JOIN sluice.nodes n ON n.node = l.node AND n.gone_ms IS NULL
                 JOIN sluice.sessions s ON s.id = l.session
                 LEFT JOIN sluice.entries e ON e.idx = s.first_idx
                 WHERE l.node <> $1",
                &[&node],
            )?;
            rows.into_iter()
                .map(|row| {
                    let id: String = row.get(1);
                    let index_row: Vec<u8> = row.get(2);
                    let opening: Option<Vec<u8>> = row.get(3);
                    let summary =
                        SessionSummary::from_index_row(&id, &index_row, opening.as_deref())
                            .map_err(Failed::Corrupt)?;
                    Ok((row.get(0), summary))
                })
                .collect()
        })
    }

    fn other_nodes(&self) -> Result<Vec<String>, RecordError> {
        let node = self.node.clone();
        self.read(move |c| {
            let rows = c.query(
                "SELECT node FROM sluice.nodes WHERE gone_ms IS NULL AND node <> $1 ORDER BY node",
                &[&node],
            )?;
            Ok(rows.into_iter().map(|row| row.get(0)).collect())
        })
    }

    fn nodes(&self) -> Result<Vec<sluice_record::NodeStatus>, RecordError> {
        self.read(|c| {
            let rows = c.query(
                "SELECT n.node, n.beat_ms, n.gone_ms,
                        (SELECT count(*) FROM sluice.live l WHERE l.node = n.node AND n.gone_ms IS NULL)
                 FROM sluice.nodes n ORDER BY n.node",
                &[],
            )?;
            Ok(rows
                .into_iter()
                .map(|row| sluice_record::NodeStatus {
                    node: row.get(0),
                    beat_ms: row.get::<_, Option<i64>>(1).unwrap_or(0).max(0) as u64,
                    gone_ms: row.get::<_, Option<i64>>(2).map(|g| g.max(0) as u64),
                    sessions: row.get::<_, i64>(3).max(0) as u64,
                })
                .collect())
        })
    }

    fn tell(&self, node: &str, message: &serde_json::Value) -> Result<(), RecordError> {
        let payload =
            serde_json::json!({"to": node, "from": self.node, "message": message}).to_string();
        self.write(move |c| {
            c.execute("SELECT pg_notify('sluice_nodes', $1)", &[&payload])?;
            Ok(())
        })
    }

    fn inbox(&self) -> std::sync::mpsc::Receiver<serde_json::Value> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (target, node, closed) = (self.target.clone(), self.node.clone(), self.closed.clone());
        let spawned = std::thread::Builder::new()
            .name("record-pg-inbox".into())
            .spawn(move || listen(&target, &node, &closed, &tx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the node's inbox");
        }
        rx
    }

    fn advertise(&self, address: &str, certificate_sha256: [u8; 32]) -> Result<(), RecordError> {
        let (node, address) = (self.node.clone(), address.to_string());
        self.write(move |c| {
            c.execute(
                "UPDATE sluice.nodes SET address = $2, certificate_sha256 = $3 WHERE node = $1",
                &[&node, &address, &&certificate_sha256[..]],
            )?;
            Ok(())
        })
    }

    fn peer(&self, node: &str) -> Result<Option<sluice_record::Peer>, RecordError> {
        let node = node.to_string();
        self.read(move |c| {
            let row = c.query_opt(
                "SELECT address, certificate_sha256, public_key FROM sluice.nodes
                 WHERE node = $1 AND gone_ms IS NULL AND address IS NOT NULL",
                &[&node],
            )?;
            let Some(row) = row else {
                return Ok(None);
            };
            let key = |column: usize| -> Result<[u8; 32], Failed> {
                row.get::<_, Vec<u8>>(column)
                    .try_into()
                    .map_err(|_| Failed::Corrupt(format!("node {node}: a malformed key")))
            };
            Ok(Some(sluice_record::Peer {
                address: row.get(0),
                certificate_sha256: key(1)?,
                public_key: key(2)?,
                node: node.clone(),
            }))
        })
    }

    fn agents(&self) -> Result<Vec<(String, Vec<u8>)>, RecordError> {
        self.named_rows("SELECT name, row FROM sluice.agents ORDER BY name")
    }

    fn put_agent(
        &self,
        name: &str,
        row: &[u8],
        expected: Option<&[u8]>,
    ) -> Result<bool, RecordError> {
        let (name, row, expected) = (name.to_string(), row.to_vec(), expected.map(<[u8]>::to_vec));
        self.write(move |c| {
            let written = match expected {
                None => c.execute(
                    "INSERT INTO sluice.agents (name, row) VALUES ($1, $2)
                     ON CONFLICT (name) DO NOTHING",
                    &[&name, &row],
                )?,
                Some(expected) => c.execute(
                    "UPDATE sluice.agents SET row = $2 WHERE name = $1 AND row = $3",
                    &[&name, &row, &expected],
                )?,
            };
            Ok(written == 1)
        })
    }

    fn hold_tunnel(&self, agent: &str, held: bool) -> Result<(), RecordError> {
        let (agent, node) = (agent.to_string(), self.node.clone());
        self.write(move |c| {
            if held {
                c.execute(
                    "INSERT INTO sluice.agent_tunnels (agent, node, since_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (agent) DO UPDATE SET node = $2, since_ms = $3",
                    &[&agent, &node, &now_ms()],
                )?;
            } else {
                c.execute(
                    "DELETE FROM sluice.agent_tunnels WHERE agent = $1 AND node = $2",
                    &[&agent, &node],
                )?;
            }
            Ok(())
        })
    }

    fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.signer.sign(message).to_bytes()
    }

    fn tunnels(&self) -> Result<Vec<(String, String)>, RecordError> {
        self.read(|c| {
            let rows = c.query(
                "SELECT t.agent, t.node FROM sluice.agent_tunnels t
                 JOIN sluice.nodes n ON n.node = t.node AND n.gone_ms IS NULL
                 ORDER BY t.agent",
                &[],
            )?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }
}

/// Listens for what other nodes tell `node`, on a connection of its own (made again when it
/// breaks), until the record closes or nobody reads the inbox.
fn listen(
    target: &pool::Target,
    node: &str,
    closed: &AtomicBool,
    inbox: &std::sync::mpsc::Sender<serde_json::Value>,
) {
    use postgres::fallible_iterator::FallibleIterator;
    while !closed.load(Ordering::SeqCst) {
        let mut client = match target.connect() {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %pool::describe(&e), "node inbox: cannot connect; trying again");
                std::thread::sleep(POLL * 10);
                continue;
            }
        };
        if let Err(e) = client.batch_execute("LISTEN sluice_nodes") {
            tracing::warn!(error = %pool::describe(&e), "node inbox: cannot listen; trying again");
            std::thread::sleep(POLL * 10);
            continue;
        }
        loop {
            if closed.load(Ordering::SeqCst) {
                return;
            }
            let mut notifications = client.notifications();
            let mut arrived = notifications.timeout_iter(POLL * 5);
            match arrived.next() {
                Ok(None) => {}
                Ok(Some(note)) => {
                    let Ok(parsed) = serde_json::from_str::<serde_json::Value>(note.payload())
                    else {
                        continue;
                    };
                    let to_us =
                        parsed["to"] == node || (parsed["to"] == "*" && parsed["from"] != node);
                    if to_us && inbox.send(parsed["message"].clone()).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %pool::describe(&e), "node inbox: the connection broke; listening again");
                    break;
                }
            }
        }
    }
}

/// Takes or renews the lease `name` for `holder`, unless another holder's is still running.
fn take_lease(c: &mut Client, name: &str, holder: &str, ttl: Duration) -> Result<bool, Failed> {
    let (now, ttl) = (now_ms(), ttl.as_millis() as i64);
    let held = c.query_opt(
        "INSERT INTO sluice.leases (name, holder, until_ms) VALUES ($1, $2, $3::bigint + $4::bigint)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
         WHERE sluice.leases.holder = excluded.holder OR sluice.leases.until_ms < $3::bigint
         RETURNING holder",
        &[&name, &holder, &now, &ttl],
    )?;
    Ok(held.is_some())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Takes the chain's head row for this transaction: the one place appends queue.
fn lock_head(txn: &mut Transaction<'_>) -> Result<Option<(u64, Hash)>, Failed> {
    let row = txn.query_one(
        "SELECT idx, hash FROM sluice.chain_head WHERE one = 1 FOR UPDATE",
        &[],
    )?;
    let idx: Option<i64> = row.get(0);
    let hash: Option<Vec<u8>> = row.get(1);
    match (idx, hash) {
        (Some(idx), Some(hash)) => {
            let hash: Hash = hash.try_into().map_err(|_| {
                Failed::Corrupt("the chain's head row holds a malformed hash".into())
            })?;
            Ok(Some((idx as u64, hash)))
        }
        _ => Ok(None),
    }
}

/// Chains `events` after the head (locked for the transaction), writes them with their
/// payloads, the sessions they touch and the signed head, and moves the head.
fn append_in<'e>(
    txn: &mut Transaction<'_>,
    events: &'e [NewEvent],
    signer: &SigningKey,
    node: &str,
) -> Result<Linked<'e>, Failed> {
    let last = lock_head(txn)?;
    let first = last.map_or(0, |(index, _)| index + 1);
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e.session.as_str())
        .filter(|s| !s.is_empty())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut existing: HashMap<String, SessionSummary> = HashMap::new();
    if !ids.is_empty() {
        for row in txn.query(
            "SELECT id, row FROM sluice.sessions WHERE id = ANY($1)",
            &[&ids],
        )? {
            let bytes: Vec<u8> = row.get(1);
            let summary =
                serde_json::from_slice(&bytes).map_err(|e| Failed::Corrupt(e.to_string()))?;
            existing.insert(row.get(0), summary);
        }
    }
    let linked = link(last, first, events, signer, |id| Ok(existing.remove(id)))
        .map_err(|e| Failed::Corrupt(e.to_string()))?;
    let Some(head) = &linked.head else {
        return Ok(linked);
    };
    let indices: Vec<i64> = linked.rows.iter().map(|r| r.index as i64).collect();
    let sessions: Vec<&str> = linked.rows.iter().map(|r| r.session).collect();
    let kinds: Vec<&str> = linked.rows.iter().map(|r| r.kind).collect();
    let stored: Vec<&[u8]> = linked.rows.iter().map(|r| r.stored.as_slice()).collect();
    let payloads: Vec<&[u8]> = linked.rows.iter().map(|r| r.payload.as_slice()).collect();
    let touched: Vec<&str> = linked.sessions.iter().map(|s| s.id.as_str()).collect();
    let firsts: Vec<i64> = linked
        .sessions
        .iter()
        .map(|s| s.first_index as i64)
        .collect();
    let rows = linked
        .sessions
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failed::Corrupt(e.to_string()))?;
    // Which node holds each open session: what every node lists as live, and where a kill
    // goes. Kept in the commit that opens or closes the session. One statement sees one
    // snapshot, so a session opened and closed in this same commit is left out of both.
    let closed: Vec<&str> = linked
        .rows
        .iter()
        .filter(|r| r.kind == kinds::SESSION_CLOSE)
        .map(|r| r.session)
        .collect();
    let opened: Vec<&str> = linked
        .rows
        .iter()
        .filter(|r| r.kind == kinds::SESSION_OPEN && !closed.contains(&r.session))
        .map(|r| r.session)
        .collect();
    let encoded = head.encode();
    // Everything the commit writes, in one statement: the head row is held for as few round
    // trips as possible, since every node's commits queue on it.
    txn.execute(
        "WITH entries AS (
             INSERT INTO sluice.entries (idx, session, kind, stored)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[])),
         payloads AS (
             INSERT INTO sluice.payloads (idx, session, body)
             SELECT * FROM unnest($1::bigint[], $2::text[], $5::bytea[])),
         sessions AS (
             INSERT INTO sluice.sessions (id, first_idx, row)
             SELECT * FROM unnest($6::text[], $7::bigint[], $8::bytea[])
             ON CONFLICT (id) DO UPDATE SET row = excluded.row),
         opened AS (
             INSERT INTO sluice.live (session, node) SELECT unnest($9::text[]), $10
             ON CONFLICT (session) DO NOTHING),
         closed AS (DELETE FROM sluice.live WHERE session = ANY($11::text[])),
         checkpoint AS (INSERT INTO sluice.checkpoints (idx, head) VALUES ($12, $13))
         UPDATE sluice.chain_head SET idx = $12, hash = $14, head = $13 WHERE one = 1",
        &[
            &indices,
            &sessions,
            &kinds,
            &stored,
            &payloads,
            &touched,
            &firsts,
            &rows,
            &opened,
            &node,
            &closed,
            &(head.index as i64),
            &encoded,
            &&head.hash[..],
        ],
    )?;
    Ok(linked)
}

impl Record for PgStore {
    fn append(&self, events: &[NewEvent]) -> Result<Vec<u64>, RecordError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let events = events.to_vec();
        let (signer, node) = (self.signer.clone(), self.node.clone());
        let (indices, head) = self.write(move |c| {
            let mut txn = c.transaction()?;
            let linked = append_in(&mut txn, &events, &signer, &node)?;
            txn.commit()?;
            Ok((linked.rows.iter().map(|r| r.index).collect(), linked.head))
        })?;
        if let Some(head) = &head {
            self.committed(head.index);
        }
        Ok(indices)
    }

    fn rotate_key(&self, _new: SigningKey) -> Result<u64, RecordError> {
        Err(RecordError::Io {
            path: self.label.clone(),
            message: "on a shared PostgreSQL record each node signs with its own key: give the node a new key (`record_key`) and restart it, and it announces the new key, endorsed by the cluster key".into(),
        })
    }

    fn public_key(&self) -> [u8; 32] {
        self.signer.verifying_key().to_bytes()
    }

    fn next_index(&self) -> u64 {
        let last = self.refresh_last().ok().flatten().or(self.known_last());
        last.map_or(0, |l| l + 1)
    }

    fn wait_for(&self, index: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.known_last().is_some_and(|l| l >= index) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // Woken by this node's commits; other nodes' are seen at the next look.
            let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let (last, _) = self
                .appended
                .wait_timeout_while(last, left.min(POLL), |l| l.is_none_or(|l| l < index))
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|l| l >= index) {
                return true;
            }
            drop(last);
            if self.refresh_last().is_err() {
                std::thread::sleep(left.min(POLL));
            }
        }
    }

    fn entries_from(&self, from: u64, max: usize) -> Result<Vec<Recorded>, RecordError> {
        self.read_entries(from, u64::MAX, None, max)
    }

    fn entry(&self, index: u64) -> Result<Option<Recorded>, RecordError> {
        Ok(self.read_entries(index, index, None, 1)?.into_iter().next())
    }

    fn covering_head(&self, index: u64) -> Result<Option<SignedHead>, RecordError> {
        let index = to_i64(index);
        let bytes: Option<Vec<u8>> = self.read(move |c| {
            Ok(c.query_opt(
                "SELECT head FROM sluice.checkpoints WHERE idx >= $1 ORDER BY idx LIMIT 1",
                &[&index],
            )?
            .map(|row| row.get(0)))
        })?;
        bytes
            .map(|b| {
                SignedHead::decode(&b).ok_or_else(|| {
                    self.error(Failed::Corrupt(format!(
                        "the head covering entry {index} is malformed"
                    )))
                })
            })
            .transpose()
    }

    fn head(&self) -> Result<Option<SignedHead>, RecordError> {
        let bytes: Option<Vec<u8>> = self.read(|c| {
            Ok(
                c.query_one("SELECT head FROM sluice.chain_head WHERE one = 1", &[])?
                    .get(0),
            )
        })?;
        Ok(bytes.and_then(|b| SignedHead::decode(&b)))
    }

    fn sessions(&self) -> Result<Vec<SessionSummary>, RecordError> {
        self.checked_sessions(None)
    }

    fn session_rows(&self) -> Result<Vec<SessionSummary>, RecordError> {
        let rows = self.named_rows("SELECT id, row FROM sluice.sessions")?;
        let mut all = rows
            .iter()
            .map(|(_, row)| serde_json::from_slice(row))
            .collect::<Result<Vec<SessionSummary>, _>>()
            .map_err(|e| self.error(Failed::Corrupt(e.to_string())))?;
        SessionSummary::newest_first(&mut all);
        Ok(all)
    }

    fn session(&self, id: &str) -> Result<Option<SessionSummary>, RecordError> {
        Ok(self
            .checked_sessions(Some(id.to_string()))?
            .into_iter()
            .next())
    }

    fn session_events(&self, id: &str) -> Result<Vec<Recorded>, RecordError> {
        let Some(summary) = self.session(id)? else {
            return Ok(Vec::new());
        };
        let range = summary.first_index..=summary.last_index;
        self.session_page(id, range, usize::MAX)
    }

    fn session_page(
        &self,
        id: &str,
        range: std::ops::RangeInclusive<u64>,
        max: usize,
    ) -> Result<Vec<Recorded>, RecordError> {
        self.read_entries(*range.start(), *range.end(), Some(id.to_string()), max)
    }

    fn sink_cursor(&self, name: &str) -> Result<Option<u64>, RecordError> {
        let name = name.to_string();
        self.read(move |c| {
            Ok(c.query_opt(
                "SELECT next FROM sluice.sink_cursors WHERE name = $1",
                &[&name],
            )?
            .map(|row| row.get::<_, i64>(0) as u64))
        })
    }

    fn lease(&self, name: &str) -> Result<bool, RecordError> {
        let (name, holder, ttl) = (name.to_string(), self.holder(), self.node_timeout);
        self.write(move |c| take_lease(c, &name, &holder, ttl))
    }

    fn release(&self, name: &str) {
        let (key, holder) = (name.to_string(), self.holder());
        let released = self.write(move |c| {
            c.execute(
                "DELETE FROM sluice.leases WHERE name = $1 AND holder = $2",
                &[&key, &holder],
            )?;
            Ok(())
        });
        if let Err(e) = released {
            tracing::warn!(lease = %name, error = %e, "cannot give the lease up; it lapses");
        }
    }

    fn set_sink_cursor(&self, name: &str, next: u64) -> Result<(), RecordError> {
        let (name, next) = (name.to_string(), to_i64(next));
        self.write(move |c| {
            c.execute(
                "INSERT INTO sluice.sink_cursors (name, next) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET next = $2",
                &[&name, &next],
            )?;
            Ok(())
        })
    }

    fn put_review(&self, id: &str, review: &[u8]) -> Result<(), RecordError> {
        let (id, review) = (id.to_string(), review.to_vec());
        self.write(move |c| {
            c.execute(
                "INSERT INTO sluice.reviews (id, row) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET row = $2",
                &[&id, &review],
            )?;
            Ok(())
        })
    }

    fn reviews(&self) -> Result<Vec<Vec<u8>>, RecordError> {
        let rows = self.named_rows("SELECT id, row FROM sluice.reviews ORDER BY id")?;
        Ok(rows.into_iter().map(|(_, row)| row).collect())
    }

    fn put_connection(&self, name: &str, row: Option<&[u8]>) -> Result<(), RecordError> {
        let (name, row) = (name.to_string(), row.map(<[u8]>::to_vec));
        self.write(move |c| {
            match row {
                Some(row) => c.execute(
                    "INSERT INTO sluice.connections (name, row) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET row = $2",
                    &[&name, &row],
                )?,
                None => c.execute("DELETE FROM sluice.connections WHERE name = $1", &[&name])?,
            };
            Ok(())
        })
    }

    fn connections(&self) -> Result<Vec<(String, Vec<u8>)>, RecordError> {
        self.named_rows("SELECT name, row FROM sluice.connections ORDER BY name")
    }

    fn purge(
        &self,
        rules: &RetentionRules,
        now_ms: u64,
        live: &HashSet<String>,
        by: &str,
    ) -> Result<Purged, RecordError> {
        let (rules, live, by) = (rules.clone(), live.clone(), by.to_string());
        let (signer, node) = (self.signer.clone(), self.node.clone());
        let (purged, head) = self.write(move |c| {
            let mut txn = c.transaction()?;
            // Purges queue with appends: what is read below is the chain as it stands.
            lock_head(&mut txn)?;
            let mut purged = delete_expired(&mut txn, &rules, now_ms, &live)?;
            let mut head = None;
            if !purged.is_empty() {
                let meta = serde_json::json!({
                    "by": by,
                    "sessions": purged.sessions,
                    "reviews": purged.reviews,
                    "payloads": purged.payloads(),
                    "ranges": purged.ranges,
                });
                let event = NewEvent {
                    time_ms: now_ms,
                    ..NewEvent::gateway(kinds::RETENTION, &meta)
                };
                let linked = append_in(&mut txn, std::slice::from_ref(&event), &signer, &node)?;
                purged.entry = linked.rows.first().map(|r| r.index);
                head = linked.head;
            }
            txn.commit()?;
            Ok((purged, head))
        })?;
        if let Some(head) = head {
            self.committed(head.index);
        }
        Ok(purged)
    }

    fn compact(&self) -> Result<Compacted, RecordError> {
        // Deleted payloads leave dead rows until the table is rewritten; appends wait
        // meanwhile, as they do while the embedded store is compacted.
        self.write(|c| {
            let size = |c: &mut Client| -> Result<u64, Failed> {
                let row = c.query_one(
                    "SELECT pg_total_relation_size('sluice.payloads')::bigint",
                    &[],
                )?;
                Ok(row.get::<_, i64>(0) as u64)
            };
            let bytes_before = size(c)?;
            c.batch_execute("VACUUM FULL sluice.payloads")?;
            Ok(Compacted {
                bytes_before,
                bytes_after: size(c)?,
            })
        })
    }

    fn verify(&self, mut options: VerifyOptions) -> VerifyReport {
        options.trusted_keys.push(self.cluster_public);
        options.trusted_keys.push(self.public_key());
        let (label, bucket) = (self.label.clone(), self.bucket.clone());
        self.read(move |c| Ok(tables::verify(c, bucket.as_deref(), &options)))
            .unwrap_or_else(|e| tables::unreadable(&format!("{label}: {e}")))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.writer.close();
        self.readers.close();
    }
}

/// The deletions of one purge, inside its transaction (the head locked).
fn delete_expired(
    txn: &mut Transaction<'_>,
    rules: &RetentionRules,
    now_ms: u64,
    live: &HashSet<String>,
) -> Result<Purged, Failed> {
    let corrupt = |e: String| Failed::Corrupt(e);
    let mut purged = Purged::default();
    let mut removed: Vec<u64> = Vec::new();
    let mut due = Vec::new();
    for row in txn.query("SELECT row FROM sluice.sessions", &[])? {
        let bytes: Vec<u8> = row.get(0);
        let summary: SessionSummary =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if !rules.sessions.contains_key(&summary.connection) || summary.purged_ms.is_some() {
            continue;
        }
        let ended = match summary.ended_ms {
            Some(ended) => ended,
            None => {
                let last = txn.query_opt(
                    "SELECT stored FROM sluice.entries WHERE idx = $1",
                    &[&(summary.last_index as i64)],
                )?;
                match last {
                    Some(row) => {
                        decode_stored(&row.get::<_, Vec<u8>>(0))
                            .map_err(corrupt)?
                            .time_ms
                    }
                    None => continue,
                }
            }
        };
        if rules.session_due(&summary, ended, now_ms, live) {
            due.push(summary);
        }
    }
    due.sort_by_key(|s| s.first_index);
    for mut summary in due {
        let deleted = txn.query(
            "DELETE FROM sluice.payloads p USING sluice.entries e
             WHERE p.idx = e.idx AND e.session = $1 AND e.idx BETWEEN $2 AND $3
             RETURNING p.idx",
            &[
                &summary.id,
                &(summary.first_index as i64),
                &(summary.last_index as i64),
            ],
        )?;
        removed.extend(deleted.iter().map(|row| row.get::<_, i64>(0) as u64));
        // Its objects in the bucket go too: the mover deletes them.
        txn.execute(
            "UPDATE sluice.objects SET doomed_ms = $2 WHERE session = $1 AND doomed_ms IS NULL",
            &[&summary.id, &(now_ms as i64)],
        )?;
        summary.purged_ms = Some(now_ms);
        let row = serde_json::to_vec(&summary).map_err(|e| corrupt(e.to_string()))?;
        txn.execute(
            "UPDATE sluice.sessions SET row = $2 WHERE id = $1",
            &[&summary.id, &row],
        )?;
        purged.sessions.push(summary.id);
    }
    if rules.reviews.is_some() {
        for row in txn.query("SELECT id, row FROM sluice.reviews", &[])? {
            let bytes: Vec<u8> = row.get(1);
            let review: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if rules.review_due(&review, now_ms) {
                purged.reviews.push(row.get(0));
            }
        }
        txn.execute(
            "DELETE FROM sluice.reviews WHERE id = ANY($1)",
            &[&purged.reviews],
        )?;
        // Decisions that belong to no session (access requests), oldest first, up to the
        // first one still kept; the scan resumes there next time.
        let scan: i64 = txn
            .query_opt(
                "SELECT value FROM sluice.meta WHERE key = 'retention-review-scan'",
                &[],
            )?
            .and_then(|row| <[u8; 8]>::try_from(row.get::<_, Vec<u8>>(0)).ok())
            .map_or(0, i64::from_be_bytes);
        let mut next = scan;
        for row in txn.query(
            "SELECT idx, stored FROM sluice.entries
             WHERE session = '' AND kind = 'review' AND idx >= $1 ORDER BY idx",
            &[&scan],
        )? {
            let idx: i64 = row.get(0);
            let entry = decode_stored(&row.get::<_, Vec<u8>>(1)).map_err(corrupt)?;
            if !rules.decision_due(entry.time_ms, now_ms) {
                break;
            }
            if txn.execute("DELETE FROM sluice.payloads WHERE idx = $1", &[&idx])? > 0 {
                removed.push(idx as u64);
            }
            next = idx + 1;
        }
        txn.execute(
            "INSERT INTO sluice.meta (key, value) VALUES ('retention-review-scan', $1)
             ON CONFLICT (key) DO UPDATE SET value = $1",
            &[&next.to_be_bytes().to_vec()],
        )?;
    }
    removed.sort_unstable();
    purged.ranges = sluice_record::index_ranges(removed);
    Ok(purged)
}
