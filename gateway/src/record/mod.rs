//! The record: an append-only, hash-chained, signed log of everything that happens in
//! sessions, in an embedded redb store.
//!
//! Architecture invariants:
//! - This is the only module that depends on redb.
//! - Entries are only ever appended, in one write transaction per batch (group commit); each
//!   commit ends with a signed head `(index, hash)`, so truncating the newest entries is
//!   detected, and the head is kept as a checkpoint so a rewrite is localised.
//! - Payloads live beside the chain, keyed by entry, so retention can purge them without
//!   breaking it; `verify` reports a purged payload as purged, not as tampered.
//! - What reaches this module is already masked: it stores what it is given.

mod entry;
mod retention;
mod verify;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::Digest;

pub use entry::{Entry, GENESIS, Hash};
pub use retention::{Purged, RetentionRules};
pub use verify::{Problem, VerifyReport, verify_store};
pub use writer::{Receipt, RecordFailed, Recorder};

/// The store's page cache.
const CACHE_BYTES: usize = 16 << 20;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// The review queue's state (`crate::review`), by review id; its history is in the chain.
const REVIEWS: TableDefinition<&str, &[u8]> = TableDefinition::new("reviews");
/// Each sink's durable cursor (`crate::sinks`): the index of the next entry to deliver.
const SINK_CURSORS: TableDefinition<&str, u64> = TableDefinition::new("sink_cursors");

const NONCE_LEN: usize = 16;
const HEAD_DOMAIN: &[u8] = b"sluice-record-head-v1";

/// An event to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub session: String,
    pub seq: u64,
    pub kind: String,
    pub time_ms: u64,
    /// A JSON object.
    pub meta: String,
    pub payload: Vec<u8>,
}

/// A recorded event, read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub entry: Entry,
    /// `None` when retention purged it.
    pub payload: Option<Vec<u8>>,
}

/// The signed head of the chain: anchor it elsewhere to make the record evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub index: u64,
    #[serde(with = "hex::serde")]
    pub hash: Hash,
    #[serde(with = "hex::serde")]
    pub signature: [u8; 64],
    #[serde(with = "hex::serde")]
    pub public_key: [u8; 32],
}

impl SignedHead {
    fn message(index: u64, hash: &Hash) -> Vec<u8> {
        [HEAD_DOMAIN, &index.to_be_bytes(), hash].concat()
    }

    fn encode(&self) -> Vec<u8> {
        [
            &self.index.to_be_bytes()[..],
            &self.hash,
            &self.signature,
            &self.public_key,
        ]
        .concat()
    }

    fn decode(bytes: &[u8]) -> Option<SignedHead> {
        if bytes.len() != 8 + 32 + 64 + 32 {
            return None;
        }
        Some(SignedHead {
            index: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            hash: bytes[8..40].try_into().ok()?,
            signature: bytes[40..104].try_into().ok()?,
            public_key: bytes[104..136].try_into().ok()?,
        })
    }

    /// Whether the signature holds for this index and hash under `public_key`.
    pub fn signature_holds(&self) -> bool {
        use ed25519_dalek::{Signature, Verifier, VerifyingKey};
        let Ok(key) = VerifyingKey::from_bytes(&self.public_key) else {
            return false;
        };
        key.verify(
            &Self::message(self.index, &self.hash),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }
}

/// A session as listed by `sluice sessions`: derived from its open and close entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub id: String,
    pub subject: String,
    pub connection: String,
    pub client: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub exit_status: Option<i32>,
    /// The first and last entry of the session.
    pub first_index: u64,
    pub last_index: u64,
    /// When retention purged its payloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "record store {path}: {message} (the store may be corrupt; `sluice verify --store {path}` says where)"
    )]
    Corrupt { path: String, message: String },
    #[error("record store {path}: {message}")]
    Io { path: String, message: String },
}

