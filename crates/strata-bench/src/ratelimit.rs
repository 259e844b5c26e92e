//! `strata bench ratelimit`: how exactly the cluster-wide limiter (`strata_redis::RedisLimiter`) holds its
//! policy with `nodes` nodes sharing one Redis, and what a decision costs beside one plain `INCR`.
//!
//! For each algorithm, two rounds on fresh keys:
//! - **burst**: every node fires `3 × limit` requests at once (`tasks` concurrent per node) against a quota of
//!   `limit` per 10 s, inside one 10 s window;
//! - **steady overload**: every node offers its share of `2 × limit` per second, paced, for `windows` whole
//!   1-second windows (from an edge of Redis's clock) against a quota of `limit` per second.
//!
//! Accuracy is admitted ÷ what the policy allows over the span the decisions were made in, by Redis's own
//! timestamps (`Quota::allowance`: the bucket algorithms `burst + rate · span`, the window algorithms `limit`
//! per window touched); the printed `accuracy` is the round farther from 1. The cost is the mean round trip of
//! one decision from one client, beside the mean of plain `INCR`s on the same connection, measured in the same
//! run. Prints `ratelimit algorithm=… nodes=… accuracy=… cost_us=… incr_us=… burst_accuracy=…
//! steady_accuracy=…`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use strata::limit::{Algorithm, Quota};
use strata_redis::RedisLimiter;

/// The run's shape.
#[derive(Debug, Clone)]
pub struct Options {
    /// Redis.
    pub redis: String,
    /// Nodes (connections) sharing each limit.
    pub nodes: usize,
    /// The quota's limit (per 10 s in the burst round, per second in the steady round).
    pub limit: u64,
    /// Whole windows in the steady round.
    pub windows: u64,
    /// Concurrent requests per node in the burst round.
    pub tasks: usize,
    /// Sequential decisions (and `INCR`s) for the cost.
    pub cost_samples: usize,
    /// Only this algorithm.
    pub only: Option<Algorithm>,
}

/// One algorithm's figures.
#[derive(Debug, Clone)]
pub struct Report {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Nodes.
    pub nodes: usize,
    /// Admitted ÷ allowed in the burst round.
    pub burst_accuracy: f64,
    /// Admitted ÷ allowed in the steady round.
    pub steady_accuracy: f64,
    /// Mean µs per decision.
    pub cost_us: f64,
    /// Mean µs per plain `INCR`.
    pub incr_us: f64,
}

impl Report {
    /// The round farther from 1.
    pub fn accuracy(&self) -> f64 {
        if (self.burst_accuracy - 1.0).abs() >= (self.steady_accuracy - 1.0).abs() {
            self.burst_accuracy
        } else {
            self.steady_accuracy
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ratelimit algorithm={} nodes={} accuracy={:.4} cost_us={:.1} incr_us={:.1} burst_accuracy={:.4} steady_accuracy={:.4}",
            self.algorithm.name(),
            self.nodes,
            self.accuracy(),
            self.cost_us,
            self.incr_us,
            self.burst_accuracy,
            self.steady_accuracy
        )
    }
}

async fn redis_ms(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(s * 1000 + us / 1000)
}

/// Sleeps until just past the next edge of `period_ms` on Redis's clock.
async fn to_edge(
    conn: &mut redis::aio::MultiplexedConnection,
    period_ms: u64,
) -> anyhow::Result<u64> {
    let now = redis_ms(conn).await?;
    let edge = (now / period_ms + 1) * period_ms;
    tokio::time::sleep(Duration::from_millis(edge - now + 2)).await;
    Ok(edge)
}

