//! The data API speaks HTTP caching, so browsers and CDNs can hold its answers (`[namespaces.X.http]`).
//!
//! On `GET /v1/{ns}/{key}` of a namespace with an `http` section:
//! - `Cache-Control` and `CDN-Cache-Control` (RFC 9213) as configured — `public, max-age=60,
//!   stale-while-revalidate=3600` for listings, `private, no-store` for sessions and permissions;
//! - `Vary` as configured, where the answer depends on a request field;
//! - `Surrogate-Key`: the namespace, `{ns}:{key}` and the entry's tags, so a CDN (or Strata's own proxy in
//!   front) can purge by them; a write through the API purges `{ns}:{key}` from the edge tier;
//! - `ETag` from the version (every versioned answer, configured or not) and `If-None-Match` → `304` with the
//!   same fields and no body (weak comparison, RFC 9110 §13.1.2; `*` matches any current value);
//! - versioned URLs: `?v=N` is the entry at version `N`, which never changes — when `N` is the current version
//!   the answer is `public, max-age=31536000, immutable`; when it is not, `302` to `?v=<current>` with
//!   `Cache-Control: no-cache` (so no tier keeps the pointer). A namespace without versions answers `?v=` with
//!   `400 unversioned`.
//!
//! Without an `http` section nothing but `ETag` (and `If-None-Match`) is added: no tier downstream is told it
//! may store the answer.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

/// A tag template of `[namespaces.X] tags`: literal text with `{name}` holes, each the key (`{key}` or the key
/// column's name) or a field of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagTemplate(Vec<(bool, String)>);

impl TagTemplate {
    /// Parses `source`; the error says what is wrong.
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push((false, rest.to_string()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(format!("{source:?}: a `}}` without its `{{`"));
                }
                Some(i) => {
                    if i > 0 {
                        parts.push((false, rest[..i].to_string()));
                    }
                    let after = &rest[i + 1..];
                    let end = after
                        .find('}')
                        .ok_or_else(|| format!("{source:?}: a `{{` without its `}}`"))?;
                    let name = after[..end].trim();
                    if name.is_empty() || name.contains('{') {
                        return Err(format!("{source:?}: `{{}}` must name the key or a field"));
                    }
                    parts.push((true, name.to_string()));
                    rest = &after[end + 1..];
                }
            }
        }
        if parts.is_empty() {
            return Err("a tag template must not be empty".into());
        }
        if source.contains(char::is_whitespace) {
            return Err(format!(
                "{source:?}: a tag is one token, without whitespace"
            ));
        }
        Ok(Self(parts))
    }

    /// The tag for `key` (also named `key_column`) and `value`; `None` when a field is absent or null.
    pub fn render(&self, key: &str, key_column: &str, value: &serde_json::Value) -> Option<String> {
        let mut out = String::new();
        for (hole, text) in &self.0 {
            if !hole {
                out.push_str(text);
            } else if text == "key" || text == key_column {
                out.push_str(key);
            } else {
                match value.get(text)? {
                    serde_json::Value::Null => return None,
                    serde_json::Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                }
            }
        }
        (!out.contains(char::is_whitespace)).then_some(out)
    }
}

/// `[namespaces.X.http]` as the API applies it (validated by the config).
#[derive(Debug, Clone, Default)]
pub struct HttpCaching {
    /// `Cache-Control` of every answer.
    pub cache_control: Option<HeaderValue>,
    /// `CDN-Cache-Control` of every answer.
    pub cdn_cache_control: Option<HeaderValue>,
    /// `Vary`.
    pub vary: Option<HeaderValue>,
    /// Whether `Surrogate-Key` is sent.
    pub surrogate_keys: bool,
}

/// `CDN-Cache-Control` (RFC 9213).
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
/// `Surrogate-Key`.
pub static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

