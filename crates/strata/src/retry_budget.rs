//! Retries that cannot multiply an outage: a **retry budget** and **full-jitter** backoff.
//!
//! A source load that failed for a passing reason (a refused connection, a timeout, a `503`) is worth retrying —
//! once the source is sick, though, every caller retrying turns one request into several and keeps it sick.
//! The budget bounds that: every request deposits `ratio` of a token, every retry withdraws a whole one, and the
//! bucket holds at most `reserve + ratio × window` tokens. So over any run
//!
//! > retries ≤ reserve + ratio × requests
//!
//! (the property test checks it): with `ratio = 0.1` a sick source sees at most ~10 % more requests than callers
//! make, never 3× — the shape of Finagle's `RetryBudget` and gRPC's retry throttling, without a clock (deposits
//! are counted in requests, not seconds, so the bound holds however fast requests come).
//!
//! [`backoff`] is "full jitter" (AWS Architecture Blog, *Exponential Backoff and Jitter*): a uniform wait in
//! `[0, min(cap, base × 2^attempt)]`, so retries of many callers spread out instead of arriving together.
//!
//! [`Retrying`] puts both in front of any [`Source`] (the SQL tables; the HTTP source has its own, which also
//! honours `Retry-After`).
//!
//! Hand-written: a counter under a mutex; the crates that offer budgets come with a whole middleware stack.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use rand::Rng;
use strata_core::{Fetched, SharedError, Source};

/// A shared allowance of retries (see the module docs). Cheap to consult; share one per source.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    cap: f64,
    tokens: Mutex<f64>,
    requests: AtomicU64,
    retries: AtomicU64,
    refused: AtomicU64,
}

impl RetryBudget {
    /// Retries of at most `ratio` of requests (clamped to `0.0..=1.0`), plus `reserve` retries before any
    /// request was made (so a quiet source's first failure can still be retried).
    pub fn new(ratio: f64, reserve: u32) -> Self {
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let reserve = f64::from(reserve);
        Self {
            ratio,
            // Deposits of the last 100 requests at most, beyond the reserve: a long quiet spell cannot bank an
            // allowance that a burst of failures would then spend at once.
            cap: reserve + ratio * 100.0,
            tokens: Mutex::new(reserve),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// A request was made (its first attempt): deposits `ratio` of a token.
    pub fn deposit(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut t = self.tokens.lock();
        *t = (*t + self.ratio).min(self.cap);
    }

    /// Whether one retry may be made now; takes its token when it may.
    pub fn try_retry(&self) -> bool {
        let mut t = self.tokens.lock();
        // A tolerance for the float sum of many deposits (ten deposits of 0.1 are 0.999…).
        if *t >= 1.0 - 1e-9 {
            *t = (*t - 1.0).max(0.0);
            drop(t);
            self.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            drop(t);
            self.refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// `(requests, retries made, retries the budget refused)`.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// The wait before retry number `attempt` (1 for the first retry): uniform in `[0, min(cap, base × 2^(attempt-1))]`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(cap);
    if ceiling.is_zero() {
        return Duration::ZERO;
    }
    rand::rng().random_range(Duration::ZERO..=ceiling)
}

/// Any [`Source`] with its failed loads retried: up to `retries` times, full-jitter backoff between them, and
/// only while its [`RetryBudget`] allows. Loads are reads, so retrying them is safe; which errors are worth
/// another attempt is the `retryable` predicate's call (default: every error — the budget bounds the cost of
/// retrying one that will fail again). The namespace's hard timeout bounds the whole, retries included.
pub struct Retrying<S> {
    inner: S,
    retries: u32,
    base: Duration,
    cap: Duration,
    budget: RetryBudget,
    retryable: Box<dyn Fn(&SharedError) -> bool + Send + Sync>,
}

impl<S> Retrying<S> {
    /// `inner` with up to `retries` retries per load, at most `ratio` of loads retried (plus a reserve of 3),
    /// backoff ceilings from 50 ms doubling to 2 s.
    pub fn new(inner: S, retries: u32, ratio: f64) -> Self {
        Self {
            inner,
            retries,
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
            budget: RetryBudget::new(ratio, 3),
            retryable: Box::new(|_| true),
        }
    }

    /// Retries only the errors `f` accepts.
    #[must_use]
    pub fn with_retryable(
        mut self,
        f: impl Fn(&SharedError) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retryable = Box::new(f);
        self
    }

    /// The first backoff ceiling and the cap.
    #[must_use]
    pub fn with_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.base = base;
        self.cap = cap;
        self
    }

    /// The budget's counts: `(loads, retries, retries refused)`.
    pub fn counts(&self) -> (u64, u64, u64) {
        self.budget.counts()
    }

    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T, SharedError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SharedError>>,
    {
        self.budget.deposit();
        let mut retry = 0;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if retry >= self.retries || !(self.retryable)(&e) || !self.budget.try_retry() {
                        return Err(e);
                    }
                    retry += 1;
                    metrics::counter!("strata_source_load_retries_total").increment(1);
                    tokio::time::sleep(backoff(retry, self.base, self.cap)).await;
                }
            }
        }
    }
}

impl<V: Send + 'static, S: Source<V>> Source<V> for Retrying<S> {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched<V>, SharedError>> {
        Box::pin(self.with_retries(move || self.inner.load(key)))
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<V>>, SharedError>> {
        Box::pin(self.with_retries(move || self.inner.load_many(keys)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_budget_of_a_tenth_allows_one_retry_per_ten_requests_after_its_reserve() {
        let b = RetryBudget::new(0.1, 2);
        assert!(b.try_retry() && b.try_retry());
        assert!(!b.try_retry(), "the reserve is spent");
        for _ in 0..9 {
            b.deposit();
        }
        assert!(!b.try_retry());
        b.deposit();
        assert!(b.try_retry(), "ten requests earn one retry");
        assert!(!b.try_retry());
        assert_eq!(b.counts(), (10, 3, 3));
    }

    #[test]
    fn a_quiet_spell_banks_at_most_a_hundred_requests_worth() {
        let b = RetryBudget::new(0.1, 0);
        for _ in 0..100_000 {
            b.deposit();
        }
        let allowed = (0..1000).take_while(|_| b.try_retry()).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn full_jitter_stays_under_its_exponential_ceiling_and_the_cap() {
        let (base, cap) = (Duration::from_millis(10), Duration::from_millis(300));
        for attempt in 1..40 {
            let ceiling = (base * 2u32.pow((attempt - 1).min(20))).min(cap);
            for _ in 0..50 {
                assert!(backoff(attempt, base, cap) <= ceiling);
            }
        }
        assert_eq!(backoff(3, Duration::ZERO, cap), Duration::ZERO);
    }

    proptest! {
        /// Whatever the order of requests and retry attempts: retries ≤ reserve + ratio × requests.
        #[test]
        fn retries_never_exceed_the_reserve_plus_the_ratio_of_requests(
            ratio in 0.0f64..1.0,
            reserve in 0u32..5,
            ops in proptest::collection::vec(any::<bool>(), 0..2000),
        ) {
            let b = RetryBudget::new(ratio, reserve);
            for op in ops {
                if op { b.deposit(); } else { b.try_retry(); }
                let (requests, retries, _) = b.counts();
                prop_assert!(
                    retries as f64 <= f64::from(reserve) + ratio * requests as f64 + 1e-6,
                    "{retries} retries for {requests} requests"
                );
            }
        }
    }
}
