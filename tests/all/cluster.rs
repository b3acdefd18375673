//! Several gateways on one shared record: real `sluice serve` processes against a throwaway
//! PostgreSQL cluster, one chain across them, copies in and out, and tampering named.

use std::time::Duration;

use crate::postgres::{Cluster, UPSTREAM_PASSWORD};
use crate::support::{Gateway, eventually, run_command, sluice};

/// A database for a shared record, and the cluster key every node is given.
struct Shared {
    db: Cluster,
    keys: tempfile::TempDir,
}

impl Shared {
    fn start() -> Shared {
        let db = Cluster::start("scram-sha-256");
        let keys = tempfile::tempdir().unwrap();
        std::fs::write(keys.path().join("cluster.key"), "5a".repeat(32)).unwrap();
        std::fs::write(keys.path().join("connections.key"), "c3".repeat(32)).unwrap();
        Shared { db, keys }
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres:{UPSTREAM_PASSWORD}@127.0.0.1:{}/postgres",
            self.db.port
        )
    }

    fn cluster_public_key(&self) -> String {
        let key = ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32]);
        hex::encode(key.verifying_key().to_bytes())
    }

    /// `[store]` for node `node`; nodes beat every 100 ms and are gone after 800 ms.
    fn store_section(&self, node: &str) -> String {
        format!(
            "\n[store]\nkind = \"postgres\"\nurl = \"{}\"\nnode = \"{node}\"\ncluster_key = \"{}\"\nheartbeat_ms = 100\nnode_timeout_ms = 800\n",
            self.url(),
            self.keys.path().join("cluster.key").display()
        )
    }

    /// The `[gateway]` settings every node shares: the key that seals runtime connections'
    /// secrets.
    fn shared_settings(&self) -> String {
        format!(
            "connections_key = \"{}\"\n",
            self.keys.path().join("connections.key").display()
        )
    }

    fn node(&self, node: &str) -> Gateway {
        Gateway::start_full(&self.shared_settings(), &self.store_section(node), None)
    }

    /// Node `node` with a policy of its own.
    fn node_with_policy(&self, node: &str, extra: &str, policy: &str) -> Gateway {
        Gateway::start_full(
            &self.shared_settings(),
            &format!("{}{extra}", self.store_section(node)),
            Some(policy),
        )
    }

    fn count(&self, sql: &str) -> u64 {
        self.db.sql(sql).trim().parse().unwrap()
    }
}

/// `[connections.NAME]`: a bash shell, as the tests' `shell` connection is.
fn shell_connection(name: &str) -> String {
    format!(
        "\n[connections.{name}]\nkind = \"exec\"\ninteractive = [\"bash\", \"--norc\", \"-i\"]\nscript = [\"bash\", \"-s\"]\n"
    )
}

/// Starts `sluice serve` in a fresh folder with `[gateway]` lines then `rest` (tables),
/// expecting it to refuse; what it said.
pub fn serve_refuses(gateway: &str, rest: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let listen = match gateway.contains("listen =") {
        true => "",
        false => "listen = \"127.0.0.1:0\"\n",
    };
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!("[gateway]\n{listen}data_dir = \"data\"\n{gateway}{rest}"),
    )
    .unwrap();
    let (code, out, err) = run_command(sluice().arg("serve").current_dir(dir.path()), "");
    assert_ne!(code, 0, "{out}");
    err
}

fn verify_offline(args: &[&str]) -> (i32, String) {
    let (code, out, err) = run_command(sluice().arg("verify").args(args), "");
    (code, format!("{out}{err}"))
}

