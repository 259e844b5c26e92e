//! Turning a [`Batch`] into invalidations every node sees: the shared tier (L2) first, then the bus.
//!
//! The order matters: a node that drops its L1 copy on the bus message and reads again must find L2 already
//! tombstoned, never the old value. Each step is confirmed — [`Applier::apply`] returns `Ok` only when L2 has
//! taken every tombstone and barrier and the bus has accepted every message — because the CDC consumer
//! acknowledges a transaction's LSN (and the outbox relay deletes its rows) only after that. A failure returns the
//! error and the caller retries the whole batch: invalidations are idempotent, receivers drop duplicates by
//! `(origin, seq)` and a repeated tombstone only renews its hold-off.
//!
//! These are the engine's own L2 operations (`SharedTier::invalidate` with the hold-off and the hot-key replicas,
//! `SharedTier::raise_barrier` for tags and generations) driven without an engine, so that a consumer running in
//! its own process needs no namespace definitions.

use std::sync::Arc;
use std::time::Duration;

use strata_core::shared::replica_keys;
use strata_core::{Bus, BusMessage, Clock, Error, Invalidation, SharedTier, SystemClock};

use crate::mapping::{Batch, NsChanges};

/// How invalidations are applied.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// The tombstone hold-off (the namespaces' `tombstone_hold_off`). Default: 5 s.
    pub hold_off: Duration,
    /// How long a tag or generation barrier is kept in L2: at least the longest entry life of the namespaces.
    /// Default: 24 h.
    pub barrier_keep: Duration,
    /// Above this many keys of one namespace in one transaction, the namespace is cleared instead (one barrier
    /// instead of a flood of tombstones). Default: 10,000.
    pub max_keys_per_namespace: usize,
    /// L2 calls in flight at once. Default: 32.
    pub concurrency: usize,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            hold_off: Duration::from_secs(5),
            barrier_keep: Duration::from_secs(24 * 3600),
            max_keys_per_namespace: 10_000,
            concurrency: 32,
        }
    }
}

/// Told of every batch before it is applied; an error fails the batch, which is then retried (the
/// transaction is not acknowledged): an observer that queues work durably gets every batch at least once.
pub type Observer = Arc<dyn Fn(&Batch) -> Result<(), String> + Send + Sync>;

/// Applies batches to L2 (when there is one) and the bus.
pub struct Applier {
    tier: Option<Arc<dyn SharedTier>>,
    bus: Arc<dyn Bus>,
    origin: String,
    /// The last sequence number the bus accepted; held across a batch's publishes so that a failed publish
    /// leaves no hole (a hole would make every receiver flush its L1 as after a gap).
    seq: tokio::sync::Mutex<u64>,
    clock: Arc<dyn Clock>,
    options: ApplyOptions,
    observer: Option<Observer>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("origin", &self.origin)
            .field("l2", &self.tier.is_some())
            .finish()
    }
}

/// What [`Applier::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Keys tombstoned.
    pub keys: usize,
    /// Tags invalidated.
    pub tags: usize,
    /// Namespaces cleared.
    pub namespaces: usize,
}

impl Applier {
    /// An applier publishing as `origin_prefix-<random>` (unique per process start, as bus origins must be).
    pub fn new(
        tier: Option<Arc<dyn SharedTier>>,
        bus: Arc<dyn Bus>,
        origin_prefix: &str,
        options: ApplyOptions,
    ) -> Self {
        Self {
            tier,
            bus,
            origin: format!("{origin_prefix}-{:016x}", rand::random::<u64>()),
            seq: tokio::sync::Mutex::new(0),
            clock: Arc::new(SystemClock::new()),
            options,
            observer: None,
        }
    }

