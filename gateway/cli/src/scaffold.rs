//! `sluice plugin new NAME [--lang rust|python|js]`: a plugin project that builds where it is
//! made. The SDK (of its language) and the contract it needs are written out with it from
//! copies carried inside this binary, so the project matches the gateway that made it and
//! assumes no checkout beside it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The plugin contract, as the gateway implements it.
pub const WIT: &str = include_str!("../../../wit/plugin.wit");

/// The SDK's sources (plugin-sdk/src), written out as `sluice-plugin-sdk/src`.
const SDK_SOURCES: [(&str, &str); 10] = [
    ("lib.rs", include_str!("../../../plugin-sdk/src/lib.rs")),
    ("types.rs", include_str!("../../../plugin-sdk/src/types.rs")),
    (
        "conversions.rs",
        include_str!("../../../plugin-sdk/src/conversions.rs"),
    ),
    (
        "sessions.rs",
        include_str!("../../../plugin-sdk/src/sessions.rs"),
    ),
    (
        "pattern.rs",
        include_str!("../../../plugin-sdk/src/pattern.rs"),
    ),
    (
        "prescreen.rs",
        include_str!("../../../plugin-sdk/src/prescreen.rs"),
    ),
    (
        "testing.rs",
        include_str!("../../../plugin-sdk/src/testing.rs"),
    ),
    ("http.rs", include_str!("../../../plugin-sdk/src/http.rs")),
    ("log.rs", include_str!("../../../plugin-sdk/src/log.rs")),
    (
        "__wasm.rs",
        include_str!("../../../plugin-sdk/src/__wasm.rs"),
    ),
];
const SDK_MANIFEST: &str = include_str!("../../../plugin-sdk/Cargo.toml");
const WORKSPACE_MANIFEST: &str = include_str!("../../../Cargo.toml");

/// Files every template has: sample frames and the policy snippet.
const COMMON: [(&str, &str); 2] = [
    (
        "frames.jsonl",
        include_str!("../templates/rust/frames.jsonl"),
    ),
    (
        "sluice-policy.toml",
        include_str!("../templates/rust/sluice-policy.toml"),
    ),
];

/// The Rust template: (path in the project, text with `{{...}}` placeholders).
const RUST_TEMPLATE: [(&str, &str); 4] = [
    ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    ("README.md", include_str!("../templates/rust/README.md")),
    (".gitignore", include_str!("../templates/rust/gitignore")),
];

/// The Python template, with the Python SDK (plugin-sdk-python).
const PYTHON_TEMPLATE: [(&str, &str); 7] = [
    ("app.py", include_str!("../templates/python/app.py")),
    (
        "test_app.py",
        include_str!("../templates/python/test_app.py"),
    ),
    ("README.md", include_str!("../templates/python/README.md")),
    (".gitignore", include_str!("../templates/python/gitignore")),
    (
        "sluice_plugin/__init__.py",
        include_str!("../../../plugin-sdk-python/sluice_plugin/__init__.py"),
    ),
    (
        "sluice_plugin/testing.py",
        include_str!("../../../plugin-sdk-python/sluice_plugin/testing.py"),
    ),
    (
        "sluice_plugin/_component.py",
        include_str!("../../../plugin-sdk-python/sluice_plugin/_component.py"),
    ),
];

/// The JavaScript template, with the JavaScript SDK (plugin-sdk-js).
const JS_TEMPLATE: [(&str, &str); 9] = [
    ("plugin.js", include_str!("../templates/js/plugin.js")),
    (
        "plugin.component.js",
        include_str!("../templates/js/plugin.component.js"),
    ),
    (
        "plugin.test.js",
        include_str!("../templates/js/plugin.test.js"),
    ),
    ("package.json", include_str!("../templates/js/package.json")),
    ("README.md", include_str!("../templates/js/README.md")),
    (".gitignore", include_str!("../templates/js/gitignore")),
    (
        "sluice-plugin/sluice-plugin.js",
        include_str!("../../../plugin-sdk-js/sluice-plugin.js"),
    ),
    (
        "sluice-plugin/component.js",
        include_str!("../../../plugin-sdk-js/component.js"),
    ),
    (
        "sluice-plugin/build.mjs",
        include_str!("../../../plugin-sdk-js/build.mjs"),
    ),
];

/// The component tools the Python and JavaScript templates build with (the versions the
/// tests build with).
pub const COMPONENTIZE_PY: &str = "0.25.1";
pub const COMPONENTIZE_JS: &str = "0.23.0";
/// componentize-js imports it but declares it an optional peer, which `npm ci` leaves out.
pub const PREVIEW2_SHIM: &str = "0.25.0";

/// A plugin's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// The contract's version, from its `package` line.
pub fn contract_version() -> &'static str {
    WIT.lines()
        .find_map(|l| l.strip_prefix("package sluice:plugin@"))
        .map_or("unknown", |v| v.trim_end_matches(';'))
}

