//! Cache keys: the primary key (the normalised target URI, RFC 9111 §4) and the `Vary` secondary key (§4.1).
//!
//! # Primary key
//! `scheme://host[:port]path[?query]` and nothing else — no other request header (`X-Forwarded-Host`,
//! `Forwarded`, cookies) ever takes part, so none can make a request reach, or poison, another URI's entry.
//! Normalised as RFC 3986 §6.2.2 allows without changing what the URI identifies:
//! - scheme and host lower-cased (§6.2.2.1), the default port dropped (80 for `http`, 443 for `https`,
//!   §6.2.3), an empty path is `/`;
//! - percent-encodings upper-cased (`%2f` → `%2F`), and percent-encoded *unreserved* characters
//!   (`ALPHA DIGIT - . _ ~`) decoded (§6.2.2.2). Reserved characters stay encoded — `%2F` is not `/`, `%3F`
//!   is not `?` — and a `%` not followed by two hex digits is left as it is;
//! - dot segments removed from the path (§6.2.2.3, the algorithm of §5.2.4);
//! - the query kept byte for byte in its order (only its percent-encodings normalised as above): parameter
//!   order is the application's business. A fragment never reaches a cache and is dropped.
//!
//! # Secondary key
//! A response's `Vary` names request fields (lower-cased, sorted, deduplicated); `Vary: *` never matches (§4.1).
//! The stored response keeps the values those fields had in the request that produced it; a later request
//! matches when every named field has the same normalised value: all field lines combined with `, `, runs of
//! whitespace folded to one space and removed around commas, trimmed. An absent field matches only an absent
//! field (absent is not empty).

use http::header::{HeaderMap, HeaderName, VARY};

use crate::directives::{split_list, trim_ows};

/// Why a primary key could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The scheme is not `http` or `https`.
    #[error("unsupported scheme {0:?}")]
    Scheme(String),
    /// No host.
    #[error("missing host")]
    MissingHost,
    /// The host or port is not valid.
    #[error("invalid host {0:?}")]
    Host(String),
}

/// The normalised primary key of a target URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrimaryKey(String);

impl PrimaryKey {
    /// The key from its parts: `scheme` (`http`/`https`), `authority` (`host[:port]`, no userinfo) and the
    /// request target's path and query (origin-form, e.g. `/a/b?x=1`).
    pub fn new(scheme: &str, authority: &str, path_and_query: &str) -> Result<Self, KeyError> {
        match already_normal(scheme, authority, path_and_query) {
            Some(key) => Ok(key),
            None => Self::normalised(scheme, authority, path_and_query),
        }
    }

    /// The full normalisation behind [`new`](Self::new).
    fn normalised(scheme: &str, authority: &str, path_and_query: &str) -> Result<Self, KeyError> {
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => "80",
            "https" => "443",
            _ => return Err(KeyError::Scheme(scheme)),
        };
        let authority = normalise_authority(authority, default_port)?;
        let without_fragment = path_and_query
            .split_once('#')
            .map_or(path_and_query, |(a, _)| a);
        let (path, query) = match without_fragment.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (without_fragment, None),
        };
        let mut path = normalise_percent(path);
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let path = remove_dot_segments(&path);
        let mut key = format!("{scheme}://{authority}{path}");
        if let Some(q) = query {
            key.push('?');
            key.push_str(&normalise_percent(q));
        }
        Ok(PrimaryKey(key))
    }

    /// The key of an absolute URI (`http://host/path?q`).
    pub fn from_uri(uri: &http::Uri) -> Result<Self, KeyError> {
        let scheme = uri.scheme_str().ok_or(KeyError::MissingHost)?;
        let authority = uri.authority().ok_or(KeyError::MissingHost)?;
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        Self::new(scheme, authority.as_str(), pq)
    }

    /// The key as text (`https://example.com/a?b`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The scheme and authority (`https://example.com`): two keys with the same origin share it.
    pub fn origin(&self) -> &str {
        let after_scheme = self.0.find("://").map_or(0, |i| i + 3);
        let end = self.0[after_scheme..]
            .find('/')
            .map_or(self.0.len(), |i| after_scheme + i);
        &self.0[..end]
    }
}

