//! Identity from a real OpenID provider (the `oidc-provider` npm package, run by
//! `tests/oidc/provider.mjs` on loopback; `.ci/run` installs it): sign-in through the code flow
//! with PKCE (driving the provider's own login and consent pages, as a browser would), machine
//! tokens by client credentials, every kind of bad token refused, key rotation picked up
//! without a restart, and roles from the policy deciding who may connect, review and read.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::support::*;

/// `tests/oidc`, with its npm packages installed (once, on a fresh checkout).
pub(crate) fn oidc_dir() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| npm_ci("oidc", "oidc-provider", "the identity tests"))
        .clone()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A signing key for a provider, as a private JWK file.
pub(crate) fn keygen(dir: &Path, kid: &str) -> PathBuf {
    let out = Command::new("node")
        .arg(oidc_dir().join("provider.mjs"))
        .args(["keygen", kid])
        .output()
        .expect("node runs (the tests need Node.js and `npm ci --prefix tests/oidc`)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join(format!("{kid}.json"));
    std::fs::write(&path, out.stdout).unwrap();
    path
}

/// Part `i` of a JWT (0: header, 1: claims), decoded.
fn jwt_part(token: &str, i: usize) -> String {
    use base64::Engine as _;
    let part = token.split('.').nth(i).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A running provider; killed when dropped.
pub(crate) struct Provider {
    port: u16,
    child: Child,
}

impl Provider {
    fn start(port: u16, keys: &[&Path]) -> Provider {
        Provider::start_for_console(port, keys, "")
    }

    /// A provider whose `sluice-console` client may redirect to `console_redirect`.
    pub(crate) fn start_for_console(port: u16, keys: &[&Path], console_redirect: &str) -> Provider {
        use std::io::BufRead;
        let mut child = Command::new("node")
            .arg(oidc_dir().join("provider.mjs"))
            .arg("serve")
            .arg(port.to_string())
            .args(keys)
            .env("ID_TOKEN_TTL", "70")
            .env("CONSOLE_REDIRECT", console_redirect)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().expect("the provider printed nothing").unwrap();
        assert!(first.starts_with("listening"), "{first}");
        std::thread::spawn(move || for _ in lines {});
        Provider { port, child }
    }

    /// A provider of its own on a free port, signing with a new key `k1` kept in `dir`.
    fn start_new(dir: &Path) -> Provider {
        Provider::start(free_port(), &[&keygen(dir, "k1")])
    }

    pub(crate) fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A JWT access token for the gateway, by client credentials (what a CI job does).
    fn machine_token(&self) -> String {
        let out = curl(&[
            "-u",
            "ci-bot:ci-bot-secret",
            "-d",
            "grant_type=client_credentials&scope=sluice&resource=urn:sluice:gateway",
            &format!("{}/token", self.issuer()),
        ]);
        let body: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
        body["access_token"].as_str().unwrap().to_string()
    }

    /// A token signed with the provider's key, with any header and claims (see provider.mjs).
    fn mint(&self, header: Value, claims: Value) -> String {
        let body = json!({"header": header, "claims": claims}).to_string();
        curl(&["-d", &body, &format!("{}/test/mint", self.issuer())])
    }

    /// An ID token for `user` as `sluice login` gets it (audience: the CLI's client).
    pub(crate) fn id_token(&self, user: &str, groups: &[&str]) -> String {
        self.mint(
            json!({}),
            json!({"sub": user, "aud": "sluice-cli", "email": format!("{user}@example.com"), "groups": groups}),
        )
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A gateway trusting `issuer`, with roles of its own: `shell` for developers and the CI
/// bot, reviewed by reviewers, audited by auditors; `python` for reviewers only.
fn gateway(issuer: &str) -> Gateway {
    gateway_with(issuer, "")
}

/// Like [`gateway`], with `extra` configuration (more connections).
fn gateway_with(issuer: &str, extra: &str) -> Gateway {
    let config = format!(
        "\n[oidc]\nissuer = \"{issuer}\"\nclient_id = \"sluice-cli\"\naudience = \"sluice-gateway\"\n\
         scopes = [\"openid\", \"email\", \"groups\", \"offline_access\"]\nclock_skew_seconds = 5\njwks_refresh_seconds = 1\njwks_max_age_seconds = 3\n{extra}"
    );
    let policy = "[roles.shell]\nconnect = [\"developers\", \"ci\"]\nreview = [\"reviewers\"]\naudit = [\"auditors\"]\nadmin = []\n\n\
                  [roles.python]\nconnect = [\"reviewers\"]\n";
    Gateway::start_with_policy(&config, Some(policy))
}

/// `sluice exec shell -- echo hi` with `token`: (exit code, stdout, stderr).
fn echo_as(gw: &Gateway, token: &str) -> (i32, String, String) {
    gw.run_as(Some(token), &["exec", "shell", "--", "echo", "hi"])
}

#[test]
fn machine_tokens_open_sessions_and_bad_tokens_open_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = keygen(dir.path(), "k1");
    let provider = Provider::start(free_port(), &[&k1]);
    let gw = gateway(&provider.issuer());

    // Client credentials: a JWT access token (typ at+jwt, audience the gateway).
    let machine = provider.machine_token();
    let (code, out, err) = echo_as(&gw, &machine);
    assert_eq!((code, out.as_str()), (0, "hi\n"), "{err}");
    let (_, listed, _) = gw.run_as(Some(&machine), &["sessions"]);
    assert!(listed.contains("ci-bot"), "{listed}");
    // Static tokens keep working beside the provider's.
    assert_eq!(echo_as(&gw, &gw.user_token).0, 0);
    // The machine is an MCP client as well: `/mcp` takes the provider's access token, and
    // lists the connections its groups' roles open; a forged one gets 401.
    let mcp = |token: &str| {
        let ca = gw.dir.path().join("data/tls/ca.pem");
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "list_connections", "arguments": {}}});
        curl(&[
            "-w",
            "\n%{http_code}",
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "-H",
            "Accept: application/json, text/event-stream",
            "-d",
            &list.to_string(),
            &format!("https://{}/mcp", gw.addr),
        ])
    };
    let listed = mcp(&machine);
    assert!(
        listed.ends_with("\n200")
            && listed.contains("\"name\":\"shell\"")
            && !listed.contains("\"python\""),
        "{listed}"
    );
    // A character inside the signature changed (each one there carries six bits of it).
    let mut forged = machine.clone().into_bytes();
    let at = forged.len() - 20;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let refused = mcp(&forged);
    assert!(refused.ends_with("\n401"), "{refused}");

    // Every bad token: refused with its reason, and nothing opened.
    let good = provider.id_token("alice", &["developers"]);
    assert_eq!(echo_as(&gw, &good).0, 0);
    let now = now_secs();
    let (header, payload, signature) = {
        let mut parts = good.split('.');
        (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        )
    };
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let mut flipped = signature.to_string().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let second_dir = tempfile::tempdir().unwrap();
    let untrusted_key = keygen(second_dir.path(), "k1"); // same kid, another key
    let untrusted = Provider::start(free_port(), &[&untrusted_key]);
    let alice = |extra: Value| {
        let mut claims = json!({"sub": "alice", "aud": "sluice-cli", "groups": ["developers"]});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        claims
    };
    let cases = [
        (
            provider.mint(
                json!({}),
                alice(json!({"iat": now - 1200, "exp": now - 600})),
            ),
            "the token expired",
        ),
        (
            provider.mint(json!({}), alice(json!({"nbf": now + 600}))),
            "not valid yet",
        ),
        (
            provider.mint(json!({}), alice(json!({"aud": "another-app"}))),
            "for another audience",
        ),
        (
            provider.mint(json!({}), alice(json!({"iss": "http://127.0.0.1:1"}))),
            "an issuer this gateway does not trust",
        ),
        (
            format!("{}.{payload}.", b64(&json!({"alg": "none", "typ": "JWT"}))),
            "algorithm `none` is not accepted",
        ),
        (
            provider.mint(json!({"alg": "HS256"}), alice(json!({}))),
            "algorithm `HS256` is not accepted",
        ),
        (
            format!("{header}.{payload}.{}", String::from_utf8(flipped).unwrap()),
            "signature does not verify",
        ),
        (
            format!(
                "{header}.{}.{signature}",
                b64(&alice(
                    json!({"groups": ["reviewers"], "exp": now + 600, "iat": now, "iss": provider.issuer()})
                ))
            ),
            "signature does not verify",
        ),
        (
            provider.mint(json!({"kid": "nobody-knows"}), alice(json!({}))),
            "a key the provider does not publish (kid nobody-knows)",
        ),
        (
            untrusted.machine_token(),
            "an issuer this gateway does not trust",
        ),
        ("not-a-token".to_string(), "unknown token"),
    ];
    let (_, before, _) = gw.run_as(Some(&machine), &["sessions"]);
    for (token, expected) in &cases {
        let (code, _, err) = echo_as(&gw, token);
        assert_ne!(code, 0, "accepted: {expected}");
        assert!(err.contains(expected), "{expected}: {err}");
    }
    let (_, after, _) = gw.run_as(Some(&machine), &["sessions"]);
    assert_eq!(before, after, "a refused token opened a session");

    // The provider rotates its key (the new one signs, the old one is still published): new
    // tokens are accepted without restarting the gateway, and so are the old ones.
    let port = provider.port;
    drop(provider);
    let k2 = keygen(dir.path(), "k2");
    let rotated = Provider::start(port, &[&k2, &k1]);
    let fresh = rotated.machine_token();
    let fresh_header = jwt_part(&fresh, 0);
    assert!(fresh_header.contains("\"kid\":\"k2\""), "{fresh_header}");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // past the refresh limit
    let (code, out, err) = echo_as(&gw, &fresh);
    assert_eq!((code, out.as_str()), (0, "hi\n"), "{err}");
    assert_eq!(
        echo_as(&gw, &machine).0,
        0,
        "a token of the old, still published key"
    );

    // The old key is withdrawn: once the gateway's copy of the keys is older than its max
    // age (3 s here), tokens signed with it are refused.
    let port = rotated.port;
    drop(rotated);
    let _withdrawn = Provider::start(port, &[&k2]);
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let (code, _, err) = echo_as(&gw, &machine);
    assert_ne!(code, 0, "a withdrawn key's token was accepted");
    assert!(
        err.contains("a key the provider does not publish (kid k1)"),
        "{err}"
    );
    assert_eq!(echo_as(&gw, &fresh).0, 0);
}

