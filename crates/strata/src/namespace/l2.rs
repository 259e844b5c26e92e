//! A namespace's use of the shared tier (L2): lookups, leases, fenced fills, writes and barriers.
//!
//! # Read path, steps 3–4 (DESIGN §4)
//! Everything here runs inside the detached load task of a flight, so a caller that goes away cancels nothing and
//! a process holds at most one L2 round trip per key at a time.
//! 1. Look the key up. A fresh entry fills L1 (its life capped by the entry's remaining life in L2 and by
//!    `l1.max_ttl`) and answers every waiter (`Hit(L2)`). An entry inside the stale-while-revalidate window answers
//!    the waiters at once (`Stale(Revalidating)`) and the task goes on refreshing under a new flight. An entry in
//!    the fail-safe window is kept as the fallback if the source fails.
//! 2. With distributed coalescing, ask for the key's lease. The holder loads. A loser waits — woken by the
//!    holder's `Filled` bus message, with a backing-off timer in case the message is lost — and looks again; it
//!    answers with a stale value at once when it has one, and loads itself once `lease_wait` has passed.
//! 3. After the load, fill L2 under the fence (lease, versions, load start), then tell the waiting nodes.
//!
//! An L2 entry reads as absent when it is a tombstone, lies behind a tag or generation barrier, does not decode
//! (counted as corrupt), or when an invalidation of the key still waits for replay ([`crate::shared`]).
//!
//! # Barriers
//! Tag and generation barriers live in L2. Each node caches the namespace's barriers for at most
//! [`BARRIER_STALENESS`]; a tag or clear message from the bus drops the cache at once, so with a bus the staleness
//! is the bus latency and without one it is bounded by `BARRIER_STALENESS`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_core::{
    Barriers, Compression, Envelope, EnvelopeKind, Error, Fence, FillOutcome, Invalidation,
    LeaseGrant, LeaseToken, Stamped, UnixMillis,
};
use tokio::sync::Notify;

use super::Inner;
use crate::codec::Codec;
use crate::entry::{Entry, EntryKind};
use crate::flight::{Flight, Origin};
use crate::lookup::StaleReason;
use crate::shared::{SharedLink, Target};

/// How long a node trusts its cached copy of a namespace's barriers.
pub const BARRIER_STALENESS: Duration = Duration::from_secs(1);

/// The per-namespace L2 state.
pub(crate) struct NsL2<V> {
    pub link: Arc<SharedLink>,
    pub codec: Arc<dyn Codec<V>>,
    pub compression: Compression,
    /// The barriers and the local time they were read at.
    barriers: Mutex<Option<(Arc<Barriers>, UnixMillis)>>,
    /// Loads waiting for another node's lease, woken by `Filled` messages.
    lease_waits: Mutex<HashMap<String, Arc<Notify>>>,
}

impl<V> NsL2<V> {
    pub(crate) fn new(
        link: Arc<SharedLink>,
        codec: Arc<dyn Codec<V>>,
        compress_above: Option<usize>,
    ) -> Self {
        Self {
            link,
            codec,
            compression: compress_above.map_or(Compression::None, Compression::Lz4Above),
            barriers: Mutex::new(None),
            lease_waits: Mutex::new(HashMap::new()),
        }
    }

    /// Another node filled `key` (or gave its lease up): wake the load waiting for it.
    pub(crate) fn wake(&self, key: &str) {
        if let Some(n) = self.lease_waits.lock().get(key) {
            n.notify_one();
        }
    }

    /// Forgets the cached barriers (a tag or generation invalidation arrived).
    pub(crate) fn forget_barriers(&self) {
        *self.barriers.lock() = None;
    }
}

/// What L2 holds for a key, classified.
pub(crate) enum Found<V> {
    Fresh(Arc<Entry<V>>),
    /// Stale; `true` inside the stale-while-revalidate window, `false` in the fail-safe window.
    Stale(Arc<Entry<V>>, bool),
    Absent,
}

