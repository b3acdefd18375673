//! `sluice serve --watch`, for plugin development: a rebuilt plugin or an edited policy file
//! is applied without `sluice reload`. The gateway looks at the policy folder and at every
//! local plugin file the policy names; when something changed and then stayed the same for
//! one more look, it reloads, exactly as `sluice reload` does (recorded, all or nothing: a
//! policy that does not load is refused and logged, and the running one stays).
//!
//! Polling, not file-system events: a handful of files, and it works the same on every file
//! system, including a build's output replaced by rename.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::policy::{Policy, Source};

use super::Gateway;

/// What a look found: each watched path with its modification time and length.
type Look = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

pub(super) fn spawn(gateway: Arc<Gateway>, every: Duration) {
    let dir = gateway.config.gateway.policies.clone();
    tracing::info!(policies = %dir.display(), every_ms = every.as_millis() as u64, "watching the policy and its plugin files (development only)");
    tokio::spawn(async move {
        let mut seen = look(&dir);
        let mut changed = false;
        loop {
            tokio::time::sleep(every).await;
            let dir = dir.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || look(&dir)).await else {
                continue;
            };
            if now != seen {
                // Still changing (a build writing its output): look again first.
                seen = now;
                changed = true;
            } else if std::mem::take(&mut changed) {
                match gateway.reload("watch").await {
                    Ok(_) => tracing::info!("policy reloaded: a watched file changed"),
                    Err(why) => tracing::error!(%why, "a watched file changed; reload refused"),
                }
            }
        }
    });
}

/// The policy folder's files, and the plugin files its policy names (when it parses: one
/// being edited may not; its files are still watched).
fn look(dir: &std::path::Path) -> Look {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if let Ok(policy) = Policy::load_dir(dir) {
        paths.extend(
            policy
                .plugins
                .values()
                .filter_map(|spec| match &spec.source {
                    Source::File(path) => Some(path.clone()),
                    Source::Builtin(_) => None,
                }),
        );
    }
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .map(|path| {
            let stamp = std::fs::metadata(&path)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            (path, stamp)
        })
        .collect()
}
