//! Deterministic tests of the read path (DESIGN §4 steps 1, 2 and 5) under paused Tokio time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{advance, exact, namespace, settle, spawn_load};
use strata::{EarlyRefresh, Error, Fetched, Policy, StaleReason, Status, Tier};
use strata_testkit::{Fault, FaultyLoader, Injected};

const S: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn single_flight_many_concurrent_misses_call_the_loader_once() {
    let ns = namespace::<u32>(exact().build().unwrap());
    let src = FaultyLoader::new();
    src.set("k", 7);
    src.set_fault(Fault::Delay(Duration::from_millis(50)));
    let tasks: Vec<_> = (0..2000).map(|_| spawn_load(&ns, &src, "k")).collect();
    let mut statuses = std::collections::HashMap::new();
    for t in tasks {
        let l = t.await.unwrap().unwrap();
        assert_eq!(l.value(), Some(&7));
        *statuses.entry(l.status()).or_insert(0) += 1;
    }
    assert_eq!(src.calls(), 1);
    assert_eq!(statuses[&Status::Miss], 1);
    assert_eq!(statuses[&Status::Coalesced], 1999);
    let st = ns.stats();
    assert_eq!((st.loads, st.misses, st.coalesced), (1, 1, 1999));
}

#[tokio::test(start_paused = true)]
async fn every_waiter_gets_the_same_error() {
    let ns = namespace::<u32>(exact().build().unwrap());
    let src = FaultyLoader::<u32>::new();
    src.set_fault(Fault::Fail("db down".into()));
    let calls: Vec<_> = (0..50)
        .map(|_| ns.try_get_or_load("k", || src.load("k")))
        .collect();
    let results = futures::future::join_all(calls).await;
    assert_eq!(src.calls(), 1);
    for r in results {
        let err = r.unwrap_err();
        assert_eq!(
            err.loader_error::<Injected>(),
            Some(&Injected("db down".into()))
        );
        assert_eq!(err.tier(), Some(Tier::Source));
        assert!(err.is_retryable());
    }
    // The failure is not cached: the next call loads again.
    src.set_fault(Fault::None);
    src.set("k", 1);
    assert_eq!(
        ns.try_get_or_load("k", || src.load("k"))
            .await
            .unwrap()
            .value(),
        Some(&1)
    );
}

/// Race: the caller that started the load is cancelled while others wait for it.
/// Interleaving: leader registers the flight and spawns the load → waiters join → leader's future is dropped →
/// the load completes. Every waiter must get the value; nobody hangs; the loader ran once.
#[tokio::test(start_paused = true)]
async fn leader_cancellation_does_not_fail_or_hang_waiters() {
    let ns = namespace::<u32>(exact().build().unwrap());
    let src = FaultyLoader::new();
    src.set("k", 5);
    src.set_fault(Fault::Gate);
    let leader = spawn_load(&ns, &src, "k");
    settle().await;
    let waiters: Vec<_> = (0..10).map(|_| spawn_load(&ns, &src, "k")).collect();
    settle().await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    src.release(1);
    for w in waiters {
        let l = tokio::time::timeout(S, w)
            .await
            .expect("waiter hung")
            .unwrap()
            .unwrap();
        assert_eq!((l.value(), l.status()), (Some(&5), Status::Coalesced));
    }
    assert_eq!(src.calls(), 1);
    assert_eq!(ns.get("k").unwrap().value(), Some(&5));
}

