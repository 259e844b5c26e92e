//! A namespace: keys of one value type under one [`Policy`], and the read and write paths over them.
//!
//! This file is the public API; each stage of the paths has a file of its own, and all of them work on the one
//! shared state, `state::Inner`:
//!
//! | file | stage |
//! |---|---|
//! | `state` | the shared state, and whether the caches may be trusted now |
//! | `triage` | read 1: what L1 holds, and whether to answer, refresh or load |
//! | `read` | read 2: lead the key's load or follow the flight under way; the answer |
//! | `load` | read 3: the detached load task; every flight is settled there |
//! | `l2` | read 3a: the L2 step (an answer, a stale answer, or a fill plan) |
//! | `lease` | the distributed lease, ended by a guard |
//! | `claim` | cross-node claims on background work (a revalidation) |
//! | `fill` | entries built and stored in L1 and in L2 under the fence |
//! | `write` | inserts, source writes by mode, invalidations: every tier, then the bus |
//! | `remote` | other nodes' messages applied here |
//!
//! # The read path (`get_or_load`)
//! 1. Triage. A fresh L1 entry is returned at once; if it is due for early refresh (ratio or XFetch) one
//!    background refresh starts. Inside the stale-while-revalidate window the stale value is returned at once and
//!    one background refresh starts. Inside the fail-safe window, a key whose last load failed less than
//!    `fail_safe_retry_every` ago is answered stale without touching the source.
//! 2. Lead or follow ([`crate::flight`]): the first caller starts the load in a detached task; everyone else waits
//!    for the same outcome. A caller holding a fail-safe value stops waiting at the soft timeout.
//! 3. The load task: with a shared tier, the L2 step first (lookup; with distributed coalescing, the key's
//!    lease); then the loader under the hard timeout; then the fill — L2 under the fence, the lease ended, L1 —
//!    and the flight settled.
//! 4. On error or timeout, a value inside the fail-safe window is served (and further loads throttled); else the
//!    error reaches the caller.
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
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use strata_core::{Clock, Error, Fetched, Policy, SharedError, UnixMillis};

use crate::l1::L1;
use crate::lookup::{Lookup, Status};
use crate::stats::NamespaceStats;

mod claim;
mod fill;
mod l2;
mod lease;
mod load;
mod read;
mod remote;
mod state;
mod triage;
mod write;

pub use claim::{Claim, ClaimToken};
pub(crate) use l2::NsL2;
pub use l2::BARRIER_STALENESS;
pub(crate) use remote::ErasedNamespace;
pub(crate) use state::{Inner, Parts};

/// Estimates a value's size in bytes for the L1 budget.
pub type Weigher<V> = Arc<dyn Fn(&V) -> usize + Send + Sync>;

/// Tags every entry of a namespace gets from its key and value (beside the source's own), whatever wrote it: a
/// load, an insert, a write-through. See `NamespaceBuilder::with_tagger`.
pub type Tagger<V> = Arc<dyn Fn(&str, &V) -> Vec<String> + Send + Sync>;

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

