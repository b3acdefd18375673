//! The CLI's side of the gateway: TLS to the gateway (trusting only its CA), API requests,
//! and sessions over the upgraded stream.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

use sluice_engine::wire::{self, Message};

#[derive(Clone)]
pub struct Client {
    host: String,
    port: u16,
    token: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    /// Why sessions are opened (`--reason`), shown to reviewers of access requests.
    reason: Option<String>,
    /// The name the gateway's certificate must carry, when it is not `host`.
    server_name: Option<String>,
}

impl Client {
    /// `gateway`: HOST:PORT (an `https://` prefix is fine). `ca`: the gateway's CA file;
    /// by default `sluice-data/tls/ca.pem` here, as `sluice serve` makes it.
    pub fn new(
        gateway: &str,
        token: Option<String>,
        ca: Option<PathBuf>,
    ) -> anyhow::Result<Client> {
        sluice_engine::tls::install_provider();
        let address = gateway.trim_start_matches("https://").trim_end_matches('/');
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("gateway address `{gateway}`: expected HOST:PORT"))?;
        let port = port
            .parse()
            .map_err(|_| anyhow!("gateway address `{gateway}`: bad port"))?;
        let ca =
            ca.unwrap_or_else(|| sluice_engine::tls::ca_path(std::path::Path::new("sluice-data")));
        let pem = std::fs::read_to_string(&ca).with_context(|| {
            format!("cannot read the gateway's CA at {} (pass --ca, set SLUICE_CA, or run `sluice ca export > ca.pem` where the gateway runs)", ca.display())
        })?;
        Ok(Client {
            host: host.to_string(),
            port,
            token,
            tls: sluice_engine::tls::client_config(&pem)?,
            reason: None,
            server_name: None,
        })
    }

    /// Expect the gateway's certificate to name `name` rather than the host dialed (an agent
    /// reaching the gateway by an address its certificate does not list).
    pub fn with_server_name(mut self, name: Option<String>) -> Client {
        self.server_name = name;
        self
    }

    /// Sessions this client opens say why (`--reason`).
    pub fn with_reason(mut self, reason: Option<String>) -> Client {
        self.reason = reason;
        self
    }

    pub(crate) async fn tls_stream(
        &self,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| {
                format!(
                    "cannot reach the gateway at {}:{} (is `sluice serve` running?)",
                    self.host, self.port
                )
            })?;
        tcp.set_nodelay(true)?;
        let expected = self.server_name.as_ref().unwrap_or(&self.host);
        let name = ServerName::try_from(expected.clone())
            .map_err(|_| anyhow!("bad gateway name {expected}"))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .context("TLS to the gateway failed (is --ca the gateway's CA?)")?;
        Ok(tls)
    }

    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
    ) -> anyhow::Result<hyper::http::request::Builder> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port));
        if let Some(token) = &self.token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        Ok(builder)
    }

    /// GET `path`; the body when the status is 200, else the gateway's error.
    pub async fn get(&self, path: &str) -> anyhow::Result<Bytes> {
        self.call("GET", path).await
    }

    /// POST `path` with no body.
    pub async fn post(&self, path: &str) -> anyhow::Result<Bytes> {
        self.call("POST", path).await
    }

    /// POST `path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Bytes> {
        self.send("POST", path, Bytes::from(body)).await
    }

    /// `method` `path` with a JSON body (PUT, DELETE).
    pub async fn send_json(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Bytes> {
        self.send(method, path, Bytes::from(body)).await
    }

    async fn call(&self, method: &str, path: &str) -> anyhow::Result<Bytes> {
        self.send(method, path, Bytes::new()).await
    }

    async fn send(&self, method: &str, path: &str, body: Bytes) -> anyhow::Result<Bytes> {
        let io = TokioIo::new(self.tls_stream().await?);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await?;
        tokio::spawn(conn);
        let response = sender
            .send_request(self.request(method, path)?.body(Full::new(body))?)
            .await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            bail!("{}", gateway_error(status, &body));
        }
        Ok(body)
    }

    /// GET `path` and hand each piece of the body to `each` as it arrives, until the
    /// gateway ends it (a server-sent-events stream).
    pub async fn follow(&self, path: &str, mut each: impl FnMut(&[u8])) -> anyhow::Result<()> {
        let io = TokioIo::new(self.tls_stream().await?);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await?;
        tokio::spawn(conn);
        let response = sender
            .send_request(self.request("GET", path)?.body(Full::new(Bytes::new()))?)
            .await?;
        let status = response.status();
        let mut body = response.into_body();
        if status != StatusCode::OK {
            let body = body.collect().await?.to_bytes();
            bail!("{}", gateway_error(status, &body));
        }
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                each(data);
            }
        }
        Ok(())
    }

    /// Opens a session; the stream carries `wire` messages.
    pub async fn open(
        &self,
        query: &str,
    ) -> anyhow::Result<(String, TokioIo<hyper::upgrade::Upgraded>)> {
        let reason = self
            .reason
            .as_deref()
            .map(|r| format!("&reason={}", query_value(r)))
            .unwrap_or_default();
        let path = format!("/api/sessions?{query}{reason}");
        let (headers, stream) = self.upgrade("POST", &path, wire::PROTOCOL, &[]).await?;
        let id = headers
            .get("sluice-session")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok((id, stream))
    }

    /// `method path` upgraded to `protocol`: the `101`'s headers and the upgraded stream, or
    /// the gateway's error.
    pub async fn upgrade(
        &self,
        method: &str,
        path: &str,
        protocol: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(hyper::HeaderMap, TokioIo<hyper::upgrade::Upgraded>)> {
        let io = TokioIo::new(self.tls_stream().await?);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await?;
        tokio::spawn(conn.with_upgrades());
        let mut request = self
            .request(method, path)?
            .header(hyper::header::CONNECTION, "upgrade")
            .header(hyper::header::UPGRADE, protocol);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::new()))?)
            .await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            bail!("{}", gateway_error(status, &body));
        }
        let headers = response.headers().clone();
        Ok((headers, TokioIo::new(hyper::upgrade::on(response).await?)))
    }
}

