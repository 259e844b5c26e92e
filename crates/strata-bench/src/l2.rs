//! `l2`: the cost of Strata's L2 read over a raw Redis `GET`, in the same run on the same connection.
//!
//! A 200-byte JSON value is stored as an envelope under one key and as raw bytes under another; then `samples`
//! sequential reads of each kind, interleaved (so all see the same server and network conditions):
//! - `strata_get`: the L2 client's `get` (GET + envelope decode);
//! - `engine_hit`: a full `Namespace::get_or_load` with L1 off answered from L2 (single-flight, the detached load
//!   task, the LOOKUP script, barrier check, value decode, `Hit(L2)`);
//! - `raw_get`: a plain `GET` on the same connection.
//!
//! Reported: p50 and p99 in microseconds and the p50 ratios over the raw GET.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use redis::AsyncCommands;
use strata_core::{Compression, Envelope, EnvelopeKind};
use strata_redis::{L2Options, RedisL2};

/// Figures of one run.
#[derive(Debug, Clone, Copy)]
pub struct L2Report {
    pub samples: usize,
    pub strata_p50_us: f64,
    pub strata_p99_us: f64,
    pub raw_p50_us: f64,
    pub raw_p99_us: f64,
    pub engine_p50_us: f64,
    pub engine_p99_us: f64,
}

impl std::fmt::Display for L2Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "l2_latency samples={} strata_get_p50_us={:.0} strata_get_p99_us={:.0} engine_hit_p50_us={:.0} \
             engine_hit_p99_us={:.0} raw_get_p50_us={:.0} raw_get_p99_us={:.0} p50_ratio={:.2} \
             engine_p50_ratio={:.2}",
            self.samples,
            self.strata_p50_us,
            self.strata_p99_us,
            self.engine_p50_us,
            self.engine_p99_us,
            self.raw_p50_us,
            self.raw_p99_us,
            self.strata_p50_us / self.raw_p50_us,
            self.engine_p50_us / self.raw_p50_us
        )
    }
}

pub async fn run(url: &str, samples: usize) -> Result<L2Report, strata_core::Error> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let l2 = RedisL2::connect(
        url,
        L2Options {
            prefix: format!("strata-bench:{}:{}", std::process::id(), nanos.as_nanos()),
            timeout: Duration::from_secs(2),
        },
    )
    .await?;
    let now = nanos.as_millis() as u64;
    let value = format!(
        "{{\"sku\":\"tv-55\",\"price\":499,\"name\":\"{}\"}}",
        "x".repeat(160)
    )
    .into_bytes();
    let env = Envelope {
        created_at: now,
        fresh_until: now + 600_000,
        stale_until: now + 600_000,
        version: Some(1),
        tags: vec![],
        delta_ms: 5,
        etag: None,
        kind: EnvelopeKind::Value(value.clone()),
    };
    l2.write("bench", "k", &env, Compression::Lz4Above(1024), now)
        .await?;
    let raw_key = l2.redis_key("bench", "raw");
    let mut conn = l2.connection();
    let io = |e: redis::RedisError| strata_core::Error::Unavailable {
        tier: strata_core::Tier::L2,
        message: e.to_string(),
    };
    conn.set_ex::<_, _, ()>(&raw_key, &value, 600)
        .await
        .map_err(io)?;
    let cache = strata::Cache::builder()
        .with_shared_tier(std::sync::Arc::new(l2.clone()))
        .build();
    let ns = cache
        .namespace::<Vec<u8>>("bench")
        .with_policy(
            strata::Policy::builder()
                .with_l1(false)
                .build()
                .expect("valid policy"),
        )
        .with_codec(strata::codec::Raw)
        .build()?;
    let mut engine = Histogram::<u64>::new(3).expect("histogram");
    let mut strata = Histogram::<u64>::new(3).expect("histogram");
    let mut raw = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..samples + samples / 10 {
        let t = Instant::now();
        let got = l2.get("bench", "k").await?;
        let strata_us = t.elapsed().as_micros() as u64;
        assert!(got.is_some(), "the envelope must be there");
        let t = Instant::now();
        let bytes: Option<Vec<u8>> = conn.get(&raw_key).await.map_err(io)?;
        let raw_us = t.elapsed().as_micros() as u64;
        assert!(bytes.is_some());
        let t = Instant::now();
        let hit = ns.get_or_load("k", || async { None::<Vec<u8>> }).await?;
        let engine_us = t.elapsed().as_micros() as u64;
        assert_eq!(hit.status(), strata::Status::Hit(strata::Tier::L2));
        if i >= samples / 10 {
            engine.record(engine_us.max(1)).expect("in range");
            strata.record(strata_us.max(1)).expect("in range");
            raw.record(raw_us.max(1)).expect("in range");
        }
    }
    l2.delete("bench", "k").await?;
    conn.del::<_, ()>(&raw_key).await.map_err(io)?;
    Ok(L2Report {
        samples,
        strata_p50_us: strata.value_at_quantile(0.5) as f64,
        strata_p99_us: strata.value_at_quantile(0.99) as f64,
        raw_p50_us: raw.value_at_quantile(0.5) as f64,
        raw_p99_us: raw.value_at_quantile(0.99) as f64,
        engine_p50_us: engine.value_at_quantile(0.5) as f64,
        engine_p99_us: engine.value_at_quantile(0.99) as f64,
    })
}
