//! `strata bench slow-dependency`: the seeds' story of one slow dependency (200 ms → 12 s) that fills every
//! queue and takes the whole service down, run against a real `strata serve` twice — **naive** (no bulkhead, no
//! breaker, the default 30 s hard timeout) and **Strata** (a bulkhead and a breaker on the sick namespace, a 1 s
//! hard timeout, fail-safe stale answers) — with the same load.
//!
//! # The scenario
//! - One server, two namespaces on HTTP sources served by a stand-in backend in this process: `healthy`
//!   (answers in `healthy_ms`) and `sick` (answers in 200 ms, then `sick_ms` during the outage, then 200 ms
//!   again). Both have a 1 s TTL over 100 keys, so both keep reading through to their source.
//! - The server holds at most `max_connections` connections (`server.max_connections`): the finite resource the
//!   story's thread pool stands for. An async server has no thread to lose, but every request waiting on the
//!   sick source still holds a connection.
//! - Open-loop load (requests at a fixed rate, whatever the answers do): `healthy_rate` and `sick_rate`
//!   requests per second, each key at random. Every key is read once before the clock starts, so stale values
//!   exist when the outage begins.
//! - Phases: `before` seconds healthy, `during` seconds of outage, `after` seconds healed.
//!
//! # The figures
//! Per run: the healthy namespace's p99 of successful answers before and during the outage and its errors
//! during it (a refused connection is a `503`), the sick namespace's slowest answer (requests started during
//! or after the outage) and how its answers split (fresh, stale, `503`, `504`, other), the most requests in
//! flight at once (client side) and the most loads in flight against the sick source (backend side), the
//! server's peak memory (`VmHWM`), and the recovery time (from the heal until the last answer that was not a
//! fresh `200`, of requests started after the heal). Prints `slow_dependency healthy_p99_before_ms=…
//! healthy_p99_during_ms=… sick_max_ms=… hard_timeout_ms=… naive_healthy_p99_during_ms=… naive_sick_max_ms=…`
//! followed by the rest.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use rand::Rng;

use crate::purge::{free_port, locate_strata, percentile, spawn_serve};

/// The run's shape.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `strata` binary.
    pub strata: Option<PathBuf>,
    /// Seconds before the outage.
    pub before: f64,
    /// Seconds of outage.
    pub during: f64,
    /// Seconds after the heal.
    pub after: f64,
    /// The sick source's latency during the outage (ms).
    pub sick_ms: u64,
    /// The healthy source's latency (ms).
    pub healthy_ms: u64,
    /// Requests per second to the healthy namespace.
    pub healthy_rate: u64,
    /// Requests per second to the sick namespace.
    pub sick_rate: u64,
    /// `server.max_connections`.
    pub max_connections: usize,
    /// The protected run's hard timeout (ms).
    pub hard_timeout_ms: u64,
}

/// The sick source's latency outside the outage.
const SICK_BASE_MS: u64 = 200;
/// Keys per namespace.
const KEYS: usize = 100;

/// One run's figures.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// p99 of the healthy namespace's successful answers before the outage (ms).
    pub healthy_p99_before_ms: f64,
    /// The same during the outage.
    pub healthy_p99_during_ms: f64,
    /// Healthy requests started during the outage.
    pub healthy_during: u64,
    /// Of those, the ones that failed (any status but 200, or no answer).
    pub healthy_errors_during: u64,
    /// The sick namespace's slowest answer, of requests started during or after the outage (ms).
    pub sick_max_ms: f64,
    /// Sick answers during the outage: fresh 200s.
    pub sick_fresh: u64,
    /// Stale 200s.
    pub sick_stale: u64,
    /// 503s.
    pub sick_503: u64,
    /// 504s.
    pub sick_504: u64,
    /// Anything else (another status, no answer).
    pub sick_other: u64,
    /// Most requests in flight at once (client side).
    pub peak_in_flight: u64,
    /// Most loads in flight against the sick source at once (backend side).
    pub peak_sick_loads: u64,
    /// The server's peak resident memory (MiB).
    pub rss_peak_mib: f64,
    /// From the heal until the last answer that was not a fresh 200, of requests started after it (ms).
    pub recovery_ms: f64,
}

