//! `sluice verify`: recompute the whole chain and name the first entry that does not hold.

use std::fmt;
use std::path::Path;

use redb::{ReadableDatabase, ReadableTable};

use super::entry::{self, Entry, GENESIS, Hash};
use super::{CHECKPOINTS, ENTRIES, META, NONCE_LEN, PAYLOADS, SignedHead, Store};

/// The first thing found wrong with a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The store itself cannot be read.
    Corrupt { index: Option<u64>, why: String },
    /// The entry's content no longer matches what was chained.
    Altered { index: u64, why: String },
    /// An entry is missing from the chain.
    Removed { index: u64 },
    /// An entry sits at another entry's place.
    Reordered { index: u64, holds: u64 },
    /// The payload no longer matches the digest its entry committed to.
    PayloadAltered { index: u64 },
    /// The newest entries are gone: a signed head names a later entry.
    Truncated { last: Option<u64>, signed: u64 },
    /// A signed head does not match the chain or its signature fails.
    BadCheckpoint { index: u64, why: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Corrupt {
                index: Some(i),
                why,
            } => write!(f, "store corrupt at entry {i}: {why}"),
            Problem::Corrupt { index: None, why } => write!(f, "store corrupt: {why}"),
            Problem::Altered { index, why } => write!(f, "entry {index} was altered: {why}"),
            Problem::Removed { index } => write!(f, "entry {index} was removed"),
            Problem::Reordered { index, holds } => {
                write!(
                    f,
                    "entries were reordered: position {index} holds entry {holds}"
                )
            }
            Problem::PayloadAltered { index } => {
                write!(
                    f,
                    "entry {index} was altered: its payload does not match its digest"
                )
            }
            Problem::Truncated { last, signed } => match last {
                Some(last) => write!(
                    f,
                    "entries after {last} were removed (a signed head names entry {signed})"
                ),
                None => write!(
                    f,
                    "all entries were removed (a signed head names entry {signed})"
                ),
            },
            Problem::BadCheckpoint { index, why } => {
                write!(f, "signed head at entry {index} does not hold: {why}")
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub entries: u64,
    /// Entries whose payload retention purged (not a fault).
    pub purged: Vec<u64>,
    pub head: Option<SignedHead>,
    pub problem: Option<Problem>,
    /// The file was not closed cleanly (a crash) and a copy had to be repaired to read it.
    pub repaired: bool,
}

impl VerifyReport {
    pub fn holds(&self) -> bool {
        self.problem.is_none()
    }

    /// The purged entries as ranges `(first, last)`.
    pub fn purged_ranges(&self) -> Vec<(u64, u64)> {
        super::index_ranges(self.purged.iter().copied())
    }
}

impl Store {
    /// Verifies the live store (through the running gateway).
    pub fn verify(&self) -> VerifyReport {
        verify_db(&*self.db(), Some(self.public_key()))
    }
}

/// Verifies a store file offline. Signed heads must carry `trusted_key` when given (the
/// gateway's public key, anchored elsewhere); without it a forger could re-sign a rewritten
/// chain with a key of their own. Never panics: a store too damaged to open is reported as
/// corrupt.
pub fn verify_store(path: &Path, trusted_key: Option<[u8; 32]>) -> VerifyReport {
    let result = std::panic::catch_unwind(|| match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => verify_db(&db, trusted_key),
        // After an unclean stop (a crash, SIGKILL) redb must repair the file before reading
        // it. Repair a copy, never the evidence itself, and verify that.
        Err(redb::DatabaseError::RepairAborted) => verify_repaired_copy(path, trusted_key),
        Err(e) => corrupt(None, e),
    });
    result.unwrap_or_else(|_| corrupt(None, "the store could not be read"))
}

fn verify_repaired_copy(path: &Path, trusted_key: Option<[u8; 32]>) -> VerifyReport {
    let Ok(dir) = tempfile::tempdir() else {
        return corrupt(None, "no temporary folder to repair a copy in");
    };
    let copy = dir.path().join("repaired.redb");
    if let Err(e) = std::fs::copy(path, &copy) {
        return corrupt(None, format!("cannot copy the store to repair it: {e}"));
    }
    match redb::Database::open(&copy) {
        Ok(db) => VerifyReport {
            repaired: true,
            ..verify_db(&db, trusted_key)
        },
        Err(e) => corrupt(None, e),
    }
}

fn corrupt(index: Option<u64>, why: impl fmt::Display) -> VerifyReport {
    VerifyReport {
        problem: Some(Problem::Corrupt {
            index,
            why: why.to_string(),
        }),
        ..VerifyReport::default()
    }
}

fn verify_db(db: &impl ReadableDatabase, trusted_key: Option<[u8; 32]>) -> VerifyReport {
    let mut report = VerifyReport::default();
    if let Err(problem) = walk(db, trusted_key, &mut report) {
        report.problem = Some(problem);
    }
    report
}

