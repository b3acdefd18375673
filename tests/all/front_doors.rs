//! The front doors under abuse: slow or silent clients before sign-in, too many connections
//! from one address, oversized PostgreSQL passwords. Limits are set low (milliseconds, a few
//! connections) so each case shows in a moment.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::postgres::free_port;
use crate::support::*;

const LIMITS: &str = "sign_in_timeout_ms = 300\nmax_connections_per_source = 4\n";

/// A gateway with low front-door limits and a PostgreSQL connection (to nothing: these
/// clients never get past sign-in), listening on the returned port.
fn gateway() -> (Gateway, u16) {
    let pg = free_port();
    let extra = format!(
        "\n[connections.pg]\nkind = \"postgres\"\nlisten = \"127.0.0.1:{pg}\"\nupstream = \"127.0.0.1:1\"\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"x\"\n"
    );
    let gw = Gateway::start_with_gateway_settings(LIMITS, &extra);
    (gw, pg)
}

/// Reads until the peer closes; how long that took (bounded: the test fails past `limit`).
fn closed_within(stream: &mut impl Read, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
        assert!(
            start.elapsed() < limit,
            "the gateway kept the connection open"
        );
    }
}

#[test]
fn silent_and_slow_clients_are_cut_off_before_sign_in_and_one_address_cannot_take_every_slot() {
    let (gw, pg) = gateway();
    // TCP without a TLS handshake, and TLS without a request head: both cut at the 300 ms
    // deadline (the bound of 5 s is only there so a gateway that never cuts fails the test).
    let mut silent = TcpStream::connect(&gw.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    closed_within(&mut silent, Duration::from_secs(5));

    let ca = std::fs::read_to_string(gw.dir.path().join("data/tls/ca.pem")).unwrap();
    let config = sluice_engine::tls::client_config(&ca).unwrap();
    let tcp = TcpStream::connect(&gw.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let connection =
        rustls::ClientConnection::new(config, "127.0.0.1".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    // Half a request head, then nothing.
    tls.write_all(b"GET /api/whoami HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    closed_within(&mut tls, Duration::from_secs(5));

    // A PostgreSQL client that opens and says nothing.
    let mut quiet = TcpStream::connect(("127.0.0.1", pg)).unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    closed_within(&mut quiet, Duration::from_secs(5));

    // One address holds at most 4 connections; the fifth is refused with a clear error.
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(("127.0.0.1", pg)).unwrap())
        .collect();
    let mut fifth = TcpStream::connect(("127.0.0.1", pg)).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = fifth.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.contains("53300") && answer.contains("max_connections_per_source"),
        "{answer}"
    );
    drop(held);
    // Once they are gone (cut by the deadline, or closed), the gateway serves again.
    eventually("the gateway answers again", Duration::from_secs(20), || {
        gw.run(&["whoami"], "").0 == 0
    });
}

#[test]
fn a_postgres_password_larger_than_any_token_is_refused_unread() {
    let (gw, pg) = gateway();
    let mut client = TcpStream::connect(("127.0.0.1", pg)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // StartupMessage (protocol 3.0, user=x), no TLS: loopback may sign in in the clear.
    let mut params = b"user\0x\0\0".to_vec();
    let mut startup = ((8 + params.len()) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(&196_608i32.to_be_bytes());
    startup.append(&mut params);
    client.write_all(&startup).unwrap();
    let mut ask = [0u8; 9];
    client.read_exact(&mut ask).unwrap();
    assert_eq!(ask[0], b'R', "asked for a password");
    // A password message that declares 32 MiB: refused from its header, nothing more read.
    let mut header = vec![b'p'];
    header.extend_from_slice(&(32i32 << 20).to_be_bytes());
    client.write_all(&header).unwrap();
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("the limit is 65536"), "{answer}");
    drop(gw);
}

/// CPU time a process has used (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start after its closing ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

#[test]
fn out_of_file_descriptors_the_gateway_waits_instead_of_spinning_and_serves_again() {
    let mut gw = Gateway::start();
    // Few descriptors, so idle connections exhaust them.
    gw.kill();
    gw.restart_with_wrapper(&["prlimit", "--nofile=64:64"]);
    let held: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(&gw.addr).ok())
        .collect();
    assert!(held.len() > 64, "only {} connections", held.len());
    // Wait until the gateway has used up its descriptors (the rest wait in the backlog).
    let pid = gw.pid();
    let open_fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    eventually(
        "the gateway is out of descriptors",
        Duration::from_secs(20),
        || open_fds() >= 60,
    );
    // Now accept fails at once every time: a loop that retries at once burns a core.
    // Measured over a second (the window is the measurement, not a wait for anything), the
    // gateway must stay nearly idle.
    let before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_time(pid) - before;
    assert!(
        used < Duration::from_millis(300),
        "the gateway used {used:?} of CPU in a second"
    );
    // The idle connections are cut at the sign-in deadline; then it serves again.
    drop(held);
    eventually("the gateway answers again", Duration::from_secs(30), || {
        gw.run(&["whoami"], "").0 == 0
    });
}

/// An operator's CA and a certificate it signed for `127.0.0.1` and `localhost`, made with
/// `openssl` in `dir`: (the chain file, its key, the CA certificate).
fn operator_certificate(dir: &std::path::Path) -> (String, String, String) {
    let path = |name: &str| dir.join(name).display().to_string();
    let openssl = |args: &[&str]| {
        let (code, out, err) = run_command(std::process::Command::new("openssl").args(args), "");
        assert_eq!(code, 0, "openssl {args:?}: {out}{err}");
    };
    let (ca_key, ca, key, csr, cert) = (
        path("ca.key"),
        path("ca.pem"),
        path("server.key"),
        path("server.csr"),
        path("server.pem"),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        "/CN=Operator test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        "/CN=gateway.test",
    ]);
    let ext = path("san.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
    let chain = path("chain.pem");
    let both = std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&ca).unwrap();
    std::fs::write(&chain, both).unwrap();
    (chain, key, ca)
}

#[test]
fn an_operators_certificate_is_served_by_every_listener() {
    use crate::postgres::{Cluster, UPSTREAM_PASSWORD, psql};
    let certs = tempfile::tempdir().unwrap();
    let (chain, key, ca) = operator_certificate(certs.path());
    let cluster = Cluster::start("scram-sha-256");
    let pg = free_port();
    let extra = format!(
        "\n[connections.pg]\nkind = \"postgres\"\nlisten = \"127.0.0.1:{pg}\"\nupstream = \"127.0.0.1:{}\"\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"{UPSTREAM_PASSWORD}\"\n",
        cluster.port
    );
    let gw = Gateway::start_full(
        &format!("tls_cert = \"{chain}\"\ntls_key = \"{key}\""),
        &extra,
        None,
    );

    // The CLI, pinning the operator's CA: the gateway's listener is served with its certificate.
    let (code, out, err) = run_command(
        gw.cli()
            .env("SLUICE_CA", &ca)
            .args(["exec", "shell", "--", "echo through"]),
        "",
    );
    assert_eq!((code, out.as_str()), (0, "through\n"), "{err}");
    // What clients are told to pin is the operator's CA.
    let (code, served, err) = run_command(
        std::process::Command::new("curl")
            .args(["-sS", "--cacert", &ca])
            .arg(format!("https://{}/api/ca", gw.addr)),
        "",
    );
    assert_eq!(code, 0, "{err}");
    let pinned = std::fs::read_to_string(&ca).unwrap();
    assert_eq!(
        served.split_whitespace().collect::<String>(),
        pinned.split_whitespace().collect::<String>()
    );
    // The PostgreSQL listener too: psql verifies the server against the operator's CA.
    let (code, out, err) = psql(
        pg,
        &gw.user_token,
        &[
            "-t",
            "-c",
            "SELECT 'verified'",
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ],
    );
    assert_eq!((code, out.trim()), (0, "verified"), "{err}");
}

#[test]
fn tls_settings_that_do_not_go_together_stop_the_start_with_a_clear_error() {
    let certs = tempfile::tempdir().unwrap();
    let (chain, _, _) = operator_certificate(certs.path());
    let other = certs.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, other_key, _) = operator_certificate(&other);
    let mut gw = Gateway::start();
    assert_eq!(gw.stop_with("TERM"), Some(0));
    let config_path = gw.dir.path().join("sluice.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    for (settings, expected) in [
        (
            format!("tls_cert = \"{chain}\""),
            "go together: set both".to_string(),
        ),
        (
            format!("tls_cert = \"{chain}\"\ntls_key = \"{other_key}\""),
            "do not go together".into(),
        ),
        (
            format!(
                "tls_cert = \"{}/missing.pem\"\ntls_key = \"{other_key}\"",
                certs.path().display()
            ),
            "missing.pem".into(),
        ),
    ] {
        let changed = config.replacen("[gateway]\n", &format!("[gateway]\n{settings}\n"), 1);
        std::fs::write(&config_path, changed).unwrap();
        let (code, _, err) = run_command(sluice().current_dir(gw.dir.path()).arg("serve"), "");
        assert_ne!(code, 0);
        assert!(err.contains(&expected), "{settings}: {err}");
    }
}

