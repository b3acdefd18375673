//! What the record's layout costs (issue 25). Appends of 1,000 200-byte events per durable
//! commit three ways, in one run:
//!
//! - `store_append`: the store as it is (one row per commit: a block, `blocks.rs`);
//! - `two_rows_per_event`: the same chained, hashed and signed bytes (`link`) written as the
//!   store wrote them before blocks (an entry row and a payload row per event), with the
//!   commit's checkpoint, head and sessions row, also durably: the baseline;
//! - `link_only`: chaining, hashing and signing alone, no storage (the floor).
//!
//! cargo bench -p sluice-record --bench layout

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use redb::{Database, TableDefinition};
use sluice_record::{NewEvent, Store, link};

const PER_COMMIT: u64 = 1000;
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

fn layouts(c: &mut Criterion) {
    let batch: Vec<_> = (0..PER_COMMIT).map(event).collect();
    let mut group = c.benchmark_group("record_layout_1000_per_commit");
    group.throughput(Throughput::Elements(PER_COMMIT));

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("record.redb"),
        &dir.path().join("record.key"),
    )
    .unwrap();
    group.bench_function("store_append", |b| b.iter(|| store.append(&batch).unwrap()));

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

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4)).sample_size(20);
    targets = layouts
}
criterion_main!(benches);
