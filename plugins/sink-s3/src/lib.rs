//! `builtin:sink-s3`: recorded events as NDJSON objects in an S3-compatible store, one object
//! per batch (or per session within a batch), with path-style requests signed with AWS
//! Signature Version 4.
//!
//! ```toml
//! [plugins.archive]
//! source = "builtin:sink-s3"
//! world = "sink"
//! allow_hosts = ["s3.eu-west-1.amazonaws.com"]
//! [plugins.archive.config]
//! endpoint = "https://s3.eu-west-1.amazonaws.com"
//! bucket = "recordings"
//! region = "eu-west-1"
//! access_key_id = "AKIA…"
//! secret_access_key = "env:SLUICE_S3_SECRET"   # read from the gateway's environment
//! prefix = "sluice/"
//! layout = "session"                           # or "batch" (the default)
//! ```
//!
//! Objects are named by the entries they hold (`{prefix}{first}-{last}.ndjson`, 20-digit
//! indices, or `{prefix}{session}/{first}-{last}.ndjson`), so a batch retried after a failure
//! overwrites its own object. Delivery is at least once: after a restart an object may
//! repeat entries of an earlier one; each line carries its `index`.

mod sigv4;

use serde::Deserialize;
use sluice_plugin_sdk::http::{self, Request};
use sluice_plugin_sdk::{Config, Event, HEAD_KIND, Sink, SinkError, json_lines};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    endpoint: String,
    bucket: String,
    #[serde(default = "default_region")]
    region: String,
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    layout: Layout,
    #[serde(default = "default_timeout")]
    timeout_seconds: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_timeout() -> u64 {
    30
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Layout {
    #[default]
    Batch,
    Session,
}

pub struct S3Sink {
    settings: Settings,
}

impl Sink for S3Sink {
    fn init(config: &Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let url = http::Url::parse(&settings.endpoint).map_err(|e| format!("endpoint: {e}"))?;
        if url.path_and_query != "/" {
            return Err(
                "endpoint: give the server only (https://host:port); the bucket is `bucket`".into(),
            );
        }
        if settings.bucket.is_empty() || settings.bucket.contains('/') {
            return Err("bucket: a bucket name, without slashes".into());
        }
        if settings.access_key_id.is_empty() || settings.secret_access_key.is_empty() {
            return Err("access_key_id and secret_access_key are required".into());
        }
        Ok(S3Sink { settings })
    }

    fn deliver(&mut self, batch: Vec<Event>) -> Result<(), SinkError> {
        for (key, events) in self.objects(&batch) {
            self.put(&key, json_lines(events.iter().map(|e| e.to_json())))?;
        }
        Ok(())
    }
}

impl S3Sink {
    /// The objects a batch becomes: their keys and their events, in order. The batch's
    /// signed head (an event of kind `head`, last) goes into every object, so each object
    /// carries its own witness of the chain; objects are named by the entries they hold.
    fn objects<'a>(&self, batch: &'a [Event]) -> Vec<(String, Vec<&'a Event>)> {
        let (heads, entries): (Vec<&Event>, Vec<&Event>) =
            batch.iter().partition(|e| e.kind == HEAD_KIND);
        let name = |events: &[&Event]| match (events.first(), events.last()) {
            (Some(first), Some(last)) => format!("{:020}-{:020}.ndjson", first.index, last.index),
            _ => String::new(),
        };
        let prefix = &self.settings.prefix;
        let groups: Vec<(String, Vec<&Event>)> = match self.settings.layout {
            Layout::Batch if entries.is_empty() => vec![],
            Layout::Batch => vec![(format!("{prefix}{}", name(&entries)), entries)],
            Layout::Session => {
                let mut groups: Vec<(&str, Vec<&Event>)> = Vec::new();
                for event in entries {
                    let session = if event.session.is_empty() {
                        "_gateway"
                    } else {
                        &event.session
                    };
                    match groups.iter_mut().find(|(s, _)| *s == session) {
                        Some((_, events)) => events.push(event),
                        None => groups.push((session, vec![event])),
                    }
                }
                groups
                    .into_iter()
                    .map(|(session, events)| {
                        (format!("{prefix}{session}/{}", name(&events)), events)
                    })
                    .collect()
            }
        };
        groups
            .into_iter()
            .map(|(key, mut events)| {
                events.extend(heads.iter().copied());
                (key, events)
            })
            .collect()
    }

    fn put(&self, key: &str, body: Vec<u8>) -> Result<(), SinkError> {
        let s = &self.settings;
        let endpoint =
            http::Url::parse(&s.endpoint).map_err(|e| SinkError::Permanent(e.to_string()))?;
        let path = format!(
            "/{}/{}",
            sigv4::uri_encode(&s.bucket, false),
            sigv4::uri_encode(key, true)
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signed = sigv4::sign(&sigv4::Signing {
            method: "PUT",
            path: &path,
            host: endpoint.authority,
            headers: &[],
            body: &body,
            unix_seconds: now,
            region: &s.region,
            access_key_id: &s.access_key_id,
            secret_access_key: &s.secret_access_key,
        });
        let scheme = if endpoint.https { "https" } else { "http" };
        let mut request = Request::new(
            "PUT",
            &format!("{scheme}://{}{path}", endpoint.authority),
            body,
        )
        .header("content-type", "application/x-ndjson");
        request.timeout = std::time::Duration::from_secs(s.timeout_seconds);
        for (name, value) in signed {
            request = request.header(&name, &value);
        }
        http::delivery(http::send(&request), &format!("PUT {key}"))
    }
}

sluice_plugin_sdk::export_sink!(S3Sink);

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(layout: &str) -> S3Sink {
        let config = format!(
            r#"{{"endpoint":"http://127.0.0.1:9000","bucket":"b","access_key_id":"a","secret_access_key":"s","prefix":"p/","layout":"{layout}"}}"#
        );
        S3Sink::init(&Config::from_json(config)).unwrap()
    }

    fn event(index: u64, session: &str) -> Event {
        Event {
            index,
            session: session.into(),
            seq: 0,
            kind: "frame".into(),
            time_ms: 0,
            meta: "{}".into(),
            payload: vec![],
        }
    }

    #[test]
    fn objects_are_named_by_the_entries_they_hold_and_each_carries_the_head() {
        let head = Event {
            kind: HEAD_KIND.into(),
            ..event(6, "")
        };
        let batch = [event(3, "a"), event(4, ""), event(5, "a"), head];
        let objects = sink("batch").objects(&batch);
        assert_eq!(objects.len(), 1);
        assert_eq!(
            objects[0].0,
            "p/00000000000000000003-00000000000000000005.ndjson"
        );
        let objects = sink("session").objects(&batch);
        let keys: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "p/a/00000000000000000003-00000000000000000005.ndjson",
                "p/_gateway/00000000000000000004-00000000000000000004.ndjson"
            ]
        );
        assert_eq!(objects[0].1.len(), 3);
        assert!(objects.iter().all(|(_, events)| {
            events
                .last()
                .is_some_and(|e| e.kind == HEAD_KIND && e.index == 6)
        }));
        assert!(
            sink("batch").objects(&batch[3..]).is_empty(),
            "a head alone"
        );
    }

    #[test]
    fn settings_are_checked_at_init() {
        for bad in [
            r#"{"endpoint":"http://h/bucket","bucket":"b","access_key_id":"a","secret_access_key":"s"}"#,
            r#"{"endpoint":"http://h","bucket":"b/c","access_key_id":"a","secret_access_key":"s"}"#,
            r#"{"endpoint":"http://h","bucket":"b","access_key_id":"","secret_access_key":"s"}"#,
            r#"{"endpoint":"http://h","bucket":"b","access_key_id":"a","secret_access_key":"s","layout":"x"}"#,
        ] {
            assert!(S3Sink::init(&Config::from_json(bad)).is_err(), "{bad}");
        }
    }
}
