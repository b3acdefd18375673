//! Approvals end to end: the shipped gates hold risky commands and statements, reviewers
//! decide from the CLI, and the queue keeps its word across restarts.

use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::postgres::{Cluster, psql};
use crate::support::{Gateway, run_command};

/// Static tokens: alice and bob review, carol only works.
const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789abc";

fn token_entry(token: &str, subject: &str, group: &str) -> String {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    format!("\n[[tokens]]\nsha256 = \"{hash}\"\nsubject = \"{subject}\"\ngroups = [\"{group}\"]\n")
}

/// Exec connections behind the shipped shell gate: `ops` (one approval, 30 s), `ops2` (two
/// approvals), `brief` (expires after 1 s) and `jit` (sessions need approved access, 3 s).
fn gateway() -> Gateway {
    let exec = |name: &str| {
        format!(
            "\n[connections.{name}]\nkind = \"exec\"\ninteractive = [\"bash\", \"--norc\", \"-i\"]\nscript = [\"bash\", \"-s\"]\n"
        )
    };
    let config = ["ops", "ops2", "brief", "jit"].map(exec).concat()
        + &token_entry(ALICE, "alice", "reviewers")
        + &token_entry(BOB, "bob", "reviewers");
    let policy = "[chains]\nops = [\"shell-gate\"]\nops2 = [\"shell-gate\"]\nbrief = [\"shell-gate\"]\n\n\
                  [reviews.ops]\nexpire_seconds = 30\n\n\
                  [reviews.ops2]\napprovals = 2\nexpire_seconds = 30\n\n\
                  [reviews.brief]\nexpire_seconds = 1\n\n\
                  [reviews.jit]\naccess_grant_seconds = 3\n";
    Gateway::start_with_policy(&config, Some(policy))
}

/// `sluice exec CONNECTION -- rm -rf DIR` as the dev user, in the background.
fn remove_in_background(
    gw: &Gateway,
    connection: &str,
    dir: &Path,
) -> JoinHandle<(i32, String, String)> {
    let mut cmd = gw.cli();
    cmd.args(["exec", connection, "--", "rm", "-rf"]).arg(dir);
    std::thread::spawn(move || run_command(&mut cmd, ""))
}

