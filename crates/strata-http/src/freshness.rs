//! Freshness and age (RFC 9111 §4.2), the stale windows (RFC 5861, §4.2.4), and the request's constraints
//! (§5.2.1), folded into one [`Decision`]: may the stored response answer this request, and how.
//!
//! # Freshness lifetime (§4.2.1), first that applies
//! 1. `s-maxage` (a shared cache), 2. `max-age`, 3. `Expires` − `Date` — of the directives
//!    [`Directives::for_response`] chose (a targeted field replaces `Cache-Control`). An `Expires` that does not
//!    parse (`0`, garbage) is in the past (§5.3); several differing `Expires` lines are invalid freshness
//!    information, read as stale (§4.2.1). Without `Date`, the response time stands for it (RFC 9110 §6.6.1).
//! 4. Heuristic (§4.2.2) only when none of the above is present, only with a valid `Last-Modified` not after
//!    `Date`, and only for a status code that is heuristically cacheable (RFC 9110 §15.1) or a `public`
//!    response: [`EdgePolicy::heuristic_per_mille`] (10 %) of `Date` − `Last-Modified`, capped at
//!    [`EdgePolicy::heuristic_cap`] (24 h). Never a blanket default TTL: otherwise the lifetime is 0.
//!
//! # Age (§4.2.3)
//! ```text
//! apparent_age          = max(0, response_time - date_value)
//! response_delay        = response_time - request_time
//! corrected_age_value   = age_value + response_delay
//! corrected_initial_age = max(apparent_age, corrected_age_value)
//! resident_time         = now - response_time
//! current_age           = corrected_initial_age + resident_time
//! ```
//! computed in milliseconds and reported in whole seconds. `age_value` is the first member of the first `Age`
//! line (`0, 7200` and two lines `1` / `2` read as 0 and 1); a member that is not a non-negative integer (`abc`,
//! `-7200`, `7200.0`) is ignored, as §5.1 says, and the age comes from `Date` and the resident time alone.
//!
//! # The decision, in order
//! 1. Request `no-cache` (or `Pragma: no-cache`) → revalidate; response `no-cache` without field names →
//!    revalidate, fresh or not (§5.2.2.4).
//! 2. Request `max-age=N` with age > N → revalidate — except a *fresh* `immutable` response (RFC 8246: a
//!    reload asks nothing of an immutable response while it is fresh).
//! 3. Fresh: request `min-fresh=N` with less than N seconds of freshness left → revalidate; else [`Fresh`].
//! 4. Stale. Stale content is never served when the response says `must-revalidate`, `proxy-revalidate` or
//!    `no-cache` (§4.2.4). `s-maxage` implies `proxy-revalidate` (§5.2.2.10) for every permission the response
//!    does not give itself: the client's `max-stale` and the route's windows do not apply to it, while an explicit
//!    `stale-while-revalidate`/`stale-if-error` in the same response does (it would be meaningless otherwise).
//!    Then: the client's `max-stale` (any staleness without a value) → [`StaleAllowed`]; inside
//!    `stale-while-revalidate` (the response's, else the route's) → [`StaleWhileRevalidate`]; else revalidate.
//! 5. Beside the decision, [`Evaluation::stale_if_error`]: whether the response may answer if the origin fails
//!    (5xx, connection error, timeout), under the same prohibitions: `stale-if-error` of the response or the
//!    request (RFC 5861 §4), else the route's window, measured in staleness.
//!
//! [`Fresh`]: Decision::Fresh
//! [`StaleAllowed`]: Decision::StaleAllowed
//! [`StaleWhileRevalidate`]: Decision::StaleWhileRevalidate

use http::header::{HeaderMap, AGE, DATE, EXPIRES, LAST_MODIFIED};
use http::StatusCode;
use strata_core::UnixMillis;

use crate::directives::{DirectiveSource, Directives, FieldList, MaxStale, DELTA_SECONDS_MAX};
use crate::policy::EdgePolicy;

/// Status codes heuristically cacheable by default (RFC 9110 §15.1).
pub const HEURISTICALLY_CACHEABLE: &[u16] =
    &[200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Whether `status` is heuristically cacheable (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    HEURISTICALLY_CACHEABLE.contains(&status.as_u16())
}

/// Where a freshness lifetime came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeSource {
    /// `s-maxage`.
    SMaxAge,
    /// `max-age`.
    MaxAge,
    /// `Expires` − `Date` (also an invalid `Expires`: lifetime 0).
    Expires,
    /// The heuristic of §4.2.2.
    Heuristic,
    /// No explicit or heuristic freshness: lifetime 0.
    None,
    /// Soft-purged: the lifetime ended when the purge came (see [`evaluate_purged`]).
    Purged,
}

/// A freshness lifetime in seconds, with its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Seconds.
    pub secs: u64,
    /// Where it came from.
    pub source: LifetimeSource,
}

impl Lifetime {
    /// Whether the lifetime is explicit (`s-maxage`, `max-age`, `Expires`).
    pub fn is_explicit(&self) -> bool {
        matches!(
            self.source,
            LifetimeSource::SMaxAge | LifetimeSource::MaxAge | LifetimeSource::Expires
        )
    }
}

