//! Purging stored responses: by URL, by tag (surrogate key), by URL prefix, by route, or everything.
//!
//! A purge never walks the store. Every stored response carries engine tags ([`entry_tags`]): its own
//! surrogate keys (`Surrogate-Key`, `Cache-Tag`, see [`crate::stored::tags`]), its URI ([`uri_tag`]: every
//! `Vary` variant of a URL carries it), its route ([`route_tag`]) and the directories of its path
//! ([`prefix_tags`]). A purge raises the engine's barrier on one of those tags
//! ([`strata::Namespace::invalidate_tag`]), so it has the engine's guarantees for free:
//! - **every node**: the barrier is published on the bus (whose gap handling clears a node that missed
//!   messages) and, with L2, kept in the shared tier, where a node that joins later reads it too;
//! - **fenced**: a fetch that began before the purge cannot store its (older) response after it — engine loads
//!   under way are poisoned, and the proxy's own stores (revalidations, background fills) go through
//!   [`strata::Namespace::insert_fetched_since`] with the time their request was sent;
//! - **every variant and every stale copy**: they carry the same tags, and a barrier hides an entry whatever its
//!   freshness.
//!
//! Internal tags contain a space (`strata-uri http://…`); a surrogate key never does (keys with whitespace are
//! not indexed), so an origin cannot name a tag that purges another site's URL.
//!
//! A prefix purge is exact at path-directory granularity: a prefix that ends in `/` purges what lies under that
//! directory; any other prefix purges its whole parent directory (a superset — a purge may take more than asked,
//! never less). Paths deeper than [`MAX_PREFIX_DEPTH`] directories are indexed by their first
//! [`MAX_PREFIX_DEPTH`], so a deeper prefix purges from that depth. The answer says which directory went.

use crate::key::{KeyError, PrimaryKey};

/// Path directories indexed per stored response (`/`, `/a/`, `/a/b/`, …): deeper prefixes purge from this depth.
pub const MAX_PREFIX_DEPTH: usize = 8;

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeTarget {
    /// One URL (absolute, `http://host/path?query`): every variant of it.
    Url(String),
    /// Every response carrying this surrogate key.
    Tag(String),
    /// Every URL starting with this absolute URL prefix (at directory granularity, see the module docs).
    Prefix(String),
    /// Everything stored through the route of this name.
    Route(String),
    /// Everything the proxy stored.
    All,
}

/// A purge request that cannot be carried out; each names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PurgeError {
    /// Not an absolute `http://` or `https://` URL.
    #[error("{what} {url:?} is not an absolute http(s) URL: {reason}")]
    BadUrl {
        /// `url` or `prefix`.
        what: &'static str,
        /// As given.
        url: String,
        /// Why.
        reason: String,
    },
    /// A tag that is empty or holds whitespace (no stored response can carry it).
    #[error(
        "tag {0:?} is empty or holds whitespace or control characters: tags are single tokens"
    )]
    BadTag(String),
    /// No route has this name.
    #[error("no route is named {name:?} (routes: {known})")]
    UnknownRoute {
        /// As given.
        name: String,
        /// The route names, comma-separated.
        known: String,
    },
}

/// The engine tag a purge raises its barrier on (`None`: everything, a generation bump), and what it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgePlan {
    /// The tag, or `None` for everything.
    pub tag: Option<String>,
    /// What it covers, for the answer: the normalised URL, the tag, the directory or the route name.
    pub covers: String,
}

