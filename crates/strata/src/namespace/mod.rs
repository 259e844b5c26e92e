//! A namespace: keys of one value type under one [`Policy`], and the read and write paths over them.
//!
//! # The read path (`get_or_load`)
//! 1. L1. A fresh entry is returned at once; if it is due for early refresh (ratio or XFetch) one background
//!    refresh starts. Inside the stale-while-revalidate window the stale value is returned at once and one
//!    background refresh starts. Inside the fail-safe window, a key whose last load failed less than
//!    `fail_safe_retry_every` ago is answered stale without touching the source.
//! 2. Single-flight ([`crate::flight`]): the first caller starts the load in a detached task; everyone else waits
//!    for the same outcome.
//! 3. The load has the hard timeout; a caller holding a fail-safe value stops waiting at the soft timeout.
//! 4. On error or timeout, a value inside the fail-safe window is served (and further loads throttled); else the
//!    error reaches the caller.
//!
//! With a shared tier, the load task first consults L2 and, with distributed coalescing, takes the key's lease
//! (see the `l2` submodule); it fills L2 under a fence before it answers.
//!
//! # Consistency model
//! Within one process, every operation on a key is linearizable with respect to writes (`insert`, `invalidate`,
//! `invalidate_all`): a load that started before a write never fills the cache after it, and a read that starts
//! after a write returns completed writes' data or loads anew. What the source itself returns is the loader's
//! business: Strata caches it for `ttl` (± jitter), which is the staleness bound for changes it is not told of.
//!
//! Across nodes sharing L2: a write through any node is in L2 before its call returns and other nodes' L1 copies
//! go within the bus latency; a load that began before an invalidation (anywhere) never fills L2 after it.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use strata_core::{
    Clock, EarlyRefresh, Error, Fetched, Invalidation, Policy, SharedError, Sink, Source, Tier,
    UnixMillis, WriteMode,
};

use crate::barriers::TagBarriers;
use crate::behind::BehindNs;
use crate::bus::{Liveness, Publisher};
use crate::entry::{Entry, EntryKind};
use crate::flight::{
    poison_locked, register_locked, remove_locked, Flight, Flights, Origin, Outcome, Role,
};
use crate::hotkeys::HotKeyDetector;
use crate::journal::Op;
use crate::l1::L1;
use crate::lookup::{Lookup, StaleReason, Status};
use crate::stats::{Counters, NamespaceStats};

/// Estimates a value's size in bytes for the L1 budget.
pub type Weigher<V> = Arc<dyn Fn(&V) -> usize + Send + Sync>;

type BatchFuture<V> = BoxFuture<'static, Result<HashMap<String, Fetched<V>>, SharedError>>;

/// A typed handle on one namespace. Cheap to clone; all clones share the namespace.
pub struct Namespace<V> {
    pub(crate) inner: Arc<Inner<V>>,
}

impl<V> Clone for Namespace<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<V> std::fmt::Debug for Namespace<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.inner.name)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

mod l2;
mod remote;

pub(crate) use l2::NsL2;
pub use l2::BARRIER_STALENESS;

/// The namespace's shared state. Nothing here is behind one big lock: each part is synchronised the way its access
/// pattern needs, and no lock is held across an `.await`.
pub(crate) struct Inner<V> {
    name: String,
    /// Immutable after build: read on every operation without synchronisation.
    policy: Policy,
    clock: Arc<dyn Clock>,
    /// Its own concurrency (quick_cache's sharded store, or sharded mutex maps for LRU/LFU/FIFO): a hit is one
    /// shard read and never waits on a load.
    l1: Option<L1<V>>,
    /// 64 sharded `parking_lot` mutexes: the key's shard lock orders a fill against writes to the same key (poison,
    /// tombstone, fill and flight removal happen in one critical section; see `crate::flight`), while keys of
    /// other shards never contend.
    flights: Flights<V>,
    /// An atomic fast path (no barrier, or an entry without tags: one relaxed load) in front of a lock taken only
    /// when tags are invalidated.
    barriers: TagBarriers,
    /// Striped atomic counters: every hit increments one, so they must not share a cache line across threads.
    counters: Counters,
    weigher: Weigher<V>,
    load_seconds: metrics::Histogram,
    /// The cache's bus node's sending side, when the cache was built with a bus: this node's writes are published
    /// through it. Fixed at build (the cache takes its bus before any namespace exists), so reading it needs no
    /// synchronisation.
    publisher: Option<Arc<Publisher>>,
    /// How long a source write waits for its invalidation to reach L2 and the bus.
    propagation_timeout: Duration,
    /// The change feed (CDC) that tells this namespace of writes made behind the cache's back, when it has one:
    /// L1 and L2 are trusted only while the feed's last mark is younger than its bound.
    feed: Option<Arc<Liveness>>,
    /// The shared tier, when the cache has one and the policy enables it.
    l2: Option<NsL2<V>>,
    /// Hot-key detection, when the policy enables it.
    hot: Option<HotKeyDetector>,
    /// The source of truth's read side, when bound.
    source: Option<Arc<dyn Source<V>>>,
    /// The source of truth's write side, when bound.
    sink: Option<Arc<dyn Sink<V>>>,
    /// Write-behind, when the namespace writes behind.
    behind: Option<BehindNs<V>>,
    /// L1 exists only to pin hot keys (the policy turned L1 off).
    pins_only: bool,
}

/// What L1 holds for a key, classified against the policy at one instant.
enum Found<V> {
    Fresh(Arc<Entry<V>>),
    Revalidate(Arc<Entry<V>>),
    FailSafe(Arc<Entry<V>>),
    Absent,
}

/// What the L1 lookup decided for one key.
enum Triage<V> {
    /// Answer now. `Some(early)`: also start one background refresh (`early`: the entry is still fresh).
    Answer(Lookup<V>, Option<bool>),
    /// Load, with this stale entry (inside the fail-safe window) as the fallback.
    Load(Option<Arc<Entry<V>>>),
}

