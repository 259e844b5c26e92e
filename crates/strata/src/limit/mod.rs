//! Rate limiting: the four classic algorithms, in-process ([`LocalLimiter`]) or cluster-wide behind the
//! [`SharedLimiter`] trait (Redis: `strata_redis::RedisLimiter`, one atomic Lua script per algorithm on Redis's
//! own clock), and a [`FallbackLimiter`] that answers from a local share of the limit while the shared one
//! cannot — never failing open or closed without saying so.
//!
//! # The algorithms ([`Algorithm`]) for a [`Quota`] of `limit` per `period` (and a `burst`)
//! - **Token bucket** (the default): a bucket of `burst` tokens refilled at `limit / period`; a request of cost
//!   `c` takes `c` tokens or is refused. Admits at most `burst + rate·t` in any span `t`.
//! - **Leaky bucket**, as a meter: each request pours `c` units into a bucket of `burst` units that drains at
//!   `limit / period`; refused when it would overflow. It is the token bucket's dual (the same bound, the same
//!   decisions; GCRA is the same thing with one timestamp of state) — kept as its own name because configs and
//!   the literature ask for it by that name. Kept as level + time rather than GCRA's timestamp: Lua computes in
//!   `f64`, and a theoretical arrival time near 1.7e12 ms rounds to a quarter of a microsecond.
//! - **Fixed window**: at most `limit` per aligned window of `period`. Cheap; up to `2·limit` across a window
//!   edge.
//! - **Sliding window** (counter-interpolated): the current window's count plus the previous one's weighted by
//!   how much of it the sliding window still covers, at most `limit`. Two counters; smooths the edge.
//! - **Sliding log** (exact): the admitted requests' times within the last `period`, at most `limit` of them.
//!   Exact at any instant; state grows with the limit.
//!
//! Every decision ([`Decision`]) says how much is left, when the quota is whole again (`reset`) and, when
//! refused, how long to wait (`retry_after`): what the IETF `RateLimit` / `RateLimit-Policy` fields and
//! `Retry-After` carry. A refused request takes nothing.
//!
//! The arithmetic is written once ([`State::decide`]) over integer milliseconds and milli-units, so a model
//! under a manual clock tests exactly what runs; the Redis scripts mirror it line by line. Hand-written rather
//! than a crate: `governor` has GCRA only and in-process only, and Strata needs the same five algorithms in
//! Lua with the same answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
pub use strata_core::limit::{Algorithm, Decision, Quota, SharedLimiter};
use strata_core::Clock;

mod state;

pub use state::State;

/// An in-process limiter: one [`State`] per key, on an injectable clock. Idle keys are pruned once their state
/// is whole again, so memory follows the keys active in the last period.
pub struct LocalLimiter {
    algorithm: Algorithm,
    clock: Arc<dyn Clock>,
    keys: Mutex<HashMap<String, State>>,
    last_prune: AtomicU64,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl LocalLimiter {
    /// A limiter running `algorithm` on `clock`.
    pub fn new(algorithm: Algorithm, clock: Arc<dyn Clock>) -> Self {
        Self {
            algorithm,
            clock,
            keys: Mutex::new(HashMap::new()),
            last_prune: AtomicU64::new(0),
        }
    }

    /// The algorithm it runs.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Takes `cost` units for `key` under `quota`, or refuses.
    pub fn acquire(&self, key: &str, quota: Quota, cost: u64) -> Decision {
        let now = self.clock.now();
        let mut keys = self.keys.lock();
        if now.saturating_sub(self.last_prune.load(Ordering::Relaxed)) >= quota.period_ms() {
            self.last_prune.store(now, Ordering::Relaxed);
            keys.retain(|_, s| !s.is_whole(&quota, now));
        }
        let state = match keys.get_mut(key) {
            Some(s) => s,
            None => keys.entry(key.to_owned()).or_default(),
        };
        state.decide(self.algorithm, &quota, now, cost)
    }

    /// Keys holding state.
    pub fn len(&self) -> usize {
        self.keys.lock().len()
    }

    /// Whether no key holds state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counters of a [`FallbackLimiter`].
#[derive(Debug, Default)]
pub struct FallbackStats {
    /// Decisions made by the shared limiter.
    pub shared: AtomicU64,
    /// Decisions made from the local share because the shared limiter failed.
    pub fallbacks: AtomicU64,
}

/// A shared limiter with a local share of the quota behind it: while the shared one fails (Redis down, a
/// timeout), each node admits `quota.share(nodes)` by itself — so the cluster as a whole stays near the limit,
/// neither failing open (no limit) nor closed (an outage of the limiter refusing every request). Each such
/// decision is marked [`Decision::fallback`] and counted.
pub struct FallbackLimiter {
    shared: Option<Arc<dyn SharedLimiter>>,
    local: LocalLimiter,
    nodes: u64,
    stats: Arc<FallbackStats>,
}

impl std::fmt::Debug for FallbackLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackLimiter")
            .field("shared", &self.shared.is_some())
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl FallbackLimiter {
    /// `shared` (none: in-process only, the whole quota here) backed by a local limiter that admits
    /// `1 / nodes` of the quota while `shared` fails.
    pub fn new(
        shared: Option<Arc<dyn SharedLimiter>>,
        algorithm: Algorithm,
        nodes: u64,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            shared,
            local: LocalLimiter::new(algorithm, clock),
            nodes: nodes.max(1),
            stats: Arc::new(FallbackStats::default()),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<FallbackStats> {
        &self.stats
    }

    /// Whether it shares its state through another tier.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Takes `cost` units for `key` under `quota`, or refuses (see the type's docs).
    pub async fn acquire(&self, key: &str, quota: Quota, cost: u64) -> Decision {
        let Some(shared) = &self.shared else {
            return self.local.acquire(key, quota, cost);
        };
        match shared.acquire(key, quota, cost).await {
            Ok(d) => {
                self.stats.shared.fetch_add(1, Ordering::Relaxed);
                d
            }
            Err(e) => {
                let first = self.stats.fallbacks.fetch_add(1, Ordering::Relaxed) == 0;
                if first {
                    tracing::warn!(error = %e, "the shared rate limiter failed: admitting a local share of the quota");
                }
                metrics::counter!("strata_ratelimit_fallbacks_total").increment(1);
                let mut d = self.local.acquire(key, quota.share(self.nodes), cost);
                d.fallback = true;
                d
            }
        }
    }
}

#[cfg(test)]
mod tests;
