//! Per-namespace policy: every knob of DESIGN §2, each with a documented default.
//!
//! Build with [`Policy::builder`]; [`PolicyBuilder::build`] validates the combination and names the offending
//! field. Which component honours a knob is stated on the knob: the engine (`strata`) honours freshness, stale,
//! fail-safe, early refresh, jitter, negative caching, L1 and load timeouts; the knobs marked *(L2)* and *(write
//! path)* are carried here so that configuration is complete and stable, and take effect once those tiers exist.

use std::time::Duration;

/// When to refresh an entry before it expires (in the background, once per key).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EarlyRefresh {
    /// Never refresh early.
    Off,
    /// Refresh once the entry has lived this fraction of its fresh time (`0 < r < 1`), e.g. `0.8`.
    Ratio(f64),
    /// Probabilistic early expiration (XFetch, Vattani et al.): refresh when
    /// `now − delta·beta·ln(rand) ≥ fresh_until`, where `delta` is the last load's duration. `beta > 0`; `1.0` is
    /// the paper's default, larger refreshes earlier.
    XFetch {
        /// The eagerness factor.
        beta: f64,
    },
}

/// The L1 eviction policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Eviction {
    /// The default: a scan-resistant CLOCK-Pro/S3-FIFO style policy with a ghost list (quick_cache), chosen by
    /// measurement (see `BENCHMARKS.md`).
    #[default]
    Adaptive,
    /// Least recently used.
    Lru,
    /// Least frequently used (ties broken by age).
    Lfu,
    /// First in, first out.
    Fifo,
}

impl Eviction {
    /// The name used in configs and reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            Eviction::Adaptive => "adaptive",
            Eviction::Lru => "lru",
            Eviction::Lfu => "lfu",
            Eviction::Fifo => "fifo",
        }
    }
}

/// The in-process tier's settings for one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct L1Policy {
    /// Whether values are kept in process memory. Default: `true`.
    pub enabled: bool,
    /// An upper bound on an entry's L1 freshness, below the namespace TTL (useful when other nodes may write).
    /// Default: `None` (the namespace TTL).
    pub max_ttl: Option<Duration>,
    /// The byte budget: the weigher's total over all entries never exceeds it. Default: 64 MiB.
    pub budget_bytes: u64,
    /// A hint of how many entries the budget holds, for sizing. Default: `budget_bytes / 256`.
    pub estimated_entries: Option<usize>,
    /// The eviction policy. Default: [`Eviction::Adaptive`].
    pub eviction: Eviction,
}

impl Default for L1Policy {
    fn default() -> Self {
        Self {
            enabled: true,
            max_ttl: None,
            budget_bytes: 64 << 20,
            estimated_entries: None,
            eviction: Eviction::Adaptive,
        }
    }
}

/// *(L2)* The shared tier's settings for one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Policy {
    /// Whether values are kept in the shared tier. Default: `true`.
    pub enabled: bool,
    /// Compress values of at least this many bytes. Default: `Some(1024)`.
    pub compress_above: Option<usize>,
}

impl Default for L2Policy {
    fn default() -> Self {
        Self {
            enabled: true,
            compress_above: Some(1024),
        }
    }
}

/// How long a load may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadTimeout {
    /// After this, a caller that has a stale value gets it (status `Stale(SoftTimeout)`) while the load finishes in
    /// the background. Default: `None`.
    pub soft: Option<Duration>,
    /// After this, the load is abandoned and callers get a timeout error (or a fail-safe stale value). Default: 30 s.
    pub hard: Duration,
}

impl Default for LoadTimeout {
    fn default() -> Self {
        Self {
            soft: None,
            hard: Duration::from_secs(30),
        }
    }
}

/// Request coalescing. Local single-flight (one load per key per process) is always on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalescing {
    /// *(L2)* Also coalesce across nodes with a Redis lease. Default: `false`.
    pub distributed: bool,
    /// *(L2)* How long a node that lost the lease waits for the holder's fill (woken by the bus) before loading
    /// itself. Default: 1 s.
    pub lease_wait: Duration,
    /// *(L2)* At most one lease per key per this interval, so a key whose loads keep failing (or whose holders
    /// keep dying) does not send every node to the source in turn. Default: 50 ms.
    pub lease_grant_interval: Duration,
}