/// A browser for the provider's pages: keeps cookies, follows redirects, fills forms.
struct Browser<'a> {
    provider: &'a Provider,
    jar: String,
}

impl<'a> Browser<'a> {
    /// A browser with its cookies in `dir`.
    fn new(provider: &'a Provider, dir: &Path) -> Browser<'a> {
        let jar = dir.join("cookies").display().to_string();
        Browser { provider, jar }
    }

    fn get(&self, url: &str) -> String {
        curl(&["-L", "-c", &self.jar, "-b", &self.jar, url])
    }

    /// Submits the page's first form: its hidden and prefilled fields, plus `fields`.
    fn submit(&self, page: &str, fields: &[(&str, &str)]) -> String {
        let form = &page[page
            .find("<form")
            .unwrap_or_else(|| panic!("no form in {page}"))..];
        let form = &form[..form.find("</form>").unwrap_or(form.len())];
        let attribute = |tag: &str, name: &str| {
            let at = tag
                .find(&format!("{name}=\""))
                .map(|i| i + name.len() + 2)?;
            Some(tag[at..at + tag[at..].find('"')?].to_string())
        };
        let action = attribute(form, "action").unwrap();
        let action = if action.starts_with("http") {
            action
        } else {
            format!("{}{action}", self.provider.issuer())
        };
        let mut body: Vec<(String, String)> = form
            .split("<input")
            .skip(1)
            .filter_map(|tag| Some((attribute(tag, "name")?, attribute(tag, "value")?)))
            .collect();
        body.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut args = vec![
            "-L".to_string(),
            "-c".into(),
            self.jar.clone(),
            "-b".into(),
            self.jar.clone(),
        ];
        for (k, v) in body {
            args.extend(["--data-urlencode".into(), format!("{k}={v}")]);
        }
        args.push(action);
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Signs in as `user` on the provider's login page, then consents.
    fn sign_in(&self, login_page: &str, user: &str) -> String {
        assert!(login_page.contains("name=\"login\""), "{login_page}");
        let consent = self.submit(login_page, &[("login", user), ("password", "any")]);
        assert!(consent.contains("value=\"consent\""), "{consent}");
        self.submit(&consent, &[])
    }
}

/// Starts `sluice login ARGS` with its own credentials file; returns it and the page it asks
/// to open.
fn start_login(gw: &Gateway, credentials: &Path, args: &[&str]) -> (Child, String) {
    use std::io::BufRead;
    let mut login = gw.cli();
    let mut login = login
        .env_remove("SLUICE_TOKEN")
        .env("SLUICE_CREDENTIALS", credentials)
        .arg("login")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = login.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let url = loop {
        let line = lines.next().expect("login printed no address").unwrap();
        if let Some(url) = line.strip_prefix("Sign in at: ") {
            break url.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (login, url)
}

/// The CLI with `args`, signed in through `credentials` (no token given).
fn with_saved(gw: &Gateway, credentials: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = gw.cli();
    cmd.env_remove("SLUICE_TOKEN")
        .env("SLUICE_CREDENTIALS", credentials)
        .args(args);
    run_command(&mut cmd, "")
}

/// What `sluice login` saved, by gateway.
fn saved(credentials: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(credentials).unwrap()).unwrap()
}

#[test]
fn sluice_login_signs_in_through_the_browser_flow_and_renews_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start_new(dir.path());
    let gw = gateway(&provider.issuer());
    let credentials = dir.path().join("credentials.json");

    let (login, url) = start_login(&gw, &credentials, &["--no-browser"]);
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    // The browser: the provider's login page, its consent page, then back to the CLI.
    let browser = Browser::new(&provider, dir.path());
    let done = browser.sign_in(&browser.get(&url), "alice");
    assert!(done.contains("Signed in to Sluice"), "{done}");
    assert!(wait_child(login).success());

    // Kept for this gateway in a file only its owner can read.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&credentials)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let saved = || saved(&credentials);
    let first = saved()[&gw.addr]["id_token"].as_str().unwrap().to_string();
    assert!(saved()[&gw.addr]["refresh_token"].is_string());

    // Every command then uses it (no --token): alice's session, as alice.
    let as_saved = |args: &[&str]| with_saved(&gw, &credentials, args);
    let (code, out, err) = as_saved(&["exec", "shell", "--", "echo", "as alice"]);
    assert_eq!((code, out.as_str()), (0, "as alice\n"), "{err}");
    let (_, listed, _) = as_saved(&["sessions"]);
    assert!(listed.contains("alice"), "{listed}");

    // The ID token lives 70 s here; within a minute of its end the CLI renews it with the
    // refresh token before use.
    std::thread::sleep(std::time::Duration::from_secs(11));
    let (code, _, err) = as_saved(&["sessions"]);
    assert_eq!(code, 0, "{err}");
    let renewed = saved()[&gw.addr]["id_token"].as_str().unwrap().to_string();
    assert_ne!(first, renewed, "the token was not renewed");

    // Logout forgets it; then the gateway says how to sign in.
    let (code, _, err) = as_saved(&["logout"]);
    assert_eq!(code, 0, "{err}");
    assert!(!credentials.exists());
    let (code, _, err) = as_saved(&["sessions"]);
    assert_ne!(code, 0);
    assert!(err.contains("run `sluice login`"), "{err}");
}

#[test]
fn sluice_login_device_signs_in_a_machine_without_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start_new(dir.path());
    let gw = gateway(&provider.issuer());
    let credentials = dir.path().join("credentials.json");

    let (login, url) = start_login(&gw, &credentials, &["--device"]);
    assert!(url.contains("user_code="), "{url}");
    // Someone opens the page on another device, confirms the code and signs in as bob.
    let browser = Browser::new(&provider, dir.path());
    let mut page = browser.get(&url);
    while page.contains("name=\"xsrf\"") {
        page = browser.submit(&page, &[]);
    }
    let done = browser.sign_in(&page, "bob");
    assert!(done.contains("Sign-in Success"), "{done}");
    assert!(wait_child(login).success());

    let (code, _, err) = with_saved(&gw, &credentials, &["reviews"]);
    assert_eq!(code, 0, "{err}");
    let token = saved(&credentials)[&gw.addr]["id_token"].clone();
    assert!(jwt_part(token.as_str().unwrap(), 1).contains("\"sub\":\"bob\""));
}

#[test]
fn roles_from_the_policy_decide_who_connects_reviews_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start_new(dir.path());
    let gw = gateway(&provider.issuer());
    let alice = provider.id_token("alice", &["developers"]);
    let bob = provider.id_token("bob", &["reviewers"]);
    let carol = provider.id_token("carol", &["auditors"]);
    let dave = provider.id_token("dave", &[]);

