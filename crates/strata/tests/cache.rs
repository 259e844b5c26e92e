//! The `Cache` registry: namespaces by name and type, invalidation by name, stats and metrics export.

mod common;

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use strata::{Cache, Error, Eviction, Policy};

#[tokio::test]
async fn namespaces_are_registered_once_and_typed() {
    let cache = Cache::new();
    let prices = cache.namespace::<u64>("price").build().unwrap();
    assert!(
        matches!(cache.namespace::<u64>("price").build(), Err(Error::NamespaceExists(n)) if n == "price")
    );
    assert!(matches!(
        cache.get_namespace::<String>("price"),
        Err(Error::NamespaceTypeMismatch(_))
    ));
    assert!(matches!(
        cache.get_namespace::<u64>("nope"),
        Err(Error::UnknownNamespace(_))
    ));
    prices.insert("sku-1", 129).await;
    let again = cache.get_namespace::<u64>("price").unwrap();
    assert_eq!(again.get("sku-1").unwrap().value(), Some(&129));
    assert_eq!(cache.namespaces(), vec!["price".to_string()]);
}

#[tokio::test]
async fn invalid_policies_are_rejected_with_the_field_named() {
    let cache = Cache::new();
    let p = Policy {
        jitter: 2.0,
        ..Policy::default()
    };
    let err = cache
        .namespace::<u64>("x")
        .with_policy(p)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("jitter"), "{err}");
}

#[tokio::test]
async fn invalidation_by_name_reaches_the_typed_namespace() {
    let cache = Cache::new();
    let ns = cache.namespace::<u64>("price").build().unwrap();
    ns.insert("a", 1).await;
    ns.insert("b", 2).await;
    cache.invalidate("price", "a").await.unwrap();
    assert!(ns.get("a").is_none() && ns.get("b").is_some());
    cache.invalidate_namespace("price").await.unwrap();
    assert!(ns.get("b").is_none());
    assert!(matches!(
        cache.invalidate("nope", "a").await,
        Err(Error::UnknownNamespace(_))
    ));
}

#[tokio::test]
async fn every_eviction_policy_serves_the_read_path() {
    for eviction in [
        Eviction::Adaptive,
        Eviction::Lru,
        Eviction::Lfu,
        Eviction::Fifo,
    ] {
        let cache = Cache::new();
        let ns = cache
            .namespace::<String>("p")
            .with_policy(
                Policy::builder()
                    .with_eviction(eviction)
                    .with_l1_budget_bytes(64 << 10)
                    .build()
                    .unwrap(),
            )
            .with_weigher(String::len)
            .build()
            .unwrap();
        for i in 0..2_000 {
            let l = ns
                .get_or_load(
                    &format!("k{i}"),
                    move || async move { Some(format!("v{i}")) },
                )
                .await
                .unwrap();
            assert_eq!(
                l.value().map(String::as_str),
                Some(format!("v{i}").as_str())
            );
        }
        let st = ns.stats();
        assert!(
            st.l1_bytes <= 64 << 10,
            "{eviction:?} over budget: {}",
            st.l1_bytes
        );
        assert!(st.evictions > 0, "{eviction:?}");
    }
}

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// Runs `scenario` on a current-thread runtime with a local debugging recorder and returns what it recorded.
fn metrics_of<F: std::future::Future<Output = ()>>(scenario: impl FnOnce() -> F) -> Snapshot {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(scenario());
    });
    snapshotter.snapshot().into_vec()
}

/// The value of metric `name` carrying label `key=value`.
fn metric<'a>(
    snapshot: &'a Snapshot,
    name: &str,
    (key, value): (&str, &str),
) -> Option<&'a DebugValue> {
    snapshot
        .iter()
        .find(|(k, _, _, _)| {
            k.key().name() == name
                && k.key()
                    .labels()
                    .any(|l| l.key() == key && l.value() == value)
        })
        .map(|(_, _, _, v)| v)
}

