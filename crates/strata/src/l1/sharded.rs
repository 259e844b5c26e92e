//! LRU, LFU and FIFO stores: `SHARDS` mutex-guarded maps, each with an equal share of the byte budget.
//!
//! Written by hand (over the `lru` crate's ordered map for LRU and FIFO) because no maintained crate offers all
//! three with a byte budget and exact weight accounting. The lock is a `parking_lot::Mutex`, not an `RwLock`: a
//! hit mutates the order (LRU promotion, LFU counts), and nothing is awaited while it is held.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;
use strata_core::Eviction;

use crate::entry::Entry;

pub(crate) const SHARDS: usize = 16;

pub(crate) struct Sharded<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: ahash::RandomState,
    shard_budget: u64,
    evictions: Arc<AtomicU64>,
}

struct Shard<V> {
    order: Order<V>,
    weight: u64,
}

enum Order<V> {
    /// LRU promotes on `get`; FIFO never does (it uses `peek`).
    Recency {
        map: LruCache<String, Arc<Entry<V>>>,
        promote: bool,
    },
    Frequency(Lfu<V>),
}

struct Lfu<V> {
    map: HashMap<String, (Arc<Entry<V>>, u64, u64)>,
    /// (use count, last-touch tick, key): the first element is the victim.
    queue: BTreeSet<(u64, u64, String)>,
    tick: u64,
}

impl<V> Sharded<V> {
    pub(crate) fn new(eviction: Eviction, budget: u64, evictions: Arc<AtomicU64>) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    order: match eviction {
                        Eviction::Lfu => Order::Frequency(Lfu {
                            map: HashMap::new(),
                            queue: BTreeSet::new(),
                            tick: 0,
                        }),
                        _ => Order::Recency {
                            map: LruCache::unbounded(),
                            promote: eviction != Eviction::Fifo,
                        },
                    },
                    weight: 0,
                })
            })
            .collect();
        Self {
            shards,
            hasher: ahash::RandomState::new(),
            shard_budget: (budget / SHARDS as u64).max(1),
            evictions,
        }
    }

    pub(crate) fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn shard(&self, key: &str) -> &Mutex<Shard<V>> {
        &self.shards[self.shard_of(key)]
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Entry<V>>> {
        let mut shard = self.shard(key).lock();
        match &mut shard.order {
            Order::Recency { map, promote: true } => map.get(key).cloned(),
            Order::Recency {
                map,
                promote: false,
            } => map.peek(key).cloned(),
            Order::Frequency(lfu) => lfu.touch(key),
        }
    }

    pub(crate) fn peek(&self, key: &str) -> Option<Arc<Entry<V>>> {
        let shard = self.shard(key).lock();
        match &shard.order {
            Order::Recency { map, .. } => map.peek(key).cloned(),
            Order::Frequency(lfu) => lfu.map.get(key).map(|(e, _, _)| e.clone()),
        }
    }

    pub(crate) fn insert(&self, key: String, entry: Arc<Entry<V>>) {
        let mut guard = self.shard(&key).lock();
        let shard = &mut *guard;
        if let Some(old) = shard.order.remove(&key) {
            shard.weight -= old.weight;
        }
        if entry.weight > self.shard_budget {
            self.evictions.fetch_add(1, Ordering::Relaxed);
            return;
        }
        while shard.weight + entry.weight > self.shard_budget {
            match shard.order.pop_victim() {
                Some(victim) => {
                    shard.weight -= victim.weight;
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                None => break,
            }
        }
        shard.weight += entry.weight;
        shard.order.push(key, entry);
    }

    pub(crate) fn remove(&self, key: &str) {
        let mut shard = self.shard(key).lock();
        if let Some(old) = shard.order.remove(key) {
            shard.weight -= old.weight;
        }
    }

    pub(crate) fn clear(&self) {
        for s in self.shards.iter() {
            let mut shard = s.lock();
            while shard.order.pop_victim().is_some() {}
            shard.weight = 0;
        }
    }

    pub(crate) fn weight(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().weight).sum()
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| match &s.lock().order {
                Order::Recency { map, .. } => map.len(),
                Order::Frequency(lfu) => lfu.map.len(),
            })
            .sum()
    }
}

impl<V> Order<V> {
    fn remove(&mut self, key: &str) -> Option<Arc<Entry<V>>> {
        match self {
            Order::Recency { map, .. } => map.pop(key),
            Order::Frequency(lfu) => {
                let (entry, count, tick) = lfu.map.remove(key)?;
                lfu.queue.remove(&(count, tick, key.to_owned()));
                Some(entry)
            }
        }
    }

    fn pop_victim(&mut self) -> Option<Arc<Entry<V>>> {
        match self {
            Order::Recency { map, .. } => map.pop_lru().map(|(_, e)| e),
            Order::Frequency(lfu) => {
                let (_, _, key) = lfu.queue.pop_first()?;
                lfu.map.remove(&key).map(|(e, _, _)| e)
            }
        }
    }

    fn push(&mut self, key: String, entry: Arc<Entry<V>>) {
        match self {
            Order::Recency { map, .. } => {
                map.push(key, entry);
            }
            Order::Frequency(lfu) => {
                lfu.tick += 1;
                lfu.queue.insert((1, lfu.tick, key.clone()));
                lfu.map.insert(key, (entry, 1, lfu.tick));
            }
        }
    }
}

impl<V> Lfu<V> {
    fn touch(&mut self, key: &str) -> Option<Arc<Entry<V>>> {
        let (entry, count, tick) = self.map.get_mut(key)?;
        let owned = key.to_owned();
        self.queue.remove(&(*count, *tick, owned.clone()));
        self.tick += 1;
        *count += 1;
        *tick = self.tick;
        self.queue.insert((*count, *tick, owned));
        Some(entry.clone())
    }
}
