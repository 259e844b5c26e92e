//! `strata-redis`: the shared tier (L2) on Redis or Valkey.
//!
//! # Client
//! redis-rs (`redis` 1.x) with its `ConnectionManager`: one multiplexed connection per node, shared by every task
//! (pipelining without a pool), reconnecting in the background after a drop, with connect and response timeouts.
//! fred was the alternative; redis-rs was chosen because its connection manager gives exactly the
//! multiplexing-plus-reconnect behaviour the engine needs with fewer moving parts, its Lua `Script` helper
//! (EVALSHA with EVAL fallback) fits the fenced fills to come, and it has a Cluster client behind a feature for when
//! users outgrow one node. Every call is additionally bounded by [`L2Options::timeout`] here, because commands
//! issued while the manager reconnects wait for the reconnect: no caller waits past its timeout.
//!
//! # Storage
//! An entry is the [`Envelope`] encoding under `{prefix}:{namespace}:{key}` with a Redis TTL equal to the envelope's
//! remaining `stale_until`, so Redis drops an entry exactly when no tier may serve it any more. Values at or above
//! the namespace's compression threshold are lz4-compressed by the envelope codec.
//!
//! # Bad bytes
//! Bytes that do not decode (corrupt, truncated, another program's value under our key) are a miss and a count in
//! [`L2Stats::corrupt`], never an error to the caller: the next fill overwrites them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use strata_core::{Compression, Envelope, Error, Tier, UnixMillis};

/// Connection settings.
#[derive(Debug, Clone)]
pub struct L2Options {
    /// Prefix of every key this node writes (isolates deployments and tests). Default: `"strata"`.
    pub prefix: String,
    /// Bound on every call, including connecting. Default: 250 ms.
    pub timeout: Duration,
}

impl Default for L2Options {
    fn default() -> Self {
        Self {
            prefix: "strata".into(),
            timeout: Duration::from_millis(250),
        }
    }
}

/// Counters of one L2 client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct L2Stats {
    /// Lookups that found a decodable entry.
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Lookups that found bytes that do not decode (counted as misses too).
    pub corrupt: u64,
    /// Calls that failed (connection or server error).
    pub errors: u64,
    /// Calls that passed the timeout.
    pub timeouts: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
}

/// A client of the shared tier. Cheap to clone; clones share the connection and counters.
#[derive(Clone)]
pub struct RedisL2 {
    conn: ConnectionManager,
    options: Arc<L2Options>,
    counters: Arc<Counters>,
    url: Arc<str>,
}

impl std::fmt::Debug for RedisL2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisL2")
            .field("url", &self.url)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RedisL2 {
    /// Connects to `url` (`redis://host:port/db`). Fails with [`Error::Unavailable`] naming the URL when the
    /// server cannot be reached within the timeout.
    pub async fn connect(url: &str, options: L2Options) -> Result<Self, Error> {
        let unavailable = |message: String| Error::Unavailable {
            tier: Tier::L2,
            message,
        };
        let client = redis::Client::open(url)
            .map_err(|e| unavailable(format!("invalid Redis URL {url:?}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            .set_number_of_retries(2);
        let conn = tokio::time::timeout(
            options.timeout * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| {
            unavailable(format!(
                "connecting to {url} timed out after {:?}",
                options.timeout * 2
            ))
        })?
        .map_err(|e| unavailable(format!("connecting to {url}: {e}")))?;
        Ok(Self {
            conn,
            options: Arc::new(options),
            counters: Arc::new(Counters::default()),
            url: url.into(),
        })
    }

    /// The Redis key of `key` in `namespace`.
    pub fn redis_key(&self, namespace: &str, key: &str) -> String {
        format!("{}:{namespace}:{key}", self.options.prefix)
    }

    /// The entry under `key`, if Redis holds a decodable one.
    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Envelope>, Error> {
        let rkey = self.redis_key(namespace, key);
        let mut conn = self.conn.clone();
        let bytes: Option<Vec<u8>> = self
            .call("GET", async move { conn.get(rkey).await })
            .await?;
        Ok(self.decode(bytes))
    }

    /// The entries under `keys`, in order, with one `MGET`.
    pub async fn get_many(
        &self,
        namespace: &str,
        keys: &[&str],
    ) -> Result<Vec<Option<Envelope>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rkeys: Vec<String> = keys.iter().map(|k| self.redis_key(namespace, k)).collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<Vec<u8>>> = self
            .call("MGET", async move {
                redis::cmd("MGET").arg(rkeys).query_async(&mut conn).await
            })
            .await?;
        Ok(values.into_iter().map(|v| self.decode(v)).collect())
    }

    /// Stores an entry until its `stale_until`. An entry already past it is not stored (and any older one is
    /// removed, so it cannot outlive the write).
    pub async fn set(
        &self,
        namespace: &str,
        key: &str,
        envelope: &Envelope,
        compression: Compression,
        now: UnixMillis,
    ) -> Result<(), Error> {
        let rkey = self.redis_key(namespace, key);
        let ttl_ms = envelope.stale_until.saturating_sub(now);
        if ttl_ms == 0 {
            return self.delete(namespace, key).await;
        }
        let bytes = envelope
            .encode(compression)
            .map_err(|source| Error::Corrupt {
                tier: Tier::L2,
                source,
            })?;
        let mut conn = self.conn.clone();
        self.call("SET", async move {
            conn.pset_ex::<_, _, ()>(rkey, bytes, ttl_ms).await
        })
        .await
    }

    /// Removes the entry under `key`.
    pub async fn delete(&self, namespace: &str, key: &str) -> Result<(), Error> {
        let rkey = self.redis_key(namespace, key);
        let mut conn = self.conn.clone();
        self.call("DEL", async move { conn.del::<_, ()>(rkey).await })
            .await
    }

    /// A connection for callers that need raw commands (tests, benchmarks).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The client's counters.
    pub fn stats(&self) -> L2Stats {
        let c = &self.counters;
        L2Stats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
        }
    }

    fn decode(&self, bytes: Option<Vec<u8>>) -> Option<Envelope> {
        let c = &self.counters;
        match bytes.map(|b| Envelope::decode(&b)) {
            None => {
                c.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Some(Ok(env)) => {
                c.hits.fetch_add(1, Ordering::Relaxed);
                Some(env)
            }
            Some(Err(_)) => {
                c.corrupt.fetch_add(1, Ordering::Relaxed);
                c.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Runs one Redis call under the timeout, mapping failures to errors that name the command and server.
    async fn call<T>(
        &self,
        command: &'static str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.options.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            // The client's own response timeout (set to the same bound) may fire first.
            Ok(Err(e)) if e.is_timeout() => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Error::Timeout {
                    tier: Tier::L2,
                    after: self.options.timeout,
                })
            }
            Ok(Err(e)) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                Err(Error::Unavailable {
                    tier: Tier::L2,
                    message: format!("{command} on {}: {e}", self.url),
                })
            }
            Err(_) => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Error::Timeout {
                    tier: Tier::L2,
                    after: self.options.timeout,
                })
            }
        }
    }
}
