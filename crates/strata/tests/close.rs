//! What a cache starts, it stops: `Cache::close` drains and ends the bus node, the L2 replay task and the
//! write-behind flushers, is idempotent, and a dropped cache leaves no task behind that keeps it (or its bus) alive.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use strata::behind::{WriteBehind, WriteBehindOptions};
use strata::bus::{Bus, BusEvent, InProcessBus};
use strata::codec::Json;
use strata::{BreakerOptions, Cache, Namespace};
use strata_core::shared::Looked;
use strata_core::{
    Barriers, BusMessage, Compression, Envelope, Error, Fence, FillOutcome, LeaseGrant, LeaseToken,
    SharedTier, Stamped, Tier, UnixMillis,
};

use common::{eventually, fresh_dir, written_behind, Strict};

/// An in-process transport that counts what the node's tasks hold of it: the publishing loop holds the transport
/// (`Arc::strong_count` of it), the listening loop its subscription (`Arc::strong_count(&subscriptions)`).
struct Counted {
    inner: InProcessBus,
    subscriptions: Arc<()>,
}

impl Counted {
    fn new(inner: &InProcessBus) -> Arc<Self> {
        Arc::new(Self {
            inner: inner.clone(),
            subscriptions: Arc::new(()),
        })
    }

    fn listening(&self) -> usize {
        Arc::strong_count(&self.subscriptions) - 1
    }
}

impl Bus for Counted {
    fn publish(&self, msg: BusMessage) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.publish(msg)
    }
    fn subscribe(&self) -> BoxStream<'static, BusEvent> {
        let held = self.subscriptions.clone();
        self.inner
            .subscribe()
            .map(move |ev| {
                let _ = &held;
                ev
            })
            .boxed()
    }
}

fn node(bus: Arc<dyn Bus>) -> (Cache, Namespace<u32>) {
    let cache = Cache::builder().with_bus(bus).build();
    let ns = cache.namespace::<u32>("price").build().unwrap();
    (cache, ns)
}

