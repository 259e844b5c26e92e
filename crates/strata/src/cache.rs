//! The [`Cache`] facade: a registry of namespaces sharing one clock, and owner of what runs in the background for
//! them (the bus node, the L2 replay task, the write-behind flushers: see [`Cache::close`]).

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use strata_core::{Clock, Error, Policy, SharedTier, Sink, Source, SystemClock, WriteMode};

use crate::behind::{BehindNs, Flusher, WriteBehind};
use crate::bus::{Bus, BusStats, Liveness, Namespaces, Node, RemoteOps};
use crate::codec::Codec;
use crate::namespace::{ErasedNamespace, Namespace, NsL2, Parts, Weigher};
use crate::shared::{BreakerOptions, SharedLink, SharedStats};
use crate::stats::{publish, NamespaceStats};

/// A Strata cache: namespaces, each with its own policy, value type and L1 budget.
///
/// ```
/// # async fn demo() -> Result<(), strata::Error> {
/// use std::time::Duration;
/// use strata::{Cache, Policy, Status};
///
/// let cache = Cache::new();
/// let prices = cache
///     .namespace::<u64>("price")
///     .with_policy(Policy::builder().with_ttl(Duration::from_secs(30)).build()?)
///     .build()?;
/// let first = prices.get_or_load("sku-1", || async { Some(129) }).await?;
/// assert_eq!(first.status(), Status::Miss);
/// let again = prices.get_or_load("sku-1", || async { Some(0) }).await?;
/// assert_eq!((again.value(), again.status()), (Some(&129), Status::Hit(strata::Tier::L1)));
/// # Ok(()) }
/// ```
///
/// # Lifetime
/// A cache owns what it starts: its bus node (with [`CacheBuilder::with_bus`]), the L2 replay task and the
/// write-behind flushers of its namespaces. [`close`](Self::close) stops them in order; dropping the last clone
/// stops the bus node, and no background task keeps the cache alive. A [`Namespace`] handle outliving its cache
/// still reads and writes locally (and through L2), but hears and tells nothing on the bus.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<CacheInner>,
}

/// What every `Cache` clone shares. Nothing here is behind one big lock, no lock is held across an `.await`, and no
/// background task holds a strong reference to it (see its `Drop`).
struct CacheInner {
    /// Immutable after build, like `node_id`, `propagation_timeout`, `feed_bound` and `close_timeout`.
    clock: Arc<dyn Clock>,
    /// The namespaces and change feeds, in an `Arc` of their own so the bus node's listener can hold them weakly.
    registry: Arc<Registry>,
    node_id: String,
    /// The bus node, when the cache was built with a bus: its two loops stop at `close` or when this is dropped.
    node: Option<Node>,
    /// How long a source write waits for its invalidation to reach L2 and the bus before it reports
    /// [`Error::NotPropagated`].
    propagation_timeout: Duration,
    /// The bound change feeds are trusted under (see [`NamespaceBuilder::with_change_feed`]).
    feed_bound: Duration,
    /// The L2 link, shared with the namespaces that use L2 (its replay task holds it weakly).
    shared: Option<Arc<SharedLink>>,
    /// The write-behind flushers of this cache's namespaces, for `close` to drain and stop. Each is also held by
    /// its namespace and runs while either holds it. A mutex: pushed by `NamespaceBuilder::build`, read by `close`.
    flushers: Mutex<Vec<(String, Arc<Flusher>)>>,
    /// How long `close` lets the write-behind flushers drain.
    close_timeout: Duration,
    /// Set once `close` has run. A Tokio `OnceCell`: the first `close` does the work across awaits, concurrent
    /// ones wait for it, later ones return at once.
    closed: tokio::sync::OnceCell<()>,
}

impl Drop for CacheInner {
    /// The last `Cache` clone is gone: the bus node's loops are told to stop (the publishing loop still sends what is
    /// queued, once; the listener holds the registry only weakly and could not dispatch anyway). The other tasks end
    /// with what they serve, which may outlive the cache: the L2 replay task with the L2 link (it holds it weakly;
    /// namespaces still using L2 keep it), a write-behind flusher with its namespace.
    fn drop(&mut self) {
        if let Some(node) = &self.node {
            node.stop();
        }
    }
}