    // Each can see what they may do.
    let (code, out, err) = gw.run_as(Some(&alice), &["whoami"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "alice (alice@example.com)\ngroups: developers\npython: none\nshell: connect\n"
    );

    // Connecting: developers on shell, not on python (reviewers only); nobody without a group.
    assert_eq!(echo_as(&gw, &alice).0, 0);
    let (code, _, err) = gw.run_as(Some(&alice), &["exec", "python", "--", "print(1)"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("`alice` may not connect to `python`: that needs the `connect` role on `python`, held by groups reviewers; your groups: developers"),
        "{err}"
    );
    let (code, _, err) = echo_as(&gw, &dave);
    assert_ne!(code, 0);
    assert!(err.contains("your groups: none"), "{err}");

    // Reading: each sees their own sessions and nobody else's; carol, the auditor, sees and
    // replays all of them.
    let alice_session = gw.newest_session_as(&alice, &[]);
    let machine = provider.machine_token();
    assert_eq!(echo_as(&gw, &machine).0, 0);
    let (_, bots, _) = gw.run_as(Some(&machine), &["sessions"]);
    assert!(
        !bots.contains(&alice_session),
        "the bot sees alice's session: {bots}"
    );
    let (code, _, err) = gw.run_as(Some(&machine), &["replay", &alice_session, "--speed", "0"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("needs the `audit` role on `shell`, held by groups auditors"),
        "{err}"
    );
    let (_, all, _) = gw.run_as(Some(&carol), &["sessions"]);
    assert!(
        all.contains(&alice_session) && all.contains("ci-bot"),
        "{all}"
    );
    let (code, replayed, err) =
        gw.run_as(Some(&carol), &["replay", &alice_session, "--speed", "0"]);
    assert_eq!((code, replayed.as_str()), (0, "> echo hi\nhi\n"), "{err}");
    let (code, _, _) = gw.run_as(Some(&carol), &["verify"]);
    assert_eq!(code, 0);
    let (code, _, err) = gw.run_as(Some(&alice), &["verify"]);
    assert_ne!(code, 0);
    assert!(err.contains("needs the `audit` role"), "{err}");

    // Reviewing: the bot's risky command is held; alice (no review role) cannot approve it,
    // bob can.
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let mut held = gw.cli();
    let held = held
        .env("SLUICE_TOKEN", &machine)
        .args([
            "exec",
            "shell",
            "--",
            "rm",
            "-rf",
            scratch.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut review = String::new();
    eventually(
        "a pending review",
        std::time::Duration::from_secs(20),
        || {
            let (_, out, _) = gw.run_as(Some(&bob), &["reviews", "--status", "pending"]);
            review = out
                .split_whitespace()
                .find(|w| w.starts_with("r-"))
                .unwrap_or_default()
                .to_string();
            !review.is_empty()
        },
    );
    let (code, _, err) = gw.run_as(Some(&alice), &["review", "approve", &review]);
    assert_ne!(code, 0);
    assert!(
        err.contains("needs the `review` role on `shell`, held by groups reviewers"),
        "{err}"
    );
    let (code, _, err) = gw.run_as(Some(&bob), &["review", "approve", &review]);
    assert_eq!(code, 0, "{err}");
    let status = wait_child(held);
    assert!(status.success());
    assert!(!scratch.exists());

    // Every refusal is in the record, with the role it lacked.
    for refusal in [
        "may not connect to `python`",
        "may not read session",
        "may not decide review",
        "may not verify the record",
    ] {
        assert!(gw.store_holds(refusal), "not recorded: {refusal}");
    }
}

fn wait_child(mut child: Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "still running");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_provider_token_is_a_postgresql_password_too() {
    use crate::postgres::{Cluster, UPSTREAM_PASSWORD, psql};
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::start_new(dir.path());
    let cluster = Cluster::start("scram-sha-256");
    let port = free_port();
    let pg = format!(
        "\n[connections.pg]\nkind = \"postgres\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{}\"\ndatabase = \"postgres\"\nuser = \"postgres\"\npassword = \"{UPSTREAM_PASSWORD}\"\n",
        cluster.port
    );
    let _gateway = gateway_with(&provider.issuer(), &pg);

    // `pg` takes its roles from the shipped [roles.default]: developers connect.
    let alice = provider.id_token("alice", &["developers"]);
    let (code, out, err) = psql(port, &alice, &["-t", "-c", "SELECT 'through the gateway'"]);
    assert_eq!((code, out.as_str()), (0, "through the gateway\n"), "{err}");

    let now = now_secs();
    let expired = provider.mint(
        json!({}),
        json!({"sub": "alice", "aud": "sluice-cli", "groups": ["developers"], "iat": now - 1200, "exp": now - 600}),
    );
    let (code, _, err) = psql(port, &expired, &["-c", "SELECT 1"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("password authentication failed") && err.contains("the token expired"),
        "{err}"
    );
    let dave = provider.id_token("dave", &[]);
    let (code, _, err) = psql(port, &dave, &["-c", "SELECT 1"]);
    assert_eq!(code, 2);
    assert!(err.contains("`dave` may not connect to `pg`"), "{err}");
}
