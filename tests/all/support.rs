//! Helpers shared by the test modules.

use std::path::PathBuf;
use std::time::Duration;

use sluice_core::frame::{Content, Direction, Frame, SessionInfo};
use sluice_engine::policy::{PluginSpec, Source, World};
use sluice_plugin_host::{HostConfig, LoadedPlugin, PluginHost};

/// A test guest's component, built from `tests/guests/NAME`.
pub fn guest(name: &str) -> PathBuf {
    PathBuf::from(sluice_builtins::TEST_GUESTS).join(format!("{name}.wasm"))
}

pub fn host() -> PluginHost {
    sluice_plugin_host::builtin::provide(sluice_builtins::ALL);
    PluginHost::new(HostConfig::default()).expect("plugin host starts")
}

pub fn spec(name: &str, source: Source, config_json: &str) -> PluginSpec {
    PluginSpec::standalone(name, source, World::Filter, config_json.to_string())
}

pub fn builtin(name: &str) -> Source {
    sluice_plugin_host::builtin::provide(sluice_builtins::ALL);
    Source::Builtin(name.to_string())
}

pub fn file(path: PathBuf) -> Source {
    Source::File(path)
}

pub fn load(host: &PluginHost, spec: &PluginSpec) -> LoadedPlugin {
    host.load(spec).unwrap_or_else(|e| panic!("{e}"))
}

pub fn session(id: &str) -> SessionInfo {
    SessionInfo {
        id: id.into(),
        connection: "test".into(),
        protocol: "exec".into(),
        ..SessionInfo::default()
    }
}

pub fn line(seq: u64, text: &str) -> Frame {
    Frame {
        seq,
        direction: Direction::ClientToTarget,
        timestamp_ms: 0,
        content: Content::Line(text.into()),
    }
}

/// The `sluice` binary under test.
pub fn sluice() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// A real gateway (`sluice serve`) on a free loopback port, with its own data folder; killed
/// when dropped.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub user_token: String,
    pub reviewer_token: String,
    /// The development agent's token (`dev-agent`: never decides a review).
    pub agent_token: String,
    /// What `serve` printed after its first line, as it comes.
    pub printed: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    child: Option<std::process::Child>,
}

impl Gateway {
    pub fn start() -> Gateway {
        Gateway::start_with("")
    }

    /// Starts with `extra` appended to the test configuration (more connections, say).
    pub fn start_with(extra: &str) -> Gateway {
        Gateway::start_with_policy(extra, None)
    }

    /// Like `start_with`, with more `[gateway]` settings (`key = value` lines).
    pub fn start_with_gateway_settings(settings: &str, extra: &str) -> Gateway {
        Gateway::start_full(settings, extra, None)
    }

    /// Like `start_with`, with `policy` as one more policy file beside the shipped ones.
    pub fn start_with_policy(extra: &str, policy: Option<&str>) -> Gateway {
        Gateway::start_full("", extra, policy)
    }

