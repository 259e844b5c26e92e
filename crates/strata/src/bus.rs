//! The invalidation bus: how one node's writes reach every other node's L1.
//!
//! - [`Bus`] is the transport: `publish` one [`BusMessage`]; `subscribe` to a stream of [`BusEvent`]s. The
//!   in-process [`InProcessBus`] (embedded mode, tests) is a Tokio broadcast channel; the Redis transport
//!   implements the same trait.
//! - [`Cache::attach_bus`](crate::Cache::attach_bus) makes the cache a node: its `invalidate` calls are published
//!   in order with this node's sequence numbers, and a listener task applies other nodes' messages.
//!
//! Delivery semantics the listener enforces:
//! - its own messages (same `origin`) are ignored;
//! - duplicates by `(origin, seq)` are dropped ([`SeqTracker`]);
//! - a gap — a jump in an origin's sequence, or the transport reporting lost messages — means invalidations were
//!   missed, so the node flushes its L1 entirely: stale data is never kept on the hope that nothing important was
//!   lost;
//! - a malformed message or an unknown namespace is counted and skipped, never a crash;
//! - a tag invalidation raises a tag barrier in its namespace (see `Namespace::invalidate_tag`).
//!
//! The publisher is an ordered queue drained by one task, so messages leave in sequence order even though
//! `invalidate` is synchronous.
//!
//! Known limit, until the per-key replay queue (newest wins) lands: a message the transport refuses (Redis down) is
//! counted in [`BusStats::publish_errors`] and dropped. Its sequence number was consumed, so every other node sees
//! a jump at this node's next message and flushes its L1 — safety holds — but if this node publishes nothing
//! more, the others keep their copy until its TTL. The queue is also unbounded for now.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
pub use strata_core::bus::{Bus, BusEvent};
use strata_core::{BusMessage, Error, Invalidation};
use tokio::sync::{broadcast, mpsc};

/// The embedded-mode bus: a Tokio broadcast channel. A subscriber that falls more than `capacity` messages behind
/// gets a [`BusEvent::Gap`].
#[derive(Clone)]
pub struct InProcessBus {
    tx: broadcast::Sender<BusMessage>,
}

impl InProcessBus {
    /// A bus buffering up to 4,096 messages per slow subscriber.
    pub fn new() -> Self {
        Self::with_capacity(4096)
    }

    /// A bus buffering up to `capacity` messages per slow subscriber.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus for InProcessBus {
    fn publish(&self, msg: BusMessage) -> BoxFuture<'_, Result<(), Error>> {
        // No subscriber is not an error: nobody needs telling.
        let _ = self.tx.send(msg);
        Box::pin(async { Ok(()) })
    }

    fn subscribe(&self) -> BoxStream<'static, BusEvent> {
        let rx = self.tx.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(m) => Some((BusEvent::Message(m), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    BusEvent::Gap {
                        reason: format!("subscriber lagged: {n} messages dropped"),
                    },
                    rx,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed()
    }
}

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

/// Counters of a node's bus listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Messages published by this node.
    pub published: u64,
    /// Messages that failed to publish (the transport refused).
    pub publish_errors: u64,
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
}

#[derive(Default)]
pub(crate) struct BusCounters {
    pub published: AtomicU64,
    pub publish_errors: AtomicU64,
    pub applied: AtomicU64,
    pub echoes: AtomicU64,
    pub duplicates: AtomicU64,
    pub gaps: AtomicU64,
    pub malformed: AtomicU64,
    pub unknown_namespace: AtomicU64,
    pub tag_barriers: AtomicU64,
}

impl BusCounters {
    pub(crate) fn snapshot(&self) -> BusStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BusStats {
            published: g(&self.published),
            publish_errors: g(&self.publish_errors),
            applied: g(&self.applied),
            echoes: g(&self.echoes),
            duplicates: g(&self.duplicates),
            gaps: g(&self.gaps),
            malformed: g(&self.malformed),
            unknown_namespace: g(&self.unknown_namespace),
            tag_barriers: g(&self.tag_barriers),
        }
    }
}

/// The sending side of a node: assigns sequence numbers and hands messages to one publishing task, in order.
pub(crate) struct Publisher {
    pub origin: String,
    seq: AtomicU64,
    tx: mpsc::UnboundedSender<BusMessage>,
}

impl Publisher {
    pub(crate) fn new(origin: String, tx: mpsc::UnboundedSender<BusMessage>) -> Self {
        Self {
            origin,
            seq: AtomicU64::new(0),
            tx,
        }
    }

    /// Queues an invalidation. The sequence number is taken under the caller's key lock order, so messages about
    /// one key leave in the order the writes happened.
    pub(crate) fn send(&self, namespace: &str, what: Invalidation, version: Option<u64>, ts: u64) {
        let msg = BusMessage {
            namespace: namespace.to_owned(),
            what,
            version,
            origin: self.origin.clone(),
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            ts,
        };
        // The receiver lives as long as the listener handle; after `close` nothing is published.
        let _ = self.tx.send(msg);
    }
}

/// The running bus attachment of a node. [`close`](Self::close) publishes what is queued and stops listening.
pub struct BusListener {
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
    pub(crate) counters: Arc<BusCounters>,
}

impl BusListener {
    /// The node's bus counters.
    pub fn stats(&self) -> BusStats {
        self.counters.snapshot()
    }

    /// Stops listening after publishing every queued message.
    pub async fn close(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
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
