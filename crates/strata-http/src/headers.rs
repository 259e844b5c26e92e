//! Header fields a proxy must rewrite: hop-by-hop fields (RFC 9110 §7.6.1), `Via` (§7.6.3), `Age`
//! (RFC 9111 §5.1), and the request framing checks that keep a shared cache out of request smuggling
//! (RFC 9112 §6.3).
//!
//! - Hop-by-hop: `Connection` and every field it lists, `Keep-Alive`, `Proxy-Connection`, `TE`,
//!   `Transfer-Encoding`, `Upgrade`, `Trailer`, and the proxy authentication fields (`Proxy-Authenticate`,
//!   `Proxy-Authentication-Info`, `Proxy-Authorization`), which RFC 9111 §3.1 lets a cache omit. They are
//!   removed before a response is stored and before anything is forwarded.
//! - `Via`: this tier appends `<received-protocol> <pseudonym>` (`1.1 strata`) to whatever the message carried.
//! - `Age`: every response served from the cache carries the current age in whole seconds, replacing the
//!   origin's value (which the age calculation has already accounted for).
//! - Framing: a request with both `Transfer-Encoding` and `Content-Length`, several differing or invalid
//!   `Content-Length` values, a `Transfer-Encoding` whose last coding is not `chunked`, or a header section
//!   over the limit is refused (400), never forwarded: the origin could frame it differently from us.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, AGE, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, VIA,
};
use http::Version;

use crate::directives::split_list;

/// The hop-by-hop fields removed whatever `Connection` says.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "proxy-authenticate",
    "proxy-authentication-info",
    "proxy-authorization",
];

/// Whether `name` is hop-by-hop whatever `Connection` says.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// The field names `Connection` lists (lower-cased; invalid names skipped).
pub fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for v in headers.get_all(CONNECTION) {
        for token in split_list(v.as_bytes()) {
            if let Ok(name) = HeaderName::from_bytes(token) {
                out.push(name);
            }
        }
    }
    out
}

/// Removes the hop-by-hop fields and every field `Connection` lists (RFC 9110 §7.6.1).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_listed(headers) {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// The `received-protocol` of `Via` for a message of `version` (RFC 9110 §7.6.3).
pub fn via_protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Appends `Via: <protocol> <pseudonym>` for a message received as `version`. The pseudonym must be a token
/// (it is a configuration value); an invalid one is replaced by `strata`.
pub fn append_via(headers: &mut HeaderMap, version: Version, pseudonym: &str) {
    let valid = !pseudonym.is_empty() && pseudonym.bytes().all(crate::directives::is_tchar);
    let pseudonym = if valid { pseudonym } else { "strata" };
    if let Ok(value) = HeaderValue::from_str(&format!("{} {pseudonym}", via_protocol(version))) {
        headers.append(VIA, value);
    }
}

/// Sets `Age` to `age_secs` (replacing every earlier value).
pub fn set_age(headers: &mut HeaderMap, age_secs: u64) {
    headers.insert(AGE, HeaderValue::from(age_secs));
}

/// Why a request's framing was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Both `Transfer-Encoding` and `Content-Length` (RFC 9112 §6.3: a smuggling attempt or a broken client).
    #[error("both Transfer-Encoding and Content-Length")]
    TransferEncodingAndContentLength,
    /// `Content-Length` values differ or are not a non-negative integer.
    #[error("invalid or conflicting Content-Length")]
    BadContentLength,
    /// `Transfer-Encoding` whose final coding is not `chunked` (the length of the body cannot be known).
    #[error("Transfer-Encoding does not end with chunked")]
    TransferEncodingNotChunked,
    /// The header section is larger than the limit.
    #[error("header section of {0} bytes is over the limit")]
    HeadersTooLarge(usize),
}

impl FramingError {
    /// A short name for `Cache-Status` details, logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            FramingError::TransferEncodingAndContentLength => "te-and-cl",
            FramingError::BadContentLength => "bad-content-length",
            FramingError::TransferEncodingNotChunked => "te-not-chunked",
            FramingError::HeadersTooLarge(_) => "headers-too-large",
        }
    }
}

