//! Sinks: the record, delivered where operators want it.
//!
//! Every sink the policy enables (`[sinks.NAME]`) gets every recorded event (as recorded:
//! masked), in order, in batches, from a thread of its own that follows the chain. Delivery is
//! at least once: the sink's cursor (the next entry to deliver) is kept in the store and moves
//! only after the plugin accepted a batch, so a crash, a restart or an outage of the backend
//! loses nothing; the sink resumes where it stopped.
//!
//! Architecture invariants:
//! - Sessions never wait for sinks: sinks read committed entries, they are not in the frame
//!   path. A failing sink falls behind (its lag grows, `sluice sinks` and `/metrics` show it)
//!   and retries with backoff.
//! - One delivery thread per sink name at a time, so a cursor has a single writer.
//! - A permanent refusal (a wrong key, a bad URL) stops the sink until the policy changes
//!   (`sluice reload`): retrying cannot fix it, skipping would lose events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::policy::{SinkRules, StartAt};
use sluice_core::frame::{Event, SinkError};
use sluice_core::now_ms;
use sluice_plugin_host::{LoadedPlugin, SinkInstance};
use sluice_record::{Record, Recorded};

/// The first wait after a failure; it doubles up to the sink's `retry_max_seconds`.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// How often an idle sink looks up from waiting (to notice it should stop).
const POLL: Duration = Duration::from_millis(250);

/// What `sluice sinks` shows about one sink.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SinkStatus {
    pub name: String,
    pub plugin: String,
    /// The index of the next entry to deliver: everything before it was accepted.
    pub cursor: u64,
    /// Entries recorded but not yet delivered.
    pub lag: u64,
    /// `delivering`, `caught-up`, `retrying`, `stopped`, or `standby` (another gateway
    /// sharing the record holds the sink's lease and delivers).
    pub state: String,
    pub last_error: Option<String>,
    /// Failed deliveries in a row.
    pub failures: u64,
    /// Events delivered since the gateway (or the sink) started.
    pub delivered: u64,
    pub last_delivery_ms: Option<u64>,
}

/// The sinks that run now.
pub struct Sinks {
    store: Arc<dyn Record>,
    running: Mutex<BTreeMap<String, Running>>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks").finish_non_exhaustive()
    }
}

/// What the gateway needs to run one sink.
#[derive(Clone, Debug)]
pub struct SinkPlan {
    pub name: String,
    pub rules: SinkRules,
    pub plugin: LoadedPlugin,
}

impl SinkPlan {
    /// Whether `other` would deliver exactly as this one does (then a reload keeps it running).
    fn same(&self, other: &SinkPlan) -> bool {
        let (a, b) = (self.plugin.spec(), other.plugin.spec());
        self.rules == other.rules
            && self.plugin.digest() == other.plugin.digest()
            && a.config_json == b.config_json
            && a.allow_hosts == b.allow_hosts
            && a.deadline == b.deadline
            && a.max_memory_bytes == b.max_memory_bytes
    }
}

struct Running {
    plan: SinkPlan,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    status: Mutex<SinkStatus>,
    stop: AtomicBool,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut SinkStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Sleeps `how_long`, waking early to stop. Returns whether to go on.
    fn sleep(&self, how_long: Duration) -> bool {
        let until = std::time::Instant::now() + how_long;
        while !self.stop.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        false
    }
}

impl Sinks {
    pub fn new(store: Arc<dyn Record>) -> Sinks {
        Sinks {
            store,
            running: Mutex::default(),
        }
    }

    /// Makes exactly the sinks of `plans` run: new ones start, removed ones stop, changed
    /// ones restart (from their cursor); unchanged ones go on undisturbed. Blocks while a
    /// stopping sink finishes its delivery in flight.
    pub fn apply(&self, plans: Vec<SinkPlan>) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut keep = BTreeMap::new();
        for plan in plans {
            match running.remove(&plan.name) {
                Some(current) if current.plan.same(&plan) => {
                    keep.insert(plan.name.clone(), current);
                }
                previous => {
                    if let Some(previous) = previous {
                        stop(previous);
                    }
                    keep.insert(plan.name.clone(), self.start(plan));
                }
            }
        }
        for (_, gone) in std::mem::take(&mut *running) {
            stop(gone);
        }
        *running = keep;
    }

    pub fn status(&self) -> Vec<SinkStatus> {
        let next = self.store.next_index();
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .values()
            .map(|r| {
                let mut status = r
                    .shared
                    .status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                status.lag = next.saturating_sub(status.cursor);
                status
            })
            .collect()
    }

    fn start(&self, plan: SinkPlan) -> Running {
        let shared = Arc::new(Shared {
            status: Mutex::new(SinkStatus {
                name: plan.name.clone(),
                plugin: plan.rules.plugin.clone(),
                state: "starting".into(),
                ..SinkStatus::default()
            }),
            stop: AtomicBool::new(false),
        });
        let (store, thread_plan, thread_shared) =
            (self.store.clone(), plan.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name(format!("sluice-sink-{}", plan.name))
            .spawn(move || deliver_loop(store.as_ref(), &thread_plan, &thread_shared));
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(e) => {
                shared.update(|s| {
                    s.state = "stopped".into();
                    s.last_error = Some(format!("cannot start its thread: {e}"));
                });
                None
            }
        };
        Running {
            plan,
            shared,
            thread,
        }
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.apply(Vec::new());
    }
}

