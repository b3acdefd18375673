//! The record: appends, reads back, and `verify` naming exactly what was done to a copy of
//! the store, changed past every check through the record's `tamper` support.

use std::path::{Path, PathBuf};

use sluice_record::tamper::{Log, Rows, Tamper};
use sluice_record::{
    Anchor, NewEvent, Problem, SignedHead, Store, Trust, VerifyOptions, verify_store,
};

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

/// Opens a copy of the store and lets `change` do its worst.
fn tampered(dir: &Path, original: &Path, change: impl FnOnce(&Tamper)) -> PathBuf {
    let copy = dir.join(format!(
        "copy-{}.redb",
        std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos()
    ));
    std::fs::copy(original, &copy).unwrap();
    sluice_record::tamper::tamper(&copy, change).unwrap();
    copy
}

/// Verify trusting `key`, the way an auditor who kept the gateway's public key does.
fn trusting(key: [u8; 32]) -> VerifyOptions {
    VerifyOptions {
        trusted_keys: vec![key],
        ..VerifyOptions::default()
    }
}

fn problem(path: &Path, key: [u8; 32]) -> Problem {
    verify_store(path, trusting(key))
        .problem
        .expect("verify must fail")
}

/// A head kept outside the gateway (what `--print-head` printed, or a sink received).
fn anchor(head: SignedHead) -> Anchor {
    Anchor {
        head,
        source: "the auditor's copy".into(),
        trusted: true,
    }
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

    let report = store.verify(VerifyOptions::default());
    assert!(report.holds(), "{:?}", report.problem);
    assert_eq!(report.entries, 11);
    assert_eq!(
        report.trust,
        Trust::Anchored,
        "the live store trusts its own key"
    );
}

#[test]
fn an_untouched_store_verifies_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let report = verify_store(&path, trusting(key));
    assert!(report.holds(), "{:?}", report.problem);
    assert_eq!(report.trust, Trust::Anchored);
    assert!(report.head.unwrap().signature_holds());
    // Without a key from outside, it can only say the store agrees with itself.
    let report = verify_store(&path, VerifyOptions::default());
    assert!(report.holds(), "{:?}", report.problem);
    assert_eq!(report.trust, Trust::SelfConsistent);
}

#[test]
fn a_changed_payload_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let copy = tampered(dir.path(), &path, |store| {
        let mut stored = store.get(Log::Payloads, 1).unwrap();
        *stored.last_mut().unwrap() ^= 1;
        store.put(Log::Payloads, 1, &stored);
    });
    assert_eq!(problem(&copy, key), Problem::PayloadAltered { index: 1 });
}

