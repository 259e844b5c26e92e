//! `l2`: the cost of Strata's L2 read over a raw Redis `GET`, in the same run on the same connection.
//!
//! A 200-byte JSON value is stored as an envelope under one key and as raw bytes under another; then `samples`
//! sequential reads of each, interleaved (so both see the same server and network conditions). Reported: p50 and
//! p99 in microseconds and the p50 ratio.

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
}

impl std::fmt::Display for L2Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "l2_latency samples={} strata_get_p50_us={:.0} strata_get_p99_us={:.0} raw_get_p50_us={:.0} \
             raw_get_p99_us={:.0} p50_ratio={:.2}",
            self.samples,
            self.strata_p50_us,
            self.strata_p99_us,
            self.raw_p50_us,
            self.raw_p99_us,
            self.strata_p50_us / self.raw_p50_us
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
    l2.set("bench", "k", &env, Compression::Lz4Above(1024), now)
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
        if i >= samples / 10 {
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
    })
}
