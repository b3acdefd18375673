//! Plugin host figures (issue 2): a 200-byte frame through 0, 1 and 3 pass-through plugins,
//! a new per-session instance, and loading a plugin compiled vs from the precompiled cache.
//! Issue 18: the same filter in Rust, Python and JavaScript (`benches/languages.sh` builds
//! them from `sluice plugin new` and names them in SLUICE_BENCH_PLUGINS).
//!
//! Issue 25: a pgbench transaction through the shipped chain, with and without prescreens.
//!
//! cargo bench -p sluice --bench plugin_host

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use sluice_core::frame::{Content, Direction, Frame, SessionInfo};
use sluice_engine::chain::Chain;
use sluice_engine::policy::{PluginSpec, Source, World};
use sluice_plugin_host::{CacheOutcome, HostConfig, PluginHost};
use sluice_plugin_sdk::prescreen::Screen;

fn passthrough() -> PluginSpec {
    PluginSpec::standalone(
        "passthrough",
        Source::Builtin("passthrough".into()),
        World::Filter,
        "{}".into(),
    )
}

fn session() -> SessionInfo {
    SessionInfo {
        id: "bench".into(),
        connection: "bench".into(),
        protocol: "exec".into(),
        ..SessionInfo::default()
    }
}

fn frame_through_chain(c: &mut Criterion) {
    sluice_plugin_host::builtin::provide(sluice_builtins::ALL);
    let host = PluginHost::new(HostConfig::default()).unwrap();
    let plugin = host.load(&passthrough()).unwrap();
    let frame = Frame {
        seq: 1,
        direction: Direction::TargetToClient,
        timestamp_ms: 0,
        content: Content::Bytes(vec![b'x'; 200]),
    };
    let mut group = c.benchmark_group("frame_200B");
    for n in [0, 1, 3] {
        let mut chain = Chain::new(&vec![plugin.clone(); n], &session()).unwrap();
        group.bench_function(format!("{n}_passthrough"), |b| {
            b.iter(|| black_box(chain.on_frame(frame.clone())))
        });
    }
    group.finish();
}

/// Instances kept alive per batch before they are dropped (unmeasured): well under the pool.
const FEW: BatchSize = BatchSize::NumIterations(200);

fn new_session_instance(c: &mut Criterion) {
    sluice_plugin_host::builtin::provide(sluice_builtins::ALL);
    let host = PluginHost::new(HostConfig::default()).unwrap();
    let passthrough = host.load(&passthrough()).unwrap();
    let redact = host
        .load(&PluginSpec::standalone(
            "redact",
            Source::Builtin("example-redact".into()),
            World::Filter,
            r#"{"literal":"hunter2"}"#.into(),
        ))
        .unwrap();
    let session = session();
    let mut group = c.benchmark_group("instance");
    // What a session waits for at open: instantiate and init. The instance is dropped outside
    // the measurement (at session end, off the data path)...
    group.bench_function("new_passthrough", |b| {
        b.iter_batched(
            || (),
            |()| passthrough.filter_instance(&session).unwrap(),
            FEW,
        )
    });
    group.bench_function("new_example_redact", |b| {
        b.iter_batched(|| (), |()| redact.filter_instance(&session).unwrap(), FEW)
    });
    // ...and the whole per-session cost, with the drop that resets the pooled slot.
    group.bench_function("new_and_drop_passthrough", |b| {
        b.iter(|| drop(black_box(passthrough.filter_instance(&session).unwrap())))
    });
    group.finish();
}

fn load_plugin(c: &mut Criterion) {
    sluice_plugin_host::builtin::provide(sluice_builtins::ALL);
    let dir = tempfile::tempdir().unwrap();
    let cached = PluginHost::new(HostConfig {
        cache_dir: Some(dir.path().into()),
        ..HostConfig::default()
    })
    .unwrap();
    let uncached = PluginHost::new(HostConfig::default()).unwrap();
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    for name in ["passthrough", "example-redact"] {
        let spec = PluginSpec::standalone(
            name,
            Source::Builtin(name.into()),
            World::Filter,
            "{}".into(),
        );
        let bytes = sluice_plugin_host::read_source(&spec).unwrap();
        group.bench_function(format!("{name}_compile"), |b| {
            b.iter(|| black_box(uncached.load_bytes(&spec, &bytes).unwrap()))
        });
        cached.load_bytes(&spec, &bytes).unwrap();
        group.bench_function(format!("{name}_from_cache"), |b| {
            b.iter(|| {
                let (plugin, outcome) = cached.load_bytes(&spec, &bytes).unwrap();
                assert_eq!(outcome, CacheOutcome::Cached);
                black_box(plugin)
            })
        });
    }
    group.finish();
}

