//! What a front door admits before anyone is authenticated: connections in total and per
//! source address, connections still signing in, and how long signing in may take. Every
//! listener (the HTTPS API and session upgrades, each PostgreSQL front door) shares one set.
//!
//! Architecture invariants:
//! - A connection that has not authenticated holds a sign-in permit and a deadline; neither
//!   outlives authentication, so idle shells and psql sessions (idle by design) are never cut
//!   by them. Signed-in connections get TCP keepalives instead, so a vanished peer is noticed.
//! - Behind a load balancer every connection comes from the balancer: its address, listed in
//!   `trusted_proxies`, counts towards the total only. With `proxy_protocol` the balancer
//!   names each client in a PROXY header, and the client is what is counted, logged and
//!   recorded. Only a trusted proxy's header is read: anyone else's bytes go to TLS untouched.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
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
    proxy_protocol: bool,
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

/// A connection accepted by [`Limits::accept`], not yet past its PROXY header.
pub struct Accepted {
    limits: Arc<Limits>,
    peer: SocketAddr,
    admitted: Option<Admitted>,
}

impl Accepted {
    /// Step two, in the connection's own task: who the client is (what a trusted proxy's
    /// header says, read off `tcp`), counted against the limits.
    pub async fn enter(self, tcp: &mut TcpStream) -> Result<(SocketAddr, Admitted), Refused> {
        if let Some(admitted) = self.admitted {
            return Ok((self.peer, admitted));
        }
        let client = self
            .limits
            .source(tcp, self.peer)
            .await
            .map_err(|why| Refused::Header(self.peer, why))?;
        let admitted = self
            .limits
            .admit(client.ip())
            .map_err(|why| Refused::Limit(client, why))?;
        Ok((client, admitted))
    }
}

/// Why [`Accepted::enter`] refused a connection.
#[derive(Debug)]
pub enum Refused {
    /// A trusted proxy sent no valid PROXY header: told nothing (it could be anyone behind it).
    Header(SocketAddr, String),
    /// The client the header names is over a cap: it may be told why.
    Limit(SocketAddr, String),
}

