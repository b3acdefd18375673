//! Where entries live in redb: layout 2 keeps one row per group commit (a block), layout 1
//! kept two rows per entry. Every reader goes through [`Log`], which reads both.
//!
//! Layout 1 (stores written before 2026-12): `entries` holds each entry's encoding followed
//! by its hash, `payloads` its nonce and payload, both keyed by index. Layout 2: `blocks`
//! holds, per commit, the entries and payloads of the commit, keyed by the index of its last
//! entry (the block holding entry `i` is the first key `>= i`, as with checkpoints).
//! Inserting one row per commit instead of two per entry is what makes the record fast:
//! redb's B-tree work per row bounded it (`benches/RESULTS.md`, issue 25).
//!
//! The entries' bytes are the same in both layouts, so hashes, the chain and signed heads are
//! too. A store keeps its layout-1 rows as they are (never rewritten: heads anchored outside
//! must keep matching) and appends blocks after them. A purge rewrites a block with the
//! payloads it deletes left out; the entries in it never change.
//!
//! A block: the version byte, then per entry its index (8 bytes), its stored bytes (4-byte
//! length, then the bytes) and its payload (4-byte length, then nonce and payload; the length
//! `u32::MAX` and nothing else once purged; frames are bounded far below 4 GiB).
//!
//! Architecture invariant: no length read from a block is trusted (a damaged block is an
//! error with a message); redb's own panics are caught by the callers (`guarded`).

use std::ops::{Bound, RangeBounds};

use redb::{ReadableTable, TableDefinition};

use crate::entry::Hash;

pub(crate) const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");

const BLOCK_VERSION: u8 = 2;
const PURGED: u32 = u32::MAX;

/// One entry as the log holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub index: u64,
    /// The entry's encoding followed by its 32-byte hash.
    pub stored: Vec<u8>,
    /// Nonce and payload; `None` once purged (or deleted).
    pub payload: Option<Vec<u8>>,
}

impl Held {
    /// The entry's hash, stored after its encoding.
    pub fn hash(&self) -> Result<Hash, String> {
        self.stored
            .len()
            .checked_sub(32)
            .and_then(|at| Hash::try_from(&self.stored[at..]).ok())
            .ok_or_else(|| format!("entry {} is truncated", self.index))
    }
}

/// A block's bytes.
pub fn encode(items: &[Held]) -> Vec<u8> {
    let size: usize = items
        .iter()
        .map(|h| 16 + h.stored.len() + h.payload.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(1 + size);
    out.push(BLOCK_VERSION);
    for held in items {
        put(&mut out, held.index, &held.stored, held.payload.as_deref());
    }
    out
}

/// Appends one entry to a block being built.
pub fn put(out: &mut Vec<u8>, index: u64, stored: &[u8], payload: Option<&[u8]>) {
    if out.is_empty() {
        out.push(BLOCK_VERSION);
    }
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&(stored.len() as u32).to_be_bytes());
    out.extend_from_slice(stored);
    match payload {
        Some(payload) => {
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload);
        }
        None => out.extend_from_slice(&PURGED.to_be_bytes()),
    }
}

/// One entry of a block, borrowed from its bytes.
type Item<'a> = (u64, &'a [u8], Option<&'a [u8]>);

/// A block's entries, in order, read without copying; an error ends the walk.
fn items(bytes: &[u8]) -> impl Iterator<Item = Result<Item<'_>, String>> {
    let mut at = 1;
    let mut last: Option<u64> = None;
    let mut failed = match bytes.first() {
        None => Some("an empty block".to_string()),
        Some(&BLOCK_VERSION) => None,
        Some(version) => Some(format!("a block of unknown layout {version}")),
    };
    std::iter::from_fn(move || {
        if let Some(why) = failed.take() {
            at = bytes.len();
            return Some(Err(why));
        }
        if at >= bytes.len() {
            return None;
        }
        let item = item_at(bytes, &mut at).and_then(|item| match last {
            Some(last) if last >= item.0 => {
                Err(format!("a block holds entry {} out of order", item.0))
            }
            _ => Ok(item),
        });
        match &item {
            Ok((index, _, _)) => last = Some(*index),
            Err(_) => at = bytes.len(),
        }
        Some(item)
    })
}

