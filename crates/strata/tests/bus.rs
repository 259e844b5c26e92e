//! Nodes on a bus: invalidations reach other nodes' L1; echoes, duplicates, gaps, malformed messages and unknown
//! namespaces are handled as `strata::bus` documents.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use strata::bus::{Bus, BusEvent, InProcessBus};
use strata::{Cache, Namespace};
use strata_core::{BusError, BusMessage, Invalidation};
use tokio::sync::broadcast;

use common::eventually;

/// A node: its cache (twice: the tests name the second one after the bus), and its namespace.
fn node(bus: Arc<dyn Bus>) -> (Cache, Namespace<u32>, Cache) {
    let cache = Cache::builder().with_bus(bus).build();
    let ns = cache.namespace::<u32>("price").build().unwrap();
    (cache.clone(), ns, cache)
}

#[tokio::test]
async fn an_invalidation_on_one_node_reaches_the_others_and_not_back() {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let (_a, price_a, bus_a) = node(bus.clone());
    let (_b, price_b, bus_b) = node(bus.clone());
    let (_c, price_c, bus_c) = node(bus);
    // Loads fill without publishing (inserts are writes and would tell the other nodes).
    for ns in [&price_a, &price_b, &price_c] {
        ns.get_or_load("sku-1", || async { Some(99) })
            .await
            .unwrap();
    }
    price_a.invalidate("sku-1").await;
    eventually("B and C drop sku-1", || {
        price_b.get("sku-1").is_none() && price_c.get("sku-1").is_none()
    })
    .await;
    eventually("A sees its echo", || bus_a.bus_stats().unwrap().echoes >= 1).await;
    assert_eq!(
        bus_a.bus_stats().unwrap().applied,
        0,
        "A applied its own message"
    );
    assert!(bus_b.bus_stats().unwrap().applied >= 1 && bus_c.bus_stats().unwrap().applied >= 1);
    for l in [bus_a, bus_b, bus_c] {
        l.close().await;
    }
}

#[tokio::test]
async fn inserts_and_namespace_clears_travel_too() {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let (_a, price_a, bus_a) = node(bus.clone());
    let (_b, price_b, bus_b) = node(bus);
    price_b
        .get_or_load("sku-1", || async { Some(99) })
        .await
        .unwrap();
    price_b
        .get_or_load("sku-2", || async { Some(10) })
        .await
        .unwrap();
    // A writes a new price: B's copy of sku-1 must go (B reloads it), sku-2 stays.
    price_a.insert("sku-1", 129).await;
    eventually("B drops sku-1", || price_b.get("sku-1").is_none()).await;
    assert_eq!(price_b.get("sku-2").unwrap().value(), Some(&10));
    price_a.invalidate_all().await;
    eventually("B drops everything", || price_b.get("sku-2").is_none()).await;
    bus_a.close().await;
    bus_b.close().await;
}

#[tokio::test]
async fn close_publishes_what_is_queued() {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let (_a, price_a, bus_a) = node(bus.clone());
    let (_b, price_b, bus_b) = node(bus);
    price_b
        .get_or_load("k", || async { Some(1) })
        .await
        .unwrap();
    price_a.invalidate("k").await;
    bus_a.close().await;
    eventually("B drops k after A closed", || price_b.get("k").is_none()).await;
    bus_b.close().await;
}

/// A subscriber that falls behind the in-process bus's buffer has lost invalidations: it must flush its L1,
/// including keys nobody mentioned.
#[tokio::test(flavor = "current_thread")]
async fn a_lagging_node_flushes_its_l1() {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::with_capacity(2));
    let (_a, price_a, bus_a) = node(bus.clone());
    let (_b, price_b, bus_b) = node(bus);
    price_b.insert("untouched", 7).await;
    // On one thread, nothing else runs until we await: A queues 50 invalidations, its publisher sends them all
    // into a 2-slot buffer before B's listener reads any.
    for i in 0..50 {
        price_a.invalidate(&format!("k{i}")).await;
    }
    eventually("B detects the gap", || bus_b.bus_stats().unwrap().gaps >= 1).await;
    assert!(
        price_b.get("untouched").is_none(),
        "B kept L1 entries after losing invalidations"
    );
    bus_a.close().await;
    bus_b.close().await;
}

