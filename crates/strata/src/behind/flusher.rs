//! The flusher: one task per write-behind namespace, writing its journaled writes to the source.
//!
//! # Invariants
//! - **Per-key order**: a key's pending writes coalesce into one [`Latest`] (the newest wins, the older ones are
//!   covered by it), and a round takes a key out of the queue before writing it, so no two writes of one key are
//!   ever in flight and the source sees a key's writes in order.
//! - **No starvation**: keys are flushed oldest first; a key keeps its place while newer writes of it arrive.
//! - **The checkpoint passes a write only once it is settled**: committed, covered by a committed newer write of
//!   its key, or parked as a dead letter — so an acknowledged write is never lost, whatever happens to the task.
//! - **Stopping**: the flusher stops only between rounds, when its [`Flusher`] handle asks (or is dropped: the
//!   namespace and its cache are gone). What is still queued goes back to the queue's orphans — journaled, still
//!   counted as unflushed — for the namespace's next registration, or the next [`WriteBehind::open`].
//!
//! [`WriteBehind::open`]: super::WriteBehind::open

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::journal::Op;
use super::{settle, DeadLetter, Inner};
use crate::stop::{Stop, Stopping};

/// One write handed to a [`FlushTarget`]: key, operation, version.
pub(crate) type Item<'a> = (&'a str, &'a Op, Option<u64>);

/// Applies journaled writes of one namespace to its source.
pub(crate) trait FlushTarget: Send + Sync {
    /// One write; returns whether the source fenced it out (it held a newer version).
    fn apply<'a>(&'a self, item: Item<'a>) -> BoxFuture<'a, Result<bool, String>>;
    /// Upserts of distinct keys as one batch; returns how many were fenced out. All or error.
    fn apply_batch<'a>(&'a self, items: &'a [Item<'a>]) -> BoxFuture<'a, Result<u64, String>>;
    /// The write `seq` of `key` is in the source (or parked): stop serving it from the pending overlay.
    fn settled(&self, key: &str, seq: u64);
    /// The write of `key` is being parked: resolves once the caches no longer serve it, so that nobody who sees
    /// the dead letter can still read the value it will never persist.
    fn parked<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()>;
}

/// One key's newest pending write and the older writes it covers.
pub(super) struct Latest {
    pub(super) seq: u64,
    pub(super) op: Op,
    pub(super) version: Option<u64>,
    covered: Vec<u64>,
    attempts: u32,
    /// When the oldest write this entry covers was acknowledged.
    oldest_ack: std::time::Instant,
}

/// A namespace's pending keys, flushed oldest first: a key joins the back of `order` when it becomes pending and
/// keeps its place while newer writes of it arrive, so a constantly rewritten key cannot starve the others.
#[derive(Default)]
pub(super) struct DirtyKeys {
    map: HashMap<String, Latest>,
    order: VecDeque<String>,
}

