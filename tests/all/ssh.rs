//! The SSH front door with OpenSSH's own client: `ssh CONNECTION@gateway` signs in with a
//! Sluice token and runs sessions through the same chain, record and reviews as `sluice`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::reviews::{pending_review, scratch};
use crate::support::{Gateway, run_command};

/// OpenSSH's client pointed at a gateway's SSH front door: the host key pinned from
/// `sluice ca export --ssh`, a token given through `SSH_ASKPASS`, no configuration of the
/// machine's read.
pub struct Ssh {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Ssh {
    /// The same client, reaching the gateway through `port` (a balancer in front of it).
    pub fn via(mut self, port: u16) -> Ssh {
        let known = self.dir.path().join("known_hosts");
        let line = std::fs::read_to_string(&known).unwrap();
        let (_, key) = line.split_once(' ').unwrap();
        std::fs::write(&known, format!("{line}\n[127.0.0.1]:{port} {key}")).unwrap();
        self.port = port;
        self
    }

    pub fn to(gw: &Gateway) -> Ssh {
        let printed = gw.printed_after("SSH front door on ssh://");
        let addr = printed.split(',').next().unwrap();
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let host = format!("[127.0.0.1]:{port}");
        let (code, known, err) = gw.run(
            &[
                "ca",
                "export",
                "--ssh",
                "--data-dir",
                "data",
                "--host",
                &host,
            ],
            "",
        );
        assert_eq!(code, 0, "{err}");
        // The fingerprint printed at start is the key's the export names.
        let fingerprint = printed.rsplit("host key ").next().unwrap();
        std::fs::write(dir.path().join("known_hosts"), &known).unwrap();
        let (code, listed, err) = run_command(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(dir.path().join("known_hosts")),
            "",
        );
        assert_eq!(code, 0, "{err}");
        assert!(listed.contains(fingerprint), "{listed} vs {fingerprint}");
        let askpass = dir.path().join("askpass");
        std::fs::write(
            &askpass,
            "#!/bin/sh\nprintf '%s\\n' \"$SLUICE_SSH_TOKEN\"\n",
        )
        .unwrap();
        let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&askpass, executable).unwrap();
        Ssh { dir, port }
    }

    /// `ssh` as whoever holds `token`, to `connection`, with `args` after the destination.
    fn command(&self, token: &str, connection: &str, options: &[&str], args: &[&str]) -> Command {
        let mut cmd = self.client("ssh", token);
        cmd.args(["-p", &self.port.to_string()])
            .args(options)
            .arg(format!("{connection}@127.0.0.1"))
            .args(args);
        cmd
    }

    /// `program` (`ssh`, `sftp`, `scp`) as whoever holds `token`: the gateway's host key
    /// pinned, the token as the only way in, nothing of the machine's configuration read.
    /// The caller adds the port (`-p` for ssh, `-P` for the others) and the destination.
    fn client(&self, program: &str, token: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(["-F", "/dev/null"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.path().join("known_hosts").display()
            ))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=keyboard-interactive,password",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-o",
                "ConnectTimeout=10",
            ])
            .env("SSH_ASKPASS", self.askpass())
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("SLUICE_SSH_TOKEN", token)
            .env_remove("SSH_AUTH_SOCK");
        cmd
    }

    /// `sftp` or `scp` as whoever holds `token`, with `args` (`connection@127.0.0.1:...`
    /// destinations are the caller's).
    fn transfer(&self, program: &str, token: &str, args: &[&str]) -> Command {
        let mut cmd = self.client(program, token);
        // `sftp -b` turns on BatchMode, which would rule out the token's prompt; the first
        // value given wins.
        cmd.args(["-o", "BatchMode=no", "-P", &self.port.to_string()])
            .args(args);
        cmd
    }

    fn askpass(&self) -> PathBuf {
        self.dir.path().join("askpass")
    }

    pub fn run(
        &self,
        token: &str,
        connection: &str,
        args: &[&str],
        stdin: &str,
    ) -> (i32, String, String) {
        run_command(&mut self.command(token, connection, &[], args), stdin)
    }
}

