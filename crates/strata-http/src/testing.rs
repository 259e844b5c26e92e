//! What the unit tests of every module share.

use http::{HeaderMap, HeaderName, HeaderValue};

/// A header map of `(name, value)` pairs, in order (repeated names make several field lines).
pub(crate) fn fields<V: AsRef<str>>(pairs: &[(&str, V)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v.as_ref()).unwrap(),
        );
    }
    h
}
