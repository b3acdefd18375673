//! What a front door admits before anyone is authenticated: connections in total and per
//! source address, connections still signing in, and how long signing in may take. Every
//! listener (the HTTPS API and session upgrades, each PostgreSQL front door) shares one set.
//!
//! Architecture invariants:
//! - A connection that has not authenticated holds a sign-in permit and a deadline; neither
//!   outlives authentication, so idle shells and psql sessions (idle by design) are never cut
//!   by them. Signed-in connections get TCP keepalives instead, so a vanished peer is noticed.
//! - Behind a load balancer every connection comes from the balancer: its address, listed in
//!   `trusted_proxies`, counts towards the total only.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Gateway as Settings;

/// Probes for a peer that went away without a word (a laptop closed mid-session).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct Limits {
    total: usize,
    per_source: usize,
    trusted: HashSet<IpAddr>,
    /// How long a connection may take from accept to authenticated.
    pub sign_in: Duration,
    open: Mutex<Open>,
    signing_in: Arc<Semaphore>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// A connection counted against the limits until dropped.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<Limits>,
    source: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

impl Limits {
    pub fn new(settings: &Settings) -> Arc<Limits> {
        Arc::new(Limits {
            total: settings.max_connections,
            per_source: settings.max_connections_per_source,
            trusted: settings.trusted_proxies.iter().copied().collect(),
            sign_in: Duration::from_millis(settings.sign_in_timeout_ms),
            open: Mutex::default(),
            signing_in: Arc::new(Semaphore::new(settings.max_signing_in)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection from `source`, or says why it is refused.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Admitted, String> {
        let mut open = self.lock();
        if open.total >= self.total {
            return Err(format!(
                "the gateway has {} connections open, its limit (max_connections)",
                self.total
            ));
        }
        let from_source = open.by_source.get(&source).copied().unwrap_or(0);
        if !self.trusted.contains(&source) && from_source >= self.per_source {
            return Err(format!(
                "{source} has {} connections open, the limit per address (max_connections_per_source; list a load balancer in trusted_proxies)",
                self.per_source
            ));
        }
        open.total += 1;
        *open.by_source.entry(source).or_default() += 1;
        Ok(Admitted {
            limits: self.clone(),
            source,
        })
    }

    /// A permit to sign in, held until the connection has authenticated; `None` when too
    /// many connections are signing in at once.
    pub fn signing_in(&self) -> Option<OwnedSemaphorePermit> {
        self.signing_in.clone().try_acquire_owned().ok()
    }
}

/// TCP keepalives on an accepted connection, so a peer that vanished is noticed even when
/// nothing is sent (an idle shell, an idle psql).
pub fn keepalive(tcp: &tokio::net::TcpStream) {
    let probes = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&probes) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_source: usize, trusted: &[&str]) -> Arc<Limits> {
        Limits::new(&Settings {
            max_connections: total,
            max_connections_per_source: per_source,
            trusted_proxies: trusted.iter().map(|a| a.parse().unwrap()).collect(),
            ..Settings::default()
        })
    }

    #[test]
    fn connections_are_counted_per_source_and_in_total_and_released_on_drop() {
        let limits = limits(3, 2, &["10.0.0.9"]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        let refused = limits.admit(a).unwrap_err();
        assert!(refused.contains("max_connections_per_source"), "{refused}");
        drop(first);
        let _third = limits.admit(a).unwrap();
        // The total binds everyone, a trusted proxy too.
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let _p = limits.admit(proxy).unwrap();
        assert!(limits.admit(proxy).unwrap_err().contains("max_connections"));
    }

    #[test]
    fn a_trusted_proxy_is_not_held_to_the_per_source_limit() {
        let limits = limits(10, 1, &["10.0.0.9"]);
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| limits.admit(proxy).unwrap()).collect();
        assert_eq!(held.len(), 5);
    }
}
