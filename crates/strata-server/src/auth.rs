//! Auth namespaces: token validation cached at the gateway (`[namespaces.X.introspection]`).
//!
//! - `POST /v1/{ns}/_introspect {"token": "…"}` answers what the introspection endpoint says of the token
//!   (RFC 7662's JSON, `{"active": false}` for an invalid one), from the cache when it holds the answer:
//!   a valid token's answer until its own `exp` at the latest (never past the namespace's `ttl`), an invalid
//!   one's for the namespace's `negative_ttl`. Concurrent checks of one token make one call (single flight).
//! - `POST /v1/{ns}/_revoke {"token": "…"}` (bearer token, like every mutating route) drops the token's answer
//!   on every node: it is an invalidation of its key, carried by the bus, so the next check asks the endpoint.
//!
//! The cache key is the token's SHA-256 in hex: tokens never appear in URLs, keys, logs or metrics. An auth
//! namespace has no other data routes (`GET`/`PUT`/`DELETE /v1/{ns}/{key}`, `_bulk` and `_warm` are refused
//! with `405 auth_namespace`): a key is a hash, not a name anyone should read by.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::{authorize, engine_error, json_body, namespace, ApiError};
use crate::state::{AppState, NsHandle};

/// The longest token accepted (bytes).
pub const MAX_TOKEN: usize = 8192;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/{ns}/_introspect", post(introspect))
        .route("/v1/{ns}/_revoke", post(revoke))
}

/// The introspector of an auth namespace's config (its `authorization_env` read now).
pub fn introspector(
    name: &str,
    c: &crate::config::IntrospectionConfig,
) -> anyhow::Result<strata_http::introspect::Introspector> {
    let authorization = match &c.authorization_env {
        None => None,
        Some(var) => {
            let v = std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "namespaces.{name}.introspection.authorization_env: ${var} is not set"
                    )
                })?;
            Some(v.parse().map_err(|_| {
                anyhow::anyhow!(
                    "namespaces.{name}.introspection.authorization_env: ${var} is not a valid header value"
                )
            })?)
        }
    };
    let roots = match &c.ca_file {
        Some(f) => strata_http::client::load_roots(f)
            .map_err(|e| anyhow::anyhow!("namespaces.{name}.introspection.ca_file: {e}"))?,
        None => Vec::new(),
    };
    let d = strata_http::source::HttpSourceOptions::default();
    Ok(strata_http::introspect::Introspector::new(
        name,
        &c.url,
        c.method()
            .map_err(|e| anyhow::anyhow!("namespaces.{name}.introspection.method: {e}"))?,
        authorization,
        strata_http::client::https_client(&roots)?,
        strata_http::source::HttpSourceOptions {
            timeout: c.timeout.map_or(std::time::Duration::from_secs(2), |t| t.0),
            retries: c.retries.unwrap_or(1),
            ..d
        },
    ))
}

/// Refuses the data routes on an auth namespace.
pub(crate) fn data_routes_only(h: &NsHandle, ns: &str) -> Result<(), ApiError> {
    if h.introspector.is_some() {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "auth_namespace",
            format!(
                "{ns} is an auth namespace: check tokens with POST /v1/{ns}/_introspect and drop them with \
                 POST /v1/{ns}/_revoke"
            ),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
}

/// The auth namespace `ns` and the checked token's key.
async fn token_of(
    state: &AppState,
    ns: &str,
    body: Body,
) -> Result<(Arc<strata_http::introspect::Introspector>, String, String), ApiError> {
    let h = namespace(state, ns)?;
    let Some(introspector) = h.introspector.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_an_auth_namespace",
            format!("{ns} has no [namespaces.{ns}.introspection]: it checks no tokens"),
        ));
    };
    let body: TokenBody = json_body(state, body).await?;
    if body.token.is_empty() || body.token.len() > MAX_TOKEN {
        return Err(ApiError::bad(
            "bad_token",
            format!("\"token\" must be 1 to {MAX_TOKEN} bytes"),
        ));
    }
    let key = hex(&Sha256::digest(body.token.as_bytes()));
    Ok((introspector, key, body.token))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn introspect(
    State(state): State<Arc<AppState>>,
    Path(ns): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let (introspector, key, token) = token_of(&state, &ns, body).await?;
    let h = namespace(&state, &ns)?;
    let lookup =
        h.ns.try_get_or_load(&key, move || async move {
            introspector.introspect(&token).await
        })
        .await
        .map_err(engine_error)?;
    let mut headers = crate::api::cache_headers(&state, &lookup);
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("private, no-store"),
    );
    // The cache holds an answer no longer than its `exp`; checked again here so that no path (a stale answer, a
    // clock step) can call an expired token active.
    let answer = lookup
        .value()
        .filter(|claims| {
            !matches!(
                strata_http::introspect::expires_in(claims, std::time::SystemTime::now()),
                strata_http::introspect::Expiry::Past
            )
        })
        .cloned()
        .unwrap_or_else(|| json!({"active": false}));
    Ok((headers, Json(answer)).into_response())
}

async fn revoke(
    State(state): State<Arc<AppState>>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let (_, key, _) = token_of(&state, &ns, body).await?;
    namespace(&state, &ns)?.ns.invalidate(&key).await;
    Ok(Json(json!({"namespace": ns, "revoked": true})).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_the_tokens_sha256_in_hex() {
        use sha2::Digest;
        assert_eq!(
            super::hex(&sha2::Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
