//! The writes: what changes a key (or a tag, or the whole namespace) in every tier, in this order — the local
//! tier first (poison the key's flight and tombstone or set it under its shard lock), then L2 (a tombstone that
//! voids the lease and fences fills, or the new value; on failure queued for replay), then the bus (so that no
//! node that hears of the write can re-read the old value from L2).
//!
//! Source writes (`write`/`delete`) commit first and follow the policy's [`WriteMode`]; they are acknowledged only
//! once the invalidation has propagated (L2 holds it and the bus accepted it), else they report
//! [`Error::NotPropagated`]. Write-behind journals first and acknowledges after the journal's fsync
//! ([`crate::behind`]).

use std::sync::Arc;
use std::time::Duration;

use strata_core::{Error, Fetched, FillOutcome, Invalidation, WriteErrorKind, WriteMode};

use super::state::millis;
use super::Inner;
use crate::entry::Entry;
use crate::flight::poison_locked;
use crate::journal::Op;
use crate::shared::ReplayTarget;

/// How often a write waiting for its invalidation's replay looks again.
const PROPAGATION_POLL: Duration = Duration::from_millis(10);

impl<V: Send + Sync + 'static> Inner<V> {
    /// Stores a value the caller knows to be current in L1 and L2, and tells the other nodes. Returns whether a
    /// tier stored it, and the bus message's sequence number.
    pub(super) async fn insert(&self, key: String, fetched: Fetched<V>) -> (bool, Option<u64>) {
        self.counters.inserts.inc();
        let version = fetched.version;
        let entry = Arc::new(self.make_entry(&key, fetched, Duration::ZERO));
        self.insert_entry(key, entry, version).await
    }

    /// [`insert`](Self::insert) of a value read from the source at `since` (local clock): it does not land when
    /// anything that happened after `since` supersedes it — a key invalidation or write (the L1 entry is newer), a
    /// tag or generation barrier raised after `since`, in this process or in L2 (the L2 fill is fenced with
    /// `since` as its start). Returns whether a tier stored it.
    pub(super) async fn insert_since(
        &self,
        key: String,
        fetched: Fetched<V>,
        since: strata_core::UnixMillis,
    ) -> bool {
        self.counters.inserts.inc();
        let mut entry = self.make_entry(&key, fetched, Duration::ZERO);
        entry.created_at = entry.created_at.min(since);
        let created = entry.created_at;
        let entry = Arc::new(entry);
        let in_l1 = {
            let mut shard = self.flights.lock(&key);
            let superseded = self.barriers.blocks(&entry.tags, created)
                || self.barriers.cleared_since(created)
                || self
                    .l1
                    .as_ref()
                    .and_then(|l1| l1.peek(&key))
                    .is_some_and(|e| e.created_at >= created);
            if superseded {
                self.counters.fills_refused.inc();
                return false;
            }
            poison_locked(&mut shard, &key);
            self.fill_locked(&key, entry.clone())
        };
        let in_l2 = match &self.l2 {
            Some(l2) => {
                let started = l2.link.to_tier(created);
                self.fill_l2(&key, &entry, started, None).await
            }
            None => false,
        };
        self.publish(Invalidation::Set { key }, entry.version);
        in_l1 || in_l2
    }

    /// [`insert`](Self::insert) of a built entry; `version` goes on the bus message.
    async fn insert_entry(
        &self,
        key: String,
        entry: Arc<Entry<V>>,
        version: Option<u64>,
    ) -> (bool, Option<u64>) {
        let in_l1 = {
            let mut shard = self.flights.lock(&key);
            poison_locked(&mut shard, &key);
            self.fill_locked(&key, entry.clone())
        };
        let in_l2 = match &self.l2 {
            Some(_) => self.write_l2(&key, &entry).await,
            None => false,
        };
        let seq = self.publish(Invalidation::Set { key }, version);
        (in_l1 || in_l2, seq)
    }

    /// Writes `value` to the source, then updates the caches as the policy's write mode says (see
    /// `Namespace::write`), and returns the version the source now holds.
    pub(super) async fn write(&self, key: &str, value: V) -> Result<u64, Error> {
        let sink = self.sink()?;
        let mode = self.policy.write;
        if mode == WriteMode::Behind {
            return self.write_behind(key, Some(value)).await;
        }
        let version = sink
            .upsert(key, &value)
            .await
            .map_err(|source| Error::Write {
                key: key.to_owned(),
                kind: sink.classify(&source),
                source,
            })?;
        let seq = match mode {
            WriteMode::Aside => self.invalidate(key, Some(version)).await,
            WriteMode::Through => {
                self.insert(key.to_owned(), Fetched::value(value).with_version(version))
                    .await
                    .1
            }
            WriteMode::Around | WriteMode::Behind => return Ok(version),
        };
        self.await_propagation(key, seq, version).await?;
        Ok(version)
    }

    /// Deletes `key` in the source, then invalidates it in every tier (except in `Around` mode).
    pub(super) async fn delete(&self, key: &str) -> Result<(), Error> {
        let sink = self.sink()?;
        if self.policy.write == WriteMode::Behind {
            return self.write_behind(key, None).await.map(drop);
        }
        let version = sink.delete(key).await.map_err(|source| Error::Write {
            key: key.to_owned(),
            kind: sink.classify(&source),
            source,
        })?;
        if self.policy.write == WriteMode::Around {
            return Ok(());
        }
        let seq = self.invalidate(key, version).await;
        self.await_propagation(key, seq, version.unwrap_or(0)).await
    }

    /// Write-behind (see [`crate::behind`]): journal durably, update the caches and the pending overlay, ack;
    /// the flusher writes the source later. Returns the write's version (from the hybrid logical clock).
    async fn write_behind(&self, key: &str, value: Option<V>) -> Result<u64, Error> {
        let b = self.behind.as_ref().ok_or_else(|| {
            Error::Unsupported(format!(
                "namespace {:?} is in write-behind mode but has no queue: build it with with_write_behind",
                self.name
            ))
        })?;
        if let (Some(v), Some(sink)) = (value.as_ref(), self.sink.as_ref()) {
            // What the source must refuse is refused now, not after the ack.
            sink.check(key, v).map_err(|source| Error::Write {
                key: key.to_owned(),
                kind: sink.classify(&source),
                source,
            })?;
        }
        let op = match value.as_ref() {
            Some(v) => Op::Upsert(b.codec.encode(v).map_err(|e| Error::Write {
                key: key.to_owned(),
                kind: WriteErrorKind::rejected(None, format!("the value does not encode: {e}")),
                source: Arc::new(std::io::Error::other(format!(
                    "the value does not encode: {e}"
                ))),
            })?),
            None => Op::Delete,
        };
        // The write's version: the source has none to give yet, so the hybrid logical clock issues it — in the
        // same step as the journal sequence, so that versions order a key's writes as the journal does. Every tier
        // and the flusher's fenced upsert carry it.
        let (seq, version) =
            b.wb.journal(&self.name, key, op.clone(), self.clock.now())
                .await?;
        let entry = value.map(|v| {
            Arc::new(self.make_entry(key, Fetched::value(v).with_version(version), Duration::ZERO))
        });
        b.overlay
            .record(key, seq, entry.as_ref().and_then(|e| e.value.clone()));
        match entry {
            Some(e) => {
                // The bus message carries the version, as a delete's does: receivers tombstone the key with it and
                // so refuse fills older than this write while the tombstone lives. Until the flusher has run, the
                // source still holds the row this write replaces (older version), and without the version a
                // receiver reading the source would cache that row as if it were current.
                self.insert_entry(key.to_owned(), e, Some(version)).await;
            }
            None => {
                self.invalidate(key, Some(version)).await;
            }
        }
        b.wb.enqueue(&self.name, key, seq, op, Some(version));
        Ok(version)
    }

    /// Tombstones `key` in every tier and tells the other nodes; returns the bus message's sequence number.
    pub(super) async fn invalidate(&self, key: &str, version: Option<u64>) -> Option<u64> {
        self.invalidate_key(key, version);
        if self.l2.is_some() {
            self.invalidate_l2(key, version).await;
        }
        self.publish(
            Invalidation::Delete {
                key: key.to_owned(),
            },
            version,
        )
    }

    /// Raises `tag`'s barrier in every tier and tells the other nodes.
    pub(super) async fn invalidate_tag(&self, tag: &str) {
        let at = self.clock.now();
        self.invalidate_tag_local(tag, at);
        if self.l2.is_some() {
            self.raise_barrier_l2(Some(tag)).await;
        }
        // Dated at the local barrier's time: the other nodes date a soft barrier by it (see `RemoteOps::drop_tag`).
        self.publish_at(
            Invalidation::Tag {
                tag: tag.to_owned(),
            },
            None,
            at,
        );
    }

    /// Bumps the namespace's generation in every tier and tells the other nodes.
    pub(super) async fn bump_generation(&self) {
        self.invalidate_all_local();
        if self.l2.is_some() {
            self.raise_barrier_l2(None).await;
        }
        self.publish(Invalidation::Clear, None);
    }

    /// Waits until a source write's invalidation is in L2 (not waiting for replay) and bus message `seq` has
    /// been accepted by the transport, at most the propagation timeout. Only then may the write be acknowledged:
    /// every other node then either has dropped its copy or stops trusting its L1 within the bus's bound.
    async fn await_propagation(
        &self,
        key: &str,
        seq: Option<u64>,
        version: u64,
    ) -> Result<(), Error> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.propagation_timeout;
        let not_propagated = || Error::NotPropagated {
            key: key.to_owned(),
            version,
            after: started.elapsed(),
        };
        while self.invalidation_pending(key) {
            if tokio::time::Instant::now() >= deadline {
                return Err(not_propagated());
            }
            tokio::time::sleep(PROPAGATION_POLL).await;
        }
        if let (Some(seq), Some(p)) = (seq, self.publisher()) {
            if !p.published(seq, deadline).await {
                return Err(not_propagated());
            }
        }
        Ok(())
    }

    /// Tombstones `key` in L1 and poisons its load in flight. Publishing is the caller's business: a local write
    /// publishes after L2 has the tombstone, so no node that hears of it can re-read the old value from L2.
    pub(super) fn invalidate_key(&self, key: &str, version: Option<u64>) {
        self.counters.invalidations.inc();
        let now = self.clock.now();
        let mut shard = self.flights.lock(key);
        poison_locked(&mut shard, key);
        if let Some(l1) = self
            .l1
            .as_ref()
            .filter(|l1| !self.pins_only || l1.peek(key).is_some())
        {
            let hold = now + millis(self.policy.tombstone_hold_off);
            l1.insert(
                key.to_owned(),
                Arc::new(Entry::tombstone(key, now, hold, version)),
            );
        }
    }

    /// Raises `tag`'s barrier in this process and poisons every load under way (their tags are not known yet).
    pub(super) fn invalidate_tag_local(&self, tag: &str, at: strata_core::UnixMillis) {
        self.counters.invalidations.inc();
        self.barriers.raise(tag, at);
        self.flights.poison_all(|| {});
    }

    /// Drops every L1 entry and poisons every load under way.
    pub(super) fn invalidate_all_local(&self) {
        self.counters.invalidations.inc();
        self.barriers.clear(self.clock.now());
        self.flights.poison_all(|| {
            if let Some(l1) = &self.l1 {
                l1.clear();
            }
        });
    }

    /// Writes an entry to L2 (write-through). On failure the key's invalidation is queued for replay, so the old
    /// L2 value cannot outlive the write. Returns whether it was stored.
    async fn write_l2(&self, key: &str, entry: &Entry<V>) -> bool {
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
                    ReplayTarget::Key {
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
    fn invalidation_pending(&self, key: &str) -> bool {
        self.l2
            .as_ref()
            .is_some_and(|l2| l2.link.blocks(&self.name, key, &[]))
    }

    /// Tombstones `key` in L2 (voiding its lease), or queues the tombstone for replay.
    async fn invalidate_l2(&self, key: &str, version: Option<u64>) {
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
            let target = ReplayTarget::Key {
                ns: self.name.clone(),
                key: key.to_owned(),
            };
            l2.link.enqueue(target, version, hold, replicas);
        }
    }

    /// Raises a tag (`Some`) or generation (`None`) barrier in L2, or queues it for replay.
    async fn raise_barrier_l2(&self, tag: Option<&str>) {
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
                Some(tag) => ReplayTarget::Tag {
                    ns,
                    tag: tag.to_owned(),
                },
                None => ReplayTarget::Generation { ns },
            };
            l2.link.enqueue(target, None, keep, 0);
        }
    }
}