/// Makes the project `dir` (whose last component names the plugin). Refuses a folder that
/// exists and is not empty: nothing is overwritten.
pub fn new_plugin(dir: &Path, lang: Lang) -> anyhow::Result<PathBuf> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("the project needs a folder name")?;
    check_name(name)?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} exists and is not empty; nothing was written",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let krate = name.replace('-', "_");
    let wasm = match lang {
        Lang::Rust => dir.join(format!("target/wasm32-wasip2/release/{krate}.wasm")),
        Lang::Python | Lang::Js => dir.join(format!("{krate}.wasm")),
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &krate)
            .replace("{{contract}}", contract_version())
            .replace("{{wasm}}", &wasm.display().to_string())
            .replace("{{componentize_py}}", COMPONENTIZE_PY)
            .replace("{{componentize_js}}", COMPONENTIZE_JS)
            .replace("{{preview2_shim}}", PREVIEW2_SHIM)
    };
    let template: &[(&str, &str)] = match lang {
        Lang::Rust => &RUST_TEMPLATE,
        Lang::Python => &PYTHON_TEMPLATE,
        Lang::Js => &JS_TEMPLATE,
    };
    for (path, text) in COMMON.iter().chain(template) {
        write(&dir.join(path), &fill(text))?;
    }
    write(&dir.join("wit/plugin.wit"), WIT)?;
    if lang == Lang::Rust {
        write(&dir.join("sluice-plugin-sdk/Cargo.toml"), &sdk_manifest()?)?;
        for (file, text) in SDK_SOURCES {
            write(&dir.join("sluice-plugin-sdk/src").join(file), text)?;
        }
    }
    Ok(dir)
}

/// A plugin name is a crate name and a policy key: lower-case ASCII, digits and dashes.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "`{name}` cannot name a plugin: use lower-case letters, digits and dashes, starting with a letter (e.g. mask-customer-ids)"
        );
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The SDK's manifest made standalone: what it inherits from the gateway's workspace (its
/// version, edition, dependency versions) written in, so it builds outside the workspace
/// with exactly the versions the gateway was built with.
fn sdk_manifest() -> anyhow::Result<String> {
    let workspace: toml::Table = toml::from_str(WORKSPACE_MANIFEST)?;
    let inherited = |section: &str, key: &str| -> Option<toml::Value> {
        workspace.get("workspace")?.get(section)?.get(key).cloned()
    };
    let mut sdk: toml::Table = toml::from_str(SDK_MANIFEST)?;
    sdk.remove("lints");
    sdk.remove("dev-dependencies");
    let package = sdk
        .get_mut("package")
        .and_then(|p| p.as_table_mut())
        .context("the SDK manifest has a package")?;
    for (key, value) in package.iter_mut() {
        if is_inherited(value) {
            *value = inherited("package", key)
                .with_context(|| format!("the workspace has no package.{key}"))?;
        }
    }
    for path in dependency_tables(&sdk) {
        let table = table_at(&mut sdk, &path).context("a dependency table")?;
        for (key, value) in table.iter_mut() {
            if is_inherited(value) {
                *value = inherited("dependencies", key)
                    .with_context(|| format!("the workspace has no dependency {key}"))?;
            }
        }
    }
    Ok(format!(
        "# The Sluice plugin SDK for sluice:plugin@{}, written out by `sluice plugin new`.\n{}",
        contract_version(),
        toml::to_string(&sdk)?
    ))
}

fn is_inherited(value: &toml::Value) -> bool {
    value.get("workspace").and_then(|w| w.as_bool()) == Some(true)
}

/// The paths of every dependency table: `dependencies` and `target.CFG.dependencies`.
fn dependency_tables(manifest: &toml::Table) -> Vec<Vec<String>> {
    let mut paths = vec![vec!["dependencies".to_string()]];
    if let Some(targets) = manifest.get("target").and_then(|t| t.as_table()) {
        for cfg in targets.keys() {
            paths.push(vec!["target".into(), cfg.clone(), "dependencies".into()]);
        }
    }
    paths
}

fn table_at<'a>(table: &'a mut toml::Table, path: &[String]) -> Option<&'a mut toml::Table> {
    path.iter()
        .try_fold(table, |t, key| t.get_mut(key)?.as_table_mut())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sdk_source_is_carried() {
        let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugin-sdk/src");
        for entry in std::fs::read_dir(sources).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                SDK_SOURCES.iter().any(|(file, _)| *file == name),
                "plugin-sdk/src/{name} is not in SDK_SOURCES: `plugin new` would write an SDK that does not build"
            );
        }
    }

    #[test]
    fn the_sdk_manifest_inherits_nothing() {
        let manifest = sdk_manifest().unwrap();
        assert!(!manifest.contains("workspace"), "{manifest}");
        let table: toml::Table = toml::from_str(&manifest).unwrap();
        assert_eq!(table["package"]["name"].as_str(), Some("sluice-plugin-sdk"));
        assert!(
            table["dependencies"]["serde"].get("version").is_some(),
            "{manifest}"
        );
    }

    #[test]
    fn projects_get_the_contract_the_host_speaks() {
        assert_eq!(contract_version(), sluice_plugin_host::CONTRACT_VERSION);
    }

    #[test]
    fn names_must_be_crate_names() {
        assert!(check_name("mask-ids").is_ok());
        for bad in ["Mask", "1mask", "mask_ids", "mask-", "", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
