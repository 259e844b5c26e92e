//! May a response be stored? RFC 9111 §3 for a *shared* cache, with this tier's stricter defaults.
//!
//! A response is stored only when every rule holds, checked in this order (the first that fails is the reason,
//! which `Cache-Status` reports as its `detail`):
//! 1. the response is complete (§3.3: an incomplete response is never stored as if it were whole; partial
//!    content, 206, is not stored by this tier, which does not combine ranges);
//! 2. the request method is `GET` (§3: understood and cacheable; `HEAD` is answered from a stored `GET`, and a
//!    `POST` response is not reused for later `GET`s here);
//! 3. the status code is final and understood (not 1xx, not 206, not 304; must-understand needs a code this
//!    tier knows, §5.2.2.3);
//! 4. `no-store` is in neither the request nor the response (§5.2.1.5, §5.2.2.5) — unless the response says
//!    `must-understand` and the status is understood, where `no-store` is the fallback for caches that do not
//!    understand it (§5.2.2.3);
//! 5. the response is not `private` without field names (§5.2.2.7); `private="field"` stores the response
//!    without those fields;
//! 6. a request with `Authorization` only with `public`, `s-maxage` or `must-revalidate` in the response
//!    (§3.5), or a route that allows it;
//! 7. a response with `Set-Cookie` only with `public`, a `private`/`no-cache` naming `Set-Cookie` (the field is
//!    then dropped or revalidated), or a route that allows it — a shared cache must not hand one user's cookie
//!    to another: with `public` the response is stored *without* its `Set-Cookie` (the client whose request
//!    fetched it still gets the cookie); only a route's `store_set_cookie` stores the field itself;
//! 8. not `Vary: *` (it can never be selected, §4.1);
//! 9. the response can be reused at all: explicit freshness (`max-age`, `s-maxage`, `Expires`), `public`, a
//!    heuristic freshness (a heuristically cacheable status with `Last-Modified`, §4.2.2), or a validator
//!    (`ETag`, `Last-Modified`) to revalidate it with. A response with none of them would have to be fetched
//!    again in full every time: storing it only costs memory (§3's "contains ... a status code defined as
//!    heuristically cacheable" is not enough by itself, since there is no blanket default lifetime).
//!
//! The directives are those [`Directives::for_response`] chooses (a targeted field replaces `Cache-Control`).

use http::header::{
    HeaderMap, HeaderName, AUTHORIZATION, ETAG, EXPIRES, LAST_MODIFIED, SET_COOKIE,
};
use http::{Method, StatusCode};

use crate::directives::{Directives, FieldList};
use crate::freshness::heuristically_cacheable;
use crate::key::Vary;
use crate::policy::EdgePolicy;

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotStorable {
    /// The response was cut short (or is partial content).
    Incomplete,
    /// The method is not `GET`.
    Method,
    /// The status code is not final, not understood, or not stored by this tier.
    Status,
    /// `no-store` in the request.
    RequestNoStore,
    /// `no-store` in the response.
    ResponseNoStore,
    /// `private` without field names.
    Private,
    /// The request carried `Authorization` and the response does not allow sharing it (§3.5).
    Authorization,
    /// The response sets a cookie and nothing allows sharing it.
    SetCookie,
    /// `Vary: *`.
    VaryStar,
    /// No explicit or heuristic freshness and no validator: it could never be reused.
    NotReusable,
    /// The body is larger than the route stores.
    TooLarge,
}

impl NotStorable {
    /// Whether the reason lies in this request (its `no-store`, its `Authorization`) rather than in the response:
    /// then the answer is not stored for this request, but what is stored for everyone else stays.
    pub fn is_the_requests(&self) -> bool {
        matches!(
            self,
            NotStorable::RequestNoStore | NotStorable::Authorization
        )
    }

    /// A short name for `Cache-Status` details and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            NotStorable::Incomplete => "incomplete",
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::RequestNoStore => "request-no-store",
            NotStorable::ResponseNoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::VaryStar => "vary-star",
            NotStorable::NotReusable => "not-reusable",
            NotStorable::TooLarge => "too-large",
        }
    }
}

/// How to store a storable response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorePlan {
    /// Fields to leave out of the stored response (`private="…"`, §5.2.2.7).
    pub omit: Vec<HeaderName>,
}

/// What [`check`] reads.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request's header fields.
    pub request_headers: &'a HeaderMap,
    /// The response status.
    pub status: StatusCode,
    /// The response's header fields.
    pub response_headers: &'a HeaderMap,
    /// Whether the whole response was received.
    pub complete: bool,
}

/// Status codes this tier understands for `must-understand` (RFC 9110 §15, less 206 and 304).
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=205 | 207 | 208 | 226 | 300..=303 | 305 | 307 | 308 | 400..=418 | 421..=426 | 428
            | 429 | 431 | 451 | 500..=508 | 510 | 511
    )
}

