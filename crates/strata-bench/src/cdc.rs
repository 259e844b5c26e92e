//! `cdc`: how long a change committed in PostgreSQL takes to evict the key from every node's L1 (and L2), through
//! the CDC consumer (logical replication → L2 tombstone → Redis bus).
//!
//! N nodes (caches in one process, each with its own Redis connections, as separate processes would have), one
//! CDC consumer, a schema of their own. Per sample: every node caches the row's key; the clock starts as the
//! `UPDATE` (an autocommit transaction) is sent and stops when the last node no longer holds the old value.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use sqlx::PgPool;
use strata::codec::Json;
use strata::{Cache, Namespace, Policy};
use strata_cdc::{Applier, ApplyOptions, PgCdc, PgCdcOptions, Rule};
use strata_core::{Error, SharedTier, Tier};
use strata_redis::{L2Options, RedisBus, RedisBusOptions, RedisL2};

/// Figures of one run.
#[derive(Debug, Clone, Copy)]
pub struct CdcReport {
    pub nodes: usize,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl std::fmt::Display for CdcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cdc nodes={} samples={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
            self.nodes, self.samples, self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

fn fail(what: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        tier: Tier::Source,
        message: what.to_string(),
    }
}

pub async fn run(redis: &str, pg: &str, nodes: usize, samples: usize) -> Result<CdcReport, Error> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!(
        "strata_bench_cdc_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000
    );
    let prefix = format!("strata-bench:cdc:{name}");
    let pool = PgPool::connect(pg)
        .await
        .map_err(|e| fail(format!("PostgreSQL at {pg}: {e}")))?;
    for sql in [
        format!("CREATE SCHEMA {name}"),
        format!("CREATE TABLE {name}.price (sku text PRIMARY KEY, price bigint NOT NULL, version bigint NOT NULL DEFAULT 1)"),
        format!("INSERT INTO {name}.price SELECT 'sku-' || i, 100, 1 FROM generate_series(0, {}) i", samples.max(1) - 1),
    ] {
        sqlx::query(&sql).execute(&pool).await.map_err(fail)?;
    }
    let l2_options = L2Options {
        prefix: prefix.clone(),
        ..L2Options::default()
    };
    let bus_options = RedisBusOptions {
        stream: format!("{prefix}:bus"),
        ..RedisBusOptions::default()
    };
    let mut cluster: Vec<(Namespace<i64>, Cache)> = Vec::new();
    for _ in 0..nodes.max(1) {
        let l2 = RedisL2::connect(redis, l2_options.clone()).await?;
        let bus = RedisBus::connect(redis, bus_options.clone()).await?;
        let cache = Cache::builder()
            .with_shared_tier(Arc::new(l2))
            .with_bus(Arc::new(bus))
            .build();
        let ns = cache
            .namespace::<i64>("price")
            .with_policy(
                Policy::builder()
                    .with_ttl(Duration::from_secs(600))
                    .build()?,
            )
            .with_codec(Json)
            .build()?;
        cluster.push((ns, cache));
    }
    let tier: Arc<dyn SharedTier> = Arc::new(RedisL2::connect(redis, l2_options).await?);
    let bus = RedisBus::connect(redis, bus_options).await?;
    let applier = Applier::new(
        Some(tier),
        Arc::new(bus),
        "bench-cdc",
        ApplyOptions::default(),
    );
    let options = PgCdcOptions::new(pg, &name, &name)
        .rule(Rule::new(format!("{name}.price"), "price").version_column("version"));
    let cdc = PgCdc::start(options, Arc::new(applier))
        .await
        .map_err(fail)?;
    // Let every reader issue its first XREAD and the slot's initial clear go by.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let update =
        format!("UPDATE {name}.price SET price = price + 1, version = version + 1 WHERE sku = $1");
    for i in 0..samples {
        let key = format!("sku-{i}");
        for (ns, _) in &cluster {
            ns.get_or_load(&key, || async { Some(100i64) }).await?;
        }
        let started = Instant::now();
        sqlx::query(&update)
            .bind(&key)
            .execute(&pool)
            .await
            .map_err(fail)?;
        while cluster.iter().any(|(ns, _)| ns.l1_holds(&key)) {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(Error::Timeout {
                    tier: Tier::Source,
                    after: Duration::from_secs(10),
                });
            }
            tokio::task::yield_now().await;
        }
        hist.record(started.elapsed().as_micros().max(1) as u64)
            .expect("in range");
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let report = CdcReport {
        nodes: cluster.len(),
        samples,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1000.0,
    };
    cdc.stop().await;
    for (_, cache) in cluster {
        cache.close().await;
    }
    for _ in 0..50 {
        let dropped = sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(&name)
            .execute(&pool)
            .await;
        if dropped.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for sql in [
        format!("DROP PUBLICATION IF EXISTS {name}"),
        format!("DROP SCHEMA {name} CASCADE"),
    ] {
        sqlx::query(&sql).execute(&pool).await.map_err(fail)?;
    }
    Ok(report)
}
