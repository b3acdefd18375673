//! Outgoing HTTP for sink plugins (`wasi:http`), limited to the hosts their policy allows.
//!
//! A request is checked twice: its host must be on the plugin's `allow_hosts`, and every
//! address the host resolves to must be allowed too, either public (a global unicast
//! address) or listed by address. The connection then goes to the checked address itself, so
//! nothing is resolved twice (no DNS rebinding between check and use). A name that resolves
//! to a private, loopback or link-local address (a cloud's metadata service, the gateway's
//! own ports) is refused unless the policy lists that address.
//!
//! Architecture invariant: a plugin reaches nothing else; filters get no allow-list at all.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One entry of `allow_hosts`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Allowed {
    /// `logs.example.com`, `*.example.com`, optionally with `:port`.
    Name { name: String, port: Option<u16> },
    /// `10.0.0.7`, `10.0.0.0/8`, `::1`.
    Net { addr: IpAddr, prefix: u8 },
}

/// Names resolved by the gateway's own table before DNS (`[egress] hosts` in `sluice.toml`):
/// pins a backend's address, and lets tests give a name any address.
#[derive(Clone, Debug, Default)]
pub struct Resolver {
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
}

impl Resolver {
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
        if let Some(addrs) = self.hosts.get(&host.to_ascii_lowercase()) {
            return Ok(addrs.clone());
        }
        let found = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("`{host}` does not resolve: {e}"))?;
        Ok(found.map(|a| a.ip()).collect())
    }
}

/// What one plugin may reach.
#[derive(Clone, Debug)]
pub struct Egress {
    allowed: Vec<Allowed>,
    resolver: Arc<Resolver>,
}

impl Egress {
    /// Parses a policy's `allow_hosts`; the error names the bad entry.
    pub fn new(allow_hosts: &[String], resolver: Arc<Resolver>) -> Result<Egress, String> {
        let allowed = allow_hosts
            .iter()
            .map(|entry| parse_allowed(entry))
            .collect::<Result<_, _>>()?;
        Ok(Egress { allowed, resolver })
    }

    /// The address to connect to for `host:port`, or why not.
    pub async fn check(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return if self.allows_addr(ip) {
                Ok(SocketAddr::new(ip, port))
            } else {
                Err(format!("{ip} is not on the plugin's allow_hosts"))
            };
        }
        let host = host.to_ascii_lowercase();
        if !self.allows_name(&host, port) {
            return Err(format!(
                "`{host}:{port}` is not on the plugin's allow_hosts"
            ));
        }
        let addrs = self.resolver.resolve(&host, port).await?;
        if addrs.is_empty() {
            return Err(format!("`{host}` resolves to no address"));
        }
        // Every address must be allowed: which one a later lookup returns is not ours to pick.
        if let Some(bad) = addrs
            .iter()
            .find(|ip| !is_public(**ip) && !self.allows_addr(**ip))
        {
            return Err(format!(
                "`{host}` resolves to {bad}, a non-public address the plugin's allow_hosts does not list"
            ));
        }
        Ok(SocketAddr::new(addrs[0], port))
    }

    fn allows_name(&self, host: &str, port: u16) -> bool {
        self.allowed.iter().any(|a| match a {
            Allowed::Name { name, port: p } => {
                let matches = match name.strip_prefix("*.") {
                    Some(domain) => host
                        .strip_suffix(domain)
                        .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
                    None => host == name,
                };
                matches && p.is_none_or(|p| p == port)
            }
            Allowed::Net { .. } => false,
        })
    }

    fn allows_addr(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allowed.iter().any(|a| match a {
            Allowed::Net { addr, prefix } => in_net(ip, *addr, *prefix),
            Allowed::Name { .. } => false,
        })
    }
}