/// A transport that delivers exactly the events a test scripts.
struct Scripted {
    tx: broadcast::Sender<BusEvent>,
}

impl Bus for Scripted {
    fn publish(&self, _msg: BusMessage) -> BoxFuture<'_, Result<(), strata::Error>> {
        Box::pin(async { Ok(()) })
    }
    fn subscribe(&self) -> BoxStream<'static, BusEvent> {
        futures::stream::unfold(self.tx.subscribe(), |mut rx| async move {
            rx.recv().await.ok().map(|e| (e, rx))
        })
        .boxed()
    }
}

fn from_other(seq: u64, namespace: &str, what: Invalidation) -> BusEvent {
    BusEvent::Message(BusMessage {
        namespace: namespace.into(),
        what,
        version: None,
        origin: "node-other".into(),
        seq,
        ts: 0,
    })
}

#[tokio::test]
async fn duplicates_gaps_unknown_namespaces_malformed_and_tags() {
    let (tx, _) = broadcast::channel(64);
    let scripted = Arc::new(Scripted { tx: tx.clone() });
    let (_n, price, listener) = node(scripted);
    let del = |k: &str| Invalidation::Delete { key: k.into() };

    price.insert("a", 1).await;
    price.insert("b", 2).await;
    tx.send(from_other(1, "price", del("a"))).unwrap();
    eventually("a dropped", || price.get("a").is_none()).await;

    // The same message again: a duplicate, dropped (b is untouched either way, so check the counter).
    tx.send(from_other(1, "price", del("a"))).unwrap();
    eventually("duplicate counted", || {
        listener.bus_stats().unwrap().duplicates == 1
    })
    .await;
    assert!(price.get("b").is_some());

    // Unknown namespace and malformed bytes: counted, skipped.
    tx.send(from_other(2, "nope", del("x"))).unwrap();
    tx.send(BusEvent::Malformed(BusError::Malformed("not json".into())))
        .unwrap();
    eventually("unknown and malformed counted", || {
        let s = listener.bus_stats().unwrap();
        s.unknown_namespace == 1 && s.malformed == 1
    })
    .await;
    assert!(price.get("b").is_some(), "skipped messages must not flush");

    // seq 5 after 2: messages 3 and 4 were lost, so everything is flushed.
    price.insert("c", 3).await;
    tx.send(from_other(5, "price", del("zzz"))).unwrap();
    eventually("gap flushes L1", || {
        price.get("b").is_none() && price.get("c").is_none()
    })
    .await;
    assert_eq!(listener.bus_stats().unwrap().gaps, 1);

    // A tag invalidation drops the entries carrying the tag, and only those.
    price
        .insert_fetched("d", strata::Fetched::value(4).with_tags(["tv"]))
        .await;
    price.insert("plain", 6).await;
    tx.send(from_other(
        6,
        "price",
        Invalidation::Tag { tag: "tv".into() },
    ))
    .unwrap();
    eventually("tagged entry dropped", || price.get("d").is_none()).await;
    assert!(
        price.get("plain").is_some(),
        "an untagged entry was dropped by a tag invalidation"
    );
    assert_eq!(listener.bus_stats().unwrap().tag_barriers, 1);

    // The transport itself reports a loss.
    price.insert("e", 5).await;
    tx.send(BusEvent::Gap {
        reason: "reconnected".into(),
    })
    .unwrap();
    eventually("transport gap flushes", || price.get("e").is_none()).await;
    assert_eq!(listener.bus_stats().unwrap().gaps, 2);
    listener.close().await;
}

/// A transport that refuses every publish while `down`.
struct FlakyBus {
    inner: InProcessBus,
    down: std::sync::atomic::AtomicBool,
}

impl Bus for FlakyBus {
    fn publish(&self, msg: BusMessage) -> BoxFuture<'_, Result<(), strata::Error>> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async {
                Err(strata::Error::Unavailable {
                    tier: strata::Tier::L2,
                    message: "transport down".into(),
                })
            });
        }
        self.inner.publish(msg)
    }
    fn subscribe(&self) -> BoxStream<'static, BusEvent> {
        self.inner.subscribe()
    }
}