#[tokio::test(start_paused = true)]
async fn a_hung_loader_hits_the_hard_timeout_for_every_waiter() {
    let ns = namespace::<u32>(
        exact()
            .with_hard_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    );
    let src = FaultyLoader::<u32>::new();
    src.set_fault(Fault::Hang);
    let started = tokio::time::Instant::now();
    let results =
        futures::future::join_all((0..20).map(|_| ns.try_get_or_load("k", || src.load("k")))).await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    for r in results {
        assert!(
            matches!(r, Err(Error::Timeout { tier: Tier::Source, after }) if after == Duration::from_secs(2))
        );
    }
    assert_eq!(ns.stats().load_timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_loader_is_an_error_not_a_crash() {
    let ns = namespace::<u32>(exact().build().unwrap());
    let src = FaultyLoader::<u32>::new();
    src.set_fault(Fault::Panic);
    let err = ns.try_get_or_load("k", || src.load("k")).await.unwrap_err();
    assert!(
        matches!(err, Error::LoaderPanicked { ref message } if message == "injected panic"),
        "{err}"
    );
    src.set_fault(Fault::None);
    src.set("k", 3);
    assert_eq!(
        ns.try_get_or_load("k", || src.load("k"))
            .await
            .unwrap()
            .value(),
        Some(&3)
    );
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once() {
    let ns = namespace::<u32>(
        exact()
            .with_stale_for(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let src = FaultyLoader::new();
    src.set("k", 1);
    ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    src.set("k", 2);
    src.set_fault(Fault::Gate);
    advance(Duration::from_secs(15)).await;
    for _ in 0..5 {
        let l = ns.try_get_or_load("k", || src.load("k")).await.unwrap();
        assert_eq!(
            (l.value(), l.status()),
            (Some(&1), Status::Stale(StaleReason::Revalidating))
        );
    }
    assert_eq!(src.calls(), 2, "one refresh in flight, not one per request");
    src.release(1);
    settle().await;
    let l = ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    assert_eq!((l.value(), l.status()), (Some(&2), Status::Hit(Tier::L1)));
    assert_eq!(ns.stats().refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn stale_window_ends_and_then_the_caller_waits_for_the_load() {
    let ns = namespace::<u32>(
        exact()
            .with_stale_for(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let src = FaultyLoader::new();
    src.set("k", 1);
    ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    src.set("k", 2);
    advance(Duration::from_secs(16)).await;
    let l = ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    assert_eq!((l.value(), l.status()), (Some(&2), Status::Miss));
}

/// Race: a background refresh reads the old value, the key is invalidated, then the refresh completes.
/// The refresh must not put the old value back.
#[tokio::test(start_paused = true)]
async fn refresh_vs_invalidate_never_refills_the_old_value() {
    let ns = namespace::<u32>(
        exact()
            .with_stale_for(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let src = FaultyLoader::new();
    src.set("k", 42);
    ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    advance(Duration::from_secs(11)).await;
    src.set_fault(Fault::Gate);
    // Starts a refresh that has already read 42.
    let l = ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    assert_eq!(l.status(), Status::Stale(StaleReason::Revalidating));
    src.set("k", 43);
    ns.invalidate("k").await;
    src.release(1);
    settle().await;
    assert!(
        ns.get("k").is_none(),
        "the refresh refilled the invalidated key"
    );
    src.set_fault(Fault::None);
    let l = ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    assert_eq!((l.value(), l.status()), (Some(&43), Status::Miss));
    assert_eq!(ns.stats().fills_refused, 1);
}

/// Race "x=42 lands after x=43": a load reads 42, the source changes to 43 and the key is invalidated, then the
/// load finishes. The load's own waiters may see 42 (they asked before the write), but the cache must not keep it.
#[tokio::test(start_paused = true)]
async fn tombstone_vs_late_fill() {
    let ns = namespace::<u32>(exact().build().unwrap());
    let src = FaultyLoader::new();
    src.set("x", 42);
    src.set_fault(Fault::Gate);
    let slow = spawn_load(&ns, &src, "x");
    settle().await;
    src.set("x", 43);
    ns.invalidate("x").await;
    // A reader arriving after the invalidation does not join the old load.
    src.set_fault(Fault::None);
    let after = ns.try_get_or_load("x", || src.load("x")).await.unwrap();
    assert_eq!((after.value(), after.status()), (Some(&43), Status::Miss));
    src.release(1);
    assert_eq!(slow.await.unwrap().unwrap().value(), Some(&42));
    settle().await;
    assert_eq!(
        ns.get("x").unwrap().value(),
        Some(&43),
        "the late fill overwrote the newer value"
    );
}

/// Race: an explicit insert lands while a load of the same key is in flight; the load must not overwrite it.
#[tokio::test(start_paused = true)]
async fn insert_vs_late_fill() {
    let ns = namespace::<u32>(exact().build().unwrap());
    let src = FaultyLoader::new();
    src.set("k", 1);
    src.set_fault(Fault::Gate);
    let slow = spawn_load(&ns, &src, "k");
    settle().await;
    ns.insert("k", 2).await;
    src.release(1);
    slow.await.unwrap().unwrap();
    settle().await;
    assert_eq!(ns.get("k").unwrap().value(), Some(&2));
}

/// Race: `invalidate_all` while loads are in flight.
#[tokio::test(start_paused = true)]
async fn invalidate_all_vs_late_fills() {
    let ns = namespace::<u32>(exact().build().unwrap());
    let src = FaultyLoader::new();
    src.set("a", 1);
    src.set("b", 1);
    src.set_fault(Fault::Gate);
    let loads: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|k| spawn_load(&ns, &src, k))
        .collect();
    settle().await;
    ns.invalidate_all().await;
    src.release(2);
    for l in loads {
        l.await.unwrap().unwrap();
    }
    settle().await;
    assert!(ns.get("a").is_none() && ns.get("b").is_none());
}

#[tokio::test(start_paused = true)]
async fn versions_order_writes_and_fills() {
    let ns = namespace::<u32>(exact().build().unwrap());
    assert!(
        ns.insert_fetched("k", Fetched::value(5).with_version(5))
            .await
    );
    assert!(
        !ns.insert_fetched("k", Fetched::value(4).with_version(4))
            .await,
        "older version replaced newer"
    );
    assert_eq!(ns.get("k").unwrap().version(), Some(5));
    assert!(
        ns.insert_fetched("k", Fetched::value(6).with_version(6))
            .await
    );
    ns.invalidate_version("k", 9).await;
    assert!(
        !ns.insert_fetched("k", Fetched::value(8).with_version(8))
            .await,
        "fill older than the tombstone landed"
    );
    assert!(ns.get("k").is_none());
    assert!(
        ns.insert_fetched("k", Fetched::value(9).with_version(9))
            .await
    );
    // After the hold-off the tombstone no longer blocks.
    ns.invalidate_version("k", 20).await;
    advance(Duration::from_secs(6)).await;
    assert!(
        ns.insert_fetched("k", Fetched::value(10).with_version(10))
            .await
    );
}

#[tokio::test(start_paused = true)]
async fn early_refresh_by_ratio_refreshes_before_expiry_once() {
    let ns = namespace::<u32>(
        exact()
            .with_early_refresh(EarlyRefresh::Ratio(0.5))
            .build()
            .unwrap(),
    );
    let src = FaultyLoader::new();
    src.set("k", 1);
    ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    advance(Duration::from_secs(4)).await;
    ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    assert_eq!(src.calls(), 1, "refreshed before the ratio");
    advance(Duration::from_secs(2)).await;
    src.set("k", 2);
    src.set_fault(Fault::Gate);
    for _ in 0..10 {
        let l = ns.try_get_or_load("k", || src.load("k")).await.unwrap();
        assert_eq!((l.value(), l.status()), (Some(&1), Status::Hit(Tier::L1)));
    }
    assert_eq!(src.calls(), 2, "exactly one early refresh in flight");
    src.release(1);
    settle().await;
    let l = ns.get("k").unwrap();
    assert_eq!(l.value(), Some(&2));
    assert_eq!(ns.stats().early_refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn xfetch_refreshes_shortly_before_expiry_never_long_before() {
    let ns = namespace::<u32>(
        exact()
            .with_early_refresh(EarlyRefresh::XFetch { beta: 1.0 })
            .build()
            .unwrap(),
    );
    let src = FaultyLoader::new();
    src.set("k", 1);
    src.set_fault(Fault::Delay(Duration::from_millis(100)));
    ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    let fresh_until = ns.get("k").unwrap().entry().fresh_until();
    let mut first_refresh_at = None;
    // Read every 5 ms. With delta = 100 ms, the chance that no read in the last ~500 ms before expiry triggers
    // XFetch is about e^-20, so "it refreshed before expiry" is a deterministic claim in practice.
    for _ in 0..2_200 {
        advance(Duration::from_millis(5)).await;
        ns.try_get_or_load("k", || src.load("k")).await.unwrap();
        if src.calls() > 1 && first_refresh_at.is_none() {
            first_refresh_at = Some(ns.clock().now());
        }
    }
    let at = first_refresh_at.expect("XFetch never refreshed");
    // delta = 100 ms: refreshing 2 s (20 deltas) early has probability e^-20 per read.
    assert!(at < fresh_until, "refreshed only after expiry");
    assert!(
        at + 2_000 > fresh_until,
        "refreshed implausibly early: {} ms before",
        fresh_until - at
    );
    assert!(ns.stats().early_refreshes >= 1);
}

#[tokio::test(start_paused = true)]
async fn fail_safe_serves_stale_on_error_and_throttles_retries() {
    let ns = namespace::<u32>(
        exact()
            .with_fail_safe_for(Duration::from_secs(60))
            .with_fail_safe_retry_every(Duration::from_secs(2))
            .build()
            .unwrap(),
    );
    let src = FaultyLoader::new();
    src.set("k", 1);
    ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    advance(Duration::from_secs(15)).await;
    src.set_fault(Fault::Fail("down".into()));
    let l = ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    assert_eq!(
        (l.value(), l.status()),
        (Some(&1), Status::Stale(StaleReason::FailSafe))
    );
    assert_eq!(src.calls(), 2);
    for _ in 0..10 {
        let l = ns.try_get_or_load("k", || src.load("k")).await.unwrap();
        assert_eq!(l.status(), Status::Stale(StaleReason::FailSafe));
    }
    assert_eq!(src.calls(), 2, "retries are throttled");
    advance(Duration::from_secs(3)).await;
    ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    assert_eq!(src.calls(), 3, "a retry after the throttle interval");
    advance(Duration::from_secs(3)).await;
    src.set_fault(Fault::None);
    src.set("k", 2);
    let l = ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    assert_eq!((l.value(), l.status()), (Some(&2), Status::Miss));
    assert_eq!(ns.stats().fail_safe_activations, 2);
    // Past the fail-safe window, errors reach the caller.
    src.set_fault(Fault::Fail("down".into()));
    advance(Duration::from_secs(75)).await;
    assert!(ns.try_get_or_load("k", || src.load("k")).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn fail_safe_covers_hard_timeouts_too() {
    let ns = namespace::<u32>(
        exact()
            .with_fail_safe_for(Duration::from_secs(60))
            .with_hard_timeout(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let src = FaultyLoader::new();
    src.set("k", 1);
    ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    advance(Duration::from_secs(11)).await;
    src.set_fault(Fault::Hang);
    let l = ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    assert_eq!(l.status(), Status::Stale(StaleReason::FailSafe));
}

#[tokio::test(start_paused = true)]
async fn soft_timeout_serves_stale_and_the_load_finishes_in_the_background() {
    let ns = namespace::<u32>(
        exact()
            .with_fail_safe_for(Duration::from_secs(60))
            .with_soft_timeout(Duration::from_millis(100))
            .with_hard_timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let src = FaultyLoader::new();
    src.set("k", 1);
    ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    advance(Duration::from_secs(11)).await;
    src.set("k", 2);
    src.set_fault(Fault::Delay(Duration::from_secs(1)));
    let started = tokio::time::Instant::now();
    let l = ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(
        (l.value(), l.status()),
        (Some(&1), Status::Stale(StaleReason::SoftTimeout))
    );
    advance(Duration::from_secs(1)).await;
    let l = ns.get("k").expect("background load filled the cache");
    assert_eq!(l.value(), Some(&2));
    assert_eq!(src.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn without_a_stale_value_the_soft_timeout_waits_for_the_load() {
    let ns = namespace::<u32>(
        exact()
            .with_soft_timeout(Duration::from_millis(100))
            .build()
            .unwrap(),
    );
    let src = FaultyLoader::new();
    src.set("k", 1);
    src.set_fault(Fault::Delay(Duration::from_millis(500)));
    let l = ns.try_get_or_load("k", || src.load("k")).await.unwrap();
    assert_eq!((l.value(), l.status()), (Some(&1), Status::Miss));
}

#[tokio::test(start_paused = true)]
async fn ttl_jitter_spreads_expiry_of_entries_filled_together() {
    let ns = namespace::<u32>(
        Policy::builder()
            .with_ttl(Duration::from_secs(100))
            .with_jitter(0.1)
            .build()
            .unwrap(),
    );
    let now = ns.clock().now();
    let mut lifetimes = Vec::new();
    for i in 0..500 {
        let key = format!("k{i}");
        ns.insert(key.clone(), i).await;
        lifetimes.push(ns.get(&key).unwrap().entry().fresh_until() - now);
    }
    assert!(
        lifetimes.iter().all(|l| (90_000..=110_000).contains(l)),
        "{lifetimes:?}"
    );
    let spread = lifetimes.iter().max().unwrap() - lifetimes.iter().min().unwrap();
    assert!(spread > 15_000, "spread {spread} ms");
}

#[tokio::test(start_paused = true)]
async fn negative_caching_remembers_absence_for_its_own_ttl() {
    let ns = namespace::<u32>(
        exact()
            .with_negative_ttl(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let src = FaultyLoader::<u32>::new();
    let l = ns
        .try_get_or_load("nope", || src.load("nope"))
        .await
        .unwrap();
    assert_eq!(
        (l.value(), l.status(), l.is_absent()),
        (None, Status::Miss, true)
    );
    let l = ns
        .try_get_or_load("nope", || src.load("nope"))
        .await
        .unwrap();
    assert_eq!((l.value(), l.status()), (None, Status::Negative));
    assert_eq!(src.calls(), 1);
    advance(Duration::from_secs(6)).await;
    src.set("nope", 9);
    assert_eq!(
        ns.try_get_or_load("nope", || src.load("nope"))
            .await
            .unwrap()
            .value(),
        Some(&9)
    );
    // With negative_ttl = 0 absence is not cached.
    let plain = namespace::<u32>(exact().build().unwrap());
    plain
        .try_get_or_load("nope", || src.load("zzz"))
        .await
        .unwrap();
    plain
        .try_get_or_load("nope", || src.load("zzz"))
        .await
        .unwrap();
    assert_eq!(src.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn get_returns_only_fresh_entries_and_never_loads() {
    let ns = namespace::<u32>(
        exact()
            .with_stale_for(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    assert!(ns.get("k").is_none());
    ns.insert("k", 1).await;
    assert_eq!(ns.get("k").unwrap().status(), Status::Hit(Tier::L1));
    advance(Duration::from_secs(11)).await;
    assert!(ns.get("k").is_none());
    let many = ns.get_many(["k", "x"]);
    assert!(many.iter().all(Option::is_none));
}

#[tokio::test(start_paused = true)]
async fn get_or_load_many_passes_only_the_misses_to_one_batch_call() {
    let ns = namespace::<u32>(exact().build().unwrap());
    let src = FaultyLoader::new();
    for i in 0..10 {
        src.set(format!("k{i}"), i);
    }
    ns.insert("k0", 100).await;
    // k1 is being loaded by someone else.
    src.set_fault(Fault::Gate);
    let other = spawn_load(&ns, &src, "k1");
    settle().await;
    src.set_fault(Fault::None);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let keys = ["k0", "k1", "k2", "k3", "missing"];
    let batch = {
        let (ns, src, seen) = (ns.clone(), src.clone(), seen.clone());
        tokio::spawn(async move {
            ns.get_or_load_many(&keys, |misses| {
                seen.lock().extend(misses.clone());
                src.load_many(misses)
            })
            .await
        })
    };
    settle().await;
    src.release(1);
    let got = batch.await.unwrap().unwrap();
    other.await.unwrap().unwrap();
    let mut seen = seen.lock().clone();
    seen.sort();
    assert_eq!(seen, vec!["k2", "k3", "missing"]);
    let values: Vec<_> = got.iter().map(|l| l.value().copied()).collect();
    assert_eq!(values, vec![Some(100), Some(1), Some(2), Some(3), None]);
    let statuses: Vec<_> = got.iter().map(|l| l.status()).collect();
    assert_eq!(
        statuses,
        vec![
            Status::Hit(Tier::L1),
            Status::Coalesced,
            Status::Miss,
            Status::Miss,
            Status::Miss
        ]
    );
    assert_eq!(src.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn warm_loads_with_bounded_concurrency_and_never_twice() {
    let ns = namespace::<u32>(exact().build().unwrap());
    let src = FaultyLoader::new();
    for i in 0..100 {
        src.set(format!("k{i}"), i);
    }
    src.set_fault(Fault::Delay(Duration::from_millis(10)));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let loader = |k: String| {
        let (src, in_flight, peak) = (src.clone(), in_flight.clone(), peak.clone());
        let n = in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        peak.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
        async move {
            let r = src.load(&k).await;
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            r
        }
    };
    let report = ns.warm(keys.clone(), 4, loader).await;
    assert_eq!((report.loaded, report.failed), (100, 0));
    assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 4);
    assert_eq!(src.calls(), 100);
    let again = ns.warm(keys, 4, loader).await;
    assert_eq!(again.already_cached, 100);
    assert_eq!(src.calls(), 100);
}

#[tokio::test(start_paused = true)]
async fn stats_count_each_outcome() {
    let ns = namespace::<u32>(
        exact()
            .with_stale_for(Duration::from_secs(5))
            .with_negative_ttl(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let src = FaultyLoader::new();
    src.set("a", 1);
    ns.try_get_or_load("a", || src.load("a")).await.unwrap();
    ns.try_get_or_load("a", || src.load("a")).await.unwrap();
    ns.try_get_or_load("none", || src.load("none"))
        .await
        .unwrap();
    ns.try_get_or_load("none", || src.load("none"))
        .await
        .unwrap();
    advance(Duration::from_secs(11)).await;
    ns.try_get_or_load("a", || src.load("a")).await.unwrap();
    settle().await;
    ns.invalidate("a").await;
    let s = ns.stats();
    assert_eq!(
        (
            s.hits_l1,
            s.negative_hits,
            s.misses,
            s.stale_revalidating,
            s.loads,
            s.refreshes,
            s.invalidations
        ),
        (1, 1, 2, 1, 3, 1, 1)
    );
    assert!(s.l1_bytes > 0 && s.l1_entries >= 1);
    assert!((s.hit_ratio() - 0.6).abs() < 1e-9, "{}", s.hit_ratio());
}

#[tokio::test(start_paused = true)]
async fn invalidate_tag_drops_tagged_entries_and_spares_the_rest() {
    let ns = namespace::<u32>(exact().build().unwrap());
    ns.insert_fetched("tv-1", Fetched::value(1).with_tags(["tv", "sale"]))
        .await;
    ns.insert_fetched("tv-2", Fetched::value(2).with_tags(["tv"]))
        .await;
    ns.insert_fetched("radio", Fetched::value(3).with_tags(["radio"]))
        .await;
    ns.insert("plain", 4).await;
    ns.invalidate_tag("tv").await;
    assert!(ns.get("tv-1").is_none() && ns.get("tv-2").is_none());
    assert!(ns.get("radio").is_some() && ns.get("plain").is_some());
    // An entry created after the barrier is valid, even with the tag.
    advance(Duration::from_millis(5)).await;
    ns.insert_fetched("tv-3", Fetched::value(5).with_tags(["tv"]))
        .await;
    assert_eq!(ns.get("tv-3").unwrap().value(), Some(&5));
}

/// Race: a load whose result carries tag T is under way when T is invalidated. Its result was read before the
/// invalidation, so it must not fill the cache.
#[tokio::test(start_paused = true)]
async fn tag_invalidation_vs_late_tagged_fill() {
    let ns = namespace::<u32>(exact().build().unwrap());
    let gate = Arc::new(tokio::sync::Notify::new());
    let slow = {
        let (ns, gate) = (ns.clone(), gate.clone());
        tokio::spawn(async move {
            ns.get_or_load("tv-1", move || async move {
                gate.notified().await;
                Fetched::value(1).with_tags(["tv"])
            })
            .await
        })
    };
    settle().await;
    ns.invalidate_tag("tv").await;
    gate.notify_one();
    assert_eq!(slow.await.unwrap().unwrap().value(), Some(&1));
    settle().await;
    assert!(
        ns.get("tv-1").is_none(),
        "a load that began before the tag invalidation filled the cache"
    );
}

#[tokio::test(start_paused = true)]
async fn hot_keys_are_pinned_even_with_l1_off_and_dropped_on_invalidation() {
    let policy = exact()
        .with_l1(false)
        .with_hot_keys(strata::HotKeys {
            enabled: true,
            threshold_per_sec: 50, // 10 requests in the 200 ms window
            pin_ttl: Duration::from_secs(1),
            l2_replicas: 0,
        })
        .build()
        .unwrap();
    let ns = namespace::<u32>(policy);
    let source = FaultyLoader::new();
    source.set("hot", 1u32);
    source.set("cold", 2u32);
    for _ in 0..50 {
        ns.try_get_or_load("hot", || source.load("hot"))
            .await
            .unwrap();
    }
    assert_eq!(source.source_loads(), 10, "loads before the key turned hot");
    assert_eq!(ns.stats().pinned, 1);
    assert_eq!(ns.get("hot").unwrap().status(), Status::Hit(Tier::L1));
    // A cold key is never kept with L1 off.
    ns.try_get_or_load("cold", || source.load("cold"))
        .await
        .unwrap();
    assert!(ns.get("cold").is_none());
    // The pin lasts pin_ttl, however long the entry's own TTL.
    advance(Duration::from_millis(1100)).await;
    assert!(ns.get("hot").is_none());
    // An invalidation drops a pinned copy at once.
    for _ in 0..12 {
        ns.try_get_or_load("hot", || source.load("hot"))
            .await
            .unwrap();
    }
    assert!(ns.get("hot").is_some());
    ns.invalidate("hot").await;
    assert!(ns.get("hot").is_none());
}
