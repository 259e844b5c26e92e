//! Cache directives: `Cache-Control` (RFC 9111 §5.2), the targeted fields `CDN-Cache-Control` (RFC 9213) and
//! `Strata-Cache-Control`, and the request's `Pragma: no-cache` (§5.4).
//!
//! # `Cache-Control`
//! - The field is a list (`#cache-directive`): every field line is read and the lines are combined in order.
//!   A directive is `token [ "=" ( token / quoted-string ) ]`; names compare case-insensitively (§5.2). Commas and
//!   directive names inside a quoted string are part of that string, never directives of their own.
//! - An element that is not that syntax (`max-age =5`, `max-age= 5`, `=5`, a stray quote) is ignored as a whole:
//!   it is no directive at all, so `max-age =5` gives no freshness.
//! - The quoted form of an argument is accepted where the token form is defined (§5.2: a sender MUST NOT
//!   generate it, but a recipient can read it): `max-age="5"` is `max-age=5`.
//! - `delta-seconds` (§1.2.2) is `1*DIGIT`; a value larger than 2^31 is taken as 2^31. Anything else
//!   (`max-age=abc`, `max-age=-1`, `max-age='5'`, `max-age` without a value) is invalid freshness information,
//!   which §4.2.1 encourages to be treated as stale: it reads as `0`. For every directive that is the most
//!   restrictive reading (no freshness, no stale window, no extra staleness), except `min-fresh`, where 0 asks for
//!   nothing.
//! - Duplicates (§4.2.1): of a directive with a value, the *first* occurrence is used; of the field-name forms of
//!   `no-cache` and `private` the lists are joined, and the unqualified form wins over a qualified one, since
//!   when directives conflict the most restrictive is honoured. Conflicts between different directives
//!   (`max-age` with `no-cache`) are left to the rules that read them, which all honour the restrictive one.
//!
//! # Targeted fields (RFC 9213)
//! `Strata-Cache-Control` (targeted at this tier only) and `CDN-Cache-Control` (at every CDN) are Structured
//! Field Dictionaries (RFC 8941 §3.2, parsed strictly by [`crate::sf`]). For this tier the precedence is
//! `Strata-Cache-Control` > `CDN-Cache-Control` > `Surrogate-Control` > `Cache-Control`: the first of them that is
//! present and valid is the response's directives, and the others are ignored *entirely* (so `Cache-Control:
//! no-store` with
//! `CDN-Cache-Control: max-age=60` is stored for 60 s). A targeted field that is present but empty, fails to
//! parse, or carries a known directive with a wrong type (`max-age="60"`, `no-store=5`) is ignored as if absent
//! (RFC 9213 §2.1). When a targeted field is chosen, `Expires` does not count either (RFC 9213 §2.2).
//!
//! `Surrogate-Control` (W3C Edge Architecture 1.0, what Fastly and Akamai read) sits between the targeted fields
//! and `Cache-Control`: it has `Cache-Control`'s syntax, and it is chosen when it carries `max-age` or `no-store`.
//!
//! # Requests
//! Requests only use `Cache-Control`. `Pragma: no-cache` counts as `Cache-Control: no-cache` when the request has
//! no `Cache-Control` field (§5.4).

use http::header::{HeaderMap, HeaderName, CACHE_CONTROL, PRAGMA};

use crate::sf::{self, BareItem, Item, ListEntry};

/// `Surrogate-Control`: the W3C Edge Architecture's field for surrogates (reverse proxies and CDNs).
pub static SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// `Strata-Cache-Control`: cache directives targeted at this tier only (RFC 9213 §2).
pub static STRATA_CACHE_CONTROL: HeaderName = HeaderName::from_static("strata-cache-control");
/// `CDN-Cache-Control` (RFC 9213 §3): cache directives targeted at every CDN cache.
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// The greatest delta-seconds value (RFC 9111 §1.2.2): larger values are taken as this.
pub const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// The argument of `no-cache` or `private`: unqualified, or a list of field names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldList {
    /// The directive without field names: it applies to the whole response.
    All,
    /// The directive with field names (lower-cased): it applies to those fields only.
    Fields(Vec<String>),
}

