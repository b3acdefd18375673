//! Tokens from an OpenID provider: ID tokens from `sluice login` (audience: the CLI's client
//! id) and JWT access tokens (RFC 9068; audience: the gateway) from machines.
//!
//! The provider is discovered from its issuer URL on first use; its signing keys (JWKS) are
//! cached, and fetched again when a token names a key id the cache does not hold (the
//! provider rotated its keys), at most once per `jwks_refresh_seconds`, and when they are
//! older than `jwks_max_age_seconds` (a key the provider withdrew stops being trusted; if the
//! provider cannot be reached then, the keys it last published stay). Checked: signature,
//! algorithm (an allow-list of asymmetric ones: never `none`, never HMAC, whose key would be
//! the public one), `iss`, `aud`, `exp`, `nbf` and `iat` with a small clock skew.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use openidconnect::core::{
    CoreClient, CoreIdToken, CoreJsonWebKeySet, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreResponseType,
};
use openidconnect::{
    AuthenticationFlow, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, IdTokenVerifier, IssuerUrl, JsonWebKey, JsonWebTokenType, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, SignatureVerificationError, TokenResponse,
};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::OidcConfig;
use sluice_core::frame::Identity;

/// Why a token was refused, as the client is told.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error("the token's algorithm `{0}` is not accepted (accepted: {1})")]
    Algorithm(String, String),
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another audience ({0})")]
    Audience(String),
    #[error("the token comes from an issuer this gateway does not trust ({0})")]
    Issuer(String),
    #[error("the token is signed with a key the provider does not publish (kid {0})")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token was refused: {0}")]
    Other(String),
    #[error("the identity provider cannot be reached: {0}")]
    Provider(String),
}

/// The asymmetric signature algorithms a provider's tokens may use (all, unless the config
/// names fewer).
pub const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
];

pub struct Oidc {
    config: OidcConfig,
    issuer: IssuerUrl,
    algorithms: Vec<CoreJwsSigningAlgorithm>,
    http: openidconnect::reqwest::Client,
    /// The provider's keys, and when they were last fetched; empty until first use.
    keys: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    jwks_url: Option<openidconnect::JsonWebKeySetUrl>,
    set: Option<CoreJsonWebKeySet>,
    /// The last attempt to fetch them, failed or not: attempts are rate-limited too, so a
    /// provider that is down is not asked again by every request.
    attempted: Option<Instant>,
    /// Why the last attempt failed.
    failure: Option<String>,
    /// The last fetch that succeeded: keys older than `jwks_max_age_seconds` are fetched
    /// again, so a key the provider withdrew stops being trusted.
    fetched: Option<Instant>,
}

