//! Read stage 3, the load task: one detached task per loader call, for the flights it leads.
//!
//! 1. The L2 step ([`super::l2`]) for each flight: L2 may answer it, answer it stale and let the load go on, or
//!    hand back a [`FillPlan`] (the fence to fill L2 under, the lease if one was taken, a stale fallback).
//! 2. The loader, under the hard timeout, its panics caught.
//! 3. For each flight still loading: the fill ([`super::fill`]) — L2 first under the plan's fence, then the
//!    lease ended (a stored fill tells the waiting nodes; anything else gives the lease back) — and the flight
//!    settled.
//!
//! Every flight is settled here and only here ([`Inner::settle`]), whichever stage produced its answer; the L2 step
//! only returns values. A flight is settled exactly once: settling removes it from the map under the key's shard
//! lock, in the same critical section as the L1 fill.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use strata_core::{Error, Fetched, SharedError, Tier};

use super::l2::{FillPlan, L2Fill, L2Step, Refreshing};
use super::state::millis;
use super::Inner;
use crate::entry::Entry;
use crate::flight::{register_locked, remove_locked, Flight, Origin, Outcome};
use crate::lookup::StaleReason;

/// One key's loader future.
pub(super) type LoadFuture<V> = BoxFuture<'static, Result<Fetched<V>, SharedError>>;

/// A loader future for several keys at once.
pub(super) type BatchFuture<V> =
    BoxFuture<'static, Result<HashMap<String, Fetched<V>>, SharedError>>;

