//! The record: an append-only, hash-chained, signed log of everything that happens in
//! sessions, in an embedded redb store.
//!
//! Architecture invariants:
//! - This is the only crate that depends on redb (Cargo enforces it: no other crate lists it).
//! - Entries are only ever appended, in one write transaction per batch (group commit); each
//!   commit ends with a signed head `(index, hash)`, kept as a checkpoint and written to the
//!   witness file `record.head`, so truncating the newest entries is detected.
//! - Indices only grow. A stretch the store no longer holds (a restored backup, commits a
//!   repair dropped) is declared by a signed entry that skips exactly those indices; nothing
//!   else may leave a gap, and no index is ever given to two entries.
//! - Payloads live beside their entries (in the commit's block, `blocks.rs`), outside what
//!   the chain hashes (an entry holds its payload's digest), so retention can purge them
//!   without breaking it; a purge and the chained `retention` entry that lists it commit
//!   together, so `verify` tells a purged payload from a deleted one.
//! - Entries' bytes are never rewritten, whatever the layout (a purge rewrites a block without
//!   some payloads, never an entry): signed heads anchored outside keep matching.
//! - The tables beside the chain (sessions, reviews) are indexes of it: what decides access is
//!   read from chained entries, and `verify` checks every row against the chain.
//! - What reaches this module is already masked: it stores what it is given.
//! - Corruption is an error with a message, never a panic (redb's panics are caught at the
//!   boundary of every call).

mod blocks;
mod entry;
mod head;
mod journal;
mod key;
pub mod link;
mod retention;
mod seam;
pub mod tables;
#[cfg(feature = "tamper")]
pub mod tamper;
mod verify;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use journal::{Commit, Journal};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use entry::Fields;
pub use entry::{Entry, GENESIS, Hash};
pub use head::{Anchor, HEAD_KIND, SignedHead, Witness, anchors_from, heads_in_text};
pub use key::{KeySource, NODE_KEY_KIND, NodeKey, ROTATION_KIND, Rotation, parse_public_key};
pub use retention::{Compacted, Purged, RetentionRules};
pub use seam::{Membership, NodeStatus, Peer, Record};
pub use verify::{Gap, Problem, Trust, VerifyOptions, VerifyReport, verify_store, verify_tables};
pub use writer::{Queued, Receipt, RecordFailed, Recorder};

type ReadLog = blocks::Log<redb::ReadOnlyTable<u64, &'static [u8]>>;
type WriteLog<'t> = blocks::Log<redb::Table<'t, u64, &'static [u8]>>;

/// The store's page cache.
const CACHE_BYTES: usize = 16 << 20;

/// Layout 1's tables (stores written before blocks, read as they are; see `blocks.rs`).
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");
use blocks::BLOCKS;
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// The review queue's state (the engine's `review`), by review id; its history is in the chain.
const REVIEWS: TableDefinition<&str, &[u8]> = TableDefinition::new("reviews");
/// Connections added at runtime (the engine's `connections`), by name; each change is in the
/// chain first, and a row is trusted only when its chained entry says the same.
const CONNECTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("connections");
/// Each sink's durable cursor (the engine's `sinks`): the index of the next entry to deliver.
const SINK_CURSORS: TableDefinition<&str, u64> = TableDefinition::new("sink_cursors");

/// The random bytes stored before each payload (its digest covers both).
pub const NONCE_LEN: usize = 16;

/// Kinds of entries the record itself gives meaning to (verify reads them).
pub mod kinds {
    pub const SESSION_OPEN: &str = "session-open";
    pub const SESSION_CLOSE: &str = "session-close";
    /// A purge: its meta lists the sessions and entry ranges whose payloads it deleted.
    pub const RETENTION: &str = "retention";
    /// A backup put in place by `sluice store restore`; skips the indices it replaced.
    pub const RESTORE: &str = "restore";
    /// Commits the store lost (a repair after an unclean stop); skips their indices.
    pub const RECORD_LOSS: &str = "record-loss";
    pub const REVIEW: &str = "review";
    /// A terminal session's new size (`{"rows", "cols"}`), in order with its output.
    pub const RESIZE: &str = "resize";
    /// Payloads moved out of the database into a bucket (PostgreSQL record): the object,
    /// the session and entries whose payloads it holds, and its SHA-256.
    pub const PAYLOAD_MOVE: &str = "payload-move";
    /// File bytes moved by `sftp` or `scp` (`{"path", "dir", "offset", "bytes"}`), recorded
    /// before they are forwarded; the payload holds them when the connection keeps contents.
    pub const FILE_DATA: &str = "file-data";
    /// A file transfer that ended (`{"path", "direction", "bytes", "sha256"}`), recorded
    /// before the request that ends it reaches the server.
    pub const FILE_TRANSFER: &str = "file-transfer";
    /// An MCP tool's definition first seen (pinned), or seen changed (and refused).
    pub const MCP_TOOL: &str = "mcp-tool";
}

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
    /// The entry of the first whole input the client sent (a typed line, a script, an SQL
    /// statement): what a list of sessions shows of each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_input_at: Option<u64>,
    /// How many of its frames were refused.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "record store {path}: {message} (the store may be corrupt; `sluice verify --store {path}` says where)"
    )]
    Corrupt { path: String, message: String },
    #[error("record store {path}: {message}")]
    Io { path: String, message: String },
    #[error(
        "record store {path}: its heads are signed by key {store_key}, but the configured record key is {configured_key}; to change keys, announce the new one in the chain with `sluice store rotate-key --old-key FILE|env:NAME`"
    )]
    KeyMismatch {
        path: String,
        store_key: String,
        configured_key: String,
    },
}

/// The chain's end, and the key that signs the next commit: changed together, under one lock.
struct Tail {
    /// The last entry's index and hash; `None` before the first entry.
    last: Option<(u64, Hash)>,
    signer: SigningKey,
    /// Where commits become durable before redb takes them (`journal.rs`); `None` when
    /// turned off (`SLUICE_RECORD_JOURNAL=off`) or after it failed: redb's own durable commit
    /// then, slower and as safe.
    journal: Option<Journal>,
}

