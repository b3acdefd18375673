//! Sinks end to end: a real gateway ships its record through the first-party sink plugins to
//! real receivers on loopback (a small HTTP server here, `s3s-fs` for S3), through outages,
//! restarts, reloads and egress refusals.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Gateway, S3, eventually};

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// An HTTP receiver on a loopback port: records every request and answers 200. Dropping it
/// closes the port (connections are then refused).
pub struct Receiver {
    pub port: u16,
    got: Arc<Mutex<Vec<Received>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// The accept loop; it owns the listener, so the port closes when it ends.
    accepting: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    pub fn start(port: u16, got: Arc<Mutex<Vec<Received>>>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (record, halt) = (got.clone(), stop.clone());
        let accepting = std::thread::spawn(move || {
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let record = record.clone();
                        std::thread::spawn(move || serve(stream, &record));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Receiver {
            port,
            got,
            stop,
            accepting: Some(accepting),
        }
    }

    fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // The accept loop notices within 10 ms and drops the listener: the port is closed.
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.join();
        }
    }
}

fn serve(stream: std::net::TcpStream, record: &Mutex<Vec<Received>>) {
    stream.set_nonblocking(false).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        record.lock().unwrap().push(Received {
            path,
            headers,
            body,
        });
        let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `sluice sinks --json`, as the dev reviewer (who holds admin in the shipped policy).
pub fn sinks(gateway: &Gateway) -> Vec<Value> {
    let (code, out, err) = gateway.run_as(Some(&gateway.reviewer_token), &["sinks", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

pub fn sink<'a>(all: &'a [Value], name: &str) -> &'a Value {
    all.iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sink {name} in {all:?}"))
}

/// How many entries the record holds (`sluice verify`).
fn entries(gateway: &Gateway) -> u64 {
    let (code, out, err) = gateway.run_as(Some(&gateway.reviewer_token), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    out.split_whitespace()
        .skip_while(|w| *w != "verified:")
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn exec(gateway: &Gateway, script: &str) -> String {
    let (code, out, err) = gateway.run(&["exec", "shell", "--", script], "");
    assert_eq!(code, 0, "{out}{err}");
    out
}

/// Every NDJSON line the receiver got, in arrival order, without the signed head that ends
/// each batch (checked here: it covers every entry of its batch).
pub fn shipped(receiver: &Receiver) -> Vec<Value> {
    let mut events = Vec::new();
    for request in receiver.requests() {
        let mut lines: Vec<Value> = String::from_utf8(request.body.clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let head = lines.pop().unwrap();
        assert_eq!(head["kind"], "head", "a batch ends with its signed head");
        let newest = lines
            .iter()
            .map(|e| e["index"].as_u64().unwrap())
            .max()
            .unwrap();
        assert!(head["meta"]["index"].as_u64().unwrap() >= newest, "{head}");
        assert!(lines.iter().all(|e| e["kind"] != "head"));
        events.extend(lines);
    }
    events
}

/// Arrival order with re-deliveries (at least once) dropped: must be 0, 1, 2, … without gaps,
/// at least up to `total` (reading the record, as the test does, records more).
pub fn assert_in_order_without_gaps(events: &[Value], total: u64) {
    let mut next = 0;
    for event in events {
        let index = event["index"].as_u64().unwrap();
        assert!(index <= next, "entry {index} arrived before entry {next}");
        if index == next {
            next += 1;
        }
    }
    assert!(next >= total, "delivered up to {next} of {total}");
}

pub fn http_sink_policy(name: &str, url: &str, allow: &[&str], extra: &str) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[plugins.{name}]\nsource = \"builtin:sink-http\"\nworld = \"sink\"\nallow_hosts = [{}]\n\
         [plugins.{name}.config]\nurl = \"{url}\"\n{extra}\n\
         [sinks.{name}]\nplugin = \"{name}\"\nbatch_events = 20\nretry_max_seconds = 1\n",
        allow.join(", ")
    )
}

pub const RESOLVE: &str = "\n[egress]\nhosts = { \"receiver.test\" = [\"127.0.0.1\"], \"internal.test\" = [\"127.0.0.1\"] }\n";

#[test]
fn sink_http_delivers_every_event_in_order_through_an_outage_and_a_restart() {
    let port = free_port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start(port, got.clone());
    let url = format!("http://receiver.test:{port}/ingest");
    let policy = http_sink_policy("ship", &url, &["receiver.test", "127.0.0.1"], "");
    let mut gateway = Gateway::start_with_policy(RESOLVE, Some(&policy));

    exec(&gateway, "echo first session");
    let total = entries(&gateway);
    eventually(
        "the first session delivered",
        Duration::from_secs(20),
        || sink(&sinks(&gateway), "ship")["lag"] == 0,
    );
    assert_in_order_without_gaps(&shipped(&receiver), total);
    let first = receiver.requests();
    assert_eq!(first[0].path, "/ingest");
    assert!(
        first[0]
            .headers
            .contains(&("content-type".into(), "application/x-ndjson".into()))
    );

    // The receiver goes away: sessions go on, the sink falls behind and says why.
    drop(receiver);
    let out = exec(&gateway, "echo during the outage");
    assert!(out.contains("during the outage"), "{out}");
    eventually(
        "the sink reports the failure",
        Duration::from_secs(20),
        || {
            let all = sinks(&gateway);
            let s = sink(&all, "ship");
            s["state"] == "retrying" && s["lag"].as_u64().unwrap() > 0 && !s["last_error"].is_null()
        },
    );
    // The error names the host, never the URL's path (a webhook's path is its secret).
    let error = sink(&sinks(&gateway), "ship")["last_error"].to_string();
    assert!(
        error.contains("receiver.test") && !error.contains("/ingest"),
        "{error}"
    );
    let metrics = std::process::Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(gateway.dir.path().join("data/tls/ca.pem"))
        .args([
            "-H",
            &format!("Authorization: Bearer {}", gateway.reviewer_token),
        ])
        .arg(format!("https://{}/metrics", gateway.addr))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let lag = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_sink_lag_events{sink=\"ship\"} "))
        .unwrap_or_else(|| panic!("no lag metric in {metrics}"));
    assert!(lag.parse::<f64>().unwrap() > 0.0, "{lag}");
    assert!(
        metrics.contains("sluice_sink_failures_total{sink=\"ship\"}"),
        "{metrics}"
    );

    // A hard stop and a restart while the receiver is still down; one more session.
    gateway.kill();
    gateway.restart();
    exec(&gateway, "echo after the restart");
    let total = entries(&gateway);

    // The receiver is back: everything arrives, in order, nothing missing.
    let receiver = Receiver::start(port, got);
    eventually("everything delivered", Duration::from_secs(30), || {
        sink(&sinks(&gateway), "ship")["lag"] == 0
    });
    let events = shipped(&receiver);
    assert_in_order_without_gaps(&events, total);

    assert_eq!(sessions_match_the_record(&gateway, &events), 3);

    // What the receiver keeps is an outside witness: the gateway's record reaches every head
    // in it, and an auditor checks that with the bodies as they were received.
    let bodies = gateway.dir.path().join("received.ndjson");
    let all: Vec<u8> = receiver
        .requests()
        .iter()
        .flat_map(|r| r.body.clone())
        .collect();
    std::fs::write(&bodies, all).unwrap();
    let (code, out, err) = gateway.run_as(
        Some(&gateway.reviewer_token),
        &["verify", "--head", bodies.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reached and matched"), "{out}");
}

/// Every event of every recorded session was shipped as recorded (kind, meta, payload).
/// Returns how many sessions were compared.
fn sessions_match_the_record(gateway: &Gateway, shipped: &[Value]) -> usize {
    let (_, list, _) = gateway.run(&["sessions"], "");
    let ids: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for id in &ids {
        let (code, export, err) = gateway.run(&["export", id, "--format", "jsonl"], "");
        assert_eq!(code, 0, "{err}");
        for line in export.lines() {
            let recorded: Value = serde_json::from_str(line).unwrap();
            let index = recorded["index"].as_u64().unwrap();
            let sent = shipped
                .iter()
                .find(|e| e["index"] == index)
                .unwrap_or_else(|| panic!("entry {index} was not shipped"));
            assert_eq!(sent["session"], *id);
            assert_eq!(sent["kind"], recorded["kind"]);
            assert_eq!(sent["meta"], recorded["meta"]);
            let payload = hex_decode(recorded["payload_hex"].as_str().unwrap_or(""));
            assert_eq!(sent["payload"].as_str().unwrap().as_bytes(), payload);
        }
    }
    ids.len()
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn egress_is_refused_off_the_allow_list_and_for_names_resolving_to_private_addresses() {
    let receiver = Receiver::start(0, Arc::default());
    let port = receiver.port;
    // An address the allow-list does not name (only a host name is listed).
    let mut policy = http_sink_policy(
        "by-address",
        &format!("http://127.0.0.1:{port}/"),
        &["receiver.test"],
        "",
    );
    // An allowed name that resolves to loopback, which is not listed.
    policy.push_str(&http_sink_policy(
        "by-name",
        &format!("http://internal.test:{port}/"),
        &["internal.test"],
        "",
    ));
    let gateway = Gateway::start_with_policy(RESOLVE, Some(&policy));
    exec(&gateway, "echo hello");
    eventually("both sinks refused", Duration::from_secs(20), || {
        let all = sinks(&gateway);
        ["by-address", "by-name"]
            .iter()
            .all(|n| sink(&all, n)["state"] == "retrying")
    });
    let all = sinks(&gateway);
    let error = |name: &str| sink(&all, name)["last_error"].as_str().unwrap().to_string();
    let by_address = error("by-address");
    assert!(
        by_address.contains("127.0.0.1 is not on the plugin's allow_hosts"),
        "{by_address}"
    );
    let by_name = error("by-name");
    assert!(
        by_name.contains("`internal.test` resolves to 127.0.0.1, a non-public address"),
        "{by_name}"
    );
    assert!(
        receiver.requests().is_empty(),
        "a refused request got through"
    );

    // `sluice policy` lists sinks with what they may reach.
    let policies = gateway.dir.path().join("policies");
    let (code, out, err) = crate::support::run_command(
        crate::support::sluice().args(["policy", policies.to_str().unwrap()]),
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("sink by-name: plugin by-name, batches of 20, may reach internal.test"),
        "{out}"
    );

    // A filter may not be given the network at all.
    let bad = "[plugins.leaky]\nsource = \"builtin:passthrough\"\nallow_hosts = [\"x.test\"]\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), bad).unwrap();
    let (code, _, err) = crate::support::run_command(
        crate::support::sluice().args(["policy", dir.path().to_str().unwrap()]),
        "",
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("only sink plugins may reach the network"),
        "{err}"
    );
}

#[test]
fn review_events_reach_a_slack_webhook() {
    let receiver = Receiver::start(0, Arc::default());
    let url = format!(
        "http://receiver.test:{}/services/T000/B000/XXX",
        receiver.port
    );
    let policy = http_sink_policy(
        "slack",
        &url,
        &["receiver.test", "127.0.0.1"],
        "format = \"slack\"\nkinds = [\"review\"]",
    )
    .replace(
        "retry_max_seconds = 1",
        // A reviewers' channel wants each review at once, not batched.
        "retry_max_seconds = 1\nfrom = \"now\"\nlinger_ms = 0",
    );
    let gateway = Gateway::start_with_policy(RESOLVE, Some(&policy));
    // Held by the shell gate; nobody decides within the test's hold timeout: it expires.
    let (code, out, err) = gateway.run(&["exec", "shell", "--", "rm -rf /srv/nothing-here"], "");
    assert_ne!(code, 0, "{out}{err}");
    eventually("two review messages", Duration::from_secs(20), || {
        receiver.requests().len() >= 2
    });
    let texts: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| {
            let message: Value = serde_json::from_slice(&r.body).unwrap();
            message["text"].as_str().unwrap().to_string()
        })
        .collect();
    let all = texts.join("\n");
    assert!(all.contains("on `shell` is *pending* (created by"), "{all}");
    assert!(all.contains("`rm -rf /srv/nothing-here`"), "{all}");
    assert!(all.contains("is *expired*"), "{all}");
    // Only review events: the session's frames were not sent.
    assert!(texts.iter().all(|t| t.starts_with("Review `")), "{all}");
}

fn s3_sink_policy(name: &str, port: u16, secret: &str) -> String {
    format!(
        "[plugins.{name}]\nsource = \"builtin:sink-s3\"\nworld = \"sink\"\nallow_hosts = [\"127.0.0.1\"]\n\
         [plugins.{name}.config]\nendpoint = \"http://127.0.0.1:{port}\"\nbucket = \"recordings\"\n\
         access_key_id = \"sluice-test\"\nsecret_access_key = \"{secret}\"\nprefix = \"{name}/\"\nlayout = \"session\"\n\
         [sinks.{name}]\nplugin = \"{name}\"\nretry_max_seconds = 1\nlinger_ms = 5000\n"
    )
}

#[test]
fn sink_s3_puts_signed_objects_that_match_the_record_and_a_wrong_key_is_refused() {
    let s3 = S3::start("sluice-test", "right-secret-key", &["recordings"]);
    let mut policy = s3_sink_policy("archive", s3.port, "right-secret-key");
    policy.push_str(&s3_sink_policy("forged", s3.port, "wrong-secret-key"));
    let gateway = Gateway::start_with_policy("", Some(&policy));
    exec(&gateway, "echo to the archive");
    let total = entries(&gateway);
    eventually("archived", Duration::from_secs(30), || {
        sink(&sinks(&gateway), "archive")["lag"] == 0
    });

    // Every entry is in some object, objects per session, lines as recorded.
    let mut lines = Vec::new();
    let bucket = s3.root.path().join("recordings/archive");
    for folder in std::fs::read_dir(&bucket).unwrap() {
        let folder = folder.unwrap().path();
        let objects: Vec<_> = std::fs::read_dir(&folder).unwrap().collect();
        // The sink waits for a batch (`linger_ms`) rather than make an object per commit:
        // the short session is one object. (The gateway's own events, auditors' reads among
        // them, come as they happen.)
        if !folder.ends_with("_gateway") {
            assert_eq!(objects.len(), 1, "{objects:?}");
        }
        for object in objects {
            let object = object.unwrap().path();
            assert!(object.to_str().unwrap().ends_with(".ndjson"), "{object:?}");
            let text = std::fs::read_to_string(&object).unwrap();
            let mut events: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect();
            // Each object ends with the signed head covering it.
            assert_eq!(events.pop().unwrap()["kind"], "head", "{object:?}");
            lines.extend(events);
        }
    }
    let mut indices: Vec<u64> = lines.iter().map(|l| l["index"].as_u64().unwrap()).collect();
    indices.sort_unstable();
    indices.dedup();
    let delivered = indices.len() as u64;
    assert!(delivered >= total, "{delivered} of {total}");
    assert_eq!(indices, (0..delivered).collect::<Vec<_>>());
    // The bucket is an outside witness of the chain: verify reads every head in it.
    let (code, out, err) = gateway.run_as(
        Some(&gateway.reviewer_token),
        &["verify", "--head", bucket.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reached and matched"), "{out}");
    assert_eq!(sessions_match_the_record(&gateway, &lines), 1);
    assert!(
        lines.iter().any(|l| l["payload"]
            .as_str()
            .is_some_and(|p| p.contains("to the archive"))),
        "{lines:?}"
    );

    // The forged key: refused by the server, for good; the sink stops and says why.
    eventually("the forged sink stopped", Duration::from_secs(20), || {
        sink(&sinks(&gateway), "forged")["state"] == "stopped"
    });
    let all = sinks(&gateway);
    let why = sink(&all, "forged")["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("answered 403"), "{why}");
    assert!(!s3.root.path().join("recordings/forged").exists());
}

#[test]
fn reload_adds_a_sink_while_a_session_runs_and_a_broken_policy_keeps_the_running_one() {
    let receiver = Receiver::start(0, Arc::default());
    let gateway = Gateway::start_with_policy(RESOLVE, Some("# no sinks yet\n"));
    assert!(sinks(&gateway).is_empty());

    // A session that outlives the reload.
    let cli = gateway.cli();
    let session = std::thread::spawn(move || {
        let mut cli = cli;
        crate::support::run_command(
            cli.args([
                "exec",
                "shell",
                "--",
                "echo before; sleep 2; echo after the reload",
            ]),
            "",
        )
    });
    eventually("the session runs", Duration::from_secs(20), || {
        let (_, out, _) = gateway.run(&["sessions", "--active"], "");
        out.lines().count() == 2
    });
    let url = format!("http://receiver.test:{}/in", receiver.port);
    let policy = http_sink_policy("late", &url, &["receiver.test", "127.0.0.1"], "");
    let policies = gateway.dir.path().join("policies");
    std::fs::write(policies.join("test.toml"), &policy).unwrap();
    let (code, out, err) = gateway.run_as(Some(&gateway.reviewer_token), &["reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sinks: late"), "{out}");
    let (code, out, err) = session.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("after the reload"), "{out}");

    // The new sink starts from the beginning: the running session is in it too.
    let total = entries(&gateway);
    eventually(
        "delivered after the reload",
        Duration::from_secs(20),
        || sink(&sinks(&gateway), "late")["lag"] == 0,
    );
    assert_in_order_without_gaps(&shipped(&receiver), total);

    // A broken policy is refused; the running one (and its sink) stays.
    std::fs::write(
        policies.join("test.toml"),
        format!("{policy}\n[sinks.ghost]\nplugin = \"nowhere\"\n"),
    )
    .unwrap();
    let (code, _, err) = gateway.run_as(Some(&gateway.reviewer_token), &["reload"]);
    assert_ne!(code, 0);
    assert!(err.contains("plugin `nowhere` is not defined"), "{err}");
    assert!(err.contains("the running policy stays"), "{err}");
    assert_eq!(sinks(&gateway).len(), 1);
    exec(&gateway, "echo still fine");

    // SIGHUP applies the folder as it is now: without the sink.
    std::fs::write(policies.join("test.toml"), "# sinks removed\n").unwrap();
    let pid = gateway.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    eventually("the sink is gone", Duration::from_secs(10), || {
        sinks(&gateway).is_empty()
    });
    // A user without the admin role may not reload.
    let (code, _, err) = gateway.run(&["reload"], "");
    assert_ne!(code, 0);
    assert!(err.contains("admin"), "{err}");
}

#[test]
fn retention_purges_expired_sessions_scrubs_the_file_and_verify_reports_the_range() {
    let extra = "";
    let mut gateway = Gateway::start_with(extra);
    // Give `shell` a retention of about 1.7 s.
    let config = gateway.dir.path().join("sluice.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "env = { PS1 = \"$ \" }",
        "env = { PS1 = \"$ \" }\nretention_days = 0.00002",
    );
    std::fs::write(&config, text).unwrap();
    gateway.kill();
    gateway.restart();

    exec(&gateway, "echo retention-canary-$((6*7))x");
    let file_has_canary = || gateway.store_holds("retention-canary-42x");
    assert!(
        file_has_canary(),
        "the session's output should be in the store"
    );
    // Retention purges it once its 1.7 s are over (run until then: nothing to purge).
    let mut out = String::new();
    eventually(
        "the session expires and is purged",
        Duration::from_secs(20),
        || {
            let (code, printed, err) =
                gateway.run_as(Some(&gateway.reviewer_token), &["retention"]);
            assert_eq!(code, 0, "{err}");
            out = printed;
            out.contains("of 1 session(s)")
        },
    );
    assert!(out.contains("store compacted"), "{out}");
    assert!(
        !file_has_canary(),
        "the purged payload is still in the file"
    );
    let purged_ranges = out
        .lines()
        .find_map(|l| l.strip_prefix("entries: "))
        .unwrap_or_else(|| panic!("no ranges in {out}"))
        .to_string();

    // Verify holds, and names exactly the entries retention purged.
    let (code, out, err) = gateway.run_as(Some(&gateway.reviewer_token), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("record verified"), "{out}");
    let expected = format!("entries: {purged_ranges}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("purged by retention") && l.ends_with(&expected)),
        "{out} / {purged_ranges}"
    );
    // The retention run is itself on record, and the gateway goes on recording.
    exec(&gateway, "echo after the purge");
    let (code, out, _) = gateway.run_as(Some(&gateway.reviewer_token), &["verify"]);
    assert_eq!(code, 0, "{out}");
    // A user without the admin role may not run it.
    let (code, _, err) = gateway.run(&["retention"], "");
    assert_ne!(code, 0);
    assert!(err.contains("admin"), "{err}");
}

#[test]
fn a_sink_that_traps_is_retried_apart_and_neither_sessions_nor_other_sinks_notice() {
    let receiver = Receiver::start(0, Arc::default());
    let crashy = crate::support::guest("sink-count");
    let mut policy = format!(
        "[plugins.crashy]\nsource = \"{}\"\nworld = \"sink\"\nconfig = {{ trap_on = \"session-open\" }}\n\
         [sinks.crashy]\nplugin = \"crashy\"\nretry_max_seconds = 1\n",
        crashy.display()
    );
    let url = format!("http://receiver.test:{}/", receiver.port);
    policy.push_str(&http_sink_policy(
        "steady",
        &url,
        &["receiver.test", "127.0.0.1"],
        "",
    ));
    let gateway = Gateway::start_with_policy(RESOLVE, Some(&policy));
    let out = exec(&gateway, "echo unaffected");
    assert!(out.contains("unaffected"), "{out}");
    let total = entries(&gateway);
    eventually("the steady sink delivered", Duration::from_secs(20), || {
        sink(&sinks(&gateway), "steady")["lag"] == 0
    });
    assert_in_order_without_gaps(&shipped(&receiver), total);
    eventually("the trap reported", Duration::from_secs(20), || {
        let all = sinks(&gateway);
        let s = sink(&all, "crashy");
        s["failures"].as_u64().unwrap() >= 2 && s["state"] == "retrying"
    });
    let all = sinks(&gateway);
    let crashy = sink(&all, "crashy");
    assert!(
        crashy["last_error"].as_str().unwrap().contains("trapped"),
        "{crashy}"
    );
    assert_eq!(
        crashy["cursor"], 0,
        "nothing may be skipped past a failing batch"
    );
    exec(&gateway, "echo still serving");
}
