//! The record: appends, reads back, and `verify` naming exactly what was done to a copy of
//! the store through redb's own API.

use std::path::{Path, PathBuf};

use redb::{ReadableTable, TableDefinition};
use sluice::record::{Entry, NewEvent, Problem, Store, verify_store};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");

fn event(session: &str, seq: u64, kind: &str, payload: &str) -> NewEvent {
    let meta = match kind {
        "session-open" => r#"{"subject":"alice","connection":"shell","client":"127.0.0.1"}"#,
        "session-close" => r#"{"exit_status":3}"#,
        _ => r#"{"dir":"out"}"#,
    };
    NewEvent {
        session: session.into(),
        seq,
        kind: kind.into(),
        time_ms: 1_000 + seq,
        meta: meta.into(),
        payload: payload.as_bytes().to_vec(),
    }
}

/// A store with two sessions of several commits, closed so a copy can be opened.
fn recorded(dir: &Path) -> (PathBuf, [u8; 32]) {
    let path = dir.join("record.redb");
    let store = Store::open(&path, &dir.join("record.key")).unwrap();
    store
        .append(&[
            event("s1", 0, "session-open", ""),
            event("s1", 1, "frame", "hello"),
        ])
        .unwrap();
    store
        .append(&[
            event("s2", 0, "session-open", ""),
            event("s1", 2, "frame", "world"),
        ])
        .unwrap();
    for i in 0..5 {
        store
            .append(&[event("s2", i + 1, "frame", &format!("line {i}"))])
            .unwrap();
    }
    store
        .append(&[
            event("s1", 3, "session-close", ""),
            event("s2", 6, "session-close", ""),
        ])
        .unwrap();
    let key = store.public_key();
    (path, key)
}

/// Opens a copy of the store with redb and lets `change` do its worst.
fn tampered(dir: &Path, original: &Path, change: impl FnOnce(&redb::WriteTransaction)) -> PathBuf {
    let copy = dir.join(format!(
        "copy-{}.redb",
        std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos()
    ));
    std::fs::copy(original, &copy).unwrap();
    let db = redb::Database::open(&copy).unwrap();
    let txn = db.begin_write().unwrap();
    change(&txn);
    txn.commit().unwrap();
    copy
}

fn problem(path: &Path, key: [u8; 32]) -> Problem {
    verify_store(path, Some(key))
        .problem
        .expect("verify must fail")
}

fn read_entry(txn: &redb::WriteTransaction, index: u64) -> (Entry, Vec<u8>) {
    let table = txn.open_table(ENTRIES).unwrap();
    let value = table.get(index).unwrap().unwrap().value().to_vec();
    let (encoded, hash) = value.split_at(value.len() - 32);
    (Entry::decode(encoded).unwrap(), hash.to_vec())
}

fn write_entry(txn: &redb::WriteTransaction, index: u64, entry: &Entry, hash: &[u8]) {
    let mut table = txn.open_table(ENTRIES).unwrap();
    let value = [entry.encode(), hash.to_vec()].concat();
    table.insert(index, value.as_slice()).unwrap();
}

#[test]
fn appended_events_read_back_in_order_with_session_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let store = Store::open(&path, &dir.path().join("record.key")).unwrap();
    let events = store.session_events("s1").unwrap();
    let payloads: Vec<_> = events
        .iter()
        .map(|e| String::from_utf8(e.payload.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(payloads, ["", "hello", "world", ""]);
    assert_eq!(
        events.iter().map(|e| e.entry.seq).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );

    let sessions = store.sessions().unwrap();
    let s1 = sessions.iter().find(|s| s.id == "s1").unwrap();
    assert_eq!(
        (s1.subject.as_str(), s1.connection.as_str(), s1.exit_status),
        ("alice", "shell", Some(3))
    );
    assert_eq!(store.head().unwrap().unwrap().index, 10);
    assert_eq!(store.public_key(), key);

    let report = store.verify();
    assert!(report.holds(), "{:?}", report.problem);
    assert_eq!(report.entries, 11);
}

#[test]
fn an_untouched_store_verifies_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let report = verify_store(&path, Some(key));
    assert!(report.holds(), "{:?}", report.problem);
    assert!(report.head.unwrap().signature_holds());
}