pub struct Store {
    /// Behind a lock only so that compaction can swap in the rewritten file: everything else
    /// takes it shared for the length of one call.
    db: RwLock<Database>,
    path: PathBuf,
    tail: Mutex<Tail>,
    /// `record.head` beside the store: the newest head, outside redb.
    witness: Witness,
    /// Signalled after every append, for readers that follow the chain (sinks).
    appended: Condvar,
    /// Set by `close`: nothing is written after it (not even into the empty stand-in).
    closed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What an append writes at the end of the chain.
struct Append<'a> {
    events: &'a [NewEvent],
    /// The index of the first event, past the next one when a gap is declared.
    first: u64,
    /// Signs this commit's head instead of the current key (a rotation's commit is signed by
    /// the new key).
    signer: Option<&'a SigningKey>,
}

/// Drops a database: redb can panic closing a file whose pages are damaged, and a damaged
/// store must give errors, never take the gateway down.
fn drop_guarded(db: Database) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(db))).is_err() {
        tracing::error!("the record store's file is damaged: closing it failed");
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let db = self.db.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Ok(empty) =
            Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())
        {
            drop_guarded(std::mem::replace(db, empty));
        }
    }
}

/// Runs `f`, turning a panic inside redb (a corrupt page) into an error.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, RecordError>) -> Result<T, RecordError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(RecordError::Corrupt {
            path: path.display().to_string(),
            message: "the store's pages are damaged (reading them failed)".into(),
        })
    })
}

impl Store {
    /// Opens (or creates) the store at `path`, signing with the key in `key_file` (created,
    /// mode 0600, on first start).
    pub fn open(path: &Path, key_file: &Path) -> Result<Store, RecordError> {
        let signer = KeySource::File(key_file.to_path_buf())
            .load()
            .map_err(|e| RecordError::Io {
                path: path.display().to_string(),
                message: format!("{e:#}"),
            })?;
        Store::open_signed(path, signer)
    }

    /// Opens (or creates) the store at `path`, signing with `signer`, which must be the key
    /// that signed its newest head. Commits that the witness file shows were lost (a repair
    /// fell back to an older commit) are declared in the chain before anything else.
    pub fn open_signed(path: &Path, signer: SigningKey) -> Result<Store, RecordError> {
        let store = Store::open_raw(path, signer)?;
        store.check_key()?;
        store.declare_lost_commits()?;
        Ok(store)
    }

    fn open_raw(path: &Path, signer: SigningKey) -> Result<Store, RecordError> {
        let io = |message: String| RecordError::Io {
            path: path.display().to_string(),
            message,
        };
        let corrupt = |message: String| RecordError::Corrupt {
            path: path.display().to_string(),
            message,
        };
        // A compaction cut short (a crash mid-copy) leaves its unfinished copy: the store
        // itself was never touched, so the copy is just removed.
        let _ = std::fs::remove_file(retention::compacting_path(path));
        let db = guarded(path, || open_db(path).map_err(|e| corrupt(e.to_string())))?;
        guarded(path, || {
            let txn = db.begin_write().map_err(|e| corrupt(e.to_string()))?;
            {
                // Create every table up front so readers never meet a missing one.
                for table in [ENTRIES, PAYLOADS, BLOCKS, CHECKPOINTS] {
                    txn.open_table(table).map_err(|e| corrupt(e.to_string()))?;
                }
                txn.open_table(META).map_err(|e| corrupt(e.to_string()))?;
                for table in [SESSIONS, REVIEWS, CONNECTIONS] {
                    txn.open_table(table).map_err(|e| corrupt(e.to_string()))?;
                }
                txn.open_table(SINK_CURSORS)
                    .map_err(|e| corrupt(e.to_string()))?;
            }
            txn.commit().map_err(|e| corrupt(e.to_string()))
        })?;
        let witness = Witness::open(path).map_err(|e| io(format!("witness file: {e}")))?;
        let store = Store {
            db: RwLock::new(db),
            path: path.to_path_buf(),
            tail: Mutex::new(Tail {
                last: None,
                signer,
                journal: None,
            }),
            witness,
            appended: Condvar::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        };
        let journal = store.open_journal()?;
        let last = store.read_tail()?;
        let mut tail = store.lock_tail();
        (tail.last, tail.journal) = (last, journal);
        drop(tail);
        store.upgrade_sessions_index()?;
        Ok(store)
    }

    /// Applies the commits the journal holds and redb lost (an unclean stop), then starts
    /// the journal over; `None` when it is turned off for new commits.
    fn open_journal(&self) -> Result<Option<Journal>, RecordError> {
        let io = |e: std::io::Error| RecordError::Io {
            path: self.path.display().to_string(),
            message: format!(
                "the record's journal {}: {e} (it may hold the last commits: keep a copy before moving it aside)",
                Journal::path_for(&self.path).display()
            ),
        };
        let (mut journal, commits) = Journal::open(&self.path).map_err(io)?;
        let replayed = guarded(&self.path, || {
            replay_journal(&self.db(), commits).map_err(|e| self.corrupt(e))
        })?;
        if replayed > 0 {
            tracing::warn!(
                commits = replayed,
                "the record stopped uncleanly: its last commits were applied from the journal"
            );
        }
        journal.new_epoch().map_err(io)?;
        let off = std::env::var("SLUICE_RECORD_JOURNAL").is_ok_and(|v| v == "off");
        Ok((!off).then_some(journal))
    }

    /// The same store committing durably in redb itself, each commit (as with
    /// `SLUICE_RECORD_JOURNAL=off`): to measure what the journal saves.
    pub fn without_journal(self) -> Store {
        self.lock_tail().journal = None;
        self
    }

