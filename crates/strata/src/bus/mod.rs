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
//! The publisher is an ordered queue drained by one task, so messages leave in sequence order.
//!
//! When the transport refuses a message (Redis down), the message moves to a [`Backlog`]: one message per target
//! (key, tag or namespace; newest wins; a clear supersedes its namespace's messages), at most [`BACKLOG_CAP`]
//! targets (beyond that a namespace's messages collapse into one clear), retried every [`RETRY_EVERY`] in order,
//! and every message published after it waits behind it. A message superseded in the backlog never leaves, so the
//! others see a jump in this node's sequence when the backlog drains and flush their L1: the backlog may lose
//! *detail*, never *safety*. Receivers record the lag (now − the message's `ts`) in the `strata_bus_lag_seconds`
//! histogram.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
pub use strata_core::bus::{Bus, BusEvent};
use strata_core::{BusMessage, Error, Invalidation};
use tokio::sync::{broadcast, mpsc};

use crate::retry::{self, Coalescing};

/// The embedded-mode bus: a Tokio broadcast channel. A subscriber that falls more than `capacity` messages behind
/// gets a [`BusEvent::Gap`].
#[derive(Clone)]
pub struct InProcessBus {
    tx: broadcast::Sender<BusMessage>,
    heartbeat: Option<Duration>,
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
            heartbeat: None,
        }
    }

    /// Makes subscriptions confirm contact ([`BusEvent::Live`]) after each burst of messages and at least every
    /// `heartbeat`, and reports `2 × heartbeat` as the [`Bus::liveness_bound`] — the in-process stand-in for a
    /// networked bus, so that the trust rule can be tested without one. Without it (the embedded default) the
    /// bus confirms nothing and nodes trust their L1 as a single process may.
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = Some(heartbeat.max(Duration::from_millis(1)));
        self
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
        let heartbeat = self.heartbeat;
        // `owe_live`: confirm contact as soon as the channel is drained (a send is synchronous, so an empty
        // channel means everything published so far was yielded).
        futures::stream::unfold(
            (rx, heartbeat.is_some()),
            move |(mut rx, mut owe_live)| async move {
                loop {
                    if owe_live && rx.is_empty() {
                        let live = BusEvent::Live {
                            behind: Duration::ZERO,
                        };
                        return Some((live, (rx, false)));
                    }
                    let tick = async {
                        match heartbeat {
                            Some(h) => tokio::time::sleep(h).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        r = rx.recv() => {
                            let ev = match r {
                                Ok(m) => BusEvent::Message(m),
                                Err(broadcast::error::RecvError::Lagged(n)) => BusEvent::Gap {
                                    reason: format!("subscriber lagged: {n} messages dropped"),
                                },
                                Err(broadcast::error::RecvError::Closed) => return None,
                            };
                            return Some((ev, (rx, heartbeat.is_some())));
                        }
                        _ = tick => owe_live = true,
                    }
                }
            },
        )
        .boxed()
    }

    fn liveness_bound(&self) -> Option<Duration> {
        self.heartbeat.map(|h| h * 2)
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

#[derive(Default)]
pub(crate) struct BusCounters {
    pub published: AtomicU64,
    pub publish_errors: AtomicU64,
    pub backlog: AtomicU64,
    pub superseded: AtomicU64,
    pub applied: AtomicU64,
    pub echoes: AtomicU64,
    pub duplicates: AtomicU64,
    pub gaps: AtomicU64,
    pub malformed: AtomicU64,
    pub unknown_namespace: AtomicU64,
    pub tag_barriers: AtomicU64,
    /// Send → receive lag of the last message received, in ms.
    pub last_lag_ms: AtomicU64,
}

impl BusCounters {
    pub(crate) fn snapshot(&self, liveness: Option<&Liveness>, now: u64) -> BusStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BusStats {
            published: g(&self.published),
            publish_errors: g(&self.publish_errors),
            backlog: g(&self.backlog),
            superseded: g(&self.superseded),
            applied: g(&self.applied),
            echoes: g(&self.echoes),
            duplicates: g(&self.duplicates),
            gaps: g(&self.gaps),
            malformed: g(&self.malformed),
            unknown_namespace: g(&self.unknown_namespace),
            tag_barriers: g(&self.tag_barriers),
            last_lag_ms: g(&self.last_lag_ms),
            contact_age_ms: liveness.map(|l| now.saturating_sub(l.confirmed())),
            bound_ms: liveness.map(Liveness::bound_ms),
            untrusted_reads: liveness.map_or(0, |l| g(&l.untrusted_reads)),
        }
    }
}

/// The sending side of a node: assigns sequence numbers and hands messages to one publishing task, in order.
pub(crate) struct Publisher {
    pub origin: String,
    /// The last sequence number taken. A number is taken and its message queued under this one lock, so the
    /// queue is in sequence order: two writers racing could otherwise queue 8 before 7, and every receiver would
    /// count a gap at 8 (flushing its L1) and then drop 7 as a duplicate.
    next: parking_lot::Mutex<u64>,
    tx: mpsc::UnboundedSender<BusMessage>,
    /// The highest sequence number `s` such that every message up to `s` has been accepted by the transport (or
    /// superseded by a newer message for its target that has been). Set by the publishing task only.
    pub(crate) published: tokio::sync::watch::Sender<u64>,
    /// How fresh this node's view of the bus is, when the transport confirms contact.
    pub(crate) liveness: Option<Arc<Liveness>>,
}

