//! Per-namespace counters, cheap enough for the hit path.
//!
//! A hit must not bounce one cache line between cores, so every counter is striped over cache-padded cells
//! indexed by a per-thread slot; reading sums the stripes. Counters reach the `metrics` facade through
//! [`crate::Cache::publish_metrics`] (absolute values, labelled by namespace, tier and reason), which a scraper calls
//! before rendering; load latency goes to a `metrics` histogram directly, since loads are the slow path.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

const STRIPES: usize = 8;

/// A monotonically increasing counter striped across cores.
#[derive(Default)]
pub(crate) struct Counter {
    cells: [CachePadded<AtomicU64>; STRIPES],
}

fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    SLOT.with(|s| *s)
}

impl Counter {
    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.cells[stripe()].fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.cells.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// The raw counters of one namespace.
#[derive(Default)]
pub(crate) struct Counters {
    pub hits: Counter,
    pub negative_hits: Counter,
    pub misses: Counter,
    pub coalesced: Counter,
    pub stale_revalidating: Counter,
    pub stale_fail_safe: Counter,
    pub stale_soft_timeout: Counter,
    pub loads: Counter,
    pub load_errors: Counter,
    pub load_timeouts: Counter,
    pub load_micros: Counter,
    pub refreshes: Counter,
    pub early_refreshes: Counter,
    pub fail_safe_activations: Counter,
    pub fills_refused: Counter,
    pub inserts: Counter,
    pub invalidations: Counter,
    pub hits_l2: Counter,
    pub lease_waits: Counter,
    pub pinned: Counter,
}

/// A snapshot of one namespace's counters and gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamespaceStats {
    /// The namespace.
    pub namespace: String,
    /// Fresh L1 hits.
    pub hits_l1: u64,
    /// Hits on a cached absence.
    pub negative_hits: u64,
    /// Lookups that started a load.
    pub misses: u64,
    /// Lookups that waited for another call's load.
    pub coalesced: u64,
    /// Stale values served while revalidating.
    pub stale_revalidating: u64,
    /// Stale values served because the source failed.
    pub stale_fail_safe: u64,
    /// Stale values served after the soft timeout.
    pub stale_soft_timeout: u64,
    /// Loader calls (foreground and background).
    pub loads: u64,
    /// Loader calls that failed (errors and panics).
    pub load_errors: u64,
    /// Loader calls that hit the hard timeout.
    pub load_timeouts: u64,
    /// Total time spent in loader calls, in microseconds.
    pub load_micros: u64,
    /// Background refreshes started (stale-while-revalidate and early refresh).
    pub refreshes: u64,
    /// Of those, early refreshes of still-fresh entries.
    pub early_refreshes: u64,
    /// Failed loads whose callers were answered from the fail-safe window (once per load, not per waiter).
    pub fail_safe_activations: u64,
    /// Fills refused by a tombstone, a newer version or a concurrent write.
    pub fills_refused: u64,
    /// Explicit inserts.
    pub inserts: u64,
    /// Invalidations.
    pub invalidations: u64,
    /// Lookups answered from the shared tier (L2).
    pub hits_l2: u64,
    /// Times a load waited for another node's lease.
    pub lease_waits: u64,
    /// Hot-key entries pinned in L1.
    pub pinned: u64,
    /// Entries evicted from L1 for space.
    pub evictions: u64,
    /// Bytes charged in L1.
    pub l1_bytes: u64,
    /// Entries in L1.
    pub l1_entries: u64,
}

impl NamespaceStats {
    /// The share of lookups answered from cache without waiting for a load (fresh, stale and negative hits).
    pub fn hit_ratio(&self) -> f64 {
        let served = self.hits_l1 + self.hits_l2 + self.negative_hits + self.stale_revalidating;
        let total =
            served + self.misses + self.coalesced + self.stale_fail_safe + self.stale_soft_timeout;
        if total == 0 {
            0.0
        } else {
            served as f64 / total as f64
        }
    }
}