#[tokio::test]
async fn close_ends_both_loops_and_nothing_crosses_the_bus_afterwards() {
    let shared = InProcessBus::new();
    let counted = Counted::new(&shared);
    let (a, price_a) = node(counted.clone());
    let (b, price_b) = node(Arc::new(shared));
    for ns in [&price_a, &price_b] {
        for k in ["k", "j"] {
            ns.get_or_load(k, || async { Some(1) }).await.unwrap();
        }
    }
    assert_eq!((Arc::strong_count(&counted), counted.listening()), (2, 1));
    a.close().await;
    assert_eq!(
        (Arc::strong_count(&counted), counted.listening()),
        (1, 0),
        "close returned before both loops ended"
    );
    // A's writes no longer reach B, and B's no longer reach A.
    price_a.invalidate("k").await;
    price_b.invalidate("j").await;
    eventually("B applied its own echo", || {
        b.bus_stats().unwrap().echoes == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(price_b.get("k").is_some(), "a closed node published");
    assert!(
        price_a.get("j").is_some(),
        "a closed node applied a message"
    );
    let s = a.bus_stats().expect("stats stay readable after close");
    assert_eq!((s.published, s.applied), (0, 0));
    b.close().await;
}

#[tokio::test]
async fn close_is_idempotent_also_when_concurrent() {
    let counted = Counted::new(&InProcessBus::new());
    let (cache, _ns) = node(counted.clone());
    let other = cache.clone();
    tokio::join!(cache.close(), other.close());
    cache.close().await;
    assert_eq!((Arc::strong_count(&counted), counted.listening()), (1, 0));
}

/// On one thread nothing else runs until the test awaits: the 50 invalidations are all still queued when close
/// is called, and close publishes every one before it returns.
#[tokio::test(flavor = "current_thread")]
async fn close_publishes_everything_still_queued() {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let (a, price_a) = node(bus.clone());
    let (b, price_b) = node(bus);
    for i in 0..50 {
        price_b
            .get_or_load(&format!("k{i}"), || async { Some(1) })
            .await
            .unwrap();
    }
    for i in 0..50 {
        price_a.invalidate(&format!("k{i}")).await;
    }
    assert_eq!(a.bus_stats().unwrap().published, 0, "nothing was queued");
    a.close().await;
    assert_eq!(a.bus_stats().unwrap().published, 50);
    eventually("B applied all 50", || b.bus_stats().unwrap().applied == 50).await;
    assert!((0..50).all(|i| price_b.get(&format!("k{i}")).is_none()));
    b.close().await;
}

#[tokio::test]
async fn a_dropped_cache_ends_its_bus_tasks() {
    let counted = Counted::new(&InProcessBus::new());
    let (cache, ns) = node(counted.clone());
    ns.invalidate("k").await;
    assert_eq!((Arc::strong_count(&counted), counted.listening()), (2, 1));
    drop(ns);
    drop(cache);
    eventually("both loops ended", || {
        Arc::strong_count(&counted) == 1 && counted.listening() == 0
    })
    .await;
}

/// A shared tier that is down: every call fails, and `invalidate` calls are counted.
#[derive(Default)]
struct Down {
    invalidations: AtomicU64,
}

type Fails<'a, T> = BoxFuture<'a, Result<T, Error>>;

impl Down {
    fn fail<'a, T: 'a>(&self) -> Fails<'a, T> {
        Box::pin(async {
            Err(Error::Unavailable {
                tier: Tier::L2,
                message: "down".into(),
            })
        })
    }
}

// One line per method: there is nothing in them but the failure.
#[rustfmt::skip]
impl SharedTier for Down {
    fn lookup<'a>(&'a self, _: &'a str, _: &'a str) -> Fails<'a, (Option<Stamped>, UnixMillis)> { self.fail() }
    fn lookup_many<'a>(&'a self, _: &'a str, _: &'a [&'a str]) -> Fails<'a, Looked> { self.fail() }
    fn lease<'a>(&'a self, _: &'a str, _: &'a str, _: Duration, _: Duration) -> Fails<'a, LeaseGrant> { self.fail() }
    fn release<'a>(&'a self, _: &'a str, _: &'a str, _: &'a LeaseToken) -> Fails<'a, ()> { self.fail() }
    fn fill<'a>(&'a self, _: &'a str, _: &'a str, _: &'a Envelope, _: Compression, _: UnixMillis, _: Fence<'a>) -> Fails<'a, FillOutcome> { self.fail() }
    fn write<'a>(&'a self, _: &'a str, _: &'a str, _: &'a Envelope, _: Compression, _: UnixMillis) -> Fails<'a, FillOutcome> { self.fail() }
    fn invalidate<'a>(&'a self, _: &'a str, _: &'a str, _: Option<u64>, _: Duration) -> Fails<'a, UnixMillis> {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.fail()
    }
    fn raise_barrier<'a>(&'a self, _: &'a str, _: Option<&'a str>, _: Duration) -> Fails<'a, UnixMillis> { self.fail() }
    fn barriers<'a>(&'a self, _: &'a str) -> Fails<'a, Barriers> { self.fail() }
}

/// A cache on `tier` whose breaker never opens (every replay reaches the tier) and retries every 10 ms.
fn on_l2(tier: Arc<Down>) -> (Cache, Namespace<u32>) {
    let cache = Cache::builder()
        .with_shared_tier(tier)
        .with_breaker(BreakerOptions {
            failure_threshold: u32::MAX,
            open_for: Duration::from_millis(40),
        })
        .build();
    let ns = cache
        .namespace::<u32>("price")
        .with_codec(Json)
        .build()
        .unwrap();
    (cache, ns)
}

/// Whether the tier is still being called, over `d`.
async fn still_called(tier: &Down, d: Duration) -> bool {
    let before = tier.invalidations.load(Ordering::SeqCst);
    tokio::time::sleep(d).await;
    tier.invalidations.load(Ordering::SeqCst) > before
}

/// A cache whose invalidation of `k` could not reach L2 and is being replayed.
async fn replaying() -> (Arc<Down>, Cache, Namespace<u32>) {
    let tier = Arc::new(Down::default());
    let (cache, ns) = on_l2(tier.clone());
    ns.invalidate("k").await;
    assert!(
        still_called(&tier, Duration::from_millis(100)).await,
        "no replay"
    );
    (tier, cache, ns)
}

#[tokio::test]
async fn close_stops_the_l2_replay_task_and_the_invalidation_stays_queued() {
    let (tier, cache, ns) = replaying().await;
    cache.close().await;
    assert!(
        !still_called(&tier, Duration::from_millis(100)).await,
        "replays after close"
    );
    assert_eq!(cache.shared_stats().unwrap().pending, 1);
    // A later failure queues, but starts no task.
    ns.invalidate("j").await;
    assert!(!still_called(&tier, Duration::from_millis(100)).await);
    assert_eq!(cache.shared_stats().unwrap().pending, 2);
}

