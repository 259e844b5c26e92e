//! The consistency bound across nodes (DESIGN §6): a node trusts its L1 only while its last confirmed contact with
//! the bus is younger than the bus's bound; fills made while it is not are kept no longer than the bound; a write
//! is acknowledged only once the bus has its invalidation; and messages leave in sequence order, so concurrent
//! writers cause no spurious gaps.
//!
//! Every test runs on paused Tokio time (the in-process bus's heartbeat and the caches' clocks follow it), so the
//! interleavings are exact.

use std::sync::Arc;
use std::time::Duration;

use strata::bus::{Bus, InProcessBus};
use strata::{Cache, Error, Namespace, Status, Tier};
use strata_core::{Clock, ManualClock, TokioClock};
use strata_testkit::bus::JammableBus;
use strata_testkit::table::VersionedTable;

const HEARTBEAT: Duration = Duration::from_millis(50);
/// `InProcessBus::with_heartbeat` reports twice its heartbeat.
const BOUND: Duration = Duration::from_millis(100);

type Table = VersionedTable<u32>;

struct Node {
    ns: Namespace<u32>,
    bus: Arc<JammableBus<InProcessBus>>,
    /// The node's cache (it owns the bus node).
    listener: Cache,
}

fn node(shared: &InProcessBus, table: &Arc<Table>, clock: Arc<dyn Clock>) -> Node {
    let bus = Arc::new(JammableBus::new(shared.clone()));
    let cache = Cache::builder()
        .with_clock(clock)
        .with_propagation_timeout(Duration::from_millis(300))
        .with_bus(bus.clone() as Arc<dyn Bus>)
        .build();
    let ns = cache
        .namespace::<u32>("price")
        .with_policy(
            strata::Policy::builder()
                .with_ttl(Duration::from_secs(600))
                .with_write_mode(strata::WriteMode::Through)
                .build()
                .unwrap(),
        )
        .with_store(table.clone())
        .build()
        .unwrap();
    Node {
        ns,
        bus,
        listener: cache,
    }
}

fn table_with(v: u32) -> Arc<Table> {
    let t = Table::new();
    t.set("sku", v);
    Arc::new(t)
}

fn tokio_clock() -> Arc<dyn Clock> {
    Arc::new(TokioClock::new())
}

async fn read(n: &Node) -> (u32, Status) {
    let l = n.ns.fetch("sku").await.unwrap();
    (*l.value().unwrap(), l.status())
}