impl Counters {
    pub(crate) fn snapshot(
        &self,
        namespace: &str,
        evictions: u64,
        l1_bytes: u64,
        l1_entries: u64,
    ) -> NamespaceStats {
        NamespaceStats {
            namespace: namespace.to_owned(),
            hits_l1: self.hits.get(),
            negative_hits: self.negative_hits.get(),
            misses: self.misses.get(),
            coalesced: self.coalesced.get(),
            stale_revalidating: self.stale_revalidating.get(),
            stale_fail_safe: self.stale_fail_safe.get(),
            stale_soft_timeout: self.stale_soft_timeout.get(),
            loads: self.loads.get(),
            load_errors: self.load_errors.get(),
            load_timeouts: self.load_timeouts.get(),
            load_micros: self.load_micros.get(),
            refreshes: self.refreshes.get(),
            early_refreshes: self.early_refreshes.get(),
            fail_safe_activations: self.fail_safe_activations.get(),
            fills_refused: self.fills_refused.get(),
            inserts: self.inserts.get(),
            invalidations: self.invalidations.get(),
            hits_l2: self.hits_l2.get(),
            lease_waits: self.lease_waits.get(),
            pinned: self.pinned.get(),
            evictions,
            l1_bytes,
            l1_entries,
        }
    }
}

/// Pushes a snapshot to the `metrics` facade as absolute counter values and gauges.
pub(crate) fn publish(s: &NamespaceStats) {
    use metrics::{counter, gauge};
    let ns = s.namespace.clone();
    counter!("strata_hits_total", "namespace" => ns.clone(), "tier" => "l1").absolute(s.hits_l1);
    counter!("strata_hits_total", "namespace" => ns.clone(), "tier" => "l2").absolute(s.hits_l2);
    counter!("strata_lease_waits_total", "namespace" => ns.clone()).absolute(s.lease_waits);
    counter!("strata_hot_key_pins_total", "namespace" => ns.clone()).absolute(s.pinned);
    counter!("strata_negative_hits_total", "namespace" => ns.clone()).absolute(s.negative_hits);
    counter!("strata_misses_total", "namespace" => ns.clone()).absolute(s.misses);
    counter!("strata_coalesced_total", "namespace" => ns.clone()).absolute(s.coalesced);
    for (reason, v) in [
        ("revalidating", s.stale_revalidating),
        ("fail_safe", s.stale_fail_safe),
        ("soft_timeout", s.stale_soft_timeout),
    ] {
        counter!("strata_stale_served_total", "namespace" => ns.clone(), "reason" => reason)
            .absolute(v);
    }
    counter!("strata_loads_total", "namespace" => ns.clone()).absolute(s.loads);
    counter!("strata_load_errors_total", "namespace" => ns.clone(), "kind" => "error")
        .absolute(s.load_errors);
    counter!("strata_load_errors_total", "namespace" => ns.clone(), "kind" => "timeout")
        .absolute(s.load_timeouts);
    counter!("strata_refreshes_total", "namespace" => ns.clone(), "kind" => "background")
        .absolute(s.refreshes);
    counter!("strata_refreshes_total", "namespace" => ns.clone(), "kind" => "early")
        .absolute(s.early_refreshes);
    counter!("strata_fail_safe_activations_total", "namespace" => ns.clone())
        .absolute(s.fail_safe_activations);
    counter!("strata_fills_refused_total", "namespace" => ns.clone()).absolute(s.fills_refused);
    counter!("strata_evictions_total", "namespace" => ns.clone(), "tier" => "l1")
        .absolute(s.evictions);
    gauge!("strata_bytes", "namespace" => ns.clone(), "tier" => "l1").set(s.l1_bytes as f64);
    gauge!("strata_entries", "namespace" => ns, "tier" => "l1").set(s.l1_entries as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counter_sums_across_threads() {
        let c = std::sync::Arc::new(Counter::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| c.inc()))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(c.get(), 40_000);
    }
}
