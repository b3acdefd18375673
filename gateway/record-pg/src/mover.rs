//! Moves payloads out of PostgreSQL into the bucket (`[store.payloads]`), one part at a time,
//! on one node of the cluster at a time (a lease, like a sink's).
//!
//! Invariants:
//! - A payload moves only after it is durable in PostgreSQL (it is read from there), so a
//!   frame a client saw never has its only copy on one node's disk. PostgreSQL is the spool
//!   while the bucket is down: nothing waits on a node's disk.
//! - An object is read back and compared before its payloads' rows give up their bytes.
//! - The move is chained: one transaction appends a `payload-move` entry (object, session,
//!   entries, SHA-256) and points the rows at their slices, and it commits only while this
//!   run still holds the lease. A mover that dies mid-move leaves the rows as they were:
//!   nothing looks altered.
//! - Every object is in `sluice.objects` before it is written, doomed until its move
//!   commits: an object of a move that never committed, and those of sessions retention
//!   purged, are deleted from the bucket, then forgotten. Keys are never reused, and the
//!   deletion and the commit both lock the object's row, so no committed move ever names a
//!   deleted object.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use postgres::Client;
use sha2::Digest;
use sluice_record::{NewEvent, kinds};

use super::bucket::{Bucket, BucketSettings};
use super::pool::{Failed, Pool, Target};
use super::{append_in, now_ms, take_lease};

/// `[store.payloads]` as the record takes it.
#[derive(Clone, Debug)]
pub struct MoveSettings {
    pub bucket: BucketSettings,
    /// A live session's payloads move once this many bytes wait; an ended session's move
    /// whatever its size. Each object holds up to about this much.
    pub part_bytes: usize,
    /// How often the mover looks for payloads to move.
    pub every: Duration,
}

/// The lease that makes one node the cluster's mover.
const LEASE: &str = "payload-mover";

/// What the mover needs of the record, on a connection of its own.
pub struct Mover {
    pub pool: Pool,
    pub bucket: Arc<Bucket>,
    pub settings: MoveSettings,
    pub signer: SigningKey,
    pub node: String,
    /// Who holds the lease: this run of this node.
    pub holder: String,
    pub lease_ttl: Duration,
    pub closed: Arc<AtomicBool>,
}

/// Whether the last round could reach the bucket, so outages are logged once, not per round.
#[derive(Default)]
struct Health {
    failing: bool,
}

impl Mover {
    pub fn spawn(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("record-pg-mover".into())
            .spawn(move || {
                let mut health = Health::default();
                while !self.closed.load(Ordering::SeqCst) {
                    match self.round() {
                        Ok(()) if health.failing => {
                            health.failing = false;
                            tracing::info!(bucket = %self.bucket.label(), "payloads move to the bucket again");
                        }
                        Ok(()) => {}
                        Err(why) if !health.failing => {
                            health.failing = true;
                            tracing::warn!(bucket = %self.bucket.label(), error = %why, "payloads cannot move to the bucket; they wait in PostgreSQL");
                        }
                        Err(_) => {}
                    }
                    std::thread::sleep(self.settings.every);
                }
                self.pool.close();
            })
            .map(drop)
    }

    /// Deletes the objects of purged sessions, then moves each due session's payloads, a
    /// part at a time. Does nothing unless this node holds the lease.
    pub fn round(&self) -> Result<(), String> {
        if !self.lease()? {
            return Ok(());
        }
        self.delete_doomed()?;
        let part = self.settings.part_bytes as i64;
        let due: Vec<String> = self.db(move |c| {
            // Ended sessions, and live ones with a full part waiting.
            let rows = c.query(
                "SELECT p.session FROM sluice.payloads p
                 LEFT JOIN sluice.live l ON l.session = p.session
                 WHERE p.object IS NULL AND p.session <> ''
                 GROUP BY p.session
                 HAVING bool_and(l.session IS NULL) OR sum(length(p.body)) >= $1
                 ORDER BY min(p.idx)",
                &[&part],
            )?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })?;
        for session in due {
            while !self.closed.load(Ordering::SeqCst) && self.lease()? {
                if !self.move_part(&session)? {
                    break;
                }
            }
        }
        Ok(())
    }