/// Lets the listeners run until contact is confirmed (a heartbeat and a bit).
async fn settle() {
    tokio::time::sleep(HEARTBEAT + Duration::from_millis(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_node_that_hears_nothing_stops_serving_its_l1_once_the_bound_has_passed() {
    let shared = InProcessBus::new().with_heartbeat(HEARTBEAT);
    let table = table_with(1);
    let a = node(&shared, &table, tokio_clock());
    let b = node(&shared, &table, tokio_clock());
    settle().await;
    read(&b).await;
    assert_eq!(read(&b).await, (1, Status::Hit(Tier::L1)));

    // B's link goes silent; A writes. Within the bound B may still answer from L1 …
    b.bus.cut();
    a.ns.write("sku", 2).await.unwrap();
    assert_eq!(read(&b).await, (1, Status::Hit(Tier::L1)));
    // … but not once the bound has passed since its last confirmed contact: it reads the source.
    tokio::time::sleep(BOUND).await;
    assert_eq!(read(&b).await, (2, Status::Miss));
    assert_eq!(
        read(&b).await.1,
        Status::Miss,
        "still silent: no L1 answers"
    );
    assert!(b.listener.bus_stats().unwrap().untrusted_reads >= 2);
    assert!(b.listener.bus_stats().unwrap().contact_age_ms.unwrap() >= BOUND.as_millis() as u64);

    // The link comes back: the withheld invalidation is applied, contact is confirmed, L1 answers again.
    b.bus.restore();
    settle().await;
    read(&b).await;
    assert_eq!(read(&b).await, (2, Status::Hit(Tier::L1)));
    a.listener.close().await;
    b.listener.close().await;
}

#[tokio::test(start_paused = true)]
async fn a_fill_made_while_the_bus_is_silent_lives_no_longer_than_the_bound() {
    let shared = InProcessBus::new().with_heartbeat(HEARTBEAT);
    let table = table_with(1);
    let a = node(&shared, &table, tokio_clock());
    let b = node(&shared, &table, tokio_clock());
    b.bus.cut();
    tokio::time::sleep(BOUND * 2).await;
    // Filled while B cannot know what it missed (a 10-minute TTL otherwise) …
    assert_eq!(read(&b).await, (1, Status::Miss));
    // … and a write elsewhere that B will never hear of (say the message was lost with a Redis restart).
    table.set("sku", 2);
    b.bus.restore();
    settle().await;
    // Contact is back and L1 is trusted again, but the copy filled in the dark expires within the bound.
    let entry = b.ns.l1().unwrap().peek("sku").unwrap();
    assert!(entry.stale_until() <= entry.created_at() + BOUND.as_millis() as u64);
    tokio::time::sleep(BOUND).await;
    assert_eq!(read(&b).await, (2, Status::Miss));
    a.listener.close().await;
    b.listener.close().await;
}

#[tokio::test(start_paused = true)]
async fn a_node_that_wakes_from_a_stall_does_not_answer_from_l1_before_it_caught_up() {
    let shared = InProcessBus::new().with_heartbeat(HEARTBEAT);
    let table = table_with(1);
    let a = node(&shared, &table, tokio_clock());
    // B's clock is its own: a stopped process sees time jump when it resumes.
    let b_clock = ManualClock::new(TokioClock::new().now());
    let b = node(&shared, &table, Arc::new(b_clock.clone()));
    settle().await;
    read(&b).await;
    assert_eq!(read(&b).await, (1, Status::Hit(Tier::L1)));
    // B stops: its listener does not run while A writes …
    b.bus.cut();
    a.ns.write("sku", 2).await.unwrap();
    // … and it wakes 5 s later, its queued requests arriving before its listener has caught up.
    b_clock.advance(Duration::from_secs(5));
    assert_eq!(read(&b).await, (2, Status::Miss));
    b.bus.restore();
    a.listener.close().await;
    b.listener.close().await;
}

/// A load that began before a stall read the world as it was then: a caller arriving after the node woke must
/// not be handed its answer.
#[tokio::test(start_paused = true)]
async fn a_caller_after_a_stall_does_not_join_a_load_from_before_it() {
    let shared = InProcessBus::new().with_heartbeat(HEARTBEAT);
    let table = table_with(1);
    let b_clock = ManualClock::new(TokioClock::new().now());
    let b = node(&shared, &table, Arc::new(b_clock.clone()));
    settle().await;
    let (release, gate) = tokio::sync::oneshot::channel::<()>();
    let before = {
        let ns = b.ns.clone();
        tokio::spawn(async move {
            ns.get_or_load("k", || async move {
                let _ = gate.await;
                Some(1u32) // what the source held when the load began
            })
            .await
            .unwrap()
        })
    };
    tokio::task::yield_now().await;
    // The process stops for 5 s (its bus falls silent), the row changes meanwhile, and it wakes.
    b.bus.cut();
    b_clock.advance(Duration::from_secs(5));
    let after =
        b.ns.get_or_load("k", || async { Some(2u32) })
            .await
            .unwrap();
    assert_eq!((after.value(), after.status()), (Some(&2), Status::Miss));
    release.send(()).unwrap();
    assert_eq!(before.await.unwrap().value(), Some(&1));
    // The old load's answer did not land in L1 over the newer one.
    b.bus.restore();
    settle().await;
    let again =
        b.ns.get_or_load("k", || async { Some(3u32) })
            .await
            .unwrap();
    assert_eq!(again.value(), Some(&2));
    b.listener.close().await;
}

#[tokio::test(start_paused = true)]
async fn a_write_is_acknowledged_only_once_the_bus_has_its_invalidation() {
    let shared = InProcessBus::new().with_heartbeat(HEARTBEAT);
    let table = table_with(1);
    let a = node(&shared, &table, tokio_clock());
    a.bus.jam();
    let started = tokio::time::Instant::now();
    match a.ns.write("sku", 2).await {
        Err(Error::NotPropagated { key, version, .. }) => {
            assert_eq!((key.as_str(), version), ("sku", 2));
        }
        other => panic!("expected NotPropagated, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The write did commit, and the node itself reads it.
    assert_eq!(table.get("sku"), Some((2, 2)));
    assert_eq!(read(&a).await.0, 2);
    // Once the bus takes messages again, writes are acknowledged at once.
    a.bus.unjam();
    a.ns.write("sku", 3).await.unwrap();
    a.ns.delete("sku").await.unwrap();
    assert_eq!(a.listener.bus_stats().unwrap().backlog, 0);
    a.listener.close().await;
}

fn fed_node(shared: &InProcessBus, table: &Arc<Table>) -> (Namespace<u32>, Cache, Cache) {
    let cache = Cache::builder()
        .with_clock(tokio_clock())
        .with_change_feed_bound(BOUND)
        .with_bus(Arc::new(shared.clone()) as Arc<dyn Bus>)
        .build();
    let ns = cache
        .namespace::<u32>("price")
        .with_policy(
            strata::Policy::builder()
                .with_ttl(Duration::from_secs(600))
                .build()
                .unwrap(),
        )
        .with_store(table.clone())
        .with_change_feed("slot_a")
        .build()
        .unwrap();
    (ns, cache.clone(), cache)
}

async fn mark(shared: &InProcessBus, seq: u64, age_ms: u64) {
    shared
        .publish(strata_core::BusMessage {
            namespace: "slot_a".into(),
            what: strata_core::Invalidation::FeedMark {
                feed: "slot_a".into(),
                age_ms,
            },
            version: None,
            origin: "cdc-test".into(),
            seq,
            ts: 0,
        })
        .await
        .unwrap();
}

async fn cdc_delete(shared: &InProcessBus, seq: u64, key: &str) {
    shared
        .publish(strata_core::BusMessage {
            namespace: "price".into(),
            what: strata_core::Invalidation::Delete { key: key.into() },
            version: None,
            origin: "cdc-test".into(),
            seq,
            ts: 0,
        })
        .await
        .unwrap();
}

/// A namespace fed by a change feed (CDC) trusts its caches only while the feed's marks are recent: a stalled or
/// dead consumer means source commits may be unseen, so reads go to the source.
#[tokio::test(start_paused = true)]
async fn a_namespace_fed_by_a_silent_change_feed_reads_the_source() {
    let shared = InProcessBus::new().with_heartbeat(HEARTBEAT);
    let table = table_with(1);
    let (ns, listener, cache) = fed_node(&shared, &table);
    settle().await;
    let read = || async {
        let l = ns.fetch("sku").await.unwrap();
        (*l.value().unwrap(), l.status())
    };
    // No mark yet: every read is a load.
    read().await;
    assert_eq!(read().await, (1, Status::Miss));
    cdc_delete(&shared, 1, "other").await;
    mark(&shared, 2, 0).await;
    settle().await;
    read().await;
    assert_eq!(read().await, (1, Status::Hit(Tier::L1)));
    // A commit the feed will never report (its consumer is stopped): once the last mark is older than the bound,
    // the source answers.
    table.set("sku", 2);
    assert_eq!(read().await, (1, Status::Hit(Tier::L1)), "within the bound");
    tokio::time::sleep(BOUND).await;
    assert_eq!(read().await, (2, Status::Miss));
    let f = &cache.feeds()[0];
    assert!(
        f.untrusted_reads >= 1 && f.mark_age_ms.unwrap() >= BOUND.as_millis() as u64,
        "{f:?}"
    );
    // A mark that was already old when sent does not restore trust.
    mark(&shared, 3, BOUND.as_millis() as u64 * 2).await;
    settle().await;
    assert_eq!(read().await.1, Status::Miss);
    // Marks take their place in the feed's sequence: an invalidation after them is in order, not a gap (a gap
    // would flush L1 on every node at every mark).
    cdc_delete(&shared, 4, "sku").await;
    settle().await;
    assert_eq!(listener.bus_stats().unwrap().gaps, 0);
}

/// Writers racing on many threads used to queue their messages out of sequence order (the number was taken
/// before, not with, the enqueue): receivers then saw a gap, flushed their L1, and dropped the late message as a
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_cause_no_gaps_and_no_duplicates() {
    let shared = InProcessBus::with_capacity(1 << 17);
    let table = Arc::new(Table::new());
    let a = node(&shared, &table, tokio_clock());
    let b = node(&shared, &table, tokio_clock());
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let ns = a.ns.clone();
            tokio::spawn(async move {
                for i in 0..1_000 {
                    ns.invalidate(&format!("k{w}-{i}")).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    for _ in 0..400 {
        if b.listener.bus_stats().unwrap().applied >= 8_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = b.listener.bus_stats().unwrap();
    assert_eq!((s.applied, s.gaps, s.duplicates), (8_000, 0, 0), "{s:?}");
    a.listener.close().await;
    b.listener.close().await;
}
