//! The web console: its page and files (from `sluice-console`), and how a browser signs in.
//!
//! - A browser signs in once, with a token pasted into the page (`POST /console/sign-in`) or
//!   at the OpenID provider (`/console/oidc/...`), and gets a cookie that names a sign-in kept
//!   here: `__Host-` (this origin only), HttpOnly (no script reads it), Secure, SameSite=Strict.
//!   The token stays on the gateway: it never reaches a URL, a log or the browser's storage.
//!   A sign-in ends at sign-out, after `[console] idle_timeout_seconds` without a request,
//!   after `max_age_seconds`, and when its token stops being good (each request checks it).
//! - With the cookie, the browser calls the same `/api/...` as the CLI (roles are checked
//!   there, once). A request that changes something must also carry the sign-in's CSRF token
//!   (`X-Sluice-CSRF`, which only this origin's script can read, from `/console/me`) and come
//!   from this origin (`Origin`, `Sec-Fetch-Site`): a forged cross-site form has neither.
//! - Every console response carries a Content-Security-Policy without inline scripts or
//!   styles, and may not be framed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION, SET_COOKIE};
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use super::Gateway;
use super::routes::{Reply, error, reply};
use crate::auth::oidc::SignInState;
use crate::config::ConsoleSettings;

/// The sign-in cookie. `__Host-`: browsers keep it only if Secure, for this host, path `/`.
pub const COOKIE: &str = "__Host-sluice";
/// The header that carries a sign-in's CSRF token on requests that change something.
pub const CSRF_HEADER: &str = "x-sluice-csrf";
/// No inline script or style, nothing from elsewhere; the player compiles its WebAssembly.
const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
                   img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
/// The largest sign-in request body (a token).
const MAX_SIGN_IN_BODY: usize = 16 << 10;

/// The browsers signed in to this gateway.
pub struct Console {
    signed_in: Mutex<HashMap<String, SignIn>>,
    /// Browsers sent to the OpenID provider, by the `state` they must come back with.
    signing_in: Mutex<HashMap<String, (Instant, SignInState)>>,
    idle: Duration,
    max_age: Duration,
}

struct SignIn {
    token: String,
    csrf: String,
    made: Instant,
    used: Instant,
}

/// Why a browser's request is refused before it reaches a route.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub why: String,
}

impl Refused {
    fn new(status: StatusCode, why: impl Into<String>) -> Refused {
        Refused {
            status,
            why: why.into(),
        }
    }
}

