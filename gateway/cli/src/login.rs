//! `sluice login` and `sluice logout`: the CLI signs in at the gateway's OpenID provider and
//! keeps the tokens for every other command.
//!
//! The authorization code flow with PKCE through a loopback redirect (RFC 8252): the CLI
//! listens on 127.0.0.1, prints the provider's sign-in page (and opens it in a browser when
//! it can), receives the code, exchanges it with its PKCE verifier and checks the ID token
//! (signature, issuer, audience, nonce). The ID token is what the CLI presents to the gateway;
//! the refresh token renews it. Both are kept per gateway in one file of mode 0600
//! (`$SLUICE_CREDENTIALS`, else `$XDG_CONFIG_HOME/sluice/credentials.json`, else
//! `~/.config/sluice/credentials.json`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use openidconnect::core::{CoreClient, CoreProviderMetadata, CoreResponseType};
use openidconnect::{
    AuthenticationFlow, AuthorizationCode, ClientId, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, RefreshToken, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use sluice_engine::auth::oidc::error_chain;

/// What `GET /api/auth` says about signing in.
#[derive(Clone, Debug, Deserialize)]
pub struct Provider {
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
}

/// The tokens kept for one gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Saved {
    issuer: String,
    client_id: String,
    id_token: String,
    refresh_token: Option<String>,
    /// When the ID token expires (unix seconds).
    expires_at: i64,
}

/// How long a sign-in page may take.
const SIGN_IN: Duration = Duration::from_secs(300);
/// A token this close to its expiry is renewed before use.
const RENEW_BEFORE: i64 = 60;

fn http() -> anyhow::Result<openidconnect::reqwest::Client> {
    Ok(openidconnect::reqwest::ClientBuilder::new()
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()?)
}

/// How `sluice login` signs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// The code flow with PKCE: a browser comes back to a loopback port of this machine.
    Browser,
    /// The device authorization flow (RFC 8628), for machines without a browser: a code to
    /// enter on any other device.
    Device,
}

type Tokens = openidconnect::core::CoreTokenResponse;

/// Signs in at `provider` for `gateway`; `announce` gets what to tell the person (the page
/// to open and, in the device flow, the code to enter) and the page's address. Returns who
/// signed in.
pub async fn login(
    gateway: &str,
    provider: &Provider,
    flow: Flow,
    announce: impl FnOnce(&str, &str),
) -> anyhow::Result<String> {
    let http = http()?;
    let issuer = IssuerUrl::new(provider.issuer.clone())?;
    let metadata = CoreProviderMetadata::discover_async(issuer, &http)
        .await
        .with_context(|| {
            format!(
                "cannot discover the identity provider at {}",
                provider.issuer
            )
        })?;
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(provider.client_id.clone()),
        None,
    );
    let (tokens, nonce) = match flow {
        Flow::Browser => browser(&http, client.clone(), provider, announce).await?,
        Flow::Device => (device(&http, &client, provider, announce).await?, None),
    };
    let id_token = tokens
        .id_token()
        .ok_or_else(|| anyhow!("the provider sent no ID token"))?;
    let verifier = client.id_token_verifier();
    let claims = match &nonce {
        Some(nonce) => id_token.claims(&verifier, nonce),
        // The device flow has no nonce; everything else is checked.
        None => id_token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
    }
    .context("the provider's ID token does not verify")?;
    let saved = Saved {
        issuer: provider.issuer.clone(),
        client_id: provider.client_id.clone(),
        id_token: id_token.to_string(),
        refresh_token: tokens.refresh_token().map(|t| t.secret().clone()),
        expires_at: claims.expiration().timestamp(),
    };
    let who = claims
        .email()
        .map(|e| e.to_string())
        .unwrap_or_else(|| claims.subject().to_string());
    save(gateway, Some(saved))?;
    Ok(who)
}

