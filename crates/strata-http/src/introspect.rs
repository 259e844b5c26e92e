//! Token validation at the gateway: an OAuth 2.0 introspection endpoint (RFC 7662) as the source of an auth
//! namespace.
//!
//! [`Introspector::introspect`] asks the endpoint about one token — `POST {url}` with the form body
//! `token=…` (RFC 7662 §2.1), or `GET {url}?token=…` for endpoints that take it so — and turns the JSON answer
//! into what the namespace caches:
//!
//! | the endpoint says | the namespace caches |
//! |---|---|
//! | `{"active": true, "exp": T, …}` with `T` in the future | the answer, fresh until `T` at the latest ([`Fetched::ttl`]; the namespace's TTL is the ceiling) |
//! | `{"active": true, …}` without `exp` | the answer, for the namespace's TTL |
//! | `{"active": true, "exp": T}` with `T` past, or `{"active": false}` | absent: the token is invalid, cached for the negative TTL |
//! | anything else (no `active`, not JSON, another status) | nothing: an error naming the URL |
//!
//! So a valid token is never trusted past its own expiry, an invalid one costs the endpoint one call per negative
//! TTL, and a revoked token is dropped everywhere by an invalidation of its key (which the bus carries to every
//! node). The namespace's key is the token's SHA-256, never the token itself (the server's logs and metrics never
//! see a token); only this request carries it. Retries and timeouts are those of [`crate::source`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::Full;
use strata_core::Fetched;

use crate::client::HttpsClient;
use crate::source::{percent_encode_into, Caller, HttpSourceError, HttpSourceOptions};

/// How long an active answer may be trusted, by its `exp` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No `exp`: for the namespace's TTL.
    Never,
    /// For this long (rounded down to whole milliseconds, so never past `exp`).
    In(Duration),
    /// `exp` has passed, or is not a number of seconds (RFC 7519's NumericDate, fractions allowed).
    Past,
}

/// How long the answer `claims` may be trusted at `now`.
pub fn expires_in(claims: &serde_json::Value, now: SystemTime) -> Expiry {
    let Some(exp) = claims.get("exp") else {
        return Expiry::Never;
    };
    let Some(exp) = exp.as_f64().filter(|e| e.is_finite() && *e > 0.0) else {
        return Expiry::Past;
    };
    let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()) as f64;
    let left_ms = (exp * 1000.0 - now_ms).floor();
    if left_ms <= 0.0 {
        Expiry::Past
    } else {
        Expiry::In(Duration::from_millis(left_ms.min(u64::MAX as f64) as u64))
    }
}

/// How the token travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IntrospectionMethod {
    /// `POST {url}` with `Content-Type: application/x-www-form-urlencoded` and `token=…` (RFC 7662).
    #[default]
    Post,
    /// `GET {url}?token=…`.
    Get,
}

/// An introspection endpoint (see the module docs).
pub struct Introspector {
    url: String,
    method: IntrospectionMethod,
    authorization: Option<HeaderValue>,
    caller: Caller,
}

impl Introspector {
    /// The endpoint at `url`, called with `authorization` (the client credentials RFC 7662 §2.1 asks for, e.g.
    /// `Basic …`) when given.
    pub fn new(
        name: &str,
        url: &str,
        method: IntrospectionMethod,
        authorization: Option<HeaderValue>,
        client: HttpsClient,
        options: HttpSourceOptions,
    ) -> Self {
        Self {
            url: url.to_string(),
            method,
            authorization,
            caller: Caller::new(name, client, options),
        }
    }

    /// What the endpoint says of `token` (see the module docs), at `now` (the Unix time the `exp` claim is
    /// compared with).
    pub async fn introspect_at(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<Fetched<serde_json::Value>, HttpSourceError> {
        let mut encoded = String::with_capacity(token.len() + 6);
        encoded.push_str("token=");
        percent_encode_into(&mut encoded, token);
        let target = match self.method {
            IntrospectionMethod::Post => self.url.clone(),
            IntrospectionMethod::Get => {
                let sep = if self.url.contains('?') { '&' } else { '?' };
                format!("{}{sep}{encoded}", self.url)
            }
        };
        let make = || {
            let mut b = match self.method {
                IntrospectionMethod::Post => http::Request::post(target.as_str()).header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                ),
                IntrospectionMethod::Get => http::Request::get(target.as_str()),
            };
            if let Some(a) = &self.authorization {
                b = b.header(http::header::AUTHORIZATION, a.clone());
            }
            let body = match self.method {
                IntrospectionMethod::Post => Bytes::from(encoded.clone()),
                IntrospectionMethod::Get => Bytes::new(),
            };
            b.body(Full::new(body))
        };
        // The URL in errors is the endpoint's, never the one carrying the token.
        let answer = self.caller.call(&self.url, &make).await?;
        if answer.status != http::StatusCode::OK {
            return Err(HttpSourceError::Status {
                url: self.url.clone(),
                status: answer.status,
                retry_after: None,
            });
        }
        let claims: serde_json::Value =
            serde_json::from_slice(&answer.body).map_err(|e| HttpSourceError::Body {
                url: self.url.clone(),
                why: e.to_string(),
            })?;
        let Some(active) = claims.get("active").and_then(serde_json::Value::as_bool) else {
            return Err(HttpSourceError::Body {
                url: self.url.clone(),
                why: "not an introspection answer: no boolean \"active\" member (RFC 7662 §2.2)"
                    .into(),
            });
        };
        if !active {
            return Ok(Fetched::absent());
        }
        match expires_in(&claims, now) {
            Expiry::Never => Ok(Fetched::value(claims)),
            Expiry::In(left) => Ok(Fetched::value(claims).with_ttl(left)),
            // Expired, or an `exp` that cannot be read: not trusted.
            Expiry::Past => Ok(Fetched::absent()),
        }
    }

    /// [`introspect_at`](Self::introspect_at) now.
    pub async fn introspect(
        &self,
        token: &str,
    ) -> Result<Fetched<serde_json::Value>, HttpSourceError> {
        self.introspect_at(token, SystemTime::now()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_read_as_a_numeric_date_and_anything_unreadable_is_not_trusted() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |exp: serde_json::Value| {
            expires_in(&serde_json::json!({"active": true, "exp": exp}), now)
        };
        assert_eq!(
            expires_in(&serde_json::json!({"active": true}), now),
            Expiry::Never
        );
        assert_eq!(at(1_002.into()), Expiry::In(Duration::from_secs(2)));
        assert_eq!(at(1_000.5.into()), Expiry::In(Duration::from_millis(500)));
        assert_eq!(at(1_000.into()), Expiry::Past);
        assert_eq!(at(999.into()), Expiry::Past);
        assert_eq!(
            at("1002".into()),
            Expiry::Past,
            "a string is not a NumericDate"
        );
        assert_eq!(at((-5).into()), Expiry::Past);
        assert_eq!(at(serde_json::Value::Null), Expiry::Past);
    }
}