fn walk(
    db: &impl ReadableDatabase,
    trusted_key: Option<[u8; 32]>,
    report: &mut VerifyReport,
) -> Result<(), Problem> {
    let bad = |index: Option<u64>| {
        move |e: redb::Error| Problem::Corrupt {
            index,
            why: e.to_string(),
        }
    };
    let txn = db.begin_read().map_err(|e| bad(None)(e.into()))?;
    let entries = txn.open_table(ENTRIES).map_err(|e| bad(None)(e.into()))?;
    let payloads = txn.open_table(PAYLOADS).map_err(|e| bad(None)(e.into()))?;
    let checkpoints = txn
        .open_table(CHECKPOINTS)
        .map_err(|e| bad(None)(e.into()))?;
    let meta = txn.open_table(META).map_err(|e| bad(None)(e.into()))?;

    let head = meta
        .get("head")
        .map_err(|e| bad(None)(e.into()))?
        .map(|v| v.value().to_vec());
    report.head = match head {
        None => None,
        Some(bytes) => Some(SignedHead::decode(&bytes).ok_or_else(|| Problem::Corrupt {
            index: None,
            why: "the signed head is malformed".into(),
        })?),
    };

    let mut prev: Hash = GENESIS;
    let mut expected = 0u64;
    let mut last_checkpoint = None;
    for row in entries.iter().map_err(|e| bad(None)(e.into()))? {
        let (key, value) = row.map_err(|e| bad(Some(expected))(e.into()))?;
        let index = key.value();
        if index != expected {
            return Err(Problem::Removed { index: expected });
        }
        let value = value.value();
        let Some(split) = value.len().checked_sub(32) else {
            return Err(Problem::Corrupt {
                index: Some(index),
                why: "entry is truncated".into(),
            });
        };
        let (encoded, stored_hash) = value.split_at(split);
        let entry = Entry::decode(encoded).map_err(|why| Problem::Corrupt {
            index: Some(index),
            why,
        })?;
        if entry.index != index {
            return Err(Problem::Reordered {
                index,
                holds: entry.index,
            });
        }
        let hash = entry.hash();
        if hash[..] != *stored_hash {
            return Err(Problem::Altered {
                index,
                why: "its content does not match its hash".into(),
            });
        }
        if entry.prev_hash != prev {
            let index = index.saturating_sub(1);
            let why = format!("entry {} committed to a different hash for it", index + 1);
            return Err(Problem::Altered { index, why });
        }
        match payloads
            .get(index)
            .map_err(|e| bad(Some(index))(e.into()))?
        {
            None => report.purged.push(index),
            Some(stored) => {
                let stored = stored.value();
                if stored.len() < NONCE_LEN {
                    return Err(Problem::PayloadAltered { index });
                }
                let (nonce, payload) = stored.split_at(NONCE_LEN);
                if entry::payload_digest(nonce, payload) != entry.payload_digest {
                    return Err(Problem::PayloadAltered { index });
                }
            }
        }
        if let Some(cp) = checkpoints
            .get(index)
            .map_err(|e| bad(Some(index))(e.into()))?
        {
            check_head(cp.value(), index, &hash, trusted_key, last_checkpoint)?;
            last_checkpoint = Some(index);
        }
        prev = hash;
        expected += 1;
        report.entries = expected;
    }

    // Signed heads beyond the last entry mean the newest entries were cut off.
    let last = expected.checked_sub(1);
    let newest_signed = checkpoints
        .last()
        .map_err(|e| bad(None)(e.into()))?
        .map(|(k, _)| k.value());
    let signed = [newest_signed, report.head.as_ref().map(|h| h.index)]
        .into_iter()
        .flatten()
        .max();
    if let Some(signed) = signed
        && last.is_none_or(|last| signed > last)
    {
        return Err(Problem::Truncated { last, signed });
    }
    if let (Some(head), Some(last)) = (&report.head, last)
        && (head.index != last
            || head.hash != prev
            || !head.signature_holds()
            || trusted_key.is_some_and(|key| key != head.public_key))
    {
        return Err(Problem::BadCheckpoint {
            index: head.index,
            why: "the chain's head does not match it".into(),
        });
    }
    Ok(())
}

fn check_head(
    bytes: &[u8],
    index: u64,
    hash: &Hash,
    trusted_key: Option<[u8; 32]>,
    previous: Option<u64>,
) -> Result<(), Problem> {
    let bad = |why: &str| Problem::BadCheckpoint {
        index,
        why: why.into(),
    };
    let head = SignedHead::decode(bytes).ok_or_else(|| bad("malformed"))?;
    if head.index != index || head.hash != *hash {
        // Entries were rewritten with their hashes recomputed; the signed head catches it.
        let since = previous.map_or("the first entry".to_string(), |p| {
            format!("entry {}", p + 1)
        });
        let why = format!(
            "the chain no longer matches the head signed at this entry (rewritten between {since} and here)"
        );
        return Err(Problem::Altered { index, why });
    }
    if !head.signature_holds() {
        return Err(bad("its signature fails"));
    }
    if trusted_key.is_some_and(|key| key != head.public_key) {
        return Err(bad("it is signed by another key than the gateway's"));
    }
    Ok(())
}
