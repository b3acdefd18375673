//! A release `sluice serve` on a prepared data folder, for the benches that measure the
//! gateway as a client sees it.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `sluice serve` in `dir` (whose `data/` holds the record) on a free port, with the
/// shipped policy and development tokens; the process, and a client signed in as the
/// development reviewer (who audits).
pub fn serve(dir: &Path) -> (Child, sluice_cli::client::Client) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.join("sluice.toml"),
        format!(
            "[gateway]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\npolicies = \"{}/../../policies\"\ndev_tokens = true\n\n\
             [connections.shell]\nkind = \"exec\"\ninteractive = [\"bash\"]\nscript = [\"bash\", \"-s\"]\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(gateway.stdout.take().unwrap()).lines();
    lines.next().expect("serve printed nothing").unwrap();
    std::thread::spawn(move || for _ in lines {});
    let data = dir.join("data");
    let tokens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("dev-tokens.json")).unwrap())
            .unwrap();
    let client = sluice_cli::client::Client::new(
        &format!("127.0.0.1:{port}"),
        Some(tokens["reviewer"].as_str().unwrap().to_string()),
        Some(data.join("tls/ca.pem")),
    )
    .unwrap();
    (gateway, client)
}