/// The registry: namespaces by name and change feeds by name.
#[derive(Default)]
struct Registry {
    /// A `parking_lot` read-write lock: read on every lookup by name and every bus message, written only when a
    /// namespace registers.
    namespaces: RwLock<HashMap<String, Registered>>,
    /// Change feeds by name (see [`NamespaceBuilder::with_change_feed`]): created by the first namespace that
    /// names one, confirmed by the bus node's listener. A mutex: both are rare (a registration, a mark every
    /// 100 ms).
    feeds: Mutex<HashMap<String, Arc<Liveness>>>,
}

/// One registered namespace, three ways: typed (for [`Cache::get_namespace`]), erased for the registry's own
/// operations, and as the bus node sees it.
struct Registered {
    typed: Arc<dyn Any + Send + Sync>,
    erased: Arc<dyn ErasedNamespace>,
    remote: Arc<dyn RemoteOps>,
}

impl Namespaces for Registry {
    fn namespace(&self, name: &str) -> Option<Arc<dyn RemoteOps>> {
        self.namespaces.read().get(name).map(|r| r.remote.clone())
    }

    fn all(&self) -> Vec<Arc<dyn RemoteOps>> {
        self.namespaces
            .read()
            .values()
            .map(|r| r.remote.clone())
            .collect()
    }

    fn feed(&self, name: &str) -> Option<Arc<Liveness>> {
        self.feeds.lock().get(name).cloned()
    }
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    /// A cache on the system clock.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a cache.
    pub fn builder() -> CacheBuilder {
        CacheBuilder {
            clock: None,
            shared: None,
            bus: None,
            breaker: BreakerOptions::default(),
            propagation_timeout: DEFAULT_PROPAGATION_TIMEOUT,
            feed_bound: DEFAULT_FEED_BOUND,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
        }
    }

    /// The cache's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// This node's id on the bus: random, new for every cache (so a restarted process is a new origin).
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The bus node's counters (published, backlog, applied, echoes, gaps …, and its contact with the bus), when
    /// the cache was built [`with_bus`](CacheBuilder::with_bus). Still readable after [`close`](Self::close).
    pub fn bus_stats(&self) -> Option<BusStats> {
        self.inner.node.as_ref().map(Node::stats)
    }

    /// Stops what the cache started, in this order, and returns once it has stopped:
    /// 1. the write-behind flushers of its namespaces flush what is queued — for at most the close timeout
    ///    ([`CacheBuilder::with_close_timeout`], 30 s by default; the rest stays journaled for the next start or
    ///    registration, logged at warn level) — and stop. Writes made after this are journaled (durable,
    ///    acknowledged) and flushed by the next registration of the namespace or the next start;
    /// 2. the L2 replay task stops (invalidations still queued go on blocking L2 for their keys here);
    /// 3. the bus node publishes everything queued (once: what the transport refuses now is not retried), then
    ///    stops publishing and listening. After it, this node's writes reach no other node, and it applies no
    ///    other node's messages.
    ///
    /// The namespaces still answer afterwards from L1, L2 and their sources. Idempotent: a second call (also a
    /// concurrent one) returns once the first has finished.
    pub async fn close(&self) {
        self.inner
            .closed
            .get_or_init(|| self.inner.shut_down())
            .await;
    }