#[test]
fn three_gateways_append_to_one_chain_that_verifies() {
    let shared = Shared::start();
    let nodes: Vec<Gateway> = ["a", "b", "c"].iter().map(|n| shared.node(n)).collect();

    // Load on all three at once: sessions on every node, each printing what marks it.
    std::thread::scope(|scope| {
        for (n, node) in nodes.iter().enumerate() {
            for worker in 0..2 {
                scope.spawn(move || {
                    for round in 0..5 {
                        let mark = format!("mark-{n}-{worker}-{round}");
                        let (code, out, err) =
                            node.run(&["exec", "shell", "--", &format!("echo {mark}")], "");
                        assert_eq!(code, 0, "{err}");
                        assert!(out.contains(&mark), "{out}");
                    }
                });
            }
        }
    });

    // Every node lists every node's sessions: one record.
    for node in &nodes {
        let (code, listed, err) = node.run(&["sessions"], "");
        assert_eq!(code, 0, "{err}");
        assert_eq!(listed.lines().count(), 1 + 30, "{listed}");
    }
    // Every output a client saw is in the record, once.
    for n in 0..3 {
        for worker in 0..2 {
            for round in 0..5 {
                let mark = format!("mark-{n}-{worker}-{round}");
                let found = shared.count(&format!(
                    // Output frames: the payload (after its 16-byte nonce) is the line.
                    "SELECT count(*) FROM sluice.payloads p JOIN sluice.entries e USING (idx)
                     WHERE e.kind = 'frame' AND position(convert_to('{mark}\n', 'UTF8') in p.body) = 17"
                ));
                assert_eq!(found, 1, "{mark}");
            }
        }
    }
    // One chain: indices 0..n with no gap or duplicate, each node's key announced once.
    let (entries, max) = (
        shared.count("SELECT count(*) FROM sluice.entries"),
        shared.count("SELECT max(idx) FROM sluice.entries"),
    );
    assert_eq!(entries, max + 1);
    assert_eq!(
        shared.count("SELECT count(*) FROM sluice.entries WHERE kind = 'node-key'"),
        3
    );
    // Verify holds online (on any node) and offline against the database and an export, the
    // cluster key trusted for every node's heads.
    let (code, out, err) = nodes[1].run_as(Some(&nodes[1].reviewer_token), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out) = verify_offline(&[
        "--store",
        &shared.url(),
        "--public-key",
        &shared.cluster_public_key(),
    ]);
    assert_eq!(code, 0, "{out}");
    let export = shared.keys.path().join("export.redb");
    let (code, out, err) = run_command(
        sluice().args([
            "store",
            "export",
            "--from",
            &shared.url(),
            "--to",
            export.to_str().unwrap(),
        ]),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out) = verify_offline(&[
        "--store",
        export.to_str().unwrap(),
        "--public-key",
        &shared.cluster_public_key(),
    ]);
    assert_eq!(code, 0, "{out}");
    // Everything, including what the online verify recorded after the count above.
    let now = shared.count("SELECT count(*) FROM sluice.entries");
    assert!(now > entries);
    assert!(out.contains(&format!("{now} entries hold")), "{out}");
    // A key that is not the cluster's is not trusted for them.
    let (code, out) = verify_offline(&["--store", &shared.url(), "--public-key", &"11".repeat(32)]);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn tampering_with_the_database_is_named_by_verify() {
    let shared = Shared::start();
    let node = shared.node("a");
    for n in 0..3 {
        let (code, _, err) = node.run(&["exec", "shell", "--", &format!("echo {n}")], "");
        assert_eq!(code, 0, "{err}");
    }
    let key = shared.cluster_public_key();
    let verify = || verify_offline(&["--store", &shared.url(), "--public-key", &key]);
    assert_eq!(verify().0, 0, "{}", verify().1);
    let frame =
        shared.count("SELECT min(idx) FROM sluice.entries WHERE kind = 'frame' AND session <> ''");

    // An entry's content.
    shared
        .db
        .sql("CREATE TABLE kept_entries AS SELECT * FROM sluice.entries");
    shared.db.sql(&format!(
        "UPDATE sluice.entries SET stored = overlay(stored placing '\\x7e'::bytea from 12 for 1) WHERE idx = {frame}"
    ));
    let (code, out) = verify();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("entry {frame} was altered")), "{out}");
    shared.db.sql(&format!(
        "UPDATE sluice.entries e SET stored = k.stored FROM kept_entries k WHERE e.idx = k.idx AND e.idx = {frame}"
    ));
    assert_eq!(verify().0, 0, "{}", verify().1);

    // A payload, changed and then deleted.
    shared
        .db
        .sql("CREATE TABLE kept AS SELECT * FROM sluice.payloads");
    shared.db.sql(&format!(
        "UPDATE sluice.payloads SET body = body || '\\x00'::bytea WHERE idx = {frame}"
    ));
    let (code, out) = verify();
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("entry {frame} was altered: its payload")),
        "{out}"
    );
    shared
        .db
        .sql(&format!("DELETE FROM sluice.payloads WHERE idx = {frame}"));
    let (code, out) = verify();
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("the payload of entry {frame} was deleted")),
        "{out}"
    );
    shared.db.sql(&format!(
        "INSERT INTO sluice.payloads SELECT * FROM kept WHERE idx = {frame}"
    ));
    assert_eq!(verify().0, 0, "{}", verify().1);

    // A signed head: its signature no longer holds.
    let head = shared.count("SELECT min(idx) FROM sluice.checkpoints WHERE idx > 0");
    shared.db.sql(&format!(
        "UPDATE sluice.checkpoints SET head = overlay(head placing '\\x0000'::bytea from 50 for 2) WHERE idx = {head}"
    ));
    let (code, out) = verify();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("head at entry {head}")), "{out}");
}

