//! Per-route counters of the proxy: what each answer was (from its `Cache-Status`), what went to the origin, and
//! what was stored. Counted with relaxed atomics on the request path; [`RouteSnapshot`] reads them, and
//! [`publish`] hands them to the `metrics` facade (origin latency goes to the `strata_proxy_origin_seconds`
//! histogram directly, as the engine does with its loads).
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `strata_proxy_requests_total` | `route`, `cache` = `hit` `stale` `miss` `pass` | answers by how the cache served them |
//! | `strata_proxy_stale_served_total` | `route`, `reason` = `stale-while-revalidate` `stale-if-error` `max-stale` | stale answers |
//! | `strata_proxy_collapsed_total` | `route` | misses that shared another request's origin response |
//! | `strata_proxy_origin_requests_total` | `route` | requests sent to the origin (fills, revalidations, passes) |
//! | `strata_proxy_origin_errors_total` | `route` | of those, the ones without a response (connection, timeout) |
//! | `strata_proxy_origin_seconds` | `route` | origin latency (histogram) |
//! | `strata_proxy_stored_total`, `strata_proxy_stored_bytes_total` | `route` | responses stored, and their body bytes |

use std::sync::atomic::{AtomicU64, Ordering};

use crate::status::{CacheStatus, Fwd};

/// The counters of one route.
#[derive(Debug, Default)]
pub struct RouteStats {
    hits: AtomicU64,
    stale_while_revalidate: AtomicU64,
    stale_if_error: AtomicU64,
    max_stale: AtomicU64,
    misses: AtomicU64,
    passes: AtomicU64,
    collapsed: AtomicU64,
    origin_requests: AtomicU64,
    origin_errors: AtomicU64,
    origin_micros: AtomicU64,
    stored: AtomicU64,
    stored_bytes: AtomicU64,
}

/// A reading of one route's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSnapshot {
    /// The route's name.
    pub route: String,
    /// Answered fresh from the cache.
    pub hits: u64,
    /// Answered stale inside a `stale-while-revalidate` window (a revalidation ran behind it).
    pub stale_while_revalidate: u64,
    /// Answered stale because the origin failed, inside `stale-if-error`.
    pub stale_if_error: u64,
    /// Answered stale because the request's `max-stale` allowed it.
    pub max_stale: u64,
    /// Went to the origin for a cacheable request (no stored response, a stale one, a `Vary` miss…).
    pub misses: u64,
    /// Not cacheable by method or refused (`fwd=method`, `fwd=bypass`).
    pub passes: u64,
    /// Misses that shared another request's origin response.
    pub collapsed: u64,
    /// Requests sent to the origin.
    pub origin_requests: u64,
    /// Origin requests that got no response (unreachable, timed out, cut short).
    pub origin_errors: u64,
    /// Time spent waiting for the origin, in total (µs).
    pub origin_micros: u64,
    /// Responses stored.
    pub stored: u64,
    /// Body bytes of the responses stored.
    pub stored_bytes: u64,
}

impl RouteSnapshot {
    /// Every stale answer.
    pub fn stale(&self) -> u64 {
        self.stale_while_revalidate + self.stale_if_error + self.max_stale
    }