#[tokio::test]
async fn the_replay_task_does_not_keep_a_dropped_cache_alive() {
    let (tier, cache, ns) = replaying().await;
    drop(ns);
    drop(cache);
    eventually("the link is gone", || Arc::strong_count(&tier) == 1).await;
    assert!(!still_called(&tier, Duration::from_millis(100)).await);
}

fn behind(cache: &Cache, gate: &Arc<Strict>, wb: &WriteBehind) -> Namespace<i64> {
    written_behind(cache.namespace("counter").with_store(gate.clone()), wb)
}

#[tokio::test]
async fn close_flushes_what_write_behind_holds_before_it_returns() {
    let wb = WriteBehind::open(
        fresh_dir("close-drain"),
        WriteBehindOptions {
            // Writes wait a long time to be gathered: only close makes them go now.
            linger: Duration::from_millis(500),
            ..WriteBehindOptions::default()
        },
    )
    .unwrap();
    let gate = Strict::new(false);
    let cache = Cache::new();
    let ns = behind(&cache, &gate, &wb);
    let with_flusher = Arc::strong_count(&gate);
    for i in 0..10 {
        ns.write(&format!("c{i}"), i).await.unwrap();
    }
    assert_eq!(gate.table.get("c3"), None, "flushed before close");
    cache.close().await;
    assert!((0..10).all(|i| gate.table.get(&format!("c{i}")).map(|(v, _)| v) == Some(i)));
    assert_eq!(wb.stats().pending, 0);
    // The flusher is gone (its target held the sink), and the namespace still reads its writes.
    eventually("the flusher let go of the sink", || {
        Arc::strong_count(&gate) == with_flusher - 1
    })
    .await;
    assert_eq!(ns.get("c3").and_then(|l| l.value().copied()), Some(3));
}

#[tokio::test]
async fn writes_close_could_not_flush_stay_journaled_and_the_next_registration_flushes_them() {
    let wb = WriteBehind::open(
        fresh_dir("close-left"),
        WriteBehindOptions {
            retry_base: Duration::from_millis(5),
            retry_max: Duration::from_millis(20),
            linger: Duration::from_millis(1),
            // Failing for the whole test must not park the write.
            max_attempts: 1_000,
            ..WriteBehindOptions::default()
        },
    )
    .unwrap();
    let gate = Strict::new(true);
    let cache = Cache::builder()
        .with_close_timeout(Duration::from_millis(100))
        .build();
    let ns = behind(&cache, &gate, &wb);
    ns.write("a", 1).await.unwrap();
    let started = tokio::time::Instant::now();
    cache.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close waited past its timeout"
    );
    // Still acknowledged and pending: neither flushed nor parked.
    let s = wb.stats();
    assert_eq!((s.pending, s.dead_lettered), (1, 0), "{s:?}");
    // A write after close is journaled and acknowledged too.
    ns.write("b", 2).await.unwrap();
    drop(ns);
    drop(cache);
    // The database is back; the namespace is registered again (a new cache on the same queue): both flush.
    gate.failing.store(false, Ordering::SeqCst);
    let again = Cache::new();
    let ns = behind(&again, &gate, &wb);
    assert!(wb.drain(Duration::from_secs(5)).await, "{:?}", wb.stats());
    assert_eq!(gate.table.get("a").map(|(v, _)| v), Some(1));
    assert_eq!(gate.table.get("b").map(|(v, _)| v), Some(2));
    drop(ns);
    again.close().await;
}

#[tokio::test]
async fn a_dropped_namespace_and_cache_end_the_flusher_and_a_namespace_outliving_its_cache_keeps_it(
) {
    let wb = WriteBehind::open(fresh_dir("close-drop"), WriteBehindOptions::default()).unwrap();
    let gate = Strict::new(false);
    let ns = behind(&Cache::new(), &gate, &wb);
    // The cache is gone but its namespace is not: its flusher runs on.
    ns.write("a", 1).await.unwrap();
    assert!(wb.drain(Duration::from_secs(5)).await);
    assert_eq!(gate.table.get("a").map(|(v, _)| v), Some(1));
    drop(ns);
    eventually("the flusher ended", || Arc::strong_count(&gate) == 1).await;
}
