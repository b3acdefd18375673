//! The plugin host: runs untrusted Wasm components safely and fast.
//!
//! Architecture invariants:
//! - This is the only crate that depends on wasmtime (Cargo enforces it: no other crate
//!   lists it).
//! - One [`Engine`] per host; each plugin is compiled once (or loaded from the precompiled
//!   cache) and kept as an `InstancePre`.
//! - One instance per (session, plugin): a [`FilterInstance`] belongs to one session, so no
//!   state crosses sessions.
//! - Every call runs under a deadline (epoch interruption) and a memory limit. Any failure
//!   (trap, deadline, memory, malformed verdict) is returned as a [`PluginError`]; the
//!   instance is discarded and re-made before its next call. Nothing a plugin does can panic
//!   or crash the gateway.
//! - Plugins get no ambient authority: WASI is linked with an empty context (no files,
//!   environment, sockets or inherited stdio), so the interfaces a Rust `std` guest imports
//!   exist without granting anything. `wasi:http` is linked too, but a request leaves only
//!   for a sink whose policy lists the host ([`egress`]).

pub mod builtin;
mod cache;
pub mod egress;
pub mod spec;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sluice_plugin_sdk::prescreen::Screen;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub use cache::CacheOutcome;

use crate::egress::{Egress, Hooks, Resolver};
use crate::spec::{PluginSpec, Source, World};
use sluice_core::frame::{
    self, Content, ContentKind, Direction, Event, Frame, SessionInfo, SinkError, Verdict,
};

mod contract;

pub use contract::{CURRENT as CONTRACT_VERSION, VERSIONS as CONTRACT_VERSIONS};
/// One epoch tick; deadlines are counted in ticks. Fine enough for deadlines of tens of
/// milliseconds, coarse enough that the ticking thread's wakeups cost nothing measurable
/// (at 1 ms they were 3% of the gateway's CPU under database load).
const TICK: Duration = Duration::from_millis(5);
/// `init` may compile patterns and build tables: it gets this multiple of the call deadline.
const INIT_DEADLINE_FACTOR: u32 = 20;
/// Deadlines count the CPU time a call uses, so a loaded machine that leaves the call's
/// thread waiting for a core does not fail a healthy plugin; wall time is still capped at
/// this multiple of the deadline.
const WALL_DEADLINE_FACTOR: u32 = 20;
/// Log lines kept per call when they are captured.
const MAX_CAPTURED: usize = 1000;
/// Plugin log messages are cut to this length.
const MAX_LOG_MESSAGE: usize = 4096;

/// Settings of the host, from the gateway's configuration.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Where precompiled components are kept; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// How many plugin instances may live at once (sessions × plugins in their chains).
    pub max_instances: u32,
    /// How sinks' outgoing requests resolve names (`[egress] hosts`, then DNS).
    pub resolver: Arc<Resolver>,
    /// Run filters' prescreens (on unless measuring what they save:
    /// `SLUICE_PLUGIN_PRESCREEN=off`). Off, a filter is called with every frame of its interest.
    pub prescreen: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            cache_dir: None,
            max_instances: 1000,
            resolver: Arc::default(),
            prescreen: true,
        }
    }
}

/// Why a plugin call did not produce a usable answer. Whose fault: always the plugin's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It ran past its deadline and was interrupted.
    Deadline(Duration),
    /// It tried to grow its memory past the limit.
    Memory(usize),
    /// It trapped (a panic, an unreachable, a bad memory access).
    Trap(String),
    /// It answered something the gateway cannot carry out.
    Malformed(String),
    /// Its `init` refused the configuration or the session.
    Init(String),
    /// It could not be instantiated (the instance pool is full, an import is missing).
    Instantiate(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("plugin `{plugin}` failed: {failure}")]
pub struct PluginError {
    pub plugin: String,
    pub failure: Failure,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Deadline(d) => write!(
                f,
                "ran past its {} ms deadline and was stopped",
                d.as_millis()
            ),
            Failure::Memory(limit) => {
                write!(f, "tried to use more than its {limit} bytes of memory")
            }
            Failure::Trap(why) => write!(f, "trapped: {why}"),
            Failure::Malformed(why) => write!(f, "returned a malformed verdict: {why}"),
            Failure::Init(why) => write!(f, "init refused: {why}"),
            Failure::Instantiate(why) => write!(f, "could not be instantiated: {why}"),
        }
    }
}

/// Errors loading a plugin: all are the operator's to fix, and say how.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{at}: cannot read {source_path}: {error}")]
    Read {
        at: String,
        source_path: String,
        error: std::io::Error,
    },
    #[error("{at}: {what}")]
    Invalid { at: String, what: String },
}

pub struct PluginHost {
    engine: Engine,
    /// Filters: WASI over an empty context and `log`.
    linker: Linker<HostState>,
    /// Sinks: the same and `wasi:http` (sent by `crate::egress`, to allowed hosts only).
    sink_linker: Linker<HostState>,
    cache: Option<cache::ArtifactCache>,
    ticker_stop: Arc<AtomicBool>,
    resolver: Arc<Resolver>,
    prescreen: bool,
}

