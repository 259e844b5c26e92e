//! A circuit breaker for calls to a remote tier (Redis): after `failure_threshold` consecutive failures it
//! *opens* and callers fail fast (skip the tier) for `open_for`; then it lets exactly one *probe* through
//! (half-open); the probe's success closes it, its failure opens it again.
//!
//! Permission is a [`Permit`] that must be resolved with [`Permit::success`] or [`Permit::failure`]; a permit that
//! is dropped unresolved (its call was cancelled) counts as a failure, so a cancelled probe can never leave the
//! breaker half-open forever. State is a small mutex-guarded enum (no hand-written atomics), read on every remote
//! call: the lock is held for a few instructions and never across an await.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_core::{Clock, UnixMillis};

/// The breaker's state, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// One probe call is allowed; others are refused until it resolves.
    HalfOpen,
}

impl BreakerState {
    /// A short name for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: UnixMillis },
    HalfOpen { probing: bool },
}

/// See the module docs. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    failure_threshold: u32,
    open_for_ms: u64,
    state: Mutex<(State, Epoch)>,
}

/// Counts openings; a permit resolves only within the epoch that granted it, so a call permitted before the
/// breaker opened cannot, finishing late, close it or count against the next period.
type Epoch = u64;

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Permission for one call; resolve it with the call's outcome.
#[must_use = "resolve the permit with success() or failure(); dropping it counts as a failure"]
pub struct Permit {
    breaker: Option<Arc<Inner>>,
    epoch: Epoch,
}

