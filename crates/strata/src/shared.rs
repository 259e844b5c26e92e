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
//! - The queue is bounded (`MAX_PENDING` targets): beyond it, a namespace's queued key invalidations collapse into
//!   one generation bump of that namespace, which covers them all.
//!
//! # Clocks
//! Entries in L2 carry tier time. The link keeps the latest observed offset between tier time and this node's
//! clock (from each lookup) to translate deadlines both ways.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use strata_core::{Clock, Error, Invalidation, SharedTier, Tier, UnixMillis};

use crate::breaker::{BreakerState, CircuitBreaker};
use crate::bus::Publisher;

pub(crate) use strata_core::shared::replica_keys;

/// At most this many invalidation targets wait for replay.
pub(crate) const MAX_PENDING: usize = 100_000;

/// What a queued invalidation targets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Key { ns: String, key: String },
    Tag { ns: String, tag: String },
    Generation { ns: String },
}

impl Target {
    fn namespace(&self) -> &str {
        match self {
            Target::Key { ns, .. } | Target::Tag { ns, .. } | Target::Generation { ns } => ns,
        }
    }
}

#[derive(Debug, Clone)]
struct Pending {
    version: Option<u64>,
    /// L2 copies of the key (hot-key replicas) to tombstone with it.
    replicas: u8,
    /// Tombstone hold-off (keys) or barrier keep period (tags, generations).
    hold: Duration,
    /// Arrival order; a replay removes a target only if no newer invalidation replaced it meanwhile.
    seq: u64,
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

pub(crate) struct SharedLink {
    pub tier: Arc<dyn SharedTier>,
    breaker: CircuitBreaker,
    clock: Arc<dyn Clock>,
    retry_every: Duration,
    /// Tier time minus local time, as last observed.
    offset: AtomicI64,
    pending: Mutex<HashMap<Target, Pending>>,
    pending_len: AtomicUsize,
    pending_seq: AtomicU64,
    replaying: AtomicBool,
    publisher: Arc<OnceLock<Arc<Publisher>>>,
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
        publisher: Arc<OnceLock<Arc<Publisher>>>,
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
            pending: Mutex::new(HashMap::new()),
            pending_len: AtomicUsize::new(0),
            pending_seq: AtomicU64::new(0),
            replaying: AtomicBool::new(false),
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
        pending.contains_key(&Target::Generation { ns: ns.to_owned() })
            || pending.contains_key(&Target::Key {
                ns: ns.to_owned(),
                key: key.to_owned(),
            })
            || tags.iter().any(|t| {
                pending.contains_key(&Target::Tag {
                    ns: ns.to_owned(),
                    tag: t.clone(),
                })
            })
    }

    /// Queues an invalidation that could not reach L2 and makes sure a replay task runs.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        target: Target,
        version: Option<u64>,
        hold: Duration,
        replicas: u8,
    ) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let seq = self.pending_seq.fetch_add(1, Ordering::Relaxed);
        {
            let mut pending = self.pending.lock();
            let target = if pending.len() >= MAX_PENDING && !pending.contains_key(&target) {
                // Collapse this namespace's targets into one generation bump, which covers them all.
                let ns = target.namespace().to_owned();
                pending.retain(|t, _| t.namespace() != ns);
                Target::Generation { ns }
            } else {
                target
            };
            let version = match pending.get(&target) {
                Some(old) => old.version.max(version),
                None => version,
            };
            let hold = pending.get(&target).map_or(hold, |old| old.hold.max(hold));
            let replicas = pending
                .get(&target)
                .map_or(replicas, |old| old.replicas.max(replicas));
            pending.insert(
                target,
                Pending {
                    version,
                    hold,
                    replicas,
                    seq,
                },
            );
            self.pending_len.store(pending.len(), Ordering::Release);
        }
        if !self.replaying.swap(true, Ordering::AcqRel) {
            let link = self.clone();
            tokio::spawn(async move { link.replay_loop().await });
        }
    }

    async fn replay_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.retry_every).await;
            let mut batch: Vec<(Target, Pending)> = self
                .pending
                .lock()
                .iter()
                .map(|(t, p)| (t.clone(), p.clone()))
                .collect();
            batch.sort_by_key(|(_, p)| p.seq);
            for (target, p) in batch {
                if self.replay_one(&target, &p).await.is_err() {
                    break;
                }
                self.replayed.fetch_add(1, Ordering::Relaxed);
                {
                    let mut pending = self.pending.lock();
                    if pending.get(&target).is_some_and(|now| now.seq == p.seq) {
                        pending.remove(&target);
                    }
                    self.pending_len.store(pending.len(), Ordering::Release);
                }
                self.republish(&target, p.version);
            }
            // Stop only when the queue is empty; re-check after clearing the flag so a racing enqueue is not lost.
            if self.pending_len.load(Ordering::Acquire) == 0 {
                self.replaying.store(false, Ordering::Release);
                if self.pending_len.load(Ordering::Acquire) == 0
                    || self.replaying.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
        }
    }

    async fn replay_one(&self, target: &Target, p: &Pending) -> Result<(), Error> {
        let tier = &self.tier;
        match target {
            Target::Key { ns, key } => {
                for copy in std::iter::once(key.clone()).chain(replica_keys(key, p.replicas)) {
                    self.call(tier.invalidate(ns, &copy, p.version, p.hold))
                        .await?;
                }
                Ok(())
            }
            Target::Tag { ns, tag } => self
                .call(tier.raise_barrier(ns, Some(tag), p.hold))
                .await
                .map(drop),
            Target::Generation { ns } => self
                .call(tier.raise_barrier(ns, None, p.hold))
                .await
                .map(drop),
        }
    }

    fn republish(&self, target: &Target, version: Option<u64>) {
        let Some(p) = self.publisher.get() else {
            return;
        };
        let (ns, what) = match target {
            Target::Key { ns, key } => (ns, Invalidation::Delete { key: key.clone() }),
            Target::Tag { ns, tag } => (ns, Invalidation::Tag { tag: tag.clone() }),
            Target::Generation { ns } => (ns, Invalidation::Clear),
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
