//! The server's configuration: one TOML file, validated when it is loaded.
//!
//! Every error is a [`ConfigError`] naming the file, the line and column, the field (`namespaces.price.ttl`) and
//! what would be valid. Parsing errors come from `toml` with their span; checks that need more than one field
//! (a namespace naming a source that does not exist, a policy the engine rejects) keep the span of the field they
//! blame through [`toml::Spanned`].
//!
//! No config at all is the embedded default ([`Config::embedded`]): SQLite in the data directory, L1 only, the
//! in-process bus, and a demo catalog (see [`crate::demo`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A configuration error, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct ConfigError {
    /// The file (or `<embedded>`).
    pub file: String,
    /// 1-based line (0 when the error has no location).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field, as a dotted path (`namespaces.price.ttl`), or `-` when unknown.
    pub field: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

/// A duration written as `250ms`, `30s`, `5m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration ({e}); write e.g. \"250ms\", \"30s\", \"5m\", \"1h\""
            ))
        })
    }
}

/// A size written as `512KiB`, `256MiB`, `1GiB`, or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Bytes(n)),
            Raw::S(s) => parse_bytes(&s).map(Bytes).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a size; write e.g. \"64KiB\", \"256MiB\", \"1GiB\" or a number of bytes"
                ))
            }),
        }
    }
}

fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening, auth and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// The in-process tier.
    #[serde(default)]
    pub l1: L1Config,
    /// Redis as L2, lease store and bus. Absent: L1 only, in-process bus.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Named databases.
    #[serde(default)]
    pub sources: BTreeMap<String, Spanned<SourceConfig>>,
    /// The namespaces.
    #[serde(default)]
    pub namespaces: BTreeMap<String, Spanned<NamespaceConfig>>,
    /// The write-behind journal (for namespaces with `write = "behind"`).
    #[serde(default)]
    pub write_behind: WriteBehindConfig,
    /// Change data capture from a PostgreSQL source.
    #[serde(default)]
    pub cdc: Option<CdcConfig>,
    /// The edge tier: an HTTP caching reverse proxy on its own listener. Absent: no proxy.
    #[serde(default)]
    pub proxy: Option<ProxySection>,
    /// CDNs in front, purged with every purge (`[[cdn]]`, see [`crate::cdn`]).
    #[serde(default)]
    pub cdn: Vec<CdnHookConfig>,
    /// Rate limits by name (`[limits.NAME]`, see [`crate::limits`]).
    #[serde(default)]
    pub limits: BTreeMap<String, Spanned<LimitConfig>>,
    /// Where the file came from (for errors); not in the file.
    #[serde(skip)]
    pub origin: String,
    /// The file's text, to locate errors found after parsing (at start); not in the file.
    #[serde(skip)]
    pub source_text: String,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address. Default: `127.0.0.1:8700`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token for mutating and admin routes. Default: none, which is allowed only on a loopback address
    /// (see [`ServerConfig::allow_unauthenticated`]). Must not be empty.
    #[serde(default)]
    pub token: Option<String>,
    /// Proxies (addresses or networks, `"10.0.0.0/8"`) whose `X-Forwarded-For` / `Forwarded` name the client for
    /// rate limits. Default: none — the peer's address counts.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Read the token from this environment variable instead. Checked when `serve` starts: an unset or empty
    /// variable stops the start, naming it (`check-config` only says whether it is set here).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Serve a non-loopback address without a token (a trusted network). Default: false — `serve` refuses to
    /// listen on anything but loopback without a token, like Redis's protected mode.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// More `Host` values the server answers to besides the defaults (the listen address, `localhost`,
    /// `127.0.0.1` and `[::1]` with the listen port; any IP address with the listen port when listening on
    /// `0.0.0.0` / `[::]`): `"name"` (any port), `"name:port"`, or `"*"` (no Host check: behind a proxy that
    /// checks it). Every route but `/healthz` and `/readyz` checks `Host` (DNS rebinding).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Web origins (`"https://admin.example.com"`) allowed to send requests besides the server's own
    /// (`http://` + an allowed Host). A request with any other `Origin` is refused (403 `forbidden_origin`).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// A client must send a request's whole head within this long of its first byte (and of the connection's
    /// start, for its first request), or the connection is closed. Default: 10 s; at most 1 h.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// A keep-alive connection with no request for this long is closed. Default: 60 s; at most 1 h.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Open connections at most; past it, new ones get `503` and are closed
    /// (`strata_http_connections_refused_total`). Default: 10,000 (lowered, with a warning, to what the open-file
    /// limit allows).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests on one connection at most; the last one is answered with `Connection: close`. Default: 10,000.
    #[serde(default = "default_max_requests_per_connection")]
    pub max_requests_per_connection: u64,
    /// Largest request body. Default: 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body: Bytes,
    /// Longest key, in bytes. Default: 512.
    #[serde(default = "default_max_key")]
    pub max_key_len: usize,
    /// Where SQLite files and the write-behind journal live. Default: `strata-data`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8700".parse().expect("valid address")
}
fn default_max_body() -> Bytes {
    Bytes(1 << 20)
}
fn default_max_key() -> usize {
    512
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("strata-data")
}
fn default_header_read_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_idle_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_requests_per_connection() -> u64 {
    10_000
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token: None,
            trusted_proxies: Vec::new(),
            token_env: None,
            allow_unauthenticated: false,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_requests_per_connection: default_max_requests_per_connection(),
            max_body: default_max_body(),
            max_key_len: default_max_key(),
            data_dir: default_data_dir(),
        }
    }
}

/// `[l1]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L1Config {
    /// Memory for all namespaces' L1 together, split evenly unless a namespace sets its own. Default: 256 MiB.
    #[serde(default = "default_l1_budget")]
    pub budget: Bytes,
}

fn default_l1_budget() -> Bytes {
    Bytes(256 << 20)
}

impl Default for L1Config {
    fn default() -> Self {
        Self {
            budget: default_l1_budget(),
        }
    }
}

/// `[redis]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Key prefix (one per deployment). Default: `strata`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Bound on every Redis call. Default: 250 ms.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Dur,
}

fn default_prefix() -> String {
    "strata".into()
}
fn default_redis_timeout() -> Dur {
    Dur(Duration::from_millis(250))
}

/// `[sources.NAME]`: exactly one of `sqlite`, `postgres` and `http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A SQLite file, relative to `server.data_dir` unless absolute; created if missing.
    #[serde(default)]
    pub sqlite: Option<PathBuf>,
    /// A PostgreSQL URL.
    #[serde(default)]
    pub postgres: Option<String>,
    /// A REST endpoint (`http[s]://host[:port][/path]`): a namespace reads key `k` with `GET {http}/{path}/{k}`
    /// (see [`strata_http::source`]). Read-only.
    #[serde(default)]
    pub http: Option<String>,
    /// Pool size (SQL sources). Default: 16.
    #[serde(default = "default_pool")]
    pub max_connections: u32,
    /// An HTTP source's timeout per attempt. Default: 5 s.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Retries of a failed load (full-jitter backoff, within the retry budget). Default: 2 for an HTTP source,
    /// 0 for a SQL one.
    #[serde(default)]
    pub retries: Option<u32>,
    /// The share of loads that may be retried (the retry budget). Default: 0.1.
    #[serde(default)]
    pub retry_ratio: Option<f64>,
    /// An HTTP source's answers set their own TTL from `Cache-Control` (shorter than the namespace's only).
    /// Default: false.
    #[serde(default)]
    pub ttl_from_cache_control: Option<bool>,
    /// A PEM file of CA certificates an `https://` source is also trusted by (beside Mozilla's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl SourceConfig {
    /// The options of an HTTP source.
    pub fn http_options(&self) -> strata_http::source::HttpSourceOptions {
        let d = strata_http::source::HttpSourceOptions::default();
        strata_http::source::HttpSourceOptions {
            timeout: self.timeout.map_or(d.timeout, |t| t.0),
            retries: self.retries.unwrap_or(d.retries),
            retry_ratio: self.retry_ratio.unwrap_or(d.retry_ratio),
            ttl_from_cache_control: self.ttl_from_cache_control.unwrap_or(false),
            ..d
        }
    }
}

fn default_pool() -> u32 {
    16
}

/// The write mode of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteModeConfig {
    /// Commit, then invalidate.
    Aside,
    /// Commit, then set the caches.
    Through,
    /// Journal, ack, flush later.
    Behind,
    /// Commit only.
    Around,
}