/// The outcome of [`Namespace::warm`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarmReport {
    /// Keys this call loaded from the source.
    pub loaded: usize,
    /// Keys that were already cached (fresh, negative, or stale and now refreshing).
    pub already_cached: usize,
    /// Keys whose load another caller was already running.
    pub coalesced: usize,
    /// Keys whose load failed (no stale value to fall back on).
    pub failed: usize,
}

/// What a namespace is built from (see `NamespaceBuilder`).
pub(crate) struct Parts<V> {
    pub name: String,
    pub policy: Policy,
    pub clock: Arc<dyn Clock>,
    pub weigher: Weigher<V>,
    pub publisher: Option<Arc<Publisher>>,
    pub propagation_timeout: Duration,
    pub feed: Option<Arc<Liveness>>,
    pub l2: Option<NsL2<V>>,
    pub source: Option<Arc<dyn Source<V>>>,
    pub sink: Option<Arc<dyn Sink<V>>>,
    pub behind: Option<BehindNs<V>>,
}

impl<V: Send + Sync + 'static> Namespace<V> {
    pub(crate) fn new(parts: Parts<V>) -> Self {
        let Parts {
            name,
            policy,
            clock,
            weigher,
            publisher,
            propagation_timeout,
            feed,
            l2,
            source,
            sink,
            behind,
        } = parts;
        let pins_only = !policy.l1.enabled && policy.hot_keys.enabled;
        let l1 = if policy.l1.enabled {
            Some(L1::new(&policy.l1))
        } else if pins_only {
            Some(L1::new(&strata_core::L1Policy {
                enabled: true,
                budget_bytes: PIN_BUDGET_BYTES,
                ..policy.l1.clone()
            }))
        } else {
            None
        };
        let hot = policy.hot_keys.enabled.then(|| {
            HotKeyDetector::new(clock.clone(), policy.hot_keys.threshold_per_sec, HOT_WINDOW)
        });
        let barriers = TagBarriers::new(longest_life_ms(&policy));
        let load_seconds = metrics::histogram!("strata_load_seconds", "namespace" => name.clone());
        let parked = behind.as_ref().and_then(|b| b.parked.lock().take());
        let ns = Self {
            inner: Arc::new(Inner {
                name,
                policy,
                clock,
                l1,
                flights: Flights::new(),
                barriers,
                counters: Counters::default(),
                weigher,
                load_seconds,
                publisher,
                propagation_timeout,
                feed,
                l2,
                hot,
                pins_only,
                source,
                sink,
                behind,
            }),
        };
        if let Some(mut parked) = parked {
            // A parked write-behind value will never be persisted: drop it from every tier. The task holds the
            // namespace weakly and ends with it.
            let weak = Arc::downgrade(&ns.inner);
            tokio::spawn(async move {
                while let Some(key) = parked.recv().await {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.invalidate(&key, None).await;
                }
            });
        }
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The namespace's policy.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The clock deadlines are read from.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The L1 store, for inspection and benchmarks.
    pub fn l1(&self) -> Option<&L1<V>> {
        self.inner.l1.as_ref()
    }

    /// A fresh cached value (or cached absence), without loading and without awaiting. Stale entries are not
    /// returned: only `get_or_load` can serve stale, because only it can start the refresh.
    #[inline]
    pub fn get(&self, key: &str) -> Option<Lookup<V>> {
        let inner = &*self.inner;
        let hit = inner.l1.as_ref().and_then(|l1| l1.get(key)).and_then(|e| {
            let now = inner.clock.now();
            let valid = e.kind != EntryKind::Tombstone
                && now < e.fresh_until
                && !inner.barriers.blocks(&e.tags, e.created_at)
                && inner.l1_trusted(now);
            valid.then(|| {
                let status = inner.hit_status(&e);
                Lookup::new(e, status)
            })
        });
        if hit.is_none() {
            inner.counters.misses.inc();
        }
        hit
    }

    /// Whether L1 holds an unexpired value or absence for `key` — whether or not the node may trust it now (see
    /// [`crate::bus`]): what measurements of eviction look at, where [`get`](Self::get) would also say `None`
    /// for an untrusted copy.
    pub fn l1_holds(&self, key: &str) -> bool {
        let now = self.inner.clock.now();
        self.inner
            .l1
            .as_ref()
            .and_then(|l1| l1.peek(key))
            .is_some_and(|e| e.kind != EntryKind::Tombstone && !e.is_expired(now))
    }

    /// [`get`](Self::get) for several keys; results are in the order of `keys`.
    pub fn get_many<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Vec<Option<Lookup<V>>> {
        keys.into_iter().map(|k| self.get(k)).collect()
    }

    /// Stores a value: a *write* the caller knows to be current (write-through). Any load of the key under way
    /// will not fill; with L2 the value is written there too, and with a bus attached the other nodes drop their
    /// copies. To cache a value just read from the source, use [`get_or_load`](Self::get_or_load), which fills
    /// without telling anyone.
    pub async fn insert(&self, key: impl Into<String>, value: V) -> bool {
        self.insert_fetched(key, Fetched::value(value)).await
    }

    /// Stores a value with its version and tags. Returns `false` when neither L1 nor L2 stored it: a greater
    /// version is cached, L1 is off and L2 absent, or L2 failed (then the key's invalidation is queued for
    /// replay, so the old L2 value cannot outlive this write).
    pub async fn insert_fetched(&self, key: impl Into<String>, fetched: Fetched<V>) -> bool {
        self.insert_told(key.into(), fetched).await.0
    }

    /// [`insert_fetched`](Self::insert_fetched), also returning the bus message's sequence number.
    async fn insert_told(&self, key: String, fetched: Fetched<V>) -> (bool, Option<u64>) {
        let inner = &*self.inner;
        inner.counters.inserts.inc();
        let version = fetched.version;
        let entry = Arc::new(inner.make_entry(&key, fetched, Duration::ZERO));
        self.insert_entry(key, entry, version).await
    }

    async fn insert_entry(
        &self,
        key: String,
        entry: Arc<Entry<V>>,
        version: Option<u64>,
    ) -> (bool, Option<u64>) {
        let inner = &*self.inner;
        let in_l1 = {
            let mut shard = inner.flights.lock(&key);
            poison_locked(&mut shard, &key);
            inner.fill_locked(&key, entry.clone())
        };
        let in_l2 = match &inner.l2 {
            Some(_) => inner.write_l2(&key, &entry).await,
            None => false,
        };
        let seq = inner.publish(Invalidation::Set { key }, version);
        (in_l1 || in_l2, seq)
    }

    /// Invalidates a key: later reads load anew, and a load that began before this call cannot put its (older)
    /// value back — in this process, and with L2 on every node (the L2 tombstone voids the key's lease and fences
    /// fills). The tombstone blocks fills for `tombstone_hold_off`.
    pub async fn invalidate(&self, key: &str) {
        self.inner.invalidate(key, None).await;
    }

    /// Invalidates a key because the source now holds `version`: additionally, any fill with an older version is
    /// refused while the tombstone lives.
    pub async fn invalidate_version(&self, key: &str, version: u64) {
        self.inner.invalidate(key, Some(version)).await;
    }

    /// Invalidates every entry tagged `tag` (its [`Fetched::tags`]): they read as absent from now on, on every
    /// node (the barrier is kept in L2 and published on the bus), and loads under way in the namespace will not
    /// fill (their tags are not known until they finish).
    pub async fn invalidate_tag(&self, tag: &str) {
        let inner = &*self.inner;
        inner.invalidate_tag_local(tag);
        if inner.l2.is_some() {
            inner.raise_barrier_l2(Some(tag)).await;
        }
        inner.publish(
            Invalidation::Tag {
                tag: tag.to_owned(),
            },
            None,
        );
    }

    /// Invalidates every key of the namespace, including loads under way: a generation bump. With L2, the
    /// generation barrier is kept there, so every node (also one that joins later) reads older entries as absent.
    pub async fn bump_generation(&self) {
        let inner = &*self.inner;
        inner.invalidate_all_local();
        if inner.l2.is_some() {
            inner.raise_barrier_l2(None).await;
        }
        inner.publish(Invalidation::Clear, None);
    }

    /// Same as [`bump_generation`](Self::bump_generation).
    pub async fn invalidate_all(&self) {
        self.bump_generation().await;
    }

    /// Returns the cached value or loads it with `loader`, coalescing concurrent loads of the key. The loader
    /// returns `Option<V>` (`None`: the key does not exist) or a [`Fetched`] with version and tags.
    ///
    /// The loader's future runs in a detached task, so it must be `Send + 'static`; if this call is cancelled the
    /// load still completes for the other waiters and for the cache. With L2, the loader is called when this
    /// caller leads the key's load, but its future is polled (the source touched) only if L2 cannot answer: keep
    /// side effects inside the future, not in the closure.
    pub async fn get_or_load<F, Fut, T>(&self, key: &str, loader: F) -> Result<Lookup<V>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: Into<Fetched<V>> + Send + 'static,
    {
        self.read(key, || Box::pin(loader().map(|v| Ok(v.into()))))
            .await
    }

    /// Like [`get_or_load`](Self::get_or_load) with a fallible loader. Every coalesced waiter receives the same
    /// error; [`Error::loader_error`] recovers the loader's own type.
    pub async fn try_get_or_load<F, Fut, T, E>(
        &self,
        key: &str,
        loader: F,
    ) -> Result<Lookup<V>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Into<Fetched<V>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.read(key, || {
            Box::pin(loader().map(|r| r.map(Into::into).map_err(|e| Arc::new(e) as SharedError)))
        })
        .await
    }

    /// Returns the values of `keys` (in order), loading all misses with one call of `loader`, which receives only
    /// the keys that are neither cached nor already being loaded. Keys missing from the loader's map are absent.
    /// Fails with the first key's error that no fail-safe value covers.
    ///
    /// With L2, the keys are looked up there with one round trip first; batch loads take no leases (local
    /// single-flight still holds per key).
    pub async fn get_or_load_many<K, F, Fut, E>(
        &self,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<Lookup<V>>, Error>
    where
        K: AsRef<str>,
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<HashMap<String, V>, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.read_many(keys, |keys| {
            Box::pin(loader(keys).map(|r| {
                r.map(|m| m.into_iter().map(|(k, v)| (k, Fetched::value(v))).collect())
                    .map_err(|e| Arc::new(e) as SharedError)
            }))
        })
        .await
    }

    async fn read_many<K: AsRef<str>>(
        &self,
        keys: &[K],
        make: impl FnOnce(Vec<String>) -> BatchFuture<V>,
    ) -> Result<Vec<Lookup<V>>, Error> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let mut ready: Vec<Option<Lookup<V>>> = Vec::with_capacity(keys.len());
        let mut waits = Vec::new();
        let mut leaders: Vec<(String, Arc<Flight<V>>)> = Vec::new();
        let mut refreshing = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_ref();
            let fallback = match inner.triage(key, now) {
                Triage::Answer(lookup, refresh) => {
                    if let Some(early) = refresh {
                        if let Role::Leader(f) =
                            inner
                                .flights
                                .join_or_register(key, now, inner.untrusted_bound(now))
                        {
                            inner.count_refresh(early);
                            refreshing.insert(key.to_owned(), l2::Refreshing::of(lookup.entry()));
                            leaders.push((key.to_owned(), f));
                        }
                    }
                    ready.push(Some(lookup));
                    continue;
                }
                Triage::Load(fallback) => fallback,
            };
            if let Some(hot) = &inner.hot {
                hot.record(key);
            }
            ready.push(None);
            match inner
                .flights
                .join_or_register(key, now, inner.untrusted_bound(now))
            {
                Role::Leader(f) => {
                    inner.counters.misses.inc();
                    leaders.push((key.to_owned(), f.clone()));
                    waits.push((i, f, Status::Miss, fallback));
                }
                Role::Follower(f) => {
                    inner.counters.coalesced.inc();
                    waits.push((i, f, Status::Coalesced, fallback));
                }
            }
        }
        if !leaders.is_empty() {
            let fut = make(leaders.iter().map(|(k, _)| k.clone()).collect());
            inner.spawn_load(leaders, fut, None, refreshing);
        }
        for (i, flight, status, fallback) in waits {
            ready[i] = Some(inner.await_flight(&flight, status, fallback).await?);
        }
        Ok(ready
            .into_iter()
            .map(|r| r.expect("every key answered"))
            .collect())
    }

    /// Reads `key` through the namespace's [`Source`] ([`NamespaceBuilder::with_source`](crate::NamespaceBuilder::with_source)):
    /// [`get_or_load`](Self::get_or_load) with the source as the loader.
    pub async fn fetch(&self, key: &str) -> Result<Lookup<V>, Error> {
        if let Some(pending) = self.pending_write(key) {
            return Ok(pending);
        }
        let source = self.source()?;
        let k = key.to_owned();
        self.read(key, move || Box::pin(async move { source.load(&k).await }))
            .await
    }

    /// Reads `keys` through the namespace's [`Source`], loading all misses with one `load_many` (one query).
    pub async fn fetch_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Lookup<V>>, Error> {
        let source = self.source()?;
        let mut answers = self
            .read_many(keys, move |keys| {
                Box::pin(async move { source.load_many(&keys).await })
            })
            .await?;
        if self.inner.behind.is_some() {
            for (answer, key) in answers.iter_mut().zip(keys) {
                if let Some(pending) = self.pending_write(key.as_ref()) {
                    *answer = pending;
                }
            }
        }
        Ok(answers)
    }

    /// Writes `value` to the source through the namespace's [`Sink`], then updates the caches as the policy's
    /// [`WriteMode`] says, and returns the version the source now holds:
    /// - `Aside`: commit, then invalidate (tombstone with the new version in L1 and L2, lease voided, bus);
    /// - `Through`: commit, then set L1 and L2 with the source's version (older versions cannot overwrite it),
    ///   and tell the other nodes;
    /// - `Around`: commit only; caches learn by TTL or by the bus (CDC).
    ///
    /// When the commit fails the caches are untouched and the error names the key.
    pub async fn write(&self, key: &str, value: V) -> Result<u64, Error> {
        let sink = self.sink()?;
        let mode = self.inner.policy.write;
        if mode == WriteMode::Behind {
            return self.write_behind(key, Some(value)).await;
        }
        let version = sink
            .upsert(key, &value)
            .await
            .map_err(|source| Error::Write {
                key: key.to_owned(),
                kind: sink.classify(&source),
                source,
            })?;
        let seq = match mode {
            WriteMode::Aside => self.inner.invalidate(key, Some(version)).await,
            WriteMode::Through => {
                self.insert_told(key.to_owned(), Fetched::value(value).with_version(version))
                    .await
                    .1
            }
            WriteMode::Around | WriteMode::Behind => return Ok(version),
        };
        self.inner.await_propagation(key, seq, version).await?;
        Ok(version)
    }

    /// Deletes `key` in the source through the namespace's [`Sink`], then invalidates it in every tier (except in
    /// `Around` mode). In `Behind` mode the delete is journaled and flushed like a write.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        let sink = self.sink()?;
        if self.inner.policy.write == WriteMode::Behind {
            return self.write_behind(key, None).await.map(drop);
        }
        let version = sink.delete(key).await.map_err(|source| Error::Write {
            key: key.to_owned(),
            kind: sink.classify(&source),
            source,
        })?;
        if self.inner.policy.write == WriteMode::Around {
            return Ok(());
        }
        let seq = self.inner.invalidate(key, version).await;
        self.inner
            .await_propagation(key, seq, version.unwrap_or(0))
            .await
    }

    /// Write-behind (see [`crate::behind`]): journal durably, update the caches and the pending overlay, ack;
    /// the flusher writes the source later. Returns the write's version (from the hybrid logical clock).
    async fn write_behind(&self, key: &str, value: Option<V>) -> Result<u64, Error> {
        let inner = &*self.inner;
        let b = inner.behind.as_ref().ok_or_else(|| {
            Error::Unsupported(format!(
                "namespace {:?} is in write-behind mode but has no queue: build it with with_write_behind",
                inner.name
            ))
        })?;
        if let (Some(v), Some(sink)) = (value.as_ref(), inner.sink.as_ref()) {
            // What the source must refuse is refused now, not after the ack.
            sink.check(key, v).map_err(|source| Error::Write {
                key: key.to_owned(),
                kind: sink.classify(&source),
                source,
            })?;
        }
        let op = match value.as_ref() {
            Some(v) => Op::Upsert(b.codec.encode(v).map_err(|e| Error::Write {
                key: key.to_owned(),
                kind: strata_core::WriteErrorKind::rejected(
                    None,
                    format!("the value does not encode: {e}"),
                ),
                source: Arc::new(std::io::Error::other(format!(
                    "the value does not encode: {e}"
                ))),
            })?),
            None => Op::Delete,
        };
        // The write's version: the source has none to give yet, so the hybrid logical clock issues it — in the
        // same step as the journal sequence, so that versions order a key's writes as the journal does. Every tier
        // and the flusher's fenced upsert carry it.
        let (seq, version) =
            b.wb.journal(&inner.name, key, op.clone(), inner.clock.now())
                .await?;
        let entry = value.map(|v| {
            Arc::new(inner.make_entry(key, Fetched::value(v).with_version(version), Duration::ZERO))
        });
        b.overlay
            .record(key, seq, entry.as_ref().and_then(|e| e.value.clone()));
        match entry {
            Some(e) => {
                // The bus message carries the version, as a delete's does: receivers tombstone the key with it and
                // so refuse fills older than this write while the tombstone lives. Until the flusher has run, the
                // source still holds the row this write replaces (older version), and without the version a
                // receiver reading the source would cache that row as if it were current.
                self.insert_entry(key.to_owned(), e, Some(version)).await;
            }
            None => {
                self.inner.invalidate(key, Some(version)).await;
            }
        }
        b.wb.enqueue(&inner.name, key, seq, op, Some(version));
        Ok(version)
    }

    /// A write-behind write of `key` not yet in the source, as readers must see it.
    fn pending_write(&self, key: &str) -> Option<Lookup<V>> {
        let inner = &*self.inner;
        let value = inner.behind.as_ref()?.overlay.pending(key)?;
        let now = inner.clock.now();
        let fresh = now + millis(inner.policy.ttl);
        let status = if value.is_some() {
            Status::Hit(Tier::L1)
        } else {
            Status::Negative
        };
        let entry = Entry::new(key, value, now, fresh, fresh, None, Vec::new(), 0, 0);
        Some(Lookup::new(Arc::new(entry), status))
    }

    fn source(&self) -> Result<Arc<dyn Source<V>>, Error> {
        self.inner.source.clone().ok_or(Error::InvalidState(
            "the namespace has no source: register it with with_source",
        ))
    }

    fn sink(&self) -> Result<Arc<dyn Sink<V>>, Error> {
        self.inner.sink.clone().ok_or(Error::InvalidState(
            "the namespace has no sink: register it with with_sink",
        ))
    }

    /// Loads `keys` that are not cached, at most `concurrency` loads at a time. Keys already cached or being
    /// loaded are not loaded again, so warming during traffic causes no stampede.
    pub async fn warm<I, F, Fut, T, E>(&self, keys: I, concurrency: usize, loader: F) -> WarmReport
    where
        I: IntoIterator<Item = String>,
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Into<Fetched<V>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let loader = &loader;
        futures::stream::iter(keys)
            .map(|key| async move { self.try_get_or_load(&key, || loader(key.clone())).await })
            .buffer_unordered(concurrency.max(1))
            .fold(WarmReport::default(), |mut report, r| async move {
                match r.map(|l| l.status()) {
                    Ok(Status::Miss) => report.loaded += 1,
                    Ok(Status::Coalesced) => report.coalesced += 1,
                    Ok(_) => report.already_cached += 1,
                    Err(_) => report.failed += 1,
                }
                report
            })
            .await
    }

    /// A snapshot of the namespace's counters.
    pub fn stats(&self) -> NamespaceStats {
        self.inner.stats()
    }

    async fn read(
        &self,
        key: &str,
        make: impl FnOnce() -> BoxFuture<'static, Result<Fetched<V>, SharedError>>,
    ) -> Result<Lookup<V>, Error> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let fallback = match inner.triage(key, now) {
            Triage::Answer(lookup, refresh) => {
                if let Some(early) = refresh {
                    inner.refresh(key, make, early, l2::Refreshing::of(lookup.entry()));
                }
                return Ok(lookup);
            }
            Triage::Load(fallback) => fallback,
        };
        if let Some(hot) = &inner.hot {
            hot.record(key);
        }
        let (flight, status) =
            match inner
                .flights
                .join_or_register(key, now, inner.untrusted_bound(now))
            {
                Role::Leader(f) => {
                    inner.counters.misses.inc();
                    inner.spawn_load(
                        vec![(key.to_owned(), f.clone())],
                        single(key, make()),
                        fallback.clone(),
                        HashMap::new(),
                    );
                    (f, Status::Miss)
                }
                Role::Follower(f) => {
                    inner.counters.coalesced.inc();
                    (f, Status::Coalesced)
                }
            };
        inner.await_flight(&flight, status, fallback).await
    }
}

