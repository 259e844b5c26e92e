//! Invalidation by unsafe methods (RFC 9111 §4.4).
//!
//! A non-error response (2xx, 3xx) to a request whose method is not known to be safe (anything but `GET`,
//! `HEAD`, `OPTIONS`, `TRACE`, RFC 9110 §9.2.1 — `POST`, `PUT`, `DELETE`, `PATCH` and unknown methods alike)
//! invalidates the target URI, and the URIs in `Location` and `Content-Location` when they have the target's
//! origin (scheme, host and port). A different origin is never invalidated: a response must not be able to
//! evict another site's entries (§4.4). Relative references are resolved against the target URI
//! (RFC 3986 §5.2). Every variant of an invalidated URI goes (the engine keys variants under their URI).

use http::header::{HeaderMap, CONTENT_LOCATION, LOCATION};
use http::{Method, StatusCode};

use crate::key::PrimaryKey;

/// Whether a method is safe (RFC 9110 §9.2.1); every other method, known or not, may change state.
pub fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The keys a response to `method` on `target` invalidates (target first; deduplicated).
pub fn invalidated(
    method: &Method,
    status: StatusCode,
    target: &PrimaryKey,
    response: &HeaderMap,
) -> Vec<PrimaryKey> {
    if is_safe(method) || !(status.is_success() || status.is_redirection()) {
        return Vec::new();
    }
    let mut out = vec![target.clone()];
    for name in [LOCATION, CONTENT_LOCATION] {
        for v in response.get_all(name) {
            let Ok(reference) = v.to_str() else { continue };
            if let Some(k) = resolve(target, reference.trim()) {
                if k.origin() == target.origin() && !out.contains(&k) {
                    out.push(k);
                }
            }
        }
    }
    out
}

/// Resolves a URI reference against `base` (RFC 3986 §5.2, without fragments) into a key; `None` when it
/// is not an `http`/`https` URI.
pub fn resolve(base: &PrimaryKey, reference: &str) -> Option<PrimaryKey> {
    let reference = reference.split_once('#').map_or(reference, |(a, _)| a);
    if let Some((scheme, rest)) = reference.split_once(':') {
        let is_scheme = !scheme.is_empty()
            && scheme.as_bytes()[0].is_ascii_alphabetic()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        if is_scheme {
            let rest = rest.strip_prefix("//")?;
            let (authority, path) = split_authority(rest);
            return PrimaryKey::new(scheme, authority, path).ok();
        }
    }
    let base_str = base.as_str();
    let scheme = &base_str[..base_str.find("://")?];
    if let Some(rest) = reference.strip_prefix("//") {
        let (authority, path) = split_authority(rest);
        return PrimaryKey::new(scheme, authority, path).ok();
    }
    let origin = base.origin();
    let authority = &origin[scheme.len() + 3..];
    let base_pq = &base_str[origin.len()..];
    let base_path = base_pq.split_once('?').map_or(base_pq, |(p, _)| p);
    let target = if reference.is_empty() {
        base_pq.to_string()
    } else if reference.starts_with('/') {
        reference.to_string()
    } else if reference.starts_with('?') {
        format!("{base_path}{reference}")
    } else {
        // Merge (§5.2.3): the base path up to its last slash, then the reference.
        let dir = base_path.rfind('/').map_or("/", |i| &base_path[..=i]);
        format!("{dir}{reference}")
    };
    PrimaryKey::new(scheme, authority, &target).ok()
}

fn split_authority(rest: &str) -> (&str, &str) {
    match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    fn k(s: &str) -> PrimaryKey {
        PrimaryKey::from_uri(&s.parse().unwrap()).unwrap()
    }

    fn inv(method: Method, status: u16, fields: &[(&str, &str)]) -> Vec<String> {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        invalidated(
            &method,
            StatusCode::from_u16(status).unwrap(),
            &k("http://h.example/a/b?x=1"),
            &h,
        )
        .into_iter()
        .map(|k| k.as_str().to_string())
        .collect()
    }

    #[test]
    fn rfc9111_4_4_unsafe_methods_invalidate_the_target_on_success() {
        for m in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::from_bytes(b"PURGEX").unwrap(),
        ] {
            assert_eq!(
                inv(m.clone(), 200, &[]),
                vec!["http://h.example/a/b?x=1"],
                "{m}"
            );
            assert_eq!(inv(m.clone(), 303, &[]).len(), 1, "{m}");
        }
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(inv(m, 200, &[]).is_empty());
        }
    }

    #[test]
    fn rfc9111_4_4_error_responses_invalidate_nothing() {
        assert!(inv(Method::POST, 404, &[]).is_empty());
        assert!(inv(Method::DELETE, 500, &[]).is_empty());
        assert!(inv(Method::PUT, 100, &[]).is_empty());
    }

    #[test]
    fn rfc9111_4_4_same_origin_location_and_content_location() {
        let got = inv(
            Method::POST,
            201,
            &[("location", "/items/7"), ("content-location", "c?y=2")],
        );
        assert_eq!(
            got,
            vec![
                "http://h.example/a/b?x=1",
                "http://h.example/items/7",
                "http://h.example/a/c?y=2"
            ]
        );
        let got = inv(
            Method::PUT,
            200,
            &[
                ("location", "HTTP://H.example:80/z"),
                ("content-location", "//h.example/w"),
            ],
        );
        assert_eq!(
            got,
            vec![
                "http://h.example/a/b?x=1",
                "http://h.example/z",
                "http://h.example/w"
            ]
        );
    }

    #[test]
    fn rfc9111_4_4_other_origins_are_never_invalidated() {
        let got = inv(
            Method::POST,
            200,
            &[
                ("location", "http://other.example/a"),
                ("content-location", "https://h.example/a/b?x=1"),
                ("location", "http://h.example:8080/a"),
                ("location", "mailto:x@h.example"),
            ],
        );
        assert_eq!(got, vec!["http://h.example/a/b?x=1"]);
    }

    #[test]
    fn rfc3986_5_2_relative_references() {
        let base = k("http://h/a/b/c?q");
        let r = |s: &str| resolve(&base, s).unwrap().as_str().to_string();
        assert_eq!(r("g"), "http://h/a/b/g");
        assert_eq!(r("./g"), "http://h/a/b/g");
        assert_eq!(r("../g"), "http://h/a/g");
        assert_eq!(r("../../../g"), "http://h/g");
        assert_eq!(r("?y"), "http://h/a/b/c?y");
        assert_eq!(r(""), "http://h/a/b/c?q");
        assert_eq!(r("#f"), "http://h/a/b/c?q");
        assert_eq!(r("/g#f"), "http://h/g");
    }

    proptest! {
        #[test]
        fn resolve_never_panics(s in "\\PC{0,40}") {
            let _ = resolve(&k("http://h/a/b"), &s);
        }
    }
}
