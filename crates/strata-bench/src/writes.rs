//! `writes`: write throughput to PostgreSQL through the cache, write-through against write-behind, and how far
//! write-behind's flusher lags behind its acknowledgements.
//!
//! Both phases run the same writers (each writing random keys of a fixed key space, one write at a time) for the
//! same time, in the same process, against the same table:
//! - **through** (the baseline): each write commits in PostgreSQL, then sets the caches with the new version;
//! - **behind**: each write is journaled with `fsync` before its ack (group commit), the caches are set, and the
//!   flusher writes the newest value per key in fenced one-statement batches.
//!
//! Then the queue is drained, and every key's row is checked against the last acknowledged value.
//! `behind_lag_p99_ms` is the 99th percentile, over flushed keys, of the time from the ack of the oldest write a
//! flush covered to its commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use strata::behind::{WriteBehind, WriteBehindOptions};
use strata::codec::Json;
use strata::{Cache, Namespace, Policy, WriteMode};
use strata_core::{Error, Tier};
use strata_sql::{PgTable, TableSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    n: i64,
}

/// Figures of one run.
#[derive(Debug, Clone, Copy)]
pub struct WritesReport {
    pub through_per_s: f64,
    pub behind_per_s: f64,
    pub behind_lag_p99_ms: f64,
    pub writers: usize,
    pub keys: usize,
}

impl std::fmt::Display for WritesReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "writes through_per_s={:.0} behind_per_s={:.0} ratio={:.1} behind_lag_p99_ms={:.1} writers={} keys={}",
            self.through_per_s,
            self.behind_per_s,
            self.behind_per_s / self.through_per_s.max(1e-9),
            self.behind_lag_p99_ms,
            self.writers,
            self.keys
        )
    }
}

fn fail(what: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        tier: Tier::Source,
        message: what.to_string(),
    }
}

/// Runs `writers` tasks writing random keys through `ns` for `secs`; returns writes per second and records, per
/// key, the acknowledged write with the highest version.
async fn phase(
    ns: &Namespace<Counter>,
    writers: usize,
    keys: usize,
    secs: f64,
    last: &Arc<Mutex<Vec<(u64, i64)>>>,
) -> Result<f64, Error> {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (ns, done, last) = (ns.clone(), done.clone(), last.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0i64;
            while Instant::now() < until {
                let k = rand::random_range(0..keys);
                n += 1;
                let value = (w as i64) << 40 | n;
                let version = ns.write(&format!("k{k}"), Counter { n: value }).await?;
                // Writes of one key by different writers race: the one with the highest version is the last.
                let mut last = last.lock();
                if last[k].0 < version {
                    last[k] = (version, value);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), Error>(())
        }));
    }
    for t in tasks {
        t.await.map_err(fail)??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

pub async fn run(pg: &str, writers: usize, keys: usize, secs: f64) -> Result<WritesReport, Error> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!(
        "strata_bench_writes_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000
    );
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(pg)
        .await
        .map_err(|e| fail(format!("PostgreSQL at {pg}: {e}")))?;
    for sql in [
        format!("CREATE SCHEMA {name}"),
        format!("CREATE TABLE {name}.counter (id text PRIMARY KEY, n bigint NOT NULL, version bigint NOT NULL DEFAULT 1)"),
    ] {
        sqlx::query(&sql).execute(&pool).await.map_err(fail)?;
    }
    let table = format!("{name}.counter");
    let store = Arc::new(
        PgTable::<Counter>::bind(pool.clone(), TableSpec::new(&table, "id", "version"))
            .await
            .map_err(fail)?,
    );
    let cache = Cache::new();
    let policy = |mode| {
        Policy::builder()
            .with_write_mode(mode)
            .with_ttl(Duration::from_secs(600))
            .build()
    };
    let through = cache
        .namespace::<Counter>("through")
        .with_policy(policy(WriteMode::Through)?)
        .with_store(store.clone())
        .build()?;
    let last = Arc::new(Mutex::new(vec![(0u64, 0i64); keys]));
    let through_per_s = phase(&through, writers, keys, secs, &last).await?;

    // A fresh table state for the second phase: same rows, new values.
    let dir = std::env::temp_dir().join(format!("{name}-journal"));
    let wb = WriteBehind::open(&dir, WriteBehindOptions::default())?;
    let behind = cache
        .namespace::<Counter>("behind")
        .with_policy(policy(WriteMode::Behind)?)
        .with_store(store)
        .with_codec(Json)
        .with_write_behind(wb.clone())
        .build()?;
    let last = Arc::new(Mutex::new(vec![(0u64, 0i64); keys]));
    let behind_per_s = phase(&behind, writers, keys, secs, &last).await?;
    if !wb.drain(Duration::from_secs(120)).await {
        return Err(fail(format!(
            "write-behind did not drain: {:?}",
            wb.stats()
        )));
    }
    let stats = wb.stats();
    // Every key holds its last acknowledged value.
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!("SELECT id, n FROM {table}"))
        .fetch_all(&pool)
        .await
        .map_err(fail)?;
    let last = last.lock().clone();
    let mut wrong = 0;
    for (id, n) in &rows {
        let k: usize = id[1..].parse().map_err(fail)?;
        if last[k].0 != 0 && last[k].1 != *n {
            wrong += 1;
        }
    }
    if wrong > 0 {
        return Err(fail(format!(
            "{wrong} rows do not hold their last acknowledged value"
        )));
    }
    sqlx::query(&format!("DROP SCHEMA {name} CASCADE"))
        .execute(&pool)
        .await
        .map_err(fail)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(WritesReport {
        through_per_s,
        behind_per_s,
        behind_lag_p99_ms: stats.lag_p99_micros as f64 / 1000.0,
        writers,
        keys,
    })
}