fn single<V: Send + 'static>(
    key: &str,
    fut: BoxFuture<'static, Result<Fetched<V>, SharedError>>,
) -> BatchFuture<V> {
    let key = key.to_owned();
    Box::pin(fut.map(move |r| r.map(|f| HashMap::from([(key, f)]))))
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// The node's contact with the bus, when the transport confirms it (see [`crate::bus`]'s `Liveness`).
    #[inline]
    fn liveness(&self) -> Option<&Liveness> {
        self.publisher.as_ref().and_then(|p| p.liveness.as_deref())
    }

    /// Whether L1 may answer at `now`: always, unless the bus confirms contact and the last confirmation is
    /// older than its bound (then an entry may have missed an invalidation; it is not served).
    #[inline]
    fn l1_trusted(&self, now: UnixMillis) -> bool {
        match self.liveness() {
            Some(l) if !l.trusted(now) => {
                l.untrusted_reads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
            _ => self.feed_trusted(now),
        }
    }

    /// Whether the change feed (when the namespace has one) confirmed recently enough that L1 and L2 hold no
    /// value a source commit older than the bound has replaced.
    #[inline]
    fn feed_trusted(&self, now: UnixMillis) -> bool {
        match &self.feed {
            Some(f) if !f.trusted(now) => {
                f.untrusted_reads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
            _ => true,
        }
    }

    /// The tightest bound the caches are untrusted under at `now`, if any: fills are kept no longer.
    fn untrusted_bound(&self, now: UnixMillis) -> Option<u64> {
        let bus = self
            .liveness()
            .filter(|l| !l.trusted(now))
            .map(|l| l.bound_ms());
        let feed = self
            .feed
            .as_ref()
            .filter(|f| !f.trusted(now))
            .map(|f| f.bound_ms());
        bus.into_iter().chain(feed).min()
    }

    fn find(&self, key: &str, now: UnixMillis) -> Found<V> {
        let Some(e) = self.l1.as_ref().and_then(|l1| l1.get(key)) else {
            return Found::Absent;
        };
        if !self.l1_trusted(now) {
            return Found::Absent;
        }
        if e.kind == EntryKind::Tombstone
            || now >= e.stale_until
            || self.barriers.blocks(&e.tags, e.created_at)
        {
            Found::Absent
        } else if now < e.fresh_until {
            Found::Fresh(e)
        } else if now < e.fresh_until.saturating_add(millis(self.policy.stale_for)) {
            Found::Revalidate(e)
        } else {
            Found::FailSafe(e)
        }
    }

    /// Classifies the key's L1 entry at `now` and counts the answer (see the module docs, step 1).
    fn triage(&self, key: &str, now: UnixMillis) -> Triage<V> {
        match self.find(key, now) {
            Found::Fresh(e) => {
                let status = self.hit_status(&e);
                let refresh = self.refresh_due(&e, now).then_some(true);
                Triage::Answer(Lookup::new(e, status), refresh)
            }
            Found::Revalidate(e) => {
                self.counters.stale_revalidating.inc();
                let refresh = (e.retry_after() <= now).then_some(false);
                Triage::Answer(
                    Lookup::new(e, Status::Stale(StaleReason::Revalidating)),
                    refresh,
                )
            }
            Found::FailSafe(e) if now < e.retry_after() => {
                self.counters.stale_fail_safe.inc();
                Triage::Answer(Lookup::new(e, Status::Stale(StaleReason::FailSafe)), None)
            }
            Found::FailSafe(e) => Triage::Load(Some(e)),
            Found::Absent => Triage::Load(None),
        }
    }

    fn count_refresh(&self, early: bool) {
        self.counters.refreshes.inc();
        if early {
            self.counters.early_refreshes.inc();
        }
    }

    #[inline]
    fn hit_status(&self, e: &Entry<V>) -> Status {
        if e.kind == EntryKind::Negative {
            self.counters.negative_hits.inc();
            Status::Negative
        } else {
            self.counters.hits.inc();
            Status::Hit(Tier::L1)
        }
    }

    fn refresh_due(&self, e: &Entry<V>, now: UnixMillis) -> bool {
        if e.kind != EntryKind::Value || now < e.retry_after() {
            return false;
        }
        match self.policy.early_refresh {
            EarlyRefresh::Off => false,
            EarlyRefresh::Ratio(r) => {
                let life = e.fresh_until.saturating_sub(e.created_at) as f64;
                now as f64 >= e.created_at as f64 + r * life
            }
            EarlyRefresh::XFetch { beta } => {
                // 1 − U(0,1) lies in (0, 1], so ln is finite and ≤ 0.
                let u = 1.0 - rand::random::<f64>();
                now as f64 - f64::from(e.delta_ms.max(1)) * beta * u.ln() >= e.fresh_until as f64
            }
        }
    }

    /// Starts one background refresh of `key` unless a load is already under way.
    fn refresh(
        self: &Arc<Self>,
        key: &str,
        make: impl FnOnce() -> BoxFuture<'static, Result<Fetched<V>, SharedError>>,
        early: bool,
        current: l2::Refreshing,
    ) {
        let now = self.clock.now();
        if let Role::Leader(f) = self
            .flights
            .join_or_register(key, now, self.untrusted_bound(now))
        {
            self.count_refresh(early);
            let refreshing = HashMap::from([(key.to_owned(), current)]);
            self.spawn_load(
                vec![(key.to_owned(), f)],
                single(key, make()),
                None,
                refreshing,
            );
        }
    }

    /// Runs one loader call for the given flights in a detached task with the hard timeout, consulting L2 first
    /// when the namespace has it (see [`l2`]). `fallback`: the caller's stale L1 value, for a single key.
    /// `refreshing`: keys being refreshed, with the creation time of the entry being replaced — L2 answers those
    /// only with a newer entry (another node's refresh), else the refresh would just copy L2 back.
    fn spawn_load(
        self: &Arc<Self>,
        flights: Vec<(String, Arc<Flight<V>>)>,
        fut: BatchFuture<V>,
        fallback: Option<Arc<Entry<V>>>,
        refreshing: HashMap<String, l2::Refreshing>,
    ) {
        let inner = self.clone();
        tokio::spawn(async move { inner.run_load(flights, fut, fallback, refreshing).await });
    }

    async fn run_load(
        self: Arc<Self>,
        flights: Vec<(String, Arc<Flight<V>>)>,
        fut: BatchFuture<V>,
        fallback: Option<Arc<Entry<V>>>,
        refreshing: HashMap<String, l2::Refreshing>,
    ) {
        // While the change feed is silent, L2 may still hold what a source commit replaced: go to the source (and
        // do not fill L2 without a fence).
        let l2 = self
            .l2
            .as_ref()
            .filter(|_| self.feed_trusted(self.clock.now()));
        let pending: Vec<l2::Pending<V>> = match l2 {
            None => flights
                .into_iter()
                .map(|(key, flight)| l2::Pending {
                    key,
                    flight,
                    fence: None,
                    fallback: None,
                })
                .collect(),
            Some(_) if flights.len() == 1 => {
                let (key, flight) = flights.into_iter().next().expect("one flight");
                let newer_than = refreshing.get(&key).copied();
                self.consult_l2(key, flight, fallback, newer_than)
                    .await
                    .into_iter()
                    .collect()
            }
            Some(_) => self.consult_l2_many(flights, &refreshing).await,
        };
        if pending.is_empty() {
            return; // answered from L2: the loader's future is dropped unpolled
        }
        self.counters.loads.inc();
        let hard = self.policy.load_timeout.hard;
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(hard, AssertUnwindSafe(fut).catch_unwind()).await;
        let elapsed = started.elapsed();
        self.counters.load_micros.add(elapsed.as_micros() as u64);
        self.load_seconds.record(elapsed.as_secs_f64());
        let outcome: Result<HashMap<String, Fetched<V>>, Error> = match result {
            Err(_) => {
                self.counters.load_timeouts.inc();
                Err(Error::Timeout {
                    tier: Tier::Source,
                    after: hard,
                })
            }
            Ok(Err(panic)) => {
                self.counters.load_errors.inc();
                Err(Error::LoaderPanicked {
                    message: panic_message(panic.as_ref()),
                })
            }
            Ok(Ok(Err(source))) => {
                self.counters.load_errors.inc();
                Err(Error::Load {
                    tier: Tier::Source,
                    source,
                })
            }
            Ok(Ok(Ok(map))) => Ok(map),
        };
        match outcome {
            Ok(mut map) => {
                for p in pending {
                    let fetched = map.remove(&p.key).unwrap_or_else(Fetched::absent);
                    let entry = Arc::new(self.make_entry(&p.key, fetched, elapsed));
                    // L2 first, then the waiters: when `get_or_load` returns, every node can read the value.
                    let poisoned = p.flight.is_poisoned();
                    match p.fence {
                        // A write overtook the load: L2's fence would refuse the fill anyway.
                        Some((_, Some(token))) if poisoned => {
                            self.release_lease(&p.key, token).await
                        }
                        Some((started, lease)) if !poisoned => {
                            self.fill_l2(&p.key, &entry, started, lease).await
                        }
                        _ => {}
                    }
                    self.settle(&p.key, &p.flight, Ok((entry, Origin::Loaded)));
                }
            }
            Err(err) => {
                for p in pending {
                    if let Some((_, Some(token))) = p.fence {
                        self.release_lease(&p.key, token).await;
                    }
                    match p.fallback {
                        Some(stale) => {
                            stale.throttle_until(
                                self.clock.now() + millis(self.policy.fail_safe_retry_every),
                            );
                            self.counters.fail_safe_activations.inc();
                            self.settle(
                                &p.key,
                                &p.flight,
                                Ok((stale, Origin::Stale(StaleReason::FailSafe))),
                            );
                        }
                        None => self.settle(&p.key, &p.flight, Err(err.clone())),
                    }
                }
            }
        }
    }

    /// Records a flight's outcome in L1 (unless a write poisoned it), ends the flight, and wakes its waiters.
    fn settle(&self, key: &str, flight: &Arc<Flight<V>>, outcome: Outcome<V>) {
        self.settle_then(key, flight, outcome, false);
    }

    /// [`settle`](Self::settle); with `go_on`, a new flight for the key is registered in the same critical
    /// section (so no second load can start) and returned — unless a write poisoned this one.
    fn settle_then(
        &self,
        key: &str,
        flight: &Arc<Flight<V>>,
        outcome: Outcome<V>,
        go_on: bool,
    ) -> Option<Arc<Flight<V>>> {
        let next = {
            let mut shard = self.flights.lock(key);
            match &outcome {
                Ok(_) if flight.is_poisoned() => {
                    self.counters.fills_refused.inc();
                }
                Ok((entry, _)) => {
                    self.fill_locked(key, entry.clone());
                }
                Err(_) => {
                    let until = self.clock.now() + millis(self.policy.fail_safe_retry_every);
                    if let Some(e) = self.l1.as_ref().and_then(|l1| l1.peek(key)) {
                        e.throttle_until(until);
                    }
                }
            }
            remove_locked(&mut shard, key, flight);
            (go_on && !flight.is_poisoned() && !shard.contains_key(key))
                .then(|| register_locked(&mut shard, key, self.clock.now()))
        };
        flight.publish(outcome);
        next
    }

    /// Stores `entry` unless a live entry holds a greater version. Call with the key's flight shard locked.
    fn fill_locked(&self, key: &str, mut entry: Arc<Entry<V>>) -> bool {
        let Some(l1) = &self.l1 else { return false };
        if self.pins_only {
            match self.pin(key, &entry) {
                Some(pinned) => entry = pinned,
                None => return false,
            }
        }
        if entry.kind == EntryKind::Negative && self.policy.negative_ttl.is_zero() {
            l1.remove(key);
            return false;
        }
        let now = self.clock.now();
        if let Some(bound) = self.untrusted_bound(now) {
            // Filled while the bus or the change feed is not confirmed live: a write elsewhere may not have
            // reached this node, so the copy lives no longer than the bound.
            entry = Arc::new(entry.expiring_by(now + bound));
        }
        if let (Some(existing), Some(new)) = (l1.peek(key), entry.version) {
            if !existing.is_expired(self.clock.now())
                && existing.version.is_some_and(|old| new < old)
            {
                self.counters.fills_refused.inc();
                return false;
            }
        }
        l1.insert(key.to_owned(), entry);
        true
    }

    /// With L1 off and hot-key protection on, only hot keys' entries go to L1, their life capped by `pin_ttl`.
    fn pin(&self, key: &str, entry: &Arc<Entry<V>>) -> Option<Arc<Entry<V>>> {
        if entry.kind == EntryKind::Tombstone || !self.hot.as_ref().is_some_and(|h| h.is_hot(key)) {
            return None;
        }
        self.counters.pinned.inc();
        let until = self.clock.now() + millis(self.policy.hot_keys.pin_ttl);
        Some(Arc::new(entry.expiring_by(until)))
    }

    /// Tombstones `key` in every tier and tells the other nodes; returns the bus message's sequence number.
    async fn invalidate(&self, key: &str, version: Option<u64>) -> Option<u64> {
        self.invalidate_key(key, version);
        if self.l2.is_some() {
            self.invalidate_l2(key, version).await;
        }
        self.publish(
            Invalidation::Delete {
                key: key.to_owned(),
            },
            version,
        )
    }

    /// Waits until a source write's invalidation is in L2 (not waiting for replay) and bus message `seq` has
    /// been accepted by the transport, at most the propagation timeout. Only then may the write be acknowledged:
    /// every other node then either has dropped its copy or stops trusting its L1 within the bus's bound.
    async fn await_propagation(
        &self,
        key: &str,
        seq: Option<u64>,
        version: u64,
    ) -> Result<(), Error> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.propagation_timeout;
        let not_propagated = || Error::NotPropagated {
            key: key.to_owned(),
            version,
            after: started.elapsed(),
        };
        while self.invalidation_pending(key) {
            if tokio::time::Instant::now() >= deadline {
                return Err(not_propagated());
            }
            tokio::time::sleep(PROPAGATION_POLL).await;
        }
        if let (Some(seq), Some(p)) = (seq, self.publisher.as_ref()) {
            if !p.published(seq, deadline).await {
                return Err(not_propagated());
            }
        }
        Ok(())
    }

    /// Tombstones `key` in L1 and poisons its load in flight. Publishing is the caller's business: a local write
    /// publishes after L2 has the tombstone, so no node that hears of it can re-read the old value from L2.
    fn invalidate_key(&self, key: &str, version: Option<u64>) {
        self.counters.invalidations.inc();
        let now = self.clock.now();
        let mut shard = self.flights.lock(key);
        poison_locked(&mut shard, key);
        if let Some(l1) = self
            .l1
            .as_ref()
            .filter(|l1| !self.pins_only || l1.peek(key).is_some())
        {
            let hold = now + millis(self.policy.tombstone_hold_off);
            l1.insert(
                key.to_owned(),
                Arc::new(Entry::tombstone(key, now, hold, version)),
            );
        }
    }

    fn invalidate_tag_local(&self, tag: &str) {
        self.counters.invalidations.inc();
        self.barriers.raise(tag, self.clock.now());
        self.flights.poison_all(|| {});
    }

    fn invalidate_all_local(&self) {
        self.counters.invalidations.inc();
        self.flights.poison_all(|| {
            if let Some(l1) = &self.l1 {
                l1.clear();
            }
        });
    }

    /// Queues a bus message (when a bus is attached) and returns its sequence number.
    fn publish(&self, what: Invalidation, version: Option<u64>) -> Option<u64> {
        self.publisher
            .as_ref()
            .map(|p| p.send(&self.name, what, version, self.clock.now()))
    }

    /// Waits for a flight and turns its outcome into the caller's answer, applying the soft timeout and fail-safe.
    async fn await_flight(
        &self,
        flight: &Flight<V>,
        status: Status,
        fallback: Option<Arc<Entry<V>>>,
    ) -> Result<Lookup<V>, Error> {
        let outcome = match (self.policy.load_timeout.soft, &fallback) {
            (Some(soft), Some(stale)) => match tokio::time::timeout(soft, flight.wait()).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.counters.stale_soft_timeout.inc();
                    return Ok(Lookup::new(
                        stale.clone(),
                        Status::Stale(StaleReason::SoftTimeout),
                    ));
                }
            },
            _ => flight.wait().await,
        };
        match (outcome, fallback) {
            (Ok((entry, Origin::Loaded)), _) => Ok(Lookup::new(entry, status)),
            (Ok((entry, Origin::Shared)), _) => {
                let status = if entry.kind == EntryKind::Negative {
                    self.counters.negative_hits.inc();
                    Status::Negative
                } else {
                    self.counters.hits_l2.inc();
                    Status::Hit(Tier::L2)
                };
                Ok(Lookup::new(entry, status))
            }
            (Ok((entry, Origin::Stale(reason))), _) => {
                match reason {
                    StaleReason::FailSafe => self.counters.stale_fail_safe.inc(),
                    _ => self.counters.stale_revalidating.inc(),
                }
                Ok(Lookup::new(entry, Status::Stale(reason)))
            }
            (Err(_), Some(stale)) => {
                // One activation per failed load (its leader), however many waiters it answers.
                if status == Status::Miss {
                    self.counters.fail_safe_activations.inc();
                }
                self.counters.stale_fail_safe.inc();
                stale.throttle_until(self.clock.now() + millis(self.policy.fail_safe_retry_every));
                Ok(Lookup::new(stale, Status::Stale(StaleReason::FailSafe)))
            }
            (Err(err), None) => Err(err),
        }
    }

    fn make_entry(&self, key: &str, fetched: Fetched<V>, took: Duration) -> Entry<V> {
        let now = self.clock.now();
        let delta_ms = took.as_millis().min(u32::MAX as u128) as u32;
        match fetched.value {
            Some(v) => {
                let mut ttl = jittered(self.policy.ttl, self.policy.jitter);
                if let Some(cap) = self.policy.l1.max_ttl {
                    ttl = ttl.min(cap);
                }
                let fresh_until = now + millis(ttl).max(1);
                let stale_until = fresh_until + millis(self.policy.retain_after_fresh());
                let weight = (self.weigher)(&v) as u64;
                Entry::new(
                    key,
                    Some(Arc::new(v)),
                    now,
                    fresh_until,
                    stale_until,
                    fetched.version,
                    fetched.tags,
                    delta_ms,
                    weight,
                )
            }
            None => {
                let fresh_until = now + millis(self.policy.negative_ttl);
                Entry::new(
                    key,
                    None,
                    now,
                    fresh_until,
                    fresh_until,
                    fetched.version,
                    fetched.tags,
                    delta_ms,
                    0,
                )
            }
        }
    }

    pub(crate) fn stats(&self) -> NamespaceStats {
        let (evictions, bytes, entries) = self.l1.as_ref().map_or((0, 0, 0), |l1| {
            (l1.evictions(), l1.weight(), l1.len() as u64)
        });
        self.counters
            .snapshot(&self.name, evictions, bytes, entries)
    }
}

