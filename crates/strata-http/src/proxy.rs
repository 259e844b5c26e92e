//! The caching reverse proxy: a hyper 1.x service over a [`Routes`] table (host and path prefix → origin) that
//! stores responses in a [`Namespace<StoredResponse>`] and applies this crate's rules on every request.
//!
//! # The request path
//! 1. Framing: on the wire ([`crate::wire::FramingGuard`]) a head with both `Transfer-Encoding` and
//!    `Content-Length` is refused with 400 before hyper sees it; then
//!    [`crate::headers::check_request_framing`] refuses conflicting `Content-Length` values, a
//!    `Transfer-Encoding` not ending in `chunked` and header sections over [`ProxyConfig::max_header_bytes`]
//!    with 400. Nothing refused is forwarded.
//! 2. The route, then the primary key ([`PrimaryKey`]: scheme, `Host`, path, query — nothing else).
//! 3. Unsafe methods are forwarded; a non-error answer invalidates the target and its same-origin
//!    `Location`/`Content-Location` (every variant: entries are tagged with their URI). `fwd=method`.
//! 4. `GET`/`HEAD`: the stored response for the URI (the entry under the primary key is the latest response and
//!    names the `Vary` fields; a variant that is not it lives under `primary ⏎ secondary key`) is evaluated by
//!    [`freshness::evaluate`]: fresh, allowed stale (`max-stale`) or inside `stale-while-revalidate` answer at
//!    once (the latter starting one detached background revalidation with its own deadline); otherwise the
//!    origin is asked with the stored validators, a 304 updates and freshens the stored response (§4.3.4), and an
//!    origin failure (500, 502, 503, 504 per RFC 5861 §4, a connection error, a timeout) answers stale where
//!    `stale-if-error` allows. `only-if-cached` with nothing usable is 504.
//! 5. Misses load through [`Namespace::try_get_or_load`]: concurrent misses of one key cause one origin request
//!    (the engine's single-flight; the load runs detached, so a client that goes away hands it over to the
//!    others). A response that may not be stored is given only to the request that caused it: the waiters
//!    forward their own requests — a `private` answer must never reach another client — and the URI is
//!    remembered as uncacheable for [`ProxyConfig::hit_for_miss`], so later requests skip the queue
//!    (hit-for-miss). Revalidations of one stored response are collapsed by the proxy itself (the engine entry is
//!    still there, so `get_or_load` would not load).
//! 6. Every answer carries `Cache-Status` (RFC 9211) and `Via`; every answer from the cache carries `Age`.
//!    Hop-by-hop fields never cross, nor does `Strata-Cache-Control` (it targets this tier only; `Cache-Control`
//!    and `CDN-Cache-Control` go on for the caches downstream). Requests sent to the origin on the cache path drop the fields that could
//!    make an origin build a different response without the key knowing (`X-Forwarded-Host`, `Forwarded`,
//!    `X-Original-URL`, method overrides…): headers outside the key never change a stored response.
//!
//! Purges ([`Proxy::purge`], [`crate::purge`]) raise the engine's barrier on a tag every matching stored response
//! carries; a soft-purged response is evaluated as stale from the purge on ([`freshness::evaluate_purged`]). Every
//! store the proxy makes outside the engine's own load (revalidations, background fills, variant copies) is fenced
//! by the time its request was sent ([`Namespace::insert_fetched_since`]).
//!
//! Client conditionals are answered from the stored response (304 or the full response); `HEAD` is answered
//! from a stored `GET` (a `HEAD` miss loads the `GET`).
//!
//! # Bodies
//! A fill's leader is answered as soon as the origin's head is in: the load task reads the body, queues each
//! chunk for the leader's client and keeps it for the store ([`crate::body`]); the stored response is written
//! when the last byte is in, and the collapsed waiters get it whole. `Cache-Status: stored` on a streamed answer
//! says the response is being stored — a body that then breaks off or outgrows the route's limit is not, and
//! the client whose answer broke off sees the response aborted, never presented as complete. A range request
//! that misses waits for the whole body to cut its range from it. Passes (unsafe methods, uncacheable answers,
//! hit-for-miss) stream without keeping anything, at the client's pace. Revalidations read the origin's answer
//! whole (up to [`ProxyConfig::max_body_bytes`]), because every request that waited shares it.
//!
//! # Limits of this version
//! Origins are plain HTTP/1.1; a `HEAD` does not freshen a stored `GET` (RFC 9111 §4.3.5).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use http::header::{
    HeaderMap, HeaderValue, CONTENT_LENGTH, HOST, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use strata::{Claim, Fetched, Namespace, Status, UnixMillis};
use tokio::sync::oneshot;

use crate::body::{self, BodyError, ProxyBody, Tee, PASS_BACKLOG};
use crate::conditional::{self, ClientConditional};
use crate::directives::{Directives, STRATA_CACHE_CONTROL};
use crate::freshness::{self, Decision, Evaluation};
use crate::headers::{append_via, check_request_framing, remove_hop_by_hop, set_age};
use crate::invalidation;
use crate::key::{PrimaryKey, Vary};
use crate::policy::EdgePolicy;
use crate::purge::{self, uri_tag, PurgeError, PurgePlan, PurgeTarget};
use crate::range::{self, RangeAnswer};
use crate::stats::{RouteSnapshot, RouteStats};
use crate::status::{CacheStatus, Fwd};
use crate::storable::{self, Exchange, NotStorable};
use crate::stored::{StoredResponse, CACHE_TAG, SURROGATE_KEY};
use crate::wire::FramingGuard;

/// Errors building a proxy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// An origin that is not `http://host[:port]`.
    #[error("invalid origin {0:?}: expected http://host[:port]")]
    Origin(String),
    /// The engine refused the namespace.
    #[error(transparent)]
    Engine(#[from] strata::Error),
}

/// One route: requests for `host` (any host when `None`) under `path_prefix` go to `origin`.
#[derive(Debug, Clone)]
pub struct Route {
    name: Option<String>,
    host: Option<String>,
    path_prefix: String,
    origin: http::uri::Authority,
    policy: EdgePolicy,
    max_object_bytes: Option<usize>,
    hit_for_miss: Option<Duration>,
    protection: Option<strata::protect::Protection>,
}

impl Route {
    /// A route to `origin` (`http://host[:port]`) for every host and path.
    pub fn new(origin: &str) -> Result<Self, ProxyError> {
        let uri: Uri = origin
            .parse()
            .map_err(|_| ProxyError::Origin(origin.to_string()))?;
        let ok = uri.scheme_str() == Some("http")
            && uri.path_and_query().is_none_or(|p| p.as_str() == "/");
        match (ok, uri.authority()) {
            (true, Some(a)) => Ok(Self {
                name: None,
                host: None,
                path_prefix: "/".into(),
                origin: a.clone(),
                policy: EdgePolicy::default(),
                max_object_bytes: None,
                hit_for_miss: None,
                protection: None,
            }),
            _ => Err(ProxyError::Origin(origin.to_string())),
        }
    }

    /// Only requests whose `Host` is `host` (compared without port, case-insensitively). Default: any host.
    #[must_use]
    pub fn with_host(mut self, host: &str) -> Self {
        self.host = Some(host.to_ascii_lowercase());
        self
    }

    /// Only requests whose path starts with `prefix`. Default: `/`.
    #[must_use]
    pub fn with_path_prefix(mut self, prefix: &str) -> Self {
        self.path_prefix = prefix.to_string();
        self
    }

    /// The route's edge policy. Default: [`EdgePolicy::default`].
    #[must_use]
    pub fn with_policy(mut self, policy: EdgePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The route's name in metrics and stats. Default: `host` (or `*`) followed by the path prefix.
    #[must_use]
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Responses with a larger body are answered but not stored (`detail="too-large"`). Default: no limit
    /// but [`ProxyConfig::max_body_bytes`].
    #[must_use]
    pub fn with_max_object_bytes(mut self, max: usize) -> Self {
        self.max_object_bytes = Some(max);
        self
    }

    /// How long a URI of this route whose response could not be stored skips request collapsing. Default:
    /// [`ProxyConfig::hit_for_miss`].
    #[must_use]
    pub fn with_hit_for_miss(mut self, d: Duration) -> Self {
        self.hit_for_miss = Some(d);
        self
    }

    /// A bulkhead and a breaker in front of the origin ([`strata::protect`]): at most `max_in_flight` requests
    /// wait for its response head at once; a request refused by either is answered from a stored response inside
    /// its `stale-if-error` window, else `503` with `Retry-After` (`Cache-Status` detail `overloaded`), and never
    /// reaches the origin. The slot is held until the response head arrives. Default: none.
    #[must_use]
    pub fn with_protection(mut self, p: strata::protect::Protection) -> Self {
        self.protection = Some(p);
        self
    }

    /// The route's name (see [`with_name`](Self::with_name)).
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{}{}",
                self.host.as_deref().unwrap_or("*"),
                self.path_prefix
            )
        })
    }

    /// The host it serves (`None`: any).
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The path prefix it serves.
    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }

    /// The origin, as `http://host[:port]`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.origin)
    }

    /// The edge policy.
    pub fn policy(&self) -> &EdgePolicy {
        &self.policy
    }

    /// The largest body stored, when the route limits it.
    pub fn max_object_bytes(&self) -> Option<usize> {
        self.max_object_bytes
    }
}