/// Both runs.
#[derive(Debug, Clone)]
pub struct Report {
    /// With Strata's protection.
    pub strata: Figures,
    /// Without.
    pub naive: Figures,
    /// The protected run's hard timeout (ms).
    pub hard_timeout_ms: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, n) = (&self.strata, &self.naive);
        write!(
            f,
            "slow_dependency healthy_p99_before_ms={:.1} healthy_p99_during_ms={:.1} sick_max_ms={:.0} \
             hard_timeout_ms={} naive_healthy_p99_during_ms={:.1} naive_sick_max_ms={:.0}",
            s.healthy_p99_before_ms,
            s.healthy_p99_during_ms,
            s.sick_max_ms,
            self.hard_timeout_ms,
            n.healthy_p99_during_ms,
            n.sick_max_ms
        )?;
        for (prefix, r) in [("", s), ("naive_", n)] {
            write!(
                f,
                " {prefix}healthy_errors_during={}/{} {prefix}sick_fresh={} {prefix}sick_stale={} \
                 {prefix}sick_503={} {prefix}sick_504={} {prefix}sick_other={} {prefix}peak_in_flight={} \
                 {prefix}peak_sick_loads={} {prefix}rss_peak_mib={:.0} {prefix}recovery_ms={:.0}",
                r.healthy_errors_during,
                r.healthy_during,
                r.sick_fresh,
                r.sick_stale,
                r.sick_503,
                r.sick_504,
                r.sick_other,
                r.peak_in_flight,
                r.peak_sick_loads,
                r.rss_peak_mib,
                r.recovery_ms
            )?;
        }
        write!(
            f,
            " healthy_p99_ratio={:.2}",
            s.healthy_p99_during_ms / s.healthy_p99_before_ms
        )
    }
}

/// The stand-in backend: `/healthy/{k}` and `/sick/{k}` with their latencies.
struct Backend {
    addr: std::net::SocketAddr,
    sick_ms: Arc<AtomicU64>,
    sick_peak: Arc<AtomicU64>,
}

impl Backend {
    async fn start(healthy_ms: u64) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let sick_ms = Arc::new(AtomicU64::new(SICK_BASE_MS));
        let sick_in_flight = Arc::new(AtomicU64::new(0));
        let sick_peak = Arc::new(AtomicU64::new(0));
        let (ms, n, peak) = (sick_ms.clone(), sick_in_flight.clone(), sick_peak.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (ms, n, peak) = (ms.clone(), n.clone(), peak.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (ms, n, peak) = (ms.clone(), n.clone(), peak.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            if path.starts_with("/sick/") {
                                let now = n.fetch_add(1, Ordering::SeqCst) + 1;
                                peak.fetch_max(now, Ordering::SeqCst);
                                let delay = ms.load(Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                                n.fetch_sub(1, Ordering::SeqCst);
                            } else {
                                tokio::time::sleep(Duration::from_millis(healthy_ms)).await;
                            }
                            let body = serde_json::json!({ "path": path }).to_string();
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            sick_ms,
            sick_peak,
        })
    }
}

/// What one request got.
#[derive(Debug, Clone, Copy)]
struct Sample {
    sick: bool,
    /// When it started, from the clock's start (s).
    started: f64,
    latency_ms: f64,
    /// 0: no answer.
    status: u16,
    stale: bool,
}

fn config(o: &Options, backend: &Backend, protected: bool) -> String {
    let b = backend.addr;
    let protection = |sick: bool| {
        if !protected {
            return String::new();
        }
        let common = format!(
            "hard_timeout = \"{}ms\"\nfail_safe_for = \"60s\"\n",
            o.hard_timeout_ms
        );
        if sick {
            format!(
                "{common}max_loads = 16\nmax_queue = 0\nmax_wait = \"10ms\"\nbreaker_failures = 3\nbreaker_open_for = \"1s\"\n"
            )
        } else {
            format!("{common}max_loads = 32\nmax_queue = 256\nmax_wait = \"200ms\"\n")
        }
    };
    format!(
        "[server]\nmax_connections = {max}\n\n\
         [sources.healthy]\nhttp = \"http://{b}/healthy\"\ntimeout = \"30s\"\nretries = 0\n\n\
         [sources.sick]\nhttp = \"http://{b}/sick\"\ntimeout = \"30s\"\nretries = 0\n\n\
         [namespaces.healthy]\nsource = \"healthy\"\nttl = \"1s\"\n{h}\n\
         [namespaces.sick]\nsource = \"sick\"\nttl = \"1s\"\n{s}",
        max = o.max_connections,
        h = protection(false),
        s = protection(true),
    )
}

async fn one(client: &Client<HttpConnector, Full<Bytes>>, url: String) -> (u16, bool) {
    let Ok(req) = Request::get(url).body(Full::new(Bytes::new())) else {
        return (0, false);
    };
    match tokio::time::timeout(Duration::from_secs(60), client.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let stale = resp
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("stale"));
            let _ = resp.into_body().collect().await;
            (status, stale)
        }
        _ => (0, false),
    }
}

