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
//! - **Validated before the ack**: a value is checked against the sink ([`Sink::check`](strata_core::Sink::check):
//!   columns, types, `NOT NULL` for a table) before it is journaled, so what the source must refuse is refused at
//!   once, as write-through would.
//! - **Retries and poison**: a failed flush is retried with exponential backoff; after `max_attempts` the write is
//!   parked in `dead-letter.jsonl` next to the journal (with the error), logged at error level with its key and
//!   reason, counted, dropped from the caches (they must not serve a value that will never be persisted), and no
//!   longer blocks the checkpoint. Parked writes are listed, retried and discarded with
//!   [`WriteBehind::dead_letters`], [`WriteBehind::take_dead_letter`] and [`WriteBehind::discard_dead_letter`]
//!   (the server's `/v1/_dead_letters` and `strata dead-letters`).
//! - **Versions and fencing**: each write takes a version from a hybrid logical clock ([`strata_core::Hlc`]) when
//!   it is journaled; the caches hold it with the value, and the source is written with
//!   [`Sink::upsert_fenced`](strata_core::Sink::upsert_fenced) (`… WHERE version < $new`), so a replayed or late
//!   write never overwrites a newer row, and replaying twice leaves the same row (idempotent). A namespace that
//!   writes behind should write *only* behind: the source's own counters (`through`) do not order against clock
//!   versions.
//! - **Batches**: each round sends its upserts as one [`Sink::upsert_fenced_many`](strata_core::Sink::upsert_fenced_many)
//!   (one statement on PostgreSQL, one transaction on SQLite). If the batch fails, its writes are retried one by
//!   one in the same round, so a poison write is isolated and the rest still flush.
//! - **Lag**: for every key flushed, the time its oldest covered write waited between ack and commit is recorded
//!   ([`WriteBehindStats::lag_p99_micros`], metric `strata_write_behind_lag_seconds`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use parking_lot::Mutex;
use strata_core::{Error, Hlc};
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
    /// Upserts per batch (one statement / transaction). Default: 256.
    pub batch: usize,
    /// Batches in flight at once; a flush round takes up to `batch × batches_in_flight` keys, oldest first.
    /// Default: 4.
    pub batches_in_flight: usize,
    /// Single writes in flight at once (deletes, lone upserts, a failed batch retried write by write). Default: 16.
    pub concurrency: usize,
    /// How long a flusher waits to gather a batch. Longer means fewer, fuller batches (more coalescing, less load on
    /// the source) and more lag; see the `writes` benchmark in BENCHMARKS.md. Default: 20 ms.
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
            batches_in_flight: 4,
            concurrency: 16,
            linger: Duration::from_millis(20),
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
    /// Flush attempts that failed (and were retried or parked); a failed batch counts once, and its writes are
    /// then tried one by one.
    pub failures: u64,
    /// Writes parked as poison in the dead-letter file.
    pub dead_lettered: u64,
    /// Writes recovered from the journal at open.
    pub recovered: u64,
    /// Bytes cut from a torn journal tail at open.
    pub truncated_bytes: u64,
    /// Flushes the source fenced out (it already held a newer version).
    pub fenced: u64,
    /// Batches that failed and were retried one write at a time.
    pub batch_fallbacks: u64,
    /// Ack-to-commit lag of flushed keys (oldest covered write), median, in µs.
    pub lag_p50_micros: u64,
    /// The same, 99th percentile.
    pub lag_p99_micros: u64,
    /// The same, maximum.
    pub lag_max_micros: u64,
}

/// One write handed to a [`Target`]: key, operation, version.
pub(crate) type Item<'a> = (&'a str, &'a Op, Option<u64>);

/// Applies journaled writes of one namespace to its source.
pub(crate) trait Target: Send + Sync {
    /// One write; returns whether the source fenced it out (it held a newer version).
    fn apply<'a>(&'a self, item: Item<'a>) -> BoxFuture<'a, Result<bool, String>>;
    /// Upserts of distinct keys as one batch; returns how many were fenced out. All or error.
    fn apply_batch<'a>(&'a self, items: &'a [Item<'a>]) -> BoxFuture<'a, Result<u64, String>>;
    /// The write `seq` of `key` is in the source (or parked): stop serving it from the pending overlay.
    fn settled(&self, key: &str, seq: u64);
    /// The write of `key` was parked: the caches must stop serving it.
    fn parked(&self, key: &str);
}

/// One key's newest pending write and the older writes it covers.
struct Latest {
    seq: u64,
    op: Op,
    version: Option<u64>,
    covered: Vec<u64>,
    attempts: u32,
    /// When the oldest write this entry covers was acknowledged.
    oldest_ack: std::time::Instant,
}

