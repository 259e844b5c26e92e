//! Single-flight: at most one load per key per process.
//!
//! A load runs in a detached Tokio task, never inside a caller's future, so that
//! - a caller that is cancelled (its future dropped) cancels nothing: the other waiters still get the result, and
//!   "the leader went away" cannot hang anyone;
//! - a load that passes the soft timeout can finish in the background and still fill the cache.
//!
//! Every waiter receives the same outcome (value, absence or error) through a `watch` channel.
//!
//! Invariants, all enforced under the key's shard lock:
//! - a flight is in the map from the moment it starts until its outcome has been written to L1;
//! - a write to a key (`insert`, `invalidate`, `clear`) *poisons* the key's flight and removes it from the map, so
//!   a load that began before the write can never fill the cache after it (the "x=42 lands after x=43" race),
//!   and callers arriving after the write start a new load instead of joining the old one;
//! - the fill and the removal happen in one critical section, so there is no instant at which the key is neither
//!   in flight nor filled (which would let a second load start);
//! - while the node cannot trust its caches (its bus or change feed is silent), a caller does not join a flight
//!   older than the bound: that flight read L2 or the source before writes this node has not heard of, so it is
//!   poisoned and replaced (see [`Flights::join_or_register`]). A process that wakes from a stall would otherwise
//!   hand its new callers the answer of a load it began before the stall.
//!
//! The shard locks are `parking_lot` mutexes: nothing is awaited while holding one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use strata_core::Error;
use tokio::sync::watch;

use crate::entry::Entry;
use crate::lookup::StaleReason;

const SHARDS: usize = 64;

/// Where a flight's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The source (the loader ran).
    Loaded,
    /// A fresh entry of the shared tier.
    Shared,
    /// A stale entry, served for this reason.
    Stale(StaleReason),
}

/// The outcome every waiter of a flight receives.
pub(crate) type Outcome<V> = Result<(Arc<Entry<V>>, Origin), Error>;

pub(crate) struct Flight<V> {
    tx: watch::Sender<Option<Outcome<V>>>,
    poisoned: AtomicBool,
    /// When it was registered (cache clock).
    started: strata_core::UnixMillis,
}

impl<V> Flight<V> {
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    pub(crate) fn publish(&self, outcome: Outcome<V>) {
        self.tx.send_replace(Some(outcome));
    }

    /// Waits for the outcome.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future only stops this caller's wait; the load goes on.
    pub(crate) async fn wait(&self) -> Outcome<V> {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so it cannot be dropped while we wait: `wait_for` only returns a value.
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map(|v| v.clone())
            .expect("flight sender outlives its waiters");
        outcome.expect("wait_for returned a published outcome")
    }
}

pub(crate) type Shard<V> = HashMap<String, Arc<Flight<V>>>;

pub(crate) struct Flights<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: ahash::RandomState,
}

/// Whether this caller started the flight or joined one.
pub(crate) enum Role<V> {
    Leader(Arc<Flight<V>>),
    Follower(Arc<Flight<V>>),
}

impl<V> Flights<V> {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    pub(crate) fn lock(&self, key: &str) -> MutexGuard<'_, Shard<V>> {
        self.shards[(self.hasher.hash_one(key) as usize) % SHARDS].lock()
    }

    /// Joins the key's flight, or registers a new one whose caller must start the load. With `older_than`, a
    /// flight registered that many ms before `now` or earlier is not joined but poisoned and replaced.
    pub(crate) fn join_or_register(
        &self,
        key: &str,
        now: strata_core::UnixMillis,
        older_than: Option<u64>,
    ) -> Role<V> {
        let mut shard = self.lock(key);
        if let Some(f) = shard.get(key) {
            match older_than {
                Some(age) if now.saturating_sub(f.started) >= age => poison_locked(&mut shard, key),
                _ => return Role::Follower(f.clone()),
            }
        }
        Role::Leader(register_locked(&mut shard, key, now))
    }

    /// Poisons and forgets every flight (namespace-wide invalidation). The caller clears L1 while this runs.
    pub(crate) fn poison_all(&self, mut also: impl FnMut()) {
        let mut guards: Vec<_> = self.shards.iter().map(|s| s.lock()).collect();
        for g in guards.iter_mut() {
            for (_, f) in g.drain() {
                f.poison();
            }
        }
        also();
    }
}

/// Registers a new flight for `key` under an already held shard lock (the key must have none).
pub(crate) fn register_locked<V>(
    shard: &mut Shard<V>,
    key: &str,
    now: strata_core::UnixMillis,
) -> Arc<Flight<V>> {
    let flight = Arc::new(Flight {
        tx: watch::Sender::new(None),
        poisoned: AtomicBool::new(false),
        started: now,
    });
    shard.insert(key.to_owned(), flight.clone());
    flight
}

/// Poisons and removes the key's flight under an already held shard lock.
pub(crate) fn poison_locked<V>(shard: &mut Shard<V>, key: &str) {
    if let Some(f) = shard.remove(key) {
        f.poison();
    }
}

/// Removes the key's flight if it is still `flight` (a write may have replaced it).
pub(crate) fn remove_locked<V>(shard: &mut Shard<V>, key: &str, flight: &Arc<Flight<V>>) {
    if shard.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
        shard.remove(key);
    }
}
