//! Read stage 1, triage: what L1 holds for a key, classified against the policy at one instant, and what the read
//! does about it — answer now (perhaps also starting one background refresh), or load with a stale fallback.
//!
//! Nothing here awaits or takes a lock beyond the L1 shard read: a hit is answered in this stage alone.

use std::sync::Arc;

use strata_core::{EarlyRefresh, Tier, UnixMillis};

use super::state::millis;
use super::Inner;
use crate::entry::{Entry, EntryKind};
use crate::lookup::{Lookup, StaleReason, Status};

/// What L1 holds for a key at one instant.
enum InL1<V> {
    /// Fresh: answer it.
    Fresh(Arc<Entry<V>>),
    /// Inside the stale-while-revalidate window: answer it and refresh.
    Revalidate(Arc<Entry<V>>),
    /// Inside the fail-safe window: a fallback if the load fails.
    FailSafe(Arc<Entry<V>>),
    /// Nothing usable: absent, a tombstone, expired, behind a barrier, or untrusted.
    Absent,
}

/// Whether an answer from L1 also starts a background refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refresh {
    /// No refresh.
    None,
    /// The entry is still fresh, but due for early refresh (ratio or XFetch).
    Early,
    /// The entry is stale (stale-while-revalidate).
    Stale,
}

/// What triage decided for one key.
pub(super) enum Triage<V> {
    /// Answer now, and refresh as said.
    Answer(Lookup<V>, Refresh),
    /// Load, with this stale entry (inside the fail-safe window) as the fallback.
    Load(Option<Arc<Entry<V>>>),
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// A fresh L1 value (or cached absence) for `key`, counting a miss otherwise: `Namespace::get`.
    #[inline]
    pub(super) fn get_fresh(&self, key: &str) -> Option<Lookup<V>> {
        let hit = self.l1.as_ref().and_then(|l1| l1.get(key)).and_then(|e| {
            let now = self.clock.now();
            let valid = e.kind != EntryKind::Tombstone
                && now < e.fresh_until
                && !self.barriers.blocks(&e.tags, e.created_at)
                && self.l1_trusted(now);
            valid.then(|| {
                let status = self.hit_status(&e);
                Lookup::new(e, status)
            })
        });
        if hit.is_none() {
            self.counters.misses.inc();
        }
        hit
    }

    /// Whether L1 holds an unexpired value or absence for `key`, trusted or not: `Namespace::l1_holds`.
    pub(super) fn l1_holds(&self, key: &str) -> bool {
        let now = self.clock.now();
        self.l1
            .as_ref()
            .and_then(|l1| l1.peek(key))
            .is_some_and(|e| e.kind != EntryKind::Tombstone && !e.is_expired(now))
    }

    fn in_l1(&self, key: &str, now: UnixMillis) -> InL1<V> {
        let Some(e) = self.l1.as_ref().and_then(|l1| l1.get(key)) else {
            return InL1::Absent;
        };
        if !self.l1_trusted(now) {
            return InL1::Absent;
        }
        if e.kind == EntryKind::Tombstone
            || now >= e.stale_until
            || self.barriers.blocks(&e.tags, e.created_at)
        {
            InL1::Absent
        } else if now < e.fresh_until {
            InL1::Fresh(e)
        } else if now < e.fresh_until.saturating_add(millis(self.policy.stale_for)) {
            InL1::Revalidate(e)
        } else {
            InL1::FailSafe(e)
        }
    }

    /// Classifies the key's L1 entry at `now` and counts the answer (the module docs, step 1).
    pub(super) fn triage(&self, key: &str, now: UnixMillis) -> Triage<V> {
        match self.in_l1(key, now) {
            InL1::Fresh(e) => {
                let status = self.hit_status(&e);
                let refresh = if self.refresh_due(&e, now) {
                    Refresh::Early
                } else {
                    Refresh::None
                };
                Triage::Answer(Lookup::new(e, status), refresh)
            }
            InL1::Revalidate(e) => {
                self.counters.stale_revalidating.inc();
                let refresh = if e.retry_after() <= now {
                    Refresh::Stale
                } else {
                    Refresh::None
                };
                Triage::Answer(
                    Lookup::new(e, Status::Stale(StaleReason::Revalidating)),
                    refresh,
                )
            }
            InL1::FailSafe(e) if now < e.retry_after() => {
                self.counters.stale_fail_safe.inc();
                Triage::Answer(
                    Lookup::new(e, Status::Stale(StaleReason::FailSafe)),
                    Refresh::None,
                )
            }
            InL1::FailSafe(e) => Triage::Load(Some(e)),
            InL1::Absent => Triage::Load(None),
        }
    }

    /// Counts a refresh that starts.
    pub(super) fn count_refresh(&self, refresh: Refresh) {
        self.counters.refreshes.inc();
        if refresh == Refresh::Early {
            self.counters.early_refreshes.inc();
        }
    }

    #[inline]
    fn hit_status(&self, e: &Entry<V>) -> Status {
        if e.kind == EntryKind::Negative {
            self.counters.negative_hits.inc();
            Status::Negative
        } else {
            self.counters.hits.inc();
            Status::Hit(Tier::L1)
        }
    }

    fn refresh_due(&self, e: &Entry<V>, now: UnixMillis) -> bool {
        if e.kind != EntryKind::Value || now < e.retry_after() {
            return false;
        }
        match self.policy.early_refresh {
            EarlyRefresh::Off => false,
            EarlyRefresh::Ratio(r) => {
                let life = e.fresh_until.saturating_sub(e.created_at) as f64;
                now as f64 >= e.created_at as f64 + r * life
            }
            EarlyRefresh::XFetch { beta } => {
                // 1 − U(0,1) lies in (0, 1], so ln is finite and ≤ 0.
                let u = 1.0 - rand::random::<f64>();
                now as f64 - f64::from(e.delta_ms.max(1)) * beta * u.ln() >= e.fresh_until as f64
            }
        }
    }
}
