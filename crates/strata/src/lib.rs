//! Strata: a multi-tier cache whose read path is safe under stampedes and races.
//!
//! This crate is the engine and the public facade. A [`Cache`] holds namespaces; each [`Namespace`] has one value
//! type and one [`Policy`] (TTL with jitter, stale-while-revalidate, fail-safe, early refresh, negative caching,
//! load timeouts, an L1 byte budget and eviction policy).
//!
//! # Features and their cost
//! - **L1** ([`l1`]): in-process, bounded in bytes, synchronous hits returning the stored `Arc` (no decoding).
//! - **Single-flight** ([`flight`](crate::Namespace::get_or_load)): N concurrent misses of a key cause one load; the
//!   load runs in a detached task, so a cancelled caller never strands the others. Cost: one spawned task per load.
//! - **Stale-while-revalidate, early refresh (ratio or XFetch), fail-safe, soft and hard timeouts**: see
//!   [`Namespace`] for the read path.
//! - **Tombstones**: `invalidate` blocks any load that began before it from filling afterwards.
//! - **Metrics**: striped counters per namespace ([`Namespace::stats`]), pushed to the `metrics` facade by
//!   [`Cache::publish_metrics`]; load latency as the `strata_load_seconds` histogram.
//!
//! # Consistency model
//! Immediately consistent within a process for writes made through the cache (`insert`, `invalidate`): no read
//! that starts after a write returns data older than it. Eventually consistent with the source for changes the
//! cache is not told about: bounded by the TTL (± jitter), plus the stale and fail-safe windows when those are on
//! (and every stale answer says so in its [`Status`]).
//!
//! Every lookup returns a [`Lookup`]: the value with how it was obtained ([`Status`]).
//!
//! # With a shared tier (L2)
//! [`CacheBuilder::with_shared_tier`] adds L2 (e.g. `strata_redis::RedisL2`); each namespace then needs a
//! [`codec`]. Misses consult L2 before the source, with leases for distributed coalescing; writes reach L2 before
//! the bus tells other nodes; tag and generation barriers live in L2; every L2 call passes a
//! [`breaker::CircuitBreaker`], and invalidations that cannot reach L2 wait in a replay queue. Hot keys
//! ([`hotkeys::HotKeyDetector`]) are pinned in L1, also where a namespace's L1 is off. See `Namespace` (read path)
//! and the `shared` module docs (Redis down).

mod barriers;
pub mod behind;
pub mod breaker;
pub mod bus;
mod cache;
pub mod codec;
mod entry;
mod flight;
pub mod hotkeys;
pub mod keys;
pub mod l1;
pub mod limit;
mod lookup;
mod namespace;
pub mod protect;
mod retry;
pub mod retry_budget;
mod shared;
mod stats;
mod stop;

pub use behind::journal;

pub use cache::{Cache, CacheBuilder, FeedStats, NamespaceBuilder};
pub use lookup::{Lookup, StaleReason, Status};
pub use namespace::{Claim, ClaimToken, Namespace, WarmReport, Weigher, BARRIER_STALENESS};
pub use shared::{BreakerOptions, SharedStats};
pub use stats::NamespaceStats;
pub use strata_core::{
    Clock, Coalescing, EarlyRefresh, Error, Eviction, Fetched, HotKeys, L1Policy, L2Policy,
    LoadTimeout, ManualClock, Policy, PolicyBuilder, PolicyError, SharedTier, Sink, Source,
    SystemClock, Tier, TokioClock, UnixMillis, WriteErrorKind, WriteMode,
};
