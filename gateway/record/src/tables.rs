//! A record's tables as rows, whichever backend keeps them: what `verify` walks, and what a
//! copy (`sluice store copy`, `sluice store export`) carries from one backend to another.
//! The rows are the same bytes in every backend, so a copy is verified like the original.

use redb::{ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable};

use super::verify::Problem;
use super::{
    BLOCKS, CHECKPOINTS, CONNECTIONS, ENTRIES, META, PAYLOADS, REVIEWS, SESSIONS, SINK_CURSORS,
};

/// One entry as stored, with the rows kept beside it under its index.
#[derive(Clone, Copy, Debug)]
pub struct RawEntry<'a> {
    pub index: u64,
    /// The entry's encoding followed by its 32-byte hash.
    pub stored: &'a [u8],
    /// The nonce and the payload; `None` when it is missing (purged, or deleted).
    pub payload: Option<&'a [u8]>,
    /// The signed head of the commit this entry ended, if it ended one.
    pub checkpoint: Option<&'a [u8]>,
}

/// Named rows: `(key, bytes)`.
pub type Rows = Vec<(String, Vec<u8>)>;

/// A record's tables, read.
pub trait Tables {
    /// The newest signed head, as stored.
    fn head(&self) -> Result<Option<Vec<u8>>, Problem>;
    /// Every entry in index order.
    fn entries(
        &self,
        each: &mut dyn FnMut(RawEntry<'_>) -> Result<(), Problem>,
    ) -> Result<(), Problem>;
    /// The index of the newest signed head kept per commit.
    fn newest_checkpoint(&self) -> Result<Option<u64>, Problem>;
    fn sessions(&self) -> Result<Rows, Problem>;
    fn reviews(&self) -> Result<Rows, Problem>;
    fn connections(&self) -> Result<Rows, Problem>;
    fn cursors(&self) -> Result<Vec<(String, u64)>, Problem>;
}

fn bad(index: Option<u64>) -> impl Fn(redb::Error) -> Problem {
    move |e| Problem::Corrupt {
        index,
        why: e.to_string(),
    }
}

/// A redb store's tables in one read transaction.
pub struct RedbTables {
    txn: ReadTransaction,
}

impl RedbTables {
    pub fn read(db: &impl ReadableDatabase) -> Result<RedbTables, Problem> {
        let txn = db.begin_read().map_err(|e| bad(None)(e.into()))?;
        Ok(RedbTables { txn })
    }

    fn named(
        &self,
        table: redb::TableDefinition<&'static str, &'static [u8]>,
    ) -> Result<Rows, Problem> {
        let table = self
            .txn
            .open_table(table)
            .map_err(|e| bad(None)(e.into()))?;
        let mut rows = Vec::new();
        for row in table.iter().map_err(|e| bad(None)(e.into()))? {
            let (key, value) = row.map_err(|e| bad(None)(e.into()))?;
            rows.push((key.value().to_string(), value.value().to_vec()));
        }
        Ok(rows)
    }

    fn log(
        &self,
        table: redb::TableDefinition<u64, &'static [u8]>,
    ) -> Result<ReadOnlyTable<u64, &'static [u8]>, Problem> {
        self.txn.open_table(table).map_err(|e| bad(None)(e.into()))
    }
}

impl Tables for RedbTables {
    fn head(&self) -> Result<Option<Vec<u8>>, Problem> {
        let meta = self.txn.open_table(META).map_err(|e| bad(None)(e.into()))?;
        let head = meta.get("head").map_err(|e| bad(None)(e.into()))?;
        Ok(head.map(|v| v.value().to_vec()))
    }