#[test]
fn a_changed_entry_is_named_whether_or_not_its_hash_was_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let copy = tampered(dir.path(), &path, |store| {
        let (mut entry, hash) = store.entry(4);
        entry.meta = r#"{"dir":"in"}"#.into();
        store.put_entry(4, &entry, &hash);
    });
    assert!(matches!(
        problem(&copy, key),
        Problem::Altered { index: 4, .. }
    ));

    // A forger who also recomputes the entry's hash is caught by the next link.
    let copy = tampered(dir.path(), &path, |store| {
        let (mut entry, _) = store.entry(4);
        entry.meta = r#"{"dir":"in"}"#.into();
        store.put_entry(4, &entry, &entry.hash());
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
    let copy = tampered(dir.path(), &path, |store| store.remove(Log::Entries, 5));
    assert_eq!(problem(&copy, key), Problem::Removed { index: 5 });
}

#[test]
fn swapped_entries_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let copy = tampered(dir.path(), &path, |store| {
        let a = store.get(Log::Entries, 2).unwrap();
        let b = store.get(Log::Entries, 3).unwrap();
        store.put(Log::Entries, 2, &b);
        store.put(Log::Entries, 3, &a);
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
    let copy = tampered(dir.path(), &path, |store| {
        store.remove(Log::Entries, 10);
        store.remove(Log::Entries, 9);
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
fn a_deleted_payload_is_named_unless_a_recorded_purge_lists_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    let copy = tampered(dir.path(), &path, |store| store.remove(Log::Payloads, 1));
    assert_eq!(problem(&copy, key), Problem::PayloadRemoved { index: 1 });
}

#[test]
fn a_chain_signed_by_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = recorded(dir.path());
    let report = verify_store(&path, trusting([9; 32]));
    assert!(
        matches!(report.problem, Some(Problem::UntrustedKey { .. })),
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
        let report = verify_store(&copy, trusting(key));
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
    use sluice_record::RetentionRules;
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
    // Rows of the reviews table are checked against the review's last chained state.
    let pending = r#"{"status":"pending","created_ms":1000,"expires_ms":1500}"#;
    store
        .append(&[NewEvent {
            kind: "review".into(),
            meta: format!(r#"{{"review":"r-pending","state":{pending}}}"#),
            payload: Vec::new(),
            // Still pending: newer than any retention here.
            time_ms: 100_000,
            ..event("", 0, "review", "")
        }])
        .unwrap();
    store.put_review("r-pending", pending.as_bytes()).unwrap();
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
    let early = store.purge(&rules, 2_400, &live, "test").unwrap();
    assert!(early.is_empty(), "{early:?}");
    assert_eq!(early.entry, None, "nothing purged, nothing recorded");
    let purged = store.purge(&rules, 2_560, &live, "test").unwrap();
    assert_eq!(purged.sessions, ["old", "crashed"]);
    assert_eq!(purged.reviews, ["r-old"]);
    // The old session's three entries, the crashed one's (5) and the decision (6); the open
    // session is kept.
    assert_eq!(purged.ranges, [(0, 2), (5, 6)]);
    assert_eq!(
        store
            .purge(&rules, 9_000, &live, "test")
            .unwrap()
            .payloads(),
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
    let report = store.verify(VerifyOptions::default());
    assert!(report.holds(), "{:?}", report.problem);
    assert_eq!(report.purged_ranges(), [(0, 2), (5, 6)]);
    // The purge is in the chain, committed with its deletions, listing them.
    let recorded = store.entry(purged.entry.unwrap()).unwrap().unwrap();
    assert_eq!(recorded.entry.kind, "retention");
    let meta: serde_json::Value = serde_json::from_str(&recorded.entry.meta).unwrap();
    assert_eq!(meta["ranges"], serde_json::json!([[0, 2], [5, 6]]));
    // The store goes on after the swap.
    store
        .append(&[event("new", 0, "session-open", "")])
        .unwrap();
    assert!(store.verify(VerifyOptions::default()).holds());
}

/// A store in its own folder (with its witness file), its key, and the head after each
/// commit: what an auditor could have printed or a sink received along the way.
fn recorded_with_heads(dir: &Path) -> (PathBuf, Vec<SignedHead>) {
    let path = dir.join("record.redb");
    let store = Store::open(&path, &dir.join("record.key")).unwrap();
    let mut heads = Vec::new();
    for i in 0..6 {
        store
            .append(&[event(
                "s",
                i,
                if i == 0 { "session-open" } else { "frame" },
                "x",
            )])
            .unwrap();
        heads.push(store.head().unwrap().unwrap());
    }
    (path, heads)
}

fn copy_to(from: &Path, dir: &Path) -> PathBuf {
    let to = dir.join("record.redb");
    std::fs::copy(from, &to).unwrap();
    to
}

#[test]
fn an_older_copy_of_the_store_is_caught_by_any_head_kept_outside() {
    let dir = tempfile::tempdir().unwrap();
    let (path, heads) = recorded_with_heads(dir.path());
    let key = heads[0].public_key;
    // The store as it was after its third commit, then grown on: the old copy is a rollback.
    let old = tempfile::tempdir().unwrap();
    {
        let early = tempfile::tempdir().unwrap();
        let store = Store::open(
            &early.path().join("record.redb"),
            &dir.path().join("record.key"),
        )
        .unwrap();
        for i in 0..3 {
            store
                .append(&[event(
                    "s",
                    i,
                    if i == 0 { "session-open" } else { "frame" },
                    "x",
                )])
                .unwrap();
        }
        drop(store);
        copy_to(&early.path().join("record.redb"), old.path());
    }
    // On its own the old copy is a perfectly consistent record, signed by the right key...
    let rolled_back = old.path().join("record.redb");
    assert!(verify_store(&rolled_back, trusting(key)).holds());
    // ...but not once the auditor gives the head they kept (or a sink received).
    let options = VerifyOptions {
        anchors: vec![anchor(heads[5].clone())],
        ..VerifyOptions::default()
    };
    let report = verify_store(&rolled_back, options);
    assert!(
        matches!(
            &report.problem,
            Some(Problem::RolledBack {
                last: Some(2),
                anchored: 5,
                ..
            })
        ),
        "{:?}",
        report.problem
    );
    // The anchored head is also the trusted key: the copy's own key was not needed.
    assert!(
        verify_store(
            &path,
            VerifyOptions {
                anchors: vec![anchor(heads[5].clone())],
                ..VerifyOptions::default()
            }
        )
        .holds()
    );
}

#[test]
fn cutting_the_tail_at_a_commit_and_restoring_its_head_is_caught_by_a_kept_head_or_the_witness() {
    let dir = tempfile::tempdir().unwrap();
    let (path, heads) = recorded_with_heads(dir.path());
    let key = heads[0].public_key;
    // What an attacker with redb and write access does: delete entries 4 and 5 with their
    // payloads and checkpoints, and put commit 3's signed head back as the store's head.
    let cut = tampered(dir.path(), &path, |store| {
        for index in [4, 5] {
            store.remove(Log::Entries, index);
            store.remove(Log::Payloads, index);
            store.remove(Log::Checkpoints, index);
        }
        store.set_head(&store.checkpoint(3).unwrap());
        // The index too, or verify names its row.
        let row = String::from_utf8(store.row(Rows::Sessions, "s").unwrap())
            .unwrap()
            .replace("\"last_index\":5", "\"last_index\":3");
        store.put_row(Rows::Sessions, "s", row.as_bytes());
    });
    // In a folder without the gateway's witness, the key alone cannot tell...
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = copy_to(&cut, elsewhere.path());
    let alone = verify_store(&moved, trusting(key));
    assert!(alone.holds(), "{:?}", alone.problem);
    // ...a head kept outside can, and names what is missing.
    let report = verify_store(
        &moved,
        VerifyOptions {
            anchors: vec![anchor(heads[4].clone())],
            ..trusting(key)
        },
    );
    let problem = report.problem.expect("a rollback");
    assert!(
        problem.to_string().contains("entries 4-4 are missing"),
        "{problem}"
    );
    // Beside the store, the witness file (rewritten at every commit) catches it too.
    assert!(matches!(
        problem_beside(&cut, key),
        Problem::RolledBack {
            last: Some(3),
            anchored: 5,
            ..
        }
    ),);
}

fn problem_beside(path: &Path, key: [u8; 32]) -> Problem {
    verify_store(path, trusting(key))
        .problem
        .expect("verify must fail")
}

#[test]
fn a_fork_after_a_kept_head_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, heads) = recorded_with_heads(dir.path());
    // A copy of the store that went on differently from entry 4 (a backup put back by hand,
    // then used), signed with the gateway's own key.
    let other = tempfile::tempdir().unwrap();
    let fork = copy_to(&path, other.path());
    let forked = tampered(other.path(), &fork, |store| {
        for index in [4, 5] {
            store.remove(Log::Entries, index);
            store.remove(Log::Checkpoints, index);
        }
        store.set_head(&store.checkpoint(3).unwrap());
    });
    let store = Store::open(&forked, &dir.path().join("record.key")).unwrap();
    store
        .append(&[
            event("s", 4, "frame", "something else"),
            event("s", 5, "frame", "y"),
        ])
        .unwrap();
    drop(store);
    let report = verify_store(
        &forked,
        VerifyOptions {
            anchors: vec![anchor(heads[4].clone())],
            ..VerifyOptions::default()
        },
    );
    assert!(
        matches!(&report.problem, Some(Problem::Forked { index: 4, .. })),
        "{:?}",
        report.problem
    );
}

#[test]
fn a_chain_rewritten_and_re_signed_with_a_new_key_fails_with_the_kept_key_only() {
    use ed25519_dalek::SigningKey;
    let dir = tempfile::tempdir().unwrap();
    let (path, heads) = recorded_with_heads(dir.path());
    let key = heads[0].public_key;
    // Whoever can write the store rewrites entry 2's payload and recomputes everything after
    // it, signing every checkpoint with a key of their own.
    let forger = SigningKey::from_bytes(&[42; 32]);
    let resigned = tampered(dir.path(), &path, |store| {
        let mut prev = [0u8; 32];
        for index in 0..6u64 {
            let (mut entry, _) = store.entry(index);
            entry.prev_hash = prev;
            let payload: &[u8] = if index == 2 { b"forged" } else { b"x" };
            entry.payload_digest = store.put_payload(index, payload);
            let hash = entry.hash();
            store.put_entry(index, &entry, &hash);
            let head = sluice_record::tamper::sign(&forger, index, hash);
            store.put_checkpoint(&head);
            if index == 5 {
                store.set_head(&head);
            }
            prev = hash;
        }
    });
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = copy_to(&resigned, elsewhere.path());
    // Consistent with itself, and verify says that is all it could check...
    let report = verify_store(&moved, VerifyOptions::default());
    assert!(report.holds(), "{:?}", report.problem);
    assert_eq!(report.trust, Trust::SelfConsistent);
    // ...while the auditor's copy of the key refuses it.
    assert_eq!(
        problem(&moved, key),
        Problem::UntrustedKey {
            key: forger.verifying_key().to_bytes()
        }
    );
}

#[test]
fn a_rotated_key_is_followed_from_either_end_and_a_changed_key_is_refused_at_open() {
    use ed25519_dalek::SigningKey;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("record.redb");
    let old = SigningKey::from_bytes(&[1; 32]);
    let new = SigningKey::from_bytes(&[2; 32]);
    let store = Store::open_signed(&path, old.clone()).unwrap();
    store.append(&[event("s", 0, "session-open", "")]).unwrap();
    let at = store.rotate_key(new.clone()).unwrap();
    store.append(&[event("s", 1, "frame", "after")]).unwrap();
    assert_eq!(store.public_key(), new.verifying_key().to_bytes());
    drop(store);
    for trusted in [&old, &new] {
        let report = verify_store(&path, trusting(trusted.verifying_key().to_bytes()));
        assert!(report.holds(), "{:?}", report.problem);
        assert_eq!(report.rotations, [at]);
        assert_eq!(report.trust, Trust::Anchored);
    }
    // The store now opens only with the announced key.
    let refused = Store::open_signed(&path, old.clone()).unwrap_err();
    assert!(refused.to_string().contains("rotate-key"), "{refused}");
    Store::open_signed(&path, new.clone()).unwrap();

    // A key nobody announced (the store re-keyed by hand) is refused by verify.
    let other = tempfile::tempdir().unwrap();
    let copy = copy_to(&path, other.path());
    let changed = tampered(other.path(), &copy, |store| {
        let (mut entry, _) = store.entry(at);
        entry.meta = entry.meta.replace(
            &hex::encode(new.verifying_key().to_bytes()),
            &"33".repeat(32),
        );
        store.put_entry(at, &entry, &entry.hash());
    });
    assert!(!verify_store(&changed, trusting(old.verifying_key().to_bytes())).holds());
}

#[test]
fn a_recorded_restore_is_told_from_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("record.key");
    let path = dir.path().join("record.redb");
    let store = Store::open(&path, &key_file).unwrap();
    store.append(&[event("s", 0, "session-open", "")]).unwrap();
    store.append(&[event("s", 1, "frame", "a")]).unwrap();
    drop(store);
    let backups = tempfile::tempdir().unwrap();
    let backup = copy_to(&path, backups.path());
    let store = Store::open(&path, &key_file).unwrap();
    for i in 2..5 {
        store.append(&[event("s", i, "frame", "later")]).unwrap();
    }
    let kept = store.head().unwrap().unwrap();
    drop(store);
    let signer = ed25519_dalek::SigningKey::from_bytes(
        &std::fs::read(&key_file).unwrap().try_into().unwrap(),
    );
    let restored = sluice_record::restore(&path, &backup, signer, "ops@test").unwrap();
    assert_eq!(restored.restored_to, Some(1));
    assert_eq!(restored.skipped, Some((2, 4)));
    assert_eq!(restored.entry, 5);
    assert!(
        restored.replaced_moved_to.unwrap().exists(),
        "the replaced store is kept"
    );
    let report = verify_store(
        &path,
        VerifyOptions {
            anchors: vec![anchor(kept.clone())],
            ..VerifyOptions::default()
        },
    );
    assert!(report.holds(), "{:?}", report.problem);
    assert_eq!(report.gaps.len(), 1);
    assert_eq!(
        (
            report.gaps[0].from,
            report.gaps[0].to,
            report.gaps[0].kind.as_str()
        ),
        (2, 4, "restore")
    );
    assert!(
        report.notes.iter().any(|n| n.contains("entry 4")),
        "{:?}",
        report.notes
    );
    // The gateway goes on after the restore, past the abandoned indices.
    let store = Store::open(&path, &key_file).unwrap();
    assert_eq!(
        store.append(&[event("t", 0, "session-open", "")]).unwrap(),
        [6]
    );

    // Putting the backup back by hand, unrecorded, is a rollback.
    let by_hand = tempfile::tempdir().unwrap();
    let copy = copy_to(&backup, by_hand.path());
    let report = verify_store(
        &copy,
        VerifyOptions {
            anchors: vec![anchor(kept)],
            ..VerifyOptions::default()
        },
    );
    assert!(
        matches!(report.problem, Some(Problem::RolledBack { .. })),
        "{:?}",
        report.problem
    );
}

#[test]
fn commits_the_store_lost_are_declared_at_open_and_verify_fails_unless_the_loss_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("record.key");
    let path = dir.path().join("record.redb");
    let store = Store::open(&path, &key_file).unwrap();
    store.append(&[event("s", 0, "session-open", "")]).unwrap();
    drop(store);
    let before = tempfile::tempdir().unwrap();
    let older = copy_to(&path, before.path());
    let store = Store::open(&path, &key_file).unwrap();
    store
        .append(&[event("s", 1, "frame", "seen by the client")])
        .unwrap();
    store.append(&[event("s", 2, "frame", "and this")]).unwrap();
    drop(store);
    // What redb's repair does when the last commits' pages are damaged: the file comes back
    // as it was some commits ago; and the journal that would bring them back is lost too. The
    // witness beside it still has the newest head.
    std::fs::copy(&older, &path).unwrap();
    std::fs::remove_file(path.with_extension("journal")).unwrap();
    let rolled = verify_store(&path, VerifyOptions::default());
    assert!(
        matches!(
            rolled.problem,
            Some(Problem::RolledBack {
                last: Some(0),
                anchored: 2,
                ..
            })
        ),
        "{:?}",
        rolled.problem
    );
    let accepted = verify_store(
        &path,
        VerifyOptions {
            accept_loss: true,
            ..VerifyOptions::default()
        },
    );
    assert!(accepted.holds(), "{:?}", accepted.problem);
    assert!(
        accepted.notes.iter().any(|n| n.contains("entries 1-2")),
        "{:?}",
        accepted.notes
    );

    // The gateway opening it declares the loss in the chain and goes on after it.
    let store = Store::open(&path, &key_file).unwrap();
    assert_eq!(store.next_index(), 4, "indices 1-2 are never given again");
    drop(store);
    let report = verify_store(&path, VerifyOptions::default());
    assert_eq!(
        report.problem,
        Some(Problem::Lost {
            from: 1,
            to: 2,
            at: 3
        })
    );
    let report = verify_store(
        &path,
        VerifyOptions {
            accept_loss: true,
            ..VerifyOptions::default()
        },
    );
    assert!(report.holds(), "{:?}", report.problem);
}

#[test]
fn edited_rows_beside_the_chain_are_named_and_never_decide_access() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = recorded(dir.path());
    // The sessions index claims s1 was bob's: verify names the row, and the store still
    // answers with the subject from s1's opening entry.
    let forged = tampered(dir.path(), &path, |store| {
        let row = String::from_utf8(store.row(Rows::Sessions, "s1").unwrap())
            .unwrap()
            .replace("\"alice\"", "\"bob\"");
        store.put_row(Rows::Sessions, "s1", row.as_bytes());
    });
    match problem(&forged, key) {
        Problem::IndexForged {
            table: "sessions",
            key,
            why,
        } => {
            assert_eq!(key, "s1");
            assert!(why.contains("subject is \"bob\""), "{why}");
        }
        other => panic!("{other:?}"),
    }
    let other = tempfile::tempdir().unwrap();
    let store = Store::open(
        &copy_to(&forged, other.path()),
        &dir.path().join("record.key"),
    )
    .unwrap();
    assert_eq!(store.session("s1").unwrap().unwrap().subject, "alice");
    assert!(
        store
            .sessions()
            .unwrap()
            .iter()
            .all(|s| s.subject == "alice")
    );
    drop(store);

    // A row pointing the session at another session's entries is refused, not served.
    let pointed = tampered(dir.path(), &path, |store| {
        let row = String::from_utf8(store.row(Rows::Sessions, "s1").unwrap())
            .unwrap()
            .replace("\"first_index\":0", "\"first_index\":2");
        store.put_row(Rows::Sessions, "s1", row.as_bytes());
    });
    let other = tempfile::tempdir().unwrap();
    let store = Store::open(
        &copy_to(&pointed, other.path()),
        &dir.path().join("record.key"),
    )
    .unwrap();
    assert!(store.session("s1").is_err());
    drop(store);

    // A review row no chained event backs, and a sink cursor past the chain.
    let review = tampered(dir.path(), &path, |store| {
        store.put_row(
            Rows::Reviews,
            "r-forged",
            br#"{"status":"approved","kind":"access"}"#,
        )
    });
    assert!(matches!(
        problem(&review, key),
        Problem::IndexForged {
            table: "reviews",
            ..
        }
    ));
    let cursor = tampered(dir.path(), &path, |store| store.set_sink_cursor("siem", 99));
    assert!(matches!(
        problem(&cursor, key),
        Problem::IndexForged {
            table: "sink cursors",
            ..
        }
    ));
}

#[test]
fn a_damaged_store_gives_errors_not_panics_to_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = recorded(dir.path());
    let original = std::fs::read(&path).unwrap();
    let key_file = dir.path().join("record.key");
    for i in 0..48 {
        let offset = original.len() * i / 48;
        let mut bytes = original.clone();
        bytes[offset] ^= 0xff;
        let other = tempfile::tempdir().unwrap();
        let copy = other.path().join("record.redb");
        std::fs::write(&copy, &bytes).unwrap();
        // Whatever the flip did, each call returns: Ok or an error with a message.
        if let Ok(store) = Store::open(&copy, &key_file) {
            let _ = store.sessions();
            let _ = store.session_events("s1");
            let _ = store.entries_from(0, 100);
            let _ = store.verify(VerifyOptions::default());
            let _ = store.append(&[event("s9", 0, "session-open", "")]);
        }
    }
}

