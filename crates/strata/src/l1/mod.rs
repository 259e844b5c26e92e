//! The in-process tier (L1): concurrent, bounded in bytes, synchronous.
//!
//! Invariants:
//! - The sum of [`Entry::weight`] over the stored entries never exceeds the budget. An entry heavier than one
//!   shard's share of the budget is not stored (and any older entry under its key is dropped, so an outdated value
//!   cannot outlive a write that was too big to cache).
//! - `get` never awaits and never decodes: it returns the `Arc<Entry<V>>` that was inserted.
//! - Expiry is lazy: the store does not look at time. The engine reads the entry's deadlines on every hit and
//!   treats an expired entry as absent; expired entries leave through eviction or replacement.
//!
//! The default policy, [`Eviction::Adaptive`], is quick_cache (a CLOCK-Pro/S3-FIFO style cache with a ghost
//! list) with a larger hot share than its default: on this machine it matched or beat moka's W-TinyLFU on every
//! Zipf cell, stays within 0.1 points of stock quick_cache, loses under 0.2 points to a one-time scan, and is
//! several times faster than moka (see `BENCHMARKS.md`, `cargo run --release -p strata-bench -- l1`). LRU, LFU and FIFO are sharded, mutex-guarded
//! maps (the `sharded` module) for users who want the classic, predictable behaviour.

mod sharded;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache as QuickCache;
use strata_core::{Eviction, L1Policy};

pub use crate::entry::{Entry, EntryKind, EntryParts, ENTRY_OVERHEAD};
use sharded::Sharded;

/// Share of the adaptive store kept for the hot (re-referenced) queue. quick_cache's default is 0.97; 0.99 was
/// measured to cut the hit-ratio loss from a one-time scan of a full cache's worth of keys from 0.203 to 0.189
/// points at a cost of at most 0.07 points on the Zipf cells (`strata-bench l1 --only hit`).
const HOT_ALLOCATION: f64 = 0.99;
/// Ghost (recently evicted keys) list size relative to the estimated entry count. Larger lists raise Zipf hit
/// ratios by up to a point but let a scan flush more useful ghosts (0.28 points lost at 1.0); 0.5 balances both.
const GHOST_ALLOCATION: f64 = 0.5;

/// The L1 store for one namespace.
pub struct L1<V> {
    store: Store<V>,
    budget: u64,
    evictions: Arc<AtomicU64>,
}

enum Store<V> {
    Adaptive(QuickCache<String, Arc<Entry<V>>, EntryWeighter, ahash::RandomState, EvictionCounter>),
    Sharded(Sharded<V>),
}

#[derive(Clone)]
struct EntryWeighter;

impl<V> quick_cache::Weighter<String, Arc<Entry<V>>> for EntryWeighter {
    #[inline]
    fn weight(&self, _key: &String, val: &Arc<Entry<V>>) -> u64 {
        val.weight
    }
}

#[derive(Clone)]
struct EvictionCounter(Arc<AtomicU64>);

impl<V> quick_cache::Lifecycle<String, Arc<Entry<V>>> for EvictionCounter {
    type RequestState = ();
    fn begin_request(&self) -> Self::RequestState {}
    fn on_evict(&self, _state: &mut (), _key: String, _val: Arc<Entry<V>>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl<V: Send + Sync + 'static> L1<V> {
    /// A store with the policy's budget and eviction.
    pub fn new(policy: &L1Policy) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let budget = policy.budget_bytes.max(1);
        let estimated = policy
            .estimated_entries
            .unwrap_or((budget / 256) as usize)
            .max(16);
        let store = match policy.eviction {
            Eviction::Adaptive => {
                let options = quick_cache::OptionsBuilder::new()
                    .estimated_items_capacity(estimated)
                    .weight_capacity(budget)
                    .hot_allocation(HOT_ALLOCATION)
                    .ghost_allocation(GHOST_ALLOCATION)
                    .build()
                    .expect("estimated_items_capacity and weight_capacity are set");
                Store::Adaptive(QuickCache::with_options(
                    options,
                    EntryWeighter,
                    ahash::RandomState::new(),
                    EvictionCounter(evictions.clone()),
                ))
            }
            other => Store::Sharded(Sharded::new(other, budget, evictions.clone())),
        };
        Self {
            store,
            budget,
            evictions,
        }
    }

