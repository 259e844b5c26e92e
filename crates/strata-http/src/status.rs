//! The `Cache-Status` response field (RFC 9211): how this tier handled the request, on every response.
//!
//! The field is an RFC 8941 List; each cache appends one member, so the list reads from the origin to the
//! client (§2). This tier's member is the sf-token `Strata` with parameters (§2.1–§2.8):
//! - `hit` — answered from the cache without going to the origin (also when served stale);
//! - `fwd=` `bypass` (the cache was not used: method, `no-store`, a refused request), `method`, `uri-miss` (no
//!   stored response for the URI), `vary-miss` (stored responses, none selected by `Vary`), `miss` (stored but
//!   unusable, e.g. undecodable), `request` (the request's directives sent it forward), `stale` (stored but
//!   stale: validated or refetched);
//! - `fwd-status=` the origin's status code (sf-integer), when it went forward;
//! - `ttl=` remaining freshness in seconds (sf-integer, negative once stale);
//! - `stored` — the origin's response was stored; `collapsed` — it was shared with concurrent requests;
//! - `key=` (sf-string) the cache key, only where configured to expose it;
//! - `detail=` (sf-string) a short reason (why not stored, `stale-while-revalidate`, `stale-if-error`, …).
//!
//! Strings are escaped, characters outside printable ASCII become `?`, integers are clamped to the sf-integer
//! range, so the value always parses.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;
use std::sync::Arc;

use crate::sf::{is_token, write_integer, write_string};

/// `Cache-Status`.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why the request went forward (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fwd {
    /// The cache was configured or obliged not to be used.
    Bypass,
    /// The method is not cacheable.
    Method,
    /// Nothing stored for the URI.
    UriMiss,
    /// Stored responses for the URI, none matching `Vary`.
    VaryMiss,
    /// Stored but not usable (e.g. not decodable).
    Miss,
    /// The request's directives required the origin.
    Request,
    /// Stored but stale.
    Stale,
}

impl Fwd {
    /// The token RFC 9211 defines.
    pub fn as_str(&self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Miss => "miss",
            Fwd::Request => "request",
            Fwd::Stale => "stale",
        }
    }
}

/// One `Cache-Status` member, built with `with_*` setters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct CacheStatus {
    cache: Arc<str>,
    hit: bool,
    fwd: Option<Fwd>,
    fwd_status: Option<u16>,
    ttl: Option<i64>,
    stored: bool,
    collapsed: bool,
    key: Option<String>,
    detail: Option<Cow<'static, str>>,
}

impl CacheStatus {
    /// A member for the cache named `cache` (an sf-token such as `Strata`, else written as an sf-string).
    pub fn new(cache: impl Into<Arc<str>>) -> Self {
        Self {
            cache: cache.into(),
            hit: false,
            fwd: None,
            fwd_status: None,
            ttl: None,
            stored: false,
            collapsed: false,
            key: None,
            detail: None,
        }
    }

    /// A hit (`hit`).
    pub fn hit(mut self) -> Self {
        self.hit = true;
        self
    }

    /// Went forward (`fwd=`), with the origin's status when there was one (`fwd-status=`).
    pub fn forward(mut self, fwd: Fwd, status: Option<u16>) -> Self {
        self.fwd = Some(fwd);
        self.fwd_status = status;
        self
    }

    /// Sets `fwd-status=` (keeping `fwd=`).
    pub fn with_fwd_status(mut self, status: u16) -> Self {
        self.fwd_status = Some(status);
        self
    }

    /// Sets `ttl=`.
    pub fn with_ttl(mut self, ttl: i64) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets `stored`.
    pub fn with_stored(mut self, stored: bool) -> Self {
        self.stored = stored;
        self
    }

    /// Sets `collapsed`.
    pub fn with_collapsed(mut self, collapsed: bool) -> Self {
        self.collapsed = collapsed;
        self
    }

    /// Sets `key=`.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets `detail=`.
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Whether it is a hit.
    pub fn is_hit(&self) -> bool {
        self.hit
    }

    /// Why it went forward, if it did.
    pub fn fwd(&self) -> Option<Fwd> {
        self.fwd
    }

    /// The `detail=` reason, if any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// Whether the origin's response was stored.
    pub fn is_stored(&self) -> bool {
        self.stored
    }

    /// Whether the response was shared with concurrent requests.
    pub fn is_collapsed(&self) -> bool {
        self.collapsed
    }