/// A namespace's pending keys, flushed oldest first: a key joins the back of `order` when it becomes pending and
/// keeps its place while newer writes of it arrive, so a constantly rewritten key cannot starve the others.
#[derive(Default)]
struct Pending {
    map: HashMap<String, Latest>,
    order: VecDeque<String>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Latest> {
        self.map.get_mut(key)
    }

    fn insert(&mut self, key: String, latest: Latest) {
        if self.map.insert(key.clone(), latest).is_none() {
            self.order.push_back(key);
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

struct Queue {
    namespace: String,
    keys: Mutex<Pending>,
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
    fenced: AtomicU64,
    batch_fallbacks: AtomicU64,
    recovered: u64,
    truncated_bytes: u64,
    /// Issues the versions of writes.
    hlc: Hlc,
    /// Ack-to-commit lag in µs.
    lag: Mutex<hdrhistogram::Histogram<u64>>,
    /// Serialises appends to and rewrites of `dead-letter.jsonl`.
    dead_letter_file: Mutex<()>,
}

/// A write parked in the dead-letter file after `max_attempts` failed flushes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    /// The namespace.
    pub namespace: String,
    /// The key.
    pub key: String,
    /// The write's journal sequence number: its id in the dead-letter store.
    pub seq: u64,
    /// `"upsert"` or `"delete"`.
    pub op: String,
    /// The codec-encoded value (JSON text with the JSON codec); empty for a delete.
    pub value: String,
    /// Failed attempts.
    pub attempts: u32,
    /// The last error.
    pub error: String,
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
        let hlc = Hlc::new();
        for r in recovery.pending {
            if let Some(v) = r.version {
                hlc.observe(v);
            }
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
                fenced: AtomicU64::new(0),
                batch_fallbacks: AtomicU64::new(0),
                recovered,
                truncated_bytes: recovery.truncated_bytes,
                hlc,
                lag: Mutex::new(
                    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
                        .expect("valid histogram bounds"),
                ),
                dead_letter_file: Mutex::new(()),
            }),
        })
    }

    /// The queue's counters.
    pub fn stats(&self) -> WriteBehindStats {
        let i = &self.inner;
        let (lag_p50_micros, lag_p99_micros, lag_max_micros) = {
            let h = i.lag.lock();
            (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
        };
        WriteBehindStats {
            fenced: i.fenced.load(Ordering::Relaxed),
            batch_fallbacks: i.batch_fallbacks.load(Ordering::Relaxed),
            lag_p50_micros,
            lag_p99_micros,
            lag_max_micros,
            acked: i.acked.load(Ordering::Relaxed),
            pending: i.unflushed.lock().0.len() as u64,
            flushed: i.flushed.load(Ordering::Relaxed),
            failures: i.failures.load(Ordering::Relaxed),
            dead_lettered: i.dead_lettered.load(Ordering::Relaxed),
            recovered: i.recovered,
            truncated_bytes: i.truncated_bytes,
        }
    }

    /// The parked writes, oldest first. A line of the file that does not parse is reported as an error naming
    /// its line number (the file is the operator's to repair; nothing is dropped silently).
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, Error> {
        let _file = self.inner.dead_letter_file.lock();
        read_dead_letters(&self.dead_letter_path())
    }

    /// Removes the parked write `seq` from the store and returns it, for the caller to write again (retry).
    /// `None` if there is no such write.
    pub fn take_dead_letter(&self, seq: u64) -> Result<Option<DeadLetter>, Error> {
        self.remove_dead_letter(seq)
    }

    /// Drops the parked write `seq` for good. Returns whether it existed.
    pub fn discard_dead_letter(&self, seq: u64) -> Result<bool, Error> {
        self.remove_dead_letter(seq).map(|d| d.is_some())
    }

    fn remove_dead_letter(&self, seq: u64) -> Result<Option<DeadLetter>, Error> {
        let _file = self.inner.dead_letter_file.lock();
        let path = self.dead_letter_path();
        let mut all = read_dead_letters(&path)?;
        let Some(i) = all.iter().position(|d| d.seq == seq) else {
            return Ok(None);
        };
        let taken = all.remove(i);
        let tmp = path.with_extension("jsonl.tmp");
        let mut text = String::new();
        for d in &all {
            text.push_str(&serde_json::to_string(d).expect("a dead letter serializes"));
            text.push('\n');
        }
        std::fs::File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::Unavailable {
                tier: strata_core::Tier::Source,
                message: format!("rewriting {}: {e}", path.display()),
            })?;
        Ok(Some(taken))
    }

    fn dead_letter_path(&self) -> PathBuf {
        self.inner.dir.join("dead-letter.jsonl")
    }

    /// Forgets the lag recorded so far (e.g. after a warm-up).
    pub fn reset_lag(&self) {
        self.inner.lag.lock().reset();
    }

    /// Publishes the counters through the `metrics` facade: `strata_write_behind_{acked,flushed,failures,
    /// dead_lettered,fenced,batch_fallbacks}` (absolute counters), `strata_write_behind_pending` and
    /// `strata_write_behind_lag_p99_seconds` (gauges). Call it periodically, like `Cache::publish_metrics`.
    pub fn publish_metrics(&self) {
        let s = self.stats();
        for (name, v) in [
            ("strata_write_behind_acked", s.acked),
            ("strata_write_behind_flushed", s.flushed),
            ("strata_write_behind_failures", s.failures),
            ("strata_write_behind_dead_lettered", s.dead_lettered),
            ("strata_write_behind_fenced", s.fenced),
            ("strata_write_behind_batch_fallbacks", s.batch_fallbacks),
        ] {
            metrics::counter!(name).absolute(v);
        }
        metrics::gauge!("strata_write_behind_pending").set(s.pending as f64);
        metrics::gauge!("strata_write_behind_lag_p99_seconds").set(s.lag_p99_micros as f64 / 1e6);
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
            keys: Mutex::new(Pending::default()),
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
        let now = std::time::Instant::now();
        for r in &recovered {
            enqueue(&queue, &r.key, r.seq, r.op.clone(), r.version, now);
        }
        queue.wake.notify_one();
        let inner = self.inner.clone();
        handle.spawn(flusher(inner, queue, target));
        Ok(recovered)
    }

    /// Journals a write of `namespace` made at wall time `now` and returns its sequence and version once it is
    /// durable. Both are taken in one step, so a key's versions increase with its sequence. The caller updates its
    /// caches, then calls [`enqueue`](Self::enqueue).
    pub(crate) async fn journal(
        &self,
        namespace: &str,
        key: &str,
        op: Op,
        now: strata_core::UnixMillis,
    ) -> Result<(u64, u64), Error> {
        let inner = &self.inner;
        self.wait_for_room().await?;
        let (seq, version, durable) = {
            // Submitting under the lock makes "journaled" and "unflushed" one step for the checkpoint, and
            // makes the version order the sequence order.
            let mut unflushed = inner.unflushed.lock();
            let version = inner.hlc.next(now);
            let (seq, durable) =
                inner
                    .journal
                    .submit_versioned(namespace, key, op, Some(version))?;
            unflushed.0.insert(seq);
            (seq, version, durable)
        };
        if let Err(e) = durable.wait().await {
            self.settle(&[seq]);
            return Err(e);
        }
        inner.acked.fetch_add(1, Ordering::Relaxed);
        Ok((seq, version))
    }

    /// Hands a journaled write to its namespace's flusher.
    pub(crate) fn enqueue(
        &self,
        namespace: &str,
        key: &str,
        seq: u64,
        op: Op,
        version: Option<u64>,
    ) {
        if let Some(q) = self.inner.queues.lock().get(namespace).cloned() {
            enqueue(&q, key, seq, op, version, std::time::Instant::now());
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

fn enqueue(
    q: &Queue,
    key: &str,
    seq: u64,
    op: Op,
    version: Option<u64>,
    acked: std::time::Instant,
) {
    let mut keys = q.keys.lock();
    match keys.get_mut(key) {
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
            keys.insert(
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

async fn flusher(inner: Arc<Inner>, queue: Arc<Queue>, target: Arc<dyn Target>) {
    let o = inner.options.clone();
    let mut backoff = Duration::ZERO;
    loop {
        if queue.keys.lock().is_empty() {
            queue.wake.notified().await;
        }
        tokio::time::sleep(o.linger.max(backoff)).await;
        let batch: Vec<(String, Latest)> = queue
            .keys
            .lock()
            .take(o.batch.max(1) * o.batches_in_flight.max(1));
        let target = &target;
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
                        park(&inner, &queue.namespace, &key, &l, &error);
                        target.settled(&key, l.seq);
                        target.parked(&key);
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
            settle(&inner, &settled);
        }
        backoff = if failed {
            (backoff * 2).clamp(o.retry_base, o.retry_max)
        } else {
            Duration::ZERO
        };
    }
}

fn read_dead_letters(path: &Path) -> Result<Vec<DeadLetter>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Unavailable {
                tier: strata_core::Tier::Source,
                message: format!("reading {}: {e}", path.display()),
            })
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Unavailable {
                tier: strata_core::Tier::Source,
                message: format!("{} line {}: not a dead letter: {e}", path.display(), i + 1),
            })
        })
        .collect()
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