    fn entries(
        &self,
        each: &mut dyn FnMut(RawEntry<'_>) -> Result<(), Problem>,
    ) -> Result<(), Problem> {
        let log = crate::blocks::Log {
            rows: self.log(ENTRIES)?,
            payloads: self.log(PAYLOADS)?,
            // A store no version with blocks wrote to (an old file, an export) has none.
            blocks: match self.txn.open_table(BLOCKS) {
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                table => Some(table.map_err(|e| bad(None)(e.into()))?),
            },
        };
        let checkpoints = self.log(CHECKPOINTS)?;
        let mut expected = 0;
        // A problem `each` reports ends the walk; the log's own errors are corruption.
        let mut reported = None;
        log.scan(.., |held| {
            let index = held.index;
            let checkpoint = checkpoints.get(index).map_err(|e| e.to_string())?;
            let walked = each(RawEntry {
                index,
                stored: &held.stored,
                payload: held.payload.as_deref(),
                checkpoint: checkpoint.as_ref().map(|c| c.value()),
            });
            expected = index + 1;
            match walked {
                Ok(()) => Ok(true),
                Err(problem) => {
                    reported = Some(problem);
                    Ok(false)
                }
            }
        })
        .map_err(|why| Problem::Corrupt {
            index: Some(expected),
            why,
        })?;
        reported.map_or(Ok(()), Err)
    }

    fn newest_checkpoint(&self) -> Result<Option<u64>, Problem> {
        let checkpoints = self.log(CHECKPOINTS)?;
        let last = checkpoints.last().map_err(|e| bad(None)(e.into()))?;
        Ok(last.map(|(k, _)| k.value()))
    }

    fn sessions(&self) -> Result<Rows, Problem> {
        self.named(SESSIONS)
    }

    fn reviews(&self) -> Result<Rows, Problem> {
        self.named(REVIEWS)
    }

    fn connections(&self) -> Result<Rows, Problem> {
        self.named(CONNECTIONS)
    }

    fn cursors(&self) -> Result<Vec<(String, u64)>, Problem> {
        let table = self
            .txn
            .open_table(SINK_CURSORS)
            .map_err(|e| bad(None)(e.into()))?;
        let mut rows = Vec::new();
        for row in table.iter().map_err(|e| bad(None)(e.into()))? {
            let (name, cursor) = row.map_err(|e| bad(None)(e.into()))?;
            rows.push((name.value().to_string(), cursor.value()));
        }
        Ok(rows)
    }
}

/// Writes `from` into a new store file at `path` (which must not exist): an export that
/// `sluice verify --store` reads like any store. Returns the number of entries written.
pub fn write_file(path: &std::path::Path, from: &dyn Tables) -> Result<u64, crate::RecordError> {
    let io = |message: String| crate::RecordError::Io {
        path: path.display().to_string(),
        message,
    };
    if path.exists() {
        return Err(io("it exists already: export into a new file".into()));
    }
    let db = crate::open_db(path).map_err(|e| io(e.to_string()))?;
    let txn = db.begin_write().map_err(|e| io(e.to_string()))?;
    let mut written = 0;
    {
        let mut entries = txn.open_table(ENTRIES).map_err(|e| io(e.to_string()))?;
        let mut payloads = txn.open_table(PAYLOADS).map_err(|e| io(e.to_string()))?;
        let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(|e| io(e.to_string()))?;
        let failed = |e: redb::StorageError| Problem::Corrupt {
            index: None,
            why: format!("writing the export: {e}"),
        };
        from.entries(&mut |raw| {
            entries.insert(raw.index, raw.stored).map_err(failed)?;
            if let Some(payload) = raw.payload {
                payloads.insert(raw.index, payload).map_err(failed)?;
            }
            if let Some(head) = raw.checkpoint {
                checkpoints.insert(raw.index, head).map_err(failed)?;
            }
            written += 1;
            Ok(())
        })
        .map_err(|p| io(p.to_string()))?;
        let mut meta = txn.open_table(META).map_err(|e| io(e.to_string()))?;
        if let Some(head) = from.head().map_err(|p| io(p.to_string()))? {
            meta.insert("head", head.as_slice())
                .map_err(|e| io(e.to_string()))?;
        }
        for (table, rows) in [
            (SESSIONS, from.sessions()),
            (REVIEWS, from.reviews()),
            (CONNECTIONS, from.connections()),
        ] {
            let mut table = txn.open_table(table).map_err(|e| io(e.to_string()))?;
            for (key, row) in rows.map_err(|p| io(p.to_string()))? {
                table
                    .insert(key.as_str(), row.as_slice())
                    .map_err(|e| io(e.to_string()))?;
            }
        }
        let mut cursors = txn
            .open_table(SINK_CURSORS)
            .map_err(|e| io(e.to_string()))?;
        for (name, next) in from.cursors().map_err(|p| io(p.to_string()))? {
            cursors
                .insert(name.as_str(), next)
                .map_err(|e| io(e.to_string()))?;
        }
    }
    txn.commit().map_err(|e| io(e.to_string()))?;
    Ok(written)
}

/// Reads the store file at `path` (the gateway stopped) as tables, for a copy.
pub fn read_file<T>(
    path: &std::path::Path,
    use_tables: impl FnOnce(&dyn Tables) -> T,
) -> Result<T, crate::RecordError> {
    let io = |message: String| crate::RecordError::Io {
        path: path.display().to_string(),
        message,
    };
    let db = match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(io("it is open in a running gateway: stop it first".into()));
        }
        Err(redb::DatabaseError::RepairAborted) => {
            return Err(io(
                "it was not closed cleanly: start and stop the gateway once so it is repaired and the loss (if any) recorded, then copy".into(),
            ));
        }
        Err(e) => return Err(io(e.to_string())),
    };
    let tables = RedbTables::read(&db).map_err(|p| io(p.to_string()))?;
    Ok(use_tables(&tables))
}
