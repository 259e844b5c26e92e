//! Multi-node scenarios over a real Redis: each "node" is a full engine with its own connections
//! ([`strata_testkit::cluster`]).
//!
//! - `stampede --nodes N`: a cold key requested `requests` times at once, spread over N nodes, with distributed
//!   coalescing (Redis leases), beside naive cache-aside over the same Redis (GET; on a miss load and SET).
//! - `hotkey --nodes N`: one key read as fast as possible on every node with L1 off, with and without hot-key
//!   pinning; counts the reads that reached Redis.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use hdrhistogram::Histogram;
use strata::codec::Json;
use strata::{Error, HotKeys, Policy};
use strata_core::{Compression, Envelope, EnvelopeKind};
use strata_testkit::cluster::{Cluster, ClusterOptions};

/// The figures of a multi-node stampede.
#[derive(Debug, Clone)]
pub struct ClusterStampedeReport {
    /// Nodes.
    pub nodes: usize,
    /// Requests over all nodes.
    pub requests: usize,
    /// Source loads with Strata (leases + single-flight).
    pub source_loads: usize,
    /// Source loads with naive cache-aside over the same Redis.
    pub naive_source_loads: usize,
    /// 99th percentile request latency with Strata.
    pub p99_ms: f64,
    /// 99th percentile with naive cache-aside.
    pub naive_p99_ms: f64,
}

impl std::fmt::Display for ClusterStampedeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stampede nodes={} requests={} source_loads={} naive_source_loads={} p99_ms={:.1} naive_p99_ms={:.1}",
            self.nodes,
            self.requests,
            self.source_loads,
            self.naive_source_loads,
            self.p99_ms,
            self.naive_p99_ms
        )
    }
}

fn source(
    calls: Arc<AtomicUsize>,
    load: Duration,
) -> impl Fn() -> futures::future::BoxFuture<'static, Option<String>> + Clone + Send + Sync {
    move || {
        let calls = calls.clone();
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(load).await;
            Some("{\"sku\":\"tv-55\",\"price\":499}".to_string())
        })
    }
}

/// Runs the multi-node stampede.
pub async fn stampede(
    redis: &str,
    nodes: usize,
    requests: usize,
    load: Duration,
) -> Result<ClusterStampedeReport, Error> {
    let cluster = Cluster::start(ClusterOptions {
        nodes,
        redis_url: redis.to_owned(),
        name: "bench-stampede".into(),
        ..ClusterOptions::default()
    })
    .await?;
    let policy = Policy::builder()
        .with_ttl(Duration::from_secs(60))
        .with_distributed_coalescing(true)
        .with_lease_wait(Duration::from_secs(5))
        .build()
        .expect("valid policy");
    let nss = cluster.namespace::<String>("product", policy, Json);
    let calls = Arc::new(AtomicUsize::new(0));
    let load_fn = source(calls.clone(), load);
    let strata_lat = timed(requests, nodes, |i| {
        let (ns, load_fn) = (nss[i % nodes].clone(), load_fn.clone());
        async move {
            ns.get_or_load("tv-55", load_fn)
                .await
                .expect("load succeeds");
        }
    })
    .await;
    let source_loads = calls.swap(0, Ordering::SeqCst);

    // Naive cache-aside over the same Redis: GET, on a miss load and SET.
    let naive_lat = timed(requests, nodes, |i| {
        let (l2, load_fn) = (cluster.nodes[i % nodes].l2.clone(), load_fn.clone());
        async move {
            if l2.get("naive", "tv-55").await.expect("GET").is_none() {
                let v = load_fn().await.expect("value");
                let env = Envelope {
                    created_at: 0,
                    fresh_until: u64::MAX / 4,
                    stale_until: u64::MAX / 4,
                    version: None,
                    tags: vec![],
                    delta_ms: 0,
                    etag: None,
                    kind: EnvelopeKind::Value(v.into_bytes()),
                };
                l2.write("naive", "tv-55", &env, Compression::None, 1)
                    .await
                    .expect("SET");
            }
        }
    })
    .await;
    let naive_source_loads = calls.load(Ordering::SeqCst);
    cluster.shutdown().await;
    let ms = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    Ok(ClusterStampedeReport {
        nodes,
        requests,
        source_loads,
        naive_source_loads,
        p99_ms: ms(&strata_lat),
        naive_p99_ms: ms(&naive_lat),
    })
}