/// The route table: a host-specific route before a wildcard one, then the longest path prefix.
#[derive(Debug, Clone, Default)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route.
    #[must_use]
    pub fn with(mut self, route: Route) -> Self {
        self.0.push(route);
        self
    }

    /// The routes, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.0.iter()
    }

    /// The route for a request to `host` (without port) and `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        self.find_index(host, path).map(|i| &self.0[i])
    }

    /// The index (in [`iter`](Self::iter) order) of the route for a request to `host` and `path`.
    pub fn find_index(&self, host: &str, path: &str) -> Option<usize> {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.host
                    .as_deref()
                    .is_none_or(|h| h.eq_ignore_ascii_case(host))
            })
            .filter(|(_, r)| path.starts_with(&r.path_prefix))
            .max_by_key(|(_, r)| (r.host.is_some(), r.path_prefix.len()))
            .map(|(i, _)| i)
    }
}

/// The proxy's settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The cache's name in `Cache-Status`. Default: `Strata`.
    pub name: String,
    /// The pseudonym in `Via`. Default: `strata`.
    pub via: String,
    /// The scheme of primary keys (`https` when TLS ends in front of the proxy). Default: `http`.
    pub key_scheme: String,
    /// Largest request body, largest response body stored (a route may set less) and largest body a
    /// revalidation reads. Larger responses stream through unstored. Default: 16 MiB.
    pub max_body_bytes: usize,
    /// Largest request header section (larger: 400). Default: 64 KiB.
    pub max_header_bytes: usize,
    /// How long an origin exchange may take (past it: an error, stale-if-error applies). Default: 30 s.
    pub origin_timeout: Duration,
    /// How long a URI whose response could not be stored skips request collapsing. Default: 10 s.
    pub hit_for_miss: Duration,
    /// Whether `Surrogate-Key` and `Cache-Tag` go on to clients (a CDN in front that purges by them wants
    /// them). They are indexed as tags either way. Default: `false` (stripped).
    pub forward_surrogate_keys: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            name: "Strata".into(),
            via: "strata".into(),
            key_scheme: "http".into(),
            max_body_bytes: 16 << 20,
            max_header_bytes: 64 << 10,
            origin_timeout: Duration::from_secs(30),
            hit_for_miss: Duration::from_secs(10),
            forward_surrogate_keys: false,
        }
    }
}

/// A namespace fit for the proxy: the engine keeps each response for `retention` (HTTP freshness is decided
/// from the response itself), weighs it by its bytes, and with L2 encodes it with [`crate::stored::StoredCodec`].
pub fn edge_namespace(
    cache: &strata::Cache,
    name: &str,
    retention: Duration,
    with_l2: bool,
) -> Result<Namespace<StoredResponse>, ProxyError> {
    let policy = strata::Policy::builder()
        .with_ttl(retention)
        .with_jitter(0.0)
        .with_l2(with_l2)
        // With a shared tier, one node fetches a missing URL for all of them: the key's lease (see strata's
        // read path), on top of each node's single-flight.
        .with_distributed_coalescing(with_l2)
        .build()
        .map_err(strata::Error::InvalidPolicy)?;
    let mut b = cache
        .namespace::<StoredResponse>(name)
        .with_policy(policy)
        .with_weigher(StoredResponse::weight);
    if with_l2 {
        b = b.with_codec(crate::stored::StoredCodec);
    }
    Ok(b.build()?)
}

/// A response from the origin, read whole.
#[derive(Debug, Clone)]
pub struct OriginResponse {
    /// Status.
    pub status: StatusCode,
    /// Header fields as received.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// When the request was sent.
    pub request_time: UnixMillis,
    /// When the response arrived.
    pub response_time: UnixMillis,
}

/// A response head from the origin, its body still to be read.
#[derive(Debug)]
struct OriginHead {
    status: StatusCode,
    headers: HeaderMap,
    body: Incoming,
    request_time: UnixMillis,
    response_time: UnixMillis,
}

/// What a fill hands its leader as soon as the origin's head is in, so the leader's client is answered while
/// the body is still arriving (see [`crate::body`]).
#[derive(Debug)]
enum Streaming {
    /// A response being stored: the leader's view of it (the origin's fields, less hop-by-hop ones) and its
    /// body.
    Storing {
        view: Box<StoredResponse>,
        body: ProxyBody,
    },
    /// A response that may not be stored, for the leader alone.
    Passing {
        status: StatusCode,
        headers: HeaderMap,
        body: ProxyBody,
        reason: NotStorable,
    },
}

/// Why an origin exchange failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// No connection, or it broke before a response.
    #[error("origin unreachable: {0}")]
    Connect(String),
    /// Past [`ProxyConfig::origin_timeout`].
    #[error("origin timed out")]
    Timeout,
    /// The route's bulkhead or breaker refused the request (see [`Route::with_protection`]).
    #[error("origin protected: {0}")]
    Overloaded(String),
    /// The body broke off or was too large.
    #[error("origin response incomplete: {0}")]
    Incomplete(String),
}

/// What a load gives back instead of a value, shared with every coalesced waiter.
#[derive(Debug, Clone, thiserror::Error)]
enum LoadFailure {
    /// The origin answered, but the answer may not be stored; only the request `leader` got it (streamed).
    #[error("not storable: {reason:?}")]
    NotStored { leader: u64, reason: NotStorable },
    /// The origin failed.
    #[error(transparent)]
    Origin(FetchError),
}

/// The outcome of a revalidation, shared by everyone who waited for it.
#[derive(Debug, Clone)]
enum Revalidated {
    /// The stored response was updated (by a 304) or replaced (by a storable full response).
    Stored {
        stored: Arc<StoredResponse>,
        origin_status: StatusCode,
        /// The request whose revalidation it was: only its answer counts as validated (RFC 9111 §5.2.2.4).
        leader: u64,
    },
    /// The origin answered with something that may not be stored (the old entry is gone); only `leader` uses it.
    NotStored {
        leader: u64,
        reason: NotStorable,
        response: Arc<OriginResponse>,
    },
    /// The origin failed (with its error response, when it sent one).
    Failed {
        response: Option<Arc<OriginResponse>>,
        error: Option<FetchError>,
    },
}

type RevalFlight = Shared<BoxFuture<'static, Arc<Revalidated>>>;

/// What a revalidation takes from the request that starts it (see `Proxy::reval_parts`).
struct RevalParts {
    request: OriginRequest,
    leader: u64,
    policy: EdgePolicy,
    primary: PrimaryKey,
}