/// `[namespaces.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// The source (a name under `[sources]`). Without one, the namespace is a plain cache written by `PUT`.
    #[serde(default)]
    pub source: Option<Spanned<String>>,
    /// The table (default: the namespace name).
    #[serde(default)]
    pub table: Option<String>,
    /// Instead of a table: a `SELECT` with one row per key (a join, a view). Read-only: PUT and DELETE are refused.
    #[serde(default)]
    pub query: Option<Spanned<String>>,
    /// For an `http` source: the path under its URL the keys live at (`{url}/{path}/{key}`). Default: none
    /// (`{url}/{key}`).
    #[serde(default)]
    pub path: Option<String>,
    /// The key column. Default: `id`.
    #[serde(default = "default_key_column")]
    pub key_column: String,
    /// The version column. Default: `version`.
    #[serde(default = "default_version_column")]
    pub version_column: String,
    /// Write mode: `aside`, `through`, `behind` or `around`. Default: `aside`.
    #[serde(default = "default_write")]
    pub write: Spanned<WriteModeConfig>,
    /// Fresh for. Default: 60 s.
    #[serde(default)]
    pub ttl: Option<Dur>,
    /// TTL spread, ± fraction. Default: 0.1.
    #[serde(default)]
    pub jitter: Option<f64>,
    /// Serve stale while revalidating for this long after the TTL.
    #[serde(default)]
    pub stale_for: Option<Dur>,
    /// Serve stale while the source fails for this long after the TTL.
    #[serde(default)]
    pub fail_safe_for: Option<Dur>,
    /// Cache "absent" for this long.
    #[serde(default)]
    pub negative_ttl: Option<Dur>,
    /// `"off"`, `"ratio:0.8"` or `"xfetch:1.0"`.
    #[serde(default)]
    pub early_refresh: Option<Spanned<String>>,
    /// Use L1. Default: true.
    #[serde(default)]
    pub l1: Option<bool>,
    /// This namespace's L1 budget (default: an even share of `[l1] budget`).
    #[serde(default)]
    pub l1_budget: Option<Bytes>,
    /// Use L2 (when `[redis]` is set). Default: true.
    #[serde(default)]
    pub l2: Option<bool>,
    /// Coalesce loads across nodes with a Redis lease. Default: true with Redis.
    #[serde(default)]
    pub distributed_coalescing: Option<bool>,
    /// Serve stale after this long waiting for the source.
    #[serde(default)]
    pub soft_timeout: Option<Dur>,
    /// Fail the load after this long.
    #[serde(default)]
    pub hard_timeout: Option<Dur>,
    /// What this namespace is for (shown in stats and the dashboard).
    #[serde(default)]
    pub description: Option<String>,
    /// Tags every entry gets, as templates over its key (`{key}`, or the key column's name) and its value's fields
    /// (`{category}`), e.g. `["product:{key}", "category:{category}"]`: a purge or invalidation of the tag
    /// (`POST /v1/_purge {"tag": …}`, a write's `Strata-Tags`, a CDC rule's tags) reaches the entry. A field that
    /// is absent or null gives no tag. Default: none.
    #[serde(default)]
    pub tags: Vec<Spanned<String>>,
    /// How browsers and CDNs may hold this namespace's answers (`[namespaces.X.http]`, see
    /// [`crate::http_caching`]). Default: nothing but `ETag`.
    #[serde(default)]
    pub http: Option<HttpCachingConfig>,
    /// The rate limit (a name under `[limits]`) every request to `/v1/{ns}/…` passes. Default: none.
    #[serde(default)]
    pub rate_limit: Option<Spanned<String>>,
    /// An auth namespace: it validates tokens against this introspection endpoint (`POST /v1/{ns}/_introspect`,
    /// see [`strata_http::introspect`]) and caches each answer — a valid token until its `exp` at the latest, an
    /// invalid one for `negative_ttl`. Without `source`, `table`, `query`, `path` or `write`.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
    /// Bulkhead: at most this many loads against the source at once (see `strata::protect`). Default: none.
    #[serde(default)]
    pub max_loads: Option<usize>,
    /// Loads waiting for a bulkhead slot; past it they are shed (stale, or `503`). Default: 0.
    #[serde(default)]
    pub max_queue: Option<usize>,
    /// Longest wait for a bulkhead slot. Default: 100ms.
    #[serde(default)]
    pub max_wait: Option<Dur>,
    /// Consecutive source failures or timeouts that open the source's circuit breaker. Default: none.
    #[serde(default)]
    pub breaker_failures: Option<u32>,
    /// How long the breaker stays open before one probe. Default: 5s.
    #[serde(default)]
    pub breaker_open_for: Option<Dur>,
    /// Adaptive concurrency (AIMD, see `strata::protect`): the loads the source takes at once are found by
    /// themselves, a load slower than this counting as overload (`max_loads` stays the ceiling). Default: off.
    #[serde(default)]
    pub adaptive_latency: Option<Dur>,
}

/// The protection fields a namespace and a proxy route share: `(max_loads, max_queue, max_wait,
/// breaker_failures, breaker_open_for, adaptive_latency)`.
type ProtectionFields = (
    Option<usize>,
    Option<usize>,
    Option<Dur>,
    Option<u32>,
    Option<Dur>,
    Option<Dur>,
);

/// The protection those fields configure, when a bulkhead or a breaker is.
fn protection_of(f: ProtectionFields) -> Option<strata::protect::Protection> {
    let (max_loads, max_queue, max_wait, breaker_failures, breaker_open_for, adaptive) = f;
    if max_loads.is_none() && breaker_failures.is_none() && adaptive.is_none() {
        return None;
    }
    let d = strata::protect::Protection::default();
    Some(strata::protect::Protection {
        max_in_flight: max_loads,
        max_queue: max_queue.unwrap_or(0),
        max_wait: max_wait.map_or(d.max_wait, |w| w.0),
        breaker_failures,
        breaker_open_for: breaker_open_for.map_or(d.breaker_open_for, |w| w.0),
        adaptive_target: adaptive.map(|a| a.0),
    })
}

impl NamespaceConfig {
    fn protection_fields(&self) -> ProtectionFields {
        (
            self.max_loads,
            self.max_queue,
            self.max_wait,
            self.breaker_failures,
            self.breaker_open_for,
            self.adaptive_latency,
        )
    }

    /// The source protection, when a bulkhead or a breaker is configured.
    pub fn protection(&self) -> Option<strata::protect::Protection> {
        protection_of(self.protection_fields())
    }
}

/// `[namespaces.X.introspection]`: an OAuth 2.0 token introspection endpoint (RFC 7662).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The endpoint: `https://idp.example.com/oauth2/introspect`.
    pub url: String,
    /// `"POST"` (a form body `token=…`, RFC 7662) or `"GET"` (`?token=…`). Default: `"POST"`.
    #[serde(default)]
    pub method: Option<String>,
    /// The environment variable holding the `Authorization` value the endpoint wants (`Basic …`, `Bearer …`).
    #[serde(default)]
    pub authorization_env: Option<String>,
    /// Timeout per attempt. Default: 2 s.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Retries of a failed call (within a budget of a tenth of calls). Default: 1.
    #[serde(default)]
    pub retries: Option<u32>,
    /// A PEM file of CA certificates the endpoint is also trusted by (beside Mozilla's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl IntrospectionConfig {
    /// The method (validated).
    pub fn method(&self) -> Result<strata_http::introspect::IntrospectionMethod, String> {
        match self
            .method
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("POST") => Ok(strata_http::introspect::IntrospectionMethod::Post),
            Some("GET") => Ok(strata_http::introspect::IntrospectionMethod::Get),
            Some(m) => Err(format!("{m:?}: write \"POST\" (RFC 7662) or \"GET\"")),
        }
    }
}

/// `[limits.NAME]`: a rate limit (see [`crate::limits`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// `token_bucket` (default), `leaky_bucket`, `fixed_window`, `sliding_window` or `sliding_log`.
    #[serde(default)]
    pub algorithm: strata::limit::Algorithm,
    /// Requests (cost units) per `per`.
    pub limit: u64,
    /// The period, e.g. `"1s"`, `"1m"`.
    pub per: Dur,
    /// The bucket size (token and leaky bucket). Default: `limit`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// `"ip"` (default), `"header:NAME"` or `"route"`.
    #[serde(default)]
    pub key: Option<String>,
    /// The nodes sharing it: while Redis fails, each admits `1 / nodes` of the quota alone. Default: 1.
    #[serde(default)]
    pub nodes: Option<u64>,
}

impl LimitConfig {
    /// The quota.
    pub fn quota(&self) -> strata::limit::Quota {
        let q = strata::limit::Quota::new(self.limit, self.per.0);
        match self.burst {
            Some(b) => q.with_burst(b),
            None => q,
        }
    }
}

/// `[[cdn]]`: a CDN in front, sent every purge (see [`crate::cdn`] for delivery and request shapes).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdnHookConfig {
    /// Its name (outbox files, metrics): letters, digits, `_` and `-`.
    pub name: String,
    /// `"fastly"`, `"cloudflare"` or `"webhook"`.
    pub kind: crate::cdn::HookKind,
    /// The API's base URL (`https://api.fastly.com`, `https://api.cloudflare.com/client/v4`,
    /// `http[s]://host[:port]`; a webhook's full URL).
    pub url: String,
    /// A PEM file of CA certificates to trust beside Mozilla's roots, for an `https://` URL behind a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Fastly's service id, Cloudflare's zone id.
    #[serde(default)]
    pub service: Option<String>,
    /// The environment variable holding Fastly's key or Cloudflare's token (never the secret itself).
    #[serde(default)]
    pub token_env: Option<String>,
    /// The environment variable holding the webhook's HMAC secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// The proxy routes whose URL, prefix and route purges it gets. Default: all. Tag and everything purges
    /// reach every hook.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Most values (tags, URLs) per request. Default: 100.
    #[serde(default)]
    pub max_batch: Option<usize>,
    /// Attempts before a batch is dead-lettered. Default: 8.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// How long one request may take. Default: 10 s.
    #[serde(default)]
    pub timeout: Option<Dur>,
}

impl CdnHookConfig {
    /// The hook, with its secrets read from the environment.
    pub fn spec(&self) -> Result<crate::cdn::HookSpec, String> {
        let env = |v: &Option<String>, what: &str| -> Result<Option<String>, String> {
            match v {
                None => Ok(None),
                Some(var) => std::env::var(var)
                    .ok()
                    .filter(|s| !s.is_empty())
                    .map(Some)
                    .ok_or_else(|| format!("cdn hook {:?}: ${var} ({what}) is not set", self.name)),
            }
        };
        Ok(crate::cdn::HookSpec {
            name: self.name.clone(),
            kind: self.kind,
            url: self.url.clone(),
            roots: match &self.ca_file {
                Some(f) => strata_http::client::load_roots(f)
                    .map_err(|e| format!("cdn hook {:?}: ca_file: {e}", self.name))?,
                None => Vec::new(),
            },
            service: self.service.clone().unwrap_or_default(),
            token: env(&self.token_env, "token_env")?,
            secret: env(&self.secret_env, "secret_env")?,
            routes: self.routes.clone(),
            max_batch: self.max_batch.unwrap_or(100),
            max_attempts: self.max_attempts.unwrap_or(8),
            timeout: self.timeout.map_or(Duration::from_secs(10), |d| d.0),
        })
    }
}

/// `[namespaces.X.http]`: the HTTP caching fields of the data API's answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCachingConfig {
    /// `Cache-Control`, e.g. `"public, max-age=60, stale-while-revalidate=3600"` or `"private, no-store"`.
    #[serde(default)]
    pub cache_control: Option<Spanned<String>>,
    /// `CDN-Cache-Control` (RFC 9213): what a CDN keeps, over `Cache-Control`, e.g. `"max-age=600"`.
    #[serde(default)]
    pub cdn_cache_control: Option<Spanned<String>>,
    /// Request fields the answer depends on (`Vary`).
    #[serde(default)]
    pub vary: Vec<String>,
    /// Send `Surrogate-Key` (`{ns} {ns}:{key}` and the entry's tags). Default: true.
    #[serde(default)]
    pub surrogate_keys: Option<bool>,
}