impl Publisher {
    pub(crate) fn new(
        origin: String,
        tx: mpsc::UnboundedSender<BusMessage>,
        liveness: Option<Arc<Liveness>>,
    ) -> Self {
        Self {
            origin,
            next: parking_lot::Mutex::new(0),
            tx,
            published: tokio::sync::watch::channel(0).0,
            liveness,
        }
    }

    /// Queues an invalidation and returns its sequence number. Called under the caller's key lock, so messages
    /// about one key leave in the order the writes happened.
    pub(crate) fn send(
        &self,
        namespace: &str,
        what: Invalidation,
        version: Option<u64>,
        ts: u64,
    ) -> u64 {
        let mut next = self.next.lock();
        *next += 1;
        let msg = BusMessage {
            namespace: namespace.to_owned(),
            what,
            version,
            origin: self.origin.clone(),
            seq: *next,
            ts,
        };
        // The receiver lives as long as the listener handle; after `close` nothing is published.
        let _ = self.tx.send(msg);
        *next
    }

    /// Waits until message `seq` has been accepted by the transport (or superseded by a newer one that has), at
    /// most until `deadline`. Returns whether it was.
    pub(crate) async fn published(&self, seq: u64, deadline: tokio::time::Instant) -> bool {
        let mut rx = self.published.subscribe();
        let out = async move { rx.wait_for(|&p| p >= seq).await.is_ok() };
        tokio::time::timeout_at(deadline, out)
            .await
            .unwrap_or(false)
    }
}

/// A node's confirmed contact with the bus (DESIGN §6, "the guarantee, stated as a bound").
///
/// The transport yields [`BusEvent::Live`] whenever it knows that every message published up to some instant
/// has been delivered; the listener applies the messages before it, then records that instant here. The node
/// trusts its L1 only while `now < confirmed + bound`. Any message published before `confirmed` has been applied,
/// and a write is acknowledged only after its message is published, so a value served from L1 was superseded by
/// an acknowledged write at most `bound` ago. Past the bound — Redis down, a cut link, a process that was stopped
/// and just woke up — reads skip L1 (going to L2 or the source, coalesced), and what is filled meanwhile lives in
/// L1 for at most `bound`.
#[derive(Debug)]
pub(crate) struct Liveness {
    /// Cache-clock millis up to which the node has applied every message. Release on store, acquire on load: a
    /// reader that sees the new value also sees the invalidations applied before it.
    confirmed: AtomicU64,
    bound_ms: u64,
    /// Reads that found an L1 entry but did not trust it.
    pub(crate) untrusted_reads: AtomicU64,
}

impl Liveness {
    pub(crate) fn new(bound: Duration) -> Self {
        Self {
            confirmed: AtomicU64::new(0),
            bound_ms: (bound.as_millis() as u64).max(1),
            untrusted_reads: AtomicU64::new(0),
        }
    }

    /// Whether L1 may answer at `now`.
    #[inline]
    pub(crate) fn trusted(&self, now: u64) -> bool {
        now < self
            .confirmed
            .load(Ordering::Acquire)
            .saturating_add(self.bound_ms)
    }

    pub(crate) fn confirm(&self, at: u64) {
        self.confirmed.fetch_max(at, Ordering::AcqRel);
    }

    pub(crate) fn confirmed(&self) -> u64 {
        self.confirmed.load(Ordering::Acquire)
    }

    pub(crate) fn bound_ms(&self) -> u64 {
        self.bound_ms
    }
}

/// At most this many targets wait in a publisher's backlog.
pub const BACKLOG_CAP: usize = 10_000;

/// How often a publisher retries its backlog.
pub const RETRY_EVERY: Duration = Duration::from_millis(100);

/// What a waiting message is about: a key, tag or feed of a namespace, or the whole namespace (its clear).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BusTarget {
    namespace: String,
    scope: Scope,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Scope {
    /// `Delete`, `Set` and `Filled` of one key: the newest of them says what the receivers must do.
    Key(String),
    Tag(String),
    Feed(String),
    All,
}

impl BusTarget {
    pub(crate) fn of(m: &BusMessage) -> Self {
        let scope = match &m.what {
            Invalidation::Delete { key }
            | Invalidation::Set { key }
            | Invalidation::Filled { key } => Scope::Key(key.clone()),
            Invalidation::Tag { tag } => Scope::Tag(tag.clone()),
            Invalidation::Clear => Scope::All,
            Invalidation::FeedMark { feed, .. } => Scope::Feed(feed.clone()),
        };
        Self {
            namespace: m.namespace.clone(),
            scope,
        }
    }
}

