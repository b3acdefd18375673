//! `sluice verify`: recompute the whole chain and name the first thing that does not hold.
//!
//! What is checked, and against what:
//! - every entry against its hash and its predecessor's; indices consecutive except where a
//!   signed `restore` or `record-loss` entry declares exactly the indices it skips;
//! - every payload against its entry's digest; a missing payload must be listed by a chained
//!   `retention` entry, or it was deleted;
//! - every checkpoint (signed head) against the chain, signed by the chain's key at that point
//!   (keys change only by a `key-rotation` entry the previous key signed);
//! - the keys against the caller's trusted keys (given, or carried by heads kept outside):
//!   without one, only self-consistency can be checked, and the report says so, because
//!   whoever can write the store can recompute and re-sign all of it with a key of their own;
//! - heads kept outside the store (`--head`: printed heads, sink exports, the witness file):
//!   the store must reach each and agree with it, or it was rolled back, cut or forked;
//! - the tables beside the chain: every sessions and reviews row against the chained events it
//!   summarises, sink cursors within the chain.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use redb::ReadableDatabase;
use serde::Serialize;

use super::entry::{self, Entry, GENESIS, Hash};
use super::head::{Anchor, Witness};
use super::key::{NODE_KEY_KIND, NodeKey, ROTATION_KIND, Rotation};
use super::tables::{RawEntry, Tables};
use super::{NONCE_LEN, SessionSummary, SignedHead, Store, kinds};

/// The first thing found wrong with a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The store itself cannot be read.
    Corrupt { index: Option<u64>, why: String },
    /// A running gateway holds the store file.
    InUse,
    /// The entry's content no longer matches what was chained.
    Altered { index: u64, why: String },
    /// An entry is missing from the chain.
    Removed { index: u64 },
    /// An entry sits at another entry's place.
    Reordered { index: u64, holds: u64 },
    /// The payload no longer matches the digest its entry committed to.
    PayloadAltered { index: u64 },
    /// A payload is missing and no chained purge lists it.
    PayloadRemoved { index: u64 },
    /// The newest entries are gone: a signed head in the store names a later entry.
    Truncated { last: Option<u64>, signed: u64 },
    /// A signed head does not match the chain or its signature fails.
    BadCheckpoint { index: u64, why: String },
    /// The store does not reach a head kept outside it.
    RolledBack {
        last: Option<u64>,
        anchored: u64,
        source: String,
    },
    /// The store holds another entry where a head kept outside it names one.
    Forked { index: u64, source: String },
    /// A head given to verify does not carry a valid signature.
    BadAnchor { index: u64, source: String },
    /// The newest heads are signed by a key nobody trusted.
    UntrustedKey { key: [u8; 32] },
    /// Entries the store lost (declared when it was opened after a repair).
    Lost { from: u64, to: u64, at: u64 },
    /// A row beside the chain does not match it.
    IndexForged {
        table: &'static str,
        key: String,
        why: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Corrupt {
                index: Some(i),
                why,
            } => write!(f, "store corrupt at entry {i}: {why}"),
            Problem::Corrupt { index: None, why } => write!(f, "store corrupt: {why}"),
            Problem::InUse => write!(
                f,
                "the store is open in a running gateway: verify it there (`sluice verify`), or verify a copy"
            ),
            Problem::Altered { index, why } => write!(f, "entry {index} was altered: {why}"),
            Problem::Removed { index } => write!(f, "entry {index} was removed"),
            Problem::Reordered { index, holds } => {
                write!(
                    f,
                    "entries were reordered: position {index} holds entry {holds}"
                )
            }
            Problem::PayloadAltered { index } => {
                write!(
                    f,
                    "entry {index} was altered: its payload does not match its digest"
                )
            }
            Problem::PayloadRemoved { index } => write!(
                f,
                "the payload of entry {index} was deleted: it is missing and no recorded purge lists it"
            ),
            Problem::Truncated { last, signed } => match last {
                Some(last) => write!(
                    f,
                    "entries after {last} were removed (a signed head names entry {signed})"
                ),
                None => write!(
                    f,
                    "all entries were removed (a signed head names entry {signed})"
                ),
            },
            Problem::BadCheckpoint { index, why } => {
                write!(f, "signed head at entry {index} does not hold: {why}")
            }
            Problem::RolledBack {
                last,
                anchored,
                source,
            } => {
                let first_missing = last.map_or(0, |l| l + 1);
                write!(
                    f,
                    "the store was rolled back or cut: it ends at {}, but the head in {source} names entry {anchored}; entries {first_missing}-{anchored} are missing (pass --accept-loss if a repair lost them and you accept that)",
                    last.map_or("no entry".to_string(), |l| format!("entry {l}")),
                )
            }
            Problem::Forked { index, source } => write!(
                f,
                "entry {index} is not the one the head in {source} signed: the chain was rewritten from there on (a fork)"
            ),
            Problem::BadAnchor { index, source } => write!(
                f,
                "the head for entry {index} in {source} does not carry a valid signature"
            ),
            Problem::UntrustedKey { key } => write!(
                f,
                "the record's heads are signed by key {}, which is neither a trusted key nor announced by one (the store was re-signed, or give the right --public-key)",
                hex::encode(key)
            ),
            Problem::Lost { from, to, at } => write!(
                f,
                "entries {from}-{to} were lost (declared at entry {at} when the store came back from an unclean stop without them; pass --accept-loss to accept)"
            ),
            Problem::IndexForged { table, key, why } => {
                write!(f, "the {table} row `{key}` does not match the chain: {why}")
            }
        }
    }
}