impl CircuitBreaker {
    /// Opens after `failure_threshold` consecutive failures (at least 1), for `open_for`.
    pub fn new(clock: Arc<dyn Clock>, failure_threshold: u32, open_for: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                clock,
                failure_threshold: failure_threshold.max(1),
                open_for_ms: open_for.as_millis() as u64,
                state: Mutex::new((State::Closed { failures: 0 }, 0)),
            }),
        }
    }

    /// A permit to call the tier, or `None` to skip it (open, or a probe is already under way).
    pub fn allow(&self) -> Option<Permit> {
        let mut guard = self.inner.state.lock();
        let (state, epoch) = &mut *guard;
        match *state {
            State::Closed { .. } => {}
            State::Open { until } if self.inner.clock.now() >= until => {
                *state = State::HalfOpen { probing: true }
            }
            State::Open { .. } | State::HalfOpen { probing: true } => return None,
            State::HalfOpen { probing: false } => *state = State::HalfOpen { probing: true },
        }
        Some(Permit {
            breaker: Some(self.inner.clone()),
            epoch: *epoch,
        })
    }

    /// The current state (an open breaker whose period has ended reports `HalfOpen`).
    pub fn state(&self) -> BreakerState {
        match self.inner.state.lock().0 {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if self.inner.clock.now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How many times the breaker has opened.
    pub fn times_opened(&self) -> u64 {
        self.inner.state.lock().1
    }
}

impl Inner {
    fn resolve(&self, granted_in: Epoch, ok: bool) {
        let mut guard = self.state.lock();
        let (state, epoch) = &mut *guard;
        if granted_in != *epoch {
            return;
        }
        let reopen = match (&mut *state, ok) {
            (State::Closed { failures }, true) => {
                *failures = 0;
                false
            }
            (State::Closed { failures }, false) => {
                *failures += 1;
                *failures >= self.failure_threshold
            }
            (State::HalfOpen { .. }, true) => {
                *state = State::Closed { failures: 0 };
                false
            }
            (State::HalfOpen { .. }, false) => true,
            // Unreachable within one epoch (opening bumps it), kept total for safety.
            (State::Open { .. }, _) => false,
        };
        if reopen {
            *state = State::Open {
                until: self.clock.now() + self.open_for_ms,
            };
            *epoch += 1;
        }
    }
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        if let Some(b) = self.breaker.take() {
            b.resolve(self.epoch, true);
        }
    }

    /// The call failed (error or timeout).
    pub fn failure(mut self) {
        if let Some(b) = self.breaker.take() {
            b.resolve(self.epoch, false);
        }
    }

    /// The call was abandoned by its caller before it ended (a client that went away): it says nothing of the
    /// tier, so it counts neither way; a half-open probe lets another call probe.
    pub fn abandon(mut self) {
        if let Some(b) = self.breaker.take() {
            let mut guard = b.state.lock();
            let (state, epoch) = &mut *guard;
            if *epoch == self.epoch {
                if let State::HalfOpen { probing } = state {
                    *probing = false;
                }
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(b) = self.breaker.take() {
            b.resolve(self.epoch, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use strata_core::ManualClock;

    fn breaker() -> (CircuitBreaker, ManualClock) {
        let clock = ManualClock::new(0);
        (
            CircuitBreaker::new(Arc::new(clock.clone()), 3, Duration::from_secs(5)),
            clock,
        )
    }

    #[test]
    fn an_abandoned_call_counts_neither_way_and_frees_the_probe() {
        let (b, clock) = breaker();
        for _ in 0..2 {
            b.allow().unwrap().failure();
        }
        b.allow().unwrap().abandon();
        b.allow().unwrap().failure();
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "the abandoned call did not reset the count"
        );
        clock.advance(Duration::from_secs(5));
        b.allow().unwrap().abandon();
        assert!(
            b.allow().is_some(),
            "an abandoned probe lets another call probe"
        );
    }

    #[test]
    fn opens_after_consecutive_failures_then_probes_once_then_closes() {
        let (b, clock) = breaker();
        b.allow().unwrap().failure();
        b.allow().unwrap().success();
        for _ in 0..2 {
            b.allow().unwrap().failure();
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success in between resets the count"
        );
        b.allow().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.allow().is_none());
        clock.advance(Duration::from_millis(4_999));
        assert!(b.allow().is_none());
        clock.advance(Duration::from_millis(1));
        let probe = b.allow().expect("probe after the open period");
        assert!(b.allow().is_none(), "only one probe at a time");
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow().is_some());
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn a_failed_probe_reopens_for_another_period() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            b.allow().unwrap().failure();
        }
        clock.advance(Duration::from_secs(5));
        b.allow().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_millis(4_999));
        assert!(b.allow().is_none());
        assert_eq!(b.times_opened(), 2);
    }

    /// Race: the probe's caller is cancelled. The dropped permit counts as a failure, so the breaker reopens
    /// instead of staying half-open with a probe that will never report.
    #[test]
    fn a_cancelled_probe_does_not_wedge_the_breaker() {
        let (b, clock) = breaker();
        for _ in 0..3 {
            b.allow().unwrap().failure();
        }
        clock.advance(Duration::from_secs(5));
        drop(b.allow().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(5));
        assert!(b.allow().is_some());
    }

    /// Race: a call permitted while closed finishes after the breaker opened and went half-open. Its late
    /// success must not close the breaker in place of the probe.
    #[test]
    fn a_late_result_from_before_the_opening_is_ignored() {
        let (b, clock) = breaker();
        let slow = b.allow().unwrap();
        for _ in 0..3 {
            b.allow().unwrap().failure();
        }
        clock.advance(Duration::from_secs(5));
        let probe = b.allow().unwrap();
        slow.success();
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "a stale success closed the breaker"
        );
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open);
    }

    proptest! {
        /// Invariants over random call sequences: while open (before its period ends) nothing is allowed; at most
        /// one probe is outstanding; `threshold` consecutive failures of closed-period calls always open it.
        #[test]
        fn invariants_hold(ops in proptest::collection::vec((0u8..4, 0u64..3_000), 1..200)) {
            let (b, clock) = breaker();
            // (permit, granted as a probe, epoch it was granted in)
            let mut outstanding: Vec<(Permit, bool, u64)> = Vec::new();
            let mut consecutive_failures = 0u32;
            for (op, ms) in ops {
                match op {
                    0 => {
                        let before = b.state();
                        if let Some(p) = b.allow() {
                            prop_assert!(before != BreakerState::Open, "allowed while open");
                            let probe = before != BreakerState::Closed;
                            if probe {
                                let open_probes = outstanding.iter().filter(|(_, pr, e)| *pr && *e == b.times_opened()).count();
                                prop_assert_eq!(open_probes, 0, "second probe while half-open");
                            }
                            outstanding.push((p, probe, b.times_opened()));
                        }
                    }
                    1 => if let Some((p, _, _)) = outstanding.pop() {
                        p.success();
                        consecutive_failures = 0;
                    },
                    2 => if let Some((p, _, epoch)) = outstanding.pop() {
                        let counts = b.state() == BreakerState::Closed && epoch == b.times_opened();
                        p.failure();
                        if counts {
                            consecutive_failures += 1;
                            if consecutive_failures >= 3 {
                                prop_assert_ne!(b.state(), BreakerState::Closed);
                            }
                        } else {
                            consecutive_failures = 0;
                        }
                    },
                    _ => clock.advance(Duration::from_millis(ms)),
                }
                if b.state() != BreakerState::Closed {
                    consecutive_failures = 0;
                }
            }
        }
    }
}
