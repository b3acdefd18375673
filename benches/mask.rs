//! Masking figures (issue 4): the shipped `mask` plugin's default detector set on realistic
//! log and table text, with no values and with 1% of lines holding one, inside Wasm through
//! the real plugin host, against the same plugin code as a native Rust function (the
//! ceiling); and the latency it adds to one 200-byte frame, against a pass-through plugin.
//! The twelve detectors the default set had before issue 24 are measured beside it, and the
//! default set with 300 more keyword detectors, with and without their keywords (prefilter
//! against one combined automaton). The false-positive rate on ordinary text (logs, SQL
//! dumps, source code) is printed.
//!
//! cargo bench -p sluice --bench mask

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_core::frame::{Content, Direction, Frame, SessionInfo};
use sluice_engine::policy::{PluginSpec, Source, World};
use sluice_plugin_host::{FilterInstance, HostConfig, PluginHost};
use sluice_plugin_sdk::{Config, Filter};

/// The shipped policy's settings (policies/default.toml).
const CONFIG: &str =
    r#"{"detectors": ["default"], "style": "label", "styles": {"card": "keep-last"}}"#;
/// The baseline: the twelve detectors the default set had before the provider formats
/// (issue 24), same settings otherwise.
const TWELVE: &str = r#"{"detectors": ["pem", "jwt", "aws-key", "github", "slack", "url-password", "assignment", "email", "iban", "card", "ssn", "phone"], "style": "label", "styles": {"card": "keep-last"}}"#;
const CHUNK: usize = 64 << 10;
/// How many synthetic provider formats the wide sets add.
const WIDE: usize = 300;