fn item_at<'a>(bytes: &'a [u8], at: &mut usize) -> Result<Item<'a>, String> {
    let mut take = |n: usize| -> Result<&'a [u8], String> {
        let field = bytes
            .get(*at..*at + n)
            .ok_or_else(|| "a truncated block".to_string())?;
        *at += n;
        Ok(field)
    };
    let u32_at = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let index = take(8)?;
    let index = u64::from_be_bytes(index.try_into().map_err(|_| "a truncated block")?);
    let len = u32_at(take(4)?) as usize;
    let stored = take(len)?;
    let payload = match u32_at(take(4)?) {
        PURGED => None,
        len => Some(take(len as usize)?),
    };
    Ok((index, stored, payload))
}

/// A block's entries, in order.
pub fn decode(bytes: &[u8]) -> Result<Vec<Held>, String> {
    items(bytes).map(|item| item.map(owned)).collect()
}

fn owned((index, stored, payload): Item<'_>) -> Held {
    Held {
        index,
        stored: stored.to_vec(),
        payload: payload.map(<[u8]>::to_vec),
    }
}

/// The entries of a store in either layout, read through its tables (`entries`, `payloads`,
/// `blocks`) in one transaction.
pub struct Log<T> {
    pub rows: T,
    pub payloads: T,
    /// `None` in a file no version with blocks has written to (read offline, not created).
    pub blocks: Option<T>,
}

