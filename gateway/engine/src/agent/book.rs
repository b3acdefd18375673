//! Where agents' enrollments are kept: `agents.json` in the data folder (a gateway of its
//! own), or the shared record (several gateways), so an agent enrolled through one node
//! connects to any.
//!
//! *Invariant:* a change is written only if the entry is still what it was read as (compare
//! and set), so an enrollment token is used once even when two nodes see it at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sluice_record::Membership;

/// One enrolled (or invited) agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub created_ms: u64,
    pub created_by: String,
    /// SHA-256 of the enrollment token (hex).
    pub token_sha256: String,
    pub token_expires_ms: u64,
    pub token_used_ms: Option<u64>,
    /// The agent's Ed25519 public key (hex), once it enrolled.
    pub public_key: Option<String>,
    pub version: Option<String>,
    pub revoked_ms: Option<u64>,
}

pub enum Book {
    File {
        path: PathBuf,
        entries: Mutex<BTreeMap<String, Entry>>,
    },
    Shared(Arc<dyn Membership>),
}

impl Book {
    /// `DATA/agents.json` (none on a first start).
    pub fn file(data_dir: &std::path::Path) -> anyhow::Result<Book> {
        let path = data_dir.join("agents.json");
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        Ok(Book::File {
            path,
            entries: Mutex::new(entries),
        })
    }

    /// Every agent's entry, as it stands.
    pub fn all(&self) -> Result<BTreeMap<String, Entry>, String> {
        match self {
            Book::File { entries, .. } => Ok(lock(entries).clone()),
            Book::Shared(membership) => {
                let rows = blocking(|| membership.agents())
                    .map_err(|e| format!("the shared record: {e}"))?;
                rows.into_iter()
                    .map(|(name, row)| {
                        serde_json::from_slice(&row)
                            .map(|entry| (name.clone(), entry))
                            .map_err(|e| format!("agent `{name}`'s row is damaged: {e}"))
                    })
                    .collect()
            }
        }
    }

    pub fn get(&self, name: &str) -> Result<Option<Entry>, String> {
        Ok(self.all()?.remove(name))
    }

    /// Writes `name`'s entry if it is still `before` (`None`: no entry yet); false when it
    /// changed meanwhile (another request, or another node).
    pub fn put(&self, name: &str, entry: &Entry, before: Option<&Entry>) -> Result<bool, String> {
        match self {
            Book::File { path, entries } => {
                let mut entries = lock(entries);
                if entries.get(name) != before {
                    return Ok(false);
                }
                let mut next = entries.clone();
                next.insert(name.to_string(), entry.clone());
                save(path, &next)?;
                *entries = next;
                Ok(true)
            }
            Book::Shared(membership) => {
                let row = serde_json::to_vec(entry).map_err(|e| e.to_string())?;
                let before = before
                    .map(serde_json::to_vec)
                    .transpose()
                    .map_err(|e| e.to_string())?;
                blocking(|| membership.put_agent(name, &row, before.as_deref()))
                    .map_err(|e| format!("the shared record: {e}"))
            }
        }
    }
}

fn lock(
    entries: &Mutex<BTreeMap<String, Entry>>,
) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
    entries.lock().unwrap_or_else(|e| e.into_inner())
}

fn save(path: &std::path::Path, entries: &BTreeMap<String, Entry>) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(entries).map_err(|e| e.to_string())?;
    let temporary = path.with_extension("json.new");
    sluice_core::files::write_private(&temporary, &bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&temporary, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs a call on the shared record (it blocks on the database) without stalling the
/// runtime's other tasks.
pub fn blocking<T>(call: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(call)
        }
        _ => call(),
    }
}