/// HAProxy (Debian's) in TCP mode in front of the gateway: `frontends` are (listen port,
/// server address, `send-proxy` or `send-proxy-v2`), each connecting from 127.0.0.3, the
/// address the gateway trusts. Stopped when dropped.
struct HaProxy {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    fn start(frontends: &[(u16, &str, &str)]) -> HaProxy {
        ensure_installed("/usr/sbin/haproxy", &["haproxy"]);
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n",
        );
        for (n, (port, server, send)) in frontends.iter().enumerate() {
            config += &format!(
                "listen front{n}\n  bind 127.0.0.1:{port}\n  server gateway {server} {send} source 127.0.0.3\n"
            );
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = std::process::Command::new("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for (port, _, _) in frontends {
            eventually("haproxy listens", Duration::from_secs(20), || {
                TcpStream::connect(("127.0.0.1", *port)).is_ok()
            });
        }
        HaProxy { child, _dir: dir }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection from `source` (a loopback address) to `port` on 127.0.0.1.
fn connect_from(source: &str, port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    let remote: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&remote.into()).unwrap();
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp
}

/// Sends a PostgreSQL startup message; the first byte of the answer (`R`: asked for a
/// password, `E`: an error) and the answer as text, or `None` when the connection closed.
fn start_postgres(tcp: &mut TcpStream) -> Option<(u8, String)> {
    let params = b"user\0someone\0database\0postgres\0\0";
    let mut startup = ((8 + params.len()) as u32).to_be_bytes().to_vec();
    startup.extend(196_608u32.to_be_bytes());
    startup.extend(params);
    tcp.write_all(&startup).ok()?;
    let mut answer = [0u8; 1024];
    let n = tcp.read(&mut answer).ok().filter(|n| *n > 0)?;
    Some((
        answer[0],
        String::from_utf8_lossy(&answer[..n]).into_owned(),
    ))
}

#[test]
fn behind_haproxy_each_client_is_counted_and_recorded_by_the_address_the_proxy_protocol_names() {
    let pg = free_port();
    let extra = format!(
        "\n[connections.pg]\nkind = \"postgres\"\nlisten = \"127.0.0.1:{pg}\"\nupstream = \"127.0.0.1:1\"\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"x\"\n"
    );
    let gw = Gateway::start_with_gateway_settings(
        "trusted_proxies = [\"127.0.0.3\"]\nproxy_protocol = true\nmax_connections_per_source = 2\nssh_listen = \"127.0.0.1:0\"\n",
        &extra,
    );
    let (https_front, pg_front, ssh_front) = (free_port(), free_port(), free_port());
    let pg_server = format!("127.0.0.1:{pg}");
    let ssh = crate::ssh::Ssh::to(&gw);
    let ssh_server = format!("127.0.0.1:{}", ssh.port);
    let _haproxy = HaProxy::start(&[
        (https_front, &gw.addr, "send-proxy-v2"),
        (pg_front, &pg_server, "send-proxy"),
        (ssh_front, &ssh_server, "send-proxy"),
    ]);

    // The SSH front door reads the header too: `ssh` through the balancer works.
    let ssh = ssh.via(ssh_front);
    let (code, out, err) = ssh.run(&gw.user_token, "shell", &["echo through-ssh"], "");
    assert_eq!((code, out.trim()), (0, "through-ssh"), "{err}");

    // A session through the balancer (version 2 header) records the client, not the
    // balancer (127.0.0.3).
    let mut through = gw.cli();
    through
        .env("SLUICE_GATEWAY", format!("127.0.0.1:{https_front}"))
        .args(["exec", "shell", "--", "echo through-the-balancer"]);
    let (code, out, err) = run_command(&mut through, "");
    assert_eq!((code, out.trim()), (0, "through-the-balancer"), "{err}");
    let (code, listed, err) = gw.run(&["sessions"], "");
    assert_eq!(code, 0, "{err}");
    for command in ["through-the-balancer", "through-ssh"] {
        let row = listed
            .lines()
            .find(|l| l.contains(command))
            .unwrap_or_else(|| panic!("{listed}"));
        assert!(
            row.contains(" 127.0.0.1:") && !row.contains("127.0.0.3"),
            "{row}"
        );
    }

    // The per-address cap counts each client behind the balancer (version 1 headers): two
    // from 127.0.0.5 are asked for a password, a third is refused naming 127.0.0.5, and
    // 127.0.0.6 is still served.
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| connect_from("127.0.0.5", pg_front))
        .collect();
    for tcp in &mut held {
        assert_eq!(start_postgres(tcp).map(|a| a.0), Some(b'R'));
    }
    let (kind, answer) = start_postgres(&mut connect_from("127.0.0.5", pg_front)).unwrap();
    assert_eq!(kind, b'E', "{answer}");
    assert!(
        answer.contains("53300") && answer.contains("127.0.0.5 has 2 connections open"),
        "{answer}"
    );
    let other = start_postgres(&mut connect_from("127.0.0.6", pg_front));
    assert_eq!(other.map(|a| a.0), Some(b'R'));

    // The balancer's address without a header is refused: it could be anyone behind it.
    let mut bare = connect_from("127.0.0.3", pg);
    assert_eq!(start_postgres(&mut bare), None);
    // Anyone else needs none, and their bytes are theirs (a header is not believed).
    let mut direct = connect_from("127.0.0.7", pg);
    assert_eq!(start_postgres(&mut direct).map(|a| a.0), Some(b'R'));
}
