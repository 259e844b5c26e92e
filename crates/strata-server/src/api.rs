//! The data API (`/v1/…`), health, metrics, the OpenAPI document and the dashboard, as one axum router.
//!
//! Contract:
//! - Values are JSON documents. For a namespace bound to a table, a value is an object whose fields are the
//!   table's columns (without the key and version columns).
//! - Reads answer with `Cache-Status` (RFC 9211: `strata; hit; ttl=…; detail=l1|l2`, `strata; fwd=miss; stored`,
//!   `…; collapsed` when coalesced, a negative `ttl` when stale was served), `Age` (seconds since the value was
//!   loaded) and `ETag` from the version.
//! - Mutating and admin routes (`PUT`, `DELETE`, `_invalidate`, `_warm`, dead letters) need
//!   `Authorization: Bearer <token>` when a token is configured: 401 without one, 403 with a wrong one. Without
//!   a token the server listens only on loopback (see [`crate::config::unauthenticated_problem`]).
//! - Before any handler, [`crate::access::check`] refuses a foreign `Host` (every route but `/healthz` and
//!   `/readyz`: DNS rebinding) or `Origin` with 403 `forbidden_host` / `forbidden_origin`, and a `POST` or `PUT`
//!   without `Content-Type: application/json` with 415, so a web page cannot use a browser to reach the API.
//! - Every 4xx carries `{"error": <code>, "message": <what was wrong>}` (also the edge's: [`crate::edge`]); a
//!   value the source refuses is 422 `rejected` with `field` and `rule` (`engine_error`); a 5xx says only which
//!   dependency failed and whether it is down, slow or failing (the cause is logged with the request id).
//! - Keys are at most `max_key_len` bytes, not empty, and do not start with `_` (reserved for routes such as
//!   `_bulk`); bodies are at most `max_body` bytes.
//! - One key, one row: in a namespace bound to a table or query, a key is the canonical spelling of the key
//!   column's value (integers `42`/`-7`, never `042`, `+42`, ` 42`, `42.9`; text as is; uuids lowercase
//!   hyphenated: `strata_sql::schema`). Every route that takes a key (`GET`/`PUT`/`DELETE`, `_bulk`, `_warm` keys
//!   and ranges, `_invalidate`) checks it once, before the cache, and answers any other spelling with 400
//!   `bad_key` naming the key and the expected form (`"expected"`) — never mapping it, so no row is cached under
//!   two keys.
//! - A `PUT` value is checked against the column types before the write, in every write mode (write-behind
//!   included): a field that is not a column, does not fit its column's type, is `null` in a `NOT NULL` column,
//!   or a missing `NOT NULL` column without a default is 400 `bad_value` naming the field (`"field"`) and the
//!   expected type (`"expected"`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use strata::{Lookup, Status, WriteErrorKind};

use crate::http_caching;
use crate::state::{AppState, NsHandle};

