//! `xfetch`: what probabilistic early expiration (XFetch) buys, and what single-flight adds to it.
//!
//! One hot key, 1,000 requests per second, TTL 1 s, a source that takes 50 ms, simulated for `seconds` of virtual
//! time (Tokio's paused clock, so the run is deterministic in time and fast). Three variants:
//! - `ttl_only`: plain cache-aside with expiry, no coalescing — every request during a reload also reloads;
//! - `xfetch_alone`: cache-aside where each request runs the XFetch test itself, no coalescing;
//! - `xfetch_single_flight`: Strata's `get_or_load` with `EarlyRefresh::XFetch`, which refreshes in the background
//!   and at most once per key.
//!
//! Reported per variant: source calls per TTL period, and requests that had to wait for the source.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata::{Cache, EarlyRefresh, Policy, Status, TokioClock};

const TTL: Duration = Duration::from_secs(1);
const LOAD: Duration = Duration::from_millis(50);
const BETA: f64 = 1.0;

/// Per-variant figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Variant {
    /// Source calls per TTL period.
    pub calls_per_expiry: f64,
    /// Requests that waited for a source call.
    pub blocked: usize,
}

/// The outcome of an xfetch run.
#[derive(Debug, Clone, Copy)]
pub struct XFetchReport {
    /// Requests sent.
    pub requests: usize,
    /// Plain TTL, no coalescing.
    pub ttl_only: Variant,
    /// XFetch without coalescing.
    pub xfetch_alone: Variant,
    /// XFetch with single-flight (Strata).
    pub xfetch_single_flight: Variant,
}

impl std::fmt::Display for XFetchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "xfetch requests={} rate_per_s=1000 ttl_ms={} load_ms={} beta={BETA} \
             ttl_only_calls_per_expiry={:.2} ttl_only_blocked={} \
             xfetch_alone_calls_per_expiry={:.2} xfetch_alone_blocked={} \
             xfetch_single_flight_calls_per_expiry={:.2} xfetch_single_flight_blocked={}",
            self.requests,
            TTL.as_millis(),
            LOAD.as_millis(),
            self.ttl_only.calls_per_expiry,
            self.ttl_only.blocked,
            self.xfetch_alone.calls_per_expiry,
            self.xfetch_alone.blocked,
            self.xfetch_single_flight.calls_per_expiry,
            self.xfetch_single_flight.blocked,
        )
    }
}

/// Runs the three variants; must be called on a current-thread runtime with paused time.
pub async fn run(seconds: u64) -> XFetchReport {
    let requests = (seconds * 1000) as usize;
    XFetchReport {
        requests,
        ttl_only: naive(requests, false).await,
        xfetch_alone: naive(requests, true).await,
        xfetch_single_flight: strata(requests).await,
    }
}

fn periods(requests: usize) -> f64 {
    requests as f64 / 1000.0 / TTL.as_secs_f64()
}

/// A naive cache entry: value, fresh-until (virtual ms), last load duration (ms).
type NaiveSlot = Arc<Mutex<Option<(u64, f64, f64)>>>;

async fn naive(requests: usize, xfetch: bool) -> Variant {
    let slot: NaiveSlot = Arc::new(Mutex::new(None));
    let calls = Arc::new(AtomicUsize::new(0));
    let blocked = Arc::new(AtomicUsize::new(0));
    let origin = tokio::time::Instant::now();
    let now_ms = move || origin.elapsed().as_secs_f64() * 1000.0;
    let mut tasks = Vec::with_capacity(requests);
    for _ in 0..requests {
        let (slot, calls, blocked) = (slot.clone(), calls.clone(), blocked.clone());
        tasks.push(tokio::spawn(async move {
            let now = now_ms();
            let recompute = match *slot.lock() {
                None => true,
                Some((_, fresh_until, delta)) => {
                    let u = 1.0 - rand::random::<f64>();
                    now >= fresh_until || (xfetch && now - delta * BETA * u.ln() >= fresh_until)
                }
            };
            if recompute {
                blocked.fetch_add(1, Ordering::Relaxed);
                calls.fetch_add(1, Ordering::Relaxed);
                let start = now_ms();
                tokio::time::sleep(LOAD).await;
                let end = now_ms();
                *slot.lock() = Some((1, end + TTL.as_secs_f64() * 1000.0, end - start));
            }
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    futures::future::join_all(tasks).await;
    Variant {
        calls_per_expiry: calls.load(Ordering::Relaxed) as f64 / periods(requests),
        blocked: blocked.load(Ordering::Relaxed),
    }
}

async fn strata(requests: usize) -> Variant {
    let ns = Cache::builder()
        .with_clock(Arc::new(TokioClock::new()))
        .build()
        .namespace::<u64>("hot")
        .with_policy(
            Policy::builder()
                .with_ttl(TTL)
                .with_jitter(0.0)
                .with_early_refresh(EarlyRefresh::XFetch { beta: BETA })
                .build()
                .expect("valid policy"),
        )
        .build()
        .expect("namespace");
    let calls = Arc::new(AtomicUsize::new(0));
    let blocked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(requests);
    for _ in 0..requests {
        let (ns, calls, blocked) = (ns.clone(), calls.clone(), blocked.clone());
        tasks.push(tokio::spawn(async move {
            let l = ns
                .get_or_load("hot", || {
                    calls.fetch_add(1, Ordering::Relaxed);
                    async {
                        tokio::time::sleep(LOAD).await;
                        Some(1u64)
                    }
                })
                .await
                .expect("load succeeds");
            if matches!(l.status(), Status::Miss | Status::Coalesced) {
                blocked.fetch_add(1, Ordering::Relaxed);
            }
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    futures::future::join_all(tasks).await;
    Variant {
        calls_per_expiry: calls.load(Ordering::Relaxed) as f64 / periods(requests),
        blocked: blocked.load(Ordering::Relaxed),
    }
}
