//! What a lookup returns: the value together with how it was obtained.

use std::sync::Arc;

use strata_core::Tier;

use crate::entry::{Entry, EntryKind};

/// Why a stale value was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StaleReason {
    /// Inside the stale-while-revalidate window; one background refresh is under way.
    Revalidating,
    /// The source failed or timed out, and the value is inside the fail-safe window.
    FailSafe,
    /// The load passed the soft timeout; it goes on in the background.
    SoftTimeout,
    /// The source's bulkhead or circuit breaker refused the load (see [`crate::protect`]).
    Overloaded,
}

impl StaleReason {
    /// A short name for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            StaleReason::Revalidating => "revalidating",
            StaleReason::FailSafe => "fail_safe",
            StaleReason::SoftTimeout => "soft_timeout",
            StaleReason::Overloaded => "overloaded",
        }
    }
}

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// A fresh value from this tier.
    Hit(Tier),
    /// A value past its freshness, served for the reason given.
    Stale(StaleReason),
    /// Not cached: this call's load produced the answer.
    Miss,
    /// Not cached: another call's load of the same key produced the answer (single-flight).
    Coalesced,
    /// A cached "the source has no such key".
    Negative,
}

impl Status {
    /// A short name for logs and metric labels (`hit_l1`, `stale_fail_safe`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Hit(Tier::L1) => "hit_l1",
            Status::Hit(Tier::L2) => "hit_l2",
            Status::Hit(_) => "hit",
            Status::Stale(r) => match r {
                StaleReason::Revalidating => "stale_revalidating",
                StaleReason::FailSafe => "stale_fail_safe",
                StaleReason::SoftTimeout => "stale_soft_timeout",
                StaleReason::Overloaded => "stale_overloaded",
            },
            Status::Miss => "miss",
            Status::Coalesced => "coalesced",
            Status::Negative => "negative",
        }
    }
}

/// A value (or its cached absence) with its [`Status`]. Cheap to clone: it shares the cached entry.
#[derive(Debug)]
pub struct Lookup<V> {
    entry: Arc<Entry<V>>,
    status: Status,
}

impl<V> Clone for Lookup<V> {
    fn clone(&self) -> Self {
        Self {
            entry: self.entry.clone(),
            status: self.status,
        }
    }
}

impl<V> Lookup<V> {
    pub(crate) fn new(entry: Arc<Entry<V>>, status: Status) -> Self {
        Self { entry, status }
    }

    /// The value; `None` when the source says the key does not exist.
    pub fn value(&self) -> Option<&V> {
        self.entry.value.as_deref()
    }

    /// The value as a shared pointer, for keeping it beyond the lookup.
    pub fn to_arc(&self) -> Option<Arc<V>> {
        self.entry.value.clone()
    }

    /// How the lookup was answered.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether the answer is "the source has no such key".
    pub fn is_absent(&self) -> bool {
        self.entry.kind != EntryKind::Value
    }

    /// The source version of the value, if the source gave one.
    pub fn version(&self) -> Option<u64> {
        self.entry.version
    }

    /// The entry behind the answer (deadlines, tags, load duration).
    pub fn entry(&self) -> &Arc<Entry<V>> {
        &self.entry
    }
}