#[test]
fn a_changed_payload_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let copy = tampered(dir.path(), &path, |txn| {
        let mut payloads = txn.open_table(PAYLOADS).unwrap();
        let mut stored = payloads.get(1).unwrap().unwrap().value().to_vec();
        *stored.last_mut().unwrap() ^= 1;
        payloads.insert(1, stored.as_slice()).unwrap();
    });
    assert_eq!(problem(&copy, key), Problem::PayloadAltered { index: 1 });
}

#[test]
fn a_changed_entry_is_named_whether_or_not_its_hash_was_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let copy = tampered(dir.path(), &path, |txn| {
        let (mut entry, hash) = read_entry(txn, 4);
        entry.meta = r#"{"dir":"in"}"#.into();
        write_entry(txn, 4, &entry, &hash);
    });
    assert!(matches!(
        problem(&copy, key),
        Problem::Altered { index: 4, .. }
    ));

    // A forger who also recomputes the entry's hash is caught by the next link.
    let copy = tampered(dir.path(), &path, |txn| {
        let (mut entry, _) = read_entry(txn, 4);
        entry.meta = r#"{"dir":"in"}"#.into();
        write_entry(txn, 4, &entry, &entry.hash());
    });
    assert!(matches!(
        problem(&copy, key),
        Problem::Altered { index: 4, .. }
    ));
}

#[test]
fn a_deleted_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let copy = tampered(dir.path(), &path, |txn| {
        txn.open_table(ENTRIES).unwrap().remove(5).unwrap();
    });
    assert_eq!(problem(&copy, key), Problem::Removed { index: 5 });
}

#[test]
fn swapped_entries_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let copy = tampered(dir.path(), &path, |txn| {
        let mut table = txn.open_table(ENTRIES).unwrap();
        let a = table.get(2).unwrap().unwrap().value().to_vec();
        let b = table.get(3).unwrap().unwrap().value().to_vec();
        table.insert(2, b.as_slice()).unwrap();
        table.insert(3, a.as_slice()).unwrap();
    });
    assert_eq!(
        problem(&copy, key),
        Problem::Reordered { index: 2, holds: 3 }
    );
}

#[test]
fn cutting_off_the_newest_entries_is_detected_by_the_signed_head() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let copy = tampered(dir.path(), &path, |txn| {
        let mut entries = txn.open_table(ENTRIES).unwrap();
        entries.remove(10).unwrap();
        entries.remove(9).unwrap();
    });
    assert_eq!(
        problem(&copy, key),
        Problem::Truncated {
            last: Some(8),
            signed: 10
        }
    );
}

#[test]
fn a_purged_payload_is_reported_as_purged_not_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let copy = tampered(dir.path(), &path, |txn| {
        txn.open_table(PAYLOADS).unwrap().remove(1).unwrap();
    });
    let report = verify_store(&copy, Some(key));
    assert!(report.holds(), "{:?}", report.problem);
    assert_eq!(report.purged, [1]);
}

#[test]
fn a_chain_re_signed_with_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = recorded(dir.path());
    let report = verify_store(&path, Some([9; 32]));
    assert!(
        matches!(report.problem, Some(Problem::BadCheckpoint { .. })),
        "{:?}",
        report.problem
    );
}

#[test]
fn raw_byte_flips_anywhere_give_a_clear_answer_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let original = std::fs::read(&path).unwrap();
    let mut detected = 0;
    for i in 0..64 {
        let offset = original.len() * i / 64;
        let mut bytes = original.clone();
        bytes[offset] ^= 0xff;
        let copy = dir.path().join(format!("flip-{i}.redb"));
        std::fs::write(&copy, &bytes).unwrap();
        let report = verify_store(&copy, Some(key));
        if let Some(problem) = report.problem {
            detected += 1;
            assert!(!problem.to_string().is_empty());
        }
    }
    // Most of a small store's file is free space or padding; some flips must land in data.
    assert!(detected > 0, "no flip was detected");
}