/// One pgbench select-only transaction as the `pg` chain sees it: the statement, the result's
/// columns and its one row, through each shipped plugin alone and through the shipped chain.
fn pg_transaction(c: &mut Criterion) {
    sluice_plugin_host::builtin::provide(sluice_builtins::ALL);
    let host = PluginHost::new(HostConfig::default()).unwrap();
    // The baseline: the same plugins called with every frame of their interest.
    let unscreened = PluginHost::new(HostConfig {
        prescreen: false,
        ..HostConfig::default()
    })
    .unwrap();
    let spec = |host: &PluginHost, name: &str, builtin: &str, config: &str| {
        let spec = PluginSpec::standalone(
            name,
            Source::Builtin(builtin.into()),
            World::Filter,
            config.into(),
        );
        host.load(&spec).unwrap()
    };
    const GATE: &str = r#"{"rules":["sql"]}"#;
    const MASK: &str = r#"{"detectors":["default"],"style":"label","styles":{"card":"keep-last"}}"#;
    let gate = spec(&host, "sql-gate", "approve", GATE);
    let mask = spec(&host, "mask", "mask", MASK);
    let gate_unscreened = spec(&unscreened, "sql-gate", "approve", GATE);
    let mask_unscreened = spec(&unscreened, "mask", "mask", MASK);
    let frames = [
        (
            Direction::ClientToTarget,
            Content::Statement(sluice_core::frame::Statement {
                text: "SELECT abalance FROM pgbench_accounts WHERE aid = 412345;".into(),
                params: vec![],
            }),
        ),
        (
            Direction::TargetToClient,
            Content::Columns(vec![sluice_core::frame::Column {
                name: "abalance".into(),
                table: Some("public.pgbench_accounts".into()),
                table_oid: 16398,
                type_oid: 23,
                format: sluice_core::frame::CellFormat::Text,
            }]),
        ),
        (
            Direction::TargetToClient,
            Content::Row(vec![Some(b"-2345".to_vec())]),
        ),
    ];
    let transaction = |chain: &mut Chain| {
        for (seq, (direction, content)) in frames.iter().enumerate() {
            let frame = Frame {
                seq: seq as u64 + 1,
                direction: *direction,
                timestamp_ms: 0,
                content: content.clone(),
            };
            black_box(chain.on_frame(frame));
        }
    };
    let mut group = c.benchmark_group("pg_transaction");
    for (label, plugins) in [
        ("none", vec![]),
        ("sql-gate", vec![gate.clone()]),
        ("mask", vec![mask.clone()]),
        ("sql-gate+mask", vec![gate.clone(), mask.clone()]),
        (
            "sql-gate+mask/no-prescreen",
            vec![gate_unscreened.clone(), mask_unscreened.clone()],
        ),
    ] {
        let mut chain = Chain::new(&plugins, &session()).unwrap();
        group.bench_function(label, |b| b.iter(|| transaction(&mut chain)));
    }
    // In a gateway, the kernel's network stack, the server and the client run between two
    // transactions of a session and evict what the plugins touched. `cold/` walks a buffer
    // larger than the L2 cache first (`cold/walk-only` is the walk alone: subtract it).
    let mut evict = vec![0u8; 4 << 20];
    let mut walk = move || {
        for line in evict.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        black_box(&evict);
    };
    group.bench_function("cold/walk-only", |b| b.iter(&mut walk));
    for (label, plugins) in [
        ("none", vec![]),
        ("sql-gate+mask", vec![gate.clone(), mask.clone()]),
        (
            "sql-gate+mask/no-prescreen",
            vec![gate_unscreened.clone(), mask_unscreened.clone()],
        ),
    ] {
        let mut chain = Chain::new(&plugins, &session()).unwrap();
        group.bench_function(format!("cold/{label}"), |b| {
            b.iter(|| {
                walk();
                transaction(&mut chain)
            })
        });
    }
    for (i, name) in ["statement", "columns", "row"].iter().enumerate() {
        for (label, plugin) in [
            ("sql-gate", &gate),
            ("mask", &mask),
            ("sql-gate/no-prescreen", &gate_unscreened),
            ("mask/no-prescreen", &mask_unscreened),
        ] {
            let mut chain = Chain::new(std::slice::from_ref(plugin), &session()).unwrap();
            let (direction, content) = &frames[i];
            group.bench_function(format!("{label}/{name}"), |b| {
                b.iter(|| {
                    let frame = Frame {
                        seq: 1,
                        direction: *direction,
                        timestamp_ms: 0,
                        content: content.clone(),
                    };
                    black_box(chain.on_frame(frame))
                })
            });
        }
    }
    // What the prescreen itself costs: the masker's (every default detector's pattern)
    // compiled, as the host does once per plugin, and run on the transaction's row.
    let prescreen = mask
        .filter_instance(&session())
        .unwrap()
        .interest()
        .prescreen
        .unwrap();
    group.bench_function("prescreen/mask-compile", |b| {
        b.iter(|| black_box(Screen::new(&prescreen).unwrap()))
    });
    let screen = Screen::new(&prescreen).unwrap();
    group.bench_function("prescreen/mask-row", |b| {
        b.iter(|| black_box(screen.admits(&frames[2].1)))
    });
    group.finish();
}