/// The entry a refresh replaces: its creation time (local) and L2 stamp (0 if it was not read from L2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refreshing {
    pub created_at: UnixMillis,
    pub stamp: UnixMillis,
}

impl Refreshing {
    pub(crate) fn of<V>(e: &Entry<V>) -> Self {
        Self {
            created_at: e.created_at,
            stamp: e.stamp,
        }
    }

    /// Whether the L2 entry `e` is newer than the entry being refreshed: another node refreshed it already.
    /// Stamps are compared exactly when both come from L2 (local times derived from them wobble with the RTT).
    fn is_older_than<V>(&self, e: &Entry<V>) -> bool {
        if self.stamp != 0 {
            e.stamp > self.stamp
        } else {
            e.created_at > self.created_at
        }
    }
}

/// The flight a load goes on under, and its stale fallback.
type GoOn<V> = (Arc<Flight<V>>, Option<Arc<Entry<V>>>);

/// Where a load stands after consulting L2: it must still load, with this fence.
pub(crate) struct Pending<V> {
    pub key: String,
    pub flight: Arc<Flight<V>>,
    /// Tier time of the lookup before the load, and the lease, if any; `None`: do not fill L2.
    pub fence: Option<(UnixMillis, Option<LeaseToken>)>,
    /// A stale value to serve if the source fails.
    pub fallback: Option<Arc<Entry<V>>>,
}