/// The caching reverse proxy. Cheap to share (`Arc`); see the module docs.
pub struct Proxy {
    routes: Routes,
    ns: Namespace<StoredResponse>,
    client: Client<HttpConnector, Full<Bytes>>,
    config: ProxyConfig,
    next_id: AtomicU64,
    /// Revalidations in flight by `engine key ⏎ response time`. A `parking_lot` mutex: held only to look up or
    /// insert, never across an await.
    revalidations: Mutex<HashMap<String, RevalFlight>>,
    /// Background revalidations asking the cross-node claim (see [`Proxy::revalidate_in_background`]), by the
    /// same key as `revalidations`. Same locking.
    claiming: Mutex<std::collections::HashSet<String>>,
    /// URIs whose last response could not be stored, until when (hit-for-miss). Same locking as above.
    uncacheable: Mutex<HashMap<String, UnixMillis>>,
    /// Per-route counters, by route index.
    stats: Vec<RouteStats>,
    /// Per-route origin protection, by route index.
    guards: Vec<Option<strata::protect::SourceGuard>>,
    /// The routes' names, in route order (their tags, see [`crate::purge`]).
    route_names: Vec<String>,
    /// [`ProxyConfig::name`], shared by every answer's `Cache-Status`.
    name: Arc<str>,
    /// The `Via` value of an HTTP/1.1 answer, made once.
    via_11: HeaderValue,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("routes", &self.routes)
            .field("namespace", &self.ns.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Fields never sent to the origin on the cache path (see the module docs).
const UNKEYED_OVERRIDES: &[&str] = &[
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-host",
];

/// Where the stored response for a request was looked for.
enum Found {
    /// A stored response that matches the request, under `key`.
    Hit {
        key: String,
        stored: Arc<StoredResponse>,
        /// When it was soft-purged, if it was (see [`crate::purge`]).
        purged_at: Option<UnixMillis>,
    },
    /// Nothing usable; load under `key`.
    Miss { key: String, fwd: Fwd },
}

/// What a request needs carried through the path.
struct Ctx {
    id: u64,
    method: Method,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    primary: PrimaryKey,
    origin: http::uri::Authority,
    policy: EdgePolicy,
    directives: Directives,
    route: usize,
    max_object_bytes: Option<usize>,
    hit_for_miss: Duration,
}

impl Proxy {
    /// A proxy over `routes`, storing in `ns` (see [`edge_namespace`]).
    pub fn new(routes: Routes, ns: Namespace<StoredResponse>, config: ProxyConfig) -> Arc<Self> {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let stats = routes.iter().map(|_| RouteStats::default()).collect();
        let route_names = routes.iter().map(Route::name).collect();
        let guards = routes
            .iter()
            .map(|r| {
                r.protection.map(|p| {
                    strata::protect::SourceGuard::new(
                        &format!("proxy:{}", r.name()),
                        p,
                        ns.clock().clone(),
                    )
                })
            })
            .collect();
        Arc::new(Self {
            stats,
            guards,
            route_names,
            routes,
            ns,
            client,
            next_id: AtomicU64::new(1),
            revalidations: Mutex::new(HashMap::new()),
            claiming: Mutex::new(std::collections::HashSet::new()),
            uncacheable: Mutex::new(HashMap::new()),
            name: Arc::from(config.name.as_str()),
            via_11: {
                let mut h = HeaderMap::new();
                append_via(&mut h, Version::HTTP_11, &config.via);
                h.remove(http::header::VIA)
                    .unwrap_or(HeaderValue::from_static("1.1 strata"))
            },
            config,
        })
    }

    /// The namespace responses are stored in.
    pub fn namespace(&self) -> &Namespace<StoredResponse> {
        &self.ns
    }

    fn now(&self) -> UnixMillis {
        self.ns.clock().now()
    }

    /// The proxy's settings.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The route table.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Every route's counters, in route order (see [`crate::stats`]).
    pub fn stats(&self) -> Vec<RouteSnapshot> {
        self.routes
            .iter()
            .zip(&self.stats)
            .map(|(r, s)| s.snapshot(&r.name()))
            .collect()
    }

    /// Hands the counters to the `metrics` facade ([`crate::stats::publish`]).
    pub fn publish_metrics(&self) {
        crate::stats::publish(&self.stats());
    }

    /// Answers one request, counting the answer in its route's [`stats`](Self::stats).
    pub async fn handle<B>(self: &Arc<Self>, req: Request<B>) -> Response<ProxyBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let status = CacheStatus::new(self.name.clone());
        if let Err(e) = check_request_framing(&parts.headers, self.config.max_header_bytes) {
            let s = status.forward(Fwd::Bypass, None).with_detail(e.as_str());
            return self.local(StatusCode::BAD_REQUEST, s, parts.version);
        }
        // RFC 9112 §3.2: more than one Host is a 400; an absolute-form target's authority wins over Host.
        if parts.headers.get_all(HOST).iter().count() > 1 {
            let s = status.forward(Fwd::Bypass, None).with_detail("host");
            return self.local(StatusCode::BAD_REQUEST, s, parts.version);
        }
        let authority = match parts.uri.authority() {
            Some(a) => Some(a.as_str()),
            None => parts.headers.get(HOST).and_then(|h| h.to_str().ok()),
        };
        let Some(authority) = authority else {
            let s = status.forward(Fwd::Bypass, None).with_detail("no-host");
            return self.local(StatusCode::BAD_REQUEST, s, parts.version);
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let primary = match PrimaryKey::new(&self.config.key_scheme, authority, target) {
            Ok(k) => k,
            Err(_) => {
                let s = status.forward(Fwd::Bypass, None).with_detail("bad-uri");
                return self.local(StatusCode::BAD_REQUEST, s, parts.version);
            }
        };
        // Routed and forwarded by the normalised path, so `/api/../admin` is `/admin` for the route, the key and
        // the origin alike.
        let Some(route_ix) = self.routes.find_index(primary.host(), primary.path()) else {
            let s = status.forward(Fwd::Bypass, None).with_detail("no-route");
            return self.local(StatusCode::NOT_FOUND, s, parts.version);
        };
        // RFC 9112 §3.2.2: the origin sees the target's authority as `Host` — the one the key is built from — so a
        // request in absolute form cannot send another `Host` to the origin and have its answer stored under this
        // key.
        let host_value = match parts.headers.get(HOST) {
            Some(h) if h.as_bytes() == authority.as_bytes() => None,
            _ => match HeaderValue::from_str(authority) {
                Ok(v) => Some(v),
                Err(_) => {
                    let s = status.forward(Fwd::Bypass, None).with_detail("host");
                    return self.local(StatusCode::BAD_REQUEST, s, parts.version);
                }
            },
        };
        let body = if body.is_end_stream() {
            Bytes::new()
        } else {
            match Limited::new(body, self.config.max_body_bytes)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    let s = status
                        .forward(Fwd::Bypass, None)
                        .with_detail("request-body");
                    return self.local(StatusCode::PAYLOAD_TOO_LARGE, s, parts.version);
                }
            }
        };
        let mut headers = parts.headers;
        if let Some(v) = host_value {
            headers.insert(HOST, v);
        }
        let route = &self.routes.0[route_ix];
        let ctx = Ctx {
            route: route_ix,
            max_object_bytes: route.max_object_bytes,
            hit_for_miss: route.hit_for_miss.unwrap_or(self.config.hit_for_miss),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            directives: Directives::for_request(&headers),
            method: parts.method,
            version: parts.version,
            headers,
            body,
            primary,
            origin: route.origin.clone(),
            policy: route.policy.clone(),
        };
        if ctx.method != Method::GET && ctx.method != Method::HEAD {
            return self.unsafe_or_other(ctx, status).await;
        }
        if ctx.headers.contains_key(IF_MATCH) || ctx.headers.contains_key(IF_UNMODIFIED_SINCE) {
            // Preconditions for the origin (RFC 9111 §4.3.2): straight through, nothing stored.
            return self
                .pass(
                    &ctx,
                    status
                        .forward(Fwd::Request, None)
                        .with_detail("precondition"),
                )
                .await;
        }
        match self.find(&ctx) {
            Found::Hit {
                key,
                stored,
                purged_at,
            } => self.from_stored(ctx, key, stored, purged_at, status).await,
            Found::Miss { key, fwd } => self.miss(ctx, key, fwd, status).await,
        }
    }

    /// The stored response for the request in L1, selected by `Vary` (see the module docs).
    fn find(&self, ctx: &Ctx) -> Found {
        let primary = ctx.primary.as_str().to_string();
        let Some((latest, latest_purged)) = self.stored(&primary) else {
            return Found::Miss {
                key: primary,
                fwd: Fwd::UriMiss,
            };
        };
        match latest.varies() {
            Vary::None => Found::Hit {
                key: primary,
                stored: latest,
                purged_at: latest_purged,
            },
            Vary::Star => Found::Miss {
                key: primary,
                fwd: Fwd::VaryMiss,
            },
            vary @ Vary::Fields(_) => {
                if latest.vary.matches(&ctx.headers) {
                    return Found::Hit {
                        key: primary,
                        stored: latest,
                        purged_at: latest_purged,
                    };
                }
                let key = variant_key(&primary, vary, &ctx.headers);
                match self.stored(&key) {
                    Some((s, purged_at)) if s.vary.matches(&ctx.headers) => Found::Hit {
                        key,
                        stored: s,
                        purged_at,
                    },
                    _ => Found::Miss {
                        key,
                        fwd: Fwd::VaryMiss,
                    },
                }
            }
        }
    }

    /// The stored response under an engine key in L1, and when it was soft-purged.
    fn stored(&self, key: &str) -> Option<(Arc<StoredResponse>, Option<UnixMillis>)> {
        let lookup = self.ns.get(key)?;
        let purged_at = self.ns.soft_purged_at(&lookup);
        Some((lookup.to_arc()?, purged_at))
    }

