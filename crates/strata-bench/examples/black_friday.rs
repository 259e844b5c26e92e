//! Black Friday, midnight: the cached TV deal expires while thousands of shoppers press refresh.
//!
//! `cargo run --release --example black_friday [-- --requests N]`
//!
//! Act 1 measures the stampede three ways (naive cache-aside, Strata's single-flight, Strata with
//! stale-while-revalidate). Act 2 takes the database down mid-sale and shows fail-safe serving the last known
//! price instead of errors. Every number printed is measured in this run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strata::{Cache, Policy, StaleReason, Status};

#[derive(Debug)]
struct DbDown;
impl std::fmt::Display for DbDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("database overloaded: too many connections")
    }
}
impl std::error::Error for DbDown {}

#[tokio::main]
async fn main() {
    let requests = std::env::args()
        .skip_while(|a| a != "--requests")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000usize);

    println!("Black Friday, 00:00:00. The cached TV deal expires. {requests} shoppers press refresh at once.");
    println!("The product query takes 50 ms when the database is calm.\n");
    let r = strata_bench::stampede::run(requests, Duration::from_millis(50)).await;
    println!("Act 1 — the stampede");
    println!(
        "  naive cache-aside:           {:>6} database queries, p99 {:>6.1} ms",
        r.naive_loader_calls, r.naive_p99_ms
    );
    println!(
        "  strata (single-flight):      {:>6} database query,   p99 {:>6.1} ms",
        r.loader_calls, r.p99_ms
    );
    println!(
        "  strata + stale-while-reval.: {:>6} database query,   p99 {:>6.2} ms (shoppers see the previous price \
         for one load time)",
        r.swr_loader_calls, r.swr_p99_ms
    );
    println!("  {r}\n");

    println!("Act 2 — the database falls over at 00:05");
    let cache = Cache::new();
    let prices = cache
        .namespace::<u64>("price")
        .with_policy(
            Policy::builder()
                .with_ttl(Duration::from_millis(100))
                .with_jitter(0.0)
                .with_fail_safe_for(Duration::from_secs(300))
                .with_fail_safe_retry_every(Duration::from_millis(500))
                .build()
                .expect("valid policy"),
        )
        .build()
        .expect("namespace");
    let queries = Arc::new(AtomicUsize::new(0));
    let db_up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = |queries: Arc<AtomicUsize>, db_up: Arc<std::sync::atomic::AtomicBool>| {
        queries.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if db_up.load(Ordering::SeqCst) {
                Ok(Some(499u64))
            } else {
                Err(DbDown)
            }
        }
    };
    prices
        .try_get_or_load("tv-55", || load(queries.clone(), db_up.clone()))
        .await
        .expect("database is up");
    db_up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    queries.store(0, Ordering::SeqCst);
    let tasks: Vec<_> = (0..requests)
        .map(|_| {
            let (prices, queries, db_up) = (prices.clone(), queries.clone(), db_up.clone());
            tokio::spawn(async move {
                prices
                    .try_get_or_load("tv-55", || load(queries, db_up))
                    .await
            })
        })
        .collect();
    let (mut served_stale, mut errors) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(l)
                if l.status() == Status::Stale(StaleReason::FailSafe)
                    && l.value() == Some(&499) =>
            {
                served_stale += 1
            }
            Ok(_) => {}
            Err(_) => errors += 1,
        }
    }
    println!(
        "  {requests} shoppers: {served_stale} saw the last known price ($499, marked stale), {errors} saw an error; \
         the struggling database got {} query(ies) instead of {requests}.",
        queries.load(Ordering::SeqCst)
    );
    let s = prices.stats();
    println!(
        "  fail_safe_activations={} stale_fail_safe={} load_errors={}",
        s.fail_safe_activations, s.stale_fail_safe, s.load_errors
    );
}