#[tokio::test]
async fn refused_messages_wait_in_the_backlog_newest_wins_and_reach_the_others_on_recovery() {
    let flaky = Arc::new(FlakyBus {
        inner: InProcessBus::new(),
        down: true.into(),
    });
    let (_a, price_a, bus_a) = node(flaky.clone());
    let (_b, price_b, bus_b) = node(flaky.clone());
    for k in ["k1", "k2"] {
        price_b.get_or_load(k, || async { Some(1) }).await.unwrap();
    }
    price_a.invalidate("k1").await;
    price_a.invalidate("k2").await;
    price_a.invalidate("k1").await;
    eventually("the backlog holds one message per key", || {
        bus_a.bus_stats().unwrap().backlog == 2
    })
    .await;
    assert_eq!(bus_a.bus_stats().unwrap().superseded, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(price_b.get("k1").is_some() && price_b.get("k2").is_some());
    flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("node b dropped both keys", || {
        price_b.get("k1").is_none() && price_b.get("k2").is_none()
    })
    .await;
    assert_eq!(bus_a.bus_stats().unwrap().backlog, 0);
    bus_a.close().await;
    bus_b.close().await;
}

#[tokio::test]
async fn a_soft_purge_reaches_the_other_nodes_and_removes_nothing() {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let (_a, price_a, bus_a) = node(bus.clone());
    let (_b, price_b, bus_b) = node(bus);
    price_b
        .get_or_load("sku-1", || async {
            strata::Fetched::value(99).with_tags(["sale"])
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    price_a.soften_tag("sale").await;
    eventually("B dates sku-1's soft purge", || {
        price_b
            .get("sku-1")
            .is_some_and(|l| price_b.soft_purged_at(&l).is_some())
    })
    .await;
    for l in [bus_a, bus_b] {
        l.close().await;
    }
}

/// A bus that delivers every message `delay` after it was published (the publisher is answered at once): a
/// slow transport, with no refusals — so no backlog and no liveness gap.
struct SlowBus {
    inner: Arc<InProcessBus>,
    delay: Duration,
}

impl Bus for SlowBus {
    fn publish(&self, msg: BusMessage) -> BoxFuture<'_, Result<(), strata::Error>> {
        let (inner, delay) = (self.inner.clone(), self.delay);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = inner.publish(msg).await;
        });
        Box::pin(async { Ok(()) })
    }
    fn subscribe(&self) -> BoxStream<'static, BusEvent> {
        self.inner.subscribe()
    }
}

#[tokio::test]
async fn a_soft_purge_is_dated_by_its_sender_so_a_copy_read_after_it_stays_fresh() {
    // The bus takes 50 ms, so B hears of A's soft purge well after B stored a copy it read after the purge (as a
    // revalidation on B would): dated at receipt, the purge would wrongly cover that copy too.
    let bus: Arc<dyn Bus> = Arc::new(SlowBus {
        inner: Arc::new(InProcessBus::new()),
        delay: Duration::from_millis(50),
    });
    let (_a, price_a, bus_a) = node(bus.clone());
    let (_b, price_b, bus_b) = node(bus);
    let tagged = |v| strata::Fetched::value(v).with_tags(["sale"]);
    price_b
        .get_or_load("old", move || async move { tagged(1) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    price_a.soften_tag("sale").await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let read_at = strata::Clock::now(price_b.clock().as_ref());
    price_b
        .insert_fetched_since("new", tagged(2), read_at)
        .await;
    eventually("B dates the old copy's soft purge", || {
        price_b
            .get("old")
            .is_some_and(|l| price_b.soft_purged_at(&l).is_some())
    })
    .await;
    assert!(
        strata::Clock::now(price_b.clock().as_ref()) > read_at + 20,
        "the purge arrived after the new copy was read"
    );
    let new = price_b.get("new").expect("the new copy is kept");
    assert_eq!(
        price_b.soft_purged_at(&new),
        None,
        "a copy read after the purge is not soft-purged"
    );
    for l in [bus_a, bus_b] {
        l.close().await;
    }
}