impl retry::Target for BusTarget {
    /// A clear covers every message of its namespace.
    fn widest(&self) -> Self {
        Self {
            namespace: self.namespace.clone(),
            scope: Scope::All,
        }
    }
}

/// A refused message, and the lowest sequence number it answers for: its own, or that of a message it superseded
/// (so the publisher knows how far everything is out).
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    pub(crate) msg: BusMessage,
    pub(crate) covers: u64,
}

impl Waiting {
    pub(crate) fn new(msg: BusMessage) -> Self {
        Self {
            covers: msg.seq,
            msg,
        }
    }
}

impl retry::Payload<BusTarget> for Waiting {
    /// The newest message is the one sent; it answers for everything it replaced.
    fn absorb(&mut self, older: Self) {
        self.covers = self.covers.min(older.covers);
    }

    fn widen(&mut self, _: &BusTarget) {
        self.msg.what = Invalidation::Clear;
    }
}

/// Messages the transport refused, waiting for retry (see `crate::retry` for how they coalesce): in sequence
/// order, because the queue is fed in sequence order and a replaced message moves to the back.
pub(crate) type Backlog = Coalescing<BusTarget, Waiting>;

/// The running bus attachment of a node. [`close`](Self::close) publishes what is queued and stops listening.
pub struct BusListener {
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
    pub(crate) counters: Arc<BusCounters>,
    pub(crate) liveness: Option<Arc<Liveness>>,
    pub(crate) clock: Arc<dyn strata_core::Clock>,
}

impl BusListener {
    /// The node's bus counters.
    pub fn stats(&self) -> BusStats {
        self.counters
            .snapshot(self.liveness.as_deref(), self.clock.now())
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

    fn msg(ns: &str, what: Invalidation, seq: u64) -> BusMessage {
        BusMessage {
            namespace: ns.into(),
            what,
            version: None,
            origin: "o".into(),
            seq,
            ts: 0,
        }
    }

    fn push(b: &mut Backlog, m: BusMessage) -> usize {
        b.push(BusTarget::of(&m), Waiting::new(m))
    }

    /// Publishes everything: the messages in order, each with the lowest sequence number it answers for.
    fn take(b: &mut Backlog) -> Vec<(BusMessage, u64)> {
        let mut out = Vec::new();
        while let Some((ticket, target, w)) = b.next_after(None) {
            b.settle(&target, ticket);
            out.push((w.msg, w.covers));
        }
        out
    }

    #[test]
    fn backlog_keeps_the_newest_message_per_target_and_a_clear_covers_its_namespace() {
        let del = |k: &str| Invalidation::Delete { key: k.into() };
        let mut b = Backlog::new(BACKLOG_CAP);
        assert_eq!(push(&mut b, msg("a", del("1"), 1)), 0);
        assert_eq!(push(&mut b, msg("a", del("2"), 2)), 0);
        assert_eq!(push(&mut b, msg("a", del("1"), 3)), 1);
        assert_eq!(push(&mut b, msg("b", del("1"), 4)), 0);
        let seqs: Vec<u64> = take(&mut b).iter().map(|(m, _)| m.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        for (i, k) in ["1", "2", "3"].iter().enumerate() {
            push(&mut b, msg("a", del(k), i as u64));
        }
        push(&mut b, msg("b", del("9"), 10));
        assert_eq!(push(&mut b, msg("a", Invalidation::Clear, 11)), 3);
        let left: Vec<(String, u64)> = take(&mut b)
            .into_iter()
            .map(|(m, _)| (m.namespace, m.seq))
            .collect();
        assert_eq!(left, vec![("b".into(), 10), ("a".into(), 11)]);
    }

    #[test]
    fn a_full_backlog_collapses_a_namespace_into_one_clear() {
        let mut b = Backlog::new(BACKLOG_CAP);
        for i in 0..BACKLOG_CAP as u64 {
            push(
                &mut b,
                msg("a", Invalidation::Delete { key: i.to_string() }, i),
            );
        }
        push(
            &mut b,
            msg("a", Invalidation::Delete { key: "new".into() }, 99_999),
        );
        let all = take(&mut b);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0.what, Invalidation::Clear);
        assert_eq!(
            all[0].1, 0,
            "the clear answers for every message it replaced"
        );
    }

    #[test]
    fn a_published_message_leaves_and_the_unsent_keep_their_place_ahead_of_newer_ones() {
        let del = |k: &str| Invalidation::Delete { key: k.into() };
        let mut b = Backlog::new(BACKLOG_CAP);
        push(&mut b, msg("a", del("1"), 1));
        push(&mut b, msg("a", del("2"), 2));
        let (ticket, target, _) = b.next_after(None).unwrap();
        assert!(b.settle(&target, ticket)); // "1" was published
        push(&mut b, msg("a", del("3"), 3));
        push(&mut b, msg("a", del("2"), 4));
        let seqs: Vec<u64> = take(&mut b).iter().map(|(m, _)| m.seq).collect();
        assert_eq!(seqs, vec![3, 4]);
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
