//! The namespace's shared state ([`Inner`]), what it is built from, and the checks every stage asks of it: whether
//! the caches may be trusted now (the bus's and the change feed's liveness), the bus to publish on, the source.
//!
//! Every stage file (`triage`, `read`, `load`, `l2`, `fill`, `write`, `remote`) adds methods to `Inner`; none of
//! them keeps state of its own outside it, so this file is the one place that says what is shared and how.

use std::sync::Arc;
use std::time::Duration;

use strata_core::{Clock, Error, Invalidation, Policy, Sink, Source, UnixMillis};

use super::{NsL2, Weigher};
use crate::barriers::TagBarriers;
use crate::behind::BehindNs;
use crate::bus::{Liveness, Publisher};
use crate::flight::Flights;
use crate::hotkeys::HotKeyDetector;
use crate::l1::L1;
use crate::stats::{Counters, NamespaceStats};

/// The namespace's shared state. Nothing here is behind one big lock: each part is synchronised the way its access
/// pattern needs, and no lock is held across an `.await`.
pub(crate) struct Inner<V> {
    pub(super) name: String,
    /// Immutable after build: read on every operation without synchronisation.
    pub(super) policy: Policy,
    pub(super) clock: Arc<dyn Clock>,
    /// Its own concurrency (quick_cache's sharded store, or sharded mutex maps for LRU/LFU/FIFO): a hit is one
    /// shard read and never waits on a load.
    pub(super) l1: Option<L1<V>>,
    /// 64 sharded `parking_lot` mutexes: the key's shard lock orders a fill against writes to the same key (poison,
    /// tombstone, fill and flight removal happen in one critical section; see `crate::flight`), while keys of
    /// other shards never contend.
    pub(super) flights: Flights<V>,
    /// An atomic fast path (no barrier, or an entry without tags: one relaxed load) in front of a lock taken only
    /// when tags are invalidated.
    pub(super) barriers: TagBarriers,
    /// Striped atomic counters: every hit increments one, so they must not share a cache line across threads.
    pub(super) counters: Counters,
    pub(super) weigher: Weigher<V>,
    /// Tags from the key and value, added to every entry (see [`super::Tagger`]).
    pub(super) tagger: Option<super::Tagger<V>>,
    pub(super) load_seconds: metrics::Histogram,
    /// The cache's bus node's sending side, when the cache was built with a bus: this node's writes are published
    /// through it. Fixed at build (the cache takes its bus before any namespace exists), so reading it needs no
    /// synchronisation.
    pub(super) publisher: Option<Arc<Publisher>>,
    /// How long a source write waits for its invalidation to reach L2 and the bus.
    pub(super) propagation_timeout: Duration,
    /// The change feed (CDC) that tells this namespace of writes made behind the cache's back, when it has one:
    /// L1 and L2 are trusted only while the feed's last mark is younger than its bound.
    pub(super) feed: Option<Arc<Liveness>>,
    /// The shared tier, when the cache has one and the policy enables it.
    pub(super) l2: Option<NsL2<V>>,
    /// Hot-key detection, when the policy enables it.
    pub(super) hot: Option<HotKeyDetector>,
    /// The source of truth's read side, when bound.
    pub(super) source: Option<Arc<dyn Source<V>>>,
    /// The source of truth's write side, when bound.
    pub(super) sink: Option<Arc<dyn Sink<V>>>,
    /// Write-behind, when the namespace writes behind.
    pub(super) behind: Option<BehindNs<V>>,
    /// L1 exists only to pin hot keys (the policy turned L1 off).
    pub(super) pins_only: bool,
    /// The source's bulkhead and breaker, when configured (see [`crate::protect`]).
    pub(crate) guard: Option<crate::protect::SourceGuard>,
}

