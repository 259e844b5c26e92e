//! Protection of a slow source: a **bulkhead** (at most `max_in_flight` loads against the source, at most
//! `max_queue` waiting, each for at most `max_wait`) and a **circuit breaker** on the source's failures and
//! timeouts ([`crate::breaker::CircuitBreaker`], the same one L2 uses).
//!
//! Past either, a load does not reach the source: it fails fast with [`Error::Overloaded`], and the read path
//! answers a stale value if it holds one inside the fail-safe window (`Stale(Overloaded)`), or the error (the
//! server's `503` + `Retry-After`). A namespace's loads therefore never queue without bound behind a sick
//! source — the slow-dependency story in which one 12 s dependency fills every queue — and the other
//! namespaces, with their own bulkheads, never wait on it. The breaker lets one probe through after `open_for`;
//! while open there is no queue at all.
//!
//! The bulkhead is a `tokio` semaphore plus a counter of waiters (no hand-written atomics beyond a counter that
//! only bounds the queue).
//!
//! # Adaptive concurrency
//! With `adaptive_target`, the number of loads a source takes at once is found rather than configured: AIMD,
//! as Netflix's `concurrency-limits` `AIMDLimit` does it. The limit starts at 10; a load that answers within the
//! target, while at least half the limit is in use, adds `1/limit` (one more load per round of `limit` loads);
//! a load that fails, times out or takes longer than the target multiplies it by 0.9 (at least 1) — once per
//! round: only a load that began after the last decrease decreases it again, so a burst of slow loads finishing
//! together lowers the limit once, not once each. Past the limit
//! a load is shed at once, as past a full bulkhead — a source that slows down under load is held where it still
//! answers within the target, instead of being pushed into the 12 s regime. `max_in_flight` stays the hard
//! ceiling (the limit is a soft bound: admissions racing past it are bounded there). The limit lives under a
//! mutex; only its published copy in [`ProtectionStats::limit`] is atomic.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strata_core::{Clock, Error};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use parking_lot::Mutex;

use crate::breaker::{BreakerState, CircuitBreaker, Permit};

/// The adaptive limit's first value (loads at once).
const ADAPTIVE_START: usize = 10;
/// Its ceiling without `max_in_flight`.
const ADAPTIVE_CEILING: usize = 1000;
/// Its multiplicative decrease on a slow or failed load.
const ADAPTIVE_BACKOFF: f64 = 0.9;

/// How a namespace protects its source (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protection {
    /// Loads against the source at once (bulkhead); `None`: no bulkhead.
    pub max_in_flight: Option<usize>,
    /// Loads waiting for a slot; past it, fail fast.
    pub max_queue: usize,
    /// Longest wait for a slot.
    pub max_wait: Duration,
    /// Consecutive failures (errors and timeouts) that open the breaker; `None`: no breaker.
    pub breaker_failures: Option<u32>,
    /// How long the breaker stays open before one probe.
    pub breaker_open_for: Duration,
    /// Adaptive concurrency (AIMD, see the module docs): the loads a source takes at once are found by
    /// themselves, a load slower than this target (or failed) counting as a sign of overload. `None`: the
    /// bulkhead's limit is `max_in_flight`, fixed.
    pub adaptive_target: Option<Duration>,
}

impl Default for Protection {
    fn default() -> Self {
        Self {
            max_in_flight: None,
            max_queue: 0,
            max_wait: Duration::from_millis(100),
            breaker_failures: None,
            breaker_open_for: Duration::from_secs(5),
            adaptive_target: None,
        }
    }
}

/// Counters of a namespace's source protection ([`crate::Namespace::protection`]).
#[derive(Debug, Default)]
pub struct ProtectionStats {
    /// Loads refused because the bulkhead and its queue were full (or the wait ran out).
    pub shed: AtomicU64,
    /// Loads refused because the breaker was open.
    pub breaker_refused: AtomicU64,
    /// Loads in flight now.
    pub in_flight: AtomicUsize,
    /// The most loads in flight at once.
    pub peak_in_flight: AtomicUsize,
    /// The adaptive limit now (whole loads), with adaptive concurrency; else 0.
    pub limit: AtomicUsize,
}

/// A source's bulkhead and breaker: a namespace's (built from its [`Protection`]), or a proxy route's in front
/// of its origin.
pub struct SourceGuard {
    slots: Option<Arc<Semaphore>>,
    waiting: AtomicUsize,
    protection: Protection,
    breaker: Option<CircuitBreaker>,
    pub(crate) stats: Arc<ProtectionStats>,
    /// Whose source it guards (metrics, messages): a namespace or a route.
    namespace: String,
    /// The adaptive limit (fractional: additive increase adds `1/limit` per load) and when it last decreased,
    /// with adaptive concurrency.
    adaptive: Option<Mutex<(f64, tokio::time::Instant)>>,
}

/// A load admitted to the source: resolve it with its outcome. Dropping it unresolved (its caller went away)
/// counts neither way: a client that disconnects says nothing of the source, and must not open its breaker.
pub struct Admitted<'a> {
    _slot: Option<OwnedSemaphorePermit>,
    breaker: Option<Permit>,
    stats: &'a ProtectionStats,
    guard: &'a SourceGuard,
    started: tokio::time::Instant,
}