impl HttpCachingConfig {
    /// The fields as the API applies them; `Err((field, problem))` for a value that is not a valid field value.
    pub fn compiled(&self) -> Result<crate::http_caching::HttpCaching, (&'static str, String)> {
        let value = |field: &'static str, v: &Option<Spanned<String>>| {
            v.as_ref()
                .map(|v| {
                    let text = v.get_ref().trim();
                    if text.is_empty() {
                        return Err((field, "must not be empty (leave it out)".to_string()));
                    }
                    if let Some(bad) = text.split(',').map(str::trim).find(|d| {
                        d.is_empty()
                            || !d
                                .split('=')
                                .next()
                                .unwrap_or("")
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    }) {
                        return Err((
                            field,
                            format!(
                                "{text:?}: {bad:?} is not a directive (`name` or `name=value`)"
                            ),
                        ));
                    }
                    HeaderValue::from_str(text)
                        .map_err(|_| (field, format!("{text:?} is not a valid field value")))
                })
                .transpose()
        };
        let vary = if self.vary.is_empty() {
            None
        } else {
            for v in &self.vary {
                if HeaderName::from_bytes(v.as_bytes()).is_err() {
                    return Err(("vary", format!("{v:?} is not a header field name")));
                }
            }
            Some(
                HeaderValue::from_str(&self.vary.join(", "))
                    .map_err(|_| ("vary", "not a valid field value".to_string()))?,
            )
        };
        Ok(crate::http_caching::HttpCaching {
            cache_control: value("cache_control", &self.cache_control)?,
            cdn_cache_control: value("cdn_cache_control", &self.cdn_cache_control)?,
            vary,
            surrogate_keys: self.surrogate_keys.unwrap_or(true),
        })
    }
}

fn default_key_column() -> String {
    "id".into()
}
fn default_version_column() -> String {
    "version".into()
}
fn default_write() -> Spanned<WriteModeConfig> {
    Spanned::new(0..0, WriteModeConfig::Aside)
}

/// `[write_behind]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteBehindConfig {
    /// `"always"` (fsync before each ack, group commit) or a duration (`"10ms"`: sync on a timer). Default:
    /// `always`.
    #[serde(default)]
    pub fsync: Option<Spanned<String>>,
    /// Writes waiting for the source at most. Default: 100,000.
    #[serde(default)]
    pub max_pending: Option<usize>,
    /// How long the flusher gathers a batch. Default: 20 ms.
    #[serde(default)]
    pub linger: Option<Dur>,
}

/// `[cdc]`: a logical-replication consumer on a PostgreSQL source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcConfig {
    /// The PostgreSQL source (a name under `[sources]`).
    pub source: Spanned<String>,
    /// Replication slot. Default: `strata`.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication. Default: `strata`.
    #[serde(default = "default_slot")]
    pub publication: String,
    /// Mapping rules (`[[cdc.rules]]`).
    #[serde(default)]
    pub rules: Vec<strata_cdc::Rule>,
}

fn default_slot() -> String {
    "strata".into()
}

/// `[proxy]`: the edge tier (`strata-http`), an RFC 9111 caching reverse proxy served beside the data API on its
/// own listener, with the same connection limits and timeouts (`[server]`), stopped gracefully with it. Its
/// responses live in the cache's `_edge` namespace: in L1 (64 MiB), and in L2 when `[redis]` is set (nodes share
/// them). The proxy takes no token (it only forwards to its origins, which do their own access control), so any
/// address is allowed for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// Listen address. Default: `127.0.0.1:8780`.
    #[serde(default = "default_proxy_listen")]
    pub listen: SocketAddr,
    /// Largest request or response body (bodies are buffered). Default: 16 MiB; at most 1 GiB.
    #[serde(default = "default_proxy_max_body")]
    pub max_body: Bytes,
    /// How long an origin exchange may take (past it: 504, or stale where `stale-if-error` allows). Default:
    /// 30 s; at most 1 h.
    #[serde(default = "default_origin_timeout")]
    pub origin_timeout: Dur,
    /// The scheme of cache keys: `"https"` when TLS ends in front of the proxy. Default: `"http"`.
    #[serde(default = "default_key_scheme")]
    pub key_scheme: String,
    /// Whether `Surrogate-Key` and `Cache-Tag` response fields go on to clients (a CDN in front that purges by
    /// them wants them); they are indexed as purge tags either way. Default: false (stripped).
    #[serde(default)]
    pub forward_surrogate_keys: bool,
    /// The routes (`[[proxy.routes]]`), at least one.
    #[serde(default)]
    pub routes: Vec<ProxyRouteConfig>,
}

/// `[[proxy.routes]]`: requests for `host` (any host when absent) under `path_prefix` (`/` when absent) go to
/// `origin`; the most specific route wins (a host before any host, then the longest prefix). The other keys
/// override the route's edge policy (defaults: the conservative reading of RFC 9111).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRouteConfig {
    /// The route's name in metrics and stats. Default: host (or `*`) and path prefix, e.g. `*/` or `a.example/api/`.
    #[serde(default)]
    pub name: Option<String>,
    /// The `Host` it serves (without port, case-insensitive). Default: any.
    #[serde(default)]
    pub host: Option<String>,
    /// The path prefix it serves, starting with `/`. Default: `/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The origin: `http://host[:port]`.
    pub origin: String,
    /// Responses with a larger body are answered but not stored. Default: `proxy.max_body`.
    #[serde(default)]
    pub max_object_bytes: Option<Bytes>,
    /// Store responses to requests with `Authorization` even without `public`, `s-maxage` or `must-revalidate`
    /// (RFC 9111 §3.5: only for an origin that varies such responses itself). Default: false.
    #[serde(default)]
    pub honour_authorization: bool,
    /// Store responses with `Set-Cookie` (and the cookie) even without `public`. Default: false.
    #[serde(default)]
    pub store_set_cookie: bool,
    /// A stale-while-revalidate window for responses that name none (never past `must-revalidate`,
    /// `no-cache`…). Default: none.
    #[serde(default)]
    pub stale_while_revalidate: Option<Dur>,
    /// A stale-if-error window for responses and requests that name none. Default: none.
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
    /// Heuristic freshness (RFC 9111 §4.2.2), per mille of the time since `Last-Modified`; 0 turns it off.
    /// Default: 100 (10 %).
    #[serde(default)]
    pub heuristic_per_mille: Option<u32>,
    /// The cap on a heuristic lifetime. Default: 1 day.
    #[serde(default)]
    pub heuristic_cap: Option<Dur>,
    /// The longest a response is kept (fresh and every stale window). Default: 1 day.
    #[serde(default)]
    pub max_retention: Option<Dur>,
    /// How long a URI whose response could not be stored skips request collapsing (hit-for-pass; its answers say
    /// `detail="hit-for-miss"` in `Cache-Status`). Default: 10 s; at most 1 h.
    #[serde(default)]
    pub hit_for_pass: Option<Dur>,
    /// The rate limit (a name under `[limits]`) every request of this route passes (`429` past it). Default:
    /// none.
    #[serde(default)]
    pub rate_limit: Option<Spanned<String>>,
    /// Bulkhead: at most this many requests waiting for the origin's response head at once. Default: none.
    #[serde(default)]
    pub max_loads: Option<usize>,
    /// Requests waiting for a bulkhead slot; past it they are shed (stale inside `stale-if-error`, or `503`).
    /// Default: 0.
    #[serde(default)]
    pub max_queue: Option<usize>,
    /// Longest wait for a bulkhead slot. Default: 100ms.
    #[serde(default)]
    pub max_wait: Option<Dur>,
    /// Consecutive origin failures (no answer, a timeout, a 5xx) that open the route's circuit breaker.
    /// Default: none.
    #[serde(default)]
    pub breaker_failures: Option<u32>,
    /// How long the breaker stays open before one probe. Default: 5s.
    #[serde(default)]
    pub breaker_open_for: Option<Dur>,
    /// Adaptive concurrency (AIMD, see `strata::protect`): the loads the source takes at once are found by
    /// themselves, a load slower than this counting as overload (`max_loads` stays the ceiling). Default: off.
    #[serde(default)]
    pub adaptive_latency: Option<Dur>,
}

fn default_proxy_listen() -> SocketAddr {
    "127.0.0.1:8780".parse().expect("valid address")
}
fn default_proxy_max_body() -> Bytes {
    Bytes(16 << 20)
}
fn default_origin_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_key_scheme() -> String {
    "http".into()
}

impl ProxySection {
    /// A proxy on `listen` with one route, to `origin`, for every host and path (`serve --proxy-origin`).
    pub fn one_route(listen: SocketAddr, origin: &str) -> Self {
        Self {
            listen,
            max_body: default_proxy_max_body(),
            origin_timeout: default_origin_timeout(),
            key_scheme: default_key_scheme(),
            forward_surrogate_keys: false,
            routes: vec![ProxyRouteConfig::to(origin)],
        }
    }

    /// The default listen address (`127.0.0.1:8780`).
    pub fn default_listen() -> SocketAddr {
        default_proxy_listen()
    }

    /// The proxy's settings.
    pub fn proxy_config(&self) -> strata_http::proxy::ProxyConfig {
        strata_http::proxy::ProxyConfig {
            key_scheme: self.key_scheme.clone(),
            max_body_bytes: self.max_body.0 as usize,
            origin_timeout: self.origin_timeout.0,
            forward_surrogate_keys: self.forward_surrogate_keys,
            ..strata_http::proxy::ProxyConfig::default()
        }
    }

    /// The route table; `Err((index, message))` for an origin that is not `http://host[:port]`.
    pub fn routes(&self) -> Result<strata_http::proxy::Routes, (usize, String)> {
        let mut routes = strata_http::proxy::Routes::new();
        for (i, r) in self.routes.iter().enumerate() {
            routes = routes.with(r.route().map_err(|e| (i, e))?);
        }
        Ok(routes)
    }

    /// How long the engine keeps a response: the longest `max_retention` of any route.
    pub fn retention(&self) -> Duration {
        self.routes
            .iter()
            .map(|r| r.policy().max_retention)
            .max()
            .unwrap_or(Duration::from_secs(24 * 3600))
    }
}

impl ProxyRouteConfig {
    /// A route to `origin` for every host and path, with the default policy.
    pub fn to(origin: &str) -> Self {
        Self {
            name: None,
            host: None,
            path_prefix: None,
            origin: origin.to_owned(),
            max_object_bytes: None,
            honour_authorization: false,
            store_set_cookie: false,
            stale_while_revalidate: None,
            stale_if_error: None,
            heuristic_per_mille: None,
            heuristic_cap: None,
            max_retention: None,
            hit_for_pass: None,
            rate_limit: None,
            max_loads: None,
            max_queue: None,
            max_wait: None,
            breaker_failures: None,
            breaker_open_for: None,
            adaptive_latency: None,
        }
    }

