//! Retention: the payloads of expired sessions (and of old decisions) are deleted, then the
//! store is rewritten so that the deleted bytes are gone from the file, not just unreachable.
//!
//! The chain itself stays: entries keep their digests, so `verify` still proves that nothing
//! was altered and reports the purged payloads as purged.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;

use super::{
    Append, BLOCKS, CHECKPOINTS, ENTRIES, META, NewEvent, PAYLOADS, REVIEWS, RecordError, SESSIONS,
    SINK_CURSORS, SessionSummary, Store, decode_stored, guarded, kinds, open_db,
};

/// Rows copied per transaction when the store is rewritten.
const COPY_CHUNK: usize = 10_000;
const COPY_CHUNK_BYTES: usize = 64 << 20;
/// Where the scan for old session-less review events resumes (`META`).
const REVIEW_SCAN: &str = "retention-review-scan";

/// How long recordings are kept; what has no rule is kept forever.
#[derive(Clone, Debug, Default)]
pub struct RetentionRules {
    /// Sessions by connection, counted from their end.
    pub sessions: BTreeMap<String, Duration>,
    /// Decided reviews and access requests, counted from when they stopped mattering.
    pub reviews: Option<Duration>,
}

impl RetentionRules {
    /// Whether a session's payloads are due at `now_ms`, given when it ended (a session whose
    /// gateway died counts as ended at its last entry). Live and purged sessions never are.
    pub fn session_due(
        &self,
        summary: &SessionSummary,
        ended_ms: u64,
        now_ms: u64,
        live: &HashSet<String>,
    ) -> bool {
        let Some(&keep) = self.sessions.get(&summary.connection) else {
            return false;
        };
        summary.purged_ms.is_none()
            && !live.contains(&summary.id)
            && expired(keep, ended_ms, now_ms)
    }

    /// Whether a review's row (decided, and past mattering) is due at `now_ms`.
    pub fn review_due(&self, review: &serde_json::Value, now_ms: u64) -> bool {
        let Some(keep) = self.reviews else {
            return false;
        };
        let time = |key: &str| review.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
        let last_mattered = time("created_ms")
            .max(time("expires_ms"))
            .max(time("granted_until_ms"));
        review.get("status").and_then(|s| s.as_str()) != Some("pending")
            && expired(keep, last_mattered, now_ms)
    }

    /// Whether an access request's decision recorded at `time_ms` is due.
    pub fn decision_due(&self, time_ms: u64, now_ms: u64) -> bool {
        self.reviews
            .is_some_and(|keep| expired(keep, time_ms, now_ms))
    }
}

fn expired(keep: Duration, since_ms: u64, now_ms: u64) -> bool {
    since_ms.saturating_add(keep.as_millis() as u64) <= now_ms
}

/// What one purge removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    /// Sessions whose payloads were deleted.
    pub sessions: Vec<String>,
    /// Decided reviews removed from the queue's table.
    pub reviews: Vec<String>,
    /// Entry ranges (first, last) whose payloads were deleted, in order.
    pub ranges: Vec<(u64, u64)>,
    /// The chained `retention` entry that lists this purge (committed with it).
    pub entry: Option<u64>,
}

impl Purged {
    /// Payloads deleted, in all.
    pub fn payloads(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(first, last)| last - first + 1)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.reviews.is_empty()
    }
}

