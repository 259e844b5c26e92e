//! What the operator decides per route: the knobs RFC 9111 leaves to the cache, each with its default.
//!
//! Every default is the conservative reading of the RFCs: no stale content without a directive (RFC 9111 §4.2.4),
//! no stored answers to authenticated requests beyond §3.5, no stored `Set-Cookie` unless the response allows it.
//! A route may widen them; no knob ever overrides `no-store`, `private`, `must-revalidate`, `proxy-revalidate`,
//! `s-maxage`'s implied revalidation or `no-cache`.

use std::time::Duration;

/// The edge policy of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgePolicy {
    /// The fraction of the time since `Last-Modified` a response without explicit freshness stays fresh
    /// (RFC 9111 §4.2.2), in per mille. Default: `100` (10 %, as the RFC suggests); `0` turns heuristics off.
    pub heuristic_per_mille: u32,
    /// The cap on a heuristic freshness lifetime. Default: 24 hours — past a day an origin that gave no
    /// explicit lifetime has been guessed for too long (RFC 7234 asked for a warning beyond it).
    pub heuristic_cap: Duration,
    /// A stale-while-revalidate window the route grants where the response names none (RFC 5861 §3 leaves the
    /// use of stale content to the cache only within what the response allows, so this applies only where no
    /// directive forbids stale). Default: `None`.
    pub stale_while_revalidate: Option<Duration>,
    /// A stale-if-error window the route grants where neither response nor request names one. Default: `None`.
    pub stale_if_error: Option<Duration>,
    /// Store responses to requests carrying `Authorization` even without `public`, `s-maxage` or
    /// `must-revalidate` (RFC 9111 §3.5). Default: `false`.
    pub store_authorized: bool,
    /// Store responses carrying `Set-Cookie` (with the cookie) even without `public`. Default: `false`.
    pub store_set_cookie: bool,
    /// The longest time a response is kept (fresh plus every stale window) in the engine. Default: 1 day.
    pub max_retention: Duration,
}

impl Default for EdgePolicy {
    fn default() -> Self {
        Self {
            heuristic_per_mille: 100,
            heuristic_cap: Duration::from_secs(24 * 3600),
            stale_while_revalidate: None,
            stale_if_error: None,
            store_authorized: false,
            store_set_cookie: false,
            max_retention: Duration::from_secs(24 * 3600),
        }
    }
}

impl EdgePolicy {
    /// Sets [`heuristic_per_mille`](Self::heuristic_per_mille). Default: `100`.
    #[must_use]
    pub fn with_heuristic_per_mille(mut self, per_mille: u32) -> Self {
        self.heuristic_per_mille = per_mille;
        self
    }

    /// Sets [`heuristic_cap`](Self::heuristic_cap). Default: 24 hours.
    #[must_use]
    pub fn with_heuristic_cap(mut self, cap: Duration) -> Self {
        self.heuristic_cap = cap;
        self
    }

    /// Sets [`stale_while_revalidate`](Self::stale_while_revalidate). Default: `None`.
    #[must_use]
    pub fn with_stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// Sets [`stale_if_error`](Self::stale_if_error). Default: `None`.
    #[must_use]
    pub fn with_stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// Sets [`store_authorized`](Self::store_authorized). Default: `false`.
    #[must_use]
    pub fn with_store_authorized(mut self, on: bool) -> Self {
        self.store_authorized = on;
        self
    }

    /// Sets [`store_set_cookie`](Self::store_set_cookie). Default: `false`.
    #[must_use]
    pub fn with_store_set_cookie(mut self, on: bool) -> Self {
        self.store_set_cookie = on;
        self
    }

    /// Sets [`max_retention`](Self::max_retention). Default: 1 day.
    #[must_use]
    pub fn with_max_retention(mut self, d: Duration) -> Self {
        self.max_retention = d;
        self
    }
}
