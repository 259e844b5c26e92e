//! `strata-redis`: the shared tier (L2) on Redis or Valkey.
//!
//! # Client
//! redis-rs (`redis` 1.x) with its `ConnectionManager`: one multiplexed connection per node, shared by every task
//! (pipelining without a pool), reconnecting in the background after a drop, with connect and response timeouts.
//! fred was the alternative; redis-rs was chosen because its connection manager gives exactly the
//! multiplexing-plus-reconnect behaviour the engine needs with fewer moving parts, its Lua `Script` helper
//! (EVALSHA with EVAL fallback) carries the fenced fills, writes and invalidations (see [`fence`]), and it has a Cluster client behind a feature for when
//! users outgrow one node. Every call is additionally bounded by [`L2Options::timeout`] here, because commands
//! issued while the manager reconnects wait for the reconnect: no caller waits past its timeout.
//!
//! # Storage
//! An entry is `stamp | envelope` under `{prefix}:{namespace:key}` (hash-tagged, so the entry and its lease
//! `…:lease` share a Cluster slot) with a Redis TTL equal to the envelope's remaining `stale_until`, so Redis drops
//! an entry exactly when no tier may serve it any more. `stamp` is the server time of the write; see [`fence`] for
//! how fills, writes and invalidations are ordered by it and by versions. Values at or above the namespace's
//! compression threshold are lz4-compressed by the envelope codec.
//!
//! # Leases
//! [`RedisL2::lease`] (what the engine uses, through `SharedTier::lease`) runs the `LEASE` script: one holder per
//! key, and at most one grant per `min_interval` (a grant marker), so a burst of misses after a holder finished
//! does not start a second load. The holder loads and fills with its token; an invalidation deletes the lease, so the holder's fill is
//! refused; a dead holder's lease expires.
//!
//! # Bad bytes
//! Bytes that do not decode (corrupt, truncated, another program's value under our key) are a miss and a count in
//! [`L2Stats::corrupt`], never an error to the caller: the next fill overwrites them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use strata_core::shared::Looked;
use strata_core::{
    Barriers, Compression, Envelope, EnvelopeKind, Error, SharedTier, Tier, UnixMillis,
};
pub use strata_core::{Fence, FillOutcome, LeaseGrant, LeaseToken, Stamped};

pub mod bus;
pub mod fence;
pub mod limit;

pub use bus::{RedisBus, RedisBusOptions};
pub use limit::RedisLimiter;

const STAMP_LEN: usize = 8;

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

fn unavailable(message: String) -> Error {
    Error::Unavailable {
        tier: Tier::L2,
        message,
    }
}

