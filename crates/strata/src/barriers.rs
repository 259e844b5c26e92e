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
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use strata_core::UnixMillis;

pub(crate) struct TagBarriers {
    any: AtomicBool,
    map: RwLock<HashMap<String, UnixMillis>>,
    keep_ms: u64,
}

impl TagBarriers {
    /// Barriers kept for `keep_ms`: at least the longest time an entry can live.
    pub(crate) fn new(keep_ms: u64) -> Self {
        Self {
            any: AtomicBool::new(false),
            map: RwLock::new(HashMap::new()),
            keep_ms,
        }
    }

    /// How long barriers are kept.
    pub(crate) fn keep_ms(&self) -> u64 {
        self.keep_ms
    }

    /// Entries tagged `tag` created at or before `at` are invalid.
    pub(crate) fn raise(&self, tag: &str, at: UnixMillis) {
        let mut map = self.map.write();
        let slot = map.entry(tag.to_owned()).or_insert(at);
        *slot = (*slot).max(at);
        let keep = self.keep_ms;
        map.retain(|_, t| t.saturating_add(keep) >= at);
        self.any.store(!map.is_empty(), Ordering::Release);
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
}