impl FieldList {
    fn merge(&mut self, other: FieldList) {
        match (&mut *self, other) {
            (FieldList::All, _) => {}
            (_, FieldList::All) => *self = FieldList::All,
            (FieldList::Fields(a), FieldList::Fields(b)) => {
                for f in b {
                    if !a.contains(&f) {
                        a.push(f);
                    }
                }
            }
        }
    }

    /// Whether it names `field` (always, for [`FieldList::All`]).
    pub fn covers(&self, field: &str) -> bool {
        match self {
            FieldList::All => true,
            FieldList::Fields(f) => f.iter().any(|n| n.eq_ignore_ascii_case(field)),
        }
    }
}

/// The argument of a request's `max-stale` (RFC 9111 §5.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxStale {
    /// Without a value: a stale response of any staleness is acceptable.
    Any,
    /// At most this many seconds stale.
    Seconds(u64),
}

/// Which field the directives were taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DirectiveSource {
    /// `Strata-Cache-Control`.
    Strata,
    /// `CDN-Cache-Control`.
    Cdn,
    /// `Surrogate-Control` (W3C Edge Architecture 1.0).
    Surrogate,
    /// `Cache-Control`.
    CacheControl,
    /// No field carried directives.
    None,
}

impl DirectiveSource {
    /// Whether `Expires` counts: not when a targeted field was chosen, which "MUST ignore" `Cache-Control` and
    /// `Expires` alike (RFC 9213 §2.2).
    pub fn expires_applies(self) -> bool {
        matches!(self, DirectiveSource::CacheControl | DirectiveSource::None)
    }

    /// A short name for logs and `Cache-Status` details.
    pub fn as_str(&self) -> &'static str {
        match self {
            DirectiveSource::Strata => "strata-cache-control",
            DirectiveSource::Cdn => "cdn-cache-control",
            DirectiveSource::Surrogate => "surrogate-control",
            DirectiveSource::CacheControl => "cache-control",
            DirectiveSource::None => "none",
        }
    }
}

/// Parsed cache directives of a request or a response. Request and response directives share the type; each
/// reader looks only at the ones defined for its side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `max-age` (§5.2.1.1, §5.2.2.1), in seconds; invalid values read as 0.
    pub max_age: Option<u64>,
    /// `s-maxage` (§5.2.2.10), in seconds; invalid values read as 0.
    pub s_maxage: Option<u64>,
    /// `max-stale` (§5.2.1.2, requests).
    pub max_stale: Option<MaxStale>,
    /// `min-fresh` (§5.2.1.3, requests).
    pub min_fresh: Option<u64>,
    /// `no-cache` (§5.2.1.4, §5.2.2.4).
    pub no_cache: Option<FieldList>,
    /// `no-store` (§5.2.1.5, §5.2.2.5).
    pub no_store: bool,
    /// `no-transform` (§5.2.1.6, §5.2.2.6).
    pub no_transform: bool,
    /// `only-if-cached` (§5.2.1.7, requests).
    pub only_if_cached: bool,
    /// `must-revalidate` (§5.2.2.2).
    pub must_revalidate: bool,
    /// `must-understand` (§5.2.2.3).
    pub must_understand: bool,
    /// `private` (§5.2.2.7).
    pub private: Option<FieldList>,
    /// `proxy-revalidate` (§5.2.2.8).
    pub proxy_revalidate: bool,
    /// `public` (§5.2.2.9).
    pub public: bool,
    /// `immutable` (RFC 8246).
    pub immutable: bool,
    /// `stale-while-revalidate` (RFC 5861 §3), in seconds.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` (RFC 5861 §4, request and response), in seconds.
    pub stale_if_error: Option<u64>,
}