/// A flight the L2 step did not answer: it waits for the loader, and fills as its plan says.
struct Loading<V: Send + Sync + 'static> {
    key: String,
    flight: Arc<Flight<V>>,
    plan: FillPlan<V>,
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// Runs one loader call for the given flights in a detached task with the hard timeout (the module docs).
    /// `fallback`: the caller's stale L1 value, for a single key. `refreshing`: keys being refreshed, with the
    /// entry being replaced — L2 answers those only with a newer entry (another node's refresh), else the refresh
    /// would just copy L2 back.
    pub(super) fn spawn_load(
        self: &Arc<Self>,
        flights: Vec<(String, Arc<Flight<V>>)>,
        fut: BatchFuture<V>,
        fallback: Option<Arc<Entry<V>>>,
        refreshing: HashMap<String, Refreshing>,
    ) {
        let inner = self.clone();
        tokio::spawn(async move { inner.run_load(flights, fut, fallback, refreshing).await });
    }

    async fn run_load(
        self: Arc<Self>,
        flights: Vec<(String, Arc<Flight<V>>)>,
        fut: BatchFuture<V>,
        fallback: Option<Arc<Entry<V>>>,
        refreshing: HashMap<String, Refreshing>,
    ) {
        let loads = self.consult_l2(flights, fallback, &refreshing).await;
        if loads.is_empty() {
            return; // answered from L2: the loader's future is dropped unpolled
        }
        // The source's bulkhead and breaker: a refused load never reaches the source (its future is dropped).
        let admitted = match &self.guard {
            Some(g) => match g.admit().await {
                Ok(a) => Some(a),
                Err(e) => {
                    for l in loads {
                        self.finish(l, Err(&e), Duration::ZERO).await;
                    }
                    return;
                }
            },
            None => None,
        };
        self.counters.loads.inc();
        let hard = self.policy.load_timeout.hard;
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(hard, AssertUnwindSafe(fut).catch_unwind()).await;
        if let Some(a) = admitted {
            a.done(matches!(result, Ok(Ok(Ok(_)))));
        }
        let took = started.elapsed();
        self.counters.load_micros.add(took.as_micros() as u64);
        self.load_seconds.record(took.as_secs_f64());
        let outcome: Result<HashMap<String, Fetched<V>>, Error> = match result {
            Err(_) => {
                self.counters.load_timeouts.inc();
                Err(Error::Timeout {
                    tier: Tier::Source,
                    after: hard,
                })
            }
            Ok(Err(panic)) => {
                self.counters.load_errors.inc();
                Err(Error::LoaderPanicked {
                    message: panic_message(panic.as_ref()),
                })
            }
            Ok(Ok(Err(source))) => {
                self.counters.load_errors.inc();
                Err(Error::Load {
                    tier: Tier::Source,
                    source,
                })
            }
            Ok(Ok(Ok(map))) => Ok(map),
        };
        match outcome {
            Ok(mut map) => {
                for l in loads {
                    let fetched = map.remove(&l.key).unwrap_or_else(Fetched::absent);
                    self.finish(l, Ok(fetched), took).await;
                }
            }
            Err(err) => {
                for l in loads {
                    self.finish(l, Err(&err), took).await;
                }
            }
        }
    }

    /// Step 1 of the module docs: the L2 step for each flight (with one lookup for several keys, and leases only
    /// for a single key). Settles the flights L2 answers; returns those left to load.
    async fn consult_l2(
        self: &Arc<Self>,
        flights: Vec<(String, Arc<Flight<V>>)>,
        l1_fallback: Option<Arc<Entry<V>>>,
        refreshing: &HashMap<String, Refreshing>,
    ) -> Vec<Loading<V>> {
        // While the change feed is silent, L2 may still hold what a source commit replaced: go to the source (and
        // do not fill L2 without a fence).
        if self.l2.is_none() || !self.feed_trusted(self.clock.now()) {
            return flights
                .into_iter()
                .map(|(key, flight)| Loading {
                    key,
                    flight,
                    plan: FillPlan::unfenced(),
                })
                .collect();
        }
        if flights.len() > 1 {
            let steps = self.l2_steps(&flights, refreshing).await;
            return flights
                .into_iter()
                .zip(steps)
                .filter_map(|((key, flight), step)| self.take_step(key, flight, step))
                .collect();
        }
        let Some((key, flight)) = flights.into_iter().next() else {
            return Vec::new();
        };
        let step = self.l2_step(&key, refreshing.get(&key).copied()).await;
        let Some(loading) = self.take_step(key, flight, step) else {
            return Vec::new();
        };
        if !self.policy.coalescing.distributed || !loading.plan.is_fenced() {
            return vec![loading];
        }
        let Loading { key, flight, plan } = loading;
        let step = self.lease_step(&key, plan, l1_fallback).await;
        self.take_step(key, flight, step).into_iter().collect()
    }

    /// Acts on an L2 step: settles what it answered, and returns what is left to load (under a new flight after a
    /// stale answer, unless a write poisoned the old one).
    fn take_step(
        &self,
        key: String,
        flight: Arc<Flight<V>>,
        step: L2Step<V>,
    ) -> Option<Loading<V>> {
        match step {
            L2Step::Answered(entry, origin) => {
                self.settle(&key, &flight, Ok((entry, origin)));
                None
            }
            L2Step::StaleThenLoad(stale, plan) => {
                let answer = Ok((stale, Origin::Stale(StaleReason::Revalidating)));
                let flight = self.settle_then(&key, &flight, answer, true)?;
                Some(Loading { key, flight, plan })
            }
            L2Step::Load(plan) => Some(Loading { key, flight, plan }),
        }
    }

    /// Step 3 of the module docs for one flight: fill L2 (unless a write overtook the load: L2's fence would refuse
    /// it anyway), end the lease, settle the flight — with the loaded entry, the plan's stale fallback, or the
    /// error.
    async fn finish(&self, l: Loading<V>, fetched: Result<Fetched<V>, &Error>, took: Duration) {
        let Loading { key, flight, plan } = l;
        let FillPlan { fill, fallback } = plan;
        let (started, lease) = match fill {
            L2Fill::Skip => (None, None),
            L2Fill::Fenced { started, lease } => (Some(started), lease),
        };
        let (outcome, stored) = match fetched {
            Ok(fetched) => {
                let entry = Arc::new(self.make_entry(&key, fetched, took));
                // L2 first, then the waiters: when `get_or_load` returns, every node can read the value.
                let stored = match started {
                    Some(started) if !flight.is_poisoned() => {
                        self.fill_l2(&key, &entry, started, lease.as_ref().map(|l| l.token()))
                            .await
                    }
                    _ => false,
                };
                (Ok((entry, Origin::Loaded)), stored)
            }
            Err(err) => {
                let outcome = match fallback {
                    Some(stale) => {
                        stale.throttle_until(
                            self.clock.now() + millis(self.policy.fail_safe_retry_every),
                        );
                        self.counters.fail_safe_activations.inc();
                        let reason = if matches!(err, Error::Overloaded(_)) {
                            StaleReason::Overloaded
                        } else {
                            StaleReason::FailSafe
                        };
                        Ok((stale, Origin::Stale(reason)))
                    }
                    None => Err(err.clone()),
                };
                (outcome, false)
            }
        };
        if let Some(lease) = lease {
            lease.end(stored).await;
        }
        self.settle(&key, &flight, outcome);
    }

    /// Records a flight's outcome in L1 (unless a write poisoned it), ends the flight, and wakes its waiters.
    fn settle(&self, key: &str, flight: &Arc<Flight<V>>, outcome: Outcome<V>) {
        self.settle_then(key, flight, outcome, false);
    }

    /// [`settle`](Self::settle); with `go_on`, a new flight for the key is registered in the same critical
    /// section (so no second load can start) and returned — unless a write poisoned this one.
    fn settle_then(
        &self,
        key: &str,
        flight: &Arc<Flight<V>>,
        outcome: Outcome<V>,
        go_on: bool,
    ) -> Option<Arc<Flight<V>>> {
        let next = {
            let mut shard = self.flights.lock(key);
            match &outcome {
                Ok(_) if flight.is_poisoned() => {
                    self.counters.fills_refused.inc();
                }
                Ok((entry, _)) => {
                    self.fill_locked(key, entry.clone());
                }
                Err(_) => {
                    let until = self.clock.now() + millis(self.policy.fail_safe_retry_every);
                    if let Some(e) = self.l1.as_ref().and_then(|l1| l1.peek(key)) {
                        e.throttle_until(until);
                    }
                }
            }
            remove_locked(&mut shard, key, flight);
            (go_on && !flight.is_poisoned() && !shard.contains_key(key))
                .then(|| register_locked(&mut shard, key, self.clock.now()))
        };
        flight.publish(outcome);
        next
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
