//! The connections a gateway serves: those in `sluice.toml` (read-only here) and those admins
//! add at runtime, kept in the store.
//!
//! A runtime connection is the same table as in `sluice.toml`, as JSON. Its secrets (a
//! PostgreSQL `password`, an exec connection's `env` values) are write-only: sealed at rest
//! (`sealed.rs`), never served back. Every change is an event in the chain first (kind
//! `connection`: who, what, the table without its secrets and a digest of the sealed ones);
//! the stored row names that entry, and a row the chain does not confirm is not served.
//!

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::Connection;
use crate::sealed::Sealer;
use sluice_record::{NewEvent, Record, Recorder};

/// The chain's kind for a change to a runtime connection.
pub const KIND: &str = "connection";

/// Where a connection is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    File,
    Runtime,
}

pub struct Connections {
    file: BTreeMap<String, Connection>,
    runtime: RwLock<BTreeMap<String, Runtime>>,
    store: Arc<dyn Record>,
    recorder: Recorder,
    sealer: Sealer,
}

#[derive(Clone)]
struct Runtime {
    connection: Connection,
    /// The table as shown: without its secrets.
    shown: Value,
    /// The row as stored.
    row: Value,
}

impl Connections {
    /// The file's connections and the store's runtime ones; a stored row the chain does not
    /// confirm, or whose secrets do not open, is left out (and said why).
    pub fn open(
        file: BTreeMap<String, Connection>,
        store: Arc<dyn Record>,
        recorder: Recorder,
        sealer: Sealer,
    ) -> anyhow::Result<Connections> {
        let mut runtime = BTreeMap::new();
        for (name, bytes) in store.connections()? {
            match load_row(store.as_ref(), &sealer, &name, &bytes) {
                Ok(loaded) => {
                    runtime.insert(name, loaded);
                }
                Err(why) => {
                    tracing::error!(connection = %name, %why, "runtime connection not served")
                }
            }
        }
        Ok(Connections {
            file,
            runtime: RwLock::new(runtime),
            store,
            recorder,
            sealer,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Runtime>> {
        self.runtime.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every connection by name: the file's, then the runtime ones.
    pub fn all(&self) -> BTreeMap<String, Connection> {
        let mut all = self.file.clone();
        all.extend(
            self.read()
                .iter()
                .map(|(n, r)| (n.clone(), r.connection.clone())),
        );
        all
    }

    pub fn get(&self, name: &str) -> Option<Connection> {
        self.file
            .get(name)
            .cloned()
            .or_else(|| self.read().get(name).map(|r| r.connection.clone()))
    }

    /// Every connection, by name, with where it is defined and its table as shown (no
    /// secrets; `null` for the file's, which the file shows).
    pub fn list(&self) -> Vec<(String, Connection, Source, Value)> {
        let mut all: Vec<_> = self
            .file
            .iter()
            .map(|(n, c)| (n.clone(), c.clone(), Source::File, Value::Null))
            .collect();
        all.extend(self.read().iter().map(|(n, r)| {
            (
                n.clone(),
                r.connection.clone(),
                Source::Runtime,
                r.shown.clone(),
            )
        }));
        all
    }

    /// Adds (or, with `edit`, changes) runtime connection `name` from `table` (as in
    /// `sluice.toml`). On an edit, secrets left out keep their sealed values. Recorded first.
    pub async fn put(&self, name: &str, table: Value, edit: bool, by: &str) -> Result<(), String> {
        self.may_put(name, edit)?;
        let existing = self.read().get(name).cloned();
        let (mut shown, mut secrets) = split_secrets(table)?;
        if let Some(old) = &existing {
            let kept = old.row["sealed"].as_object().cloned().unwrap_or_default();
            for (field, value) in kept {
                secrets
                    .entry(field)
                    .or_insert_with(|| json!({"sealed": value}));
            }
        }
        let sealed = self.seal_all(name, &secrets);
        let connection = build(name, &shown, &sealed, &self.sealer)?;
        if let Value::Object(map) = &mut shown {
            map.remove("password");
        }
        let digest = hex::encode(Sha256::digest(json!(sealed).to_string()));
        let action = if edit { "edit" } else { "add" };
        let meta = json!({"action": action, "name": name, "by": by, "table": shown, "sealed_sha256": digest});
        let index = self
            .recorder
            .append(NewEvent::gateway(KIND, &meta))
            .await
            .map_err(|e| format!("the change could not be recorded, so nothing changed: {e}"))?;
        let row = json!({"table": shown, "sealed": sealed, "chained": index});
        self.store
            .put_connection(name, Some(row.to_string().as_bytes()))
            .map_err(|e| e.to_string())?;
        self.runtime
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                name.to_string(),
                Runtime {
                    connection,
                    shown,
                    row,
                },
            );
        Ok(())
    }

    /// Whether runtime connection `name` may be added (or, with `edit`, changed); why not.
    pub fn may_put(&self, name: &str, edit: bool) -> Result<(), String> {
        check_name(name)?;
        if self.file.contains_key(name) {
            return Err(format!(
                "`{name}` is a connection of sluice.toml: a runtime connection may not take its name"
            ));
        }
        match (self.read().contains_key(name), edit) {
            (true, false) => Err(format!("a connection `{name}` exists: edit it")),
            (false, true) => Err(format!("no runtime connection `{name}` to edit")),
            _ => Ok(()),
        }
    }

    /// Removes runtime connection `name`. Recorded first.
    pub async fn remove(&self, name: &str, by: &str) -> Result<(), String> {
        if self.file.contains_key(name) {
            return Err(format!(
                "`{name}` is defined in sluice.toml: remove it there"
            ));
        }
        if !self.read().contains_key(name) {
            return Err(format!("no runtime connection `{name}`"));
        }
        let meta = json!({"action": "remove", "name": name, "by": by});
        self.recorder
            .append(NewEvent::gateway(KIND, &meta))
            .await
            .map_err(|e| format!("the change could not be recorded, so nothing changed: {e}"))?;
        self.store
            .put_connection(name, None)
            .map_err(|e| e.to_string())?;
        self.runtime
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(())
    }

    /// Reads the runtime connections again from the store, as another gateway sharing it
    /// left them (checked as at start); the names that were added, changed or removed.
    /// Blocking: it reads the store.
    pub fn refresh(&self) -> anyhow::Result<Vec<String>> {
        let mut fresh = BTreeMap::new();
        for (name, bytes) in self.store.connections()? {
            match load_row(self.store.as_ref(), &self.sealer, &name, &bytes) {
                Ok(loaded) => {
                    fresh.insert(name, loaded);
                }
                Err(why) => {
                    tracing::error!(connection = %name, %why, "runtime connection not served")
                }
            }
        }
        let mut runtime = self.runtime.write().unwrap_or_else(|e| e.into_inner());
        let changed = runtime
            .keys()
            .chain(fresh.keys())
            .filter(|name| runtime.get(*name).map(|r| &r.row) != fresh.get(*name).map(|r| &r.row))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>();
        *runtime = fresh;
        Ok(changed.into_iter().collect())
    }

    /// Each secret sealed for `name`; one already sealed (kept from before) as it was.
    fn seal_all(
        &self,
        name: &str,
        secrets: &serde_json::Map<String, Value>,
    ) -> serde_json::Map<String, Value> {
        secrets
            .iter()
            .map(|(field, value)| {
                let sealed = match value {
                    Value::Object(o) if o.contains_key("sealed") => o["sealed"].clone(),
                    Value::String(s) => {
                        json!(self.sealer.seal(&format!("{name}/{field}"), s.as_bytes()))
                    }
                    other => json!(
                        self.sealer
                            .seal(&format!("{name}/{field}"), other.to_string().as_bytes())
                    ),
                };
                (field.clone(), sealed)
            })
            .collect()
    }
}

/// The connection `table` describes (secrets as given; an edit's left-out secrets are not
/// needed to load its chain), checked as `sluice.toml` is.
pub fn candidate(name: &str, table: &Value) -> Result<Connection, String> {
    check_name(name)?;
    serde_json::from_value(table.clone()).map_err(|e| format!("connection `{name}`: {e}"))
}

/// Names as in `sluice.toml`: letters, digits, `-` and `_`, at most 64.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}`: a connection's name is letters, digits, `-` and `_` (at most 64)"
        ))
    }
}