impl Directives {
    /// Whether no directive was found.
    pub fn is_empty(&self) -> bool {
        self == &Directives::default()
    }

    /// Parses every `Cache-Control` line of `headers` (see the module docs for malformed input).
    pub fn from_cache_control(headers: &HeaderMap) -> Self {
        let mut d = Directives::default();
        let mut seen: Vec<String> = Vec::new();
        for line in headers.get_all(CACHE_CONTROL) {
            for (name, value) in parse_cache_control_line(line.as_bytes()) {
                d.apply_cc(&name, value, &mut seen);
            }
        }
        d
    }

    /// Parses one `Cache-Control` value (for tests and tools; headers go through
    /// [`from_cache_control`](Self::from_cache_control)).
    pub fn parse_cache_control(value: &str) -> Self {
        let mut d = Directives::default();
        let mut seen = Vec::new();
        for (name, v) in parse_cache_control_line(value.as_bytes()) {
            d.apply_cc(&name, v, &mut seen);
        }
        d
    }

    /// A request's directives: `Cache-Control`, or `Pragma: no-cache` when there is no `Cache-Control` (§5.4).
    pub fn for_request(headers: &HeaderMap) -> Self {
        if headers.contains_key(CACHE_CONTROL) {
            return Self::from_cache_control(headers);
        }
        let mut d = Directives::default();
        let pragma_no_cache = headers.get_all(PRAGMA).iter().any(|v| {
            parse_cache_control_line(v.as_bytes())
                .iter()
                .any(|(n, _)| n == "no-cache")
        });
        if pragma_no_cache {
            d.no_cache = Some(FieldList::All);
        }
        d
    }

    /// A response's directives for this tier, with the field they came from: the first present and valid of
    /// `Strata-Cache-Control`, `CDN-Cache-Control`, `Cache-Control` (RFC 9213 precedence; see the module docs).
    pub fn for_response(headers: &HeaderMap) -> (Self, DirectiveSource) {
        for (name, source) in [
            (&STRATA_CACHE_CONTROL, DirectiveSource::Strata),
            (&CDN_CACHE_CONTROL, DirectiveSource::Cdn),
        ] {
            if headers.contains_key(name) {
                if let Some(d) = Self::from_targeted(headers, name) {
                    return (d, source);
                }
            }
        }
        if let Some(d) = Self::from_surrogate_control(headers) {
            return (d, DirectiveSource::Surrogate);
        }
        if headers.contains_key(CACHE_CONTROL) {
            (
                Self::from_cache_control(headers),
                DirectiveSource::CacheControl,
            )
        } else {
            (Directives::default(), DirectiveSource::None)
        }
    }

    /// `Surrogate-Control` (W3C Edge Architecture 1.0 §3), read with `Cache-Control`'s syntax, when it carries a
    /// caching directive (`max-age` or `no-store`; one that only announces `content="ESI/1.0"` says nothing of
    /// caching and leaves `Cache-Control` in charge).
    pub fn from_surrogate_control(headers: &HeaderMap) -> Option<Self> {
        let mut d = Directives::default();
        let mut seen: Vec<String> = Vec::new();
        for line in headers.get_all(&SURROGATE_CONTROL) {
            for (name, value) in parse_cache_control_line(line.as_bytes()) {
                d.apply_cc(&name, value, &mut seen);
            }
        }
        (d.max_age.is_some() || d.no_store).then_some(d)
    }