impl PrimaryKey {
    /// The normalised path and query (`/a/b?c`): what the origin is sent and routes are matched on, so the
    /// route, the key and the origin all see the same path.
    pub fn path_and_query(&self) -> &str {
        &self.0[self.origin().len()..]
    }

    /// The host, lower-case, without its port (an IPv6 literal without its brackets): what routes match on.
    pub fn host(&self) -> &str {
        let origin = self.origin();
        let authority = origin.find("://").map_or(origin, |i| &origin[i + 3..]);
        if let Some(rest) = authority.strip_prefix('[') {
            return rest.split(']').next().unwrap_or("");
        }
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    }

    /// The normalised path.
    pub fn path(&self) -> &str {
        let pq = self.path_and_query();
        pq.split_once('?').map_or(pq, |(p, _)| p)
    }
}

impl std::fmt::Display for PrimaryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key of a request whose parts are already in normal form — the common case, built with one allocation:
/// a lower-case scheme, a lower-case host name with no port or a non-default one without leading zeros, and a
/// path and query of ASCII without `%`, `#` or a segment starting with a dot. `None` sends everything else
/// through the full normalisation, which gives the same key for these (a property test holds them equal).
fn already_normal(scheme: &str, authority: &str, path_and_query: &str) -> Option<PrimaryKey> {
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && !p.starts_with('0')
            && p.bytes().all(|b| b.is_ascii_digit())
            && p != default_port
    });
    let b = path_and_query.as_bytes();
    let path_ok = b.first() == Some(&b'/')
        && b.iter().all(|&c| c.is_ascii() && c != b'%' && c != b'#')
        && !path_and_query.contains("/.");
    if !(host_ok && port_ok && path_ok) {
        return None;
    }
    let mut key = String::with_capacity(scheme.len() + 3 + authority.len() + b.len());
    key.push_str(scheme);
    key.push_str("://");
    key.push_str(authority);
    key.push_str(path_and_query);
    Some(PrimaryKey(key))
}

fn normalise_authority(authority: &str, default_port: &str) -> Result<String, KeyError> {
    if authority.is_empty() {
        return Err(KeyError::MissingHost);
    }
    if authority.contains('@') {
        return Err(KeyError::Host(authority.to_string()));
    }
    let lower = authority.to_ascii_lowercase();
    // Split host and port (an IPv6 literal is bracketed).
    let (host, port) = if let Some(rest) = lower.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| KeyError::Host(authority.to_string()))?;
        let host = &lower[..end + 2];
        let after = &rest[end + 1..];
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(KeyError::Host(authority.to_string())),
        }
    } else {
        match lower.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (lower.as_str(), None),
        }
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ip) => {
            !ip.is_empty()
                && ip
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))
        }
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b))
        }
    };
    if !host_ok {
        return Err(KeyError::Host(authority.to_string()));
    }
    match port {
        None | Some("") => Ok(host.to_string()),
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
            let p = p.trim_start_matches('0');
            let p = if p.is_empty() { "0" } else { p };
            if p.len() > 5 {
                return Err(KeyError::Host(authority.to_string()));
            }
            if p == default_port {
                Ok(host.to_string())
            } else {
                Ok(format!("{host}:{p}"))
            }
        }
        Some(_) => Err(KeyError::Host(authority.to_string())),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Upper-cases percent-encodings and decodes those of unreserved characters (RFC 3986 §6.2.2.2).