/// Pending writes by key: (journal seq, the value; `None`: a pending delete).
pub(crate) type Overlay<V> = Mutex<HashMap<String, (u64, Option<Arc<V>>)>>;

/// A namespace's side of write-behind: the flush target and the overlay of pending writes readers see.
pub(crate) struct BehindNs<V> {
    pub wb: WriteBehind,
    pub codec: Arc<dyn crate::codec::Codec<V>>,
    /// key → (seq, the pending value; `None`: a pending delete).
    pub overlay: Arc<Overlay<V>>,
    /// Keys whose write was parked (taken by the namespace, which invalidates them in every tier).
    pub parked: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
}

struct NsTarget<V> {
    sink: Arc<dyn strata_core::Sink<V>>,
    codec: Arc<dyn crate::codec::Codec<V>>,
    overlay: Arc<Overlay<V>>,
    /// Keys whose write was parked, for the namespace to invalidate.
    parked: tokio::sync::mpsc::UnboundedSender<String>,
}

impl<V: Send + Sync + 'static> NsTarget<V> {
    fn decode(&self, bytes: &[u8]) -> Result<V, String> {
        self.codec
            .decode(bytes)
            .map_err(|e| format!("the journaled value does not decode: {e}"))
    }
}

impl<V: Send + Sync + 'static> Target for NsTarget<V> {
    fn apply<'a>(&'a self, (key, op, version): Item<'a>) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let fenced = match (op, version) {
                (Op::Upsert(bytes), Some(v)) => {
                    let value = self.decode(bytes)?;
                    !self
                        .sink
                        .upsert_fenced(key, &value, v)
                        .await
                        .map_err(|e| e.to_string())?
                }
                (Op::Upsert(bytes), None) => {
                    let value = self.decode(bytes)?;
                    self.sink
                        .upsert(key, &value)
                        .await
                        .map_err(|e| e.to_string())?;
                    false
                }
                (Op::Delete, Some(v)) => {
                    self.sink
                        .delete_fenced(key, v)
                        .await
                        .map_err(|e| e.to_string())?;
                    false
                }
                (Op::Delete, None) => {
                    self.sink.delete(key).await.map_err(|e| e.to_string())?;
                    false
                }
            };
            Ok(fenced)
        })
    }

    fn apply_batch<'a>(&'a self, items: &'a [Item<'a>]) -> BoxFuture<'a, Result<u64, String>> {
        Box::pin(async move {
            let mut values = Vec::with_capacity(items.len());
            for (_, op, version) in items {
                match (op, version) {
                    (Op::Upsert(bytes), Some(_)) => values.push(self.decode(bytes)?),
                    _ => return Err("only versioned upserts are batched".into()),
                }
            }
            let batch: Vec<(&str, &V, u64)> = items
                .iter()
                .zip(&values)
                .map(|((k, _, v), value)| (*k, value, v.unwrap_or_default()))
                .collect();
            let written = self
                .sink
                .upsert_fenced_many(&batch)
                .await
                .map_err(|e| e.to_string())?;
            Ok(written.iter().filter(|w| !**w).count() as u64)
        })
    }

    fn settled(&self, key: &str, seq: u64) {
        let mut overlay = self.overlay.lock();
        if overlay.get(key).is_some_and(|(s, _)| *s <= seq) {
            overlay.remove(key);
        }
    }

    fn parked(&self, key: &str) {
        let _ = self.parked.send(key.to_owned());
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
        let (parked, parked_rx) = tokio::sync::mpsc::unbounded_channel();
        let target = Arc::new(NsTarget {
            sink,
            codec: codec.clone(),
            overlay: overlay.clone(),
            parked,
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
        Ok(Self {
            wb,
            codec,
            overlay,
            parked: Mutex::new(Some(parked_rx)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_keys_flush_oldest_first_and_a_hot_key_keeps_its_place() {
        let q = Queue {
            namespace: "n".into(),
            keys: Mutex::new(Pending::default()),
            wake: Notify::new(),
        };
        let t0 = std::time::Instant::now();
        for (seq, k) in ["a", "b", "c"].iter().enumerate() {
            enqueue(&q, k, seq as u64 + 1, Op::Delete, Some(seq as u64 + 1), t0);
        }
        // "a" is rewritten again and again: it must not move, and "b", "c" must not wait behind its rewrites.
        for seq in 4..100 {
            enqueue(&q, "a", seq, Op::Delete, Some(seq), t0);
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

    fn enqueue_locked(p: &mut Pending, key: &str, seq: u64) {
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
