//! `invalidation`: how long an invalidation takes to evict a key from every other node's L1 through the Redis bus.
//!
//! N nodes (caches in one process, each with its own Redis connections, as separate processes would have) on
//! one stream. Per sample: every node caches the key, node 0 invalidates it, and the clock stops when the last of
//! the other nodes no longer holds it (checked in a tight yield loop).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use strata::{Cache, Namespace};
use strata_redis::{RedisBus, RedisBusOptions};

/// Figures of one run.
#[derive(Debug, Clone, Copy)]
pub struct InvalidationReport {
    pub nodes: usize,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl std::fmt::Display for InvalidationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalidation nodes={} samples={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
            self.nodes, self.samples, self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

pub async fn run(
    url: &str,
    nodes: usize,
    samples: usize,
) -> Result<InvalidationReport, strata_core::Error> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let stream = format!("strata-bench:bus:{}:{nanos}", std::process::id());
    let mut cluster: Vec<(Namespace<u64>, Cache)> = Vec::new();
    for _ in 0..nodes.max(2) {
        let bus = RedisBus::connect(
            url,
            RedisBusOptions {
                stream: stream.clone(),
                ..RedisBusOptions::default()
            },
        )
        .await?;
        let cache = Cache::builder().with_bus(Arc::new(bus)).build();
        let ns = cache.namespace::<u64>("price").build()?;
        cluster.push((ns, cache));
    }
    // Let every reader issue its first XREAD.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..samples {
        let key = format!("sku-{i}");
        for (ns, _) in &cluster {
            ns.get_or_load(&key, || async { Some(1u64) }).await?;
        }
        let started = Instant::now();
        cluster[0].0.invalidate(&key).await;
        while cluster[1..].iter().any(|(ns, _)| ns.l1_holds(&key)) {
            if started.elapsed() > Duration::from_secs(5) {
                return Err(strata_core::Error::Timeout {
                    tier: strata_core::Tier::L2,
                    after: Duration::from_secs(5),
                });
            }
            tokio::task::yield_now().await;
        }
        hist.record(started.elapsed().as_micros().max(1) as u64)
            .expect("in range");
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let report = InvalidationReport {
        nodes: cluster.len(),
        samples,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1000.0,
    };
    for (_, cache) in cluster {
        cache.close().await;
    }
    Ok(report)
}
