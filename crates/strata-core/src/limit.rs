//! The rate limiter's vocabulary, shared by the engine's limiters (`strata::limit`, which documents the
//! algorithms) and the shared tier's (`strata_redis::RedisLimiter`).

use std::time::Duration;

use futures::future::BoxFuture;

use crate::Error;

/// Which algorithm a limiter runs (see the module docs).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Refill at `limit / period` up to `burst` tokens.
    #[default]
    TokenBucket,
    /// GCRA: a bucket of `burst` that drains at `limit / period`.
    LeakyBucket,
    /// `limit` per aligned window.
    FixedWindow,
    /// Two windows, the previous one weighted.
    SlidingWindow,
    /// The exact log of the last `period`.
    SlidingLog,
}

impl Algorithm {
    /// Every algorithm, in the order the docs list them.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::TokenBucket,
        Algorithm::LeakyBucket,
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::SlidingLog,
    ];

    /// The name in configs and metrics (`token_bucket`, …).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::LeakyBucket => "leaky_bucket",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::SlidingLog => "sliding_log",
        }
    }

    /// The algorithm named `name`.
    pub fn parse(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// `limit` requests (cost units) per `period`, with bursts up to `burst` for the bucket algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Units admitted per period (at least 1).
    pub limit: u64,
    /// The period (at least 1 ms).
    pub period: Duration,
    /// The bucket's size (token and leaky bucket); the window algorithms ignore it. At least 1.
    pub burst: u64,
}

impl Quota {
    /// `limit` per `period`, with a burst of `limit`.
    pub fn new(limit: u64, period: Duration) -> Self {
        Self {
            limit: limit.max(1),
            period: period.max(Duration::from_millis(1)),
            burst: limit.max(1),
        }
    }

    /// The same quota with another burst.
    pub fn with_burst(mut self, burst: u64) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// The period in whole milliseconds (at least 1).
    pub fn period_ms(&self) -> u64 {
        (self.period.as_millis() as u64).max(1)
    }

    /// The share of this quota one of `nodes` nodes gets (at least 1 unit): what a node admits alone while the
    /// shared limiter cannot answer.
    pub fn share(&self, nodes: u64) -> Quota {
        let nodes = nodes.max(1);
        Quota {
            limit: (self.limit / nodes).max(1),
            period: self.period,
            burst: (self.burst / nodes).max(1),
        }
    }

    /// The most units `algorithm` admits over a span of `span_ms` starting on a window edge, from a full
    /// quota: the policy's own allowance, which accuracy is measured against.
    pub fn allowance(&self, algorithm: Algorithm, span_ms: u64) -> f64 {
        let p = self.period_ms() as f64;
        match algorithm {
            Algorithm::TokenBucket | Algorithm::LeakyBucket => {
                self.burst as f64 + self.limit as f64 * span_ms as f64 / p
            }
            Algorithm::FixedWindow | Algorithm::SlidingLog | Algorithm::SlidingWindow => {
                self.limit as f64 * (span_ms as f64 / p).ceil().max(1.0)
            }
        }
    }
}

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Admitted (its cost was taken) or refused (nothing was taken).
    pub allowed: bool,
    /// The quota's limit (for `RateLimit-Policy`).
    pub limit: u64,
    /// Units left after this request.
    pub remaining: u64,
    /// Until the quota is whole again (the bucket full, the window over).
    pub reset: Duration,
    /// When refused: until a request of this cost could be admitted. `None` when admitted or never (a cost
    /// above what the quota can hold).
    pub retry_after: Option<Duration>,
    /// Answered from the local share because the shared limiter could not (see `strata::limit::FallbackLimiter`).
    pub fallback: bool,
}

/// A limiter shared by the nodes (Redis): one round trip per decision. Errors are the tier's
/// ([`Error::Unavailable`], [`Error::Timeout`]); `strata::limit::FallbackLimiter` turns them into local decisions.
pub trait SharedLimiter: Send + Sync + 'static {
    /// Takes `cost` units for `key` under `quota`, or refuses.
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        quota: Quota,
        cost: u64,
    ) -> BoxFuture<'a, Result<Decision, Error>>;
}
