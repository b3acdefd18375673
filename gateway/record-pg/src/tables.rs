//! The record's tables read from PostgreSQL in one snapshot (verify, export), and a record
//! copied in from another backend's tables (`sluice store copy`).

use std::cell::RefCell;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, IsolationLevel, Transaction};
use sluice_record::tables::{RawEntry, Rows, Tables};
use sluice_record::{Problem, RecordError, VerifyOptions, VerifyReport, verify_tables};

use super::bucket::{Body, Bucket, BucketSettings, Objects};
use super::pool::{Failed, describe};
use super::{parse_url, schema};

/// The tables as of one snapshot (a repeatable-read, read-only transaction), with payloads
/// moved to the bucket read from there.
struct PgTables<'a> {
    txn: RefCell<Transaction<'a>>,
    objects: RefCell<Objects<'a>>,
}

fn unreadable_problem(e: postgres::Error) -> Problem {
    Problem::Corrupt {
        index: None,
        why: format!("PostgreSQL: {}", describe(&e)),
    }
}

impl<'a> PgTables<'a> {
    fn snapshot(
        client: &'a mut Client,
        bucket: Option<&'a Bucket>,
    ) -> Result<PgTables<'a>, postgres::Error> {
        let txn = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        Ok(PgTables {
            txn: RefCell::new(txn),
            objects: RefCell::new(Objects::new(bucket)),
        })
    }

    fn rows(&self, sql: &str) -> Result<Rows, Problem> {
        let rows = self
            .txn
            .borrow_mut()
            .query(sql, &[])
            .map_err(unreadable_problem)?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

impl Tables for PgTables<'_> {
    fn head(&self) -> Result<Option<Vec<u8>>, Problem> {
        let row = self
            .txn
            .borrow_mut()
            .query_one("SELECT head FROM sluice.chain_head WHERE one = 1", &[])
            .map_err(unreadable_problem)?;
        Ok(row.get(0))
    }

    fn entries(
        &self,
        each: &mut dyn FnMut(RawEntry<'_>) -> Result<(), Problem>,
    ) -> Result<(), Problem> {
        let mut txn = self.txn.borrow_mut();
        let mut objects = self.objects.borrow_mut();
        // Streamed: the whole chain is never in memory at once.
        let mut rows = txn
            .query_raw(
                "SELECT e.idx, e.stored, p.body, c.head, p.object, p.at, p.len
                 FROM sluice.entries e
                 LEFT JOIN sluice.payloads p ON p.idx = e.idx
                 LEFT JOIN sluice.checkpoints c ON c.idx = e.idx
                 ORDER BY e.idx",
                std::iter::empty::<i64>(),
            )
            .map_err(unreadable_problem)?;
        while let Some(row) = rows.next().map_err(unreadable_problem)? {
            let index: i64 = row.get(0);
            let stored: &[u8] = row.get(1);
            let checkpoint: Option<&[u8]> = row.get(3);
            let payload = match Body::from_columns(row.get(2), row.get(4), row.get(5), row.get(6)) {
                None => None,
                // A moved payload missing from the bucket reads as removed, one that differs
                // as altered; a bucket that cannot be read stops the walk.
                Some(body) => objects.stored(body).map_err(|why| Problem::Corrupt {
                    index: Some(index as u64),
                    why,
                })?,
            };
            each(RawEntry {
                index: index as u64,
                stored,
                payload: payload.as_deref(),
                checkpoint,
            })?;
        }
        Ok(())
    }

    fn newest_checkpoint(&self) -> Result<Option<u64>, Problem> {
        let row = self
            .txn
            .borrow_mut()
            .query_one("SELECT max(idx) FROM sluice.checkpoints", &[])
            .map_err(unreadable_problem)?;
        Ok(row.get::<_, Option<i64>>(0).map(|i| i as u64))
    }

    fn sessions(&self) -> Result<Rows, Problem> {
        self.rows("SELECT id, row FROM sluice.sessions ORDER BY id")
    }

    fn reviews(&self) -> Result<Rows, Problem> {
        self.rows("SELECT id, row FROM sluice.reviews ORDER BY id")
    }

    fn connections(&self) -> Result<Rows, Problem> {
        self.rows("SELECT name, row FROM sluice.connections ORDER BY name")
    }

    fn cursors(&self) -> Result<Vec<(String, u64)>, Problem> {
        let rows = self
            .txn
            .borrow_mut()
            .query(
                "SELECT name, next FROM sluice.sink_cursors ORDER BY name",
                &[],
            )
            .map_err(unreadable_problem)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }
}

/// A report that says the record could not be read at all.
pub fn unreadable(why: &str) -> VerifyReport {
    VerifyReport {
        problem: Some(Problem::Corrupt {
            index: None,
            why: why.to_string(),
        }),
        ..VerifyReport::default()
    }
}

/// Verifies the record in the database `client` is connected to, reading moved payloads
/// from `bucket`.
pub fn verify(
    client: &mut Client,
    bucket: Option<&Bucket>,
    options: &VerifyOptions,
) -> VerifyReport {
    match PgTables::snapshot(client, bucket) {
        Ok(tables) => verify_tables(&tables, options),
        Err(e) => unreadable(&format!("PostgreSQL: {}", describe(&e))),
    }
}

fn connect(url: &str) -> Result<(Client, String), RecordError> {
    let (target, label) = parse_url(url)?;
    let client = target.connect().map_err(|e| RecordError::Io {
        path: label.clone(),
        message: format!("cannot connect: {}", describe(&e)),
    })?;
    Ok((client, label))
}

/// The bucket of `[store.payloads]`, for the tools that read the record directly.
fn bucket(settings: Option<&BucketSettings>, label: &str) -> Result<Option<Bucket>, RecordError> {
    settings
        .map(Bucket::new)
        .transpose()
        .map_err(|message| RecordError::Io {
            path: label.to_string(),
            message,
        })
}

/// Writes the record in the database at `url` to a new store file at `path`, from one
/// snapshot, with the payloads moved to the bucket fetched back in: a file that `sluice
/// verify --store` reads offline. Call it outside an async runtime (the command line does).
pub fn export_to_file(
    url: &str,
    payloads: Option<&BucketSettings>,
    path: &std::path::Path,
) -> Result<u64, RecordError> {
    let (mut client, label) = connect(url)?;
    let bucket = bucket(payloads, &label)?;
    let tables = PgTables::snapshot(&mut client, bucket.as_ref()).map_err(|e| RecordError::Io {
        path: label.clone(),
        message: describe(&e),
    })?;
    sluice_record::tables::write_file(path, &tables)
}

/// Copies `from` (another record's tables) into the empty record in the database at `url`,
/// row for row: the chain, its payloads and heads, the sessions index, reviews, connections
/// and sink cursors. Refuses a database that already holds entries. Returns the number of
/// entries copied. Call it outside an async runtime (the command line does).
pub fn import(url: &str, from: &dyn Tables) -> Result<u64, RecordError> {
    let (mut client, label) = connect(url)?;
    let err = |e: Failed| RecordError::Io {
        path: label.clone(),
        message: e.to_string(),
    };
    let problem = |p: Problem| RecordError::Io {
        path: label.clone(),
        message: format!("reading the source: {p}"),
    };
    schema::migrate(&mut client).map_err(err)?;
    let mut txn = client.transaction().map_err(|e| err(e.into()))?;
    let held: i64 = txn
        .query_one("SELECT count(*) FROM sluice.entries", &[])
        .map_err(|e| err(e.into()))?
        .get(0);
    if held > 0 {
        return Err(err(Failed::Corrupt(format!(
            "the database already holds a record ({held} entries): copy into an empty one"
        ))));
    }
    let mut copied = 0u64;
    let mut batch: Vec<Row> = Vec::new();
    let mut failed: Option<postgres::Error> = None;
    from.entries(&mut |raw| {
        let entry = sluice_record::decode_stored(raw.stored).map_err(|why| Problem::Corrupt {
            index: Some(raw.index),
            why,
        })?;
        batch.push((
            raw.index as i64,
            entry.session,
            entry.kind,
            raw.stored.to_vec(),
            raw.payload.map(<[u8]>::to_vec),
            raw.checkpoint.map(<[u8]>::to_vec),
        ));
        copied += 1;
        if batch.len() >= 1000 {
            if let Err(e) = write_batch(&mut txn, &batch) {
                failed = Some(e);
                return Err(Problem::Corrupt {
                    index: Some(raw.index),
                    why: "the copy could not be written".into(),
                });
            }
            batch.clear();
        }
        Ok(())
    })
    .map_err(|p| match failed.take() {
        Some(e) => err(e.into()),
        None => problem(p),
    })?;
    write_batch(&mut txn, &batch).map_err(|e| err(e.into()))?;

    let head = from.head().map_err(problem)?;
    if let Some(head) = &head {
        let decoded = sluice_record::SignedHead::decode(head)
            .ok_or_else(|| err(Failed::Corrupt("the source's head is malformed".into())))?;
        txn.execute(
            "UPDATE sluice.chain_head SET idx = $1, hash = $2, head = $3 WHERE one = 1",
            &[&(decoded.index as i64), &&decoded.hash[..], head],
        )
        .map_err(|e| err(e.into()))?;
    }
    for (id, row) in from.sessions().map_err(problem)? {
        let summary: sluice_record::SessionSummary = serde_json::from_slice(&row)
            .map_err(|e| err(Failed::Corrupt(format!("session {id}: {e}"))))?;
        txn.execute(
            "INSERT INTO sluice.sessions (id, first_idx, row) VALUES ($1, $2, $3)",
            &[&id, &(summary.first_index as i64), &row],
        )
        .map_err(|e| err(e.into()))?;
    }
    for (id, row) in from.reviews().map_err(problem)? {
        txn.execute(
            "INSERT INTO sluice.reviews (id, row) VALUES ($1, $2)",
            &[&id, &row],
        )
        .map_err(|e| err(e.into()))?;
    }
    for (name, row) in from.connections().map_err(problem)? {
        txn.execute(
            "INSERT INTO sluice.connections (name, row) VALUES ($1, $2)",
            &[&name, &row],
        )
        .map_err(|e| err(e.into()))?;
    }
    for (name, next) in from.cursors().map_err(problem)? {
        txn.execute(
            "INSERT INTO sluice.sink_cursors (name, next) VALUES ($1, $2)",
            &[&name, &(next as i64)],
        )
        .map_err(|e| err(e.into()))?;
    }
    txn.commit().map_err(|e| err(e.into()))?;
    Ok(copied)
}

type Row = (
    i64,
    String,
    String,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

fn write_batch(txn: &mut Transaction<'_>, batch: &[Row]) -> Result<(), postgres::Error> {
    if batch.is_empty() {
        return Ok(());
    }
    let idx: Vec<i64> = batch.iter().map(|r| r.0).collect();
    let sessions: Vec<&str> = batch.iter().map(|r| r.1.as_str()).collect();
    let kinds: Vec<&str> = batch.iter().map(|r| r.2.as_str()).collect();
    let stored: Vec<&[u8]> = batch.iter().map(|r| r.3.as_slice()).collect();
    txn.execute(
        "INSERT INTO sluice.entries (idx, session, kind, stored)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[])",
        &[&idx, &sessions, &kinds, &stored],
    )?;
    let with_payload: Vec<&Row> = batch.iter().filter(|r| r.4.is_some()).collect();
    let pidx: Vec<i64> = with_payload.iter().map(|r| r.0).collect();
    let psessions: Vec<&str> = with_payload.iter().map(|r| r.1.as_str()).collect();
    let bodies: Vec<&[u8]> = with_payload.iter().filter_map(|r| r.4.as_deref()).collect();
    txn.execute(
        "INSERT INTO sluice.payloads (idx, session, body)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[])",
        &[&pidx, &psessions, &bodies],
    )?;
    let (cidx, heads): (Vec<i64>, Vec<&[u8]>) = batch
        .iter()
        .filter_map(|r| r.5.as_deref().map(|h| (r.0, h)))
        .unzip();
    txn.execute(
        "INSERT INTO sluice.checkpoints (idx, head) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
        &[&cidx, &heads],
    )?;
    Ok(())
}

/// Verifies the record in the database at `url` offline (a direct connection, no gateway),
/// with the payloads moved to the bucket `payloads` names.
pub fn verify_url(
    url: &str,
    payloads: Option<&BucketSettings>,
    options: &VerifyOptions,
) -> VerifyReport {
    let opened = connect(url).and_then(|(client, label)| Ok((client, bucket(payloads, &label)?)));
    match opened {
        Ok((mut client, bucket)) => verify(&mut client, bucket.as_ref(), options),
        Err(e) => unreadable(&e.to_string()),
    }
}