#[test]
fn a_sessions_index_written_before_first_inputs_were_indexed_is_brought_up_to_date_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key_file) = (
        dir.path().join("record.redb"),
        dir.path().join("record.key"),
    );
    let store = Store::open(&path, &key_file).unwrap();
    let refused = NewEvent {
        meta: r#"{"content":"statement","dir":"in","outcome":"deny","reason":"gate"}"#.into(),
        ..event("s1", 1, "frame", "DROP TABLE t")
    };
    store
        .append(&[
            event("s1", 0, "session-open", ""),
            refused,
            event("s1", 2, "frame", "out"),
        ])
        .unwrap();
    let summary = store.session("s1").unwrap().unwrap();
    assert_eq!((summary.first_input_at, summary.refused), (Some(1), 1));
    let key = store.public_key();
    drop(store);

    // The store as an older version left it: rows without the new fields, no index version.
    sluice_record::tamper::tamper(&path, |t| {
        let row = t.row(Rows::Sessions, "s1").unwrap();
        let mut row: serde_json::Value = serde_json::from_slice(&row).unwrap();
        row.as_object_mut()
            .unwrap()
            .retain(|k, _| k != "first_input_at" && k != "refused");
        t.put_row(Rows::Sessions, "s1", row.to_string().as_bytes());
        t.remove_row(Rows::Meta, "sessions-index-version");
    })
    .unwrap();
    assert!(
        !verify_store(&path, trusting(key)).holds(),
        "the old index differs from what this version derives"
    );
    let reopened = Store::open(&path, &key_file).unwrap();
    let summary = reopened.session("s1").unwrap().unwrap();
    assert_eq!((summary.first_input_at, summary.refused), (Some(1), 1));
    drop(reopened);
    assert!(verify_store(&path, trusting(key)).holds());
}

#[test]
fn runtime_connection_rows_are_stored_replaced_and_removed_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = (
        dir.path().join("record.redb"),
        dir.path().join("record.key"),
    );
    let store = Store::open(&path, &key).unwrap();
    store.put_connection("pg2", Some(b"one")).unwrap();
    store.put_connection("pg2", Some(b"two")).unwrap();
    store.put_connection("shell2", Some(b"three")).unwrap();
    store.put_connection("shell2", None).unwrap();
    drop(store);
    let store = Store::open(&path, &key).unwrap();
    assert_eq!(
        store.connections().unwrap(),
        vec![("pg2".to_string(), b"two".to_vec())]
    );
}