fn stop(running: Running) {
    running.shared.stop.store(true, Ordering::Relaxed);
    if let Some(thread) = running.thread {
        let _ = thread.join();
    }
}

/// Runs the sink while it holds its lease (always, on a gateway of its own; on a shared
/// record, one gateway at a time), then gives the lease up.
fn deliver_loop(store: &dyn Record, plan: &SinkPlan, shared: &Shared) {
    deliver_while_leased(store, plan, shared);
    store.release(&lease_name(&plan.name));
}

fn lease_name(sink: &str) -> String {
    format!("sink:{sink}")
}

/// Takes (or renews) the sink's lease; waits as a standby while another gateway holds it.
/// Returns false when the sink is stopping.
fn hold_lease(store: &dyn Record, name: &str, shared: &Shared) -> bool {
    loop {
        match store.lease(&lease_name(name)) {
            Ok(true) => return true,
            Ok(false) => shared.update(|s| {
                s.state = "standby".into();
                s.last_error = None;
            }),
            Err(e) => shared.update(|s| s.last_error = Some(e.to_string())),
        }
        if !shared.sleep(POLL) {
            return false;
        }
    }
}

fn deliver_while_leased(store: &dyn Record, plan: &SinkPlan, shared: &Shared) {
    let name = &plan.name;
    let labels = sluice_core::metrics::labels(&[("sink", name)]);
    if !hold_lease(store, name, shared) {
        return;
    }
    let resume = || loop {
        match resume_at(store, name, plan.rules.from) {
            Ok(cursor) => break Some(cursor),
            Err(e) => {
                shared.update(|s| s.last_error = Some(e.to_string()));
                if !shared.sleep(FIRST_RETRY) {
                    return None;
                }
            }
        }
    };
    let Some(mut cursor) = resume() else { return };
    shared.update(|s| s.cursor = cursor);
    let retry_max = Duration::from_secs(plan.rules.retry_max_seconds);
    let mut backoff = FIRST_RETRY.min(retry_max);
    let mut instance: Option<SinkInstance> = None;
    'rounds: while !shared.stop.load(Ordering::Relaxed) {
        // Each round renews the lease. One lost (this gateway stalled past it) means another
        // gateway delivered meanwhile: wait to hold it again, then resume from the saved
        // cursor (delivery stays at least once).
        match store.lease(&lease_name(name)) {
            Ok(true) => {}
            _ => {
                if !hold_lease(store, name, shared) {
                    return;
                }
                let Some(saved) = resume() else { return };
                cursor = saved;
                shared.update(|s| s.cursor = cursor);
            }
        }
        if !store.wait_for(cursor, POLL) {
            shared.update(|s| {
                if s.failures == 0 {
                    s.state = "caught-up".into();
                }
            });
            continue;
        }
        // A batch is worth a moment's wait: a sink handed each commit alone (in strict mode,
        // often one event) would make a request, an object, per event.
        let full = cursor + plan.rules.batch_events as u64 - 1;
        let until = std::time::Instant::now() + Duration::from_millis(plan.rules.linger_ms);
        while !shared.stop.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || store.wait_for(full, left.min(POLL)) {
                break;
            }
            // Lingering must not let the lease lapse (another gateway would take the sink).
            if !matches!(store.lease(&lease_name(name)), Ok(true)) {
                continue 'rounds;
            }
        }
        let attempt = deliver_once(store, plan, &mut instance, cursor);
        match attempt {
            Ok((delivered, next)) => {
                cursor = next;
                // A cursor that fails to persist only means the batch may be delivered again.
                if let Err(e) = store.set_sink_cursor(name, cursor) {
                    tracing::error!(sink = %name, error = %e, "cannot save the sink's cursor");
                }
                sluice_core::metrics::count(
                    sluice_core::metrics::SINK_EVENTS,
                    &labels,
                    delivered as u64,
                );
                backoff = FIRST_RETRY.min(retry_max);
                shared.update(|s| {
                    s.cursor = cursor;
                    s.delivered += delivered as u64;
                    s.failures = 0;
                    s.last_error = None;
                    s.state = "delivering".into();
                    s.last_delivery_ms = Some(now_ms());
                });
            }
            Err(Failed::Permanently(why)) => {
                tracing::error!(sink = %name, %why, "sink stopped: the backend refused a batch for good");
                sluice_core::metrics::count(sluice_core::metrics::SINK_FAILURES, &labels, 1);
                shared.update(|s| {
                    s.failures += 1;
                    s.state = "stopped".into();
                    s.last_error = Some(format!(
                        "{why} (refused for good: fix the sink and run `sluice reload`)"
                    ));
                });
                while shared.sleep(POLL) {}
                return;
            }
            Err(Failed::ForNow(why)) => {
                tracing::warn!(sink = %name, %why, retry_in_ms = backoff.as_millis() as u64, "sink delivery failed");
                sluice_core::metrics::count(sluice_core::metrics::SINK_FAILURES, &labels, 1);
                shared.update(|s| {
                    s.failures += 1;
                    s.state = "retrying".into();
                    s.last_error = Some(why);
                });
                if !shared.sleep(backoff) {
                    return;
                }
                backoff = (backoff * 2).min(retry_max);
            }
        }
    }
}