    /// Brings the sessions index up to what this version derives from the chain: a store
    /// written before `first_input` and `refused` existed gets them, from one pass over its
    /// entries, so `verify` (which derives them too) finds the index whole.
    fn upgrade_sessions_index(&self) -> Result<(), RecordError> {
        const KEY: &str = "sessions-index-version";
        const VERSION: &[u8] = b"2";
        guarded(&self.path, || {
            let db = self.db();
            let txn = db.begin_write().map_err(|e| self.corrupt(e))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| self.corrupt(e))?;
                if meta
                    .get(KEY)
                    .map_err(|e| self.corrupt(e))?
                    .is_some_and(|v| v.value() == VERSION)
                {
                    return Ok(());
                }
                let mut sessions = txn.open_table(SESSIONS).map_err(|e| self.corrupt(e))?;
                let mut rows = std::collections::BTreeMap::new();
                for row in sessions.iter().map_err(|e| self.corrupt(e))? {
                    let (id, value) = row.map_err(|e| self.corrupt(e))?;
                    let mut summary: SessionSummary =
                        serde_json::from_slice(value.value()).map_err(|e| self.corrupt(e))?;
                    (summary.first_input_at, summary.refused) = (None, 0);
                    rows.insert(id.value().to_string(), summary);
                }
                if !rows.is_empty() {
                    let log = self.log_in(&txn)?;
                    log.scan(.., |held| {
                        let entry = decode_stored(&held.stored)?;
                        if entry.kind == "frame"
                            && let Some(summary) = rows.get_mut(&entry.session)
                        {
                            summary.count_frame(&entry.fields());
                        }
                        Ok(true)
                    })
                    .map_err(|e| self.corrupt(e))?;
                    for (id, summary) in &rows {
                        let bytes = serde_json::to_vec(summary).map_err(|e| self.corrupt(e))?;
                        sessions
                            .insert(id.as_str(), bytes.as_slice())
                            .map_err(|e| self.corrupt(e))?;
                    }
                    tracing::info!(sessions = rows.len(), "sessions index upgraded");
                }
                meta.insert(KEY, VERSION).map_err(|e| self.corrupt(e))?;
            }
            txn.commit().map_err(|e| self.corrupt(e))
        })
    }

    /// Refuses a key other than the one that signed the newest head: a changed key must be
    /// announced in the chain (`rotate_key`), or verify could not follow it.
    fn check_key(&self) -> Result<(), RecordError> {
        let configured = self.public_key();
        match self.head()? {
            Some(head) if head.public_key != configured => Err(RecordError::KeyMismatch {
                path: self.path.display().to_string(),
                store_key: hex::encode(head.public_key),
                configured_key: hex::encode(configured),
            }),
            _ => Ok(()),
        }
    }

    /// The witness names a later head than the store holds: the store lost those commits.
    /// They are declared lost by a signed entry that skips their indices (so no index is
    /// reused, and `verify` reports the loss). A witness that disagrees with an entry the
    /// store still holds means the store was changed behind the gateway's back: refused.
    fn declare_lost_commits(&self) -> Result<(), RecordError> {
        let Some(witness) = self.witness.read() else {
            return Ok(());
        };
        let last = self.lock_tail().last;
        match last {
            Some((index, _)) if witness.index <= index => {
                let held = self.stored_hash(witness.index)?;
                if held.is_some_and(|h| h != witness.hash) {
                    return Err(self.corrupt(format!(
                        "entry {} differs from the head this gateway signed for it ({}): the store was rewritten; run `sluice verify --store`",
                        witness.index,
                        Witness::path_for(&self.path).display()
                    )));
                }
                Ok(())
            }
            _ => {
                let from = last.map_or(0, |(index, _)| index + 1);
                tracing::error!(
                    from,
                    to = witness.index,
                    "the record lost its last commits (repaired after an unclean stop); declaring them lost in the chain"
                );
                let meta = serde_json::json!({
                    "gap": [from, witness.index],
                    "why": "the store came back without commits its witness file had seen (redb repaired it after an unclean stop)",
                    "witness": witness,
                });
                self.append_at(kinds::RECORD_LOSS, witness.index + 1, meta)
                    .map(drop)
            }
        }
    }

    /// Closes the store file cleanly (redb marks it so), so the next start need not repair
    /// it. Every later call fails with an error: appends, reads, verify.
    pub fn close(&self) {
        let mut tail = self.lock_tail();
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        // Everything durable in redb itself, so the journal of a store that stopped cleanly
        // holds no commit (a new epoch: nothing to apply, nothing to copy beside it).
        let durable = guarded(&self.path, || {
            let txn = db.begin_write().map_err(|e| self.corrupt(e))?;
            txn.commit().map_err(|e| self.corrupt(e))
        });
        match durable {
            Ok(()) => {
                with_journal(&mut tail.journal, Journal::restart);
            }
            Err(e) => tracing::error!(error = %e, "cannot make the record durable at close"),
        }
        match Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()) {
            // The file's database is dropped here; what stays answers nothing useful.
            Ok(closed) => drop_guarded(std::mem::replace(&mut *db, closed)),
            Err(e) => tracing::error!(error = %e, "cannot close the record store"),
        }
    }

    fn check_open(&self) -> Result<(), RecordError> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RecordError::Io {
                path: self.path.display().to_string(),
                message: "the record is closed (the gateway is stopping)".into(),
            });
        }
        Ok(())
    }

    fn lock_tail(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key that signs this store's heads; pin it to verify a copy offline.
    pub fn public_key(&self) -> [u8; 32] {
        self.lock_tail().signer.verifying_key().to_bytes()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database, shared for the length of one call: hold the guard while a transaction
    /// is in use (compaction takes it exclusively to swap the file).
    fn db(&self) -> RwLockReadGuard<'_, Database> {
        self.db.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The log (both layouts) in a read transaction.
    fn log_read(&self, txn: &redb::ReadTransaction) -> Result<ReadLog, RecordError> {
        Ok(blocks::Log {
            rows: txn.open_table(ENTRIES).map_err(|e| self.corrupt(e))?,
            payloads: txn.open_table(PAYLOADS).map_err(|e| self.corrupt(e))?,
            blocks: Some(txn.open_table(BLOCKS).map_err(|e| self.corrupt(e))?),
        })
    }

    /// The log (both layouts) in a write transaction.
    fn log_in<'t>(&self, txn: &'t redb::WriteTransaction) -> Result<WriteLog<'t>, RecordError> {
        write_log(txn).map_err(|e| self.corrupt(e))
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> RecordError {
        RecordError::Corrupt {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn read_tail(&self) -> Result<Option<(u64, Hash)>, RecordError> {
        guarded(&self.path, || {
            let db = self.db();
            let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
            let log = self.log_read(&txn)?;
            tail_of(&log).map_err(|e| self.corrupt(e))
        })
    }

    /// The hash stored with entry `index`, if the store holds it.
    fn stored_hash(&self, index: u64) -> Result<Option<Hash>, RecordError> {
        guarded(&self.path, || {
            let db = self.db();
            let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
            let log = self.log_read(&txn)?;
            let Some(held) = log.get(index).map_err(|e| self.corrupt(e))? else {
                return Ok(None);
            };
            held.hash().map(Some).map_err(|e| self.corrupt(e))
        })
    }

    /// Appends `events` in one durable commit that ends with a signed head. Returns the index
    /// of each. Either all of them are recorded or none is.
    pub fn append(&self, events: &[NewEvent]) -> Result<Vec<u64>, RecordError> {
        let mut tail = self.lock_tail();
        let first = tail.last.map_or(0, |(index, _)| index + 1);
        self.append_locked(
            &mut tail,
            Append {
                events,
                first,
                signer: None,
            },
        )
    }

    /// Appends one entry of the gateway's own at `index`, past the chain's end when it
    /// declares the indices between absent (a restore replaced them, a repair lost them; its
    /// meta's `gap` names them, and verify accepts no other gap).
    fn append_at(
        &self,
        kind: &str,
        index: u64,
        meta: serde_json::Value,
    ) -> Result<u64, RecordError> {
        let mut tail = self.lock_tail();
        let next = tail.last.map_or(0, |(last, _)| last + 1);
        if index < next {
            return Err(self.corrupt(format!(
                "entry {index} exists already (the chain ends before {next})"
            )));
        }
        let event = NewEvent::gateway(kind, &meta);
        let indices = self.append_locked(
            &mut tail,
            Append {
                events: std::slice::from_ref(&event),
                first: index,
                signer: None,
            },
        )?;
        indices
            .first()
            .copied()
            .ok_or_else(|| self.corrupt("nothing appended"))
    }

    /// Announces `new` as the record's key: the current key signs it, and the commit that
    /// records the announcement is the first signed by `new`.
    pub fn rotate_key(&self, new: SigningKey) -> Result<u64, RecordError> {
        let mut tail = self.lock_tail();
        let prev = tail.last.map_or(GENESIS, |(_, hash)| hash);
        let rotation = Rotation::sign(&tail.signer, new.verifying_key().to_bytes(), &prev);
        let meta = serde_json::to_value(&rotation).map_err(|e| self.corrupt(e))?;
        let event = NewEvent::gateway(ROTATION_KIND, &meta);
        let first = tail.last.map_or(0, |(index, _)| index + 1);
        let indices = self.append_locked(
            &mut tail,
            Append {
                events: std::slice::from_ref(&event),
                first,
                signer: Some(&new),
            },
        )?;
        tail.signer = new;
        indices
            .first()
            .copied()
            .ok_or_else(|| self.corrupt("nothing appended"))
    }

    /// The one way entries are written: `append` and every maintenance entry (a rotation, a
    /// declared gap) go through here, under the tail's lock. (A purge writes its entry through
    /// `write_entries` and `committed` too, in the transaction that deletes.)
    fn append_locked(&self, tail: &mut Tail, append: Append<'_>) -> Result<Vec<u64>, RecordError> {
        let (indices, head) = guarded(&self.path, || {
            self.check_open()?;
            let db = self.db();
            let mut txn = db.begin_write().map_err(|e| self.corrupt(e))?;
            let signer = append.signer.unwrap_or(&tail.signer);
            let (indices, commit) = self.prepare(&txn, tail.last, &append, signer)?;
            apply_commit(&txn, &commit).map_err(|e| self.corrupt(e))?;
            // Durable in the journal (one write and fdatasync), redb without an fsync; or,
            // when a checkpoint is due, durable in redb and the journal starts over.
            let journaled = with_journal(&mut tail.journal, |j| j.write(&commit)) == Some(true);
            let made = if journaled {
                txn.set_durability(redb::Durability::None)
                    .map_err(|e| e.to_string())
                    .and_then(|()| txn.commit().map_err(|e| e.to_string()))
            } else {
                txn.commit().map_err(|e| e.to_string())
            };
            match made {
                Err(e) => {
                    if journaled {
                        with_journal(&mut tail.journal, Journal::take_back_unconfirmed);
                    }
                    return Err(self.corrupt(e));
                }
                Ok(()) if journaled => {
                    if let Some(journal) = tail.journal.as_mut() {
                        journal.confirm();
                    }
                }
                Ok(()) => {
                    with_journal(&mut tail.journal, Journal::restart);
                }
            }
            Ok((indices, commit.head))
        })?;
        self.committed(tail, head);
        Ok(indices)
    }

    /// After a purge or a compaction (both durable in redb): the journal starts over with
    /// nothing of what they deleted in it.
    fn erase_journal(&self, tail: &mut Tail) {
        with_journal(&mut tail.journal, Journal::erase);
    }

    /// After a commit: the chain's new end, the witness, and whoever follows the chain.
    fn committed(&self, tail: &mut Tail, head: Option<SignedHead>) {
        if let Some(head) = head {
            tail.last = Some((head.index, head.hash));
            // Outside redb, so a repair that drops this commit is seen at the next open.
            if let Err(e) = self.witness.write(&head) {
                tracing::warn!(error = %e, "cannot update the record's witness file");
            }
            self.appended.notify_all();
        }
    }

    /// Writes the entries, their payloads and the sessions they touch, and the signed head.
    fn write_entries(
        &self,
        txn: &redb::WriteTransaction,
        last: Option<(u64, Hash)>,
        append: &Append<'_>,
        signer: &SigningKey,
    ) -> Result<(Vec<u64>, Option<SignedHead>), RecordError> {
        let (indices, commit) = self.prepare(txn, last, append, signer)?;
        apply_commit(txn, &commit).map_err(|e| self.corrupt(e))?;
        Ok((indices, commit.head))
    }

    /// Chains the entries after `last` and says what the commit writes: one block for the
    /// entries and their payloads, the sessions rows, the signed head.
    fn prepare(
        &self,
        txn: &redb::WriteTransaction,
        last: Option<(u64, Hash)>,
        append: &Append<'_>,
        signer: &SigningKey,
    ) -> Result<(Vec<u64>, Commit), RecordError> {
        let sessions = txn.open_table(SESSIONS).map_err(|e| self.corrupt(e))?;
        let linked = link::link(
            last,
            append.first,
            append.events,
            signer,
            |id| match sessions.get(id).map_err(|e| self.corrupt(e))? {
                Some(bytes) => serde_json::from_slice(bytes.value())
                    .map(Some)
                    .map_err(|e| self.corrupt(e)),
                None => Ok(None),
            },
        )?;
        // One row for the whole commit (a block), however many entries it holds.
        let mut indices = Vec::with_capacity(linked.rows.len());
        let mut block = Vec::with_capacity(
            linked
                .rows
                .iter()
                .map(|r| 16 + r.stored.len() + r.payload.len())
                .sum::<usize>()
                + 1,
        );
        for row in &linked.rows {
            blocks::put(&mut block, row.index, &row.stored, Some(&row.payload));
            indices.push(row.index);
        }
        let mut rows = Vec::with_capacity(linked.sessions.len());
        for summary in &linked.sessions {
            let bytes = serde_json::to_vec(summary).map_err(|e| self.corrupt(e))?;
            rows.push((summary.id.clone(), bytes));
        }
        let commit = Commit {
            last: indices.last().copied().unwrap_or_default(),
            block,
            sessions: rows,
            head: linked.head,
        };
        Ok((indices, commit))
    }

    /// The index the next entry will get (the number of entries).
    pub fn next_index(&self) -> u64 {
        self.lock_tail().last.map_or(0, |(index, _)| index + 1)
    }

    /// Waits until the chain holds an entry at `index`, or `timeout` passed. Returns whether it
    /// does.
    pub fn wait_for(&self, index: u64, timeout: Duration) -> bool {
        let tail = self.lock_tail();
        let (tail, _) = self
            .appended
            .wait_timeout_while(tail, timeout, |t| {
                t.last.is_none_or(|(last, _)| last < index)
            })
            .unwrap_or_else(|e| e.into_inner());
        tail.last.is_some_and(|(last, _)| last >= index)
    }

    /// Up to `max` entries from `from` on, in order, with their payloads.
    pub fn entries_from(&self, from: u64, max: usize) -> Result<Vec<Recorded>, RecordError> {
        self.read_entries(from.., max, |_| true)
    }

    /// Up to `max` entries in `range` that `keep` takes, in order, with their payloads.
    fn read_entries(
        &self,
        range: impl std::ops::RangeBounds<u64>,
        max: usize,
        keep: impl Fn(&Entry) -> bool,
    ) -> Result<Vec<Recorded>, RecordError> {
        guarded(&self.path, || {
            let db = self.db();
            let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
            let log = self.log_read(&txn)?;
            let mut out = Vec::new();
            if max == 0 {
                return Ok(out);
            }
            log.scan(range, |held| {
                let entry = decode_stored(&held.stored)?;
                if keep(&entry) {
                    let payload = held
                        .payload
                        .map(|p| p.get(NONCE_LEN..).unwrap_or_default().to_vec());
                    out.push(Recorded { entry, payload });
                }
                Ok(out.len() < max)
            })
            .map_err(|e| self.corrupt(e))?;
            Ok(out)
        })
    }

    /// Entry `index` with its payload, if the store holds it.
    pub fn entry(&self, index: u64) -> Result<Option<Recorded>, RecordError> {
        let found = self.entries_from(index, 1)?;
        Ok(found.into_iter().find(|r| r.entry.index == index))
    }

    /// The signed head that covers entry `index`: the head of the commit that wrote it.
    pub fn covering_head(&self, index: u64) -> Result<Option<SignedHead>, RecordError> {
        guarded(&self.path, || {
            let db = self.db();
            let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
            let checkpoints = txn.open_table(CHECKPOINTS).map_err(|e| self.corrupt(e))?;
            let mut range = checkpoints.range(index..).map_err(|e| self.corrupt(e))?;
            match range.next() {
                None => Ok(None),
                Some(row) => {
                    let (_, value) = row.map_err(|e| self.corrupt(e))?;
                    SignedHead::decode(value.value()).map(Some).ok_or_else(|| {
                        self.corrupt(format!("the head covering entry {index} is malformed"))
                    })
                }
            }
        })
    }

    /// Where the sink `name` resumes: the index of the next entry to deliver to it.
    pub fn sink_cursor(&self, name: &str) -> Result<Option<u64>, RecordError> {
        guarded(&self.path, || {
            let db = self.db();
            let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
            let table = txn.open_table(SINK_CURSORS).map_err(|e| self.corrupt(e))?;
            let cursor = table.get(name).map_err(|e| self.corrupt(e))?;
            Ok(cursor.map(|v| v.value()))
        })
    }

    /// Moves the sink `name`'s cursor, durably: what it delivered is never delivered again
    /// after a restart (unless the commit is lost with a crash: delivery is at least once).
    pub fn set_sink_cursor(&self, name: &str, next: u64) -> Result<(), RecordError> {
        self.commit_row(|txn| {
            txn.open_table(SINK_CURSORS)?.insert(name, next)?;
            Ok(())
        })
    }

    /// One row beside the chain (a sink cursor, a review's state) in a commit of its own.
    fn commit_row(
        &self,
        write: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), RecordError> {
        guarded(&self.path, || {
            self.check_open()?;
            let db = self.db();
            let txn = db.begin_write().map_err(|e| self.corrupt(e))?;
            write(&txn).map_err(|e| self.corrupt(e))?;
            txn.commit().map_err(|e| self.corrupt(e))
        })
    }

    /// Stores a review's current state (one small commit; reviews change rarely). Its
    /// history, and the state itself, are in the chain first (the engine's `review`).
    pub fn put_review(&self, id: &str, review: &[u8]) -> Result<(), RecordError> {
        self.commit_row(|txn| {
            txn.open_table(REVIEWS)?.insert(id, review)?;
            Ok(())
        })
    }

    /// Every stored review.
    pub fn reviews(&self) -> Result<Vec<Vec<u8>>, RecordError> {
        guarded(&self.path, || {
            let db = self.db();
            let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
            let table = txn.open_table(REVIEWS).map_err(|e| self.corrupt(e))?;
            let mut all = Vec::new();
            for row in table.iter().map_err(|e| self.corrupt(e))? {
                all.push(row.map_err(|e| self.corrupt(e))?.1.value().to_vec());
            }
            Ok(all)
        })
    }

    /// Stores a runtime connection's row, or removes it (`None`); its change is in the chain
    /// first.
    pub fn put_connection(&self, name: &str, row: Option<&[u8]>) -> Result<(), RecordError> {
        self.commit_row(|txn| {
            let mut table = txn.open_table(CONNECTIONS)?;
            match row {
                Some(row) => {
                    table.insert(name, row)?;
                }
                None => {
                    table.remove(name)?;
                }
            }
            Ok(())
        })
    }

    /// Every runtime connection's row, by name.
    pub fn connections(&self) -> Result<Vec<(String, Vec<u8>)>, RecordError> {
        guarded(&self.path, || {
            let db = self.db();
            let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
            let table = txn.open_table(CONNECTIONS).map_err(|e| self.corrupt(e))?;
            let mut all = Vec::new();
            for row in table.iter().map_err(|e| self.corrupt(e))? {
                let (name, value) = row.map_err(|e| self.corrupt(e))?;
                all.push((name.value().to_string(), value.value().to_vec()));
            }
            Ok(all)
        })
    }

    /// The signed head of the chain, `None` while the record is empty.
    pub fn head(&self) -> Result<Option<SignedHead>, RecordError> {
        guarded(&self.path, || {
            let db = self.db();
            let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
            let meta = txn.open_table(META).map_err(|e| self.corrupt(e))?;
            let head = meta.get("head").map_err(|e| self.corrupt(e))?;
            Ok(head.and_then(|v| SignedHead::decode(v.value())))
        })
    }

    /// Every session's index row as stored, newest first: no entry is read, so a search over
    /// many sessions stays cheap. Not checked against the chain: read a session again with
    /// [`Store::session`] before showing it or deciding access on it.
    pub fn session_rows(&self) -> Result<Vec<SessionSummary>, RecordError> {
        guarded(&self.path, || {
            let db = self.db();
            let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
            let table = txn.open_table(SESSIONS).map_err(|e| self.corrupt(e))?;
            let mut all = Vec::new();
            for row in table.iter().map_err(|e| self.corrupt(e))? {
                let (_, value) = row.map_err(|e| self.corrupt(e))?;
                all.push(serde_json::from_slice(value.value()).map_err(|e| self.corrupt(e))?);
            }
            SessionSummary::newest_first(&mut all);
            Ok(all)
        })
    }

    /// Every session's summary, newest first. Who opened it, on which connection and from
    /// where are read from its chained `session-open` entry, never from the index alone.
    pub fn sessions(&self) -> Result<Vec<SessionSummary>, RecordError> {
        guarded(&self.path, || {
            let db = self.db();
            let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
            let table = txn.open_table(SESSIONS).map_err(|e| self.corrupt(e))?;
            let log = self.log_read(&txn)?;
            let mut all = Vec::new();
            for row in table.iter().map_err(|e| self.corrupt(e))? {
                let (id, value) = row.map_err(|e| self.corrupt(e))?;
                all.push(self.summary_from(&log, id.value(), value.value())?);
            }
            SessionSummary::newest_first(&mut all);
            Ok(all)
        })
    }

    /// One session's summary, looked up by its id (its identity from the chain, as above).
    pub fn session(&self, id: &str) -> Result<Option<SessionSummary>, RecordError> {
        guarded(&self.path, || {
            let db = self.db();
            let txn = db.begin_read().map_err(|e| self.corrupt(e))?;
            let table = txn.open_table(SESSIONS).map_err(|e| self.corrupt(e))?;
            let log = self.log_read(&txn)?;
            let row = table.get(id).map_err(|e| self.corrupt(e))?;
            row.map(|v| self.summary_from(&log, id, v.value()))
                .transpose()
        })
    }

    /// A sessions-index row, with subject, connection, client and start taken from the
    /// session's opening entry; a row that points at anything else is refused as corrupt.
    fn summary_from(
        &self,
        log: &ReadLog,
        id: &str,
        row: &[u8],
    ) -> Result<SessionSummary, RecordError> {
        let summary: SessionSummary = serde_json::from_slice(row).map_err(|e| self.corrupt(e))?;
        let opening = log.get(summary.first_index).map_err(|e| self.corrupt(e))?;
        SessionSummary::from_index_row(id, row, opening.as_ref().map(|h| h.stored.as_slice()))
            .map_err(|e| self.corrupt(e))
    }

    /// The entries of one session, in order, with their payloads.
    pub fn session_events(&self, id: &str) -> Result<Vec<Recorded>, RecordError> {
        let Some(summary) = self.session(id)? else {
            return Ok(vec![]);
        };
        let range = summary.first_index..=summary.last_index;
        self.read_entries(range, usize::MAX, |entry| entry.session == id)
    }

    /// Up to `max` entries of session `id` within `range`, in order, with their payloads: a
    /// long session read a page at a time, so the reader's memory stays flat.
    pub fn session_page(
        &self,
        id: &str,
        range: std::ops::RangeInclusive<u64>,
        max: usize,
    ) -> Result<Vec<Recorded>, RecordError> {
        self.read_entries(range, max, |entry| entry.session == id)
    }
}

/// Ascending entry indices as ranges `(first, last)` of consecutive ones.
pub fn index_ranges(sorted: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for index in sorted {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == index => *last = index,
            _ => ranges.push((index, index)),
        }
    }
    ranges
}

/// An entry as stored (its encoding followed by its hash), decoded.
pub fn decode_stored(value: &[u8]) -> Result<Entry, String> {
    Entry::decode(&value[..value.len().saturating_sub(32)])
}

fn sign(signer: &SigningKey, index: u64, hash: Hash) -> SignedHead {
    SignedHead {
        index,
        hash,
        signature: signer.sign(&SignedHead::message(index, &hash)).to_bytes(),
        public_key: signer.verifying_key().to_bytes(),
    }
}

impl NewEvent {
    /// An event of the gateway's own (no session), stamped now.
    pub fn gateway(kind: &str, meta: &serde_json::Value) -> NewEvent {
        NewEvent {
            session: String::new(),
            seq: 0,
            kind: kind.into(),
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            meta: meta.to_string(),
            payload: Vec::new(),
        }
    }
}

pub(crate) fn open_db(path: &Path) -> Result<Database, redb::DatabaseError> {
    // redb caches up to 1 GiB by default; the record is written far more than read, so a
    // small cache keeps the gateway's memory flat however much it records.
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

/// Writes what `commit` holds into redb: the way an append and a replay from the journal
/// write alike.
fn apply_commit(txn: &redb::WriteTransaction, commit: &Commit) -> Result<(), String> {
    if !commit.block.is_empty() {
        let mut blocks = txn.open_table(BLOCKS).map_err(|e| e.to_string())?;
        blocks
            .insert(commit.last, commit.block.as_slice())
            .map_err(|e| e.to_string())?;
    }
    let mut sessions = txn.open_table(SESSIONS).map_err(|e| e.to_string())?;
    for (id, row) in &commit.sessions {
        sessions
            .insert(id.as_str(), row.as_slice())
            .map_err(|e| e.to_string())?;
    }
    let Some(head) = &commit.head else {
        return Ok(());
    };
    let encoded = head.encode();
    let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(|e| e.to_string())?;
    checkpoints
        .insert(head.index, encoded.as_slice())
        .map_err(|e| e.to_string())?;
    let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
    meta.insert("head", encoded.as_slice())
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The last entry's index and hash.
fn tail_of<T: ReadableTable<u64, &'static [u8]>>(
    log: &blocks::Log<T>,
) -> Result<Option<(u64, Hash)>, String> {
    let Some(last) = log.last()? else {
        return Ok(None);
    };
    Ok(Some((last.index, last.hash()?)))
}

/// The log (both layouts) in a write transaction.
fn write_log(txn: &redb::WriteTransaction) -> Result<WriteLog<'_>, redb::TableError> {
    Ok(blocks::Log {
        rows: txn.open_table(ENTRIES)?,
        payloads: txn.open_table(PAYLOADS)?,
        blocks: Some(txn.open_table(BLOCKS)?),
    })
}

/// Applies, in one durable commit, the journal's commits that `db` lacks (those past its last
/// entry), after checking that each follows the chain's end and ends with a head the record
/// key signed for its last entry. Returns how many it applied.
fn replay_journal(db: &Database, commits: Vec<Commit>) -> Result<usize, String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    let mut last = tail_of(&write_log(&txn).map_err(|e| e.to_string())?)?;
    let mut applied = 0;
    for commit in commits {
        if commit.block.is_empty() || last.is_some_and(|(index, _)| commit.last <= index) {
            continue; // redb has it (made durable before the stop)
        }
        let refuse = |why: &str| {
            Err(format!(
                "the journal's commit of entries up to {} {why}; the journal is kept as it is (a store file put in place by hand needs its journal moved aside: `sluice store restore` does both)",
                commit.last
            ))
        };
        let items = blocks::decode(&commit.block)?;
        let (Some(first), Some(newest)) = (items.first(), items.last()) else {
            return refuse("is empty");
        };
        let entry = decode_stored(&first.stored)?;
        let follows = entry.prev_hash == last.map_or(GENESIS, |(_, hash)| hash)
            && last.is_none_or(|(index, _)| entry.index > index);
        if !follows {
            return refuse("does not follow the store's last entry");
        }
        let hash = newest.hash()?;
        let signed = commit.head.as_ref().is_some_and(|head| {
            head.index == commit.last
                && newest.index == commit.last
                && head.hash == hash
                && head.signature_holds()
        });
        if !signed {
            return refuse("has no valid signed head for its last entry");
        }
        apply_commit(&txn, &commit)?;
        last = Some((commit.last, hash));
        applied += 1;
    }
    if applied > 0 {
        txn.commit().map_err(|e| e.to_string())?;
    }
    Ok(applied)
}