fn parse_allowed(entry: &str) -> Result<Allowed, String> {
    let bad = |why: &str| format!("allow_hosts: `{entry}` {why}");
    let text = entry.trim().to_ascii_lowercase();
    if text.is_empty() {
        return Err(bad("is empty"));
    }
    if text.contains("://") {
        return Err(bad("is a URL: give the host alone (`logs.example.com`)"));
    }
    if let Some((addr, prefix)) = text.split_once('/') {
        let addr: IpAddr = addr.parse().map_err(|_| bad("is not an address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| bad("has a bad prefix length"))?;
        return Ok(Allowed::Net {
            addr: canonical(addr),
            prefix,
        });
    }
    if let Ok(addr) = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        return Ok(Allowed::Net {
            addr: canonical(addr),
            prefix,
        });
    }
    let (name, port) = match text.rsplit_once(':') {
        Some((name, port)) => (
            name.to_string(),
            Some(port.parse::<u16>().map_err(|_| bad("has a bad port"))?),
        ),
        None => (text.clone(), None),
    };
    let bare = name.strip_prefix("*.").unwrap_or(&name);
    if bare.is_empty()
        || bare.contains('*')
        || !bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(bad(
            "is not a host name (`logs.example.com`, `*.example.com`, `host:port`) or an address",
        ));
    }
    Ok(Allowed::Name { name, port })
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// Whether `ip` is a global unicast address (not private, loopback, link-local, shared,
/// reserved, documentation, multicast or unspecified).
fn is_public(ip: IpAddr) -> bool {
    const V4_SPECIAL: &[(&str, u8)] = &[
        ("0.0.0.0", 8),
        ("10.0.0.0", 8),
        ("100.64.0.0", 10),
        ("127.0.0.0", 8),
        ("169.254.0.0", 16),
        ("172.16.0.0", 12),
        ("192.0.0.0", 24),
        ("192.0.2.0", 24),
        ("192.168.0.0", 16),
        ("198.18.0.0", 15),
        ("198.51.100.0", 24),
        ("203.0.113.0", 24),
        ("224.0.0.0", 4),
        ("240.0.0.0", 4),
    ];
    const V6_SPECIAL: &[(&str, u8)] = &[
        ("::", 127),
        ("64:ff9b:1::", 48),
        ("100::", 64),
        ("2001:db8::", 32),
        ("fc00::", 7),
        ("fe80::", 10),
        ("ff00::", 8),
    ];
    let ip = canonical(ip);
    let special = if ip.is_ipv4() { V4_SPECIAL } else { V6_SPECIAL };
    !special.iter().any(|(net, prefix)| {
        net.parse()
            .is_ok_and(|net: IpAddr| in_net(ip, net, *prefix))
    })
}

/// The `wasi:http` hooks of one plugin instance: its egress (none for filters), and the
/// last refusal, so the gateway can say why a delivery failed.
pub struct Hooks {
    pub egress: Option<Arc<Egress>>,
    pub refused: Arc<Mutex<Option<String>>>,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A response, and the future that drives its connection to the end.
type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<Sent, Error>> + Send> {
        let (egress, refused) = (self.egress.clone(), self.refused.clone());
        Box::new(async move {
            let Some(egress) = egress else {
                *refused.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some("this plugin has no allow_hosts: it may not reach the network".into());
                return Err(Error::HttpRequestDenied);
            };
            send(&egress, &refused, request, options)
                .await
                .map_err(Error::from)
        })
    }
}

enum Refusal {
    /// Off the allow list; the reason is in the hooks' `refused`.
    Denied,
    Failed(Error),
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        match r {
            Refusal::Denied => Error::DestinationIpProhibited,
            Refusal::Failed(e) => e,
        }
    }
}

