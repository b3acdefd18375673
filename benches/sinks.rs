//! Sinks and retention (issue 8).
//!
//! - `sink_delivery`: 20,000 recorded events (200-byte payloads) shipped as NDJSON over HTTP
//!   to a receiver on loopback, in batches of 500: through `builtin:sink-http` (the Wasm
//!   plugin, `wasi:http`, the egress check, the durable cursor) against the same work done
//!   natively (read the batch, encode it with serde_json, POST it on a new connection).
//! - `retention_compact`: the rewrite that scrubs purged payloads from the file, for a store
//!   of 50,000 such events (about 30 MB), half of them purged.
//!
//! cargo bench -p sluice --bench sinks

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_engine::policy::{PluginSpec, SinkRules, Source, StartAt, World};
use sluice_engine::sinks::{SinkPlan, Sinks};
use sluice_plugin_host::{HostConfig, PluginHost};
use sluice_record::{NewEvent, RetentionRules, Store};

const EVENTS: u64 = 20_000;
const BATCH: usize = 500;

fn event(session: &str, seq: u64, kind: &str) -> NewEvent {
    NewEvent {
        session: session.into(),
        seq,
        kind: kind.into(),
        time_ms: 1_764_000_000_000 + seq,
        meta: r#"{"dir":"out","content":"bytes","outcome":"pass"}"#.into(),
        payload: vec![b'x'; 200],
    }
}

fn store_with(dir: &std::path::Path, events: u64) -> Arc<Store> {
    let store = Store::open(&dir.join("record.redb"), &dir.join("record.key")).unwrap();
    let all: Vec<NewEvent> = (0..events).map(|i| event("s", i, "frame")).collect();
    for group in all.chunks(1000) {
        store.append(group).unwrap();
    }
    Arc::new(store)
}

/// Answers every request with 200, on as many connections as come.
fn receiver() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        reader.read_line(&mut line).unwrap();
                        if line.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    writer
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                }
            });
        }
    });
    port
}

fn sink_delivery(c: &mut Criterion) {
    sluice_plugin_host::builtin::provide(sluice_builtins::ALL);
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), EVENTS);
    let port = receiver();
    let host = PluginHost::new(HostConfig {
        cache_dir: Some(dir.path().join("cache")),
        ..HostConfig::default()
    })
    .unwrap();
    let mut spec = PluginSpec::standalone(
        "ship",
        Source::Builtin("sink-http".into()),
        World::Sink,
        format!(r#"{{"url":"http://127.0.0.1:{port}/ingest"}}"#),
    );
    spec.allow_hosts = vec!["127.0.0.1".into()];
    let plugin = host.load(&spec).unwrap();
    let mut group = c.benchmark_group("sink_delivery_20k_events");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);

    let mut run = 0;
    group.bench_function("sink_http_wasm", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                // A new sink name each time: its cursor starts at the first entry.
                run += 1;
                let sinks = Sinks::new(store.clone());
                let started = Instant::now();
                sinks.apply(vec![SinkPlan {
                    name: format!("bench-{run}"),
                    rules: SinkRules {
                        plugin: "ship".into(),
                        batch_events: BATCH,
                        from: StartAt::Start,
                        linger_ms: 1000,
                        retry_max_seconds: 1,
                    },
                    plugin: plugin.clone(),
                }]);
                while sinks.status()[0].cursor < EVENTS {
                    std::thread::sleep(Duration::from_micros(200));
                }
                total += started.elapsed();
            }
            total
        })
    });

    group.bench_function("native_baseline", |b| {
        b.iter(|| {
            let mut cursor = 0;
            while cursor < EVENTS {
                let batch = store.entries_from(cursor, BATCH).unwrap();
                let mut body = Vec::new();
                for r in &batch {
                    let line = serde_json::json!({
                        "index": r.entry.index, "session": r.entry.session, "seq": r.entry.seq,
                        "kind": r.entry.kind, "time_ms": r.entry.time_ms,
                        "meta": serde_json::from_str::<serde_json::Value>(&r.entry.meta).unwrap(),
                        "payload": String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default()),
                    });
                    body.extend_from_slice(line.to_string().as_bytes());
                    body.push(b'\n');
                }
                let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                write!(
                    stream,
                    "POST /ingest HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .unwrap();
                stream.write_all(&body).unwrap();
                let mut answer = [0u8; 64];
                let _ = stream.read(&mut answer).unwrap();
                cursor += batch.len() as u64;
                store.set_sink_cursor("native", cursor).unwrap();
            }
        })
    });
    group.finish();
}

fn retention_compact(c: &mut Criterion) {
    sluice_plugin_host::builtin::provide(sluice_builtins::ALL);
    let mut group = c.benchmark_group("retention_compact_50k_events");
    group.sample_size(10);
    group.bench_function("purge_half_then_rewrite", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(
                    &dir.path().join("record.redb"),
                    &dir.path().join("record.key"),
                )
                .unwrap();
                for (session, ends) in [("old", true), ("new", false)] {
                    let mut events = vec![event(session, 0, "session-open")];
                    events.extend((1..25_000).map(|i| event(session, i, "frame")));
                    if ends {
                        events.push(event(session, 25_000, "session-close"));
                    }
                    for group in events.chunks(1000) {
                        store.append(group).unwrap();
                    }
                }
                let rules = RetentionRules {
                    sessions: [(String::new(), Duration::ZERO)].into(),
                    reviews: None,
                };
                let purged = store
                    .purge(&rules, u64::MAX, &Default::default(), "bench")
                    .unwrap();
                assert_eq!(purged.sessions, ["old"]);
                let started = Instant::now();
                let sizes = store.compact().unwrap();
                total += started.elapsed();
                assert!(sizes.bytes_after < sizes.bytes_before);
            }
            total
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(10));
    targets = sink_delivery, retention_compact
}
criterion_main!(benches);