impl fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginHost").finish_non_exhaustive()
    }
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl PluginHost {
    pub fn new(config: HostConfig) -> anyhow::Result<PluginHost> {
        let mut pool = PoolingAllocationConfig::default();
        let n = config.max_instances;
        // A component instance holds several core instances and tables (its modules plus
        // the shims that wire up its imports): a Rust guest a few, a Python one (CPython and
        // its libraries, componentize-py) 14, a JavaScript one (componentize-js) fewer; one
        // memory each. Sized so every session can hold a Python plugin (benches/RESULTS.md,
        // issue 18: at 8 per component, 570 Python instances filled the pool of 1000).
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(16))
            .total_tables(n.saturating_mul(16))
            .total_memories(n.saturating_mul(2))
            .max_memory_size(crate::spec::MAX_MEMORY_BYTES as usize)
            // A slot's pages go back to the OS as soon as its instance is dropped: batched
            // decommits wait for a full batch, so an idle gateway kept the memory of failed
            // plugins (up to their limit each) resident indefinitely. The first pages stay
            // resident (reset by memset) for the next session.
            .decommit_batch_size(1)
            .linear_memory_keep_resident(256 << 10)
            .table_keep_resident(16 << 10);
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine =
            Engine::new(&wasm).map_err(|e| anyhow::anyhow!("cannot start the Wasm engine: {e}"))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        contract::add_log_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut sink_linker = linker.clone();
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut sink_linker)
            .map_err(|e| anyhow::anyhow!("{e}"))?;

        let cache = match config.cache_dir {
            Some(dir) => Some(cache::ArtifactCache::open(&engine, dir)?),
            None => None,
        };

        // One engine-wide clock for all deadlines.
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticking, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticking.increment_epoch();
                }
            })?;
        Ok(PluginHost {
            engine,
            linker,
            sink_linker,
            cache,
            ticker_stop,
            resolver: config.resolver,
            prescreen: config.prescreen,
        })
    }

    /// Loads the plugin a policy declares: reads (or takes the built-in) component, checks
    /// its pin and its world, compiles it or takes it from the cache, and links it.
    /// Then checks its config: a policy with a bad config fails at load, not at the first
    /// session.
    pub fn load(&self, spec: &PluginSpec) -> Result<LoadedPlugin, LoadError> {
        let bytes = read_source(spec)?;
        let (plugin, _) = self.load_bytes(spec, &bytes)?;
        plugin.check_config()?;
        Ok(plugin)
    }

    /// Like [`PluginHost::load`], with the component's bytes given; also says whether the
    /// precompiled cache was used.
    pub fn load_bytes(
        &self,
        spec: &PluginSpec,
        bytes: &[u8],
    ) -> Result<(LoadedPlugin, CacheOutcome), LoadError> {
        let invalid = |what: String| LoadError::Invalid {
            at: format!("{} ({})", spec.declared_at, spec.source),
            what,
        };
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(pin) = spec.sha256
            && pin != digest
        {
            return Err(invalid(format!(
                "its SHA-256 is {} but the policy pins {}; refusing to load it",
                hex::encode(digest),
                hex::encode(pin)
            )));
        }
        check_header(bytes).map_err(invalid)?;
        let (component, outcome) = match &self.cache {
            Some(cache) => cache.load(&self.engine, bytes, &digest),
            None => Component::new(&self.engine, bytes).map(|c| (c, CacheOutcome::Compiled)),
        }
        .map_err(|e| invalid(format!("is not a valid component: {e:#}")))?;
        let (found, version) = self.world_of(&component).map_err(invalid)?;
        if found != spec.world {
            return Err(invalid(format!(
                "it implements the `{found}` world, but the policy declares `world = \"{}\"`",
                spec.world
            )));
        }
        let linker = match spec.world {
            World::Filter => &self.linker,
            World::Sink => &self.sink_linker,
        };
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            invalid(format!(
                "its imports cannot be satisfied: {e:#} (plugins may import only sluice:plugin/log and WASI; only sinks get wasi:http)"
            ))
        })?;
        let linked = match spec.world {
            World::Filter => {
                Linked::Filter(contract::FilterPre::new(version, pre).map_err(|e| {
                    invalid(format!(
                        "does not match the filter world of sluice:plugin@{version}: {e:#}"
                    ))
                })?)
            }
            World::Sink => Linked::Sink(contract::SinkPre::new(version, pre).map_err(|e| {
                invalid(format!(
                    "does not match the sink world of sluice:plugin@{version}: {e:#}"
                ))
            })?),
        };
        let egress = match spec.world {
            World::Sink if !spec.allow_hosts.is_empty() => Some(Arc::new(
                Egress::new(&spec.allow_hosts, self.resolver.clone()).map_err(invalid)?,
            )),
            _ => None,
        };
        let plugin = LoadedPlugin(Arc::new(Loaded {
            spec: spec.clone(),
            name: spec.name.as_str().into(),
            checked_interest: std::sync::OnceLock::new(),
            digest,
            linked,
            engine: self.engine.clone(),
            egress,
            pace: Pace::default(),
            screens: Default::default(),
            prescreen: self.prescreen,
        }));
        Ok((plugin, outcome))
    }

    /// Compiles a component (without the cache) and says which world it implements and
    /// what it imports.
    pub fn inspect(&self, bytes: &[u8]) -> Result<Inspection, String> {
        check_header(bytes)?;
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| format!("is not a valid component: {e:#}"))?;
        let (world, version) = self.world_of(&component)?;
        let imports = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        Ok(Inspection {
            world,
            version,
            imports,
        })
    }

    /// Which world a component implements, and in which version of the contract, judged by
    /// its exports and imports; errors say what is foreign about it.
    fn world_of(&self, component: &Component) -> Result<(World, &'static str), String> {
        let ty = component.component_type();
        let mut exports: Vec<&str> = ty.exports(&self.engine).map(|(name, _)| name).collect();
        exports.sort();
        let imports: Vec<&str> = ty.imports(&self.engine).map(|(name, _)| name).collect();
        let foreign: Vec<&str> = imports
            .iter()
            .copied()
            .filter(|name| {
                !name.starts_with("wasi:")
                    && !name.starts_with("sluice:plugin/log@")
                    && !name.starts_with("sluice:plugin/types@")
            })
            .collect();
        if !foreign.is_empty() {
            return Err(format!(
                "it imports {}, which Sluice does not provide (plugins may import only sluice:plugin/log and WASI)",
                foreign.join(", ")
            ));
        }
        // The contract's types come in as an import: its version is the plugin's.
        let built_for = imports
            .iter()
            .find_map(|name| name.strip_prefix("sluice:plugin/types@"))
            .ok_or("it does not use the plugin contract's types (sluice:plugin/types): it is not a Sluice plugin")?;
        let version = contract::VERSIONS
            .into_iter()
            .find(|v| *v == built_for)
            .ok_or_else(|| {
                format!(
                    "it is built against sluice:plugin@{built_for}, and this gateway speaks {}: rebuild it with the SDK of one of those",
                    contract::VERSIONS.join(", ")
                )
            })?;
        // A world's functions must all be there; other exports are never called (a Python
        // component also exports componentize-py's own `exports` instance).
        let has = |names: &[&str]| names.iter().all(|n| exports.contains(n));
        let world = match (
            has(&["init", "on-frame", "flush"]),
            has(&["init", "deliver"]),
        ) {
            (true, false) => World::Filter,
            (false, true) => World::Sink,
            _ => {
                return Err(format!(
                    "its exports [{}] match no world of sluice:plugin@{version} (filter exports init, on-frame, flush; sink exports init, deliver)",
                    exports.join(", ")
                ));
            }
        };
        Ok((world, version))
    }
}