impl Default for Coalescing {
    fn default() -> Self {
        Self {
            distributed: false,
            lease_wait: Duration::from_secs(1),
            lease_grant_interval: Duration::from_millis(50),
        }
    }
}

/// *(write path)* How writes reach the source and the caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// Write the source, then invalidate (delete-on-write). The default.
    #[default]
    Aside,
    /// Write the source, then set the caches with the source's version.
    Through,
    /// Append to a durable journal, update the caches, acknowledge; flush to the source in batches.
    Behind,
    /// Write the source only; caches learn by TTL or by invalidation events.
    Around,
}

/// *(L2)* Hot-key protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotKeys {
    /// Detect hot keys and pin them in L1 for `pin_ttl` — also where the namespace's L1 is off, so a hot key
    /// stops costing a Redis round trip per request. Default: `false`.
    pub enabled: bool,
    /// Requests per second above which a key counts as hot. Default: 1000.
    pub threshold_per_sec: u32,
    /// How long a hot key is pinned in L1. Default: 1 s.
    pub pin_ttl: Duration,
    /// *(L2)* Copies of a hot key in L2 (`key␀r0..rN`, each living at most `pin_ttl`), read at random so that one
    /// extreme key's reads spread over Redis Cluster shards; 0 disables replication. Invalidations and writes
    /// tombstone every copy. Default: 0. At most 16.
    pub l2_replicas: u8,
}

impl Default for HotKeys {
    fn default() -> Self {
        Self {
            enabled: false,
            threshold_per_sec: 1000,
            pin_ttl: Duration::from_secs(1),
            l2_replicas: 0,
        }
    }
}

/// A namespace's policy. See the module docs and [`Policy::builder`].
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// How long an entry is fresh. Default: 60 s.
    pub ttl: Duration,
    /// The TTL is spread uniformly by ± this fraction on every fill, so that entries filled together do not expire
    /// together. Default: `0.1` (±10 %). `0` disables.
    pub jitter: f64,
    /// After `ttl`, serve the stale value for this long while one background refresh runs
    /// (stale-while-revalidate). Default: zero (off).
    pub stale_for: Duration,
    /// After `ttl`, serve the stale value for this long when the source fails or times out. Default: zero (off).
    pub fail_safe_for: Duration,
    /// While fail-safe is serving, retry the source at most once per this interval per key. Default: 1 s.
    pub fail_safe_retry_every: Duration,
    /// How long "the source has no such key" is cached. Default: zero (absence is not cached).
    pub negative_ttl: Duration,
    /// Refresh before expiry. Default: [`EarlyRefresh::Off`].
    pub early_refresh: EarlyRefresh,
    /// How long a tombstone left by `invalidate` blocks fills that started before it. Default: 5 s.
    pub tombstone_hold_off: Duration,
    /// In-process tier. Default: see [`L1Policy`].
    pub l1: L1Policy,
    /// Shared tier. Default: see [`L2Policy`].
    pub l2: L2Policy,
    /// Load timeouts. Default: see [`LoadTimeout`].
    pub load_timeout: LoadTimeout,
    /// Coalescing. Default: local only.
    pub coalescing: Coalescing,
    /// Write mode. Default: [`WriteMode::Aside`].
    pub write: WriteMode,
    /// Hot keys. Default: off.
    pub hot_keys: HotKeys,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            jitter: 0.1,
            stale_for: Duration::ZERO,
            fail_safe_for: Duration::ZERO,
            fail_safe_retry_every: Duration::from_secs(1),
            negative_ttl: Duration::ZERO,
            early_refresh: EarlyRefresh::Off,
            tombstone_hold_off: Duration::from_secs(5),
            l1: L1Policy::default(),
            l2: L2Policy::default(),
            load_timeout: LoadTimeout::default(),
            coalescing: Coalescing::default(),
            write: WriteMode::default(),
            hot_keys: HotKeys::default(),
        }
    }
}

