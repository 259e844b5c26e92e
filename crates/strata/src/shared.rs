//! The cache's link to its shared tier (L2): every call goes through a [`CircuitBreaker`], and invalidations that
//! could not reach L2 wait in a bounded replay queue.
//!
//! # Redis down or slow
//! - Every call is bounded by the tier's own timeout (`strata-redis`: 250 ms by default) and by the breaker: after
//!   `failure_threshold` consecutive failures the breaker opens and L2 is skipped outright (reads go L1 → source
//!   with local single-flight) until a half-open probe succeeds. No request waits on a dead Redis past one timeout,
//!   and while the breaker is open, not at all.
//! - An invalidation (key tombstone, tag barrier, generation bump) that fails is queued here, newest wins per
//!   target, and replayed in order of arrival once calls succeed again; each replayed invalidation is published on
//!   the bus again afterwards, so nodes that re-read the old value from L2 before the replay drop it once more.
//! - While an invalidation of a key (or its tag, or its namespace) waits here, this node neither reads that key
//!   from L2 (which may still hold the old value) nor fills it: no wrong data from a tier that missed a write.
//! - The queue is a [`Coalescing`] queue (`crate::retry`: one entry per target, the strongest kept — highest
//!   version, longest hold, most replicas): a generation bump covers its namespace's queued key and tag
//!   invalidations, and beyond `MAX_PENDING` targets a namespace's queued invalidations collapse into one
//!   generation bump of that namespace, which covers them all.
//! - One replay task at a time, started by the first failure and ending when the queue is empty. It holds the link
//!   weakly (it ends with the link: the cache and its namespaces) and stops at [`SharedLink::close`]; after
//!   close nothing is replayed, and queued invalidations keep blocking L2 for their keys.
//!
//! # Clocks
//! Entries in L2 carry tier time. The link keeps the latest observed offset between tier time and this node's
//! clock (from each lookup) to translate deadlines both ways.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use strata_core::{Clock, Error, Invalidation, SharedTier, Tier, UnixMillis};
use tokio::task::JoinHandle;

use crate::breaker::{BreakerState, CircuitBreaker};
use crate::bus::Publisher;
use crate::retry::{self, Coalescing};
use crate::stop::{Stop, Stopping};

pub(crate) use strata_core::shared::replica_keys;

/// At most this many invalidation targets wait for replay.
pub(crate) const MAX_PENDING: usize = 100_000;

/// What a queued invalidation targets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ReplayTarget {
    Key { ns: String, key: String },
    Tag { ns: String, tag: String },
    Generation { ns: String },
}

impl retry::RetryKey for ReplayTarget {
    /// A namespace's generation bump covers its keys and tags.
    fn widest(&self) -> Self {
        match self {
            ReplayTarget::Key { ns, .. }
            | ReplayTarget::Tag { ns, .. }
            | ReplayTarget::Generation { ns } => ReplayTarget::Generation { ns: ns.clone() },
        }
    }
}

#[derive(Debug, Clone)]
struct Replay {
    version: Option<u64>,
    /// L2 copies of the key (hot-key replicas) to tombstone with it.
    replicas: u8,
    /// Tombstone hold-off (keys) or barrier keep period (tags, generations).
    hold: Duration,
}

impl retry::Payload<ReplayTarget> for Replay {
    fn absorb(&mut self, older: Self) {
        self.version = self.version.max(older.version);
        self.replicas = self.replicas.max(older.replicas);
        self.hold = self.hold.max(older.hold);
    }
}

/// Breaker settings of a shared tier.
#[derive(Debug, Clone, Copy)]
pub struct BreakerOptions {
    /// Consecutive failures that open the breaker. Default: 5.
    pub failure_threshold: u32,
    /// How long it stays open before one probe. Default: 1 s.
    pub open_for: Duration,
}

impl Default for BreakerOptions {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(1),
        }
    }
}

/// Counters of the shared link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedStats {
    /// L2 calls that failed or timed out.
    pub errors: u64,
    /// Calls skipped because the breaker was open.
    pub short_circuited: u64,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Invalidations queued because L2 could not be reached.
    pub queued: u64,
    /// Queued invalidations replayed.
    pub replayed: u64,
    /// Targets waiting for replay now.
    pub pending: u64,
    /// L2 entries that did not decode (counted as misses).
    pub corrupt: u64,
}

