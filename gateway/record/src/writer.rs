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
    /// per event (for async mode, where nobody waits for the commit). It does not wait when
    /// someone waits for the first event's commit, nor after a full group (a backlog is
    /// committed group after group, so the linger never caps the record's rate).
    pub fn spawn_lingering(store: Arc<dyn Record>, linger: std::time::Duration) -> Recorder {
        let (queue, mut rx) = mpsc::channel::<(Queued, Option<Ack>)>(8 * MAX_GROUP);
        // One thread of its own: redb blocks, and commits from one thread keep the
        // allocator from spreading freed pages over many arenas (memory stays flat).
        let spawned = std::thread::Builder::new()
            .name("sluice-record".into())
            .spawn(move || {
                // The last group was full: more events are waiting, so the next commits at once.
                let mut behind = false;
                while let Some(first) = rx.blocking_recv() {
                    // Linger only for events nobody waits on: one that is waited for (in
                    // async mode, an admin's change or a review's decision) commits at once.
                    if !linger.is_zero() && !behind && first.1.is_none() {
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
                    behind = events.len() >= MAX_GROUP;
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::Store;

    fn lingering(linger: Duration) -> (tempfile::TempDir, Recorder) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("record.redb"),
            &dir.path().join("record.key"),
        );
        let recorder = Recorder::spawn_lingering(Arc::new(store.unwrap()), linger);
        (dir, recorder)
    }

    fn event(n: usize) -> NewEvent {
        NewEvent::gateway("test", &serde_json::json!({ "n": n }))
    }

    /// A session that waits for its commit (one opening in async mode) is not made to wait
    /// out the linger meant for events nobody waits on.
    #[tokio::test]
    async fn a_waited_for_event_does_not_linger() {
        let (_dir, recorder) = lingering(Duration::from_secs(60));
        let committed = tokio::time::timeout(Duration::from_secs(20), recorder.append(event(0)));
        committed
            .await
            .expect("committed without lingering")
            .unwrap();
    }

    /// Under a backlog (full groups), the writer commits group after group: lingering before
    /// each would cap the record at one group per linger.
    #[tokio::test]
    async fn a_backlog_is_committed_without_lingering_again() {
        let linger = Duration::from_secs(2);
        let (_dir, recorder) = lingering(linger);
        let started = Instant::now();
        for n in 0..4 * MAX_GROUP {
            recorder.enqueue(event(n)).await.unwrap();
        }
        let last = tokio::time::timeout(Duration::from_secs(60), recorder.append(event(0)));
        let index = last.await.expect("the backlog was committed").unwrap();
        assert!(
            index >= 4 * MAX_GROUP as u64,
            "every queued event is before it: {index}"
        );
        // One linger and five commits; lingering before each full group takes 4 × 2 s.
        let took = started.elapsed();
        assert!(took < 3 * linger, "the backlog lingered: {took:?}");
    }
}
