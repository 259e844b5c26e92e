//! Read stage 3a, the L2 step: what the shared tier holds for the keys a load task leads, as a value — an answer,
//! a stale answer after which the load goes on, or a [`FillPlan`] for the load (the fence to fill L2 under, the
//! lease when one was taken, a stale fallback). Nothing here settles a flight: the load task ([`super::load`])
//! acts on the step.
//!
//! # Read path, steps 3–4 (DESIGN §4)
//! Everything here runs inside the detached load task of a flight, so a caller that goes away cancels nothing and
//! a process holds at most one L2 round trip per key at a time.
//! 1. Look the key up. A fresh entry fills L1 (its life capped by the entry's remaining life in L2 and by
//!    `l1.max_ttl`) and answers every waiter (`Hit(L2)`). An entry inside the stale-while-revalidate window answers
//!    the waiters at once (`Stale(Revalidating)`) and the task goes on refreshing under a new flight. An entry in
//!    the fail-safe window is kept as the fallback if the source fails.
//! 2. With distributed coalescing, ask for the key's lease ([`super::lease`]). The holder loads. A loser waits —
//!    woken by the holder's `Filled` bus message, with a backing-off timer in case the message is lost — and looks
//!    again; it answers with a stale value at once when it has one, and loads itself once `lease_wait` has passed.
//! 3. After the load, the fill ([`super::fill`]) stores the entry in L2 under the fence, then the lease ends.
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
use strata_core::{Barriers, Compression, EnvelopeKind, Error, LeaseGrant, Stamped, UnixMillis};
use tokio::sync::Notify;

use super::lease::LeaseGuard;
use super::state::millis;
use super::Inner;
use crate::codec::Codec;
use crate::entry::{Entry, EntryParts};
use crate::flight::{Flight, Origin};
use crate::lookup::StaleReason;
use crate::shared::SharedLink;

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
pub(super) enum InL2<V> {
    Fresh(Arc<Entry<V>>),
    /// Stale; `true` inside the stale-while-revalidate window, `false` in the fail-safe window.
    Stale(Arc<Entry<V>>, bool),
    Absent,
}

/// The entry a refresh replaces: its creation time (local) and L2 stamp (0 if it was not read from L2).
#[derive(Debug, Clone, Copy)]
pub(super) struct Refreshing {
    pub created_at: UnixMillis,
    pub stamp: UnixMillis,
}

impl Refreshing {
    pub(super) fn of<V>(e: &Entry<V>) -> Self {
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

/// What the L2 step decided for one flight.
pub(super) enum L2Step<V: Send + Sync + 'static> {
    /// Answered: a fresh L2 entry (`Origin::Shared`), or a stale value while another node holds the lease
    /// (`Origin::Stale`). Nothing to load.
    Answered(Arc<Entry<V>>, Origin),
    /// L2 holds a stale-while-revalidate entry: answer the waiters with it now, and load under a new flight with it
    /// as the fallback.
    StaleThenLoad(Arc<Entry<V>>, FillPlan<V>),
    /// Load from the source, then fill as planned.
    Load(FillPlan<V>),
}

/// How a load that L2 did not answer fills the tiers, and what it falls back on.
pub(super) struct FillPlan<V: Send + Sync + 'static> {
    pub fill: L2Fill<V>,
    /// A stale value to serve if the source fails.
    pub fallback: Option<Arc<Entry<V>>>,
}

/// Whether, and under which fence, a load fills L2.
pub(super) enum L2Fill<V: Send + Sync + 'static> {
    /// L2 could not be read (or is not trusted now): do not fill it.
    Skip,
    /// Fill under a fence: the tier time of the lookup before the load, and the key's lease if this node holds it.
    Fenced {
        started: UnixMillis,
        lease: Option<LeaseGuard<V>>,
    },
}