/// The file sizes around a compaction.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Compacted {
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl Store {
    /// Deletes the payloads that `rules` say have expired at `now_ms`, in one transaction
    /// that also appends the `retention` entry listing them (`by` says who ran it): a crash
    /// leaves either both or neither, so every missing payload is one a chained purge names.
    /// Sessions in `live` are never purged; a session that never closed and is not live (its
    /// gateway died) counts as ended at its last entry.
    pub fn purge(
        &self,
        rules: &RetentionRules,
        now_ms: u64,
        live: &HashSet<String>,
        by: &str,
    ) -> Result<Purged, RecordError> {
        let mut tail = self.lock_tail();
        let (purged, head) = guarded(&self.path, || {
            self.check_open()?;
            let db = self.db();
            let txn = db.begin_write().map_err(|e| self.corrupt(e))?;
            let mut purged = self.delete_expired(&txn, rules, now_ms, live)?;
            let mut head = None;
            if !purged.is_empty() {
                let meta = serde_json::json!({
                    "by": by,
                    "sessions": purged.sessions,
                    "reviews": purged.reviews,
                    "payloads": purged.payloads(),
                    "ranges": purged.ranges,
                });
                let event = super::NewEvent {
                    time_ms: now_ms,
                    ..NewEvent::gateway(kinds::RETENTION, &meta)
                };
                let append = Append {
                    events: std::slice::from_ref(&event),
                    first: tail.last.map_or(0, |(index, _)| index + 1),
                    signer: None,
                };
                let (indices, signed) =
                    self.write_entries(&txn, tail.last, &append, &tail.signer)?;
                purged.entry = indices.first().copied();
                head = signed;
            }
            txn.commit().map_err(|e| self.corrupt(e))?;
            Ok((purged, head))
        })?;
        self.committed(&mut tail, head);
        if !purged.is_empty() {
            self.erase_journal(&mut tail);
        }
        Ok(purged)
    }

    /// The deletions of one purge, inside its transaction.
    fn delete_expired(
        &self,
        txn: &redb::WriteTransaction,
        rules: &RetentionRules,
        now_ms: u64,
        live: &HashSet<String>,
    ) -> Result<Purged, RecordError> {
        let mut purged = Purged::default();
        let mut removed: Vec<u64> = Vec::new();
        {
            let mut log = self.log_in(txn)?;
            let mut sessions = txn.open_table(SESSIONS).map_err(|e| self.corrupt(e))?;
            let mut due: Vec<SessionSummary> = Vec::new();
            for row in sessions.iter().map_err(|e| self.corrupt(e))? {
                let (_, value) = row.map_err(|e| self.corrupt(e))?;
                let summary: SessionSummary =
                    serde_json::from_slice(value.value()).map_err(|e| self.corrupt(e))?;
                if !rules.sessions.contains_key(&summary.connection) || summary.purged_ms.is_some()
                {
                    continue;
                }
                let ended = match summary.ended_ms {
                    Some(ended) => ended,
                    None => match log.get(summary.last_index).map_err(|e| self.corrupt(e))? {
                        Some(last) => {
                            decode_stored(&last.stored)
                                .map_err(|e| self.corrupt(e))?
                                .time_ms
                        }
                        None => continue,
                    },
                };
                if rules.session_due(&summary, ended, now_ms, live) {
                    due.push(summary);
                }
            }
            due.sort_by_key(|s| s.first_index);
            for mut summary in due {
                let range = summary.first_index..=summary.last_index;
                let of_session = log
                    .purge(range, |held| {
                        Ok(Some(decode_stored(&held.stored)?.session == summary.id))
                    })
                    .map_err(|e| self.corrupt(e))?;
                removed.extend(of_session);
                summary.purged_ms = Some(now_ms);
                let bytes = serde_json::to_vec(&summary).map_err(|e| self.corrupt(e))?;
                sessions
                    .insert(summary.id.as_str(), bytes.as_slice())
                    .map_err(|e| self.corrupt(e))?;
                purged.sessions.push(summary.id);
            }

            if rules.reviews.is_some() {
                // The queue's state of decided reviews...
                let mut reviews = txn.open_table(REVIEWS).map_err(|e| self.corrupt(e))?;
                for row in reviews.iter().map_err(|e| self.corrupt(e))? {
                    let (id, value) = row.map_err(|e| self.corrupt(e))?;
                    let review: serde_json::Value =
                        serde_json::from_slice(value.value()).unwrap_or_default();
                    if rules.review_due(&review, now_ms) {
                        purged.reviews.push(id.value().to_string());
                    }
                }
                for id in &purged.reviews {
                    reviews.remove(id.as_str()).map_err(|e| self.corrupt(e))?;
                }
                // ...and the payloads of decisions that belong to no session (access
                // requests; a held frame's decisions go with its session). Entries are in
                // time order: scan from where the last purge stopped to the first one that
                // is still kept.
                let mut meta = txn.open_table(META).map_err(|e| self.corrupt(e))?;
                let mut scan = meta
                    .get(REVIEW_SCAN)
                    .map_err(|e| self.corrupt(e))?
                    .and_then(|v| v.value().try_into().ok().map(u64::from_be_bytes))
                    .unwrap_or(0);
                let decisions = log
                    .purge(scan..=u64::MAX, |held| {
                        let entry = decode_stored(&held.stored)?;
                        if !rules.decision_due(entry.time_ms, now_ms) {
                            return Ok(None);
                        }
                        scan = held.index + 1;
                        Ok(Some(entry.session.is_empty() && entry.kind == "review"))
                    })
                    .map_err(|e| self.corrupt(e))?;
                removed.extend(decisions);
                meta.insert(REVIEW_SCAN, &scan.to_be_bytes()[..])
                    .map_err(|e| self.corrupt(e))?;
            }
        }
        removed.sort_unstable();
        purged.ranges = super::index_ranges(removed);
        Ok(purged)
    }

    /// Rewrites the store into a fresh file holding only what is live, then puts it in place
    /// of the old one: deleted payloads leave no copy behind in free pages. Recording waits
    /// meanwhile (the whole store is copied once).
    pub fn compact(&self) -> Result<Compacted, RecordError> {
        let io = |e: std::io::Error| RecordError::Io {
            path: self.path.display().to_string(),
            message: format!("compaction: {e}"),
        };
        self.check_open()?;
        // The tail before the database, in the order appends take them.
        let mut tail = self.lock_tail();
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        let bytes_before = std::fs::metadata(&self.path).map_err(io)?.len();
        let fresh = compacting_path(&self.path);
        let _ = std::fs::remove_file(&fresh);
        {
            let to = open_db(&fresh).map_err(|e| self.corrupt(e))?;
            for table in [ENTRIES, PAYLOADS, BLOCKS, CHECKPOINTS] {
                copy_indexed(&db, &to, table).map_err(|e| self.corrupt(e))?;
            }
            for table in [META, SESSIONS, REVIEWS] {
                copy_named(&db, &to, table).map_err(|e| self.corrupt(e))?;
            }
            copy_named(&db, &to, SINK_CURSORS).map_err(|e| self.corrupt(e))?;
        }
        std::fs::File::open(&fresh)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&fresh, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        *db = open_db(&self.path).map_err(|e| self.corrupt(e))?;
        self.erase_journal(&mut tail);
        let bytes_after = std::fs::metadata(&self.path).map_err(io)?.len();
        Ok(Compacted {
            bytes_before,
            bytes_after,
        })
    }
}