    async fn from_stored(
        self: &Arc<Self>,
        ctx: Ctx,
        key: String,
        stored: Arc<StoredResponse>,
        purged_at: Option<UnixMillis>,
        status: CacheStatus,
    ) -> Response<ProxyBody> {
        let now = self.now();
        let facts = stored.facts();
        let eval = freshness::evaluate_purged(facts, &ctx.directives, now, &ctx.policy, purged_at);
        match eval.decision {
            Decision::Fresh | Decision::StaleAllowed | Decision::StaleWhileRevalidate => {
                let mut s = status.hit().with_ttl(eval.ttl());
                match eval.decision {
                    Decision::StaleAllowed => s = s.with_detail("max-stale"),
                    Decision::StaleWhileRevalidate => {
                        s = s.with_detail("stale-while-revalidate");
                        self.revalidate_in_background(&ctx, &key, &stored, purged_at);
                    }
                    _ => {}
                }
                self.respond_stored(&ctx, &stored, now, false, s)
            }
            Decision::Revalidate(reason) => {
                let fwd = if reason.is_request() {
                    Fwd::Request
                } else {
                    Fwd::Stale
                };
                if ctx.directives.only_if_cached {
                    let s = status.forward(fwd, None).with_detail("only-if-cached");
                    return self.local(StatusCode::GATEWAY_TIMEOUT, s, ctx.version);
                }
                let outcome = self.revalidation(&ctx, &key, &stored).await;
                self.after_revalidation(&ctx, &stored, &eval, fwd, status, &outcome)
                    .await
            }
        }
    }

    async fn after_revalidation(
        self: &Arc<Self>,
        ctx: &Ctx,
        stored: &Arc<StoredResponse>,
        eval: &Evaluation,
        fwd: Fwd,
        status: CacheStatus,
        outcome: &Revalidated,
    ) -> Response<ProxyBody> {
        match outcome {
            Revalidated::Stored {
                stored: fresh,
                origin_status,
                leader,
            } => {
                if !fresh.vary.matches(&ctx.headers) {
                    return self.pass(ctx, status.forward(Fwd::VaryMiss, None)).await;
                }
                let s = status
                    .forward(fwd, Some(origin_status.as_u16()))
                    .with_stored(true);
                // Fields named by `no-cache="…"` go only to the request that was validated, not to those that
                // waited for it (RFC 9111 §5.2.2.4).
                self.respond_stored(ctx, fresh, self.now(), *leader == ctx.id, s)
            }
            Revalidated::NotStored {
                leader,
                reason,
                response,
            } => {
                if *leader == ctx.id {
                    let s = status
                        .forward(fwd, Some(response.status.as_u16()))
                        .with_detail(reason.as_str());
                    self.respond_origin(ctx, response, s)
                } else {
                    self.pass(ctx, status.forward(fwd, None).with_detail(reason.as_str()))
                        .await
                }
            }
            Revalidated::Failed { response, error } => {
                let origin_status = response.as_ref().map(|r| r.status.as_u16());
                if eval.stale_if_error {
                    let s = status
                        .forward(Fwd::Stale, origin_status)
                        .with_ttl(eval.ttl())
                        .with_detail("stale-if-error");
                    return self.respond_stored(ctx, stored, self.now(), false, s);
                }
                match (response, error) {
                    (Some(r), _) => self.respond_origin(ctx, r, status.forward(fwd, origin_status)),
                    // A stored response that may not be reused while the origin cannot be reached: the cache
                    // "MUST generate an error response … SHOULD be 504" (RFC 9111 §5.2.2.2).
                    (None, Some(FetchError::Connect(_))) => self.local(
                        StatusCode::GATEWAY_TIMEOUT,
                        status.forward(fwd, None).with_detail("origin-unreachable"),
                        ctx.version,
                    ),
                    (None, Some(e)) => self.origin_failed(ctx, status.forward(fwd, None), e),
                    (None, None) => self.local(StatusCode::BAD_GATEWAY, status, ctx.version),
                }
            }
        }
    }

    /// The revalidation of `stored` (collapsed per stored response), as a future that runs detached once
    /// started: awaiting it joins it, dropping the awaiting future cancels nothing.
    fn revalidation(
        self: &Arc<Self>,
        ctx: &Ctx,
        key: &str,
        stored: &Arc<StoredResponse>,
    ) -> RevalFlight {
        self.revalidation_of(self.reval_parts(ctx), key, stored)
    }

    /// What a revalidation needs of the request that starts it.
    fn reval_parts(&self, ctx: &Ctx) -> RevalParts {
        RevalParts {
            request: self.origin_request_parts(ctx),
            leader: ctx.id,
            policy: ctx.policy.clone(),
            primary: ctx.primary.clone(),
        }
    }

    /// A stale-while-revalidate (or soft-purged) hit's revalidation: detached, with the origin timeout as its
    /// deadline, and done by one node of those sharing L2 — the one that wins the response's claim
    /// ([`Namespace::claim`]). The others keep serving what they hold; the winner's store reaches them through
    /// the bus (their copy goes) and L2 (their next read finds the new one).
    ///
    /// The claim of a soft-purged response is named after its purge (every node dates it alike, see
    /// [`Namespace::soften_tag`]) and kept until its TTL once the revalidation stored: a node whose copy goes
    /// only when the bus message arrives cannot win it again meanwhile. Any other claim ends with its
    /// revalidation, and so does a soft purge's whose revalidation failed, so another node can try.
    fn revalidate_in_background(
        self: &Arc<Self>,
        ctx: &Ctx,
        key: &str,
        stored: &Arc<StoredResponse>,
        purged_at: Option<UnixMillis>,
    ) {
        let flight_key = format!("{key}\n{}", stored.response_time);
        if self.revalidations.lock().contains_key(&flight_key)
            || !self.claiming.lock().insert(flight_key.clone())
        {
            return;
        }
        // The same stored response may be found under its primary key or its variant key: the claim names
        // the variant, so every node asks for the same one.
        let claim_key = match stored.varies() {
            vary @ Vary::Fields(_) => variant_key(ctx.primary.as_str(), vary, &ctx.headers),
            _ => ctx.primary.as_str().to_string(),
        };
        let (this, parts, key, stored) = (
            self.clone(),
            self.reval_parts(ctx),
            key.to_string(),
            stored.clone(),
        );
        let what = match purged_at {
            Some(at) => format!("revalidate after {at}"),
            None => "revalidate".to_string(),
        };
        tokio::spawn(async move {
            let claim = this
                .ns
                .claim(&claim_key, &what, this.config.origin_timeout)
                .await;
            let Claim::Won(token) = claim else {
                this.claiming.lock().remove(&flight_key);
                return;
            };
            let flight = this.revalidation_of(parts, &key, &stored);
            this.claiming.lock().remove(&flight_key);
            let stored_new = matches!(*flight.await, Revalidated::Stored { .. });
            if !(stored_new && purged_at.is_some()) {
                this.ns.end_claim(token).await;
            }
        });
    }

    fn revalidation_of(
        self: &Arc<Self>,
        parts: RevalParts,
        key: &str,
        stored: &Arc<StoredResponse>,
    ) -> RevalFlight {
        let flight_key = format!("{key}\n{}", stored.response_time);
        let mut flights = self.revalidations.lock();
        if let Some(f) = flights.get(&flight_key) {
            return f.clone();
        }
        let this = self.clone();
        let RevalParts {
            request,
            leader,
            policy,
            primary,
        } = parts;
        let (key_owned, stored_owned, fk) = (key.to_string(), stored.clone(), flight_key.clone());
        let task = tokio::spawn(async move {
            let out = this
                .revalidate(
                    request,
                    &key_owned,
                    &primary,
                    &stored_owned,
                    leader,
                    &policy,
                )
                .await;
            this.revalidations.lock().remove(&fk);
            Arc::new(out)
        });
        let flight: RevalFlight = async move {
            task.await.unwrap_or_else(|_| {
                Arc::new(Revalidated::Failed {
                    response: None,
                    error: Some(FetchError::Connect("revalidation task failed".into())),
                })
            })
        }
        .boxed()
        .shared();
        flights.insert(flight_key, flight.clone());
        flight
    }

