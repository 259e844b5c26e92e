//! The fill: building an entry from a load and storing it — in L1 under the key's shard lock (never over a greater
//! version; capped while the node's caches are untrusted; only hot keys when L1 holds pins only), and in L2 under
//! the load's fence (a fill that began before an invalidation is refused there), hot keys' replicas included.

use std::sync::Arc;
use std::time::Duration;

use strata_core::{
    Envelope, EnvelopeKind, Error, Fence, Fetched, FillOutcome, LeaseToken, UnixMillis,
};

use super::state::millis;
use super::Inner;
use crate::entry::{Entry, EntryKind, EntryParts};

impl<V: Send + Sync + 'static> Inner<V> {
    /// The entry for what a load (or a write) returned, with the policy's TTL (± jitter, capped by `l1.max_ttl`)
    /// and windows. `took`: the load's duration, XFetch's delta.
    pub(super) fn make_entry(&self, key: &str, fetched: Fetched<V>, took: Duration) -> Entry<V> {
        let now = self.clock.now();
        let delta_ms = took.as_millis().min(u32::MAX as u128) as u32;
        let mut tags = fetched.tags;
        if let (Some(tagger), Some(v)) = (&self.tagger, &fetched.value) {
            for t in tagger(key, v) {
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
        }
        let (value, fresh_until, stale_until, value_weight) = match fetched.value {
            Some(v) => {
                let mut ttl = jittered(self.policy.ttl, self.policy.jitter);
                if let Some(own) = fetched.ttl {
                    ttl = ttl.min(own);
                }
                if let Some(cap) = self.policy.l1.max_ttl {
                    ttl = ttl.min(cap);
                }
                let fresh_until = now + millis(ttl).max(1);
                let stale_until = fresh_until + millis(self.policy.retain_after_fresh());
                let weight = (self.weigher)(&v) as u64;
                (Some(Arc::new(v)), fresh_until, stale_until, weight)
            }
            None => {
                let ttl = fetched.ttl.map_or(self.policy.negative_ttl, |own| {
                    own.min(self.policy.negative_ttl)
                });
                let fresh_until = now + millis(ttl);
                (None, fresh_until, fresh_until, 0)
            }
        };
        Entry::new(
            key,
            EntryParts {
                value,
                created_at: now,
                fresh_until,
                stale_until,
                version: fetched.version,
                tags,
                delta_ms,
                value_weight,
            },
        )
    }

    /// Stores `entry` in L1 unless a live entry holds a greater version. Call with the key's flight shard locked.
    pub(super) fn fill_locked(&self, key: &str, mut entry: Arc<Entry<V>>) -> bool {
        let Some(l1) = &self.l1 else { return false };
        if self.pins_only {
            match self.pin(key, &entry) {
                Some(pinned) => entry = pinned,
                None => return false,
            }
        }
        if entry.kind == EntryKind::Negative && self.policy.negative_ttl.is_zero() {
            l1.remove(key);
            return false;
        }
        let now = self.clock.now();
        if let Some(bound) = self.untrusted_bound(now) {
            // Filled while the bus or the change feed is not confirmed live: a write elsewhere may not have
            // reached this node, so the copy lives no longer than the bound.
            entry = Arc::new(entry.expiring_by(now + bound));
        }
        if let (Some(existing), Some(new)) = (l1.peek(key), entry.version) {
            if !existing.is_expired(self.clock.now())
                && existing.version.is_some_and(|old| new < old)
            {
                self.counters.fills_refused.inc();
                return false;
            }
        }
        l1.insert(key.to_owned(), entry);
        true
    }

    /// With L1 off and hot-key protection on, only hot keys' entries go to L1, their life capped by `pin_ttl`.
    fn pin(&self, key: &str, entry: &Arc<Entry<V>>) -> Option<Arc<Entry<V>>> {
        if entry.kind == EntryKind::Tombstone || !self.hot.as_ref().is_some_and(|h| h.is_hot(key)) {
            return None;
        }
        self.counters.pinned.inc();
        let until = self.clock.now() + millis(self.policy.hot_keys.pin_ttl);
        Some(Arc::new(entry.expiring_by(until)))
    }

    /// Stores a loaded entry in L2 under its fence (the lookup's tier time `started`, the lease if held). Returns
    /// whether L2 stored it; ending the lease is the caller's (see [`super::lease`]).
    pub(super) async fn fill_l2(
        &self,
        key: &str,
        entry: &Entry<V>,
        started: UnixMillis,
        lease: Option<&LeaseToken>,
    ) -> bool {
        let l2 = self.ns_l2();
        if l2.link.blocks(&self.name, key, &entry.tags) {
            return false;
        }
        let Some(env) = self.envelope(entry) else {
            return false;
        };
        let fence = Fence {
            started_at: Some(started),
            lease,
        };
        let now = l2.link.to_tier(self.clock.now());
        let stored = matches!(
            self.fill_at(key, &env, now, fence).await,
            Ok(FillOutcome::Stored)
        );
        if !stored {
            self.counters.fills_refused.inc();
        }
        stored
    }

    /// Copies a fresh entry to a replica for at most `pin_ttl`, fenced by the entry's own stamp: a replica write
    /// that lands after an invalidation of the key (which tombstones every replica) is refused.
    pub(super) async fn copy_to_replica(&self, replica: &str, e: &Entry<V>, tier_now: UnixMillis) {
        let Some(mut env) = self.envelope(e) else {
            return;
        };
        let until = tier_now + millis(self.policy.hot_keys.pin_ttl);
        env.fresh_until = env.fresh_until.min(until);
        env.stale_until = env.stale_until.min(until);
        let fence = Fence {
            started_at: Some(e.stamp),
            lease: None,
        };
        let _ = self.fill_at(replica, &env, tier_now, fence).await;
    }

    /// One fenced fill of the L2 key `at` (the key itself or a replica), at tier time `now`.
    async fn fill_at(
        &self,
        at: &str,
        env: &Envelope,
        now: UnixMillis,
        fence: Fence<'_>,
    ) -> Result<FillOutcome, Error> {
        let l2 = self.ns_l2();
        l2.link
            .call(
                l2.link
                    .tier
                    .fill(&self.name, at, env, l2.compression, now, fence),
            )
            .await
    }

    /// The envelope of an L1 entry, in tier time. `None` if the value does not encode (counted as corrupt).
    pub(super) fn envelope(&self, entry: &Entry<V>) -> Option<Envelope> {
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

/// `ttl` spread uniformly over ± `jitter`.
fn jittered(ttl: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return ttl;
    }
    let factor = 1.0 + jitter * (2.0 * rand::random::<f64>() - 1.0);
    ttl.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_band_and_spreads() {
        let ttl = Duration::from_secs(100);
        let samples: Vec<Duration> = (0..2000).map(|_| jittered(ttl, 0.1)).collect();
        assert!(samples
            .iter()
            .all(|d| *d >= Duration::from_secs(90) && *d <= Duration::from_secs(110)));
        let (min, max) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
        assert!(
            *max - *min > Duration::from_secs(15),
            "jitter does not spread: {min:?}..{max:?}"
        );
        assert_eq!(jittered(ttl, 0.0), ttl);
    }
}