impl Oidc {
    pub fn new(config: OidcConfig) -> anyhow::Result<Oidc> {
        let issuer = IssuerUrl::new(config.issuer.clone())?;
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| serde_plain::from_str::<CoreJwsSigningAlgorithm>(a))
            .collect::<Result<_, _>>()?;
        // No redirects: a provider that redirects its discovery or keys is not followed.
        let http = openidconnect::reqwest::ClientBuilder::new()
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Oidc {
            config,
            issuer,
            algorithms,
            http,
            keys: Mutex::new(Keys::default()),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// The identity `token` stands for, once every check passed.
    pub async fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let (header, payload) = unverified_parts(token)?;
        let alg = header["alg"].as_str().unwrap_or("none").to_string();
        if !self.config.algorithms.contains(&alg) {
            return Err(TokenError::Algorithm(
                alg,
                self.config.algorithms.join(", "),
            ));
        }
        let kid = header["kid"].as_str().map(str::to_string);
        let keys = self.keys_for(kid.as_deref()).await?;
        // An access token names the gateway as its audience; anything else must be an ID
        // token for the CLI's client.
        let access = self
            .config
            .audience
            .as_ref()
            .filter(|aud| audiences(&payload).contains(aud));
        // The console's own client (when it has one) signs browsers in with its ID tokens.
        let console = self
            .config
            .console_client_id
            .as_ref()
            .filter(|id| audiences(&payload).contains(id));
        let client = access.or(console).unwrap_or(&self.config.client_id);
        let skew = TimeDelta::seconds(self.config.clock_skew_seconds as i64);
        let verifier = IdTokenVerifier::new_public_client(
            ClientId::new(client.clone()),
            self.issuer.clone(),
            keys,
        )
        .set_allowed_algs(self.algorithms.clone())
        .set_allowed_jose_types(
            ["JWT", "at+jwt"]
                .iter()
                .filter_map(|t| JsonWebTokenType::new(t.to_string()).normalize().ok()),
        )
        .set_time_fn(move || Utc::now() - skew)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > Utc::now() + skew {
                Err("issued in the future".into())
            } else {
                Ok(())
            }
        });
        let parsed: CoreIdToken = token
            .parse()
            .map_err(|e: serde_json::Error| TokenError::Malformed(e.to_string()))?;
        // The gateway did not start the sign-in, so there is no nonce of its own to compare.
        let any_nonce = |_: Option<&Nonce>| Ok(());
        parsed
            .claims(&verifier, any_nonce)
            .map_err(|e| refusal(e, kid.as_deref()))?;
        if let Some(nbf) = payload["nbf"].as_i64()
            && nbf > (Utc::now() + skew).timestamp()
        {
            return Err(TokenError::NotYetValid);
        }
        Ok(self.identity(&payload))
    }

    /// Subject, a display name (email, name or preferred username) and the groups claim.
    fn identity(&self, claims: &Value) -> Identity {
        let text = |key: &str| claims[key].as_str().map(str::to_string);
        let groups = match &claims[self.config.groups_claim.as_str()] {
            Value::Array(items) => items
                .iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect(),
            Value::String(one) => one.split_whitespace().map(str::to_string).collect(),
            _ => vec![],
        };
        Identity {
            subject: text("sub").unwrap_or_default(),
            name: text("email")
                .or_else(|| text("name"))
                .or_else(|| text("preferred_username")),
            groups,
        }
    }

    /// The provider's keys, fetched (again) when `kid` is not among them and the last fetch
    /// is old enough.
    async fn keys_for(&self, kid: Option<&str>) -> Result<CoreJsonWebKeySet, TokenError> {
        let mut keys = self.keys.lock().await;
        let known = |keys: &Keys| {
            keys.set.as_ref().is_some_and(|set| match kid {
                Some(kid) => set
                    .keys()
                    .iter()
                    .any(|k| k.key_id().is_some_and(|id| **id == kid)),
                None => true,
            })
        };
        let min_interval = Duration::from_secs(self.config.jwks_refresh_seconds);
        let may_fetch = keys.attempted.is_none_or(|at| at.elapsed() >= min_interval);
        let max_age = Duration::from_secs(self.config.jwks_max_age_seconds);
        let stale = keys.fetched.is_none_or(|at| at.elapsed() >= max_age);
        if (!known(&keys) || stale) && may_fetch {
            keys.attempted = Some(Instant::now());
            match self.fetch_keys(keys.jwks_url.clone()).await {
                Ok((url, set)) => {
                    tracing::info!(
                        keys = set.keys().len(),
                        "fetched the identity provider's keys"
                    );
                    keys.jwks_url = Some(url);
                    keys.set = Some(set);
                    keys.failure = None;
                    keys.fetched = Some(Instant::now());
                }
                Err(why) => {
                    tracing::warn!(error = %why, "cannot fetch the identity provider's keys");
                    keys.failure = Some(why);
                }
            }
        }
        if !known(&keys) {
            return Err(match (&keys.set, &keys.failure) {
                (None, Some(why)) => TokenError::Provider(why.clone()),
                _ => TokenError::UnknownKey(kid.unwrap_or("none").into()),
            });
        }
        Ok(keys.set.clone().unwrap_or_default())
    }

    /// The client the console signs browsers in as: `console_client_id` (with its secret,
    /// a confidential web client), else the CLI's public one; PKCE either way.
    async fn console_client(&self, redirect: &str) -> Result<ConsoleClient, String> {
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| format!("cannot discover the identity provider: {}", error_chain(&e)))?;
        let id = self
            .config
            .console_client_id
            .clone()
            .unwrap_or_else(|| self.config.client_id.clone());
        let secret = self
            .config
            .console_client_secret
            .as_deref()
            .map(|s| ClientSecret::new(crate::config::resolve(s)));
        let redirect = RedirectUrl::new(redirect.to_string()).map_err(|e| e.to_string())?;
        Ok(
            CoreClient::from_provider_metadata(metadata, ClientId::new(id), secret)
                .set_redirect_uri(redirect),
        )
    }

    /// Where to send a browser to sign in (the code flow with PKCE, back to `redirect`), and
    /// what the callback needs to finish it.
    pub async fn console_sign_in(&self, redirect: &str) -> Result<(String, SignInState), String> {
        let client = self.console_client(redirect).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        // A browser's sign-in lasts as long as its ID token: no refresh token is asked for.
        for scope in self
            .config
            .scopes
            .iter()
            .filter(|s| *s != "openid" && *s != "offline_access")
        {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();
        let pending = SignInState {
            state: state.secret().clone(),
            verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
        };
        Ok((url.to_string(), pending))
    }

    /// Trades the code the provider sent back for an ID token, checked (nonce included).
    pub async fn console_finish(
        &self,
        redirect: &str,
        code: &str,
        pending: SignInState,
    ) -> Result<String, String> {
        let client = self.console_client(redirect).await?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| e.to_string())?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| format!("the provider refused the code: {}", error_chain(&e)))?;
        let id_token = tokens.id_token().ok_or("the provider sent no ID token")?;
        id_token
            .claims(&client.id_token_verifier(), &Nonce::new(pending.nonce))
            .map_err(|e| format!("the provider's ID token does not verify: {e}"))?;
        Ok(id_token.to_string())
    }

    /// The provider's key set (discovering where it is, the first time).
    async fn fetch_keys(
        &self,
        known_url: Option<openidconnect::JsonWebKeySetUrl>,
    ) -> Result<(openidconnect::JsonWebKeySetUrl, CoreJsonWebKeySet), String> {
        let url = match known_url {
            Some(url) => url,
            None => CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
                .await
                .map_err(|e| error_chain(&e))?
                .jwks_uri()
                .clone(),
        };
        let set = CoreJsonWebKeySet::fetch_async(&url, &self.http)
            .await
            .map_err(|e| error_chain(&e))?;
        Ok((url, set))
    }
}