    /// The entry under `key`, whatever its deadlines say. Counts as an access for eviction.
    #[inline]
    pub fn get(&self, key: &str) -> Option<Arc<Entry<V>>> {
        match &self.store {
            Store::Adaptive(c) => c.get(key),
            Store::Sharded(s) => s.get(key),
        }
    }

    /// The entry under `key` without counting an access.
    pub fn peek(&self, key: &str) -> Option<Arc<Entry<V>>> {
        match &self.store {
            Store::Adaptive(c) => c.peek(key),
            Store::Sharded(s) => s.peek(key),
        }
    }

    /// Stores an entry, evicting others to stay within the budget.
    pub fn insert(&self, key: String, entry: Arc<Entry<V>>) {
        match &self.store {
            Store::Adaptive(c) => {
                // quick_cache rejects an entry heavier than a shard but leaves any older entry in place.
                if entry.weight > c.shard_capacity() {
                    c.remove(key.as_str());
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                c.insert(key, entry)
            }
            Store::Sharded(s) => s.insert(key, entry),
        }
    }

    /// Removes the entry under `key`.
    pub fn remove(&self, key: &str) {
        match &self.store {
            Store::Adaptive(c) => {
                c.remove(key);
            }
            Store::Sharded(s) => s.remove(key),
        }
    }

    /// Removes every entry.
    pub fn clear(&self) {
        match &self.store {
            Store::Adaptive(c) => c.clear(),
            Store::Sharded(s) => s.clear(),
        }
    }

    /// The bytes charged by the stored entries.
    pub fn weight(&self) -> u64 {
        match &self.store {
            Store::Adaptive(c) => c.weight(),
            Store::Sharded(s) => s.weight(),
        }
    }

    /// The number of stored entries (including expired ones not yet evicted, and tombstones).
    pub fn len(&self) -> usize {
        match &self.store {
            Store::Adaptive(c) => c.len(),
            Store::Sharded(s) => s.len(),
        }
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Entries evicted (or refused for size) so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::ENTRY_OVERHEAD;

    fn entry(key: &str, bytes: u64) -> Arc<Entry<Vec<u8>>> {
        Arc::new(Entry::new(
            key,
            EntryParts {
                value: Some(Arc::new(vec![])),
                created_at: 0,
                fresh_until: 10,
                stale_until: 10,
                version: None,
                tags: vec![],
                delta_ms: 0,
                value_weight: bytes,
            },
        ))
    }

    fn all_policies() -> [Eviction; 4] {
        [
            Eviction::Adaptive,
            Eviction::Lru,
            Eviction::Lfu,
            Eviction::Fifo,
        ]
    }

    /// Fill every store far past its budget with entries of varied size; the charged weight never exceeds the
    /// budget (+1 %), and the store keeps a useful share of it.
    #[test]
    fn never_exceeds_its_byte_budget() {
        for eviction in all_policies() {
            let budget = 1 << 20;
            let l1 = L1::<Vec<u8>>::new(&L1Policy {
                budget_bytes: budget,
                eviction,
                ..L1Policy::default()
            });
            for i in 0..200_000u64 {
                let key = format!("key:{i}");
                l1.insert(key.clone(), entry(&key, 100 + (i * 7919) % 2000));
                if i % 1000 == 0 {
                    assert!(
                        l1.weight() <= budget + budget / 100,
                        "{eviction:?}: {} > {budget}",
                        l1.weight()
                    );
                }
                if i % 3 == 0 {
                    l1.get(&format!("key:{}", i / 2));
                }
            }
            assert!(
                l1.weight() <= budget + budget / 100,
                "{eviction:?}: {}",
                l1.weight()
            );
            assert!(
                l1.weight() >= budget / 2,
                "{eviction:?} keeps too little: {}",
                l1.weight()
            );
            assert!(l1.evictions() > 100_000, "{eviction:?}");
        }
    }

    #[test]
    fn an_entry_too_big_to_store_drops_the_older_value() {
        for eviction in all_policies() {
            let l1 = L1::<Vec<u8>>::new(&L1Policy {
                budget_bytes: 64 << 10,
                eviction,
                ..L1Policy::default()
            });
            l1.insert("k".into(), entry("k", 10));
            assert!(l1.get("k").is_some());
            l1.insert("k".into(), entry("k", 10 << 20));
            assert!(l1.get("k").is_none(), "{eviction:?}");
            assert!(l1.weight() <= 64 << 10);
        }
    }

    #[test]
    fn replace_and_remove_keep_the_weight_exact() {
        for eviction in all_policies() {
            let l1 = L1::<Vec<u8>>::new(&L1Policy {
                budget_bytes: 1 << 20,
                eviction,
                ..L1Policy::default()
            });
            let e1 = entry("a", 100);
            l1.insert("a".into(), e1.clone());
            assert_eq!(l1.weight(), e1.weight());
            let e2 = entry("a", 300);
            l1.insert("a".into(), e2.clone());
            assert_eq!(l1.weight(), e2.weight(), "{eviction:?}");
            assert_eq!(l1.len(), 1);
            l1.remove("a");
            assert_eq!(l1.weight(), 0, "{eviction:?}");
            l1.insert("b".into(), entry("b", 1));
            l1.clear();
            assert_eq!((l1.weight(), l1.len()), (0, 0), "{eviction:?}");
        }
    }

    #[test]
    fn classic_policies_evict_in_their_order() {
        let small = |eviction| {
            // One shard's budget holds exactly three of these entries in the sharded stores.
            L1::<Vec<u8>>::new(&L1Policy {
                budget_bytes: 3 * (ENTRY_OVERHEAD + 1) * sharded::SHARDS as u64,
                eviction,
                ..L1Policy::default()
            })
        };
        // Keys that land in one shard of `l1`, so the per-shard order is observable. 94 single-character keys over
        // 16 shards: the fullest shard holds at least 6, whatever the hash seed.
        let keys_of = |l1: &L1<Vec<u8>>| -> Vec<String> {
            let Store::Sharded(s) = &l1.store else {
                unreachable!()
            };
            let all: Vec<String> = (b'!'..=b'~').map(|c| char::from(c).to_string()).collect();
            let fullest = (0..sharded::SHARDS)
                .max_by_key(|&shard| all.iter().filter(|k| s.shard_of(k) == shard).count())
                .expect("at least one shard");
            let keys: Vec<String> = all
                .into_iter()
                .filter(|k| s.shard_of(k) == fullest)
                .take(4)
                .collect();
            assert_eq!(
                keys.len(),
                4,
                "pigeonhole: some shard holds four single-character keys"
            );
            keys
        };
        let fill = |l1: &L1<Vec<u8>>| {
            let keys = keys_of(l1);
            for k in &keys[..3] {
                l1.insert(k.clone(), entry(k, 0));
            }
            keys
        };
        // LRU: touching `a` makes `b` the victim.
        let lru = small(Eviction::Lru);
        let k = fill(&lru);
        let (a, b, d) = (&k[0], &k[1], &k[3]);
        lru.get(a);
        lru.insert(d.clone(), entry(d, 0));
        assert!(lru.peek(a).is_some() && lru.peek(b).is_none());
        // FIFO: touching `a` does not save it.
        let fifo = small(Eviction::Fifo);
        let k = fill(&fifo);
        let (a, b, d) = (&k[0], &k[1], &k[3]);
        fifo.get(a);
        fifo.insert(d.clone(), entry(d, 0));
        assert!(fifo.peek(a).is_none() && fifo.peek(b).is_some());
        // LFU: `a` and `c` used more than `b`; `b` goes.
        let lfu = small(Eviction::Lfu);
        let k = fill(&lfu);
        let (a, b, c, d) = (&k[0], &k[1], &k[2], &k[3]);
        for _ in 0..3 {
            lfu.get(a);
            lfu.get(c);
        }
        lfu.insert(d.clone(), entry(d, 0));
        assert!(lfu.peek(a).is_some() && lfu.peek(c).is_some() && lfu.peek(b).is_none());
    }
}