    /// The route's edge policy: the defaults with this route's overrides.
    pub fn policy(&self) -> strata_http::policy::EdgePolicy {
        let mut p = strata_http::policy::EdgePolicy::default()
            .with_store_authorized(self.honour_authorization)
            .with_store_set_cookie(self.store_set_cookie);
        if let Some(d) = self.stale_while_revalidate {
            p = p.with_stale_while_revalidate(d.0);
        }
        if let Some(d) = self.stale_if_error {
            p = p.with_stale_if_error(d.0);
        }
        if let Some(n) = self.heuristic_per_mille {
            p = p.with_heuristic_per_mille(n);
        }
        if let Some(d) = self.heuristic_cap {
            p = p.with_heuristic_cap(d.0);
        }
        if let Some(d) = self.max_retention {
            p = p.with_max_retention(d.0);
        }
        p
    }

    fn protection_fields(&self) -> ProtectionFields {
        (
            self.max_loads,
            self.max_queue,
            self.max_wait,
            self.breaker_failures,
            self.breaker_open_for,
            self.adaptive_latency,
        )
    }

    /// The route; `Err(message)` for an origin that is not `http://host[:port]`.
    pub fn route(&self) -> Result<strata_http::proxy::Route, String> {
        let mut r = strata_http::proxy::Route::new(&self.origin)
            .map_err(|e| e.to_string())?
            .with_policy(self.policy());
        if let Some(h) = &self.host {
            r = r.with_host(h);
        }
        if let Some(p) = &self.path_prefix {
            r = r.with_path_prefix(p);
        }
        if let Some(n) = &self.name {
            r = r.with_name(n);
        }
        if let Some(b) = self.max_object_bytes {
            r = r.with_max_object_bytes(b.0 as usize);
        }
        if let Some(d) = self.hit_for_pass {
            r = r.with_hit_for_miss(d.0);
        }
        if let Some(p) = protection_of(self.protection_fields()) {
            r = r.with_protection(p);
        }
        Ok(r)
    }
}

/// Line and column (1-based) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// The name a `[table]` header line gives, with the element's index for an array of tables (`[[proxy.routes]]`,
/// the second one in `above_and_on` → `proxy.routes[1]`).
fn header_name(header: &str, above_and_on: &str) -> String {
    let bare = |h: &str| {
        h.trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let name = bare(header);
    if !header.starts_with("[[") {
        return name;
    }
    let count = above_and_on
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("[[") && bare(l) == name)
        .count();
    format!("{name}[{}]", count.saturating_sub(1))
}

/// The dotted field at a span: the nearest `[table]` header above it plus the key on the span's line.
fn field_at(src: &str, span: &Range<usize>) -> String {
    let start = span.start.min(src.len());
    let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = src[line_start..].lines().next().unwrap_or_default();
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        // The span is on a header (a duplicate table, an array of tables): the header is the field.
        let line_end = line_start + line.len();
        return header_name(trimmed, &src[..line_end]);
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned());
    let header = src[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| header_name(l, &src[..line_start]));
    match (header, key) {
        (Some(h), Some(k)) => format!("{h}.{k}"),
        (Some(h), None) => h,
        (None, Some(k)) => k,
        (None, None) => "-".into(),
    }
}

/// The span of the key a dotted field names (`namespaces.price.ttl`, `cdc.rules[2].namespace`) in `src`: the
/// key itself, or the array element for an index; the deepest part found when the rest is not in the file (a
/// default). `None` when not even the first part is.
fn span_of(src: &str, field: &str) -> Option<Range<usize>> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(src).ok()?;
    let mut table: &DeTable<'_> = doc.get_ref();
    let mut found: Option<Range<usize>> = None;
    let mut parts = field.split('.').peekable();
    while let Some(part) = parts.next() {
        let (key, index) = match part.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == key) else {
            break;
        };
        found = Some(k.span());
        let mut value = v;
        if let Some(i) = index {
            match value.get_ref() {
                DeValue::Array(a) if i < a.len() => {
                    found = Some(a[i].span());
                    value = &a[i];
                }
                _ => break,
            }
        }
        match value.get_ref() {
            DeValue::Table(t) if parts.peek().is_some() => table = t,
            _ => break,
        }
    }
    found
}

/// Largest time-to-live-like duration (`ttl`, `stale_for`, `fail_safe_for`, `negative_ttl`): 10 years. Past a
/// few hundred million years the engine's millisecond expiry wraps and every read would miss.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Largest timeout (Redis, load timeouts, write-behind linger and fsync interval, HTTP timeouts): 1 hour.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest memory size (`[l1] budget`, a namespace's `l1_budget`): 1 TiB.
pub const MAX_MEMORY: u64 = 1 << 40;
/// Largest request body (`server.max_body`; bodies are read into memory): 1 GiB.
pub const MAX_BODY: u64 = 1 << 30;
/// Most open HTTP connections (`server.max_connections`).
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// Most requests on one connection (`server.max_requests_per_connection`).
pub const MAX_REQUESTS_PER_CONNECTION: u64 = 1_000_000_000;
/// Largest pool of one source (`sources.NAME.max_connections`).
pub const MAX_POOL: u32 = 10_000;
/// Most write-behind writes waiting for the source (`write_behind.max_pending`).
pub const MAX_PENDING: usize = 100_000_000;

