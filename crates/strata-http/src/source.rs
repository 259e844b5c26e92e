//! A REST endpoint as a source of truth: [`HttpSource`] reads key `k` with `GET {base}/{k}` (the key
//! percent-encoded as one path segment) and answers:
//!
//! | the endpoint says | the engine gets |
//! |---|---|
//! | `200` with a JSON body | the value; its version from an `ETag` that is a quoted number (`"17"`) |
//! | `404` or `410` | absent (cached for the negative TTL) |
//! | `408`, `429`, `500`, `502`, `503`, `504`, no connection, no answer within `timeout` | retried, then an error |
//! | any other status, a body that is not JSON or is larger than `max_body` | an error, not retried |
//!
//! # Retries
//! A load is idempotent (`GET`), so a passing failure is retried up to `retries` times with full-jitter
//! exponential backoff ([`strata::retry_budget::backoff`]; a `429`/`503`'s `Retry-After` is the least wait), but
//! only while the source's [`RetryBudget`] allows: retries are at most `retry_ratio` of loads (plus a small
//! reserve), so when the endpoint is down the callers' retries cannot multiply its load. Each attempt has its own
//! `timeout`; the namespace's `hard_timeout` bounds the whole load, and its bulkhead and breaker
//! ([`strata::protect`]) stand in front of all of this.
//!
//! # TTL from the answer
//! With `ttl_from_cache_control`, the answer's `Cache-Control` (`s-maxage`, else `max-age`, less its `Age`;
//! `no-store` / `no-cache` mean 0) becomes the entry's own TTL ([`strata_core::Fetched::ttl`]): it can shorten
//! the namespace's TTL, never lengthen it.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::de::DeserializeOwned;
use strata::retry_budget::{backoff, RetryBudget};
use strata_core::{Fetched, SharedError, Source};

use crate::client::{causes, HttpsClient};
use crate::directives::Directives;

/// How an [`HttpSource`] calls its endpoint.
#[derive(Debug, Clone)]
pub struct HttpSourceOptions {
    /// How long one attempt may take (connect, head and body). Default: 5 s.
    pub timeout: Duration,
    /// Retries after the first attempt. Default: 2.
    pub retries: u32,
    /// Share of loads that may be retried (the retry budget). Default: 0.1.
    pub retry_ratio: f64,
    /// The first retry's backoff ceiling; it doubles per retry. Default: 50 ms.
    pub backoff_base: Duration,
    /// The longest backoff. Default: 2 s.
    pub backoff_cap: Duration,
    /// Take the answer's `Cache-Control` freshness as the entry's TTL (see the module docs). Default: false.
    pub ttl_from_cache_control: bool,
    /// The largest body read. Default: 16 MiB.
    pub max_body: usize,
    /// Headers sent with every request (an API key).
    pub headers: HeaderMap,
}

impl Default for HttpSourceOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            retries: 2,
            retry_ratio: 0.1,
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(2),
            ttl_from_cache_control: false,
            max_body: 16 << 20,
            headers: HeaderMap::new(),
        }
    }
}

/// Why a load from an HTTP source failed; every message names the URL.
#[derive(Debug, thiserror::Error)]
pub enum HttpSourceError {
    /// No connection, or the connection failed.
    #[error("{url}: unreachable: {why}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause chain.
        why: String,
    },
    /// No answer within the attempt's timeout.
    #[error("{url}: no answer within {timeout:?}")]
    TimedOut {
        /// The URL.
        url: String,
        /// The attempt's timeout.
        timeout: Duration,
    },
    /// An answer that is neither a value nor "absent".
    #[error("{url}: answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// The `Retry-After` it asked for.
        retry_after: Option<Duration>,
    },
    /// A `200` whose body is not the value.
    #[error("{url}: the body is not a JSON value: {why}")]
    Body {
        /// The URL.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The key cannot be a URL.
    #[error("{base}: the key {key:?} cannot be sent: {why}")]
    Key {
        /// The endpoint.
        base: String,
        /// The key.
        key: String,
        /// Why.
        why: String,
    },
}

impl HttpSourceError {
    /// Whether another attempt may succeed, and the least wait before it.
    fn retry(&self) -> Option<Duration> {
        match self {
            Self::Unreachable { .. } | Self::TimedOut { .. } => Some(Duration::ZERO),
            Self::Status {
                status,
                retry_after,
                ..
            } => matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
                .then(|| retry_after.unwrap_or(Duration::ZERO)),
            Self::Body { .. } | Self::Key { .. } => None,
        }
    }
}

/// Requests one batch (`load_many`) has in flight at once.
const BATCH_CONCURRENCY: usize = 8;

/// An answer the endpoint gave (a status that is not retried), with its body read.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Calls an endpoint with per-attempt timeouts and budgeted, jittered retries: what [`HttpSource`] and
/// [`crate::introspect::Introspector`] share.
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) client: HttpsClient,
    pub(crate) options: HttpSourceOptions,
    pub(crate) budget: RetryBudget,
}

impl Caller {
    pub(crate) fn new(name: &str, client: HttpsClient, options: HttpSourceOptions) -> Self {
        Self {
            name: name.to_string(),
            client,
            budget: RetryBudget::new(options.retry_ratio, 3),
            options,
        }
    }