    async fn revalidate(
        &self,
        mut request: OriginRequest,
        key: &str,
        primary: &PrimaryKey,
        stored: &StoredResponse,
        leader: u64,
        policy: &EdgePolicy,
    ) -> Revalidated {
        let validated = conditional::prepare_validation(&mut request.headers, &stored.headers);
        let mut response = match self.fetch(&request).await {
            Ok(r) => r,
            Err(e) => {
                return Revalidated::Failed {
                    response: None,
                    error: Some(e),
                }
            }
        };
        if response.status == StatusCode::NOT_MODIFIED {
            if conditional::selects(&stored.headers, &response.headers, validated) {
                let updated = conditional::update_from_304(
                    stored,
                    &response.headers,
                    response.request_time,
                    response.response_time,
                );
                let check = storable::check(
                    Exchange {
                        method: &Method::GET,
                        request_headers: &request.client,
                        status: updated.status,
                        response_headers: &updated.headers,
                        complete: true,
                    },
                    policy,
                );
                return match check {
                    Ok(plan) => {
                        // The 304's fields are stored too: those `private="…"` / `no-cache="…"` name stay out
                        // (RFC 9111 §5.2.2.4, §5.2.2.7), as on a full response.
                        let updated = Arc::new(StoredResponse::new(
                            updated.status,
                            updated.headers.clone(),
                            updated.body.clone(),
                            updated.request_time,
                            updated.response_time,
                            updated.vary.clone(),
                            &plan,
                        ));
                        self.store(request.route, key, primary, &updated).await;
                        Revalidated::Stored {
                            stored: updated,
                            origin_status: StatusCode::NOT_MODIFIED,
                            leader,
                        }
                    }
                    Err(reason) => {
                        // A reason of this request's own must not let one client evict what every client reads.
                        if !reason.is_the_requests() {
                            self.evict(primary).await;
                        }
                        let as_origin = OriginResponse {
                            status: updated.status,
                            headers: updated.headers.clone(),
                            body: updated.body.clone(),
                            request_time: updated.request_time,
                            response_time: updated.response_time,
                        };
                        Revalidated::NotStored {
                            leader,
                            reason,
                            response: Arc::new(as_origin),
                        }
                    }
                };
            }
            // A 304 that selects nothing updates nothing (§4.3.4): ask again without conditionals.
            for name in [IF_NONE_MATCH, IF_MODIFIED_SINCE, IF_RANGE] {
                request.headers.remove(name);
            }
            response = match self.fetch(&request).await {
                Ok(r) => r,
                Err(e) => {
                    return Revalidated::Failed {
                        response: None,
                        error: Some(e),
                    }
                }
            };
        }
        if is_origin_error(response.status) {
            return Revalidated::Failed {
                response: Some(Arc::new(response)),
                error: None,
            };
        }
        match self.storable(&request.client, &response, policy, request.max_object_bytes) {
            Ok(new) => {
                let new = Arc::new(new);
                self.store(request.route, key, primary, &new).await;
                Revalidated::Stored {
                    stored: new,
                    origin_status: response.status,
                    leader,
                }
            }
            Err(reason) => {
                // The stored response is superseded by one that may not be kept — unless the reason is this
                // request's own (its `no-store`, its `Authorization`).
                if !reason.is_the_requests() {
                    self.evict(primary).await;
                }
                Revalidated::NotStored {
                    leader,
                    reason,
                    response: Arc::new(response),
                }
            }
        }
    }

    async fn miss(
        self: &Arc<Self>,
        ctx: Ctx,
        key: String,
        fwd: Fwd,
        status: CacheStatus,
    ) -> Response<ProxyBody> {
        if ctx.directives.only_if_cached {
            let s = status.forward(fwd, None).with_detail("only-if-cached");
            return self.local(StatusCode::GATEWAY_TIMEOUT, s, ctx.version);
        }
        let now = self.now();
        let uncacheable = {
            let mut map = self.uncacheable.lock();
            map.retain(|_, until| *until > now);
            map.contains_key(ctx.primary.as_str())
        };
        if uncacheable {
            return self
                .load_uncollapsed(
                    &ctx,
                    &key,
                    status.forward(fwd, None).with_detail("hit-for-miss"),
                )
                .await;
        }
        let this = self.clone();
        let request = self.origin_request_parts(&ctx);
        let leader = ctx.id;
        let policy = ctx.policy.clone();
        let hit_for_miss = ctx.hit_for_miss;
        let fill_key = key.clone();
        // Only this request's loader can run (when it leads): the head then comes here at once.
        let (head_tx, mut head_rx) = oneshot::channel::<Streaming>();
        let ranges = ctx.method == Method::GET && ctx.headers.contains_key(RANGE);
        let loaded = {
            let load = self.ns.try_get_or_load(&key, move || async move {
                let head = this
                    .fetch_head(&request)
                    .await
                    .map_err(LoadFailure::Origin)?;
                this.fill(
                    request,
                    head,
                    &fill_key,
                    &policy,
                    hit_for_miss,
                    leader,
                    head_tx,
                )
                .await
            });
            tokio::pin!(load);
            tokio::select! {
                biased;
                head = &mut head_rx => match head {
                    // A range is cut from the whole body: the stored response is awaited for it.
                    Ok(Streaming::Storing { .. }) if ranges => load.await,
                    Ok(streaming) => return self.respond_streaming(&ctx, streaming, fwd, status),
                    Err(_) => load.await,
                },
                loaded = &mut load => loaded,
            }
        };
        match loaded {
            Ok(lookup) => {
                let Some(stored) = lookup.to_arc() else {
                    return self.pass(&ctx, status.forward(fwd, None)).await;
                };
                if !stored.vary.matches(&ctx.headers) {
                    // The primary key holds another variant (another node's latest, or a collapsed load's):
                    // this request's own variant is looked up — and loaded, collapsed — under its variant key.
                    if let (true, vary @ Vary::Fields(_)) =
                        (key == ctx.primary.as_str(), stored.varies())
                    {
                        let variant = variant_key(ctx.primary.as_str(), vary, &ctx.headers);
                        return Box::pin(self.miss(ctx, variant, Fwd::VaryMiss, status)).await;
                    }
                    return self.pass(&ctx, status.forward(Fwd::VaryMiss, None)).await;
                }
                match lookup.status() {
                    Status::Miss | Status::Coalesced => {
                        let s = status
                            .forward(fwd, Some(stored.status.as_u16()))
                            .with_stored(true)
                            .with_collapsed(lookup.status() == Status::Coalesced);
                        // A collapsed request was not the one the origin answered (RFC 9111 §5.2.2.4).
                        let validated = lookup.status() == Status::Miss;
                        self.respond_stored(&ctx, &stored, self.now(), validated, s)
                    }
                    // Filled meanwhile, or found in L2: a stored response like any other.
                    _ => {
                        let purged_at = self.ns.soft_purged_at(&lookup);
                        self.from_stored(ctx, key, stored, purged_at, status).await
                    }
                }
            }
            Err(e) => match e.loader_error::<LoadFailure>() {
                Some(LoadFailure::NotStored { leader, reason }) => {
                    if *leader == ctx.id {
                        if let Ok(streaming) = head_rx.try_recv() {
                            return self.respond_streaming(&ctx, streaming, fwd, status);
                        }
                    }
                    let s = status.forward(fwd, None).with_detail(reason.as_str());
                    // A waiter may not use the leader's answer: it asks for its own.
                    self.load_uncollapsed(&ctx, &key, s).await
                }
                Some(LoadFailure::Origin(err)) => {
                    let err = err.clone();
                    self.origin_failed(&ctx, status.forward(fwd, None), &err)
                }
                None if matches!(e, strata::Error::Timeout { .. }) => {
                    self.origin_failed(&ctx, status.forward(fwd, None), &FetchError::Timeout)
                }
                None => {
                    tracing::warn!(uri = %ctx.primary, error = %e, "engine failed");
                    let s = status.forward(fwd, None).with_detail("engine");
                    self.local(StatusCode::BAD_GATEWAY, s, ctx.version)
                }
            },
        }
    }

    /// The body of a fill, in the load task: the head goes to the leader (`head_tx`) at once, with the body
    /// streamed; the stored response is what the load returns once the body is complete. A response that may
    /// not be stored streams to the leader alone and marks the URI hit-for-miss when the reason is the
    /// response's own.
    #[allow(clippy::too_many_arguments)]
    async fn fill(
        self: &Arc<Self>,
        request: OriginRequest,
        head: OriginHead,
        key: &str,
        policy: &EdgePolicy,
        hit_for_miss: Duration,
        leader: u64,
        head_tx: oneshot::Sender<Streaming>,
    ) -> Result<Fetched<StoredResponse>, LoadFailure> {
        let length = content_length(&head.headers);
        let idle = self.config.origin_timeout;
        let limit = self.store_limit(request.max_object_bytes);
        let (tee, streamed) = body::tee(length);
        let stored = match self.storable_head(&request.client, &head, policy, limit) {
            Ok(stored) => stored,
            Err(reason) => {
                // Hit-for-miss only for what the response itself says, never for this request's own traits.
                if !reason.is_the_requests() && reason != NotStorable::Incomplete {
                    self.mark_uncacheable(&request.primary, hit_for_miss);
                }
                let streaming = Streaming::Passing {
                    status: head.status,
                    headers: head.headers,
                    body: ProxyBody::Streamed(streamed),
                    reason,
                };
                if head_tx.send(streaming).is_ok() {
                    tokio::spawn(read_body(head.body, Some(tee), 0, None, idle));
                }
                return Err(LoadFailure::NotStored { leader, reason });
            }
        };
        let view = Box::new(self.leader_view(&head, &stored));
        let streaming = Streaming::Storing {
            view,
            body: ProxyBody::Streamed(streamed),
        };
        let tee = head_tx.send(streaming).is_ok().then_some(tee);
        let body = match read_body(head.body, tee, limit, length, idle).await {
            Ok(body) => body,
            Err(reason) => {
                // Too large is the response's own trait; a body cut off says nothing of the next one.
                if reason == NotStorable::TooLarge {
                    self.mark_uncacheable(&request.primary, hit_for_miss);
                }
                return Err(LoadFailure::NotStored { leader, reason });
            }
        };
        let stored = stored.with_body(body);
        self.stats[request.route].stored(stored.body.len());
        let stored = Arc::new(stored);
        self.index_variant(request.route, key, &request.primary, &stored)
            .await;
        let tags = self.entry_tags(request.route, &request.primary, &stored);
        Ok(Fetched::value(Arc::unwrap_or_clone(stored)).with_tags(tags))
    }