/// Waits for a pending review whose text contains `needle`; its id.
pub fn pending_review(gw: &Gateway, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = gw.run_as(
            Some(&gw.reviewer_token),
            &["reviews", "--status", "pending"],
        );
        assert_eq!(code, 0, "{err}");
        if let Some(line) = out.lines().find(|l| l.contains(needle)) {
            return line.split_whitespace().next().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no pending review for {needle}: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn show(gw: &Gateway, id: &str) -> String {
    let (code, out, err) = gw.run_as(Some(&gw.reviewer_token), &["review", "show", id]);
    assert_eq!(code, 0, "{err}");
    out
}

/// Waits (up to 10 s) for review `id` to end as `session-ended`, then checks that it can no
/// longer be approved.
fn ends_with_its_session(gw: &Gateway, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !show(gw, id).contains("status     session-ended") {
        assert!(Instant::now() < deadline, "{}", show(gw, id));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = gw.run_as(Some(&gw.reviewer_token), &["review", "approve", id]);
    assert_ne!(code, 0);
    assert!(err.contains("already session-ended"), "{err}");
}

pub fn scratch(name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(name).tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "x").unwrap();
    dir
}

#[test]
fn a_held_rm_runs_once_approved_and_never_when_rejected() {
    let gw = gateway();

    // Approved: it runs.
    let dir = scratch("approve");
    let waiting = remove_in_background(&gw, "ops", dir.path());
    let id = pending_review(&gw, &dir.path().display().to_string());
    assert!(dir.path().exists(), "nothing runs before the decision");
    // The requester is no reviewer; a decision needs the role.
    let (code, _, err) = gw.run(&["review", "approve", &id], "");
    assert_ne!(code, 0);
    assert!(err.contains("needs the `review` role on `ops`"), "{err}");
    let (code, out, err) = gw.run_as(
        Some(&gw.reviewer_token),
        &["review", "approve", &id, "--reason", "scratch"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("review {id} approved")), "{out}");
    let (code, _, err) = waiting.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "held for review (recursive rm of an absolute or home path): review {id}"
        )),
        "{err}"
    );
    assert!(!dir.path().exists(), "approved, the folder is gone");

    // Rejected: it does not run, and the client hears why.
    let dir = scratch("reject");
    let waiting = remove_in_background(&gw, "ops", dir.path());
    let id = pending_review(&gw, &dir.path().display().to_string());
    let (code, _, err) = gw.run_as(Some(&gw.reviewer_token), &["review", "reject", &id]);
    assert_ne!(code, 0, "a rejection needs a reason");
    assert!(err.contains("--reason"), "{err}");
    let (code, _, err) = gw.run_as(
        Some(&gw.reviewer_token),
        &["review", "reject", &id, "--reason", "not on a Friday"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = waiting.join().unwrap();
    assert_eq!(code, 126, "{err}");
    assert!(
        err.contains(&format!(
            "review {id} rejected by dev-reviewer: not on a Friday"
        )),
        "{err}"
    );
    assert!(
        dir.path().join("file").exists(),
        "rejected, the folder stays"
    );
    // Replayed, the session shows the command that was refused and the review that did it.
    let session = gw.newest_session(&[]);
    let (code, replayed, err) = gw.run(&["replay", &session, "--speed", "0"], "");
    assert_eq!(code, 0, "{err}");
    let refusal = format!("review {id} rejected by dev-reviewer: not on a Friday");
    let rm = format!("> rm -rf {}", dir.path().display());
    assert!(
        replayed.contains(&format!("{rm}  [refused: review: {refusal}]\n"))
            && replayed.contains(&format!("> {refusal}\n")),
        "{replayed}"
    );
    let shown = show(&gw, &id);
    assert!(
        shown.contains("status     rejected")
            && shown.contains("rejected   by dev-reviewer: not on a Friday"),
        "{shown}"
    );

    // A requester who gives up (Ctrl-C) takes the held command along: it can never run.
    let dir = scratch("gone");
    let mut gone = gw
        .cli()
        .args(["exec", "ops", "--", "rm", "-rf"])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let gone_id = pending_review(&gw, &dir.path().display().to_string());
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(gone.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let _ = gone.wait();
    ends_with_its_session(&gw, &gone_id);
    assert!(dir.path().join("file").exists());

    // A decided review stays decided.
    let (code, _, err) = gw.run_as(Some(&gw.reviewer_token), &["review", "approve", &id]);
    assert_ne!(code, 0);
    assert!(err.contains("already rejected"), "{err}");

    // Harmless commands pass without a review.
    let (code, out, err) = gw.run(&["exec", "ops", "--", "echo", "fine"], "");
    assert_eq!((code, out.as_str()), (0, "fine\n"), "{err}");

    // Every step is in the session's record: the held frame, the review's life, the verdict.
    let session = shown
        .lines()
        .find_map(|l| l.strip_prefix("session    "))
        .unwrap()
        .to_string();
    let (code, out, err) = gw.run_as(
        Some(&gw.reviewer_token),
        &["export", &session, "--format", "jsonl"],
    );
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "review")
        .map(|e| e["meta"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["created", "rejected"], "{events:#?}");
    let (code, out, _) = gw.run_as(Some(&gw.reviewer_token), &["verify"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn self_approval_two_approvers_and_expiry() {
    let gw = gateway();

    // alice is a reviewer, but not of her own request.
    let dir = scratch("self");
    let mut cmd = gw.cli();
    cmd.env("SLUICE_TOKEN", ALICE)
        .args(["exec", "ops", "--", "rm", "-rf"])
        .arg(dir.path());
    let waiting = std::thread::spawn(move || run_command(&mut cmd, ""));
    let id = pending_review(&gw, &dir.path().display().to_string());
    let (code, _, err) = gw.run_as(Some(ALICE), &["review", "approve", &id]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("alice requested review {id} and cannot decide it")),
        "{err}"
    );
    let (code, _, err) = gw.run_as(Some(BOB), &["review", "reject", &id, "--reason", "no"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(waiting.join().unwrap().0, 126);

    // Two approvals from distinct reviewers.
    let dir = scratch("two");
    let waiting = remove_in_background(&gw, "ops2", dir.path());
    let id = pending_review(&gw, &dir.path().display().to_string());
    let (code, out, err) = gw.run_as(Some(ALICE), &["review", "approve", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("approval 1 of 2 recorded"), "{out}");
    let (code, _, err) = gw.run_as(Some(ALICE), &["review", "approve", &id]);
    assert_ne!(code, 0);
    assert!(err.contains("alice already approved"), "{err}");
    assert!(dir.path().exists(), "one approval is not enough");
    let (code, out, err) = gw.run_as(Some(BOB), &["review", "approve", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("approved"), "{out}");
    assert_eq!(waiting.join().unwrap().0, 0);
    assert!(!dir.path().exists());

    // Nobody decides in time: refused, not run.
    let dir = scratch("expire");
    let (code, _, err) = gw.run(
        &[
            "exec",
            "brief",
            "--",
            "rm",
            "-rf",
            &dir.path().display().to_string(),
        ],
        "",
    );
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("expired: no decision within 1 s"), "{err}");
    assert!(dir.path().exists());
}

#[test]
fn reviewers_get_a_live_stream_of_reviews() {
    let gw = gateway();
    let mut curl = std::process::Command::new("curl")
        .args(["-sN", "--max-time", "20", "--cacert"])
        .arg(gw.dir.path().join("data/tls/ca.pem"))
        .args([
            "-H",
            &format!("Authorization: Bearer {}", gw.reviewer_token),
        ])
        .arg(format!("https://{}/api/reviews/events", gw.addr))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut watch = gw.cli();
    let mut watch = watch
        .env("SLUICE_TOKEN", &gw.reviewer_token)
        .args(["reviews", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stream = lines_of(curl.stdout.take().unwrap());
    let watched = lines_of(watch.stdout.take().unwrap());
    let dir = scratch("stream");
    let waiting = remove_in_background(&gw, "ops", dir.path());
    let id = pending_review(&gw, &dir.path().display().to_string());
    // Each stream shows the review pending (live, or in its first list if it connected
    // after the review was made), then its rejection.
    let shows = |lines: &Lines, status: &str| {
        let (id, status) = (id.clone(), status.to_string());
        let lines = lines.clone();
        move || {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(&id) && l.contains(&status))
        }
    };
    for lines in [&stream, &watched] {
        eventually(
            "the stream shows the review pending",
            shows(lines, "pending"),
        );
    }
    gw.run_as(
        Some(&gw.reviewer_token),
        &["review", "reject", &id, "--reason", "seen live"],
    );
    waiting.join().unwrap();
    for lines in [&stream, &watched] {
        eventually("the stream shows the rejection", shows(lines, "rejected"));
    }
    let _ = curl.kill();
    let _ = curl.wait();
    let out = stream.lock().unwrap().join("\n") + "\n";
    let events: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .filter(|r: &serde_json::Value| r["id"] == id.as_str())
        .collect();
    let statuses: Vec<_> = events
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["pending", "rejected"], "{out}");
    assert!(out.contains("event: review\n"));

    // `sluice reviews --watch` is the same stream for people: a line per change.
    let _ = watch.kill();
    let _ = watch.wait();
    let out = watched.lock().unwrap().join("\n");
    let statuses: Vec<_> = out
        .lines()
        .filter(|l| l.starts_with(&id))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(statuses, ["pending", "rejected"], "{out}");
}

/// The lines a child prints, collected as they come by a thread of their own.
pub type Lines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

pub fn lines_of(out: std::process::ChildStdout) -> Lines {
    use std::io::BufRead;
    let lines = Lines::default();
    let collected = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            collected.lock().unwrap().push(line);
        }
    });
    lines
}

fn eventually(what: &str, check: impl FnMut() -> bool) {
    crate::support::eventually(what, Duration::from_secs(20), check)
}

#[test]
fn access_requests_survive_restarts_and_held_frames_of_dead_sessions_do_not() {
    let mut gw = gateway();

    // The connection needs approved access: the first try asks for it.
    let (code, _, err) = gw.run(
        &["exec", "jit", "--reason", "incident 42", "--", "echo", "in"],
        "",
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("access to `jit` needs approval: review r-"),
        "{err}"
    );
    let access = pending_review(&gw, "open sessions on `jit`");
    assert!(show(&gw, &access).contains("reason     incident 42"));
    // Asking again does not make a second request.
    let (_, _, err) = gw.run(&["exec", "jit", "--", "echo", "in"], "");
    assert!(err.contains(&access), "{err}");

    // A held frame, then the gateway dies.
    let dir = scratch("restart");
    let waiting = remove_in_background(&gw, "ops", dir.path());
    let held = pending_review(&gw, &dir.path().display().to_string());
    gw.kill();
    let (code, _, _) = waiting.join().unwrap();
    assert_ne!(code, 0);
    gw.restart();

    // The held frame's session is gone: it says so and cannot be approved into nothing.
    assert!(show(&gw, &held).contains("status     session-ended"));
    let (code, _, err) = gw.run_as(Some(&gw.reviewer_token), &["review", "approve", &held]);
    assert_ne!(code, 0);
    assert!(err.contains("already session-ended"), "{err}");
    assert!(dir.path().exists());

    // The access request is still pending and decidable; approved, sessions open, and end
    // when the access does.
    assert!(show(&gw, &access).contains("status     pending"));
    let (code, _, err) = gw.run_as(Some(&gw.reviewer_token), &["review", "approve", &access]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = gw.run(&["exec", "jit", "--", "echo", "in"], "");
    assert_eq!((code, out.as_str()), (0, "in\n"), "{err}");
    let (code, out, err) = gw.run(
        &["exec", "jit", "--", "echo start; sleep 20; echo never"],
        "",
    );
    assert_ne!(code, 0);
    assert!(out.contains("start") && !out.contains("never"), "{out}");
    assert!(err.contains("just-in-time access to `jit` ended"), "{err}");
}

#[test]
fn psql_statements_are_gated_by_the_sql_rules() {
    let cluster = Cluster::start("scram-sha-256");
    cluster.sql("CREATE TABLE t1 (id int); CREATE TABLE t2 (id int); CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)");
    let port = crate::postgres::free_port();
    let config = format!(
        "\n[connections.db]\nkind = \"postgres\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{}\"\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"{}\"\n",
        cluster.port,
        crate::postgres::UPSTREAM_PASSWORD
    );
    let gw = Gateway::start_with_policy(
        &config,
        Some("[chains]\ndb = [\"sql-gate\", \"mask\"]\n\n[reviews.db]\nexpire_seconds = 30\n"),
    );
    let token = gw.user_token.clone();
    let in_background = |sql: &str| {
        let (token, sql) = (token.clone(), sql.to_string());
        std::thread::spawn(move || psql(port, &token, &["-c", &sql]))
    };
    let tables = || {
        cluster.sql("SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relname IN ('t', 't1', 't2')")
    };

    // DROP TABLE held, approved: the table is gone.
    let waiting = in_background("DROP TABLE t1");
    let id = pending_review(&gw, "DROP TABLE t1");
    gw.run_as(Some(&gw.reviewer_token), &["review", "approve", &id]);
    let (code, _, err) = waiting.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "NOTICE:  sluice: held for review (DROP statement): review {id}"
        )),
        "{err}"
    );
    assert_eq!(tables(), "t,t2\n");

    // Another rejected: still there, and psql shows the reviewer's reason.
    let waiting = in_background("DROP TABLE t2");
    let id = pending_review(&gw, "DROP TABLE t2");
    gw.run_as(
        Some(&gw.reviewer_token),
        &["review", "reject", &id, "--reason", "keep t2"],
    );
    let (code, _, err) = waiting.join().unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "ERROR:  sluice: refused by review: review {id} rejected by dev-reviewer: keep t2"
        )),
        "{err}"
    );
    assert_eq!(tables(), "t,t2\n");

    // The server hangs up while a statement waits (its idle timeout): the gateway notices at
    // once, ends the session with a clear error, and the review with it.
    let (code, _, err) = psql(
        port,
        &token,
        &[
            "-c",
            "SET idle_session_timeout = '1s'",
            "-c",
            "DROP TABLE t2",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("the database connection was lost"), "{err}");
    // The review ends as the session's end is recorded, just after psql is told.
    eventually("the review of DROP TABLE t2 ends with its session", || {
        let (_, ended, _) = gw.run_as(
            Some(&gw.reviewer_token),
            &["reviews", "--status", "session-ended"],
        );
        ended.contains("DROP TABLE t2")
    });
    assert_eq!(tables(), "t,t2\n");

    // The client goes away while its statement waits (psql killed): the review ends with
    // the session at once and can no longer be approved; the table stays.
    let mut gone = Command::new("psql")
        .env("PGPASSWORD", &token)
        .args(["-X", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "whoever", "-d", "postgres", "-c", "DROP TABLE t"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let gone_id = pending_review(&gw, "DROP TABLE t (");
    gone.kill().unwrap();
    let _ = gone.wait();
    ends_with_its_session(&gw, &gone_id);
    assert_eq!(tables(), "t,t2\n");

    // Tricks are caught; string literals are not statements; a DELETE with WHERE passes.
    for tricky in ["delete/**/from t", "SELECT 1; DROP TABLE t"] {
        let waiting = in_background(tricky);
        let id = pending_review(&gw, tricky);
        gw.run_as(
            Some(&gw.reviewer_token),
            &["review", "reject", &id, "--reason", "no"],
        );
        assert_ne!(waiting.join().unwrap().0, 0, "{tricky}");
    }
    assert_eq!(cluster.sql("SELECT count(*) FROM t"), "2\n");
    let (code, out, err) = psql(port, &token, &["-c", "SELECT 'drop table t'"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("drop table t") && !err.contains("held"),
        "{out}{err}"
    );
    let (code, _, err) = psql(port, &token, &["-c", "DELETE FROM t WHERE id = 1"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("held"), "{err}");
    assert_eq!(cluster.sql("SELECT count(*) FROM t"), "1\n");
}

/// A decision whose durable write fails changes nothing anyone sees: the review stays
/// pending in memory and in the store, its waiter is not told, and a retry can still win.
#[test]
fn a_decision_that_cannot_be_recorded_changes_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use sluice_core::frame::Identity;
    use sluice_engine::policy::RoleGroups;
    use sluice_engine::review::{Kind, Reviews, Status};
    use sluice_engine::roles::Roles;
    use sluice_record::{Recorder, Store};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open(
                &dir.path().join("record.redb"),
                &dir.path().join("record.key"),
            )
            .unwrap(),
        );
        // The record's writer, with a switch that makes every commit fail (a full disk).
        let failing = Arc::new(AtomicBool::new(false));
        let (queue, mut rx) = tokio::sync::mpsc::channel::<(
            sluice_record::Queued,
            Option<tokio::sync::oneshot::Sender<Result<u64, String>>>,
        )>(64);
        let (writer_store, switch) = (store.clone(), failing.clone());
        tokio::spawn(async move {
            while let Some((queued, ack)) = rx.recv().await {
                let events = queued.into_events();
                let result = if switch.load(Ordering::SeqCst) {
                    Err("the disk is full".to_string())
                } else {
                    let store = writer_store.clone();
                    tokio::task::spawn_blocking(move || store.append(&events))
                        .await
                        .unwrap()
                        .map(|indices| indices[indices.len() - 1])
                        .map_err(|e| e.to_string())
                };
                if let Some(ack) = ack {
                    let _ = ack.send(result);
                }
            }
        });
        let recorder = Recorder::from_queue(queue);
        let reviewers = RoleGroups {
            review: Some(vec!["reviewers".into()]),
            ..RoleGroups::default()
        };
        let roles = Arc::new(Roles::new(
            [("default".to_string(), reviewers)].into(),
            recorder.clone(),
        ));
        let reviews = Reviews::open(
            store.clone(),
            recorder,
            Default::default(),
            roles,
            Duration::from_secs(60),
            Default::default(),
        )
        .await
        .unwrap();
        let dev = Identity {
            subject: "dev".into(),
            name: None,
            groups: vec!["developers".into()],
        };
        let reviewer = Identity {
            subject: "rita".into(),
            name: None,
            groups: vec!["reviewers".into()],
        };
        let mut pending = reviews
            .request(
                Kind::Frame,
                &dev,
                "shell",
                Some("s-1"),
                "rm -rf /".into(),
                "risky".into(),
            )
            .await
            .unwrap();
        let id = pending.id().to_string();

        failing.store(true, Ordering::SeqCst);
        let refused = reviews
            .decide(&id, &reviewer, true, None)
            .await
            .unwrap_err();
        assert_eq!(refused.status, 500, "{}", refused.message);
        assert!(
            refused.message.contains("the disk is full"),
            "{}",
            refused.message
        );
        assert_eq!(reviews.get(&id).unwrap().status, Status::Pending);
        assert_eq!(
            pending.review().status,
            Status::Pending,
            "the waiter was told"
        );
        let stored: Vec<serde_json::Value> = store
            .reviews()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_slice(b).unwrap())
            .collect();
        assert_eq!(stored[0]["status"], "pending");

        // The disk has room again: the same decision goes through, and the waiter hears it.
        failing.store(false, Ordering::SeqCst);
        let approved = reviews.decide(&id, &reviewer, true, None).await.unwrap();
        assert_eq!(approved.status, Status::Approved);
        assert_eq!(pending.decided().await.status, Status::Approved);
        drop(pending);
        // What was recorded verifies, the row against its chained state included.
        let report = store.verify(sluice_record::VerifyOptions::default());
        assert!(report.holds(), "{:?}", report.problem);
    });
}
