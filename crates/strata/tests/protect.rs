//! Source protection under paused time: the bulkhead admits `max_in_flight` loads, queues `max_queue` for at most
//! `max_wait` and sheds the rest at once (stale when a value is in the fail-safe window, else `Overloaded`); the
//! breaker opens after consecutive failures, refuses without touching the source, and closes after one probe;
//! a retrying source answers after jittered backoff, and against a dead source its retries stay in the budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use strata::breaker::BreakerState;
use strata::protect::Protection;
use strata::{Cache, Error, Policy, StaleReason, Status};

fn cache() -> Cache {
    Cache::builder()
        .with_clock(Arc::new(strata::TokioClock::new()))
        .build()
}

#[tokio::test(start_paused = true)]
async fn the_bulkhead_admits_queues_and_sheds_and_a_stale_value_answers_past_it() {
    let cache = cache();
    let ns = cache
        .namespace::<u64>("slow")
        .with_policy(
            Policy::builder()
                .with_ttl(Duration::from_secs(1))
                .with_jitter(0.0)
                .with_fail_safe_for(Duration::from_secs(600))
                .with_hard_timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        )
        .with_protection(Protection {
            max_in_flight: Some(2),
            max_queue: 1,
            max_wait: Duration::from_millis(100),
            ..Protection::default()
        })
        .build()
        .unwrap();
    ns.get_or_load("cached", || async { Some(7) })
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;

    let calls = Arc::new(AtomicUsize::new(0));
    let slow = |calls: Arc<AtomicUsize>| async move {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(12)).await;
        Some(1u64)
    };
    let started = tokio::time::Instant::now();
    let loads: Vec<_> = (0..5)
        .map(|i| {
            let (ns, calls) = (ns.clone(), calls.clone());
            tokio::spawn(async move {
                let r = ns.get_or_load(&format!("k{i}"), move || slow(calls)).await;
                (r.map(|l| l.status()), started.elapsed())
            })
        })
        .collect();
    // While two loads hold the slots, a key with a stale value answers at once, stale.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let l = ns
        .get_or_load("cached", move || async { Some(8) })
        .await
        .unwrap();
    assert_eq!(
        (l.status(), l.value()),
        (Status::Stale(StaleReason::Overloaded), Some(&7)),
        "shed, answered stale"
    );
    let out: Vec<_> = join_all(loads)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ok: Vec<_> = out.iter().filter(|(r, _)| r.is_ok()).collect();
    let shed: Vec<_> = out
        .iter()
        .filter(|(r, _)| matches!(r, Err(Error::Overloaded(_))))
        .collect();
    assert_eq!((ok.len(), shed.len()), (2, 3), "{out:?}");
    assert!(
        shed.iter().all(|(_, t)| *t <= Duration::from_millis(101)),
        "shed fast, the queued one after max_wait: {out:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the source saw only the admitted loads"
    );
    let (stats, _) = ns.protection().unwrap();
    assert_eq!(stats.shed.load(Ordering::Relaxed), 4);
    assert_eq!(stats.peak_in_flight.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_on_failures_refuses_without_the_source_and_closes_after_a_probe() {
    let cache = cache();
    let ns = cache
        .namespace::<u64>("flaky")
        .with_policy(Policy::builder().with_jitter(0.0).build().unwrap())
        .with_protection(Protection {
            breaker_failures: Some(3),
            breaker_open_for: Duration::from_secs(5),
            ..Protection::default()
        })
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = |calls: Arc<AtomicUsize>| async move {
        calls.fetch_add(1, Ordering::SeqCst);
        Err::<Option<u64>, _>(std::io::Error::other("source down"))
    };
    for i in 0..3 {
        let c = calls.clone();
        assert!(ns
            .try_get_or_load(&format!("k{i}"), move || failing(c))
            .await
            .is_err());
    }
    assert_eq!(ns.protection().unwrap().1, BreakerState::Open);
    let c = calls.clone();
    let e = ns
        .try_get_or_load("k9", move || failing(c))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Overloaded(_)), "{e}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "refused without the source"
    );
    tokio::time::advance(Duration::from_secs(6)).await;
    let c = calls.clone();
    let l = ns
        .try_get_or_load("k9", move || async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Some(1u64))
        })
        .await
        .unwrap();
    assert_eq!(l.value(), Some(&1), "the probe went through");
    assert_eq!(ns.protection().unwrap().1, BreakerState::Closed);
}

/// A source that fails its first `fail_first` loads, then answers each key with its length.
struct Flaky {
    calls: AtomicUsize,
    fail_first: usize,
}

