//! The invalidation bus: how one node's writes reach every other node's L1.
//!
//! - [`Bus`] is the transport: `publish` one [`BusMessage`](strata_core::BusMessage); `subscribe` to a stream of
//!   [`BusEvent`]s. The in-process [`InProcessBus`] (embedded mode, tests) is a Tokio broadcast channel; the Redis
//!   transport (`strata_redis::RedisBus`) implements the same trait.
//! - [`CacheBuilder::with_bus`](crate::CacheBuilder::with_bus) makes the cache a *node*, with a random id
//!   ([`Cache::node_id`](crate::Cache::node_id)). The node belongs to the cache: it starts when the cache is built,
//!   stops at [`Cache::close`](crate::Cache::close) (after publishing what is queued) or when the last `Cache`
//!   clone is dropped, and its counters are [`Cache::bus_stats`](crate::Cache::bus_stats).
//!
//! # Publishing
//! The cache's writes — `invalidate`, `invalidate_version`, `invalidate_tag`, `invalidate_all`, `insert`, source
//! writes — are published after L2 has them, so a node that hears of a write cannot re-read the old value from L2.
//! A message's sequence number is taken and the message queued under one lock, so messages leave in sequence
//! order; one task publishes them. When the transport refuses a message (Redis down), it waits in a backlog: one
//! message per target (key, tag or namespace; newest wins; a clear supersedes its namespace's messages), at most
//! [`BACKLOG_CAP`] targets (beyond that a namespace's messages collapse into one clear), retried every
//! [`RETRY_EVERY`] in order, and every message published after it waits behind it. A message superseded in the
//! backlog never leaves, so the others see a jump in this node's sequence when the backlog drains and flush their
//! L1: the backlog may lose *detail*, never *safety*. A write that must be acknowledged waits until its message is
//! out (or superseded by one that is).
//!
//! # Delivery semantics the listener enforces
//! - its own messages (same `origin`) are ignored;
//! - duplicates by `(origin, seq)` are dropped ([`SeqTracker`]);
//! - a gap — a jump in an origin's sequence, or the transport reporting lost messages — means invalidations were
//!   missed, so the node flushes its L1 entirely: stale data is never kept on the hope that nothing important was
//!   lost;
//! - a malformed message or an unknown namespace is counted and skipped, never a crash;
//! - a tag invalidation raises a tag barrier in its namespace (see `Namespace::invalidate_tag`);
//! - a `Filled` message wakes the loads waiting on that key's lease and changes nothing else;
//! - a feed mark confirms the change feed it names (see `NamespaceBuilder::with_change_feed`);
//! - received messages are applied through operations that never publish, so nothing echoes around.
//!
//! Receivers record the lag (now − the message's `ts`) in the `strata_bus_lag_seconds` histogram.

use std::time::Duration;

pub use strata_core::bus::{Bus, BusEvent};

mod in_process;
mod node;
mod seq;

pub use in_process::InProcessBus;
pub(crate) use node::{Liveness, Namespaces, Node, Publisher, RemoteOps};
pub use seq::{Seen, SeqTracker};

/// Counters of a node on the bus ([`Cache::bus_stats`](crate::Cache::bus_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Messages published by this node.
    pub published: u64,
    /// Messages that failed to publish (the transport refused).
    pub publish_errors: u64,
    /// Messages waiting in the backlog for the transport to recover.
    pub backlog: u64,
    /// Messages superseded in the backlog by a newer one for the same target.
    pub superseded: u64,
    /// Other nodes' messages applied.
    pub applied: u64,
    /// Own messages seen and ignored.
    pub echoes: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Gaps (each flushed L1).
    pub gaps: u64,
    /// Malformed messages skipped.
    pub malformed: u64,
    /// Messages for namespaces this node does not have.
    pub unknown_namespace: u64,
    /// Tag invalidations applied (as barriers).
    pub tag_barriers: u64,
    /// Send → receive lag of the last message received (any origin), in ms. Node clocks differ, so this is a
    /// trend, not an exact figure.
    pub last_lag_ms: u64,
    /// How old the node's last confirmed contact with the bus is, in ms (`None`: the transport does not confirm
    /// contact, see [`Bus::liveness_bound`]).
    pub contact_age_ms: Option<u64>,
    /// The staleness bound: L1 is trusted while `contact_age_ms` is below it (`None`: always trusted).
    pub bound_ms: Option<u64>,
    /// Reads that found an L1 entry but skipped it because contact was older than the bound.
    pub untrusted_reads: u64,
}

/// At most this many targets wait in a publisher's backlog.
pub const BACKLOG_CAP: usize = 10_000;

/// How often a publisher retries its backlog.
pub const RETRY_EVERY: Duration = Duration::from_millis(100);