/// Whether `tag` can be a tag: not empty, and no whitespace or control character (what the pattern
/// `^[^\s\u0000-\u001f\u007f-\u009f]+$` says, which the purge API documents).
pub fn is_tag(tag: &str) -> bool {
    !tag.is_empty() && !tag.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The tag every stored response of a URI carries, so an invalidation removes every variant.
pub fn uri_tag(primary: &PrimaryKey) -> String {
    format!("strata-uri {}", primary.as_str())
}

/// The tag of every response stored through the route `name`.
pub fn route_tag(name: &str) -> String {
    format!("strata-route {name}")
}

/// The tag of every response stored under the directory `dir` (ending in `/`) of `origin`.
fn dir_tag(origin: &str, dir: &str) -> String {
    format!("strata-prefix {origin}{dir}")
}

/// The directories of a path (without query) from `/`, at most [`MAX_PREFIX_DEPTH`] + 1 of them.
fn dirs(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .take(MAX_PREFIX_DEPTH + 1)
        .map(move |(i, _)| &path[..=i])
}

/// The directory tags of a stored response (see the module docs).
pub fn prefix_tags(primary: &PrimaryKey) -> impl Iterator<Item = String> + '_ {
    let origin = primary.origin();
    let rest = &primary.as_str()[origin.len()..];
    let path = rest.split_once('?').map_or(rest, |(p, _)| p);
    dirs(path).map(move |d| dir_tag(origin, d))
}

/// Every engine tag of a response stored for `primary` through route `route` with surrogate keys `surrogate`.
pub fn entry_tags(surrogate: Vec<String>, primary: &PrimaryKey, route: &str) -> Vec<String> {
    let mut tags = surrogate;
    tags.reserve(MAX_PREFIX_DEPTH + 3);
    tags.push(uri_tag(primary));
    tags.push(route_tag(route));
    tags.extend(prefix_tags(primary));
    tags
}