impl DirtyKeys {
    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// The newest pending write of every key.
    pub(super) fn latest(&self) -> impl Iterator<Item = (&str, &Latest)> {
        self.map.iter().map(|(k, l)| (k.as_str(), l))
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Latest> {
        self.map.get_mut(key)
    }

    fn insert(&mut self, key: String, latest: Latest) {
        if self.map.insert(key.clone(), latest).is_none() {
            self.order.push_back(key);
        }
    }

    /// Adds journaled write `seq` of `key`, acknowledged at `acked`: it becomes the key's newest write, or is covered
    /// by the newer one already pending.
    pub(super) fn add(
        &mut self,
        key: &str,
        seq: u64,
        op: Op,
        version: Option<u64>,
        acked: std::time::Instant,
    ) {
        match self.get_mut(key) {
            Some(l) if l.seq < seq => {
                l.covered.push(l.seq);
                l.seq = seq;
                l.op = op;
                l.version = version;
                l.attempts = 0;
                l.oldest_ack = l.oldest_ack.min(acked);
            }
            Some(l) => {
                l.covered.push(seq);
                l.oldest_ack = l.oldest_ack.min(acked);
            }
            None => {
                self.insert(
                    key.to_owned(),
                    Latest {
                        seq,
                        op,
                        version,
                        covered: Vec::new(),
                        attempts: 0,
                        oldest_ack: acked,
                    },
                );
            }
        }
    }

    /// Removes up to `n` keys, oldest first.
    fn take(&mut self, n: usize) -> Vec<(String, Latest)> {
        let mut out = Vec::with_capacity(n.min(self.map.len()));
        while out.len() < n {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            if let Some(l) = self.map.remove(&k) {
                out.push((k, l));
            }
        }
        out
    }
}

/// Keys flushed together as one batch.
type Chunk = Vec<(String, Latest)>;

/// A registered namespace's queue.
pub(super) struct Queue {
    pub(super) namespace: String,
    /// The pending keys. A `parking_lot` mutex: writers add under it, the flusher takes a round's keys and puts
    /// failed ones back under it; never held across an `.await`.
    pub(super) keys: Mutex<DirtyKeys>,
    /// Wakes the idle flusher when a write is added (a stored permit, so a wake before the wait is not lost).
    pub(super) wake: Notify,
}

/// A namespace's running flusher. Shared by the namespace and its cache: it runs while either holds it, and stops
/// at its next idle point once both have let go (dropping the [`Stop`] inside asks it to).
pub(crate) struct Flusher {
    stop: Stop,
    /// The task, taken by the first [`close`](Self::close). A Tokio mutex, held across the task's end, so a
    /// concurrent `close` returns only once the task has stopped too.
    task: tokio::sync::Mutex<Option<JoinHandle<usize>>>,
}

impl Flusher {
    /// Starts the flusher of `queue`.
    pub(super) fn spawn(
        handle: &tokio::runtime::Handle,
        inner: Arc<Inner>,
        queue: Arc<Queue>,
        target: Arc<dyn FlushTarget>,
    ) -> Self {
        let (stop, stopping) = Stop::new();
        let task = handle.spawn(run(inner, queue, target, stopping));
        Self {
            stop,
            task: tokio::sync::Mutex::new(Some(task)),
        }
    }