impl Policy {
    /// A builder starting from the defaults.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder {
            policy: Policy::default(),
        }
    }

    /// How long an entry is kept at all after it stops being fresh: the larger of the stale and fail-safe windows.
    pub fn retain_after_fresh(&self) -> Duration {
        self.stale_for.max(self.fail_safe_for)
    }

    /// Checks the combination of knobs.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |field: &'static str, problem: String| Err(PolicyError { field, problem });
        if self.ttl.is_zero() {
            return bad("ttl", "must be greater than zero".into());
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return bad(
                "jitter",
                format!("is {}, must be between 0 and 0.5", self.jitter),
            );
        }
        match self.early_refresh {
            EarlyRefresh::Ratio(r) if !(r > 0.0 && r < 1.0) => {
                return bad(
                    "early_refresh",
                    format!("ratio is {r}, must be strictly between 0 and 1"),
                )
            }
            EarlyRefresh::XFetch { beta } if !(beta > 0.0 && beta.is_finite()) => {
                return bad(
                    "early_refresh",
                    format!("xfetch beta is {beta}, must be a positive number"),
                )
            }
            _ => {}
        }
        if self.l1.enabled && self.l1.budget_bytes == 0 {
            return bad(
                "l1.budget_bytes",
                "must be greater than zero when l1 is enabled".into(),
            );
        }
        if self.l1.max_ttl.is_some_and(|t| t.is_zero()) {
            return bad("l1.max_ttl", "must be greater than zero".into());
        }
        if self.load_timeout.hard.is_zero() {
            return bad("load_timeout.hard", "must be greater than zero".into());
        }
        if let Some(soft) = self.load_timeout.soft {
            if soft >= self.load_timeout.hard {
                return bad(
                    "load_timeout.soft",
                    format!(
                        "is {soft:?}, must be shorter than the hard timeout {:?}",
                        self.load_timeout.hard
                    ),
                );
            }
        }
        if self.hot_keys.l2_replicas > 16 {
            return bad(
                "hot_keys.l2_replicas",
                format!("is {}, must be at most 16", self.hot_keys.l2_replicas),
            );
        }
        if self.hot_keys.enabled && self.hot_keys.pin_ttl.is_zero() {
            return bad("hot_keys.pin_ttl", "must be greater than zero".into());
        }
        if self.hot_keys.enabled && self.hot_keys.threshold_per_sec == 0 {
            return bad(
                "hot_keys.threshold_per_sec",
                "must be greater than zero".into(),
            );
        }
        Ok(())
    }
}

/// A policy knob with an invalid value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy field `{field}`: {problem}")]
pub struct PolicyError {
    /// The field, as named in configs.
    pub field: &'static str,
    /// What is wrong and what would be valid.
    pub problem: String,
}

/// Builds a [`Policy`]; every setter documents its default.
#[derive(Debug, Clone)]
#[must_use]
pub struct PolicyBuilder {
    policy: Policy,
}

