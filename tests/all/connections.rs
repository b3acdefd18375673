//! Connections added at runtime through the API: used at once without a restart, their
//! secrets write-only and sealed at rest, kept across restarts, refused when they would take
//! a name of `sluice.toml` or when their chain does not load, and removed.

use serde_json::{Value, json};

use crate::support::*;

/// `METHOD /api/PATH` with `token` and a JSON `body`: (HTTP status, body).
pub fn api(
    gw: &Gateway,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sk", "-w", "\n%{http_code}", "-X", method])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("https://{}{path}", gw.addr));
    if let Some(body) = body {
        cmd.args(["-d", &body.to_string()]);
    }
    let (code, out, err) = run_command(&mut cmd, "");
    assert_eq!(code, 0, "{err}");
    let (body, status) = out.trim_end().rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

#[test]
fn a_connection_added_at_runtime_is_used_at_once_and_its_secret_never_comes_back() {
    let mut gw = Gateway::start();
    let admin = gw.reviewer_token.clone();
    let table = json!({"kind": "exec", "interactive": ["bash"], "script": ["bash", "-s"],
                       "env": {"API_KEY": "s3cr3t-value-42"}});
    // Only admins add; a name of sluice.toml is refused; a bad table says what is wrong.
    let (status, body) = api(
        &gw,
        &gw.user_token,
        "POST",
        "/api/connections",
        Some(json!({"name": "tools", "table": table})),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = api(
        &gw,
        &admin,
        "POST",
        "/api/connections",
        Some(json!({"name": "shell", "table": table})),
    );
    assert!(status == 422 && body.contains("sluice.toml"), "{body}");
    let (status, body) = api(
        &gw,
        &admin,
        "POST",
        "/api/connections",
        Some(json!({"name": "tools", "table": {"kind": "exec"}})),
    );
    assert!(status == 422 && body.contains("missing field"), "{body}");

    let (status, body) = api(
        &gw,
        &admin,
        "POST",
        "/api/connections",
        Some(json!({"name": "tools", "table": table})),
    );
    assert_eq!(status, 200, "{body}");
    // Used at once, with its secret, by someone the default roles let connect.
    let (code, out, err) = gw.run(&["exec", "tools", "--", "echo ${#API_KEY}"], "");
    assert_eq!((code, out.as_str()), (0, "15\n"), "{err}");
    // The secret is in no answer and not in the store's file; the change is in the chain.
    let (_, listed) = api(&gw, &admin, "GET", "/api/connections", None);
    assert!(
        listed.contains("\"runtime\"") && !listed.contains("s3cr3t"),
        "{listed}"
    );
    assert_eq!(gw.stop_with("TERM"), Some(0));
    assert!(
        !gw.store_holds("s3cr3t-value-42"),
        "the secret is sealed at rest"
    );
    let changes = crate::lifecycle::events_of_kind(&gw, "connection");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(!changes[0].to_string().contains("s3cr3t"));

    // Kept across a restart; removed, it is gone.
    gw.restart();
    let (code, out, err) = gw.run(&["exec", "tools", "--", "echo ${#API_KEY}"], "");
    assert_eq!((code, out.as_str()), (0, "15\n"), "{err}");
    let (status, body) = api(&gw, &admin, "DELETE", "/api/connections/tools", None);
    assert_eq!(status, 200, "{body}");
    let (code, _, err) = gw.run(&["exec", "tools", "--", "true"], "");
    assert_ne!(code, 0);
    assert!(err.contains("unknown connection `tools`"), "{err}");
}

#[test]
fn sluice_connections_adds_changes_and_removes_one_from_a_toml_file() {
    let gw = Gateway::start();
    let admin = gw.reviewer_token.clone();
    let file = gw.dir.path().join("tools.toml");
    std::fs::write(
        &file,
        "kind = \"exec\"\ninteractive = [\"bash\"]\nscript = [\"bash\", \"-s\"]\nenv = { TOKEN = \"abc-123\" }\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, out, err) = gw.run_as(Some(&admin), &["connections", "add", "tools", path]);
    assert_eq!(
        (code, out.as_str()),
        (0, "connection tools added\n"),
        "{err}"
    );
    let (code, out, err) = gw.run_as(
        Some(&gw.user_token.clone()),
        &["connections", "add", "more", path],
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("admin"), "{err}");
    let (code, listed, _) = gw.run_as(Some(&admin), &["connections"]);
    assert_eq!(code, 0);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("tools") && l.contains("runtime")),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("shell") && l.contains("sluice.toml")),
        "{listed}"
    );
    // Changed without its secret: the secret stays.
    std::fs::write(
        &file,
        "kind = \"exec\"\ninteractive = [\"sh\"]\nscript = [\"sh\"]\n",
    )
    .unwrap();
    let (code, _, err) = gw.run_as(Some(&admin), &["connections", "edit", "tools", path]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = gw.run(&["exec", "tools", "--", "echo $TOKEN"], "");
    assert_eq!((code, out.as_str()), (0, "abc-123\n"), "{err}");
    let (code, _, err) = gw.run_as(Some(&admin), &["connections", "rm", "tools"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = gw.run_as(Some(&admin), &["connections", "rm", "shell"]);
    assert_ne!(code, 0);
    assert!(err.contains("sluice.toml"), "{err}");
}

#[test]
fn a_postgres_connection_added_at_runtime_opens_its_own_port_and_runs_the_default_chain() {
    use crate::postgres::{Cluster, UPSTREAM_PASSWORD, free_port, psql};
    let cluster = Cluster::start("scram-sha-256");
    // The policy names no chain for the new connection: `[chains] default` governs it.
    let gw = Gateway::start_with_policy(
        "",
        Some(
            "[plugins.names]\nsource = \"builtin:mask\"\nconfig = { detectors = [], columns = { \"customers.name\" = \"fill\" } }\n\n\
             [chains]\ndefault = [\"names\"]\n",
        ),
    );
    let admin = gw.reviewer_token.clone();
    let table = |port: u16| {
        json!({"kind": "postgres", "listen": format!("127.0.0.1:{port}"),
               "upstream": format!("127.0.0.1:{}", cluster.port), "database": "postgres",
               "user": "postgres", "password": UPSTREAM_PASSWORD})
    };
    let query = [
        "-t",
        "-c",
        "select id, name, email from customers order by id",
    ];
    let works = |port: u16| {
        let (code, out, err) = psql(port, &gw.user_token, &query);
        assert_eq!(code, 0, "port {port}: {err}");
        assert!(
            out.contains("alice@example.com") && !out.contains("Alice"),
            "{out}"
        );
    };
    let refused = |port: u16| {
        let (code, _, err) = psql(port, &gw.user_token, &query);
        assert!(code != 0 && err.contains("refused"), "port {port}: {err}");
    };

    let first = free_port();
    let (status, body) = api(
        &gw,
        &admin,
        "POST",
        "/api/connections",
        Some(json!({"name": "crm", "table": table(first)})),
    );
    assert_eq!(status, 200, "{body}");
    works(first);

    // A port something else holds refuses the change, and the door stays where it was.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let (status, body) = api(
        &gw,
        &admin,
        "PUT",
        "/api/connections/crm",
        Some(json!({"table": table(taken_port)})),
    );
    assert!(
        status >= 400 && body.contains("cannot listen"),
        "{status} {body}"
    );
    works(first);
    let (_, listed) = api(&gw, &admin, "GET", "/api/connections", None);
    assert!(listed.contains(&format!("127.0.0.1:{first}")), "{listed}");

    // Moved to another port (the secret left out is kept): the old one closes.
    let second = free_port();
    let mut moved = table(second);
    moved.as_object_mut().unwrap().remove("password");
    let edit = |table: &Value| {
        let (status, body) = api(
            &gw,
            &admin,
            "PUT",
            "/api/connections/crm",
            Some(json!({"table": table})),
        );
        assert_eq!(status, 200, "{body}");
    };
    edit(&moved);
    works(second);
    refused(first);
    // An edit that keeps the port reopens it.
    edit(&moved);
    works(second);

    // Removed: its port closes.
    let (status, body) = api(&gw, &admin, "DELETE", "/api/connections/crm", None);
    assert_eq!(status, 200, "{body}");
    refused(second);
    drop(taken);
}
