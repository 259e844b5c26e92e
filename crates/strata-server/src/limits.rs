//! Rate limits at the gateway: `[limits.NAME]` (an algorithm of [`strata::limit`], a quota, what it is keyed
//! by), applied to a data namespace (`[namespaces.X] rate_limit = "NAME"`) and offered as a service to other
//! languages (`POST /v1/_limits/{name}` with `{"key": …, "cost": …}`).
//!
//! With `[redis]` every limit is cluster-wide ([`strata_redis::RedisLimiter`], Redis's clock); while Redis
//! fails, each node admits `1 / nodes` of the quota from a local limiter (`nodes` in the limit's config) and
//! counts it in `strata_ratelimit_fallbacks_total` — never open, never closed without saying so.
//!
//! Answers carry the IETF fields (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy: "NAME";q=LIMIT;w=SECS`
//! and `RateLimit: "NAME";r=REMAINING;t=SECS`; a refusal is a `429` naming the limit, with `Retry-After`.
//!
//! Client addresses: the connection's peer, unless the peer is in `[server] trusted_proxies` — then the
//! nearest untrusted address of `X-Forwarded-For` (or `Forwarded: for=`), read from the right. By default no
//! proxy is trusted, so a client cannot pick its own key by sending the header.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use strata::limit::{Algorithm, Decision, FallbackLimiter, Quota, SharedLimiter};

use crate::api::{authorize, json_body, ApiError};
use crate::state::AppState;

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyBy {
    /// The client's address (see the module docs).
    Ip,
    /// A request header's value (an API key); requests without it share the key `-`.
    Header(HeaderName),
    /// The route (the namespace): one budget for everyone.
    Route,
}

impl KeyBy {
    /// `"ip"`, `"header:NAME"` or `"route"`.
    pub fn parse(s: &str) -> Result<KeyBy, String> {
        match s {
            "ip" => Ok(KeyBy::Ip),
            "route" => Ok(KeyBy::Route),
            _ => match s.strip_prefix("header:") {
                Some(h) => HeaderName::from_bytes(h.trim().as_bytes())
                    .map(KeyBy::Header)
                    .map_err(|_| format!("{h:?} is not a header name")),
                None => Err(format!(
                    "{s:?} is not a key: expected \"ip\", \"header:NAME\" or \"route\""
                )),
            },
        }
    }
}

/// An address or a network (`10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    bits: u8,
}

impl Network {
    /// Parses `ADDR` or `ADDR/BITS`.
    pub fn parse(s: &str) -> Result<Network, String> {
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or network (10.0.0.0/8, ::1)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0..={max}")),
            },
        };
        Ok(Network { addr, bits })
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The client address of a request from `peer` (see the module docs).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Network]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("forwarded") {
        for element in v.to_str().unwrap_or("").split(',') {
            for pair in element.split(';') {
                let Some((k, v)) = pair.trim().split_once('=') else {
                    continue;
                };
                if k.trim().eq_ignore_ascii_case("for") {
                    if let Some(ip) = parse_node(v.trim().trim_matches('"')) {
                        hops.push(ip);
                    }
                }
            }
        }
    }
    if hops.is_empty() {
        for v in headers.get_all("x-forwarded-for") {
            hops.extend(
                v.to_str()
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|s| parse_node(s.trim())),
            );
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// `1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|a| a.parse().ok())
}

/// One configured limit.
pub struct NamedLimit {
    /// Its name (in headers, errors and metrics).
    pub name: String,
    /// Its quota.
    pub quota: Quota,
    /// What it counts by.
    pub key: KeyBy,
    limiter: FallbackLimiter,
    /// `strata_ratelimit_decisions_total{limit, outcome}`, registered once (a decision is on every request).
    allowed: metrics::Counter,
    refused: metrics::Counter,
}

impl NamedLimit {
    /// A limit over `shared` (none: this process only).
    pub fn new(
        name: &str,
        algorithm: Algorithm,
        quota: Quota,
        key: KeyBy,
        nodes: u64,
        shared: Option<Arc<dyn SharedLimiter>>,
    ) -> Self {
        let decisions = |outcome: &'static str| metrics::counter!("strata_ratelimit_decisions_total", "limit" => name.to_owned(), "outcome" => outcome);
        Self {
            allowed: decisions("allowed"),
            refused: decisions("refused"),
            name: name.to_owned(),
            quota,
            key,
            limiter: FallbackLimiter::new(
                shared,
                algorithm,
                nodes,
                Arc::new(strata::SystemClock::new()),
            ),
        }
    }

    /// Takes `cost` for `key`.
    pub async fn acquire(&self, key: &str, cost: u64) -> Decision {
        let d = self.limiter.acquire(key, self.quota, cost).await;
        if d.allowed {
            self.allowed.increment(1);
        } else {
            self.refused.increment(1);
        }
        d
    }

    /// Decisions made from the local share (Redis failing).
    pub fn fallbacks(&self) -> u64 {
        self.limiter
            .stats()
            .fallbacks
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The key of a request to `route` from `client`.
    pub fn key_of(&self, route: &str, client: IpAddr, headers: &HeaderMap) -> String {
        match &self.key {
            KeyBy::Ip => client.to_string(),
            KeyBy::Route => route.to_owned(),
            KeyBy::Header(h) => headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned(),
        }
    }

    /// The `RateLimit-Policy` and `RateLimit` fields of a decision.
    pub fn headers(&self, d: &Decision, into: &mut HeaderMap) {
        let secs = |d: Duration| d.as_millis().div_ceil(1000);
        let policy = format!(
            "\"{}\";q={};w={}",
            self.name,
            d.limit,
            secs(self.quota.period).max(1)
        );
        let now = format!("\"{}\";r={};t={}", self.name, d.remaining, secs(d.reset));
        for (name, v) in [("ratelimit-policy", policy), ("ratelimit", now)] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                into.insert(HeaderName::from_static(name), v);
            }
        }
        if let (false, Some(wait)) = (d.allowed, d.retry_after) {
            into.insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(secs(wait).max(1) as u64),
            );
        }
    }

    /// The `429` of a refusal.
    pub fn refusal(&self, key: &str, d: &Decision) -> Response {
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({
                "error": "rate_limited",
                "message": format!(
                    "rate limit {:?} exceeded for this client ({} per {:?}); retry after the Retry-After seconds",
                    self.name, self.quota.limit, self.quota.period
                ),
                "limit": self.name,
                "key": key,
            })),
        )
            .into_response();
        self.headers(d, r.headers_mut());
        r
    }
}

