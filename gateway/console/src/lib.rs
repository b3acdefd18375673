//! The web console's files, compiled into the binary: the gateway serves them itself, with
//! no build step and nothing to install beside it. A page, its script and its style; the
//! terminal player is asciinema-player, vendored as its release built it (see
//! `assets/vendor/asciinema-player/VERSION` and its `LICENSE`).
//!
//! The console is a client of the gateway's `/api/...`, the same role-checked API the CLI
//! uses: nothing here decides who may see or do what.

/// One file: its bytes and its `Content-Type`.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    pub bytes: &'static [u8],
    pub content_type: &'static str,
}

macro_rules! assets {
    ($($path:literal => $type:literal),* $(,)?) => {
        const ASSETS: &[(&str, Asset)] = &[
            $(($path, Asset { bytes: include_bytes!(concat!("../assets/", $path)), content_type: $type }),)*
        ];
    };
}

assets! {
    "index.html" => "text/html; charset=utf-8",
    "console.js" => "text/javascript; charset=utf-8",
    "console.css" => "text/css; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "vendor/asciinema-player/asciinema-player.min.js" => "text/javascript; charset=utf-8",
    "vendor/asciinema-player/asciinema-player.css" => "text/css; charset=utf-8",
    "vendor/asciinema-player/LICENSE" => "text/plain; charset=utf-8",
}

/// The file at `path` (relative to the console's asset root), if the console has it.
pub fn asset(path: &str) -> Option<Asset> {
    ASSETS.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

/// The page every console route answers with; its script renders the view the URL names.
pub fn page() -> Asset {
    ASSETS[0].1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_file_is_there_and_unknown_paths_are_not() {
        for (path, asset) in ASSETS {
            assert!(!asset.bytes.is_empty(), "{path} is empty");
        }
        assert!(asset("console.js").is_some());
        assert!(asset("../Cargo.toml").is_none());
        assert!(page().content_type.starts_with("text/html"));
    }
}
