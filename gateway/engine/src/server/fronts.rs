//! PostgreSQL connections' front doors: each connection's `Front` with the accept loop on its
//! own port. The file's connections open theirs at start (a taken port fails the start);
//! one added or changed at runtime opens, moves or closes its door with the change, and a
//! port it cannot take refuses the change before anything is applied. Sessions already
//! through a door live on when it closes or moves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
use crate::config::PostgresConnection;
use crate::limits::Limits;
use crate::pg::Front;
use crate::session::Context;

/// A door: the connection served and the loop accepting on its port.
struct Door {
    front: Arc<Front>,
    listen: SocketAddr,
    accepting: JoinHandle<()>,
}

pub(super) struct Fronts {
    doors: Mutex<BTreeMap<String, Door>>,
    auth: Arc<Authenticator>,
    ctx: Arc<Context>,
    tls: tokio_rustls::TlsAcceptor,
    limits: Arc<Limits>,
}

/// A port taken for a door not opened yet.
pub(super) struct Bound {
    name: String,
    listener: TcpListener,
}

impl Fronts {
    pub(super) fn new(
        auth: Arc<Authenticator>,
        ctx: Arc<Context>,
        tls: tokio_rustls::TlsAcceptor,
        limits: Arc<Limits>,
    ) -> Fronts {
        Fronts {
            doors: Mutex::new(BTreeMap::new()),
            auth,
            ctx,
            tls,
            limits,
        }
    }

    pub(super) fn get(&self, name: &str) -> Option<Arc<Front>> {
        self.lock().get(name).map(|door| door.front.clone())
    }

    /// Takes port `listen` for connection `name`. When its door is open on that same port
    /// already (an edit that keeps it), that door closes first, so the port is free.
    pub(super) async fn bind(&self, name: &str, listen: SocketAddr) -> Result<Bound, String> {
        let same_port = self
            .lock()
            .get(name)
            .is_some_and(|door| door.listen == listen);
        if same_port {
            self.close(name).await;
        }
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("connections.{name}: cannot listen on {listen}: {e}"))?;
        Ok(Bound {
            name: name.to_string(),
            listener,
        })
    }

    /// Opens connection `conn`'s door on the port bound for it, in place of its door before
    /// (if any).
    pub(super) fn open(&self, bound: Bound, conn: &PostgresConnection) {
        let Bound { name, listener } = bound;
        let listen = listener.local_addr().unwrap_or(conn.listen);
        let front = Arc::new(Front::new(
            name.clone(),
            conn.clone(),
            self.auth.clone(),
            self.ctx.clone(),
            self.tls.clone(),
            self.limits.clone(),
        ));
        let accepting = tokio::spawn(crate::pg::serve(front.clone(), listener));
        tracing::info!(connection = %name, %listen, "postgres front door open");
        let door = Door {
            front,
            listen,
            accepting,
        };
        if let Some(old) = self.lock().insert(name, door) {
            old.accepting.abort();
        }
    }

    /// Closes connection `name`'s door, if it has one, and waits until its port is free.
    pub(super) async fn close(&self, name: &str) {
        let door = self.lock().remove(name);
        if let Some(door) = door {
            door.accepting.abort();
            let _ = door.accepting.await;
            tracing::info!(connection = %name, listen = %door.listen, "postgres front door closed");
        }
    }

    pub(super) async fn close_all(&self) {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        for name in names {
            self.close(&name).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Door>> {
        self.doors.lock().unwrap_or_else(|e| e.into_inner())
    }
}