pub struct Store {
    /// Behind a lock only so that compaction can swap in the rewritten file: everything else
    /// takes it shared for the length of one call.
    db: RwLock<Database>,
    path: PathBuf,
    signer: SigningKey,
    /// The last entry's index and hash; `None` before the first entry.
    tail: Mutex<Option<(u64, Hash)>>,
    /// Signalled after every append, for readers that follow the chain (sinks).
    appended: Condvar,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store at `path`, signing with the key in `key_file` (created,
    /// mode 0600, on first start).
    pub fn open(path: &Path, key_file: &Path) -> Result<Store, RecordError> {
        let io = |message: String| RecordError::Io {
            path: path.display().to_string(),
            message,
        };
        let corrupt = |message: String| RecordError::Corrupt {
            path: path.display().to_string(),
            message,
        };
        let signer = load_or_create_signing_key(key_file).map_err(|e| io(format!("{e:#}")))?;
        // A compaction cut short (a crash mid-copy) leaves its unfinished copy: the store
        // itself was never touched, so the copy is just removed.
        let _ = std::fs::remove_file(retention::compacting_path(path));
        let db = open_db(path).map_err(|e| corrupt(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| corrupt(e.to_string()))?;
        {
            // Create every table up front so readers never meet a missing one.
            for table in [ENTRIES, PAYLOADS, CHECKPOINTS] {
                txn.open_table(table).map_err(|e| corrupt(e.to_string()))?;
            }
            txn.open_table(META).map_err(|e| corrupt(e.to_string()))?;
            for table in [SESSIONS, REVIEWS] {
                txn.open_table(table).map_err(|e| corrupt(e.to_string()))?;
            }
            txn.open_table(SINK_CURSORS)
                .map_err(|e| corrupt(e.to_string()))?;
        }
        txn.commit().map_err(|e| corrupt(e.to_string()))?;
        let store = Store {
            db: RwLock::new(db),
            path: path.to_path_buf(),
            signer,
            tail: Mutex::new(None),
            appended: Condvar::new(),
        };
        let tail = store.read_tail()?;
        *store.tail.lock().unwrap_or_else(|e| e.into_inner()) = tail;
        Ok(store)
    }

    /// The key that signs this store's heads; pin it to verify a copy offline.
    pub fn public_key(&self) -> [u8; 32] {
        self.signer.verifying_key().to_bytes()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database, shared for the length of one call: hold the guard while a transaction
    /// is in use (compaction takes it exclusively to swap the file).
    fn db(&self) -> RwLockReadGuard<'_, Database> {
        self.db.read().unwrap_or_else(|e| e.into_inner())
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> RecordError {
        RecordError::Corrupt {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn read_tail(&self) -> Result<Option<(u64, Hash)>, RecordError> {
        let db = self.db();
        let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
        let entries = txn.open_table(ENTRIES).map_err(|e| self.corrupt(e))?;
        let Some((key, value)) = entries.last().map_err(|e| self.corrupt(e))? else {
            return Ok(None);
        };
        let value = value.value();
        if value.len() < 32 {
            return Err(self.corrupt(format!("entry {} is truncated", key.value())));
        }
        let hash: Hash = value[value.len() - 32..]
            .try_into()
            .map_err(|e| self.corrupt(e))?;
        Ok(Some((key.value(), hash)))
    }

    /// Appends `events` in one durable commit that ends with a signed head. Returns the index
    /// of each. Either all of them are recorded or none is.
    pub fn append(&self, events: &[NewEvent]) -> Result<Vec<u64>, RecordError> {
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let (mut next, mut prev) = match *tail {
            Some((index, hash)) => (index + 1, hash),
            None => (0, GENESIS),
        };
        let mut indices = Vec::with_capacity(events.len());
        let db = self.db();
        let txn = db.begin_write().map_err(|e| self.corrupt(e))?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(|e| self.corrupt(e))?;
            let mut payloads = txn.open_table(PAYLOADS).map_err(|e| self.corrupt(e))?;
            let mut sessions = txn.open_table(SESSIONS).map_err(|e| self.corrupt(e))?;
            // One draw of randomness for the whole group's nonces.
            let mut nonces = vec![0u8; NONCE_LEN * events.len()];
            getrandom::fill(&mut nonces).map_err(|e| self.corrupt(e))?;
            let mut touched: Vec<SessionSummary> = Vec::new();
            let mut stored = Vec::new();
            let mut payload = Vec::new();
            for (event, nonce) in events.iter().zip(nonces.chunks_exact(NONCE_LEN)) {
                let entry = Entry {
                    index: next,
                    prev_hash: prev,
                    session: event.session.clone(),
                    seq: event.seq,
                    kind: event.kind.clone(),
                    time_ms: event.time_ms,
                    meta: event.meta.clone(),
                    payload_digest: entry::payload_digest(nonce, &event.payload),
                };
                stored.clear();
                stored.extend_from_slice(&entry.encode());
                let hash: Hash = sha2::Sha256::digest(&stored).into();
                stored.extend_from_slice(&hash);
                payload.clear();
                payload.extend_from_slice(nonce);
                payload.extend_from_slice(&event.payload);
                entries
                    .insert(next, stored.as_slice())
                    .map_err(|e| self.corrupt(e))?;
                payloads
                    .insert(next, payload.as_slice())
                    .map_err(|e| self.corrupt(e))?;
                // The gateway's own events (access requests) belong to no session.
                if !entry.session.is_empty() {
                    let summary = match touched.iter().position(|s| s.id == entry.session) {
                        Some(i) => &mut touched[i],
                        None => {
                            let existing = sessions
                                .get(entry.session.as_str())
                                .map_err(|e| self.corrupt(e))?;
                            let summary = match existing {
                                Some(bytes) => serde_json::from_slice(bytes.value())
                                    .map_err(|e| self.corrupt(e))?,
                                None => SessionSummary::new(&entry),
                            };
                            touched.push(summary);
                            touched
                                .last_mut()
                                .ok_or_else(|| self.corrupt("session summary"))?
                        }
                    };
                    summary.update(&entry);
                }
                indices.push(next);
                prev = hash;
                next += 1;
            }
            for summary in &touched {
                let bytes = serde_json::to_vec(summary).map_err(|e| self.corrupt(e))?;
                sessions
                    .insert(summary.id.as_str(), bytes.as_slice())
                    .map_err(|e| self.corrupt(e))?;
            }
            if !events.is_empty() {
                let head = self.sign(next - 1, prev);
                let encoded = head.encode();
                let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(|e| self.corrupt(e))?;
                checkpoints
                    .insert(head.index, encoded.as_slice())
                    .map_err(|e| self.corrupt(e))?;
                let mut meta = txn.open_table(META).map_err(|e| self.corrupt(e))?;
                meta.insert("head", encoded.as_slice())
                    .map_err(|e| self.corrupt(e))?;
            }
        }
        txn.commit().map_err(|e| self.corrupt(e))?;
        if !events.is_empty() {
            *tail = Some((next - 1, prev));
            self.appended.notify_all();
        }
        Ok(indices)
    }

    /// The index the next entry will get (the number of entries).
    pub fn next_index(&self) -> u64 {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.map_or(0, |(index, _)| index + 1)
    }

    /// Waits until the chain holds an entry at `index`, or `timeout` passed. Returns whether it
    /// does.
    pub fn wait_for(&self, index: u64, timeout: Duration) -> bool {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let (tail, _) = self
            .appended
            .wait_timeout_while(tail, timeout, |t| t.is_none_or(|(last, _)| last < index))
            .unwrap_or_else(|e| e.into_inner());
        tail.is_some_and(|(last, _)| last >= index)
    }

    /// Up to `max` entries from `from` on, in order, with their payloads.
    pub fn entries_from(&self, from: u64, max: usize) -> Result<Vec<Recorded>, RecordError> {
        let db = self.db();
        let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
        let entries = txn.open_table(ENTRIES).map_err(|e| self.corrupt(e))?;
        let payloads = txn.open_table(PAYLOADS).map_err(|e| self.corrupt(e))?;
        let mut out = Vec::new();
        for row in entries
            .range(from..)
            .map_err(|e| self.corrupt(e))?
            .take(max)
        {
            let (key, value) = row.map_err(|e| self.corrupt(e))?;
            let entry = decode_stored(value.value()).map_err(|e| self.corrupt(e))?;
            out.push(Recorded {
                entry,
                payload: payload_of(&payloads, key.value()).map_err(|e| self.corrupt(e))?,
            });
        }
        Ok(out)
    }

    /// Where the sink `name` resumes: the index of the next entry to deliver to it.
    pub fn sink_cursor(&self, name: &str) -> Result<Option<u64>, RecordError> {
        let db = self.db();
        let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
        let table = txn.open_table(SINK_CURSORS).map_err(|e| self.corrupt(e))?;
        let cursor = table.get(name).map_err(|e| self.corrupt(e))?;
        Ok(cursor.map(|v| v.value()))
    }

    /// Moves the sink `name`'s cursor, durably: what it delivered is never delivered again
    /// after a restart (unless the commit is lost with a crash: delivery is at least once).
    pub fn set_sink_cursor(&self, name: &str, next: u64) -> Result<(), RecordError> {
        let db = self.db();
        let txn = db.begin_write().map_err(|e| self.corrupt(e))?;
        txn.open_table(SINK_CURSORS)
            .map_err(|e| self.corrupt(e))?
            .insert(name, next)
            .map_err(|e| self.corrupt(e))?;
        txn.commit().map_err(|e| self.corrupt(e))
    }

    fn sign(&self, index: u64, hash: Hash) -> SignedHead {
        let signature = self
            .signer
            .sign(&SignedHead::message(index, &hash))
            .to_bytes();
        SignedHead {
            index,
            hash,
            signature,
            public_key: self.signer.verifying_key().to_bytes(),
        }
    }

    /// Stores a review's current state (one small commit; reviews change rarely).
    pub fn put_review(&self, id: &str, review: &[u8]) -> Result<(), RecordError> {
        let db = self.db();
        let txn = db.begin_write().map_err(|e| self.corrupt(e))?;
        txn.open_table(REVIEWS)
            .map_err(|e| self.corrupt(e))?
            .insert(id, review)
            .map_err(|e| self.corrupt(e))?;
        txn.commit().map_err(|e| self.corrupt(e))
    }

    /// Every stored review.
    pub fn reviews(&self) -> Result<Vec<Vec<u8>>, RecordError> {
        let db = self.db();
        let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
        let table = txn.open_table(REVIEWS).map_err(|e| self.corrupt(e))?;
        let mut all = Vec::new();
        for row in table.iter().map_err(|e| self.corrupt(e))? {
            all.push(row.map_err(|e| self.corrupt(e))?.1.value().to_vec());
        }
        Ok(all)
    }

    /// The signed head of the chain, `None` while the record is empty.
    pub fn head(&self) -> Result<Option<SignedHead>, RecordError> {
        let db = self.db();
        let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
        let meta = txn.open_table(META).map_err(|e| self.corrupt(e))?;
        let head = meta.get("head").map_err(|e| self.corrupt(e))?;
        Ok(head.and_then(|v| SignedHead::decode(v.value())))
    }

    /// Every session's summary, newest first.
    pub fn sessions(&self) -> Result<Vec<SessionSummary>, RecordError> {
        let db = self.db();
        let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
        let table = txn.open_table(SESSIONS).map_err(|e| self.corrupt(e))?;
        let mut all = Vec::new();
        for row in table.iter().map_err(|e| self.corrupt(e))? {
            let (_, value) = row.map_err(|e| self.corrupt(e))?;
            all.push(
                serde_json::from_slice::<SessionSummary>(value.value())
                    .map_err(|e| self.corrupt(e))?,
            );
        }
        all.sort_by(|a, b| {
            b.started_ms
                .cmp(&a.started_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(all)
    }

    /// One session's summary, looked up by its id.
    pub fn session(&self, id: &str) -> Result<Option<SessionSummary>, RecordError> {
        let db = self.db();
        let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
        let table = txn.open_table(SESSIONS).map_err(|e| self.corrupt(e))?;
        let row = table.get(id).map_err(|e| self.corrupt(e))?;
        row.map(|v| serde_json::from_slice(v.value()).map_err(|e| self.corrupt(e)))
            .transpose()
    }

    /// The entries of one session, in order, with their payloads.
    pub fn session_events(&self, id: &str) -> Result<Vec<Recorded>, RecordError> {
        let Some(summary) = self.session(id)? else {
            return Ok(vec![]);
        };
        let db = self.db();
        let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
        let entries = txn.open_table(ENTRIES).map_err(|e| self.corrupt(e))?;
        let payloads = txn.open_table(PAYLOADS).map_err(|e| self.corrupt(e))?;
        let mut out = Vec::new();
        for row in entries
            .range(summary.first_index..=summary.last_index)
            .map_err(|e| self.corrupt(e))?
        {
            let (key, value) = row.map_err(|e| self.corrupt(e))?;
            let entry = decode_stored(value.value()).map_err(|e| self.corrupt(e))?;
            if entry.session != id {
                continue;
            }
            let payload = payload_of(&payloads, key.value()).map_err(|e| self.corrupt(e))?;
            out.push(Recorded { entry, payload });
        }
        Ok(out)
    }
}

/// Ascending entry indices as ranges `(first, last)` of consecutive ones.
fn index_ranges(sorted: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for index in sorted {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == index => *last = index,
            _ => ranges.push((index, index)),
        }
    }
    ranges
}

/// An entry as stored: its encoding followed by its hash.
fn decode_stored(value: &[u8]) -> Result<Entry, String> {
    Entry::decode(&value[..value.len().saturating_sub(32)])
}

/// An entry's payload without its nonce; `None` when retention purged it.
fn payload_of(
    payloads: &impl ReadableTable<u64, &'static [u8]>,
    index: u64,
) -> Result<Option<Vec<u8>>, redb::StorageError> {
    let payload = payloads.get(index)?;
    Ok(payload.map(|p| p.value().get(NONCE_LEN..).unwrap_or_default().to_vec()))
}

fn open_db(path: &Path) -> Result<Database, redb::DatabaseError> {
    // redb caches up to 1 GiB by default; the record is written far more than read, so a
    // small cache keeps the gateway's memory flat however much it records.
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

/// The session index is a derived view (the chain is the truth), kept up to date per commit.
impl SessionSummary {
    fn new(first: &Entry) -> SessionSummary {
        SessionSummary {
            id: first.session.clone(),
            started_ms: first.time_ms,
            first_index: first.index,
            ..SessionSummary::default()
        }
    }

    fn update(&mut self, entry: &Entry) {
        self.last_index = entry.index;
        let meta = || serde_json::from_str::<serde_json::Value>(&entry.meta).unwrap_or_default();
        match entry.kind.as_str() {
            "session-open" => {
                let meta = meta();
                let text = |key: &str| {
                    meta.get(key)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                self.subject = text("subject");
                self.connection = text("connection");
                self.client = text("client");
            }
            "session-close" => {
                self.ended_ms = Some(entry.time_ms);
                self.exit_status = meta()
                    .get("exit_status")
                    .and_then(|v| v.as_i64())
                    .map(|v| v as i32);
            }
            _ => {}
        }
    }
}

fn load_or_create_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    if let Ok(bytes) = std::fs::read(path) {
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is not a 32-byte Ed25519 key", path.display()))?;
        return Ok(SigningKey::from_bytes(&seed));
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| anyhow::anyhow!("no randomness for the record key: {e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::files::write_private(path, &seed)?;
    Ok(SigningKey::from_bytes(&seed))
}
