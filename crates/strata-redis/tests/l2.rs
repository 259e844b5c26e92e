//! The L2 tier against a real Redis (`STRATA_REDIS_URL`, default `redis://127.0.0.1:6379`). Each test writes under
//! its own key prefix, so tests run in parallel without seeing each other's data. A missing Redis fails every
//! test loudly at connect.

mod common;

use std::time::Duration;

use common::{envelope, l2, now_ms, prefix, redis_addr};
use redis::AsyncCommands;
use strata_core::{Compression, EnvelopeKind, Error, Tier};
use strata_redis::{L2Options, RedisL2};
use strata_testkit::proxy::{FaultProxy, LinkMode};

#[tokio::test]
async fn round_trip_keeps_the_envelope_and_expires_at_stale_until() {
    let l2 = l2("round_trip").await;
    let now = now_ms();
    let env = envelope(b"{\"price\":129}", now, 60_000);
    l2.write("price", "sku-1", &env, Compression::None, now)
        .await
        .unwrap();
    assert_eq!(l2.get("price", "sku-1").await.unwrap(), Some(env));
    let mut conn = l2.connection();
    let pttl: i64 = conn.pttl(l2.redis_key("price", "sku-1")).await.unwrap();
    assert!(
        (55_000..=60_000).contains(&pttl),
        "Redis TTL {pttl} ms should be the remaining stale_until"
    );
    l2.delete("price", "sku-1").await.unwrap();
    assert_eq!(l2.get("price", "sku-1").await.unwrap(), None);
    let s = l2.stats();
    assert_eq!((s.hits, s.misses, s.corrupt), (1, 1, 0));
}

#[tokio::test]
async fn get_many_is_one_mget_in_key_order() {
    let l2 = l2("get_many").await;
    let now = now_ms();
    for k in ["a", "c"] {
        l2.write(
            "p",
            k,
            &envelope(k.as_bytes(), now, 60_000),
            Compression::None,
            now,
        )
        .await
        .unwrap();
    }
    let got = l2.get_many("p", &["a", "b", "c"]).await.unwrap();
    let values: Vec<Option<EnvelopeKind>> = got.into_iter().map(|e| e.map(|e| e.kind)).collect();
    assert_eq!(
        values,
        vec![
            Some(EnvelopeKind::Value(b"a".to_vec())),
            None,
            Some(EnvelopeKind::Value(b"c".to_vec()))
        ]
    );
    assert!(l2.get_many("p", &[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn corrupt_and_foreign_bytes_are_a_miss_and_a_count() {
    let l2 = l2("corrupt").await;
    let now = now_ms();
    let mut good = envelope(b"value", now, 60_000)
        .encode(Compression::None)
        .unwrap();
    let mid = good.len() / 2;
    good[mid] ^= 0x55;
    let mut conn = l2.connection();
    let _: () = conn.set(l2.redis_key("p", "flipped"), good).await.unwrap();
    let _: () = conn
        .set(l2.redis_key("p", "json"), "{\"not\":\"ours\"}")
        .await
        .unwrap();
    let _: () = conn.set(l2.redis_key("p", "empty"), "").await.unwrap();
    for k in ["flipped", "json", "empty"] {
        assert_eq!(
            l2.get("p", k).await.unwrap(),
            None,
            "{k} must read as a miss"
        );
    }
    let batch = l2.get_many("p", &["flipped", "json"]).await.unwrap();
    assert!(batch.iter().all(Option::is_none));
    let s = l2.stats();
    assert_eq!((s.corrupt, s.misses, s.hits, s.errors), (5, 5, 0, 0));
}

#[tokio::test]
async fn an_entry_past_stale_until_is_not_stored_and_removes_the_older_one() {
    let l2 = l2("expired").await;
    let now = now_ms();
    l2.write(
        "p",
        "k",
        &envelope(b"old", now, 60_000),
        Compression::None,
        now,
    )
    .await
    .unwrap();
    let dead = envelope(b"new", now - 10_000, 5_000);
    l2.write("p", "k", &dead, Compression::None, now)
        .await
        .unwrap();
    assert_eq!(l2.get("p", "k").await.unwrap(), None);
}

#[tokio::test]
async fn large_values_are_stored_compressed() {
    let l2 = l2("compress").await;
    let now = now_ms();
    let value = "{\"description\":\"a very repetitive product text\"}".repeat(200);
    let env = envelope(value.as_bytes(), now, 60_000);
    l2.write("p", "big", &env, Compression::Lz4Above(1024), now)
        .await
        .unwrap();
    let mut conn = l2.connection();
    let stored: usize = conn.strlen(l2.redis_key("p", "big")).await.unwrap();
    assert!(
        stored < value.len() / 5,
        "stored {stored} bytes for a {} byte value",
        value.len()
    );
    assert_eq!(l2.get("p", "big").await.unwrap(), Some(env));
}

#[tokio::test]
async fn an_unreachable_server_fails_fast_naming_the_url() {
    // A port nobody listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = RedisL2::connect(&url, L2Options::default())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(err, Error::Unavailable { tier: Tier::L2, ref message } if message.contains(&url)),
        "{err}"
    );
    assert!(err.is_retryable());
    let bad = RedisL2::connect("http://nope", L2Options::default())
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("invalid Redis URL"), "{bad}");
}

#[tokio::test]
async fn a_silent_link_times_out_within_the_bound_and_recovers() {
    let proxy = FaultProxy::start(redis_addr()).await.unwrap();
    let l2 = RedisL2::connect(
        &format!("redis://{}", proxy.addr()),
        L2Options {
            prefix: prefix("silent"),
            timeout: Duration::from_millis(200),
        },
    )
    .await
    .unwrap();
    let now = now_ms();
    l2.write(
        "p",
        "k",
        &envelope(b"v", now, 60_000),
        Compression::None,
        now,
    )
    .await
    .unwrap();
    proxy.set_mode(LinkMode::Blackhole);
    let started = std::time::Instant::now();
    let err = l2.get("p", "k").await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(err, Error::Timeout { tier: Tier::L2, .. }),
        "{err}"
    );
    assert!(
        waited < Duration::from_millis(600),
        "waited {waited:?} past the 200 ms bound"
    );
    assert_eq!(l2.stats().timeouts, 1);
    proxy.set_mode(LinkMode::Cut);
    assert!(l2.get("p", "k").await.is_err());
    proxy.set_mode(LinkMode::Pass);
    // The connection manager reconnects in the background; the value is readable again.
    let mut recovered = None;
    for _ in 0..50 {
        if let Ok(Some(env)) = l2.get("p", "k").await {
            recovered = Some(env);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        recovered.is_some(),
        "L2 did not recover after the link came back"
    );
}
