//! The shared tier (L2) as the engine sees it: the [`SharedTier`] trait and the vocabulary of its race-safe writes.
//!
//! The engine never talks to Redis directly; it talks to a `SharedTier`, which `strata-redis` implements with Lua
//! scripts. Every method is a single round trip, so the engine can bound each with a timeout and a circuit breaker.
//!
//! # Time
//! Every entry the tier stores carries a *stamp*: the tier's own clock (Redis server time) when the entry was
//! written, or — for a load's fill — when the load started. Fences and barriers compare stamps, never node clocks,
//! so ordering across nodes does not depend on their clocks agreeing. The envelope's `fresh_until`/`stale_until`
//! are in the tier's clock too; the engine translates them to its own clock by the offset each lookup reports.
//!
//! # Fences (what a fill may overwrite)
//! 1. A fill under a lease stores only while the lease is still its own (an invalidation voids it).
//! 2. When the stored entry (value or tombstone) and the fill both carry a source version, the smaller loses.
//! 3. Otherwise anything stamped at or after the load's start wins, so a load that began before an invalidation or a
//!    newer write never lands (the stale-set race).
//!
//! # Barriers
//! A tag barrier (`invalidate_tag`) or the namespace's generation barrier (`bump_generation`) is a tier-clock time:
//! an entry stamped before it (or in the same millisecond) reads as absent. Barriers are kept long enough to outlive every entry they cover.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::clock::UnixMillis;
use crate::envelope::{Compression, Envelope};
use crate::error::Error;

/// What became of a fill or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    /// Stored.
    Stored,
    /// Refused: the fill's lease was voided (by an invalidation) or expired.
    LeaseLost,
    /// Refused: a tombstone or a newer entry is stored.
    Superseded,
}

/// An entry as stored: the envelope and its stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped {
    /// The envelope (a value, a negative entry or a tombstone).
    pub envelope: Envelope,
    /// Tier time of the write (for a fill: of the load's start), in ms.
    pub stamp: UnixMillis,
}

/// A lease on one key: proof that this node may load it and fill the shared tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// Wraps a token string (unique per grant).
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The answer to a lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseGrant {
    /// Granted: load, then fill with this token.
    Granted(LeaseToken),
    /// Another node holds the key's lease: it is loading.
    Held,
    /// A lease was granted for this key less than the minimum interval ago: wait for its fill.
    RateLimited,
}

/// The fence a load's fill carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fence<'a> {
    /// Tier time returned by the lookup that preceded the load; `None` if unknown (then the fill never overwrites
    /// a stamped entry).
    pub started_at: Option<UnixMillis>,
    /// The lease under which the load ran, if any.
    pub lease: Option<&'a LeaseToken>,
}

/// The entries found by a multi-key lookup (in key order) and the tier's time then.
pub type Looked = (Vec<Option<Stamped>>, UnixMillis);

/// The barriers of one namespace, in tier time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Barriers {
    /// The last `bump_generation`: everything stamped before it is gone.
    pub generation: Option<UnixMillis>,
    /// The last invalidation of each tag still within its keep period.
    pub tags: HashMap<String, UnixMillis>,
}

/// The name prefix of a *soft* tag barrier: softening tag `T` raises the barrier `SOFT_TAG_PREFIX + T`, kept,
/// published and stored like any tag barrier. It hides nothing (no entry carries such a tag); a read reports an
/// entry tagged `T` stamped before it as soft-purged, for its user to treat as stale (the edge proxy's soft purge).
pub const SOFT_TAG_PREFIX: &str = "\u{1}soft ";

/// The barrier name that softens `tag`.
pub fn soft_tag(tag: &str) -> String {
    format!("{SOFT_TAG_PREFIX}{tag}")
}

impl Barriers {
    /// The latest soft barrier (see [`SOFT_TAG_PREFIX`]) over an entry stamped `stamp` with `tags`: the tag and the
    /// barrier's time.
    pub fn softened<'t>(
        &self,
        tags: &'t [String],
        stamp: UnixMillis,
    ) -> Option<(&'t str, UnixMillis)> {
        if self.tags.is_empty() {
            return None;
        }
        tags.iter()
            .filter_map(|t| {
                self.tags
                    .get(&soft_tag(t))
                    .filter(|&&b| stamp <= b)
                    .map(|&b| (t.as_str(), b))
            })
            .max_by_key(|&(_, b)| b)
    }

    /// Whether an entry stamped `stamp` with `tags` is behind a barrier (and so reads as absent). Stamps have
    /// millisecond resolution: an entry stamped in the barrier's own millisecond may predate it, so it is behind it
    /// (the cost is one extra miss).
    pub fn blocks(&self, tags: &[String], stamp: UnixMillis) -> bool {
        self.generation.is_some_and(|g| stamp <= g)
            || tags
                .iter()
                .any(|t| self.tags.get(t).is_some_and(|&b| stamp <= b))
    }
}

/// The L2 keys of a hot key's replicas: `key␀r0..`. The NUL separator cannot collide with a text key. Everything
/// that invalidates a key in L2 (the engine, the CDC consumer) tombstones these copies too.
pub fn replica_keys(key: &str, replicas: u8) -> impl Iterator<Item = String> + '_ {
    (0..replicas).map(move |i| format!("{key}\u{0}r{i}"))
}

/// A shared cache tier. Every method is one round trip; implementations bound it with their own timeout and
/// report failures as [`Error::Unavailable`] or [`Error::Timeout`] with `tier: L2`. Corrupt stored bytes are a miss,
/// never an error.
pub trait SharedTier: Send + Sync + 'static {
    /// The entry under `key` (tombstones included) and the tier's time now.
    fn lookup<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(Option<Stamped>, UnixMillis), Error>>;

    /// The entries under `keys` (in order) and the tier's time now, in one round trip.
    fn lookup_many<'a>(
        &'a self,
        namespace: &'a str,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Looked, Error>>;

    /// Asks for the key's lease for `ttl`; at most one grant per key per `min_interval`.
    fn lease<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        ttl: Duration,
        min_interval: Duration,
    ) -> BoxFuture<'a, Result<LeaseGrant, Error>>;

    /// Gives a lease back without filling (the load failed), if it is still this token's.
    fn release<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Stores a load's result under its [`Fence`]. `now` is the caller's estimate of tier time (for the TTL).
    fn fill<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        envelope: &'a Envelope,
        compression: Compression,
        now: UnixMillis,
        fence: Fence<'a>,
    ) -> BoxFuture<'a, Result<FillOutcome, Error>>;

    /// Stores a write (write-through): refused only by a greater stored version.
    fn write<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        envelope: &'a Envelope,
        compression: Compression,
        now: UnixMillis,
    ) -> BoxFuture<'a, Result<FillOutcome, Error>>;

    /// Stores a tombstone (with the source's new `version`, if known) refusing older fills for `hold_off`, and
    /// voids the key's lease. Returns the tombstone's stamp.
    fn invalidate<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        version: Option<u64>,
        hold_off: Duration,
    ) -> BoxFuture<'a, Result<UnixMillis, Error>>;

    /// Raises a tag barrier (`Some(tag)`) or the generation barrier (`None`), kept for `keep`. Returns its time.
    fn raise_barrier<'a>(
        &'a self,
        namespace: &'a str,
        tag: Option<&'a str>,
        keep: Duration,
    ) -> BoxFuture<'a, Result<UnixMillis, Error>>;

    /// The namespace's live barriers.
    fn barriers<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Barriers, Error>>;
}