/// The answer to a versioned URL's immutable form.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The surrogate key of one entry: `{ns}:{key}`, the key percent-encoded where it is not a plain token.
pub fn entry_key(ns: &str, key: &str) -> String {
    let mut out = String::with_capacity(ns.len() + key.len() + 1);
    out.push_str(ns);
    out.push(':');
    for b in key.bytes() {
        if b.is_ascii_graphic() && b != b'%' && b != b',' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl HttpCaching {
    /// Adds the configured fields for an answer of `ns`/`key` with the entry's `tags` to `h`.
    pub fn apply(&self, ns: &str, key: &str, tags: &[String], h: &mut HeaderMap) {
        if let Some(v) = &self.cache_control {
            h.insert(header::CACHE_CONTROL, v.clone());
        }
        if let Some(v) = &self.cdn_cache_control {
            h.insert(CDN_CACHE_CONTROL.clone(), v.clone());
        }
        if let Some(v) = &self.vary {
            h.insert(header::VARY, v.clone());
        }
        if self.surrogate_keys {
            let mut keys = vec![ns.to_string(), entry_key(ns, key)];
            for t in tags {
                if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) && !keys.contains(t) {
                    keys.push(t.clone());
                }
            }
            if let Ok(v) = HeaderValue::from_str(&keys.join(" ")) {
                h.insert(SURROGATE_KEY.clone(), v);
            }
        }
    }
}

/// Whether a request's `If-None-Match` matches `etag` (weak comparison, RFC 9110 §13.1.2): the answer is then
/// `304`.
pub fn not_modified(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let ours = weak(etag);
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || weak(t) == ours)
}

/// The `v` of a request's query (`?v=N`): `Ok(None)` without one, `Err` naming what is wrong.
pub fn requested_version(query: Option<&str>) -> Result<Option<u64>, String> {
    let Some(q) = query else { return Ok(None) };
    let mut found = None;
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "v" {
            continue;
        }
        let n = v
            .parse::<u64>()
            .map_err(|_| format!("?v={v:?}: a version is a non-negative integer"))?;
        if found.is_some_and(|f| f != n) {
            return Err("?v= is given twice with different versions".into());
        }
        found = Some(n);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(inm: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(inm).unwrap());
        h
    }

    #[test]
    fn tag_templates_render_the_key_and_fields_and_skip_what_is_missing() {
        let t = TagTemplate::parse("product:{key}").unwrap();
        let v = serde_json::json!({"category": "tv", "n": 7, "none": null});
        assert_eq!(t.render("42", "id", &v).as_deref(), Some("product:42"));
        let t = TagTemplate::parse("p{id}-c{category}-{n}").unwrap();
        assert_eq!(t.render("42", "id", &v).as_deref(), Some("p42-ctv-7"));
        assert_eq!(
            TagTemplate::parse("x:{none}")
                .unwrap()
                .render("1", "id", &v),
            None
        );
        assert_eq!(
            TagTemplate::parse("x:{absent}")
                .unwrap()
                .render("1", "id", &v),
            None
        );
        for bad in ["", "{", "}", "a{}", "a{b", "two words", "a}b"] {
            assert!(TagTemplate::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn if_none_match_uses_weak_comparison_lists_and_star() {
        let etag = HeaderValue::from_static("\"v3\"");
        assert!(not_modified(&req("\"v3\""), &etag));
        assert!(not_modified(&req("W/\"v3\""), &etag));
        assert!(not_modified(&req("\"v1\", \"v3\""), &etag));
        assert!(not_modified(&req("*"), &etag));
        assert!(!not_modified(&req("\"v2\""), &etag));
        assert!(!not_modified(&HeaderMap::new(), &etag));
    }

    #[test]
    fn versions_in_the_query_are_checked() {
        assert_eq!(requested_version(None), Ok(None));
        assert_eq!(requested_version(Some("x=1")), Ok(None));
        assert_eq!(requested_version(Some("v=7")), Ok(Some(7)));
        assert_eq!(requested_version(Some("a=b&v=7&v=7")), Ok(Some(7)));
        assert!(requested_version(Some("v=7&v=8")).is_err());
        assert!(requested_version(Some("v=-1"))
            .unwrap_err()
            .contains("non-negative"));
        assert!(requested_version(Some("v=")).is_err());
    }

    #[test]
    fn surrogate_keys_name_the_namespace_the_entry_and_its_tags() {
        let c = HttpCaching {
            surrogate_keys: true,
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        c.apply(
            "product",
            "a b,c",
            &["category:7".into(), "bad tag".into()],
            &mut h,
        );
        assert_eq!(
            h[&SURROGATE_KEY], "product product:a%20b%2Cc category:7",
            "a key that is not a token is encoded; a tag that is not one is left out"
        );
        assert!(h.get(header::CACHE_CONTROL).is_none());
    }
}
