//! The console's sessions page at scale (issue 20): a record of 100,000 sessions (about 1 GB of
//! recorded payloads), served by a real `sluice serve`; the time the search API takes to answer
//! the sessions page filtered by user and time, and a text search over all payloads. Release
//! build, one client, keep-alive off (each request a fresh TLS connection, as a page load).
//!
//! cargo bench -p sluice --bench console            (SESSIONS=N and PAYLOAD=BYTES to change)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use sluice_record::{NewEvent, Store};

#[path = "support/serve.rs"]
mod serve;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const START_MS: u64 = 1_764_000_000_000;

/// Session `i`: opened by one of 50 users, a statement in, `payload` bytes out, closed.
fn session(i: usize, payload: usize) -> Vec<NewEvent> {
    let id = format!("{:013}-{i:016x}", START_MS + i as u64 * 1000);
    let time = START_MS + i as u64 * 1000;
    let event = |seq: u64, kind: &str, meta: String, payload: Vec<u8>| NewEvent {
        session: id.clone(),
        seq,
        kind: kind.into(),
        time_ms: time + seq,
        meta,
        payload,
    };
    let open = format!(
        r#"{{"subject":"user{}","connection":"shell","client":"10.0.0.{}:5000","mode":"exec"}}"#,
        i % 50,
        i % 250
    );
    let statement = format!(
        "echo session {i}; cat /var/log/app-{}.log | tail -n 100",
        i % 7
    );
    let mut out = format!("output of session {i}: ").into_bytes();
    out.resize(payload, b'x');
    vec![
        event(0, "session-open", open, Vec::new()),
        event(
            1,
            "frame",
            r#"{"content":"statement","dir":"in","failures":[],"outcome":"pass","reason":null}"#
                .into(),
            statement.into_bytes(),
        ),
        event(
            1,
            "frame",
            r#"{"content":"bytes","dir":"out","failures":[],"outcome":"pass","reason":null}"#
                .into(),
            out,
        ),
        event(
            2,
            "session-close",
            r#"{"exit_status":0}"#.into(),
            Vec::new(),
        ),
    ]
}

fn p(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
}

fn main() {
    let sessions = env("SESSIONS", 100_000);
    let payload = env("PAYLOAD", 10_000);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let made = Instant::now();
    {
        let store = Store::open(&data.join("record.redb"), &data.join("record.key")).unwrap();
        for chunk in (0..sessions).collect::<Vec<_>>().chunks(250) {
            let events: Vec<NewEvent> = chunk.iter().flat_map(|i| session(*i, payload)).collect();
            store.append(&events).unwrap();
        }
    }
    {
        // The two ways to read the sessions index, in this run: every row checked against
        // its chained opening entry (one entry read per session), and the rows alone (what
        // the search narrows on; it checks only the rows it shows).
        let store = Store::open(&data.join("record.redb"), &data.join("record.key")).unwrap();
        let mut checked = Vec::new();
        let mut rows = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            assert_eq!(store.sessions().unwrap().len(), sessions);
            checked.push(started.elapsed());
            let started = Instant::now();
            assert_eq!(store.session_rows().unwrap().len(), sessions);
            rows.push(started.elapsed());
        }
        checked.sort();
        rows.sort();
        println!(
            "reading the index of {sessions} sessions: checked against the chain p50 {:.1} ms, rows alone p50 {:.1} ms",
            p(&checked, 0.5),
            p(&rows, 0.5)
        );
    }
    let bytes = std::fs::metadata(data.join("record.redb")).unwrap().len();
    eprintln!(
        "record: {sessions} sessions, {:.2} GB of payloads, store {:.2} GB, made in {:.0} s",
        (sessions * payload) as f64 / 1e9,
        bytes as f64 / 1e9,
        made.elapsed().as_secs_f64()
    );
    let (mut gateway, client) = serve::serve(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let time = |path: &str, runs: usize| -> (Vec<Duration>, serde_json::Value) {
        let mut times = Vec::new();
        let mut last = serde_json::Value::Null;
        for _ in 0..runs {
            let started = Instant::now();
            let body = runtime.block_on(client.get(path)).unwrap();
            times.push(started.elapsed());
            last = serde_json::from_slice(&body).unwrap();
        }
        times.sort();
        (times, last)
    };
    // A page of one user's sessions within a day of the record.
    let (since, until) = (START_MS + 20_000_000, START_MS + 20_000_000 + 86_400_000);
    let page = format!("/api/sessions/search?user=user7&since={since}&until={until}&limit=25");
    let (times, last) = time(&page, 50);
    println!(
        "sessions page (user + time, 25 a page) over {sessions} sessions: p50 {:.1} ms, p95 {:.1} ms ({} matched)",
        p(&times, 0.5),
        p(&times, 0.95),
        last["total"]
    );
    let (times, last) = time("/api/sessions/search?limit=25", 20);
    println!(
        "sessions page (no filter, newest 25): p50 {:.1} ms, p95 {:.1} ms ({} in all)",
        p(&times, 0.5),
        p(&times, 0.95),
        last["total"]
    );
    let needle = format!("output of session {}", sessions / 2);
    let (times, last) = time(
        &format!(
            "/api/sessions/search?text={}&limit=25",
            needle.replace(' ', "%20")
        ),
        3,
    );
    println!(
        "text search over {:.2} GB of payloads: p50 {:.0} ms ({} matched)",
        (sessions * payload) as f64 / 1e9,
        p(&times, 0.5),
        last["total"]
    );
    let _ = gateway.kill();
    let _ = gateway.wait();
}
