//! The cluster-wide rate limiter: one Lua script per algorithm, mirroring `strata::limit::State::decide` line
//! by line, run atomically on Redis's own clock (`TIME`), so every node shares one state and no node's clock
//! matters.
//!
//! Layout: one Redis key per limited key, `{prefix}:rl:{name}:{key}` — a hash (buckets, windows) or a sorted set
//! (the sliding log) — and each script touches that key alone, so it is Redis-Cluster-safe whatever the key's
//! slot. Every key carries a TTL of the time until its quota is whole again (plus a period), so idle keys expire
//! on their own.
//!
//! Errors are the tier's (`Unavailable`, `Timeout`, bounded by the call timeout); `strata::limit::FallbackLimiter`
//! turns them into decisions from a local share.

use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use redis::Script;
use strata_core::limit::{Algorithm, Decision, Quota, SharedLimiter};
use strata_core::{Error, Tier};

/// Shared by every script: Redis time in ms, the arguments, the `f64` slack `strata::limit` uses.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local EPS = 1e-9
local function f(x) return string.format('%.17g', x) end
local function ceil(x) if x < 0 then return 0 end return math.ceil(x) end
"#;

/// Token bucket: hash {v = tokens, t = last time}.
const TOKEN_BUCKET: &str = r#"
local rate = limit / period
local s = redis.call('HMGET', KEYS[1], 'v', 't')
local tokens, at = burst, now
if s[1] then tokens = tonumber(s[1]); at = tonumber(s[2]) end
local el = now - at
if el < 0 then el = 0 end
tokens = math.min(burst, tokens + el * rate)
local allowed = cost <= tokens + EPS
local left = tokens
if allowed then left = math.max(0, tokens - cost) end
if at < now then at = now end
redis.call('HSET', KEYS[1], 'v', f(left), 't', at)
local reset = ceil((burst - left) / rate)
redis.call('PEXPIRE', KEYS[1], reset + period)
local retry = -1
if (not allowed) and cost <= burst then retry = ceil((cost - tokens) / rate) end
return {allowed and 1 or 0, math.floor(left + EPS), reset, retry, now}
"#;

/// Leaky bucket (meter): hash {v = level, t = last drained}.
const LEAKY_BUCKET: &str = r#"
local rate = limit / period
local s = redis.call('HMGET', KEYS[1], 'v', 't')
local level, at = 0, now
if s[1] then level = tonumber(s[1]); at = tonumber(s[2]) end
local el = now - at
if el < 0 then el = 0 end
level = math.max(0, level - el * rate)
local allowed = level + cost <= burst + EPS
local kept = level
if allowed then kept = level + cost end
if at < now then at = now end
redis.call('HSET', KEYS[1], 'v', f(kept), 't', at)
local reset = ceil(kept / rate)
redis.call('PEXPIRE', KEYS[1], reset + period)
local retry = -1
if (not allowed) and cost <= burst then retry = ceil((level + cost - burst) / rate) end
local remaining = math.floor(math.max(0, burst - kept + EPS))
return {allowed and 1 or 0, remaining, reset, retry, now}
"#;

/// Fixed and sliding window: hash {w = window, c = count, p = previous count}; ARGV[5] = 1 for sliding.
const WINDOW: &str = r#"
local sliding = ARGV[5] == '1'
local window = math.floor(now / period)
local s = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local count, prev = 0, 0
if s[1] then
  local w = tonumber(s[1])
  if w == window then count = tonumber(s[2]); prev = tonumber(s[3])
  elseif w + 1 == window then count = 0; prev = tonumber(s[2]) end
end
local into = now - window * period
local weighted = 0
if sliding then weighted = math.floor(prev * (period - into) / period) end
local used = count + weighted
local allowed = used + cost <= limit
if allowed then count = count + cost end
redis.call('HSET', KEYS[1], 'w', window, 'c', count, 'p', prev)
redis.call('PEXPIRE', KEYS[1], 2 * period + 1000)
local remaining = limit - (count + weighted)
if remaining < 0 then remaining = 0 end
local to_edge = period - into
local retry = -1
if (not allowed) and cost <= limit then
  if not sliding then retry = to_edge
  elseif count + cost > limit then
    local k = limit - cost
    retry = to_edge + math.floor(period * (count - k - 1) / count) + 1
  else
    local k = limit - count - cost
    local num = prev * (period - into) - (k + 1) * period
    retry = math.min(math.floor(num / prev) + 1, to_edge)
  end
end
local reset = to_edge
if sliding and count > 0 then reset = to_edge + period end
return {allowed and 1 or 0, remaining, reset, retry, now}
"#;

/// Sliding log: a sorted set of admitted units scored by time; ARGV[5] is a nonce that keeps members apart.
const SLIDING_LOG: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local used = redis.call('ZCARD', KEYS[1])
local allowed = used + cost <= limit
if allowed then
  for i = 1, cost do redis.call('ZADD', KEYS[1], now, ARGV[5] .. ':' .. i) end