    /// One attempt: the request `make` builds for `url`, its answer read whole. A retried status is an error.
    async fn attempt(
        &self,
        url: &str,
        make: &(dyn Fn() -> Result<http::Request<Full<Bytes>>, http::Error> + Sync),
    ) -> Result<Answer, HttpSourceError> {
        let mut req = make().map_err(|e| HttpSourceError::Key {
            base: url.to_string(),
            key: String::new(),
            why: e.to_string(),
        })?;
        for (k, v) in &self.options.headers {
            req.headers_mut().insert(k, v.clone());
        }
        req.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let timeout = self.options.timeout;
        let timed_out = || HttpSourceError::TimedOut {
            url: url.to_string(),
            timeout,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let resp = tokio::time::timeout_at(deadline, self.client.request(req))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| HttpSourceError::Unreachable {
                url: url.to_string(),
                why: causes(&e),
            })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504) {
            return Err(HttpSourceError::Status {
                url: url.to_string(),
                status,
                retry_after: headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs),
            });
        }
        let body = tokio::time::timeout_at(
            deadline,
            Limited::new(resp.into_body(), self.options.max_body).collect(),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| HttpSourceError::Body {
            url: url.to_string(),
            why: e.to_string(),
        })?
        .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// Attempts until an answer, a failure that is not worth retrying, or the retries or the budget run out.
    pub(crate) async fn call(
        &self,
        url: &str,
        make: &(dyn Fn() -> Result<http::Request<Full<Bytes>>, http::Error> + Sync),
    ) -> Result<Answer, HttpSourceError> {
        self.budget.deposit();
        let mut retry = 0;
        loop {
            let err = match self.attempt(url, make).await {
                Ok(a) => return Ok(a),
                Err(e) => e,
            };
            let Some(at_least) = err.retry() else {
                return Err(err);
            };
            // A `Retry-After` longer than the backoff cap is answered at once: waiting would hold the load (and
            // its bulkhead slot) until the hard timeout.
            if at_least > self.options.backoff_cap {
                return Err(err);
            }
            if retry >= self.options.retries || !self.budget.try_retry() {
                if retry < self.options.retries {
                    metrics::counter!("strata_source_retries_refused_total", "source" => self.name.clone())
                        .increment(1);
                }
                return Err(err);
            }
            retry += 1;
            metrics::counter!("strata_source_retries_total", "source" => self.name.clone())
                .increment(1);
            tracing::debug!(source = %self.name, retry, error = %err, "retrying a source call");
            let wait =
                backoff(retry, self.options.backoff_base, self.options.backoff_cap).max(at_least);
            tokio::time::sleep(wait).await;
        }
    }

    /// The answer's own freshness, when asked for (see the module docs).
    pub(crate) fn ttl_of(&self, headers: &HeaderMap) -> Option<Duration> {
        if !self.options.ttl_from_cache_control {
            return None;
        }
        let d = Directives::from_cache_control(headers);
        if d.no_store || d.no_cache.is_some() {
            return Some(Duration::ZERO);
        }
        let age = headers
            .get(http::header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        d.s_maxage
            .or(d.max_age)
            .map(|s| Duration::from_secs(s.saturating_sub(age)))
    }
}

/// A REST endpoint read as `GET {base}/{key}` (see the module docs).
pub struct HttpSource<V> {
    base: String,
    caller: Caller,
    _value: PhantomData<fn() -> V>,
}

impl<V> HttpSource<V> {
    /// A source named `name` (metrics) reading from `base` (`http[s]://host[:port][/path]`).
    pub fn new(name: &str, base: &str, client: HttpsClient, options: HttpSourceOptions) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            caller: Caller::new(name, client, options),
            _value: PhantomData,
        }
    }

    /// Its retry budget's counts: `(loads, retries, retries refused)`.
    pub fn retry_counts(&self) -> (u64, u64, u64) {
        self.caller.budget.counts()
    }

    /// The URL of `key`.
    pub fn url_of(&self, key: &str) -> String {
        let mut url = self.base.clone();
        url.push('/');
        percent_encode_into(&mut url, key);
        url
    }
}

/// Appends `s` percent-encoded as one URL component (everything but RFC 3986's unreserved characters).
pub(crate) fn percent_encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

impl<V: DeserializeOwned> HttpSource<V> {
    async fn load_one(&self, key: &str) -> Result<Fetched<V>, HttpSourceError> {
        let url = self.url_of(key);
        let answer = self
            .caller
            .call(&url, &|| {
                http::Request::get(url.as_str()).body(Full::new(Bytes::new()))
            })
            .await?;
        let mut fetched = match answer.status.as_u16() {
            200 => {
                let value: V =
                    serde_json::from_slice(&answer.body).map_err(|e| HttpSourceError::Body {
                        url: url.clone(),
                        why: e.to_string(),
                    })?;
                let mut f = Fetched::value(value);
                if let Some(v) = answer
                    .headers
                    .get(http::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim_start_matches("W/").trim_matches('"').parse().ok())
                {
                    f = f.with_version(v);
                }
                f
            }
            404 | 410 => Fetched::absent(),
            _ => {
                return Err(HttpSourceError::Status {
                    url,
                    status: answer.status,
                    retry_after: None,
                })
            }
        };
        fetched.ttl = self.caller.ttl_of(&answer.headers);
        Ok(fetched)
    }
}

impl<V: DeserializeOwned + Send + Sync + 'static> Source<V> for HttpSource<V> {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched<V>, SharedError>> {
        Box::pin(async move {
            self.load_one(key)
                .await
                .map_err(|e| Arc::new(e) as SharedError)
        })
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, Fetched<V>>, SharedError>> {
        Box::pin(async move {
            // A few at a time: one batch holds one bulkhead slot, so it must not become a thousand requests.
            let mut answers = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(BATCH_CONCURRENCY) {
                let loads = chunk
                    .iter()
                    .map(|k| async move { (k, self.load_one(k).await) });
                answers.extend(futures::future::join_all(loads).await);
            }
            let mut out = HashMap::with_capacity(keys.len());
            for (k, r) in answers {
                let f = r.map_err(|e| Arc::new(e) as SharedError)?;
                if f.value.is_some() {
                    out.insert(k.clone(), f);
                }
            }
            Ok(out)
        })
    }
}