/// What [`PluginHost::inspect`] finds in a component.
#[derive(Debug)]
pub struct Inspection {
    pub world: World,
    /// The contract version it is built against.
    pub version: &'static str,
    pub imports: Vec<String>,
}

/// Reads a plugin's component bytes from its source.
pub fn read_source(spec: &PluginSpec) -> Result<std::borrow::Cow<'static, [u8]>, LoadError> {
    match &spec.source {
        Source::Builtin(name) => {
            crate::builtin::get(name)
                .map(Into::into)
                .ok_or_else(|| LoadError::Invalid {
                    at: spec.declared_at.clone(),
                    what: format!(
                        "there is no built-in plugin `{name}` (built-ins: {})",
                        crate::builtin::names().join(", ")
                    ),
                })
        }
        Source::File(path) => {
            std::fs::read(path)
                .map(Into::into)
                .map_err(|error| LoadError::Read {
                    at: spec.declared_at.clone(),
                    source_path: path.display().to_string(),
                    error,
                })
        }
    }
}

/// A clear word for bytes that are not a component at all.
fn check_header(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    match bytes.get(..8) {
        Some(h) if h.starts_with(MAGIC) && h[4..] == [1, 0, 0, 0] => Err(
            "is a core WebAssembly module, not a component: build plugins with `cargo build --target wasm32-wasip2` \
             (or wrap a module with `wasm-tools component new`)"
                .into(),
        ),
        Some(h) if h.starts_with(MAGIC) => Ok(()),
        _ => Err("is not WebAssembly (it does not start with \\0asm)".into()),
    }
}

/// The session a filter's `init` sees when the gateway checks its config at load: a plugin
/// should refuse it only for what is wrong with the config.
pub fn config_check_session() -> SessionInfo {
    SessionInfo {
        id: "config-check".into(),
        protocol: "check".into(),
        ..SessionInfo::default()
    }
}

/// A compiled, linked plugin, ready to be instantiated for sessions. Cheap to clone.
#[derive(Clone)]
pub struct LoadedPlugin(Arc<Loaded>);

struct Loaded {
    spec: PluginSpec,
    /// The spec's name, shared: each call the chain records names its plugin.
    name: Arc<str>,
    /// What a filter's `init` asked to see for the check session at load.
    checked_interest: std::sync::OnceLock<frame::Interest>,
    digest: [u8; 32],
    linked: Linked,
    engine: Engine,
    /// Where it may send HTTP requests: sinks with `allow_hosts` only.
    egress: Option<Arc<Egress>>,
    /// Whether its calls currently leave the async workers (it was seen computing long).
    pace: Pace,
    /// The prescreens its instances declared, compiled once for all sessions.
    screens: std::sync::Mutex<Vec<Arc<Screen>>>,
    /// Whether they are run ([`HostConfig::prescreen`]).
    prescreen: bool,
}