impl PolicyBuilder {
    /// Freshness. Default: 60 s.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.policy.ttl = ttl;
        self
    }
    /// TTL spread (± fraction, 0 to 0.5). Default: 0.1.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.policy.jitter = jitter;
        self
    }
    /// Stale-while-revalidate window. Default: zero (off).
    pub fn with_stale_for(mut self, d: Duration) -> Self {
        self.policy.stale_for = d;
        self
    }
    /// Fail-safe window. Default: zero (off).
    pub fn with_fail_safe_for(mut self, d: Duration) -> Self {
        self.policy.fail_safe_for = d;
        self
    }
    /// Fail-safe retry throttle. Default: 1 s.
    pub fn with_fail_safe_retry_every(mut self, d: Duration) -> Self {
        self.policy.fail_safe_retry_every = d;
        self
    }
    /// Negative-caching TTL. Default: zero (off).
    pub fn with_negative_ttl(mut self, d: Duration) -> Self {
        self.policy.negative_ttl = d;
        self
    }
    /// Early refresh. Default: off.
    pub fn with_early_refresh(mut self, e: EarlyRefresh) -> Self {
        self.policy.early_refresh = e;
        self
    }
    /// Tombstone hold-off. Default: 5 s.
    pub fn with_tombstone_hold_off(mut self, d: Duration) -> Self {
        self.policy.tombstone_hold_off = d;
        self
    }
    /// Enables or disables L1. Default: enabled.
    pub fn with_l1(mut self, enabled: bool) -> Self {
        self.policy.l1.enabled = enabled;
        self
    }
    /// L1 byte budget. Default: 64 MiB.
    pub fn with_l1_budget_bytes(mut self, bytes: u64) -> Self {
        self.policy.l1.budget_bytes = bytes;
        self
    }
    /// L1 entry-count hint. Default: budget / 256.
    pub fn with_l1_estimated_entries(mut self, n: usize) -> Self {
        self.policy.l1.estimated_entries = Some(n);
        self
    }
    /// L1 TTL cap. Default: none.
    pub fn with_l1_max_ttl(mut self, d: Duration) -> Self {
        self.policy.l1.max_ttl = Some(d);
        self
    }
    /// L1 eviction policy. Default: adaptive.
    pub fn with_eviction(mut self, e: Eviction) -> Self {
        self.policy.l1.eviction = e;
        self
    }
    /// *(L2)* Enables or disables L2. Default: enabled.
    pub fn with_l2(mut self, enabled: bool) -> Self {
        self.policy.l2.enabled = enabled;
        self
    }
    /// *(L2)* Compression threshold. Default: 1024 bytes.
    pub fn with_compress_above(mut self, bytes: Option<usize>) -> Self {
        self.policy.l2.compress_above = bytes;
        self
    }
    /// Soft load timeout. Default: none.
    pub fn with_soft_timeout(mut self, d: Duration) -> Self {
        self.policy.load_timeout.soft = Some(d);
        self
    }
    /// Hard load timeout. Default: 30 s.
    pub fn with_hard_timeout(mut self, d: Duration) -> Self {
        self.policy.load_timeout.hard = d;
        self
    }
    /// See [`Coalescing::lease_wait`].
    pub fn with_lease_wait(mut self, d: Duration) -> Self {
        self.policy.coalescing.lease_wait = d;
        self
    }

    /// See [`Coalescing::lease_grant_interval`].
    pub fn with_lease_grant_interval(mut self, d: Duration) -> Self {
        self.policy.coalescing.lease_grant_interval = d;
        self
    }

    /// *(L2)* Distributed coalescing with leases. Default: off.
    pub fn with_distributed_coalescing(mut self, on: bool) -> Self {
        self.policy.coalescing.distributed = on;
        self
    }
    /// *(write path)* Write mode. Default: aside.
    pub fn with_write_mode(mut self, w: WriteMode) -> Self {
        self.policy.write = w;
        self
    }
    /// *(L2)* Hot-key protection. Default: off.
    pub fn with_hot_keys(mut self, h: HotKeys) -> Self {
        self.policy.hot_keys = h;
        self
    }
    /// Validates and returns the policy.
    pub fn build(self) -> Result<Policy, PolicyError> {
        self.policy.validate()?;
        Ok(self.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Policy::builder().build().unwrap();
    }

    #[test]
    fn invalid_knobs_name_their_field() {
        let cases: Vec<(PolicyBuilder, &str)> = vec![
            (Policy::builder().with_ttl(Duration::ZERO), "ttl"),
            (Policy::builder().with_jitter(0.9), "jitter"),
            (
                Policy::builder().with_early_refresh(EarlyRefresh::Ratio(1.0)),
                "early_refresh",
            ),
            (
                Policy::builder().with_early_refresh(EarlyRefresh::XFetch { beta: -1.0 }),
                "early_refresh",
            ),
            (Policy::builder().with_l1_budget_bytes(0), "l1.budget_bytes"),
            (
                Policy::builder()
                    .with_soft_timeout(Duration::from_secs(5))
                    .with_hard_timeout(Duration::from_secs(1)),
                "load_timeout.soft",
            ),
        ];
        for (b, field) in cases {
            let err = b.build().unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }
}
