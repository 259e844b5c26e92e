//! Conditional requests both ways: a client's conditionals answered from a stored response (RFC 9111 §4.3.2,
//! RFC 9110 §13), validation requests to the origin built from the stored validators (§4.3.1), and a 304's
//! selection and header update of the stored response (§4.3.3, §4.3.4, §3.2).
//!
//! # The client's conditionals (RFC 9110 §13.2.2 order)
//! - `If-Match`, `If-Unmodified-Since`: preconditions meant for the origin (§4.3.2): the request is forwarded.
//! - `If-None-Match` (when present `If-Modified-Since` is ignored): for `GET`/`HEAD`, weak comparison
//!   (RFC 9110 §8.8.3.2) against the stored `ETag`; `*` matches any stored representation. A match is 304.
//! - `If-Modified-Since` (only `GET`/`HEAD`, only a valid HTTP-date): compared with the stored `Last-Modified`,
//!   else the stored `Date`, else the time the response was received (§4.3.2). Not modified since → 304.
//! - Conditionals are evaluated only where the stored status is 2xx (RFC 9110 §13.2.1); otherwise the stored
//!   response is sent as it is. A `Range`/`If-Range` is not honoured (a full response is always allowed).
//!
//! A 304 carries the fields RFC 9110 §15.4.5 lists — `Cache-Control`, `Content-Location`, `Date`, `ETag`,
//! `Expires`, `Vary` — and `Last-Modified` and the targeted cache fields, which guide downstream caches' updates.
//!
//! # Validation (§4.3.1)
//! The cache sends the stored `ETag` in `If-None-Match` and the stored `Last-Modified` in `If-Modified-Since`
//! (both when both exist), replacing the client's own conditionals: the client's are evaluated by the cache
//! against the validated response afterwards.
//!
//! # A 304 from the origin (§4.3.4)
//! It selects the stored response when: its strong `ETag` equals the stored strong `ETag`; else its weak
//! `ETag` weakly equals the stored one; else its `Last-Modified` equals the stored one; else (no validator at
//! all) when the stored response has none either — or when the 304 answers the validation request this cache
//! made for that one stored response with that response's validators (the origin can only mean it). A 304
//! that selects nothing updates nothing: the request is repeated without conditionals.
//!
//! The update (§3.2) replaces every stored field the 304 carries with the 304's values (all lines of that
//! name) and adds the new ones, except hop-by-hop and `Connection`-listed fields and `Content-Length` (the body
//! is the stored one). The body and status stay. `Date` and `Age` describe the 304 and the times move to the
//! 304's exchange: the 304's `Age` replaces the stored one or, absent, the stored one goes; the 304's first valid
//! `Date` replaces the stored one, and a 304 without one dates the response at its arrival — so the freshened
//! response's age starts over.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, DATE,
    ETAG, EXPIRES, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
    LAST_MODIFIED, VARY,
};
use http::Method;
use strata_core::UnixMillis;

use crate::directives::{split_list, CDN_CACHE_CONTROL, STRATA_CACHE_CONTROL};
use crate::freshness::{date_value, format_http_date, parse_http_date};
use crate::headers::{connection_listed, is_hop_by_hop};
use crate::stored::StoredResponse;

/// An entity tag (RFC 9110 §8.8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag {
    /// `W/` prefix.
    pub weak: bool,
    /// The opaque tag, quotes included.
    pub opaque: String,
}

impl EntityTag {
    /// Parses `"x"` or `W/"x"`; `None` when it is not an entity tag.
    pub fn parse(v: &[u8]) -> Option<Self> {
        let (weak, rest) = match v.strip_prefix(b"W/") {
            Some(rest) => (true, rest),
            None => (false, v),
        };
        let ok = rest.len() >= 2
            && rest[0] == b'"'
            && rest[rest.len() - 1] == b'"'
            && rest[1..rest.len() - 1]
                .iter()
                .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80);
        ok.then(|| EntityTag {
            weak,
            opaque: String::from_utf8_lossy(rest).into_owned(),
        })
    }

    /// Strong comparison: both strong and the same opaque tag.
    pub fn strong_eq(&self, other: &EntityTag) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison: the same opaque tag, weak or not.
    pub fn weak_eq(&self, other: &EntityTag) -> bool {
        self.opaque == other.opaque
    }
}

/// The stored or received `ETag` (a single, valid one).
pub fn etag(headers: &HeaderMap) -> Option<EntityTag> {
    let mut all = headers.get_all(ETAG).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None;
    }
    EntityTag::parse(first.as_bytes())
}