    /// The largest body stored for a route.
    fn store_limit(&self, max_object_bytes: Option<usize>) -> usize {
        max_object_bytes.map_or(self.config.max_body_bytes, |m| {
            m.min(self.config.max_body_bytes)
        })
    }

    /// What the client whose request fetched a response is told: the origin's own fields (less hop-by-hop ones;
    /// fields kept out of the stored copy, such as `private="…"` ones or a `public` response's `Set-Cookie`, are
    /// for it), with the stored copy's times and `Vary` values.
    fn leader_view(&self, head: &OriginHead, stored: &StoredResponse) -> StoredResponse {
        StoredResponse::new(
            head.status,
            head.headers.clone(),
            Bytes::new(),
            stored.request_time,
            stored.response_time,
            stored.vary.clone(),
            &storable::StorePlan::default(),
        )
    }

    /// The answer to a fill's leader while the body streams in (see [`Self::fill`]).
    fn respond_streaming(
        &self,
        ctx: &Ctx,
        streaming: Streaming,
        fwd: Fwd,
        status: CacheStatus,
    ) -> Response<ProxyBody> {
        match streaming {
            Streaming::Storing { view, body } => {
                let s = status
                    .forward(fwd, Some(view.status.as_u16()))
                    .with_stored(true);
                self.respond_view(ctx, &view, body, self.now(), true, s)
            }
            Streaming::Passing {
                status: code,
                mut headers,
                body,
                reason,
            } => {
                remove_hop_by_hop(&mut headers);
                let s = status
                    .forward(fwd, Some(code.as_u16()))
                    .with_detail(reason.as_str());
                self.downstream(ctx, code, headers, body, s)
            }
        }
    }

    /// A load that does not join others (hit-for-miss, or a waiter that may not use the leader's answer); a
    /// storable answer is streamed to the client and stored once complete.
    async fn load_uncollapsed(
        self: &Arc<Self>,
        ctx: &Ctx,
        key: &str,
        status: CacheStatus,
    ) -> Response<ProxyBody> {
        let request = self.origin_request_parts(ctx);
        let head = match self.fetch_head(&request).await {
            Ok(r) => r,
            Err(e) => return self.origin_failed(ctx, status, &e),
        };
        let idle = self.config.origin_timeout;
        let limit = self.store_limit(ctx.max_object_bytes);
        let length = content_length(&head.headers);
        match self.storable_head(&ctx.headers, &head, &ctx.policy, limit) {
            Ok(stored) => {
                let view = self.leader_view(&head, &stored);
                let (tee, streamed) = body::tee(length);
                let this = self.clone();
                let (key, primary, route) = (key.to_string(), ctx.primary.clone(), ctx.route);
                tokio::spawn(async move {
                    if let Ok(body) = read_body(head.body, Some(tee), limit, length, idle).await {
                        this.uncacheable.lock().remove(primary.as_str());
                        let stored = Arc::new(stored.with_body(body));
                        this.store(route, &key, &primary, &stored).await;
                    }
                });
                let body = ProxyBody::Streamed(streamed);
                self.respond_view(ctx, &view, body, self.now(), true, status.with_stored(true))
            }
            Err(_) => self.respond_passed(ctx, head, status),
        }
    }

    /// Unsafe (and other non-GET/HEAD) methods: forwarded; success invalidates (RFC 9111 §4.4).
    async fn unsafe_or_other(&self, ctx: Ctx, status: CacheStatus) -> Response<ProxyBody> {
        let request = OriginRequest {
            method: ctx.method.clone(),
            headers: forward_headers(&ctx.headers, ctx.version, &self.config.via, true),
            body: ctx.body.clone(),
            ..self.origin_request_parts(&ctx)
        };
        match self.fetch_head(&request).await {
            Ok(head) => {
                for k in
                    invalidation::invalidated(&ctx.method, head.status, &ctx.primary, &head.headers)
                {
                    self.evict(&k).await;
                }
                let s = status.forward(Fwd::Method, Some(head.status.as_u16()));
                self.respond_passed(&ctx, head, s)
            }
            Err(e) => self.origin_failed(&ctx, status.forward(Fwd::Method, None), &e),
        }
    }

    /// Forwards the request as it is (method, conditionals), storing nothing.
    async fn pass(&self, ctx: &Ctx, status: CacheStatus) -> Response<ProxyBody> {
        let request = OriginRequest {
            method: ctx.method.clone(),
            headers: forward_headers(&ctx.headers, ctx.version, &self.config.via, true),
            ..self.origin_request_parts(ctx)
        };
        match self.fetch_head(&request).await {
            Ok(head) => {
                let origin_status = head.status.as_u16();
                self.respond_passed(ctx, head, status.with_fwd_status(origin_status))
            }
            Err(e) => self.origin_failed(ctx, status, &e),
        }
    }

    /// An origin response streamed through unstored: hop-by-hop removed, `Via`, `Cache-Status`.
    fn respond_passed(
        &self,
        ctx: &Ctx,
        head: OriginHead,
        status: CacheStatus,
    ) -> Response<ProxyBody> {
        let mut headers = head.headers;
        remove_hop_by_hop(&mut headers);
        let body = pass_through(head.body, self.config.origin_timeout);
        self.downstream(ctx, head.status, headers, body, status)
    }

    /// Whether an origin response read whole may be stored, as the stored response.
    fn storable(
        &self,
        request_headers: &HeaderMap,
        response: &OriginResponse,
        policy: &EdgePolicy,
        max_object_bytes: Option<usize>,
    ) -> Result<StoredResponse, NotStorable> {
        if max_object_bytes.is_some_and(|max| response.body.len() > max) {
            return Err(NotStorable::TooLarge);
        }
        let complete =
            content_length(&response.headers).is_none_or(|n| n == response.body.len() as u64);
        let parts = (response.status, &response.headers);
        let times = (response.request_time, response.response_time);
        let head = stored_head(request_headers, parts, times, policy, complete)?;
        Ok(head.with_body(response.body.clone()))
    }

    /// Whether a response may be stored, judged on its head (the body is still to come): the stored response
    /// with an empty body, to be completed when the body is in. An announced length past `limit` is too large.
    fn storable_head(
        &self,
        request_headers: &HeaderMap,
        head: &OriginHead,
        policy: &EdgePolicy,
        limit: usize,
    ) -> Result<StoredResponse, NotStorable> {
        if content_length(&head.headers).is_some_and(|n| n > limit as u64) {
            return Err(NotStorable::TooLarge);
        }
        let parts = (head.status, &head.headers);
        let times = (head.request_time, head.response_time);
        stored_head(request_headers, parts, times, policy, true)
    }

    /// Stores a response under its engine key, and as the URI's latest response when it is a variant.
    async fn store(
        &self,
        route: usize,
        key: &str,
        primary: &PrimaryKey,
        stored: &Arc<StoredResponse>,
    ) {
        self.stats[route].stored(stored.body.len());
        let tags = self.entry_tags(route, primary, stored);
        let value = StoredResponse::clone(stored);
        // Fenced by the time the request was sent: a purge or an invalidation after it wins (see
        // `crate::purge`), however late this store lands.
        let since = stored.request_time;
        let fetched = Fetched::value(value.clone()).with_tags(tags.clone());
        self.ns.insert_fetched_since(key, fetched, since).await;
        if key != primary.as_str() {
            let fetched = Fetched::value(value).with_tags(tags);
            self.ns
                .insert_fetched_since(primary.as_str(), fetched, since)
                .await;
        } else {
            self.index_variant(route, key, primary, stored).await;
        }
    }

    /// The engine tags of a response stored for `primary` through `route` (see [`crate::purge`]).
    fn entry_tags(
        &self,
        route: usize,
        primary: &PrimaryKey,
        stored: &StoredResponse,
    ) -> Vec<String> {
        purge::entry_tags(stored.tags(), primary, &self.route_names[route])
    }

    /// The name of the route serving an absolute URL, when one does.
    pub fn route_name_of(&self, url: &str) -> Option<String> {
        let uri: Uri = url.parse().ok()?;
        let host = uri.host()?;
        let path = uri.path();
        self.routes
            .find_index(host, path)
            .map(|i| self.route_names[i].clone())
    }

