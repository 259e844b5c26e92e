//! The scenarios' claims, at a size that runs in seconds: they are the same functions the benchmark binary runs.

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_single_flight_loads_once_where_naive_loads_per_request() {
    let r = strata_bench::stampede::run(2_000, Duration::from_millis(50)).await;
    assert_eq!(r.loader_calls, 1, "{r}");
    assert!(r.naive_loader_calls > 100, "{r}");
    assert!(r.swr_loader_calls <= 1, "{r}");
    assert!(r.swr_p99_ms < r.p99_ms, "{r}");
}

#[tokio::test(start_paused = true)]
async fn xfetch_with_single_flight_loads_least() {
    let r = strata_bench::xfetch::run(20).await;
    assert!(
        r.xfetch_single_flight.calls_per_expiry < r.xfetch_alone.calls_per_expiry,
        "{r}"
    );
    assert!(
        r.xfetch_alone.calls_per_expiry < r.ttl_only.calls_per_expiry,
        "{r}"
    );
    assert!(r.xfetch_single_flight.calls_per_expiry < 1.5, "{r}");
}