async fn send(
    egress: &Egress,
    refused: &Mutex<Option<String>>,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<Sent, Refusal> {
    let failed = Refusal::Failed;
    let uri = request.uri().clone();
    let tls = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .ok_or(Refusal::Failed(Error::HttpRequestUriInvalid))?;
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = match egress.check(host, port).await {
        Ok(addr) => addr,
        Err(why) => {
            // Recorded before the request (and its body stream) is dropped: the guest sees
            // its body closed only once the reason is there for the gateway to report.
            tracing::warn!(%why, "egress refused");
            *refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            return Err(Refusal::Denied);
        }
    };
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(CONNECT_TIMEOUT);
    let read_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(READ_TIMEOUT);
    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| failed(Error::ConnectionTimeout))?
        .map_err(|e| failed(Error::Connect(e)))?;
    let stream: Box<dyn Stream> = if tls {
        let name =
            rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|_| failed(Error::HttpRequestUriInvalid))?;
        let tls = tokio_rustls::TlsConnector::from(public_roots())
            .connect(name, tcp)
            .await
            .map_err(|e| failed(Error::Tls(e)))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| failed(Error::ConnectionTimeout))?
    .map_err(|e| failed(e.into()))?;
    // The request line carries the path only (the host is in the Host header).
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = path
        .parse()
        .map_err(|_| failed(Error::HttpRequestUriInvalid))?;
    let driver = tokio::spawn(conn);
    let response = tokio::time::timeout(read_timeout, sender.send_request(request))
        .await
        .map_err(|_| failed(Error::ConnectionReadTimeout))?
        .map_err(|e| failed(e.into()))?;
    let response = response.map(|body| {
        ReadTimeout {
            body,
            timeout: read_timeout,
            sleep: Box::pin(tokio::time::sleep(read_timeout)),
        }
        .boxed_unsync()
    });
    let done = async move {
        match driver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::ConnectionTerminated),
        }
    };
    Ok((response, Box::new(done)))
}

/// The web's public roots (Mozilla's list, compiled in): sinks talk to public services.
fn public_roots() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// A response body that fails when the server sends nothing for `timeout`.
struct ReadTimeout {
    body: hyper::body::Incoming,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for ReadTimeout {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + self.timeout;
                self.sleep.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Error::from)))
            }
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(allow: &[&str], hosts: &[(&str, &str)]) -> Egress {
        let resolver = Resolver {
            hosts: hosts
                .iter()
                .map(|(n, ip)| (n.to_string(), vec![ip.parse().unwrap()]))
                .collect(),
        };
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        Egress::new(&allow, Arc::new(resolver)).unwrap()
    }

    #[tokio::test]
    async fn names_must_be_listed_and_resolve_to_allowed_addresses() {
        let e = egress(
            &[
                "logs.example.com",
                "*.corp.example",
                "hooks.test:8080",
                "10.1.0.0/16",
            ],
            &[
                ("logs.example.com", "93.184.216.34"),
                ("a.corp.example", "10.1.2.3"),
                ("b.corp.example", "169.254.169.254"),
                ("hooks.test", "127.0.0.1"),
                ("other.test", "93.184.216.34"),
            ],
        );
        assert_eq!(
            e.check("logs.example.com", 443).await.unwrap(),
            "93.184.216.34:443".parse().unwrap()
        );
        // Private, but its network is listed.
        assert!(e.check("a.corp.example", 443).await.is_ok());
        // An allowed name pointing at the metadata service: refused.
        let err = e.check("b.corp.example", 80).await.unwrap_err();
        assert!(err.contains("resolves to 169.254.169.254"), "{err}");
        // Loopback behind an allowed name and port: refused all the same.
        let err = e.check("hooks.test", 8080).await.unwrap_err();
        assert!(err.contains("non-public"), "{err}");
        assert!(
            e.check("hooks.test", 80)
                .await
                .unwrap_err()
                .contains("not on")
        );
        assert!(
            e.check("other.test", 80)
                .await
                .unwrap_err()
                .contains("not on")
        );
        assert!(e.check("corp.example", 80).await.is_err());
        // Addresses are judged as addresses, mapped IPv6 as the IPv4 they carry.
        assert!(e.check("10.1.9.9", 80).await.is_ok());
        assert!(e.check("[::ffff:10.1.9.9]", 80).await.is_ok());
        assert!(e.check("10.2.0.1", 80).await.is_err());
    }

    #[test]
    fn special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn bad_entries_are_named() {
        for (entry, why) in [
            ("", "is empty"),
            ("10.0.0.0/33", "bad prefix"),
            ("host:http", "bad port"),
            ("a*.example.com", "is not a host name"),
            ("http://x", "is a URL"),
            ("a/b", "is not an address/prefix"),
        ] {
            let err = parse_allowed(entry).unwrap_err();
            assert!(err.contains(why), "{entry}: {err}");
        }
    }
}