    /// The index of the route that serves `uri` with `headers` (the target's authority, else `Host`; the path
    /// normalised as for the cache key, so `/api/../admin` is routed as `/admin` here as in [`handle`](Self::handle)).
    pub fn route_index_for(&self, uri: &Uri, headers: &HeaderMap) -> Option<usize> {
        let authority = match uri.authority() {
            Some(a) => a.as_str(),
            None => headers.get(HOST)?.to_str().ok()?,
        };
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        let primary = PrimaryKey::new(&self.config.key_scheme, authority, target).ok()?;
        self.routes.find_index(primary.host(), primary.path())
    }

    /// The bulkhead and breaker in front of route `route`'s origin, when it has them.
    pub fn guard(&self, route: usize) -> Option<&strata::protect::SourceGuard> {
        self.guards.get(route).and_then(Option::as_ref)
    }

    /// Purges stored responses on every node (see [`crate::purge`] for what a purge covers and guarantees).
    /// Returns what was purged.
    ///
    /// A `soft` purge removes nothing: what it covers reads as stale from then on, answered only inside its
    /// `stale-while-revalidate`/`stale-if-error` windows while it revalidates, and a `304` freshens it again.
    pub async fn purge(&self, target: &PurgeTarget, soft: bool) -> Result<PurgePlan, PurgeError> {
        let plan = purge::plan(target, self.route_names.iter().map(String::as_str))?;
        match (&plan.tag, soft) {
            (Some(tag), false) => self.ns.invalidate_tag(tag).await,
            (Some(tag), true) => self.ns.soften_tag(tag).await,
            (None, false) => self.ns.bump_generation().await,
            (None, true) => {
                // Every stored response carries its route's tag.
                for name in &self.route_names {
                    self.ns.soften_tag(&purge::route_tag(name)).await;
                }
            }
        }
        Ok(plan)
    }

    /// A response loaded under the primary key that varies is also stored under its variant key, so it stays
    /// selectable once a later variant becomes the URI's latest response.
    async fn index_variant(
        &self,
        route: usize,
        key: &str,
        primary: &PrimaryKey,
        stored: &Arc<StoredResponse>,
    ) {
        if key != primary.as_str() {
            return;
        }
        if let Vary::Fields(_) = stored.varies() {
            let variant = format!("{}\n{}", primary.as_str(), stored.vary.secondary_key());
            let tags = self.entry_tags(route, primary, stored);
            let fetched = Fetched::value(StoredResponse::clone(stored)).with_tags(tags);
            self.ns
                .insert_fetched_since(&variant, fetched, stored.request_time)
                .await;
        }
    }

    /// Evicts every stored response of a URI (all variants).
    async fn evict(&self, primary: &PrimaryKey) {
        self.ns.invalidate_tag(&uri_tag(primary)).await;
    }

    fn mark_uncacheable(&self, primary: &PrimaryKey, hit_for_miss: Duration) {
        let until = self.now() + hit_for_miss.as_millis() as u64;
        self.uncacheable
            .lock()
            .insert(primary.as_str().to_string(), until);
    }

    /// The origin request for a cache fill: `GET`, no client conditionals, no unkeyed overrides, `Via`.
    fn origin_request_parts(&self, ctx: &Ctx) -> OriginRequest {
        let mut headers = forward_headers(&ctx.headers, ctx.version, &self.config.via, false);
        for name in UNKEYED_OVERRIDES {
            headers.remove(*name);
        }
        for name in [
            IF_NONE_MATCH,
            IF_MODIFIED_SINCE,
            IF_RANGE,
            IF_MATCH,
            IF_UNMODIFIED_SINCE,
        ] {
            headers.remove(name);
        }
        // A fill fetches the whole representation: a range request would bring back a 206, which is not
        // stored (the client gets the full 200, which RFC 9110 §14.2 allows).
        headers.remove(RANGE);
        headers.remove(CONTENT_LENGTH);
        OriginRequest {
            method: Method::GET,
            origin: ctx.origin.clone(),
            path_and_query: ctx.primary.path_and_query().to_string(),
            headers,
            body: Bytes::new(),
            primary: ctx.primary.clone(),
            client: ctx.headers.clone(),
            route: ctx.route,
            max_object_bytes: ctx.max_object_bytes,
        }
    }

    /// Sends `req` and waits for the response head (at most [`ProxyConfig::origin_timeout`]); the body is left
    /// to the caller.
    async fn fetch_head(&self, req: &OriginRequest) -> Result<OriginHead, FetchError> {
        let uri = format!("http://{}{}", req.origin, req.path_and_query);
        let mut builder = Request::builder().method(req.method.clone()).uri(uri);
        if let Some(h) = builder.headers_mut() {
            *h = req.headers.clone();
        }
        let request = builder
            .body(Full::new(req.body.clone()))
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        let admitted = match self.guards.get(req.route).and_then(Option::as_ref) {
            Some(g) => Some(
                g.admit()
                    .await
                    .map_err(|e| FetchError::Overloaded(e.to_string()))?,
            ),
            None => None,
        };
        let request_time = self.now();
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.config.origin_timeout, self.client.request(request))
            .await
            .map_err(|_| FetchError::Timeout)
            .and_then(|r| r.map_err(|e| FetchError::Connect(e.to_string())));
        if let Some(a) = admitted {
            a.done(matches!(&result, Ok(r) if !r.status().is_server_error()));
        }
        let took = started.elapsed();
        if let (Some(s), Some(route)) = (self.stats.get(req.route), self.routes.0.get(req.route)) {
            s.origin(took.as_micros() as u64, result.is_ok());
            metrics::histogram!("strata_proxy_origin_seconds", "route" => route.name())
                .record(took.as_secs_f64());
        }
        let response = result?;
        let response_time = self.now();
        let (parts, body) = response.into_parts();
        Ok(OriginHead {
            status: parts.status,
            headers: parts.headers,
            body,
            request_time,
            response_time,
        })
    }

    /// Sends `req` and reads the whole response (up to [`ProxyConfig::max_body_bytes`]); for revalidations,
    /// whose answer is shared by every request that waited for it.
    async fn fetch(&self, req: &OriginRequest) -> Result<OriginResponse, FetchError> {
        let head = self.fetch_head(req).await?;
        let length = content_length(&head.headers);
        let body = read_body(
            head.body,
            None,
            self.config.max_body_bytes,
            length,
            self.config.origin_timeout,
        )
        .await
        .map_err(|e| FetchError::Incomplete(e.as_str().into()))?;
        Ok(OriginResponse {
            status: head.status,
            headers: head.headers,
            body,
            request_time: head.request_time,
            response_time: head.response_time,
        })
    }

    /// An answer from a stored response: the client's conditionals, ranges, `HEAD`, `Age`, `Via`,
    /// `Cache-Status`.
    fn respond_stored(
        &self,
        ctx: &Ctx,
        stored: &StoredResponse,
        now: UnixMillis,
        validated: bool,
        status: CacheStatus,
    ) -> Response<ProxyBody> {
        let body = ProxyBody::full(stored.body.clone());
        self.respond_view(ctx, stored, body, now, validated, status)
    }

    /// An answer from the head of a stored (or being stored) response with `body` as its content: the client's
    /// conditionals, `HEAD`, `Age`, `Via`, `Cache-Status`, and ranges when the body is whole.
    fn respond_view(
        &self,
        ctx: &Ctx,
        stored: &StoredResponse,
        body: ProxyBody,
        now: UnixMillis,
        validated: bool,
        status: CacheStatus,
    ) -> Response<ProxyBody> {
        // no-cache="field": the field is not sent without a successful validation (§5.2.2.4).
        let headers = stored.downstream_headers(validated);
        let age = stored.facts().age_ms(now) / 1000;
        let (code, mut headers, body) =
            match conditional::evaluate_client(&ctx.method, &ctx.headers, stored) {
                ClientConditional::NotModified => (
                    StatusCode::NOT_MODIFIED,
                    conditional::not_modified_headers(&headers),
                    ProxyBody::empty(),
                ),
                _ => (stored.status, headers, body),
            };
        let (code, body) = match body {
            ProxyBody::Full(_) if code == StatusCode::OK && ctx.method == Method::GET => {
                let (code, b) = ranged(&ctx.headers, &mut headers, stored.body.clone());
                (code, ProxyBody::full(b))
            }
            // A body still streaming in is sent whole: a full 200 answers a range request too (RFC 9110 §14.2).
            other => (code, other),
        };
        set_age(&mut headers, age);
        self.downstream(ctx, code, headers, body, status)
    }

    /// The last step of every answer that carries a stored or an origin response: `Strata-Cache-Control` speaks
    /// to this tier only (RFC 9213) — it stays stored, never goes downstream — then `Via`, `Cache-Status`, and no
    /// body for `HEAD`.
    fn downstream(
        &self,
        ctx: &Ctx,
        code: StatusCode,
        mut headers: HeaderMap,
        body: ProxyBody,
        status: CacheStatus,
    ) -> Response<ProxyBody> {
        headers.remove(&STRATA_CACHE_CONTROL);
        if !self.config.forward_surrogate_keys {
            headers.remove(&SURROGATE_KEY);
            headers.remove(&CACHE_TAG);
        }
        if ctx.version == Version::HTTP_11 {
            headers.append(http::header::VIA, self.via_11.clone());
        } else {
            append_via(&mut headers, ctx.version, &self.config.via);
        }
        status.append_to(&mut headers);
        let body = if ctx.method == Method::HEAD {
            ProxyBody::empty()
        } else {
            body
        };
        self.count(ctx, &status);
        build(code, headers, body)
    }

    /// An answer straight from the origin (not from the cache): hop-by-hop removed, `Via`, `Cache-Status`.
    fn respond_origin(
        &self,
        ctx: &Ctx,
        response: &OriginResponse,
        status: CacheStatus,
    ) -> Response<ProxyBody> {
        let mut headers = response.headers.clone();
        remove_hop_by_hop(&mut headers);
        let body = ProxyBody::full(response.body.clone());
        self.downstream(ctx, response.status, headers, body, status)
    }

    fn origin_failed(&self, ctx: &Ctx, status: CacheStatus, e: &FetchError) -> Response<ProxyBody> {
        let (code, detail) = match e {
            FetchError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "origin-timeout"),
            FetchError::Connect(_) => (StatusCode::BAD_GATEWAY, "origin-unreachable"),
            FetchError::Incomplete(_) => (StatusCode::BAD_GATEWAY, "origin-incomplete"),
            FetchError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        };
        tracing::warn!(uri = %ctx.primary, error = %e, "origin failed");
        let status = status.with_detail(detail);
        self.count(ctx, &status);
        let mut r = self.local(code, status, ctx.version);
        if code == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }

    /// Counts an answer for a routed request in its route's counters.
    fn count(&self, ctx: &Ctx, status: &CacheStatus) {
        if let Some(s) = self.stats.get(ctx.route) {
            s.answered(status);
        }
    }

    /// An answer the proxy makes itself (errors).
    fn local(
        &self,
        code: StatusCode,
        status: CacheStatus,
        version: Version,
    ) -> Response<ProxyBody> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        if code == StatusCode::BAD_REQUEST {
            // A request refused for its framing or head leaves the connection in doubt: close it.
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        append_via(&mut headers, version, &self.config.via);
        status.append_to(&mut headers);
        let body = Bytes::from(format!(
            "{} {}\n",
            code.as_u16(),
            code.canonical_reason().unwrap_or("")
        ));
        build(code, headers, ProxyBody::full(body))
    }
}

