//! Shared helpers for the engine's black-box tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use strata::behind::WriteBehind;
use strata::codec::Json;
use strata::{
    Cache, Error, Lookup, Namespace, NamespaceBuilder, Policy, PolicyBuilder, TokioClock, WriteMode,
};
use strata_core::{Fetched, SharedError, Sink, Source};
use strata_testkit::table::VersionedTable;
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

/// Waits (bounded: 2 s of real or paused time) until `cond` holds.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Finishes registering `ns` as a namespace that writes behind through `wb`, its values journaled as JSON.
pub fn written_behind<V>(ns: NamespaceBuilder<V>, wb: &WriteBehind) -> Namespace<V>
where
    V: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let policy = Policy::builder()
        .with_write_mode(WriteMode::Behind)
        .build()
        .unwrap();
    ns.with_policy(policy)
        .with_codec(Json)
        .with_write_behind(wb.clone())
        .build()
        .unwrap()
}

/// A directory of this test's own under the system's temporary directory, empty.
pub fn fresh_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "strata-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A table that refuses negative values up front (`check`, like a type check) and, while `failing`, refuses every
/// write at flush time (like a constraint only the database can check).
pub struct Strict {
    pub table: VersionedTable<i64>,
    pub failing: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

impl Strict {
    /// An empty table, refusing writes at flush time while `failing`.
    pub fn new(failing: bool) -> Arc<Self> {
        Arc::new(Self {
            table: VersionedTable::new(),
            failing: AtomicBool::new(failing),
        })
    }
}

impl Source<i64> for Strict {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched<i64>, SharedError>> {
        self.table.load(key)
    }
    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<i64>>, SharedError>> {
        self.table.load_many(keys)
    }
}

impl Sink<i64> for Strict {
    fn upsert<'a>(
        &'a self,
        key: &'a str,
        value: &'a i64,
    ) -> BoxFuture<'a, Result<u64, SharedError>> {
        if self.failing.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(Arc::new(Refused("check constraint violated".into())) as SharedError)
            });
        }
        self.table.upsert(key, value)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, SharedError>> {
        self.table.delete(key)
    }
    fn check(&self, _key: &str, value: &i64) -> Result<(), SharedError> {
        if *value < 0 {
            return Err(Arc::new(Refused("n: must be ≥ 0".into())));
        }
        Ok(())
    }
}