/// Where compaction writes the store's copy before it takes the store's place.
pub(super) fn compacting_path(store: &std::path::Path) -> std::path::PathBuf {
    store.with_extension("redb.compacting")
}

/// Copies a table keyed by entry index, in chunks.
fn copy_indexed(
    from: &Database,
    to: &Database,
    table: TableDefinition<u64, &[u8]>,
) -> Result<(), redb::Error> {
    let mut next = 0u64;
    loop {
        let read = from.begin_read()?;
        let source = read.open_table(table)?;
        let write = to.begin_write()?;
        let mut copied = 0;
        {
            let mut target = write.open_table(table)?;
            // Rows of a chunk, or its bytes (a block holds a whole commit), whichever ends first.
            let mut bytes = 0;
            let mut rows = source.range(next..)?;
            while copied < COPY_CHUNK && bytes < COPY_CHUNK_BYTES {
                let Some(row) = rows.next() else {
                    break;
                };
                let (key, value) = row?;
                target.insert(key.value(), value.value())?;
                next = key.value() + 1;
                bytes += value.value().len();
                copied += 1;
            }
            if copied < COPY_CHUNK && bytes < COPY_CHUNK_BYTES {
                drop(target);
                write.commit()?;
                return Ok(());
            }
        }
        write.commit()?;
    }
}

/// Copies a table keyed by name (small ones: sessions, reviews, meta, sink cursors).
fn copy_named<V: redb::Value + 'static>(
    from: &Database,
    to: &Database,
    table: TableDefinition<&str, V>,
) -> Result<(), redb::Error> {
    let read = from.begin_read()?;
    let source = read.open_table(table)?;
    let write = to.begin_write()?;
    {
        let mut target = write.open_table(table)?;
        for row in source.iter()? {
            let (key, value) = row?;
            target.insert(key.value(), value.value())?;
        }
    }
    write.commit()?;
    Ok(())
}