impl<T: ReadableTable<u64, &'static [u8]>> Log<T> {
    /// Calls `each` with the entries in `range`, in index order, until it returns `false`.
    pub fn scan(
        &self,
        range: impl RangeBounds<u64>,
        mut each: impl FnMut(Held) -> Result<bool, String>,
    ) -> Result<(), String> {
        let (from, to) = (range.start_bound().cloned(), range.end_bound().cloned());
        for row in self.rows.range((from, to)).map_err(|e| e.to_string())? {
            let (key, value) = row.map_err(|e| e.to_string())?;
            let index = key.value();
            let payload = self.payloads.get(index).map_err(|e| e.to_string())?;
            let held = Held {
                index,
                stored: value.value().to_vec(),
                payload: payload.map(|p| p.value().to_vec()),
            };
            if !each(held)? {
                return Ok(());
            }
        }
        let Some(blocks) = &self.blocks else {
            return Ok(());
        };
        // Blocks are keyed by their last entry: the first one to read ends at or after `from`.
        for row in blocks
            .range::<u64>((from, Bound::Unbounded))
            .map_err(|e| e.to_string())?
        {
            let (_, value) = row.map_err(|e| e.to_string())?;
            for item in items(value.value()) {
                let item = item?;
                if !(from, to).contains(&item.0) {
                    if beyond(to, item.0) {
                        return Ok(());
                    }
                    continue;
                }
                if !each(owned(item))? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Entry `index`, if the log holds it.
    pub fn get(&self, index: u64) -> Result<Option<Held>, String> {
        let mut found = None;
        self.scan(index..=index, |held| {
            found = Some(held);
            Ok(false)
        })?;
        Ok(found)
    }

    /// The newest entry.
    pub fn last(&self) -> Result<Option<Held>, String> {
        let newest = match &self.blocks {
            Some(blocks) => blocks.last().map_err(|e| e.to_string())?,
            None => None,
        };
        if let Some((_, value)) = newest {
            return Ok(decode(value.value())?.pop());
        }
        let Some((key, _)) = self.rows.last().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        self.get(key.value())
    }
}

fn beyond(to: Bound<u64>, index: u64) -> bool {
    match to {
        Bound::Included(last) => index > last,
        Bound::Excluded(end) => index >= end,
        Bound::Unbounded => false,
    }
}

/// Changes to the log inside a write transaction (a block is appended by `apply_commit`): what
/// a purge (or a test playing an attacker) does to entries already written.
impl<'t> Log<redb::Table<'t, u64, &'static [u8]>> {
    fn blocks_mut(&mut self) -> Result<&mut redb::Table<'t, u64, &'static [u8]>, String> {
        self.blocks
            .as_mut()
            .ok_or_else(|| "the store has no blocks table".to_string())
    }

    /// Deletes the payloads of the entries in `range` that `pick` chooses (`Some(true)`),
    /// until it says stop (`None`); returns their indices. A block is rewritten once, with
    /// its entries as they were.
    pub fn purge(
        &mut self,
        range: std::ops::RangeInclusive<u64>,
        mut pick: impl FnMut(&Held) -> Result<Option<bool>, String>,
    ) -> Result<Vec<u64>, String> {
        let mut removed = Vec::new();
        let mut legacy = Vec::new();
        let mut stop = false;
        for row in self.rows.range(range.clone()).map_err(|e| e.to_string())? {
            let (key, value) = row.map_err(|e| e.to_string())?;
            let held = Held {
                index: key.value(),
                stored: value.value().to_vec(),
                payload: Some(Vec::new()),
            };
            match pick(&held)? {
                None => {
                    stop = true;
                    break;
                }
                Some(true) => legacy.push(held.index),
                Some(false) => {}
            }
        }
        for index in legacy {
            if self
                .payloads
                .remove(index)
                .map_err(|e| e.to_string())?
                .is_some()
            {
                removed.push(index);
            }
        }
        if stop {
            return Ok(removed);
        }
        let mut keys = Vec::new();
        for row in self
            .blocks_mut()?
            .range(*range.start()..)
            .map_err(|e| e.to_string())?
        {
            let (key, _) = row.map_err(|e| e.to_string())?;
            keys.push(key.value());
            if key.value() >= *range.end() {
                break;
            }
        }
        for key in keys {
            let value = self.blocks_mut()?.get(key).map_err(|e| e.to_string())?;
            let mut items = decode(
                value
                    .map(|v| v.value().to_vec())
                    .unwrap_or_default()
                    .as_slice(),
            )?;
            let mut changed = false;
            for held in items.iter_mut().filter(|h| range.contains(&h.index)) {
                match pick(held)? {
                    None => {
                        stop = true;
                        break;
                    }
                    Some(true) if held.payload.is_some() => {
                        held.payload = None;
                        removed.push(held.index);
                        changed = true;
                    }
                    Some(_) => {}
                }
            }
            if changed {
                self.blocks_mut()?
                    .insert(key, encode(&items).as_slice())
                    .map_err(|e| e.to_string())?;
            }
            if stop {
                break;
            }
        }
        Ok(removed)
    }

    /// Applies `change` to entry `index` wherever it is (its row or its block): the entry,
    /// `None` when absent, is changed in place; `None` afterwards deletes it.
    #[cfg_attr(not(feature = "tamper"), allow(dead_code))] // the tests' attacker uses it
    pub fn edit(
        &mut self,
        index: u64,
        change: impl FnOnce(&mut Option<Held>),
    ) -> Result<(), String> {
        // Indices up to the last layout-1 row are that layout's; later ones are in blocks.
        let legacy = self
            .rows
            .last()
            .map_err(|e| e.to_string())?
            .is_some_and(|(k, _)| k.value() >= index);
        if legacy {
            let mut held = self.get(index)?;
            change(&mut held);
            match held {
                Some(held) => {
                    self.rows
                        .insert(index, held.stored.as_slice())
                        .map_err(|e| e.to_string())?;
                    match held.payload {
                        Some(p) => self.payloads.insert(index, p.as_slice()),
                        None => self.payloads.remove(index),
                    }
                    .map_err(|e| e.to_string())?;
                }
                None => {
                    self.rows.remove(index).map_err(|e| e.to_string())?;
                    self.payloads.remove(index).map_err(|e| e.to_string())?;
                }
            }
            return Ok(());
        }
        // The block that holds `index`, or would: the first ending at or after it, else the last.
        let blocks = self.blocks_mut()?;
        let holding = match blocks.range(index..).map_err(|e| e.to_string())?.next() {
            Some(row) => Some(row.map_err(|e| e.to_string())?.0.value()),
            None => None,
        };
        let key = match holding {
            Some(key) => Some(key),
            None => blocks
                .last()
                .map_err(|e| e.to_string())?
                .map(|(k, _)| k.value()),
        };
        let mut items = match key {
            Some(key) => {
                let value = self.blocks_mut()?.get(key).map_err(|e| e.to_string())?;
                decode(
                    value
                        .map(|v| v.value().to_vec())
                        .unwrap_or_default()
                        .as_slice(),
                )
                .unwrap_or_default()
            }
            None => Vec::new(),
        };
        let at = items.partition_point(|h| h.index < index);
        let mut held = items.get(at).filter(|h| h.index == index).cloned();
        let was = held.is_some();
        change(&mut held);
        match (was, held) {
            (true, Some(held)) => items[at] = held,
            (true, None) => {
                items.remove(at);
            }
            (false, Some(held)) => items.insert(at, held),
            (false, None) => return Ok(()),
        }
        if let Some(key) = key {
            self.blocks_mut()?.remove(key).map_err(|e| e.to_string())?;
        }
        if let Some(last) = items.last() {
            self.blocks_mut()?
                .insert(last.index, encode(&items).as_slice())
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_events::frame as event;
    use crate::{Store, VerifyOptions};
    use redb::ReadableTableMetadata;

    fn held(index: u64, payload: Option<&[u8]>) -> Held {
        Held {
            index,
            stored: vec![index as u8; 40],
            payload: payload.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn a_block_round_trips_and_damage_is_an_error() {
        let items = vec![held(7, Some(b"abc")), held(8, None), held(9, Some(b""))];
        let bytes = encode(&items);
        assert_eq!(decode(&bytes).unwrap(), items);
        // Cut anywhere but between entries, a block does not decode.
        let mut between = vec![1];
        for n in 1..=items.len() {
            between.push(encode(&items[..n]).len());
        }
        for cut in 1..bytes.len() {
            if !between.contains(&cut) {
                assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        assert!(decode(&[]).is_err());
        assert!(decode(&[1]).is_err(), "an unknown layout");
        let backwards = encode(&[held(9, None), held(8, None)]);
        assert!(decode(&backwards).unwrap_err().contains("out of order"));
    }

    /// A store written in layout 1 (two rows per entry) goes on in blocks: read, listed,
    /// verified and purged as one chain.
    #[test]
    fn a_store_in_rows_goes_on_in_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("record.key");
        let first = Store::open(&dir.path().join("first.redb"), &key).unwrap();
        first
            .append(&(1..=3).map(event).collect::<Vec<_>>())
            .unwrap();
        first
            .append(&(4..=5).map(event).collect::<Vec<_>>())
            .unwrap();
        // An export writes layout 1, as stores were written before blocks.
        let legacy = dir.path().join("record.redb");
        {
            let db = first.db();
            let tables = crate::tables::RedbTables::read(&*db).unwrap();
            assert_eq!(crate::tables::write_file(&legacy, &tables).unwrap(), 5);
        }
        // Verified offline as it is, without a blocks table (nothing creates one there).
        let offline = crate::verify_store(&legacy, VerifyOptions::default());
        assert!(offline.holds(), "{:?}", offline.problem);
        let store = Store::open(&legacy, &key).unwrap();
        {
            let db = store.db();
            let txn = redb::ReadableDatabase::begin_read(&*db).unwrap();
            let log = store.log_read(&txn).unwrap();
            assert_eq!(
                log.blocks.as_ref().unwrap().len().unwrap(),
                0,
                "written in rows"
            );
            assert_eq!(log.rows.len().unwrap(), 5);
        }
        store
            .append(&(6..=9).map(event).collect::<Vec<_>>())
            .unwrap();
        store.append(&[event(10)]).unwrap();
        assert_eq!(store.next_index(), 10);
        let all = store.entries_from(0, usize::MAX).unwrap();
        let seqs: Vec<_> = all.iter().map(|r| r.entry.seq).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        assert_eq!(all[7].payload.as_deref(), Some(&b"payload 8"[..]));
        assert_eq!(
            store.entries_from(3, 4).unwrap().len(),
            4,
            "a page across both"
        );
        assert_eq!(store.entry(8).unwrap().unwrap().entry.seq, 9);
        assert!(store.verify(VerifyOptions::default()).holds());
        {
            let db = store.db();
            let txn = redb::ReadableDatabase::begin_read(&*db).unwrap();
            assert_eq!(
                store.log_read(&txn).unwrap().blocks.unwrap().len().unwrap(),
                2
            );
        }
        // A purge deletes payloads in both layouts, and the chain still verifies.
        let txn = store.db().begin_write().unwrap();
        let removed = {
            let mut log = store.log_in(&txn).unwrap();
            log.purge(3..=7, |held| Ok(Some(held.index % 2 == 1)))
                .unwrap()
        };
        txn.commit().unwrap();
        assert_eq!(removed, [3, 5, 7]);
        let all = store.entries_from(0, usize::MAX).unwrap();
        let kept: Vec<_> = all.iter().map(|r| r.payload.is_some()).collect();
        assert_eq!(
            kept,
            [
                true, true, true, false, true, false, true, false, true, true
            ]
        );
        let report = store.verify(VerifyOptions::default());
        assert!(
            !report.holds(),
            "a purge no chained entry names is reported"
        );
        let problem = format!("{:?}", report.problem);
        assert!(problem.contains("index: 3"), "{problem}");
    }
}