    fn db<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Client) -> Result<T, Failed> + Send + 'static,
    ) -> Result<T, String> {
        self.pool.run(job).map_err(|e| e.to_string())
    }

    fn lease(&self) -> Result<bool, String> {
        let (holder, ttl) = (self.holder.clone(), self.lease_ttl);
        self.db(move |c| take_lease(c, LEASE, &holder, ttl))
    }

    /// Moves the next part of `session`'s payloads; false when nothing (more) is due.
    fn move_part(&self, session: &str) -> Result<bool, String> {
        let part = self.settings.part_bytes as i64;
        let id = session.to_string();
        let (rows, live): (Vec<(i64, Vec<u8>)>, bool) = self.db(move |c| {
            // Oldest first, up to the row that fills the part.
            let rows = c.query(
                "SELECT idx, body FROM (
                     SELECT idx, body,
                            sum(length(body)) OVER (ORDER BY idx) - length(body) AS before
                     FROM sluice.payloads
                     WHERE session = $1 AND object IS NULL AND session <> '') r
                 WHERE before < $2 ORDER BY idx",
                &[&id, &part],
            )?;
            let live = c
                .query_opt("SELECT 1 FROM sluice.live WHERE session = $1", &[&id])?
                .is_some();
            Ok((
                rows.into_iter().map(|r| (r.get(0), r.get(1))).collect(),
                live,
            ))
        })?;
        let bytes: usize = rows.iter().map(|(_, body)| body.len()).sum();
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(false);
        };
        if live && bytes < self.settings.part_bytes {
            return Ok(false);
        }
        let (first, last) = (first.0 as u64, last.0 as u64);
        let key = self.bucket.key(session, first, last)?;
        let mut object = Vec::with_capacity(bytes);
        let (mut indices, mut ats, mut lens) = (Vec::new(), Vec::new(), Vec::new());
        for (idx, body) in &rows {
            indices.push(*idx);
            ats.push(object.len() as i64);
            lens.push(body.len() as i64);
            object.extend_from_slice(body);
        }
        let (pending, id) = (key.clone(), session.to_string());
        self.db(move |c| {
            c.execute(
                "INSERT INTO sluice.objects (key, session, doomed_ms) VALUES ($1, $2, $3)",
                &[&pending, &id, &now_ms()],
            )?;
            Ok(())
        })?;
        self.bucket.put(&key, &object)?;
        if self.bucket.get(&key)?.as_deref() != Some(&object[..]) {
            return Err(format!(
                "{}: {key} did not read back as written",
                self.bucket.label()
            ));
        }
        let meta = serde_json::json!({
            "object": key,
            "session": session,
            "first": first,
            "last": last,
            "entries": rows.len(),
            "bytes": object.len(),
            "sha256": hex::encode(sha2::Sha256::digest(&object)),
        });
        let event = NewEvent::gateway(kinds::PAYLOAD_MOVE, &meta);
        let (signer, node, holder) = (self.signer.clone(), self.node.clone(), self.holder.clone());
        let moved_key = key.clone();
        let count = indices.len() as u64;
        let moved = self.db(move |c| {
            let mut txn = c.transaction()?;
            // Queue with appends and purges: a purge of this session either went first (its
            // rows are gone) or waits until this move is in.
            super::lock_head(&mut txn)?;
            let holds = txn
                .query_opt(
                    "SELECT 1 FROM sluice.leases
                     WHERE name = $1 AND holder = $2 AND until_ms > $3::bigint",
                    &[&LEASE, &holder, &now_ms()],
                )?
                .is_some();
            // The object's row, locked: gone if a deleter took it (this run lost the lease
            // for long enough), and then the object may be too.
            let listed = txn
                .query_opt(
                    "SELECT 1 FROM sluice.objects WHERE key = $1 FOR UPDATE",
                    &[&moved_key],
                )?
                .is_some();
            let swapped = if holds && listed {
                txn.execute(
                    "UPDATE sluice.payloads p SET body = NULL, object = $1, at = u.at, len = u.len
                     FROM unnest($2::bigint[], $3::bigint[], $4::bigint[]) AS u(idx, at, len)
                     WHERE p.idx = u.idx AND p.object IS NULL",
                    &[&moved_key, &indices, &ats, &lens],
                )?
            } else {
                0
            };
            if swapped != count {
                // Purged meanwhile, or the lease lapsed: nothing changes, and the object
                // stays doomed.
                txn.rollback()?;
                return Ok(false);
            }
            append_in(&mut txn, std::slice::from_ref(&event), &signer, &node)?;
            txn.execute(
                "UPDATE sluice.objects SET doomed_ms = NULL WHERE key = $1",
                &[&moved_key],
            )?;
            txn.commit()?;
            Ok(true)
        })?;
        if moved {
            tracing::debug!(object = %key, entries = count, bytes = object.len(), "payloads moved to the bucket");
        }
        Ok(moved)
    }

    /// Deletes the objects of purged sessions from the bucket, then forgets them.
    fn delete_doomed(&self) -> Result<(), String> {
        let doomed: Vec<String> = self.db(|c| {
            Ok(c.query(
                "SELECT key FROM sluice.objects WHERE doomed_ms IS NOT NULL ORDER BY key",
                &[],
            )?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
        })?;
        for key in doomed {
            let bucket = self.bucket.clone();
            self.db(move |c| {
                let mut txn = c.transaction()?;
                // Locked while the object is deleted: a move naming it cannot commit now.
                let still = txn
                    .query_opt(
                        "SELECT 1 FROM sluice.objects
                         WHERE key = $1 AND doomed_ms IS NOT NULL FOR UPDATE SKIP LOCKED",
                        &[&key],
                    )?
                    .is_some();
                if still {
                    bucket.delete(&key).map_err(Failed::Bucket)?;
                    txn.execute("DELETE FROM sluice.objects WHERE key = $1", &[&key])?;
                    txn.commit()?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// A pool of one connection for the mover.
pub fn pool(target: &Target) -> Pool {
    Pool::new(target.clone(), 1, "record-pg-mover")
}
