//! Write-behind: a write is journaled (durably, see [`crate::journal`]), the caches are updated, the caller is
//! acknowledged, and a flusher writes it to the source later.
//!
//! # Guarantees
//! - **An acknowledged write is never lost**: it is on disk before the ack, and the journal's checkpoint only
//!   passes a write once the source has committed it (or it was parked as poison). After a crash,
//!   [`WriteBehind::open`] recovers every write above the checkpoint and the flusher replays them when their
//!   namespace is registered again.
//! - **Per-key order**: the flusher coalesces writes per key (the newest wins; the older ones are covered by it)
//!   and never has two writes of one key in flight, so the source sees a key's writes in order.
//! - **Reads see pending writes**: until the source has a write, reads on this node answer from it.
//! - **Bounded**: at most `max_pending` writes wait; a writer then waits up to `overload_wait` for room and gets
//!   [`Error::Overloaded`] after it — never an unbounded queue.
//! - **Retries and poison**: a failed flush is retried with exponential backoff; after `max_attempts` the write is
//!   parked in `dead-letter.jsonl` next to the journal (with the error), counted, and no longer blocks the
//!   checkpoint.
//! - **Idempotent replay**: a replayed write is an upsert (or delete) of the same value, so writing it twice leaves
//!   the same row.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use parking_lot::Mutex;
use strata_core::Error;
use tokio::sync::Notify;

use crate::journal::{Journal, JournalOptions, Op, Record};

/// Write-behind settings.
#[derive(Debug, Clone)]
pub struct WriteBehindOptions {
    /// The journal's settings (fsync policy, segment size).
    pub journal: JournalOptions,
    /// Writes that may wait for the source at once. Default: 100,000.
    pub max_pending: usize,
    /// How long a writer waits for room before [`Error::Overloaded`]. Default: 1 s.
    pub overload_wait: Duration,
    /// Keys per flush round. Default: 256.
    pub batch: usize,
    /// Flushes in flight at once (distinct keys). Default: 16.
    pub concurrency: usize,
    /// How long a flusher waits to gather a batch. Default: 2 ms.
    pub linger: Duration,
    /// Attempts before a write is parked as poison. Default: 8.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt. Default: 50 ms.
    pub retry_base: Duration,
    /// Longest retry delay. Default: 5 s.
    pub retry_max: Duration,
}