impl Admitted<'_> {
    /// The load ended: `ok` when the source answered (a value or absent), not when it failed or timed out.
    pub fn done(mut self, ok: bool) {
        if let Some(p) = self.breaker.take() {
            if ok {
                p.success();
            } else {
                p.failure();
            }
        }
        self.guard.sample(ok, self.started, self.started.elapsed());
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.breaker.take() {
            p.abandon();
        }
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A place in the bulkhead's wait queue, given back however the wait ends (a cancelled wait too).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SourceGuard {
    /// A guard for the source of `namespace` (a namespace's or a route's name).
    pub fn new(namespace: &str, protection: Protection, clock: Arc<dyn Clock>) -> Self {
        Self {
            slots: protection
                .max_in_flight
                .map(|n| Arc::new(Semaphore::new(n.max(1)))),
            waiting: AtomicUsize::new(0),
            protection,
            breaker: protection
                .breaker_failures
                .map(|f| CircuitBreaker::new(clock, f.max(1), protection.breaker_open_for)),
            stats: Arc::new(ProtectionStats {
                limit: AtomicUsize::new(if protection.adaptive_target.is_some() {
                    ADAPTIVE_START.min(protection.max_in_flight.unwrap_or(usize::MAX))
                } else {
                    0
                }),
                ..ProtectionStats::default()
            }),
            namespace: namespace.to_owned(),
            adaptive: protection.adaptive_target.map(|_| {
                Mutex::new((
                    ADAPTIVE_START.min(protection.max_in_flight.unwrap_or(usize::MAX)) as f64,
                    tokio::time::Instant::now(),
                ))
            }),
        }
    }

    /// The adaptive limit's AIMD step for one finished load (see the module docs).
    fn sample(&self, ok: bool, started: tokio::time::Instant, took: Duration) {
        let (Some(limit), Some(target)) = (&self.adaptive, self.protection.adaptive_target) else {
            return;
        };
        let ceiling = self.protection.max_in_flight.unwrap_or(ADAPTIVE_CEILING) as f64;
        let mut guard = limit.lock();
        let (l, last_decrease) = &mut *guard;
        if !ok || took > target {
            // One decrease per round: the loads that began before the last decrease saw the old limit, and a
            // burst of them finishing together must not collapse it.
            if started > *last_decrease {
                *l = (*l * ADAPTIVE_BACKOFF).max(1.0);
                *last_decrease = tokio::time::Instant::now();
            }
        } else if self.stats.in_flight.load(Ordering::Relaxed) as f64 * 2.0 >= *l {
            // Only a limit that is in use grows: a quiet source does not talk its limit up. (`in_flight` still
            // counts this load: it is released after this step.)
            *l = (*l + 1.0 / *l).min(ceiling);
        }
        self.stats.limit.store(*l as usize, Ordering::Relaxed);
    }

    /// Its counters.
    pub fn stats(&self) -> &ProtectionStats {
        &self.stats
    }

    /// The breaker's state (closed without a breaker).
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker
            .as_ref()
            .map_or(BreakerState::Closed, CircuitBreaker::state)
    }

    /// Admits a load to the source, or refuses it with [`Error::Overloaded`] (see the module docs).
    pub async fn admit(&self) -> Result<Admitted<'_>, Error> {
        // The adaptive limit first (a soft bound: admissions racing past it are bounded by `max_in_flight`).
        if let Some(limit) = &self.adaptive {
            let l = limit.lock().0.floor() as usize;
            if self.stats.in_flight.load(Ordering::Relaxed) >= l.max(1) {
                self.stats.shed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("strata_source_shed_total", "namespace" => self.namespace.clone())
                    .increment(1);
                return Err(Error::Overloaded(format!(
                    "namespace {:?}: its source's adaptive limit of {l} loads at once is reached",
                    self.namespace
                )));
            }
        }
        // The bulkhead next: a load shed there says nothing of the source, so it must not use up a probe.
        let slot = match &self.slots {
            None => None,
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let shed = |why: &str| {
                        self.stats.shed.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("strata_source_shed_total", "namespace" => self.namespace.clone())
                            .increment(1);
                        let n = self.protection.max_in_flight.unwrap_or(0);
                        Error::Overloaded(format!(
                            "namespace {:?}: all {n} of its source's load slots (max_loads) are taken and {why}",
                            self.namespace,
                        ))
                    };
                    let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
                    let place = Waiting(&self.waiting);
                    if queued >= self.protection.max_queue {
                        drop(place);
                        return Err(shed("the wait queue is full"));
                    }
                    let got =
                        tokio::time::timeout(self.protection.max_wait, s.clone().acquire_owned())
                            .await;
                    drop(place);
                    match got {
                        Ok(Ok(p)) => Some(p),
                        _ => return Err(shed("no slot freed in time")),
                    }
                }
            },
        };
        let breaker = match &self.breaker {
            Some(b) => match b.allow() {
                Some(p) => Some(p),
                None => {
                    self.stats.breaker_refused.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("strata_source_breaker_refused_total", "namespace" => self.namespace.clone())
                        .increment(1);
                    return Err(Error::Overloaded(format!(
                        "namespace {:?}: the source's circuit breaker is open after repeated failures",
                        self.namespace
                    )));
                }
            },
            None => None,
        };
        let now = self.stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        Ok(Admitted {
            _slot: slot,
            breaker,
            stats: &self.stats,
            guard: self,
            started: tokio::time::Instant::now(),
        })
    }
}