    /// Calls `observer` with every batch before applying it (see [`Observer`]): the server queues the tags
    /// that reach its proxy for the CDNs in front.
    #[must_use]
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The bus origin of this applier.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Applies `batch`: L2 first, then one bus message per invalidation. All or error; safe to repeat.
    pub async fn apply(&self, batch: &Batch) -> Result<Applied, Error> {
        if let Some(observe) = &self.observer {
            observe(batch).map_err(|e| Error::Unavailable {
                tier: strata_core::Tier::L2,
                message: format!("the batch's observer failed: {e}"),
            })?;
        }
        let mut done = Applied::default();
        let mut messages = Vec::new();
        for (ns, c) in &batch.namespaces {
            let clear = c.clear || c.keys.len() > self.options.max_keys_per_namespace;
            if clear {
                self.barrier(ns, None).await?;
                messages.push((ns, Invalidation::Clear, None));
                done.namespaces += 1;
                continue;
            }
            for tag in &c.tags {
                self.barrier(ns, Some(tag)).await?;
                messages.push((ns, Invalidation::Tag { tag: tag.clone() }, None));
                done.tags += 1;
            }
            self.tombstones(ns, c).await?;
            for (key, version) in &c.keys {
                messages.push((ns, Invalidation::Delete { key: key.clone() }, *version));
                done.keys += 1;
            }
        }
        let mut seq = self.seq.lock().await;
        for (ns, what, version) in messages {
            let msg = BusMessage {
                namespace: ns.clone(),
                what,
                version,
                origin: self.origin.clone(),
                seq: *seq + 1,
                ts: self.clock.now(),
            };
            self.bus.publish(msg).await?;
            *seq += 1;
        }
        Ok(done)
    }

    /// Publishes that the feed `feed` has applied every commit made more than `age` ago (see
    /// `Invalidation::FeedMark`), in sequence after the invalidations published before it.
    pub async fn mark(&self, feed: &str, age: Duration) -> Result<(), Error> {
        let mut seq = self.seq.lock().await;
        let msg = BusMessage {
            namespace: feed.to_owned(),
            what: Invalidation::FeedMark {
                feed: feed.to_owned(),
                age_ms: age.as_millis().min(u64::MAX as u128) as u64,
            },
            version: None,
            origin: self.origin.clone(),
            seq: *seq + 1,
            ts: self.clock.now(),
        };
        self.bus.publish(msg).await?;
        *seq += 1;
        Ok(())
    }

    async fn barrier(&self, ns: &str, tag: Option<&str>) -> Result<(), Error> {
        if let Some(tier) = &self.tier {
            tier.raise_barrier(ns, tag, self.options.barrier_keep)
                .await?;
        }
        Ok(())
    }

    async fn tombstones(&self, ns: &str, c: &NsChanges) -> Result<(), Error> {
        let Some(tier) = &self.tier else {
            return Ok(());
        };
        let hold = self.options.hold_off;
        let calls: Vec<(String, Option<u64>)> = c
            .keys
            .iter()
            .flat_map(|(key, version)| {
                std::iter::once(key.clone())
                    .chain(replica_keys(key, c.replicas))
                    .map(move |k| (k, *version))
            })
            .collect();
        // Bounded fan-out in waves (plain boxed futures keep the consumer's task `Send`).
        for wave in calls.chunks(self.options.concurrency.max(1)) {
            futures::future::try_join_all(
                wave.iter().map(|(k, v)| tier.invalidate(ns, k, *v, hold)),
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use futures::stream::BoxStream;

    /// A bus that records what it is given.
    #[derive(Default)]
    struct Recording(std::sync::Mutex<Vec<BusMessage>>);

    impl Bus for Recording {
        fn publish(&self, msg: BusMessage) -> BoxFuture<'_, Result<(), Error>> {
            self.0.lock().unwrap().push(msg);
            Box::pin(async { Ok(()) })
        }
        fn subscribe(&self) -> BoxStream<'static, strata_core::BusEvent> {
            Box::pin(futures::stream::empty())
        }
    }

    #[tokio::test]
    async fn an_observer_sees_each_batch_first_and_its_failure_applies_nothing() {
        let bus = Arc::new(Recording::default());
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (s, f) = (seen.clone(), fail.clone());
        let applier = Applier::new(None, bus.clone(), "t", ApplyOptions::default()).with_observer(
            Arc::new(move |b: &Batch| {
                s.fetch_add(b.namespaces.len(), std::sync::atomic::Ordering::SeqCst);
                if f.load(std::sync::atomic::Ordering::SeqCst) {
                    Err("outbox full".into())
                } else {
                    Ok(())
                }
            }),
        );
        let mut batch = Batch::default();
        batch.tag("_edge", "product:42".into());
        let e = applier.apply(&batch).await.unwrap_err();
        assert!(e.to_string().contains("outbox full"), "{e}");
        assert!(
            bus.0.lock().unwrap().is_empty(),
            "nothing published when the observer failed"
        );
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        let done = applier.apply(&batch).await.unwrap();
        assert_eq!(done.tags, 1);
        assert_eq!(bus.0.lock().unwrap().len(), 1);
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "told of the batch both times"
        );
    }
}