    /// Parses a targeted field (RFC 9213) as a Structured Field Dictionary; `None` when it is absent, empty,
    /// not a valid dictionary, or a known directive has the wrong type — the field is then to be ignored.
    pub fn from_targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut joined = Vec::new();
        for (i, line) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(line.as_bytes());
        }
        Self::parse_targeted(&joined)
    }

    /// [`from_targeted`](Self::from_targeted) over one field value.
    pub fn parse_targeted(value: &[u8]) -> Option<Self> {
        let dict = sf::parse_dictionary(value).ok()?;
        if dict.is_empty() {
            return None;
        }
        let mut d = Directives::default();
        for (key, entry) in dict {
            d.apply_targeted(&key, &entry)?;
        }
        Some(d)
    }

    fn apply_cc(&mut self, name: &str, value: Option<String>, seen: &mut Vec<String>) {
        // Field-list directives merge; every other directive keeps its first occurrence (§4.2.1).
        let list = || match &value {
            None => FieldList::All,
            Some(v) => FieldList::Fields(field_names(v)),
        };
        match name {
            "no-cache" => merge_list(&mut self.no_cache, list()),
            "private" => merge_list(&mut self.private, list()),
            _ => {
                if seen.iter().any(|s| s == name) {
                    return;
                }
                seen.push(name.to_string());
                let secs = || value.as_deref().map(delta_seconds).unwrap_or(0);
                match name {
                    "max-age" => self.max_age = Some(secs()),
                    "s-maxage" => self.s_maxage = Some(secs()),
                    "min-fresh" => self.min_fresh = Some(secs()),
                    "max-stale" => {
                        self.max_stale = Some(match &value {
                            None => MaxStale::Any,
                            Some(v) => MaxStale::Seconds(delta_seconds(v)),
                        })
                    }
                    "stale-while-revalidate" => self.stale_while_revalidate = Some(secs()),
                    "stale-if-error" => self.stale_if_error = Some(secs()),
                    "no-store" => self.no_store = true,
                    "no-transform" => self.no_transform = true,
                    "only-if-cached" => self.only_if_cached = true,
                    "must-revalidate" => self.must_revalidate = true,
                    "must-understand" => self.must_understand = true,
                    "proxy-revalidate" => self.proxy_revalidate = true,
                    "public" => self.public = true,
                    "immutable" => self.immutable = true,
                    _ => {}
                }
            }
        }
    }

    /// Applies one dictionary member of a targeted field; `None` when a known directive has the wrong type.
    fn apply_targeted(&mut self, key: &str, entry: &ListEntry) -> Option<()> {
        let int = || match entry {
            ListEntry::Item(Item {
                bare: BareItem::Integer(n),
                ..
            }) if *n >= 0 => Some((*n as u64).min(DELTA_SECONDS_MAX)),
            _ => None,
        };
        // A boolean directive: `?1` (the bare key) sets it, `?0` leaves it off.
        let flag = || match entry {
            ListEntry::Item(Item {
                bare: BareItem::Boolean(b),
                ..
            }) => Some(*b),
            _ => None,
        };
        let list = || -> Option<Option<FieldList>> {
            match entry {
                ListEntry::Item(Item {
                    bare: BareItem::Boolean(b),
                    ..
                }) => Some(b.then_some(FieldList::All)),
                ListEntry::Item(Item {
                    bare: BareItem::String(s),
                    ..
                }) => Some(Some(FieldList::Fields(field_names(s)))),
                ListEntry::InnerList(items, _) => {
                    let mut names = Vec::new();
                    for it in items {
                        match &it.bare {
                            BareItem::String(s) | BareItem::Token(s) => {
                                names.push(s.to_ascii_lowercase())
                            }
                            _ => return None,
                        }
                    }
                    Some(Some(FieldList::Fields(names)))
                }
                _ => None,
            }
        };
        match key {
            "max-age" => self.max_age = Some(int()?),
            "s-maxage" => self.s_maxage = Some(int()?),
            "stale-while-revalidate" => self.stale_while_revalidate = Some(int()?),
            "stale-if-error" => self.stale_if_error = Some(int()?),
            "no-cache" => self.no_cache = list()?,
            "private" => self.private = list()?,
            "no-store" => self.no_store = flag()?,
            "no-transform" => self.no_transform = flag()?,
            "must-revalidate" => self.must_revalidate = flag()?,
            "must-understand" => self.must_understand = flag()?,
            "proxy-revalidate" => self.proxy_revalidate = flag()?,
            "public" => self.public = flag()?,
            "immutable" => self.immutable = flag()?,
            _ => {}
        }
        Some(())
    }
}