/// The default set plus `WIDE` provider-like formats (`zq17x_` and 24 characters), each with
/// its prefix as keyword, or (`keywords` false) all in the combined automaton.
fn wide(keywords: bool) -> String {
    let custom: Vec<String> = (0..WIDE)
        .map(|i| {
            let words = if keywords {
                format!(r#", "keywords": ["zq{i}x_"]"#)
            } else {
                String::new()
            };
            format!(r#"{{"name": "p{i}", "pattern": "\\bzq{i}x_[A-Za-z0-9]{{24}}\\b"{words}}}"#)
        })
        .collect();
    format!(
        r#"{{"detectors": ["default"], "styles": {{"card": "keep-last"}}, "custom": [{}]}}"#,
        custom.join(",")
    )
}

/// Application log lines: timestamps, ids, paths, IPs, versions, durations.
fn log_line(i: usize, with_value: bool) -> String {
    let mut line = format!(
        "2026-11-29T04:{:02}:{:02}.{:03}Z INFO api::orders request_id=7f3a9c2e-{:04x}-4d1b-9e2f-{:012x} \
         method=GET path=/v1/orders/{} status=200 bytes={} took={}ms client=10.0.{}.{} version=1.42.{}",
        i / 60 % 60,
        i % 60,
        i % 1000,
        i % 65536,
        i * 7919,
        100_000 + i,
        512 + i % 4096,
        i % 250,
        i % 256,
        (i * 7) % 256,
        i % 10
    );
    if with_value {
        line.push_str(if i.is_multiple_of(2) {
            " customer=alice.smith@example.com"
        } else {
            " card=4111 1111 1111 1111"
        });
    }
    line.push('\n');
    line
}

/// `psql` aligned output: ids, names, cities, amounts, dates.
fn table_line(i: usize, with_value: bool) -> String {
    let email = if with_value {
        "bob.jones@example.org"
    } else {
        "(none)"
    };
    format!(
        " {:>7} | {:<18} | {:<12} | {:>10}.{:02} | 2026-11-{:02} 12:{:02}:00 | {:<22}\n",
        i,
        ["Alice Smith", "Bob Jones", "Chen Wei", "Dana Kowalski"][i % 4],
        ["Lisbon", "Toronto", "Osaka", "Nairobi"][i % 4],
        i * 37 % 100_000,
        i % 100,
        1 + i % 28,
        i % 60,
        email
    )
}

/// About `CHUNK` bytes of lines; every hundredth holds a value when `percent` is 1.
fn text(line: fn(usize, bool) -> String, percent: usize) -> Vec<u8> {
    let mut out = String::new();
    let mut i = 0;
    while out.len() < CHUNK {
        out.push_str(&line(i, percent > 0 && i % 100 == 42));
        i += 1;
    }
    out.into_bytes()
}

fn frame(bytes: &[u8]) -> Frame {
    Frame {
        seq: 1,
        direction: Direction::TargetToClient,
        timestamp_ms: 0,
        content: Content::Bytes(bytes.to_vec()),
    }
}

fn instance(host: &PluginHost, name: &str, config: &str) -> FilterInstance {
    load(host, name, Source::Builtin(name.into()), config)
}

fn load(host: &PluginHost, name: &str, source: Source, config: &str) -> FilterInstance {
    let spec = PluginSpec::standalone(name, source, World::Filter, config.into());
    let session = SessionInfo {
        id: "bench".into(),
        ..SessionInfo::default()
    };
    host.load(&spec).unwrap().filter_instance(&session).unwrap()
}

/// `MASK_WASM_VARIANT=PATH`: another build of the mask component (say, with `simd128`),
/// measured beside the shipped one in the same run.
fn variant(host: &PluginHost) -> Option<FilterInstance> {
    let path = std::env::var_os("MASK_WASM_VARIANT")?;
    Some(load(host, "mask", Source::File(path.into()), CONFIG))
}

fn native() -> mask::Mask {
    mask::Mask::init(&Config::from_json(CONFIG), &SessionInfo::default()).unwrap()
}

fn throughput(c: &mut Criterion) {
    sluice_plugin_host::builtin::provide(sluice_builtins::ALL);
    let host = PluginHost::new(HostConfig::default()).unwrap();
    let mut wasm = instance(&host, "mask", CONFIG);
    let mut twelve = instance(&host, "mask", TWELVE);
    let mut ceiling = native();
    let mut wide_prefiltered = instance(&host, "mask", &wide(true));
    let mut wide_combined = instance(&host, "mask", &wide(false));
    let mut variant = variant(&host);
    let mut group = c.benchmark_group("mask_64KiB");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    for (name, line) in [
        ("log", log_line as fn(usize, bool) -> String),
        ("table", table_line),
    ] {
        for percent in [0, 1] {
            let frame = frame(&text(line, percent));
            group.bench_function(format!("{name}_{percent}pct/wasm"), |b| {
                b.iter(|| black_box(wasm.on_frame(&frame).unwrap()))
            });
            group.bench_function(format!("{name}_{percent}pct/wasm_twelve"), |b| {
                b.iter(|| black_box(twelve.on_frame(&frame).unwrap()))
            });
            group.bench_function(format!("{name}_{percent}pct/native"), |b| {
                b.iter(|| black_box(ceiling.on_frame(&frame)))
            });
            if let Some(variant) = variant.as_mut() {
                group.bench_function(format!("{name}_{percent}pct/wasm_variant"), |b| {
                    b.iter(|| black_box(variant.on_frame(&frame).unwrap()))
                });
            }
            if name == "log" {
                group.bench_function(format!("{name}_{percent}pct/wasm_wide_prefiltered"), |b| {
                    b.iter(|| black_box(wide_prefiltered.on_frame(&frame).unwrap()))
                });
                group.bench_function(format!("{name}_{percent}pct/wasm_wide_combined"), |b| {
                    b.iter(|| black_box(wide_combined.on_frame(&frame).unwrap()))
                });
            }
        }
    }
    let code = frame(&ordinary(code_line));
    group.bench_function("code_0pct/wasm", |b| {
        b.iter(|| black_box(wasm.on_frame(&code).unwrap()))
    });
    group.bench_function("code_0pct/wasm_twelve", |b| {
        b.iter(|| black_box(twelve.on_frame(&code).unwrap()))
    });
    group.finish();
}

/// Source code: identifiers that name keys and tokens, hashes, versions, URLs, numbers.
fn code_line(i: usize) -> String {
    let lines = [
        format!("    let cache_key = format!(\"users:{{}}:page:{{}}\", id, {i});"),
        format!("    token = tokens.next()  # parse token {i}"),
        "    if (auth.isAuthenticated() && session.keyId !== undefined) { return next(); }".into(),
        format!(
            "    const SHA = \"{:040x}\"; // commit",
            (i as u128) * 0x9e37_79b9_7f4a_7c15
        ),
        format!("    url = \"https://api.example.com/v2/items/{i}?sort=created_at&limit=50\""),
        "    password_field = form.fields[\"password\"]".into(),
        format!(
            "    retries: u32 = {}, timeout_ms: u64 = {}, version = \"1.{}.{}\"",
            i % 7,
            i * 13,
            i % 40,
            i % 9
        ),
        "    def get_api_key_name(self) -> str: return self.settings.api_key_name".into(),
        format!("    private_key_path = \"/etc/ssl/private/server-{i}.key\""),
        format!(
            "    id = uuid.UUID(\"{:08x}-1234-4abc-9def-{:012x}\")",
            i * 2_654_435_761 % (1 << 32),
            i * 97
        ),
    ];
    let mut line = lines[i % lines.len()].clone();
    line.push('\n');
    line
}

/// A SQL dump's rows: ids, names, amounts, timestamps, hashes, phone-less text.
fn sql_line(i: usize) -> String {
    format!(
        "INSERT INTO public.orders VALUES ({i}, 'Order {i} for {}', {}.{:02}, '2026-11-{:02} 10:{:02}:00+00', '{:032x}', 'shipped', {});\n",
        ["Alice Smith", "Bob Jones", "Chen Wei", "Dana Kowalski"][i % 4],
        i * 37 % 100_000,
        i % 100,
        1 + i % 28,
        i % 60,
        (i as u128) * 0x2545_f491_4f6c_dd1d,
        100_000_000 + i * 7919,
    )
}

/// About `CHUNK` bytes of ordinary lines.
fn ordinary(line: fn(usize) -> String) -> Vec<u8> {
    let mut out = String::new();
    let mut i = 0;
    while out.len() < CHUNK {
        out.push_str(&line(i));
        i += 1;
    }
    out.into_bytes()
}

/// Prints how many lines of ordinary text (no values in them) the default set changes.
fn false_positives(_: &mut Criterion) {
    let mut mask = native();
    for (name, line) in [
        ("log", (|i| log_line(i, false)) as fn(usize) -> String),
        ("table", |i| table_line(i, false)),
        ("sql", sql_line),
        ("code", code_line),
    ] {
        let (mut lines, mut changed) = (0, 0);
        let mut examples = Vec::new();
        for i in 0..10_000 {
            let text = line(i);
            lines += 1;
            if let Some(out) = mask.masker().mask(text.as_bytes()) {
                changed += 1;
                if examples.len() < 3 && !examples.contains(&text) {
                    examples.push(format!(
                        "{} -> {}",
                        text.trim(),
                        String::from_utf8_lossy(&out).trim()
                    ));
                }
            }
        }
        println!(
            "false positives, {name}: {changed} of {lines} lines changed ({:.2}%)",
            100.0 * changed as f64 / lines as f64
        );
        for e in examples {
            println!("    {e}");
        }
    }
}

fn frame_latency(c: &mut Criterion) {
    sluice_plugin_host::builtin::provide(sluice_builtins::ALL);
    let host = PluginHost::new(HostConfig::default()).unwrap();
    let mut wasm = instance(&host, "mask", CONFIG);
    let mut twelve = instance(&host, "mask", TWELVE);
    let mut passthrough = instance(&host, "passthrough", "{}");
    let mut ceiling = native();
    let line = format!("{:<199}\n", log_line(7, false).trim_end());
    let frame = frame(line.as_bytes());
    assert_eq!(line.len(), 200);
    let mut group = c.benchmark_group("frame_200B");
    group.bench_function("mask/wasm", |b| {
        b.iter(|| black_box(wasm.on_frame(&frame).unwrap()))
    });
    group.bench_function("mask_twelve/wasm", |b| {
        b.iter(|| black_box(twelve.on_frame(&frame).unwrap()))
    });
    group.bench_function("mask/native", |b| {
        b.iter(|| black_box(ceiling.on_frame(&frame)))
    });
    group.bench_function("passthrough/wasm", |b| {
        b.iter(|| black_box(passthrough.on_frame(&frame).unwrap()))
    });
    group.finish();
}

/// What a session pays at open for the masker: `init` compiles the detectors' regex.
fn new_instance(c: &mut Criterion) {
    sluice_plugin_host::builtin::provide(sluice_builtins::ALL);
    let host = PluginHost::new(HostConfig::default()).unwrap();
    let session = SessionInfo::default();
    let mut group = c.benchmark_group("new_instance");
    let wide = wide(true);
    for (label, name, config) in [
        ("mask", "mask", CONFIG),
        ("mask_twelve", "mask", TWELVE),
        ("mask_wide_custom", "mask", wide.as_str()),
        ("passthrough", "passthrough", "{}"),
    ] {
        let spec = PluginSpec::standalone(
            name,
            Source::Builtin(name.into()),
            World::Filter,
            config.into(),
        );
        let plugin = host.load(&spec).unwrap();
        group.bench_function(label, |b| {
            b.iter(|| black_box(plugin.filter_instance(&session).unwrap()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = false_positives, throughput, frame_latency, new_instance
}
criterion_main!(benches);
