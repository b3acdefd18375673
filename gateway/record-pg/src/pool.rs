//! A few PostgreSQL connections, each on a thread of its own. The record's callers are
//! synchronous (the recorder's thread, request handlers on the gateway's runtime), and the
//! `postgres` client blocks on a runtime of its own, which must not run inside another: so
//! every query runs on a connection's thread and the caller waits for its answer.
//!
//! A connection that breaks (the database restarted) is dropped, and the next job opens a
//! new one: the gateway recovers without an operator once the database is back.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::{Client, Config, NoTls};

/// A job gets the thread's connection, or why there is none.
type Job = Box<dyn FnOnce(&mut Result<Client, String>) + Send>;

#[derive(Debug)]
pub struct Pool {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

/// Why a call failed.
#[derive(Debug)]
pub enum Failed {
    /// No connection could be made or kept.
    Unreachable(String),
    /// The database answered with an error.
    Query(postgres::Error),
    /// The pool was shut down.
    Closed,
    /// What the database holds does not make sense (a row altered, a chain broken).
    Corrupt(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Unreachable(why) => write!(f, "PostgreSQL is unreachable: {why}"),
            Failed::Query(e) => write!(f, "PostgreSQL: {}", describe(e)),
            Failed::Closed => write!(f, "the record is closed (the gateway is stopping)"),
            Failed::Corrupt(why) => write!(f, "{why}"),
        }
    }
}

impl From<postgres::Error> for Failed {
    fn from(e: postgres::Error) -> Failed {
        Failed::Query(e)
    }
}

/// The server's message when it sent one, the client's otherwise (with its cause).
pub fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl Pool {
    /// `size` connections to `config`, opened when first needed.
    pub fn new(config: Config, size: usize, name: &str) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..size {
            let rx = rx.clone();
            let config = config.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || {
                    let mut client: Result<Client, String> = Err("not connected yet".into());
                    let mut used = Instant::now();
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        // An idle connection may have died with a database restart, unseen
                        // until used: ask first, so the call itself does not fail for it.
                        if let Ok(c) = &mut client
                            && used.elapsed() > IDLE_CHECK
                            && c.is_valid(CONNECT_TIMEOUT).is_err()
                        {
                            client = Err("the connection was lost".into());
                        }
                        if client.as_ref().map_or(true, Client::is_closed) {
                            client = config.connect(NoTls).map_err(|e| describe(&e));
                        }
                        job(&mut client);
                        used = Instant::now();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a PostgreSQL connection thread");
            }
        }
        Pool {
            jobs: Mutex::new(Some(tx)),
        }
    }

    /// Runs `job` on a connection and waits for its answer.
    pub fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Client) -> Result<T, Failed> + Send + 'static,
    ) -> Result<T, Failed> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |client: &mut Result<Client, String>| {
            let result = match client.as_mut() {
                Err(why) => Err(Failed::Unreachable(why.clone())),
                Ok(c) => job(c),
            };
            if let Err(Failed::Query(e)) = &result
                && (e.is_closed() || e.as_db_error().is_none())
            {
                // A broken connection: the next job opens a new one.
                *client = Err(describe(e));
            }
            let _ = reply.send(result);
        });
        {
            let jobs = self.jobs.lock().map_err(|_| Failed::Closed)?;
            let sender = jobs.as_ref().ok_or(Failed::Closed)?;
            sender.send(job).map_err(|_| Failed::Closed)?;
        }
        answer.recv().unwrap_or(Err(Failed::Closed))
    }

    /// Stops taking jobs; the connection threads end when their queue is empty.
    pub fn close(&self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
    }
}

/// How long a connection attempt may take before the call fails with a clear error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection idle longer than this is checked before it is used again.
const IDLE_CHECK: Duration = Duration::from_millis(100);