impl Console {
    pub fn new(settings: &ConsoleSettings) -> Console {
        Console {
            signed_in: Mutex::new(HashMap::new()),
            signing_in: Mutex::new(HashMap::new()),
            idle: Duration::from_secs(settings.idle_timeout_seconds),
            max_age: Duration::from_secs(settings.max_age_seconds),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SignIn>> {
        self.signed_in.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `token` for a new sign-in; its cookie value and CSRF token.
    fn sign_in(&self, token: String) -> (String, String) {
        let (id, csrf) = (random_id(), random_id());
        let now = Instant::now();
        let mut all = self.lock();
        // Expired sign-ins go when new ones come, so the map does not grow without bound.
        all.retain(|_, s| !self.expired(s, now));
        all.insert(
            id.clone(),
            SignIn {
                token,
                csrf: csrf.clone(),
                made: now,
                used: now,
            },
        );
        (id, csrf)
    }

    fn expired(&self, s: &SignIn, now: Instant) -> bool {
        now.duration_since(s.used) >= self.idle || now.duration_since(s.made) >= self.max_age
    }

    /// The sign-in `req`'s cookie names: its token and CSRF token. `Ok(None)` without the
    /// cookie; refused when it names no live sign-in, or when a request that changes
    /// something lacks the CSRF token or comes from another site.
    pub fn signed_in<B>(&self, req: &Request<B>) -> Result<Option<(String, String)>, Refused> {
        let Some(id) = cookie(req, COOKIE) else {
            return Ok(None);
        };
        let now = Instant::now();
        let mut all = self.lock();
        let signed = match all.get_mut(&id) {
            Some(s) if !self.expired(s, now) => s,
            found => {
                if found.is_some() {
                    all.remove(&id);
                }
                return Err(Refused::new(
                    StatusCode::UNAUTHORIZED,
                    "the console sign-in ended (signed out or expired): sign in again",
                ));
            }
        };
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            same_origin(req)?;
            let sent = req
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !constant_time_eq(sent.as_bytes(), signed.csrf.as_bytes()) {
                return Err(Refused::new(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token: a request that changes something must come from the console's own page",
                ));
            }
        }
        signed.used = now;
        Ok(Some((signed.token.clone(), signed.csrf.clone())))
    }

    /// Remembers a browser sent to the provider (for `SIGN_IN_TTL`).
    fn await_provider(&self, pending: SignInState) {
        let mut all = self.signing_in.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, (made, _)| made.elapsed() < SIGN_IN_TTL);
        all.insert(pending.state.clone(), (Instant::now(), pending));
    }

    /// The sign-in a browser that came back with `state` started, if it is still open.
    fn returned(&self, state: &str) -> Option<SignInState> {
        let mut all = self.signing_in.lock().unwrap_or_else(|e| e.into_inner());
        all.remove(state)
            .filter(|(made, _)| made.elapsed() < SIGN_IN_TTL)
            .map(|(_, pending)| pending)
    }

    fn sign_out<B>(&self, req: &Request<B>) {
        if let Some(id) = cookie(req, COOKIE) {
            self.lock().remove(&id);
        }
    }
}

impl Gateway {
    /// `/`, and everything under `/console`.
    pub(super) async fn console_route(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        let path = req.uri().path().to_string();
        let reply = match (req.method(), path.as_str()) {
            (&Method::GET, "/") => {
                let mut r = reply(StatusCode::SEE_OTHER, "");
                r.headers_mut()
                    .insert(LOCATION, HeaderValue::from_static("/console/"));
                r
            }
            // Pages without the console's own icon link (the sign-in's return) get it too.
            (&Method::GET, "/favicon.ico") => match sluice_console::asset("favicon.svg") {
                Some(icon) => asset_reply(icon),
                None => error(StatusCode::NOT_FOUND, "no icon"),
            },
            (&Method::POST, "/console/sign-in") => self.console_sign_in(req, peer).await,
            (&Method::POST, "/console/sign-out") => match self.console.signed_in(&req) {
                Ok(_) => {
                    self.console.sign_out(&req);
                    let mut r = reply(StatusCode::OK, json!({"signed_out": true}).to_string());
                    r.headers_mut().insert(
                        SET_COOKIE,
                        HeaderValue::from_static(
                            "__Host-sluice=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
                        ),
                    );
                    r
                }
                Err(refused) => error(refused.status, &refused.why),
            },
            (&Method::GET, "/console/me") => self.console_me(&req).await,
            (&Method::GET, "/console/oidc/start") => self.console_oidc_start(&req).await,
            (&Method::GET, "/console/oidc/callback") => {
                self.console_oidc_callback(&req, peer).await
            }
            (&Method::GET, _) => match path.strip_prefix("/console/assets/") {
                Some(file) => match sluice_console::asset(file) {
                    Some(asset) => asset_reply(asset),
                    None => error(StatusCode::NOT_FOUND, &format!("no console file {file}")),
                },
                // Every other console path is a view of the one page.
                None => asset_reply(sluice_console::page()),
            },
            (method, _) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("no route {method} {path}"),
            ),
        };
        secured(reply)
    }

