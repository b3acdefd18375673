//! The S3-compatible bucket that holds payloads moved out of PostgreSQL. Requests are signed
//! by `rusty-s3` (AWS Signature V4, in the query string) and sent by `ureq`: both synchronous,
//! as everything in this crate runs on threads of its own.
//!
//! Objects are written once and never changed: a key names a session, the first and last
//! entry whose payloads it holds, and a random tail.

use std::time::Duration;

use rusty_s3::{Bucket as S3Bucket, Credentials, S3Action, UrlStyle};

/// Where moved payloads go and how to reach it (`[store.payloads]`).
#[derive(Clone, Debug)]
pub struct BucketSettings {
    /// `https://host:port` (or `http://` on loopback); the bucket is `bucket`.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Put before every key (`sluice/`, say), so one bucket can serve several records.
    pub prefix: String,
    /// Path-style URLs (`host/bucket/key`), as MinIO and most servers besides AWS want.
    pub path_style: bool,
    /// One request's bound.
    pub timeout: Duration,
}

/// Signed URLs live this long: only for the request about to be sent.
const SIGNED_FOR: Duration = Duration::from_secs(300);
/// The largest object read back: a part is far smaller, anything larger is not ours.
const MAX_OBJECT: u64 = 1 << 30;

pub struct Bucket {
    bucket: S3Bucket,
    credentials: Credentials,
    prefix: String,
    agent: ureq::Agent,
    /// As messages name it: endpoint and bucket, never the keys.
    label: String,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

impl BucketSettings {
    /// Whether a bucket can be made of these settings (at start, before anything runs).
    pub fn check(&self) -> Result<(), String> {
        Bucket::new(self).map(drop)
    }
}

impl Bucket {
    pub fn new(settings: &BucketSettings) -> Result<Bucket, String> {
        let endpoint: url::Url = settings
            .endpoint
            .parse()
            .map_err(|e| format!("[store.payloads] endpoint: {e}"))?;
        if endpoint.path() != "/" {
            return Err(
                "[store.payloads] endpoint: give the server only (https://host:port); the bucket is `bucket`"
                    .into(),
            );
        }
        let style = if settings.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = S3Bucket::new(
            endpoint.clone(),
            style,
            settings.bucket.clone(),
            settings.region.clone(),
        )
        .map_err(|e| format!("[store.payloads]: {e}"))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Bucket {
            bucket,
            credentials: Credentials::new(
                settings.access_key_id.clone(),
                settings.secret_access_key.clone(),
            ),
            prefix: settings.prefix.clone(),
            agent,
            label: format!(
                "s3 {}/{}",
                endpoint.as_str().trim_end_matches('/'),
                settings.bucket
            ),
        })
    }

    /// The bucket as messages name it.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A new key for an object holding `session`'s payloads of entries `first..=last`: never
    /// one used before (a random tail), so an object doomed once is never named again.
    pub fn key(&self, session: &str, first: u64, last: u64) -> Result<String, String> {
        let mut tail = [0u8; 6];
        getrandom::fill(&mut tail).map_err(|e| format!("no randomness: {e}"))?;
        Ok(format!(
            "{}sessions/{session}/{first:020}-{last:020}-{}",
            self.prefix,
            hex::encode(tail)
        ))
    }

    pub fn put(&self, key: &str, body: &[u8]) -> Result<(), String> {
        let url = self
            .bucket
            .put_object(Some(&self.credentials), key)
            .sign(SIGNED_FOR);
        let response = self.agent.put(url.as_str()).send(body);
        self.answer("PUT", key, response).map(drop)
    }

