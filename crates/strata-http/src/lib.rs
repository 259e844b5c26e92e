//! `strata-http`: Strata's edge tier — the HTTP caching semantics of a *shared* cache (RFC 9111, with RFC 5861
//! stale extensions, RFC 9211 `Cache-Status` and RFC 9213 targeted cache-control fields), as a library that
//! `strata-server` wires into `strata serve`.
//!
//! Each module is one concept and states the rules and RFC sections it implements:
//!
//! | module | concept |
//! |---|---|
//! | [`directives`] | `Cache-Control`, `CDN-Cache-Control`, `Strata-Cache-Control`, request `Pragma` |
//! | [`sf`] | RFC 8941 structured fields: the targeted fields' dictionaries, `Cache-Status` serialisation |
//! | [`policy`] | what the operator decides per route (heuristics, stale windows, Authorization, Set-Cookie) |
//! | [`freshness`] | freshness lifetime, heuristic freshness, age, and the reuse decision |
//! | [`storable`] | whether a response may be stored (RFC 9111 §3), with the reason when not |
//! | [`key`] | the primary cache key (normalised URI) and the `Vary` secondary key |
//! | [`stored`] | [`StoredResponse`](stored::StoredResponse): what is stored, its binary codec, its tags |
//! | [`body`] | the proxy's response bodies, and the tee that streams a fill while it is stored |
//! | [`conditional`] | client conditionals answered from the cache, revalidation, 304 updates |
//! | [`invalidation`] | URIs an unsafe method's success invalidates (RFC 9111 §4.4) |
//! | [`purge`] | purges by URL, surrogate key, prefix, route or everything, through the engine's tag barriers |
//! | [`status`] | the `Cache-Status` value (RFC 9211) |
//! | [`headers`] | hop-by-hop removal, `Via`, `Age`, request framing checks |
//! | [`wire`] | request framing on the wire: ambiguous heads refused before hyper parses them |
//! | [`proxy`] | the caching reverse proxy (hyper 1.x) over the engine's `Namespace<StoredResponse>` |
//! | [`stats`] | per-route counters, and their `metrics` names |
//! | [`client`] | the outbound client (TLS with Mozilla's roots) for CDN hooks and HTTP sources |
//! | [`source`] | a REST endpoint as a [`strata_core::Source`]: timeouts, budgeted retries, `max-age` as TTL |
//! | [`introspect`] | token validation against an OAuth 2.0 introspection endpoint (RFC 7662), valid until `exp` |
//!
//! # Consistency model
//! Every rule module is pure functions of the request, the stored response and an explicit `now`
//! ([`UnixMillis`](strata_core::UnixMillis)): none reads a clock, so the freshness math is deterministic and
//! tested at chosen instants. The [`proxy`] reads time from the engine's injectable clock only. Storage is the engine's ([`strata::Namespace`] of
//! [`StoredResponse`](stored::StoredResponse)), whose own consistency model applies to the bytes; what is fresh
//! for HTTP is decided from the stored response's own times and headers, never from the engine's TTL alone.
//!
//! # Why not `http-cache-semantics`
//! The `http-cache-semantics` crate (2.x; its `CachePolicy` with `before_request`/`after_response`, read in its
//! documentation and source) is a good cache policy for HTTP clients, but for this tier it would need as much code around it as the
//! rules themselves, and it gets several of them differently from what this tier must do:
//! - no targeted fields: `CDN-Cache-Control`/`Strata-Cache-Control` (RFC 9213) are not read, and its parsed
//!   directives are private, so they cannot be substituted;
//! - no `stale-if-error` nor `stale-while-revalidate` decision, and no `Cache-Status`;
//! - its age is `Age` + resident time: RFC 9111 §4.2.3's `apparent_age` (from `Date`) and `response_delay` are
//!   not applied;
//! - duplicate directives turn into `must-revalidate` and quoted values are trimmed of quotes loosely, where
//!   RFC 9111 §4.2.1 asks for the first occurrence (or stale) and a quoted-string must be parsed as one;
//! - its 304 merge (§4.3.4) replaces only the header fields the stored response already had, so fields new in
//!   the 304 are dropped, and the response it hands out has its `Date` rewritten to now;
//! - `Vary` compares raw header values, without the normalisation the secondary key needs.
//!
//! Hand-written rules are about the same amount of code as the adapter would be, each rule has its own test,
//! and the stored form is ours (a compact binary [`Codec`](strata::codec::Codec) with tags for purges).

pub mod body;
pub mod client;
pub mod conditional;
pub mod directives;
pub mod freshness;
pub mod headers;
pub mod introspect;
pub mod invalidation;
pub mod key;
pub mod policy;
pub mod proxy;
pub mod purge;
pub mod range;
pub mod sf;
pub mod source;
pub mod stats;
pub mod status;
pub mod storable;
pub mod stored;
pub mod wire;

#[cfg(test)]
mod testing;