impl strata::Source<u64> for Flaky {
    fn load<'a>(
        &'a self,
        key: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<strata::Fetched<u64>, strata_core::SharedError>>
    {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                Err(Arc::new(std::io::Error::other("connection reset")) as strata_core::SharedError)
            } else {
                Ok(strata::Fetched::value(key.len() as u64))
            }
        })
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> futures::future::BoxFuture<
        'a,
        Result<std::collections::HashMap<String, strata::Fetched<u64>>, strata_core::SharedError>,
    > {
        Box::pin(async move {
            let mut out = std::collections::HashMap::new();
            for k in keys {
                out.insert(k.clone(), self.load(k).await?);
            }
            Ok(out)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_load_that_fails_twice_is_answered_by_its_third_attempt_after_jittered_backoff() {
    use strata::retry_budget::Retrying;
    let source = Arc::new(
        Retrying::new(
            Flaky {
                calls: AtomicUsize::new(0),
                fail_first: 2,
            },
            3,
            1.0,
        )
        .with_backoff(Duration::from_millis(100), Duration::from_secs(1)),
    );
    let cache = cache();
    let ns = cache
        .namespace::<u64>("flaky")
        .with_source(source.clone())
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let got = ns.fetch("abc").await.unwrap();
    assert_eq!(got.value(), Some(&3));
    // Two backoffs: at most 100 ms and 200 ms (full jitter below those ceilings).
    assert!(
        started.elapsed() <= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(source.counts(), (1, 2, 0));
}

#[tokio::test(start_paused = true)]
async fn retries_against_a_dead_source_stay_within_a_tenth_of_loads() {
    use strata::retry_budget::Retrying;
    let source = Arc::new(Retrying::new(
        Flaky {
            calls: AtomicUsize::new(0),
            fail_first: usize::MAX,
        },
        3,
        0.1,
    ));
    let cache = cache();
    let ns = cache
        .namespace::<u64>("dead")
        .with_source(source.clone())
        .build()
        .unwrap();
    for i in 0..200 {
        assert!(ns.fetch(&format!("k{i}")).await.is_err());
    }
    let (loads, retries, refused) = source.counts();
    assert_eq!(loads, 200);
    // Without the budget: 200 × 3 retries. With it: the reserve of 3 and a tenth of the loads.
    assert!(retries <= 3 + 20, "{retries} retries");
    assert!(refused >= 150, "{refused} refused");
}

#[tokio::test(start_paused = true)]
async fn adaptive_concurrency_finds_the_load_a_slowing_source_takes_within_its_target() {
    // A source that slows down with load: each load takes 20 ms per load in flight (itself included), so it
    // answers within the 100 ms target only with at most 5 at once.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak_late = Arc::new(AtomicUsize::new(0));
    let cache = cache();
    let ns = cache
        .namespace::<u64>("adaptive")
        .with_policy(
            Policy::builder()
                .with_hard_timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        )
        .with_protection(Protection {
            max_in_flight: Some(64),
            adaptive_target: Some(Duration::from_millis(100)),
            ..Protection::default()
        })
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let clients: Vec<_> = (0..32)
        .map(|c| {
            let (ns, in_flight, peak_late) = (ns.clone(), in_flight.clone(), peak_late.clone());
            tokio::spawn(async move {
                let (mut ok, mut shed) = (0u32, 0u32);
                for i in 0..60 {
                    let (f, p) = (in_flight.clone(), peak_late.clone());
                    let r = ns
                        .get_or_load(&format!("c{c}-{i}"), move || async move {
                            let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                            if started.elapsed() > Duration::from_secs(3) {
                                p.fetch_max(now, Ordering::SeqCst);
                            }
                            tokio::time::sleep(Duration::from_millis(20 * now as u64)).await;
                            f.fetch_sub(1, Ordering::SeqCst);
                            Some(1u64)
                        })
                        .await;
                    match r {
                        Ok(_) => ok += 1,
                        Err(Error::Overloaded(_)) => {
                            shed += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("{e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (ok, shed)
            })
        })
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for c in join_all(clients).await {
        let (o, s) = c.unwrap();
        ok += o;
        shed += s;
    }
    let (stats, _) = ns.protection().unwrap();
    let limit = stats.limit.load(Ordering::SeqCst);
    // 32 clients would put 32 loads on the source at once (640 ms each); the limit settles where the source
    // still answers in about 100 ms.
    assert!((2..=8).contains(&limit), "limit {limit}");
    let peak = peak_late.load(Ordering::SeqCst);
    assert!(peak <= 10, "{peak} loads at once after the limit settled");
    assert!(ok > 0 && shed > 0, "ok {ok}, shed {shed}");
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_gives_back_its_queue_place_and_says_nothing_of_the_source() {
    use strata::protect::SourceGuard;
    let guard = SourceGuard::new(
        "gone",
        Protection {
            max_in_flight: Some(1),
            max_queue: 1,
            max_wait: Duration::from_secs(1),
            breaker_failures: Some(1),
            ..Protection::default()
        },
        Arc::new(strata::TokioClock::new()),
    );
    let held = guard.admit().await.unwrap();
    // A waiter cancelled in the queue (its client disconnected) …
    assert!(
        tokio::time::timeout(Duration::from_millis(10), guard.admit())
            .await
            .is_err()
    );
    // … leaves its place: the next one may wait, and gets the slot when it frees.
    let (waiter, _) = tokio::join!(guard.admit(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(held); // abandoned too: not a failure of the source
    });
    let waiter = waiter.expect("the queue place was given back");
    assert_eq!(
        guard.breaker_state(),
        BreakerState::Closed,
        "an abandoned load is no failure"
    );
    waiter.done(true);
    assert_eq!(guard.stats().in_flight.load(Ordering::SeqCst), 0);
}
