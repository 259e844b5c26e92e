//! A coalescing retry queue: what could not be delivered yet, waiting for a timer to try again. Both the bus
//! publisher's backlog (messages the transport refused) and the shared link's replay queue (invalidations L2 did
//! not take) are one of these.
//!
//! # The rule
//! - **One entry per target.** Pushing to a target that waits merges the two ([`Payload::absorb`] keeps the
//!   strongest of each part: the highest version, the longest hold, the lowest sequence number answered for …),
//!   and the entry moves to the back: it is now the newest.
//! - **A group's widest target covers the group.** Every target belongs to a group with one widest target
//!   ([`RetryKey::widest`]: a namespace, and its clear or generation bump). Pushing the widest target absorbs every
//!   waiting target of its group.
//! - **Bounded.** When `cap` targets wait and a new one comes, its whole group collapses into the group's widest
//!   target ([`Payload::widen`]), which covers them all. The queue may lose detail, never safety.
//! - **In arrival order.** Entries are retried oldest first ([`Coalescing::next_after`]). Each carries a
//!   [`Ticket`] taken when it arrived; [`Coalescing::settle`] removes an entry only if nothing was pushed to it
//!   since it was read, so a delivery that raced a newer push never drops the newer one.
//!
//! The queue itself is not synchronised and has no timer: its owner holds it (the publishing task owns its
//! backlog; the shared link keeps its queue under a mutex) and retries on its own schedule.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// When an entry arrived (or was last replaced): increasing, unique within one queue.
pub(crate) type Ticket = u64;

/// What an entry is for. Equal targets coalesce.
pub(crate) trait RetryKey: Clone + Eq + Hash {
    /// The target covering this one's whole group (for a namespace's key or tag: the namespace). Equal for every
    /// target of a group; the widest target's own `widest` is itself.
    fn widest(&self) -> Self;
}

/// What waits for a target.
pub(crate) trait Payload<K>: Clone {
    /// Folds in the payload of an older entry this one supersedes (the same target, or a target of the group this
    /// one's widest target covers), keeping the strongest of each part.
    fn absorb(&mut self, older: Self);

    /// This payload now stands for `widest`, its group's widest target (the queue was full and collapsed the
    /// group).
    fn widen(&mut self, widest: &K) {
        let _ = widest;
    }
}

/// The queue (see the module docs).
#[derive(Debug)]
pub(crate) struct Coalescing<K, P> {
    cap: usize,
    entries: HashMap<K, (P, Ticket)>,
    /// The same entries by ticket: arrival order.
    order: BTreeMap<Ticket, K>,
    next: Ticket,
}