/// The table without its secrets, and the secrets: `password`, and each `env` value
/// (`env.NAME`).
fn split_secrets(table: Value) -> Result<(Value, serde_json::Map<String, Value>), String> {
    let Value::Object(mut map) = table else {
        return Err("a connection is a table (a JSON object)".into());
    };
    let mut secrets = serde_json::Map::new();
    for field in ["password", "private_key"] {
        if let Some(secret) = map.remove(field) {
            secrets.insert(field.into(), secret);
        }
    }
    if let Some(Value::Object(env)) = map.get_mut("env") {
        for (key, value) in std::mem::take(env) {
            secrets.insert(format!("env.{key}"), value);
        }
    }
    Ok((Value::Object(map), secrets))
}

/// The connection `shown` and its sealed secrets describe, checked as `sluice.toml` is.
fn build(
    name: &str,
    shown: &Value,
    sealed: &serde_json::Map<String, Value>,
    sealer: &Sealer,
) -> Result<Connection, String> {
    let mut table = shown.clone();
    for (field, value) in sealed {
        let secret = sealer
            .open(&format!("{name}/{field}"), value.as_str().unwrap_or(""))
            .map_err(|e| e.to_string())?;
        let secret = String::from_utf8(secret).map_err(|_| format!("{field}: not text"))?;
        match field.strip_prefix("env.") {
            Some(key) => table["env"][key] = json!(secret),
            None => table[field.as_str()] = json!(secret),
        }
    }
    serde_json::from_value(table).map_err(|e| format!("connection `{name}`: {e}"))
}

