//! Outgoing HTTP for sink plugins, over `wasi:http`.
//!
//! The gateway grants it per plugin: only hosts on the plugin's `allow_hosts` in the policy
//! are reachable, checked after DNS resolution; anything else fails with
//! [`HttpError::Refused`]. Requests are blocking: a sink delivers one batch at a time.
//!
//! ```no_run
//! use sluice_plugin_sdk::http::{Request, send};
//! let response = send(&Request::post("http://logs.example.com/ingest", b"{}".to_vec())
//!     .header("content-type", "application/json"))?;
//! assert!(response.is_success());
//! # Ok::<(), sluice_plugin_sdk::http::HttpError>(())
//! ```

use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// For connecting, and then for the first byte of the response.
    pub timeout: Duration,
}

impl Request {
    pub fn new(method: &str, url: &str, body: Vec<u8>) -> Request {
        Request {
            method: method.to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            body,
            timeout: Duration::from_secs(10),
        }
    }

    pub fn post(url: &str, body: Vec<u8>) -> Request {
        Request::new("POST", url, body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Whether trying again later may succeed: timeouts, throttling, server errors.
    pub fn is_retryable(&self) -> bool {
        matches!(self.status, 408 | 425 | 429) || self.status >= 500
    }

    /// The start of the body as text, for error messages.
    pub fn body_text(&self, max: usize) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(max) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.to_string(),
        }
    }
}

/// What a delivery's request came to, as a sink tells the gateway: a 2xx answer delivered
/// the batch; a timeout, 408, 425, 429 or 5xx (or no answer at all, or the egress policy,
/// which a reload may change) is worth retrying; any other answer or a bad URL is permanent.
/// `what` names the request in the message (`POST https://…`).
pub fn delivery(sent: Result<Response, HttpError>, what: &str) -> Result<(), crate::SinkError> {
    use crate::SinkError;
    match sent {
        Ok(response) if response.is_success() => Ok(()),
        Ok(response) => {
            let why = format!(
                "{what} answered {}: {}",
                response.status,
                response.body_text(300)
            );
            if response.is_retryable() {
                Err(SinkError::Retryable(why))
            } else {
                Err(SinkError::Permanent(why))
            }
        }
        Err(e @ HttpError::BadUrl(_)) => Err(SinkError::Permanent(format!("{what}: {e}"))),
        Err(e) => Err(SinkError::Retryable(format!("{what}: {e}"))),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The gateway's egress policy does not allow this destination.
    Refused(String),
    /// The URL cannot be used.
    BadUrl(String),
    /// Connecting or talking to the server failed (worth retrying).
    Transport(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Refused(why) => write!(f, "refused by the gateway's egress policy: {why}"),
            HttpError::BadUrl(why) => write!(f, "bad URL: {why}"),
            HttpError::Transport(why) => write!(f, "{why}"),
        }
    }
}

/// A URL as errors may show it: scheme and host only. A webhook's path or query is often its
/// secret (Slack's, a SIEM's token); errors reach logs and `sluice sinks`.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme, rest),
        None => return "(a URL without a scheme)".into(),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Credentials in the authority (`user:pass@host`) are a secret too.
    let host = authority.rsplit('@').next().unwrap_or_default();
    let hidden = if authority.len() < rest.len() || host.len() < authority.len() {
        "/…"
    } else {
        ""
    };
    format!("{scheme}://{host}{hidden}")
}

/// A URL split into what `wasi:http` asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Url<'a> {
    pub https: bool,
    pub authority: &'a str,
    pub path_and_query: &'a str,
}

impl<'a> Url<'a> {
    pub fn parse(url: &'a str) -> Result<Url<'a>, HttpError> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(HttpError::BadUrl(format!(
                "`{}` must start with http:// or https://",
                redacted(url)
            )));
        };
        let (authority, path_and_query) = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('/') => (&rest[..at], &rest[at..]),
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(HttpError::BadUrl(format!(
                "`{}` has no host (or carries credentials; put them in headers)",
                redacted(url)
            )));
        }
        Ok(Url {
            https,
            authority,
            path_and_query,
        })
    }

    /// The host without the port (and without brackets around an IPv6 address).
    pub fn host(&self) -> &'a str {
        let a = self.authority;
        if let Some(rest) = a.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        a.rsplit_once(':').map_or(a, |(host, _)| host)
    }
}