impl<K: RetryKey, P: Payload<K>> Coalescing<K, P> {
    /// An empty queue holding at most `cap` targets.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
        }
    }

    /// Targets waiting.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `target` itself waits (not whether a wider target covers it).
    pub(crate) fn contains(&self, target: &K) -> bool {
        self.entries.contains_key(target)
    }

    /// Every waiting payload, in no particular order.
    pub(crate) fn payloads(&self) -> impl Iterator<Item = &P> {
        self.entries.values().map(|(p, _)| p)
    }

    /// Queues `payload` for `target` (see the module docs for how it coalesces). Returns how many waiting entries
    /// it superseded.
    pub(crate) fn push(&mut self, target: K, mut payload: P) -> usize {
        let widest = target.widest();
        let target = if target == widest {
            target
        } else if !self.entries.contains_key(&target) && self.entries.len() >= self.cap {
            payload.widen(&widest);
            widest
        } else {
            return self.replace(target, payload);
        };
        // The widest target of a group: it absorbs the whole group, itself included.
        let group: Vec<K> = self
            .entries
            .keys()
            .filter(|k| k.widest() == target)
            .cloned()
            .collect();
        let superseded = group.len();
        for k in group {
            let (older, ticket) = self.entries.remove(&k).expect("listed above");
            self.order.remove(&ticket);
            payload.absorb(older);
        }
        self.insert(target, payload);
        superseded
    }

    /// The oldest entry that arrived after `after` (the oldest of all for `None`), with its ticket.
    pub(crate) fn next_after(&self, after: Option<Ticket>) -> Option<(Ticket, K, P)> {
        let from = after.map_or(0, |t| t + 1);
        let (&ticket, target) = self.order.range(from..).next()?;
        let (payload, _) = &self.entries[target];
        Some((ticket, target.clone(), payload.clone()))
    }

    /// `target`'s entry was delivered: removes it, unless a push replaced it since it was read (its ticket
    /// changed). Returns whether it was removed.
    pub(crate) fn settle(&mut self, target: &K, ticket: Ticket) -> bool {
        if self.entries.get(target).is_none_or(|(_, t)| *t != ticket) {
            return false;
        }
        self.entries.remove(target);
        self.order.remove(&ticket);
        true
    }

    fn replace(&mut self, target: K, mut payload: P) -> usize {
        let superseded = match self.entries.remove(&target) {
            Some((older, ticket)) => {
                self.order.remove(&ticket);
                payload.absorb(older);
                1
            }
            None => 0,
        };
        self.insert(target, payload);
        superseded
    }

    fn insert(&mut self, target: K, payload: P) {
        let ticket = self.next;
        self.next += 1;
        self.order.insert(ticket, target.clone());
        self.entries.insert(target, (payload, ticket));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(group, Some(item))`; `(group, None)` is the group's widest target.
    type T = (u8, Option<u8>);

    impl RetryKey for T {
        fn widest(&self) -> Self {
            (self.0, None)
        }
    }

    /// The highest value absorbed, and whether it was widened.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Max(u32, bool);

    impl Payload<T> for Max {
        fn absorb(&mut self, older: Self) {
            self.0 = self.0.max(older.0);
        }
        fn widen(&mut self, _: &T) {
            self.1 = true;
        }
    }

    fn drain(q: &Coalescing<T, Max>) -> Vec<(T, Max)> {
        let mut out = Vec::new();
        let mut cursor = None;
        while let Some((t, k, p)) = q.next_after(cursor) {
            out.push((k, p));
            cursor = Some(t);
        }
        out
    }

    /// A queue of `cap` after these pushes (an item of a group, and a value).
    fn filled(cap: usize, pushes: &[(u8, u8, u32)]) -> Coalescing<T, Max> {
        let mut q = Coalescing::new(cap);
        for &(group, item, v) in pushes {
            q.push((group, Some(item)), Max(v, false));
        }
        q
    }

    #[test]
    fn a_target_keeps_one_entry_the_strongest_and_moves_to_the_back() {
        let mut q = filled(100, &[(1, 1, 5), (1, 2, 1)]);
        assert_eq!(q.push((1, Some(1)), Max(3, false)), 1);
        assert_eq!(
            drain(&q),
            vec![((1, Some(2)), Max(1, false)), ((1, Some(1)), Max(5, false))]
        );
    }

    #[test]
    fn the_widest_target_absorbs_its_group_and_only_its_group() {
        let mut q = filled(100, &[(1, 1, 7), (2, 1, 1), (1, 2, 2)]);
        assert_eq!(q.push((1, None), Max(0, false)), 2);
        assert_eq!(
            drain(&q),
            vec![((2, Some(1)), Max(1, false)), ((1, None), Max(7, false))]
        );
        assert!(q.contains(&(1, None)) && !q.contains(&(1, Some(1))));
    }

    #[test]
    fn a_full_queue_collapses_the_new_targets_group() {
        let mut q = filled(3, &[(1, 1, 1), (1, 2, 2), (2, 1, 9)]);
        // Full: a waiting target still coalesces in place …
        assert_eq!(q.push((1, Some(2)), Max(3, false)), 1);
        assert_eq!(q.len(), 3);
        // … a new one collapses its group into the widest target.
        assert_eq!(q.push((1, Some(3)), Max(0, false)), 2);
        assert_eq!(
            drain(&q),
            vec![((2, Some(1)), Max(9, false)), ((1, None), Max(3, true))]
        );
    }

    #[test]
    fn settle_removes_only_what_was_read() {
        let mut q = filled(100, &[(1, 1, 1), (1, 2, 2)]);
        let (t1, k1, _) = q.next_after(None).unwrap();
        let (t2, k2, _) = q.next_after(Some(t1)).unwrap();
        // Delivering 1 raced a newer push to it: the newer one stays.
        q.push((1, Some(1)), Max(3, false));
        assert!(!q.settle(&k1, t1));
        assert!(q.settle(&k2, t2));
        assert_eq!(drain(&q), vec![((1, Some(1)), Max(3, false))]);
        assert!(!q.is_empty());
    }
}
