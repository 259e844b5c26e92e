//! The bus node: what makes a cache built [`with_bus`](crate::CacheBuilder::with_bus) one node among others.
//!
//! # Tasks
//! - **The publishing loop** owns the receiving end of the [`Publisher`]'s queue and the [`Backlog`]. It takes
//!   every queued message (in sequence order: see `Publisher::send`) into the backlog and publishes the backlog in
//!   order; a refusal leaves the rest waiting, retried every [`RETRY_EVERY`], and new messages join it meanwhile.
//!   After each attempt it advances the `published` mark: the highest sequence number up to which everything is
//!   out (or superseded by something that is), which `Publisher::published` waits on.
//! - **The listening loop** owns the subscription and a [`SeqTracker`], and dispatches each event to the cache's
//!   namespaces ([`Namespaces`], held weakly, so the loop never keeps the cache alive) through [`RemoteOps`]:
//!   primitive operations that never publish.
//! - Both stop when [`Node::close`] or [`Node::stop`] is called, or when the node is dropped. On the way out the
//!   publishing loop publishes what is queued once more; `close` waits for that, `stop` (the cache's `Drop`)
//!   does not.
//!
//! [`RETRY_EVERY`]: super::RETRY_EVERY

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use strata_core::bus::{Bus, BusEvent};
use strata_core::{BusMessage, Clock, Invalidation};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{BusStats, Seen, SeqTracker, BACKLOG_CAP, RETRY_EVERY};
use crate::retry::{self, Coalescing};
use crate::stop::{Stop, Stopping};

/// What a received message does to one namespace. Primitive operations only, and none of them publishes: the
/// message came from the bus, and sending it on would echo it around forever.
pub(crate) trait RemoteOps: Send + Sync {
    /// Another node wrote or invalidated `key` (at `version`, when known): tombstone it in L1 — refusing fills
    /// older than `version` while the tombstone lives — and poison its load in flight.
    fn drop_key(&self, key: &str, version: Option<u64>);
    /// Another node invalidated a tag, in a message sent at `sent_at` (its clock): raise its barrier here
    /// (entries carrying it read as absent). A hard barrier is dated on receipt (the safe side: it also covers
    /// what was stored here while the message travelled); a soft one at the sender's own time, so a response
    /// revalidated anywhere after the purge does not read as soft-purged here.
    fn drop_tag(&self, tag: &str, sent_at: strata_core::UnixMillis);
    /// Drop every entry: another node cleared the namespace, or this node missed messages (a gap).
    fn drop_all(&self);
    /// A lease holder filled L2 for `key`: wake the loads waiting on its lease.
    fn lease_freed(&self, key: &str);
}

/// The namespaces and change feeds messages are dispatched to (the cache's registry).
pub(crate) trait Namespaces: Send + Sync {
    /// The namespace `name`, if registered.
    fn namespace(&self, name: &str) -> Option<Arc<dyn RemoteOps>>;
    /// Every registered namespace.
    fn all(&self) -> Vec<Arc<dyn RemoteOps>>;
    /// The change feed `name`, if a namespace depends on it.
    fn feed(&self, name: &str) -> Option<Arc<Liveness>>;
}

/// A running node: its publisher, counters and the two loops.
pub(crate) struct Node {
    publisher: Arc<Publisher>,
    /// Relaxed atomic counters, bumped by both loops, read by `stats`: statistics only.
    counters: Arc<BusCounters>,
    clock: Arc<dyn Clock>,
    /// Both loops' stop signal (dropping it stops them too).
    stop: Stop,
    /// The loops, taken by the first `close`. A Tokio mutex held while they end, so a concurrent `close` returns
    /// only once they have ended too.
    tasks: tokio::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Node {
    /// Subscribes to `bus` (before returning, so nothing published after this call is missed) and starts both
    /// loops, as node `origin`.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub(crate) fn start(
        bus: Arc<dyn Bus>,
        origin: String,
        clock: Arc<dyn Clock>,
        namespaces: Weak<dyn Namespaces>,
    ) -> Self {
        let runtime = tokio::runtime::Handle::try_current().expect(
            "a cache with a bus (CacheBuilder::with_bus) must be built inside a Tokio runtime: its bus node's \
             publishing and listening tasks start there",
        );
        let (tx, queue) = mpsc::unbounded_channel();
        let (published_tx, published_rx) = watch::channel(0);
        let liveness = bus.liveness_bound().map(|b| Arc::new(Liveness::new(b)));
        let publisher = Arc::new(Publisher {
            origin: origin.clone(),
            next: parking_lot::Mutex::new(0),
            tx,
            published: published_rx,
            liveness: liveness.clone(),
        });
        let counters = Arc::new(BusCounters::default());
        let (stop, stopping) = Stop::new();
        let events = bus.subscribe();
        let outbound = Outbound {
            backlog: Backlog::new(BACKLOG_CAP),
            last_seq: 0,
            published: published_tx,
            counters: counters.clone(),
        };
        let publishing = runtime.spawn(publish_loop(bus, queue, outbound, stopping.clone()));
        let dispatch = Dispatch {
            origin,
            clock: clock.clone(),
            counters: counters.clone(),
            liveness,
            namespaces,
        };
        let listening = runtime.spawn(listen_loop(events, dispatch, stopping));
        Self {
            publisher,
            counters,
            clock,
            stop,
            tasks: tokio::sync::Mutex::new(vec![publishing, listening]),
        }
    }