/// A client made from the provider's discovery document.
type Client = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// The code flow with PKCE through a loopback redirect: the tokens, and the nonce sent.
async fn browser(
    http: &openidconnect::reqwest::Client,
    client: Client,
    provider: &Provider,
    announce: impl FnOnce(&str, &str),
) -> anyhow::Result<(Tokens, Option<Nonce>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let redirect = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    let client = client.set_redirect_uri(RedirectUrl::new(redirect)?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge);
    for scope in provider.scopes.iter().filter(|s| *s != "openid") {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    if provider.scopes.iter().any(|s| s == "offline_access") {
        // OpenID Connect gives a refresh token for offline_access only after consent.
        request = request.add_prompt(openidconnect::core::CoreAuthPrompt::Consent);
    }
    let (url, state, nonce) = request.url();
    announce(&format!("Sign in at: {url}"), url.as_str());
    let code = tokio::time::timeout(SIGN_IN, callback(&listener, state.secret()))
        .await
        .map_err(|_| anyhow!("no sign-in within {} s", SIGN_IN.as_secs()))??;
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))?
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
        .map_err(|e| anyhow!("the provider refused the code: {}", error_chain(&e)))?;
    Ok((tokens, Some(nonce)))
}

/// The device authorization flow: a code the person enters on another device, while this
/// polls the provider until they did (or the code expires).
async fn device(
    http: &openidconnect::reqwest::Client,
    client: &Client,
    provider: &Provider,
    announce: impl FnOnce(&str, &str),
) -> anyhow::Result<Tokens> {
    // The device endpoint is not a field of the core discovery document type: read it.
    let discovery = format!(
        "{}/.well-known/openid-configuration",
        provider.issuer.trim_end_matches('/')
    );
    let document: serde_json::Value =
        serde_json::from_slice(&http.get(&discovery).send().await?.bytes().await?)?;
    let Some(endpoint) = document["device_authorization_endpoint"].as_str() else {
        bail!(
            "the identity provider offers no device flow: sign in with a browser (`sluice login --no-browser` prints the page, to open anywhere)"
        );
    };
    let client = client
        .clone()
        .set_device_authorization_url(openidconnect::DeviceAuthorizationUrl::new(endpoint.into())?);
    let mut request = client.exchange_device_code();
    for scope in provider.scopes.iter().filter(|s| *s != "openid") {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let details: openidconnect::core::CoreDeviceAuthorizationResponse = request
        .request_async(http)
        .await
        .map_err(|e| anyhow!("the provider refused the device flow: {}", error_chain(&e)))?;
    let page = details
        .verification_uri_complete()
        .map(|u| u.secret().to_string())
        .unwrap_or_else(|| details.verification_uri().to_string());
    announce(
        &format!("Sign in at: {page}\nCode: {}", details.user_code().secret()),
        &page,
    );
    client
        .exchange_device_access_token(&details)?
        .request_async(http, tokio::time::sleep, Some(SIGN_IN))
        .await
        .map_err(|e| anyhow!("the device sign-in did not complete: {}", error_chain(&e)))
}

/// Waits for the provider to send the browser back with a code for `state`.
async fn callback(listener: &tokio::net::TcpListener, state: &str) -> anyhow::Result<String> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        let mut line = String::new();
        BufReader::new(&mut stream).read_line(&mut line).await?;
        let target = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let Some(query) = target.strip_prefix("/callback?") else {
            let _ = respond(&mut stream, "404 Not Found", "Not here.").await;
            continue;
        };
        let url = openidconnect::url::Url::parse(&format!("http://x/?{query}"))?;
        let params: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
        if let Some(error) = params.get("error") {
            let why = params.get("error_description").unwrap_or(error);
            let _ = respond(
                &mut stream,
                "400 Bad Request",
                &format!("Sign-in failed: {why}"),
            )
            .await;
            bail!("the provider refused the sign-in: {why}");
        }
        if params.get("state").map(String::as_str) != Some(state) {
            // Not the answer to this sign-in (a stale tab, or someone else's link).
            let _ = respond(
                &mut stream,
                "400 Bad Request",
                "This is not the sign-in Sluice is waiting for.",
            )
            .await;
            continue;
        }
        let Some(code) = params.get("code") else {
            let _ = respond(&mut stream, "400 Bad Request", "No code.").await;
            continue;
        };
        let _ = respond(
            &mut stream,
            "200 OK",
            "Signed in to Sluice. You can close this page.",
        )
        .await;
        return Ok(code.clone());
    }
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    text: &str,
) -> std::io::Result<()> {
    let body = format!("<!doctype html><title>Sluice</title><p>{text}</p>\n");
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The token to present to `gateway`: the saved ID token, renewed with the refresh token
/// when it expires within a minute. `None` when nobody signed in for it.
pub async fn token(gateway: &str) -> anyhow::Result<Option<String>> {
    let Some(saved) = load()?.remove(gateway) else {
        return Ok(None);
    };
    let now = chrono::Utc::now().timestamp();
    if saved.expires_at - RENEW_BEFORE > now {
        return Ok(Some(saved.id_token));
    }
    let Some(refresh) = saved.refresh_token.clone() else {
        bail!("your sign-in to {gateway} expired: run `sluice login` again");
    };
    let renewed = renew(&saved, refresh).await.with_context(|| {
        format!(
            "your sign-in to {gateway} expired and could not be renewed: run `sluice login` again"
        )
    })?;
    let token = renewed.id_token.clone();
    save(gateway, Some(renewed))?;
    Ok(Some(token))
}

async fn renew(saved: &Saved, refresh: String) -> anyhow::Result<Saved> {
    let http = http()?;
    let metadata =
        CoreProviderMetadata::discover_async(IssuerUrl::new(saved.issuer.clone())?, &http).await?;
    let client =
        CoreClient::from_provider_metadata(metadata, ClientId::new(saved.client_id.clone()), None);
    let tokens = client
        .exchange_refresh_token(&RefreshToken::new(refresh.clone()))?
        .request_async(&http)
        .await
        .map_err(|e| anyhow!("{}", error_chain(&e)))?;
    let id_token = tokens
        .id_token()
        .ok_or_else(|| anyhow!("the provider renewed no ID token"))?;
    // A renewed ID token carries no nonce; the rest is checked as at sign-in.
    let claims = id_token.claims(&client.id_token_verifier(), |_: Option<&Nonce>| Ok(()))?;
    Ok(Saved {
        id_token: id_token.to_string(),
        refresh_token: Some(
            tokens
                .refresh_token()
                .map_or(refresh, |t| t.secret().clone()),
        ),
        expires_at: claims.expiration().timestamp(),
        ..saved.clone()
    })
}

/// Forgets the tokens for `gateway`; false when there were none.
pub fn logout(gateway: &str) -> anyhow::Result<bool> {
    let had = load()?.contains_key(gateway);
    save(gateway, None)?;
    Ok(had)
}

fn path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_CREDENTIALS") {
        return Ok(PathBuf::from(path));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| anyhow!("no HOME: set SLUICE_CREDENTIALS to a file for the tokens"))?;
    Ok(config.join("sluice").join("credentials.json"))
}

fn load() -> anyhow::Result<BTreeMap<String, Saved>> {
    let path = path()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is damaged: remove it and sign in again", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Sets (or, with `None`, removes) the tokens for `gateway`; the file stays mode 0600 and
/// goes away when it holds none.
fn save(gateway: &str, saved: Option<Saved>) -> anyhow::Result<()> {
    let path = path()?;
    let mut all = load()?;
    match saved {
        Some(saved) => all.insert(gateway.to_string(), saved),
        None => all.remove(gateway),
    };
    if all.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        };
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    sluice_core::files::write_private(&path, &serde_json::to_vec_pretty(&all)?)
}