    /// A token pasted into the page: checked, then kept here behind a fresh cookie.
    async fn console_sign_in(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        if let Err(refused) = same_origin(&req) {
            return error(refused.status, &refused.why);
        }
        if req.headers().get(ORIGIN_HEADER).is_none() {
            return error(
                StatusCode::FORBIDDEN,
                "sign-in comes from the console's page (no Origin header)",
            );
        }
        let body = match http_body_util::Limited::new(req.into_body(), MAX_SIGN_IN_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("sign-in body: {e}")),
        };
        let token = match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) => v["token"].as_str().unwrap_or("").trim().to_string(),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "sign-in body: expected {\"token\": \"...\"}",
                );
            }
        };
        if token.is_empty() {
            return error(StatusCode::BAD_REQUEST, "paste a token to sign in");
        }
        let identity = match self.auth.authenticate(&token).await {
            Ok(identity) => identity,
            Err(why) => {
                tracing::warn!(%peer, %why, "console sign-in refused");
                return error(StatusCode::UNAUTHORIZED, &why);
            }
        };
        tracing::info!(%peer, subject = %identity.subject, "console sign-in");
        self.signed_in_reply(token, &identity)
    }

    /// A new sign-in for `token` (already checked to be `identity`'s): the cookie, and what
    /// the page needs.
    pub(super) fn signed_in_reply(
        &self,
        token: String,
        identity: &sluice_core::frame::Identity,
    ) -> Reply {
        let (id, csrf) = self.console.sign_in(token);
        let mut r = reply(
            StatusCode::OK,
            json!({"subject": identity.subject, "name": identity.name, "csrf": csrf}).to_string(),
        );
        let cookie = format!("{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict");
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(SET_COOKIE, value);
        }
        r
    }

    /// Sends the browser to the provider: the code flow with PKCE, the gateway as the
    /// client, back to `https://HOST/console/oidc/callback`. The `state` is also kept in a
    /// short-lived cookie (SameSite=Lax, so it comes back with the provider's redirect): a
    /// callback another browser started is refused.
    async fn console_oidc_start(&self, req: &Request<Incoming>) -> Reply {
        let Some(oidc) = self.auth.oidc() else {
            return error(StatusCode::NOT_FOUND, "this gateway has no [oidc] provider");
        };
        let redirect = callback_url(req);
        match oidc.console_sign_in(&redirect).await {
            Ok((url, pending)) => {
                let cookie = format!(
                    "{STATE_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
                    pending.state,
                    SIGN_IN_TTL.as_secs()
                );
                self.console.await_provider(pending);
                let mut r = reply(StatusCode::SEE_OTHER, "");
                for (name, value) in [(LOCATION, url), (SET_COOKIE, cookie)] {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        r.headers_mut().append(name, value);
                    }
                }
                r
            }
            Err(why) => page(StatusCode::BAD_GATEWAY, &format!("Sign-in failed: {why}")),
        }
    }

    /// The provider sent the browser back: the code is traded for an ID token (checked, its
    /// nonce too), which is kept here behind a fresh sign-in cookie.
    async fn console_oidc_callback(&self, req: &Request<Incoming>, peer: SocketAddr) -> Reply {
        let Some(oidc) = self.auth.oidc() else {
            return error(StatusCode::NOT_FOUND, "this gateway has no [oidc] provider");
        };
        let query = super::routes::query_of(req);
        if let Some(refused) = query.get("error") {
            let why = query.get("error_description").unwrap_or(refused);
            return page(
                StatusCode::UNAUTHORIZED,
                &format!("The provider refused the sign-in: {why}"),
            );
        }
        let (Some(code), Some(state)) = (query.get("code"), query.get("state")) else {
            return page(StatusCode::BAD_REQUEST, "The provider sent no code back.");
        };
        if cookie(req, STATE_COOKIE).as_deref() != Some(state.as_str()) {
            tracing::warn!(%peer, "console sign-in refused: the state does not match this browser's");
            return page(
                StatusCode::FORBIDDEN,
                "This sign-in was not started by this browser (or it took too long): start again.",
            );
        }
        let Some(pending) = self.console.returned(state) else {
            return page(
                StatusCode::FORBIDDEN,
                "This sign-in expired or was used already: start again.",
            );
        };
        let token = match oidc.console_finish(&callback_url(req), code, pending).await {
            Ok(token) => token,
            Err(why) => {
                tracing::warn!(%peer, %why, "console sign-in refused");
                return page(StatusCode::UNAUTHORIZED, &format!("Sign-in failed: {why}"));
            }
        };
        let identity = match self.auth.authenticate(&token).await {
            Ok(identity) => identity,
            Err(why) => {
                tracing::warn!(%peer, %why, "console sign-in refused");
                return page(StatusCode::UNAUTHORIZED, &format!("Sign-in failed: {why}"));
            }
        };
        tracing::info!(%peer, subject = %identity.subject, "console sign-in (OpenID provider)");
        let mut r = self.signed_in_reply(token, &identity);
        // The sign-in cookie is SameSite=Strict: a browser arriving from the provider's
        // site would not send it yet, so the page moves on by itself, from this origin.
        *r.body_mut() = http_body_util::Full::new(hyper::body::Bytes::from(format!(
            "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url=/console/sessions\">\
             <title>Sluice</title><p>Signed in as {}. <a href=\"/console/sessions\">Continue</a></p>",
            escape(identity.name.as_deref().unwrap_or(&identity.subject))
        )))
        .boxed();
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r.headers_mut().append(
            SET_COOKIE,
            HeaderValue::from_static(
                "__Host-sluice-oidc=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
            ),
        );
        r
    }

    /// Who the browser is signed in as, and its CSRF token; 401 when it is not.
    async fn console_me(&self, req: &Request<Incoming>) -> Reply {
        let token = match self.console.signed_in(req) {
            Ok(Some((token, csrf))) => (token, csrf),
            // Not an error: the page asks to know whether to show the sign-in.
            Ok(None) => return reply(StatusCode::OK, json!({"signed_in": false}).to_string()),
            Err(refused) => return error(refused.status, &refused.why),
        };
        let oidc = self.auth.oidc().is_some();
        match self.auth.authenticate(&token.0).await {
            Ok(identity) => reply(
                StatusCode::OK,
                json!({"signed_in": true, "subject": identity.subject, "name": identity.name, "groups": identity.groups, "csrf": token.1, "oidc": oidc})
                    .to_string(),
            ),
            Err(why) => error(StatusCode::UNAUTHORIZED, &why),
        }
    }
}