    /// The object's bytes, or `None` when the bucket has no such object.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let url = self
            .bucket
            .get_object(Some(&self.credentials), key)
            .sign(SIGNED_FOR);
        let response = self.agent.get(url.as_str()).call();
        let Some(mut response) = self.answer("GET", key, response)? else {
            return Ok(None);
        };
        response
            .body_mut()
            .with_config()
            .limit(MAX_OBJECT)
            .read_to_vec()
            .map(Some)
            .map_err(|e| self.failed("GET", key, &e.to_string()))
    }

    /// Deletes the object; one already gone is not an error.
    pub fn delete(&self, key: &str) -> Result<(), String> {
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), key)
            .sign(SIGNED_FOR);
        let response = self.agent.delete(url.as_str()).call();
        self.answer("DELETE", key, response).map(drop)
    }

    /// Whether the bucket itself is there.
    fn exists(&self) -> Result<bool, String> {
        let url = self
            .bucket
            .head_bucket(Some(&self.credentials))
            .sign(SIGNED_FOR);
        let response = self
            .agent
            .head(url.as_str())
            .call()
            .map_err(|e| self.failed("HEAD", "", &e.to_string()))?;
        match response.status().as_u16() {
            404 => Ok(false),
            _ => self.ok("HEAD", "", response).map(|_| true),
        }
    }

    /// A successful response, `None` for "no such object", or what went wrong.
    fn answer(
        &self,
        method: &str,
        key: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Option<ureq::http::Response<ureq::Body>>, String> {
        let mut response = response.map_err(|e| self.failed(method, key, &e.to_string()))?;
        if response.status() == 404 && method != "PUT" {
            // No such key, unless the bucket itself is missing (a misconfiguration, which
            // must not read as every payload deleted): servers do not all say which, so ask.
            let text = read_error(&mut response);
            if text.contains("NoSuchBucket") || !self.exists()? {
                return Err(self.failed(method, key, "404 (NoSuchBucket)"));
            }
            return Ok(None);
        }
        self.ok(method, key, response).map(Some)
    }

    fn ok(
        &self,
        method: &str,
        key: &str,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> Result<ureq::http::Response<ureq::Body>, String> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // S3 explains itself in a small XML document: its code says enough.
        let text = read_error(&mut response);
        let code = text
            .split_once("<Code>")
            .and_then(|(_, rest)| rest.split_once("</Code>"))
            .map_or(String::new(), |(code, _)| format!(" ({code})"));
        Err(self.failed(method, key, &format!("{status}{code}")))
    }

    fn failed(&self, method: &str, key: &str, why: &str) -> String {
        format!("{}: {method} {key}: {why}", self.label)
    }
}

/// The (small) body of an error response.
fn read_error(response: &mut ureq::http::Response<ureq::Body>) -> String {
    response
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .read_to_string()
        .unwrap_or_default()
}

/// Where a payload's bytes are: its row in PostgreSQL, or a slice of an object in the bucket.
#[derive(Debug)]
pub enum Body {
    Here(Vec<u8>),
    Moved { object: String, at: u64, len: u64 },
}

impl Body {
    /// From a payload row's columns: `body`, `object`, `at`, `len`.
    pub fn from_columns(
        body: Option<Vec<u8>>,
        object: Option<String>,
        at: Option<i64>,
        len: Option<i64>,
    ) -> Option<Body> {
        match (body, object) {
            (Some(body), _) => Some(Body::Here(body)),
            (None, Some(object)) => Some(Body::Moved {
                object,
                at: at.unwrap_or(0).max(0) as u64,
                len: len.unwrap_or(0).max(0) as u64,
            }),
            (None, None) => None,
        }
    }
}

/// The objects read during one read (a page of a replay, a verify): each fetched once, the
/// newest kept up to a bound, since one session's parts interleave with others' in the chain.
pub struct Objects<'a> {
    bucket: Option<&'a Bucket>,
    kept: std::collections::VecDeque<(String, Option<std::sync::Arc<Vec<u8>>>)>,
    kept_bytes: usize,
}

/// How many bytes of objects one read keeps at most.
const KEPT_BYTES: usize = 256 << 20;

impl<'a> Objects<'a> {
    pub fn new(bucket: Option<&'a Bucket>) -> Objects<'a> {
        Objects {
            bucket,
            kept: Default::default(),
            kept_bytes: 0,
        }
    }

    /// The stored payload (nonce and bytes), `Ok(None)` when its object is gone from the
    /// bucket, an error when the bucket cannot be read (or none is configured). A slice that
    /// runs past its object's end reads as what is there: verify then finds it altered.
    pub fn stored(&mut self, body: Body) -> Result<Option<Vec<u8>>, String> {
        let (object, at, len) = match body {
            Body::Here(bytes) => return Ok(Some(bytes)),
            Body::Moved { object, at, len } => (object, at, len),
        };
        let bytes = match self.kept.iter().find(|(key, _)| *key == object) {
            Some((_, bytes)) => bytes.clone(),
            None => {
                let bucket = self.bucket.ok_or_else(|| {
                    format!(
                        "payloads are in the bucket (object {object}), and no bucket is configured: give the configuration with [store.payloads]"
                    )
                })?;
                let bytes = bucket.get(&object)?.map(std::sync::Arc::new);
                self.keep(object, bytes.clone());
                bytes
            }
        };
        Ok(bytes.map(|all| {
            let start = (at as usize).min(all.len());
            let end = start.saturating_add(len as usize).min(all.len());
            all[start..end].to_vec()
        }))
    }

    fn keep(&mut self, key: String, bytes: Option<std::sync::Arc<Vec<u8>>>) {
        self.kept_bytes += bytes.as_ref().map_or(0, |b| b.len());
        self.kept.push_back((key, bytes));
        while self.kept_bytes > KEPT_BYTES && self.kept.len() > 1 {
            if let Some((_, old)) = self.kept.pop_front() {
                self.kept_bytes -= old.map_or(0, |b| b.len());
            }
        }
    }
}