    /// Flushes what is queued for at most `within`, then stops the task (also when the source keeps failing: the
    /// rest stays journaled). Returns how many keys were left unflushed (0: everything reached the source or was
    /// parked). Idempotent: a later call returns 0 at once.
    pub(crate) async fn close(&self, within: Duration) -> usize {
        self.stop.by(Instant::now() + within);
        let mut task = self.task.lock().await;
        match task.take() {
            Some(t) => t.await.unwrap_or(0),
            None => 0,
        }
    }
}

/// The flusher's loop (see the module docs). Returns how many keys it left to the orphans.
async fn run(
    inner: Arc<Inner>,
    queue: Arc<Queue>,
    target: Arc<dyn FlushTarget>,
    mut stop: Stopping,
) -> usize {
    let o = inner.options.clone();
    let mut backoff = Duration::ZERO;
    loop {
        let deadline = stop.deadline();
        if stop.is_due() {
            break;
        }
        if queue.keys.lock().is_empty() {
            if deadline.is_some() {
                break; // drained
            }
            tokio::select! {
                _ = queue.wake.notified() => {}
                _ = stop.requested() => continue,
            }
        }
        match deadline {
            // Draining: no lingering to gather more, but keep the backoff (a failing source must not burn through
            // `max_attempts` and park every write), and never wait past the deadline.
            Some(d) => tokio::time::sleep_until((Instant::now() + backoff).min(d)).await,
            None => tokio::select! {
                _ = tokio::time::sleep(o.linger.max(backoff)) => {}
                _ = stop.requested() => continue,
            },
        }
        if stop.is_due() {
            break;
        }
        let failed = round(&inner, &queue, &target).await;
        backoff = if failed {
            (backoff * 2).clamp(o.retry_base, o.retry_max)
        } else {
            Duration::ZERO
        };
    }
    hand_back(&inner, &queue)
}

/// One flush round: takes up to `batch × batches_in_flight` keys, oldest first, writes them, settles what
/// landed or was parked and puts the rest back. Returns whether a write failed (and will be retried).
async fn round(inner: &Arc<Inner>, queue: &Queue, target: &Arc<dyn FlushTarget>) -> bool {
    let o = &inner.options;
    let batch: Vec<(String, Latest)> = queue
        .keys
        .lock()
        .take(o.batch.max(1) * o.batches_in_flight.max(1));
    // Upserts with versions go as one batch; if it fails, they are retried singly below (poison isolation).
    let (batchable, mut singles): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|(_, l)| matches!(l.op, Op::Upsert(_)) && l.version.is_some());
    let mut results: Vec<(String, Latest, Result<bool, String>)> = Vec::new();
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut batchable = batchable.into_iter().peekable();
    while batchable.peek().is_some() {
        chunks.push(batchable.by_ref().take(o.batch.max(1)).collect());
    }
    let outcomes: Vec<(Chunk, Result<u64, String>)> = futures::stream::iter(chunks)
        .map(|chunk| async move {
            if chunk.len() < 2 {
                return (chunk, Err(String::new()));
            }
            let items: Vec<Item<'_>> = chunk
                .iter()
                .map(|(k, l)| (k.as_str(), &l.op, l.version))
                .collect();
            let r = target.apply_batch(&items).await;
            drop(items);
            (chunk, r)
        })
        .buffer_unordered(o.batches_in_flight.max(1))
        .collect()
        .await;
    for (chunk, r) in outcomes {
        match r {
            Ok(fenced) => {
                inner.fenced.fetch_add(fenced, Ordering::Relaxed);
                results.extend(chunk.into_iter().map(|(k, l)| (k, l, Ok(false))));
            }
            // A lone write goes singly without counting as a failure.
            Err(e) if e.is_empty() => singles.extend(chunk),
            Err(_) => {
                inner.failures.fetch_add(1, Ordering::Relaxed);
                inner.batch_fallbacks.fetch_add(1, Ordering::Relaxed);
                singles.extend(chunk);
            }
        }
    }
    let single_results: Vec<(String, Latest, Result<bool, String>)> =
        futures::stream::iter(singles)
            .map(|(key, l)| async move {
                let r = target.apply((&key, &l.op, l.version)).await;
                (key, l, r)
            })
            .buffer_unordered(o.concurrency.max(1))
            .collect()
            .await;
    results.extend(single_results);
    let mut failed = false;
    // Settled in one step per round: one checkpoint write (two fsyncs) per round, not per key.
    let mut settled = Vec::new();
    let now = std::time::Instant::now();
    for (key, mut l, r) in results {
        match r {
            Ok(fenced) => {
                if fenced {
                    inner.fenced.fetch_add(1, Ordering::Relaxed);
                }
                let lag = now.saturating_duration_since(l.oldest_ack).as_micros();
                let _ = inner.lag.lock().record((lag as u64).max(1));
                inner.flushed.fetch_add(1, Ordering::Relaxed);
                target.settled(&key, l.seq);
                settled.extend(l.covered);
                settled.push(l.seq);
            }
            Err(error) => {
                inner.failures.fetch_add(1, Ordering::Relaxed);
                l.attempts += 1;
                if l.attempts >= o.max_attempts {
                    // Out of the overlay and every tier first, then on the dead-letter list: whoever lists it
                    // reads the key's persisted state, never the value that will not be persisted.
                    target.settled(&key, l.seq);
                    target.parked(&key).await;
                    park(inner, &queue.namespace, &key, &l, &error);
                    settled.extend(l.covered);
                    settled.push(l.seq);
                } else {
                    failed = true;
                    // Back in the queue; a newer write that arrived meanwhile supersedes it.
                    let mut keys = queue.keys.lock();
                    match keys.get_mut(&key) {
                        Some(newer) => {
                            newer.covered.push(l.seq);
                            newer.covered.extend(l.covered);
                            newer.oldest_ack = newer.oldest_ack.min(l.oldest_ack);
                        }
                        None => {
                            keys.insert(key, l);
                        }
                    }
                }
            }
        }
    }
    if !settled.is_empty() {
        settle(inner, &settled);
    }
    failed
}