/// An API error: a status and a JSON body naming the problem.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// More fields of the JSON body (`field`, `expected`).
    detail: serde_json::Map<String, Value>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            detail: serde_json::Map::new(),
        }
    }

    /// Adds `name: value` to the JSON body.
    fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(name.to_owned(), value.into());
        self
    }

    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.detail;
        body.insert("error".into(), self.code.into());
        body.insert("message".into(), self.message.into());
        let mut r = (self.status, Json(Value::Object(body))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// Maps an engine error to a response, by the error's kind only (never the sink's own error type):
/// - a value the source refuses (a type, `NOT NULL`, `CHECK`, unique, foreign key, out of range) is the writer's
///   fault: 422 `rejected` naming the key, the field (`"field"`, when the source says which) and the rule
///   (`"rule"`, in the source's words), logged at info level;
/// - a source that is down is 503 `source_unavailable`, one that does not answer in time 504 `source_timeout` /
///   `timeout`, one that fails otherwise 502 `source_failed` — each saying which dependency and that it failed;
///   the cause is logged (with the request id) at warn or error level.
pub(crate) fn engine_error(e: strata::Error) -> ApiError {
    match &e {
        strata::Error::Write { key, kind, .. } => match kind {
            WriteErrorKind::Rejected { field, rule } => {
                tracing::info!(error = %e, "write refused by the source");
                let at = field
                    .as_deref()
                    .map_or(String::new(), |f| format!(" (field {f:?})"));
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "rejected",
                    format!("the source refused the value of {key:?}{at}: {rule}"),
                )
                .with("key", key.clone())
                .with("field", field.clone().map_or(Value::Null, Value::String))
                .with("rule", rule.clone())
            }
            WriteErrorKind::Unavailable { timed_out: true } => {
                tracing::warn!(error = %e, "write timed out");
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "source_timeout",
                    format!(
                        "the source (database) did not take the write of {key:?} in time: it is slow or \
                         overloaded; the write may not have happened, retry later"
                    ),
                )
            }
            WriteErrorKind::Unavailable { timed_out: false } => {
                tracing::warn!(error = %e, "source unavailable for a write");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "source_unavailable",
                    format!(
                        "the source (database) is down or unreachable: {key:?} was not written; retry later"
                    ),
                )
            }
            _ => {
                tracing::error!(error = %e, "write failed");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "source_failed",
                    format!(
                        "the source (database) failed the write of {key:?} with an error that is not the \
                         value's; the cause is in the server log (x-request-id)"
                    ),
                )
            }
        },
        strata::Error::Overloaded(m) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", m.clone())
        }
        strata::Error::NotPropagated { .. } => {
            // Committed, but not acknowledged: other nodes could still serve the value it replaced.
            tracing::warn!(error = %e, "write not propagated");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_propagated",
                e.to_string(),
            )
        }
        strata::Error::Timeout { tier, .. } => {
            tracing::warn!(error = %e, "load timed out");
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("the {tier} did not answer in time (slow or overloaded); retry later"),
            )
        }
        strata::Error::Unavailable { tier, .. } => {
            tracing::warn!(error = %e, "tier unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the {tier} is down or unreachable; retry later"),
            )
        }
        _ => {
            tracing::error!(error = %e, "request failed");
            let what = e
                .tier()
                .map_or("the source".to_owned(), |t| format!("the {t}"));
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "source_failed",
                format!("{what} failed to answer; the cause is in the server log (x-request-id)"),
            )
        }
    }
}

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/_stats", get(all_stats))
        .route("/v1/{ns}/_stats", get(ns_stats))
        .route("/v1/{ns}/_bulk", post(bulk))
        .route("/v1/{ns}/_invalidate", post(invalidate))
        .route("/v1/{ns}/_warm", post(warm))
        .route(
            "/v1/{ns}/{key}",
            get(get_value).put(put_value).delete(delete_value),
        )
        // Token checks pass their namespace's rate limit too (RFC 7662 §4: an open introspection route is a
        // token-guessing oracle without one).
        .merge(crate::auth::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::limits::enforce,
        ))
        .merge(crate::dead_letters::routes())
        .merge(crate::purge::routes())
        .merge(crate::limits::routes())
        .route_layer(axum::middleware::from_fn(crate::access::json_only))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route; see /openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /openapi.json",
    )
}

pub(crate) fn namespace<'a>(state: &'a AppState, ns: &str) -> Result<&'a NsHandle, ApiError> {
    state.namespaces.get(ns).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_namespace",
            format!(
                "no namespace {ns:?}; configured: [{}]",
                state
                    .namespaces
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

fn writable(h: &NsHandle, ns: &str) -> Result<(), ApiError> {
    if h.writable {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "read_only",
            format!("{ns} is read-only (bound to a query or an HTTP source): write to its source; invalidate it here"),
        ))
    }
}

/// 400 `bad_key` naming the key and the form the namespace's key column expects.
fn bad_key(e: &strata_sql::KeyError) -> ApiError {
    ApiError::bad("bad_key", e.to_string())
        .with("key", e.key.clone())
        .with("expected", e.expected.clone())
}