/// Parses an HTTP-date (IMF-fixdate, RFC 850, asctime; RFC 9110 §5.6.7) to Unix seconds.
pub fn parse_http_date(value: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(value).ok()?;
    let t = httpdate::parse_http_date(s.trim()).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Formats Unix milliseconds as an IMF-fixdate; instants past the year 9999 are written as its last second.
pub fn format_http_date(ms: UnixMillis) -> String {
    const LAST_SECOND_OF_9999_MS: u64 = 253_402_300_799_000;
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.min(LAST_SECOND_OF_9999_MS));
    httpdate::fmt_http_date(t)
}

/// The single value of a singleton date field; `None` when absent, invalid or given twice with different values.
fn single_date(headers: &HeaderMap, name: http::header::HeaderName) -> Option<Option<u64>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.any(|v| v != first) {
        return Some(None);
    }
    Some(parse_http_date(first.as_bytes()))
}

/// The response's `Date` in Unix seconds, if present and valid.
pub fn date_value(headers: &HeaderMap) -> Option<u64> {
    single_date(headers, DATE).flatten()
}

/// The freshness lifetime of a response (see the module docs). `source`: the field `directives` came from; when it
/// is a targeted field, `Expires` does not count (RFC 9213 §2.2).
pub fn freshness_lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    directives: &Directives,
    source: DirectiveSource,
    response_time: UnixMillis,
    policy: &EdgePolicy,
) -> Lifetime {
    let directives = (directives.clone(), source);
    Facts::with_directives(status, headers, directives, response_time, response_time)
        .lifetime(policy)
}

/// What the freshness rules read of a stored response, parsed once from its fields — when it is stored, not on
/// every hit: the directives for this tier and the field they came from, `Date`, `Expires`, `Last-Modified`, and
/// the corrected initial age (§4.2.3), so the current age is one addition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The stored status.
    pub status: StatusCode,
    /// The response's directives for this tier ([`Directives::for_response`]).
    pub directives: Directives,
    /// The field they came from.
    pub source: DirectiveSource,
    /// `Date` (Unix seconds), when present and valid.
    pub date: Option<u64>,
    /// `Expires`: absent, or present with its value (`None` when invalid or given twice with different values).
    pub expires: Option<Option<u64>>,
    /// `Last-Modified`, read like `Expires`.
    pub last_modified: Option<Option<u64>>,
    /// When the response arrived.
    pub response_time: UnixMillis,
    /// The age it had on arrival, in ms (§4.2.3's `corrected_initial_age`).
    pub corrected_initial_age_ms: u64,
}

impl Facts {
    /// The facts of a response with `headers` (see the type docs).
    pub fn parse(
        status: StatusCode,
        headers: &HeaderMap,
        request_time: UnixMillis,
        response_time: UnixMillis,
    ) -> Self {
        let directives = Directives::for_response(headers);
        Self::with_directives(status, headers, directives, request_time, response_time)
    }

    /// The facts of a response whose directives (and their field) are already known.
    pub fn with_directives(
        status: StatusCode,
        headers: &HeaderMap,
        (directives, source): (Directives, DirectiveSource),
        request_time: UnixMillis,
        response_time: UnixMillis,
    ) -> Self {
        let date = date_value(headers);
        let apparent_age = match date {
            Some(date) => response_time.saturating_sub(date.saturating_mul(1000)),
            None => 0,
        };
        let response_delay = response_time.saturating_sub(request_time);
        let corrected_age_value = age_value(headers)
            .saturating_mul(1000)
            .saturating_add(response_delay);
        Self {
            status,
            directives,
            source,
            date,
            expires: single_date(headers, EXPIRES),
            last_modified: single_date(headers, LAST_MODIFIED),
            response_time,
            corrected_initial_age_ms: apparent_age.max(corrected_age_value),
        }
    }

    /// The current age at `now`, in ms (§4.2.3: the corrected initial age plus the time resident here).
    pub fn age_ms(&self, now: UnixMillis) -> u64 {
        self.corrected_initial_age_ms
            .saturating_add(now.saturating_sub(self.response_time))
    }

    /// The freshness lifetime under `policy` (see the module docs).
    pub fn lifetime(&self, policy: &EdgePolicy) -> Lifetime {
        let directives = &self.directives;
        if let Some(secs) = directives.s_maxage {
            return Lifetime {
                secs,
                source: LifetimeSource::SMaxAge,
            };
        }
        if let Some(secs) = directives.max_age {
            return Lifetime {
                secs,
                source: LifetimeSource::MaxAge,
            };
        }
        let date = self.date.unwrap_or(self.response_time / 1000);
        if let Some(expires) = self.expires.filter(|_| self.source.expires_applies()) {
            let secs = expires.map_or(0, |e| e.saturating_sub(date).min(DELTA_SECONDS_MAX));
            return Lifetime {
                secs,
                source: LifetimeSource::Expires,
            };
        }
        if policy.heuristic_per_mille > 0
            && (heuristically_cacheable(self.status) || directives.public)
        {
            if let Some(Some(lm)) = self.last_modified {
                if lm <= date {
                    let secs = ((date - lm) as u128 * u128::from(policy.heuristic_per_mille) / 1000)
                        .min(u128::from(policy.heuristic_cap.as_secs()))
                        as u64;
                    return Lifetime {
                        secs,
                        source: LifetimeSource::Heuristic,
                    };
                }
            }
        }
        Lifetime {
            secs: 0,
            source: LifetimeSource::None,
        }
    }
}

