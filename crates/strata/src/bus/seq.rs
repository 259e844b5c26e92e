//! Per-origin sequence tracking: how the listener tells duplicates and gaps from messages in order.

use std::collections::HashMap;

/// What [`SeqTracker::observe`] concluded about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The first message from this origin (earlier ones predate this node's subscription).
    First,
    /// The next message in sequence.
    InOrder,
    /// Already seen (or older): drop it.
    Duplicate,
    /// `missed` messages from this origin never arrived; this one is new.
    Gap {
        /// How many.
        missed: u64,
    },
}

/// Per-origin sequence tracking: dedupe and gap detection. Memory is bounded: at most `max_origins` origins are
/// remembered; the least recently heard one is forgotten first (if it speaks again it counts as `First`).
#[derive(Debug)]
pub struct SeqTracker {
    last: HashMap<String, (u64, u64)>,
    tick: u64,
    max_origins: usize,
}

impl SeqTracker {
    /// A tracker remembering up to `max_origins` origins.
    pub fn new(max_origins: usize) -> Self {
        Self {
            last: HashMap::new(),
            tick: 0,
            max_origins: max_origins.max(1),
        }
    }

    /// Records `(origin, seq)`.
    pub fn observe(&mut self, origin: &str, seq: u64) -> Seen {
        self.tick += 1;
        let tick = self.tick;
        if let Some((last, heard)) = self.last.get_mut(origin) {
            *heard = tick;
            return if seq <= *last {
                Seen::Duplicate
            } else {
                let missed = seq - *last - 1;
                *last = seq;
                if missed == 0 {
                    Seen::InOrder
                } else {
                    Seen::Gap { missed }
                }
            };
        }
        if self.last.len() >= self.max_origins {
            if let Some(oldest) = self
                .last
                .iter()
                .min_by_key(|(_, (_, heard))| *heard)
                .map(|(k, _)| k.clone())
            {
                self.last.remove(&oldest);
            }
        }
        self.last.insert(origin.to_owned(), (seq, tick));
        Seen::First
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tracker_classifies_order_duplicates_and_gaps() {
        let mut t = SeqTracker::new(16);
        assert_eq!(t.observe("a", 5), Seen::First);
        assert_eq!(t.observe("a", 6), Seen::InOrder);
        assert_eq!(t.observe("a", 6), Seen::Duplicate);
        assert_eq!(t.observe("a", 3), Seen::Duplicate);
        assert_eq!(t.observe("a", 9), Seen::Gap { missed: 2 });
        assert_eq!(t.observe("b", 1), Seen::First);
        assert_eq!(t.observe("a", 10), Seen::InOrder);
    }

    #[test]
    fn tracker_memory_is_bounded() {
        let mut t = SeqTracker::new(2);
        t.observe("a", 1);
        t.observe("b", 1);
        t.observe("a", 2);
        t.observe("c", 1); // forgets b, the least recently heard
        assert_eq!(t.last.len(), 2);
        assert_eq!(t.observe("b", 2), Seen::First);
    }

    proptest! {
        /// Deliver each origin's messages in order, dropping some and repeating some: every drop is reported as a
        /// gap of the right size at the next delivered message, and every repeat as a duplicate.
        #[test]
        fn every_loss_is_a_gap_and_every_repeat_a_duplicate(
            plan in proptest::collection::vec((0u8..3, 0u8..10), 1..300),
        ) {
            let mut t = SeqTracker::new(16);
            let mut next = [1u64; 3];
            let mut delivered_any = [false; 3];
            let mut last_delivered = [0u64; 3];
            for (origin, action) in plan {
                let o = origin as usize;
                let name = format!("o{origin}");
                match action {
                    0 => next[o] += 1, // lost in transit
                    1 if delivered_any[o] => {
                        prop_assert_eq!(t.observe(&name, last_delivered[o]), Seen::Duplicate);
                    }
                    _ => {
                        let seq = next[o];
                        next[o] += 1;
                        let seen = t.observe(&name, seq);
                        let expected = if !delivered_any[o] {
                            Seen::First
                        } else if seq == last_delivered[o] + 1 {
                            Seen::InOrder
                        } else {
                            Seen::Gap { missed: seq - last_delivered[o] - 1 }
                        };
                        prop_assert_eq!(seen, expected);
                        delivered_any[o] = true;
                        last_delivered[o] = seq;
                    }
                }
            }
        }
    }
}