/// An `If-None-Match` / `If-Match` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagList {
    /// `*`.
    Any,
    /// The listed tags (invalid members skipped).
    Tags(Vec<EntityTag>),
}

/// Parses every line of `name` as a tag list; `None` when absent.
pub fn tag_list(headers: &HeaderMap, name: &HeaderName) -> Option<TagList> {
    let mut seen = false;
    let mut tags = Vec::new();
    for v in headers.get_all(name) {
        seen = true;
        for part in split_list(v.as_bytes()) {
            if part == b"*" {
                return Some(TagList::Any);
            }
            if let Some(t) = EntityTag::parse(part) {
                tags.push(t);
            }
        }
    }
    seen.then_some(TagList::Tags(tags))
}

/// What a client's conditionals make of a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientConditional {
    /// No conditional applies: send the stored response.
    Unconditional,
    /// The condition is false: send 304 Not Modified.
    NotModified,
    /// The condition is true: send the stored response.
    Modified,
    /// A precondition for the origin (`If-Match`, `If-Unmodified-Since`): forward the request.
    Forward,
}

/// Evaluates a client's conditionals against a stored response (see the module docs).
pub fn evaluate_client(
    method: &Method,
    request: &HeaderMap,
    stored: &StoredResponse,
) -> ClientConditional {
    if request.contains_key(IF_MATCH) || request.contains_key(IF_UNMODIFIED_SINCE) {
        return ClientConditional::Forward;
    }
    let safe = method == Method::GET || method == Method::HEAD;
    if !safe || !stored.status.is_success() {
        return ClientConditional::Unconditional;
    }
    if let Some(list) = tag_list(request, &IF_NONE_MATCH) {
        let matched = match list {
            TagList::Any => true,
            TagList::Tags(tags) => {
                etag(&stored.headers).is_some_and(|e| tags.iter().any(|t| t.weak_eq(&e)))
            }
        };
        return if matched {
            ClientConditional::NotModified
        } else {
            ClientConditional::Modified
        };
    }
    let mut ims = request.get_all(IF_MODIFIED_SINCE).iter();
    if let (Some(v), None) = (ims.next(), ims.next()) {
        if let Some(since) = parse_http_date(v.as_bytes()) {
            let modified = stored
                .headers
                .get(LAST_MODIFIED)
                .and_then(|v| parse_http_date(v.as_bytes()))
                .or_else(|| date_value(&stored.headers))
                .unwrap_or(stored.response_time / 1000);
            return if modified <= since {
                ClientConditional::NotModified
            } else {
                ClientConditional::Modified
            };
        }
    }
    ClientConditional::Unconditional
}

