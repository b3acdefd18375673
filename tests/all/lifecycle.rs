//! The gateway's life as an operator and an auditor see it: stopping by signal, coming back
//! after a crash, and verifying its record against heads kept outside it.

use sluice_record::{Store, VerifyOptions, verify_store};

use crate::support::*;

/// Starts `sleep 60` through the gateway and waits until it is live; returns the client and
/// the session's id.
fn live_session(gw: &Gateway) -> (std::process::Child, String) {
    let client = gw
        .cli()
        .args(["exec", "shell", "--", "sleep 60"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (client, gw.live_session())
}

/// The store's events of kind `kind`, read offline (the gateway stopped).
pub fn events_of_kind(gw: &Gateway, kind: &str) -> Vec<serde_json::Value> {
    let store = Store::open(&gw.store(), &gw.dir.path().join("data/record.key")).unwrap();
    store
        .entries_from(0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|r| r.entry.kind == kind)
        .map(|r| {
            let mut meta: serde_json::Value = serde_json::from_str(&r.entry.meta).unwrap();
            meta["entry_session"] = r.entry.session.clone().into();
            meta
        })
        .collect()
}

#[test]
fn sigterm_and_sigint_end_sessions_with_a_recorded_reason_and_close_the_store_cleanly() {
    for signal in ["TERM", "INT"] {
        let mut gw = Gateway::start();
        let (mut client, id) = live_session(&gw);
        assert_eq!(gw.stop_with(signal), Some(0), "SIG{signal}: exit status");
        let _ = client.wait();
        // Closed cleanly: nothing to repair.
        let report = verify_store(&gw.store(), VerifyOptions::default());
        assert!(report.holds(), "SIG{signal}: {:?}", report.problem);
        assert!(!report.repaired, "SIG{signal}: the store was left open");
        let closes = events_of_kind(&gw, "session-close");
        let close = closes
            .iter()
            .find(|c| c["entry_session"] == id.as_str())
            .unwrap();
        assert_eq!(
            close["reason"],
            format!("session ended: the gateway is stopping (SIG{signal})"),
            "SIG{signal}"
        );
        let stops = events_of_kind(&gw, "gateway-stop");
        assert_eq!(stops.len(), 1);
        assert_eq!(stops[0]["why"], format!("SIG{signal}"));
        assert_eq!(stops[0]["sessions_ended"], 1);
    }
}

#[test]
fn sessions_cut_by_a_crash_are_closed_with_a_reason_at_the_next_start() {
    let mut gw = Gateway::start();
    let (mut client, id) = live_session(&gw);
    gw.kill();
    let _ = client.wait();
    gw.restart();
    let (_, out, _) = gw.run(&["sessions", "--active"], "");
    assert_eq!(
        out.lines().count(),
        1,
        "nothing is live after a restart: {out}"
    );
    let (code, out, err) = gw.run_as(
        Some(&gw.reviewer_token.clone()),
        &["export", &id, "--format", "jsonl"],
    );
    assert_eq!(code, 0, "{err}");
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "session-close");
    assert_eq!(last["meta"]["reason"], "gateway stopped unexpectedly");
    // Listed as ended, once.
    let (_, listed, _) = gw.run(&["sessions"], "");
    assert_eq!(listed.matches(&id).count(), 1, "{listed}");
}

#[test]
fn verify_checks_the_store_against_heads_kept_outside_and_tells_a_restore_from_a_rollback() {
    let mut gw = Gateway::start();
    let auditor = gw.reviewer_token.clone();
    let (code, _, err) = gw.run(&["exec", "shell", "--", "echo first"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(gw.stop_with("TERM"), Some(0));
    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("record.redb");
    std::fs::copy(gw.store(), &backup).unwrap();

    gw.restart();
    let (code, _, err) = gw.run(&["exec", "shell", "--", "echo second"], "");
    assert_eq!(code, 0, "{err}");
    // The auditor keeps the head, and reads a session (which is recorded).
    let (code, printed, err) = gw.run_as(Some(&auditor), &["verify", "--print-head"]);
    assert_eq!(code, 0, "{err}");
    let kept = gw.dir.path().join("kept-head.txt");
    std::fs::write(&kept, &printed).unwrap();
    let (code, _, err) = gw.run(&["exec", "shell", "--", "echo third"], "");
    assert_eq!(code, 0, "{err}");
    let newest = gw.newest_session(&[]);
    let (code, _, err) = gw.run(&["replay", &newest, "--speed", "0"], "");
    assert_eq!(code, 0, "{err}");
    // Online, with the kept head: reached and matched.
    let (code, out, err) = gw.run_as(
        Some(&auditor),
        &["verify", "--head", kept.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 reached and matched"), "{out}");
    assert_eq!(gw.stop_with("TERM"), Some(0));

    let audits = events_of_kind(&gw, "audit");
    assert!(
        audits.iter().any(|a| a["action"] == "read"
            && a["session"] == newest.as_str()
            && a["form"] == "replay"
            && a["by"] == "dev-user"),
        "{audits:?}"
    );
    assert!(
        audits
            .iter()
            .any(|a| a["action"] == "verify" && a["by"] == "dev-reviewer"),
        "{audits:?}"
    );

    let store = gw.store();
    let store = store.to_str().unwrap();
    let verify = |args: &[&str]| run_command(sluice().arg("verify").args(args), "");
    // Offline without a key: it holds, and says it could only check self-consistency.
    let (code, out, _) = verify(&["--store", store]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no trusted key was given"), "{out}");
    // The old copy put back by hand is a rollback, named as one (exit 2).
    let (code, out, _) = verify(&[
        "--store",
        backup.to_str().unwrap(),
        "--head",
        kept.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("rolled back"), "{out}");
    // A recorded restore of the same copy is not.
    let (code, out, err) = run_command(
        sluice()
            .current_dir(gw.dir.path())
            .args(["store", "restore", backup.to_str().unwrap()]),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("declared abandoned"), "{out}");
    let (code, out, _) = verify(&["--store", store, "--head", kept.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("restore recorded at entry"), "{out}");
    // A key that is not the record's: exit 2, naming the key.
    let (code, out, _) = verify(&["--store", store, "--public-key", &"ab".repeat(32)]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("neither a trusted key"), "{out}");
    // The gateway starts on the restored store and goes on; restoring under it is refused.
    gw.restart();
    let (code, _, err) = gw.run(&["exec", "shell", "--", "echo after"], "");
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run_command(
        sluice()
            .current_dir(gw.dir.path())
            .args(["store", "restore", backup.to_str().unwrap()]),
        "",
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("stop the gateway"), "{err}");
    let (code, _, err) = gw.run(&["exec", "shell", "--", "echo still"], "");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_record_key_lives_where_the_operator_says_and_is_rotated_through_the_chain() {
    let keys = tempfile::tempdir().unwrap();
    let old_key = keys.path().join("old.key");
    let settings = format!("record_key = \"{}\"\n", old_key.display());
    let mut gw = Gateway::start_with_gateway_settings(&settings, "");
    assert!(old_key.exists(), "made where the config says");
    assert!(
        !gw.dir.path().join("data/record.key").exists(),
        "not beside the store"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&old_key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (code, _, err) = gw.run(&["exec", "shell", "--", "echo before"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(gw.stop_with("TERM"), Some(0));
    let old_public = {
        let seed: [u8; 32] = std::fs::read(&old_key).unwrap().try_into().unwrap();
        hex::encode(
            ed25519_dalek::SigningKey::from_bytes(&seed)
                .verifying_key()
                .to_bytes(),
        )
    };

    // The operator points the config at a new key: the gateway refuses to start with a key
    // the chain never announced...
    let new_key = keys.path().join("new.key");
    let config_path = gw.dir.path().join("sluice.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, config.replace("old.key", "new.key")).unwrap();
    let (code, _, err) = run_command(sluice().current_dir(gw.dir.path()).arg("serve"), "");
    assert_ne!(code, 0);
    assert!(err.contains("rotate-key"), "{err}");
    // ...until the old key announces it in the chain.
    let (code, out, err) = run_command(
        sluice().current_dir(gw.dir.path()).args([
            "store",
            "rotate-key",
            "--old-key",
            old_key.to_str().unwrap(),
        ]),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("announced the new record key"), "{out}");
    assert!(new_key.exists());
    gw.restart();
    let (code, _, err) = gw.run(&["exec", "shell", "--", "echo after"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(gw.stop_with("TERM"), Some(0));
    // An auditor who kept only the old public key still verifies it all, rotation included.
    let store = gw.store();
    let (code, out, _) = run_command(
        sluice().args([
            "verify",
            "--store",
            store.to_str().unwrap(),
            "--public-key",
            &old_public,
        ]),
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("key rotation at entry"), "{out}");
}