/// A stored row, confirmed by the chained entry it names, with its secrets opened.
fn load_row(
    store: &dyn Record,
    sealer: &Sealer,
    name: &str,
    bytes: &[u8],
) -> Result<Runtime, String> {
    let row: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let index = row["chained"]
        .as_u64()
        .ok_or("the row names no chained entry")?;
    let entry = store
        .entry(index)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("its chained entry {index} is not in the store"))?
        .entry;
    let meta: Value = serde_json::from_str(&entry.meta).unwrap_or_default();
    let sealed = row["sealed"].as_object().cloned().unwrap_or_default();
    let digest = hex::encode(Sha256::digest(json!(sealed).to_string()));
    let confirmed = entry.kind == KIND
        && meta["name"] == name
        && meta["table"] == row["table"]
        && meta["sealed_sha256"] == digest.as_str();
    if !confirmed {
        return Err(format!(
            "the stored row differs from its chained entry {index} (altered in the store?)"
        ));
    }
    let connection = build(name, &row["table"], &sealed, sealer)?;
    Ok(Runtime {
        connection,
        shown: row["table"].clone(),
        row,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(dir: &std::path::Path) -> (Connections, Arc<sluice_record::Store>) {
        // The previous run's record writer lets go of the store as it ends, on its own
        // thread: wait (bounded) until the file can be opened again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match sluice_record::Store::open(&dir.join("record.redb"), &dir.join("record.key")) {
                Ok(store) => break Arc::new(store),
                Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        let record: Arc<dyn Record> = store.clone();
        let file: BTreeMap<String, Connection> = serde_json::from_value(json!({
            "shell": {"kind": "exec", "interactive": ["bash"], "script": ["bash", "-s"]}
        }))
        .unwrap();
        let sealer = Sealer::load(None, dir).unwrap();
        let connections =
            Connections::open(file, record.clone(), Recorder::spawn(record), sealer).unwrap();
        (connections, store)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn runtime_connections_survive_a_restart_with_their_secrets_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let (connections, store) = open(dir.path()).await;
        let table = json!({"kind": "exec", "interactive": ["bash"], "script": ["bash", "-s"], "env": {"API_KEY": "s3cr3t-value"}});
        assert!(
            connections
                .put("shell", table.clone(), false, "admin")
                .await
                .unwrap_err()
                .contains("sluice.toml")
        );
        assert!(
            connections
                .put("bad name", table.clone(), false, "admin")
                .await
                .is_err()
        );
        connections
            .put("tools", table.clone(), false, "admin")
            .await
            .unwrap();
        assert!(
            connections
                .put("tools", table, false, "admin")
                .await
                .unwrap_err()
                .contains("edit it")
        );
        let Some(Connection::Exec(exec)) = connections.get("tools") else {
            panic!()
        };
        assert_eq!(exec.env["API_KEY"], "s3cr3t-value");
        // Shown without the secret; an edit that leaves it out keeps it.
        let shown = connections
            .list()
            .into_iter()
            .find(|c| c.0 == "tools")
            .unwrap()
            .3;
        assert!(!shown.to_string().contains("s3cr3t"), "{shown}");
        let edited = json!({"kind": "exec", "interactive": ["sh"], "script": ["sh"], "env": {}});
        connections
            .put("tools", edited, true, "admin")
            .await
            .unwrap();
        drop(connections);
        drop(store);
        let raw = std::fs::read(dir.path().join("record.redb")).unwrap();
        assert!(
            !raw.windows(12).any(|w| w == b"s3cr3t-value"),
            "the secret is sealed at rest"
        );

        let (connections, _store) = open(dir.path()).await;
        let Some(Connection::Exec(exec)) = connections.get("tools") else {
            panic!("not reloaded")
        };
        assert_eq!(exec.interactive, ["sh"]);
        assert_eq!(exec.env["API_KEY"], "s3cr3t-value");
        connections.remove("tools", "admin").await.unwrap();
        assert!(connections.get("tools").is_none());
        assert!(
            connections
                .remove("shell", "admin")
                .await
                .unwrap_err()
                .contains("sluice.toml")
        );
    }
}
