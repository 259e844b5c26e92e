//! `strata-core`: the vocabulary every Strata tier shares, and no I/O.
//!
//! - [`envelope`]: how a cached value travels between tiers (L2, journals, the bus): a compact, checksummed
//!   binary format. Decoding never panics; corrupt or foreign bytes are a [`CodecError`], which the engine turns
//!   into a miss plus a metric.
//! - [`policy`]: the per-namespace knobs of DESIGN §2, each with a documented default and validated on build.
//! - [`clock`]: the injectable time source. Every timestamp in Strata is Unix milliseconds read from a [`Clock`],
//!   so tests can drive time deterministically.
//! - [`error`]: what failed, in which tier, and whether a retry may help.
//! - [`fetched`]: what a source returns for one key (value or absence, with its version and tags).
//! - [`shared`]: the [`SharedTier`] trait the engine drives L2 through, with its fences, leases and barriers.
//! - [`source`]: the source of truth as the engine sees it ([`Source`] reads, [`Sink`] writes).
//! - [`bus`]: the invalidation messages nodes exchange, JSON on the wire, validated on decode.

pub mod bus;
pub mod clock;
pub mod envelope;
pub mod error;
pub mod fetched;
pub mod limit;
pub mod policy;
pub mod shared;
pub mod source;

pub use bus::{Bus, BusError, BusEvent, BusMessage, Invalidation};
pub use clock::{Clock, Hlc, ManualClock, SystemClock, TokioClock, UnixMillis};
pub use envelope::{CodecError, Compression, Envelope, EnvelopeKind};
pub use error::{Error, Rejection, SharedError, Tier, WriteErrorKind};
pub use fetched::Fetched;
pub use policy::{
    Coalescing, EarlyRefresh, Eviction, HotKeys, L1Policy, L2Policy, LoadTimeout, Policy,
    PolicyBuilder, PolicyError, WriteMode,
};
pub use shared::{
    soft_tag, Barriers, Fence, FillOutcome, LeaseGrant, LeaseToken, SharedTier, Stamped,
    SOFT_TAG_PREFIX,
};
pub use source::{Sink, Source};