/// The template filter (`sluice plugin new`) in each language: a call on output that it
/// masks, on a command it judges, on a result row; a new session's instance; what an
/// instance holds. SLUICE_BENCH_PLUGINS is `LANG=PATH,...`.
fn languages(c: &mut Criterion) {
    let Ok(plugins) = std::env::var("SLUICE_BENCH_PLUGINS") else {
        return;
    };
    let host = PluginHost::new(HostConfig::default()).unwrap();
    let config = r#"{"forbidden": ["shutdown"], "mask": "CUST-[0-9]{8}"}"#;
    let output = Frame {
        seq: 1,
        direction: Direction::TargetToClient,
        timestamp_ms: 0,
        content: Content::Bytes(format!("{} owner CUST-00123456\n", "x".repeat(170)).into_bytes()),
    };
    let command = Frame {
        seq: 1,
        direction: Direction::ClientToTarget,
        timestamp_ms: 0,
        content: Content::Statement(sluice_core::frame::Statement {
            text: "SELECT id, name FROM customers WHERE id = 7".into(),
            params: vec![],
        }),
    };
    let row = Frame {
        seq: 2,
        direction: Direction::TargetToClient,
        timestamp_ms: 0,
        content: Content::Row(vec![
            Some(b"CUST-00123456".to_vec()),
            Some(b"Ada".to_vec()),
            None,
        ]),
    };
    let mut group = c.benchmark_group("languages");
    for entry in plugins.split(',') {
        let (lang, path) = entry.split_once('=').unwrap();
        let mut spec = PluginSpec::standalone(
            lang,
            Source::File(path.into()),
            World::Filter,
            config.into(),
        );
        // The Python and JavaScript toolchains' instances grow by every call (RESULTS.md):
        // room for a whole measurement.
        spec.max_memory_bytes = 512 << 20;
        let started = std::time::Instant::now();
        let plugin = host.load(&spec).unwrap();
        let compiled = started.elapsed();
        let mut instance = plugin.filter_instance(&session()).unwrap();
        assert!(matches!(
            instance.on_frame(&output).unwrap().action,
            sluice_core::frame::Action::Replace(_)
        ));
        eprintln!(
            "{lang}: component {} bytes, compiled in {:.1} s, instance memory {} bytes",
            std::fs::metadata(path).unwrap().len(),
            compiled.as_secs_f64(),
            instance.memory_bytes()
        );
        group.bench_function(format!("{lang}/call_output_masked"), |b| {
            b.iter(|| black_box(instance.on_frame(&output).unwrap()))
        });
        group.bench_function(format!("{lang}/call_command"), |b| {
            b.iter(|| black_box(instance.on_frame(&command).unwrap()))
        });
        group.bench_function(format!("{lang}/call_row"), |b| {
            b.iter(|| black_box(instance.on_frame(&row).unwrap()))
        });
        group.bench_function(format!("{lang}/new_instance"), |b| {
            b.iter_batched(|| (), |()| plugin.filter_instance(&session()).unwrap(), FEW)
        });
        // How many sessions the default pool holds at once with this plugin in their chain.
        let mut live = Vec::new();
        let held = loop {
            match plugin.filter_instance(&session()) {
                Ok(i) if live.len() < 1000 => live.push(i),
                Ok(_) => break format!("{} (the limit of the test)", live.len()),
                Err(e) => break format!("{} ({})", live.len(), e.failure),
            }
        };
        eprintln!("{lang}: concurrent instances in the default pool: {held}");
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = frame_through_chain, pg_transaction, new_session_instance, load_plugin, languages
}
criterion_main!(benches);
