//! Each algorithm against its definition under a manual clock: burst size, refill, window edges, the
//! `retry_after` it promises, and (proptest) the bound it guarantees over any span.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use strata_core::ManualClock;

use futures::future::BoxFuture;
use std::sync::atomic::Ordering;
use strata_core::Error;

use super::*;

fn limiter(a: Algorithm) -> (LocalLimiter, ManualClock) {
    let clock = ManualClock::new(1_000_000);
    (LocalLimiter::new(a, Arc::new(clock.clone())), clock)
}

fn admitted(l: &LocalLimiter, q: Quota, n: usize) -> usize {
    (0..n).filter(|_| l.acquire("k", q, 1).allowed).count()
}

#[test]
fn token_bucket_bursts_then_refills_at_the_rate() {
    let (l, clock) = limiter(Algorithm::TokenBucket);
    let q = Quota::new(10, Duration::from_secs(1)).with_burst(20);
    assert_eq!(admitted(&l, q, 30), 20, "the burst");
    let d = l.acquire("k", q, 1);
    assert!(!d.allowed && d.remaining == 0);
    assert_eq!(
        d.retry_after,
        Some(Duration::from_millis(100)),
        "one token per 100 ms"
    );
    clock.advance(Duration::from_millis(99));
    assert!(!l.acquire("k", q, 1).allowed);
    clock.advance(Duration::from_millis(1));
    assert!(l.acquire("k", q, 1).allowed);
    clock.advance(Duration::from_millis(500));
    assert_eq!(admitted(&l, q, 10), 5, "five tokens in 500 ms");
    assert_eq!(admitted(&l, q, 1), 0);
    assert!(l.acquire("other", q, 20).allowed, "keys are apart");
    let d = l.acquire("other", q, 25);
    assert!(
        !d.allowed && d.retry_after.is_none(),
        "more than the bucket holds never fits"
    );
}

#[test]
fn leaky_bucket_admits_the_burst_then_one_drained_unit_at_a_time() {
    let (l, clock) = limiter(Algorithm::LeakyBucket);
    let q = Quota::new(10, Duration::from_secs(1)).with_burst(5);
    assert_eq!(admitted(&l, q, 10), 5);
    let d = l.acquire("k", q, 1);
    assert_eq!(d.retry_after, Some(Duration::from_millis(100)));
    for _ in 0..10 {
        clock.advance(Duration::from_millis(100));
        assert_eq!(admitted(&l, q, 3), 1, "one per emission interval");
    }
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        l.acquire("k", q, 1).remaining,
        4,
        "drained: the whole bucket again"
    );
}

#[test]
fn fixed_window_resets_at_the_edge_and_allows_twice_the_limit_across_it() {
    let (l, clock) = limiter(Algorithm::FixedWindow);
    let q = Quota::new(10, Duration::from_secs(1));
    clock.set(2_000_900);
    assert_eq!(admitted(&l, q, 15), 10);
    let d = l.acquire("k", q, 1);
    assert_eq!(
        d.retry_after,
        Some(Duration::from_millis(100)),
        "until the edge"
    );
    clock.set(2_001_000);
    assert_eq!(admitted(&l, q, 15), 10, "a new window: 20 within 100 ms");
}

#[test]
fn sliding_window_weights_the_previous_window() {
    let (l, clock) = limiter(Algorithm::SlidingWindow);
    let q = Quota::new(10, Duration::from_secs(1));
    clock.set(3_000_000);
    assert_eq!(admitted(&l, q, 10), 10);
    // 30 % into the next window, the previous one still counts 70 %: 7 used, 3 left.
    clock.set(3_001_300);
    assert_eq!(admitted(&l, q, 10), 3);
    // 80 % in: the previous weighs 2, this one holds 3 — 5 left.
    clock.set(3_001_800);
    assert_eq!(admitted(&l, q, 10), 5);
    // Two windows later nothing remains of either.
    clock.set(3_003_000);
    assert_eq!(admitted(&l, q, 20), 10);
}