end
local used_now = used
if allowed then used_now = used + cost end
local retry = -1
if (not allowed) and cost <= limit then
  local idx = used + cost - limit - 1
  local e = redis.call('ZRANGE', KEYS[1], idx, idx, 'WITHSCORES')
  retry = tonumber(e[2]) + period - now
end
local reset = 0
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then reset = tonumber(last[2]) + period - now end
redis.call('PEXPIRE', KEYS[1], period + 1000)
local remaining = limit - used_now
if remaining < 0 then remaining = 0 end
return {allowed and 1 or 0, remaining, reset, retry, now}
"#;

/// A connection for limiters (several share one, see [`RedisLimiter::with_connection`]).
pub async fn connect(url: &str, timeout: Duration) -> Result<ConnectionManager, Error> {
    Ok(crate::connect_manager(url, timeout).await?.1)
}

/// A limiter over Redis for one named limit (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct RedisLimiter {
    conn: ConnectionManager,
    script: Script,
    algorithm: Algorithm,
    key_prefix: String,
    timeout: Duration,
    url: String,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("algorithm", &self.algorithm)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// Connects to `url` for the limit `name` under `prefix`, each call bounded by `timeout`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        name: &str,
        algorithm: Algorithm,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let (_, conn) = crate::connect_manager(url, timeout).await?;
        Ok(Self::with_connection(
            conn, url, prefix, name, algorithm, timeout,
        ))
    }

    /// The same over an open connection (several limits share one).
    pub fn with_connection(
        conn: ConnectionManager,
        url: &str,
        prefix: &str,
        name: &str,
        algorithm: Algorithm,
        timeout: Duration,
    ) -> Self {
        let body = match algorithm {
            Algorithm::TokenBucket => TOKEN_BUCKET,
            Algorithm::LeakyBucket => LEAKY_BUCKET,
            Algorithm::FixedWindow | Algorithm::SlidingWindow => WINDOW,
            Algorithm::SlidingLog => SLIDING_LOG,
        };
        Self {
            conn,
            script: Script::new(&format!("{PRELUDE}{body}")),
            algorithm,
            key_prefix: format!("{prefix}:rl:{name}:"),
            timeout,
            url: url.to_owned(),
        }
    }

    /// The Redis key of a limited key.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    /// Takes `cost` units for `key` under `quota`, or refuses; the decision is Redis's, made on its clock.
    /// Also returns Redis's time of the decision (ms), which the benchmark measures spans by.
    pub async fn acquire_at(
        &self,
        key: &str,
        quota: Quota,
        cost: u64,
    ) -> Result<(Decision, u64), Error> {
        let mut inv = self.script.key(self.redis_key(key));
        inv.arg(quota.limit)
            .arg(quota.period_ms())
            .arg(quota.burst)
            .arg(cost);
        match self.algorithm {
            Algorithm::SlidingWindow => {
                inv.arg("1");
            }
            Algorithm::SlidingLog => {
                inv.arg(format!("{:032x}", rand::random::<u128>()));
            }
            _ => {
                inv.arg("0");
            }
        }
        let mut conn = self.conn.clone();
        let out: Result<redis::RedisResult<Vec<i64>>, _> =
            tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await;
        let v = match out {
            Ok(Ok(v)) if v.len() == 5 => v,
            Ok(Ok(v)) => {
                return Err(Error::Unavailable {
                    tier: Tier::L2,
                    message: format!("rate limit script on {} answered {v:?}", self.url),
                })
            }
            Ok(Err(e)) if !e.is_timeout() => {
                return Err(Error::Unavailable {
                    tier: Tier::L2,
                    message: format!("rate limit script on {}: {e}", self.url),
                })
            }
            _ => {
                return Err(Error::Timeout {
                    tier: Tier::L2,
                    after: self.timeout,
                })
            }
        };
        let ms = |x: i64| Duration::from_millis(x.max(0) as u64);
        let limit = match self.algorithm {
            Algorithm::TokenBucket | Algorithm::LeakyBucket => quota.burst,
            _ => quota.limit,
        };
        Ok((
            Decision {
                allowed: v[0] == 1,
                limit,
                remaining: v[1].max(0) as u64,
                reset: ms(v[2]),
                retry_after: (v[3] >= 0).then(|| ms(v[3])),
                fallback: false,
            },
            v[4].max(0) as u64,
        ))
    }
}

impl SharedLimiter for RedisLimiter {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        quota: Quota,
        cost: u64,
    ) -> BoxFuture<'a, Result<Decision, Error>> {
        Box::pin(async move { self.acquire_at(key, quota, cost).await.map(|(d, _)| d) })
    }
}