/// A browser's sign-in between the redirect to the provider and its return.
#[derive(Debug)]
pub struct SignInState {
    /// The `state` sent, which must come back.
    pub state: String,
    verifier: String,
    nonce: String,
}

type ConsoleClient = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// The header and payload of a JWT, decoded but not verified.
fn unverified_parts(token: &str) -> Result<(Value, Value), TokenError> {
    use base64::Engine as _;
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(TokenError::Malformed(format!(
            "{} parts, not 3",
            parts.len()
        )));
    }
    let decode = |part: &str, what: &str| -> Result<Value, TokenError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|e| TokenError::Malformed(format!("its {what}: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| TokenError::Malformed(format!("its {what}: {e}")))
    };
    Ok((decode(parts[0], "header")?, decode(parts[1], "payload")?))
}

fn audiences(payload: &Value) -> Vec<String> {
    match &payload["aud"] {
        Value::String(one) => vec![one.clone()],
        Value::Array(many) => many
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    }
}

fn refusal(error: ClaimsVerificationError, kid: Option<&str>) -> TokenError {
    match error {
        ClaimsVerificationError::Expired(_) => TokenError::Expired,
        ClaimsVerificationError::InvalidAudience(why) => TokenError::Audience(why),
        ClaimsVerificationError::InvalidIssuer(why) => TokenError::Issuer(why),
        ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey,
        ) => TokenError::UnknownKey(kid.unwrap_or("none").into()),
        ClaimsVerificationError::SignatureVerification(_) => TokenError::Signature,
        other => TokenError::Other(other.to_string()),
    }
}

/// An error with its sources, as one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
