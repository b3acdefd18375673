//! Raw access to a store's tables, for tests that do to a copy of the store what an attacker
//! with write access would: edit, delete, swap and re-sign, past every check the store makes.
//! Behind the `tamper` feature, which only the tests enable; verify must name each change.

#![allow(clippy::expect_used)] // Test support: a store it cannot edit is a broken test.

use std::path::Path;

use ed25519_dalek::SigningKey;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use super::entry::{self, Entry, Hash};
use super::head::SignedHead;
use super::{
    BLOCKS, CHECKPOINTS, ENTRIES, META, NONCE_LEN, PAYLOADS, REVIEWS, RecordError, SESSIONS,
    SINK_CURSORS,
};

/// What is kept per entry index (in whichever layout the store keeps it).
#[derive(Clone, Copy, Debug)]
pub enum Log {
    /// The chained entry, encoded, followed by its 32-byte hash.
    Entries,
    /// A nonce followed by the payload the entry's digest covers.
    Payloads,
    /// The signed head at the end of each commit.
    Checkpoints,
}

/// The tables kept per name.
#[derive(Clone, Copy, Debug)]
pub enum Rows {
    /// The store's own state (`head`, `key`, ...).
    Meta,
    /// The sessions index: a JSON row per session.
    Sessions,
    /// The review queue's state: a JSON row per review.
    Reviews,
}

fn rows_table(rows: Rows) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match rows {
        Rows::Meta => META,
        Rows::Sessions => SESSIONS,
        Rows::Reviews => REVIEWS,
    }
}

/// One write transaction on a store file, with nothing checked.
pub struct Tamper<'a> {
    txn: &'a WriteTransaction,
}

/// Opens the store at `path` (which nothing else may have open; its journal applied) and lets
/// `change` edit it in one transaction, committed when `change` returns.
pub fn tamper(path: &Path, change: impl FnOnce(&Tamper)) -> Result<(), RecordError> {
    let fail = |e: &dyn std::fmt::Display| RecordError::Io {
        path: path.display().to_string(),
        message: format!("tamper: {e}"),
    };
    let db = Database::open(path).map_err(|e| fail(&e))?;
    // The store as the gateway opens it: commits only its journal holds are applied first.
    let commits = crate::journal::Journal::read_beside(path).map_err(|e| fail(&e))?;
    crate::replay_journal(&db, commits).map_err(|e| fail(&e))?;
    let txn = db.begin_write().map_err(|e| fail(&e))?;
    change(&Tamper { txn: &txn });
    txn.commit().map_err(|e| fail(&e))
}

impl Tamper<'_> {
    /// The entries and payloads, wherever the store's layout keeps them (`blocks.rs`).
    fn entries(&self) -> crate::blocks::Log<redb::Table<'_, u64, &'static [u8]>> {
        crate::blocks::Log {
            rows: self.txn.open_table(ENTRIES).expect("open table"),
            payloads: self.txn.open_table(PAYLOADS).expect("open table"),
            blocks: Some(self.txn.open_table(BLOCKS).expect("open table")),
        }
    }

    pub fn get(&self, log: Log, index: u64) -> Option<Vec<u8>> {
        match log {
            Log::Entries => self.entries().get(index).expect("read").map(|h| h.stored),
            Log::Payloads => self.entries().get(index).expect("read")?.payload,
            Log::Checkpoints => {
                let table = self.txn.open_table(CHECKPOINTS).expect("open table");
                let value = table.get(index).expect("read table");
                value.map(|v| v.value().to_vec())
            }
        }
    }

    pub fn put(&self, log: Log, index: u64, value: &[u8]) {
        match log {
            Log::Entries => self.entries().edit(index, |held| match held {
                Some(held) => held.stored = value.to_vec(),
                None => {
                    *held = Some(crate::blocks::Held {
                        index,
                        stored: value.to_vec(),
                        payload: None,
                    })
                }
            }),
            Log::Payloads => self.entries().edit(index, |held| {
                if let Some(held) = held {
                    held.payload = Some(value.to_vec());
                }
            }),
            Log::Checkpoints => {
                let mut table = self.txn.open_table(CHECKPOINTS).expect("open table");
                table.insert(index, value).expect("write table");
                Ok(())
            }
        }
        .expect("write");
    }

    pub fn remove(&self, log: Log, index: u64) {
        match log {
            Log::Entries => self.entries().edit(index, |held| *held = None),
            Log::Payloads => self.entries().edit(index, |held| {
                if let Some(held) = held {
                    held.payload = None;
                }
            }),
            Log::Checkpoints => {
                let mut table = self.txn.open_table(CHECKPOINTS).expect("open table");
                table.remove(index).expect("write table");
                Ok(())
            }
        }
        .expect("write");
    }

    pub fn row(&self, rows: Rows, key: &str) -> Option<Vec<u8>> {
        let table = self.txn.open_table(rows_table(rows)).expect("open table");
        let value = table.get(key).expect("read table");
        value.map(|v| v.value().to_vec())
    }

    pub fn remove_row(&self, rows: Rows, key: &str) {
        let mut table = self.txn.open_table(rows_table(rows)).expect("open table");
        table.remove(key).expect("write table");
    }

    pub fn put_row(&self, rows: Rows, key: &str, value: &[u8]) {
        let mut table = self.txn.open_table(rows_table(rows)).expect("open table");
        table.insert(key, value).expect("write table");
    }

    /// Entry `index` decoded, with the hash stored beside it.
    pub fn entry(&self, index: u64) -> (Entry, Hash) {
        let value = self.get(Log::Entries, index).expect("no such entry");
        let (encoded, hash) = value.split_at(value.len() - 32);
        let entry = Entry::decode(encoded).expect("a stored entry decodes");
        (entry, hash.try_into().expect("32 bytes"))
    }

    /// Stores `entry` at `index` with `hash` beside it (its own or any other).
    pub fn put_entry(&self, index: u64, entry: &Entry, hash: &Hash) {
        self.put(
            Log::Entries,
            index,
            &[entry.encode(), hash.to_vec()].concat(),
        );
    }

    /// Stores `payload` for entry `index` (with a fixed nonce) and returns the digest an
    /// entry must carry to cover it.
    pub fn put_payload(&self, index: u64, payload: &[u8]) -> Hash {
        let nonce = [0u8; NONCE_LEN];
        self.put(Log::Payloads, index, &[&nonce[..], payload].concat());
        entry::payload_digest(&nonce, payload)
    }

    /// The signed head kept at the end of the commit that ended with entry `index`.
    pub fn checkpoint(&self, index: u64) -> Option<SignedHead> {
        SignedHead::decode(&self.get(Log::Checkpoints, index)?)
    }

    pub fn put_checkpoint(&self, head: &SignedHead) {
        self.put(Log::Checkpoints, head.index, &head.encode());
    }

    /// Makes `head` the store's own idea of its head.
    pub fn set_head(&self, head: &SignedHead) {
        self.put_row(Rows::Meta, "head", &head.encode());
    }

    pub fn set_sink_cursor(&self, sink: &str, next: u64) {
        let mut table = self.txn.open_table(SINK_CURSORS).expect("open table");
        table.insert(sink, next).expect("write table");
    }
}

/// A head for `(index, hash)` signed by `signer`, as the gateway signs its own.
pub fn sign(signer: &SigningKey, index: u64, hash: Hash) -> SignedHead {
    super::sign(signer, index, hash)
}