impl<V: Send + Sync + 'static> Namespace<V> {
    pub(crate) fn new(parts: Parts<V>) -> Self {
        Self {
            inner: Inner::new(parts),
        }
    }

    /// The source protection's counters and breaker state, when [`NamespaceBuilder::with_protection`](
    /// crate::NamespaceBuilder::with_protection) set one.
    pub fn protection(
        &self,
    ) -> Option<(
        &Arc<crate::protect::ProtectionStats>,
        crate::breaker::BreakerState,
    )> {
        self.inner
            .guard
            .as_ref()
            .map(|g| (&g.stats, g.breaker_state()))
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
        self.inner.get_fresh(key)
    }

    /// Whether L1 holds an unexpired value or absence for `key` — whether or not the node may trust it now (see
    /// [`crate::bus`]): what measurements of eviction look at, where [`get`](Self::get) would also say `None`
    /// for an untrusted copy.
    pub fn l1_holds(&self, key: &str) -> bool {
        self.inner.l1_holds(key)
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
        self.inner.insert(key.into(), fetched).await.0
    }

    /// Stores a value read from its source at `since` (this cache's clock, [`Namespace::clock`]) — a
    /// revalidation, a refresh made outside [`get_or_load`](Self::get_or_load) — fenced like a load's fill: it
    /// does not land when the key was written or invalidated, one of its tags invalidated or the namespace
    /// cleared after `since`, in this process or (with L2) in the shared tier. Returns whether a tier stored it.
    pub async fn insert_fetched_since(
        &self,
        key: impl Into<String>,
        fetched: Fetched<V>,
        since: UnixMillis,
    ) -> bool {
        self.inner.insert_since(key.into(), fetched, since).await
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
        self.inner.invalidate_tag(tag).await;
    }

    /// Soft-purges every entry tagged `tag`: nothing is dropped, but from now on [`soft_purged_at`](
    /// Self::soft_purged_at) dates the entries created before this call — on every node, like
    /// [`invalidate_tag`](Self::invalidate_tag) (the soft barrier is kept in L2 and published on the bus), and loads
    /// under way do not fill. What a soft-purged entry means is the reader's: the edge proxy serves it as stale
    /// (only inside its `stale-while-revalidate`/`stale-if-error` windows) while it revalidates.
    ///
    /// Every node dates the soft purge by this node's clock when it was made (the bus message carries it; a node
    /// that reads it from L2 instead dates it by the tier's time, see `TagBarriers::raise_soft_unheard`), so an
    /// entry read from the source after the purge — on any node — is not soft-purged anywhere. Clocks that
    /// disagree by δ move that line by δ.
    pub async fn soften_tag(&self, tag: &str) {
        self.inner.invalidate_tag(&strata_core::soft_tag(tag)).await;
    }

    /// When the entry a lookup returned was soft-purged ([`soften_tag`](Self::soften_tag)) — the latest soft
    /// purge of one of its tags after it was created — or `None`.
    pub fn soft_purged_at(&self, lookup: &Lookup<V>) -> Option<UnixMillis> {
        let e = lookup.entry();
        self.inner.barriers.softened(e.tags(), e.created_at())
    }

    /// Invalidates every key of the namespace, including loads under way: a generation bump. With L2, the
    /// generation barrier is kept there, so every node (also one that joins later) reads older entries as absent.
    pub async fn bump_generation(&self) {
        self.inner.bump_generation().await;
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
        self.inner
            .read(key, || Box::pin(loader().map(|v| Ok(v.into()))))
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
        self.inner
            .read(key, || {
                Box::pin(
                    loader().map(|r| r.map(Into::into).map_err(|e| Arc::new(e) as SharedError)),
                )
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
        self.inner
            .read_many(keys, |keys| {
                Box::pin(loader(keys).map(|r| {
                    r.map(|m| m.into_iter().map(|(k, v)| (k, Fetched::value(v))).collect())
                        .map_err(|e| Arc::new(e) as SharedError)
                }))
            })
            .await
    }

    /// Reads `key` through the namespace's [`Source`](strata_core::Source)
    /// ([`NamespaceBuilder::with_source`](crate::NamespaceBuilder::with_source)): [`get_or_load`](Self::get_or_load)
    /// with the source as the loader. A write-behind namespace answers its pending write first.
    pub async fn fetch(&self, key: &str) -> Result<Lookup<V>, Error> {
        self.inner.fetch(key).await
    }

    /// Reads `keys` through the namespace's [`Source`](strata_core::Source), loading all misses with one
    /// `load_many` (one query).
    pub async fn fetch_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Lookup<V>>, Error> {
        self.inner.fetch_many(keys).await
    }

    /// Writes `value` to the source through the namespace's [`Sink`](strata_core::Sink), then updates the caches
    /// as the policy's [`WriteMode`](strata_core::WriteMode) says, and returns the version the source now holds:
    /// - `Aside`: commit, then invalidate (tombstone with the new version in L1 and L2, lease voided, bus);
    /// - `Through`: commit, then set L1 and L2 with the source's version (older versions cannot overwrite it),
    ///   and tell the other nodes;
    /// - `Around`: commit only; caches learn by TTL or by the bus (CDC);
    /// - `Behind`: journal durably, update the caches, acknowledge; the flusher commits later.
    ///
    /// When the commit fails the caches are untouched and the error names the key.
    pub async fn write(&self, key: &str, value: V) -> Result<u64, Error> {
        self.inner.write(key, value).await
    }

    /// Deletes `key` in the source through the namespace's [`Sink`](strata_core::Sink), then invalidates it in
    /// every tier (except in `Around` mode). In `Behind` mode the delete is journaled and flushed like a write.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        self.inner.delete(key).await
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
}
