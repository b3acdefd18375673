//! Agents, with the separation they are for built by the test: a network namespace whose
//! only link is a veth pair to the gateway's side, a PostgreSQL cluster and a shell that only
//! exist inside it, and `sluice agent` running there, dialing out.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::postgres::{Cluster, UPSTREAM_PASSWORD, free_port, psql};
use crate::support::*;

/// A network namespace joined to this one by a veth pair (`host_ip` here, `inner_ip` there);
/// deleted when dropped.
pub struct Netns {
    pub name: String,
    pub host_ip: String,
    pub inner_ip: String,
    veth: String,
}

fn ip(args: &[&str]) {
    let (code, _, err) = run_command(Command::new("ip").args(args), "");
    assert_eq!(
        code,
        0,
        "ip {}: {err} (network namespaces need root and iproute2)",
        args.join(" ")
    );
}

impl Netns {
    pub fn new() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{n}", std::process::id() % 100_000);
        let subnet = (std::process::id() + n * 7) % 250 + 1;
        let netns = Netns {
            name: format!("sluice-t{id}"),
            host_ip: format!("10.231.{subnet}.1"),
            inner_ip: format!("10.231.{subnet}.2"),
            veth: format!("slh{id}"),
        };
        let peer = format!("sln{id}");
        ip(&["netns", "add", &netns.name]);
        ip(&[
            "link",
            "add",
            &netns.veth,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &netns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", netns.host_ip),
            "dev",
            &netns.veth,
        ]);
        ip(&["link", "set", &netns.veth, "up"]);
        let inside = |args: &[&str]| ip(&[&["netns", "exec", &netns.name, "ip"], args].concat());
        inside(&[
            "addr",
            "add",
            &format!("{}/24", netns.inner_ip),
            "dev",
            &peer,
        ]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        netns
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .stderr(Stdio::null())
            .status();
    }
}

/// A running `sluice agent`; killed when dropped.
pub struct Agent {
    child: Child,
    pub log: std::path::PathBuf,
}