/// The cache's link to L2. Shared by the cache and every namespace using L2; no lock is held across an `.await`.
pub(crate) struct SharedLink {
    pub tier: Arc<dyn SharedTier>,
    /// Its own atomics (see `crate::breaker`).
    breaker: CircuitBreaker,
    clock: Arc<dyn Clock>,
    retry_every: Duration,
    /// Tier time minus local time, as last observed. Relaxed: a hint for deadlines, refreshed by every lookup.
    offset: AtomicI64,
    /// Invalidations waiting for replay. A `parking_lot` mutex: pushed by failing writes on any task, read by
    /// `blocks` on L2 reads while something waits, settled by the replay task; each section is one queue operation.
    pending: Mutex<Coalescing<ReplayTarget, Replay>>,
    /// `pending.len()`, stored after every change under the lock (release) and read first by `blocks` (acquire),
    /// so a read that finds 0 takes no lock — the common case, nothing queued.
    pending_len: AtomicUsize,
    /// Whether a replay task runs: the enqueuer that sets it starts one; the task clears it when the queue is
    /// empty and re-checks, so an invalidation queued meanwhile is not left without a task.
    replaying: AtomicBool,
    /// The replay task started last, for `close` to await.
    replay: Mutex<Option<JoinHandle<()>>>,
    /// Set by `close`: no replay task starts any more, and the running one stops before its next round.
    stop: Stop,
    /// This node's bus publisher, when it has a bus: replayed invalidations are published again.
    publisher: Option<Arc<Publisher>>,
    /// Relaxed atomic counters: statistics only.
    errors: AtomicU64,
    short_circuited: AtomicU64,
    queued: AtomicU64,
    replayed: AtomicU64,
    pub corrupt: AtomicU64,
}

impl SharedLink {
    pub(crate) fn new(
        tier: Arc<dyn SharedTier>,
        clock: Arc<dyn Clock>,
        breaker: BreakerOptions,
        publisher: Option<Arc<Publisher>>,
    ) -> Self {
        Self {
            tier,
            breaker: CircuitBreaker::new(
                clock.clone(),
                breaker.failure_threshold.max(1),
                breaker.open_for,
            ),
            retry_every: (breaker.open_for / 4).max(Duration::from_millis(10)),
            clock,
            offset: AtomicI64::new(0),
            pending: Mutex::new(Coalescing::new(MAX_PENDING)),
            pending_len: AtomicUsize::new(0),
            replaying: AtomicBool::new(false),
            replay: Mutex::new(None),
            stop: Stop::new().0,
            publisher,
            errors: AtomicU64::new(0),
            short_circuited: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
        }
    }

