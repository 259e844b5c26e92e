//! `strata bench api`: L1 hits through the data API, and the server's memory with its L1 budget full. It uses
//! nothing of the server but its binary, so it lives here, not in the server (whose production build carries no
//! benchmark or test code).
//!
//! The server runs as a child process (`strata serve` with a generated config: one namespace, no source, the
//! whole L1 budget) pinned to the last core; this process — the load generator — pins itself to the first one
//! (`taskset`, when the machine has it and more than one core). A hot working set (a quarter of the budget) is
//! written and read, then 1.5× the budget of cold values is written, so L1 is full and evicting; then
//! `connections` keep-alive HTTP/1.1 connections `GET` random hot keys for `seconds`. Figures: successful hits per second, p99 latency per request, and
//! the server's resident set size divided by the L1 budget (goal ≤ 1.3: the budget is what the server costs).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::loadgen::{hammer, Conn, Pinning};

/// Figures of one run.
#[derive(Debug, Clone, Copy)]
pub struct ApiReport {
    /// Successful L1 hits per second.
    pub hit_rps: f64,
    /// 99th percentile request latency, ms.
    pub p99_ms: f64,
    /// Server RSS / L1 budget, with the budget full.
    pub rss_over_budget: f64,
    /// Requests that were not hits.
    pub non_hits: u64,
    /// Whether server and client ran on separate cores.
    pub pinned: bool,
}

impl std::fmt::Display for ApiReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "api hit_rps={:.0} p99_ms={:.2} rss_over_budget={:.2} non_hits={} pinned={}",
            self.hit_rps, self.p99_ms, self.rss_over_budget, self.non_hits, self.pinned
        )
    }
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

/// Runs the scenario.
pub async fn run(
    strata: &std::path::Path,
    seconds: f64,
    connections: usize,
    budget_mib: u64,
    value_bytes: usize,
) -> anyhow::Result<ApiReport> {
    let pinning = Pinning::detect();
    let pinned = pinning.pinned;
    let dir = std::env::temp_dir().join(format!("strata-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("strata.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nmax_body = \"4MiB\"\n\n[l1]\nbudget = \"{budget_mib}MiB\"\n\n[namespaces.blob]\nttl = \"1h\"\njitter = 0.0\n"
        ),
    )?;
    let mut child = pinning
        .server_command(strata)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the server")?;
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let addr = loop {
        let line = lines
            .next()
            .context("the server exited before listening")??;
        if let Some(rest) = line.strip_prefix("strata listening on http://") {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    pinning.pin_load_generator();
    let result = measure(
        &addr,
        pid,
        seconds,
        connections,
        budget_mib,
        value_bytes,
        pinned,
    )
    .await;
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(
    addr: &str,
    pid: u32,
    seconds: f64,
    connections: usize,
    budget_mib: u64,
    value_bytes: usize,
    pinned: bool,
) -> anyhow::Result<ApiReport> {
    let budget = budget_mib << 20;
    // A JSON string of `value_bytes`. The hot working set (a quarter of the budget) is written and read twice, so
    // the eviction policy knows it is hot; then 1.5× the budget of cold values is written, so L1 is full and
    // evicting while the benchmark reads the working set.
    let value = format!("\"{}\"", "x".repeat(value_bytes.saturating_sub(2)));
    let hot = (budget as usize / 4) / value_bytes.max(1);
    let cold = (budget as usize * 3 / 2) / value_bytes.max(1);
    let writers = connections.clamp(1, 16);
    let spread = |count: usize, method: &'static str, prefix: &'static str, body: String| {
        let next = Arc::new(AtomicU64::new(0));
        let addr = addr.to_owned();
        async move {
            let mut tasks = Vec::new();
            for _ in 0..writers {
                let (next, body, addr) = (next.clone(), body.clone(), addr.clone());
                tasks.push(tokio::spawn(async move {
                    let mut c = Conn::open(&addr).await?;
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if k >= count {
                            return Ok::<(), anyhow::Error>(());
                        }
                        let (status, _) = c
                            .request(
                                method,
                                &format!("/v1/blob/{prefix}{}", k % count),
                                body.as_bytes(),
                            )
                            .await?;
                        if status != 200 {
                            bail!("{method} {prefix}{k} answered {status}");
                        }
                    }
                }));
            }
            for t in tasks {
                t.await??;
            }
            Ok::<(), anyhow::Error>(())
        }
    };
    spread(hot, "PUT", "hot", value.clone()).await?;
    spread(hot, "GET", "hot", String::new()).await?;
    spread(hot, "GET", "hot", String::new()).await?;
    spread(cold, "PUT", "cold", value.clone()).await?;
    let hot = hot.max(1);
    let load = hammer(addr, connections, seconds, move |i| {
        format!("/v1/blob/hot{}", (i >> 33) as usize % hot)
    })
    .await?;
    let rss = rss_bytes(pid)?;
    Ok(ApiReport {
        hit_rps: load.hits as f64 / load.elapsed,
        p99_ms: load.hist.value_at_quantile(0.99) as f64 / 1000.0,
        rss_over_budget: rss as f64 / budget as f64,
        non_hits: load.other,
        pinned,
    })
}