/// What a namespace is built from (see `NamespaceBuilder`).
pub(crate) struct Parts<V> {
    pub name: String,
    pub policy: Policy,
    pub clock: Arc<dyn Clock>,
    pub weigher: Weigher<V>,
    pub tagger: Option<super::Tagger<V>>,
    pub publisher: Option<Arc<Publisher>>,
    pub propagation_timeout: Duration,
    pub feed: Option<Arc<Liveness>>,
    pub l2: Option<NsL2<V>>,
    pub source: Option<Arc<dyn Source<V>>>,
    pub sink: Option<Arc<dyn Sink<V>>>,
    pub behind: Option<BehindNs<V>>,
    pub protection: Option<crate::protect::Protection>,
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// Builds the state. A write-behind namespace also gets the task that drops parked writes (see
    /// [`crate::behind`]) from every tier; it holds the namespace weakly and ends with it.
    pub(super) fn new(parts: Parts<V>) -> Arc<Self> {
        let Parts {
            name,
            policy,
            clock,
            weigher,
            tagger,
            publisher,
            propagation_timeout,
            feed,
            l2,
            source,
            sink,
            behind,
            protection,
        } = parts;
        let guard = protection.map(|p| crate::protect::SourceGuard::new(&name, p, clock.clone()));
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
        let inner = Arc::new(Self {
            name,
            policy,
            clock,
            l1,
            flights: Flights::new(),
            barriers,
            counters: Counters::default(),
            weigher,
            tagger,
            load_seconds,
            publisher,
            propagation_timeout,
            feed,
            l2,
            hot,
            pins_only,
            guard,
            source,
            sink,
            behind,
        });
        if let Some(mut parked) = parked {
            // A parked write-behind value will never be persisted: drop it from every tier.
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move {
                while let Some((key, done)) = parked.recv().await {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.invalidate(&key, None).await;
                    let _ = done.send(());
                }
            });
        }
        inner
    }

    /// The bus this node publishes on, when it has one.
    #[inline]
    pub(super) fn publisher(&self) -> Option<&Arc<Publisher>> {
        self.publisher.as_ref()
    }

    /// Queues a bus message (when the node has a bus) and returns its sequence number.
    pub(super) fn publish(&self, what: Invalidation, version: Option<u64>) -> Option<u64> {
        self.publish_at(what, version, self.clock.now())
    }

    /// [`publish`](Self::publish) of a message dated `at` (this node's clock).
    pub(super) fn publish_at(
        &self,
        what: Invalidation,
        version: Option<u64>,
        at: UnixMillis,
    ) -> Option<u64> {
        self.publisher()
            .map(|p| p.send(&self.name, what, version, at))
    }

    /// The node's contact with the bus, when the transport confirms it (see [`crate::bus`]'s `Liveness`).
    #[inline]
    fn liveness(&self) -> Option<&Liveness> {
        self.publisher().and_then(|p| p.liveness.as_deref())
    }

    /// Whether L1 may answer at `now`: always, unless the bus confirms contact and the last confirmation is
    /// older than its bound (then an entry may have missed an invalidation; it is not served).
    #[inline]
    pub(super) fn l1_trusted(&self, now: UnixMillis) -> bool {
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
    pub(super) fn feed_trusted(&self, now: UnixMillis) -> bool {
        match &self.feed {
            Some(f) if !f.trusted(now) => {
                f.untrusted_reads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
            _ => true,
        }
    }

    /// The tightest bound the caches are untrusted under at `now`, if any: fills are kept no longer, and flights
    /// older than it are not joined.
    pub(super) fn untrusted_bound(&self, now: UnixMillis) -> Option<u64> {
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

    pub(super) fn source(&self) -> Result<Arc<dyn Source<V>>, Error> {
        self.source.clone().ok_or(Error::InvalidState(
            "the namespace has no source: register it with with_source",
        ))
    }

    pub(super) fn sink(&self) -> Result<Arc<dyn Sink<V>>, Error> {
        self.sink.clone().ok_or(Error::InvalidState(
            "the namespace has no sink: register it with with_sink",
        ))
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

/// The hot-key detector's counting window.
const HOT_WINDOW: Duration = Duration::from_millis(200);

/// The longest an entry of this policy can live: how long a tag barrier must be kept.
fn longest_life_ms(policy: &Policy) -> u64 {
    let fresh = millis(policy.ttl.mul_f64(1.0 + policy.jitter)).max(millis(policy.negative_ttl));
    fresh + millis(policy.retain_after_fresh()) + 1_000
}

/// A duration in whole milliseconds, saturating.
pub(super) fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}