/// The size of a header section as it travels (`name: value\r\n` per field).
pub fn header_section_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// Checks a request's framing before it goes anywhere (see the module docs). Returns the body length when
/// `Content-Length` gives one.
pub fn check_request_framing(
    headers: &HeaderMap,
    max_header_bytes: usize,
) -> Result<Option<u64>, FramingError> {
    let size = header_section_len(headers);
    if size > max_header_bytes {
        return Err(FramingError::HeadersTooLarge(size));
    }
    let has_te = headers.contains_key(TRANSFER_ENCODING);
    let mut length: Option<u64> = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        // A list of identical values (`5, 5`) is allowed (RFC 9110 §8.6); anything else is refused.
        let parts = split_list(v.as_bytes());
        if parts.is_empty() {
            return Err(FramingError::BadContentLength);
        }
        for part in parts {
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
                return Err(FramingError::BadContentLength);
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(FramingError::BadContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::BadContentLength);
            }
            length = Some(n);
        }
    }
    if has_te && headers.contains_key(CONTENT_LENGTH) {
        return Err(FramingError::TransferEncodingAndContentLength);
    }
    if has_te {
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| split_list(v.as_bytes()))
            .last()
            .map(|c| c.eq_ignore_ascii_case(b"chunked"));
        if last != Some(true) {
            return Err(FramingError::TransferEncodingNotChunked);
        }
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::fields as map;

    #[test]
    fn rfc9110_7_6_1_hop_by_hop_and_connection_listed_fields_are_removed() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("trailer", "x-t"),
            ("proxy-authenticate", "Basic"),
            ("content-type", "text/plain"),
            ("etag", "\"a\""),
        ]);
        remove_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["content-type", "etag"]);
    }

    #[test]
    fn rfc9110_7_6_3_via_is_appended() {
        let mut h = map(&[("via", "1.0 fred")]);
        append_via(&mut h, Version::HTTP_11, "strata");
        append_via(&mut h, Version::HTTP_2, "bad name");
        let vias: Vec<_> = h.get_all(VIA).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(vias, vec!["1.0 fred", "1.1 strata", "2 strata"]);
    }

    #[test]
    fn rfc9111_5_1_age_replaces_the_origin_value() {
        let mut h = map(&[("age", "10"), ("age", "20")]);
        set_age(&mut h, 42);
        assert_eq!(h.get_all(AGE).iter().count(), 1);
        assert_eq!(h[AGE], "42");
    }

    #[test]
    fn rfc9112_6_3_smuggling_shapes_are_refused() {
        let limit = 8192;
        type Case<'a> = (&'a [(&'a str, &'a str)], Result<Option<u64>, FramingError>);
        let cases: &[Case] = &[
            (&[("content-length", "5")], Ok(Some(5))),
            (&[("content-length", "5, 5")], Ok(Some(5))),
            (
                &[("content-length", "5"), ("content-length", "5")],
                Ok(Some(5)),
            ),
            (
                &[("content-length", "5"), ("content-length", "6")],
                Err(FramingError::BadContentLength),
            ),
            (
                &[("content-length", "5, 6")],
                Err(FramingError::BadContentLength),
            ),
            (
                &[("content-length", "-1")],
                Err(FramingError::BadContentLength),
            ),
            (
                &[("content-length", "0x10")],
                Err(FramingError::BadContentLength),
            ),
            (
                &[("content-length", "")],
                Err(FramingError::BadContentLength),
            ),
            (
                &[("content-length", "5"), ("transfer-encoding", "chunked")],
                Err(FramingError::TransferEncodingAndContentLength),
            ),
            (&[("transfer-encoding", "chunked")], Ok(None)),
            (&[("transfer-encoding", "gzip, chunked")], Ok(None)),
            (
                &[("transfer-encoding", "chunked, gzip")],
                Err(FramingError::TransferEncodingNotChunked),
            ),
            (
                &[("transfer-encoding", "xchunked")],
                Err(FramingError::TransferEncodingNotChunked),
            ),
            (&[], Ok(None)),
        ];
        for (fields, want) in cases {
            assert_eq!(
                &check_request_framing(&map(fields), limit),
                want,
                "{fields:?}"
            );
        }
        let big = "x".repeat(9000);
        assert!(matches!(
            check_request_framing(&map(&[("x-big", &big)]), limit),
            Err(FramingError::HeadersTooLarge(_))
        ));
    }
}