#[test]
fn sliding_log_is_exact_over_any_period() {
    let (l, clock) = limiter(Algorithm::SlidingLog);
    let q = Quota::new(4, Duration::from_secs(1));
    for _ in 0..4 {
        assert!(l.acquire("k", q, 1).allowed);
        clock.advance(Duration::from_millis(200));
    }
    // At +800 ms the log holds 4 entries (0, 200, 400, 600): the first leaves at +1000.
    let d = l.acquire("k", q, 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(Duration::from_millis(200)));
    clock.advance(Duration::from_millis(200));
    assert!(l.acquire("k", q, 1).allowed);
    assert!(!l.acquire("k", q, 1).allowed);
}

#[test]
fn the_fallback_admits_a_local_share_while_the_shared_limiter_fails_and_says_so() {
    struct Down;
    impl SharedLimiter for Down {
        fn acquire<'a>(
            &'a self,
            _: &'a str,
            _: Quota,
            _: u64,
        ) -> BoxFuture<'a, Result<Decision, Error>> {
            Box::pin(async {
                Err(Error::Unavailable {
                    tier: strata_core::Tier::L2,
                    message: "down".into(),
                })
            })
        }
    }
    let clock = ManualClock::new(0);
    let f = FallbackLimiter::new(
        Some(Arc::new(Down)),
        Algorithm::TokenBucket,
        4,
        Arc::new(clock),
    );
    let q = Quota::new(100, Duration::from_secs(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ds: Vec<Decision> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..40 {
            v.push(f.acquire("k", q, 1).await);
        }
        v
    });
    assert_eq!(
        ds.iter().filter(|d| d.allowed).count(),
        25,
        "a quarter of the burst"
    );
    assert!(ds.iter().all(|d| d.fallback));
    assert_eq!(f.stats().fallbacks.load(Ordering::Relaxed), 40);
}

fn quota() -> impl Strategy<Value = Quota> {
    (1u64..50, 1u64..2_000, 1u64..60).prop_map(|(limit, period, burst)| {
        Quota::new(limit, Duration::from_millis(period)).with_burst(burst)
    })
}

fn steps() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec((0u64..300, 0u64..4), 1..200)
}

proptest! {
    /// Whatever arrives, no algorithm admits more than its bound over any span, a refusal takes nothing, and
    /// waiting the promised `retry_after` admits the same request when nothing else came.
    #[test]
    fn every_algorithm_keeps_its_bound(q in quota(), steps in steps(), a in 0usize..5) {
        let a = Algorithm::ALL[a];
        let mut state = State::default();
        let mut now = 10_000_000u64;
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (dt, cost) in steps {
            now += dt;
            let before = state.clone();
            let d = state.decide(a, &q, now, cost);
            if d.allowed {
                admitted.push((now, cost));
            } else {
                // A refusal takes nothing: the same request decides the same way again.
                let mut again = before.clone();
                let d2 = again.decide(a, &q, now, cost);
                prop_assert!(!d2.allowed);
                if let Some(wait) = d.retry_after {
                    let mut later = before;
                    let at = now + wait.as_millis() as u64;
                    prop_assert!(later.decide(a, &q, at, cost).allowed, "{a:?}: retry_after {wait:?} was too short");
                }
            }
        }
        let p = q.period_ms();
        for (i, &(t0, _)) in admitted.iter().enumerate() {
            // Every span that starts at an admitted request.
            for j in i..admitted.len() {
                let t1 = admitted[j].0;
                let sum: u64 = admitted[i..=j].iter().map(|&(_, c)| c).sum();
                let span = t1 - t0;
                let bound = match a {
                    Algorithm::TokenBucket | Algorithm::LeakyBucket =>
                        q.burst as f64 + q.limit as f64 * span as f64 / p as f64,
                    Algorithm::SlidingLog => if span < p { q.limit as f64 } else { f64::INFINITY },
                    Algorithm::FixedWindow | Algorithm::SlidingWindow =>
                        if span < p { 2.0 * q.limit as f64 } else { f64::INFINITY },
                };
                prop_assert!(sum as f64 <= bound + 1e-6, "{a:?} admitted {sum} in {span} ms (bound {bound})");
            }
        }
    }
}