/// The configured limits by name, and the trusted proxies.
#[derive(Default)]
pub struct RateLimits {
    /// By name.
    pub by_name: BTreeMap<String, Arc<NamedLimit>>,
    /// `[server] trusted_proxies`.
    pub trusted: Vec<Network>,
}

/// The limits' route.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/_limits/{name}", post(acquire))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    key: String,
    #[serde(default = "one")]
    cost: u64,
}

fn one() -> u64 {
    1
}

/// Most units one call may take.
pub const MAX_COST: u64 = 1_000_000;

async fn acquire(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Some(limit) = state.limits.by_name.get(&name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_limit",
            format!(
                "no limit {name:?}; configured: [{}]",
                state
                    .limits
                    .by_name
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    let body = json_body::<AcquireBody>(&state, body).await?;
    if body.key.is_empty() || body.key.len() > state.max_key_len {
        return Err(ApiError::bad(
            "bad_key",
            format!("\"key\" must be 1 to {} bytes", state.max_key_len),
        ));
    }
    if body.cost > MAX_COST {
        return Err(ApiError::bad(
            "bad_cost",
            format!("\"cost\" must be at most {MAX_COST}"),
        ));
    }
    let d = limit.acquire(&body.key, body.cost).await;
    let mut r = Json(json!({
        "allowed": d.allowed,
        "limit": d.limit,
        "remaining": d.remaining,
        "reset_ms": d.reset.as_millis() as u64,
        "retry_after_ms": d.retry_after.map(|w| w.as_millis() as u64),
        "fallback": d.fallback,
    }))
    .into_response();
    limit.headers(&d, r.headers_mut());
    Ok(r)
}

/// Applies a namespace's limit to a data API request (`/v1/{ns}/…`): a `429` when refused, the `RateLimit`
/// fields on every answer.
pub async fn enforce(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ns = req
        .uri()
        .path()
        .strip_prefix("/v1/")
        .and_then(|p| p.split('/').next())
        .unwrap_or("");
    let Some(limit) = state
        .namespaces
        .get(ns)
        .and_then(|h| h.rate_limit.as_ref())
        .and_then(|n| state.limits.by_name.get(n))
        .cloned()
    else {
        return next.run(req).await;
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let client = client_ip(peer, req.headers(), &state.limits.trusted);
    let key = format!("{ns}:{}", limit.key_of(ns, client, req.headers()));
    let d = limit.acquire(&key, 1).await;
    if !d.allowed {
        return limit.refusal(&key, &d);
    }
    let mut r = next.run(req).await;
    limit.headers(&d, r.headers_mut());
    r
}

/// The limits of the proxy's routes (`[[proxy.routes]] rate_limit`), by route index.
#[derive(Default, Clone)]
pub struct RouteLimits {
    /// By route index (`None`: unlimited).
    pub by_route: Vec<Option<Arc<NamedLimit>>>,
    /// `[server] trusted_proxies`.
    pub trusted: Vec<Network>,
}

impl RouteLimits {
    /// Decides a proxied request: `Err(429)` when its route's limit refuses it, else the decision whose
    /// `RateLimit` fields the answer carries (none for an unlimited route or a request no route serves).
    pub async fn admit(
        &self,
        proxy: &strata_http::proxy::Proxy,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<Option<(Arc<NamedLimit>, Decision)>, Response> {
        let Some(route) = proxy.route_index_for(uri, headers) else {
            return Ok(None);
        };
        let Some(limit) = self.by_route.get(route).and_then(Option::as_ref) else {
            return Ok(None);
        };
        let name = proxy
            .routes()
            .iter()
            .nth(route)
            .map(strata_http::proxy::Route::name)
            .unwrap_or_default();
        let peer = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
        let client = client_ip(peer, headers, &self.trusted);
        let key = format!("route:{name}:{}", limit.key_of(&name, client, headers));
        let d = limit.acquire(&key, 1).await;
        if !d.allowed {
            return Err(limit.refusal(&key, &d));
        }
        Ok(Some((limit.clone(), d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_trust_only_the_configured_proxies() {
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9, 10.0.0.7".parse().unwrap(),
        );
        assert_eq!(client_ip(peer, &h, &[]), peer, "nothing trusted by default");
        let trusted = [Network::parse("10.0.0.0/8").unwrap()];
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "the nearest untrusted hop, not the client's own claim"
        );
        let mut f = HeaderMap::new();
        f.insert(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https, for=10.1.1.1"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            client_ip(peer, &f, &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert!(Network::parse("10.0.0.0/33").is_err() && Network::parse("nope").is_err());
        assert!(Network::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn keys_parse_and_say_what_is_expected() {
        assert_eq!(KeyBy::parse("ip"), Ok(KeyBy::Ip));
        assert_eq!(
            KeyBy::parse("header:X-Api-Key"),
            Ok(KeyBy::Header(HeaderName::from_static("x-api-key")))
        );
        assert!(KeyBy::parse("user").unwrap_err().contains("expected"));
    }
}