    /// The node's sending side, for namespaces and the shared link.
    pub(crate) fn publisher(&self) -> &Arc<Publisher> {
        &self.publisher
    }

    /// The node's counters.
    pub(crate) fn stats(&self) -> BusStats {
        self.counters
            .snapshot(self.publisher.liveness.as_deref(), self.clock.now())
    }

    /// Asks both loops to stop, without waiting: the publishing loop still publishes what is queued, once.
    pub(crate) fn stop(&self) {
        self.stop.now();
    }

    /// Stops both loops and waits for them: the publishing loop first publishes everything queued (once: a
    /// message the transport refuses then is not retried), the listener stops applying messages. After it,
    /// nothing this node queues is published. Idempotent.
    pub(crate) async fn close(&self) {
        self.stop.now();
        let mut tasks = self.tasks.lock().await;
        for t in tasks.drain(..) {
            let _ = t.await;
        }
    }
}

/// The sending side of a node: assigns sequence numbers and hands messages to one publishing task, in order.
pub(crate) struct Publisher {
    origin: String,
    /// The last sequence number taken. A number is taken and its message queued under this one lock, so the
    /// queue is in sequence order: two writers racing could otherwise queue 8 before 7, and every receiver would
    /// count a gap at 8 (flushing its L1) and then drop 7 as a duplicate.
    next: parking_lot::Mutex<u64>,
    /// The publishing loop's queue: unbounded, because a writer must never wait for the transport (the backlog
    /// bounds what waits once the loop has taken it).
    tx: mpsc::UnboundedSender<BusMessage>,
    /// The highest sequence number `s` such that every message up to `s` has been accepted by the transport (or
    /// superseded by a newer message for its target that has been). A `watch`, set by the publishing loop only
    /// (it holds the sender: once the loop has ended, waiting on it fails at once).
    published: watch::Receiver<u64>,
    /// How fresh this node's view of the bus is, when the transport confirms contact.
    pub(crate) liveness: Option<Arc<Liveness>>,
}

