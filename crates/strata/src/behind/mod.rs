//! Write-behind: a write is journaled (durably, see [`crate::journal`]), the caches are updated, the caller is
//! acknowledged, and a flusher writes it to the source later.
//!
//! # Layout
//! - this module: the [`WriteBehind`] handle (one per journal directory: options, stats, dead letters, the
//!   unflushed set the checkpoint follows), and the namespace's side (`BehindNs`: its sink adapter and overlay);
//! - `flusher`: the task per namespace that coalesces and writes to the source, and its stop handle;
//! - `overlay`: which pending write a read on this node sees;
//! - [`journal`]: the durable, checksummed log (also reachable as [`crate::journal`]).
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

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use strata_core::{Error, Hlc};
use tokio::sync::Notify;

mod flusher;
pub mod journal;
mod overlay;

pub(crate) use flusher::Flusher;
use flusher::{DirtyKeys, FlushTarget, Item, Queue};
use journal::{Journal, JournalOptions, Op, Record};
pub(crate) use overlay::Overlay;

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

/// A write-behind queue with its journal. Cheap to clone; share one per process (per journal directory).
#[derive(Clone)]
pub struct WriteBehind {
    inner: Arc<Inner>,
}

/// The queue's shared state. Each part is synchronised the way it is used; no lock is held across an `.await`,
/// and the lock order is `queues` → a queue's keys, `queues` → `orphans`.
struct Inner {
    /// Its own writer thread and channel (see [`journal`]).
    journal: Journal,
    /// Immutable after open.
    options: WriteBehindOptions,
    dir: PathBuf,
    /// Every journaled seq not yet settled (committed, covered or parked), and the highest one settled: the
    /// checkpoint is the first unsettled seq − 1. One mutex, because journaling a write and marking it unflushed
    /// must be one step (else a checkpoint could pass a write that is journaled but not yet marked).
    unflushed: Mutex<(BTreeSet<u64>, u64)>,
    /// Wakes writers waiting for room under `max_pending` whenever writes settle.
    room: Notify,
    /// The registered namespaces' queues. A mutex taken to register, to enqueue a write and to unregister, so a
    /// write lands either in a namespace's queue or in its orphans, never in a queue that is being handed back.
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    /// Pending writes of namespaces with no running flusher: recovered at open and not registered yet, written
    /// while none was registered, or left when a flusher stopped. Registering takes them.
    orphans: Mutex<HashMap<String, DirtyKeys>>,
    /// Relaxed atomic counters: statistics only, nothing is ordered by them.
    acked: AtomicU64,
    flushed: AtomicU64,
    failures: AtomicU64,
    dead_lettered: AtomicU64,
    fenced: AtomicU64,
    batch_fallbacks: AtomicU64,
    recovered: u64,
    truncated_bytes: u64,
    /// Issues the versions of writes (its own atomics); called under `unflushed`, so versions follow sequences.
    hlc: Hlc,
    /// Ack-to-commit lag in µs. A mutex: recorded once per flushed key by the flusher, read by `stats`.
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
        let mut orphans: HashMap<String, DirtyKeys> = HashMap::new();
        let mut unflushed = BTreeSet::new();
        let recovered = recovery.pending.len() as u64;
        let hlc = Hlc::new();
        let now = std::time::Instant::now();
        for r in recovery.pending {
            if let Some(v) = r.version {
                hlc.observe(v);
            }
            unflushed.insert(r.seq);
            orphans
                .entry(r.namespace)
                .or_default()
                .add(&r.key, r.seq, r.op, r.version, now);
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

    /// Registers a namespace's target and starts its flusher; writes of the namespace waiting as orphans
    /// (recovered at open, or left by an earlier registration's flusher) are flushed first. Returns the newest
    /// such write of each key, so the namespace can serve them to readers until they are flushed, and the
    /// flusher's handle (the flusher stops once every clone of it is dropped).
    pub(crate) fn register(
        &self,
        namespace: &str,
        target: Arc<dyn FlushTarget>,
    ) -> Result<(Vec<Record>, Arc<Flusher>), Error> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidState("a write-behind namespace must be built inside a Tokio runtime")
        })?;
        let queue = {
            let mut queues = self.inner.queues.lock();
            if queues.contains_key(namespace) {
                return Err(Error::NamespaceExists(namespace.to_owned()));
            }
            let keys = self
                .inner
                .orphans
                .lock()
                .remove(namespace)
                .unwrap_or_default();
            let queue = Arc::new(Queue {
                namespace: namespace.to_owned(),
                keys: Mutex::new(keys),
                wake: Notify::new(),
            });
            queues.insert(namespace.to_owned(), queue.clone());
            queue
        };
        let waiting: Vec<Record> = queue
            .keys
            .lock()
            .latest()
            .map(|(key, l)| Record {
                seq: l.seq,
                namespace: namespace.to_owned(),
                key: key.to_owned(),
                op: l.op.clone(),
                version: l.version,
            })
            .collect();
        queue.wake.notify_one();
        let flusher = Flusher::spawn(&handle, self.inner.clone(), queue, target);
        Ok((waiting, Arc::new(flusher)))
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

    /// Hands a journaled write to its namespace's flusher — or, when none runs (its cache was closed), to the
    /// namespace's orphans, for its next registration: the write is journaled either way.
    pub(crate) fn enqueue(
        &self,
        namespace: &str,
        key: &str,
        seq: u64,
        op: Op,
        version: Option<u64>,
    ) {
        let now = std::time::Instant::now();
        let queues = self.inner.queues.lock();
        match queues.get(namespace) {
            Some(q) => {
                q.keys.lock().add(key, seq, op, version, now);
                q.wake.notify_one();
            }
            None => self
                .inner
                .orphans
                .lock()
                .entry(namespace.to_owned())
                .or_default()
                .add(key, seq, op, version, now),
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

/// A namespace's side of write-behind: the flush target and the overlay of pending writes readers see.
pub(crate) struct BehindNs<V> {
    pub wb: WriteBehind,
    pub codec: Arc<dyn crate::codec::Codec<V>>,
    /// The pending writes readers see; shared with the flusher's target, which clears what it flushed.
    pub overlay: Arc<Overlay<V>>,
    /// The namespace's flusher; the cache holds a clone to drain and stop it at `Cache::close`.
    pub flusher: Arc<Flusher>,
    /// Keys whose write is being parked (taken by the namespace, which invalidates them in every tier and then
    /// says so on the key's `oneshot`).
    pub parked: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Parked>>>,
}

struct NsTarget<V> {
    sink: Arc<dyn strata_core::Sink<V>>,
    codec: Arc<dyn crate::codec::Codec<V>>,
    overlay: Arc<Overlay<V>>,
    /// Keys whose write is being parked, for the namespace to invalidate.
    parked: tokio::sync::mpsc::UnboundedSender<Parked>,
}

/// A key whose write is being parked, and the signal that every tier has dropped it.
pub(crate) type Parked = (String, tokio::sync::oneshot::Sender<()>);

impl<V: Send + Sync + 'static> NsTarget<V> {
    fn decode(&self, bytes: &[u8]) -> Result<V, String> {
        self.codec
            .decode(bytes)
            .map_err(|e| format!("the journaled value does not decode: {e}"))
    }
}

impl<V: Send + Sync + 'static> FlushTarget for NsTarget<V> {
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
        self.overlay.flushed(key, seq);
    }

    fn parked<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (done, dropped) = tokio::sync::oneshot::channel();
            if self.parked.send((key.to_owned(), done)).is_ok() {
                // Err: the namespace is gone, and its caches with it.
                let _ = dropped.await;
            }
        })
    }
}

