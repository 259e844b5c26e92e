//! Helpers shared by the Redis tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use strata_core::{Envelope, EnvelopeKind};
use strata_redis::{L2Options, RedisL2};

pub fn redis_url() -> String {
    std::env::var("STRATA_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn redis_addr() -> SocketAddr {
    let url = redis_url();
    let host_port = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    host_port
        .parse()
        .expect("STRATA_REDIS_URL host:port must be an IP address and port")
}

/// A prefix unique to this test run and call.
pub fn prefix(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "strata-test:{test}:{}:{nanos}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn l2(test: &str) -> RedisL2 {
    RedisL2::connect(
        &redis_url(),
        L2Options {
            prefix: prefix(test),
            ..L2Options::default()
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "Redis must be running for these tests ({}): {e}",
            redis_url()
        )
    })
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn envelope(value: &[u8], now: u64, stale_in_ms: u64) -> Envelope {
    Envelope {
        created_at: now,
        fresh_until: now + stale_in_ms / 2,
        stale_until: now + stale_in_ms,
        version: Some(7),
        tags: vec!["t1".into()],
        delta_ms: 12,
        etag: None,
        kind: EnvelopeKind::Value(value.to_vec()),
    }
}