/// The fields a 304 made from a stored response carries (RFC 9110 §15.4.5; see the module docs).
pub fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let keep = [
        &CACHE_CONTROL,
        &CONTENT_LOCATION,
        &DATE,
        &ETAG,
        &EXPIRES,
        &VARY,
        &LAST_MODIFIED,
        &CDN_CACHE_CONTROL,
        &STRATA_CACHE_CONTROL,
    ];
    let mut out = HeaderMap::new();
    for name in keep {
        for v in stored.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// Rewrites a request's header fields into a validation request for `stored` (§4.3.1). Returns whether it
/// carries a validator (without one, the request is a plain fetch).
pub fn prepare_validation(request: &mut HeaderMap, stored: &HeaderMap) -> bool {
    for name in [
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_MATCH,
        IF_UNMODIFIED_SINCE,
        IF_RANGE,
    ] {
        request.remove(name);
    }
    let mut any = false;
    if let Some(tag) = etag(stored) {
        if let Ok(v) = HeaderValue::from_str(&tag_text(&tag)) {
            request.insert(IF_NONE_MATCH, v);
            any = true;
        }
    }
    if let Some(lm) = stored.get(LAST_MODIFIED) {
        if parse_http_date(lm.as_bytes()).is_some() {
            request.insert(IF_MODIFIED_SINCE, lm.clone());
            any = true;
        }
    }
    any
}

fn tag_text(t: &EntityTag) -> String {
    if t.weak {
        format!("W/{}", t.opaque)
    } else {
        t.opaque.clone()
    }
}

/// Whether a 304's fields select the stored response for update (§4.3.4; see the module docs).
/// `validated_this` says the 304 answers a validation request this cache made for this stored response.
pub fn selects(stored: &HeaderMap, not_modified: &HeaderMap, validated_this: bool) -> bool {
    let new_tag = etag(not_modified);
    let old_tag = etag(stored);
    if let Some(new) = &new_tag {
        return match &old_tag {
            Some(old) if !new.weak => new.strong_eq(old),
            Some(old) => new.weak_eq(old),
            None => false,
        };
    }
    if let Some(new_lm) = not_modified.get(LAST_MODIFIED) {
        let new_lm = parse_http_date(new_lm.as_bytes());
        let old_lm = stored
            .get(LAST_MODIFIED)
            .and_then(|v| parse_http_date(v.as_bytes()));
        return new_lm.is_some() && new_lm == old_lm;
    }
    let stored_has_validator = old_tag.is_some() || stored.contains_key(LAST_MODIFIED);
    validated_this || !stored_has_validator
}

/// The stored response freshened by a 304 received at `response_time` for a request sent at
/// `request_time` (§3.2, §4.3.4; see the module docs).
pub fn update_from_304(
    stored: &StoredResponse,
    not_modified: &HeaderMap,
    request_time: UnixMillis,
    response_time: UnixMillis,
) -> StoredResponse {
    let listed = connection_listed(not_modified);
    let mut headers = stored.headers.clone();
    headers.remove(AGE);
    headers.remove(DATE);
    let mut replaced: Vec<&HeaderName> = Vec::new();
    for (name, value) in not_modified {
        // Date is taken below: one valid value.
        if is_hop_by_hop(name) || listed.contains(name) || name == CONTENT_LENGTH || name == DATE {
            continue;
        }
        if !replaced.contains(&name) {
            headers.remove(name);
            replaced.push(name);
        }
        headers.append(name.clone(), value.clone());
    }
    let date = not_modified
        .get_all(DATE)
        .iter()
        .find(|v| parse_http_date(v.as_bytes()).is_some())
        .cloned()
        .or_else(|| HeaderValue::from_str(&format_http_date(response_time)).ok());
    if let Some(date) = date {
        headers.insert(DATE, date);
    }
    StoredResponse::from_parts(
        stored.status,
        headers,
        stored.body.clone(),
        request_time,
        response_time,
        stored.vary.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directives::Directives;
    use crate::freshness::{evaluate, Decision};
    use crate::key::VaryValues;
    use crate::policy::EdgePolicy;
    use crate::storable::StorePlan;
    use bytes::Bytes;
    use http::StatusCode;
    use proptest::prelude::*;

    const T: u64 = 1_700_000_000;

    use crate::testing::fields as map;

    fn date(secs: u64) -> String {
        format_http_date(secs * 1000)
    }

    fn stored(fields: &[(&str, &str)]) -> StoredResponse {
        stored_status(200, fields)
    }

    fn stored_status(status: u16, fields: &[(&str, &str)]) -> StoredResponse {
        StoredResponse::new(
            StatusCode::from_u16(status).unwrap(),
            map(fields),
            Bytes::from_static(b"body"),
            T * 1000,
            T * 1000,
            VaryValues::default(),
            &StorePlan::default(),
        )
    }

    fn client(req: &[(&str, &str)], s: &StoredResponse) -> ClientConditional {
        evaluate_client(&Method::GET, &map(req), s)
    }

    #[test]
    fn rfc9110_13_1_2_if_none_match_uses_weak_comparison() {
        let s = stored(&[("etag", "W/\"v1\"")]);
        assert_eq!(
            client(&[("if-none-match", "\"v1\"")], &s),
            ClientConditional::NotModified
        );
        assert_eq!(
            client(&[("if-none-match", "\"v0\", W/\"v1\"")], &s),
            ClientConditional::NotModified
        );
        assert_eq!(
            client(&[("if-none-match", "\"v2\"")], &s),
            ClientConditional::Modified
        );
        assert_eq!(
            client(&[("if-none-match", "*")], &s),
            ClientConditional::NotModified
        );
        let no_tag = stored(&[]);
        assert_eq!(
            client(&[("if-none-match", "\"v1\"")], &no_tag),
            ClientConditional::Modified
        );
        assert_eq!(
            client(&[("if-none-match", "*")], &no_tag),
            ClientConditional::NotModified
        );
    }

    #[test]
    fn rfc9110_13_2_2_if_none_match_takes_precedence_over_if_modified_since() {
        let s = stored(&[("etag", "\"v1\""), ("last-modified", &date(T - 100))]);
        // IMS alone would say "not modified"; the non-matching If-None-Match wins.
        let req = [
            ("if-none-match", "\"v2\""),
            ("if-modified-since", &date(T) as &str),
        ];
        assert_eq!(client(&req, &s), ClientConditional::Modified);
    }

    #[test]
    fn rfc9111_4_3_2_if_modified_since_against_last_modified_then_date() {
        let s = stored(&[("last-modified", &date(T - 100)), ("date", &date(T))]);
        assert_eq!(
            client(&[("if-modified-since", &date(T - 100))], &s),
            ClientConditional::NotModified
        );
        assert_eq!(
            client(&[("if-modified-since", &date(T - 101))], &s),
            ClientConditional::Modified
        );
        let s = stored(&[("date", &date(T))]);
        assert_eq!(
            client(&[("if-modified-since", &date(T))], &s),
            ClientConditional::NotModified
        );
        assert_eq!(
            client(&[("if-modified-since", &date(T - 1))], &s),
            ClientConditional::Modified
        );
        // An invalid date, or two of them, is ignored.
        assert_eq!(
            client(&[("if-modified-since", "yesterday")], &s),
            ClientConditional::Unconditional
        );
        let two = [
            ("if-modified-since", &date(T) as &str),
            ("if-modified-since", &date(T)),
        ];
        assert_eq!(client(&two, &s), ClientConditional::Unconditional);
    }

    #[test]
    fn rfc9110_13_2_1_conditionals_only_for_2xx_and_safe_methods() {
        let s = stored_status(404, &[("etag", "\"v1\"")]);
        assert_eq!(
            client(&[("if-none-match", "\"v1\"")], &s),
            ClientConditional::Unconditional
        );
        let s = stored(&[("etag", "\"v1\"")]);
        assert_eq!(
            evaluate_client(&Method::POST, &map(&[("if-none-match", "\"v1\"")]), &s),
            ClientConditional::Unconditional
        );
        assert_eq!(
            evaluate_client(&Method::HEAD, &map(&[("if-none-match", "\"v1\"")]), &s),
            ClientConditional::NotModified
        );
    }

    #[test]
    fn rfc9111_4_3_2_origin_preconditions_are_forwarded() {
        let s = stored(&[("etag", "\"v1\"")]);
        assert_eq!(
            client(&[("if-match", "\"v1\"")], &s),
            ClientConditional::Forward
        );
        assert_eq!(
            client(&[("if-unmodified-since", &date(T))], &s),
            ClientConditional::Forward
        );
    }

    #[test]
    fn rfc9110_15_4_5_not_modified_fields() {
        let s = stored(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
            ("content-length", "4"),
            ("vary", "accept"),
            ("x-custom", "1"),
        ]);
        let h = not_modified_headers(&s.headers);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["cache-control", "date", "etag", "vary"]);
    }

    #[test]
    fn rfc9111_4_3_1_validation_request_carries_stored_validators() {
        let s = stored(&[("etag", "\"v1\""), ("last-modified", &date(T - 100))]);
        let mut req = map(&[
            ("if-none-match", "\"client\""),
            ("if-match", "\"x\""),
            ("accept", "*/*"),
        ]);
        assert!(prepare_validation(&mut req, &s.headers));
        assert_eq!(req[IF_NONE_MATCH], "\"v1\"");
        assert_eq!(req[IF_MODIFIED_SINCE], date(T - 100).as_str());
        assert!(!req.contains_key(IF_MATCH));
        assert_eq!(req["accept"], "*/*");
        let mut req = map(&[("if-none-match", "\"client\"")]);
        assert!(!prepare_validation(&mut req, &stored(&[]).headers));
        assert!(req.is_empty());
    }

    #[test]
    fn rfc9111_4_3_4_selection_by_strong_weak_and_date_validators() {
        let strong = map(&[("etag", "\"v1\"")]);
        let weak = map(&[("etag", "W/\"v1\"")]);
        assert!(selects(&strong, &map(&[("etag", "\"v1\"")]), false));
        assert!(
            !selects(&weak, &map(&[("etag", "\"v1\"")]), true),
            "a strong 304 tag needs a strong stored tag"
        );
        assert!(selects(&weak, &map(&[("etag", "W/\"v1\"")]), false));
        assert!(selects(&strong, &map(&[("etag", "W/\"v1\"")]), false));
        assert!(!selects(&strong, &map(&[("etag", "\"v2\"")]), true));
        let lm = map(&[("last-modified", &date(T))]);
        assert!(selects(&lm, &map(&[("last-modified", &date(T))]), false));
        assert!(!selects(
            &lm,
            &map(&[("last-modified", &date(T + 1))]),
            true
        ));
        // No validator in the 304: only a stored response without validators, or the one this cache validated.
        assert!(selects(&map::<&str>(&[]), &map::<&str>(&[]), false));
        assert!(!selects(&strong, &map::<&str>(&[]), false));
        assert!(selects(&strong, &map::<&str>(&[]), true));
    }

    #[test]
    fn rfc9111_3_2_a_304_replaces_and_adds_fields_but_keeps_the_body() {
        let s = stored(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=1"),
            ("content-type", "text/plain"),
            ("content-length", "4"),
            ("set-cookie", "a=b"),
            ("set-cookie", "c=d"),
            ("x-kept", "1"),
            ("age", "50"),
            ("date", &date(T)),
        ]);
        let nm = map(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=3600"),
            ("content-type", "text/plain;charset=utf-8"),
            ("content-length", "0"),
            ("set-cookie", "a=c"),
            ("x-new", "2"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("date", &date(T + 100)),
        ]);
        let u = update_from_304(&s, &nm, (T + 99) * 1000, (T + 100) * 1000);
        assert_eq!(u.body, s.body);
        assert_eq!(u.status, s.status);
        assert_eq!(u.headers["cache-control"], "max-age=3600");
        assert_eq!(u.headers["content-type"], "text/plain;charset=utf-8");
        assert_eq!(u.headers["content-length"], "4");
        let cookies: Vec<_> = u.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, vec!["a=c"]);
        assert_eq!(u.headers["x-kept"], "1");
        assert_eq!(u.headers["x-new"], "2");
        for gone in ["x-hop", "connection", "keep-alive", "age"] {
            assert!(!u.headers.contains_key(gone), "{gone}");
        }
        assert_eq!(u.headers["date"], date(T + 100).as_str());
        assert_eq!(
            (u.request_time, u.response_time),
            ((T + 99) * 1000, (T + 100) * 1000)
        );
    }

    #[test]
    fn rfc9111_4_3_4_a_304_freshens_the_stored_response() {
        let s = stored(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=1"),
            ("date", &date(T)),
            ("age", "5"),
        ]);
        let req = Directives::default();
        let policy = EdgePolicy::default();
        assert!(!evaluate(s.view(), &req, (T + 10) * 1000, &policy).fresh);
        // A 304 without Date or Age, an hour later, with a new lifetime: fresh from its arrival.
        let nm = map(&[("etag", "\"v1\""), ("cache-control", "max-age=60")]);
        let at = T + 3600;
        let u = update_from_304(&s, &nm, at * 1000, at * 1000);
        let e = evaluate(u.view(), &req, (at + 30) * 1000, &policy);
        assert_eq!((e.decision, e.age), (Decision::Fresh, 30));
        // The 304's own Age counts.
        let nm = map(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=60"),
            ("age", "50"),
        ]);
        let u = update_from_304(&s, &nm, at * 1000, at * 1000);
        assert!(!evaluate(u.view(), &req, (at + 11) * 1000, &policy).fresh);
    }

    proptest! {
        #[test]
        fn etag_and_tag_lists_never_panic(v in "\\PC{0,30}", b in proptest::collection::vec(any::<u8>(), 0..30)) {
            let _ = EntityTag::parse(v.as_bytes());
            let _ = EntityTag::parse(&b);
            if let Ok(value) = HeaderValue::from_bytes(&b) {
                let mut h = HeaderMap::new();
                h.insert(IF_NONE_MATCH, value);
                let _ = tag_list(&h, &IF_NONE_MATCH);
            }
        }

        /// Whatever a 304 carries, the update keeps the body, the status and the stored Content-Length, and
        /// never stores a hop-by-hop field.
        #[test]
        fn updates_keep_body_status_and_length(fields in proptest::collection::vec(
            (prop_oneof![Just("content-length"), Just("connection"), Just("keep-alive"), Just("x-a"), Just("etag"),
                         Just("cache-control"), Just("transfer-encoding"), Just("date"), Just("age")], "[ -~]{0,12}"), 0..10)) {
            let s = stored(&[("content-length", "4"), ("x-a", "old")]);
            let mut nm = HeaderMap::new();
            for (n, v) in &fields {
                nm.append(HeaderName::from_static(n), HeaderValue::from_str(v.trim()).unwrap());
            }
            let u = update_from_304(&s, &nm, T * 1000, T * 1000);
            prop_assert_eq!(&u.body, &s.body);
            prop_assert_eq!(u.status, s.status);
            prop_assert_eq!(u.headers.get_all("content-length").iter().collect::<Vec<_>>(), vec!["4"]);
            for hop in ["connection", "keep-alive", "transfer-encoding"] {
                prop_assert!(!u.headers.contains_key(hop));
            }
            prop_assert_eq!(u.headers.get_all(DATE).iter().count(), 1);
        }

        #[test]
        fn entity_tags_round_trip(weak in any::<bool>(), opaque in "[!#-~]{0,12}") {
            let text = format!("{}\"{opaque}\"", if weak { "W/" } else { "" });
            let t = EntityTag::parse(text.as_bytes()).unwrap();
            prop_assert_eq!(tag_text(&t), text);
        }
    }
}
