//! Chaining a batch of events after the chain's end: what every backend writes for an append.
//! Kept apart from storage so that redb and PostgreSQL chain, hash, sign and index alike.

use ed25519_dalek::SigningKey;
use sha2::Digest;

use super::entry::{self, Fields, GENESIS, Hash};
use super::{NONCE_LEN, NewEvent, RecordError, SessionSummary, SignedHead, sign};

/// One entry as it is stored.
#[derive(Debug)]
pub struct LinkedRow<'e> {
    pub index: u64,
    /// The entry's encoding followed by its 32-byte hash.
    pub stored: Vec<u8>,
    /// The nonce followed by the payload the entry's digest covers.
    pub payload: Vec<u8>,
    /// The session it belongs to (empty for the gateway's own events).
    pub session: &'e str,
    pub kind: &'e str,
}

/// A batch chained after the end: its rows, the sessions index rows it changes, its head.
#[derive(Debug)]
pub struct Linked<'e> {
    pub rows: Vec<LinkedRow<'e>>,
    pub sessions: Vec<SessionSummary>,
    /// `None` for an empty batch.
    pub head: Option<SignedHead>,
}

/// Chains `events` after `last`, the first at index `first`, and signs the head with
/// `signer`. `existing` reads a session's index row as stored (for sessions the batch extends).
pub fn link<'e>(
    last: Option<(u64, Hash)>,
    first: u64,
    events: &'e [NewEvent],
    signer: &SigningKey,
    mut existing: impl FnMut(&str) -> Result<Option<SessionSummary>, RecordError>,
) -> Result<Linked<'e>, RecordError> {
    let mut next = first;
    let mut prev = last.map_or(GENESIS, |(_, hash)| hash);
    // One draw of randomness for the whole group's nonces.
    let mut nonces = vec![0u8; NONCE_LEN * events.len()];
    getrandom::fill(&mut nonces).map_err(|e| RecordError::Io {
        path: String::new(),
        message: format!("no randomness for nonces: {e}"),
    })?;
    let mut rows = Vec::with_capacity(events.len());
    let mut sessions: Vec<SessionSummary> = Vec::new();
    for (event, nonce) in events.iter().zip(nonces.chunks_exact(NONCE_LEN)) {
        let digest = entry::payload_digest(nonce, &event.payload);
        let entry = Fields {
            index: next,
            prev_hash: &prev,
            session: &event.session,
            seq: event.seq,
            kind: &event.kind,
            time_ms: event.time_ms,
            meta: &event.meta,
            payload_digest: &digest,
        };
        let mut stored = Vec::with_capacity(entry.stored_len());
        entry.encode_into(&mut stored);
        let hash: Hash = sha2::Sha256::digest(&stored).into();
        stored.extend_from_slice(&hash);
        let mut payload = Vec::with_capacity(NONCE_LEN + event.payload.len());
        payload.extend_from_slice(nonce);
        payload.extend_from_slice(&event.payload);
        // The gateway's own events (access requests) belong to no session.
        if !entry.session.is_empty() {
            let at = match sessions.iter().position(|s| s.id == entry.session) {
                Some(at) => at,
                None => {
                    let summary =
                        existing(entry.session)?.unwrap_or_else(|| SessionSummary::new(&entry));
                    sessions.push(summary);
                    sessions.len() - 1
                }
            };
            sessions[at].update(&entry);
        }
        rows.push(LinkedRow {
            index: next,
            stored,
            payload,
            session: &event.session,
            kind: &event.kind,
        });
        prev = hash;
        next += 1;
    }
    let head = (!events.is_empty()).then(|| sign(signer, next - 1, prev));
    Ok(Linked {
        rows,
        sessions,
        head,
    })
}