impl<V: Send + Sync + 'static> Inner<V> {
    fn ns_l2(&self) -> &NsL2<V> {
        self.l2.as_ref().expect("called only with L2")
    }

    /// The namespace's barriers, read from L2 when the cached copy is older than [`BARRIER_STALENESS`]. On error,
    /// the last copy (or none).
    async fn barriers(&self) -> Arc<Barriers> {
        let l2 = self.ns_l2();
        let now = self.clock.now();
        let cached = l2.barriers.lock().clone();
        if let Some((b, at)) = &cached {
            if now < at + BARRIER_STALENESS.as_millis() as u64 {
                return b.clone();
            }
        }
        match l2.link.call(l2.link.tier.barriers(&self.name)).await {
            Ok(b) => {
                let b = Arc::new(b);
                *l2.barriers.lock() = Some((b.clone(), now));
                b
            }
            Err(_) => cached.map(|(b, _)| b).unwrap_or_default(),
        }
    }

    /// Looks `key` up in L2 and classifies what is there. `Err`: L2 cannot be used for this key now.
    pub(crate) async fn l2_lookup(&self, key: &str) -> Result<(Found<V>, UnixMillis), Error> {
        self.l2_lookup_at(key, key).await
    }

    /// [`l2_lookup`](Self::l2_lookup) of `key`, read from the L2 key `at` (the key itself or one of its replicas).
    async fn l2_lookup_at(&self, key: &str, at: &str) -> Result<(Found<V>, UnixMillis), Error> {
        let l2 = self.ns_l2();
        if l2.link.blocks(&self.name, key, &[]) {
            return Err(pending_replay());
        }
        let (stamped, tier_now) = l2.link.call(l2.link.tier.lookup(&self.name, at)).await?;
        let barriers = self.barriers().await;
        Ok((self.classify(key, stamped, tier_now, &barriers), tier_now))
    }

    /// [`l2_lookup`](Self::l2_lookup) for several keys in one round trip.
    async fn l2_lookup_many(&self, keys: &[&str]) -> Result<(Vec<Found<V>>, UnixMillis), Error> {
        let l2 = self.ns_l2();
        let (stamped, tier_now) = l2
            .link
            .call(l2.link.tier.lookup_many(&self.name, keys))
            .await?;
        let barriers = self.barriers().await;
        let found = keys
            .iter()
            .zip(stamped)
            .map(|(key, s)| {
                if l2.link.blocks(&self.name, key, &[]) {
                    Found::Absent
                } else {
                    self.classify(key, s, tier_now, &barriers)
                }
            })
            .collect();
        Ok((found, tier_now))
    }

    fn classify(
        &self,
        key: &str,
        stamped: Option<Stamped>,
        tier_now: UnixMillis,
        barriers: &Barriers,
    ) -> Found<V> {
        let l2 = self.ns_l2();
        let local_now = self.clock.now();
        l2.link.observe_tier_time(tier_now, local_now);
        let Some(Stamped {
            envelope: env,
            stamp,
        }) = stamped
        else {
            return Found::Absent;
        };
        if tier_now >= env.stale_until
            || barriers.blocks(&env.tags, stamp)
            || l2.link.blocks(&self.name, key, &env.tags)
        {
            return Found::Absent;
        }
        let value = match env.kind {
            EnvelopeKind::Tombstone => return Found::Absent,
            EnvelopeKind::Absent => None,
            EnvelopeKind::Value(ref bytes) => match l2.codec.decode(bytes) {
                Ok(v) => Some(Arc::new(v)),
                Err(_) => {
                    l2.link
                        .corrupt
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Found::Absent;
                }
            },
        };
        // Tier time → local time, relative to the lookup.
        let local = |t: UnixMillis| {
            if t >= tier_now {
                local_now.saturating_add(t - tier_now)
            } else {
                local_now.saturating_sub(tier_now - t)
            }
        };
        let mut fresh_until = local(env.fresh_until);
        if let Some(cap) = self.policy.l1.max_ttl {
            fresh_until = fresh_until.min(local_now + super::millis(cap));
        }
        let weight = value.as_ref().map_or(0, |v| (self.weigher)(v) as u64);
        let mut entry = Entry::new(
            key,
            value,
            local(stamp),
            fresh_until,
            local(env.stale_until),
            env.version,
            env.tags,
            env.delta_ms,
            weight,
        );
        entry.stamp = stamp;
        let entry = Arc::new(entry);
        if tier_now < env.fresh_until && local_now < fresh_until {
            Found::Fresh(entry)
        } else {
            let revalidate = tier_now
                < env
                    .fresh_until
                    .saturating_add(super::millis(self.policy.stale_for));
            Found::Stale(entry, revalidate)
        }
    }

    /// Step 1–2 of the module docs for one key. `None`: the flight was answered from L2 (or by another node's
    /// load) and no load is needed.
    pub(crate) async fn consult_l2(
        &self,
        key: String,
        flight: Arc<Flight<V>>,
        l1_fallback: Option<Arc<Entry<V>>>,
        newer_than: Option<Refreshing>,
    ) -> Option<Pending<V>> {
        let replica = self.replica_for(&key);
        if let Some(r) = &replica {
            if let Ok((Found::Fresh(e), _)) = self.l2_lookup_at(&key, r).await {
                if newer_than.is_none_or(|old| old.is_older_than(&e)) {
                    self.settle(&key, &flight, Ok((e, Origin::Shared)));
                    return None;
                }
            }
        }
        let (found, mut started) = match self.l2_lookup(&key).await {
            Ok((found, started)) => {
                if let (Some(r), Found::Fresh(e)) = (&replica, &found) {
                    self.copy_to_replica(r, e, started).await;
                }
                (found, started)
            }
            Err(_) => {
                return Some(Pending {
                    key,
                    flight,
                    fence: None,
                    fallback: None,
                })
            }
        };
        let (flight, fallback) = self.take_found(&key, flight, found, newer_than)?;
        if !self.policy.coalescing.distributed {
            return Some(Pending {
                key,
                flight,
                fence: Some((started, None)),
                fallback,
            });
        }
        let l2 = self.ns_l2();
        let notify = Arc::new(Notify::new());
        l2.lease_waits.lock().insert(key.clone(), notify.clone());
        let deadline = tokio::time::Instant::now() + self.policy.coalescing.lease_wait;
        let ttl = self.policy.load_timeout.hard + Duration::from_secs(1);
        let mut backoff = Duration::from_millis(10);
        let outcome = loop {
            let grant = l2
                .link
                .call(l2.link.tier.lease(
                    &self.name,
                    &key,
                    ttl,
                    self.policy.coalescing.lease_grant_interval,
                ))
                .await;
            match grant {
                Ok(LeaseGrant::Granted(token)) => break Some(Some((started, Some(token)))),
                Ok(LeaseGrant::Held | LeaseGrant::RateLimited) => {
                    self.counters.lease_waits.inc();
                    if let Some(stale) = fallback.clone().or_else(|| l1_fallback.clone()) {
                        // Someone else is loading: answer with what we have.
                        self.settle(
                            &key,
                            &flight,
                            Ok((stale, Origin::Stale(StaleReason::Revalidating))),
                        );
                        break None;
                    }
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        break Some(Some((started, None)));
                    }
                    let _ =
                        tokio::time::timeout(backoff.min(deadline - now), notify.notified()).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                    match self.l2_lookup(&key).await {
                        Ok((Found::Fresh(e), _)) => {
                            self.settle(&key, &flight, Ok((e, Origin::Shared)));
                            break None;
                        }
                        Ok((_, t)) => started = t,
                        Err(_) => break Some(None),
                    }
                }
                Err(_) => break Some(Some((started, None))),
            }
        };
        {
            let mut waits = l2.lease_waits.lock();
            if waits.get(&key).is_some_and(|n| Arc::ptr_eq(n, &notify)) {
                waits.remove(&key);
            }
        }
        outcome.map(|fence| Pending {
            key,
            flight,
            fence,
            fallback,
        })
    }

    /// Steps 1 of the module docs for several keys with one lookup (no leases). Returns the keys still to load.
    pub(crate) async fn consult_l2_many(
        &self,
        flights: Vec<(String, Arc<Flight<V>>)>,
        refreshing: &HashMap<String, Refreshing>,
    ) -> Vec<Pending<V>> {
        let keys: Vec<&str> = flights.iter().map(|(k, _)| k.as_str()).collect();
        let looked = self.l2_lookup_many(&keys).await;
        let (found, started) = match looked {
            Ok((found, t)) => (found, Some(t)),
            Err(_) => (flights.iter().map(|_| Found::Absent).collect(), None),
        };
        flights
            .into_iter()
            .zip(found)
            .filter_map(|((key, flight), found)| {
                let newer_than = refreshing.get(&key).copied();
                let (flight, fallback) = self.take_found(&key, flight, found, newer_than)?;
                Some(Pending {
                    key,
                    flight,
                    fence: started.map(|t| (t, None)),
                    fallback,
                })
            })
            .collect()
    }

    /// Answers the flight from a fresh or revalidating L2 entry (for a refresh: only from an entry newer than
    /// `newer_than`). Returns the flight to go on loading under (a new one after a stale answer) and the
    /// fallback, or `None` when nothing remains to do.
    fn take_found(
        &self,
        key: &str,
        flight: Arc<Flight<V>>,
        found: Found<V>,
        newer_than: Option<Refreshing>,
    ) -> Option<GoOn<V>> {
        match found {
            // A refresh that finds the very entry it refreshes (or an older one) must still load.
            Found::Fresh(e) if newer_than.is_some_and(|old| !old.is_older_than(&e)) => {
                Some((flight, Some(e)))
            }
            Found::Fresh(e) => {
                self.settle(key, &flight, Ok((e, Origin::Shared)));
                None
            }
            Found::Stale(e, true) => {
                self.counters.refreshes.inc();
                let next = self.settle_then(
                    key,
                    &flight,
                    Ok((e.clone(), Origin::Stale(StaleReason::Revalidating))),
                    true,
                )?;
                Some((next, Some(e)))
            }
            Found::Stale(e, false) => Some((flight, Some(e))),
            Found::Absent => Some((flight, None)),
        }
    }

    /// The replica to read for a hot key, when the policy replicates hot keys in L2.
    fn replica_for(&self, key: &str) -> Option<String> {
        let n = self.policy.hot_keys.l2_replicas;
        if n == 0 || !self.hot.as_ref().is_some_and(|h| h.is_hot(key)) {
            return None;
        }
        let i = rand::random::<u8>() % n;
        crate::shared::replica_keys(key, n).nth(usize::from(i))
    }

    /// Copies a fresh entry to a replica for at most `pin_ttl`, fenced by the entry's own stamp: a replica write
    /// that lands after an invalidation of the key (which tombstones every replica) is refused.
    async fn copy_to_replica(&self, replica: &str, e: &Entry<V>, tier_now: UnixMillis) {
        let l2 = self.ns_l2();
        let Some(mut env) = self.envelope(e) else {
            return;
        };
        let until = tier_now + super::millis(self.policy.hot_keys.pin_ttl);
        env.fresh_until = env.fresh_until.min(until);
        env.stale_until = env.stale_until.min(until);
        let fence = Fence {
            started_at: Some(e.stamp),
            lease: None,
        };
        let _ = l2
            .link
            .call(
                l2.link
                    .tier
                    .fill(&self.name, replica, &env, l2.compression, tier_now, fence),
            )
            .await;
    }

    /// Stores a loaded entry in L2 under its fence, then wakes the nodes waiting on the lease.
    pub(crate) async fn fill_l2(
        &self,
        key: &str,
        entry: &Entry<V>,
        started: UnixMillis,
        lease: Option<LeaseToken>,
    ) {
        let l2 = self.ns_l2();
        let mut stored = false;
        if !l2.link.blocks(&self.name, key, &entry.tags) {
            if let Some(env) = self.envelope(entry) {
                let fence = Fence {
                    started_at: Some(started),
                    lease: lease.as_ref(),
                };
                let now = l2.link.to_tier(self.clock.now());
                let outcome = l2
                    .link
                    .call(
                        l2.link
                            .tier
                            .fill(&self.name, key, &env, l2.compression, now, fence),
                    )
                    .await;
                stored = matches!(outcome, Ok(FillOutcome::Stored));
                if !stored {
                    self.counters.fills_refused.inc();
                }
            }
        }
        if let Some(token) = lease {
            // A stored fill ends the lease; a refused one leaves it: give it back so nobody waits it out.
            if stored {
                self.publish(
                    Invalidation::Filled {
                        key: key.to_owned(),
                    },
                    None,
                );
            } else {
                self.release_lease(key, token).await;
            }
        }
    }

    /// Gives back a lease whose load failed, and tells the waiting nodes to look again.
    pub(crate) async fn release_lease(&self, key: &str, token: LeaseToken) {
        let l2 = self.ns_l2();
        let _ = l2
            .link
            .call(l2.link.tier.release(&self.name, key, &token))
            .await;
        self.publish(
            Invalidation::Filled {
                key: key.to_owned(),
            },
            None,
        );
    }

    /// Writes an entry to L2 (write-through). On failure the key's invalidation is queued for replay, so the old
    /// L2 value cannot outlive the write. Returns whether it was stored.
    pub(crate) async fn write_l2(&self, key: &str, entry: &Entry<V>) -> bool {
        let l2 = self.ns_l2();
        let Some(env) = self.envelope(entry) else {
            self.invalidate_l2(key, entry.version).await;
            return false;
        };
        let now = l2.link.to_tier(self.clock.now());
        let replicas = self.policy.hot_keys.l2_replicas;
        let hold = self.policy.tombstone_hold_off;
        let write = l2
            .link
            .call(
                l2.link
                    .tier
                    .write(&self.name, key, &env, l2.compression, now),
            )
            .await;
        // Replicas hold the old value: tombstone them.
        let copies = futures::future::join_all(
            crate::shared::replica_keys(key, replicas)
                .map(|r| async move {
                    l2.link
                        .call(l2.link.tier.invalidate(&self.name, &r, entry.version, hold))
                        .await
                })
                .collect::<Vec<_>>(),
        )
        .await;
        match write {
            Ok(o) if copies.iter().all(Result::is_ok) => o == FillOutcome::Stored,
            _ => {
                l2.link.enqueue(
                    Target::Key {
                        ns: self.name.clone(),
                        key: key.to_owned(),
                    },
                    entry.version,
                    hold,
                    replicas,
                );
                false
            }
        }
    }

    /// Whether an invalidation of `key` (or of its namespace) still waits for replay: L2 may hold the value it
    /// replaced.
    pub(crate) fn invalidation_pending(&self, key: &str) -> bool {
        self.l2
            .as_ref()
            .is_some_and(|l2| l2.link.blocks(&self.name, key, &[]))
    }

    /// Tombstones `key` in L2 (voiding its lease), or queues the tombstone for replay.
    pub(crate) async fn invalidate_l2(&self, key: &str, version: Option<u64>) {
        let l2 = self.ns_l2();
        let hold = self.policy.tombstone_hold_off;
        let replicas = self.policy.hot_keys.l2_replicas;
        let copies: Vec<String> = std::iter::once(key.to_owned())
            .chain(crate::shared::replica_keys(key, replicas))
            .collect();
        let results = futures::future::join_all(copies.iter().map(|k| {
            l2.link
                .call(l2.link.tier.invalidate(&self.name, k, version, hold))
        }))
        .await;
        if results.iter().any(Result::is_err) {
            let target = Target::Key {
                ns: self.name.clone(),
                key: key.to_owned(),
            };
            l2.link.enqueue(target, version, hold, replicas);
        }
    }

    /// Raises a tag (`Some`) or generation (`None`) barrier in L2, or queues it for replay.
    pub(crate) async fn raise_barrier_l2(&self, tag: Option<&str>) {
        let l2 = self.ns_l2();
        let keep = Duration::from_millis(self.barriers.keep_ms());
        let r = l2
            .link
            .call(l2.link.tier.raise_barrier(&self.name, tag, keep))
            .await;
        l2.forget_barriers();
        if r.is_err() {
            let ns = self.name.clone();
            let target = match tag {
                Some(tag) => Target::Tag {
                    ns,
                    tag: tag.to_owned(),
                },
                None => Target::Generation { ns },
            };
            l2.link.enqueue(target, None, keep, 0);
        }
    }

    /// The envelope of an L1 entry, in tier time. `None` if the value does not encode (counted as corrupt).
    fn envelope(&self, entry: &Entry<V>) -> Option<Envelope> {
        let l2 = self.ns_l2();
        let kind = match (&entry.value, entry.kind) {
            (_, EntryKind::Tombstone) => EnvelopeKind::Tombstone,
            (Some(v), _) => match l2.codec.encode(v) {
                Ok(bytes) => EnvelopeKind::Value(bytes),
                Err(_) => {
                    l2.link
                        .corrupt
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return None;
                }
            },
            (None, _) => EnvelopeKind::Absent,
        };
        let t = |local| l2.link.to_tier(local);
        Some(Envelope {
            created_at: t(entry.created_at),
            fresh_until: t(entry.fresh_until),
            stale_until: t(entry.stale_until),
            version: entry.version,
            tags: entry.tags.clone(),
            delta_ms: entry.delta_ms,
            etag: None,
            kind,
        })
    }
}

fn pending_replay() -> Error {
    Error::Unavailable {
        tier: strata_core::Tier::L2,
        message: "an invalidation of this key waits for replay".into(),
    }
}