impl Default for WriteBehindOptions {
    fn default() -> Self {
        Self {
            journal: JournalOptions::default(),
            max_pending: 100_000,
            overload_wait: Duration::from_secs(1),
            batch: 256,
            concurrency: 16,
            linger: Duration::from_millis(2),
            max_attempts: 8,
            retry_base: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// Counters of a write-behind queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteBehindStats {
    /// Writes journaled and acknowledged.
    pub acked: u64,
    /// Writes waiting for the source now.
    pub pending: u64,
    /// Writes committed to the source (coalesced writes count once each).
    pub flushed: u64,
    /// Flush attempts that failed (and were retried or parked).
    pub failures: u64,
    /// Writes parked as poison in the dead-letter file.
    pub dead_lettered: u64,
    /// Writes recovered from the journal at open.
    pub recovered: u64,
    /// Bytes cut from a torn journal tail at open.
    pub truncated_bytes: u64,
}

/// Applies journaled writes of one namespace to its source.
pub(crate) trait Target: Send + Sync {
    fn apply<'a>(&'a self, key: &'a str, op: &'a Op) -> BoxFuture<'a, Result<(), String>>;
    /// The write `seq` of `key` is in the source (or parked): stop serving it from the pending overlay.
    fn settled(&self, key: &str, seq: u64);
}

/// One key's newest pending write and the older writes it covers.
struct Latest {
    seq: u64,
    op: Op,
    covered: Vec<u64>,
    attempts: u32,
}

struct Queue {
    namespace: String,
    keys: Mutex<HashMap<String, Latest>>,
    wake: Notify,
}

/// A write-behind queue with its journal. Cheap to clone; share one per process (per journal directory).
#[derive(Clone)]
pub struct WriteBehind {
    inner: Arc<Inner>,
}

struct Inner {
    journal: Journal,
    options: WriteBehindOptions,
    dir: PathBuf,
    /// Every journaled seq not yet committed or parked, and the highest one settled.
    unflushed: Mutex<(BTreeSet<u64>, u64)>,
    room: Notify,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    /// Recovered writes of namespaces not registered yet.
    orphans: Mutex<HashMap<String, Vec<Record>>>,
    acked: AtomicU64,
    flushed: AtomicU64,
    failures: AtomicU64,
    dead_lettered: AtomicU64,
    recovered: u64,
    truncated_bytes: u64,
}

impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("dir", &self.inner.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

impl WriteBehind {
    /// Opens the journal in `dir`, recovering unflushed writes; they are replayed when their namespaces are
    /// registered (`NamespaceBuilder::with_write_behind`).
    pub fn open(dir: impl AsRef<Path>, options: WriteBehindOptions) -> Result<Self, Error> {
        let dir = dir.as_ref().to_path_buf();
        let (journal, recovery) = Journal::open(&dir, options.journal.clone())?;
        let mut orphans: HashMap<String, Vec<Record>> = HashMap::new();
        let mut unflushed = BTreeSet::new();
        let recovered = recovery.pending.len() as u64;
        for r in recovery.pending {
            unflushed.insert(r.seq);
            orphans.entry(r.namespace.clone()).or_default().push(r);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                journal,
                options,
                dir,
                unflushed: Mutex::new((unflushed, recovery.checkpoint)),
                room: Notify::new(),
                queues: Mutex::new(HashMap::new()),
                orphans: Mutex::new(orphans),
                acked: AtomicU64::new(0),
                flushed: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                dead_lettered: AtomicU64::new(0),
                recovered,
                truncated_bytes: recovery.truncated_bytes,
            }),
        })
    }

    /// The queue's counters.
    pub fn stats(&self) -> WriteBehindStats {
        let i = &self.inner;
        WriteBehindStats {
            acked: i.acked.load(Ordering::Relaxed),
            pending: i.unflushed.lock().0.len() as u64,
            flushed: i.flushed.load(Ordering::Relaxed),
            failures: i.failures.load(Ordering::Relaxed),
            dead_lettered: i.dead_lettered.load(Ordering::Relaxed),
            recovered: i.recovered,
            truncated_bytes: i.truncated_bytes,
        }
    }

    /// Waits until no write is pending (all in the source or parked), up to `timeout`. Returns whether it is so.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            if self.inner.unflushed.lock().0.is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Registers a namespace's target and starts its flusher; recovered writes of the namespace are replayed.
    /// Returns the recovered writes so the namespace can serve them to readers until they are flushed.
    pub(crate) fn register(
        &self,
        namespace: &str,
        target: Arc<dyn Target>,
    ) -> Result<Vec<Record>, Error> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidState("a write-behind namespace must be built inside a Tokio runtime")
        })?;
        let queue = Arc::new(Queue {
            namespace: namespace.to_owned(),
            keys: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        });
        {
            let mut queues = self.inner.queues.lock();
            if queues.contains_key(namespace) {
                return Err(Error::NamespaceExists(namespace.to_owned()));
            }
            queues.insert(namespace.to_owned(), queue.clone());
        }
        let recovered = self
            .inner
            .orphans
            .lock()
            .remove(namespace)
            .unwrap_or_default();
        for r in &recovered {
            enqueue(&queue, &r.key, r.seq, r.op.clone());
        }
        queue.wake.notify_one();
        let inner = self.inner.clone();
        handle.spawn(flusher(inner, queue, target));
        Ok(recovered)
    }

    /// Journals a write of `namespace` and returns its sequence once it is durable. The caller updates its caches,
    /// then calls [`enqueue`](Self::enqueue).
    pub(crate) async fn journal(&self, namespace: &str, key: &str, op: Op) -> Result<u64, Error> {
        let inner = &self.inner;
        self.wait_for_room().await?;
        let (seq, durable) = {
            // Submitting under the lock makes "journaled" and "unflushed" one step for the checkpoint.
            let mut unflushed = inner.unflushed.lock();
            let (seq, durable) = inner.journal.submit(namespace, key, op)?;
            unflushed.0.insert(seq);
            (seq, durable)
        };
        if let Err(e) = durable.wait().await {
            self.settle(&[seq]);
            return Err(e);
        }
        inner.acked.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Hands a journaled write to its namespace's flusher.
    pub(crate) fn enqueue(&self, namespace: &str, key: &str, seq: u64, op: Op) {
        if let Some(q) = self.inner.queues.lock().get(namespace).cloned() {
            enqueue(&q, key, seq, op);
            q.wake.notify_one();
        }
    }

    async fn wait_for_room(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let until = tokio::time::Instant::now() + inner.options.overload_wait;
        loop {
            let room = inner.room.notified();
            if inner.unflushed.lock().0.len() < inner.options.max_pending {
                return Ok(());
            }
            if tokio::time::timeout_at(until, room).await.is_err() {
                return Err(Error::Overloaded(format!(
                    "{} write-behind writes are waiting for the source (max_pending)",
                    inner.options.max_pending
                )));
            }
        }
    }

    /// These writes are in the source (or parked): advance the checkpoint past everything settled.
    fn settle(&self, seqs: &[u64]) {
        settle(&self.inner, seqs);
    }
}