    /// Runs one call through the breaker.
    pub(crate) async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let Some(permit) = self.breaker.allow() else {
            self.short_circuited.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Unavailable {
                tier: Tier::L2,
                message: "circuit breaker open: skipping the shared tier".into(),
            });
        };
        match fut.await {
            Ok(v) => {
                permit.success();
                Ok(v)
            }
            Err(e) => {
                permit.failure();
                self.errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Records the tier's time as seen now by this node.
    pub(crate) fn observe_tier_time(&self, tier_now: UnixMillis, local_now: UnixMillis) {
        self.offset
            .store(tier_now as i64 - local_now as i64, Ordering::Relaxed);
    }

    /// Local time → tier time.
    pub(crate) fn to_tier(&self, local: UnixMillis) -> UnixMillis {
        (local as i64 + self.offset.load(Ordering::Relaxed)).max(0) as u64
    }

    /// Whether a queued invalidation forbids reading or filling `key` (with `tags`, when known) through L2.
    pub(crate) fn blocks(&self, ns: &str, key: &str, tags: &[String]) -> bool {
        if self.pending_len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let pending = self.pending.lock();
        pending.contains(&ReplayTarget::Generation { ns: ns.to_owned() })
            || pending.contains(&ReplayTarget::Key {
                ns: ns.to_owned(),
                key: key.to_owned(),
            })
            || tags.iter().any(|t| {
                pending.contains(&ReplayTarget::Tag {
                    ns: ns.to_owned(),
                    tag: t.clone(),
                })
            })
    }

    /// Queues an invalidation that could not reach L2 and makes sure a replay task runs (unless the link is
    /// closed: then the invalidation only keeps blocking L2 for what it targets).
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        target: ReplayTarget,
        version: Option<u64>,
        hold: Duration,
        replicas: u8,
    ) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        {
            let mut pending = self.pending.lock();
            pending.push(
                target,
                Replay {
                    version,
                    hold,
                    replicas,
                },
            );
            self.pending_len.store(pending.len(), Ordering::Release);
        }
        if self.stop.is_set() {
            return;
        }
        if !self.replaying.swap(true, Ordering::AcqRel) {
            let task = tokio::spawn(Self::replay_loop(
                Arc::downgrade(self),
                self.stop.subscribe(),
                self.retry_every,
            ));
            // The previous task (if any) has ended: it cleared `replaying` before returning.
            *self.replay.lock() = Some(task);
        }
    }

    /// Stops replaying: no task starts any more, and the running one stops before its next round (awaited here).
    /// Idempotent.
    pub(crate) async fn close(&self) {
        self.stop.now();
        let task = self.replay.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Replays every `retry_every` until the queue is empty, the link is gone or closed.
    async fn replay_loop(link: Weak<Self>, mut stop: Stopping, every: Duration) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.requested() => return,
            }
            let Some(link) = link.upgrade() else { return };
            link.replay_round(&stop).await;
            // Stop only when the queue is empty; re-check after clearing the flag so a racing enqueue is not lost.
            if link.pending_len.load(Ordering::Acquire) == 0 {
                link.replaying.store(false, Ordering::Release);
                if link.pending_len.load(Ordering::Acquire) == 0
                    || link.replaying.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
        }
    }

    /// Replays the queue in arrival order, stopping at the first failure (the rest waits for the next round).
    async fn replay_round(&self, stop: &Stopping) {
        let mut cursor = None;
        while !stop.is_due() {
            let Some((ticket, target, p)) = self.pending.lock().next_after(cursor) else {
                break;
            };
            cursor = Some(ticket);
            if self.replay_one(&target, &p).await.is_err() {
                break;
            }
            self.replayed.fetch_add(1, Ordering::Relaxed);
            {
                let mut pending = self.pending.lock();
                pending.settle(&target, ticket);
                self.pending_len.store(pending.len(), Ordering::Release);
            }
            self.republish(&target, p.version);
        }
    }

    async fn replay_one(&self, target: &ReplayTarget, p: &Replay) -> Result<(), Error> {
        let tier = &self.tier;
        match target {
            ReplayTarget::Key { ns, key } => {
                for copy in std::iter::once(key.clone()).chain(replica_keys(key, p.replicas)) {
                    self.call(tier.invalidate(ns, &copy, p.version, p.hold))
                        .await?;
                }
                Ok(())
            }
            ReplayTarget::Tag { ns, tag } => self
                .call(tier.raise_barrier(ns, Some(tag), p.hold))
                .await
                .map(drop),
            ReplayTarget::Generation { ns } => self
                .call(tier.raise_barrier(ns, None, p.hold))
                .await
                .map(drop),
        }
    }

    fn republish(&self, target: &ReplayTarget, version: Option<u64>) {
        let Some(p) = self.publisher.as_ref() else {
            return;
        };
        let (ns, what) = match target {
            ReplayTarget::Key { ns, key } => (ns, Invalidation::Delete { key: key.clone() }),
            ReplayTarget::Tag { ns, tag } => (ns, Invalidation::Tag { tag: tag.clone() }),
            ReplayTarget::Generation { ns } => (ns, Invalidation::Clear),
        };
        p.send(ns, what, version, self.clock.now());
    }

    pub(crate) fn stats(&self) -> SharedStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SharedStats {
            errors: g(&self.errors),
            short_circuited: g(&self.short_circuited),
            breaker_opened: self.breaker.times_opened(),
            queued: g(&self.queued),
            replayed: g(&self.replayed),
            pending: self.pending_len.load(Ordering::Relaxed) as u64,
            corrupt: g(&self.corrupt),
        }
    }
}