impl Refused {
    /// Whom it refused, and why.
    pub fn parts(&self) -> (SocketAddr, &str) {
        match self {
            Refused::Header(peer, why) | Refused::Limit(peer, why) => (*peer, why),
        }
    }
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
            proxy_protocol: settings.proxy_protocol,
            sign_in: Duration::from_millis(settings.sign_in_timeout_ms),
            open: Mutex::default(),
            signing_in: Arc::new(Semaphore::new(settings.max_signing_in)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection from `source`, or says why it is refused.
    fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Admitted, String> {
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

    /// Step one of admitting a connection, in the accept loop: counted at once, in accept
    /// order, so connections from one address cannot slip past their cap by racing each
    /// other; or, from a trusted proxy, left for [`Accepted::enter`] to count once its PROXY
    /// header names the client.
    pub fn accept(self: &Arc<Self>, peer: SocketAddr) -> Result<Accepted, String> {
        let admitted = match self.needs_header(peer) {
            true => None,
            false => Some(self.admit(peer.ip())?),
        };
        Ok(Accepted {
            limits: self.clone(),
            peer,
            admitted,
        })
    }

    /// Whether a connection from `peer` begins with a PROXY header (a trusted proxy, with
    /// `proxy_protocol`). Any other is admitted in accept order, before its first byte, so
    /// connections from one address cannot slip past their cap by racing each other.
    fn needs_header(&self, peer: SocketAddr) -> bool {
        self.proxy_protocol && self.trusted.contains(&peer.ip())
    }

    /// Who is at the other end of `tcp`: the client a trusted proxy names in its PROXY
    /// header (read off the stream, nothing past it), or `peer` itself. A trusted proxy that
    /// sends no valid header within the sign-in time is refused, never guessed at.
    async fn source(&self, tcp: &mut TcpStream, peer: SocketAddr) -> Result<SocketAddr, String> {
        if !self.needs_header(peer) {
            return Ok(peer);
        }
        match tokio::time::timeout(self.sign_in, proxy_header(tcp)).await {
            Ok(Ok(Some(client))) => Ok(client),
            // LOCAL (the balancer's own health check) or no address family: the balancer.
            Ok(Ok(None)) => Ok(peer),
            Ok(Err(why)) => Err(format!("PROXY protocol header from {peer}: {why}")),
            Err(_) => Err(format!(
                "{peer} is a trusted proxy (proxy_protocol) but sent no PROXY header within the sign-in time"
            )),
        }
    }

    /// A permit to sign in, held until the connection has authenticated; `None` when too
    /// many connections are signing in at once.
    pub fn signing_in(&self) -> Option<OwnedSemaphorePermit> {
        self.signing_in.clone().try_acquire_owned().ok()
    }
}

/// The longest version 1 header (the specification's bound) and version 2 header we take
/// (addresses and a few TLVs; balancers send far less).
const V1_MAX: usize = 107;
const V2_MAX: usize = 16 + 512;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads one PROXY header, version 1 or 2, and not a byte more (what follows is the client's
/// TLS or PostgreSQL startup): the client it names, or `None` when it names none.
async fn proxy_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, String> {
    use ppp::v2::{Addresses, Command};
    use tokio::io::AsyncReadExt;
    let io = |e: std::io::Error| e.to_string();
    // 15 bytes: the shortest version 1 header ("PROXY UNKNOWN\r\n"), shorter than any v2.
    let mut header = vec![0; 15];
    tcp.read_exact(&mut header).await.map_err(io)?;
    if header.starts_with(V2_SIGNATURE) {
        header.resize(16, 0);
        tcp.read_exact(&mut header[15..]).await.map_err(io)?;
        let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if 16 + length > V2_MAX {
            return Err(format!(
                "a version 2 header of {length} bytes is longer than any balancer sends"
            ));
        }
        header.resize(16 + length, 0);
        tcp.read_exact(&mut header[16..]).await.map_err(io)?;
        let parsed = ppp::v2::Header::try_from(&header[..]).map_err(|e| e.to_string())?;
        return Ok(match (parsed.command, parsed.addresses) {
            (Command::Local, _) => None,
            (_, Addresses::IPv4(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
            (_, Addresses::IPv6(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
            (_, Addresses::Unspecified | Addresses::Unix(_)) => None,
        });
    }
    if !header.starts_with(b"PROXY ") {
        return Err("the connection does not begin with a PROXY header (version 1 or 2)".into());
    }
    // Version 1 ends at CRLF: a byte at a time, so nothing after it is consumed.
    while !header.ends_with(b"\r\n") {
        if header.len() == V1_MAX {
            return Err(format!("no end of line within {V1_MAX} bytes (version 1)"));
        }
        header.push(tcp.read_u8().await.map_err(io)?);
    }
    let text = std::str::from_utf8(&header)
        .map_err(|_| "a version 1 header that is not text".to_string())?;
    let parsed = ppp::v1::Header::try_from(text).map_err(|e| e.to_string())?;
    Ok(match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    })
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

    /// A connection from 127.0.0.1 that sends `sent` then `rest`: where `limits` says it
    /// comes from, and the bytes left on the stream after that.
    async fn from_loopback(limits: &Limits, sent: &[u8]) -> (Result<SocketAddr, String>, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client.write_all(sent).await.unwrap();
        client.write_all(b"rest").await.unwrap();
        client.shutdown().await.unwrap();
        let (mut tcp, peer) = listener.accept().await.unwrap();
        let source = limits.source(&mut tcp, peer).await;
        let mut left = Vec::new();
        tcp.read_to_end(&mut left).await.unwrap();
        (source, left)
    }

    fn behind_proxy(sign_in_ms: u64) -> Arc<Limits> {
        Limits::new(&Settings {
            trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
            proxy_protocol: true,
            sign_in_timeout_ms: sign_in_ms,
            ..Settings::default()
        })
    }

    /// A version 2 PROXY header for TCP over IPv4.
    fn v2(command: u8, source: [u8; 4], port: u16) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend([0x20 | command, 0x11, 0, 12]);
        header.extend(source);
        header.extend([127, 0, 0, 1]);
        header.extend(port.to_be_bytes());
        header.extend(443u16.to_be_bytes());
        header
    }

    #[tokio::test]
    async fn a_trusted_proxys_header_names_the_client_and_nothing_after_it_is_consumed() {
        let limits = behind_proxy(2000);
        for (sent, client) in [
            (
                b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n".to_vec(),
                "203.0.113.7:5555",
            ),
            (
                b"PROXY TCP6 2001:db8::7 ::1 5555 443\r\n".to_vec(),
                "[2001:db8::7]:5555",
            ),
            (v2(1, [198, 51, 100, 9], 6000), "198.51.100.9:6000"),
        ] {
            let (source, left) = from_loopback(&limits, &sent).await;
            assert_eq!(source.unwrap().to_string(), client);
            assert_eq!(left, b"rest");
        }
        // The balancer's own checks (v2 LOCAL, v1 UNKNOWN) are the balancer.
        for sent in [v2(0, [0; 4], 0), b"PROXY UNKNOWN\r\n".to_vec()] {
            let (source, left) = from_loopback(&limits, &sent).await;
            assert_eq!(source.unwrap().ip().to_string(), "127.0.0.1");
            assert_eq!(left, b"rest");
        }
    }

    #[tokio::test]
    async fn a_header_from_anyone_else_is_not_read_and_a_proxy_without_one_is_refused() {
        // Not a trusted proxy: its "header" is the client's own bytes, left for TLS.
        let untrusted = Limits::new(&Settings {
            trusted_proxies: vec!["10.0.0.9".parse().unwrap()],
            proxy_protocol: true,
            ..Settings::default()
        });
        let forged = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n";
        let (source, left) = from_loopback(&untrusted, forged).await;
        assert_eq!(source.unwrap().ip().to_string(), "127.0.0.1");
        assert_eq!(left, [&forged[..], b"rest"].concat());

        let limits = behind_proxy(2000);
        for (sent, why) in [
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh".to_vec(),
                "does not begin with a PROXY header",
            ),
            (
                b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n".to_vec(),
                "PROXY protocol header",
            ),
            (
                [&b"PROXY TCP4 "[..], &[b'1'; 120]].concat(),
                "no end of line",
            ),
            (b"PROXY TCP4 203.0".to_vec(), "PROXY protocol header"),
        ] {
            let (source, _) = from_loopback(&limits, &sent).await;
            let refused = source.unwrap_err();
            assert!(refused.contains(why), "{refused}");
        }
        // One that sends nothing at all is cut off at the sign-in time.
        let limits = behind_proxy(100);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _silent = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut tcp, peer) = listener.accept().await.unwrap();
        let refused = limits.source(&mut tcp, peer).await.unwrap_err();
        assert!(refused.contains("sent no PROXY header"), "{refused}");
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