/// Checks every rule of the module docs; `Ok` with what to leave out, or the first rule that fails.
pub fn check(ex: Exchange<'_>, policy: &EdgePolicy) -> Result<StorePlan, NotStorable> {
    let (resp, source) = Directives::for_response(ex.response_headers);
    let req = Directives::for_request(ex.request_headers);
    let status = ex.status;
    if !ex.complete || status == StatusCode::PARTIAL_CONTENT {
        return Err(NotStorable::Incomplete);
    }
    if ex.method != Method::GET {
        return Err(NotStorable::Method);
    }
    if status.is_informational()
        || status == StatusCode::NOT_MODIFIED
        || (resp.must_understand && !understood(status))
    {
        return Err(NotStorable::Status);
    }
    if req.no_store {
        return Err(NotStorable::RequestNoStore);
    }
    if resp.no_store && !(resp.must_understand && understood(status)) {
        return Err(NotStorable::ResponseNoStore);
    }
    let mut plan = StorePlan::default();
    match &resp.private {
        Some(FieldList::All) => return Err(NotStorable::Private),
        Some(FieldList::Fields(fields)) => {
            plan.omit = fields
                .iter()
                .filter_map(|f| HeaderName::from_bytes(f.as_bytes()).ok())
                .collect();
        }
        None => {}
    }
    if ex.request_headers.contains_key(AUTHORIZATION)
        && !(resp.public
            || resp.s_maxage.is_some()
            || resp.must_revalidate
            || policy.store_authorized)
    {
        return Err(NotStorable::Authorization);
    }
    if ex.response_headers.contains_key(SET_COOKIE) {
        let named = |l: &Option<FieldList>| matches!(l, Some(FieldList::Fields(f)) if f.iter().any(|n| n == "set-cookie"));
        if !(resp.public
            || named(&resp.private)
            || named(&resp.no_cache)
            || policy.store_set_cookie)
        {
            return Err(NotStorable::SetCookie);
        }
        // `public` makes the response shareable, not the cookie: it goes to the client whose request fetched
        // it and stays out of the stored copy, unless the route says cookies are shared.
        if !policy.store_set_cookie && !named(&resp.no_cache) && !plan.omit.contains(&SET_COOKIE) {
            plan.omit.push(SET_COOKIE);
        }
    }
    if Vary::from_headers(ex.response_headers) == Vary::Star {
        return Err(NotStorable::VaryStar);
    }
    let h = ex.response_headers;
    let explicit = resp.max_age.is_some()
        || resp.s_maxage.is_some()
        || (h.contains_key(EXPIRES) && source.expires_applies());
    let heuristic = policy.heuristic_per_mille > 0
        && (heuristically_cacheable(status) || resp.public)
        && h.contains_key(LAST_MODIFIED);
    let validator = h.contains_key(ETAG) || h.contains_key(LAST_MODIFIED);
    if !(explicit || resp.public || heuristic || validator) {
        return Err(NotStorable::NotReusable);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::fields as map;

    fn run(
        method: Method,
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
        policy: &EdgePolicy,
    ) -> Result<StorePlan, NotStorable> {
        check(
            Exchange {
                method: &method,
                request_headers: &map(req),
                status: StatusCode::from_u16(status).unwrap(),
                response_headers: &map(resp),
                complete: true,
            },
            policy,
        )
    }

    fn get(
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
    ) -> Result<StorePlan, NotStorable> {
        run(Method::GET, req, status, resp, &EdgePolicy::default())
    }

    const FRESH: (&str, &str) = ("cache-control", "max-age=60");

    #[test]
    fn rfc9111_3_only_get_is_stored() {
        assert!(get(&[], 200, &[FRESH]).is_ok());
        for m in [Method::HEAD, Method::POST, Method::PUT, Method::OPTIONS] {
            assert_eq!(
                run(m, &[], 200, &[FRESH], &EdgePolicy::default()),
                Err(NotStorable::Method)
            );
        }
    }

    #[test]
    fn rfc9111_3_final_understood_status_only() {
        assert_eq!(get(&[], 206, &[FRESH]), Err(NotStorable::Incomplete));
        assert_eq!(get(&[], 304, &[FRESH]), Err(NotStorable::Status));
        assert_eq!(get(&[], 100, &[FRESH]), Err(NotStorable::Status));
        // Explicit freshness makes any final status storable…
        assert!(get(&[], 302, &[FRESH]).is_ok());
        assert!(get(&[], 500, &[FRESH]).is_ok());
        assert!(get(&[], 599, &[FRESH]).is_ok());
        // …but must-understand needs a known code (§5.2.2.3).
        assert_eq!(
            get(
                &[],
                599,
                &[("cache-control", "max-age=60, must-understand, no-store")]
            ),
            Err(NotStorable::Status)
        );
    }

    #[test]
    fn rfc9111_3_3_incomplete_responses_are_never_stored() {
        let r = check(
            Exchange {
                method: &Method::GET,
                request_headers: &HeaderMap::new(),
                status: StatusCode::OK,
                response_headers: &map(&[FRESH]),
                complete: false,
            },
            &EdgePolicy::default(),
        );
        assert_eq!(r, Err(NotStorable::Incomplete));
    }

    #[test]
    fn rfc9111_5_2_no_store_in_request_or_response() {
        assert_eq!(
            get(&[("cache-control", "no-store")], 200, &[FRESH]),
            Err(NotStorable::RequestNoStore)
        );
        assert_eq!(
            get(&[], 200, &[("cache-control", "max-age=60, no-store")]),
            Err(NotStorable::ResponseNoStore)
        );
        // RFC 9213: CDN-Cache-Control: no-store beats a fresh Cache-Control, and the reverse.
        assert_eq!(
            get(&[], 200, &[FRESH, ("cdn-cache-control", "no-store")]),
            Err(NotStorable::ResponseNoStore)
        );
        assert!(get(
            &[],
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60")
            ]
        )
        .is_ok());
    }

    #[test]
    fn rfc9111_5_2_2_3_must_understand_overrides_no_store_for_understood_codes() {
        assert!(get(
            &[],
            200,
            &[("cache-control", "max-age=60, must-understand, no-store")]
        )
        .is_ok());
    }

    #[test]
    fn rfc9111_5_2_2_7_private_in_a_shared_cache() {
        assert_eq!(
            get(&[], 200, &[("cache-control", "max-age=60, private")]),
            Err(NotStorable::Private)
        );
        assert_eq!(
            get(&[], 200, &[FRESH, ("cdn-cache-control", "private")]),
            Err(NotStorable::Private)
        );
        let plan = get(
            &[],
            200,
            &[("cache-control", "max-age=60, private=\"x-user\"")],
        )
        .unwrap();
        assert_eq!(plan.omit, vec![HeaderName::from_static("x-user")]);
    }

    #[test]
    fn rfc9111_3_5_authorization_needs_public_s_maxage_or_must_revalidate() {
        let auth = [("authorization", "Bearer x")];
        assert_eq!(get(&auth, 200, &[FRESH]), Err(NotStorable::Authorization));
        for cc in [
            "max-age=60, public",
            "s-maxage=60",
            "max-age=60, must-revalidate",
        ] {
            assert!(get(&auth, 200, &[("cache-control", cc)]).is_ok(), "{cc}");
        }
        let allow = EdgePolicy::default().with_store_authorized(true);
        assert!(run(Method::GET, &auth, 200, &[FRESH], &allow).is_ok());
    }

    #[test]
    fn set_cookie_is_not_shared_unless_allowed() {
        let cookie = ("set-cookie", "session=abc");
        assert_eq!(get(&[], 200, &[FRESH, cookie]), Err(NotStorable::SetCookie));
        let public = get(&[], 200, &[("cache-control", "max-age=60, public"), cookie]).unwrap();
        assert_eq!(
            public.omit,
            vec![SET_COOKIE],
            "public shares the response, not the cookie"
        );
        let plan = get(
            &[],
            200,
            &[
                ("cache-control", "max-age=60, private=\"Set-Cookie\""),
                cookie,
            ],
        )
        .unwrap();
        assert_eq!(plan.omit, vec![SET_COOKIE]);
        assert!(get(
            &[],
            200,
            &[
                ("cache-control", "max-age=60, no-cache=\"set-cookie\""),
                cookie
            ]
        )
        .is_ok());
        let allow = EdgePolicy::default().with_store_set_cookie(true);
        assert_eq!(
            run(Method::GET, &[], 200, &[FRESH, cookie], &allow).map(|p| p.omit),
            Ok(vec![])
        );
    }

    #[test]
    fn rfc9111_4_1_vary_star_is_not_stored() {
        assert_eq!(
            get(&[], 200, &[FRESH, ("vary", "accept, *")]),
            Err(NotStorable::VaryStar)
        );
        assert!(get(&[], 200, &[FRESH, ("vary", "accept")]).is_ok());
    }

    #[test]
    fn rfc9111_3_without_freshness_or_validator_nothing_is_stored() {
        assert_eq!(get(&[], 200, &[]), Err(NotStorable::NotReusable));
        assert_eq!(
            get(&[], 200, &[("cache-control", "no-transform")]),
            Err(NotStorable::NotReusable)
        );
        // A validator is enough (revalidated on every use), and so is a heuristic or `public`.
        assert!(get(&[], 200, &[("etag", "\"v1\"")]).is_ok());
        assert!(get(
            &[],
            200,
            &[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]
        )
        .is_ok());
        assert!(get(&[], 200, &[("cache-control", "public")]).is_ok());
        assert!(get(&[], 200, &[("expires", "0")]).is_ok());
        // no-cache with a validator: stored, revalidated on every use.
        assert!(get(
            &[],
            200,
            &[("cache-control", "no-cache"), ("etag", "\"v\"")]
        )
        .is_ok());
    }
}