impl<V: Send + Sync + 'static> BehindNs<V> {
    /// Registers `namespace` with `wb`; writes still pending for it (recovered from the journal, or left by an
    /// earlier registration) go to the overlay (readers see them) and the flusher.
    pub(crate) fn register(
        wb: WriteBehind,
        namespace: &str,
        sink: Arc<dyn strata_core::Sink<V>>,
        codec: Arc<dyn crate::codec::Codec<V>>,
    ) -> Result<Self, Error> {
        let overlay = Arc::new(Overlay::default());
        let (parked, parked_rx) = tokio::sync::mpsc::unbounded_channel();
        let target = Arc::new(NsTarget {
            sink,
            codec: codec.clone(),
            overlay: overlay.clone(),
            parked,
        });
        let (waiting, flusher) = wb.register(namespace, target)?;
        for r in waiting {
            let value = match &r.op {
                Op::Upsert(bytes) => match codec.decode(bytes) {
                    Ok(v) => Some(Arc::new(v)),
                    // Undecodable: the flusher will park it; readers fall back to the source.
                    Err(_) => continue,
                },
                Op::Delete => None,
            };
            overlay.record(&r.key, r.seq, value);
        }
        Ok(Self {
            wb,
            codec,
            overlay,
            flusher,
            parked: Mutex::new(Some(parked_rx)),
        })
    }
}