fn merge_list(slot: &mut Option<FieldList>, list: FieldList) {
    match slot {
        Some(existing) => existing.merge(list),
        None => *slot = Some(list),
    }
}

/// A delta-seconds value (§1.2.2): digits only, capped at 2^31; anything else reads as 0 (stale).
fn delta_seconds(v: &str) -> u64 {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let mut n: u64 = 0;
    for b in v.bytes() {
        n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
        if n > DELTA_SECONDS_MAX {
            return DELTA_SECONDS_MAX;
        }
    }
    n
}

/// The field names of a qualified `no-cache`/`private` argument, lower-cased.
fn field_names(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// RFC 9110 §5.6.2 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits one `Cache-Control` line into `(lower-cased name, unquoted value)` pairs, dropping malformed elements.
fn parse_cache_control_line(line: &[u8]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for element in split_list(line) {
        if let Some(d) = parse_directive(element) {
            out.push(d);
        }
    }
    out
}

/// Splits a list field value at commas outside quoted strings; elements are trimmed of OWS.
pub(crate) fn split_list(line: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, &b) in line.iter().enumerate() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = false;
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == b',' {
            parts.push(trim_ows(&line[start..i]));
            start = i + 1;
        }
    }
    parts.push(trim_ows(&line[start..]));
    parts.retain(|p| !p.is_empty());
    parts
}

pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_directive(element: &[u8]) -> Option<(String, Option<String>)> {
    let (name, value) = match element.iter().position(|&b| b == b'=') {
        Some(i) => (&element[..i], Some(&element[i + 1..])),
        None => (element, None),
    };
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    let value = match value {
        None => None,
        Some(v) if v.first() == Some(&b'"') => Some(unquote(v)?),
        Some(v) if !v.is_empty() && v.iter().all(|&b| is_tchar(b)) => {
            Some(String::from_utf8_lossy(v).into_owned())
        }
        Some(_) => return None,
    };
    Some((name, value))
}