fn peak_rss_mib(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return f64::NAN };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One run (naive or protected).
async fn run_one(o: &Options, strata: &PathBuf, protected: bool) -> anyhow::Result<Figures> {
    let backend = Backend::start(o.healthy_ms).await?;
    let dir = std::env::temp_dir().join(format!(
        "strata-bench-slow-{}-{}",
        std::process::id(),
        if protected { "strata" } else { "naive" }
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("slow.toml");
    std::fs::write(&file, config(o, &backend, protected))?;
    let port = free_port()?;
    let child = spawn_serve(strata, &file, &dir.join("data"), &[], port).await?;
    let base = format!("http://127.0.0.1:{port}");
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http();

    // Every key read once: stale values exist when the outage begins.
    // Four at a time: well inside the sick namespace's bulkhead.
    for ns in ["healthy", "sick"] {
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(4) {
            let reads = chunk
                .iter()
                .map(|k| one(&client, format!("{base}/v1/{ns}/k{k}")));
            for (status, _) in futures::future::join_all(reads).await {
                anyhow::ensure!(status == 200, "warming {ns}: status {status}");
            }
        }
    }

    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let in_flight = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let total = o.before + o.during + o.after;
    let start = Instant::now();
    let mut pacers = Vec::new();
    for (sick, rate) in [(false, o.healthy_rate), (true, o.sick_rate)] {
        let (client, base, samples, in_flight, peak) = (
            client.clone(),
            base.clone(),
            samples.clone(),
            in_flight.clone(),
            peak.clone(),
        );
        pacers.push(tokio::spawn(async move {
            let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut requests = Vec::new();
            while start.elapsed().as_secs_f64() < total {
                tick.tick().await;
                let key = rand::rng().random_range(0..KEYS);
                let ns = if sick { "sick" } else { "healthy" };
                let url = format!("{base}/v1/{ns}/k{key}");
                let (client, samples, in_flight, peak) = (
                    client.clone(),
                    samples.clone(),
                    in_flight.clone(),
                    peak.clone(),
                );
                requests.push(tokio::spawn(async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let t0 = Instant::now();
                    let (status, stale) = one(&client, url).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    samples.lock().push(Sample {
                        sick,
                        started: t0.duration_since(start).as_secs_f64(),
                        latency_ms: t0.elapsed().as_secs_f64() * 1e3,
                        status,
                        stale,
                    });
                }));
            }
            futures::future::join_all(requests).await;
        }));
    }
    // The outage, then the heal.
    tokio::time::sleep(Duration::from_secs_f64(o.before)).await;
    backend.sick_ms.store(o.sick_ms, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(o.during)).await;
    backend.sick_ms.store(SICK_BASE_MS, Ordering::SeqCst);
    for p in pacers {
        p.await.context("a load task")?;
    }
    let rss = peak_rss_mib(child.id());
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);

    let samples = samples.lock().clone();
    let (outage, heal) = (o.before, o.before + o.during);
    let p99 = |from: f64, to: f64| {
        let mut l: Vec<f64> = samples
            .iter()
            .filter(|s| !s.sick && s.status == 200 && s.started >= from && s.started < to)
            .map(|s| s.latency_ms)
            .collect();
        l.sort_by(f64::total_cmp);
        percentile(&l, 0.99)
    };
    let healthy_during: Vec<&Sample> = samples
        .iter()
        .filter(|s| !s.sick && s.started >= outage && s.started < heal)
        .collect();
    let sick_during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sick && s.started >= outage && s.started < heal)
        .collect();
    let count = |f: &dyn Fn(&Sample) -> bool| sick_during.iter().filter(|s| f(s)).count() as u64;
    let recovery_ms = samples
        .iter()
        .filter(|s| s.sick && s.started >= heal && (s.status != 200 || s.stale))
        .map(|s| (s.started - heal) * 1e3 + s.latency_ms)
        .fold(0.0, f64::max);
    Ok(Figures {
        healthy_p99_before_ms: p99(0.0, outage),
        healthy_p99_during_ms: p99(outage, heal),
        healthy_during: healthy_during.len() as u64,
        healthy_errors_during: healthy_during.iter().filter(|s| s.status != 200).count() as u64,
        sick_max_ms: samples
            .iter()
            .filter(|s| s.sick && s.started >= outage)
            .map(|s| s.latency_ms)
            .fold(0.0, f64::max),
        sick_fresh: count(&|s| s.status == 200 && !s.stale),
        sick_stale: count(&|s| s.status == 200 && s.stale),
        sick_503: count(&|s| s.status == 503),
        sick_504: count(&|s| s.status == 504),
        sick_other: count(&|s| !matches!(s.status, 200 | 503 | 504)),
        peak_in_flight: peak.load(Ordering::SeqCst),
        peak_sick_loads: backend.sick_peak.load(Ordering::SeqCst),
        rss_peak_mib: rss,
        recovery_ms,
    })
}

/// Runs the scenario: naive first, then protected.
pub async fn run(o: Options) -> anyhow::Result<Report> {
    anyhow::ensure!(
        o.before > 0.0 && o.during > 0.0 && o.after > 0.0,
        "every phase needs a length"
    );
    let strata = locate_strata(o.strata.clone())?;
    let naive = run_one(&o, &strata, false).await.context("the naive run")?;
    let protected = run_one(&o, &strata, true)
        .await
        .context("the protected run")?;
    Ok(Report {
        strata: protected,
        naive,
        hard_timeout_ms: o.hard_timeout_ms,
    })
}