/// How far the result can be trusted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trust {
    /// The newest head is signed by a trusted key: nobody without it could have made it.
    Anchored,
    /// No trusted key was given: the store is consistent with itself, which whoever can write
    /// it could also achieve.
    #[default]
    SelfConsistent,
}

/// Indices the chain skips, and the signed entry that says why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
    /// `restore` or `record-loss`.
    pub kind: String,
    /// The entry that declares it.
    pub at: u64,
}

/// What verify checks against besides the store itself.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Public keys the auditor trusts (the gateway's, kept outside).
    pub trusted_keys: Vec<[u8; 32]>,
    /// Heads kept outside the store.
    pub anchors: Vec<Anchor>,
    /// Accept entries the store shows (or an anchor shows) were lost, reporting them.
    pub accept_loss: bool,
}

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub entries: u64,
    /// Entries whose payload a chained purge deleted (not a fault).
    pub purged: Vec<u64>,
    pub head: Option<SignedHead>,
    pub problem: Option<Problem>,
    /// The file was not closed cleanly (a crash) and a copy had to be repaired to read it.
    pub repaired: bool,
    pub trust: Trust,
    /// Declared stretches the store no longer holds.
    pub gaps: Vec<Gap>,
    /// Entries where a key rotation took effect.
    pub rotations: Vec<u64>,
    /// Gateway nodes that announced their keys, and where.
    pub node_keys: Vec<(String, u64)>,
    /// Heads kept outside (given by the caller) that the store reaches and agrees with.
    pub anchors_confirmed: usize,
    /// What an auditor should read even when the record holds (accepted losses, heads
    /// accounted for by a restore).
    pub notes: Vec<String>,
}

impl VerifyReport {
    pub fn holds(&self) -> bool {
        self.problem.is_none()
    }

    /// The purged entries as ranges `(first, last)`.
    pub fn purged_ranges(&self) -> Vec<(u64, u64)> {
        super::index_ranges(self.purged.iter().copied())
    }
}

impl Store {
    /// Verifies the live store (through the running gateway): its own key is trusted.
    pub fn verify(&self, mut options: VerifyOptions) -> VerifyReport {
        options.trusted_keys.push(self.public_key());
        let db = self.db();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| verify_db(&*db, &options)))
            .unwrap_or_else(|_| corrupt(None, "the store could not be read"))
    }
}