/// Parses an absolute URL into its primary key.
fn parse_url(what: &'static str, url: &str) -> Result<PrimaryKey, PurgeError> {
    let bad = |reason: String| PurgeError::BadUrl {
        what,
        url: url.to_string(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        Some(other) => return Err(bad(format!("scheme {other:?}"))),
        None => return Err(bad("no scheme".into())),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host".into()))?;
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    PrimaryKey::new(scheme, authority.as_str(), pq).map_err(|e: KeyError| bad(e.to_string()))
}

/// The plan for `target`; `routes` are the route names (for [`PurgeTarget::Route`]).
pub fn plan<'a>(
    target: &PurgeTarget,
    mut routes: impl Iterator<Item = &'a str> + Clone,
) -> Result<PurgePlan, PurgeError> {
    Ok(match target {
        PurgeTarget::Url(url) => {
            let key = parse_url("url", url)?;
            PurgePlan {
                tag: Some(uri_tag(&key)),
                covers: key.as_str().to_string(),
            }
        }
        PurgeTarget::Tag(tag) => {
            if !is_tag(tag) {
                return Err(PurgeError::BadTag(tag.clone()));
            }
            PurgePlan {
                tag: Some(tag.clone()),
                covers: tag.clone(),
            }
        }
        PurgeTarget::Prefix(prefix) => {
            let key = parse_url("prefix", prefix)?;
            let origin = key.origin();
            let rest = &key.as_str()[origin.len()..];
            // A query makes the prefix end inside a file name: its directory is the path's.
            let path = rest.split_once('?').map_or(rest, |(p, _)| p);
            let dir = dirs(path).last().unwrap_or("/");
            PurgePlan {
                tag: Some(dir_tag(origin, dir)),
                covers: format!("{origin}{dir}"),
            }
        }
        PurgeTarget::Route(name) => {
            if !routes.clone().any(|r| r == name) {
                return Err(PurgeError::UnknownRoute {
                    name: name.clone(),
                    known: routes.by_ref().collect::<Vec<_>>().join(", "),
                });
            }
            PurgePlan {
                tag: Some(route_tag(name)),
                covers: name.clone(),
            }
        }
        PurgeTarget::All => PurgePlan {
            tag: None,
            covers: "everything".into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(url: &str) -> PrimaryKey {
        parse_url("url", url).unwrap()
    }

    #[test]
    fn a_response_carries_its_uri_route_and_directories() {
        let k = key("http://Shop.example/a/b/c.html?x=1");
        let tags = entry_tags(vec!["product:42".into()], &k, "shop");
        assert_eq!(
            tags,
            vec![
                "product:42".to_string(),
                "strata-uri http://shop.example/a/b/c.html?x=1".into(),
                "strata-route shop".into(),
                "strata-prefix http://shop.example/".into(),
                "strata-prefix http://shop.example/a/".into(),
                "strata-prefix http://shop.example/a/b/".into(),
            ]
        );
    }

    #[test]
    fn deep_paths_are_indexed_to_the_maximum_depth() {
        let k = key("http://h/1/2/3/4/5/6/7/8/9/10/x");
        assert_eq!(prefix_tags(&k).count(), MAX_PREFIX_DEPTH + 1);
        let p = plan(
            &PurgeTarget::Prefix("http://h/1/2/3/4/5/6/7/8/9/10/".into()),
            std::iter::empty(),
        )
        .unwrap();
        // The deepest indexed directory: a superset of what was asked.
        assert_eq!(p.covers, "http://h/1/2/3/4/5/6/7/8/");
        assert!(entry_tags(vec![], &k, "r").contains(p.tag.as_ref().unwrap()));
    }

    #[test]
    fn a_prefix_purges_its_directory_and_matches_the_stored_tags() {
        let stored = entry_tags(vec![], &key("http://h/products/42/page"), "r");
        for (prefix, covers) in [
            ("http://h/products/", "http://h/products/"),
            ("http://h/products/4", "http://h/products/"),
            ("http://h/products/42/", "http://h/products/42/"),
            ("http://h/", "http://h/"),
            ("http://h", "http://h/"),
            ("http://H:80/products/42/pa?q", "http://h/products/42/"),
        ] {
            let p = plan(&PurgeTarget::Prefix(prefix.into()), std::iter::empty()).unwrap();
            assert_eq!(p.covers, covers, "{prefix}");
            assert!(stored.contains(p.tag.as_ref().unwrap()), "{prefix}");
        }
        let other = plan(
            &PurgeTarget::Prefix("http://h/other/".into()),
            std::iter::empty(),
        )
        .unwrap();
        assert!(!stored.contains(other.tag.as_ref().unwrap()));
    }

    #[test]
    fn a_url_purge_matches_the_normalised_key() {
        let stored = entry_tags(vec![], &key("http://h/a%7e?b=1"), "r");
        let p = plan(
            &PurgeTarget::Url("HTTP://H:80/a~?b=1".into()),
            std::iter::empty(),
        )
        .unwrap();
        assert!(stored.contains(p.tag.as_ref().unwrap()), "{p:?} {stored:?}");
    }

    #[test]
    fn bad_targets_say_what_is_wrong() {
        let none = std::iter::empty();
        assert!(matches!(
            plan(&PurgeTarget::Url("/relative".into()), none.clone()),
            Err(PurgeError::BadUrl { what: "url", .. })
        ));
        assert!(matches!(
            plan(&PurgeTarget::Prefix("ftp://h/".into()), none.clone()),
            Err(PurgeError::BadUrl { what: "prefix", .. })
        ));
        assert_eq!(
            plan(&PurgeTarget::Tag("a b".into()), none.clone()),
            Err(PurgeError::BadTag("a b".into()))
        );
        assert_eq!(
            plan(&PurgeTarget::Tag(String::new()), none),
            Err(PurgeError::BadTag(String::new()))
        );
        let e = plan(&PurgeTarget::Route("x".into()), ["a", "b"].into_iter()).unwrap_err();
        assert_eq!(e.to_string(), "no route is named \"x\" (routes: a, b)");
        assert!(plan(&PurgeTarget::Route("b".into()), ["a", "b"].into_iter()).is_ok());
    }

    #[test]
    fn internal_tags_cannot_be_named_by_a_surrogate_key() {
        for t in entry_tags(vec![], &key("http://h/a/b"), "r") {
            assert!(plan(&PurgeTarget::Tag(t.clone()), std::iter::empty()).is_err());
        }
    }
}