fn fmt_dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Why serving `addr` without a token is refused, if it is (protected mode): only loopback addresses may go
/// without one, unless `allow_unauthenticated` says the network is trusted.
pub fn unauthenticated_problem(
    addr: SocketAddr,
    has_token: bool,
    allow_unauthenticated: bool,
) -> Option<String> {
    let loopback = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if loopback || has_token || allow_unauthenticated {
        return None;
    }
    Some(format!(
        "refusing to listen on {addr} without a token: anyone who can reach it could write, invalidate and warm. \
         Set a token (`token_env = \"STRATA_TOKEN\"` or `token = \"…\"` in [server], or `serve --token`), listen on \
         127.0.0.1, or, on a trusted network only, set `allow_unauthenticated = true` in [server] \
         (`serve --allow-unauthenticated`)"
    ))
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 1,
            column: 1,
            field: "-".into(),
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&src, &file)
    }

    /// Locates an error: at `span` when given (and not empty), else at the key `field` names.
    fn locate(
        src: &str,
        file: &str,
        span: Option<Range<usize>>,
        field: Option<String>,
        message: String,
    ) -> ConfigError {
        let span = span
            .filter(|s| s.end > 0)
            .or_else(|| field.as_deref().and_then(|f| span_of(src, f)));
        let (line, column, field) = match span {
            Some(span) => {
                let (l, c) = line_col(src, span.start);
                (l, c, field.unwrap_or_else(|| field_at(src, &span)))
            }
            None => (1, 1, field.unwrap_or_else(|| "-".into())),
        };
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            field,
            message,
        }
    }

    /// An error about `field` of this config (found after parsing), located in its file.
    pub fn error_at(&self, field: &str, message: String) -> ConfigError {
        Self::locate(
            &self.source_text,
            &self.origin,
            None,
            Some(field.to_owned()),
            message,
        )
    }

    /// Parses and validates TOML text; `file` names it in errors. Every check `serve` makes that needs no
    /// connection is made here (bounds, identifiers, URLs, queries' shape, references between sections), so a
    /// config this accepts starts unless a service is unreachable or the environment lacks the token variable.
    pub fn parse(src: &str, file: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(src).map_err(|e: toml::de::Error| {
            Self::locate(src, file, e.span(), None, e.message().to_owned())
        })?;
        config.origin = file.to_owned();
        config.source_text = src.to_owned();
        config.validate().map_err(|(span, field, message)| {
            Self::locate(src, file, span, Some(field), message)
        })?;
        Ok(config)
    }

    /// Cross-field checks: `Err((span, field, message))`; without a span, the error is located at the key the
    /// field names.
    #[allow(clippy::type_complexity)]
    fn validate(&self) -> Result<(), (Option<Range<usize>>, String, String)> {
        type E = (Option<Range<usize>>, String, String);
        let at = |field: String, message: String| -> E { (None, field, message) };
        let names = || {
            self.sources
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ttl_like = |field: String, d: Option<Dur>| -> Result<(), E> {
            match d {
                Some(Dur(d)) if d > MAX_TTL => Err(at(
                    field,
                    format!("{} is too long: at most {}", fmt_dur(d), fmt_dur(MAX_TTL)),
                )),
                _ => Ok(()),
            }
        };
        let timeout = |field: String, d: Option<Dur>, zero_ok: bool| -> Result<(), E> {
            match d {
                Some(Dur(d)) if d > MAX_TIMEOUT => Err(at(
                    field,
                    format!(
                        "{} is too long: at most {}",
                        fmt_dur(d),
                        fmt_dur(MAX_TIMEOUT)
                    ),
                )),
                Some(Dur(d)) if d.is_zero() && !zero_ok => {
                    Err(at(field, "must be longer than zero".into()))
                }
                _ => Ok(()),
            }
        };
        let range = |field: &str, v: u64, lo: u64, hi: u64, what: &str| -> Result<(), E> {
            if v < lo || v > hi {
                Err(at(
                    field.into(),
                    format!("{v} {what}: must be between {lo} and {hi}"),
                ))
            } else {
                Ok(())
            }
        };
        let check_protection = |field: &dyn Fn(&str) -> String,
                                p: ProtectionFields|
         -> Result<(), E> {
            let (max_loads, max_queue, max_wait, breaker_failures, breaker_open_for, adaptive) = p;
            timeout(field("adaptive_latency"), adaptive, false)?;
            if let Some(m) = max_loads {
                range(&field("max_loads"), m as u64, 1, 100_000, "loads")?;
            }
            if let Some(m) = max_queue {
                range(&field("max_queue"), m as u64, 0, 1_000_000, "loads")?;
            }
            if let Some(f) = breaker_failures {
                range(
                    &field("breaker_failures"),
                    u64::from(f),
                    1,
                    1_000,
                    "failures",
                )?;
            }
            timeout(field("max_wait"), max_wait, true)?;
            timeout(field("breaker_open_for"), breaker_open_for, false)
        };

        // [server]
        let sv = &self.server;
        match &sv.token {
            Some(t) if t.is_empty() => return Err(at(
                "server.token".into(),
                "the token is empty, which would switch access control off: set a secret, or use \
                     `token_env`; leave both out only on a loopback address"
                    .into(),
            )),
            Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(at(
                    "server.token".into(),
                    "the token must be printable ASCII without spaces (it is sent in a header)"
                        .into(),
                ))
            }
            Some(_) if sv.token_env.is_some() => {
                return Err(at(
                    "server.token_env".into(),
                    "set `token` or `token_env`, not both".into(),
                ))
            }
            _ => {}
        }
        if let Some(v) = &sv.token_env {
            if v.is_empty() || v.contains('=') || v.contains('\0') {
                return Err(at(
                    "server.token_env".into(),
                    format!("{v:?} is not an environment variable name"),
                ));
            }
        }
        if sv.token.is_none() && sv.token_env.is_none() {
            if let Some(p) = unauthenticated_problem(sv.listen, false, sv.allow_unauthenticated) {
                return Err(at("server.listen".into(), p));
            }
        }
        for (i, h) in sv.allowed_hosts.iter().enumerate() {
            if crate::access::HostRule::parse(h).is_none() {
                return Err(at(
                    format!("server.allowed_hosts[{i}]"),
                    format!("{h:?}: write a host name or address, optionally with :port (\"cache.internal:8700\", \"10.0.0.5\"), or \"*\""),
                ));
            }
        }
        for (i, o) in sv.allowed_origins.iter().enumerate() {
            if crate::access::normalize_origin(o).is_none() {
                return Err(at(
                    format!("server.allowed_origins[{i}]"),
                    format!("{o:?}: write an origin: scheme://host[:port], e.g. \"https://admin.example.com\""),
                ));
            }
        }
        timeout(
            "server.header_read_timeout".into(),
            Some(sv.header_read_timeout),
            false,
        )?;
        timeout("server.idle_timeout".into(), Some(sv.idle_timeout), false)?;
        range(
            "server.max_connections",
            sv.max_connections as u64,
            1,
            MAX_CONNECTIONS as u64,
            "connections",
        )?;
        range(
            "server.max_requests_per_connection",
            sv.max_requests_per_connection,
            1,
            MAX_REQUESTS_PER_CONNECTION,
            "requests",
        )?;
        range("server.max_body", sv.max_body.0, 1, MAX_BODY, "bytes")?;
        range(
            "server.max_key_len",
            sv.max_key_len as u64,
            1,
            64 * 1024,
            "bytes",
        )?;
        if sv.data_dir.as_os_str().is_empty() {
            return Err(at("server.data_dir".into(), "is empty".into()));
        }

        // [l1], [redis]
        range("l1.budget", self.l1.budget.0, 64 << 10, MAX_MEMORY, "bytes")?;
        if let Some(r) = &self.redis {
            let ok_scheme = ["redis://", "rediss://", "unix://", "redis+unix://"]
                .iter()
                .any(|p| r.url.starts_with(p));
            if !ok_scheme {
                return Err(at(
                    "redis.url".into(),
                    format!("{:?} is not a redis:// URL", r.url),
                ));
            }
            if let Err(e) = redis::Client::open(r.url.as_str()) {
                return Err(at(
                    "redis.url".into(),
                    format!("{:?} is not a valid Redis URL: {e}", r.url),
                ));
            }
            if r.prefix.is_empty()
                || r.prefix
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(at(
                    "redis.prefix".into(),
                    format!("{:?}: give a non-empty prefix without spaces", r.prefix),
                ));
            }
            timeout("redis.timeout".into(), Some(r.timeout), false)?;
        }

        // [sources]
        for (name, s) in &self.sources {
            let field = format!("sources.{name}");
            let src = s.get_ref();
            let kinds = [
                src.sqlite.is_some(),
                src.postgres.is_some(),
                src.http.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(at(
                    field,
                    "set exactly one of `sqlite = \"file.db\"`, `postgres = \"postgres://…\"` and \
                     `http = \"https://host/path\"`"
                        .into(),
                ));
            }
            if let Some(r) = src.retries {
                range(&format!("{field}.retries"), u64::from(r), 0, 10, "retries")?;
            }
            if let Some(r) = src.retry_ratio {
                if !(0.0..=1.0).contains(&r) {
                    return Err(at(
                        format!("{field}.retry_ratio"),
                        format!("{r}: a share of loads, between 0.0 and 1.0"),
                    ));
                }
            }
            if src.http.is_none() {
                for (k, set) in [
                    ("timeout", src.timeout.is_some()),
                    (
                        "ttl_from_cache_control",
                        src.ttl_from_cache_control.is_some(),
                    ),
                    ("ca_file", src.ca_file.is_some()),
                ] {
                    if set {
                        return Err(at(
                            format!("{field}.{k}"),
                            "only an `http` source has this setting".into(),
                        ));
                    }
                }
            }
            match (&src.sqlite, &src.postgres) {
                (None, None) => {
                    let url = src.http.as_deref().unwrap_or_default();
                    let ok = url.parse::<axum::http::Uri>().is_ok_and(|u| {
                        matches!(u.scheme_str(), Some("http" | "https"))
                            && u.authority().is_some()
                            && u.query().is_none()
                    });
                    if !ok {
                        return Err(at(
                            format!("{field}.http"),
                            format!("{url:?}: write http[s]://host[:port][/path] (no query)"),
                        ));
                    }
                    timeout(format!("{field}.timeout"), src.timeout, false)?;
                    if let Some(f) = &src.ca_file {
                        strata_http::client::load_roots(f)
                            .map_err(|e| at(format!("{field}.ca_file"), e))?;
                    }
                }
                (Some(_), Some(_)) => unreachable!("one kind, checked above"),
                (None, Some(url)) => {
                    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                        return Err(at(
                            format!("{field}.postgres"),
                            format!("{url:?} is not a postgres:// URL"),
                        ));
                    }
                    if let Err(e) = url.parse::<sqlx::postgres::PgConnectOptions>() {
                        return Err(at(
                            format!("{field}.postgres"),
                            format!("{url:?} is not a valid PostgreSQL URL: {e}"),
                        ));
                    }
                }
                (Some(path), None) => {
                    if path.as_os_str().is_empty() {
                        return Err(at(
                            format!("{field}.sqlite"),
                            "the file name is empty".into(),
                        ));
                    }
                }
            }
            range(
                &format!("{field}.max_connections"),
                u64::from(s.get_ref().max_connections),
                1,
                u64::from(MAX_POOL),
                "connections",
            )?;
        }

        // [namespaces]
        for (name, ns) in &self.namespaces {
            let field = |f: &str| format!("namespaces.{name}.{f}");
            if !valid_name(name) {
                return Err(at(
                    format!("namespaces.{name}"),
                    "namespace names use letters, digits, `_` and `-` (at most 64), and do not start with `_`"
                        .into(),
                ));
            }
            let n = ns.get_ref();
            check_protection(&field, n.protection_fields())?;
            if let Some(i) = &n.introspection {
                let f = |k: &str| field(&format!("introspection.{k}"));
                let ok = i.url.parse::<axum::http::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
                });
                if !ok {
                    return Err(at(
                        f("url"),
                        format!("{:?}: write http[s]://host[:port]/path", i.url),
                    ));
                }
                i.method().map_err(|e| at(f("method"), e))?;
                timeout(f("timeout"), i.timeout, false)?;
                if let Some(r) = i.retries {
                    range(&f("retries"), u64::from(r), 0, 10, "retries")?;
                }
                if let Some(file) = &i.ca_file {
                    strata_http::client::load_roots(file).map_err(|e| at(f("ca_file"), e))?;
                }
                let stale = [
                    ("stale_for", n.stale_for.is_some()),
                    ("fail_safe_for", n.fail_safe_for.is_some()),
                    ("soft_timeout", n.soft_timeout.is_some()),
                    ("early_refresh", n.early_refresh.is_some()),
                ];
                if let Some((k, _)) = stale.iter().find(|(_, set)| *set) {
                    return Err(at(
                        field(k),
                        "an auth namespace never answers from a stale entry (a token's answer must not outlive \
                         its exp): leave this out"
                            .into(),
                    ));
                }
                let other = [
                    ("source", n.source.is_some()),
                    ("table", n.table.is_some()),
                    ("query", n.query.is_some()),
                    ("path", n.path.is_some()),
                    ("write", n.write.span().end > 0),
                    ("http", n.http.is_some()),
                ];
                if let Some((k, _)) = other.iter().find(|(_, set)| *set) {
                    return Err(at(
                        field(k),
                        "an auth namespace (with `introspection`) reads only its introspection endpoint: leave \
                         this out"
                            .into(),
                    ));
                }
            }
            if let Some(l) = &n.rate_limit {
                if !self.limits.contains_key(l.get_ref()) {
                    let names: Vec<&str> = self.limits.keys().map(String::as_str).collect();
                    return Err((
                        Some(l.span()),
                        field("rate_limit"),
                        format!(
                            "no limit {:?} under [limits]; configured: [{}]",
                            l.get_ref(),
                            names.join(", ")
                        ),
                    ));
                }
            }
            if let Some(src) = &n.source {
                if !self.sources.contains_key(src.get_ref()) {
                    return Err((
                        Some(src.span()),
                        field("source"),
                        format!("no source {:?}; defined: [{}]", src.get_ref(), names()),
                    ));
                }
            }
            let mode = *n.write.get_ref();
            let on_http = n
                .source
                .as_ref()
                .is_some_and(|src| self.sources[src.get_ref()].get_ref().http.is_some());
            if on_http {
                if n.table.is_some() || n.query.is_some() {
                    let f = if n.table.is_some() { "table" } else { "query" };
                    return Err(at(
                        field(f),
                        "an http source has no tables: give `path` (the keys' path under its URL)"
                            .into(),
                    ));
                }
                if n.write.span().end > 0 {
                    return Err((
                        Some(n.write.span()),
                        field("write"),
                        "a namespace on an http source is read-only: leave `write` out".into(),
                    ));
                }
                if let Some(p) = &n.path {
                    if p.is_empty()
                        || p.starts_with('/')
                        || p.ends_with('/')
                        || !p
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
                    {
                        return Err(at(
                            field("path"),
                            format!(
                                "{p:?}: write a relative path such as \"users\" or \"v1/users\""
                            ),
                        ));
                    }
                }
            } else if n.path.is_some() {
                return Err(at(
                    field("path"),
                    "only a namespace on an `http` source has a `path`".into(),
                ));
            }
            if let Some(q) = &n.query {
                let text = q.get_ref().trim().trim_end_matches(';').trim();
                let first = text
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                let problem = if n.source.is_none() {
                    Some("a `query` needs a `source`")
                } else if n.table.is_some() {
                    Some("set `table` or `query`, not both")
                } else if n.write.span().end > 0 {
                    Some("a query-bound namespace is read-only: leave `write` out")
                } else if text.is_empty() {
                    Some("the query is empty")
                } else if text.contains(';') {
                    Some("give one SELECT statement (no `;` inside)")
                } else if first != "SELECT" && first != "WITH" && first != "VALUES" {
                    Some("the query must be a SELECT (or WITH … SELECT) statement")
                } else {
                    None
                };
                if let Some(p) = problem {
                    return Err((Some(q.span()), field("query"), p.into()));
                }
            }
            if n.source.is_some() && !on_http {
                if let Some(t) = &n.table {
                    if let Err(e) = strata_sql::quote_ident("table", t) {
                        return Err(at(field("table"), e.to_string()));
                    }
                } else if n.query.is_none() {
                    if let Err(e) = strata_sql::quote_ident("table", name) {
                        return Err(at(
                            format!("namespaces.{name}"),
                            format!("{e}: the table defaults to the namespace name; set `table`"),
                        ));
                    }
                }
                for (f, v) in [
                    ("key_column", &n.key_column),
                    ("version_column", &n.version_column),
                ] {
                    if let Err(e) = strata_sql::quote_ident("column", v) {
                        return Err(at(field(f), e.to_string()));
                    }
                }
            }
            if n.source.is_none() && mode != WriteModeConfig::Aside {
                return Err((
                    Some(n.write.span()).filter(|s| s.end > 0),
                    field("write"),
                    format!("{mode:?} writes need a `source`; a namespace without one is a plain cache (leave `write` out)").to_lowercase(),
                ));
            }
            if let Some(er) = &n.early_refresh {
                if parse_early_refresh(er.get_ref()).is_none() {
                    return Err((
                        Some(er.span()),
                        field("early_refresh"),
                        format!(
                            "{:?}: write \"off\", \"ratio:0.8\" (0 < r < 1) or \"xfetch:1.0\" (beta > 0)",
                            er.get_ref()
                        ),
                    ));
                }
            }
            if let Some(j) = n.jitter {
                if !j.is_finite() {
                    return Err(at(field("jitter"), format!("{j} is not a number")));
                }
            }
            ttl_like(field("ttl"), n.ttl)?;
            ttl_like(field("stale_for"), n.stale_for)?;
            ttl_like(field("fail_safe_for"), n.fail_safe_for)?;
            ttl_like(field("negative_ttl"), n.negative_ttl)?;
            timeout(field("soft_timeout"), n.soft_timeout, false)?;
            timeout(field("hard_timeout"), n.hard_timeout, false)?;
            if let Some(b) = n.l1_budget {
                range(&field("l1_budget"), b.0, 1, MAX_MEMORY, "bytes")?;
            }
            if let Some(d) = &n.description {
                if d.len() > 1024 {
                    return Err(at(field("description"), "at most 1024 bytes".into()));
                }
            }
            for t in &n.tags {
                if let Err(e) = crate::http_caching::TagTemplate::parse(t.get_ref()) {
                    return Err((Some(t.span()), field("tags"), e));
                }
            }
            if let Some(http) = &n.http {
                if let Err((f, problem)) = http.compiled() {
                    let spanned = match f {
                        "cache_control" => http.cache_control.as_ref(),
                        "cdn_cache_control" => http.cdn_cache_control.as_ref(),
                        _ => None,
                    };
                    return Err((
                        spanned.map(|v| v.span()),
                        field(&format!("http.{f}")),
                        problem,
                    ));
                }
            }
            if let Err(e) = self.policy_checked(n) {
                let key = match e.field {
                    "ttl" | "jitter" | "stale_for" | "fail_safe_for" | "negative_ttl" => e.field,
                    f if f.starts_with("early_refresh") => "early_refresh",
                    "load_timeout.hard" => "hard_timeout",
                    "load_timeout.soft" => "soft_timeout",
                    f if f.starts_with("l1") => "l1_budget",
                    _ => "",
                };
                let path = if key.is_empty() || span_of(&self.source_text, &field(key)).is_none() {
                    format!("namespaces.{name}")
                } else {
                    field(key)
                };
                return Err(at(path, e.to_string()));
            }
        }

        // [write_behind]
        if let Some(fsync) = &self.write_behind.fsync {
            if parse_fsync(fsync.get_ref()).is_none() {
                return Err((
                    Some(fsync.span()),
                    "write_behind.fsync".into(),
                    format!(
                        "{:?}: write \"always\" or a duration from 1ms to 1h such as \"10ms\"",
                        fsync.get_ref()
                    ),
                ));
            }
        }
        if let Some(m) = self.write_behind.max_pending {
            range(
                "write_behind.max_pending",
                m as u64,
                1,
                MAX_PENDING as u64,
                "writes",
            )?;
        }
        timeout("write_behind.linger".into(), self.write_behind.linger, true)?;

        // [cdc]
        if let Some(cdc) = &self.cdc {
            match self.sources.get(cdc.source.get_ref()) {
                Some(s) if s.get_ref().postgres.is_some() => {}
                Some(_) => {
                    return Err((
                        Some(cdc.source.span()),
                        "cdc.source".into(),
                        "change data capture needs a PostgreSQL source (SQLite uses the outbox)"
                            .into(),
                    ))
                }
                None => {
                    return Err((
                        Some(cdc.source.span()),
                        "cdc.source".into(),
                        format!(
                            "no source {:?}; defined: [{}]",
                            cdc.source.get_ref(),
                            names()
                        ),
                    ))
                }
            }
            for (f, v) in [
                ("cdc.slot", &cdc.slot),
                ("cdc.publication", &cdc.publication),
            ] {
                if !valid_pg_name(v) {
                    return Err(at(
                        f.into(),
                        format!("{v:?}: use 1–63 lowercase letters, digits and `_`, not starting with a digit"),
                    ));
                }
            }
            if cdc.rules.is_empty() {
                return Err(at(
                    "cdc".into(),
                    "no rules: add a [[cdc.rules]] with `table` and `namespace` per table to follow".into(),
                ));
            }
            if let Err(e) = strata_cdc::Mapping::new(&cdc.rules) {
                return Err(at(format!("cdc.rules[{}]", e.rule), e.problem));
            }
            for (i, r) in cdc.rules.iter().enumerate() {
                if !self.namespaces.contains_key(&r.namespace) {
                    return Err(at(
                        format!("cdc.rules[{i}].namespace"),
                        format!(
                            "rule for {} names namespace {:?}, which is not configured; configured: [{}]",
                            r.table,
                            r.namespace,
                            self.namespaces.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
        }
        // [limits]
        for (i, p) in sv.trusted_proxies.iter().enumerate() {
            crate::limits::Network::parse(p)
                .map_err(|e| at(format!("server.trusted_proxies[{i}]"), e))?;
        }
        for (name, l) in &self.limits {
            let f = |k: &str| format!("limits.{name}.{k}");
            let span = Some(l.span());
            if !valid_name(name) {
                return Err((
                    span,
                    format!("limits.{name}"),
                    "limit names use letters, digits, `_` and `-` (at most 64), and do not start with `_`"
                        .into(),
                ));
            }
            let l = l.get_ref();
            range(&f("limit"), l.limit, 1, 1_000_000_000, "requests")?;
            if l.per.0 < Duration::from_millis(1) || l.per.0 > Duration::from_secs(86_400) {
                return Err(at(f("per"), "must be between 1ms and 1 day".into()));
            }
            if let Some(b) = l.burst {
                range(&f("burst"), b, 1, 1_000_000_000, "requests")?;
            }
            if let Some(n) = l.nodes {
                range(&f("nodes"), n, 1, 10_000, "nodes")?;
            }
            if let Some(k) = &l.key {
                crate::limits::KeyBy::parse(k).map_err(|e| at(f("key"), e))?;
            }
            if l.algorithm == strata::limit::Algorithm::SlidingLog && l.limit > 100_000 {
                return Err(at(
                    f("limit"),
                    "a sliding log keeps one entry per request: at most 100000 (use sliding_window above that)"
                        .into(),
                ));
            }
        }
        // [[cdn]]
        let mut names: Vec<&str> = Vec::new();
        for (i, h) in self.cdn.iter().enumerate() {
            let f = |k: &str| format!("cdn[{i}].{k}");
            if !valid_name(&h.name) || names.contains(&h.name.as_str()) {
                return Err(at(
                    f("name"),
                    format!("{:?}: hook names are unique and use letters, digits, `_` and `-` (at most 64)", h.name),
                ));
            }
            names.push(&h.name);
            let ok = h.url.parse::<axum::http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            });
            if !ok {
                return Err(at(
                    f("url"),
                    format!("{:?}: write https://host[:port] (or http://)", h.url),
                ));
            }
            if let Some(file) = &h.ca_file {
                strata_http::client::load_roots(file).map_err(|e| at(f("ca_file"), e))?;
            }
            let needs_service = h.kind != crate::cdn::HookKind::Webhook;
            if needs_service && h.service.as_deref().is_none_or(str::is_empty) {
                return Err(at(
                    f("kind"),
                    format!(
                        "a {:?} hook needs `service` (Fastly's service id, Cloudflare's zone id)",
                        h.kind
                    )
                    .to_lowercase(),
                ));
            }
            if let Some(b) = h.max_batch {
                range(&f("max_batch"), b as u64, 1, 1000, "values")?;
            }
            if let Some(a) = h.max_attempts {
                range(&f("max_attempts"), u64::from(a), 1, 100, "attempts")?;
            }
            timeout(f("timeout"), h.timeout, false)?;
            for r in &h.routes {
                let known = self.proxy.as_ref().is_some_and(|p| {
                    p.routes
                        .iter()
                        .any(|x| x.route().is_ok_and(|x| x.name() == *r))
                });
                if !known {
                    return Err(at(
                        f("routes"),
                        format!("{r:?} is not the name of a [[proxy.routes]]"),
                    ));
                }
            }
        }

        // [proxy]
        if let Some(p) = &self.proxy {
            range("proxy.max_body", p.max_body.0, 1, MAX_BODY, "bytes")?;
            timeout("proxy.origin_timeout".into(), Some(p.origin_timeout), false)?;
            if p.key_scheme != "http" && p.key_scheme != "https" {
                return Err(at(
                    "proxy.key_scheme".into(),
                    format!("{:?}: write \"http\" or \"https\"", p.key_scheme),
                ));
            }
            if p.routes.is_empty() {
                return Err(at(
                    "proxy.routes".into(),
                    "no routes: add a [[proxy.routes]] with `origin = \"http://host:port\"` (and `host` and/or \
                     `path_prefix` to pick its requests)"
                        .into(),
                ));
            }
            let mut seen: Vec<(Option<String>, String, usize)> = Vec::new();
            for (i, r) in p.routes.iter().enumerate() {
                let f = |k: &str| format!("proxy.routes[{i}].{k}");
                if let Err(e) = r.route() {
                    return Err(at(f("origin"), e));
                }
                check_protection(&f, r.protection_fields())?;
                if let Some(l) = &r.rate_limit {
                    if !self.limits.contains_key(l.get_ref()) {
                        let names: Vec<&str> = self.limits.keys().map(String::as_str).collect();
                        return Err((
                            Some(l.span()),
                            f("rate_limit"),
                            format!(
                                "no limit {:?} under [limits]; configured: [{}]",
                                l.get_ref(),
                                names.join(", ")
                            ),
                        ));
                    }
                }
                if let Some(h) = &r.host {
                    let ok = !h.is_empty()
                        && h.len() <= 253
                        && h.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
                    if !ok {
                        return Err(at(
                            f("host"),
                            format!("{h:?}: write a host name without scheme or port, e.g. \"www.example.com\""),
                        ));
                    }
                }
                if let Some(pp) = &r.path_prefix {
                    if !pp.starts_with('/')
                        || pp.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return Err(at(
                            f("path_prefix"),
                            format!("{pp:?}: a path prefix starts with `/` and has no spaces, e.g. \"/api/\""),
                        ));
                    }
                }
                if let Some(n) = &r.name {
                    if !valid_name(n) {
                        return Err(at(
                            f("name"),
                            format!(
                                "{n:?}: route names use letters, digits, `_` and `-` (at most 64)"
                            ),
                        ));
                    }
                }
                if let Some(b) = r.max_object_bytes {
                    range(&f("max_object_bytes"), b.0, 1, MAX_BODY, "bytes")?;
                }
                if let Some(n) = r.heuristic_per_mille {
                    range(
                        &f("heuristic_per_mille"),
                        u64::from(n),
                        0,
                        1000,
                        "per mille",
                    )?;
                }
                ttl_like(f("stale_while_revalidate"), r.stale_while_revalidate)?;
                ttl_like(f("stale_if_error"), r.stale_if_error)?;
                ttl_like(f("heuristic_cap"), r.heuristic_cap)?;
                ttl_like(f("max_retention"), r.max_retention)?;
                if r.max_retention.is_some_and(|d| d.0.is_zero()) {
                    return Err(at(f("max_retention"), "must be longer than zero".into()));
                }
                timeout(f("hit_for_pass"), r.hit_for_pass, true)?;
                let host = r.host.as_ref().map(|h| h.to_ascii_lowercase());
                let prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
                if let Some((_, _, j)) = seen.iter().find(|(h, pp, _)| *h == host && *pp == prefix)
                {
                    let key = if r.path_prefix.is_some() {
                        "path_prefix"
                    } else if r.host.is_some() {
                        "host"
                    } else {
                        "origin"
                    };
                    return Err(at(
                        f(key),
                        format!(
                            "routes {j} and {i} both serve host {} under {prefix:?}: give each host and path \
                             prefix one route",
                            host.as_deref().unwrap_or("*")
                        ),
                    ));
                }
                seen.push((host, prefix, i));
            }
        }
        Ok(())
    }

    /// The engine policy of a namespace.
    pub fn policy(&self, name: &str, n: &NamespaceConfig) -> Result<strata::Policy, String> {
        let _ = name;
        self.policy_checked(n).map_err(|e| e.to_string())
    }

    fn policy_checked(&self, n: &NamespaceConfig) -> Result<strata::Policy, strata::PolicyError> {
        let mut b = strata::Policy::builder()
            .with_ttl(n.ttl.map_or(Duration::from_secs(60), |d| d.0))
            .with_write_mode(match n.write.get_ref() {
                WriteModeConfig::Aside => strata::WriteMode::Aside,
                WriteModeConfig::Through => strata::WriteMode::Through,
                WriteModeConfig::Behind => strata::WriteMode::Behind,
                WriteModeConfig::Around => strata::WriteMode::Around,
            });
        if let Some(j) = n.jitter {
            b = b.with_jitter(j);
        }
        if let Some(d) = n.stale_for {
            b = b.with_stale_for(d.0);
        }
        if let Some(d) = n.fail_safe_for {
            b = b.with_fail_safe_for(d.0);
        }
        if let Some(d) = n.negative_ttl {
            b = b.with_negative_ttl(d.0);
        }
        if let Some(er) = &n.early_refresh {
            if let Some(e) = parse_early_refresh(er.get_ref()) {
                b = b.with_early_refresh(e);
            }
        }
        let l1_on = n.l1.unwrap_or(true);
        b = b.with_l1(l1_on);
        let share = self.l1.budget.0 / (self.namespaces.len().max(1) as u64);
        b = b.with_l1_budget_bytes(n.l1_budget.map_or(share, |x| x.0).max(64 << 10));
        b = b.with_l2(self.redis.is_some() && n.l2.unwrap_or(true));
        b = b.with_distributed_coalescing(
            self.redis.is_some() && n.distributed_coalescing.unwrap_or(true),
        );
        if let Some(d) = n.soft_timeout {
            b = b.with_soft_timeout(d.0);
        }
        if let Some(d) = n.hard_timeout {
            b = b.with_hard_timeout(d.0);
        }
        b.build()
    }

    /// The bearer token: `server.token`, or the variable `server.token_env` names (an empty one counts as
    /// unset; [`Config::check_start`] refuses both).
    pub fn token(&self) -> Option<String> {
        self.server
            .token
            .clone()
            .or_else(|| {
                self.server
                    .token_env
                    .as_ref()
                    .and_then(|v| std::env::var(v).ok())
            })
            .filter(|t| !t.is_empty())
    }

    /// The checks `serve` makes when it starts, after command-line overrides, that the file alone cannot
    /// decide: the variable `token_env` names is set and not empty, a token given on the command line is not
    /// empty, and a non-loopback `listen` has a token or `allow_unauthenticated`. Errors are located at the key
    /// they are about when it is in the file.
    pub fn check_start(&self) -> Result<(), ConfigError> {
        let sv = &self.server;
        match (&sv.token, &sv.token_env) {
            (Some(t), _) if t.is_empty() => {
                return Err(self.error_at(
                    "server.token",
                    "the token is empty, which would switch access control off; give a secret".into(),
                ))
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => {}
                Ok(_) => {
                    return Err(self.error_at(
                        "server.token_env",
                        format!("${var} is empty: set it to the token (`export {var}=…`); an empty token would switch access control off"),
                    ))
                }
                Err(_) => {
                    return Err(self.error_at(
                        "server.token_env",
                        format!("${var} is not set: set it to the token (`export {var}=…`) or remove `token_env` (a config without a token listens only on loopback)"),
                    ))
                }
            },
            _ => {}
        }
        if let Some(p) =
            unauthenticated_problem(sv.listen, self.token().is_some(), sv.allow_unauthenticated)
        {
            return Err(self.error_at("server.listen", p));
        }
        Ok(())
    }

    /// The embedded default: the demo catalog in SQLite, L1 only (see [`crate::demo`]).
    pub fn embedded(data_dir: &Path) -> Self {
        Self::embedded_with(data_dir, None, None)
    }

    /// The embedded default, optionally with Redis (L2 and bus: several nodes) and the catalog in PostgreSQL (with
    /// a CDC consumer on slot and publication [`crate::demo::DEMO_SLOT`]).
    pub fn embedded_with(data_dir: &Path, redis: Option<&str>, postgres: Option<&str>) -> Self {
        let src = crate::demo::EMBEDDED_CONFIG;
        let mut c = Self::parse(src, "<embedded>").expect("the embedded config is valid");
        c.server.data_dir = data_dir.to_path_buf();
        if let Some(url) = redis {
            c.redis = Some(RedisConfig {
                url: url.to_owned(),
                prefix: default_prefix(),
                timeout: default_redis_timeout(),
            });
        }
        if let Some(url) = postgres {
            for s in c.sources.values_mut() {
                let s = s.get_mut();
                s.sqlite = None;
                s.postgres = Some(url.to_owned());
            }
            // Changes made outside Strata (psql) reach every node: CDC on the tables other writers change.
            // Unqualified tables are resolved in the connection's current schema when the server starts.
            c.cdc = Some(CdcConfig {
                source: Spanned::new(0..0, "catalog".into()),
                slot: crate::demo::DEMO_SLOT.into(),
                publication: crate::demo::DEMO_SLOT.into(),
                rules: vec![
                    strata_cdc::Rule::new("price", "price").version_column("version"),
                    strata_cdc::Rule::new("inventory", "inventory").version_column("version"),
                    strata_cdc::Rule::new("product", "product").tag("category:{category}"),
                ],
            });
        }
        c
    }

    /// Names the CDC slot (and the publication: the same name) instead of the configured ones.
    pub fn set_cdc_slot(&mut self, slot: &str) {
        if let Some(cdc) = &mut self.cdc {
            cdc.slot = slot.to_owned();
            cdc.publication = slot.to_owned();
        }
    }
}