    /// Starts registering a namespace holding values of type `V`.
    pub fn namespace<V: Send + Sync + 'static>(&self, name: &str) -> NamespaceBuilder<V> {
        NamespaceBuilder {
            cache: self.clone(),
            name: name.to_owned(),
            policy: Policy::default(),
            weigher: Arc::new(|_| std::mem::size_of::<V>()),
            tagger: None,
            protection: None,
            codec: None,
            source: None,
            sink: None,
            write_behind: None,
            feed: None,
            _v: PhantomData,
        }
    }

    /// The handle of a registered namespace.
    pub fn get_namespace<V: Send + Sync + 'static>(
        &self,
        name: &str,
    ) -> Result<Namespace<V>, Error> {
        let map = self.inner.registry.namespaces.read();
        let reg = map
            .get(name)
            .ok_or_else(|| Error::UnknownNamespace(name.to_owned()))?;
        reg.typed
            .clone()
            .downcast::<Namespace<V>>()
            .map(|ns| (*ns).clone())
            .map_err(|_| Error::NamespaceTypeMismatch(name.to_owned()))
    }

    /// The names of the registered namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .registry
            .namespaces
            .read()
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Invalidates one key of a namespace by name.
    pub async fn invalidate(&self, namespace: &str, key: &str) -> Result<(), Error> {
        self.erased(namespace)?.invalidate(key).await;
        Ok(())
    }

    /// Invalidates every entry of a namespace tagged `tag`, by name.
    pub async fn invalidate_tag(&self, namespace: &str, tag: &str) -> Result<(), Error> {
        self.erased(namespace)?.invalidate_tag(tag).await;
        Ok(())
    }

    /// Invalidates every key of a namespace by name (a generation bump).
    pub async fn invalidate_namespace(&self, namespace: &str) -> Result<(), Error> {
        self.erased(namespace)?.invalidate_all().await;
        Ok(())
    }

    /// Invalidates `tag` in every namespace (data and edge alike; see [`Namespace::invalidate_tag`]): one tag
    /// covers a cached row, the listing built from it and every proxied page that carries it. Returns the
    /// namespaces, sorted. The namespaces are invalidated one after another, each on every node.
    pub async fn invalidate_tag_everywhere(&self, tag: &str) -> Vec<String> {
        let all: Vec<(String, Arc<dyn ErasedNamespace>)> = {
            let map = self.inner.registry.namespaces.read();
            map.iter()
                .map(|(n, r)| (n.clone(), r.erased.clone()))
                .collect()
        };
        let mut names = Vec::with_capacity(all.len());
        for (name, ns) in all {
            ns.invalidate_tag(tag).await;
            names.push(name);
        }
        names.sort();
        names
    }

    /// Every change feed a namespace depends on: its name, how old its last mark is (ms; `None` before the
    /// first), its bound, and the reads it made skip L1 and L2.
    pub fn feeds(&self) -> Vec<FeedStats> {
        let now = self.inner.clock.now();
        let mut all: Vec<FeedStats> = self
            .inner
            .registry
            .feeds
            .lock()
            .iter()
            .map(|(name, l)| FeedStats {
                feed: name.clone(),
                mark_age_ms: (l.confirmed() > 0).then(|| now.saturating_sub(l.confirmed())),
                bound_ms: l.bound_ms(),
                untrusted_reads: l.untrusted_reads.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect();
        all.sort_by(|a, b| a.feed.cmp(&b.feed));
        all
    }

    /// The shared tier link's counters, when the cache has a shared tier.
    pub fn shared_stats(&self) -> Option<SharedStats> {
        self.inner.shared.as_ref().map(|l| l.stats())
    }

    /// The shared tier's circuit breaker state, when the cache has a shared tier.
    pub fn breaker_state(&self) -> Option<crate::breaker::BreakerState> {
        self.inner.shared.as_ref().map(|l| l.breaker_state())
    }

    /// Counters of every namespace, sorted by name.
    pub fn stats(&self) -> Vec<NamespaceStats> {
        let mut all: Vec<NamespaceStats> = self
            .inner
            .registry
            .namespaces
            .read()
            .values()
            .map(|r| r.erased.stats())
            .collect();
        all.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        all
    }

    /// Pushes every namespace's counters, and the bus node's when it has one, to the `metrics` facade (call before
    /// a scrape renders).
    pub fn publish_metrics(&self) {
        self.stats().iter().for_each(publish);
        for f in self.feeds() {
            if let Some(age) = f.mark_age_ms {
                metrics::gauge!("strata_feed_mark_age_seconds", "feed" => f.feed.clone())
                    .set(age as f64 / 1000.0);
            }
            metrics::counter!("strata_feed_untrusted_reads_total", "feed" => f.feed)
                .absolute(f.untrusted_reads);
        }
        if let Some(link) = &self.inner.shared {
            let s = link.stats();
            for (event, v) in [
                ("error", s.errors),
                ("short_circuited", s.short_circuited),
                ("breaker_opened", s.breaker_opened),
                ("queued", s.queued),
                ("replayed", s.replayed),
                ("corrupt", s.corrupt),
            ] {
                metrics::counter!("strata_l2_events_total", "event" => event).absolute(v);
            }
            metrics::gauge!("strata_l2_replay_pending").set(s.pending as f64);
            let open = link.breaker_state() != crate::breaker::BreakerState::Closed;
            metrics::gauge!("strata_l2_breaker_open").set(if open { 1.0 } else { 0.0 });
        }
        if let Some(s) = self.bus_stats() {
            for (event, v) in [
                ("published", s.published),
                ("publish_error", s.publish_errors),
                ("superseded", s.superseded),
                ("applied", s.applied),
                ("echo", s.echoes),
                ("duplicate", s.duplicates),
                ("gap", s.gaps),
                ("malformed", s.malformed),
                ("unknown_namespace", s.unknown_namespace),
                ("tag_barrier", s.tag_barriers),
            ] {
                metrics::counter!("strata_bus_messages_total", "event" => event).absolute(v);
            }
            metrics::gauge!("strata_bus_backlog").set(s.backlog as f64);
            if let Some(age) = s.contact_age_ms {
                metrics::gauge!("strata_bus_contact_age_seconds").set(age as f64 / 1000.0);
                metrics::counter!("strata_bus_untrusted_reads_total").absolute(s.untrusted_reads);
            }
        }
    }

    fn erased(&self, namespace: &str) -> Result<Arc<dyn ErasedNamespace>, Error> {
        self.inner
            .registry
            .namespaces
            .read()
            .get(namespace)
            .map(|r| r.erased.clone())
            .ok_or_else(|| Error::UnknownNamespace(namespace.to_owned()))
    }
}

impl CacheInner {
    /// The work of [`Cache::close`], run once.
    async fn shut_down(&self) {
        let flushers: Vec<(String, Arc<Flusher>)> = self.flushers.lock().clone();
        let timeout = self.close_timeout;
        futures::future::join_all(flushers.iter().map(|(ns, f)| async move {
            let left = f.close(timeout).await;
            if left > 0 {
                tracing::warn!(
                    namespace = %ns,
                    keys = left,
                    ?timeout,
                    "write-behind did not drain before close; the rest stays journaled for the next start"
                );
            }
        }))
        .await;
        if let Some(link) = &self.shared {
            link.close().await;
        }
        if let Some(node) = &self.node {
            node.close().await;
        }
    }
}

/// A change feed as a node sees it (see [`Cache::feeds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedStats {
    /// The feed (a CDC slot).
    pub feed: String,
    /// Age of its last mark in ms; `None` before the first.
    pub mark_age_ms: Option<u64>,
    /// Its namespaces trust their caches while the mark is younger than this.
    pub bound_ms: u64,
    /// Reads that skipped L1 and L2 because the mark was too old.
    pub untrusted_reads: u64,
}

