//! Shared record throughput (issue 21): durable recorded events per second, 200-byte events,
//! through each node's recorder (its group commit) as strict sessions use it, with 1, 2 and 3
//! nodes appending to one PostgreSQL record at once, against the embedded store (redb) in the
//! same run. Each node is fed by 64 concurrent producers that each wait for their event to be
//! durable before sending the next (as a strict session waits for each frame).
//!
//! The database is a throwaway cluster this bench starts (initdb; fsync and synchronous commit
//! on, as in production), on the same 2 cores as the nodes.
//!
//! cargo bench -p sluice --bench cluster

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_record::{NewEvent, Record, Recorder, Store};
use sluice_record_pg::{PgOptions, PgStore};

const PRODUCERS_PER_NODE: usize = 64;
const RUN: Duration = Duration::from_secs(5);

fn event(session: &str, seq: u64) -> NewEvent {
    NewEvent {
        session: session.into(),
        seq,
        kind: "frame".into(),
        time_ms: 1_764_000_000_000 + seq,
        meta: r#"{"dir":"target-to-client","content":"bytes","outcome":"pass"}"#.into(),
        payload: vec![b'x'; 200],
    }
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", program]);
    c
}

/// A throwaway PostgreSQL cluster; stopped when dropped.
struct Database {
    dir: tempfile::TempDir,
    port: u16,
}

impl Database {
    fn start() -> Database {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let data = dir.path().join("data");
        let out = as_postgres("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.path().display()
        );
        let out = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(dir.path().join("log"))
            .args(["-w", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Database { dir, port }
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A fresh database for one configuration.
    fn create(&self, name: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-c", &format!("CREATE DATABASE {name}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Durable events per second with each store in `stores` fed by its own recorder and
/// producers, all at once.
fn measure(stores: Vec<Arc<dyn Record>>) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let durable = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for (n, store) in stores.iter().enumerate() {
            let recorder = Recorder::spawn(store.clone());
            for p in 0..PRODUCERS_PER_NODE {
                let (recorder, durable) = (recorder.clone(), durable.clone());
                let session = format!("bench-{n}-{p}");
                tasks.push(tokio::spawn(async move {
                    let mut seq = 0;
                    while started.elapsed() < RUN {
                        recorder.append(event(&session, seq)).await.unwrap();
                        durable.fetch_add(1, Ordering::Relaxed);
                        seq += 1;
                    }
                }));
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    durable.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let db = Database::start();
    let keys = tempfile::tempdir().unwrap();

    let redb: Arc<dyn Record> = Arc::new(
        Store::open(
            &keys.path().join("record.redb"),
            &keys.path().join("record.key"),
        )
        .unwrap(),
    );
    let rate = measure(vec![redb]);
    println!("redb, 1 node:        {rate:>9.0} durable events/s");

    for nodes in 1..=3usize {
        let url = db.create(&format!("bench{nodes}"));
        let stores: Vec<Arc<dyn Record>> = (0..nodes)
            .map(|n| {
                Arc::new(
                    PgStore::open(PgOptions {
                        url: url.clone(),
                        node: format!("node{n}"),
                        signer: ed25519_dalek::SigningKey::from_bytes(&[n as u8 + 1; 32]),
                        cluster: ed25519_dalek::SigningKey::from_bytes(&[9; 32]),
                        node_timeout: Duration::from_secs(10),
                        payloads: None,
                    })
                    .unwrap(),
                ) as Arc<dyn Record>
            })
            .collect();
        let rate = measure(stores.clone());
        let commits = count(
            &db,
            &format!("bench{nodes}"),
            "SELECT count(*) FROM sluice.checkpoints",
        );
        let entries = count(
            &db,
            &format!("bench{nodes}"),
            "SELECT count(*) FROM sluice.entries",
        );
        let report = stores[0].verify(sluice_record::VerifyOptions::default());
        assert!(report.holds(), "{:?}", report.problem);
        println!(
            "postgres, {nodes} node(s): {rate:>9.0} durable events/s ({:.1} events per commit; verify holds over {entries})",
            entries as f64 / commits as f64
        );
    }
}

fn count(db: &Database, name: &str, sql: &str) -> u64 {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &db.port.to_string(),
            "-U",
            "postgres",
            "-d",
            name,
        ])
        .args(["-At", "-c", sql])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