/// The L1 budget of a namespace whose L1 holds only pinned hot keys.
const PIN_BUDGET_BYTES: u64 = 8 << 20;

/// How often a write waiting for its invalidation's replay looks again.
const PROPAGATION_POLL: Duration = Duration::from_millis(10);

/// The hot-key detector's counting window.
const HOT_WINDOW: Duration = Duration::from_millis(200);

/// The longest an entry of this policy can live: how long a tag barrier must be kept.
fn longest_life_ms(policy: &Policy) -> u64 {
    let fresh = millis(policy.ttl.mul_f64(1.0 + policy.jitter)).max(millis(policy.negative_ttl));
    fresh + millis(policy.retain_after_fresh()) + 1_000
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// `ttl` spread uniformly over ± `jitter`.
fn jittered(ttl: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return ttl;
    }
    let factor = 1.0 + jitter * (2.0 * rand::random::<f64>() - 1.0);
    ttl.mul_f64(factor)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Type-erased namespace operations for the [`crate::Cache`] registry (invalidation by name, stats); implemented
/// in `remote`, with what the bus node applies.
pub(crate) trait ErasedNamespace: Send + Sync {
    fn invalidate<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()>;
    fn invalidate_all(&self) -> BoxFuture<'_, ()>;
    fn stats(&self) -> NamespaceStats;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_band_and_spreads() {
        let ttl = Duration::from_secs(100);
        let samples: Vec<Duration> = (0..2000).map(|_| jittered(ttl, 0.1)).collect();
        assert!(samples
            .iter()
            .all(|d| *d >= Duration::from_secs(90) && *d <= Duration::from_secs(110)));
        let (min, max) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
        assert!(
            *max - *min > Duration::from_secs(15),
            "jitter does not spread: {min:?}..{max:?}"
        );
        assert_eq!(jittered(ttl, 0.0), ttl);
    }
}