/// Builds a [`Cache`].
#[must_use]
pub struct CacheBuilder {
    clock: Option<Arc<dyn Clock>>,
    shared: Option<Arc<dyn SharedTier>>,
    bus: Option<Arc<dyn Bus>>,
    breaker: BreakerOptions,
    propagation_timeout: Duration,
    feed_bound: Duration,
    close_timeout: Duration,
}

/// How recent a change feed's last mark must be for its namespaces to trust their caches, by default.
pub const DEFAULT_FEED_BOUND: Duration = Duration::from_millis(750);

/// How long a source write waits, by default, for its invalidation to reach L2 and the bus.
pub const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`Cache::close`] lets write-behind flushers drain, by default.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

impl CacheBuilder {
    /// The time source. Default: [`SystemClock`]. Tests under `tokio::time::pause` use [`strata_core::TokioClock`].
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The shared tier (L2), e.g. `strata_redis::RedisL2`. Namespaces whose policy enables L2 (the default) use
    /// it; they need a value codec ([`NamespaceBuilder::with_codec`]).
    pub fn with_shared_tier(mut self, tier: Arc<dyn SharedTier>) -> Self {
        self.shared = Some(tier);
        self
    }

    /// Makes the cache a node on `bus` (see [`crate::bus`]): its writes (`invalidate`, `invalidate_all`,
    /// `insert`, source writes) are published in order, and other nodes' invalidations are applied to its L1. The
    /// node starts in [`build`](Self::build), which must then run inside a Tokio runtime, and stops at
    /// [`Cache::close`] or when the last `Cache` clone is dropped; [`Cache::bus_stats`] has its counters.
    pub fn with_bus(mut self, bus: Arc<dyn Bus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// The circuit breaker around the shared tier. Default: [`BreakerOptions::default`].
    pub fn with_breaker(mut self, breaker: BreakerOptions) -> Self {
        self.breaker = breaker;
        self
    }

    /// How long [`Namespace::write`] and [`Namespace::delete`] wait, after the source committed, for the
    /// write's invalidation to be in L2 and accepted by the bus. Past it the call fails with
    /// [`Error::NotPropagated`]: the write is not acknowledged, because other nodes could still serve the value it
    /// replaced (the invalidation stays queued and is replayed once the shared tier is back). Default: 2 s.
    pub fn with_propagation_timeout(mut self, timeout: Duration) -> Self {
        self.propagation_timeout = timeout;
        self
    }

    /// How recent a change feed's last mark must be for the namespaces it feeds to trust L1 and L2 (see
    /// [`NamespaceBuilder::with_change_feed`]). Default: 750 ms.
    pub fn with_change_feed_bound(mut self, bound: Duration) -> Self {
        self.feed_bound = bound;
        self
    }

    /// How long [`Cache::close`] lets the write-behind flushers drain before it stops them (what is left stays
    /// journaled). Default: 30 s.
    pub fn with_close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Builds the cache (and, with a bus, starts its node).
    ///
    /// # Panics
    /// With a bus ([`with_bus`](Self::with_bus)), when called outside a Tokio runtime: the node's tasks start
    /// here. Without one, it may be called anywhere.
    pub fn build(self) -> Cache {
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock::new()));
        let registry = Arc::new(Registry::default());
        let node_id = format!("node-{:016x}", rand::random::<u64>());
        let node = self.bus.map(|bus| {
            let namespaces: Weak<dyn Namespaces> = Arc::downgrade(&registry) as Weak<Registry>;
            Node::start(bus, node_id.clone(), clock.clone(), namespaces)
        });
        let publisher = node.as_ref().map(|n| n.publisher().clone());
        let shared = self.shared.map(|tier| {
            Arc::new(SharedLink::new(
                tier,
                clock.clone(),
                self.breaker,
                publisher,
            ))
        });
        Cache {
            inner: Arc::new(CacheInner {
                clock,
                registry,
                node_id,
                node,
                propagation_timeout: self.propagation_timeout,
                feed_bound: self.feed_bound,
                shared,
                flushers: Mutex::new(Vec::new()),
                close_timeout: self.close_timeout,
                closed: tokio::sync::OnceCell::new(),
            }),
        }
    }
}