/// Runs `op` on the journal. An error turns the journal off until the next start: commits
/// then go to redb durably, slower and as safe.
fn with_journal<T>(
    journal: &mut Option<Journal>,
    op: impl FnOnce(&mut Journal) -> std::io::Result<T>,
) -> Option<T> {
    let open = journal.as_mut()?;
    match op(open) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::error!(
                journal = %open.path().display(),
                error = %e,
                "the record's journal failed; committing to the store directly until the next start"
            );
            *journal = None;
            None
        }
    }
}

/// Events for the crate's tests.
#[cfg(test)]
mod test_events {
    /// Frame `seq` of session `s-1`, payload `payload SEQ`.
    pub fn frame(seq: u64) -> super::NewEvent {
        super::NewEvent {
            session: "s-1".into(),
            seq,
            kind: "frame".into(),
            time_ms: 1_764_000_000_000 + seq,
            meta: "{}".into(),
            payload: format!("payload {seq}").into_bytes(),
        }
    }
}

/// The session index is a derived view (the chain is the truth), kept up to date per commit.
impl SessionSummary {
    /// The order sessions are listed in: newest first, then by id.
    pub fn newest_first(sessions: &mut [SessionSummary]) {
        sessions.sort_by(|a, b| {
            b.started_ms
                .cmp(&a.started_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
    }

    /// A sessions-index row, with subject, connection, client and start taken from the
    /// session's opening entry (`opening`, as stored); a row that points at anything else is
    /// refused as corrupt.
    pub fn from_index_row(
        id: &str,
        row: &[u8],
        opening: Option<&[u8]>,
    ) -> Result<SessionSummary, String> {
        let mut summary: SessionSummary = serde_json::from_slice(row).map_err(|e| e.to_string())?;
        let forged = || {
            format!(
                "the sessions index row of {id} does not match the session's opening entry (the index was altered; `sluice verify` names it)"
            )
        };
        let opening = decode_stored(opening.ok_or_else(forged)?)?;
        if opening.session != id
            || summary.id != id
            || opening.kind != kinds::SESSION_OPEN
            || opening.index != summary.first_index
        {
            return Err(forged());
        }
        let mut derived = SessionSummary::new(&opening.fields());
        derived.update(&opening.fields());
        summary.subject = derived.subject;
        summary.connection = derived.connection;
        summary.client = derived.client;
        summary.started_ms = derived.started_ms;
        Ok(summary)
    }

    /// A frame's part in the summary. Read from the meta's text, not parsed: this runs for
    /// every frame recorded.
    fn count_frame(&mut self, entry: &Fields<'_>) {
        let meta = entry.meta;
        if self.first_input_at.is_none()
            && meta.contains(r#""dir":"in""#)
            && (meta.contains(r#""content":"statement""#) || meta.contains(r#""content":"line""#))
        {
            self.first_input_at = Some(entry.index);
        }
        if meta.contains(r#""outcome":"deny""#) {
            self.refused += 1;
        }
    }

    fn new(first: &Fields<'_>) -> SessionSummary {
        SessionSummary {
            id: first.session.to_string(),
            started_ms: first.time_ms,
            first_index: first.index,
            ..SessionSummary::default()
        }
    }

    fn update(&mut self, entry: &Fields<'_>) {
        self.last_index = entry.index;
        let meta = || serde_json::from_str::<serde_json::Value>(entry.meta).unwrap_or_default();
        match entry.kind {
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
            "frame" => self.count_frame(entry),
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

/// What `restore` did.
#[derive(Clone, Debug, Serialize)]
pub struct Restored {
    /// The last entry of the backup, now the chain's before the restore entry.
    pub restored_to: Option<u64>,
    /// Entries of the replaced store the restore declares abandoned.
    pub skipped: Option<(u64, u64)>,
    /// The restore's own entry.
    pub entry: u64,
    /// Where the replaced store file was moved (kept as evidence), if there was one.
    pub replaced_moved_to: Option<PathBuf>,
}

/// Puts `backup` in place of the store at `path` (the gateway stopped) and records it: a
/// signed `restore` entry that skips every index the replaced store had reached (its own head,
/// or the witness file's), so heads anchored from the abandoned history are accounted for by
/// a decision the key holder signed, and no index is given twice. The replaced file is kept
/// beside it. `by` says who restored it.
pub fn restore(
    path: &Path,
    backup: &Path,
    signer: SigningKey,
    by: &str,
) -> Result<Restored, RecordError> {
    let io = |message: String| RecordError::Io {
        path: path.display().to_string(),
        message,
    };
    let checked = verify_store(backup, VerifyOptions::default());
    if let Some(problem) = checked.problem {
        return Err(io(format!(
            "the backup {} does not verify: {problem}",
            backup.display()
        )));
    }
    // How far the replaced store had come: its own head (when it still opens) and the witness.
    let current = match redb::ReadOnlyDatabase::open(path) {
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(io("it is in use: stop the gateway before restoring".into()));
        }
        Ok(db) => read_head(&db),
        // Missing, or too damaged to read (the reason to restore): the witness tells.
        Err(_) => None,
    };
    let replaced_head = [current, Witness::read_beside(path)]
        .into_iter()
        .flatten()
        .max_by_key(|h| h.index);
    let mut replaced_moved_to = None;
    let replaced_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if path.exists() {
        let aside = path.with_extension(format!("redb.replaced-{replaced_at}"));
        std::fs::rename(path, &aside).map_err(|e| io(format!("cannot move it aside: {e}")))?;
        replaced_moved_to = Some(aside);
    }
    // The journal holds the replaced store's last commits, not the backup's: it goes aside
    // with it.
    let journal = Journal::path_for(path);
    if journal.exists() {
        let aside = journal.with_extension(format!("journal.replaced-{replaced_at}"));
        std::fs::rename(&journal, aside)
            .map_err(|e| io(format!("cannot move the journal aside: {e}")))?;
    }
    let copying = path.with_extension("redb.restoring");
    std::fs::copy(backup, &copying)
        .and_then(|_| std::fs::rename(&copying, path))
        .map_err(|e| io(format!("cannot copy the backup in: {e}")))?;
    let store = Store::open_raw(path, signer)?;
    store.check_key()?;
    let restored_to = store.lock_tail().last.map(|(index, _)| index);
    let from = restored_to.map_or(0, |last| last + 1);
    let skipped = replaced_head
        .as_ref()
        .filter(|head| head.index >= from)
        .map(|head| (from, head.index));
    let meta = serde_json::json!({
        "by": by,
        "backup": backup.display().to_string(),
        "restored_head": checked.head,
        "replaced_head": replaced_head,
        "gap": skipped.map(|(from, to)| [from, to]),
    });
    let index = skipped.map_or(from, |(_, to)| to + 1);
    let entry = store.append_at(kinds::RESTORE, index, meta)?;
    store.close();
    Ok(Restored {
        restored_to,
        skipped,
        entry,
        replaced_moved_to,
    })
}

fn read_head(db: &impl ReadableDatabase) -> Option<SignedHead> {
    let txn = db.begin_read().ok()?;
    let meta = txn.open_table(META).ok()?;
    let head = meta.get("head").ok()??;
    SignedHead::decode(head.value())
}