const ORIGIN_HEADER: &str = "origin";
/// The cookie that ties a provider's callback to the browser that started the sign-in.
const STATE_COOKIE: &str = "__Host-sluice-oidc";
/// How long a browser may take at the provider.
const SIGN_IN_TTL: Duration = Duration::from_secs(600);

/// Where the provider sends the browser back: this origin, as the browser named it.
fn callback_url<B>(req: &Request<B>) -> String {
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("https://{host}/console/oidc/callback")
}

/// A short page of text (a sign-in that failed), with a way back.
fn page(status: StatusCode, text: &str) -> Reply {
    let mut r = reply(
        status,
        format!(
            "<!doctype html><meta charset=\"utf-8\"><title>Sluice</title><p>{}</p><p><a href=\"/console/\">Back to the console</a></p>",
            escape(text)
        ),
    );
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Refuses a request another site made: a browser says where a request comes from in
/// `Sec-Fetch-Site` and `Origin`; either, when present, must be this origin.
fn same_origin<B>(req: &Request<B>) -> Result<(), Refused> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let cross = |from: &str| {
        Refused::new(
            StatusCode::FORBIDDEN,
            format!("cross-site request refused (from {from})"),
        )
    };
    if let Some(site) = header("sec-fetch-site")
        && site != "same-origin"
    {
        return Err(cross(site));
    }
    if let Some(origin) = header(ORIGIN_HEADER) {
        let host = header("host").unwrap_or("");
        if origin != format!("https://{host}") {
            return Err(cross(origin));
        }
    }
    Ok(())
}

/// A console file, with the headers every console response carries.
fn asset_reply(asset: sluice_console::Asset) -> Reply {
    let mut r = reply(StatusCode::OK, asset.bytes);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    r
}

/// The headers every console response carries: its policy, and no caching of what may be
/// private.
fn secured(mut r: Reply) -> Reply {
    let headers = r.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    r
}

/// The value of cookie `name` in `req`'s `Cookie` headers.
fn cookie<B>(req: &Request<B>, name: &str) -> Option<String> {
    req.headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn random_id() -> String {
    let mut bytes = [0u8; 32];
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder().method(method).uri("/api/x");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap()
    }

    fn console(idle: u64) -> Console {
        Console::new(&ConsoleSettings {
            idle_timeout_seconds: idle,
            max_age_seconds: 3600,
            ..ConsoleSettings::default()
        })
    }

    #[test]
    fn a_change_needs_the_csrf_token_and_this_origin() {
        let console = console(60);
        let (id, csrf) = console.sign_in("t".into());
        let cookie = format!("other=1; {COOKIE}={id}");
        let host = ("host", "gw.test:7443");
        let get = request(Method::GET, &[("cookie", &cookie)]);
        assert_eq!(console.signed_in(&get).unwrap().unwrap().0, "t");
        let forged = request(Method::POST, &[("cookie", &cookie), host]);
        assert_eq!(
            console.signed_in(&forged).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        for from_elsewhere in [
            ("origin", "https://evil.test"),
            ("sec-fetch-site", "cross-site"),
        ] {
            let headers = [
                ("cookie", cookie.as_str()),
                host,
                (CSRF_HEADER, &csrf),
                from_elsewhere,
            ];
            let refused = console
                .signed_in(&request(Method::POST, &headers))
                .unwrap_err();
            assert!(refused.why.contains("cross-site"), "{}", refused.why);
        }
        let own = request(
            Method::POST,
            &[
                ("cookie", &cookie),
                host,
                (CSRF_HEADER, &csrf),
                ("origin", "https://gw.test:7443"),
                ("sec-fetch-site", "same-origin"),
            ],
        );
        assert!(console.signed_in(&own).unwrap().is_some());
        console.sign_out(&own);
        assert_eq!(
            console.signed_in(&get).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert!(
            console
                .signed_in(&request(Method::GET, &[]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn an_idle_sign_in_ends() {
        let console = console(0);
        let (id, _) = console.sign_in("t".into());
        let get = request(Method::GET, &[("cookie", &format!("{COOKIE}={id}"))]);
        assert!(console.signed_in(&get).is_err());
        assert!(console.lock().is_empty(), "an ended sign-in is forgotten");
    }
}