fn settle(inner: &Inner, seqs: &[u64]) {
    let checkpoint = {
        let mut guard = inner.unflushed.lock();
        let (set, max_settled) = &mut *guard;
        for s in seqs {
            set.remove(s);
            *max_settled = (*max_settled).max(*s);
        }
        match set.first() {
            Some(first) => first - 1,
            None => *max_settled,
        }
    };
    inner.room.notify_waiters();
    // A failed checkpoint write only delays truncation: the records replay idempotently.
    let _ = inner.journal.checkpoint(checkpoint);
}

fn enqueue(q: &Queue, key: &str, seq: u64, op: Op) {
    let mut keys = q.keys.lock();
    match keys.get_mut(key) {
        Some(l) if l.seq < seq => {
            l.covered.push(l.seq);
            l.seq = seq;
            l.op = op;
            l.attempts = 0;
        }
        Some(l) => l.covered.push(seq),
        None => {
            keys.insert(
                key.to_owned(),
                Latest {
                    seq,
                    op,
                    covered: Vec::new(),
                    attempts: 0,
                },
            );
        }
    }
}

async fn flusher(inner: Arc<Inner>, queue: Arc<Queue>, target: Arc<dyn Target>) {
    let o = inner.options.clone();
    let mut backoff = Duration::ZERO;
    loop {
        if queue.keys.lock().is_empty() {
            queue.wake.notified().await;
        }
        tokio::time::sleep(o.linger.max(backoff)).await;
        let batch: Vec<(String, Latest)> = {
            let mut keys = queue.keys.lock();
            let take: Vec<String> = keys.keys().take(o.batch.max(1)).cloned().collect();
            take.into_iter()
                .filter_map(|k| keys.remove(&k).map(|l| (k, l)))
                .collect()
        };
        let target = &target;
        let results: Vec<(String, Latest, Result<(), String>)> = futures::stream::iter(batch)
            .map(|(key, l)| async move {
                let r = target.apply(&key, &l.op).await;
                (key, l, r)
            })
            .buffer_unordered(o.concurrency.max(1))
            .collect()
            .await;
        let mut failed = false;
        // Settled in one step per round: one checkpoint write (two fsyncs) per round, not per key.
        let mut settled = Vec::new();
        for (key, mut l, r) in results {
            match r {
                Ok(()) => {
                    inner.flushed.fetch_add(1, Ordering::Relaxed);
                    target.settled(&key, l.seq);
                    settled.extend(l.covered);
                    settled.push(l.seq);
                }
                Err(error) => {
                    inner.failures.fetch_add(1, Ordering::Relaxed);
                    l.attempts += 1;
                    if l.attempts >= o.max_attempts {
                        park(&inner, &queue.namespace, &key, &l, &error);
                        target.settled(&key, l.seq);
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
            settle(&inner, &settled);
        }
        backoff = if failed {
            (backoff * 2).clamp(o.retry_base, o.retry_max)
        } else {
            Duration::ZERO
        };
    }
}

/// Appends a poison write to `dead-letter.jsonl` (one JSON object per line).
fn park(inner: &Inner, namespace: &str, key: &str, l: &Latest, error: &str) {
    inner.dead_lettered.fetch_add(1, Ordering::Relaxed);
    let (op, value) = match &l.op {
        Op::Upsert(v) => ("upsert", String::from_utf8_lossy(v).into_owned()),
        Op::Delete => ("delete", String::new()),
    };
    let line = serde_json::json!({
        "namespace": namespace, "key": key, "seq": l.seq, "op": op, "value": value, "attempts": l.attempts, "error": error,
    });
    let path = inner.dir.join("dead-letter.jsonl");
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| {
            writeln!(f, "{line}")?;
            f.sync_data()
        });
}

/// Pending writes by key: (journal seq, the value; `None`: a pending delete).
pub(crate) type Overlay<V> = Mutex<HashMap<String, (u64, Option<Arc<V>>)>>;

/// A namespace's side of write-behind: the flush target and the overlay of pending writes readers see.
pub(crate) struct BehindNs<V> {
    pub wb: WriteBehind,
    pub codec: Arc<dyn crate::codec::Codec<V>>,
    /// key → (seq, the pending value; `None`: a pending delete).
    pub overlay: Arc<Overlay<V>>,
}

struct NsTarget<V> {
    sink: Arc<dyn strata_core::Sink<V>>,
    codec: Arc<dyn crate::codec::Codec<V>>,
    overlay: Arc<Overlay<V>>,
}

impl<V: Send + Sync + 'static> Target for NsTarget<V> {
    fn apply<'a>(&'a self, key: &'a str, op: &'a Op) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            match op {
                Op::Upsert(bytes) => {
                    let v = self
                        .codec
                        .decode(bytes)
                        .map_err(|e| format!("the journaled value does not decode: {e}"))?;
                    self.sink
                        .upsert(key, &v)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
                Op::Delete => self
                    .sink
                    .delete(key)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
            }
        })
    }

    fn settled(&self, key: &str, seq: u64) {
        let mut overlay = self.overlay.lock();
        if overlay.get(key).is_some_and(|(s, _)| *s <= seq) {
            overlay.remove(key);
        }
    }
}

impl<V: Send + Sync + 'static> BehindNs<V> {
    /// Registers `namespace` with `wb`; recovered writes go to the overlay (readers see them) and the flusher.
    pub(crate) fn register(
        wb: WriteBehind,
        namespace: &str,
        sink: Arc<dyn strata_core::Sink<V>>,
        codec: Arc<dyn crate::codec::Codec<V>>,
    ) -> Result<Self, Error> {
        let overlay = Arc::new(Mutex::new(HashMap::new()));
        let target = Arc::new(NsTarget {
            sink,
            codec: codec.clone(),
            overlay: overlay.clone(),
        });
        let recovered = wb.register(namespace, target)?;
        {
            let mut o = overlay.lock();
            for r in recovered {
                let value = match &r.op {
                    Op::Upsert(bytes) => match codec.decode(bytes) {
                        Ok(v) => Some(Arc::new(v)),
                        // Undecodable: the flusher will park it; readers fall back to the source.
                        Err(_) => continue,
                    },
                    Op::Delete => None,
                };
                o.insert(r.key.clone(), (r.seq, value));
            }
        }
        Ok(Self { wb, codec, overlay })
    }
}