#[test]
fn counters_reach_the_metrics_facade() {
    let snapshot = metrics_of(|| async {
        let cache = Cache::new();
        let ns = cache
            .namespace::<u64>("price")
            .with_policy(
                Policy::builder()
                    .with_ttl(Duration::from_secs(60))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        ns.get_or_load("a", || async { Some(1) }).await.unwrap();
        ns.get_or_load("a", || async { Some(1) }).await.unwrap();
        cache.publish_metrics();
    });
    let price = ("namespace", "price");
    assert_eq!(
        metric(&snapshot, "strata_hits_total", price),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        metric(&snapshot, "strata_misses_total", price),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        metric(&snapshot, "strata_loads_total", price),
        Some(&DebugValue::Counter(1))
    );
    match metric(&snapshot, "strata_load_seconds", price) {
        Some(DebugValue::Histogram(v)) => assert_eq!(v.len(), 1),
        other => panic!("no load histogram: {other:?}"),
    }
}

#[test]
fn bus_counters_reach_the_metrics_facade() {
    let snapshot = metrics_of(|| async {
        let cache = Cache::builder()
            .with_bus(std::sync::Arc::new(strata::bus::InProcessBus::new()))
            .build();
        let ns = cache.namespace::<u64>("price").build().unwrap();
        let listener = cache.clone();
        ns.invalidate("a").await;
        for _ in 0..100 {
            if listener.bus_stats().unwrap().echoes == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cache.publish_metrics();
        listener.close().await;
    });
    let event = |e| metric(&snapshot, "strata_bus_messages_total", ("event", e));
    assert_eq!(event("published"), Some(&DebugValue::Counter(1)));
    assert_eq!(event("echo"), Some(&DebugValue::Counter(1)));
    assert_eq!(event("gap"), Some(&DebugValue::Counter(0)));
}

fn manual() -> (Cache, strata::ManualClock) {
    let clock = strata::ManualClock::new(1_000_000);
    let cache = Cache::builder()
        .with_clock(std::sync::Arc::new(clock.clone()))
        .build();
    (cache, clock)
}

#[tokio::test]
async fn a_fenced_insert_loses_to_anything_that_happened_after_its_read() {
    let (cache, clock) = manual();
    let ns = cache.namespace::<u32>("page").build().unwrap();
    let tagged = |v| strata::Fetched::value(v).with_tags(["t"]);
    let read_at = strata::Clock::now(&clock);
    clock.advance(Duration::from_millis(10));
    // A write after the read: the read's value must not replace it.
    ns.insert("k", 2).await;
    assert!(!ns.insert_fetched_since("k", tagged(1), read_at).await);
    assert_eq!(ns.get("k").unwrap().value(), Some(&2));
    // An invalidation of the key after the read.
    ns.invalidate("k").await;
    assert!(!ns.insert_fetched_since("k", tagged(1), read_at).await);
    assert!(ns.get("k").is_none());
    // A tag barrier after the read.
    let read_at = strata::Clock::now(&clock);
    clock.advance(Duration::from_millis(10));
    ns.invalidate_tag("t").await;
    assert!(!ns.insert_fetched_since("j", tagged(1), read_at).await);
    assert!(ns.get("j").is_none());
    // A clear after the read.
    let read_at = strata::Clock::now(&clock);
    clock.advance(Duration::from_millis(10));
    ns.invalidate_all().await;
    assert!(!ns.insert_fetched_since("i", tagged(1), read_at).await);
    // A read after all of them lands.
    clock.advance(Duration::from_millis(10));
    let read_at = strata::Clock::now(&clock);
    clock.advance(Duration::from_millis(10));
    assert!(ns.insert_fetched_since("i", tagged(1), read_at).await);
    assert_eq!(ns.get("i").unwrap().value(), Some(&1));
}

#[tokio::test]
async fn a_tagger_tags_every_entry_however_it_was_written() {
    let (cache, clock) = manual();
    let ns = cache
        .namespace::<u32>("price")
        .with_tagger(|key, v| vec![format!("product:{key}"), format!("band:{}", v / 100)])
        .build()
        .unwrap();
    ns.insert("1", 150).await;
    ns.get_or_load("2", || async { Some(250u32) })
        .await
        .unwrap();
    ns.insert_fetched("3", strata::Fetched::value(199).with_tags(["own"]))
        .await;
    assert_eq!(
        ns.get("3").unwrap().entry().tags(),
        ["own", "product:3", "band:1"]
    );
    clock.advance(Duration::from_millis(1));
    ns.invalidate_tag("product:2").await;
    assert!(ns.get("2").is_none() && ns.get("1").is_some());
    cache.invalidate_tag_everywhere("band:1").await;
    assert!(ns.get("1").is_none() && ns.get("3").is_none());
}

#[tokio::test]
async fn a_soft_purge_dates_entries_without_removing_them() {
    let (cache, clock) = manual();
    let ns = cache.namespace::<u32>("page").build().unwrap();
    ns.insert_fetched("a", strata::Fetched::value(1).with_tags(["t"]))
        .await;
    ns.insert("b", 2).await;
    clock.advance(Duration::from_millis(5));
    let at = strata::Clock::now(&clock);
    ns.soften_tag("t").await;
    let a = ns.get("a").expect("a soft purge removes nothing");
    assert_eq!(ns.soft_purged_at(&a), Some(at));
    assert_eq!(ns.soft_purged_at(&ns.get("b").unwrap()), None);
    // Written after the purge: not purged.
    clock.advance(Duration::from_millis(5));
    ns.insert_fetched("a", strata::Fetched::value(3).with_tags(["t"]))
        .await;
    assert_eq!(ns.soft_purged_at(&ns.get("a").unwrap()), None);
}

#[tokio::test]
async fn a_sources_own_ttl_shortens_the_policy_and_never_lengthens_it() {
    let (cache, clock) = manual();
    let ns = cache
        .namespace::<u32>("token")
        .with_policy(
            Policy::builder()
                .with_ttl(Duration::from_secs(60))
                .with_jitter(0.0)
                .with_negative_ttl(Duration::from_secs(5))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let now = strata::Clock::now(&clock);
    let fresh_for = |key: &str| ns.get(key).unwrap().entry().fresh_until() - now;
    ns.insert_fetched(
        "short",
        strata::Fetched::value(1).with_ttl(Duration::from_secs(2)),
    )
    .await;
    assert_eq!(fresh_for("short"), 2_000);
    ns.insert_fetched(
        "long",
        strata::Fetched::value(1).with_ttl(Duration::from_secs(3600)),
    )
    .await;
    assert_eq!(fresh_for("long"), 60_000);
    ns.insert_fetched("plain", strata::Fetched::value(1)).await;
    assert_eq!(fresh_for("plain"), 60_000);
    ns.insert_fetched(
        "gone",
        strata::Fetched::absent().with_ttl(Duration::from_secs(1)),
    )
    .await;
    assert_eq!(fresh_for("gone"), 1_000);
    ns.insert_fetched(
        "gone_long",
        strata::Fetched::absent().with_ttl(Duration::from_secs(60)),
    )
    .await;
    assert_eq!(fresh_for("gone_long"), 5_000);
    // Past its own lifetime the entry is no longer served fresh: the next read goes to the source.
    clock.advance(Duration::from_millis(2_001));
    let loaded = ns
        .get_or_load("short", || async { Some(2u32) })
        .await
        .unwrap();
    assert_eq!(loaded.value(), Some(&2));
}