/// How long a plugin stays marked slow after its last slow call.
const SLOW_FOR: Duration = Duration::from_secs(60);
/// CPU a call must have used after its deadline check to count as computing, not waiting.
const COMPUTING: Duration = Duration::from_millis(1);

/// Calls run inline on the session's async worker: a cross-thread hand-off per frame would
/// cost several µs on two shared cores. A plugin computing to its deadline would hold a
/// worker and every session on it meanwhile, so once one call of it ran a whole deadline
/// while computing (`CallClock::computed_to_deadline`; wall time alone is not enough: on a
/// loaded machine a fast call can wait long for a core), its calls run through
/// `block_in_place` (the worker's other sessions move to another thread) until `SLOW_FOR`
/// passes without another such call. Plugin-wide, not per session: a plugin that burns its
/// deadline in many short sessions is caught after one call.
#[derive(Debug, Default)]
struct Pace {
    /// Milliseconds since `pace_epoch()` until which calls leave the workers.
    slow_until_ms: std::sync::atomic::AtomicU64,
}

fn pace_epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl Pace {
    fn now_ms() -> u64 {
        pace_epoch().elapsed().as_millis() as u64
    }

    fn is_slow(&self) -> bool {
        let until = self.slow_until_ms.load(Ordering::Relaxed);
        until != 0 && Self::now_ms() < until
    }

    fn mark_slow(&self) {
        let until = Self::now_ms() + SLOW_FOR.as_millis() as u64;
        self.slow_until_ms.store(until, Ordering::Relaxed);
    }

    /// Runs `call` where it cannot hold up other sessions when the plugin is slow.
    fn run<R>(&self, call: impl FnOnce() -> R) -> R {
        if !self.is_slow() {
            return call();
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime)
                if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(call)
            }
            _ => call(),
        }
    }
}

enum Linked {
    Filter(contract::FilterPre),
    Sink(contract::SinkPre),
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.0.spec.name)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    pub fn spec(&self) -> &PluginSpec {
        &self.0.spec
    }

    /// Its name in the policy, shared (a cheap clone).
    pub fn name(&self) -> Arc<str> {
        self.0.name.clone()
    }

    /// The frames a filter asked to see when its config was checked at load
    /// ([`LoadedPlugin::check_config`]); `None` for sinks and plugins never checked.
    pub fn checked_interest(&self) -> Option<&frame::Interest> {
        self.0.checked_interest.get()
    }

    /// SHA-256 of the component, as recorded with every session that uses it.
    pub fn digest(&self) -> [u8; 32] {
        self.0.digest
    }

    /// Runs `init` once on a throwaway instance, for a filter with [`config_check_session`],
    /// and turns a refusal into a load error that names the policy entry.
    pub fn check_config(&self) -> Result<(), LoadError> {
        let checked = match &self.0.linked {
            Linked::Filter(_) => self
                .filter_instance(&config_check_session())
                .map(|instance| drop(self.0.checked_interest.set(instance.interest()))),
            Linked::Sink(_) => self.sink_instance().map(drop),
        };
        checked.map_err(|e| LoadError::Invalid {
            at: format!("{} ({})", self.0.spec.declared_at, self.0.spec.source),
            what: match e.failure {
                Failure::Init(why) => format!("its config is refused: {why}"),
                other => format!("it failed while checking its config: {other}"),
            },
        })
    }

    /// A fresh instance of a filter plugin for one session, initialised. Init errors come
    /// back here, so a session whose plugin refuses it never opens.
    pub fn filter_instance(&self, session: &SessionInfo) -> Result<FilterInstance, PluginError> {
        let mut instance = FilterInstance {
            instance: Instance::new(self.clone()),
            session: session.clone(),
            wants: Wants::NOTHING,
            capture: false,
            last_call: Duration::ZERO,
            renewals: 0,
            held_columns: [None, None],
            metric_labels: sluice_core::metrics::labels(&[("plugin", &self.0.spec.name)]),
        };
        let (session, wants) = (&instance.session, &mut instance.wants);
        instance
            .instance
            .live(|plugin| make_filter(plugin, session, wants))?;
        Ok(instance)
    }

    pub fn sink_instance(&self) -> Result<SinkInstance, PluginError> {
        let mut instance = SinkInstance {
            instance: Instance::new(self.clone()),
        };
        instance.instance.live(make_sink)?;
        Ok(instance)
    }

    /// `prescreen` compiled: from the plugin's cache when an instance declared it before
    /// (every session of a plugin usually declares the same), else compiled now and kept.
    fn screen(&self, prescreen: &frame::Prescreen) -> Result<Arc<Screen>, PluginError> {
        let mut screens = self.0.screens.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = screens.iter().find(|s| s.declared() == prescreen) {
            return Ok(known.clone());
        }
        let screen = Screen::new(prescreen).map_err(|why| self.error(Failure::Init(why)))?;
        let compiled = Arc::new(screen);
        // A plugin whose prescreens differ per session: keep the last few, not all.
        if screens.len() >= 8 {
            screens.remove(0);
        }
        screens.push(compiled.clone());
        Ok(compiled)
    }

    fn error(&self, failure: Failure) -> PluginError {
        PluginError {
            plugin: self.0.spec.name.clone(),
            failure,
        }
    }

    /// A new store with this plugin's limits, for one instance.
    fn store(&self, session: Option<&str>) -> Store<HostState> {
        let spec = &self.0.spec;
        let state = HostState {
            wasi: WasiCtx::builder()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build(),
            table: ResourceTable::new(),
            memory: MemoryLimit {
                limit: spec.max_memory_bytes,
                used: 0,
                exceeded: false,
            },
            http: WasiHttpCtx::new(),
            hooks: Hooks {
                egress: self.0.egress.clone(),
                refused: Arc::default(),
            },
            plugin: spec.name.clone(),
            session: session.map(str::to_string),
            clock: CallClock {
                wall_at_start: std::time::Instant::now(),
                budget: spec.deadline,
                cpu_mark: None,
                computed: false,
            },
            panic: None,
            captured: None,
        };
        let mut store = Store::new(&self.0.engine, state);
        store.limiter(|state| &mut state.memory);
        store.epoch_deadline_callback(|mut store| Ok(store.data_mut().clock.check()));
        start_call(&mut store, spec.deadline * INIT_DEADLINE_FACTOR);
        store
    }

    /// A fresh instance: a store with this plugin's limits, instantiated by `make` and
    /// initialised by `init` (whose inner result is the plugin's own answer).
    fn instantiate<B, T>(
        &self,
        session: Option<&str>,
        make: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<B>,
        init: impl FnOnce(&B, &mut Store<HostState>) -> wasmtime::Result<Result<T, String>>,
    ) -> Result<(Store<HostState>, B, T), PluginError> {
        let mut store = self.store(session);
        let bindings =
            make(&mut store).map_err(|e| self.error(Failure::Instantiate(format!("{e:#}"))))?;
        match guarded(|| init(&bindings, &mut store)) {
            Ok(Ok(answer)) => Ok((store, bindings, answer)),
            Ok(Err(message)) => Err(self.error(Failure::Init(message))),
            Err(e) => Err(self.classify(&store, e)),
        }
    }

    /// Turns a wasmtime error from a call into the plugin's failure.
    fn classify(&self, store: &Store<HostState>, error: wasmtime::Error) -> PluginError {
        let spec = &self.0.spec;
        let failure = if store.data().memory.exceeded {
            Failure::Memory(spec.max_memory_bytes)
        } else {
            match (error.downcast_ref::<wasmtime::Trap>(), &store.data().panic) {
                (Some(wasmtime::Trap::Interrupt), _) => Failure::Deadline(spec.deadline),
                // The SDK's panic hook said why before the guest trapped.
                (_, Some(message)) => Failure::Trap(message.clone()),
                (Some(trap), None) => Failure::Trap(trap.to_string()),
                (None, None) => Failure::Trap(format!("{error:#}")),
            }
        };
        self.error(failure)
    }
}