#[test]
fn retention_purges_ended_sessions_and_old_decisions_only_and_the_chain_still_verifies() {
    use sluice::record::RetentionRules;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record.redb");
    // What a compaction cut short by a crash leaves behind is removed at open.
    let leftover = dir.path().join("record.redb.compacting");
    std::fs::write(&leftover, b"half a copy").unwrap();
    let store = Store::open(&path, &dir.path().join("record.key")).unwrap();
    assert!(!leftover.exists());
    let close = |session: &str, seq| NewEvent {
        time_ms: 2_000,
        ..event(session, seq, "session-close", "")
    };
    store
        .append(&[
            event("old", 0, "session-open", ""),
            event("old", 1, "frame", "old secret"),
            close("old", 2),
            event("open", 0, "session-open", ""),
            event("open", 1, "frame", "still running"),
        ])
        .unwrap();
    store
        .append(&[NewEvent {
            time_ms: 2_000,
            ..event("crashed", 0, "session-open", "")
        }])
        .unwrap();
    // An access request's decision: the gateway's own event, and its state in the queue.
    let decision = NewEvent {
        session: String::new(),
        seq: 0,
        kind: "review".into(),
        time_ms: 2_050,
        meta: "{}".into(),
        payload: b"access to shell".to_vec(),
    };
    store.append(&[decision]).unwrap();
    store
        .put_review(
            "r-old",
            br#"{"status":"rejected","created_ms":1000,"expires_ms":2050}"#,
        )
        .unwrap();
    store
        .put_review(
            "r-pending",
            br#"{"status":"pending","created_ms":1000,"expires_ms":1500}"#,
        )
        .unwrap();
    // `open` is live: never purged however old. `crashed` never closed and is not live: its
    // last entry counts as its end.
    let live = ["open".to_string()].into();
    let rules = RetentionRules {
        sessions: [("shell".to_string(), Duration::from_millis(500))].into(),
        reviews: Some(Duration::from_millis(500)),
    };
    let before = std::fs::read(&path).unwrap();
    assert!(before.windows(10).any(|w| w == b"old secret"));
    // Not yet: the session ended at 2000 and the decision was made at 2050, kept 500 ms.
    let early = store.purge(&rules, 2_400, &live).unwrap();
    assert!(early.is_empty(), "{early:?}");
    let purged = store.purge(&rules, 2_560, &live).unwrap();
    assert_eq!(purged.sessions, ["old", "crashed"]);
    assert_eq!(purged.reviews, ["r-old"]);
    // The old session's three entries, the crashed one's (5) and the decision (6); the open
    // session is kept.
    assert_eq!(purged.ranges, [(0, 2), (5, 6)]);
    assert_eq!(
        store.purge(&rules, 9_000, &live).unwrap().payloads(),
        0,
        "purged twice"
    );
    assert!(
        store
            .session_events("old")
            .unwrap()
            .iter()
            .all(|e| e.payload.is_none())
    );
    assert!(
        store
            .session_events("open")
            .unwrap()
            .iter()
            .all(|e| e.payload.is_some())
    );
    assert_eq!(store.reviews().unwrap().len(), 1);

    store.compact().unwrap();
    let after = std::fs::read(&path).unwrap();
    assert!(
        !after.windows(10).any(|w| w == b"old secret"),
        "left in the file"
    );
    assert!(after.windows(13).any(|w| w == b"still running"));
    let report = store.verify();
    assert!(report.holds(), "{:?}", report.problem);
    assert_eq!(report.purged_ranges(), [(0, 2), (5, 6)]);
    // The store goes on after the swap.
    store
        .append(&[event("new", 0, "session-open", "")])
        .unwrap();
    assert!(store.verify().holds());
}