    /// Hits (fresh and stale) over every cacheable answer; 0 before the first.
    pub fn hit_ratio(&self) -> f64 {
        let served = self.hits + self.stale();
        let total = served + self.misses;
        if total == 0 {
            0.0
        } else {
            served as f64 / total as f64
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl RouteStats {
    /// Counts one answer by its `Cache-Status`.
    pub fn answered(&self, status: &CacheStatus) {
        match status.detail() {
            Some("stale-while-revalidate") => add(&self.stale_while_revalidate, 1),
            Some("stale-if-error") => add(&self.stale_if_error, 1),
            Some("max-stale") if status.is_hit() => add(&self.max_stale, 1),
            _ if status.is_hit() => add(&self.hits, 1),
            _ => match status.fwd() {
                Some(Fwd::Method | Fwd::Bypass) => add(&self.passes, 1),
                _ => add(&self.misses, 1),
            },
        }
        if status.is_collapsed() {
            add(&self.collapsed, 1);
        }
    }

    /// Counts one origin exchange that took `micros`; `ok` when a response came back.
    pub fn origin(&self, micros: u64, ok: bool) {
        add(&self.origin_requests, 1);
        add(&self.origin_micros, micros);
        if !ok {
            add(&self.origin_errors, 1);
        }
    }

    /// Counts one stored response of `bytes` body bytes.
    pub fn stored(&self, bytes: usize) {
        add(&self.stored, 1);
        add(&self.stored_bytes, bytes as u64);
    }

    /// The counters now, for the route named `route`.
    pub fn snapshot(&self, route: &str) -> RouteSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RouteSnapshot {
            route: route.to_string(),
            hits: r(&self.hits),
            stale_while_revalidate: r(&self.stale_while_revalidate),
            stale_if_error: r(&self.stale_if_error),
            max_stale: r(&self.max_stale),
            misses: r(&self.misses),
            passes: r(&self.passes),
            collapsed: r(&self.collapsed),
            origin_requests: r(&self.origin_requests),
            origin_errors: r(&self.origin_errors),
            origin_micros: r(&self.origin_micros),
            stored: r(&self.stored),
            stored_bytes: r(&self.stored_bytes),
        }
    }
}

/// Hands snapshots to the `metrics` facade (see the module docs).
pub fn publish(snapshots: &[RouteSnapshot]) {
    use metrics::counter;
    for s in snapshots {
        let route = s.route.clone();
        for (cache, v) in [
            ("hit", s.hits),
            ("stale", s.stale()),
            ("miss", s.misses),
            ("pass", s.passes),
        ] {
            counter!("strata_proxy_requests_total", "route" => route.clone(), "cache" => cache)
                .absolute(v);
        }
        for (reason, v) in [
            ("stale-while-revalidate", s.stale_while_revalidate),
            ("stale-if-error", s.stale_if_error),
            ("max-stale", s.max_stale),
        ] {
            counter!("strata_proxy_stale_served_total", "route" => route.clone(), "reason" => reason)
                .absolute(v);
        }
        counter!("strata_proxy_collapsed_total", "route" => route.clone()).absolute(s.collapsed);
        counter!("strata_proxy_origin_requests_total", "route" => route.clone())
            .absolute(s.origin_requests);
        counter!("strata_proxy_origin_errors_total", "route" => route.clone())
            .absolute(s.origin_errors);
        counter!("strata_proxy_stored_total", "route" => route.clone()).absolute(s.stored);
        counter!("strata_proxy_stored_bytes_total", "route" => route).absolute(s.stored_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_their_cache_status() {
        let s = RouteStats::default();
        let cs = || CacheStatus::new("Strata");
        s.answered(&cs().hit().with_ttl(10));
        s.answered(&cs().hit().with_detail("stale-while-revalidate"));
        s.answered(&cs().hit().with_detail("max-stale"));
        s.answered(
            &cs()
                .forward(Fwd::Stale, Some(500))
                .with_detail("stale-if-error"),
        );
        s.answered(&cs().forward(Fwd::UriMiss, Some(200)).with_stored(true));
        s.answered(
            &cs()
                .forward(Fwd::UriMiss, Some(200))
                .with_stored(true)
                .with_collapsed(true),
        );
        s.answered(&cs().forward(Fwd::Method, Some(201)));
        s.origin(1500, true);
        s.origin(10, false);
        s.stored(42);
        let snap = s.snapshot("r");
        assert_eq!(
            (
                snap.hits,
                snap.stale(),
                snap.misses,
                snap.passes,
                snap.collapsed
            ),
            (1, 3, 2, 1, 1)
        );
        assert_eq!(
            (snap.origin_requests, snap.origin_errors, snap.origin_micros),
            (2, 1, 1510)
        );
        assert_eq!((snap.stored, snap.stored_bytes), (1, 42));
        assert!((snap.hit_ratio() - 4.0 / 6.0).abs() < 1e-9);
    }
}