/// Runs a call into a plugin, turning a panic of the host's WASI code into an error. The one
/// known cause: a filter that blocks (sleeps, polls) makes WASI's synchronous bindings start
/// a Tokio runtime inside the session's, which panics; the call fails (closed) and the
/// instance is dropped, instead of the panic taking the session's task down.
fn guarded<R>(call: impl FnOnce() -> wasmtime::Result<R>) -> wasmtime::Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        let why = if why.contains("runtime") {
            "it blocked on a WASI call (a sleep, a poll, or writing to stderr as a guest without the SDK's panic hook does when it panics), which a filter in the data path may not"
        } else {
            why
        };
        Err(wasmtime::Error::msg(why.to_string()))
    })
}

fn ticks(deadline: Duration) -> u64 {
    (deadline.as_micros() / TICK.as_micros()).max(1) as u64
}

/// Arms the deadline for the call about to run on this thread.
fn start_call(store: &mut Store<HostState>, budget: Duration) {
    store.data_mut().clock = CallClock {
        wall_at_start: std::time::Instant::now(),
        budget,
        cpu_mark: None,
        computed: false,
    };
    store.set_epoch_deadline(ticks(budget));
}

/// When a call started, how long it may take, and (once past its deadline) the thread's CPU
/// time when it was last seen.
struct CallClock {
    wall_at_start: std::time::Instant,
    budget: Duration,
    cpu_mark: Option<Duration>,
    /// Stopped for computing past its deadline (not for waiting on a core).
    computed: bool,
}

impl CallClock {
    /// Whether the call just made ran a whole deadline of wall time and used CPU after its
    /// deadline check (it was computing, not waiting for a core). Only such calls read the
    /// CPU clock here.
    fn computed_to_deadline(&self) -> bool {
        self.computed
            || self
                .cpu_mark
                .is_some_and(|mark| thread_cpu_time().saturating_sub(mark) >= COMPUTING)
    }

    /// At the deadline and every deadline after it. A call still running is stopped as soon
    /// as it is seen computing (at least half of a further deadline's worth of CPU); one that
    /// was only kept waiting for a core, on a loaded machine, is given more time, up to
    /// [`WALL_DEADLINE_FACTOR`] deadlines. Calls that end in time never read the CPU clock
    /// (a system call).
    fn check(&mut self) -> UpdateDeadline {
        if self.wall_at_start.elapsed() >= self.budget * WALL_DEADLINE_FACTOR {
            return UpdateDeadline::Interrupt;
        }
        let now = thread_cpu_time();
        match self.cpu_mark.replace(now) {
            Some(mark) if now.saturating_sub(mark) >= self.budget / 2 => {
                self.computed = true;
                UpdateDeadline::Interrupt
            }
            _ => UpdateDeadline::Continue(ticks(self.budget)),
        }
    }
}

