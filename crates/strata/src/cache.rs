//! The [`Cache`] facade: a registry of namespaces sharing one clock.

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use std::sync::OnceLock;

use futures::StreamExt;
use parking_lot::RwLock;
use strata_core::{
    Clock, Error, Invalidation, Policy, SharedTier, Sink, Source, SystemClock, WriteMode,
};
use tokio::sync::{mpsc, watch};

use crate::behind::{BehindNs, WriteBehind};
use crate::bus::{
    Backlog, Bus, BusCounters, BusEvent, BusListener, BusTarget, Liveness, Publisher, Seen,
    SeqTracker, Waiting, BACKLOG_CAP, RETRY_EVERY,
};
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
#[derive(Clone)]
pub struct Cache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    clock: Arc<dyn Clock>,
    namespaces: RwLock<HashMap<String, Registered>>,
    node_id: String,
    publisher: Arc<OnceLock<Arc<Publisher>>>,
    bus_counters: OnceLock<Arc<BusCounters>>,
    /// How long a source write waits for its invalidation to reach L2 and the bus before it reports
    /// [`Error::NotPropagated`].
    propagation_timeout: std::time::Duration,
    /// Change feeds by name (see [`NamespaceBuilder::with_change_feed`]), and the bound they are trusted under.
    feeds: parking_lot::Mutex<HashMap<String, Arc<Liveness>>>,
    feed_bound: std::time::Duration,
    shared: Option<Arc<SharedLink>>,
}

struct Registered {
    typed: Arc<dyn Any + Send + Sync>,
    erased: Arc<dyn ErasedNamespace>,
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
            breaker: BreakerOptions::default(),
            propagation_timeout: DEFAULT_PROPAGATION_TIMEOUT,
            feed_bound: DEFAULT_FEED_BOUND,
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

