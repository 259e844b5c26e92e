//! Shared helpers for the engine's black-box tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use strata::{Cache, Error, Lookup, Namespace, Policy, PolicyBuilder, TokioClock};
use strata_testkit::FaultyLoader;
use tokio::task::JoinHandle;

/// A namespace named `t` with the given policy, on a fresh cache whose clock follows paused Tokio time.
pub fn namespace<V: Send + Sync + 'static>(policy: Policy) -> Namespace<V> {
    Cache::builder()
        .with_clock(Arc::new(TokioClock::new()))
        .build()
        .namespace::<V>("t")
        .with_policy(policy)
        .build()
        .unwrap()
}

/// A policy with a 10 s TTL and no jitter, so deadlines are exact.
pub fn exact() -> PolicyBuilder {
    Policy::builder()
        .with_ttl(Duration::from_secs(10))
        .with_jitter(0.0)
}

/// Lets spawned tasks (loads, refreshes) run to their next await point.
pub async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// Advances paused time and lets tasks run.
pub async fn advance(d: Duration) {
    tokio::time::advance(d).await;
    settle().await;
}

/// Starts `get_or_load(key)` from `src` in its own task (so the test can interleave other steps with it).
pub fn spawn_load(
    ns: &Namespace<u32>,
    src: &FaultyLoader<u32>,
    key: &'static str,
) -> JoinHandle<Result<Lookup<u32>, Error>> {
    let (ns, src) = (ns.clone(), src.clone());
    tokio::spawn(async move { ns.try_get_or_load(key, || src.load(key)).await })
}