/// The content of a quoted-string (RFC 9110 §5.6.4) that spans all of `v`; `None` if it is not one.
pub(crate) fn unquote(v: &[u8]) -> Option<String> {
    let inner = v.strip_prefix(b"\"")?;
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        match inner[i] {
            b'\\' => {
                let next = *inner.get(i + 1)?;
                out.push(next);
                i += 2;
            }
            b'"' => {
                return (i + 1 == inner.len()).then(|| String::from_utf8_lossy(&out).into_owned());
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cc(v: &str) -> Directives {
        Directives::parse_cache_control(v)
    }

    use crate::testing::fields as response;

    #[test]
    fn surrogate_control_overrides_cache_control_when_it_speaks_of_caching() {
        let h = response(&[
            ("cache-control", "max-age=10000"),
            ("surrogate-control", "no-store"),
        ]);
        let (d, src) = Directives::for_response(&h);
        assert!(d.no_store);
        assert_eq!(src, DirectiveSource::Surrogate);
        let h = response(&[
            ("cache-control", "max-age=10000"),
            ("surrogate-control", "content=\"ESI/1.0\""),
        ]);
        let (d, src) = Directives::for_response(&h);
        assert_eq!(
            (d.max_age, src),
            (Some(10000), DirectiveSource::CacheControl)
        );
        let h = response(&[
            ("cdn-cache-control", "max-age=5"),
            ("surrogate-control", "max-age=7"),
        ]);
        assert_eq!(Directives::for_response(&h).0.max_age, Some(5));
    }

    #[test]
    fn rfc9111_5_2_directive_names_are_case_insensitive_and_values_unquoted() {
        let d = cc("Max-Age=60, PUBLIC, s-maxage=\"30\"");
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.s_maxage, Some(30));
        assert!(d.public);
    }

    #[test]
    fn rfc9111_5_2_a_directive_inside_a_quoted_string_is_not_a_directive() {
        let d = cc("extension=\"max-age=100, no-store\", max-age=1");
        assert_eq!(d.max_age, Some(1));
        assert!(!d.no_store);
        let d = cc("max-age=1, extension=\"max-age=100\"");
        assert_eq!(d.max_age, Some(1));
    }

    #[test]
    fn rfc9111_4_2_1_duplicate_directive_uses_the_first_occurrence() {
        assert_eq!(cc("max-age=1800, max-age=1").max_age, Some(1800));
        let mut h = response(&[
            ("cache-control", "max-age=1"),
            ("cache-control", "max-age=99"),
        ]);
        assert_eq!(Directives::from_cache_control(&h).max_age, Some(1));
        h.clear();
        assert!(Directives::from_cache_control(&h).is_empty());
    }

    #[test]
    fn rfc9111_4_2_1_invalid_delta_seconds_is_stale() {
        for v in [
            "max-age=abc",
            "max-age=-1",
            "max-age='3600'",
            "max-age",
            "max-age=1.5",
        ] {
            assert_eq!(cc(v).max_age, Some(0), "{v}");
        }
    }

    #[test]
    fn rfc9111_1_2_2_delta_seconds_overflow_is_capped_at_2_pow_31() {
        assert_eq!(cc("max-age=99999999999999999999999").max_age, Some(1 << 31));
        assert_eq!(cc("max-age=2147483648").max_age, Some(1 << 31));
        assert_eq!(cc("max-age=2147483647").max_age, Some((1 << 31) - 1));
    }

    #[test]
    fn rfc9111_5_2_malformed_elements_are_ignored() {
        assert_eq!(cc("max-age =100").max_age, None);
        assert_eq!(cc("max-age= 100").max_age, None);
        assert_eq!(cc("=100, no-store").max_age, None);
        assert!(cc("=100, no-store").no_store);
        assert_eq!(cc(",,, max-age=5 ,").max_age, Some(5));
        assert_eq!(cc("max-age=\"5").max_age, None);
    }

    #[test]
    fn rfc9111_5_2_2_4_no_cache_with_and_without_field_names() {
        assert_eq!(cc("no-cache").no_cache, Some(FieldList::All));
        assert_eq!(
            cc("no-cache=\"Set-Cookie, X-Foo\"").no_cache,
            Some(FieldList::Fields(vec!["set-cookie".into(), "x-foo".into()]))
        );
        // Conflicts: the unqualified (most restrictive) form wins, in either order.
        assert_eq!(
            cc("no-cache=\"a\", no-cache").no_cache,
            Some(FieldList::All)
        );
        assert_eq!(
            cc("no-cache, no-cache=\"a\"").no_cache,
            Some(FieldList::All)
        );
        assert_eq!(
            cc("private=\"a\", private=\"b\"").private,
            Some(FieldList::Fields(vec!["a".into(), "b".into()]))
        );
    }

    #[test]
    fn rfc9111_5_2_1_request_directives() {
        let d = cc("max-age=5, min-fresh=10, max-stale, only-if-cached, no-store");
        assert_eq!(d.max_age, Some(5));
        assert_eq!(d.min_fresh, Some(10));
        assert_eq!(d.max_stale, Some(MaxStale::Any));
        assert!(d.only_if_cached && d.no_store);
        assert_eq!(cc("max-stale=30").max_stale, Some(MaxStale::Seconds(30)));
        assert_eq!(cc("max-stale=x").max_stale, Some(MaxStale::Seconds(0)));
    }

    #[test]
    fn rfc9111_5_4_pragma_no_cache_only_without_cache_control() {
        let h = response(&[("pragma", "no-cache")]);
        assert_eq!(Directives::for_request(&h).no_cache, Some(FieldList::All));
        let h = response(&[("pragma", "no-cache"), ("cache-control", "max-age=10")]);
        let d = Directives::for_request(&h);
        assert_eq!((d.no_cache, d.max_age), (None, Some(10)));
        let h = response(&[("pragma", "foo")]);
        assert!(Directives::for_request(&h).is_empty());
    }

    #[test]
    fn rfc5861_stale_directives() {
        let d = cc("max-age=1, stale-while-revalidate=30, stale-if-error=600");
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert_eq!(d.stale_if_error, Some(600));
    }

    #[test]
    fn rfc9213_targeted_field_overrides_cache_control_entirely() {
        let h = response(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=600"),
        ]);
        let (d, src) = Directives::for_response(&h);
        assert_eq!(src, DirectiveSource::Cdn);
        assert_eq!(d.max_age, Some(600));
        assert!(!d.no_store);
    }

    #[test]
    fn rfc9213_strata_cache_control_beats_cdn_cache_control() {
        let h = response(&[
            ("cache-control", "max-age=1"),
            ("cdn-cache-control", "max-age=60"),
            (
                "strata-cache-control",
                "max-age=5, stale-while-revalidate=10",
            ),
        ]);
        let (d, src) = Directives::for_response(&h);
        assert_eq!(src, DirectiveSource::Strata);
        assert_eq!((d.max_age, d.stale_while_revalidate), (Some(5), Some(10)));
    }

    #[test]
    fn rfc9213_2_1_invalid_targeted_field_is_ignored_entirely() {
        for bad in [
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age =100",
            "max-age= 100",
            "MaX-aGe=3600",
            "no-store=5",
            "max-age=-5",
            "",
        ] {
            let h = response(&[("cdn-cache-control", bad), ("cache-control", "no-store")]);
            let (d, src) = Directives::for_response(&h);
            assert_eq!(src, DirectiveSource::CacheControl, "{bad:?}");
            assert!(d.no_store, "{bad:?}");
        }
        // An invalid Strata-Cache-Control falls through to a valid CDN-Cache-Control.
        let h = response(&[
            ("strata-cache-control", "max-age=?"),
            ("cdn-cache-control", "max-age=7"),
        ]);
        assert_eq!(Directives::for_response(&h).0.max_age, Some(7));
    }

    #[test]
    fn rfc9213_targeted_field_types() {
        let d = Directives::parse_targeted(
            b"max-age=99999999999, no-cache, private=\"set-cookie\", public=?0, foo=(1 2)",
        )
        .unwrap();
        assert_eq!(d.max_age, Some(1 << 31));
        assert_eq!(d.no_cache, Some(FieldList::All));
        assert_eq!(
            d.private,
            Some(FieldList::Fields(vec!["set-cookie".into()]))
        );
        assert!(!d.public);
        let d = Directives::parse_targeted(b"no-cache=(\"a\" b)").unwrap();
        assert_eq!(
            d.no_cache,
            Some(FieldList::Fields(vec!["a".into(), "b".into()]))
        );
        // Several field lines form one dictionary (RFC 8941 §3.2: the last duplicate wins).
        let h = response(&[
            ("cdn-cache-control", "max-age=1"),
            ("cdn-cache-control", "max-age=9"),
        ]);
        assert_eq!(Directives::for_response(&h).0.max_age, Some(9));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*", bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Directives::parse_cache_control(&s);
            let _ = Directives::parse_targeted(s.as_bytes());
            let _ = Directives::parse_targeted(&bytes);
            let _ = parse_cache_control_line(&bytes);
        }

        #[test]
        fn delta_seconds_round_trip(n in 0u64..(1 << 31)) {
            prop_assert_eq!(cc(&format!("max-age={n}")).max_age, Some(n));
            prop_assert_eq!(cc(&format!("max-age=\"{n}\"")).max_age, Some(n));
            prop_assert_eq!(Directives::parse_targeted(format!("max-age={n}").as_bytes()).unwrap().max_age, Some(n));
        }
    }
}
