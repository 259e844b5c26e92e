//! The pending overlay: which write-behind write a read on this node sees, until the source has it.
//!
//! # The rule
//! - Per key, only the *newest* pending write counts, by journal sequence number: the journal orders a key's
//!   writes (its sequence and the write's version are taken in one step), and the flusher writes only a key's
//!   newest write, so that is what the source will hold. Two writers of one key may finish journaling in either
//!   order; the older one recording last changes nothing.
//! - A pending delete is shown too: a read then sees "absent", not the row the source still has.
//! - A flush of write `seq` (committed, or parked as a dead letter) clears the key only if no newer write is
//!   pending: a newer write journaled while the older one was in flight must stay visible until its own flush.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// A key's newest pending write: its journal seq and its value (`None`: a pending delete).
type Write<V> = (u64, Option<Arc<V>>);

/// The pending write-behind writes of one namespace, as readers must see them (see the module docs).
pub(crate) struct Overlay<V> {
    /// Each key's newest pending write. One `parking_lot` mutex: written by every write-behind write and by the
    /// flusher after each flush, read by `fetch`; each critical section is one map operation, never held across
    /// an `.await`.
    pending: Mutex<HashMap<String, Write<V>>>,
}

impl<V> Default for Overlay<V> {
    fn default() -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
        }
    }
}

impl<V> Overlay<V> {
    /// Records write `seq` of `key` (`value`: `None` for a delete), unless a newer write of the key is pending.
    pub(crate) fn record(&self, key: &str, seq: u64, value: Option<Arc<V>>) {
        let mut pending = self.pending.lock();
        if pending.get(key).is_none_or(|(s, _)| *s < seq) {
            pending.insert(key.to_owned(), (seq, value));
        }
    }

    /// What a read of `key` sees: `Some(Some(v))` a pending value, `Some(None)` a pending delete, `None` nothing
    /// pending (read the caches and the source).
    pub(crate) fn pending(&self, key: &str) -> Option<Option<Arc<V>>> {
        self.pending.lock().get(key).map(|(_, v)| v.clone())
    }

    /// Write `seq` of `key` is in the source (or parked): stop serving it — unless a newer write is pending.
    pub(crate) fn flushed(&self, key: &str, seq: u64) {
        let mut pending = self.pending.lock();
        if pending.get(key).is_some_and(|(s, _)| *s <= seq) {
            pending.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(o: &Overlay<u32>, key: &str) -> Option<Option<u32>> {
        o.pending(key).map(|v| v.map(|v| *v))
    }

    #[test]
    fn the_newest_write_wins_whatever_order_they_are_recorded_in() {
        let o = Overlay::default();
        o.record("k", 2, Some(Arc::new(20)));
        o.record("k", 1, Some(Arc::new(10)));
        assert_eq!(
            seen(&o, "k"),
            Some(Some(20)),
            "an older write recorded late"
        );
        o.record("k", 3, None);
        assert_eq!(
            seen(&o, "k"),
            Some(None),
            "a pending delete reads as absent"
        );
        assert_eq!(seen(&o, "other"), None);
    }

    #[test]
    fn a_flush_of_an_older_write_leaves_a_newer_one_pending() {
        let o = Overlay::default();
        o.record("k", 1, Some(Arc::new(10)));
        o.record("k", 2, Some(Arc::new(20)));
        o.flushed("k", 1);
        assert_eq!(seen(&o, "k"), Some(Some(20)));
        o.flushed("k", 2);
        assert_eq!(
            seen(&o, "k"),
            None,
            "flushed: reads go to the caches and the source"
        );
    }

    #[test]
    fn a_flush_covers_every_older_write_and_a_later_write_shows_again() {
        let o = Overlay::default();
        o.record("k", 4, Some(Arc::new(40)));
        // The flusher committed write 5 (which covered 4) before 5 was recorded here.
        o.flushed("k", 5);
        assert_eq!(seen(&o, "k"), None);
        o.record("k", 6, Some(Arc::new(60)));
        assert_eq!(seen(&o, "k"), Some(Some(60)));
    }
}