/// The request's key as the namespace's cache and source spell it: checked by [`check_key`], then — for a
/// namespace bound to a table or query — refused unless it is the canonical spelling of a key of its key column
/// (one key, one row). Every route that takes a key calls this once and uses only what it returns.
fn canonical_key(state: &AppState, h: &NsHandle, key: &str) -> Result<String, ApiError> {
    check_key(state, key)?;
    match &h.schema {
        Some(schema) => schema.canonical_key(key).map_err(|e| bad_key(&e)),
        None => Ok(key.to_owned()),
    }
}

/// 400 `bad_value` naming the field and its expected type.
fn bad_value(ns: &str, key: &str, e: strata_sql::BadValue) -> ApiError {
    let mut err = ApiError::bad("bad_value", format!("{ns}/{key}: {}", e.message));
    if let Some(f) = e.field {
        err = err.with("field", f);
    }
    if let Some(x) = e.expected {
        err = err.with("expected", x);
    }
    err
}

fn check_key(state: &AppState, key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad("bad_key", "the key is empty"));
    }
    if key.len() > state.max_key_len {
        return Err(ApiError::bad(
            "key_too_long",
            format!(
                "the key has {} bytes; at most {} are allowed (server.max_key_len)",
                key.len(),
                state.max_key_len
            ),
        ));
    }
    if key.starts_with('_') {
        return Err(ApiError::bad(
            "bad_key",
            "keys starting with `_` are reserved for routes such as `_bulk`",
        ));
    }
    Ok(())
}

/// Checks the bearer token (constant time in the token's length).
pub(crate) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs `Authorization: Bearer <token>`",
        ));
    };
    let given = given.strip_prefix("Bearer ").unwrap_or("");
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the bearer token is wrong",
        ))
    }
}

/// Reads a JSON body under the size limit.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Body,
) -> Result<T, ApiError> {
    let bytes: Bytes = axum::body::to_bytes(body, state.max_body)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the body exceeds {} bytes (server.max_body)",
                    state.max_body
                ),
            )
        })?;
    let bad = |e: serde_json::Error| {
        ApiError::bad(
            "bad_json",
            format!("the body is not the expected JSON: {e}"),
        )
    };
    let mut value: Value = serde_json::from_slice(&bytes).map_err(bad)?;
    integral_numbers(&mut value);
    serde_json::from_value(value).map_err(bad)
}

/// JSON numbers are values, not spellings: `3000.0` is the integer `3000` (as JSON Schema's `integer` says), so
/// a float without fraction (exactly representable: below 2^53) becomes an integer before any check.
fn integral_numbers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(map) => map.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// `Cache-Status` (RFC 9211) and `Age` of a lookup.
pub(crate) fn cache_headers(state: &AppState, lookup: &Lookup<Value>) -> HeaderMap {
    let now = state.cache.clock().now();
    let entry = lookup.entry();
    let ttl_s = (entry.fresh_until() as i64 - now as i64) / 1000;
    let status = match lookup.status() {
        Status::Hit(tier) => format!("strata; hit; ttl={ttl_s}; detail={}", tier.as_str()),
        Status::Stale(reason) => {
            format!("strata; hit; ttl={ttl_s}; detail=stale-{}", reason.as_str())
        }
        Status::Miss => "strata; fwd=miss; stored".to_owned(),
        Status::Coalesced => "strata; fwd=miss; collapsed".to_owned(),
        Status::Negative => format!("strata; hit; ttl={ttl_s}; detail=negative"),
    };
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&status) {
        h.insert("cache-status", v);
    }
    let age = now.saturating_sub(entry.created_at()) / 1000;
    h.insert(header::AGE, HeaderValue::from(age));
    if let Some(v) = lookup.version() {
        if let Ok(v) = HeaderValue::from_str(&format!("\"v{v}\"")) {
            h.insert(header::ETAG, v);
        }
    }
    h
}