/// Verifies a store file offline. Heads in the witness file beside it (`record.head`) are
/// checked too, without being trusted. Never panics: a store too damaged to open is reported
/// as corrupt.
pub fn verify_store(path: &Path, mut options: VerifyOptions) -> VerifyReport {
    if let Some(head) = Witness::read_beside(path) {
        options.anchors.push(Anchor {
            head,
            source: format!(
                "{} (the gateway's witness)",
                Witness::path_for(path).display()
            ),
            trusted: false,
        });
    }
    let result = std::panic::catch_unwind(|| match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => verify_db(&db, &options),
        // After an unclean stop (a crash, SIGKILL) redb must repair the file before reading
        // it. Repair a copy, never the evidence itself, and verify that.
        Err(redb::DatabaseError::RepairAborted) => verify_repaired_copy(path, &options),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => VerifyReport {
            problem: Some(Problem::InUse),
            ..VerifyReport::default()
        },
        Err(e) => corrupt(None, e),
    });
    result.unwrap_or_else(|_| corrupt(None, "the store could not be read"))
}

fn verify_repaired_copy(path: &Path, options: &VerifyOptions) -> VerifyReport {
    let Ok(dir) = tempfile::tempdir() else {
        return corrupt(None, "no temporary folder to repair a copy in");
    };
    let copy = dir.path().join("repaired.redb");
    if let Err(e) = std::fs::copy(path, &copy) {
        return corrupt(None, format!("cannot copy the store to repair it: {e}"));
    }
    let db = match redb::Database::open(&copy) {
        Ok(db) => db,
        Err(e) => return corrupt(None, e),
    };
    // What the gateway does at its next start: the commits only the journal holds (durable
    // there, not yet in redb's file when it stopped) are applied, to the copy.
    let journal = crate::journal::Journal::read_beside(path).map_err(|e| e.to_string());
    if let Err(e) = journal.and_then(|commits| crate::replay_journal(&db, commits)) {
        return corrupt(None, format!("the record's journal: {e}"));
    }
    VerifyReport {
        repaired: true,
        ..verify_db(&db, options)
    }
}

fn corrupt(index: Option<u64>, why: impl fmt::Display) -> VerifyReport {
    VerifyReport {
        problem: Some(Problem::Corrupt {
            index,
            why: why.to_string(),
        }),
        ..VerifyReport::default()
    }
}

fn verify_db(db: &impl ReadableDatabase, options: &VerifyOptions) -> VerifyReport {
    match crate::tables::RedbTables::read(db) {
        Ok(tables) => verify_tables(&tables, options),
        Err(problem) => VerifyReport {
            problem: Some(problem),
            ..VerifyReport::default()
        },
    }
}

/// Verifies a record from its tables, whichever backend keeps them.
pub fn verify_tables(tables: &dyn Tables, options: &VerifyOptions) -> VerifyReport {
    let mut report = VerifyReport::default();
    if let Err(problem) = Walk::new(options, &mut report).run(tables) {
        report.problem = Some(problem);
    }
    report
}

/// Where the walk is in the chain.
#[derive(Clone, Copy, Debug, Default)]
struct Position {
    prev: Hash,
    /// The index the next entry should have.
    expected: u64,
    last: Option<u64>,
    last_checkpoint: Option<u64>,
}

/// One pass over the chain, and what it learns on the way.
struct Walk<'a> {
    options: &'a VerifyOptions,
    report: &'a mut VerifyReport,
    trusted: HashSet<[u8; 32]>,
    /// The key that must sign the next head: the first head's, then each announced one.
    key: Option<[u8; 32]>,
    /// Keys gateway nodes announced (each endorsed) in a chain several nodes share: each may
    /// sign heads besides `key`.
    node_keys: HashSet<[u8; 32]>,
    /// The key of the newest head: the one trust is decided on.
    newest_key: Option<[u8; 32]>,
    anchors: BTreeMap<u64, Vec<&'a Anchor>>,
    /// Entry ranges chained purges list.
    purges: Vec<(u64, u64)>,
    missing_payloads: Vec<u64>,
    /// Sessions as their entries describe them.
    sessions: BTreeMap<String, SessionSummary>,
    /// Each review's last chained state (its event's meta) and text (its payload).
    reviews: BTreeMap<String, (serde_json::Value, Option<Vec<u8>>)>,
    at: Position,
}

