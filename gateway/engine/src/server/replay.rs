//! `GET /api/sessions/ID/replay` (the replay's index) and `.../replay/K` (segment K): a
//! terminal session for asciinema-player's segmented driver, which loads the index, then the
//! segment it plays or seeks into, and the next one ahead. Indexes are made on a reader
//! thread the first time a session is replayed (one walk of its entries) and kept, within a
//! bound, until the session grows.
//!
//! Reads are recorded as every read is: opening the index records one (form `replay`); the
//! segments a player then fetches are covered by it for `READ_COVERS`, after which the next
//! segment fetched records another.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;

use super::Gateway;
use super::routes::{Reply, error, reply};
use crate::replay::{Cutting, ReplayIndex};
use sluice_core::frame::Identity;
use sluice_record::SessionSummary;

/// How long a segment waits for its keyframe (made at about 40 MB of output a second).
const KEYFRAME_WAIT: Duration = Duration::from_secs(30);
/// How long a recorded replay read covers the segments its reader fetches.
const READ_COVERS: Duration = Duration::from_secs(600);
/// The most memory kept indexes may hold, and the most indexes kept.
const CACHE_BYTES: usize = 32 << 20;
const CACHE_ENTRIES: usize = 64;

/// Replay indexes made, newest last, and whose replay reads were recorded when.
#[derive(Default)]
pub(super) struct Replays {
    indexes: Mutex<VecDeque<Arc<ReplayIndex>>>,
    reads: Mutex<HashMap<(String, String), Instant>>,
    cutting: Cutting,
}

impl Replays {
    pub(super) fn new(cutting: Cutting) -> Replays {
        Replays {
            cutting,
            ..Replays::default()
        }
    }

    fn cached(&self, id: &str, last_index: u64) -> Option<Arc<ReplayIndex>> {
        let indexes = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        indexes
            .iter()
            .find(|i| i.session == id && i.last_index == last_index)
            .cloned()
    }

    /// Keeps `index`, unless one for the same session and entries is kept already (made by
    /// a reader at the same time): the one kept, and whether it is `index`.
    fn keep(&self, index: Arc<ReplayIndex>) -> (Arc<ReplayIndex>, bool) {
        let mut indexes = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = indexes
            .iter()
            .find(|i| i.session == index.session && i.last_index == index.last_index)
        {
            return (kept.clone(), false);
        }
        indexes.retain(|i| i.session != index.session);
        indexes.push_back(index.clone());
        while indexes.len() > CACHE_ENTRIES
            || (indexes.len() > 1
                && indexes.iter().map(|i| i.weight()).sum::<usize>() > CACHE_BYTES)
        {
            indexes.pop_front();
        }
        (index, true)
    }

    fn read_recently(&self, subject: &str, id: &str) -> bool {
        let mut reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        reads.retain(|_, at| at.elapsed() < READ_COVERS);
        reads.contains_key(&(subject.to_string(), id.to_string()))
    }

    fn recorded_read(&self, subject: &str, id: &str) {
        let mut reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        reads.insert((subject.to_string(), id.to_string()), Instant::now());
    }
}

impl Gateway {
    /// Session `summary`'s replay index: kept, or scanned now (fast) with its keyframes made
    /// on a thread of their own, so the player starts while they are.
    fn replay_index(
        self: &Arc<Self>,
        summary: &SessionSummary,
    ) -> Result<Arc<ReplayIndex>, String> {
        if let Some(index) = self.replays.cached(&summary.id, summary.last_index) {
            return Ok(index);
        }
        let scanned = ReplayIndex::scan(&*self.store, summary, self.replays.cutting)
            .map_err(|e| e.to_string())?;
        let (index, new) = self.replays.keep(Arc::new(scanned));
        if new {
            let (gateway, making) = (self.clone(), index.clone());
            std::thread::Builder::new()
                .name("replay-keyframes".into())
                .spawn(move || making.make_keyframes(&*gateway.store))
                .map_err(|e| format!("cannot start making keyframes: {e}"))?;
        }
        Ok(index)
    }

    /// The replay index of session `id` (`segment` None), or its segment `segment`.
    pub(super) async fn session_replay(
        self: &Arc<Self>,
        identity: &Identity,
        id: &str,
        segment: Option<&str>,
    ) -> Reply {
        let segment = match segment.map(str::parse::<usize>) {
            None => None,
            Some(Ok(k)) => Some(k),
            Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "a segment is a number"),
        };
        let summary = if segment.is_some() && self.replays.read_recently(&identity.subject, id) {
            match self.readable(identity, id).await {
                Ok(summary) => summary,
                Err(refused) => return refused,
            }
        } else {
            match self.open_to_read(identity, id, "replay").await {
                Ok((summary, _)) => {
                    self.replays.recorded_read(&identity.subject, id);
                    summary
                }
                Err(refused) => return refused,
            }
        };
        let gateway = self.clone();
        let made = tokio::task::spawn_blocking(move || {
            let index = gateway.replay_index(&summary)?;
            match segment {
                None => Ok(Some(index.to_json(|k| format!("replay/{k}")).to_string())),
                Some(k) => index.segment_json(&*gateway.store, k, KEYFRAME_WAIT),
            }
        })
        .await;
        match made {
            Ok(Ok(Some(body))) => {
                let mut response = reply(StatusCode::OK, body);
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                response
            }
            Ok(Ok(None)) => error(
                StatusCode::NOT_FOUND,
                &format!(
                    "session {id} has no replay segment {}",
                    segment.unwrap_or(0)
                ),
            ),
            Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("replay failed: {e}"),
            ),
        }
    }
}