pub fn normalise_percent(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let c = h * 16 + l;
                if is_unreserved(c) {
                    out.push(c as char);
                } else {
                    out.push('%');
                    out.push(b[i + 1].to_ascii_uppercase() as char);
                    out.push(b[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
        }
        // Non-ASCII input (not valid in a URI, but possible in raw bytes) is percent-encoded.
        let c = s[i..].chars().next().unwrap_or('\u{fffd}');
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        i += c.len_utf8();
    }
    out
}

/// RFC 3986 §5.2.4: removes `.` and `..` segments.
pub fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut out: Vec<&str> = Vec::new();
    let absolute = path.starts_with('/');
    let mut trailing_slash = false;
    if absolute {
        input = &input[1..];
    }
    for seg in input.split('/') {
        trailing_slash = false;
        match seg {
            "." => trailing_slash = true,
            ".." => {
                out.pop();
                trailing_slash = true;
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    if absolute {
        s.push('/');
    }
    s.push_str(&out.join("/"));
    if trailing_slash && !s.ends_with('/') {
        s.push('/');
    }
    s
}

/// A response's `Vary` (§4.1, RFC 9110 §12.5.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// No `Vary` (or an empty one): one response for every request.
    None,
    /// `Vary: *`: never matches.
    Star,
    /// The request fields the response varies on: lower-cased, sorted, deduplicated.
    Fields(Vec<HeaderName>),
}

impl Vary {
    /// Parses every `Vary` line of a response.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut names = Vec::new();
        for v in headers.get_all(VARY) {
            for part in split_list(v.as_bytes()) {
                if part == b"*" {
                    return Vary::Star;
                }
                if let Ok(name) = HeaderName::from_bytes(part) {
                    names.push(name);
                }
            }
        }
        if names.is_empty() {
            return Vary::None;
        }
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        Vary::Fields(names)
    }

    /// The request's normalised values for the varying fields, to store with the response.
    pub fn values(&self, request: &HeaderMap) -> VaryValues {
        match self {
            Vary::Fields(names) => VaryValues(
                names
                    .iter()
                    .map(|n| (n.as_str().to_string(), normalised_value(request, n)))
                    .collect(),
            ),
            _ => VaryValues::default(),
        }
    }
}

/// The values a request had for the fields a response varies on (`None`: the field was absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VaryValues(pub Vec<(String, Option<String>)>);

impl VaryValues {
    /// Whether `request` has the same normalised values for every field.
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.0.iter().all(|(name, value)| {
            HeaderName::from_bytes(name.as_bytes())
                .map(|n| normalised_value(request, &n) == *value)
                .unwrap_or(false)
        })
    }

    /// A compact text form, for the secondary part of an engine key (`name=value` joined by NUL, absent fields
    /// as `name` alone; NUL cannot occur in a field value).
    pub fn secondary_key(&self) -> String {
        let mut s = String::new();
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                s.push('\0');
            }
            s.push_str(name);
            if let Some(v) = value {
                s.push('=');
                s.push_str(v);
            }
        }
        s
    }
}

/// A request field's value normalised for `Vary` matching (see the module docs); `None` when absent.
pub fn normalised_value(request: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut lines = request.get_all(name).iter().peekable();
    lines.peek()?;
    let mut parts: Vec<String> = Vec::new();
    for line in lines {
        for part in split_list_keep_empty(line.as_bytes()) {
            parts.push(fold_ws(part));
        }
    }
    Some(parts.join(", "))
}

fn split_list_keep_empty(line: &[u8]) -> Vec<&[u8]> {
    let parts = split_list(line);
    if parts.is_empty() {
        vec![trim_ows(line)]
    } else {
        parts
    }
}

