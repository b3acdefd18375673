//! Replaying long terminal sessions in the console (issue 20): sessions of 10 MB and 100 MB of
//! terminal output (coloured log lines, a clear screen now and then), served by a real
//! `sluice serve`. Measures what a player waits for: opening a replay (its index, the first
//! time scanned from the whole session, then kept), its first segment, a seek to the end at
//! once (while the keyframes are still being made), and seeking once they are (the segment
//! at a random point); and the gateway's resident memory after each. The baseline in
//! the same run: the whole session as one asciicast (`form=asciicast`), what a player's
//! default driver would load. Release build, one client.
//!
//! cargo bench -p sluice --bench replay          (SIZES_MB=10,100 to change)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use sluice_record::{NewEvent, Store};

#[path = "support/serve.rs"]
mod serve;

const START_MS: u64 = 1_764_000_000_000;
const FRAME: usize = 16 * 1024;
const FRAME_EVERY_MS: u64 = 50;

/// A terminal session `id` of `mb` MB of output, in 16 KiB frames 50 ms apart.
fn session(store: &Store, id: &str, mb: usize) {
    let frames = mb * 1_000_000 / FRAME;
    let event = |seq: u64, kind: &str, meta: &str, payload: Vec<u8>| NewEvent {
        session: id.into(),
        seq,
        kind: kind.into(),
        time_ms: START_MS + seq * FRAME_EVERY_MS,
        meta: meta.into(),
        payload,
    };
    store
        .append(&[event(
            0,
            "session-open",
            r#"{"subject":"dev-user","connection":"shell","client":"127.0.0.1:5000","mode":"interactive","cols":120,"rows":40}"#,
            vec![],
        )])
        .unwrap();
    let meta = r#"{"content":"bytes","dir":"out","failures":[],"outcome":"pass","reason":null}"#;
    let mut line_no = 0u64;
    for chunk in (1..=frames as u64).collect::<Vec<_>>().chunks(64) {
        let events: Vec<NewEvent> = chunk
            .iter()
            .map(|seq| {
                let mut out = String::with_capacity(FRAME + 200);
                if seq % 100 == 0 {
                    out.push_str("\x1b[2J\x1b[H");
                }
                while out.len() < FRAME {
                    line_no += 1;
                    out.push_str(&format!(
                        "2026-11-30T12:{:02}:{:02} \x1b[32mINFO\x1b[0m request {line_no} path=/api/items/{} status=\x1b[1m200\x1b[0m took={}ms\r\n",
                        (line_no / 60) % 60,
                        line_no % 60,
                        line_no * 7919 % 100_000,
                        line_no % 97
                    ));
                }
                event(*seq, "frame", meta, out.into_bytes())
            })
            .collect();
        store.append(&events).unwrap();
    }
    let close = event(
        frames as u64 + 1,
        "session-close",
        r#"{"exit_status":0}"#,
        vec![],
    );
    store.append(&[close]).unwrap();
}

/// The gateway's resident and peak resident memory, in MB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SIZES_MB")
        .unwrap_or_else(|_| "10,100".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    {
        let store = Store::open(&data.join("record.redb"), &data.join("record.key")).unwrap();
        for mb in &sizes {
            session(&store, &format!("replay-{mb}mb"), *mb);
        }
    }
    let (mut gateway, client) = serve::serve(dir.path());
    let pid = gateway.id();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let get = |path: &str| -> (Duration, Vec<u8>) {
        let started = Instant::now();
        let body = runtime.block_on(client.get(path)).unwrap();
        (started.elapsed(), body.to_vec())
    };
    let (rss, _) = memory(pid);
    println!("gateway started: {rss:.0} MB resident");
    for mb in &sizes {
        let base = format!("/api/sessions/replay-{mb}mb/replay");
        let (made, body) = get(&base);
        let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let segments = index["segments"].as_array().unwrap().len();
        let (first, body) = get(&format!("{base}/0"));
        let first_bytes = body.len();
        // A seek to the end at once: its keyframe may still be in the making.
        let (far, _) = get(&format!("{base}/{}", segments - 1));
        let (again, _) = get(&base);
        // Seeks: the segment holding each of 20 points spread over the session.
        let mut seeks = Vec::new();
        for i in 0..20 {
            let k = (i * 7919 + 13) % segments;
            let (took, body) = get(&format!("{base}/{k}"));
            assert!(body.starts_with(b"{\"snapshot\""));
            seeks.push(took);
        }
        seeks.sort();
        let (rss, peak) = memory(pid);
        println!(
            "{mb} MB session ({segments} segments, {:.0} s long): open {:.0} ms the first time (index scanned) + first segment {:.0} ms ({} KB) = start {:.0} ms; seek to the end at once {:.0} ms (waits for its keyframe); open again {:.1} ms; seek p50 {:.0} ms, max {:.0} ms; gateway {rss:.0} MB resident, peak {peak:.0} MB",
            index["duration"].as_f64().unwrap(),
            ms(made),
            ms(first),
            first_bytes / 1024,
            ms(made + first),
            ms(far),
            ms(again),
            ms(seeks[seeks.len() / 2]),
            ms(seeks[seeks.len() - 1]),
        );
    }
    // The baseline: each session whole, as one asciicast.
    for mb in &sizes {
        let (took, body) = get(&format!(
            "/api/sessions/replay-{mb}mb/events?form=asciicast"
        ));
        let (rss, peak) = memory(pid);
        println!(
            "baseline, {mb} MB session as one asciicast: {:.0} ms for {:.0} MB; gateway {rss:.0} MB resident, peak {peak:.0} MB",
            ms(took),
            body.len() as f64 / 1e6
        );
    }
    let _ = gateway.kill();
    let _ = gateway.wait();
}