/// Namespace names double as URL path segments and metric labels.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A PostgreSQL replication slot or publication name.
pub fn valid_pg_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// `"off" | "ratio:R" | "xfetch:BETA"`.
pub fn parse_early_refresh(s: &str) -> Option<strata::EarlyRefresh> {
    let s = s.trim();
    if s == "off" {
        return Some(strata::EarlyRefresh::Off);
    }
    let (kind, v) = s.split_once(':')?;
    let v: f64 = v.trim().parse().ok()?;
    match kind.trim() {
        "ratio" if v > 0.0 && v < 1.0 => Some(strata::EarlyRefresh::Ratio(v)),
        "xfetch" if v > 0.0 && v.is_finite() => Some(strata::EarlyRefresh::XFetch { beta: v }),
        _ => None,
    }
}

/// `"always"` or a duration.
pub fn parse_fsync(s: &str) -> Option<strata::journal::Fsync> {
    if s.trim() == "always" {
        return Some(strata::journal::Fsync::Always);
    }
    let d = humantime::parse_duration(s.trim()).ok()?;
    (d.as_millis() > 0 && d <= MAX_TIMEOUT)
        .then_some(strata::journal::Fsync::EveryMs(d.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> ConfigError {
        Config::parse(src, "strata.toml").unwrap_err()
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("256MiB"), Some(256 << 20));
        assert_eq!(parse_bytes("10"), Some(10));
        assert_eq!(parse_bytes("1GB"), Some(1 << 30));
        assert_eq!(parse_bytes("lots"), None);
        assert!(parse_early_refresh("ratio:0.8").is_some());
        assert!(parse_early_refresh("ratio:1.5").is_none());
        assert!(parse_early_refresh("xfetch:1").is_some());
        assert!(parse_fsync("always").is_some());
        assert!(parse_fsync("10ms").is_some());
        assert!(parse_fsync("sometimes").is_none());
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = err(
            "[server]\nlisten = \"127.0.0.1:8700\"\n\n[namespaces.price]\nttl = \"ten seconds\"\n",
        );
        assert_eq!((e.file.as_str(), e.line), ("strata.toml", 5), "{e}");
        assert_eq!(e.field, "namespaces.price.ttl", "{e}");
        assert!(e.message.contains("not a duration"), "{e}");

        let e = err("[namespaces.price]\nttll = \"10s\"\n");
        assert_eq!(
            (e.line, e.field.as_str()),
            (2, "namespaces.price.ttll"),
            "{e}"
        );
        assert!(e.message.contains("unknown field"), "{e}");

        let e = err("[sources.db]\nsqlite = \"a.db\"\n\n[namespaces.price]\nsource = \"pg\"\n");
        assert_eq!(
            (e.line, e.field.as_str()),
            (5, "namespaces.price.source"),
            "{e}"
        );
        assert!(e.message.contains("defined: [db]"), "{e}");

        let e = err("[namespaces.price]\nwrite = \"sideways\"\n");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("aside"), "{e}");

        let e = err("[namespaces.price]\nearly_refresh = \"soon\"\n");
        assert_eq!(
            (e.line, e.field.as_str()),
            (2, "namespaces.price.early_refresh")
        );

        let e = err("[sources.db]\nsqlite = \"a.db\"\npostgres = \"postgres://x\"\n");
        assert_eq!(e.field, "sources.db");
        assert!(e.message.contains("exactly one"));

        let e = err("[namespaces.price]\nwrite = \"through\"\n");
        assert!(e.message.contains("need a `source`"), "{e}");

        // Proxy routes' limits and protection.
        let e = err("[proxy]\n\n[[proxy.routes]]\norigin = \"http://a\"\nrate_limit = \"nope\"\n");
        assert_eq!(
            (e.field.as_str(), e.line),
            ("proxy.routes[0].rate_limit", 5),
            "{e}"
        );
        let e = err("[proxy]\n\n[[proxy.routes]]\norigin = \"http://a\"\nmax_loads = 0\n");
        assert_eq!(e.field, "proxy.routes[0].max_loads", "{e}");

        let e = err("[namespaces.x]\nadaptive_latency = \"0s\"\n");
        assert_eq!(e.field, "namespaces.x.adaptive_latency", "{e}");
        Config::parse(
            "[namespaces.x]\nadaptive_latency = \"200ms\"\nmax_loads = 64\n",
            "strata.toml",
        )
        .unwrap();

        // Auth namespaces.
        let e = err("[namespaces.t.introspection]\nurl = \"idp\"\n");
        assert_eq!(e.field, "namespaces.t.introspection.url", "{e}");
        let e = err("[namespaces.t.introspection]\nurl = \"http://idp/i\"\nmethod = \"PUT\"\n");
        assert_eq!(e.field, "namespaces.t.introspection.method", "{e}");
        let e = err("[sources.db]\nsqlite = \"a.db\"\n\n[namespaces.t]\nsource = \"db\"\n\n[namespaces.t.introspection]\nurl = \"http://idp/i\"\n");
        assert_eq!(e.field, "namespaces.t.source", "{e}");
        assert!(e.message.contains("auth namespace"), "{e}");
        let e = err("[namespaces.t]\nfail_safe_for = \"1h\"\n\n[namespaces.t.introspection]\nurl = \"http://idp/i\"\n");
        assert_eq!(e.field, "namespaces.t.fail_safe_for", "{e}");

        // HTTP sources.
        let e = err("[sources.api]\nhttp = \"ftp://x\"\n");
        assert_eq!(e.field, "sources.api.http", "{e}");
        let e = err("[sources.db]\nsqlite = \"a.db\"\ntimeout = \"2s\"\n");
        assert_eq!(e.field, "sources.db.timeout", "{e}");
        assert!(e.message.contains("only an `http` source"), "{e}");
        let e = err("[sources.db]\nsqlite = \"a.db\"\nretries = 11\n");
        assert_eq!(e.field, "sources.db.retries", "{e}");
        let e = err("[sources.api]\nhttp = \"http://x\"\nretry_ratio = 2.0\n");
        assert_eq!(e.field, "sources.api.retry_ratio", "{e}");
        let e = err("[sources.api]\nhttp = \"http://x\"\n\n[namespaces.u]\nsource = \"api\"\ntable = \"u\"\n");
        assert_eq!(e.field, "namespaces.u.table", "{e}");
        let e = err("[sources.api]\nhttp = \"http://x\"\n\n[namespaces.u]\nsource = \"api\"\nwrite = \"through\"\n");
        assert!(e.message.contains("read-only"), "{e}");
        let e = err("[sources.api]\nhttp = \"http://x\"\n\n[namespaces.u]\nsource = \"api\"\npath = \"/u\"\n");
        assert_eq!(e.field, "namespaces.u.path", "{e}");
        let e = err(
            "[sources.db]\nsqlite = \"a.db\"\n\n[namespaces.u]\nsource = \"db\"\npath = \"u\"\n",
        );
        assert!(
            e.message.contains("only a namespace on an `http` source"),
            "{e}"
        );
        Config::parse(
            "[sources.api]\nhttp = \"https://api.example.com/v2\"\nretries = 1\n\n[namespaces.u]\nsource = \"api\"\npath = \"users\"\n",
            "strata.toml",
        )
        .unwrap();

        let e = err("[namespaces.price]\njitter = 3.0\n");
        assert_eq!(
            (e.line, e.field.as_str()),
            (2, "namespaces.price.jitter"),
            "{e}"
        );
        assert!(e.message.contains("jitter"), "{e}");

        let e = err("[server]\nlisten = \"nowhere\"\n");
        assert_eq!((e.line, e.field.as_str()), (2, "server.listen"), "{e}");
        let e = err("not toml at all");
        assert_eq!(e.line, 1);
        assert!(e.to_string().starts_with("strata.toml:1:"), "{e}");
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let src = include_str!("../../../examples/strata.toml");
        let c = Config::parse(src, "examples/strata.toml").unwrap();
        let modes: Vec<(&str, WriteModeConfig)> = c
            .namespaces
            .iter()
            .map(|(n, ns)| (n.as_str(), *ns.get_ref().write.get_ref()))
            .collect();
        for (ns, mode) in [
            ("product", WriteModeConfig::Around),
            ("session", WriteModeConfig::Through),
            ("counter", WriteModeConfig::Behind),
            ("price", WriteModeConfig::Through),
            ("inventory", WriteModeConfig::Through),
            ("permission", WriteModeConfig::Through),
            ("flag", WriteModeConfig::Around),
        ] {
            assert!(modes.contains(&(ns, mode)), "{ns}: {modes:?}");
        }
        assert!(c.cdc.is_some());
    }

    #[test]
    fn the_shipped_edge_example_is_valid_and_maps_to_routes_and_policies() {
        let src = include_str!("../../../examples/edge.toml");
        let c = Config::parse(src, "examples/edge.toml").unwrap();
        let p = c.proxy.as_ref().unwrap();
        assert_eq!(p.listen.to_string(), "127.0.0.1:8780");
        let routes = p.routes().unwrap();
        let names: Vec<String> = routes.iter().map(|r| r.name()).collect();
        assert_eq!(names, ["assets", "api", "site"]);
        let assets = routes.find("static.example.com", "/api/x").unwrap();
        assert_eq!(assets.name(), "assets");
        assert_eq!(assets.max_object_bytes(), Some(4 << 20));
        assert_eq!(
            assets.policy().stale_while_revalidate,
            Some(Duration::from_secs(60))
        );
        assert_eq!(routes.find("other", "/api/x").unwrap().name(), "api");
        assert_eq!(routes.find("other", "/x").unwrap().name(), "site");
        assert_eq!(p.retention(), Duration::from_secs(24 * 3600));
        let one = ProxySection::one_route(ProxySection::default_listen(), "http://127.0.0.1:8000");
        assert_eq!(one.routes().unwrap().iter().next().unwrap().name(), "*/");
    }

    #[test]
    fn errors_in_arrays_of_tables_name_the_element() {
        let e = err(
            "[proxy]\n\n[[proxy.routes]]\norigin = \"http://a\"\n\n[[proxy.routes]]\norign = \"http://b\"\n",
        );
        assert_eq!(
            (e.line, e.field.as_str()),
            (7, "proxy.routes[1].orign"),
            "{e}"
        );
    }

    #[test]
    fn the_embedded_config_is_valid() {
        let c = Config::embedded(Path::new("/tmp/x"));
        assert!(c.redis.is_none());
        assert_eq!(c.namespaces.len(), 6);
        assert!(c.cdc.is_none());
        let mut c = Config::embedded_with(
            Path::new("/tmp/x"),
            Some("redis://127.0.0.1:6379"),
            Some("postgres://postgres@127.0.0.1/test"),
        );
        c.set_cdc_slot("mine");
        let cdc = c.cdc.as_ref().unwrap();
        assert_eq!(
            (cdc.slot.as_str(), cdc.publication.as_str()),
            ("mine", "mine")
        );
        assert!(strata_cdc::Mapping::new(&cdc.rules).is_ok());
    }
}