impl<'a> Walk<'a> {
    fn new(options: &'a VerifyOptions, report: &'a mut VerifyReport) -> Walk<'a> {
        let mut anchors: BTreeMap<u64, Vec<&Anchor>> = BTreeMap::new();
        for anchor in &options.anchors {
            anchors.entry(anchor.head.index).or_default().push(anchor);
        }
        let trusted = options.trusted_keys.iter().copied().collect();
        Walk {
            options,
            report,
            trusted,
            key: None,
            node_keys: HashSet::new(),
            newest_key: None,
            anchors,
            purges: Vec::new(),
            missing_payloads: Vec::new(),
            sessions: BTreeMap::new(),
            reviews: BTreeMap::new(),
            at: Position {
                prev: GENESIS,
                ..Position::default()
            },
        }
    }

    fn run(mut self, tables: &dyn Tables) -> Result<(), Problem> {
        for anchor in &self.options.anchors {
            if !anchor.head.signature_holds() {
                return Err(Problem::BadAnchor {
                    index: anchor.head.index,
                    source: anchor.source.clone(),
                });
            }
            if anchor.trusted {
                self.trusted.insert(anchor.head.public_key);
            }
        }
        self.report.head = match tables.head()? {
            None => None,
            Some(bytes) => Some(SignedHead::decode(&bytes).ok_or_else(|| Problem::Corrupt {
                index: None,
                why: "the signed head is malformed".into(),
            })?),
        };
        tables.entries(&mut |raw| self.step(raw))?;
        let Position {
            prev,
            expected,
            last,
            ..
        } = self.at;

        // Signed heads beyond the last entry mean the newest entries were cut off.
        let signed = [
            tables.newest_checkpoint()?,
            self.report.head.as_ref().map(|h| h.index),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(signed) = signed
            && last.is_none_or(|last| signed > last)
        {
            return Err(Problem::Truncated { last, signed });
        }
        if let (Some(head), Some(last)) = (&self.report.head, last)
            && (head.index != last
                || head.hash != prev
                || !head.signature_holds()
                || !self.may_sign(&head.public_key))
        {
            return Err(Problem::BadCheckpoint {
                index: head.index,
                why: "the chain's head does not match it".into(),
            });
        }
        self.check_trust()?;
        self.check_unreached_anchors(last)?;
        self.check_losses()?;
        self.check_payloads()?;
        self.check_sessions(tables.sessions()?)?;
        self.check_reviews(tables.reviews()?)?;
        for (name, cursor) in tables.cursors()? {
            if cursor > expected {
                return Err(Problem::IndexForged {
                    table: "sink cursors",
                    key: name,
                    why: format!("it points at entry {cursor}, past the chain's end ({expected})"),
                });
            }
        }
        Ok(())
    }

    /// One entry, in order: its place, hash, link, payload, what it says, and its head.
    fn step(&mut self, raw: RawEntry<'_>) -> Result<(), Problem> {
        let index = raw.index;
        let Some(split) = raw.stored.len().checked_sub(32) else {
            return Err(Problem::Corrupt {
                index: Some(index),
                why: "entry is truncated".into(),
            });
        };
        let (encoded, stored_hash) = raw.stored.split_at(split);
        let entry = Entry::decode(encoded).map_err(|why| Problem::Corrupt {
            index: Some(index),
            why,
        })?;
        if index != self.at.expected {
            self.declared_gap(&entry, self.at.expected, index)?;
        }
        if entry.index != index {
            return Err(Problem::Reordered {
                index,
                holds: entry.index,
            });
        }
        let hash = entry.hash();
        if hash[..] != *stored_hash {
            return Err(Problem::Altered {
                index,
                why: "its content does not match its hash".into(),
            });
        }
        if entry.prev_hash != self.at.prev {
            return Err(match self.at.last {
                Some(before) => Problem::Altered {
                    index: before,
                    why: format!("entry {index} committed to a different hash for it"),
                },
                None => Problem::Altered {
                    index,
                    why: "the first entry does not start the chain".into(),
                },
            });
        }
        let payload = match raw.payload {
            None => {
                self.missing_payloads.push(index);
                None
            }
            Some(stored) => {
                if stored.len() < NONCE_LEN {
                    return Err(Problem::PayloadAltered { index });
                }
                let (nonce, payload) = stored.split_at(NONCE_LEN);
                if entry::payload_digest(nonce, payload) != entry.payload_digest {
                    return Err(Problem::PayloadAltered { index });
                }
                Some(payload.to_vec())
            }
        };
        self.learn(&entry, payload)?;
        if let Some(cp) = raw.checkpoint {
            self.check_head(cp, index, &hash, self.at.last_checkpoint)?;
            self.at.last_checkpoint = Some(index);
        }
        for anchor in self.anchors.remove(&index).unwrap_or_default() {
            if anchor.head.hash != hash {
                return Err(Problem::Forked {
                    index,
                    source: anchor.source.clone(),
                });
            }
            if anchor.trusted {
                self.report.anchors_confirmed += 1;
            } else {
                self.report
                    .notes
                    .push(format!("{} agrees with the store", anchor.source));
            }
        }
        self.at.prev = hash;
        self.at.last = Some(index);
        self.at.expected = index + 1;
        self.report.entries += 1;
        Ok(())
    }

    /// Indices `expected..index` are absent: only a restore or a repair's loss, declared by
    /// the entry right after them, may skip indices.
    fn declared_gap(&mut self, entry: &Entry, expected: u64, index: u64) -> Result<(), Problem> {
        let declares = [kinds::RESTORE, kinds::RECORD_LOSS].contains(&entry.kind.as_str())
            && serde_json::from_str::<serde_json::Value>(&entry.meta)
                .ok()
                .and_then(|m| serde_json::from_value::<(u64, u64)>(m["gap"].clone()).ok())
                == Some((expected, index - 1));
        if !declares {
            return Err(Problem::Removed { index: expected });
        }
        self.report.gaps.push(Gap {
            from: expected,
            to: index - 1,
            kind: entry.kind.clone(),
            at: index,
        });
        Ok(())
    }

    /// What the chain says about the tables beside it, and key rotations.
    fn learn(&mut self, entry: &Entry, payload: Option<Vec<u8>>) -> Result<(), Problem> {
        if !entry.session.is_empty() {
            self.sessions
                .entry(entry.session.clone())
                .or_insert_with(|| SessionSummary::new(&entry.fields()))
                .update(&entry.fields());
        }
        let meta = || serde_json::from_str::<serde_json::Value>(&entry.meta).unwrap_or_default();
        match entry.kind.as_str() {
            kinds::RETENTION => {
                let meta = meta();
                let ranges: Vec<(u64, u64)> =
                    serde_json::from_value(meta["ranges"].clone()).unwrap_or_default();
                self.purges.extend(ranges);
                let purged: Vec<String> =
                    serde_json::from_value(meta["sessions"].clone()).unwrap_or_default();
                for id in purged {
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.purged_ms = Some(entry.time_ms);
                    }
                }
            }
            ROTATION_KIND => {
                let bad_rotation = |why: &str| Problem::BadCheckpoint {
                    index: entry.index,
                    why: format!("key rotation: {why}"),
                };
                let rotation: Rotation = serde_json::from_str(&entry.meta)
                    .map_err(|_| bad_rotation("its announcement is malformed"))?;
                if !rotation.holds(&entry.prev_hash) {
                    return Err(bad_rotation("the old key did not sign this announcement"));
                }
                if self.key.is_some_and(|k| k != rotation.old_public_key) {
                    return Err(bad_rotation("announced by a key that was not the record's"));
                }
                if self.trusted.contains(&rotation.old_public_key) {
                    self.trusted.insert(rotation.new_public_key);
                }
                self.key = Some(rotation.new_public_key);
                self.report.rotations.push(entry.index);
            }
            NODE_KEY_KIND => {
                let announced: NodeKey =
                    serde_json::from_str(&entry.meta).map_err(|_| Problem::BadCheckpoint {
                        index: entry.index,
                        why: "node key: its announcement is malformed".into(),
                    })?;
                if !announced.holds() {
                    return Err(Problem::BadCheckpoint {
                        index: entry.index,
                        why: format!(
                            "node key: the endorsement of node {}'s key does not hold",
                            announced.node
                        ),
                    });
                }
                if self.trusted.contains(&announced.endorser) {
                    self.trusted.insert(announced.public_key);
                }
                self.node_keys.insert(announced.public_key);
                self.report.node_keys.push((announced.node, entry.index));
            }
            kinds::REVIEW => {
                let meta = meta();
                if let Some(id) = meta["review"].as_str() {
                    self.reviews.insert(id.to_string(), (meta.clone(), payload));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn check_head(
        &mut self,
        bytes: &[u8],
        index: u64,
        hash: &Hash,
        previous: Option<u64>,
    ) -> Result<(), Problem> {
        let bad = |why: &str| Problem::BadCheckpoint {
            index,
            why: why.into(),
        };
        let head = SignedHead::decode(bytes).ok_or_else(|| bad("malformed"))?;
        if head.index != index || head.hash != *hash {
            // Entries were rewritten with their hashes recomputed; the signed head catches it.
            let since = previous.map_or("the first entry".to_string(), |p| {
                format!("entry {}", p + 1)
            });
            let why = format!(
                "the chain no longer matches the head signed at this entry (rewritten between {since} and here)"
            );
            return Err(Problem::Altered { index, why });
        }
        if !head.signature_holds() {
            return Err(bad("its signature fails"));
        }
        if self.key.is_none() && self.node_keys.is_empty() {
            self.key = Some(head.public_key);
        }
        if !self.may_sign(&head.public_key) {
            return Err(bad(
                "it is signed by another key than the record's, and no rotation or node announced that key",
            ));
        }
        self.newest_key = Some(head.public_key);
        Ok(())
    }

    /// Whether `key` may sign a head here: the record's key, or an announced node's.
    fn may_sign(&self, key: &[u8; 32]) -> bool {
        self.key == Some(*key) || self.node_keys.contains(key)
    }

    fn check_trust(&mut self) -> Result<(), Problem> {
        if self.trusted.is_empty() {
            self.report.trust = Trust::SelfConsistent;
            return Ok(());
        }
        match self.newest_key.or(self.key) {
            Some(key) if !self.trusted.contains(&key) => Err(Problem::UntrustedKey { key }),
            _ => {
                self.report.trust = Trust::Anchored;
                Ok(())
            }
        }
    }

    /// Heads kept outside that name entries the store does not hold.
    fn check_unreached_anchors(&mut self, last: Option<u64>) -> Result<(), Problem> {
        let unreached = std::mem::take(&mut self.anchors);
        for (index, anchors) in unreached {
            let source = anchors
                .first()
                .map(|a| a.source.clone())
                .unwrap_or_default();
            if let Some(gap) = self
                .report
                .gaps
                .iter()
                .find(|g| (g.from..=g.to).contains(&index))
            {
                self.report.notes.push(format!(
                    "the head for entry {index} in {source} lies in entries {}-{}, which the {} at entry {} declares",
                    gap.from, gap.to, gap.kind, gap.at
                ));
                continue;
            }
            if self.options.accept_loss {
                self.report.notes.push(format!(
                    "accepted as lost: entries {}-{index} (the head in {source} names entry {index})",
                    last.map_or(0, |l| l + 1)
                ));
                continue;
            }
            return Err(Problem::RolledBack {
                last,
                anchored: index,
                source,
            });
        }
        Ok(())
    }

    fn check_losses(&mut self) -> Result<(), Problem> {
        for gap in &self.report.gaps {
            if gap.kind != kinds::RECORD_LOSS {
                continue;
            }
            if !self.options.accept_loss {
                return Err(Problem::Lost {
                    from: gap.from,
                    to: gap.to,
                    at: gap.at,
                });
            }
            self.report.notes.push(format!(
                "accepted as lost: entries {}-{} (declared at entry {})",
                gap.from, gap.to, gap.at
            ));
        }
        Ok(())
    }

    fn check_payloads(&mut self) -> Result<(), Problem> {
        for index in std::mem::take(&mut self.missing_payloads) {
            if !self
                .purges
                .iter()
                .any(|(first, last)| (*first..=*last).contains(&index))
            {
                return Err(Problem::PayloadRemoved { index });
            }
            self.report.purged.push(index);
        }
        Ok(())
    }

    fn check_sessions(&mut self, rows: Vec<(String, Vec<u8>)>) -> Result<(), Problem> {
        let forged = |key: &str, why: String| Problem::IndexForged {
            table: "sessions",
            key: key.to_string(),
            why,
        };
        let mut seen = HashSet::new();
        for (id, value) in &rows {
            let id = id.as_str();
            let row: SessionSummary = serde_json::from_slice(value)
                .map_err(|e| forged(id, format!("it is not a session summary ({e})")))?;
            let Some(chained) = self.sessions.get(id) else {
                return Err(forged(id, "no session with this id is in the chain".into()));
            };
            let differs = session_differences(&row, chained);
            if !differs.is_empty() {
                return Err(forged(id, differs.join("; ")));
            }
            seen.insert(id.to_string());
        }
        if let Some(id) = self.sessions.keys().find(|id| !seen.contains(*id)) {
            return Err(forged(
                id,
                "the session is in the chain but missing from the index".into(),
            ));
        }
        Ok(())
    }

    fn check_reviews(&mut self, rows: Vec<(String, Vec<u8>)>) -> Result<(), Problem> {
        let forged = |key: &str, why: String| Problem::IndexForged {
            table: "reviews",
            key: key.to_string(),
            why,
        };
        for (id, value) in &rows {
            let id = id.as_str();
            let row: serde_json::Value = serde_json::from_slice(value)
                .map_err(|e| forged(id, format!("it is not a review ({e})")))?;
            let Some((meta, text)) = self.reviews.get(id) else {
                return Err(forged(id, "no review with this id is in the chain".into()));
            };
            if let Some(why) = review_difference(&row, meta, text.as_deref()) {
                return Err(forged(id, why));
            }
        }
        Ok(())
    }
}

/// How a sessions row differs from what the chain says (empty when it does not).
fn session_differences(row: &SessionSummary, chained: &SessionSummary) -> Vec<String> {
    let mut differs = Vec::new();
    let mut compare = |field: &str, row: String, chain: String| {
        if row != chain {
            differs.push(format!("{field} is {row:?}, the chain says {chain:?}"));
        }
    };
    compare("id", row.id.clone(), chained.id.clone());
    compare("subject", row.subject.clone(), chained.subject.clone());
    compare(
        "connection",
        row.connection.clone(),
        chained.connection.clone(),
    );
    compare("client", row.client.clone(), chained.client.clone());
    compare(
        "started_ms",
        row.started_ms.to_string(),
        chained.started_ms.to_string(),
    );
    compare(
        "ended_ms",
        format!("{:?}", row.ended_ms),
        format!("{:?}", chained.ended_ms),
    );
    compare(
        "exit_status",
        format!("{:?}", row.exit_status),
        format!("{:?}", chained.exit_status),
    );
    compare(
        "first_index",
        row.first_index.to_string(),
        chained.first_index.to_string(),
    );
    compare(
        "last_index",
        row.last_index.to_string(),
        chained.last_index.to_string(),
    );
    compare(
        "purged",
        row.purged_ms.is_some().to_string(),
        chained.purged_ms.is_some().to_string(),
    );
    compare(
        "first_input_at",
        format!("{:?}", row.first_input_at),
        format!("{:?}", chained.first_input_at),
    );
    compare(
        "refused",
        row.refused.to_string(),
        chained.refused.to_string(),
    );
    differs
}

/// How a reviews row differs from the review's last chained event, if it does. Events carry
/// the whole state (`state`, without the text, which is the payload); older events only
/// their status and parties.
fn review_difference(
    row: &serde_json::Value,
    meta: &serde_json::Value,
    text: Option<&[u8]>,
) -> Option<String> {
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("text");
            map.remove("entry");
        }
        v
    };
    if let Some(state) = meta.get("state") {
        if strip(row) != strip(state) {
            return Some(format!(
                "it says {}, its last recorded state is {}",
                strip(row),
                strip(state)
            ));
        }
    } else {
        for field in ["status", "kind", "requester", "connection", "required"] {
            if row.get(field) != meta.get(field) {
                return Some(format!(
                    "its {field} is {}, the chain says {}",
                    row.get(field).unwrap_or(&serde_json::Value::Null),
                    meta.get(field).unwrap_or(&serde_json::Value::Null)
                ));
            }
        }
    }
    if let Some(text) = text
        && row
            .get("text")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .as_bytes()
            != text
    {
        return Some("its text is not the text recorded with it".into());
    }
    None
}