/// CPU time this thread has used (calls run on the thread that makes them).
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// One filter plugin's instance for one session.
/// A plugin's live instance, made on first use and again after any failure. Filters and sinks
/// differ only in how an instance is made and what they call on it.
struct Instance<B> {
    plugin: LoadedPlugin,
    /// `None` after a failure: the next call makes a fresh instance.
    live: Option<(Store<HostState>, B)>,
}

impl<B> Instance<B> {
    fn new(plugin: LoadedPlugin) -> Instance<B> {
        Instance { plugin, live: None }
    }

    /// Runs `f` on the live instance (made by `make` when there is none) under the plugin's
    /// deadline and pace. On any failure the instance is dropped.
    /// The live instance, made by `make` when there is none.
    fn live(
        &mut self,
        make: impl FnOnce(&LoadedPlugin) -> Result<(Store<HostState>, B), PluginError>,
    ) -> Result<&mut (Store<HostState>, B), PluginError> {
        Ok(match &mut self.live {
            Some(live) => live,
            empty => empty.insert(make(&self.plugin)?),
        })
    }

    fn call<R>(
        &mut self,
        make: impl FnOnce(&LoadedPlugin) -> Result<(Store<HostState>, B), PluginError>,
        f: impl FnOnce(&mut Store<HostState>, &B) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let plugin = self.plugin.clone();
        let (store, bindings) = self.live(make)?;
        start_call(store, plugin.0.spec.deadline);
        let result = plugin.0.pace.run(|| guarded(|| f(store, bindings)));
        if store.data().clock.computed_to_deadline() {
            if !plugin.0.pace.is_slow() {
                tracing::warn!(
                    plugin = %plugin.0.spec.name,
                    "a call computed to its deadline: the plugin's calls leave the async workers for {} s",
                    SLOW_FOR.as_secs()
                );
            }
            plugin.0.pace.mark_slow();
        }
        let error = match result {
            Ok(result) => return Ok(result),
            Err(error) => plugin.classify(store, error),
        };
        self.live = None;
        Err(error)
    }

    fn store(&self) -> Option<&Store<HostState>> {
        self.live.as_ref().map(|(store, _)| store)
    }
}

/// One filter plugin's instance for one session.
pub struct FilterInstance {
    instance: Instance<contract::Filter>,
    session: SessionInfo,
    /// The frames the instance asked for in `init`.
    wants: Wants,
    /// Its labels in `/metrics`, made once.
    metric_labels: String,
    /// Keep the plugin's log lines for `take_logs`.
    capture: bool,
    /// How long the last `on_frame` call took (measured once, for metrics and the record).
    last_call: Duration,
    /// Times a stateless instance was swapped for a fresh one (see [`FilterInstance::renewals`]).
    renewals: u64,
    /// Per direction, a result's columns that its prescreen kept from it: they reach it just
    /// before the first of the result's rows that does (see `prescreen` in the contract).
    held_columns: [Option<Frame>; 2],
}

/// What a filter instance said in `init`: the frames it wants (a bit per kind of content,
/// per direction), the prescreen they must pass, and whether it keeps no state between calls.
#[derive(Clone, Debug)]
struct Wants {
    kinds: [u16; 2],
    screen: Option<Arc<Screen>>,
    /// For a stateless instance, the memory past which it is renewed after a call: halfway
    /// from what it used fresh to its limit, leaving the other half for the next call's own
    /// needs. `None` for an instance that keeps state.
    renew_above: Option<usize>,
}

impl Wants {
    const NOTHING: Wants = Wants {
        kinds: [0; 2],
        screen: None,
        renew_above: None,
    };

    /// What `interest` says, for an instance that uses `fresh` bytes after `init` and may use
    /// `limit`.
    fn of(
        interest: &frame::Interest,
        screen: Option<Arc<Screen>>,
        fresh: usize,
        limit: usize,
    ) -> Wants {
        let bits = |kinds: &[ContentKind]| kinds.iter().fold(0u16, |bits, k| bits | 1 << *k as u16);
        Wants {
            kinds: [
                bits(&interest.client_to_target),
                bits(&interest.target_to_client),
            ],
            screen,
            renew_above: interest
                .stateless
                .then(|| fresh + limit.saturating_sub(fresh) / 2),
        }
    }

    /// Whether `frame` is of a kind the interest names (its prescreen aside).
    fn names(&self, frame: &Frame) -> bool {
        self.kinds[frame.direction as usize] & 1 << frame.content.kind() as u16 != 0
    }

    fn frame(&self, frame: &Frame) -> bool {
        self.names(frame) && (self.screen.as_ref()).is_none_or(|s| s.admits(&frame.content))
    }

    fn interest(&self) -> frame::Interest {
        let kinds = |bits: u16| {
            ContentKind::ALL
                .into_iter()
                .filter(|k| bits & 1 << *k as u16 != 0)
                .collect()
        };
        frame::Interest {
            client_to_target: kinds(self.kinds[0]),
            target_to_client: kinds(self.kinds[1]),
            stateless: self.renew_above.is_some(),
            prescreen: self.screen.as_ref().map(|s| s.declared().clone()),
        }
    }
}