/// Starts `requests` requests at once (request `i` on node `i % nodes`) and records their latencies.
async fn timed<F, Fut>(requests: usize, _nodes: usize, request: F) -> Histogram<u64>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..requests)
        .map(|i| {
            let (fut, mut go) = (request(i), go_rx.clone());
            tokio::spawn(async move {
                go.wait_for(|g| *g).await.expect("start signal");
                let started = Instant::now();
                fut.await;
                started.elapsed()
            })
        })
        .collect();
    tokio::task::yield_now().await;
    go_tx.send_replace(true);
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for t in join_all(tasks).await {
        let took = t.expect("request task");
        hist.record(took.as_micros() as u64).expect("in range");
    }
    hist
}

/// The figures of the hot-key scenario.
#[derive(Debug, Clone)]
pub struct HotKeyReport {
    /// Reads per variant over all nodes.
    pub reads: usize,
    /// Reads that reached Redis with hot-key pinning.
    pub l2_reads_pinned: u64,
    /// Reads that reached Redis without it.
    pub l2_reads_unpinned: u64,
}

impl HotKeyReport {
    /// How much pinning cut the Redis reads, in percent.
    pub fn reduction_pct(&self) -> f64 {
        if self.l2_reads_unpinned == 0 {
            return 0.0;
        }
        100.0 * (1.0 - self.l2_reads_pinned as f64 / self.l2_reads_unpinned as f64)
    }
}

impl std::fmt::Display for HotKeyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hotkey reads={} l2_reads_pinned={} l2_reads_unpinned={} reduction_pct={:.2}",
            self.reads,
            self.l2_reads_pinned,
            self.l2_reads_unpinned,
            self.reduction_pct()
        )
    }
}

/// Runs the hot-key scenario: `reads` reads of one key spread over `nodes` nodes, L1 off, 32 concurrent readers
/// per node, with and without pinning.
pub async fn hotkey(redis: &str, nodes: usize, reads: usize) -> Result<HotKeyReport, Error> {
    let mut l2_reads = [0u64; 2];
    for (i, pinned) in [true, false].into_iter().enumerate() {
        let cluster = Cluster::start(ClusterOptions {
            nodes,
            redis_url: redis.to_owned(),
            name: "bench-hotkey".into(),
            ..ClusterOptions::default()
        })
        .await?;
        let policy = Policy::builder()
            .with_ttl(Duration::from_secs(60))
            .with_l1(false)
            .with_hot_keys(HotKeys {
                enabled: pinned,
                threshold_per_sec: 100,
                pin_ttl: Duration::from_secs(1),
                l2_replicas: 0,
            })
            .build()
            .expect("valid policy");
        let nss = cluster.namespace::<String>("product", policy, Json);
        nss[0]
            .insert("flash-sale", "{\"sku\":\"flash-sale\",\"price\":1}".into())
            .await;
        let before = cluster.l2_reads();
        let per_reader = reads / nodes / 32;
        let readers = nss.iter().flat_map(|ns| {
            (0..32).map(move |_| {
                let ns = ns.clone();
                tokio::spawn(async move {
                    for _ in 0..per_reader {
                        ns.get_or_load("flash-sale", || async { None::<String> })
                            .await
                            .expect("read");
                    }
                })
            })
        });
        for r in join_all(readers).await {
            r.expect("reader");
        }
        l2_reads[i] = cluster.l2_reads() - before;
        cluster.shutdown().await;
    }
    Ok(HotKeyReport {
        reads: reads / nodes / 32 * nodes * 32,
        l2_reads_pinned: l2_reads[0],
        l2_reads_unpinned: l2_reads[1],
    })
}
