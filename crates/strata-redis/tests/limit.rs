//! The Redis rate limiter against a real Redis: every algorithm shared by four nodes (four connections) admits
//! exactly its quota under a concurrent burst, refills on Redis's clock, agrees with the in-process model on
//! the same sequence, keeps keys that expire on their own — and, with Redis cut, the fallback admits a local
//! share and says so. Each test has its own key prefix.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use strata::limit::{Algorithm, FallbackLimiter, LocalLimiter, Quota};
use strata_core::ManualClock;
use strata_redis::RedisLimiter;
use strata_testkit::proxy::{FaultProxy, LinkMode};

fn url() -> String {
    std::env::var("STRATA_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn prefix(test: &str) -> String {
    format!(
        "strata-limit-test-{test}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

async fn nodes(test: &str, a: Algorithm, n: usize) -> Vec<RedisLimiter> {
    let prefix = prefix(test);
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            RedisLimiter::connect(&url(), &prefix, "api", a, Duration::from_secs(2))
                .await
                .expect("Redis must be running for these tests (scripts/test.sh starts it)"),
        );
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_admit_exactly_the_quota_of_a_concurrent_burst_with_every_algorithm() {
    for a in Algorithm::ALL {
        let nodes = nodes(&format!("burst-{}", a.name()), a, 4).await;
        // A long period: nothing refills during the burst.
        let q = Quota::new(50, Duration::from_secs(600));
        let calls = (0..200).map(|i| nodes[i % 4].acquire_at("user-7", q, 1));
        let decisions = join_all(calls).await;
        let admitted = decisions
            .iter()
            .filter(|d| d.as_ref().unwrap().0.allowed)
            .count();
        assert_eq!(
            admitted,
            50,
            "{}: 200 requests against a quota of 50",
            a.name()
        );
        let (last, _) = nodes[0].acquire_at("user-7", q, 1).await.unwrap();
        assert!(
            !last.allowed && last.remaining == 0,
            "{}: {last:?}",
            a.name()
        );
        assert!(
            last.retry_after.is_some(),
            "{}: says when to retry",
            a.name()
        );
        let (other, _) = nodes[1].acquire_at("user-8", q, 1).await.unwrap();
        assert!(
            other.allowed && other.remaining == 49,
            "{}: keys apart",
            a.name()
        );
        // The key expires on its own.
        let client = redis::Client::open(url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(nodes[0].redis_key("user-7"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            ttl > 0 && ttl <= 1_201_000 + 600_000,
            "{}: pttl {ttl}",
            a.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripts_decide_as_the_model_does_on_redis_time() {
    // The same requests through Redis and through the in-process model, the model's clock set to the time
    // Redis decided at: the same decisions, remaining counts and retry hints.
    for a in Algorithm::ALL {
        let node = nodes(&format!("model-{}", a.name()), a, 1).await.remove(0);
        let clock = ManualClock::new(0);
        let model = LocalLimiter::new(a, Arc::new(clock.clone()));
        let q = Quota::new(5, Duration::from_millis(200)).with_burst(3);
        for i in 0..60u64 {
            let cost = 1 + i % 3;
            let (d, at) = node.acquire_at("k", q, cost).await.unwrap();
            clock.set(at);
            let m = model.acquire("k", q, cost);
            assert_eq!(
                (d.allowed, d.remaining, d.retry_after),
                (m.allowed, m.remaining, m.retry_after),
                "{} request {i} at {at}",
                a.name()
            );
            tokio::time::sleep(Duration::from_millis(7 * (i % 5))).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_cut_the_fallback_admits_a_local_share_and_counts_it() {
    let proxy = FaultProxy::start("127.0.0.1:6379".parse().unwrap())
        .await
        .unwrap();
    let via = format!("redis://{}", proxy.addr());
    let limiter = RedisLimiter::connect(
        &via,
        &prefix("fallback"),
        "api",
        Algorithm::TokenBucket,
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    let f = FallbackLimiter::new(
        Some(Arc::new(limiter)),
        Algorithm::TokenBucket,
        4,
        Arc::new(strata_core::SystemClock::new()),
    );
    let q = Quota::new(40, Duration::from_secs(600));
    let d = f.acquire("k", q, 1).await;
    assert!(
        d.allowed && !d.fallback,
        "shared while Redis answers: {d:?}"
    );
    proxy.set_mode(LinkMode::Cut);
    let mut admitted = 0;
    for _ in 0..30 {
        let d = f.acquire("k", q, 1).await;
        assert!(d.fallback, "{d:?}");
        admitted += usize::from(d.allowed);
    }
    assert_eq!(admitted, 10, "a quarter of the quota on each of 4 nodes");
    assert_eq!(
        f.stats()
            .fallbacks
            .load(std::sync::atomic::Ordering::Relaxed),
        30
    );
    proxy.set_mode(LinkMode::Pass);
    let mut back = false;
    for _ in 0..50 {
        let d = f.acquire("k", q, 1).await;
        if !d.fallback {
            assert!(
                d.allowed && d.remaining == 38,
                "Redis kept its own count: {d:?}"
            );
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the shared limiter answers again once Redis is back");
}