fn fold_ws(part: &[u8]) -> String {
    let text = String::from_utf8_lossy(part);
    let mut out = String::with_capacity(text.len());
    let mut in_ws = false;
    for c in text.trim_matches([' ', '\t']).chars() {
        if c == ' ' || c == '\t' {
            in_ws = true;
        } else {
            if in_ws {
                out.push(' ');
            }
            in_ws = false;
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn key(s: &str, a: &str, p: &str) -> String {
        PrimaryKey::new(s, a, p).unwrap().0
    }

    use crate::testing::fields as map;

    #[test]
    fn rfc3986_6_2_2_1_scheme_and_host_lower_cased_default_port_dropped() {
        assert_eq!(key("HTTP", "Example.COM:80", "/a"), "http://example.com/a");
        assert_eq!(
            key("https", "example.com:443", "/a"),
            "https://example.com/a"
        );
        assert_eq!(
            key("https", "example.com:80", "/a"),
            "https://example.com:80/a"
        );
        assert_eq!(
            key("http", "example.com:0080", "/a"),
            "http://example.com/a"
        );
        assert_eq!(key("http", "[::1]:8080", "/"), "http://[::1]:8080/");
        assert_eq!(key("http", "[::1]:80", ""), "http://[::1]/");
        assert!(PrimaryKey::new("ftp", "example.com", "/").is_err());
        assert!(PrimaryKey::new("http", "", "/").is_err());
        assert!(PrimaryKey::new("http", "user@example.com", "/").is_err());
        assert!(PrimaryKey::new("http", "example.com:x", "/").is_err());
        assert!(PrimaryKey::new("http", "exa mple.com", "/").is_err());
    }

    #[test]
    fn rfc3986_6_2_2_2_percent_encoding_normalised_but_reserved_kept() {
        assert_eq!(key("http", "h", "/%7euser/%61b"), "http://h/~user/ab");
        assert_eq!(key("http", "h", "/a%2fb"), "http://h/a%2Fb");
        assert_ne!(key("http", "h", "/a%2Fb"), key("http", "h", "/a/b"));
        assert_eq!(key("http", "h", "/a%3fb"), "http://h/a%3Fb");
        assert_eq!(key("http", "h", "/100%"), "http://h/100%");
        assert_eq!(key("http", "h", "/%zz%4"), "http://h/%zz%4");
        assert_eq!(key("http", "h", "/x?q=%7e%2b"), "http://h/x?q=~%2B");
    }

    #[test]
    fn rfc3986_6_2_2_3_dot_segments_removed() {
        assert_eq!(key("http", "h", "/a/./b/../c"), "http://h/a/c");
        assert_eq!(key("http", "h", "/a/b/.."), "http://h/a/");
        assert_eq!(key("http", "h", "/../../x"), "http://h/x");
        assert_eq!(key("http", "h", "/%2E%2E/x"), "http://h/x");
        assert_eq!(key("http", "h", ""), "http://h/");
    }

    #[test]
    fn query_is_kept_in_order_and_fragment_dropped() {
        assert_ne!(key("http", "h", "/?a=1&b=2"), key("http", "h", "/?b=2&a=1"));
        assert_eq!(key("http", "h", "/p?a=1#frag"), "http://h/p?a=1");
        assert_ne!(key("http", "h", "/p?"), key("http", "h", "/p"));
    }

    #[test]
    fn origin_of_a_key() {
        let k = PrimaryKey::new("https", "Example.com:8443", "/a/b?c").unwrap();
        assert_eq!(k.origin(), "https://example.com:8443");
        let k = PrimaryKey::from_uri(&"http://h/x".parse().unwrap()).unwrap();
        assert_eq!((k.as_str(), k.origin()), ("http://h/x", "http://h"));
        let k = PrimaryKey::new("http", "h", "/api/../admin/%7e?q=/x").unwrap();
        assert_eq!(
            (k.path_and_query(), k.path()),
            ("/admin/~?q=/x", "/admin/~")
        );
    }

    #[test]
    fn rfc9111_4_1_vary_parsing() {
        assert_eq!(Vary::from_headers(&HeaderMap::new()), Vary::None);
        assert_eq!(Vary::from_headers(&map(&[("vary", "")])), Vary::None);
        assert_eq!(
            Vary::from_headers(&map(&[("vary", "Accept, *")])),
            Vary::Star
        );
        assert_eq!(
            Vary::from_headers(&map(&[
                ("vary", "Accept-Encoding, accept"),
                ("vary", "ACCEPT")
            ])),
            Vary::Fields(vec![
                HeaderName::from_static("accept"),
                HeaderName::from_static("accept-encoding")
            ])
        );
    }

    #[test]
    fn rfc9111_4_1_vary_matching_normalises_values() {
        let vary = Vary::from_headers(&map(&[("vary", "accept-language, x-absent")]));
        let stored = vary.values(&map(&[("accept-language", "en,  fr ;q=0.5")]));
        assert!(stored.matches(&map(&[("accept-language", "en , fr ;q=0.5")])));
        assert!(stored.matches(&map(&[
            ("accept-language", "en"),
            ("accept-language", "fr ;q=0.5")
        ])));
        assert!(!stored.matches(&map(&[("accept-language", "fr ;q=0.5, en")])));
        assert!(!stored.matches(&map(&[("accept-language", "en, fr;q=0.5")])));
        // Absent is not empty.
        assert!(!stored.matches(&map(&[
            ("accept-language", "en, fr ;q=0.5"),
            ("x-absent", "")
        ])));
        let empty = Vary::Fields(vec![HeaderName::from_static("x-e")]).values(&map(&[("x-e", "")]));
        assert!(empty.matches(&map(&[("x-e", " ")])));
        assert!(!empty.matches(&HeaderMap::new()));
    }

    #[test]
    fn secondary_keys_differ_by_value_and_presence() {
        let vary = Vary::Fields(vec![HeaderName::from_static("accept")]);
        let a = vary
            .values(&map(&[("accept", "text/html")]))
            .secondary_key();
        let b = vary
            .values(&map(&[("accept", "text/plain")]))
            .secondary_key();
        let c = vary.values(&HeaderMap::new()).secondary_key();
        let d = vary.values(&map(&[("accept", "")])).secondary_key();
        assert!(a != b && a != c && c != d);
    }

    proptest! {
        #[test]
        fn the_fast_path_gives_the_full_normalisations_key(
            https in any::<bool>(),
            auth in "[a-zA-Z0-9.-]{1,12}(:[0-9]{1,6})?",
            path in "/[a-zA-Z0-9/._~?=&%#-]{0,30}",
        ) {
            let scheme = if https { "https" } else { "http" };
            if let Some(fast) = already_normal(scheme, &auth, &path) {
                prop_assert_eq!(Ok(fast), PrimaryKey::normalised(scheme, &auth, &path));
            }
        }

        #[test]
        fn keys_never_panic_and_normalising_is_idempotent(auth in "[a-zA-Z0-9.:\\[\\]@%-]{0,20}", path in "\\PC{0,40}") {
            if let Ok(k) = PrimaryKey::new("http", &auth, &path) {
                let s = k.as_str();
                let rest = &s["http://".len()..];
                let (a, p) = rest.split_at(rest.find('/').unwrap());
                prop_assert_eq!(PrimaryKey::new("http", a, p).unwrap(), k.clone());
            }
        }

        /// Percent-encoding unreserved characters never makes a different key (RFC 3986 §6.2.2.2), and
        /// encoding a reserved one always does.
        #[test]
        fn encoded_unreserved_is_the_same_key(seg in "[A-Za-z0-9._~-]{1,12}", reserved in "[/?#\\[\\]@!$&'()*+,;=]") {
            let encoded: String = seg.bytes().map(|b| format!("%{b:02x}")).collect();
            let plain = PrimaryKey::new("http", "h", &format!("/x/{seg}/y")).unwrap();
            prop_assert_eq!(PrimaryKey::new("http", "h", &format!("/x/{encoded}/y")).unwrap(), plain);
            let r = reserved.as_bytes()[0];
            let with_reserved = PrimaryKey::new("http", "h", &format!("/x/a{reserved}b")).unwrap();
            let with_encoded = PrimaryKey::new("http", "h", &format!("/x/a%{r:02X}b")).unwrap();
            prop_assert_ne!(with_reserved, with_encoded);
        }

        #[test]
        fn vary_values_never_panic(v in "[ -~\\t]{0,30}") {
            if let Ok(value) = HeaderValue::from_str(&v) {
                let mut h = HeaderMap::new();
                h.insert(HeaderName::from_static("x-v"), value);
                let vary = Vary::Fields(vec![HeaderName::from_static("x-v")]);
                prop_assert!(vary.values(&h).matches(&h));
            }
        }
    }
}
