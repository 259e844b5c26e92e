//! The Redis bus with real nodes: each test uses its own stream key.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{prefix, redis_addr, redis_url};
use strata::{Cache, Namespace};
use strata_redis::{RedisBus, RedisBusOptions};
use strata_testkit::proxy::{FaultProxy, LinkMode};

fn options(stream: &str) -> RedisBusOptions {
    RedisBusOptions {
        stream: stream.to_owned(),
        heartbeat: Duration::from_millis(300),
        ..RedisBusOptions::default()
    }
}

/// A node: its cache (twice: the tests name the second one after the bus), and its namespace.
async fn node(url: &str, stream: &str) -> (Cache, Namespace<u32>, Cache) {
    let bus = RedisBus::connect(url, options(stream))
        .await
        .unwrap_or_else(|e| panic!("Redis must be running for these tests ({url}): {e}"));
    let cache = Cache::builder().with_bus(Arc::new(bus)).build();
    let ns = cache.namespace::<u32>("price").build().unwrap();
    let listener = cache.clone();
    // L1 answers only once the node has confirmed contact (the first read does not block).
    eventually("contact confirmed", Duration::from_secs(2), || {
        listener
            .bus_stats()
            .unwrap()
            .contact_age_ms
            .is_some_and(|a| a < 300)
    })
    .await;
    (cache, ns, listener)
}

async fn eventually(what: &str, within: Duration, cond: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        if cond() {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("not within {within:?}: {what}");
}

async fn load(ns: &Namespace<u32>, key: &str, v: u32) {
    ns.get_or_load(key, move || async move { Some(v) })
        .await
        .unwrap();
}

#[tokio::test]
async fn invalidations_cross_nodes_through_redis() {
    let stream = prefix("bus");
    let (_a, price_a, bus_a) = node(&redis_url(), &stream).await;
    let (_b, price_b, bus_b) = node(&redis_url(), &stream).await;
    load(&price_a, "sku-1", 99).await;
    load(&price_b, "sku-1", 99).await;
    load(&price_b, "sku-2", 10).await;
    price_a.invalidate("sku-1").await;
    let took = eventually("B drops sku-1", Duration::from_secs(2), || {
        price_b.get("sku-1").is_none()
    })
    .await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(price_b.l1_holds("sku-2"), "an untouched key left B's L1");
    price_a.invalidate_all().await;
    eventually("B drops all", Duration::from_secs(2), || {
        price_b.get("sku-2").is_none()
    })
    .await;
    eventually("A hears its echoes", Duration::from_secs(2), || {
        bus_a.bus_stats().unwrap().echoes >= 2
    })
    .await;
    assert_eq!(bus_a.bus_stats().unwrap().applied, 0);
    bus_a.close().await;
    bus_b.close().await;
}

#[tokio::test]
async fn a_malformed_stream_entry_is_counted_and_skipped() {
    let stream = prefix("bus_malformed");
    let (_b, price_b, bus_b) = node(&redis_url(), &stream).await;
    load(&price_b, "k", 1).await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("m")
        .arg("{oops")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("other")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually("malformed counted", Duration::from_secs(2), || {
        bus_b.bus_stats().unwrap().malformed == 2
    })
    .await;
    assert!(price_b.l1_holds("k"), "a malformed message must not flush");
    bus_b.close().await;
}

/// A node whose link to Redis is cut misses invalidations: within the bound (heartbeat + timeout) its L1 stops
/// answering, it then flushes it, and after the link returns it receives invalidations again.
#[tokio::test]
async fn a_cut_link_flushes_within_a_heartbeat_and_recovers() {
    let stream = prefix("bus_cut");
    let proxy = FaultProxy::start(redis_addr()).await.unwrap();
    let (_a, price_a, bus_a) = node(&redis_url(), &stream).await;
    let (_b, price_b, bus_b) = node(&format!("redis://{}", proxy.addr()), &stream).await;
    load(&price_b, "k", 1).await;
    load(&price_b, "other", 2).await;
    proxy.set_mode(LinkMode::Blackhole);
    let cut_at = Instant::now();
    eventually(
        "B stops trusting its L1 after the link dies",
        Duration::from_secs(3),
        || price_b.get("other").is_none(),
    )
    .await;
    let took = cut_at.elapsed();
    // The bound is heartbeat 300 ms + timeout 250 ms from the last confirmed contact, which is at most a heartbeat
    // old at the cut; 1 s leaves room for a busy CI.
    assert!(
        took < Duration::from_secs(1),
        "L1 still answered after {took:?}"
    );
    eventually("B flushes its L1", Duration::from_secs(3), || {
        bus_b.bus_stats().unwrap().gaps >= 1
    })
    .await;
    proxy.set_mode(LinkMode::Cut);
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.set_mode(LinkMode::Pass);
    load(&price_b, "k", 1).await;
    // Give B's reader time to reconnect (backoff ≤ heartbeat), then check invalidations flow again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    price_a.invalidate("k").await;
    eventually("B receives after recovery", Duration::from_secs(3), || {
        price_b.get("k").is_none()
    })
    .await;
    bus_a.close().await;
    bus_b.close().await;
}