    /// The member's text (`Strata; hit; ttl=12`).
    pub fn to_value(&self) -> String {
        let mut s = String::with_capacity(48);
        if is_token(&self.cache) {
            s.push_str(&self.cache);
        } else {
            write_string(&mut s, &self.cache);
        }
        if self.hit {
            s.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            s.push_str("; fwd=");
            s.push_str(fwd.as_str());
        }
        if let Some(status) = self.fwd_status {
            s.push_str("; fwd-status=");
            write_integer(&mut s, i64::from(status));
        }
        if let Some(ttl) = self.ttl {
            s.push_str("; ttl=");
            write_integer(&mut s, ttl);
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(key) = &self.key {
            s.push_str("; key=");
            write_string(&mut s, key);
        }
        if let Some(detail) = &self.detail {
            s.push_str("; detail=");
            write_string(&mut s, detail);
        }
        s
    }

    /// Appends this member to the response's `Cache-Status` (after the members of caches nearer the origin).
    pub fn append_to(&self, headers: &mut HeaderMap) {
        // The String's buffer becomes the value's bytes: no second copy.
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(self.to_value())) {
            headers.append(CACHE_STATUS.clone(), v);
        }
    }
}

impl std::fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sf::{parse_dictionary, BareItem, Item, ListEntry};
    use proptest::prelude::*;

    #[test]
    fn rfc9211_hit_with_ttl() {
        assert_eq!(
            CacheStatus::new("Strata").hit().with_ttl(120).to_value(),
            "Strata; hit; ttl=120"
        );
        assert_eq!(
            CacheStatus::new("Strata")
                .hit()
                .with_ttl(-3)
                .with_detail("stale-while-revalidate")
                .to_value(),
            "Strata; hit; ttl=-3; detail=\"stale-while-revalidate\""
        );
    }

    #[test]
    fn rfc9211_forward_with_status_stored_and_collapsed() {
        let v = CacheStatus::new("Strata")
            .forward(Fwd::UriMiss, Some(200))
            .with_stored(true)
            .with_collapsed(true)
            .to_value();
        assert_eq!(v, "Strata; fwd=uri-miss; fwd-status=200; stored; collapsed");
        let v = CacheStatus::new("Strata")
            .forward(Fwd::Bypass, Some(200))
            .with_detail("no-store")
            .to_value();
        assert_eq!(v, "Strata; fwd=bypass; fwd-status=200; detail=\"no-store\"");
    }

    #[test]
    fn rfc9211_2_members_append_after_upstream_caches() {
        let mut h = HeaderMap::new();
        h.append(
            CACHE_STATUS.clone(),
            HeaderValue::from_static("OriginCache; hit"),
        );
        CacheStatus::new("Strata")
            .forward(Fwd::Stale, Some(304))
            .append_to(&mut h);
        let all: Vec<_> = h.get_all(&CACHE_STATUS).iter().collect();
        assert_eq!(
            all,
            vec!["OriginCache; hit", "Strata; fwd=stale; fwd-status=304"]
        );
    }

    #[test]
    fn rfc8941_strings_and_non_token_names_are_escaped() {
        let v = CacheStatus::new("edge node")
            .hit()
            .with_key("http://h/\"x\"")
            .with_detail("é\\")
            .to_value();
        assert_eq!(
            v,
            "\"edge node\"; hit; key=\"http://h/\\\"x\\\"\"; detail=\"?\\\\\""
        );
    }

    proptest! {
        /// Whatever goes in, the value is a valid structured field: its parameters parse back (as a dictionary
        /// member whose key is a stand-in for the token).
        #[test]
        fn value_always_parses(detail in "\\PC{0,30}", key in "\\PC{0,30}", ttl in any::<i64>(), status in any::<u16>()) {
            let v = CacheStatus::new("Strata").forward(Fwd::VaryMiss, Some(status)).with_ttl(ttl)
                .with_key(key).with_detail(detail.clone()).to_value();
            prop_assert!(HeaderValue::from_str(&v).is_ok());
            let as_dict = format!("strata{}", &v["Strata".len()..]);
            let parsed = parse_dictionary(as_dict.as_bytes()).unwrap();
            let ListEntry::Item(Item { params, .. }) = &parsed[0].1 else { panic!("not an item") };
            let got = params.iter().find(|(k, _)| k == "detail").map(|(_, v)| v.clone());
            let want: String = detail.chars().map(|c| if (' '..='~').contains(&c) { c } else { '?' }).collect();
            prop_assert_eq!(got, Some(BareItem::String(want)));
        }
    }
}