/// The flusher stopped: unregisters its queue and leaves what is still pending to the orphans, where the
/// namespace's next registration takes it up (the writes stay journaled and unflushed, so the next open recovers
/// them too). Returns how many keys were left. Under the queues lock, so a concurrent
/// [`WriteBehind::enqueue`](super::WriteBehind::enqueue) lands either in the queue before the hand-back or in the
/// orphans after it.
fn hand_back(inner: &Inner, queue: &Arc<Queue>) -> usize {
    let mut queues = inner.queues.lock();
    if queues
        .get(&queue.namespace)
        .is_some_and(|q| Arc::ptr_eq(q, queue))
    {
        queues.remove(&queue.namespace);
    }
    let left = std::mem::take(&mut *queue.keys.lock());
    let n = left.len();
    if n > 0 {
        // While the queue was registered its namespace had no orphans: registering took them, and writes went to
        // the queue.
        inner.orphans.lock().insert(queue.namespace.clone(), left);
    }
    n
}

/// Appends a poison write to `dead-letter.jsonl` (one JSON object per line) and says so at error level.
fn park(inner: &Inner, namespace: &str, key: &str, l: &Latest, error: &str) {
    inner.dead_lettered.fetch_add(1, Ordering::Relaxed);
    let (op, value) = match &l.op {
        Op::Upsert(v) => ("upsert", String::from_utf8_lossy(v).into_owned()),
        Op::Delete => ("delete", String::new()),
    };
    let letter = DeadLetter {
        namespace: namespace.to_owned(),
        key: key.to_owned(),
        seq: l.seq,
        op: op.to_owned(),
        value,
        attempts: l.attempts,
        error: error.to_owned(),
    };
    let path = inner.dir.join("dead-letter.jsonl");
    let written = {
        let _file = inner.dead_letter_file.lock();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| {
                writeln!(
                    f,
                    "{}",
                    serde_json::to_string(&letter).expect("a dead letter serializes")
                )?;
                f.sync_data()
            })
    };
    tracing::error!(
        namespace,
        key,
        seq = l.seq,
        attempts = l.attempts,
        reason = error,
        file = %path.display(),
        stored = written.is_ok(),
        "write-behind: a write the source keeps refusing was parked as a dead letter (list, retry or discard \
         it with `strata dead-letters`); the caches no longer serve it"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_keys_flush_oldest_first_and_a_hot_key_keeps_its_place() {
        let q = Queue {
            namespace: "n".into(),
            keys: Mutex::new(DirtyKeys::default()),
            wake: Notify::new(),
        };
        let t0 = std::time::Instant::now();
        let enqueue = |k: &str, seq: u64| q.keys.lock().add(k, seq, Op::Delete, Some(seq), t0);
        for (seq, k) in ["a", "b", "c"].iter().enumerate() {
            enqueue(k, seq as u64 + 1);
        }
        // "a" is rewritten again and again: it must not move, and "b", "c" must not wait behind its rewrites.
        for seq in 4..100 {
            enqueue("a", seq);
        }
        let mut p = q.keys.lock();
        let first: Vec<String> = p.take(2).into_iter().map(|(k, _)| k).collect();
        assert_eq!(first, vec!["a", "b"]);
        enqueue_locked(&mut p, "a", 200);
        let rest: Vec<(String, u64, usize)> = p
            .take(10)
            .into_iter()
            .map(|(k, l)| (k, l.seq, l.covered.len()))
            .collect();
        assert_eq!(rest, vec![("c".into(), 3, 0), ("a".into(), 200, 0)]);
        assert!(p.is_empty());
    }

    fn enqueue_locked(p: &mut DirtyKeys, key: &str, seq: u64) {
        p.insert(
            key.to_owned(),
            Latest {
                seq,
                op: Op::Delete,
                version: Some(seq),
                covered: Vec::new(),
                attempts: 0,
                oldest_ack: std::time::Instant::now(),
            },
        );
    }
}