    /// With more `[gateway]` settings, `extra` configuration and a policy file of its own.
    pub fn start_full(settings: &str, extra: &str, policy: Option<&str>) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies");
        let policies = match policy {
            None => shipped.to_string(),
            Some(policy) => {
                let own = dir.path().join("policies");
                std::fs::create_dir(&own).unwrap();
                std::fs::copy(format!("{shipped}/default.toml"), own.join("default.toml")).unwrap();
                std::fs::write(own.join("test.toml"), policy).unwrap();
                own.display().to_string()
            }
        };
        // One cache of compiled plugins for every gateway the tests start.
        let cache = repo().join("target/test-plugin-cache");
        // Settings may name a listener of their own (an address a namespace can reach).
        let own_listener = settings.lines().any(|l| {
            l.trim_start().starts_with("listen ") || l.trim_start().starts_with("listen=")
        });
        let listen = if own_listener {
            ""
        } else {
            "listen = \"127.0.0.1:0\"\n"
        };
        let config = format!(
            "[gateway]\n{listen}data_dir = \"data\"\npolicies = \"{policies}\"\ndev_tokens = true\nhold_timeout_ms = 200\nplugin_cache = \"{}\"\n{settings}\n\
             [console]\nkeyframe_ms = 500\n\n\
             [connections.shell]\nkind = \"exec\"\ninteractive = [\"bash\", \"--norc\", \"-i\"]\nscript = [\"bash\", \"-s\"]\nenv = {{ PS1 = \"$ \" }}\n\n\
             [connections.python]\nkind = \"exec\"\ninteractive = [\"python3\", \"-i\", \"-q\"]\nscript = [\"python3\", \"-\"]\n{extra}",
            cache.display()
        );
        std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
        let mut gateway = Gateway {
            dir,
            addr: String::new(),
            user_token: String::new(),
            reviewer_token: String::new(),
            agent_token: String::new(),
            printed: Default::default(),
            child: None,
        };
        gateway.restart();
        gateway
    }

    /// Starts (again) the gateway on this data folder; waits until it listens.
    pub fn restart(&mut self) {
        self.restart_with_wrapper(&[]);
    }

    /// Like `restart`, with the gateway started through `wrapper` (a program and its
    /// arguments, given the gateway's command line after them).
    pub fn restart_with_wrapper(&mut self, wrapper: &[&str]) {
        use std::io::BufRead;
        let mut command = match wrapper.split_first() {
            None => sluice(),
            Some((program, args)) => {
                let mut c = std::process::Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_sluice"));
                c
            }
        };
        let mut child = command
            .arg("serve")
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().expect("serve printed nothing").unwrap();
        self.addr = first.rsplit("https://").next().unwrap().trim().to_string();
        // Keep draining stdout so the gateway never blocks on a full pipe.
        let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        self.printed = printed.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                printed.lock().unwrap().push(line);
            }
        });
        let tokens: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.path().join("data/dev-tokens.json")).unwrap(),
        )
        .unwrap();
        self.user_token = tokens["user"].as_str().unwrap().to_string();
        self.reviewer_token = tokens["reviewer"].as_str().unwrap().to_string();
        self.agent_token = tokens["agent"].as_str().unwrap().to_string();
        self.child = Some(child);
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The CLI, pointed at this gateway with the user's token.
    pub fn cli(&self) -> std::process::Command {
        let mut cmd = sluice();
        cmd.current_dir(self.dir.path())
            .env("SLUICE_GATEWAY", &self.addr)
            .env("SLUICE_TOKEN", &self.user_token)
            .env("SLUICE_CA", self.dir.path().join("data/tls/ca.pem"));
        cmd
    }

    /// Runs the CLI with `stdin`; returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        run_command(self.cli().args(args), stdin)
    }

    /// Runs the CLI with another token, or none.
    pub fn run_as(&self, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
        let mut cmd = self.cli();
        match token {
            Some(token) => cmd.env("SLUICE_TOKEN", token),
            None => cmd.env_remove("SLUICE_TOKEN"),
        };
        run_command(cmd.args(args), "")
    }

    /// Sends `signal` (`TERM`, `INT`) and waits for the gateway to exit; its exit code.
    pub fn stop_with(&mut self, signal: &str) -> Option<i32> {
        let mut child = self.child.take()?;
        let sent = std::process::Command::new("kill")
            .args(["-s", signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -s {signal}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the gateway did not stop within a minute of SIG{signal}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The newest recorded session's id (`sluice sessions` with `filter`, such as
    /// `--connection pg`).
    pub fn newest_session(&self, filter: &[&str]) -> String {
        self.newest_session_as(&self.user_token, filter)
    }

    /// The same, as the holder of `token` sees the sessions.
    pub fn newest_session_as(&self, token: &str, filter: &[&str]) -> String {
        let (code, listed, err) = self.run_as(Some(token), &[&["sessions"], filter].concat());
        assert_eq!(code, 0, "{err}");
        listed
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no session listed: {listed}"))
            .to_string()
    }

    /// A client whose session sleeps a minute (its stderr kept), and the session's id once it
    /// is live.
    pub fn sleeping_client(&self) -> (std::process::Child, String) {
        let client = self
            .cli()
            .args(["exec", "shell", "--", "sleep 60"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (client, self.live_session())
    }

    /// Waits (up to 20 s) until a session is live; its id.
    pub fn live_session(&self) -> String {
        let mut id = String::new();
        eventually(
            "a session is live",
            std::time::Duration::from_secs(20),
            || {
                let (_, out, _) = self.run(&["sessions", "--active"], "");
                id = out
                    .lines()
                    .nth(1)
                    .and_then(|l| l.split_whitespace().next())
                    .unwrap_or_default()
                    .to_string();
                !id.is_empty()
            },
        );
        id
    }

    /// Waits (up to 10 s) for a line `serve` printed that starts with `prefix`; its rest.
    pub fn printed_after(&self, prefix: &str) -> String {
        let mut found = String::new();
        eventually(
            &format!("serve prints {prefix}"),
            std::time::Duration::from_secs(10),
            || {
                let printed = self.printed.lock().unwrap();
                match printed.iter().find_map(|l| l.strip_prefix(prefix)) {
                    Some(rest) => {
                        found = rest.to_string();
                        true
                    }
                    None => false,
                }
            },
        );
        found
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("data/record.redb")
    }

    /// Whether `needle` is anywhere in the record's files: the store and its journal (where a
    /// commit is durable first, `gateway/record/src/journal.rs`).
    pub fn store_holds(&self, needle: &str) -> bool {
        let store = self.store();
        [store.with_extension("journal"), store].iter().any(|path| {
            std::fs::read(path).is_ok_and(|raw| {
                raw.windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            })
        })
    }

    pub fn client(&self) -> sluice_cli::client::Client {
        let ca = self.dir.path().join("data/tls/ca.pem");
        sluice_cli::client::Client::new(&self.addr, Some(self.user_token.clone()), Some(ca))
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for `client` to exit: its exit code and what it printed on stderr.
pub fn exit_and_stderr(mut client: std::process::Child) -> (Option<i32>, String) {
    use std::io::Read;
    let status = client.wait().unwrap();
    let mut err = String::new();
    if let Some(mut stderr) = client.stderr.take() {
        stderr.read_to_string(&mut err).unwrap();
    }
    (status.code(), err)
}

/// Runs `cmd` with `stdin`; returns (exit code, stdout, stderr). A command still running
/// after two minutes is killed and the test fails, so a hang cannot stall the suite.
pub fn run_command(cmd: &mut std::process::Command, stdin: &str) -> (i32, String, String) {
    use std::io::{Read, Write};
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_string();
    std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    // Commands here build plugins (cargo, npm) while other tests run on the same 2 cores:
    // a slow machine took over two minutes for some, so the bound only catches a hang.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(360);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within six minutes");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        stdout.join().unwrap(),
        stderr.join().unwrap(),
    )
}

/// Waits for `check` to hold, up to `limit`; panics with `what` otherwise.
pub fn eventually(what: &str, limit: std::time::Duration, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if check() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

/// A process's resident memory now, in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// This checkout.
/// `tests/NAME` with its npm packages installed from its lock (`npm ci`, once per checkout:
/// when `node_modules/PROBE` is missing). `needs` says what the tests need it for.
pub fn npm_ci(name: &str, probe: &str, needs: &str) -> PathBuf {
    let dir = repo().join("tests").join(name);
    if !dir.join("node_modules").join(probe).exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .status()
            .unwrap_or_else(|e| panic!("npm runs ({needs} need Node.js and npm): {e}"));
        assert!(status.success(), "npm ci in tests/{name} failed");
    }
    dir
}

pub fn repo() -> &'static std::path::Path {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// A shell command run as a plugin author runs it in the crate `krate` outside this
/// checkout: with the `sluice` under test on `PATH`, the toolchain this repository pins (its
/// `rust-toolchain.toml` does not apply out there), and the registry cache only.
pub fn author_shell(krate: &std::path::Path, script: &str) -> std::process::Command {
    let pin = std::fs::read_to_string(repo().join("rust-toolchain.toml")).unwrap();
    let toolchain = pin
        .lines()
        .find(|l| l.trim_start().starts_with("channel"))
        .and_then(|l| l.split('"').nth(1))
        .unwrap()
        .to_string();
    let sluice_dir = std::path::Path::new(env!("CARGO_BIN_EXE_sluice"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        sluice_dir.display(),
        std::env::var("PATH").unwrap()
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(krate)
        .env("PATH", path)
        .env("RUSTUP_TOOLCHAIN", toolchain)
        .env("CARGO_NET_OFFLINE", "true")
        .env_remove("CARGO_TARGET_DIR");
    cmd
}

/// Readies a plugin crate made outside this checkout to build like the repository's: the
/// versions it builds with (its Cargo.lock) and a build folder kept between test runs.
pub fn share_builds(krate: &std::path::Path) {
    let target = repo().join("target/walkthrough");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&target, krate.join("target")).unwrap();
    std::fs::copy(repo().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
}

/// Debian's `packages`, installed with apt-get when `program` is missing (as `.ci/run`
/// does); one installation at a time, since apt holds a lock.
pub fn ensure_installed(program: &str, packages: &[&str]) {
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _apt = APT.lock().unwrap_or_else(|e| e.into_inner());
    if std::path::Path::new(program).exists() {
        return;
    }
    let _ = std::process::Command::new("apt-get")
        .args(["update", "-q"])
        .status();
    let installed = std::process::Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    assert!(
        installed.is_ok_and(|s| s.success()),
        "{} needed: apt-get install {}",
        packages.join(" and "),
        packages.join(" ")
    );
}

/// The `s3s-fs` binary: on `PATH` if it is there, else installed once into `target/tools`
/// (a fresh checkout needs no step of its own; the first run builds it, about 5 minutes).
fn s3s_fs() -> std::path::PathBuf {
    const VERSION: &str = "0.14.1";
    static INSTALLED: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let on_path = std::process::Command::new("s3s-fs")
                .arg("--version")
                .output();
            if on_path.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(VERSION)) {
                return "s3s-fs".into();
            }
            let root = std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/tools"
            ));
            let binary = root.join("bin/s3s-fs");
            if !binary.exists() {
                let status = std::process::Command::new(env!("CARGO"))
                    .args([
                        "install",
                        &format!("s3s-fs@{VERSION}"),
                        "--features",
                        "binary",
                        "--locked",
                        "--root",
                    ])
                    .arg(&root)
                    .status()
                    .expect("cargo runs");
                assert!(status.success(), "cargo install s3s-fs@{VERSION} failed");
            }
            binary
        })
        .clone()
}

/// `s3s-fs`: a real S3 server on loopback that checks signatures, serving the buckets
/// (folders) `buckets` under a folder of its own.
pub struct S3 {
    pub root: tempfile::TempDir,
    pub port: u16,
    access: String,
    secret: String,
    child: Option<std::process::Child>,
}

impl S3 {
    pub fn start(access: &str, secret: &str, buckets: &[&str]) -> S3 {
        let root = tempfile::tempdir().unwrap();
        for bucket in buckets {
            std::fs::create_dir(root.path().join(bucket)).unwrap();
        }
        let mut s3 = S3 {
            root,
            port: crate::postgres::free_port(),
            access: access.into(),
            secret: secret.into(),
            child: None,
        };
        s3.resume();
        s3
    }

    /// Stops the server (an outage); `resume` brings it back on the same port and folder.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn resume(&mut self) {
        let child = std::process::Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &self.access, "--secret-key", &self.secret])
            .arg(self.root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("s3s-fs starts");
        self.child = Some(child);
        let port = self.port;
        eventually("s3s-fs listens", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}