/// The `Age` field's value (§5.1): the first member of the first field line — "a cache encountering a message with
/// a list-based Age field value SHOULD use the first member of the field value, discarding subsequent ones" — and
/// 0 when that member is not a non-negative integer ("a cache SHOULD ignore the field") or the field is absent.
/// Values past 2^31 are capped there (§1.2.2).
pub fn age_value(headers: &HeaderMap) -> u64 {
    let Some(first) = headers.get(AGE) else {
        return 0;
    };
    let member = first
        .as_bytes()
        .split(|b| *b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if member.is_empty() || !member.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    let mut n: u64 = 0;
    for b in member {
        n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
    }
    n.min(DELTA_SECONDS_MAX)
}

/// The current age in milliseconds (§4.2.3; see the module docs). `request_time` and `response_time` are
/// when the request that produced the response was sent and when the response arrived.
pub fn current_age_ms(
    headers: &HeaderMap,
    request_time: UnixMillis,
    response_time: UnixMillis,
    now: UnixMillis,
) -> u64 {
    let none = (Directives::default(), DirectiveSource::None);
    Facts::with_directives(StatusCode::OK, headers, none, request_time, response_time).age_ms(now)
}

/// Why the stored response cannot answer without the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevalidateReason {
    /// It is stale and nothing allows serving it stale.
    Stale,
    /// The request says `no-cache` (or `Pragma: no-cache`).
    RequestNoCache,
    /// The response says `no-cache` (without field names).
    ResponseNoCache,
    /// Older than the request's `max-age`.
    RequestMaxAge,
    /// Fresh for less than the request's `min-fresh`.
    RequestMinFresh,
}

impl RevalidateReason {
    /// A short name for `Cache-Status` details and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            RevalidateReason::Stale => "stale",
            RevalidateReason::RequestNoCache => "request-no-cache",
            RevalidateReason::ResponseNoCache => "response-no-cache",
            RevalidateReason::RequestMaxAge => "request-max-age",
            RevalidateReason::RequestMinFresh => "request-min-fresh",
        }
    }

    /// Whether the request's own directives caused it (RFC 9211 `fwd=request`), not staleness.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            RevalidateReason::RequestNoCache
                | RevalidateReason::RequestMaxAge
                | RevalidateReason::RequestMinFresh
        )
    }
}

/// May the stored response answer the request, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Fresh and acceptable to the request: serve it.
    Fresh,
    /// Stale, and the request's `max-stale` accepts it: serve it (no revalidation needed).
    StaleAllowed,
    /// Stale inside the stale-while-revalidate window: serve it and revalidate in the background.
    StaleWhileRevalidate,
    /// Go to the origin (conditionally, when the stored response has validators) before answering.
    Revalidate(RevalidateReason),
}

impl Decision {
    /// Whether the stored response answers without waiting for the origin.
    pub fn serves_stored(&self) -> bool {
        !matches!(self, Decision::Revalidate(_))
    }
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    /// The current age in whole seconds.
    pub age: u64,
    /// The freshness lifetime.
    pub lifetime: Lifetime,
    /// Whether the response is fresh (age < lifetime).
    pub fresh: bool,
    /// What to do.
    pub decision: Decision,
    /// Whether the response may answer if the origin fails (RFC 5861 §4).
    pub stale_if_error: bool,
}

impl Evaluation {
    /// Remaining freshness in seconds, negative once stale (RFC 9211 `ttl`).
    pub fn ttl(&self) -> i64 {
        self.lifetime.secs as i64 - self.age as i64
    }
}

/// What [`evaluate`] reads about a stored response.
#[derive(Debug, Clone, Copy)]
pub struct StoredView<'a> {
    /// The stored status.
    pub status: StatusCode,
    /// The stored header fields.
    pub headers: &'a HeaderMap,
    /// When the request that produced it was sent.
    pub request_time: UnixMillis,
    /// When it arrived.
    pub response_time: UnixMillis,
}

/// Whether stale content is forbidden outright (§4.2.4): `must-revalidate`, `proxy-revalidate`, `no-cache`.
pub fn stale_forbidden(response: &Directives) -> bool {
    response.must_revalidate
        || response.proxy_revalidate
        || response.no_cache == Some(FieldList::All)
}

/// Decides whether `stored` may answer a request with directives `request` at `now` (see the module docs).
pub fn evaluate(
    stored: StoredView<'_>,
    request: &Directives,
    now: UnixMillis,
    policy: &EdgePolicy,
) -> Evaluation {
    let facts = Facts::parse(
        stored.status,
        stored.headers,
        stored.request_time,
        stored.response_time,
    );
    evaluate_facts(&facts, request, now, policy)
}

/// [`evaluate`] on facts parsed beforehand (the hit path: nothing is parsed per request).
pub fn evaluate_facts(
    facts: &Facts,
    request: &Directives,
    now: UnixMillis,
    policy: &EdgePolicy,
) -> Evaluation {
    evaluate_with(facts, facts.lifetime(policy), request, now, policy)
}

/// [`evaluate_facts`] for a response soft-purged at `purged_at` (a purge that marks stale instead of removing,
/// see `crate::purge`): its freshness lifetime ends at the purge, so from then on it is stale — answered only
/// where a stale window (`stale-while-revalidate`, `stale-if-error`, the route's, a client's `max-stale`) allows
/// and never past `must-revalidate`/`no-cache`, with its staleness counted from the purge. `None`: not purged.
pub fn evaluate_purged(
    facts: &Facts,
    request: &Directives,
    now: UnixMillis,
    policy: &EdgePolicy,
    purged_at: Option<UnixMillis>,
) -> Evaluation {
    let mut lifetime = facts.lifetime(policy);
    if let Some(at) = purged_at {
        lifetime = Lifetime {
            secs: lifetime.secs.min(facts.age_ms(at) / 1000),
            source: LifetimeSource::Purged,
        };
    }
    evaluate_with(facts, lifetime, request, now, policy)
}