impl Agent {
    /// `sluice agent` in `netns` (or here), with its state in `state`, dialing `gateway`.
    pub fn start(
        netns: Option<&Netns>,
        gateway: &Gateway,
        state: &std::path::Path,
        token: Option<&str>,
        env: &[(&str, &str)],
    ) -> Agent {
        let sluice = env!("CARGO_BIN_EXE_sluice");
        let mut command = match netns {
            Some(ns) => ns.command(sluice),
            None => Command::new(sluice),
        };
        let log = state.with_extension("log");
        command
            .args(["agent", "--gateway", &gateway.addr, "--ca"])
            .arg(gateway.dir.path().join("data/tls/ca.pem"))
            .arg("--state")
            .arg(state)
            .args([
                "--keepalive-ms",
                "300",
                "--retry-min-ms",
                "50",
                "--retry-max-ms",
                "400",
            ])
            .env_remove("SLUICE_AGENT_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(token) = token {
            command.env("SLUICE_AGENT_TOKEN", token);
        }
        Agent {
            child: command.spawn().unwrap(),
            log,
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the agent to exit by itself; its exit code.
    pub fn exits_within(&mut self, limit: Duration) -> Option<i32> {
        let mut code = None;
        eventually("the agent exits", limit, || {
            code = self
                .child
                .try_wait()
                .unwrap()
                .map(|s| s.code().unwrap_or(-1));
            code.is_some()
        });
        code
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `sluice agents add NAME` as an admin: the enrollment token.
pub fn add_agent(gateway: &Gateway, name: &str) -> String {
    let (code, out, err) = gateway.run_as(Some(&gateway.reviewer_token), &["agents", "add", name]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .find(|l| l.starts_with("sluice-enroll-"))
        .unwrap_or_else(|| panic!("no token printed: {out}"))
        .to_string()
}

/// The agent's state as `sluice agents --json` lists it.
pub fn agent_state(gateway: &Gateway, name: &str) -> String {
    let (_, out, _) = gateway.run_as(Some(&gateway.reviewer_token), &["agents", "--json"]);
    let agents: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    agents
        .iter()
        .find(|a| a["name"] == name)
        .and_then(|a| a["state"].as_str())
        .unwrap_or("none")
        .to_string()
}

pub fn wait_for_state(gateway: &Gateway, name: &str, state: &str) {
    eventually(
        &format!("agent `{name}` is {state}"),
        Duration::from_secs(20),
        || agent_state(gateway, name) == state,
    );
}

/// The `session-close` event's reason of session `id`.
fn close_reason(gateway: &Gateway, id: &str) -> String {
    let (_, exported, _) = gateway.run_as(
        Some(&gateway.reviewer_token),
        &["export", id, "--format", "jsonl"],
    );
    exported
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["kind"] == "session-close")
        .map(|e| e["meta"]["reason"].to_string())
        .unwrap_or_default()
}

#[test]
fn an_agent_carries_sessions_into_a_network_only_it_can_reach() {
    let netns = Netns::new();
    let cluster = Cluster::start_in("scram-sha-256", Some(&netns.name));
    let listen = std::net::TcpListener::bind((netns.host_ip.as_str(), 0)).unwrap();
    let gateway_port = listen.local_addr().unwrap().port();
    drop(listen);
    let (remote_pg, direct_pg) = (free_port(), free_port());
    let secret = "the-agents-own-secret-7f3a";
    let settings = format!(
        "listen = \"{}:{gateway_port}\"\ntls_names = [\"{}\"]",
        netns.host_ip, netns.host_ip
    );
    let connections = format!(
        "[connections.remote-pg]\nkind = \"postgres\"\nlisten = \"127.0.0.1:{remote_pg}\"\nupstream = \"127.0.0.1:{port}\"\nagent = \"edge\"\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"agent-env:EDGE_PG_PASSWORD\"\n\
         [connections.direct-pg]\nkind = \"postgres\"\nlisten = \"127.0.0.1:{direct_pg}\"\nupstream = \"127.0.0.1:{port}\"\ndatabase = \"postgres\"\nuser = \"postgres\"\n\
         [connections.remote-shell]\nkind = \"exec\"\nagent = \"edge\"\ninteractive = [\"bash\", \"--norc\", \"-i\"]\nscript = [\"bash\", \"-s\"]\nenv = {{ SECRET = \"agent-env:EDGE_SECRET\", PS1 = \"$ \" }}\n\
         [agents]\nkeepalive_ms = 300\n",
        port = cluster.port
    );
    let policy = "[chains]\nremote-pg = [\"sql-gate\", \"mask\"]\ndirect-pg = [\"mask\"]\nremote-shell = [\"shell-gate\", \"mask\"]\n";
    let mut gateway = Gateway::start_full(&settings, &connections, Some(policy));
    let token = &gateway.user_token.clone();

    // Before any agent: the connection fails at once, naming its agent.
    let (code, _, err) = gateway.run(&["exec", "remote-shell", "--", "true"], "");
    assert_ne!(code, 0);
    assert!(err.contains("`edge`: unknown"), "{err}");

    let state = tempfile::tempdir().unwrap();
    let enroll = add_agent(&gateway, "edge");
    let mut agent = Agent::start(
        Some(&netns),
        &gateway,
        &state.path().join("edge"),
        Some(&enroll),
        &[
            ("EDGE_SECRET", secret),
            ("EDGE_PG_PASSWORD", UPSTREAM_PASSWORD),
        ],
    );
    wait_for_state(&gateway, "edge", "connected");

    // The gateway alone cannot reach the database: it lives in the namespace.
    let (code, _, err) = psql(direct_pg, token, &["-t", "-c", "SELECT 1"]);
    assert_ne!(
        code, 0,
        "the gateway reached the namespace's database by itself"
    );
    assert!(err.contains("cannot reach"), "{err}");

    // Through the agent: rows masked by the gateway's chain, statements gated.
    let (code, out, err) = psql(
        remote_pg,
        token,
        &["-t", "-c", "SELECT card FROM customers WHERE id = 1"],
    );
    assert_eq!((code, out.trim()), (0, "**** **** **** 4242"), "{err}");
    // A cancel request reaches the backend through the agent too.
    crate::postgres::cancel_reaches_the_backend(&cluster, remote_pg, token);
    let (code, _, err) = psql(remote_pg, token, &["-c", "DROP TABLE customers"]);
    assert_ne!(code, 0, "a DROP went through without review");
    assert!(err.contains("review"), "{err}");
    assert_eq!(cluster.sql("SELECT count(*) FROM customers").trim(), "2");

    // A program on the agent's host, with a value only the agent holds.
    let (code, out, err) = gateway.run(
        &[
            "exec",
            "remote-shell",
            "--",
            "ip netns identify $$; echo secret has ${#SECRET} characters; echo CUST mail alice@example.com",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("{}\n", netns.name)), "{out}");
    assert!(
        out.contains(&format!("secret has {} characters", secret.len())),
        "{out}"
    );
    assert!(
        out.contains("[MASKED:email]"),
        "masked as for a direct connection: {out}"
    );
    let shell_session = gateway.newest_session(&["--connection", "remote-shell"]);
    let (code, exported, _) = gateway.run_as(
        Some(&gateway.reviewer_token),
        &["export", &shell_session, "--format", "jsonl"],
    );
    assert_eq!(code, 0);
    let recorded: Vec<u8> = exported
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| e["payload_hex"].as_str().and_then(|h| hex::decode(h).ok()))
        .flatten()
        .collect();
    let recorded = String::from_utf8_lossy(&recorded);
    assert!(
        recorded.contains("secret has"),
        "the session is recorded: {recorded}"
    );
    assert!(!recorded.contains("alice@example.com"), "{recorded}");

    // The terminal's echo mode crosses the tunnel: a password typed at a prompt on the
    // agent's host stays out of the record, as on a direct connection.
    crate::sessions::password_prompt_input_is_recorded_redacted(&gateway, "remote-shell");

    // Killing the agent mid-session ends the session with a recorded reason.
    let mut connect = gateway
        .cli()
        .args(["connect", "remote-shell"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let live = gateway.live_session();
    agent.kill();
    let mut ended = None;
    eventually(
        "the session ends with its agent",
        Duration::from_secs(20),
        || {
            ended = connect.try_wait().unwrap();
            ended.is_some()
        },
    );
    drop(connect.stdin.take());
    eventually("the end is recorded", Duration::from_secs(20), || {
        close_reason(&gateway, &live).contains("agent `edge`")
    });
    wait_for_state(&gateway, "edge", "disconnected");

    // Restarted (no token: it enrolled once), it reconnects; so it does after the gateway
    // restarts, by itself.
    let mut agent = Agent::start(
        Some(&netns),
        &gateway,
        &state.path().join("edge"),
        None,
        &[
            ("EDGE_SECRET", secret),
            ("EDGE_PG_PASSWORD", UPSTREAM_PASSWORD),
        ],
    );
    wait_for_state(&gateway, "edge", "connected");
    gateway.kill();
    gateway.restart();
    wait_for_state(&gateway, "edge", "connected");
    let (code, out, err) = gateway.run(&["exec", "remote-shell", "--", "echo back"], "");
    assert_eq!((code, out.as_str()), (0, "back\n"), "{err}");

    // The agent's secrets (a program's and the database's password) never reached the
    // gateway: not its configuration, its record or anything else in its data folder.
    let mut leaked = Vec::new();
    for entry in walk(gateway.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        for value in [secret, UPSTREAM_PASSWORD] {
            if bytes.windows(value.len()).any(|w| w == value.as_bytes()) {
                leaked.push((value, entry.clone()));
            }
        }
    }
    assert!(leaked.is_empty(), "the agent's secrets are in {leaked:?}");
    // The database sign-in by the agent works after the restarts too, cancel keys included.
    let (code, out, err) = psql(remote_pg, token, &["-t", "-c", "SELECT 6 * 7"]);
    assert_eq!((code, out.trim()), (0, "42"), "{err}");

    // Revoked: its connection ends, it is refused from then on, and it stops trying.
    let (code, _, err) =
        gateway.run_as(Some(&gateway.reviewer_token), &["agents", "revoke", "edge"]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(agent.exits_within(Duration::from_secs(20)), Some(0));
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(log.contains("revoked"), "{log}");
    let (code, _, err) = gateway.run(&["exec", "remote-shell", "--", "true"], "");
    assert_ne!(code, 0);
    assert!(err.contains("`edge`: revoked"), "{err}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn enrollment_tokens_work_once_and_a_pool_outlives_one_of_its_agents() {
    let connections = "[connections.pooled]\nkind = \"exec\"\nagent = [\"a\", \"b\"]\ninteractive = [\"bash\", \"--norc\", \"-i\"]\nscript = [\"bash\", \"-s\"]\n\
         [connections.mallorys]\nkind = \"exec\"\nagent = \"mallory\"\ninteractive = [\"bash\"]\nscript = [\"bash\", \"-s\"]\n\
         [agents]\nkeepalive_ms = 300\nenroll_ttl_seconds = 1\n";
    let mut gateway = Gateway::start_with(connections);
    let state = tempfile::tempdir().unwrap();
    let refused = |token: &str, dir: &str| {
        let mut agent = Agent::start(None, &gateway, &state.path().join(dir), Some(token), &[]);
        assert_ne!(agent.exits_within(Duration::from_secs(20)), Some(0));
        std::fs::read_to_string(&agent.log).unwrap()
    };

    let token_a = add_agent(&gateway, "a");
    let _a = Agent::start(None, &gateway, &state.path().join("a"), Some(&token_a), &[]);
    wait_for_state(&gateway, "a", "connected");
    // Used once: refused to anyone after.
    assert!(refused(&token_a, "thief").contains("used already"));
    // Revoked before use.
    let token_r = add_agent(&gateway, "r");
    let (code, _, _) = gateway.run_as(Some(&gateway.reviewer_token), &["agents", "revoke", "r"]);
    assert_eq!(code, 0);
    assert!(refused(&token_r, "r").contains("revoked"));
    // Expired: a token is good for a second here.
    let token_x = add_agent(&gateway, "x");
    let (_, listed, _) = gateway.run_as(Some(&gateway.reviewer_token), &["agents", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let expires_ms = listed
        .iter()
        .find(|a| a["name"] == "x")
        .and_then(|a| a["token_expires_ms"].as_u64())
        .expect("an invited agent's token expiry is listed");
    eventually("the token's expiry passes", Duration::from_secs(20), || {
        sluice_core::now_ms() > expires_ms
    });
    assert!(refused(&token_x, "x").contains("expired"));
    // Unknown.
    assert!(refused("sluice-enroll-00", "y").contains("unknown enrollment token"));

    // Two agents serve the pool; one goes, new sessions go to the other.
    let token_b = add_agent(&gateway, "b");
    let mut b = Agent::start(None, &gateway, &state.path().join("b"), Some(&token_b), &[]);
    wait_for_state(&gateway, "b", "connected");
    for _ in 0..3 {
        let (code, out, err) = gateway.run(&["exec", "pooled", "--", "echo pooled"], "");
        assert_eq!((code, out.as_str()), (0, "pooled\n"), "{err}");
    }
    b.kill();
    wait_for_state(&gateway, "b", "disconnected");
    let (code, out, err) = gateway.run(&["exec", "pooled", "--", "echo still"], "");
    assert_eq!((code, out.as_str()), (0, "still\n"), "{err}");

    // A double that speaks the protocol: enrolled as `mallory`, it cannot connect as `a`,
    // and its malformed and oversized frames end its own connection only.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let token_m = add_agent(&gateway, "mallory");
    runtime.block_on(async {
        use ed25519_dalek::Signer;
        use sluice_engine::agent::tunnel;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ca = gateway.dir.path().join("data/tls/ca.pem");
        let client = sluice_cli::client::Client::new(&gateway.addr, None, Some(ca)).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let enrollment = serde_json::json!({
            "token": token_m,
            "public_key": hex::encode(key.verifying_key().as_bytes()),
        });
        let answer = client
            .post_json(tunnel::ENROLL_PATH, enrollment.to_string().into_bytes())
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&answer).contains("mallory"));
        let connect = |name: &'static str| {
            let client = client.clone();
            let key = key.clone();
            async move {
                let (headers, mut io) = client
                    .upgrade(
                        "GET",
                        tunnel::CONNECT_PATH,
                        tunnel::PROTOCOL,
                        &[(tunnel::AGENT_HEADER, name)],
                    )
                    .await
                    .unwrap();
                let challenge =
                    hex::decode(headers[tunnel::CHALLENGE_HEADER].to_str().unwrap()).unwrap();
                let signature = key.sign(&tunnel::signed(name, &challenge));
                io.write_all(&signature.to_bytes()).await.unwrap();
                let mut answer = [0u8; 1];
                io.read_exact(&mut answer).await.unwrap();
                (answer[0], io)
            }
        };
        // As `a`, signed with mallory's key: refused.
        let (answer, mut io) = connect("a").await;
        assert_eq!(answer, tunnel::REFUSED);
        let mut rest = Vec::new();
        let _ = io.read_to_end(&mut rest).await;
        assert!(
            String::from_utf8_lossy(&rest).contains("does not verify"),
            "{rest:?}"
        );
        // As itself: accepted; then garbage instead of HTTP/2, and an oversized frame.
        for bytes in [
            b"this is not HTTP/2 at all, not even close".to_vec(),
            [&[0xff, 0xff, 0xff, 0x00, 0x00, 0, 0, 0, 0][..], &[0u8; 64]].concat(),
        ] {
            let (answer, mut io) = connect("mallory").await;
            assert_eq!(answer, tunnel::ACCEPTED);
            let _ = io.write_all(&bytes).await;
            let mut sink = Vec::new();
            let ended = tokio::time::timeout(Duration::from_secs(20), io.read_to_end(&mut sink));
            assert!(
                ended.await.is_ok(),
                "the gateway kept a malformed connection"
            );
        }
        // Well-formed HTTP/2, then a malformed message inside a session's stream: the
        // session fails and the gateway cuts the whole connection.
        let (answer, io) = connect("mallory").await;
        assert_eq!(answer, tunnel::ACCEPTED);
        let mut served = h2::server::handshake(io).await.unwrap();
        let mut exec = gateway.cli();
        exec.args(["exec", "mallorys", "--", "true"]);
        let session = tokio::task::spawn_blocking(move || exec.output().unwrap());
        let (_request, mut respond) =
            tokio::time::timeout(Duration::from_secs(20), served.accept())
                .await
                .expect("the gateway opened no stream")
                .unwrap()
                .unwrap();
        let response = http::Response::builder().status(200).body(()).unwrap();
        let mut send = respond.send_response(response, false).unwrap();
        send.send_data(bytes::Bytes::from_static(&[99, 0, 0, 0, 0]), false)
            .unwrap();
        let cut = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(next) = served.accept().await {
                if next.is_err() {
                    break;
                }
            }
        });
        assert!(cut.await.is_ok(), "the gateway kept the connection");
        let session = session.await.unwrap();
        assert!(!session.status.success());
        let err = String::from_utf8_lossy(&session.stderr);
        assert!(err.contains("malformed"), "{err}");
    });
    // The gateway and the real agents carry on.
    let (code, out, err) = gateway.run(&["exec", "pooled", "--", "echo fine"], "");
    assert_eq!((code, out.as_str()), (0, "fine\n"), "{err}");

    // Enrollment, connections, disconnections and revocations are in the hash chain.
    assert_eq!(gateway.stop_with("TERM"), Some(0));
    let refusals = crate::lifecycle::events_of_kind(&gateway, "agent-refused");
    assert!(
        refusals.iter().any(|e| e["agent"] == "a"
            && e["reason"]
                .as_str()
                .unwrap_or("")
                .contains("does not verify")),
        "{refusals:?}"
    );
    let mallory: Vec<_> = crate::lifecycle::events_of_kind(&gateway, "agent-disconnect")
        .into_iter()
        .filter(|e| e["agent"] == "mallory")
        .collect();
    assert_eq!(mallory.len(), 3, "{mallory:?}");
    assert!(
        mallory[..2]
            .iter()
            .all(|e| e["reason"].as_str().unwrap_or("").contains("failed")),
        "{mallory:?}"
    );
    assert!(
        mallory[2]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("sent a malformed message"),
        "{mallory:?}"
    );
    for kind in [
        "agent-add",
        "agent-enroll",
        "agent-connect",
        "agent-disconnect",
        "agent-revoke",
    ] {
        let events = crate::lifecycle::events_of_kind(&gateway, kind);
        assert!(!events.is_empty(), "no {kind} event");
    }
    let disconnected = crate::lifecycle::events_of_kind(&gateway, "agent-disconnect");
    assert!(
        disconnected.iter().any(|e| e["agent"] == "b"),
        "{disconnected:?}"
    );
}
