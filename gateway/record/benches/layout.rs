//! What the record's layout costs (issue 25). Appends of 1,000 200-byte events per durable
//! commit four ways, in one run:
//!
//! - `store_append`: the store as it is (one row per commit: a block, `blocks.rs`; durable in
//!   the journal, `journal.rs`, and in redb every two seconds);
//! - `store_append_no_journal`: the same with `SLUICE_RECORD_JOURNAL=off` (each commit
//!   durable in redb itself, as before the journal);
//! - `two_rows_per_event`: the same chained, hashed and signed bytes (`link`) written as the
//!   store wrote them before blocks (an entry row and a payload row per event), with the
//!   commit's checkpoint, head and sessions row, also durably: the baseline;
//! - `link_only`: chaining, hashing and signing alone, no storage (the floor).
//!
//! And what one small durable commit costs (4 events, as a strict PostgreSQL session's
//! commits hold under load), five ways:
//!
//! - `store_append`: the store as it is (the commit's writes as one journal record, synced;
//!   redb takes them without a sync), and `store_append_no_journal` (redb rewrites about
//!   twelve scattered pages and syncs, for every commit);
//! - `block_row_only`: the same linked bytes as one redb row with nothing else (the head kept
//!   in the block: what dropping the checkpoint, head and sessions rows from the commit path
//!   would leave);
//! - `journal_append`: the same bytes appended to a plain file and `fdatasync`'d (one
//!   sequential write: a journal in front of redb);
//! - `journal_prewritten`: the same, written over a file zeroed beforehand (as a database
//!   recycles its log segments), so a sync carries no change to the file's size or extents.
//!
//! cargo bench -p sluice-record --bench layout

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use redb::{Database, TableDefinition};
use sluice_record::{NewEvent, Store, link};

const PER_COMMIT: u64 = 1000;
const SMALL_COMMIT: u64 = 4;
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

fn event(seq: u64) -> NewEvent {
    NewEvent {
        session: "0b9a6c1e-bench".into(),
        seq,
        kind: "frame".into(),
        time_ms: 1_764_000_000_000 + seq,
        meta: r#"{"dir":"target-to-client","content":"bytes","outcome":"pass"}"#.into(),
        payload: vec![b'x'; 200],
    }
}

/// A group of commits of `per_commit` events that starts with the store as it is
/// (`store_append`); returns the group, the events and the folder the others write in.
fn with_store_append<'a>(
    c: &'a mut Criterion,
    name: &str,
    per_commit: u64,
) -> (
    BenchmarkGroup<'a, WallTime>,
    Vec<NewEvent>,
    tempfile::TempDir,
) {
    let batch: Vec<_> = (0..per_commit).map(event).collect();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(per_commit));
    let dir = tempfile::tempdir().unwrap();
    for (name, journal) in [("store_append", true), ("store_append_no_journal", false)] {
        let store_dir = dir.path().join(name);
        std::fs::create_dir(&store_dir).unwrap();
        let mut store = Store::open(
            &store_dir.join("record.redb"),
            &store_dir.join("record.key"),
        )
        .unwrap();
        if !journal {
            store = store.without_journal();
        }
        group.bench_function(name, |b| b.iter(|| store.append(&batch).unwrap()));
    }
    (group, batch, dir)
}

fn layouts(c: &mut Criterion) {
    let (mut group, batch, dir) = with_store_append(c, "record_layout_1000_per_commit", PER_COMMIT);

    let signer = SigningKey::from_bytes(&[7; 32]);
    let db = Database::builder()
        .set_cache_size(16 << 20)
        .create(dir.path().join("rows.redb"))
        .unwrap();
    let mut last = None;
    group.bench_function("two_rows_per_event", |b| {
        b.iter(|| {
            let first = last.map_or(0, |(index, _)| index + 1);
            let linked = link::link(last, first, &batch, &signer, |_| Ok(None)).unwrap();
            let head = linked.head.unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut entries = txn.open_table(ENTRIES).unwrap();
                let mut payloads = txn.open_table(PAYLOADS).unwrap();
                for row in &linked.rows {
                    entries.insert(row.index, row.stored.as_slice()).unwrap();
                    payloads.insert(row.index, row.payload.as_slice()).unwrap();
                }
                let encoded = head.encode();
                txn.open_table(CHECKPOINTS)
                    .unwrap()
                    .insert(head.index, encoded.as_slice())
                    .unwrap();
                txn.open_table(META)
                    .unwrap()
                    .insert("head", encoded.as_slice())
                    .unwrap();
                let mut sessions = txn.open_table(SESSIONS).unwrap();
                for summary in &linked.sessions {
                    let bytes = serde_json::to_vec(summary).unwrap();
                    sessions
                        .insert(summary.id.as_str(), bytes.as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
            last = Some((head.index, head.hash));
        })
    });

    let mut last = None;
    group.bench_function("link_only", |b| {
        b.iter(|| {
            let first = last.map_or(0, |(index, _)| index + 1);
            let linked = link::link(last, first, &batch, &signer, |_| Ok(None)).unwrap();
            let head = linked.head.unwrap();
            last = Some((head.index, head.hash));
        })
    });
    group.finish();
}

fn small_commits(c: &mut Criterion) {
    let (mut group, batch, dir) = with_store_append(c, "record_commit_4_events", SMALL_COMMIT);

    // The bytes a block holds: each entry's stored form and payload, and the signed head.
    let signer = SigningKey::from_bytes(&[7; 32]);
    let mut last = None;
    let mut block = move || {
        let first = last.map_or(0, |(index, _)| index + 1);
        let linked = link::link(last, first, &batch, &signer, |_| Ok(None)).unwrap();
        let head = linked.head.unwrap();
        last = Some((head.index, head.hash));
        let mut bytes = Vec::new();
        for row in &linked.rows {
            bytes.extend_from_slice(&row.stored);
            bytes.extend_from_slice(&row.payload);
        }
        bytes.extend_from_slice(&head.encode());
        (head.index, bytes)
    };

    let db = Database::builder()
        .set_cache_size(16 << 20)
        .create(dir.path().join("blocks.redb"))
        .unwrap();
    group.bench_function("block_row_only", |b| {
        b.iter(|| {
            let (index, bytes) = block();
            let txn = db.begin_write().unwrap();
            txn.open_table(BLOCKS)
                .unwrap()
                .insert(index, bytes.as_slice())
                .unwrap();
            txn.commit().unwrap();
        })
    });

    let mut journal = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("journal"))
        .unwrap();
    group.bench_function("journal_append", |b| {
        b.iter(|| {
            let (_, bytes) = block();
            journal.write_all(&bytes).unwrap();
            journal.sync_data().unwrap();
        })
    });

    let segment = std::fs::File::create(dir.path().join("segment")).unwrap();
    segment.set_len(256 << 20).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for at in 0..256u64 {
        segment.write_all_at(&zeros, at << 20).unwrap();
    }
    segment.sync_all().unwrap();
    let mut at = 0u64;
    group.bench_function("journal_prewritten", |b| {
        b.iter(|| {
            let (_, bytes) = block();
            segment.write_all_at(&bytes, at).unwrap();
            segment.sync_data().unwrap();
            at = (at + bytes.len() as u64) % (255 << 20);
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4)).sample_size(20);
    targets = layouts, small_commits
}
criterion_main!(benches);