/// Opens a client and a reconnecting multiplexed connection, bounded by `timeout` per call and twice that for
/// the first connect; errors name the URL.
pub(crate) async fn connect_manager(
    url: &str,
    timeout: Duration,
) -> Result<(redis::Client, ConnectionManager), Error> {
    let client = redis::Client::open(url)
        .map_err(|e| unavailable(format!("invalid Redis URL {url:?}: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2);
    let conn = tokio::time::timeout(
        timeout * 2,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| {
        unavailable(format!(
            "connecting to {url} timed out after {:?}",
            timeout * 2
        ))
    })?
    .map_err(|e| unavailable(format!("connecting to {url}: {e}")))?;
    Ok((client, conn))
}

/// A client of the shared tier. Cheap to clone; clones share the connection and counters.
#[derive(Clone)]
pub struct RedisL2 {
    conn: ConnectionManager,
    options: Arc<L2Options>,
    counters: Arc<Counters>,
    scripts: Arc<fence::Scripts>,
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
        let (_, conn) = connect_manager(url, options.timeout).await?;
        Ok(Self {
            conn,
            options: Arc::new(options),
            counters: Arc::new(Counters::default()),
            scripts: Arc::new(fence::Scripts::new()),
            url: url.into(),
        })
    }

    /// The Redis key of `key` in `namespace`.
    pub fn redis_key(&self, namespace: &str, key: &str) -> String {
        format!("{}:{{{namespace}:{key}}}", self.options.prefix)
    }

    fn lease_key(&self, namespace: &str, key: &str) -> String {
        format!("{}:lease", self.redis_key(namespace, key))
    }

    /// The entry under `key`, if Redis holds a decodable one (tombstones included: check the kind).
    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Envelope>, Error> {
        let rkey = self.redis_key(namespace, key);
        let mut conn = self.conn.clone();
        let bytes: Option<Vec<u8>> = self
            .call("GET", async move { conn.get(rkey).await })
            .await?;
        Ok(self.decode(bytes).map(|s| s.envelope))
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
        Ok(values
            .into_iter()
            .map(|v| self.decode(v).map(|s| s.envelope))
            .collect())
    }

    /// The entry under `key` with its write stamp, and the server time now: the `started_at` of a load that
    /// follows this lookup.
    pub async fn lookup(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<(Option<Stamped>, UnixMillis), Error> {
        let rkey = self.redis_key(namespace, key);
        let mut conn = self.conn.clone();
        let script = self.scripts.lookup.clone();
        let (bytes, now): (Option<Vec<u8>>, u64) = self
            .call("LOOKUP", async move {
                script.key(rkey).invoke_async(&mut conn).await
            })
            .await?;
        Ok((self.decode(bytes), now))
    }

    /// Stores a load's result under its [`Fence`]; see [`fence`] for when it is refused.
    pub async fn fill(
        &self,
        namespace: &str,
        key: &str,
        envelope: &Envelope,
        compression: Compression,
        now: UnixMillis,
        fence: Fence<'_>,
    ) -> Result<FillOutcome, Error> {
        let started = fence.started_at.map_or(0, |t| t as i64);
        self.store(
            namespace,
            key,
            envelope,
            compression,
            now,
            started,
            fence.lease,
        )
        .await
    }

    /// Stores a write (write-through, explicit insert) until its `stale_until`: refused only by a greater stored
    /// version. An entry already past its `stale_until` is not stored, and any older one is removed so that it
    /// cannot outlive the write.
    pub async fn write(
        &self,
        namespace: &str,
        key: &str,
        envelope: &Envelope,
        compression: Compression,
        now: UnixMillis,
    ) -> Result<FillOutcome, Error> {
        if envelope.stale_until <= now {
            self.delete(namespace, key).await?;
            return Ok(FillOutcome::Superseded);
        }
        self.store(namespace, key, envelope, compression, now, -1, None)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn store(
        &self,
        namespace: &str,
        key: &str,
        envelope: &Envelope,
        compression: Compression,
        now: UnixMillis,
        started_at: i64,
        lease: Option<&LeaseToken>,
    ) -> Result<FillOutcome, Error> {
        let ttl_ms = envelope.stale_until.saturating_sub(now);
        if ttl_ms == 0 {
            return Ok(FillOutcome::Superseded);
        }
        let bytes = envelope
            .encode(compression)
            .map_err(|source| Error::Corrupt {
                tier: Tier::L2,
                source,
            })?;
        let (rkey, lkey) = (
            self.redis_key(namespace, key),
            self.lease_key(namespace, key),
        );
        let version = envelope
            .version
            .map_or(-1, |v| v.min(i64::MAX as u64) as i64);
        let token = lease.map_or(String::new(), |t| t.as_str().to_owned());
        let mut conn = self.conn.clone();
        let script = self.scripts.fill.clone();
        let code: i64 = self
            .call("FILL", async move {
                script
                    .key(rkey)
                    .key(lkey)
                    .arg(bytes)
                    .arg(ttl_ms)
                    .arg(started_at)
                    .arg(version)
                    .arg(token)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match code {
            1 => FillOutcome::Stored,
            0 => FillOutcome::LeaseLost,
            _ => FillOutcome::Superseded,
        })
    }

    /// Invalidates `key`: a tombstone (with `version`, the source's version after the change, if known) that
    /// refuses older fills for `hold_off`, and the key's lease is voided. Returns the tombstone's server time.
    pub async fn invalidate(
        &self,
        namespace: &str,
        key: &str,
        version: Option<u64>,
        hold_off: Duration,
        now: UnixMillis,
    ) -> Result<UnixMillis, Error> {
        let hold_ms = (hold_off.as_millis() as u64).max(1);
        let tomb = Envelope {
            created_at: now,
            fresh_until: now,
            stale_until: now + hold_ms,
            version,
            tags: Vec::new(),
            delta_ms: 0,
            etag: None,
            kind: EnvelopeKind::Tombstone,
        };
        let bytes = tomb
            .encode(Compression::None)
            .map_err(|source| Error::Corrupt {
                tier: Tier::L2,
                source,
            })?;
        let (rkey, lkey) = (
            self.redis_key(namespace, key),
            self.lease_key(namespace, key),
        );
        let mut conn = self.conn.clone();
        let script = self.scripts.invalidate.clone();
        self.call("INVALIDATE", async move {
            script
                .key(rkey)
                .key(lkey)
                .arg(bytes)
                .arg(hold_ms)
                .invoke_async(&mut conn)
                .await
        })
        .await
    }

    /// The entries under `keys` (in order) with their stamps, and the server time now, in one script call.
    pub async fn lookup_many(&self, namespace: &str, keys: &[&str]) -> Result<Looked, Error> {
        if keys.is_empty() {
            return self
                .lookup(namespace, "")
                .await
                .map(|(_, now)| (Vec::new(), now));
        }
        let mut invocation = self.scripts.lookup_many.prepare_invoke();
        for k in keys {
            invocation.key(self.redis_key(namespace, k));
        }
        let mut conn = self.conn.clone();
        let (values, now): (Vec<Option<Vec<u8>>>, u64) = self
            .call("LOOKUP_MANY", async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok((values.into_iter().map(|v| self.decode(v)).collect(), now))
    }

    /// Asks for the key's lease for `ttl`, granting at most one per `min_interval` (zero: no limit).
    pub async fn lease(
        &self,
        namespace: &str,
        key: &str,
        ttl: Duration,
        min_interval: Duration,
    ) -> Result<LeaseGrant, Error> {
        let token = format!("{:032x}", rand::random::<u128>());
        let lkey = self.lease_key(namespace, key);
        let mkey = format!("{lkey}:granted");
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        let interval_ms = min_interval.as_millis() as u64;
        let mut conn = self.conn.clone();
        let script = self.scripts.lease.clone();
        let t = token.clone();
        let code: i64 = self
            .call("LEASE", async move {
                script
                    .key(lkey)
                    .key(mkey)
                    .arg(t)
                    .arg(ttl_ms)
                    .arg(interval_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(match code {
            1 => LeaseGrant::Granted(LeaseToken::new(token)),
            2 => LeaseGrant::RateLimited,
            _ => LeaseGrant::Held,
        })
    }

    /// Gives the lease back (the load failed) if it is still `token`'s.
    pub async fn release(
        &self,
        namespace: &str,
        key: &str,
        token: &LeaseToken,
    ) -> Result<(), Error> {
        let lkey = self.lease_key(namespace, key);
        let mut conn = self.conn.clone();
        let script = self.scripts.release.clone();
        let t = token.as_str().to_owned();
        self.call("RELEASE", async move {
            script.key(lkey).arg(t).invoke_async::<i64>(&mut conn).await
        })
        .await
        .map(|_| ())
    }

    fn barrier_key(&self, namespace: &str) -> String {
        format!("{}:barriers:{{{namespace}}}", self.options.prefix)
    }

    /// Raises a tag barrier (`Some(tag)`) or the namespace's generation barrier (`None`) to the server time, kept
    /// for `keep`. Returns the barrier's time.
    pub async fn raise_barrier(
        &self,
        namespace: &str,
        tag: Option<&str>,
        keep: Duration,
    ) -> Result<UnixMillis, Error> {
        let hkey = self.barrier_key(namespace);
        let field = tag.map_or_else(|| "g".to_owned(), |t| format!("t:{t}"));
        let keep_ms = (keep.as_millis() as u64).max(1);
        let mut conn = self.conn.clone();
        let script = self.scripts.raise_barrier.clone();
        self.call("RAISE_BARRIER", async move {
            script
                .key(hkey)
                .arg(field)
                .arg(keep_ms)
                .invoke_async(&mut conn)
                .await
        })
        .await
    }

    /// The namespace's live barriers. Fields that are not ours are skipped.
    pub async fn barriers(&self, namespace: &str) -> Result<Barriers, Error> {
        let hkey = self.barrier_key(namespace);
        let mut conn = self.conn.clone();
        let all: HashMap<String, String> = self
            .call("HGETALL", async move { conn.hgetall(hkey).await })
            .await?;
        let mut barriers = Barriers::default();
        for (field, value) in all {
            let Ok(at) = value.parse::<u64>() else {
                self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if field == "g" {
                barriers.generation = Some(at);
            } else if let Some(tag) = field.strip_prefix("t:") {
                barriers.tags.insert(tag.to_owned(), at);
            }
        }
        Ok(barriers)
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

    fn decode(&self, bytes: Option<Vec<u8>>) -> Option<Stamped> {
        let c = &self.counters;
        let parsed = bytes.map(|b| {
            if b.len() < STAMP_LEN {
                return Err(());
            }
            let stamp = u64::from_le_bytes(b[..STAMP_LEN].try_into().expect("8 bytes"));
            Envelope::decode(&b[STAMP_LEN..])
                .map(|envelope| Stamped { envelope, stamp })
                .map_err(|_| ())
        });
        match parsed {
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

fn system_now() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SharedTier for RedisL2 {
    fn lookup<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(Option<Stamped>, UnixMillis), Error>> {
        RedisL2::lookup(self, namespace, key).boxed()
    }

    fn lookup_many<'a>(
        &'a self,
        namespace: &'a str,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Looked, Error>> {
        RedisL2::lookup_many(self, namespace, keys).boxed()
    }

    fn lease<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        ttl: Duration,
        min_interval: Duration,
    ) -> BoxFuture<'a, Result<LeaseGrant, Error>> {
        RedisL2::lease(self, namespace, key, ttl, min_interval).boxed()
    }

    fn release<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<(), Error>> {
        RedisL2::release(self, namespace, key, token).boxed()
    }

    fn fill<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        envelope: &'a Envelope,
        compression: Compression,
        now: UnixMillis,
        fence: Fence<'a>,
    ) -> BoxFuture<'a, Result<FillOutcome, Error>> {
        RedisL2::fill(self, namespace, key, envelope, compression, now, fence).boxed()
    }

    fn write<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        envelope: &'a Envelope,
        compression: Compression,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<FillOutcome, Error>> {
        RedisL2::write(self, namespace, key, envelope, compression, now).boxed()
    }

    fn invalidate<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        version: Option<u64>,
        hold_off: Duration,
    ) -> BoxFuture<'a, Result<UnixMillis, Error>> {
        RedisL2::invalidate(self, namespace, key, version, hold_off, system_now()).boxed()
    }

    fn raise_barrier<'a>(
        &'a self,
        namespace: &'a str,
        tag: Option<&'a str>,
        keep: Duration,
    ) -> BoxFuture<'a, Result<UnixMillis, Error>> {
        RedisL2::raise_barrier(self, namespace, tag, keep).boxed()
    }

    fn barriers<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Barriers, Error>> {
        RedisL2::barriers(self, namespace).boxed()
    }
}