impl fmt::Debug for FilterInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilterInstance")
            .field("plugin", &self.instance.plugin)
            .finish_non_exhaustive()
    }
}

impl FilterInstance {
    pub fn plugin(&self) -> &LoadedPlugin {
        &self.instance.plugin
    }

    /// How long the last [`FilterInstance::on_frame`] took.
    pub fn last_call(&self) -> Duration {
        self.last_call
    }

    /// The frames the instance asked for in `init`.
    pub fn interest(&self) -> frame::Interest {
        self.wants.interest()
    }

    /// Whether the plugin asks for a verdict on `frame` (see `interest` in the contract);
    /// the chain passes the others on without calling it. A result's columns its prescreen
    /// matches nothing in are kept for [`FilterInstance::on_frame`] on the first of its rows.
    pub fn wants(&mut self, frame: &Frame) -> bool {
        let wanted = self.wants.frame(frame);
        if let Content::Columns(_) = frame.content {
            // A new result: the last one's columns, if still held, no longer apply.
            self.held_columns[frame.direction as usize] =
                (!wanted && self.wants.names(frame)).then(|| frame.clone());
        }
        wanted
    }

    /// The plugin's verdict on one frame, checked. On any failure the instance is dropped.
    /// A row's columns, when its prescreen kept them from the plugin, reach it first; its
    /// prescreen promised `pass` for them, and any other verdict is a failure.
    pub fn on_frame(&mut self, frame: &Frame) -> Result<Verdict, PluginError> {
        let held = match frame.content {
            Content::Row(_) => self.held_columns[frame.direction as usize].take(),
            _ => None,
        };
        let Some(columns) = held else {
            return self.ask(frame);
        };
        let verdict = self.ask(&columns)?;
        let columns_took = self.last_call;
        if verdict != Verdict::pass() {
            self.instance.live = None;
            return Err(self.instance.plugin.error(Failure::Malformed(
                "its verdict on a result's columns its prescreen matched nothing in was not \
                 `pass` (they reach it only to set up the rows after them; a prescreen may \
                 keep from a plugin only what it passes)"
                    .into(),
            )));
        }
        let verdict = self.ask(frame);
        self.last_call += columns_took;
        verdict
    }

    fn ask(&mut self, frame: &Frame) -> Result<Verdict, PluginError> {
        let started = std::time::Instant::now();
        let capture = self.capture;
        let called = self.call(|store, filter| {
            if capture {
                store.data_mut().captured.get_or_insert_with(Vec::new);
            }
            filter.on_frame(store, frame)
        });
        self.last_call = started.elapsed();
        sluice_core::metrics::observe(
            sluice_core::metrics::PLUGIN_CALLS,
            &self.metric_labels,
            self.last_call,
        );
        let verdict = called?;
        if let Err(why) = frame::check_verdict(frame, &verdict) {
            self.instance.live = None;
            return Err(self.instance.plugin.error(Failure::Malformed(why)));
        }
        if self
            .wants
            .renew_above
            .is_some_and(|above| self.memory_bytes() > above)
        {
            // Language runtimes keep memory per call (garbage their collector has not
            // returned); a stateless plugin loses nothing by starting afresh before it
            // reaches its limit, where the call would fail and its frame be denied.
            tracing::debug!(
                plugin = %self.instance.plugin.0.spec.name,
                session = %self.session.id,
                memory = self.memory_bytes(),
                "renewing a stateless instance"
            );
            self.instance.live = None;
            self.renewals += 1;
        }
        Ok(verdict)
    }

    /// How many times this instance was renewed because it is stateless and its memory
    /// grew halfway from what it used fresh to its limit.
    pub fn renewals(&self) -> u64 {
        self.renewals
    }

    /// What the plugin still buffers for `direction`.
    pub fn flush(&mut self, direction: Direction) -> Result<Option<Content>, PluginError> {
        if self.wants.renew_above.is_some() && self.instance.live.is_none() {
            return Ok(None); // just renewed: nothing is buffered, no instance needed to say so
        }
        self.call(|store, filter| filter.flush(store, direction))
    }

    /// Keep the plugin's log lines from now on, for [`FilterInstance::take_logs`] (a tool's
    /// option: the gateway's log has them anyway).
    pub fn capture_logs(&mut self) {
        self.capture = true;
    }

    /// The plugin's log lines since the last take (captured ones only).
    pub fn take_logs(&mut self) -> Vec<String> {
        self.instance
            .live
            .as_mut()
            .and_then(|(store, _)| store.data_mut().captured.as_mut())
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Bytes of linear memory the live instance uses (0 when there is none).
    pub fn memory_bytes(&self) -> usize {
        self.instance
            .store()
            .map_or(0, |store| store.data().memory.used)
    }

    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<HostState>, &contract::Filter) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let (session, wants) = (&self.session, &mut self.wants);
        self.instance
            .call(|plugin| make_filter(plugin, session, wants), f)
    }
}

