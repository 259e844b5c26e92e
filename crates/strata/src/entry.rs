//! The L1 entry: a decoded value (`Arc<V>`, so a hit never decodes) with the envelope's metadata.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use strata_core::UnixMillis;

/// Fixed bytes charged per entry on top of the key and the value's weight: the entry struct and its `Arc`, the
/// value's `Arc` header, the key's `String` header and the store's slot and ghost share. Measured, not guessed:
/// the `l1` benchmark counts 221 allocated bytes per entry for an 8-byte key and an 8-byte value, i.e. ≈ 205 of
/// overhead, rounded up here.
pub const ENTRY_OVERHEAD: u64 = 208;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A value from the source.
    Value,
    /// The source said the key does not exist.
    Negative,
    /// The key was invalidated: reads treat it as absent; fills older than it are refused until `stale_until`.
    Tombstone,
}

/// What a value or negative [`Entry`] is made of: the fields [`Entry::new`] takes by name.
#[derive(Debug)]
pub struct EntryParts<V> {
    /// `Some`: a value entry; `None`: a negative entry (the source said the key does not exist).
    pub value: Option<Arc<V>>,
    /// Local time of the load or write the entry holds: tag barriers and refreshes compare against it.
    pub created_at: UnixMillis,
    /// Answered as a hit before this instant.
    pub fresh_until: UnixMillis,
    /// Kept for stale-while-revalidate and fail-safe until this instant (raised to `fresh_until` if earlier).
    pub stale_until: UnixMillis,
    /// The source's version: while the entry lives, fills of older versions are refused.
    pub version: Option<u64>,
    /// What the entry is invalidated by besides its key.
    pub tags: Vec<String>,
    /// How long the load took, in milliseconds: XFetch weighs early refresh by it.
    pub delta_ms: u32,
    /// The caller's estimate of the value's bytes; the key, tags and [`ENTRY_OVERHEAD`] are added.
    pub value_weight: u64,
}

/// One cached entry. Immutable except for the fail-safe retry throttle.
#[derive(Debug)]
pub struct Entry<V> {
    pub(crate) value: Option<Arc<V>>,
    pub(crate) kind: EntryKind,
    pub(crate) created_at: UnixMillis,
    pub(crate) fresh_until: UnixMillis,
    pub(crate) stale_until: UnixMillis,
    pub(crate) version: Option<u64>,
    pub(crate) tags: Vec<String>,
    pub(crate) delta_ms: u32,
    pub(crate) weight: u64,
    /// The shared tier's stamp of the entry this one was read from (tier time); 0 if it was not read from L2.
    pub(crate) stamp: UnixMillis,
    /// Fail-safe throttle: no new load for this key before this instant after a failed one.
    pub(crate) retry_after: AtomicU64,
}

impl<V> Entry<V> {
    /// A value or negative entry (negative when `parts.value` is `None`). The key and [`ENTRY_OVERHEAD`] are
    /// added to the value's weight here.
    pub fn new(key: &str, parts: EntryParts<V>) -> Self {
        let EntryParts {
            value,
            created_at,
            fresh_until,
            stale_until,
            version,
            tags,
            delta_ms,
            value_weight,
        } = parts;
        let kind = if value.is_some() {
            EntryKind::Value
        } else {
            EntryKind::Negative
        };
        let tag_bytes: usize = tags.iter().map(|t| t.len() + 24).sum();
        Self {
            value,
            kind,
            created_at,
            fresh_until,
            stale_until: stale_until.max(fresh_until),
            version,
            tags,
            delta_ms,
            weight: key.len() as u64 + value_weight + tag_bytes as u64 + ENTRY_OVERHEAD,
            stamp: 0,
            retry_after: AtomicU64::new(0),
        }
    }

    /// A copy that expires — fresh and stale — by `until` at the latest (pinned hot keys; fills made while the
    /// bus is not confirmed live).
    pub(crate) fn expiring_by(&self, until: UnixMillis) -> Self {
        let fresh_until = self.fresh_until.min(until);
        Self {
            value: self.value.clone(),
            kind: self.kind,
            created_at: self.created_at,
            fresh_until,
            stale_until: self.stale_until.min(until).max(fresh_until),
            version: self.version,
            tags: self.tags.clone(),
            delta_ms: self.delta_ms,
            weight: self.weight,
            stamp: self.stamp,
            retry_after: AtomicU64::new(
                self.retry_after.load(std::sync::atomic::Ordering::Relaxed),
            ),
        }
    }

    /// A tombstone that blocks older fills until `hold_until`.
    pub fn tombstone(
        key: &str,
        now: UnixMillis,
        hold_until: UnixMillis,
        version: Option<u64>,
    ) -> Self {
        Self {
            value: None,
            kind: EntryKind::Tombstone,
            created_at: now,
            fresh_until: now,
            stale_until: hold_until,
            version,
            tags: Vec::new(),
            delta_ms: 0,
            weight: key.len() as u64 + ENTRY_OVERHEAD,
            stamp: 0,
            retry_after: AtomicU64::new(0),
        }
    }

    /// The value, or `None` for negative entries and tombstones.
    pub fn value(&self) -> Option<&Arc<V>> {
        self.value.as_ref()
    }
    /// What the entry records.
    pub fn kind(&self) -> EntryKind {
        self.kind
    }
    /// When the entry was created.
    pub fn created_at(&self) -> UnixMillis {
        self.created_at
    }
    /// Fresh until.
    pub fn fresh_until(&self) -> UnixMillis {
        self.fresh_until
    }
    /// Kept until (stale and fail-safe windows, or a tombstone's hold-off).
    pub fn stale_until(&self) -> UnixMillis {
        self.stale_until
    }
    /// The source version, if any.
    pub fn version(&self) -> Option<u64> {
        self.version
    }
    /// Tags.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }
    /// The last load's duration in milliseconds.
    pub fn delta_ms(&self) -> u32 {
        self.delta_ms
    }
    /// The bytes this entry is charged in the L1 budget.
    pub fn weight(&self) -> u64 {
        self.weight
    }
    /// Whether the entry is past all of its windows at `now`.
    pub fn is_expired(&self, now: UnixMillis) -> bool {
        now >= self.stale_until
    }
    pub(crate) fn retry_after(&self) -> UnixMillis {
        self.retry_after.load(Ordering::Relaxed)
    }
    pub(crate) fn throttle_until(&self, until: UnixMillis) {
        self.retry_after.fetch_max(until, Ordering::Relaxed);
    }
}
