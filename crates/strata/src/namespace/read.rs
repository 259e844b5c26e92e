//! Read stage 2, lead or follow: after triage, a read either leads the key's load (it registers the flight and
//! starts the load task, [`super::load`]) or follows a flight already under way; either way it then waits for the
//! flight's outcome and turns it into its answer, applying the soft timeout and fail-safe.
//!
//! A read never loads in its own future: the load task is detached, so a caller that goes away cancels nothing.
//! A write-behind namespace answers from its pending writes first (the overlay, [`crate::behind`]).

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use strata_core::{Error, Tier};

use super::l2::Refreshing;
use super::load::{BatchFuture, LoadFuture};
use super::state::millis;
use super::triage::{Refresh, Triage};
use super::Inner;
use crate::entry::{Entry, EntryKind, EntryParts};
use crate::flight::{Flight, Origin, Role};
use crate::lookup::{Lookup, StaleReason, Status};

impl<V: Send + Sync + 'static> Inner<V> {
    /// One key: triage, then lead or follow.
    pub(super) async fn read(
        self: &Arc<Self>,
        key: &str,
        make: impl FnOnce() -> LoadFuture<V>,
    ) -> Result<Lookup<V>, Error> {
        let now = self.clock.now();
        let fallback = match self.triage(key, now) {
            Triage::Answer(lookup, refresh) => {
                if refresh != Refresh::None {
                    self.refresh(key, make, refresh, Refreshing::of(lookup.entry()));
                }
                return Ok(lookup);
            }
            Triage::Load(fallback) => fallback,
        };
        if let Some(hot) = &self.hot {
            hot.record(key);
        }
        let (flight, status) =
            match self
                .flights
                .join_or_register(key, now, self.untrusted_bound(now))
            {
                Role::Leader(f) => {
                    self.counters.misses.inc();
                    self.spawn_load(
                        vec![(key.to_owned(), f.clone())],
                        single(key, make()),
                        fallback.clone(),
                        HashMap::new(),
                    );
                    (f, Status::Miss)
                }
                Role::Follower(f) => {
                    self.counters.coalesced.inc();
                    (f, Status::Coalesced)
                }
            };
        self.await_flight(&flight, status, fallback).await
    }

    /// Several keys: triage each, lead the misses nobody is loading with one loader call, follow the rest.
    pub(super) async fn read_many<K: AsRef<str>>(
        self: &Arc<Self>,
        keys: &[K],
        make: impl FnOnce(Vec<String>) -> BatchFuture<V>,
    ) -> Result<Vec<Lookup<V>>, Error> {
        let now = self.clock.now();
        let mut ready: Vec<Option<Lookup<V>>> = Vec::with_capacity(keys.len());
        let mut waits = Vec::new();
        let mut leaders: Vec<(String, Arc<Flight<V>>)> = Vec::new();
        let mut refreshing = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_ref();
            let fallback = match self.triage(key, now) {
                Triage::Answer(lookup, refresh) => {
                    if refresh != Refresh::None {
                        if let Role::Leader(f) =
                            self.flights
                                .join_or_register(key, now, self.untrusted_bound(now))
                        {
                            self.count_refresh(refresh);
                            refreshing.insert(key.to_owned(), Refreshing::of(lookup.entry()));
                            leaders.push((key.to_owned(), f));
                        }
                    }
                    ready.push(Some(lookup));
                    continue;
                }
                Triage::Load(fallback) => fallback,
            };
            if let Some(hot) = &self.hot {
                hot.record(key);
            }
            ready.push(None);
            match self
                .flights
                .join_or_register(key, now, self.untrusted_bound(now))
            {
                Role::Leader(f) => {
                    self.counters.misses.inc();
                    leaders.push((key.to_owned(), f.clone()));
                    waits.push((i, f, Status::Miss, fallback));
                }
                Role::Follower(f) => {
                    self.counters.coalesced.inc();
                    waits.push((i, f, Status::Coalesced, fallback));
                }
            }
        }
        if !leaders.is_empty() {
            let fut = make(leaders.iter().map(|(k, _)| k.clone()).collect());
            self.spawn_load(leaders, fut, None, refreshing);
        }
        for (i, flight, status, fallback) in waits {
            ready[i] = Some(self.await_flight(&flight, status, fallback).await?);
        }
        Ok(ready
            .into_iter()
            .map(|r| r.expect("every key answered"))
            .collect())
    }

    /// One key through the namespace's source, after its pending write-behind write if there is one.
    pub(super) async fn fetch(self: &Arc<Self>, key: &str) -> Result<Lookup<V>, Error> {
        if let Some(pending) = self.pending_write(key) {
            return Ok(pending);
        }
        let source = self.source()?;
        let k = key.to_owned();
        self.read(key, move || Box::pin(async move { source.load(&k).await }))
            .await
    }

    /// Several keys through the namespace's source with one `load_many`, pending write-behind writes first.
    pub(super) async fn fetch_many<K: AsRef<str>>(
        self: &Arc<Self>,
        keys: &[K],
    ) -> Result<Vec<Lookup<V>>, Error> {
        let source = self.source()?;
        let mut answers = self
            .read_many(keys, move |keys| {
                Box::pin(async move { source.load_many(&keys).await })
            })
            .await?;
        if self.behind.is_some() {
            for (answer, key) in answers.iter_mut().zip(keys) {
                if let Some(pending) = self.pending_write(key.as_ref()) {
                    *answer = pending;
                }
            }
        }
        Ok(answers)
    }

    /// A write-behind write of `key` not yet in the source, as readers must see it.
    fn pending_write(&self, key: &str) -> Option<Lookup<V>> {
        let value = self.behind.as_ref()?.overlay.pending(key)?;
        let now = self.clock.now();
        let fresh = now + millis(self.policy.ttl);
        let status = if value.is_some() {
            Status::Hit(Tier::L1)
        } else {
            Status::Negative
        };
        let entry = Entry::new(
            key,
            EntryParts {
                value,
                created_at: now,
                fresh_until: fresh,
                stale_until: fresh,
                version: None,
                tags: Vec::new(),
                delta_ms: 0,
                value_weight: 0,
            },
        );
        Some(Lookup::new(Arc::new(entry), status))
    }

    /// Starts one background refresh of `key` unless a load is already under way.
    fn refresh(
        self: &Arc<Self>,
        key: &str,
        make: impl FnOnce() -> LoadFuture<V>,
        refresh: Refresh,
        current: Refreshing,
    ) {
        let now = self.clock.now();
        if let Role::Leader(f) = self
            .flights
            .join_or_register(key, now, self.untrusted_bound(now))
        {
            self.count_refresh(refresh);
            let refreshing = HashMap::from([(key.to_owned(), current)]);
            self.spawn_load(
                vec![(key.to_owned(), f)],
                single(key, make()),
                None,
                refreshing,
            );
        }
    }

    /// Follows a flight and turns its outcome into the caller's answer, applying the soft timeout and fail-safe.
    async fn await_flight(
        &self,
        flight: &Flight<V>,
        status: Status,
        fallback: Option<Arc<Entry<V>>>,
    ) -> Result<Lookup<V>, Error> {
        let outcome = match (self.policy.load_timeout.soft, &fallback) {
            (Some(soft), Some(stale)) => match tokio::time::timeout(soft, flight.wait()).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.counters.stale_soft_timeout.inc();
                    return Ok(Lookup::new(
                        stale.clone(),
                        Status::Stale(StaleReason::SoftTimeout),
                    ));
                }
            },
            _ => flight.wait().await,
        };
        match (outcome, fallback) {
            (Ok((entry, Origin::Loaded)), _) => Ok(Lookup::new(entry, status)),
            (Ok((entry, Origin::Shared)), _) => {
                let status = if entry.kind == EntryKind::Negative {
                    self.counters.negative_hits.inc();
                    Status::Negative
                } else {
                    self.counters.hits_l2.inc();
                    Status::Hit(Tier::L2)
                };
                Ok(Lookup::new(entry, status))
            }
            (Ok((entry, Origin::Stale(reason))), _) => {
                match reason {
                    StaleReason::FailSafe | StaleReason::Overloaded => {
                        self.counters.stale_fail_safe.inc()
                    }
                    _ => self.counters.stale_revalidating.inc(),
                }
                Ok(Lookup::new(entry, Status::Stale(reason)))
            }
            (Err(err), Some(stale)) => {
                // One activation per failed load (its leader), however many waiters it answers.
                if status == Status::Miss {
                    self.counters.fail_safe_activations.inc();
                }
                self.counters.stale_fail_safe.inc();
                stale.throttle_until(self.clock.now() + millis(self.policy.fail_safe_retry_every));
                let reason = if matches!(err, Error::Overloaded(_)) {
                    StaleReason::Overloaded
                } else {
                    StaleReason::FailSafe
                };
                Ok(Lookup::new(stale, Status::Stale(reason)))
            }
            (Err(err), None) => Err(err),
        }
    }
}

/// A one-key loader as a batch loader.
fn single<V: Send + 'static>(key: &str, fut: LoadFuture<V>) -> BatchFuture<V> {
    let key = key.to_owned();
    Box::pin(fut.map(move |r| r.map(|f| HashMap::from([(key, f)]))))
}