/// A write to a namespace whose answers HTTP caches may hold: the edge tier drops what carries the entry's
/// surrogate key (`{ns}:{key}`), so the proxy in front of this API does not serve the old answer.
async fn edge_forget(state: &AppState, h: &NsHandle, ns: &str, key: &str) -> Result<(), ApiError> {
    if !h.http.as_ref().is_some_and(|h| h.surrogate_keys) {
        return Ok(());
    }
    let tag = http_caching::entry_key(ns, key);
    if let Some(edge) = &state.proxy {
        edge.proxy.namespace().invalidate_tag(&tag).await;
    }
    // A CDN in front of this API holds the answer under the same surrogate key.
    crate::purge::hooks(state, crate::cdn::EventKind::Tag, &[tag], false, None)
}

/// A key as a URL path segment (percent-encoded where it must be).
fn percent_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@!$&'()*+,;=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The value without the key and version columns.
fn visible(h: &NsHandle, v: &Value) -> Value {
    match v {
        Value::Object(m) if h.hidden_columns.iter().any(|c| m.contains_key(c)) => Value::Object(
            m.iter()
                .filter(|(k, _)| !h.hidden_columns.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => v.clone(),
    }
}

async fn read(h: &NsHandle, key: &str) -> Result<Lookup<Value>, ApiError> {
    if h.has_source {
        h.ns.fetch(key).await.map_err(engine_error)
    } else {
        h.ns.get_or_load(key, || async { None::<Value> })
            .await
            .map_err(engine_error)
    }
}

async fn get_value(
    State(state): State<Arc<AppState>>,
    Path((ns, key)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    request: HeaderMap,
) -> Result<Response, ApiError> {
    let h = namespace(&state, &ns)?;
    crate::auth::data_routes_only(h, &ns)?;
    let key = canonical_key(&state, h, &key)?;
    let wanted = http_caching::requested_version(query.as_deref())
        .map_err(|e| ApiError::bad("bad_version", e))?;
    let lookup = read(h, &key).await?;
    let mut headers = cache_headers(&state, &lookup);
    if lookup.value().is_some() {
        if let Some(http) = &h.http {
            http.apply(&ns, &key, lookup.entry().tags(), &mut headers);
        }
        if let Some(wanted) = wanted {
            let Some(current) = lookup.version() else {
                return Err(ApiError::bad(
                    "unversioned",
                    format!("{ns} has no versions, so ?v= names nothing"),
                ));
            };
            if wanted != current {
                // Another version: point at the current one, and let no tier keep the pointer.
                let location = format!("/v1/{ns}/{}?v={current}", percent_path(&key));
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                if let Ok(l) = HeaderValue::from_str(&location) {
                    headers.insert(header::LOCATION, l);
                }
                return Ok((StatusCode::FOUND, headers).into_response());
            }
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(http_caching::IMMUTABLE),
            );
        }
        if let Some(etag) = headers.get(header::ETAG) {
            if http_caching::not_modified(&request, etag) {
                return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
            }
        }
    }
    match lookup.value() {
        Some(v) => Ok((headers, Json(visible(h, v))).into_response()),
        None => Ok((
            StatusCode::NOT_FOUND,
            headers,
            Json(json!({"error": "not_found", "message": format!("{ns}/{key} does not exist")})),
        )
            .into_response()),
    }
}

async fn put_value(
    State(state): State<Arc<AppState>>,
    Path((ns, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let h = namespace(&state, &ns)?;
    crate::auth::data_routes_only(h, &ns)?;
    writable(h, &ns)?;
    let key = canonical_key(&state, h, &key)?;
    let tags = crate::purge::write_tags(&headers)?;
    let value: Value = json_body(&state, body).await?;
    if h.has_source && !value.is_object() {
        return Err(ApiError::bad(
            "bad_value",
            format!("{ns} is a table: the body must be a JSON object of its columns"),
        ));
    }
    // Before any write mode: a write-behind write is acknowledged before it reaches the table.
    if let Some(schema) = &h.schema {
        schema
            .validate(&value)
            .map_err(|e| bad_value(&ns, &key, e))?;
    }
    let version = if h.has_source {
        Some(h.ns.write(&key, value).await.map_err(engine_error)?)
    } else {
        h.ns.insert(key.clone(), value).await;
        None
    };
    crate::purge::invalidate_write_tags(&state, &tags).await?;
    edge_forget(&state, h, &ns, &key).await?;
    Ok(Json(json!({
        "namespace": ns, "key": key, "version": version, "write": format!("{:?}", h.mode).to_lowercase(),
        "tags": tags
    }))
    .into_response())
}

async fn delete_value(
    State(state): State<Arc<AppState>>,
    Path((ns, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let h = namespace(&state, &ns)?;
    crate::auth::data_routes_only(h, &ns)?;
    writable(h, &ns)?;
    let key = canonical_key(&state, h, &key)?;
    let tags = crate::purge::write_tags(&headers)?;
    if h.has_source {
        h.ns.delete(&key).await.map_err(engine_error)?;
    } else {
        h.ns.invalidate(&key).await;
    }
    crate::purge::invalidate_write_tags(&state, &tags).await?;
    edge_forget(&state, h, &ns, &key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysBody {
    keys: Vec<String>,
}

/// Most keys in one bulk request.
const MAX_BULK: usize = 1000;

async fn bulk(
    State(state): State<Arc<AppState>>,
    Path(ns): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let h = namespace(&state, &ns)?;
    crate::auth::data_routes_only(h, &ns)?;
    let body: KeysBody = json_body(&state, body).await?;
    if body.keys.len() > MAX_BULK {
        return Err(ApiError::bad(
            "too_many_keys",
            format!("{} keys; at most {MAX_BULK} per request", body.keys.len()),
        ));
    }
    let keys = body
        .keys
        .iter()
        .map(|k| canonical_key(&state, h, k))
        .collect::<Result<Vec<_>, _>>()?;
    let lookups = if h.has_source {
        h.ns.fetch_many(&keys).await.map_err(engine_error)?
    } else {
        let mut out = Vec::new();
        for k in &keys {
            out.push(read(h, k).await?);
        }
        out
    };
    let mut values = serde_json::Map::new();
    for (k, l) in keys.iter().zip(&lookups) {
        values.insert(k.clone(), l.value().map_or(Value::Null, |v| visible(h, v)));
    }
    Ok(Json(json!({ "values": values })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateBody {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn invalidate(
    State(state): State<Arc<AppState>>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let h = namespace(&state, &ns)?;
    let body: InvalidateBody = json_body(&state, body).await?;
    let what = match (&body.key, &body.tag, body.all) {
        (Some(k), None, false) => {
            let k = canonical_key(&state, h, k)?;
            h.ns.invalidate(&k).await;
            json!({"key": k})
        }
        (None, Some(t), false) if !t.is_empty() => {
            h.ns.invalidate_tag(t).await;
            json!({"tag": t})
        }
        (None, None, true) => {
            h.ns.invalidate_all().await;
            json!({"all": true})
        }
        _ => {
            return Err(ApiError::bad(
                "bad_invalidation",
                "give exactly one of {\"key\": \"…\"}, {\"tag\": \"…\"} or {\"all\": true}",
            ))
        }
    };
    Ok(Json(json!({"namespace": ns, "invalidated": what})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmBody {
    #[serde(default)]
    keys: Vec<String>,
    /// Inclusive integer key range `[from, to]`.
    #[serde(default)]
    range: Option<(u64, u64)>,
}

/// Most keys warmed by one request.
const MAX_WARM: u64 = 100_000;

async fn warm(
    State(state): State<Arc<AppState>>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let h = namespace(&state, &ns)?;
    crate::auth::data_routes_only(h, &ns)?;
    if !h.has_source {
        return Err(ApiError::bad(
            "no_source",
            format!("{ns} has no source to warm from"),
        ));
    }
    let body: WarmBody = json_body(&state, body).await?;
    let mut keys = body.keys;
    if let Some((from, to)) = body.range {
        if to < from || to - from >= MAX_WARM {
            return Err(ApiError::bad(
                "bad_range",
                format!("range [{from}, {to}]: need from <= to and at most {MAX_WARM} keys"),
            ));
        }
        keys.extend((from..=to).map(|k| k.to_string()));
    }
    if keys.len() as u64 > MAX_WARM {
        return Err(ApiError::bad(
            "too_many_keys",
            format!("{} keys; at most {MAX_WARM}", keys.len()),
        ));
    }
    let keys = keys
        .iter()
        .map(|k| canonical_key(&state, h, k))
        .collect::<Result<Vec<_>, _>>()?;
    let mut found = 0usize;
    for chunk in keys.chunks(500) {
        let lookups = h.ns.fetch_many(chunk).await.map_err(engine_error)?;
        found += lookups.iter().filter(|l| l.value().is_some()).count();
    }
    Ok(Json(json!({"namespace": ns, "requested": keys.len(), "found": found})).into_response())
}

/// A bulkhead and breaker's state (`null` without one): the dashboard's light is `breaker`.
fn protection_json(
    p: Option<(
        &strata::protect::ProtectionStats,
        strata::breaker::BreakerState,
    )>,
) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    p.map_or(Value::Null, |(s, breaker)| {
        json!({
            "breaker": breaker.as_str(),
            "in_flight": s.in_flight.load(Relaxed),
            "peak_in_flight": s.peak_in_flight.load(Relaxed),
            "shed": s.shed.load(Relaxed),
            "breaker_refused": s.breaker_refused.load(Relaxed),
            "adaptive_limit": match s.limit.load(Relaxed) {
                0 => Value::Null,
                l => Value::from(l),
            },
        })
    })
}

fn ns_stats_json(h: &NsHandle) -> Value {
    let s = h.ns.stats();
    let lookups = s.hits_l1 + s.hits_l2 + s.negative_hits + s.misses + s.coalesced;
    let stale = s.stale_revalidating + s.stale_fail_safe + s.stale_soft_timeout;
    json!({
        "namespace": s.namespace,
        "description": h.description,
        "write": format!("{:?}", h.mode).to_lowercase(),
        "hits_l1": s.hits_l1,
        "hits_l2": s.hits_l2,
        "negative_hits": s.negative_hits,
        "misses": s.misses,
        "coalesced": s.coalesced,
        "stale_served": stale,
        "stale_revalidating": s.stale_revalidating,
        "stale_fail_safe": s.stale_fail_safe,
        "stale_soft_timeout": s.stale_soft_timeout,
        "loads": s.loads,
        "load_errors": s.load_errors,
        "load_timeouts": s.load_timeouts,
        "load_micros": s.load_micros,
        "refreshes": s.refreshes,
        "early_refreshes": s.early_refreshes,
        "fail_safe_activations": s.fail_safe_activations,
        "fills_refused": s.fills_refused,
        "inserts": s.inserts,
        "invalidations": s.invalidations,
        "lease_waits": s.lease_waits,
        "pinned": s.pinned,
        "evictions": s.evictions,
        "l1_bytes": s.l1_bytes,
        "l1_entries": s.l1_entries,
        "lookups": lookups,
        "hit_ratio": s.hit_ratio(),
        "protection": protection_json(h.ns.protection().map(|(s, b)| (s.as_ref(), b))),
    })
}

async fn ns_stats(
    State(state): State<Arc<AppState>>,
    Path(ns): Path<String>,
) -> Result<Response, ApiError> {
    let h = namespace(&state, &ns)?;
    Ok(Json(ns_stats_json(h)).into_response())
}

/// Everything the dashboard and `strata stats` show.
pub fn stats_json(state: &AppState) -> Value {
    let namespaces: Vec<Value> = state.namespaces.values().map(ns_stats_json).collect();
    let bus = state.cache.bus_stats();
    let wb = state.write_behind.as_ref().map(|w| w.stats());
    let cdc = state
        .cdc
        .lock()
        .expect("cdc lock")
        .as_ref()
        .map(|c| (c.stats(), c.holder()));
    let mut out = json!({
        "uptime_s": state.started.elapsed().as_secs_f64(),
        "l2": state.has_l2,
        "namespaces": namespaces,
        "feeds": state.cache.feeds().iter().map(|f| json!({
            "feed": f.feed, "mark_age_ms": f.mark_age_ms, "bound_ms": f.bound_ms,
            "untrusted_reads": f.untrusted_reads,
        })).collect::<Vec<_>>(),
        "bus": bus.map(|b| json!({
            "published": b.published, "applied": b.applied, "gaps": b.gaps, "backlog": b.backlog,
            "last_lag_ms": b.last_lag_ms, "duplicates": b.duplicates,
            "contact_age_ms": b.contact_age_ms, "bound_ms": b.bound_ms,
            "untrusted_reads": b.untrusted_reads,
        })),
        "write_behind": wb.map(|w| json!({
            "acked": w.acked, "pending": w.pending, "flushed": w.flushed, "failures": w.failures,
            "dead_lettered": w.dead_lettered, "lag_p99_ms": w.lag_p99_micros as f64 / 1000.0,
        })),
        "cdc": cdc.map(|(c, holder)| json!({
            "active": c.active,
            "holder": holder.map(|h| json!({
                "pid": h.pid, "application_name": h.application_name, "client_addr": h.client_addr,
            })),
            "takeovers": c.takeovers,
            "transactions": c.transactions, "invalidations": c.invalidations, "unmapped": c.unmapped,
            "undecodable": c.undecodable, "slots_lost": c.slots_lost, "acked_lsn": c.acked_lsn,
        })),
    });
    // Only with a proxy: without one, the answer is what it always was.
    out["purges"] = state.purges.json();
    if state.cdn.iter().next().is_some() {
        out["cdn"] = state.cdn.stats_json();
    }
    if let Some(edge) = &state.proxy {
        out["proxy"] = proxy_stats_json(edge);
    }
    out
}

/// The proxy on `/v1/_stats`: where it listens, and each route with its counters.
fn proxy_stats_json(edge: &crate::state::EdgeProxy) -> Value {
    let routes: Vec<Value> = edge
        .proxy
        .routes()
        .iter()
        .zip(edge.proxy.stats())
        .enumerate()
        .map(|(i, (r, s))| {
            json!({
                "protection": protection_json(
                    edge.proxy.guard(i).map(|g| (g.stats(), g.breaker_state()))
                ),
                "route": s.route,
                "host": r.host(),
                "path_prefix": r.path_prefix(),
                "origin": r.origin(),
                "hits": s.hits,
                "misses": s.misses,
                "passes": s.passes,
                "stale_served": s.stale(),
                "stale_while_revalidate": s.stale_while_revalidate,
                "stale_if_error": s.stale_if_error,
                "max_stale": s.max_stale,
                "collapsed": s.collapsed,
                "origin_requests": s.origin_requests,
                "origin_errors": s.origin_errors,
                "origin_ms_avg": if s.origin_requests == 0 {
                    0.0
                } else {
                    s.origin_micros as f64 / s.origin_requests as f64 / 1000.0
                },
                "stored": s.stored,
                "stored_bytes": s.stored_bytes,
                "hit_ratio": s.hit_ratio(),
            })
        })
        .collect();
    let ns = edge.proxy.namespace().stats();
    json!({
        "listen": edge.listen.to_string(),
        "namespace": ns.namespace,
        "l1_bytes": ns.l1_bytes,
        "l1_entries": ns.l1_entries,
        "routes": routes,
    })
}

async fn all_stats(State(state): State<Arc<AppState>>) -> Response {
    Json(stats_json(&state)).into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    if !state.ready.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ));
    }
    state.sources_ok().await.map_err(|e| {
        tracing::warn!(error = %e, "not ready");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "source_unavailable",
            "a source does not answer; see the server log",
        )
    })?;
    Ok((StatusCode::OK, "ready\n").into_response())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    crate::metrics::publish(&state);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    Json(crate::openapi::document(&state)).into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("../assets/dashboard.html"))
}

#[cfg(test)]
mod tests {
    use crate::config::WriteModeConfig;

    #[test]
    fn namespace_write_modes_print_lowercase() {
        assert_eq!(
            format!("{:?}", WriteModeConfig::Behind).to_lowercase(),
            "behind"
        );
    }
}