/// A request to the origin.
#[derive(Debug, Clone)]
struct OriginRequest {
    method: Method,
    origin: http::uri::Authority,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
    primary: PrimaryKey,
    /// The client's own fields: what `Vary` values and storability are judged on.
    client: HeaderMap,
    /// The route's index (for its counters) and its object limit.
    route: usize,
    max_object_bytes: Option<usize>,
}

/// The client's fields for the origin: hop-by-hop removed, `Via` appended; `keep_conditionals` keeps the
/// client's own conditionals (pass-through).
fn forward_headers(
    headers: &HeaderMap,
    version: Version,
    via: &str,
    keep_conditionals: bool,
) -> HeaderMap {
    let mut h = headers.clone();
    remove_hop_by_hop(&mut h);
    if !keep_conditionals {
        for name in [IF_NONE_MATCH, IF_MODIFIED_SINCE, IF_RANGE] {
            h.remove(name);
        }
    }
    append_via(&mut h, version, via);
    h
}

/// Whether an origin status counts as an error for `stale-if-error` (RFC 5861 §4: 500, 502, 503, 504).
pub fn is_origin_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// The engine key of a request's variant: `primary ⏎ secondary key`.
fn variant_key(primary: &str, vary: &Vary, request: &HeaderMap) -> String {
    format!("{primary}\n{}", vary.values(request).secondary_key())
}

/// A stored complete `200` answering the request's `Range` (see [`crate::range`]): the status and the body to
/// send, with `Content-Range` and `Content-Length` set for them.
fn ranged(request: &HeaderMap, headers: &mut HeaderMap, body: Bytes) -> (StatusCode, Bytes) {
    let len = body.len() as u64;
    let (code, body, content_range) = match range::evaluate(request, headers, len) {
        RangeAnswer::Full => return (StatusCode::OK, body),
        RangeAnswer::Partial { start, end } => (
            StatusCode::PARTIAL_CONTENT,
            body.slice(start as usize..=end as usize),
            format!("bytes {start}-{end}/{len}"),
        ),
        RangeAnswer::Unsatisfiable => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            Bytes::new(),
            format!("bytes */{len}"),
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&content_range) {
        headers.insert(http::header::CONTENT_RANGE, v);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    (code, body)
}

/// The stored form of a response's head (status and fields; times sent and received), with an empty body, when
/// [`storable::check`] allows it.
fn stored_head(
    request_headers: &HeaderMap,
    (status, headers): (StatusCode, &HeaderMap),
    (request_time, response_time): (UnixMillis, UnixMillis),
    policy: &EdgePolicy,
    complete: bool,
) -> Result<StoredResponse, NotStorable> {
    let plan = storable::check(
        Exchange {
            method: &Method::GET,
            request_headers,
            status,
            response_headers: headers,
            complete,
        },
        policy,
    )?;
    let vary = Vary::from_headers(headers).values(request_headers);
    Ok(StoredResponse::new(
        status,
        headers.clone(),
        Bytes::new(),
        request_time,
        response_time,
        vary,
        &plan,
    ))
}

/// The announced `Content-Length` of a message, when it is one valid number.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Reads an origin body to its end, queuing every chunk for a client on `tee` (see [`crate::body`]), and gives
/// the whole body back when it is complete and at most `limit` bytes. Past `limit` nothing more is kept, and the
/// read then keeps pace with the client (and stops when it has gone); `idle` bounds the wait for each chunk.
async fn read_body(
    mut body: Incoming,
    mut tee: Option<Tee>,
    limit: usize,
    length: Option<u64>,
    idle: Duration,
) -> Result<Bytes, NotStorable> {
    let mut parts: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    let mut keeping = length.is_none_or(|n| n <= limit as u64);
    let fail = |tee: &mut Option<Tee>, why: String| {
        if let Some(t) = tee {
            t.fail(BodyError(why));
        }
        NotStorable::Incomplete
    };
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(fail(&mut tee, "origin timed out".into())),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(fail(&mut tee, e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers are not stored nor forwarded.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if keeping && len > limit {
            keeping = false;
            parts = Vec::new();
        }
        if keeping {
            parts.push(data.clone());
        }
        let sent = tee.as_mut().is_some_and(|t| t.send(data));
        if !keeping {
            let Some(t) = tee.as_ref().filter(|_| sent) else {
                // Nothing to keep and nobody to give it to.
                return Err(NotStorable::TooLarge);
            };
            t.backlog_below(PASS_BACKLOG).await;
        }
    }
    if length.is_some_and(|n| n != len as u64) {
        return Err(fail(&mut tee, "shorter than its Content-Length".into()));
    }
    if !keeping {
        return Err(NotStorable::TooLarge);
    }
    Ok(match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut whole = bytes::BytesMut::with_capacity(len);
            for p in &parts {
                whole.extend_from_slice(p);
            }
            whole.freeze()
        }
    })
}

/// Streams an origin body to a client without keeping it, on a task of its own.
fn pass_through(body: Incoming, idle: Duration) -> ProxyBody {
    let (tee, streamed) = body::tee(None);
    tokio::spawn(async move {
        let _ = read_body(body, Some(tee), 0, None, idle).await;
    });
    ProxyBody::Streamed(streamed)
}

fn build(code: StatusCode, headers: HeaderMap, body: ProxyBody) -> Response<ProxyBody> {
    let mut r = Response::new(body);
    *r.status_mut() = code;
    *r.headers_mut() = headers;
    r
}

/// Serves the proxy on `listener` (HTTP/1.1) until `shutdown` resolves; connections in progress finish on
/// their own.
pub async fn serve(
    listener: tokio::net::TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _peer)): Result<(tokio::net::TcpStream, SocketAddr), _> = accepted else {
            continue;
        };
        let proxy = proxy.clone();
        // The guard's limit is a hard wall well past the service's own header limit, which answers first.
        let io = TokioIo::new(FramingGuard::new(
            stream,
            proxy.config.max_header_bytes.saturating_mul(2),
        ));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}
