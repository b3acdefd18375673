//! Record throughput (issue 3): events appended with the SHA-256 chain and a durable commit,
//! one event per commit vs group commits of 100 and 1,000 (each commit also rewrites the
//! witness file `record.head`, measured alone as `witness_write`); and verify's cost per
//! entry over a store of 100,000 (issue 16).
//!
//! cargo bench -p sluice --bench record

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_record::{NewEvent, Store, VerifyOptions, Witness};

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

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("record.redb"),
        &dir.path().join("record.key"),
    )
    .unwrap();
    let mut group = c.benchmark_group("record_append_200B");
    for per_commit in [1u64, 100, 1000] {
        let batch: Vec<_> = (0..per_commit).map(event).collect();
        group.throughput(Throughput::Elements(per_commit));
        group.bench_function(format!("{per_commit}_per_durable_commit"), |b| {
            b.iter(|| store.append(&batch).unwrap())
        });
    }
    group.finish();

    // What every commit adds for the witness: one 136-byte write at offset 0, no fsync.
    let head = store.head().unwrap().unwrap();
    let witness = Witness::open(&dir.path().join("record.redb")).unwrap();
    c.bench_function("witness_write", |b| {
        b.iter(|| witness.write(&head).unwrap())
    });
}

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("record.redb"),
        &dir.path().join("record.key"),
    )
    .unwrap();
    let entries = 100_000u64;
    for chunk in 0..entries / 1000 {
        let batch: Vec<_> = (chunk * 1000..(chunk + 1) * 1000).map(event).collect();
        store.append(&batch).unwrap();
    }
    let mut group = c.benchmark_group("verify");
    group.sample_size(10);
    group.throughput(Throughput::Elements(entries));
    group.bench_function("100k_entries", |b| {
        b.iter(|| assert!(store.verify(VerifyOptions::default()).holds()))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4)).sample_size(20);
    targets = append, verify
}
criterion_main!(benches);