/// Runs every algorithm (or `only`).
pub async fn run(o: Options) -> anyhow::Result<Vec<Report>> {
    anyhow::ensure!(
        o.nodes > 0 && o.limit > 0 && o.windows > 0 && o.tasks > 0,
        "nodes, limit, windows and tasks must be positive"
    );
    let client = redis::Client::open(o.redis.as_str())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {}", o.redis))?;
    let prefix = format!("strata-bench-ratelimit-{}", std::process::id());
    let mut reports = Vec::new();
    for algorithm in Algorithm::ALL {
        if o.only.is_some_and(|a| a != algorithm) {
            continue;
        }
        let mut nodes = Vec::new();
        for _ in 0..o.nodes {
            nodes.push(
                RedisLimiter::connect(
                    &o.redis,
                    &prefix,
                    algorithm.name(),
                    algorithm,
                    Duration::from_secs(5),
                )
                .await?,
            );
        }
        let nodes = Arc::new(nodes);

        // Burst: 3 × limit at once from every node's tasks, within one 10 s window.
        let burst_q = Quota::new(o.limit, Duration::from_secs(10));
        // The burst must fall inside one window: wait for the next edge only when less than 3 s are left.
        let now = redis_ms(&mut conn).await?;
        if burst_q.period_ms() - now % burst_q.period_ms() < 3_000 {
            to_edge(&mut conn, burst_q.period_ms()).await?;
        }
        let admitted = Arc::new(AtomicU64::new(0));
        let (first, last) = (
            Arc::new(AtomicU64::new(u64::MAX)),
            Arc::new(AtomicU64::new(0)),
        );
        let per_task = (3 * o.limit as usize).div_ceil(o.nodes * o.tasks);
        let mut handles = Vec::new();
        for n in 0..o.nodes {
            for _ in 0..o.tasks {
                let (nodes, admitted, first, last) =
                    (nodes.clone(), admitted.clone(), first.clone(), last.clone());
                handles.push(tokio::spawn(async move {
                    for _ in 0..per_task {
                        let (d, at) = nodes[n].acquire_at("burst", burst_q, 1).await?;
                        first.fetch_min(at, Ordering::Relaxed);
                        last.fetch_max(at, Ordering::Relaxed);
                        if d.allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok::<_, strata::Error>(())
                }));
            }
        }
        for h in handles {
            h.await??;
        }
        let span = last.load(Ordering::Relaxed) - first.load(Ordering::Relaxed);
        let burst_accuracy =
            admitted.load(Ordering::Relaxed) as f64 / burst_q.allowance(algorithm, span);

        // Steady overload: 2 × limit per second offered for `windows` whole windows.
        let steady_q = Quota::new(o.limit, Duration::from_secs(1));
        let start = to_edge(&mut conn, steady_q.period_ms()).await?;
        let end = start + o.windows * steady_q.period_ms();
        let admitted = Arc::new(AtomicU64::new(0));
        let per_node_rate = 2.0 * o.limit as f64 / o.nodes as f64;
        let interval = Duration::from_secs_f64(1.0 / per_node_rate);
        let mut handles = Vec::new();
        for n in 0..o.nodes {
            let (nodes, admitted) = (nodes.clone(), admitted.clone());
            handles.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                loop {
                    tick.tick().await;
                    let (d, at) = nodes[n].acquire_at("steady", steady_q, 1).await?;
                    if at >= end {
                        break;
                    }
                    if d.allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok::<_, strata::Error>(())
            }));
        }
        for h in handles {
            h.await??;
        }
        let steady_accuracy =
            admitted.load(Ordering::Relaxed) as f64 / steady_q.allowance(algorithm, end - start);

        // Cost: sequential decisions (on a quota that never refuses, so every one does the full work) beside
        // plain INCRs, on one connection each.
        let roomy = Quota::new(u64::MAX / 4, Duration::from_secs(60));
        let t = Instant::now();
        for i in 0..o.cost_samples {
            nodes[0]
                .acquire_at(&format!("cost-{}", i % 64), roomy, 1)
                .await?;
        }
        let cost_us = t.elapsed().as_secs_f64() * 1e6 / o.cost_samples as f64;
        let incr_key = format!("{prefix}:incr");
        let t = Instant::now();
        for _ in 0..o.cost_samples {
            let _: i64 = redis::cmd("INCR")
                .arg(&incr_key)
                .query_async(&mut conn)
                .await?;
        }
        let incr_us = t.elapsed().as_secs_f64() * 1e6 / o.cost_samples as f64;

        reports.push(Report {
            algorithm,
            nodes: o.nodes,
            burst_accuracy,
            steady_accuracy,
            cost_us,
            incr_us,
        });
    }
    // Clean up what the limiters left (they expire on their own too).
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
    Ok(reports)
}