enum Failed {
    ForNow(String),
    Permanently(String),
}

/// Where `name` resumes: its saved cursor, or (the first time) where its rules say.
fn resume_at(
    store: &dyn Record,
    name: &str,
    from: StartAt,
) -> Result<u64, sluice_record::RecordError> {
    if let Some(cursor) = store.sink_cursor(name)? {
        return Ok(cursor);
    }
    let cursor = match from {
        StartAt::Start => 0,
        StartAt::Now => store.next_index(),
    };
    store.set_sink_cursor(name, cursor)?;
    Ok(cursor)
}

/// One batch from `cursor` on, offered to the plugin, ending with the signed head that
/// covers it (an event of kind `head`, not a chain entry): whatever keeps the batch keeps an
/// outside witness of the chain that `sluice verify --head` reads back. Returns how many
/// entries it took and where the next batch starts (indices may skip a declared gap).
fn deliver_once(
    store: &dyn Record,
    plan: &SinkPlan,
    instance: &mut Option<SinkInstance>,
    cursor: u64,
) -> Result<(usize, u64), Failed> {
    let batch = store
        .entries_from(cursor, plan.rules.batch_events)
        .map_err(|e| Failed::ForNow(e.to_string()))?;
    let mut events: Vec<Event> = batch.into_iter().map(event_of).collect();
    let Some(last) = events.last().map(|e| e.index) else {
        return Ok((0, cursor));
    };
    let taken = events.len();
    let head = store
        .covering_head(last)
        .map_err(|e| Failed::ForNow(e.to_string()))?
        .ok_or_else(|| Failed::ForNow(format!("no signed head covers entry {last}")))?;
    events.push(Event {
        index: head.index,
        session: String::new(),
        seq: 0,
        kind: sluice_record::HEAD_KIND.into(),
        time_ms: now_ms(),
        meta: serde_json::to_string(&head).map_err(|e| Failed::ForNow(e.to_string()))?,
        payload: Vec::new(),
    });
    let live = match instance {
        Some(live) => live,
        None => instance.insert(
            plan.plugin
                .sink_instance()
                .map_err(|e| Failed::ForNow(e.to_string()))?,
        ),
    };
    let outcome = live.deliver(&events);
    let refusal = live.take_refusal();
    let explain = |why: String| match &refusal {
        Some(refused) => format!("{why} (the gateway refused the request: {refused})"),
        None => why,
    };
    match outcome {
        Ok(Ok(())) => Ok((taken, last + 1)),
        Ok(Err(SinkError::Retryable(why))) => Err(Failed::ForNow(explain(why))),
        Ok(Err(SinkError::Permanent(why))) => Err(Failed::Permanently(explain(why))),
        Err(e) => {
            // The instance is gone with its failure: the next attempt makes a fresh one.
            *instance = None;
            Err(Failed::ForNow(e.to_string()))
        }
    }
}

fn event_of(recorded: Recorded) -> Event {
    let entry = recorded.entry;
    Event {
        index: entry.index,
        session: entry.session,
        seq: entry.seq,
        kind: entry.kind,
        time_ms: entry.time_ms,
        meta: entry.meta,
        // A payload retention purged goes out empty, as it is in the record.
        payload: recorded.payload.unwrap_or_default(),
    }
}