    /// Makes this cache a node on `bus`: from now on its invalidations (`invalidate`, `invalidate_all`, `insert`)
    /// are published in order, and other nodes' invalidations are applied to its L1. See [`crate::bus`] for the
    /// delivery semantics. Must be called inside a Tokio runtime; fails if a bus is already attached.
    pub fn attach_bus(&self, bus: Arc<dyn Bus>) -> Result<BusListener, Error> {
        let (tx, mut queue) = mpsc::unbounded_channel();
        let liveness = bus.liveness_bound().map(|b| Arc::new(Liveness::new(b)));
        let publisher = Arc::new(Publisher::new(
            self.inner.node_id.clone(),
            tx,
            liveness.clone(),
        ));
        self.inner
            .publisher
            .set(publisher.clone())
            .map_err(|_| Error::InvalidState("a bus is already attached to this cache"))?;
        let counters = Arc::new(BusCounters::default());
        let _ = self.inner.bus_counters.set(counters.clone());
        let (stop, stop_rx) = watch::channel(false);
        // Subscribe before returning, so nothing published after `attach_bus` is missed.
        let mut events = bus.subscribe();
        let publishing = {
            let (bus, counters, mut stop) = (bus.clone(), counters.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let mut out = Outbound {
                    backlog: Backlog::new(BACKLOG_CAP),
                    last_seq: 0,
                    publisher,
                };
                // After a refusal, only the retry timer tries again: new messages just join the backlog.
                let mut failing = false;
                loop {
                    tokio::select! {
                        biased;
                        _ = stopped(&mut stop) => {
                            while let Ok(m) = queue.try_recv() {
                                out.enqueue(&counters, m);
                            }
                            out.drain(bus.as_ref(), &counters).await;
                            break;
                        }
                        m = queue.recv() => match m {
                            Some(m) => {
                                out.enqueue(&counters, m);
                                while let Ok(m) = queue.try_recv() {
                                    out.enqueue(&counters, m);
                                }
                                if !failing {
                                    failing = !out.drain(bus.as_ref(), &counters).await;
                                }
                            }
                            None => break,
                        },
                        _ = tokio::time::sleep(RETRY_EVERY), if !out.backlog.is_empty() => {
                            failing = !out.drain(bus.as_ref(), &counters).await;
                        }
                    }
                }
            })
        };
        let listening = {
            let (cache, counters, mut stop) = (self.clone(), counters.clone(), stop_rx);
            tokio::spawn(async move {
                let mut tracker = SeqTracker::new(1024);
                loop {
                    tokio::select! {
                        ev = events.next() => match ev {
                            Some(ev) => cache.apply_bus_event(ev, &mut tracker, &counters),
                            None => break,
                        },
                        _ = stopped(&mut stop) => break,
                    }
                }
            })
        };
        Ok(BusListener {
            stop,
            tasks: vec![publishing, listening],
            counters,
            liveness,
            clock: self.inner.clock.clone(),
        })
    }

    fn apply_bus_event(&self, ev: BusEvent, tracker: &mut SeqTracker, counters: &BusCounters) {
        use std::sync::atomic::Ordering::Relaxed;
        match ev {
            BusEvent::Message(m) => {
                let lag_ms = self.inner.clock.now().saturating_sub(m.ts);
                metrics::histogram!("strata_bus_lag_seconds").record(lag_ms as f64 / 1000.0);
                counters.last_lag_ms.store(lag_ms, Relaxed);
                if m.origin == self.inner.node_id {
                    counters.echoes.fetch_add(1, Relaxed);
                    return;
                }
                match tracker.observe(&m.origin, m.seq) {
                    Seen::Duplicate => {
                        counters.duplicates.fetch_add(1, Relaxed);
                        return;
                    }
                    Seen::Gap { .. } => {
                        counters.gaps.fetch_add(1, Relaxed);
                        self.flush_all_local();
                    }
                    Seen::First | Seen::InOrder => {}
                }
                if let Invalidation::FeedMark { feed, age_ms } = &m.what {
                    // In sequence after the feed's invalidations (one origin): those are applied already.
                    if let Some(f) = self.inner.feeds.lock().get(feed) {
                        f.confirm(self.inner.clock.now().saturating_sub(age_ms + 1));
                    }
                    return;
                }
                match self.erased(&m.namespace) {
                    Ok(ns) => {
                        if ns.apply_remote(&m.what, m.version) {
                            counters.tag_barriers.fetch_add(1, Relaxed);
                        }
                        counters.applied.fetch_add(1, Relaxed);
                    }
                    Err(_) => {
                        counters.unknown_namespace.fetch_add(1, Relaxed);
                    }
                }
            }
            BusEvent::Gap { .. } => {
                counters.gaps.fetch_add(1, Relaxed);
                self.flush_all_local();
            }
            BusEvent::Malformed(_) => {
                counters.malformed.fetch_add(1, Relaxed);
            }
            BusEvent::Live { behind } => {
                // Everything before this event has been applied above; trust L1 up to that instant.
                if let Some(l) = self.inner.publisher.get().and_then(|p| p.liveness.as_ref()) {
                    let behind_ms = behind.as_millis().min(u64::MAX as u128) as u64 + 1;
                    l.confirm(self.inner.clock.now().saturating_sub(behind_ms));
                }
            }
        }
    }

    fn flush_all_local(&self) {
        let all: Vec<Arc<dyn ErasedNamespace>> = self
            .inner
            .namespaces
            .read()
            .values()
            .map(|r| r.erased.clone())
            .collect();
        for ns in all {
            ns.flush_local();
        }
    }

    /// Starts registering a namespace holding values of type `V`.
    pub fn namespace<V: Send + Sync + 'static>(&self, name: &str) -> NamespaceBuilder<V> {
        NamespaceBuilder {
            cache: self.clone(),
            name: name.to_owned(),
            policy: Policy::default(),
            weigher: Arc::new(|_| std::mem::size_of::<V>()),
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
        let map = self.inner.namespaces.read();
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
        let mut names: Vec<String> = self.inner.namespaces.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// Invalidates one key of a namespace by name.
    pub async fn invalidate(&self, namespace: &str, key: &str) -> Result<(), Error> {
        self.erased(namespace)?.invalidate(key).await;
        Ok(())
    }

    /// Invalidates every key of a namespace by name (a generation bump).
    pub async fn invalidate_namespace(&self, namespace: &str) -> Result<(), Error> {
        self.erased(namespace)?.invalidate_all().await;
        Ok(())
    }

    /// Every change feed a namespace depends on: its name, how old its last mark is (ms; `None` before the
    /// first), its bound, and the reads it made skip L1 and L2.
    pub fn feeds(&self) -> Vec<FeedStats> {
        let now = self.inner.clock.now();
        let mut all: Vec<FeedStats> = self
            .inner
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
            .namespaces
            .read()
            .values()
            .map(|r| r.erased.stats())
            .collect();
        all.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        all
    }

    /// Pushes every namespace's counters, and the bus's when one is attached, to the `metrics` facade (call before
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
        if let Some(c) = self.inner.bus_counters.get() {
            let liveness = self.inner.publisher.get().and_then(|p| p.liveness.clone());
            let s = c.snapshot(liveness.as_deref(), self.inner.clock.now());
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
            .namespaces
            .read()
            .get(namespace)
            .map(|r| r.erased.clone())
            .ok_or_else(|| Error::UnknownNamespace(namespace.to_owned()))
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

/// Resolves once `stop` is set. The `watch` guard is dropped here, not held by the caller across awaits.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The publishing task's state: the backlog, the last sequence number queued, and the publisher whose
/// `published` mark it advances.
struct Outbound {
    backlog: Backlog,
    last_seq: u64,
    publisher: Arc<Publisher>,
}

impl Outbound {
    fn enqueue(&mut self, counters: &BusCounters, m: strata_core::BusMessage) {
        use std::sync::atomic::Ordering::Relaxed;
        self.last_seq = self.last_seq.max(m.seq);
        let superseded = self.backlog.push(BusTarget::of(&m), Waiting::new(m));
        counters.superseded.fetch_add(superseded as u64, Relaxed);
        counters.backlog.store(self.backlog.len() as u64, Relaxed);
    }

    /// Publishes the backlog in order, stopping at the first refusal (the rest waits for the next retry), then
    /// advances the `published` mark to just below the lowest message still out. Returns whether everything was
    /// published.
    async fn drain(&mut self, bus: &dyn Bus, counters: &BusCounters) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let mut all = true;
        let mut cursor = None;
        while let Some((ticket, target, w)) = self.backlog.next_after(cursor) {
            cursor = Some(ticket);
            if bus.publish(w.msg).await.is_ok() {
                counters.published.fetch_add(1, Relaxed);
                self.backlog.settle(&target, ticket);
            } else {
                counters.publish_errors.fetch_add(1, Relaxed);
                all = false;
                break;
            }
        }
        counters.backlog.store(self.backlog.len() as u64, Relaxed);
        let out_to = match self.backlog.payloads().map(|w| w.covers).min() {
            Some(lowest) => lowest - 1,
            None => self.last_seq,
        };
        self.publisher.published.send_if_modified(|p| {
            let advance = out_to > *p;
            if advance {
                *p = out_to;
            }
            advance
        });
        all
    }
}

/// Builds a [`Cache`].
#[must_use]
pub struct CacheBuilder {
    clock: Option<Arc<dyn Clock>>,
    shared: Option<Arc<dyn SharedTier>>,
    breaker: BreakerOptions,
    propagation_timeout: std::time::Duration,
    feed_bound: std::time::Duration,
}

/// How recent a change feed's last mark must be for its namespaces to trust their caches, by default.
pub const DEFAULT_FEED_BOUND: std::time::Duration = std::time::Duration::from_millis(750);

/// How long a source write waits, by default, for its invalidation to reach L2 and the bus.
pub const DEFAULT_PROPAGATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

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

    /// The circuit breaker around the shared tier. Default: [`BreakerOptions::default`].
    pub fn with_breaker(mut self, breaker: BreakerOptions) -> Self {
        self.breaker = breaker;
        self
    }

    /// How long [`Namespace::write`] and [`Namespace::delete`] wait, after the source committed, for the
    /// write's invalidation to be in L2 and accepted by the bus. Past it the call fails with
    /// [`Error::NotPropagated`]: the write is not acknowledged, because other nodes could still serve the value it
    /// replaced (the invalidation stays queued and is replayed once the shared tier is back). Default: 2 s.
    pub fn with_propagation_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.propagation_timeout = timeout;
        self
    }

    /// How recent a change feed's last mark must be for the namespaces it feeds to trust L1 and L2 (see
    /// [`NamespaceBuilder::with_change_feed`]). Default: 750 ms.
    pub fn with_change_feed_bound(mut self, bound: std::time::Duration) -> Self {
        self.feed_bound = bound;
        self
    }

    /// Builds the cache.
    pub fn build(self) -> Cache {
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock::new()));
        let publisher = Arc::new(OnceLock::new());
        let shared = self.shared.map(|tier| {
            Arc::new(SharedLink::new(
                tier,
                clock.clone(),
                self.breaker,
                publisher.clone(),
            ))
        });
        Cache {
            inner: Arc::new(CacheInner {
                clock,
                namespaces: RwLock::new(HashMap::new()),
                node_id: format!("node-{:016x}", rand::random::<u64>()),
                publisher,
                bus_counters: OnceLock::new(),
                propagation_timeout: self.propagation_timeout,
                feeds: parking_lot::Mutex::new(HashMap::new()),
                feed_bound: self.feed_bound,
                shared,
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
    codec: Option<Arc<dyn Codec<V>>>,
    source: Option<Arc<dyn Source<V>>>,
    sink: Option<Arc<dyn Sink<V>>>,
    write_behind: Option<WriteBehind>,
    feed: Option<String>,
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
    /// encodes values in the journal). Build inside a Tokio runtime: the namespace's flusher starts here, and
    /// writes recovered from the journal for this namespace are replayed.
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
        if self.cache.inner.namespaces.read().contains_key(&self.name) {
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
        let mut map = self.cache.inner.namespaces.write();
        if map.contains_key(&self.name) {
            return Err(Error::NamespaceExists(self.name));
        }
        let ns = Namespace::new(Parts {
            name: self.name.clone(),
            policy: self.policy,
            clock: self.cache.inner.clock.clone(),
            weigher: self.weigher,
            publisher: self.cache.inner.publisher.clone(),
            propagation_timeout: self.cache.inner.propagation_timeout,
            feed: self.feed.map(|f| {
                self.cache
                    .inner
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
        map.insert(
            self.name,
            Registered {
                typed: Arc::new(ns.clone()),
                erased: Arc::new(ns.clone()),
            },
        );
        Ok(ns)
    }
}