/// `text` percent-encoded for a query string.
pub fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn gateway_error(status: StatusCode, body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    format!("the gateway refused ({status}): {message}")
}

/// Runs a one-shot session: sends `script` as one input, prints the output, and returns the
/// remote exit status.
pub async fn exec(client: &Client, connection: &str, script: Vec<u8>) -> anyhow::Result<u8> {
    let (_, mut stream) = client
        .open(&format!("connection={connection}&mode=exec"))
        .await?;
    for chunk in script.chunks(64 << 10) {
        wire::write(&mut stream, &Message::Input(chunk.to_vec())).await?;
    }
    wire::write(&mut stream, &Message::InputEnd).await?;
    follow(&mut stream).await
}

/// Prints what the gateway sends until the session ends; returns the exit status.
async fn follow(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> anyhow::Result<u8> {
    let mut stdout = std::io::stdout();
    loop {
        match wire::read(stream).await {
            Ok(Message::Output(bytes)) => {
                stdout.write_all(&bytes)?;
                stdout.flush()?;
            }
            Ok(Message::Notice(text)) => eprintln!("\r{text}\r"),
            Ok(Message::Exit(code)) => return Ok(exit_status(code)),
            Ok(Message::Error(text)) => {
                eprintln!("\rsluice: {text}\r");
                return Ok(wire::error_status(&text));
            }
            Ok(other) => bail!("unexpected message from the gateway: {other:?}"),
            Err(e) => bail!("the session ended unexpectedly: {e}"),
        }
    }
}

fn exit_status(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

/// Runs an interactive session on this terminal (raw mode when stdin is a terminal, with
/// window size changes forwarded); returns the remote exit status.
pub async fn connect(client: &Client, connection: &str) -> anyhow::Result<u8> {
    use std::io::IsTerminal;
    let tty = std::io::stdin().is_terminal();
    let (cols, rows) = if tty {
        crossterm::terminal::size().unwrap_or((80, 24))
    } else {
        (80, 24)
    };
    let (_, stream) = client
        .open(&format!(
            "connection={connection}&mode=connect&rows={rows}&cols={cols}"
        ))
        .await?;
    let (mut reader, mut writer) = tokio::io::split(stream);
    if tty {
        crossterm::terminal::enable_raw_mode()?;
    }
    let input = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut stdin = crate::stdin::open();
        let mut buf = vec![0u8; 4096];
        let mut winch =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
        loop {
            tokio::select! {
                n = stdin.read(&mut buf) => match n {
                    Ok(n) if n > 0 => {
                        if wire::write(&mut writer, &Message::Input(buf[..n].to_vec())).await.is_err() { break }
                    }
                    _ => {
                        let _ = wire::write(&mut writer, &Message::InputEnd).await;
                        break;
                    }
                },
                Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                    if let Ok((cols, rows)) = crossterm::terminal::size() {
                        let _ = wire::write(&mut writer, &Message::Resize { rows, cols }).await;
                    }
                }
            }
        }
    });
    let result = follow(&mut reader).await;
    input.abort();
    if tty {
        let _ = crossterm::terminal::disable_raw_mode();
    }
    result
}

/// `sluice connect NAME --port PORT`: every connection to the local port is tunneled to the
/// connection through the gateway (TLS, this user's token). Only this machine can reach
/// the port, and a PostgreSQL client still signs in with its own token.
pub async fn tunnel(client: &Client, connection: &str, port: u16) -> anyhow::Result<u8> {
    use std::io::Write;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let local = listener.local_addr()?;
    println!("sluice: forwarding {local} to connection `{connection}` (Ctrl-C to stop)");
    std::io::stdout().flush()?;
    loop {
        let (mut socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let (client, query) = (
            client.clone(),
            format!("connection={connection}&mode=tunnel"),
        );
        tokio::spawn(async move {
            match client.open(&query).await {
                Ok((_, mut remote)) => {
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut remote).await;
                }
                Err(e) => eprintln!("sluice: {e:#}"),
            }
        });
    }
}