fn gateway_with_ssh(extra: &str, policy: Option<&str>) -> Gateway {
    Gateway::start_full("ssh_listen = \"127.0.0.1:0\"", extra, policy)
}

/// The recorded events of `session` (the user's own), as JSON lines with each payload's
/// text beside it.
fn events(gw: &Gateway, session: &str) -> String {
    let (code, out, err) = gw.run(&["export", session, "--format", "jsonl"], "");
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            let payload = hex::decode(event["payload_hex"].as_str().unwrap()).unwrap();
            format!("{line} {}\n", String::from_utf8_lossy(&payload))
        })
        .collect()
}

#[test]
fn ssh_runs_commands_with_their_exit_status_and_records_them() {
    let gw = gateway_with_ssh("", None);
    let ssh = Ssh::to(&gw);

    let (code, out, err) = ssh.run(&gw.user_token, "shell", &["echo hello from $0; exit 3"], "");
    assert_eq!(code, 3, "{err}");
    assert_eq!(out, "hello from bash\n", "{err}");
    let session = gw.newest_session(&[]);
    let recorded = events(&gw, &session);
    assert!(recorded.contains("\"front\":\"ssh\""), "{recorded}");
    assert!(
        recorded.contains("echo hello from $0; exit 3"),
        "{recorded}"
    );
    assert!(recorded.contains("hello from bash"), "{recorded}");

    // Without a command and without a terminal, standard input is the script (as `sluice exec`).
    let (code, out, err) = ssh.run(&gw.user_token, "python", &[], "print(6 * 7)\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "42\n");

    // The shipped policy masks output on the way out, for the terminal and the record.
    let (code, out, err) = ssh.run(
        &gw.user_token,
        "shell",
        &["echo card 4242424242424242 mail bob@example.com"],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "card ************4242 mail [MASKED:email]\n");
    let recorded = events(&gw, &gw.newest_session(&[]));
    assert!(!recorded.contains("bob@example.com"), "{recorded}");
}

#[test]
fn an_interactive_ssh_shell_is_a_terminal_session_masked_and_replayable() {
    let gw = gateway_with_ssh("", None);
    let ssh = Ssh::to(&gw);
    let mut cmd = ssh.command(&gw.user_token, "shell", &["-tt"], &[]);
    let (code, out, err) = run_command(
        &mut cmd,
        "echo card 4242424242424242 mail bob@example.com\nstty size\nexit\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("card ************4242 mail [MASKED:email]"),
        "{out}"
    );
    assert!(
        !out.contains("4242424242424242") && !out.contains("bob@example.com"),
        "{out}"
    );
    let session = gw.newest_session(&[]);
    let recorded = events(&gw, &session);
    assert!(recorded.contains("\"mode\":\"connect\""), "{recorded}");
    assert!(!recorded.contains("bob@example.com"), "{recorded}");
    // Each typed line is a line frame the gates see, as with `sluice connect`.
    assert!(
        recorded.contains("\"content\":\"line\"") && recorded.contains("} stty size\n"),
        "{recorded}"
    );
    // The terminal's size: OpenSSH's, or the usual 80x24 when its own input is no terminal.
    assert!(
        recorded.contains("\"rows\":24") && recorded.contains("\"cols\":80"),
        "{recorded}"
    );
    let (code, replayed, err) = gw.run(&["replay", &session, "--speed", "0"], "");
    assert_eq!(code, 0, "{err}");
    assert!(replayed.contains("[MASKED:email]"), "{replayed}");
}

#[test]
fn held_ssh_commands_wait_for_a_reviewer_and_the_client_hears_why() {
    let extra = "\n[connections.ops]\nkind = \"exec\"\ninteractive = [\"bash\", \"--norc\", \"-i\"]\nscript = [\"bash\", \"-s\"]\n";
    let policy = "[chains]\nops = [\"shell-gate\"]\n\n[reviews.ops]\nexpire_seconds = 30\n";
    let gw = gateway_with_ssh(extra, Some(policy));
    let ssh = Ssh::to(&gw);
    let token = gw.user_token.clone();
    let rm = |dir: &std::path::Path| {
        let mut cmd = ssh.command(&token, "ops", &[], &[&format!("rm -rf {}", dir.display())]);
        std::thread::spawn(move || run_command(&mut cmd, ""))
    };

    let dir = scratch("ssh-approve");
    let waiting = rm(dir.path());
    let id = pending_review(&gw, &dir.path().display().to_string());
    assert!(dir.path().exists(), "nothing runs before the decision");
    let (code, _, err) = gw.run_as(Some(&gw.reviewer_token), &["review", "approve", &id]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = waiting.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "held for review (recursive rm of an absolute or home path): review {id}"
        )),
        "{err}"
    );
    assert!(!dir.path().exists(), "approved, it ran");

    let dir = scratch("ssh-reject");
    let waiting = rm(dir.path());
    let id = pending_review(&gw, &dir.path().display().to_string());
    let (code, _, err) = gw.run_as(
        Some(&gw.reviewer_token),
        &["review", "reject", &id, "--reason", "not today"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = waiting.join().unwrap();
    assert_eq!(code, 126, "{err}");
    assert!(
        err.contains(&format!("review {id} rejected by dev-reviewer: not today")),
        "{err}"
    );
    assert!(dir.path().join("file").exists(), "rejected, it never ran");
}

#[test]
fn ssh_refuses_bad_tokens_forwarding_file_transfer_and_unknown_connections() {
    let gw = gateway_with_ssh("", None);
    let ssh = Ssh::to(&gw);

    let (code, out, err) = ssh.run("not-a-token", "shell", &["echo no"], "");
    assert_eq!(code, 255, "{out}{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!out.contains("no"));

    // A connection that does not exist, or that the token may not use: told why.
    let (code, _, err) = ssh.run(&gw.user_token, "nowhere", &["true"], "");
    assert_eq!(code, 126, "{err}");
    assert!(
        err.contains("unknown connection `nowhere`") && err.contains("ssh CONNECTION@HOST"),
        "{err}"
    );

    // Port forwarding (here `-W`, a direct-tcpip channel) is refused by default.
    let (code, _, err) = run_command(
        &mut ssh.command(&gw.user_token, "shell", &["-W", &gw.addr], &[]),
        "",
    );
    assert_ne!(code, 0);
    assert!(err.contains("administratively prohibited"), "{err}");

    // sftp (and so scp) on a program connection would reach the gateway's own files.
    let mut sftp = ssh.transfer("sftp", &gw.user_token, &["shell@127.0.0.1"]);
    let (code, _, err) = run_command(&mut sftp, "ls\n");
    assert_ne!(code, 0);
    assert!(
        err.contains("the `sftp` subsystem (sftp, scp) is not allowed"),
        "{err}"
    );

    // Each refusal is in the record, with who and what (no role would have allowed it).
    let mut gw = gw;
    assert_eq!(gw.stop_with("TERM"), Some(0));
    let refusals = crate::lifecycle::events_of_kind(&gw, "refusal");
    let refused = |action: &str| {
        refusals.iter().any(|e| {
            e["action"].as_str().unwrap_or_default().starts_with(action)
                && e["subject"] == "dev-user"
                && e["connection"] == "shell"
                && e["role"].is_null()
        })
    };
    assert!(refused("port forwarding to 127.0.0.1:"), "{refusals:?}");
    assert!(refused("the `sftp` subsystem"), "{refusals:?}");
}

#[test]
fn kill_ends_an_ssh_session() {
    let gw = gateway_with_ssh("", None);
    let ssh = Ssh::to(&gw);
    let client = ssh
        .command(&gw.user_token, "shell", &[], &["sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = gw.live_session();
    let (code, out, err) = gw.run_as(Some(&gw.reviewer_token), &["kill", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let (status, err) = crate::support::exit_and_stderr(client);
    assert_eq!(status, Some(1), "{err}");
    assert!(
        err.contains("session ended: ended by dev-reviewer"),
        "{err}"
    );
}

/// A throwaway OpenSSH server on a free loopback port, with its own host key and one
/// authorized client key; stopped when dropped.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: std::process::Child,
}

impl Sshd {
    pub fn start() -> Sshd {
        crate::support::ensure_installed("/usr/sbin/sshd", &["openssh-server"]);
        // sshd's privilege separation needs this folder (the package's service makes it).
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let keygen = |name: &str| {
            let (code, _, err) = run_command(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                    .arg(dir.path().join(name)),
                "",
            );
            assert_eq!(code, 0, "{err}");
        };
        keygen("host_key");
        keygen("client_key");
        std::fs::copy(
            dir.path().join("client_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nPrintMotd no\n\
             LogLevel ERROR\n"
        );
        std::fs::write(dir.path().join("sshd_config"), config).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.path().join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        crate::support::eventually("sshd listens", std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Sshd { dir, port, child }
    }

    /// The server's host key, as the connection pins it.
    pub fn host_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host_key.pub"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// A `kind = "ssh"` connection named `name` to this server, signing in as this user.
    pub fn connection(&self, name: &str) -> String {
        format!(
            "\n[connections.{name}]\nkind = \"ssh\"\nupstream = \"127.0.0.1:{}\"\nuser = \"{}\"\nhost_key = \"{}\"\nprivate_key = \"{}\"\n",
            self.port,
            whoami(),
            self.host_key(),
            self.dir.path().join("client_key").display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn whoami() -> String {
    let (_, out, _) = run_command(Command::new("id").arg("-un"), "");
    out.trim().to_string()
}

#[test]
fn an_ssh_server_behind_the_gateway_gets_the_same_chain_record_and_reviews() {
    let sshd = Sshd::start();
    let policy =
        "[chains]\nbox = [\"shell-gate\", \"mask\"]\n\n[reviews.box]\nexpire_seconds = 30\n";
    let gw = gateway_with_ssh(&sshd.connection("box"), Some(policy));
    let ssh = Ssh::to(&gw);

    // One-shot: the command runs on the server, with its exit status; output is masked.
    let (code, out, err) = ssh.run(
        &gw.user_token,
        "box",
        &["echo mail bob@example.com on $SSH_CONNECTION; exit 7"],
        "",
    );
    assert_eq!(code, 7, "{err}");
    assert!(
        out.starts_with("mail [MASKED:email] on 127.0.0.1 "),
        "{out}"
    );
    let recorded = events(&gw, &gw.newest_session(&[]));
    assert!(recorded.contains("\"exit_status\":7"), "{recorded}");
    assert!(!recorded.contains("bob@example.com"), "{recorded}");

    // The CLI reaches it too, the same way.
    let (code, out, err) = gw.run(&["exec", "box", "--", "echo", "via", "cli"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "via cli\n");

    // Interactive, in a terminal on the server.
    let (code, out, err) = run_command(
        &mut ssh.command(&gw.user_token, "box", &["-tt"], &[]),
        // The number is made by the remote shell, so only its output (one write) holds it,
        // not the echo of what was typed (which a loaded machine may deliver in pieces).
        "echo card 4242424242424$((200 + 42))\ntty\nexit\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("card ************4242"), "{out}");
    assert!(out.contains("/dev/pts/"), "a terminal on the server: {out}");
    assert!(!out.contains("4242424242424242"), "{out}");

    // A password typed at a remote prompt: the server never says its echo is off, so the
    // prompt is recognised in the output and what is typed after it is recorded redacted.
    let mut cmd = ssh.command(&gw.user_token, "box", &["-tt"], &[]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    use std::io::{Read, Write};
    let (tx, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |needle: &str, seen: &mut Vec<u8>| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !String::from_utf8_lossy(seen).contains(needle) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match output.recv_timeout(left) {
                Ok(chunk) => seen.extend_from_slice(&chunk),
                Err(_) => panic!("no {needle:?} in {:?}", String::from_utf8_lossy(seen)),
            }
        }
    };
    stdin
        .write_all(b"read -s -p 'Password: ' secret; echo; echo got ${#secret} characters\n")
        .unwrap();
    // The prompt itself, on a line of its own (not the echo of the command line).
    wait_for("\rPassword: ", &mut seen);
    stdin.write_all(b"hunter2-typed\n").unwrap();
    wait_for("got 13 characters", &mut seen);
    stdin.write_all(b"exit\n").unwrap();
    assert!(child.wait().unwrap().success());
    let recorded = events(&gw, &gw.newest_session(&[]));
    assert!(!recorded.contains("hunter2"), "{recorded}");
    assert!(
        recorded.contains("[redacted: typed with echo off]"),
        "{recorded}"
    );

    // A held command waits for a reviewer; rejected, it never reaches the server.
    let dir = scratch("ssh-upstream");
    let mut cmd = ssh.command(
        &gw.user_token,
        "box",
        &[],
        &[&format!("rm -rf {}", dir.path().display())],
    );
    let waiting = std::thread::spawn(move || run_command(&mut cmd, ""));
    let id = pending_review(&gw, &dir.path().display().to_string());
    let (code, _, err) = gw.run_as(
        Some(&gw.reviewer_token),
        &["review", "reject", &id, "--reason", "no"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = waiting.join().unwrap();
    assert_eq!(code, 126, "{err}");
    assert!(dir.path().join("file").exists());

    // Of the subsystems, only sftp is carried (`file_transfers_to_an_ssh_server_...`).
    let (code, _, err) = run_command(
        &mut ssh.command(&gw.user_token, "box", &["-s"], &["netconf"]),
        "",
    );
    assert_eq!(code, 126, "{err}");
    assert!(
        err.contains("only the `sftp` subsystem is carried"),
        "{err}"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn file_transfers_to_an_ssh_server_are_recorded_with_digests_and_gated_by_path() {
    let sshd = Sshd::start();
    let policy = r#"
[plugins.file-gate]
source = "builtin:approve"
[plugins.file-gate.config]
rules = ["shell"]
[[plugins.file-gate.config.custom]]
name = "keys"
pattern = "^put .*[.]key$"
action = "deny"
reason = "no keys uploaded"
on = "shell"
[[plugins.file-gate.config.custom]]
name = "removals"
pattern = "^rm "
reason = "removes a file"
on = "shell"

[chains]
box = ["file-gate"]

[reviews.box]
expire_seconds = 30
"#;
    let connection = sshd.connection("box") + "file_contents = \"text\"\n";
    let gw = gateway_with_ssh(&connection, Some(policy));
    let ssh = Ssh::to(&gw);
    let local = tempfile::tempdir().unwrap();
    let remote = scratch("sftp-remote");
    let (l, r) = (local.path(), remote.path());
    // A binary file bigger than one SFTP packet, and a text file.
    let binary: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(l.join("up.bin"), &binary).unwrap();
    let text = "line one\nline two: bob@example.com\n";
    std::fs::write(r.join("notes.txt"), text).unwrap();

    // sftp: an upload and a download, each arriving whole.
    let batch = l.join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {l}/up.bin {r}/up.bin\nget {r}/notes.txt {l}/notes.txt\nls {r}\n",
            l = l.display(),
            r = r.display()
        ),
    )
    .unwrap();
    let batch_arg = batch.display().to_string();
    let (code, out, err) = run_command(
        &mut ssh.transfer("sftp", &gw.user_token, &["-b", &batch_arg, "box@127.0.0.1"]),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(std::fs::read(r.join("up.bin")).unwrap(), binary);
    assert_eq!(std::fs::read_to_string(l.join("notes.txt")).unwrap(), text);
    let session = gw.newest_session(&[]);
    let recorded = events(&gw, &session);
    let transfer = |path: &Path, direction: &str| -> serde_json::Value {
        let path = path.display().to_string();
        recorded
            .lines()
            .filter_map(|line| {
                // The event's JSON, then its payload's text.
                let mut values = serde_json::Deserializer::from_str(line).into_iter();
                values.next()?.ok()
            })
            .filter(|e: &serde_json::Value| e["kind"] == "file-transfer")
            .map(|e| e["meta"].clone())
            .find(|m| m["path"] == path.as_str() && m["direction"] == direction)
            .unwrap_or_else(|| panic!("no {direction} of {path} in {recorded}"))
    };
    let up = transfer(&r.join("up.bin"), "upload");
    assert_eq!(up["bytes"], binary.len());
    assert_eq!(up["sha256"], sha256_hex(&binary));
    let down = transfer(&r.join("notes.txt"), "download");
    assert_eq!(down["sha256"], sha256_hex(text.as_bytes()));
    // The gates saw each path; a text file's contents are kept (`file_contents = "text"`),
    // a binary's are not.
    assert!(
        recorded.contains(&format!("put {}/up.bin", r.display())),
        "{recorded}"
    );
    assert!(
        recorded.contains(&format!("ls {}", r.display())),
        "{recorded}"
    );
    assert!(recorded.contains("line two: bob@example.com"), "{recorded}");
    assert!(recorded.contains("\"protocol\":\"sftp\""), "{recorded}");

    // scp (SFTP underneath since OpenSSH 9): up and back down, recorded the same way.
    let target = format!("box@127.0.0.1:{}/scp.bin", r.display());
    let (code, _, err) = run_command(
        &mut ssh.transfer(
            "scp",
            &gw.user_token,
            &[&format!("{}/up.bin", l.display()), &target],
        ),
        "",
    );
    assert_eq!(code, 0, "{err}");
    let back = format!("{}/back.bin", l.display());
    let (code, _, err) = run_command(
        &mut ssh.transfer("scp", &gw.user_token, &[&target, &back]),
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&back).unwrap(), binary);
    let recorded = events(&gw, &gw.newest_session(&[]));
    assert!(
        recorded.contains("\"direction\":\"download\""),
        "{recorded}"
    );
    assert!(recorded.contains(&sha256_hex(&binary)), "{recorded}");

    // A gate denies by path: the upload never reaches the server, and the client is told.
    std::fs::write(l.join("id.key"), "secret").unwrap();
    let (code, _, err) = run_command(
        &mut ssh.transfer(
            "scp",
            &gw.user_token,
            &[
                &format!("{}/id.key", l.display()),
                &format!("box@127.0.0.1:{}/id.key", r.display()),
            ],
        ),
        "",
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("refused by file-gate: no keys uploaded"),
        "{err}"
    );
    assert!(!r.join("id.key").exists());

    // A held removal waits for a reviewer; rejected, the file stays.
    std::fs::write(&batch, format!("rm {}/up.bin\n", r.display())).unwrap();
    let mut cmd = ssh.transfer("sftp", &gw.user_token, &["-b", &batch_arg, "box@127.0.0.1"]);
    let waiting = std::thread::spawn(move || run_command(&mut cmd, ""));
    let id = pending_review(&gw, &format!("rm {}/up.bin", r.display()));
    let (code, _, err) = gw.run_as(
        Some(&gw.reviewer_token),
        &["review", "reject", &id, "--reason", "keep it"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = waiting.join().unwrap();
    assert_ne!(code, 0, "{err}");
    assert!(r.join("up.bin").exists());

    // The legacy scp protocol would hide files inside a command's input: refused, saying why.
    let (code, _, err) = run_command(
        &mut ssh.transfer(
            "scp",
            &gw.user_token,
            &[
                "-O",
                &format!("{}/up.bin", l.display()),
                &format!("box@127.0.0.1:{}/legacy.bin", r.display()),
            ],
        ),
        "",
    );
    assert_ne!(code, 0);
    assert!(err.contains("legacy scp protocol"), "{err}");
    assert!(!r.join("legacy.bin").exists());

    // Bytes that cannot be SFTP end the session with a clear error, in the record too.
    let (code, _, err) = run_command(
        &mut ssh.command(&gw.user_token, "box", &["-s"], &["sftp"]),
        "\u{ff}\u{ff}\u{ff}\u{ff} not sftp",
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("exceeds the"), "{err}");
    let recorded = events(&gw, &gw.newest_session(&[]));
    assert!(recorded.contains("\"outcome\":\"deny\""), "{recorded}");
}

#[test]
fn a_changed_upstream_host_key_refuses_the_session() {
    let sshd = Sshd::start();
    let other = Sshd::start();
    // The connection pins the other server's key: this one's is not it.
    let connection = sshd
        .connection("box")
        .replace(&sshd.host_key(), &other.host_key());
    let gw = gateway_with_ssh(&connection, None);
    let ssh = Ssh::to(&gw);
    let (code, out, err) = ssh.run(&gw.user_token, "box", &["echo reached"], "");
    assert_eq!(code, 126, "{out}{err}");
    assert!(!out.contains("reached"));
    // Both fingerprints, as `ssh-keygen -l` prints them.
    let fingerprint = |sshd: &Sshd| {
        let (_, listed, _) = run_command(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(sshd.dir.path().join("host_key.pub")),
            "",
        );
        listed.split_whitespace().nth(1).unwrap().to_string()
    };
    assert!(
        err.contains(&format!(
            "presented host key {}, not the one the connection pins ({})",
            fingerprint(&sshd),
            fingerprint(&other)
        )),
        "{err}"
    );
}

#[test]
fn ssh_connections_with_bad_credentials_or_host_keys_fail_the_start() {
    let sshd = Sshd::start();
    let good = sshd.connection("box");
    let refuses = |connection: String, expected: &str| {
        let err = crate::cluster::serve_refuses("", &connection);
        assert!(err.contains(expected), "{expected}: {err}");
    };
    refuses(
        good.replace(&sshd.host_key(), "ssh-ed25519 not-base64"),
        "connections.box: host_key: not a public key",
    );
    let key = sshd.dir.path().join("client_key").display().to_string();
    refuses(
        good.replace(&key, "/nonexistent/key"),
        "connections.box: private_key: cannot read /nonexistent/key",
    );
    refuses(
        good.replace(&key, &format!("{key}.pub")),
        "connections.box: private_key: not an OpenSSH private key",
    );
    refuses(
        good.replace(&format!("private_key = \"{key}\"\n"), ""),
        "connections.box: an SSH connection signs in with `private_key` or `password`",
    );
}

#[test]
fn ssh_certificates_from_the_gateway_sign_people_in_and_others_are_refused() {
    let gw = gateway_with_ssh("", None);
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let keygen = |args: &[&str]| {
        let (code, _, err) = run_command(Command::new("ssh-keygen").arg("-q").args(args), "");
        assert_eq!(code, 0, "{err}");
    };
    keygen(&["-t", "ed25519", "-N", "", "-f", &path("id_ed25519")]);

    let (code, out, err) = gw.run(&["ssh-cert", "--key", &path("id_ed25519.pub")], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&path("id_ed25519-cert.pub")), "{out}");
    let (code, shown, err) = run_command(
        Command::new("ssh-keygen").args(["-L", "-f", &path("id_ed25519-cert.pub")]),
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        shown.contains("Key ID: \"dev-user\"") && shown.contains("groups@sluice"),
        "{shown}"
    );

    // `sluice ssh-config` is all `ssh` needs: a Host block per connection, and the host key.
    let (code, config, err) = gw.run(&["ssh-config", "--identity", &path("id_ed25519")], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        config.contains("Host shell\n") && config.contains("Host python\n"),
        "{config}"
    );
    let known = config.lines().find_map(|l| l.strip_prefix("#   ")).unwrap();
    std::fs::write(path("known_hosts"), format!("{known}\n")).unwrap();
    std::fs::write(path("config"), &config).unwrap();
    let (code, out, err) = run_command(
        Command::new("ssh")
            .args([
                "-F",
                &path("config"),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", path("known_hosts")))
            .args(["shell", "echo signed in as $0"])
            .env_remove("SSH_AUTH_SOCK"),
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "signed in as bash\n");
    // The same, spelled out, with only the certificate given (no configuration read).
    let port = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("Port "))
        .unwrap()
        .to_string();
    let ssh_as = |host: &str, certificate: &str| {
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-p", &port, "-i", &path("id_ed25519")])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", path("known_hosts")))
            .arg("-o")
            .arg(format!("CertificateFile={certificate}"))
            .args([&format!("{host}@127.0.0.1"), "echo signed in as $0"])
            .env_remove("SSH_AUTH_SOCK");
        run_command(&mut cmd, "")
    };
    let (code, out, err) = ssh_as("shell", &path("id_ed25519-cert.pub"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "signed in as bash\n");
    let (code, listed, _) = gw.run(&["sessions"], "");
    assert_eq!(code, 0);
    assert!(
        listed.contains("dev-user"),
        "the certificate's person: {listed}"
    );

    // Certificates OpenSSH's own ssh-keygen makes: with the gateway's CA but expired, or for
    // a principal other than the key id it was issued to; and one from another CA.
    let ca = gw
        .dir
        .path()
        .join("data/ssh/user_ca_ed25519_key")
        .display()
        .to_string();
    let sign = |ca: &str, out: &str, id: &str, principals: &str, validity: &str| {
        std::fs::copy(path("id_ed25519.pub"), path(&format!("{out}.pub"))).unwrap();
        keygen(&[
            "-s",
            ca,
            "-I",
            id,
            "-n",
            principals,
            "-V",
            validity,
            &path(&format!("{out}.pub")),
        ]);
        path(&format!("{out}-cert.pub"))
    };
    let expired = sign(&ca, "expired", "dev-user", "dev-user", "-2h:-1h");
    let other_principal = sign(&ca, "other", "dev-user", "dev-reviewer", "-5m:+1h");
    keygen(&["-t", "ed25519", "-N", "", "-f", &path("other_ca")]);
    let foreign = sign(
        &path("other_ca"),
        "foreign",
        "dev-user",
        "dev-user",
        "-5m:+1h",
    );
    for certificate in [expired, other_principal, foreign] {
        let (code, out, err) = ssh_as("shell", &certificate);
        assert_eq!(code, 255, "{certificate}: {out}{err}");
        assert!(err.contains("Permission denied"), "{err}");
    }

    // The certificate the gateway issued is in the record: for whom, which key.
    let mut gw = gw;
    assert_eq!(gw.stop_with("TERM"), Some(0));
    let issued = crate::lifecycle::events_of_kind(&gw, "ssh-certificate");
    let public = std::fs::read_to_string(path("id_ed25519.pub")).unwrap();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0]["subject"], "dev-user");
    assert_eq!(issued[0]["public_key"], public.trim());
}

#[test]
fn gateways_sharing_ssh_keys_are_one_host_with_one_ca() {
    let keys = tempfile::tempdir().unwrap();
    let key = |name: &str| {
        let path = keys.path().join(name);
        let (code, _, err) = run_command(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&path),
            "",
        );
        assert_eq!(code, 0, "{err}");
        path.display().to_string()
    };
    let (host, ca) = (key("host"), key("ca"));
    let settings =
        format!("ssh_listen = \"127.0.0.1:0\"\nssh_host_key = \"{host}\"\nssh_ca_key = \"{ca}\"");
    let a = Gateway::start_full(&settings, "", None);
    let b = Gateway::start_full(&settings, "", None);
    // Both show the configured host key.
    let (_, listed, _) = run_command(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(format!("{host}.pub")),
        "",
    );
    let fingerprint = listed.split_whitespace().nth(1).unwrap();
    for gw in [&a, &b] {
        assert!(
            gw.printed_after("SSH front door on ssh://")
                .ends_with(fingerprint)
        );
    }
    // A certificate from one is good on the other.
    let (code, _, err) = a.run(&["ssh-cert", "--key", &format!("{host}.pub")], "");
    assert_eq!(code, 0, "{err}");
    let (code, config, err) = b.run(&["ssh-config", "--identity", &host], "");
    assert_eq!(code, 0, "{err}");
    let known = config.lines().find_map(|l| l.strip_prefix("#   ")).unwrap();
    std::fs::write(keys.path().join("known_hosts"), format!("{known}\n")).unwrap();
    std::fs::write(keys.path().join("config"), &config).unwrap();
    let (code, out, err) = run_command(
        Command::new("ssh")
            .arg("-F")
            .arg(keys.path().join("config"))
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                keys.path().join("known_hosts").display()
            ))
            .args(["shell", "echo on b"])
            .env_remove("SSH_AUTH_SOCK"),
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "on b\n");

    // On a shared record, each node's own keys would make clients see several hosts and CAs.
    let err = crate::cluster::serve_refuses(
        "ssh_listen = \"127.0.0.1:0\"\nconnections_key = \"env:SOME_KEY\"\n",
        "[store]\nkind = \"postgres\"\nurl = \"postgres://sluice@127.0.0.1:1/sluice\"\ncluster_key = \"env:SOME_KEY\"\n",
    );
    assert!(
        err.contains("needs gateway.ssh_host_key and gateway.ssh_ca_key"),
        "{err}"
    );
}