fn evaluate_with(
    facts: &Facts,
    lifetime: Lifetime,
    request: &Directives,
    now: UnixMillis,
    policy: &EdgePolicy,
) -> Evaluation {
    let response = &facts.directives;
    let age_ms = facts.age_ms(now);
    let age = age_ms / 1000;
    let fresh = age_ms < lifetime.secs.saturating_mul(1000);
    let staleness = age.saturating_sub(lifetime.secs);

    let forbidden = stale_forbidden(response);
    // s-maxage's implied proxy-revalidate: only the response's own stale directives still apply.
    let implied = response.s_maxage.is_some();
    let window = |own: Option<u64>, route: Option<std::time::Duration>| -> Option<u64> {
        if forbidden {
            None
        } else if own.is_some() || implied {
            own
        } else {
            route.map(|d| d.as_secs())
        }
    };
    let swr = window(
        response.stale_while_revalidate,
        policy.stale_while_revalidate,
    );
    // The request's `stale-if-error` (RFC 5861 §4) is a client's permission, which `s-maxage`'s implied
    // `proxy-revalidate` refuses like the client's `max-stale`: only the response's own counts then.
    let sie_own = match (response.stale_if_error, request.stale_if_error) {
        (a, _) if implied => a,
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let sie = window(sie_own, policy.stale_if_error);
    let stale_if_error = sie.is_some_and(|w| staleness <= w);

    let decision = if request.no_cache.is_some() {
        Decision::Revalidate(RevalidateReason::RequestNoCache)
    } else if response.no_cache == Some(FieldList::All) {
        Decision::Revalidate(RevalidateReason::ResponseNoCache)
    } else if request
        .max_age
        .is_some_and(|ma| age > ma && !(fresh && response.immutable))
    {
        Decision::Revalidate(RevalidateReason::RequestMaxAge)
    } else if fresh {
        let remaining = lifetime.secs.saturating_sub(age);
        if request.min_fresh.is_some_and(|mf| remaining < mf) {
            Decision::Revalidate(RevalidateReason::RequestMinFresh)
        } else {
            Decision::Fresh
        }
    } else if !forbidden
        && !implied
        && match request.max_stale {
            Some(MaxStale::Any) => true,
            Some(MaxStale::Seconds(n)) => staleness <= n,
            None => false,
        }
    {
        Decision::StaleAllowed
    } else if swr.is_some_and(|w| staleness <= w) {
        Decision::StaleWhileRevalidate
    } else {
        Decision::Revalidate(RevalidateReason::Stale)
    };
    Evaluation {
        age,
        lifetime,
        fresh,
        decision,
        stale_if_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use std::time::Duration;

    /// A fixed "now" (2023-11-14T22:13:20Z) in Unix seconds; every test works at chosen instants around it.
    const T: u64 = 1_700_000_000;

    fn headers(fields: &[(&str, String)]) -> HeaderMap {
        crate::testing::fields(fields)
    }

    fn date(secs: u64) -> String {
        format_http_date(secs * 1000)
    }

    /// Evaluates a 200 received at `T` (sent at `T`), at `T + after` seconds.
    fn eval_at(h: &HeaderMap, req: &str, after: u64, policy: &EdgePolicy) -> Evaluation {
        eval_status(StatusCode::OK, h, req, after, policy)
    }

    fn eval_status(
        status: StatusCode,
        h: &HeaderMap,
        req: &str,
        after: u64,
        policy: &EdgePolicy,
    ) -> Evaluation {
        let req_headers = if req.is_empty() {
            HeaderMap::new()
        } else {
            headers(&[("cache-control", req.to_string())])
        };
        evaluate(
            StoredView {
                status,
                headers: h,
                request_time: T * 1000,
                response_time: T * 1000,
            },
            &Directives::for_request(&req_headers),
            (T + after) * 1000,
            policy,
        )
    }

    fn d(after: u64, h: &HeaderMap, req: &str) -> Decision {
        eval_at(h, req, after, &EdgePolicy::default()).decision
    }

    const STALE: Decision = Decision::Revalidate(RevalidateReason::Stale);

    /// [`evaluate_purged`] of a 200 received at `T`, soft-purged at `T + purged`, at `T + after`.
    fn purged(h: &HeaderMap, req: &str, purged: Option<u64>, after: u64) -> Evaluation {
        let req_headers = if req.is_empty() {
            HeaderMap::new()
        } else {
            headers(&[("cache-control", req.to_string())])
        };
        let facts = Facts::parse(StatusCode::OK, h, T * 1000, T * 1000);
        evaluate_purged(
            &facts,
            &Directives::for_request(&req_headers),
            (T + after) * 1000,
            &EdgePolicy::default(),
            purged.map(|p| (T + p) * 1000),
        )
    }

    #[test]
    fn a_soft_purge_ends_freshness_and_counts_staleness_from_the_purge() {
        let h = headers(&[(
            "cache-control",
            "max-age=600, stale-while-revalidate=30, stale-if-error=300".into(),
        )]);
        assert_eq!(purged(&h, "", None, 100).decision, Decision::Fresh);
        // Purged at 100 s: stale at once, inside the 30 s window until 130 s, then revalidated.
        let e = purged(&h, "", Some(100), 100);
        assert!(!e.fresh);
        assert_eq!(e.lifetime.source, LifetimeSource::Purged);
        assert_eq!(e.decision, Decision::StaleWhileRevalidate);
        assert_eq!(
            purged(&h, "", Some(100), 129).decision,
            Decision::StaleWhileRevalidate
        );
        let late = purged(&h, "", Some(100), 131);
        assert_eq!(late.decision, STALE);
        assert!(late.stale_if_error, "still inside stale-if-error=300");
        assert!(!purged(&h, "", Some(100), 401).stale_if_error);
        // A response already stale at the purge keeps its own staleness.
        let short = headers(&[("cache-control", "max-age=10".into())]);
        assert_eq!(purged(&short, "", Some(100), 100).lifetime.secs, 10);
    }

    #[test]
    fn a_soft_purge_never_serves_past_must_revalidate_or_without_a_window() {
        for cc in [
            "max-age=600, stale-while-revalidate=30, must-revalidate",
            "max-age=600, stale-while-revalidate=30, proxy-revalidate",
            "max-age=600",
        ] {
            let h = headers(&[("cache-control", cc.into())]);
            let e = purged(&h, "", Some(100), 100);
            assert_eq!(e.decision, STALE, "{cc}");
            assert!(!e.stale_if_error, "{cc}");
        }
        // A client's max-stale is a stale window too.
        let h = headers(&[("cache-control", "max-age=600".into())]);
        assert_eq!(
            purged(&h, "max-stale=60", Some(100), 120).decision,
            Decision::StaleAllowed
        );
    }

    #[test]
    fn rfc9111_4_2_1_s_maxage_over_max_age_over_expires() {
        let h = headers(&[
            ("date", date(T)),
            ("cache-control", "max-age=100, s-maxage=10".into()),
            ("expires", date(T + 1000)),
        ]);
        assert_eq!(d(9, &h, ""), Decision::Fresh);
        assert_eq!(d(11, &h, ""), STALE);
        let h = headers(&[
            ("date", date(T)),
            ("cache-control", "max-age=100".into()),
            ("expires", date(T + 10)),
        ]);
        assert_eq!(d(50, &h, ""), Decision::Fresh);
        let h = headers(&[("date", date(T)), ("expires", date(T + 10))]);
        assert_eq!(d(9, &h, ""), Decision::Fresh);
        assert_eq!(d(10, &h, ""), STALE);
    }

    #[test]
    fn rfc9111_4_2_1_expires_minus_date_not_minus_now() {
        // The origin's clock is an hour behind: Expires - Date is still 100 s of freshness.
        let h = headers(&[("date", date(T - 3600)), ("expires", date(T - 3500))]);
        let e = eval_at(&h, "", 0, &EdgePolicy::default());
        assert_eq!(e.lifetime.secs, 100);
        // …but the apparent age (§4.2.3) is an hour, so it is stale on arrival.
        assert!(!e.fresh);
    }

    #[test]
    fn rfc9111_5_3_invalid_expires_is_in_the_past() {
        for bad in ["0", "-1", "tomorrow", ""] {
            let h = headers(&[("date", date(T)), ("expires", bad.into())]);
            let e = eval_at(&h, "", 0, &EdgePolicy::default());
            assert_eq!((e.lifetime.secs, e.fresh), (0, false), "{bad:?}");
        }
        // max-age still wins over an invalid Expires.
        let h = headers(&[
            ("cache-control", "max-age=60".into()),
            ("expires", "0".into()),
        ]);
        assert!(eval_at(&h, "", 0, &EdgePolicy::default()).fresh);
    }

    #[test]
    fn rfc9111_4_2_1_differing_expires_lines_are_stale() {
        let h = headers(&[
            ("date", date(T)),
            ("expires", date(T + 100)),
            ("expires", date(T + 200)),
        ]);
        assert!(!eval_at(&h, "", 0, &EdgePolicy::default()).fresh);
        let h = headers(&[
            ("date", date(T)),
            ("expires", date(T + 100)),
            ("expires", date(T + 100)),
        ]);
        assert!(eval_at(&h, "", 0, &EdgePolicy::default()).fresh);
    }

    #[test]
    fn rfc9110_5_6_7_obsolete_date_formats_are_read() {
        assert_eq!(
            parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(
            parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(
            parse_http_date(b"Sun Nov  6 08:49:37 1994"),
            Some(784111777)
        );
        assert_eq!(parse_http_date(b"yesterday"), None);
    }

    #[test]
    fn rfc9111_4_2_2_heuristic_only_with_last_modified() {
        let policy = EdgePolicy::default();
        let h = headers(&[("date", date(T)), ("last-modified", date(T - 1000))]);
        let e = eval_at(&h, "", 0, &policy);
        assert_eq!(
            e.lifetime,
            Lifetime {
                secs: 100,
                source: LifetimeSource::Heuristic
            }
        );
        assert_eq!(d(99, &h, ""), Decision::Fresh);
        assert_eq!(d(100, &h, ""), STALE);
        // No Last-Modified: no blanket default, lifetime 0.
        let h = headers(&[("date", date(T))]);
        let e = eval_at(&h, "", 0, &policy);
        assert_eq!(
            (e.lifetime.secs, e.lifetime.source),
            (0, LifetimeSource::None)
        );
        // Not heuristically cacheable (RFC 9110 §15.1): no heuristic…
        let h = headers(&[("date", date(T)), ("last-modified", date(T - 1000))]);
        let e = eval_status(StatusCode::FOUND, &h, "", 0, &policy);
        assert_eq!(e.lifetime.secs, 0);
        // …unless public.
        let h = headers(&[
            ("date", date(T)),
            ("last-modified", date(T - 1000)),
            ("cache-control", "public".into()),
        ]);
        assert_eq!(
            eval_status(StatusCode::FOUND, &h, "", 0, &policy)
                .lifetime
                .secs,
            100
        );
        // A Last-Modified after Date gives nothing.
        let h = headers(&[("date", date(T)), ("last-modified", date(T + 10))]);
        assert_eq!(eval_at(&h, "", 0, &policy).lifetime.secs, 0);
    }

    #[test]
    fn rfc9111_4_2_2_heuristic_is_capped_and_never_beside_explicit_freshness() {
        let h = headers(&[("date", date(T)), ("last-modified", date(T - 100 * 86400))]);
        assert_eq!(
            eval_at(&h, "", 0, &EdgePolicy::default()).lifetime.secs,
            86400
        );
        let policy = EdgePolicy::default().with_heuristic_cap(Duration::from_secs(60));
        assert_eq!(eval_at(&h, "", 0, &policy).lifetime.secs, 60);
        let off = EdgePolicy::default().with_heuristic_per_mille(0);
        assert_eq!(eval_at(&h, "", 0, &off).lifetime.secs, 0);
        let h = headers(&[
            ("date", date(T)),
            ("last-modified", date(T - 100 * 86400)),
            ("cache-control", "max-age=5".into()),
        ]);
        assert_eq!(
            eval_at(&h, "", 0, &EdgePolicy::default()).lifetime.source,
            LifetimeSource::MaxAge
        );
    }

    #[test]
    fn rfc9111_4_2_3_age_counts_upstream_age_delay_and_residence() {
        let h = headers(&[("date", date(T)), ("age", "30".into())]);
        // Sent at T-2, received at T, evaluated at T+5: 30 + 2 + 5.
        assert_eq!(
            current_age_ms(&h, (T - 2) * 1000, T * 1000, (T + 5) * 1000),
            37_000
        );
        // apparent_age wins when the Date is older than Age says.
        let h = headers(&[("date", date(T - 100)), ("age", "30".into())]);
        assert_eq!(current_age_ms(&h, T * 1000, T * 1000, T * 1000), 100_000);
        // A Date in the future (clock skew) gives no negative age.
        let h = headers(&[("date", date(T + 100))]);
        assert_eq!(current_age_ms(&h, T * 1000, T * 1000, (T + 1) * 1000), 1000);
        // No Date, no Age: resident time only.
        assert_eq!(
            current_age_ms(&HeaderMap::new(), T * 1000, T * 1000, (T + 3) * 1000),
            3000
        );
    }

    #[test]
    fn rfc9111_4_2_3_upstream_age_makes_a_response_stale() {
        let h = headers(&[
            ("date", date(T)),
            ("cache-control", "max-age=3600".into()),
            ("age", "7200".into()),
        ]);
        assert_eq!(d(0, &h, ""), STALE);
        let h = headers(&[
            ("date", date(T)),
            ("cdn-cache-control", "max-age=3600".into()),
            ("age", "7200".into()),
        ]);
        assert_eq!(d(0, &h, ""), STALE);
    }

    #[test]
    fn rfc9213_2_2_a_targeted_field_makes_expires_not_count() {
        let expires = date(T + 3600);
        let h = headers(&[
            ("date", date(T)),
            ("expires", expires.clone()),
            ("cdn-cache-control", "public".into()),
        ]);
        assert_eq!(d(0, &h, ""), STALE);
        let h = headers(&[("date", date(T)), ("expires", expires)]);
        assert_eq!(d(0, &h, ""), Decision::Fresh);
    }

    #[test]
    fn rfc9111_5_1_age_uses_the_first_member_and_ignores_an_invalid_one() {
        let fresh_for_an_hour = |age: &[&str]| {
            let mut h = headers(&[("date", date(T)), ("cache-control", "max-age=3600".into())]);
            for a in age {
                h.append(AGE, a.parse().unwrap());
            }
            d(0, &h, "")
        };
        // Invalid: ignored, so the response is as old as Date says (0 s here) and fresh.
        for bad in ["abc", "-7200", "7200.0", "old, 7200", ""] {
            assert_eq!(fresh_for_an_hour(&[bad]), Decision::Fresh, "{bad:?}");
        }
        // A list, or two lines: the first member counts.
        assert_eq!(fresh_for_an_hour(&["0, 7200"]), Decision::Fresh);
        assert_eq!(fresh_for_an_hour(&["7200, 0"]), STALE);
        assert_eq!(fresh_for_an_hour(&["1", "7200"]), Decision::Fresh);
        assert_eq!(fresh_for_an_hour(&["7200", "1"]), STALE);
        // Valid but huge: capped at 2^31, stale.
        assert_eq!(fresh_for_an_hour(&["99999999999999"]), STALE);
    }

    #[test]
    fn rfc9111_5_2_1_4_request_no_cache_and_pragma_revalidate() {
        let h = headers(&[("cache-control", "max-age=3600".into())]);
        assert_eq!(
            d(0, &h, "no-cache"),
            Decision::Revalidate(RevalidateReason::RequestNoCache)
        );
        let req = headers(&[("pragma", "no-cache".into())]);
        let e = evaluate(
            StoredView {
                status: StatusCode::OK,
                headers: &h,
                request_time: T * 1000,
                response_time: T * 1000,
            },
            &Directives::for_request(&req),
            T * 1000,
            &EdgePolicy::default(),
        );
        assert_eq!(
            e.decision,
            Decision::Revalidate(RevalidateReason::RequestNoCache)
        );
    }

    #[test]
    fn rfc9111_5_2_1_1_request_max_age() {
        let h = headers(&[("cache-control", "max-age=3600".into())]);
        assert_eq!(d(10, &h, "max-age=10"), Decision::Fresh);
        assert_eq!(
            d(11, &h, "max-age=10"),
            Decision::Revalidate(RevalidateReason::RequestMaxAge)
        );
        assert_eq!(
            d(1, &h, "max-age=0"),
            Decision::Revalidate(RevalidateReason::RequestMaxAge)
        );
        // RFC 8246: a fresh immutable response satisfies a reload.
        let h = headers(&[("cache-control", "max-age=3600, immutable".into())]);
        assert_eq!(d(100, &h, "max-age=0"), Decision::Fresh);
        assert_eq!(
            d(100, &h, "no-cache"),
            Decision::Revalidate(RevalidateReason::RequestNoCache)
        );
        assert_eq!(
            d(4000, &h, "max-age=0"),
            Decision::Revalidate(RevalidateReason::RequestMaxAge)
        );
    }

    #[test]
    fn rfc9111_5_2_1_3_request_min_fresh() {
        let h = headers(&[("cache-control", "max-age=100".into())]);
        assert_eq!(d(50, &h, "min-fresh=50"), Decision::Fresh);
        assert_eq!(
            d(51, &h, "min-fresh=50"),
            Decision::Revalidate(RevalidateReason::RequestMinFresh)
        );
    }

    #[test]
    fn rfc9111_5_2_1_2_request_max_stale_with_and_without_value() {
        let h = headers(&[("cache-control", "max-age=10".into())]);
        assert_eq!(d(15, &h, "max-stale=5"), Decision::StaleAllowed);
        assert_eq!(d(16, &h, "max-stale=5"), STALE);
        assert_eq!(d(1_000_000, &h, "max-stale"), Decision::StaleAllowed);
        // …but not past must-revalidate, proxy-revalidate, no-cache or s-maxage.
        for cc in [
            "max-age=10, must-revalidate",
            "max-age=10, proxy-revalidate",
            "s-maxage=10",
        ] {
            let h = headers(&[("cache-control", cc.into())]);
            assert_eq!(d(15, &h, "max-stale"), STALE, "{cc}");
        }
    }

    #[test]
    fn rfc9111_5_2_2_4_response_no_cache_always_revalidates() {
        let h = headers(&[("cache-control", "max-age=3600, no-cache".into())]);
        assert_eq!(
            d(0, &h, ""),
            Decision::Revalidate(RevalidateReason::ResponseNoCache)
        );
        assert_eq!(
            d(0, &h, "max-stale"),
            Decision::Revalidate(RevalidateReason::ResponseNoCache)
        );
        // With field names it applies to those fields only.
        let h = headers(&[(
            "cache-control",
            "max-age=3600, no-cache=\"set-cookie\"".into(),
        )]);
        assert_eq!(d(0, &h, ""), Decision::Fresh);
        // CDN-Cache-Control: no-cache beats Cache-Control's max-age.
        let h = headers(&[
            ("cache-control", "max-age=3600".into()),
            ("cdn-cache-control", "no-cache".into()),
        ]);
        assert_eq!(
            d(0, &h, ""),
            Decision::Revalidate(RevalidateReason::ResponseNoCache)
        );
    }

    #[test]
    fn rfc5861_3_stale_while_revalidate_window() {
        let h = headers(&[(
            "cache-control",
            "max-age=10, stale-while-revalidate=20".into(),
        )]);
        assert_eq!(d(5, &h, ""), Decision::Fresh);
        assert_eq!(d(30, &h, ""), Decision::StaleWhileRevalidate);
        assert_eq!(d(31, &h, ""), STALE);
        // The request's constraints come first.
        assert_eq!(
            d(15, &h, "no-cache"),
            Decision::Revalidate(RevalidateReason::RequestNoCache)
        );
        assert_eq!(
            d(15, &h, "max-age=12"),
            Decision::Revalidate(RevalidateReason::RequestMaxAge)
        );
    }

    #[test]
    fn rfc9111_4_2_4_stale_while_revalidate_never_past_revalidation_directives() {
        for cc in [
            "max-age=10, stale-while-revalidate=20, must-revalidate",
            "max-age=10, stale-while-revalidate=20, proxy-revalidate",
            "max-age=10, stale-while-revalidate=20, no-cache",
        ] {
            let h = headers(&[("cache-control", cc.into())]);
            let e = eval_at(
                &h,
                "",
                15,
                &EdgePolicy::default().with_stale_if_error(Duration::from_secs(100)),
            );
            assert!(matches!(e.decision, Decision::Revalidate(_)), "{cc}");
            assert!(!e.stale_if_error, "{cc}");
        }
    }

    #[test]
    fn rfc9111_5_2_2_10_s_maxage_keeps_its_own_stale_directives_only() {
        let policy = EdgePolicy::default()
            .with_stale_while_revalidate(Duration::from_secs(100))
            .with_stale_if_error(Duration::from_secs(100));
        let h = headers(&[("cache-control", "s-maxage=10".into())]);
        let e = eval_at(&h, "", 15, &policy);
        assert_eq!((e.decision, e.stale_if_error), (STALE, false));
        // Nor does the client's own stale-if-error (RFC 5861 §4) pass the implied proxy-revalidate.
        let e = eval_at(&h, "stale-if-error=100", 15, &policy);
        assert_eq!((e.decision, e.stale_if_error), (STALE, false));
        let h = headers(&[(
            "cache-control",
            "s-maxage=10, stale-while-revalidate=20, stale-if-error=30".into(),
        )]);
        let e = eval_at(&h, "", 15, &policy);
        assert_eq!(
            (e.decision, e.stale_if_error),
            (Decision::StaleWhileRevalidate, true)
        );
    }

    #[test]
    fn route_policy_windows_apply_only_where_no_directive_forbids() {
        let policy = EdgePolicy::default()
            .with_stale_while_revalidate(Duration::from_secs(30))
            .with_stale_if_error(Duration::from_secs(60));
        let h = headers(&[("cache-control", "max-age=10".into())]);
        let e = eval_at(&h, "", 20, &policy);
        assert_eq!(
            (e.decision, e.stale_if_error),
            (Decision::StaleWhileRevalidate, true)
        );
        let e = eval_at(&h, "", 65, &policy);
        assert_eq!((e.decision, e.stale_if_error), (STALE, true));
        let e = eval_at(&h, "", 71, &policy);
        assert!(!e.stale_if_error);
        // Without the route's window nothing is served stale.
        let e = eval_at(&h, "", 11, &EdgePolicy::default());
        assert_eq!((e.decision, e.stale_if_error), (STALE, false));
    }

    #[test]
    fn rfc5861_4_stale_if_error_from_response_or_request() {
        let h = headers(&[("cache-control", "max-age=10, stale-if-error=60".into())]);
        assert!(eval_at(&h, "", 70, &EdgePolicy::default()).stale_if_error);
        assert!(!eval_at(&h, "", 71, &EdgePolicy::default()).stale_if_error);
        let h = headers(&[("cache-control", "max-age=10".into())]);
        assert!(eval_at(&h, "stale-if-error=100", 50, &EdgePolicy::default()).stale_if_error);
        assert!(!eval_at(&h, "", 50, &EdgePolicy::default()).stale_if_error);
    }

    #[test]
    fn ttl_is_negative_once_stale() {
        let h = headers(&[("cache-control", "max-age=10".into())]);
        assert_eq!(eval_at(&h, "", 4, &EdgePolicy::default()).ttl(), 6);
        assert_eq!(eval_at(&h, "", 14, &EdgePolicy::default()).ttl(), -4);
    }

    proptest! {
        #[test]
        fn age_never_panics_and_never_decreases(age in "\\PC{0,12}", date in "\\PC{0,40}", a in 0u64..u64::MAX / 4, b in 0u64..1_000_000u64) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&age) { h.insert(AGE, v); }
            if let Ok(v) = HeaderValue::from_str(&date) { h.insert(DATE, v); }
            let x = current_age_ms(&h, a, a, a);
            let y = current_age_ms(&h, a, a, a.saturating_add(b));
            prop_assert!(y >= x);
            let _ = freshness_lifetime(StatusCode::OK, &h, &Directives::default(), DirectiveSource::None, a, &EdgePolicy::default());
        }

        /// Model check of §4.2.4: whatever the directives, the request and the route, a response carrying
        /// must-revalidate, proxy-revalidate or no-cache is never served stale, not even on error.
        #[test]
        fn stale_is_never_served_past_revalidation_directives(
            forbid in prop_oneof![Just("must-revalidate"), Just("proxy-revalidate"), Just("no-cache")],
            max_age in 0u64..100, swr in proptest::option::of(0u64..1000), sie in proptest::option::of(0u64..1000),
            req in prop_oneof![Just(""), Just("max-stale"), Just("max-stale=500"), Just("stale-if-error=900"), Just("min-fresh=1")],
            route_swr in proptest::option::of(0u64..1000), after in 0u64..2000,
        ) {
            let mut cc = format!("max-age={max_age}, {forbid}");
            if let Some(w) = swr { cc.push_str(&format!(", stale-while-revalidate={w}")); }
            if let Some(w) = sie { cc.push_str(&format!(", stale-if-error={w}")); }
            let mut policy = EdgePolicy::default();
            if let Some(w) = route_swr {
                policy = policy.with_stale_while_revalidate(Duration::from_secs(w)).with_stale_if_error(Duration::from_secs(w));
            }
            let h = headers(&[("cache-control", cc)]);
            let e = eval_at(&h, req, after, &policy);
            if !e.fresh || forbid == "no-cache" {
                prop_assert!(matches!(e.decision, Decision::Revalidate(_)), "{:?}", e);
            }
            prop_assert!(!e.stale_if_error);
        }

        #[test]
        fn fresh_means_age_below_lifetime(max_age in 0u64..100_000, after in 0u64..200_000) {
            let h = headers(&[("cache-control", format!("max-age={max_age}"))]);
            let e = eval_at(&h, "", after, &EdgePolicy::default());
            prop_assert_eq!(e.fresh, after < max_age);
            prop_assert_eq!(e.decision == Decision::Fresh, after < max_age);
        }
    }
}