impl Publisher {
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
        // The receiver lives as long as the publishing loop; after it has stopped nothing is published.
        let _ = self.tx.send(msg);
        *next
    }

    /// Waits until message `seq` has been accepted by the transport (or superseded by a newer one that has), at
    /// most until `deadline`. Returns whether it was.
    pub(crate) async fn published(&self, seq: u64, deadline: tokio::time::Instant) -> bool {
        let mut rx = self.published.clone();
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

/// The node's counters (relaxed atomics: statistics only).
#[derive(Default)]
struct BusCounters {
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
    fn snapshot(&self, liveness: Option<&Liveness>, now: u64) -> BusStats {
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

/// What a waiting message is about: a key, tag or feed of a namespace, or the whole namespace (its clear).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BusTarget {
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
    fn of(m: &BusMessage) -> Self {
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

impl retry::RetryKey for BusTarget {
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
struct Waiting {
    msg: BusMessage,
    covers: u64,
}

impl Waiting {
    fn new(msg: BusMessage) -> Self {
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
type Backlog = Coalescing<BusTarget, Waiting>;

/// The publishing loop's state: the backlog, the last sequence number queued, and the `published` mark it
/// advances.
struct Outbound {
    backlog: Backlog,
    last_seq: u64,
    published: watch::Sender<u64>,
    counters: Arc<BusCounters>,
}

impl Outbound {
    fn enqueue(&mut self, m: BusMessage) {
        self.last_seq = self.last_seq.max(m.seq);
        let superseded = self.backlog.push(BusTarget::of(&m), Waiting::new(m));
        self.counters
            .superseded
            .fetch_add(superseded as u64, Ordering::Relaxed);
        self.counters
            .backlog
            .store(self.backlog.len() as u64, Ordering::Relaxed);
    }

    /// Publishes the backlog in order, stopping at the first refusal (the rest waits for the next retry), then
    /// advances the `published` mark to just below the lowest message still out. Returns whether everything was
    /// published.
    async fn drain(&mut self, bus: &dyn Bus) -> bool {
        let c = &self.counters;
        let mut all = true;
        let mut cursor = None;
        while let Some((ticket, target, w)) = self.backlog.next_after(cursor) {
            cursor = Some(ticket);
            if bus.publish(w.msg).await.is_ok() {
                c.published.fetch_add(1, Ordering::Relaxed);
                self.backlog.settle(&target, ticket);
            } else {
                c.publish_errors.fetch_add(1, Ordering::Relaxed);
                all = false;
                break;
            }
        }
        c.backlog
            .store(self.backlog.len() as u64, Ordering::Relaxed);
        let out_to = match self.backlog.payloads().map(|w| w.covers).min() {
            Some(lowest) => lowest - 1,
            None => self.last_seq,
        };
        self.published.send_if_modified(|p| {
            let advance = out_to > *p;
            if advance {
                *p = out_to;
            }
            advance
        });
        all
    }
}

/// Publishes what the node's writes queue, in sequence order (see the module docs).
async fn publish_loop(
    bus: Arc<dyn Bus>,
    mut queue: mpsc::UnboundedReceiver<BusMessage>,
    mut out: Outbound,
    mut stop: Stopping,
) {
    // After a refusal, only the retry timer tries again: new messages just join the backlog.
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.requested() => {
                while let Ok(m) = queue.try_recv() {
                    out.enqueue(m);
                }
                out.drain(bus.as_ref()).await;
                break;
            }
            m = queue.recv() => match m {
                Some(m) => {
                    out.enqueue(m);
                    while let Ok(m) = queue.try_recv() {
                        out.enqueue(m);
                    }
                    if !failing {
                        failing = !out.drain(bus.as_ref()).await;
                    }
                }
                // Every publisher is gone: nothing more can be queued.
                None => break,
            },
            _ = tokio::time::sleep(RETRY_EVERY), if !out.backlog.is_empty() => {
                failing = !out.drain(bus.as_ref()).await;
            }
        }
    }
}

/// Applies other nodes' messages until stopped, the subscription ends or the cache is gone.
async fn listen_loop(
    mut events: BoxStream<'static, BusEvent>,
    dispatch: Dispatch,
    mut stop: Stopping,
) {
    let mut tracker = SeqTracker::new(1024);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(ev) => {
                    if !dispatch.apply(ev, &mut tracker) {
                        break;
                    }
                }
                None => break,
            },
            _ = stop.requested() => break,
        }
    }
}

/// The listening loop's state (besides its tracker): what it needs to apply an event.
struct Dispatch {
    origin: String,
    clock: Arc<dyn Clock>,
    counters: Arc<BusCounters>,
    liveness: Option<Arc<Liveness>>,
    namespaces: Weak<dyn Namespaces>,
}

impl Dispatch {
    /// Applies one event (see the delivery semantics in `crate::bus`). Returns `false` once the cache is gone.
    fn apply(&self, ev: BusEvent, tracker: &mut SeqTracker) -> bool {
        let Some(namespaces) = self.namespaces.upgrade() else {
            return false;
        };
        let c = &self.counters;
        match ev {
            BusEvent::Message(m) => self.message(namespaces.as_ref(), m, tracker),
            BusEvent::Gap { .. } => {
                c.gaps.fetch_add(1, Ordering::Relaxed);
                flush_all(namespaces.as_ref());
            }
            BusEvent::Malformed(_) => {
                c.malformed.fetch_add(1, Ordering::Relaxed);
            }
            BusEvent::Live { behind } => {
                // Everything before this event has been applied; trust L1 up to that instant.
                if let Some(l) = &self.liveness {
                    let behind_ms = behind.as_millis().min(u64::MAX as u128) as u64 + 1;
                    l.confirm(self.clock.now().saturating_sub(behind_ms));
                }
            }
        }
        true
    }

    fn message(&self, namespaces: &dyn Namespaces, m: BusMessage, tracker: &mut SeqTracker) {
        let c = &self.counters;
        let lag_ms = self.clock.now().saturating_sub(m.ts);
        metrics::histogram!("strata_bus_lag_seconds").record(lag_ms as f64 / 1000.0);
        c.last_lag_ms.store(lag_ms, Ordering::Relaxed);
        if m.origin == self.origin {
            c.echoes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match tracker.observe(&m.origin, m.seq) {
            Seen::Duplicate => {
                c.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Seen::Gap { .. } => {
                c.gaps.fetch_add(1, Ordering::Relaxed);
                flush_all(namespaces);
            }
            Seen::First | Seen::InOrder => {}
        }
        if let Invalidation::FeedMark { feed, age_ms } = &m.what {
            // In sequence after the feed's invalidations (one origin): those are applied already.
            if let Some(f) = namespaces.feed(feed) {
                f.confirm(self.clock.now().saturating_sub(age_ms.saturating_add(1)));
            }
            return;
        }
        let Some(ns) = namespaces.namespace(&m.namespace) else {
            c.unknown_namespace.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match &m.what {
            Invalidation::Delete { key } | Invalidation::Set { key } => ns.drop_key(key, m.version),
            Invalidation::Clear => ns.drop_all(),
            Invalidation::Tag { tag } => {
                ns.drop_tag(tag, m.ts);
                c.tag_barriers.fetch_add(1, Ordering::Relaxed);
            }
            Invalidation::Filled { key } => ns.lease_freed(key),
            // Applied to its feed above, never routed to a namespace.
            Invalidation::FeedMark { .. } => {}
        }
        c.applied.fetch_add(1, Ordering::Relaxed);
    }
}

/// Messages were lost: every namespace drops everything (stale data is never kept on the hope that nothing
/// important was lost).
fn flush_all(namespaces: &dyn Namespaces) {
    for ns in namespaces.all() {
        ns.drop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
