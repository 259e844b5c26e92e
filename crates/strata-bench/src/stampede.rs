//! `stampede`: the Black Friday story. A hot key expires while N requests arrive at once and the source takes
//! `load` to answer. Three runs with the same key, load and request count:
//! - Strata (`get_or_load`: single-flight),
//! - naive cache-aside (`get`, on a miss call the source and `insert`): every request that misses loads,
//! - Strata with stale-while-revalidate: requests get the stale value at once while one refresh runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use strata::{Cache, Namespace, Policy};

/// The outcome of one stampede run.
#[derive(Debug, Clone)]
pub struct StampedeReport {
    /// Requests sent.
    pub requests: usize,
    /// Source calls with single-flight.
    pub loader_calls: usize,
    /// Source calls with naive cache-aside.
    pub naive_loader_calls: usize,
    /// Median request latency with single-flight.
    pub p50_ms: f64,
    /// 99th percentile with single-flight.
    pub p99_ms: f64,
    /// 99th percentile with naive cache-aside.
    pub naive_p99_ms: f64,
    /// 99th percentile with stale-while-revalidate.
    pub swr_p99_ms: f64,
    /// Source calls with stale-while-revalidate.
    pub swr_loader_calls: usize,
}

impl std::fmt::Display for StampedeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stampede requests={} loader_calls={} naive_loader_calls={} p50_ms={:.1} p99_ms={:.1} swr_p99_ms={:.2}",
            self.requests, self.loader_calls, self.naive_loader_calls, self.p50_ms, self.p99_ms, self.swr_p99_ms
        )
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    SingleFlight,
    Naive,
    StaleWhileRevalidate,
}

/// Runs the three variants on the current Tokio runtime.
pub async fn run(requests: usize, load: Duration) -> StampedeReport {
    let (calls, lat) = one(Mode::SingleFlight, requests, load).await;
    let (naive_calls, naive_lat) = one(Mode::Naive, requests, load).await;
    let (swr_calls, swr_lat) = one(Mode::StaleWhileRevalidate, requests, load).await;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    StampedeReport {
        requests,
        loader_calls: calls,
        naive_loader_calls: naive_calls,
        p50_ms: ms(&lat, 0.5),
        p99_ms: ms(&lat, 0.99),
        naive_p99_ms: ms(&naive_lat, 0.99),
        swr_p99_ms: ms(&swr_lat, 0.99),
        swr_loader_calls: swr_calls,
    }
}

async fn one(mode: Mode, requests: usize, load: Duration) -> (usize, Histogram<u64>) {
    let ttl = Duration::from_millis(200);
    let mut policy = Policy::builder().with_ttl(ttl).with_jitter(0.0);
    if mode == Mode::StaleWhileRevalidate {
        policy = policy.with_stale_for(Duration::from_secs(60));
    }
    let ns: Namespace<String> = Cache::new()
        .namespace("product")
        .with_policy(policy.build().expect("valid policy"))
        .with_weigher(String::len)
        .build()
        .expect("namespace");
    let calls = Arc::new(AtomicUsize::new(0));
    let source = {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(load).await;
                Some("{\"sku\":\"tv-55\",\"price\":499}".to_string())
            }
        }
    };
    // Warm the key, then let it expire: the requests arrive "at expiry".
    ns.insert("tv-55", "{\"sku\":\"tv-55\",\"price\":549}".to_string())
        .await;
    tokio::time::sleep(ttl + Duration::from_millis(20)).await;
    calls.store(0, Ordering::SeqCst);

    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..requests)
        .map(|_| {
            let (ns, source, mut go) = (ns.clone(), source.clone(), go_rx.clone());
            tokio::spawn(async move {
                go.wait_for(|g| *g).await.expect("start signal");
                let started = Instant::now();
                match mode {
                    Mode::Naive => {
                        if ns.get("tv-55").is_none() {
                            let v = source().await.expect("value");
                            ns.insert("tv-55", v).await;
                        }
                    }
                    _ => {
                        ns.get_or_load("tv-55", source)
                            .await
                            .expect("load succeeds");
                    }
                }
                started.elapsed()
            })
        })
        .collect();
    tokio::task::yield_now().await;
    go_tx.send_replace(true);
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for t in tasks {
        let took = t.await.expect("request task");
        hist.record(took.as_micros() as u64).expect("in range");
    }
    // Let a background refresh (SWR) finish before counting.
    tokio::time::sleep(load * 2).await;
    (calls.load(Ordering::SeqCst), hist)
}