/// Registers a namespace; see [`Cache::namespace`].
#[must_use]
pub struct NamespaceBuilder<V> {
    cache: Cache,
    name: String,
    policy: Policy,
    weigher: Weigher<V>,
    tagger: Option<crate::namespace::Tagger<V>>,
    codec: Option<Arc<dyn Codec<V>>>,
    source: Option<Arc<dyn Source<V>>>,
    sink: Option<Arc<dyn Sink<V>>>,
    write_behind: Option<WriteBehind>,
    feed: Option<String>,
    protection: Option<crate::protect::Protection>,
    _v: PhantomData<fn() -> V>,
}

impl<V: Send + Sync + 'static> NamespaceBuilder<V> {
    /// The policy. Default: [`Policy::default`].
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Estimates a value's heap and inline bytes for the L1 budget (the key and per-entry overhead are added).
    /// Default: `size_of::<V>()`, which undercounts values that own heap memory (`String`, `Vec`): set it for them.
    pub fn with_weigher(mut self, weigher: impl Fn(&V) -> usize + Send + Sync + 'static) -> Self {
        self.weigher = Arc::new(weigher);
        self
    }

    /// Protects the source with a bulkhead and a circuit breaker ([`crate::protect`]): a load refused by either
    /// answers stale (`Stale(Overloaded)`) when a value is inside the fail-safe window, else
    /// [`Error::Overloaded`].
    pub fn with_protection(mut self, protection: crate::protect::Protection) -> Self {
        self.protection = Some(protection);
        self
    }

    /// Tags every entry gets from its key and value, beside the ones its source gives: applied to loads,
    /// inserts and write-through writes alike, so an entry keeps them however it was written, and an
    /// [`invalidate_tag`](Namespace::invalidate_tag) (or [`Cache::invalidate_tag_everywhere`]) reaches it.
    pub fn with_tagger(
        mut self,
        tagger: impl Fn(&str, &V) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.tagger = Some(Arc::new(tagger));
        self
    }

    /// How values travel to the shared tier: [`crate::codec::Json`] for serde types, [`crate::codec::Raw`] for
    /// bytes and strings, or your own. Required when the cache has a shared tier and the policy enables L2.
    pub fn with_codec(mut self, codec: impl Codec<V>) -> Self {
        self.codec = Some(Arc::new(codec));
        self
    }

    /// The source of truth to read from ([`Namespace::fetch`]).
    pub fn with_source(mut self, source: Arc<dyn Source<V>>) -> Self {
        self.source = Some(source);
        self
    }

    /// The source of truth to write to ([`Namespace::write`], [`Namespace::delete`]).
    pub fn with_sink(mut self, sink: Arc<dyn Sink<V>>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// The write-behind queue for a namespace whose policy writes behind (it also needs a sink and a codec, which
    /// encodes values in the journal). Build inside a Tokio runtime: the namespace's flusher starts here (and
    /// stops at [`Cache::close`], or once the namespace and its cache are both dropped), and writes still pending
    /// for this namespace — recovered from the journal, or left by an earlier registration — are replayed.
    pub fn with_write_behind(mut self, wb: WriteBehind) -> Self {
        self.write_behind = Some(wb);
        self
    }

    /// The namespace's source is also changed behind the cache's back, and the change feed `feed` (a CDC
    /// consumer publishing on this cache's bus — its slot name) tells of those changes. The consumer marks the
    /// feed on the bus when it has applied every commit up to an instant (`Invalidation::FeedMark`); the
    /// namespace answers from L1 or L2 only while the last mark is younger than the cache's change-feed bound,
    /// and reads the source otherwise (coalesced), so a stalled or dead consumer can delay invalidations but never
    /// make a superseded value outlive the bound.
    pub fn with_change_feed(mut self, feed: impl Into<String>) -> Self {
        self.feed = Some(feed.into());
        self
    }

    /// A table (or anything else) that is both: `with_source` and `with_sink` with the same object.
    pub fn with_store<S: Source<V> + Sink<V>>(self, store: Arc<S>) -> Self {
        self.with_source(store.clone()).with_sink(store)
    }

    /// Validates the policy and registers the namespace. Fails if the name is taken, or if the namespace would use
    /// the shared tier without a codec.
    pub fn build(self) -> Result<Namespace<V>, Error> {
        self.policy.validate()?;
        let l2 = match (&self.cache.inner.shared, self.policy.l2.enabled) {
            (Some(link), true) => {
                let codec = self.codec.clone().ok_or_else(|| {
                    Error::InvalidPolicy(strata_core::PolicyError {
                        field: "l2.enabled",
                        problem: format!(
                            "namespace {:?} uses the shared tier but has no codec: call \
                             with_codec (e.g. strata::codec::Json) or disable l2",
                            self.name
                        ),
                    })
                })?;
                Some(NsL2::new(
                    link.clone(),
                    codec,
                    self.policy.l2.compress_above,
                ))
            }
            _ => None,
        };
        let registry = &self.cache.inner.registry;
        if registry.namespaces.read().contains_key(&self.name) {
            return Err(Error::NamespaceExists(self.name));
        }
        let behind = match (self.policy.write, self.write_behind) {
            (WriteMode::Behind, Some(wb)) => {
                let need = |what: &str| {
                    Error::Unsupported(format!(
                        "namespace {:?} writes behind and needs {what}",
                        self.name
                    ))
                };
                let sink = self
                    .sink
                    .clone()
                    .ok_or_else(|| need("a sink (with_sink)"))?;
                let codec = self
                    .codec
                    .clone()
                    .ok_or_else(|| need("a codec for the journal (with_codec)"))?;
                Some(BehindNs::register(wb, &self.name, sink, codec)?)
            }
            (WriteMode::Behind, None) => {
                return Err(Error::Unsupported(format!(
                    "namespace {:?} writes behind and needs a queue (with_write_behind)",
                    self.name
                )))
            }
            (_, Some(_)) => {
                return Err(Error::Unsupported(format!(
                    "namespace {:?} has a write-behind queue but its write mode is not Behind",
                    self.name
                )))
            }
            (_, None) => None,
        };
        let mut map = registry.namespaces.write();
        if map.contains_key(&self.name) {
            return Err(Error::NamespaceExists(self.name));
        }
        let flusher = behind.as_ref().map(|b| b.flusher.clone());
        let ns = Namespace::new(Parts {
            name: self.name.clone(),
            policy: self.policy,
            clock: self.cache.inner.clock.clone(),
            weigher: self.weigher,
            tagger: self.tagger,
            protection: self.protection,
            publisher: self
                .cache
                .inner
                .node
                .as_ref()
                .map(|n| n.publisher().clone()),
            propagation_timeout: self.cache.inner.propagation_timeout,
            feed: self.feed.map(|f| {
                registry
                    .feeds
                    .lock()
                    .entry(f)
                    .or_insert_with(|| Arc::new(Liveness::new(self.cache.inner.feed_bound)))
                    .clone()
            }),
            l2,
            source: self.source,
            sink: self.sink,
            behind,
        });
        if let Some(f) = flusher {
            self.cache
                .inner
                .flushers
                .lock()
                .push((self.name.clone(), f));
        }
        map.insert(
            self.name,
            Registered {
                typed: Arc::new(ns.clone()),
                erased: Arc::new(ns.clone()),
                remote: Arc::new(ns.clone()),
            },
        );
        Ok(ns)
    }
}
