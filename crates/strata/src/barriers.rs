//! Tag barriers: "every entry carrying tag T created at or before time B is gone".
//!
//! `invalidate_tag` cannot find the tagged entries (there is no tag → keys index, which would cost memory on
//! every fill), so it records a barrier instead, and reads check an entry's tags against the barriers lazily.
//! A barrier is kept only as long as an entry created before it could still be alive (the namespace's longest
//! entry lifetime); after that it is pruned, so memory stays bounded by the tags invalidated recently.
//!
//! Cost: a hit on an untagged entry, or any hit while no barrier exists, pays one relaxed atomic load; a hit on a
//! tagged entry while barriers exist takes a read lock and one map lookup per tag.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;
use strata_core::{UnixMillis, SOFT_TAG_PREFIX};

/// How close (ms) a soft barrier read from the shared tier may be to one already known and still be the same
/// purge (see [`TagBarriers::raise_soft_unheard`]).
pub(crate) const SAME_PURGE_MS: u64 = 1_000;

pub(crate) struct TagBarriers {
    any: AtomicBool,
    /// The last time the whole namespace was cleared in this process (0: never); checked only by fenced
    /// inserts, since a clear empties L1 itself.
    cleared: AtomicU64,
    map: RwLock<HashMap<String, UnixMillis>>,
    /// Soft barriers (a barrier named `SOFT_TAG_PREFIX + tag`, stored here under `tag`): they hide nothing, they
    /// only date the entries' soft purge (see [`TagBarriers::softened`]).
    any_soft: AtomicBool,
    soft: RwLock<HashMap<String, UnixMillis>>,
    keep_ms: u64,
}

impl TagBarriers {
    /// Barriers kept for `keep_ms`: at least the longest time an entry can live.
    pub(crate) fn new(keep_ms: u64) -> Self {
        Self {
            any: AtomicBool::new(false),
            cleared: AtomicU64::new(0),
            map: RwLock::new(HashMap::new()),
            any_soft: AtomicBool::new(false),
            soft: RwLock::new(HashMap::new()),
            keep_ms,
        }
    }

    /// How long barriers are kept.
    pub(crate) fn keep_ms(&self) -> u64 {
        self.keep_ms
    }

    /// Entries tagged `tag` created at or before `at` are invalid.
    pub(crate) fn raise(&self, tag: &str, at: UnixMillis) {
        if let Some(soft) = tag.strip_prefix(SOFT_TAG_PREFIX) {
            let mut map = self.soft.write();
            let slot = map.entry(soft.to_owned()).or_insert(at);
            *slot = (*slot).max(at);
            let keep = self.keep_ms;
            map.retain(|_, t| t.saturating_add(keep) >= at);
            self.any_soft.store(!map.is_empty(), Ordering::Release);
            return;
        }
        let mut map = self.map.write();
        let slot = map.entry(tag.to_owned()).or_insert(at);
        *slot = (*slot).max(at);
        let keep = self.keep_ms;
        map.retain(|_, t| t.saturating_add(keep) >= at);
        self.any.store(!map.is_empty(), Ordering::Release);
    }

    /// A soft barrier read back from the shared tier: raised only when this node has not heard of it — no soft
    /// barrier of the tag within [`SAME_PURGE_MS`] before `at`. The bus already dated a purge it delivered by the
    /// sender's own clock, and the tier's time (converted to this node's) can read a little later than that; moving
    /// the barrier forward by it would take responses revalidated just after the purge for soft-purged ones. A
    /// node that missed a later purge of the same tag missed a message, and a gap drops its whole L1.
    pub(crate) fn raise_soft_unheard(&self, tag: &str, at: UnixMillis) {
        let heard = self
            .soft
            .read()
            .get(tag)
            .is_some_and(|&b| b.saturating_add(SAME_PURGE_MS) >= at);
        if !heard {
            self.raise(&strata_core::soft_tag(tag), at);
        }
    }

    /// Whether an entry with these tags, created at `created_at`, is behind a barrier.
    #[inline]
    pub(crate) fn blocks(&self, tags: &[String], created_at: UnixMillis) -> bool {
        if tags.is_empty() || !self.any.load(Ordering::Acquire) {
            return false;
        }
        let map = self.map.read();
        tags.iter()
            .any(|t| map.get(t).is_some_and(|&b| b >= created_at))
    }

    /// When an entry with these tags, created at `created_at`, was soft-purged (the latest soft barrier over it).
    #[inline]
    pub(crate) fn softened(&self, tags: &[String], created_at: UnixMillis) -> Option<UnixMillis> {
        if tags.is_empty() || !self.any_soft.load(Ordering::Acquire) {
            return None;
        }
        let map = self.soft.read();
        tags.iter()
            .filter_map(|t| map.get(t).copied().filter(|&b| b >= created_at))
            .max()
    }

    /// The whole namespace was cleared at `at`.
    pub(crate) fn clear(&self, at: UnixMillis) {
        self.cleared.fetch_max(at, Ordering::AcqRel);
    }

    /// Whether an entry created at `created_at` predates the last clear (a fenced insert must not land).
    pub(crate) fn cleared_since(&self, created_at: UnixMillis) -> bool {
        self.cleared.load(Ordering::Acquire) >= created_at
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_older_tagged_entries_only_and_prunes() {
        let b = TagBarriers::new(1_000);
        let tv = vec!["tv".to_string()];
        assert!(!b.blocks(&tv, 10));
        b.raise("tv", 100);
        assert!(b.blocks(&tv, 100) && b.blocks(&tv, 50));
        assert!(
            !b.blocks(&tv, 101),
            "an entry created after the barrier is valid"
        );
        assert!(!b.blocks(&["radio".to_string()], 50));
        assert!(!b.blocks(&[], 50));
        b.raise("radio", 2_000);
        assert_eq!(
            b.len(),
            1,
            "the tv barrier outlived every entry it could block"
        );
    }

    #[test]
    fn soft_barriers_date_entries_and_hide_nothing() {
        let b = TagBarriers::new(1_000);
        let tv = vec!["tv".to_string(), "sale".to_string()];
        assert_eq!(b.softened(&tv, 10), None);
        b.raise(&strata_core::soft_tag("tv"), 100);
        b.raise(&strata_core::soft_tag("sale"), 120);
        assert!(!b.blocks(&tv, 50), "a soft barrier blocks nothing");
        assert_eq!(b.softened(&tv, 50), Some(120), "the latest one counts");
        assert_eq!(b.softened(&tv, 110), Some(120));
        assert_eq!(b.softened(&tv, 121), None, "created after: not purged");
        assert_eq!(b.softened(&["radio".to_string()], 50), None);
        b.raise(&strata_core::soft_tag("x"), 5_000);
        assert_eq!(b.softened(&tv, 50), None, "pruned past the keep period");
    }

    #[test]
    fn a_soft_barrier_read_back_is_raised_only_when_unheard() {
        let b = TagBarriers::new(10_000);
        let tv = vec!["tv".to_string()];
        b.raise(&strata_core::soft_tag("tv"), 100);
        b.raise_soft_unheard("tv", 104);
        assert_eq!(
            b.softened(&tv, 102),
            None,
            "the same purge read back a little later does not move the barrier"
        );
        b.raise_soft_unheard("radio", 104);
        assert_eq!(
            b.softened(&["radio".to_string()], 50),
            Some(104),
            "an unheard one is raised"
        );
        b.raise_soft_unheard("tv", 100 + SAME_PURGE_MS + 1);
        assert_eq!(
            b.softened(&tv, 500),
            Some(100 + SAME_PURGE_MS + 1),
            "a later purge is another"
        );
    }
}