#[cfg(target_arch = "wasm32")]
pub fn send(request: &Request) -> Result<Response, HttpError> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
    };
    use wasip2::io::streams::StreamError;

    let url = Url::parse(&request.url)?;
    let mut fields: Vec<(String, Vec<u8>)> = request
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone().into_bytes()))
        .collect();
    // A known length, not a chunked body: object stores and many collectors require it.
    if !fields.iter().any(|(n, _)| n == "content-length") {
        fields.push((
            "content-length".into(),
            request.body.len().to_string().into_bytes(),
        ));
    }
    let headers = Fields::from_list(&fields)
        .map_err(|e| HttpError::BadUrl(format!("a header is not allowed: {e:?}")))?;
    let outgoing = OutgoingRequest::new(headers);
    let method = match request.method.as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    };
    let bad = |what: &str| {
        HttpError::BadUrl(format!("{what} is not valid in {}", redacted(&request.url)))
    };
    outgoing
        .set_method(&method)
        .map_err(|()| bad("the method"))?;
    let scheme = if url.https {
        Scheme::Https
    } else {
        Scheme::Http
    };
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| bad("the scheme"))?;
    outgoing
        .set_authority(Some(url.authority))
        .map_err(|()| bad("the host"))?;
    outgoing
        .set_path_with_query(Some(url.path_and_query))
        .map_err(|()| bad("the path"))?;
    let options = RequestOptions::new();
    let nanos = request.timeout.as_nanos() as u64;
    let _ = options.set_connect_timeout(Some(nanos));
    let _ = options.set_first_byte_timeout(Some(nanos));
    let _ = options.set_between_bytes_timeout(Some(nanos));
    let body = outgoing
        .body()
        .map_err(|()| HttpError::Transport("no request body".into()))?;
    let transport = |e: ErrorCode| {
        let code = format!("{e:?}");
        let code = code.trim_start_matches("ErrorCode::").to_string();
        match e {
            ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => {
                HttpError::Refused(code)
            }
            _ => HttpError::Transport(code),
        }
    };
    let pending = outgoing_handler::handle(outgoing, Some(options)).map_err(transport)?;
    {
        let stream = body
            .write()
            .map_err(|()| HttpError::Transport("no request body stream".into()))?;
        for chunk in request.body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| HttpError::Transport(format!("sending the body: {e:?}")))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(transport)?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return Err(transport(e)),
        _ => return Err(HttpError::Transport("no response".into())),
    };
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = response
        .consume()
        .map_err(|()| HttpError::Transport("no response body".into()))?;
    let mut bytes = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| HttpError::Transport("no response body stream".into()))?;
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => {
                    return Err(HttpError::Transport(format!("reading the response: {e:?}")));
                }
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body: bytes,
    })
}

/// Natively there is no `wasi:http` (plugin logic is unit-tested without the network).
#[cfg(not(target_arch = "wasm32"))]
pub fn send(request: &Request) -> Result<Response, HttpError> {
    Url::parse(&request.url)?;
    Err(HttpError::Transport(
        "outgoing HTTP exists only inside the gateway".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let u = Url::parse("https://logs.example.com:8088/services/collector?x=1").unwrap();
        assert_eq!(
            (u.https, u.authority, u.path_and_query, u.host()),
            (
                true,
                "logs.example.com:8088",
                "/services/collector?x=1",
                "logs.example.com"
            )
        );
        let u = Url::parse("http://[::1]:9000").unwrap();
        assert_eq!((u.path_and_query, u.host()), ("/", "::1"));
        assert!(Url::parse("ftp://x/").is_err());
        assert!(Url::parse("http://user:pw@x/").is_err());
        assert!(Url::parse("http:///path").is_err());
    }

    #[test]
    fn errors_show_urls_without_their_secrets() {
        let hook = "https://hooks.slack.com/services/T000/B000/XXXXSECRET";
        assert_eq!(redacted(hook), "https://hooks.slack.com/…");
        assert_eq!(redacted("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
        assert_eq!(redacted("https://user:pw@h/x"), "https://h/…");
        let Err(e) = Url::parse("http://user:SECRET@h/x") else {
            panic!("parsed")
        };
        assert!(!e.to_string().contains("SECRET"), "{e}");
        let failed = delivery(
            Ok(Response {
                status: 403,
                headers: vec![],
                body: vec![],
            }),
            &format!("POST {}", redacted(hook)),
        );
        assert!(!format!("{failed:?}").contains("SECRET"));
    }
}