/// A filter instance for `session`, initialised; what it asked to see goes to `wants`.
fn make_filter(
    plugin: &LoadedPlugin,
    session: &SessionInfo,
    wants: &mut Wants,
) -> Result<(Store<HostState>, contract::Filter), PluginError> {
    let Linked::Filter(pre) = &plugin.0.linked else {
        return Err(plugin.error(Failure::Instantiate("not a filter plugin".into())));
    };
    let config = &plugin.0.spec.config_json;
    let (store, filter, interest) = plugin.instantiate(
        Some(&session.id),
        |store| pre.instantiate(store),
        |filter, store| filter.init(store, config, session),
    )?;
    // Compiled even when not run, so a bad one fails the same way.
    let screen = (interest.prescreen.as_ref())
        .map(|p| plugin.screen(p))
        .transpose()?
        .filter(|_| plugin.0.prescreen);
    *wants = Wants::of(
        &interest,
        screen,
        store.data().memory.used,
        plugin.0.spec.max_memory_bytes,
    );
    Ok((store, filter))
}

/// A sink instance, initialised.
fn make_sink(plugin: &LoadedPlugin) -> Result<(Store<HostState>, contract::Sink), PluginError> {
    let Linked::Sink(pre) = &plugin.0.linked else {
        return Err(plugin.error(Failure::Instantiate("not a sink plugin".into())));
    };
    let config = &plugin.0.spec.config_json;
    let (store, sink, ()) = plugin.instantiate(
        None,
        |store| pre.instantiate(store),
        |sink, store| sink.init(store, config),
    )?;
    Ok((store, sink))
}

/// One sink plugin's instance.
pub struct SinkInstance {
    instance: Instance<contract::Sink>,
}

impl SinkInstance {
    /// Why the gateway refused the last outgoing request of this instance, if it did (taken:
    /// asked once per failed delivery).
    pub fn take_refusal(&mut self) -> Option<String> {
        self.instance
            .store()?
            .data()
            .hooks
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Delivers one batch. The outer error is the plugin failing; the inner one is the
    /// plugin's own answer (retry later, or never).
    pub fn deliver(&mut self, batch: &[Event]) -> Result<Result<(), SinkError>, PluginError> {
        self.instance
            .call(make_sink, |store, sink| sink.deliver(store, batch))
    }
}

/// What one instance's store holds: an empty WASI context, its HTTP egress and its limits.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: Hooks,
    memory: MemoryLimit,
    plugin: String,
    session: Option<String>,
    clock: CallClock,
    /// What the guest said as it panicked (the SDK's panic hook logs it, field `panic`).
    panic: Option<String>,
    /// The plugin's log lines since they were last taken, when someone asked for them
    /// (`sluice plugin run --explain`); `None` in the gateway.
    captured: Option<Vec<String>>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl HostState {
    /// A plugin's log line (any contract version), tagged with the plugin and the session.
    fn log(&mut self, level: tracing::Level, message: String, fields: Vec<(String, String)>) {
        let mut message = message;
        if message.len() > MAX_LOG_MESSAGE {
            let mut cut = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        if fields.iter().any(|(k, _)| k == "panic") {
            self.panic = Some(message.clone());
        }
        if let Some(captured) = &mut self.captured
            && captured.len() < MAX_CAPTURED
        {
            captured.push(message.clone());
        }
        let session = self.session.as_deref().unwrap_or("-");
        let (plugin, fields) = (&self.plugin, format!("{fields:?}"));
        match level {
            tracing::Level::TRACE => tracing::trace!(plugin, session, fields, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(plugin, session, fields, "{message}"),
            tracing::Level::INFO => tracing::info!(plugin, session, fields, "{message}"),
            tracing::Level::WARN => tracing::warn!(plugin, session, fields, "{message}"),
            _ => tracing::error!(plugin, session, fields, "{message}"),
        }
    }
}

/// The per-instance memory limit: the sum of all of an instance's linear memories.
struct MemoryLimit {
    limit: usize,
    used: usize,
    exceeded: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used - current.min(self.used) + desired;
        if total > self.limit {
            // Trap rather than let the guest see a failed grow: a Rust guest would abort
            // anyway, and a trap tells the operator why.
            self.exceeded = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} bytes exceeded",
                self.limit
            )));
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_its_deadline_a_call_is_stopped_when_seen_computing_not_when_kept_waiting() {
        let budget = Duration::from_millis(50);
        let mut clock = CallClock {
            wall_at_start: std::time::Instant::now(),
            budget,
            cpu_mark: None,
            computed: false,
        };
        // At the deadline: one more deadline to see what the call does with it.
        assert!(matches!(clock.check(), UpdateDeadline::Continue(_)));
        // Waiting (here: sleeping; on a loaded machine: descheduled) uses no CPU: more time.
        std::thread::sleep(budget * 2);
        assert!(matches!(clock.check(), UpdateDeadline::Continue(_)));
        // Computing through the next one: stopped.
        let mark = thread_cpu_time();
        while thread_cpu_time().saturating_sub(mark) < budget / 2 {
            std::hint::black_box(0u64);
        }
        assert!(matches!(clock.check(), UpdateDeadline::Interrupt));
        // And wall time is capped all the same.
        let mut stuck = CallClock {
            wall_at_start: std::time::Instant::now() - budget * WALL_DEADLINE_FACTOR,
            budget,
            cpu_mark: None,
            computed: false,
        };
        assert!(matches!(stuck.check(), UpdateDeadline::Interrupt));
    }
}