#[test]
fn a_redb_store_copies_into_postgresql_with_its_chain_intact() {
    let shared = Shared::start();
    let mut gw = Gateway::start();
    let (code, _, err) = gw.run(&["exec", "shell", "--", "echo before-the-move"], "");
    assert_eq!(code, 0, "{err}");
    let session = gw.newest_session(&[]);
    assert_eq!(gw.stop_with("TERM"), Some(0));

    let (_, offline, _) = run_command(
        sluice().args([
            "verify",
            "--store",
            gw.store().to_str().unwrap(),
            "--print-head",
        ]),
        "",
    );
    let (code, out, err) = run_command(
        sluice()
            .current_dir(gw.dir.path())
            .args(["store", "copy", "--to", &shared.url()]),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verify holds on the copy"), "{out}");
    // Each payload row knows its session, as appended ones do (a bucket moves them by it).
    assert_eq!(
        shared.count(
            "SELECT count(*) FROM sluice.payloads p JOIN sluice.entries e USING (idx)
             WHERE p.session IS DISTINCT FROM e.session"
        ),
        0
    );
    assert!(shared.count("SELECT count(*) FROM sluice.payloads WHERE session <> ''") > 0);
    // The same head as the embedded store's.
    let head: serde_json::Value =
        serde_json::from_str(&offline[offline.find('{').unwrap()..]).unwrap();
    let index = head["index"].as_u64().unwrap();
    assert!(
        out.contains(&format!("head: entry {index} ")),
        "{out}\n{offline}"
    );
    // Copying again into a database that holds a record is refused.
    let (code, _, err) = run_command(
        sluice()
            .current_dir(gw.dir.path())
            .args(["store", "copy", "--to", &shared.url()]),
        "",
    );
    assert_ne!(code, 0);
    assert!(err.contains("already holds a record"), "{err}");

    // A gateway on the copy serves the old session and appends after it; verify holds.
    let node = shared.node("a");
    let (code, listed, err) = node.run(&["sessions"], "");
    assert_eq!(code, 0, "{err}");
    assert!(listed.contains(&session), "{listed}");
    let (code, replayed, err) = node.run(&["replay", &session, "--speed", "0"], "");
    assert_eq!(code, 0, "{err}");
    assert!(replayed.contains("before-the-move"), "{replayed}");
    let (code, out, err) = node.run_as(Some(&node.reviewer_token), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_shared_store_that_is_misconfigured_or_unreachable_stops_the_start_with_its_reason() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("k");
    let (key, url) = (key.display(), "postgres://x@127.0.0.1/db");
    let err = serve_refuses(
        "",
        &format!("[store]\nkind = \"postgres\"\ncluster_key = \"{key}\"\n"),
    );
    assert!(err.contains("needs url"), "{err}");
    let err = serve_refuses(
        "",
        &format!("[store]\nkind = \"postgres\"\nurl = \"{url}\"\n"),
    );
    assert!(err.contains("needs cluster_key"), "{err}");
    let shared_store =
        format!("[store]\nkind = \"postgres\"\nurl = \"{url}\"\ncluster_key = \"{key}\"\n");
    let err = serve_refuses("", &shared_store);
    assert!(err.contains("needs gateway.connections_key"), "{err}");
    let err = serve_refuses(
        &format!("connections_key = \"{key}\"\nlisten = \"0.0.0.0:7443\"\n"),
        &shared_store,
    );
    assert!(err.contains("[store] advertise"), "{err}");
    std::fs::write(keys.path().join("k"), "5a".repeat(32)).unwrap();
    let port = crate::postgres::free_port();
    let err = serve_refuses(
        &format!("connections_key = \"{key}\"\n"),
        &shared_store.replace(url, &format!("postgres://x:y@127.0.0.1:{port}/db")),
    );
    assert!(err.contains("PostgreSQL is unreachable"), "{err}");
    assert!(!err.contains(":y@"), "the password is never shown: {err}");

    // A payload bucket: only beside PostgreSQL, with a server-only endpoint and set keys.
    let bucket = "[store.payloads]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:9\"\nbucket = \"b\"\naccess_key_id = \"id\"\nsecret_access_key = \"secret\"\n";
    let gateway = format!("connections_key = \"{key}\"\n");
    let err = serve_refuses("", &format!("[store]\nkind = \"redb\"\n{bucket}"));
    assert!(
        err.contains("[store.payloads] is for kind = \"postgres\""),
        "{err}"
    );
    let err = serve_refuses(
        &gateway,
        &format!(
            "{shared_store}{}",
            bucket.replace("127.0.0.1:9", "127.0.0.1:9/b")
        ),
    );
    assert!(err.contains("give the server only"), "{err}");
    let err = serve_refuses(
        &gateway,
        &format!(
            "{shared_store}{}",
            bucket.replace("\"secret\"", "\"env:SLUICE_UNSET_SECRET\"")
        ),
    );
    assert!(
        err.contains("needs access_key_id and secret_access_key"),
        "{err}"
    );
    let err = serve_refuses(
        &gateway,
        &format!("{shared_store}{}", bucket.replace("\"s3\"", "\"ftp\"")),
    );
    assert!(err.contains("unknown variant `ftp`"), "{err}");
}

#[test]
fn a_node_killed_mid_session_has_its_session_closed_by_a_survivor_with_all_it_showed() {
    use std::io::BufRead;
    let shared = Shared::start();
    let survivor = shared.node("a");
    let mut doomed = shared.node("b");
    let mut client = doomed
        .cli()
        .args([
            "exec",
            "shell",
            "--",
            "echo shown-before-the-crash; sleep 60",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(client.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, "shown-before-the-crash");
    let id = doomed.live_session();
    // Admins see both nodes live, and the session node b holds.
    let nodes = |gw: &Gateway| {
        let (code, out, err) = gw.run_as(Some(&gw.reviewer_token), &["nodes"]);
        assert_eq!(code, 0, "{err}");
        out
    };
    let state_of = |listed: &str, node: &str| -> Vec<String> {
        let row = listed
            .lines()
            .find(|l| l.starts_with(&format!("{node} ")))
            .unwrap_or_else(|| panic!("no node {node}: {listed}"));
        row.split_whitespace().map(String::from).collect()
    };
    let listed = nodes(&survivor);
    assert_eq!(state_of(&listed, "a")[1..3], ["(this)", "live"], "{listed}");
    let b = state_of(&listed, "b");
    assert_eq!(
        (b[1].as_str(), b.last().unwrap().as_str()),
        ("live", "1"),
        "{listed}"
    );
    let (code, _, err) = survivor.run(&["nodes"], "");
    assert_ne!(code, 0);
    assert!(err.contains("admin"), "{err}");
    doomed.kill();
    let _ = client.wait();

    // The survivor notices the silence and closes the session, saying why.
    let closes = format!(
        "SELECT count(*) FROM sluice.entries WHERE kind = 'session-close' AND session = '{id}'
         AND position(convert_to('node b stopped (its heartbeat lapsed)', 'UTF8') in stored) > 0"
    );
    crate::support::eventually(
        "the survivor closed the dead node's session",
        std::time::Duration::from_secs(20),
        || shared.count(&closes) == 1,
    );
    let listed = nodes(&survivor);
    let b = state_of(&listed, "b");
    assert_eq!(
        (b[1].as_str(), b.last().unwrap().as_str()),
        ("gone", "0"),
        "{listed}"
    );
    // What the client saw before the crash is in the record (strict mode).
    assert_eq!(
        shared.count(&format!(
            "SELECT count(*) FROM sluice.payloads p JOIN sluice.entries e USING (idx)
             WHERE e.session = '{id}' AND e.kind = 'frame'
             AND position(convert_to('shown-before-the-crash', 'UTF8') in p.body) = 17"
        )),
        1
    );

    // The dead node starts again: nothing is closed twice, and the chain holds.
    doomed.restart();
    let (code, _, err) = doomed.run(&["exec", "shell", "--", "echo back"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        shared.count(&format!(
            "SELECT count(*) FROM sluice.entries WHERE kind = 'session-close' AND session = '{id}'"
        )),
        1
    );
    let (code, out, err) = survivor.run_as(Some(&survivor.reviewer_token), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn two_live_gateways_never_share_a_node_name() {
    let shared = Shared::start();
    let _first = shared.node("a");
    let policies = format!(
        "policies = \"{}\"\n{}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies"),
        shared.shared_settings()
    );
    let err = serve_refuses(&policies, &shared.store_section("a"));
    assert!(err.contains("node `a` is running elsewhere"), "{err}");
}

#[test]
fn a_sink_runs_once_across_the_cluster_and_moves_when_its_holder_dies() {
    use crate::sinks::{RESOLVE, Receiver, http_sink_policy, shipped, sink, sinks};
    let shared = Shared::start();
    let receiver = Receiver::start(0, Default::default());
    let policy = http_sink_policy(
        "ship",
        &format!("http://receiver.test:{}/in", receiver.port),
        &["receiver.test", "127.0.0.1"],
        "",
    );
    let mut nodes = vec![
        shared.node_with_policy("a", RESOLVE, &policy),
        shared.node_with_policy("b", RESOLVE, &policy),
    ];
    for node in &nodes {
        for n in 0..3 {
            let (code, _, err) = node.run(&["exec", "shell", "--", &format!("echo {n}")], "");
            assert_eq!(code, 0, "{err}");
        }
    }
    let total = || shared.count("SELECT count(*) FROM sluice.entries");
    let delivered = || {
        let mut indices: Vec<u64> = shipped(&receiver)
            .iter()
            .map(|e| e["index"].as_u64().unwrap())
            .collect();
        indices.sort_unstable();
        indices
    };
    crate::support::eventually(
        "every entry shipped",
        std::time::Duration::from_secs(20),
        || delivered().len() as u64 >= total(),
    );
    // Once: no entry twice, although both nodes run the sink.
    let once = delivered();
    let mut unique = once.clone();
    unique.dedup();
    assert_eq!(once, unique, "an entry was shipped twice");
    let states: Vec<String> = nodes
        .iter()
        .map(|n| {
            sink(&sinks(n), "ship")["state"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        states.iter().filter(|s| s.as_str() == "standby").count(),
        1,
        "{states:?}"
    );

    // The holder dies (SIGKILL); the other node takes the sink over and ships what follows.
    let holder = states.iter().position(|s| s != "standby").unwrap();
    let mut dead = nodes.remove(holder);
    dead.kill();
    let survivor = &nodes[0];
    let (code, _, err) = survivor.run(&["exec", "shell", "--", "echo after"], "");
    assert_eq!(code, 0, "{err}");
    crate::support::eventually(
        "the survivor ships",
        std::time::Duration::from_secs(20),
        || delivered().last().copied().unwrap_or(0) + 1 >= total(),
    );
}

#[test]
fn while_postgresql_is_down_sessions_are_refused_with_the_reason_and_recover_after() {
    let shared = Shared::start();
    let node = shared.node("a");
    let (code, _, err) = node.run(&["exec", "shell", "--", "echo before"], "");
    assert_eq!(code, 0, "{err}");

    shared.db.stop();
    // Strict recording: nothing runs unrecorded, and the client is told why.
    let (code, out, err) = node.run(&["exec", "shell", "--", "echo while-down"], "");
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("while-down"), "{out}");
    assert!(err.contains("record"), "{err}");

    shared.db.start_again();
    // No operator: the node reconnects on its own.
    crate::support::eventually(
        "sessions run again",
        std::time::Duration::from_secs(20),
        || node.run(&["exec", "shell", "--", "echo after"], "").0 == 0,
    );
    let (code, out, err) = node.run_as(Some(&node.reviewer_token), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        shared.count(
            "SELECT count(*) FROM sluice.payloads WHERE position(convert_to('while-down', 'UTF8') in body) > 0"
        ),
        0
    );
}

#[test]
fn every_node_lists_every_live_session_and_ends_one_another_node_holds() {
    let shared = Shared::start();
    let a = shared.node("a");
    let b = shared.node("b");
    let (sleeper, id) = b.sleeping_client();
    // Node a lists the session node b holds.
    let (code, listed, err) = a.run(&["sessions", "--active"], "");
    assert_eq!(code, 0, "{err}");
    let line = listed
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        line.trim_end().ends_with(" b"),
        "with the node holding it: {listed}"
    );
    // The same roles decide on every node: a user may not end it...
    let (code, _, err) = a.run(&["kill", &id], "");
    assert_eq!(code, 1);
    assert!(err.contains("needs the `admin` role on `shell`"), "{err}");
    // ...an admin on node a may, and node b ends it, with who ended it.
    let (code, out, err) = a.run_as(Some(&a.reviewer_token), &["kill", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let (status, err) = crate::support::exit_and_stderr(sleeper);
    assert_eq!(status, Some(1));
    assert!(
        err.contains("session ended: ended by dev-reviewer"),
        "{err}"
    );
    crate::support::eventually(
        "the session is no longer live anywhere",
        std::time::Duration::from_secs(10),
        || !a.run(&["sessions", "--active"], "").1.contains(&id),
    );
    assert_eq!(shared.count("SELECT count(*) FROM sluice.live"), 0);
}

#[test]
fn a_frame_held_on_one_node_waits_through_another_starting_and_is_approved_through_it() {
    use crate::reviews::{pending_review, scratch};
    let shared = Shared::start();
    let policy = "[chains]\nops = [\"shell-gate\"]\n\n[reviews.ops]\nexpire_seconds = 60\n";
    let ops = &shell_connection("ops");
    let a = shared.node_with_policy("a", ops, policy);
    let dir = scratch("held-on-a");
    let mut remove = a.cli();
    remove
        .args(["exec", "ops", "--", "rm", "-rf"])
        .arg(dir.path());
    let removing = std::thread::spawn(move || run_command(&mut remove, ""));
    let id = pending_review(&a, "rm -rf");

    // Node b starts while the frame waits on node a: it is not b's orphan. Its reviewers
    // see the review there too, and watch it change live.
    let b = shared.node_with_policy("b", ops, policy);
    assert_eq!(pending_review(&b, "rm -rf"), id);
    let mut watch = b.cli();
    let mut watch = watch
        .env("SLUICE_TOKEN", &b.reviewer_token)
        .args(["reviews", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let watched = crate::reviews::lines_of(watch.stdout.take().unwrap());
    let shows = |status: &str| {
        let (watched, id, status) = (watched.clone(), id.clone(), status.to_string());
        move || {
            let lines = watched.lock().unwrap();
            lines.iter().any(|l| l.contains(&id) && l.contains(&status))
        }
    };
    crate::support::eventually(
        "b's watch lists it",
        Duration::from_secs(20),
        shows("pending"),
    );
    let (code, shown, err) = b.run_as(Some(&b.reviewer_token), &["review", "show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        shown.contains("pending") && shown.contains("rm -rf"),
        "{shown}"
    );
    // Decided through node b, where the frame does not wait: the requester still may not
    // approve their own...
    let (code, _, err) = b.run(&["review", "approve", &id], "");
    assert_ne!(code, 0);
    assert!(
        err.contains("may not decide") || err.contains("own"),
        "{err}"
    );
    // ...a reviewer may, and the command runs on node a.
    let started = std::time::Instant::now();
    let (code, out, err) = b.run_as(Some(&b.reviewer_token), &["review", "approve", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("approved"), "{out}");
    let (code, out, err) = removing.join().unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(!dir.path().exists(), "approved, the folder is gone");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Node a decided it; node b's live stream shows the decision as it happens.
    crate::support::eventually(
        "b's watch shows it approved",
        Duration::from_secs(10),
        shows("approved"),
    );
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(
        shared.count(
            "SELECT count(*) FROM sluice.entries WHERE kind = 'review'
             AND position(convert_to('session-ended', 'UTF8') in stored) > 0"
        ),
        0
    );
    let (code, out, err) = a.run_as(Some(&a.reviewer_token), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn sigterm_drains_live_sessions_up_to_drain_ms_then_ends_the_rest() {
    let mut gw = Gateway::start_with_gateway_settings("drain_ms = 3000", "");
    let run = |script: &str| {
        let mut cmd = gw.cli();
        cmd.args(["exec", "shell", "--", script]);
        std::thread::spawn(move || run_command(&mut cmd, ""))
    };
    let short = run("sleep 1; echo finished-while-draining");
    let long = run("sleep 60");
    crate::support::eventually(
        "both sessions are live",
        std::time::Duration::from_secs(20),
        || gw.run(&["sessions", "--active"], "").1.lines().count() == 3,
    );
    let stopping = std::time::Instant::now();
    assert_eq!(gw.stop_with("TERM"), Some(0));
    let stopped_after = stopping.elapsed();
    // The short one finished on its own while the gateway drained...
    let (code, out, err) = short.join().unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("finished-while-draining"), "{out}");
    // ...the long one was ended when the drain ran out, and told why.
    let (code, _, err) = long.join().unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("the gateway is stopping"), "{err}");
    assert!(
        stopped_after >= std::time::Duration::from_secs(3),
        "{stopped_after:?}"
    );
}

#[test]
fn a_reload_and_a_runtime_connection_made_through_one_node_apply_on_every_node() {
    let shared = Shared::start();
    let a = shared.node_with_policy("a", "", "");
    let b = shared.node_with_policy("b", "", "");

    // A connection added through node a, with a secret sealed there, is served by node b.
    let file = a.dir.path().join("late.toml");
    std::fs::write(
        &file,
        "kind = \"exec\"\ninteractive = [\"bash\"]\nscript = [\"bash\", \"-s\"]\nenv = { SECRET = \"opened-on-b\" }\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, out, err) = a.run_as(
        Some(&a.reviewer_token),
        &["connections", "add", "late", path],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("node b: applied"), "{out}");
    let (code, out, err) = b.run(&["exec", "late", "--", "echo $SECRET"], "");
    assert_eq!((code, out.trim()), (0, "opened-on-b"), "{err}");

    // Removed through node b: node a serves it no more.
    let (code, out, err) = b.run_as(Some(&b.reviewer_token), &["connections", "rm", "late"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("node a: applied"), "{out}");
    let (code, _, err) = a.run(&["exec", "late", "--", "true"], "");
    assert_ne!(code, 0);
    assert!(err.contains("unknown connection `late`"), "{err}");

    // A reload through node a has node b read its own policy files again: a broken one
    // there is reported by name, and the command fails while a applied it.
    let policies = |count: &str| {
        shared.count(&format!(
            "SELECT count(*) FROM sluice.entries WHERE kind = 'policy' {count}"
        ))
    };
    let before = policies("");
    let (code, out, err) = a.run_as(Some(&a.reviewer_token), &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("node b: applied"), "{out}");
    assert_eq!(
        policies(""),
        before + 2,
        "each node records the reload it applied"
    );
    std::fs::write(b.dir.path().join("policies/test.toml"), "[chains\n").unwrap();
    let (code, out, err) = a.run_as(Some(&a.reviewer_token), &["reload"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("policy applied"), "{out}");
    assert!(
        err.contains("node b: NOT applied") && err.contains("test.toml"),
        "{err}"
    );
}

#[test]
fn an_access_request_made_through_one_node_is_decided_and_granted_through_any() {
    use crate::reviews::pending_review;
    let shared = Shared::start();
    let policy = "[reviews.jit]\naccess_grant_seconds = 60\n";
    let jit = &shell_connection("jit");
    let a = shared.node_with_policy("a", jit, policy);
    let b = shared.node_with_policy("b", jit, policy);

    // Asked through node a...
    let (code, _, err) = a.run(&["exec", "jit", "--", "echo in"], "");
    assert_ne!(code, 0);
    assert!(err.contains("access to `jit` needs approval"), "{err}");
    let id = pending_review(&a, "open sessions on `jit`");
    // ...and again through node b: the same request, not a second one.
    let (code, _, err) = b.run(&["exec", "jit", "--", "echo in"], "");
    assert_ne!(code, 0);
    assert!(err.contains(&format!("review {id} is pending")), "{err}");

    // The requester may not approve their own through the other node either; a reviewer
    // may (node a, which made it, decides).
    let (code, _, err) = b.run(&["review", "approve", &id], "");
    assert_ne!(code, 0);
    assert!(
        err.contains("may not decide") || err.contains("own"),
        "{err}"
    );
    let (code, out, err) = b.run_as(Some(&b.reviewer_token), &["review", "approve", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("approved"), "{out}");

    // Access is granted through both nodes.
    for node in [&a, &b] {
        let (code, out, err) = node.run(&["exec", "jit", "--", "echo in"], "");
        assert_eq!((code, out.trim()), (0, "in"), "{err}");
    }
    let (code, out, err) = b.run_as(Some(&b.reviewer_token), &["review", "show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("approved"), "{out}");
    let (code, out, err) = a.run_as(Some(&a.reviewer_token), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn the_shared_record_is_reached_over_verified_tls_when_its_url_names_the_ca() {
    let shared = Shared::start();
    let ca = shared.db.require_tls();
    let plain = shared.url();
    let start_fails = |url: &str| {
        let store = shared.store_section("a").replace(&plain, url);
        serve_refuses(&shared.shared_settings(), &store)
    };
    // The database takes TCP clients only over TLS: a URL without a CA is refused there.
    let err = start_fails(&plain);
    assert!(err.contains("no encryption"), "{err}");
    // A CA that did not sign the database's certificate: the handshake is refused here.
    let other = tempfile::tempdir().unwrap();
    sluice_engine::tls::load_or_create(other.path()).unwrap();
    let err = start_fails(&format!(
        "{plain}?sslrootcert={}",
        other.path().join("tls/ca.pem").display()
    ));
    assert!(err.contains("certificate"), "{err}");
    // sslmode=require names no CA: refused before connecting, saying what is missing.
    let err = start_fails(&format!("{plain}?sslmode=require"));
    assert!(err.contains("sslrootcert"), "{err}");

    // The right CA: nodes run over TLS, and verify holds over it.
    let url = format!("{plain}?sslmode=verify-full&sslrootcert={}", ca.display());
    let node = Gateway::start_full(
        &shared.shared_settings(),
        &shared.store_section("b").replace(&plain, &url),
        None,
    );
    let (code, out, err) = node.run(&["exec", "shell", "--", "echo over-tls"], "");
    assert_eq!((code, out.trim()), (0, "over-tls"), "{err}");
    let encrypted = shared.count(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE ssl AND backend_type = 'client backend' AND client_addr IS NOT NULL",
    );
    assert!(encrypted > 0, "the node's connections are TLS");
    let (code, out, err) = run_command(
        sluice()
            .args(["verify", "--store", &url, "--public-key"])
            .arg(shared.cluster_public_key()),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// `[store.payloads]` for a bucket on `s3`: small parts, looked for every 50 ms.
fn payloads_section(s3: &crate::support::S3) -> String {
    format!(
        "\n[store.payloads]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:{}\"\nbucket = \"payloads\"\n\
         access_key_id = \"sluice-test\"\nsecret_access_key = \"bucket-secret\"\nprefix = \"rec/\"\n\
         part_bytes = 4096\nmove_ms = 50\n",
        s3.port
    )
}

/// The bucket's objects, as files under the server's folder.
fn objects(s3: &crate::support::S3) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if !path.to_string_lossy().contains(".s3s") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&s3.root.path().join("payloads/rec/sessions"), &mut out);
    out.sort();
    out
}

#[test]
fn payloads_move_to_the_bucket_once_durable_and_every_reader_finds_them_there() {
    let mut s3 = crate::support::S3::start("sluice-test", "bucket-secret", &["payloads"]);
    let shared = Shared::start();
    // `brief` sessions are kept about 1.7 s, then purged by retention.
    let brief = "\n[connections.brief]\nkind = \"exec\"\ninteractive = [\"bash\", \"-i\"]\nscript = [\"bash\", \"-s\"]\nretention_days = 0.00002\n";
    let extra = |node: &str| {
        format!(
            "{brief}{}{}",
            shared.store_section(node),
            payloads_section(&s3)
        )
    };
    let a = Gateway::start_full(&shared.shared_settings(), &extra("a"), None);
    let b = Gateway::start_full(&shared.shared_settings(), &extra("b"), None);
    let unmoved = || {
        shared.count(
            "SELECT count(*) FROM sluice.payloads p JOIN sluice.entries e USING (idx)
             WHERE e.session <> '' AND p.object IS NULL",
        )
    };

    // A session that streams for a few seconds moves in parts while it is live: a part as
    // soon as 4 KiB wait.
    std::thread::scope(|scope| {
        let streaming = scope.spawn(|| {
            b.run(
                &[
                    "exec",
                    "shell",
                    "--",
                    "for i in $(seq 1 150); do printf '%0200d\\n' $i; sleep 0.02; done",
                ],
                "",
            )
        });
        eventually(
            "a live session's part moved",
            Duration::from_secs(30),
            || {
                shared.count(
                    "SELECT count(*) FROM sluice.objects o JOIN sluice.live l USING (session)
                 WHERE o.doomed_ms IS NULL",
                ) > 0
            },
        );
        let (code, out, err) = streaming.join().unwrap();
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().count(), 150, "{out}");
    });
    // A long output in one go on one node, and short ones on both.
    let (code, out, err) = a.run(&["exec", "shell", "--", "seq 1 30000; echo long-done"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("30000\nlong-done\n"), "{out}");
    for (n, node) in [&a, &b].iter().enumerate() {
        let (code, out, err) = node.run(&["exec", "shell", "--", &format!("echo short-{n}")], "");
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("short-{n}")), "{out}");
    }
    eventually(
        "every session's payloads moved",
        Duration::from_secs(30),
        || unmoved() == 0,
    );
    // Each object is one move, chained.
    let files = objects(&s3);
    let moves = shared.count("SELECT count(*) FROM sluice.entries WHERE kind = 'payload-move'");
    assert_eq!(files.len() as u64, moves);
    assert_eq!(
        shared.count("SELECT count(*) FROM sluice.objects WHERE doomed_ms IS NULL"),
        moves
    );
    assert!(
        moves >= 8,
        "{moves} moves: 30 KB streamed in 4 KiB parts, and 3 more sessions"
    );
    assert_eq!(
        shared.count(
            "SELECT count(*) FROM sluice.payloads WHERE body IS NOT NULL AND object IS NOT NULL"
        ),
        0
    );

    // Every reader finds the bytes in the bucket: a replay through the other node, the
    // online verify, the offline one (given the configuration), and an export.
    // Sessions in the order they opened: the streaming one on b, then the long one on a.
    let sessions = shared
        .db
        .sql("SELECT id FROM sluice.sessions ORDER BY first_idx LIMIT 2");
    let sessions: Vec<&str> = sessions.split_whitespace().collect();
    let replay = |node: &Gateway, id: &str| {
        let (code, replayed, err) = node.run(&["replay", id, "--speed", "0", "--output-only"], "");
        assert_eq!(code, 0, "{err}");
        replayed
    };
    let replayed = replay(&a, sessions[0]);
    assert_eq!(replayed.lines().count(), 150, "{replayed}");
    assert!(replayed.ends_with(&format!("{:0200}\n", 150)), "{replayed}");
    let replayed = replay(&b, sessions[1]);
    assert!(
        replayed.ends_with("29999\n30000\nlong-done\n"),
        "{replayed}"
    );
    let (code, out, err) = b.run_as(Some(&b.reviewer_token), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    let config = a.dir.path().join("sluice.toml");
    let key = shared.cluster_public_key();
    let verify = || {
        verify_offline(&[
            "--store",
            &shared.url(),
            "--config",
            config.to_str().unwrap(),
            "--public-key",
            &key,
        ])
    };
    assert_eq!(verify().0, 0, "{}", verify().1);
    let export = shared.keys.path().join("export.redb");
    let (code, out, err) = run_command(
        sluice().current_dir(a.dir.path()).args([
            "store",
            "export",
            "--to",
            export.to_str().unwrap(),
        ]),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out) = verify_offline(&["--store", export.to_str().unwrap(), "--public-key", &key]);
    assert_eq!(code, 0, "{out}");
    // Without the bucket, the offline verify says where the payloads are instead of guessing.
    let (code, out) = verify_offline(&["--store", &shared.url(), "--public-key", &key]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("[store.payloads]"), "{out}");
    // Given a bucket that does not exist, it says so: the payloads are not reported deleted.
    let elsewhere = shared.keys.path().join("elsewhere.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &elsewhere,
        text.replace("bucket = \"payloads\"", "bucket = \"elsewhere\""),
    )
    .unwrap();
    let (code, out) = verify_offline(&[
        "--store",
        &shared.url(),
        "--config",
        elsewhere.to_str().unwrap(),
        "--public-key",
        &key,
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("NoSuchBucket") && !out.contains("deleted"),
        "{out}"
    );

    // An object changed in the bucket, or gone from it, is named by verify.
    let object = &files[files.len() / 2];
    let kept = std::fs::read(object).unwrap();
    let mut changed = kept.clone();
    changed[20] ^= 1;
    std::fs::write(object, &changed).unwrap();
    let (code, out) = verify();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("was altered: its payload"), "{out}");
    std::fs::remove_file(object).unwrap();
    let (code, out) = verify();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("was deleted"), "{out}");
    std::fs::write(object, &kept).unwrap();
    assert_eq!(verify().0, 0, "{}", verify().1);

    // The bucket down: sessions go on (PostgreSQL holds their payloads), and the payloads
    // move once it is back.
    s3.stop();
    let (code, out, err) = b.run(
        &["exec", "shell", "--", "echo while-the-bucket-is-down"],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("while-the-bucket-is-down"), "{out}");
    assert!(unmoved() > 0);
    let newest = shared
        .db
        .sql("SELECT id FROM sluice.sessions ORDER BY first_idx DESC LIMIT 1");
    assert!(replay(&a, newest.trim()).contains("while-the-bucket-is-down"));
    s3.resume();
    eventually(
        "the waiting payloads moved",
        Duration::from_secs(30),
        || unmoved() == 0,
    );
    assert!(replay(&a, newest.trim()).contains("while-the-bucket-is-down"));

    // Retention purges a session: its objects leave the bucket, and verify still holds.
    let (code, out, err) = a.run(&["exec", "brief", "--", "echo kept-briefly"], "");
    assert_eq!(code, 0, "{out}{err}");
    eventually("the brief session moved", Duration::from_secs(30), || {
        unmoved() == 0
    });
    let before = objects(&s3).len();
    eventually(
        "the brief session is purged",
        Duration::from_secs(30),
        || {
            let (code, printed, err) = a.run_as(Some(&a.reviewer_token), &["retention"]);
            assert_eq!(code, 0, "{err}");
            printed.contains("of 1 session(s)")
        },
    );
    eventually(
        "its object is deleted from the bucket",
        Duration::from_secs(30),
        || objects(&s3).len() == before - 1,
    );
    assert_eq!(
        shared.count("SELECT count(*) FROM sluice.objects WHERE doomed_ms IS NOT NULL"),
        0
    );
    assert_eq!(verify().0, 0, "{}", verify().1);
}

#[test]
fn a_dead_nodes_pending_access_requests_are_taken_over_and_expire_on_the_survivor() {
    use crate::reviews::pending_review;
    let shared = Shared::start();
    let policy = "[reviews.jit]\naccess_grant_seconds = 60\naccess_request_seconds = 8\n";
    let jit = &shell_connection("jit");
    let survivor = shared.node_with_policy("a", jit, policy);
    let mut doomed = shared.node_with_policy("b", jit, policy);
    let (code, _, err) = doomed.run(&["exec", "jit", "--", "echo in"], "");
    assert_ne!(code, 0);
    assert!(err.contains("access to `jit` needs approval"), "{err}");
    let id = pending_review(&doomed, "open sessions on `jit`");
    doomed.kill();

    // Once b's heartbeat lapses, a answers for its request: recorded as a's, and expired
    // there when its time is up (only the node that holds a request expires it).
    let node_of = || {
        shared
            .db
            .sql(&format!(
                "SELECT convert_from(row, 'UTF8')::json->>'node' FROM sluice.reviews WHERE id = '{id}'"
            ))
            .trim()
            .to_string()
    };
    eventually("a takes the request over", Duration::from_secs(20), || {
        node_of() == "a"
    });
    eventually("the request expires on a", Duration::from_secs(20), || {
        let (code, out, err) =
            survivor.run_as(Some(&survivor.reviewer_token), &["review", "show", &id]);
        assert_eq!(code, 0, "{err}");
        out.contains("expired")
    });
    assert_eq!(
        shared.count(&format!(
            "SELECT count(*) FROM sluice.entries WHERE kind = 'review'
             AND position(convert_to('\"action\":\"adopted\"', 'UTF8') in stored) > 0
             AND position(convert_to('{id}', 'UTF8') in stored) > 0"
        )),
        1
    );
    let (code, out, err) = survivor.run_as(Some(&survivor.reviewer_token), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn an_agent_connected_to_one_node_serves_sessions_opened_through_any() {
    use crate::agents::{Agent, add_agent, agent_state, wait_for_state};
    let shared = Shared::start();
    // A program and a PostgreSQL database (the shared one will do) behind the agent; the
    // database's password is in the agent's environment only.
    let remote = |pg_port: u16| {
        format!(
            "\n[connections.remote]\nkind = \"exec\"\nagent = \"edge\"\ninteractive = [\"bash\", \"--norc\", \"-i\"]\nscript = [\"bash\", \"-s\"]\n\
             [connections.remote-pg]\nkind = \"postgres\"\nlisten = \"127.0.0.1:{pg_port}\"\nupstream = \"127.0.0.1:{}\"\nagent = \"edge\"\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"agent-env:EDGE_PG_PASSWORD\"\n\n\
             [agents]\nkeepalive_ms = 300\n",
            shared.db.port
        )
    };
    let node = |name: &str, pg_port: u16| {
        Gateway::start_full(
            &shared.shared_settings(),
            &format!("{}{}", remote(pg_port), shared.store_section(name)),
            None,
        )
    };
    let b_pg = crate::postgres::free_port();
    let (a, b) = (node("a", crate::postgres::free_port()), node("b", b_pg));

    // Enrolled through b, connected to a: both nodes know it, and where its tunnel is.
    let token = add_agent(&b, "edge");
    let state = tempfile::tempdir().unwrap();
    let _agent = Agent::start(
        None,
        &a,
        &state.path().join("edge"),
        Some(&token),
        &[("EDGE_PG_PASSWORD", UPSTREAM_PASSWORD)],
    );
    wait_for_state(&b, "edge", "connected");
    let (code, listed, err) = b.run_as(Some(&b.reviewer_token), &["agents"]);
    assert_eq!(code, 0, "{err}");
    assert!(listed.contains("connected@a"), "{listed}");

    // A session opened through b runs on a's tunnel, one-shot and interactive; b records it.
    let (code, out, err) = b.run(&["exec", "remote", "--", "echo through-$((40+2))"], "");
    assert_eq!((code, out.trim()), (0, "through-42"), "{err}");
    let (code, out, err) = b.run(&["connect", "remote"], "echo typed-$((6*7))\nexit\n");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("typed-42"), "{out}");
    let (code, out, err) =
        crate::postgres::psql(b_pg, &b.user_token, &["-t", "-c", "SELECT 40 + 2"]);
    assert_eq!((code, out.trim()), (0, "42"), "{err}");
    let (code, out, err) = b.run(&["sessions"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains("remote")).count(),
        3,
        "{out}"
    );
    let (code, out, err) = a.run(&["exec", "remote", "--", "echo here"], "");
    assert_eq!((code, out.trim()), (0, "here"), "{err}");

    // Another node's request must carry that node's signature: anyone else is refused.
    let forged = std::process::Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", "Upgrade: sluice-relay/1", "-H", "Connection: upgrade"])
        .args(["-H", "sluice-node: b", "-H", "sluice-relay-agent: edge"])
        .args(["-H", &format!("sluice-time: {}", sluice_core::now_ms())])
        .args([
            "-H",
            "sluice-relay-job: {\"path\":\"/exec\",\"headers\":[]}",
        ])
        .args(["-H", &format!("sluice-signature: {}", "00".repeat(64))])
        .arg(format!("https://{}/api/nodes/relay", a.addr))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&forged.stdout), "403");

    // Revoked through b: the tunnel a holds ends, and no node serves it any more.
    let (code, _, err) = b.run_as(Some(&b.reviewer_token), &["agents", "revoke", "edge"]);
    assert_eq!(code, 0, "{err}");
    wait_for_state(&a, "edge", "revoked");
    for node in [&a, &b] {
        let (code, _, err) = node.run(&["exec", "remote", "--", "echo no"], "");
        assert_ne!(code, 0);
        assert!(err.contains("revoked"), "{err}");
    }
    assert_eq!(agent_state(&b, "edge"), "revoked");
    let (code, out, err) = a.run_as(Some(&a.reviewer_token), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}