impl<V: Send + Sync + 'static> FillPlan<V> {
    /// No L2 to fill.
    pub(super) fn unfenced() -> Self {
        Self {
            fill: L2Fill::Skip,
            fallback: None,
        }
    }

    fn fenced(started: UnixMillis, fallback: Option<Arc<Entry<V>>>) -> Self {
        Self {
            fill: L2Fill::Fenced {
                started,
                lease: None,
            },
            fallback,
        }
    }

    pub(super) fn is_fenced(&self) -> bool {
        matches!(self.fill, L2Fill::Fenced { .. })
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    pub(super) fn ns_l2(&self) -> &NsL2<V> {
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
    pub(super) async fn l2_lookup(&self, key: &str) -> Result<(InL2<V>, UnixMillis), Error> {
        self.l2_lookup_at(key, key).await
    }

    /// [`l2_lookup`](Self::l2_lookup) of `key`, read from the L2 key `at` (the key itself or one of its replicas).
    async fn l2_lookup_at(&self, key: &str, at: &str) -> Result<(InL2<V>, UnixMillis), Error> {
        let l2 = self.ns_l2();
        if l2.link.blocks(&self.name, key, &[]) {
            return Err(pending_replay());
        }
        let (stamped, tier_now) = l2.link.call(l2.link.tier.lookup(&self.name, at)).await?;
        let barriers = self.barriers().await;
        Ok((self.classify(key, stamped, tier_now, &barriers), tier_now))
    }

    /// [`l2_lookup`](Self::l2_lookup) for several keys in one round trip.
    async fn l2_lookup_many(&self, keys: &[&str]) -> Result<(Vec<InL2<V>>, UnixMillis), Error> {
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
                    InL2::Absent
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
    ) -> InL2<V> {
        let l2 = self.ns_l2();
        let local_now = self.clock.now();
        l2.link.observe_tier_time(tier_now, local_now);
        let Some(Stamped {
            envelope: env,
            stamp,
        }) = stamped
        else {
            return InL2::Absent;
        };
        if tier_now >= env.stale_until
            || barriers.blocks(&env.tags, stamp)
            || l2.link.blocks(&self.name, key, &env.tags)
        {
            return InL2::Absent;
        }
        let value = match env.kind {
            EnvelopeKind::Tombstone => return InL2::Absent,
            EnvelopeKind::Absent => None,
            EnvelopeKind::Value(ref bytes) => match l2.codec.decode(bytes) {
                Ok(v) => Some(Arc::new(v)),
                Err(_) => {
                    l2.link
                        .corrupt
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return InL2::Absent;
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
        if let Some((tag, at)) = barriers.softened(&env.tags, stamp) {
            // A soft purge this node may not have heard of (it joined later, or missed the message): date it
            // here too, so the entry reads as soft-purged from L1 (see `Namespace::soft_purged_at`).
            self.barriers.raise_soft_unheard(tag, local(at));
        }
        let mut fresh_until = local(env.fresh_until);
        if let Some(cap) = self.policy.l1.max_ttl {
            fresh_until = fresh_until.min(local_now + millis(cap));
        }
        let weight = value.as_ref().map_or(0, |v| (self.weigher)(v) as u64);
        let mut entry = Entry::new(
            key,
            EntryParts {
                value,
                created_at: local(stamp),
                fresh_until,
                stale_until: local(env.stale_until),
                version: env.version,
                tags: env.tags,
                delta_ms: env.delta_ms,
                value_weight: weight,
            },
        );
        entry.stamp = stamp;
        let entry = Arc::new(entry);
        if tier_now < env.fresh_until && local_now < fresh_until {
            InL2::Fresh(entry)
        } else {
            let revalidate = tier_now
                < env
                    .fresh_until
                    .saturating_add(millis(self.policy.stale_for));
            InL2::Stale(entry, revalidate)
        }
    }

    /// Step 1 of the module docs for one key (the hot key's replica first, when it has one).
    pub(super) async fn l2_step(&self, key: &str, newer_than: Option<Refreshing>) -> L2Step<V> {
        let replica = self.replica_for(key);
        if let Some(r) = &replica {
            if let Ok((InL2::Fresh(e), _)) = self.l2_lookup_at(key, r).await {
                if newer_than.is_none_or(|old| old.is_older_than(&e)) {
                    return L2Step::Answered(e, Origin::Shared);
                }
            }
        }
        match self.l2_lookup(key).await {
            Ok((found, started)) => {
                if let (Some(r), InL2::Fresh(e)) = (&replica, &found) {
                    self.copy_to_replica(r, e, started).await;
                }
                self.step_for(found, Some(started), newer_than)
            }
            Err(_) => L2Step::Load(FillPlan::unfenced()),
        }
    }

    /// Step 1 of the module docs for several keys with one lookup (no leases), in the order of `flights`.
    pub(super) async fn l2_steps(
        &self,
        flights: &[(String, Arc<Flight<V>>)],
        refreshing: &HashMap<String, Refreshing>,
    ) -> Vec<L2Step<V>> {
        let keys: Vec<&str> = flights.iter().map(|(k, _)| k.as_str()).collect();
        let (found, started) = match self.l2_lookup_many(&keys).await {
            Ok((found, t)) => (found, Some(t)),
            Err(_) => (flights.iter().map(|_| InL2::Absent).collect(), None),
        };
        keys.iter()
            .zip(found)
            .map(|(key, found)| self.step_for(found, started, refreshing.get(*key).copied()))
            .collect()
    }

    /// The step for what L2 holds (for a refresh: an answer only from an entry newer than `newer_than`).
    /// `started`: the lookup's tier time (`None`: the lookup failed, so L2 is not filled).
    fn step_for(
        &self,
        found: InL2<V>,
        started: Option<UnixMillis>,
        newer_than: Option<Refreshing>,
    ) -> L2Step<V> {
        let plan = |fallback| match started {
            Some(t) => FillPlan::fenced(t, fallback),
            None => FillPlan {
                fill: L2Fill::Skip,
                fallback,
            },
        };
        match found {
            // A refresh that finds the very entry it refreshes (or an older one) must still load.
            InL2::Fresh(e) if newer_than.is_some_and(|old| !old.is_older_than(&e)) => {
                L2Step::Load(plan(Some(e)))
            }
            InL2::Fresh(e) => L2Step::Answered(e, Origin::Shared),
            InL2::Stale(e, true) => {
                self.counters.refreshes.inc();
                L2Step::StaleThenLoad(e.clone(), plan(Some(e)))
            }
            InL2::Stale(e, false) => L2Step::Load(plan(Some(e))),
            InL2::Absent => L2Step::Load(plan(None)),
        }
    }

    /// Step 2 of the module docs: takes the key's lease for a fenced plan, or waits for the node that holds it.
    /// `l1_fallback`: the caller's stale L1 value, answered (like the plan's fallback) while another node loads.
    pub(super) async fn lease_step(
        self: &Arc<Self>,
        key: &str,
        plan: FillPlan<V>,
        l1_fallback: Option<Arc<Entry<V>>>,
    ) -> L2Step<V> {
        let FillPlan {
            fill: L2Fill::Fenced { mut started, .. },
            fallback,
        } = plan
        else {
            return L2Step::Load(plan);
        };
        let l2 = self.ns_l2();
        let notify = Arc::new(Notify::new());
        l2.lease_waits.lock().insert(key.to_owned(), notify.clone());
        let deadline = tokio::time::Instant::now() + self.policy.coalescing.lease_wait;
        let ttl = self.policy.load_timeout.hard + Duration::from_secs(1);
        let mut backoff = Duration::from_millis(10);
        let step = loop {
            let grant = l2
                .link
                .call(l2.link.tier.lease(
                    &self.name,
                    key,
                    ttl,
                    self.policy.coalescing.lease_grant_interval,
                ))
                .await;
            match grant {
                Ok(LeaseGrant::Granted(token)) => {
                    break L2Step::Load(FillPlan {
                        fill: L2Fill::Fenced {
                            started,
                            lease: Some(LeaseGuard::new(self.clone(), key, token)),
                        },
                        fallback,
                    })
                }
                Ok(LeaseGrant::Held | LeaseGrant::RateLimited) => {
                    self.counters.lease_waits.inc();
                    if let Some(stale) = fallback.clone().or_else(|| l1_fallback.clone()) {
                        // Someone else is loading: answer with what we have.
                        break L2Step::Answered(stale, Origin::Stale(StaleReason::Revalidating));
                    }
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        break L2Step::Load(FillPlan::fenced(started, fallback));
                    }
                    let _ =
                        tokio::time::timeout(backoff.min(deadline - now), notify.notified()).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                    match self.l2_lookup(key).await {
                        Ok((InL2::Fresh(e), _)) => break L2Step::Answered(e, Origin::Shared),
                        Ok((_, t)) => started = t,
                        Err(_) => {
                            break L2Step::Load(FillPlan {
                                fill: L2Fill::Skip,
                                fallback,
                            })
                        }
                    }
                }
                Err(_) => break L2Step::Load(FillPlan::fenced(started, fallback)),
            }
        };
        {
            let mut waits = l2.lease_waits.lock();
            if waits.get(key).is_some_and(|n| Arc::ptr_eq(n, &notify)) {
                waits.remove(key);
            }
        }
        step
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
}

fn pending_replay() -> Error {
    Error::Unavailable {
        tier: strata_core::Tier::L2,
        message: "an invalidation of this key waits for replay".into(),
    }
}
