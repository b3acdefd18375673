//! The one writer of the record: events from every session queue here and are committed in
//! groups (one durable commit for everything that arrived meanwhile), which is what makes a
//! durable, hash-chained record fast.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{NewEvent, Record};

/// Events per commit at most; more waiting events go into the next commit.
const MAX_GROUP: usize = 1024;

pub type Ack = oneshot::Sender<Result<u64, String>>;

/// What sessions queue: one event, or several that must share one commit (so a strict
/// session waits for one fsync, not one per event).
#[derive(Debug)]
pub enum Queued {
    One(NewEvent),
    Together(Vec<NewEvent>),
}

impl Queued {
    pub fn into_events(self) -> Vec<NewEvent> {
        match self {
            Queued::One(event) => vec![event],
            Queued::Together(events) => events,
        }
    }

    fn len(&self) -> usize {
        match self {
            Queued::One(_) => 1,
            Queued::Together(events) => events.len(),
        }
    }
}

/// A handle for sessions to append through. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    queue: mpsc::Sender<(Queued, Option<Ack>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("the record cannot commit: {0}")]
pub struct RecordFailed(pub String);

impl Recorder {
    /// Starts the writer for `store`, committing as soon as events arrive.
    pub fn spawn(store: Arc<dyn Record>) -> Recorder {
        Recorder::spawn_lingering(store, std::time::Duration::ZERO)
    }

    /// Starts the writer for `store`; after the first event of a group it waits `linger` for
    /// more, so a steady flow of events costs one durable commit per `linger` rather than one
    /// per event (for async mode, where nobody waits for the commit).
    pub fn spawn_lingering(store: Arc<dyn Record>, linger: std::time::Duration) -> Recorder {
        let (queue, mut rx) = mpsc::channel::<(Queued, Option<Ack>)>(8 * MAX_GROUP);
        // One thread of its own: redb blocks, and commits from one thread keep the
        // allocator from spreading freed pages over many arenas (memory stays flat).
        let spawned = std::thread::Builder::new()
            .name("sluice-record".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    if !linger.is_zero() {
                        std::thread::sleep(linger);
                    }
                    // Queued events in order; each ack goes with the last event of its item.
                    let mut events = Vec::with_capacity(first.0.len());
                    let mut acks = Vec::new();
                    let mut next = Some(first);
                    while let Some((queued, ack)) = next.take() {
                        match queued {
                            Queued::One(event) => events.push(event),
                            Queued::Together(together) => events.extend(together),
                        }
                        acks.push((events.len() - 1, ack));
                        if events.len() < MAX_GROUP {
                            next = rx.try_recv().ok();
                        }
                    }
                    let started = std::time::Instant::now();
                    let result = store.append(&events);
                    sluice_core::metrics::observe(
                        sluice_core::metrics::COMMITS,
                        "",
                        started.elapsed(),
                    );
                    if result.is_ok() {
                        sluice_core::metrics::count(
                            sluice_core::metrics::EVENTS,
                            "",
                            events.len() as u64,
                        );
                    }
                    match result {
                        Ok(indices) => {
                            for (last, ack) in acks {
                                if let (Some(ack), Some(&index)) = (ack, indices.get(last)) {
                                    let _ = ack.send(Ok(index));
                                }
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "record commit failed");
                            for (_, ack) in acks {
                                let Some(ack) = ack else { continue };
                                let _ = ack.send(Err(e.to_string()));
                            }
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            // No writer: every submit fails, so sessions fail closed.
            tracing::error!(error = %e, "cannot start the record writer");
        }
        Recorder { queue }
    }

    /// A recorder feeding `queue` (for tests that look at what would be recorded).
    pub fn from_queue(queue: mpsc::Sender<(Queued, Option<Ack>)>) -> Recorder {
        Recorder { queue }
    }

    /// Appends `event` and waits until the commit holding it is durable (strict mode).
    pub async fn append(&self, event: NewEvent) -> Result<u64, RecordFailed> {
        self.submit(event, true)
            .await?
            .durable()
            .await
            .map(|index| index.unwrap_or_default())
    }

    /// Queues `event` without waiting for its commit (async mode). Still bounded: a full
    /// queue makes the caller wait.
    pub async fn enqueue(&self, event: NewEvent) -> Result<(), RecordFailed> {
        self.submit(event, false).await.map(|_| ())
    }

    /// Queues `event`; with `track`, the receipt resolves once its commit is durable, so a
    /// caller can queue more events (one commit for them all) before it waits.
    pub async fn submit(&self, event: NewEvent, track: bool) -> Result<Receipt, RecordFailed> {
        self.queue_item(Queued::One(event), track).await
    }

    /// Queues `events` to be committed together, in order; with `track`, the receipt
    /// resolves (with the last one's index) once that one commit is durable.
    pub async fn submit_together(
        &self,
        events: Vec<NewEvent>,
        track: bool,
    ) -> Result<Receipt, RecordFailed> {
        if events.is_empty() {
            return Ok(Receipt(None));
        }
        self.queue_item(Queued::Together(events), track).await
    }

    async fn queue_item(&self, queued: Queued, track: bool) -> Result<Receipt, RecordFailed> {
        let (ack, receipt) = if track {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.queue
            .send((queued, ack))
            .await
            .map_err(|_| RecordFailed("the writer stopped".into()))?;
        Ok(Receipt(receipt))
    }
}

/// Proof of a queued event; `durable` waits for its commit (at once for untracked events).
#[derive(Debug)]
pub struct Receipt(Option<oneshot::Receiver<Result<u64, String>>>);

impl Receipt {
    /// Like [`Receipt::durable`], without consuming the receipt; poll it to completion once.
    pub async fn wait(&mut self) -> Result<Option<u64>, RecordFailed> {
        match self.0.as_mut() {
            None => Ok(None),
            Some(rx) => match rx.await {
                Ok(Ok(index)) => Ok(Some(index)),
                Ok(Err(e)) => Err(RecordFailed(e)),
                Err(_) => Err(RecordFailed("the writer stopped".into())),
            },
        }
    }

    /// The event's index once its commit is durable (`None` for an untracked event).
    pub async fn durable(mut self) -> Result<Option<u64>, RecordFailed> {
        self.wait().await
    }
}
