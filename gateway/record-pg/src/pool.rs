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

use postgres::config::SslMode;
use postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Where the record lives and how to reach it: a parsed URL, and TLS when it asks for it.
#[derive(Clone)]
pub struct Target {
    pub config: Config,
    /// Verifies the server against the URL's `sslrootcert` and its host name.
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Target {
    /// A URL as libpq takes it. `sslrootcert=PATH` (the CA that signed the database's
    /// certificate) turns TLS on and makes it required; `sslmode=require`, `verify-ca` or
    /// `verify-full` need it. The server is then always verified, chain and host name, as
    /// `verify-full` does: a TLS connection nobody checked would only look safe.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let (mut rootcert, mut mode, mut kept) = (None, None, Vec::new());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslrootcert", path)) => rootcert = Some(path.to_string()),
                Some(("sslmode", value)) => mode = Some(value.to_string()),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        let mut config: Config = format!("{base}{rest}")
            .parse()
            .map_err(|e| format!("the store's URL is not a PostgreSQL URL: {e}"))?;
        let required = match mode.as_deref() {
            None | Some("disable" | "allow" | "prefer") => false,
            Some("require" | "verify-ca" | "verify-full") => true,
            Some(other) => return Err(format!("the store's URL: unknown sslmode `{other}`")),
        };
        let tls = match (rootcert, required) {
            (Some(path), _) => Some(connector(&path)?),
            (None, true) => {
                return Err(format!(
                    "the store's URL asks for sslmode={} but names no sslrootcert=PATH: the CA that signed the database's certificate (the connection is always verified)",
                    mode.unwrap_or_default()
                ));
            }
            (None, false) => None,
        };
        config.ssl_mode(if tls.is_some() {
            SslMode::Require
        } else {
            SslMode::Disable
        });
        config.connect_timeout(CONNECT_TIMEOUT);
        Ok(Target { config, tls })
    }

    pub fn connect(&self) -> Result<Client, postgres::Error> {
        match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        }
    }
}

/// A TLS client trusting only the certificates in the PEM file at `path`.
fn connector(path: &str) -> Result<MakeRustlsConnect, String> {
    use rustls_pki_types::pem::PemObject;
    let why = |e: &dyn std::fmt::Display| format!("sslrootcert {path}: {e}");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| why(&e))? {
        roots.add(cert.map_err(|e| why(&e))?).map_err(|e| why(&e))?;
    }
    if roots.is_empty() {
        return Err(why(&"no certificate in the file"));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| why(&e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

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
    /// The payload bucket failed (it says which and why).
    Bucket(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Unreachable(why) => write!(f, "PostgreSQL is unreachable: {why}"),
            Failed::Query(e) => write!(f, "PostgreSQL: {}", describe(e)),
            Failed::Closed => write!(f, "the record is closed (the gateway is stopping)"),
            Failed::Corrupt(why) | Failed::Bucket(why) => write!(f, "{why}"),
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
    /// `size` connections to `target`, opened when first needed.
    pub fn new(target: Target, size: usize, name: &str) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..size {
            let rx = rx.clone();
            let target = target.clone();
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
                            client = target.connect().map_err(|e| describe(&e));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_follows_the_urls_sslmode_and_sslrootcert_and_other_options_stay() {
        let plain = Target::parse("postgres://u:p@db:5432/rec?application_name=sluice").unwrap();
        assert!(plain.tls.is_none());
        assert_eq!(plain.config.get_application_name(), Some("sluice"));
        assert_eq!(plain.config.get_ssl_mode(), SslMode::Disable);
        for mode in ["require", "verify-ca", "verify-full"] {
            let why = Target::parse(&format!("postgres://db/rec?sslmode={mode}")).unwrap_err();
            assert!(why.contains("sslrootcert"), "{why}");
        }
        let why = Target::parse("postgres://db/rec?sslmode=sometimes").unwrap_err();
        assert!(why.contains("unknown sslmode"), "{why}");
        let why = Target::parse("postgres://db/rec?sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert!(why.contains("/nonexistent/ca.pem"), "{why}");
        let empty = std::env::temp_dir().join(format!("sluice-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "").unwrap();
        let why = Target::parse(&format!(
            "postgres://db/rec?sslrootcert={}",
            empty.display()
        ))
        .unwrap_err();
        std::fs::remove_file(&empty).unwrap();
        assert!(why.contains("no certificate"), "{why}");
    }
}
