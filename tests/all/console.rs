//! The web console in a real browser: headless Chromium from Debian, driven through
//! chromedriver (WebDriver), against a real gateway. Sign-in, roles, sessions, transcript and
//! replay, reviews decided in the browser, live sessions watched and ended, and the page's
//! defences (CSRF, CSP, the cookie) — with no console error on any page.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::{Gateway, ensure_installed, run_command};

/// How long the page may take to show what a test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

/// chromedriver on a free loopback port, driving a headless Chromium of its own.
struct Browser {
    driver: Child,
    port: u16,
    _profile: tempfile::TempDir,
    client: Client,
    /// The gateway's origin, `https://127.0.0.1:PORT`.
    origin: String,
}

impl Browser {
    async fn open(gw: &Gateway) -> Browser {
        ensure_installed("/usr/bin/chromedriver", &["chromium", "chromium-driver"]);
        let port = crate::postgres::free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            // The gateway's certificate is from its own CA, which this throwaway profile does
            // not hold; everything else about TLS (Secure cookies, origins) is as in production.
            "acceptInsecureCerts": true,
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a browser session");
        Browser {
            driver,
            port,
            _profile: profile,
            client,
            origin: format!("https://{}", gw.addr),
        }
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.origin))
            .await
            .unwrap();
    }

    /// Waits for an element matching `css` whose text contains `needle`; its text.
    async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = String::new();
        loop {
            if let Ok(found) = self.client.find_all(Locator::Css(css)).await {
                for element in found {
                    if let Ok(text) = element.text().await {
                        if text.contains(needle) {
                            return text;
                        }
                        seen = text;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no `{css}` showing {needle:?}; last seen: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the page's title is `title` (a navigation finished).
    async fn wait_title(&self, title: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.client.title().await.ok().as_deref() != Some(title) {
            assert!(Instant::now() < deadline, "no page titled {title:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for an element matching `css`.
    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(found) = self.client.find(Locator::Css(css)).await {
                return found;
            }
            assert!(Instant::now() < deadline, "nothing matches `{css}`");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the element matching `css`, then clicks the one matching `button`;
    /// again if the page redrew them in between.
    async fn fill_and_click(&self, css: &str, text: &str, button: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let field = self.wait_for(css).await;
            let done = match field.send_keys(text).await {
                Ok(()) => self.wait_for(button).await.click().await.is_ok(),
                Err(_) => false,
            };
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{css}` and `{button}` kept changing"
            );
        }
    }

    /// Runs `script` (an async function body) in the page; what it resolves to.
    async fn run(&self, script: &str) -> Value {
        let wrapped = format!(
            "const done = arguments[arguments.length - 1]; (async () => {{ {script} }})().then(done, (e) => done({{error: String(e)}}));"
        );
        self.client.execute_async(&wrapped, vec![]).await.unwrap()
    }

    /// Clicks the element matching `css`, once it is there.
    async fn click(&self, css: &str) {
        self.wait_for(css).await.click().await.unwrap();
    }

    async fn sign_in(&self, token: &str) {
        self.goto("/console/").await;
        let field = self.wait_for("#token").await;
        field.send_keys(token).await.unwrap();
        self.click("#token-sign-in button[type=submit]").await;
        self.wait_for("#nav:not([hidden])").await;
    }

    async fn sign_out(&self) {
        self.click("#sign-out").await;
        self.wait_for("#token").await;
    }

    /// The sign-in cookie's value, as the browser holds it.
    async fn cookie(&self) -> String {
        let cookies = self.client.get_all_cookies().await.unwrap();
        let cookie = cookies
            .iter()
            .find(|c| c.name() == "__Host-sluice")
            .expect("the sign-in cookie");
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.secure(), Some(true));
        assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
        cookie.value().to_string()
    }

    /// Every message the page logged at SEVERE (errors, CSP violations, failed loads).
    fn console_errors(&self, session: &str) -> Vec<String> {
        let body = json!({"type": "browser"}).to_string();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "POST /session/{session}/se/log HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // chromedriver keeps the connection open: read the head, then Content-Length bytes.
        let mut reader = std::io::BufReader::new(stream);
        let mut length = 0;
        loop {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let logs: Value = serde_json::from_slice(&body).unwrap();
        logs["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["level"] == "SEVERE")
            .map(|l| l["message"].as_str().unwrap_or("").to_string())
            .collect()
    }

    async fn close(self) -> Vec<String> {
        let session = self.client.session_id().await.unwrap().unwrap();
        let errors = self.console_errors(&session);
        let _ = self.client.clone().close().await;
        errors
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// `curl` against the gateway: the HTTP status of `method path` with these headers.
fn curl(gw: &Gateway, method: &str, path: &str, headers: &[String]) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", method]);
    for header in headers {
        cmd.args(["-H", header]);
    }
    cmd.arg(format!("https://{}{path}", gw.addr));
    let (code, out, err) = run_command(&mut cmd, "");
    assert_eq!(code, 0, "{err}");
    out
}

#[test]
fn auditors_find_read_and_replay_sessions_and_people_see_only_their_own() {
    let gw = Gateway::start();
    // A session of the user's with a card number (masked), and one of the reviewer's.
    let (code, out, err) = gw.run(
        &[
            "exec",
            "shell",
            "--",
            "echo card 4111 1111 1111 1111; sleep 1.2; printf 'second\\n'; sleep 0.4; echo done",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("**** **** **** 1111"), "{out}");
    let (code, _, err) = gw.run_as(
        Some(&gw.reviewer_token),
        &["exec", "shell", "--", "echo reviewers-own"],
    );
    assert_eq!(code, 0, "{err}");

    runtime().block_on(async {
        let browser = Browser::open(&gw).await;
        // The page itself: a strict policy, and nothing but the sign-in without a cookie.
        let headers = {
            let mut cmd = Command::new("curl");
            cmd.args(["-sk", "-D", "-", "-o", "/dev/null"])
                .arg(format!("https://{}/console/", gw.addr));
            run_command(&mut cmd, "").1.to_ascii_lowercase()
        };
        let csp = headers
            .lines()
            .find(|l| l.starts_with("content-security-policy:"))
            .expect("a Content-Security-Policy");
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(curl(&gw, "GET", "/api/sessions/search", &[]), "401");

        // A wrong token is refused on the page, and the browser stays signed out.
        browser.goto("/console/").await;
        browser.wait_for("#token").await.send_keys("not-a-token").await.unwrap();
        browser.click("#token-sign-in button[type=submit]").await;
        browser.wait_text("[role=alert]", "unknown token").await;
        // The refused sign-in is the one failed request the page logged.
        let session = browser.client.session_id().await.unwrap().unwrap();
        let logged = browser.console_errors(&session);
        assert!(
            logged.len() == 1 && logged[0].contains("/console/sign-in") && logged[0].contains("401"),
            "{logged:#?}"
        );

        // The user (no audit role) sees only their own session.
        browser.sign_in(&gw.user_token).await;
        let listed = browser.wait_text("#sessions", "dev-user").await;
        assert!(!listed.contains("reviewers-own") && !listed.contains("dev-reviewer"), "{listed}");
        assert_eq!(
            browser.client.find_all(Locator::Css("#sessions tbody tr")).await.unwrap().len(),
            1
        );
        // The token is nowhere the page's script could reach or a URL would carry it.
        let stored = browser
            .run("return [document.cookie, JSON.stringify(localStorage), JSON.stringify(sessionStorage), location.href].join(' ');")
            .await;
        assert!(!stored.to_string().contains(&gw.user_token), "{stored}");
        let cookie = browser.cookie().await;
        browser.sign_out().await;
        // Signed out, the old cookie is worth nothing, even sent by hand.
        assert_eq!(
            curl(&gw, "GET", "/api/sessions/search", &[format!("Cookie: __Host-sluice={cookie}")]),
            "401"
        );

        // The auditor filters by user and by text, and opens the session.
        browser.sign_in(&gw.reviewer_token).await;
        browser.wait_text("#sessions", "dev-reviewer").await;
        browser.goto("/console/sessions?user=dev-user").await;
        let listed = browser.wait_text("#sessions", "dev-user").await;
        assert!(!listed.contains("dev-reviewer"), "{listed}");
        // The first input shows, masked as it was recorded.
        assert!(listed.contains("echo card **** **** **** 1111"), "{listed}");
        assert!(!listed.contains("4111 1111"), "{listed}");
        browser.goto("/console/sessions?text=reviewers-own").await;
        let found = browser.wait_text("#sessions", "dev-reviewer").await;
        assert!(!found.contains("dev-user"), "{found}");
        // Text that was masked is not found: the record never held it.
        browser.goto("/console/sessions?text=4111").await;
        browser.wait_text("main", "No sessions match").await;

        browser.goto("/console/sessions?user=dev-user").await;
        browser.wait_text("#sessions", "dev-user").await;
        browser.click("#sessions tbody a").await;
        let facts = browser.wait_text("#session-facts", "shell").await;
        assert!(facts.contains("dev-user") && facts.contains("mask sha256:"), "{facts}");
        let transcript = browser.wait_text("#transcript", "done").await;
        assert!(transcript.contains("**** **** **** 1111"), "{transcript}");
        assert!(!transcript.contains("4111 1111"), "{transcript}");
        assert!(transcript.contains("sent") && transcript.contains("masked"), "{transcript}");
        browser.wait_text("#verify-status", "Verified").await;

        // The replay comes in segments, each opening on a keyframe (the gateway's test
        // settings make one after half a second of output).
        browser.wait_for("#player .ap-player").await;
        let segments = browser
            .run("const id = location.pathname.split('/').pop(); const r = await fetch(`/api/sessions/${id}/replay`); return (await r.json()).segments.map((s) => s.start);")
            .await;
        let starts: Vec<f64> = serde_json::from_value(segments.clone()).unwrap();
        // The second segment begins where `second` was printed, after the sleep.
        assert!(starts.len() >= 2 && starts[1] >= 1.2, "{segments}");
        let duration = browser
            .run("for (let i = 0; i < 200 && !(await state.player.getDuration()); i++) await new Promise((r) => setTimeout(r, 50)); return await state.player.getDuration();")
            .await;
        assert!(duration.as_f64().is_some_and(|d| d > 1.5), "{duration}");
        // Seeking into the second segment draws its keyframe (the masked first line, from
        // before the seek point) and what came after it, without playing from the start.
        let target = starts[1] + 0.1;
        let seeked = browser
            .run(&format!("await state.player.seek({target}); return await state.player.getCurrentTime();"))
            .await;
        assert!(seeked.as_f64().is_some_and(|t| (t - target).abs() < 0.05), "{seeked}");
        let screen = browser.wait_text("#player .ap-term", "second").await;
        assert!(screen.contains("**** **** **** 1111") && !screen.contains("done"), "{screen}");
        assert!(!screen.contains("4111 1111"), "{screen}");
        browser.run("await state.player.play(); return true;").await;
        browser.wait_text("#player .ap-term", "done").await;

        let errors = browser.close().await;
        assert!(errors.is_empty(), "the pages logged errors: {errors:#?}");
    });
}

#[test]
fn reviewers_decide_in_the_browser_and_live_sessions_are_watched_and_ended() {
    // `ops`: the shipped shell gate, with a minute for a reviewer to decide.
    let gw = Gateway::start_with_policy(
        "\n[connections.ops]\nkind = \"exec\"\ninteractive = [\"bash\"]\nscript = [\"bash\", \"-s\"]\n",
        Some("[chains]\nops = [\"shell-gate\", \"mask\"]\n\n[reviews.ops]\nexpire_seconds = 60\n"),
    );
    runtime().block_on(async {
        let browser = Browser::open(&gw).await;
        browser.sign_in(&gw.reviewer_token).await;
        browser.goto("/console/reviews").await;
        browser.wait_text("#reviews-status", "Live").await;

        // A held command appears in the open inbox by itself, and is approved there.
        let scratch = tempfile::tempdir().unwrap();
        let target = scratch.path().join("approve-me");
        std::fs::create_dir(&target).unwrap();
        let mut held = gw.cli();
        held.args(["exec", "ops", "--", "rm", "-rf"]).arg(&target);
        let waiting = std::thread::spawn(move || run_command(&mut held, ""));
        let row = browser
            .wait_text("#reviews tr[data-status=pending]", "approve-me")
            .await;
        assert!(row.contains("Approve"), "{row}");
        browser
            .fill_and_click(
                "#reviews tr[data-status=pending] input[name=reason]",
                "scratch folder",
                "#reviews tr[data-status=pending] button[data-approve]",
            )
            .await;
        let (code, _, err) = waiting.join().unwrap();
        assert_eq!(code, 0, "{err}");
        assert!(!target.exists(), "approved, it ran");
        browser
            .wait_text(
                "#reviews tr[data-status=approved]",
                "approved by dev-reviewer: scratch folder",
            )
            .await;

        // Rejected in the browser: the terminal hears the reason.
        let target = scratch.path().join("keep-me");
        std::fs::create_dir(&target).unwrap();
        let mut held = gw.cli();
        held.args(["exec", "ops", "--", "rm", "-rf"]).arg(&target);
        let waiting = std::thread::spawn(move || run_command(&mut held, ""));
        browser
            .wait_text("#reviews tr[data-status=pending]", "keep-me")
            .await;
        browser
            .fill_and_click(
                "#reviews tr[data-status=pending] input[name=reason]",
                "not today",
                "#reviews tr[data-status=pending] button[data-reject]",
            )
            .await;
        let (code, _, err) = waiting.join().unwrap();
        assert_ne!(code, 0);
        assert!(err.contains("rejected by dev-reviewer: not today"), "{err}");
        assert!(target.exists(), "rejected, it did not run");

        // A live session is watched, then ended from the browser.
        let mut live = gw.cli();
        live.args(["connect", "shell"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut live = live.spawn().unwrap();
        let mut stdin = live.stdin.take().unwrap();
        stdin.write_all(b"echo watch-me-$((6*7))\n").unwrap();
        let id = gw.live_session();
        browser.goto("/console/live").await;
        browser.wait_text("#live", &id).await;
        browser.goto(&format!("/console/live/{id}")).await;
        browser.wait_text("#live-output", "watch-me-42").await;
        // What is typed later arrives while the page watches.
        stdin.write_all(b"echo later-$((2*3))\n").unwrap();
        browser.wait_text("#live-output", "later-6").await;
        browser.click("button[data-end]").await;
        browser
            .wait_text("#live-status", "ended by dev-reviewer")
            .await;
        let status = live.wait().unwrap();
        assert!(!status.success());
        drop(stdin);

        // The admin's pages: connections, sinks, and the record verified with its head.
        browser.goto("/console/connections").await;
        let listed = browser.wait_text("#connections", "ops").await;
        assert!(
            listed.contains("shell") && listed.contains("exec"),
            "{listed}"
        );
        browser.goto("/console/sinks").await;
        browser.wait_text("main", "No sinks").await;
        browser.goto("/console/record").await;
        browser.click("#verify").await;
        browser.wait_text("#verify-result", "Record verified").await;
        browser.wait_text("#signed-head", "signature").await;

        // The page's own requests carry the CSRF token; the same request without it, or
        // from another site, is refused — even with the browser's cookie.
        let cookie = format!("Cookie: __Host-sluice={}", browser.cookie().await);
        let host = format!("Host: {}", gw.addr);
        let session = browser.client.session_id().await.unwrap().unwrap();
        let logged = browser.console_errors(&session);
        assert!(logged.is_empty(), "the pages logged errors: {logged:#?}");
        let forged = browser
            .run("const r = await fetch('/api/retention', {method: 'POST'}); return r.status;")
            .await;
        assert_eq!(forged, json!(403));
        let logged = browser.console_errors(&session);
        assert!(
            logged.len() == 1 && logged[0].contains("/api/retention"),
            "{logged:#?}"
        );
        assert_eq!(
            curl(
                &gw,
                "POST",
                "/api/retention",
                &[cookie.clone(), "Origin: https://evil.example".into()]
            ),
            "403"
        );
        let csrf = browser.run("return state.csrf;").await;
        let csrf = format!("X-Sluice-CSRF: {}", csrf.as_str().unwrap());
        assert_eq!(
            curl(
                &gw,
                "POST",
                "/api/retention",
                &[
                    cookie.clone(),
                    csrf.clone(),
                    "Sec-Fetch-Site: cross-site".into()
                ]
            ),
            "403"
        );
        assert_eq!(
            curl(
                &gw,
                "POST",
                "/api/retention",
                &[
                    cookie,
                    csrf,
                    host.clone(),
                    format!("Origin: https://{}", gw.addr)
                ]
            ),
            "200"
        );

        let errors = browser.close().await;
        assert!(errors.is_empty(), "the pages logged errors: {errors:#?}");
    });

    // A reviewer who asked cannot approve their own request, in the page or around it.
    runtime().block_on(async {
        let browser = Browser::open(&gw).await;
        browser.sign_in(&gw.reviewer_token).await;
        let scratch = tempfile::tempdir().unwrap();
        let mut held = gw.cli();
        held.env("SLUICE_TOKEN", &gw.reviewer_token);
        held.args(["exec", "ops", "--", "rm", "-rf"]).arg(scratch.path());
        let mut waiting = held.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        browser.goto("/console/reviews").await;
        let row = browser.wait_text("#reviews tr[data-status=pending]", "rm -rf").await;
        assert!(!row.contains("Approve"), "a requester is offered their own approval: {row}");
        let id = browser
            .run("return document.querySelector('#reviews tr[data-status=pending]').dataset.review;")
            .await;
        let id = id.as_str().unwrap();
        let refused = browser
            .run(&format!("const r = await fetch('/api/reviews/{id}/approve', {{method: 'POST', headers: {{'X-Sluice-CSRF': state.csrf}}}}); return [r.status, await r.text()];"))
            .await;
        assert_eq!(refused[0], json!(403), "{refused}");
        assert!(
            refused[1].as_str().unwrap().contains("cannot decide it"),
            "{refused}"
        );
        let _ = waiting.kill();
        let _ = waiting.wait();
        // The refused approval is the one failed request the page logged.
        let errors = browser.close().await;
        assert!(errors.len() == 1 && errors[0].contains("/approve"), "{errors:#?}");
    });
}

/// Signs in at the provider's own pages (its development login and consent forms).
async fn sign_in_at_provider(browser: &Browser, user: &str) {
    browser.goto("/console/").await;
    browser.click("#oidc-sign-in").await;
    browser.wait_title("Sign-in").await;
    browser
        .wait_for("input[name=login]")
        .await
        .send_keys(user)
        .await
        .unwrap();
    browser
        .wait_for("input[name=password]")
        .await
        .send_keys("any")
        .await
        .unwrap();
    browser.click("button[type=submit]").await;
    // The provider asks for consent (once per person and client), then sends the browser back.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let title = browser.client.title().await.unwrap_or_default();
        if title == "Sluice"
            && browser
                .client
                .find(Locator::Css("#nav:not([hidden])"))
                .await
                .is_ok()
        {
            return;
        }
        let consent = "form:has(input[name=prompt][value=consent]) button[type=submit]";
        if let Ok(button) = browser.client.find(Locator::Css(consent)).await {
            let _ = button.click().await;
        }
        assert!(
            Instant::now() < deadline,
            "stuck at the provider, on {title:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn people_sign_in_at_the_openid_provider_and_see_what_their_roles_allow() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::postgres::free_port();
    let provider = crate::oidc::Provider::start_for_console(
        crate::postgres::free_port(),
        &[&crate::oidc::keygen(dir.path(), "k1")],
        &format!("https://127.0.0.1:{port}/console/oidc/callback"),
    );
    let config = format!(
        "\n[oidc]\nissuer = \"{}\"\nclient_id = \"sluice-cli\"\nconsole_client_id = \"sluice-console\"\n\
         scopes = [\"openid\", \"email\", \"groups\", \"offline_access\"]\n",
        provider.issuer()
    );
    let policy = "[roles.shell]\nconnect = [\"developers\"]\naudit = [\"auditors\"]\n";
    let gw = Gateway::start_full(
        &format!("listen = \"127.0.0.1:{port}\""),
        &config,
        Some(policy),
    );
    let alice = provider.id_token("alice", &["developers"]);
    let (code, _, err) = gw.run_as(
        Some(&alice),
        &["exec", "shell", "--", "echo alice-was-here"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = gw.run(&["exec", "shell", "--", "echo someone-else"], "");
    assert_eq!(code, 0, "{err}");

    runtime().block_on(async {
        let browser = Browser::open(&gw).await;
        // A developer sees only her own session.
        sign_in_at_provider(&browser, "alice").await;
        assert_eq!(
            browser.client.current_url().await.unwrap().path(),
            "/console/sessions"
        );
        let listed = browser.wait_text("#sessions", "alice").await;
        assert!(listed.contains("echo alice-was-here"), "{listed}");
        assert!(
            !listed.contains("someone-else") && !listed.contains("dev-user"),
            "{listed}"
        );
        // The token stays on the gateway: neither the URL nor the page's storage has it.
        let url = browser.client.current_url().await.unwrap().to_string();
        assert!(!url.contains("code=") && !url.contains("token"), "{url}");
        browser.sign_out().await;

        // An auditor sees everyone's (after the provider forgot alice, as on another
        // person's browser).
        browser.client.goto(&provider.issuer()).await.unwrap();
        browser.client.delete_all_cookies().await.unwrap();
        sign_in_at_provider(&browser, "carol").await;
        let listed = browser.wait_text("#sessions", "someone-else").await;
        assert!(listed.contains("alice-was-here"), "{listed}");

        // A callback this browser did not start is refused.
        browser
            .goto("/console/oidc/callback?code=stolen&state=forged")
            .await;
        browser
            .wait_text("body", "not started by this browser")
            .await;

        let issuer = provider.issuer();
        let errors: Vec<String> = browser
            .close()
            .await
            .into_iter()
            // The provider's own pages are not the console's (its login page loads a font
            // from the web, which this machine cannot reach).
            .filter(|e| !e.contains(&issuer) && !e.contains("fonts.googleapis.com"))
            .filter(|e| !e.contains("/console/oidc/callback"))
            .collect();
        assert!(errors.is_empty(), "the pages logged errors: {errors:#?}");
    });
}

#[test]
fn an_admin_adds_a_connection_in_the_browser_and_its_secret_never_comes_back() {
    let gw = Gateway::start();
    runtime().block_on(async {
        let browser = Browser::open(&gw).await;
        browser.sign_in(&gw.reviewer_token).await;
        browser.goto("/console/connections").await;
        browser.wait_for("#connection-form").await;
        let type_into = |css: &'static str, text: &'static str| {
            let browser = &browser;
            async move { browser.wait_for(css).await.send_keys(text).await.unwrap() }
        };
        type_into("#connection-form input[name=name]", "tools").await;
        type_into("#connection-form input[name=interactive]", "bash").await;
        type_into("#connection-form input[name=script]", "bash -s").await;
        type_into(
            "#connection-form textarea[name=env]",
            "API_KEY=br0wser-s3cret",
        )
        .await;
        browser.click("#connection-form button[type=submit]").await;
        browser.wait_text("#connection-result", "Saved tools").await;
        let listed = browser.wait_text("#connections", "tools").await;
        assert!(listed.contains("runtime"), "{listed}");

        // Used without a restart, with its secret.
        let (code, out, err) = gw.run(&["exec", "tools", "--", "echo ${#API_KEY}"], "");
        assert_eq!((code, out.as_str()), (0, "14\n"), "{err}");
        // No page or API gives the secret back; editing shows the table without it.
        browser.click("button[data-edit=tools]").await;
        browser
            .wait_text("#connection-result", "Secrets left empty are kept")
            .await;
        let page = browser.client.source().await.unwrap();
        assert!(
            !page.contains("br0wser-s3cret"),
            "the page holds the secret"
        );
        let api = browser
            .run("return await (await fetch('/api/connections')).text();")
            .await;
        assert!(!api.to_string().contains("br0wser-s3cret"), "{api}");
        // Removed in two clicks.
        browser.click("button[data-remove=tools]").await;
        browser.click("button[data-remove=tools]").await;
        browser
            .wait_for("#connections:not(:has(tr[data-connection=tools]))")
            .await;
        let (code, _, _) = gw.run(&["exec", "tools", "--", "true"], "");
        assert_ne!(code, 0);

        let errors = browser.close().await;
        assert!(errors.is_empty(), "the pages logged errors: {errors:#?}");
    });
}

/// `GET path` with `token`: (HTTP status, body).
fn get_as(gw: &Gateway, token: &str, path: &str) -> (u16, String) {
    crate::connections::api(gw, token, "GET", path, None)
}

#[test]
fn replays_are_served_to_those_who_may_read_them_and_each_opening_is_recorded() {
    let mut gw = Gateway::start();
    let reviewer = gw.reviewer_token.clone();
    let (code, _, err) = gw.run_as(
        Some(&reviewer),
        &["exec", "shell", "--", "echo reviewers-own"],
    );
    assert_eq!(code, 0, "{err}");
    let (_, found) = get_as(&gw, &reviewer, "/api/sessions/search?user=dev-reviewer");
    let found: Value = serde_json::from_str(&found).unwrap();
    let id = found["sessions"][0]["id"].as_str().unwrap().to_string();
    let replay = format!("/api/sessions/{id}/replay");

    // Someone without the audit role may not read another's session, in any piece.
    for path in [replay.clone(), format!("{replay}/0")] {
        let (status, body) = get_as(&gw, &gw.user_token, &path);
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, index) = get_as(&gw, &reviewer, &replay);
    assert_eq!(status, 200, "{index}");
    let index: Value = serde_json::from_str(&index).unwrap();
    assert_eq!(index["version"], 1);
    let (status, segment) = get_as(&gw, &reviewer, &format!("{replay}/0"));
    assert!(
        status == 200 && segment.contains("reviewers-own"),
        "{segment}"
    );
    let (status, body) = get_as(&gw, &reviewer, &format!("{replay}/x"));
    assert_eq!(status, 400, "{body}");
    let (status, body) = get_as(&gw, &reviewer, &format!("{replay}/99"));
    assert!(
        status == 404 && body.contains("no replay segment 99"),
        "{body}"
    );

    // The opening was recorded (once: the segments fetched after it are covered by it).
    assert_eq!(gw.stop_with("TERM"), Some(0));
    let reads: Vec<Value> = crate::lifecycle::events_of_kind(&gw, "audit")
        .into_iter()
        .filter(|e| e["form"] == "replay" && e["session"] == id.as_str())
        .collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["by"], "dev-reviewer");
}
