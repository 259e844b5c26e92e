//! The injectable clock.
//!
//! Strata stores absolute deadlines (`fresh_until`, `stale_until`) as Unix milliseconds so that they mean the same
//! thing in every tier and on every node. All engine code reads time through [`Clock`]; nothing calls
//! `SystemTime::now()` directly.
//!
//! [`SystemClock`] anchors the wall clock once and then advances with a monotonic clock. It is read on every cache
//! hit, so it reads quanta's *recent* time: one atomic load of a value a background thread (quanta's upkeep,
//! started once per process) refreshes every millisecond. It may lag real time by about a millisecond, which is the
//! resolution of Strata's timestamps anyway. It is immune to wall-clock steps during a process's life.
//! [`TokioClock`] advances with Tokio's clock instead, so `tokio::time::pause()` / `advance()` drive cache expiry
//! and load timeouts together in tests. [`ManualClock`] moves only when told to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = u64;

/// A source of the current time.
///
/// Implementations MUST be cheap (they are called on every cache hit) and MUST NOT go backwards.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time in Unix milliseconds.
    fn now(&self) -> UnixMillis;
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One quanta clock per process, and the upkeep thread refreshing its recent time (when we could start it).
struct Monotonic {
    clock: quanta::Clock,
    upkeep: Option<quanta::Handle>,
}

fn monotonic() -> &'static Monotonic {
    static GLOBAL: OnceLock<Monotonic> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let clock = quanta::Clock::new();
        // Fails if another library already runs an upkeep thread (on its own clock): then we read `now()`.
        let upkeep = quanta::Upkeep::new_with_clock(Duration::from_millis(1), clock.clone())
            .start()
            .ok();
        Monotonic { clock, upkeep }
    })
}

/// Wall clock anchored at construction, advanced by a fast monotonic clock (see the module docs).
#[derive(Debug, Clone)]
pub struct SystemClock {
    anchor_unix_ms: u64,
    anchor: quanta::Instant,
}

impl SystemClock {
    /// Anchors the clock at the current wall-clock time.
    pub fn new() -> Self {
        Self {
            anchor_unix_ms: unix_now_ms(),
            anchor: monotonic().clock.now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> UnixMillis {
        let m = monotonic();
        let since = match m.upkeep {
            // `recent` may trail the anchor by up to an upkeep interval right after construction.
            Some(_) => m.clock.recent().checked_duration_since(self.anchor),
            None => None,
        }
        .unwrap_or_else(|| m.clock.now().saturating_duration_since(self.anchor));
        self.anchor_unix_ms + since.as_millis() as u64
    }
}

/// Wall clock anchored at construction, advanced by Tokio's clock: under `tokio::time::pause()` it stands still
/// and `advance()` moves it. For tests; [`SystemClock`] is cheaper.
#[derive(Debug, Clone)]
pub struct TokioClock {
    anchor_unix_ms: u64,
    anchor: tokio::time::Instant,
}

impl TokioClock {
    /// Anchors the clock at the current wall-clock time and Tokio instant.
    pub fn new() -> Self {
        Self {
            anchor_unix_ms: unix_now_ms(),
            anchor: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    #[inline]
    fn now(&self) -> UnixMillis {
        self.anchor_unix_ms + self.anchor.elapsed().as_millis() as u64
    }
}

/// A clock that moves only when told to. Cloning shares the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock that starts at `start` Unix milliseconds.
    pub fn new(start: UnixMillis) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(start)),
        }
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Sets the time; it never moves backwards (a smaller value is ignored).
    pub fn set(&self, to: UnixMillis) {
        self.now.fetch_max(to, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> UnixMillis {
        self.now.load(Ordering::SeqCst)
    }
}

/// A hybrid logical clock: versions for writes that have none from the source yet (write-behind).
///
/// A version is `physical_ms << 16 | counter`: it follows wall time, so versions issued on different nodes order
/// by when they were written (up to clock skew), and it strictly increases on each node even when the wall clock
/// stalls or steps back (the counter runs on; 65,536 versions per millisecond before it borrows from the next).
/// Every tier and the source's fenced upsert (`… WHERE version < $new`) compare the same number, so writes order
/// the same way everywhere. [`Hlc::observe`] moves the clock past a version seen elsewhere (a recovered journal).
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    /// Bits of the logical counter.
    pub const COUNTER_BITS: u32 = 16;

    /// A clock that has issued nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next version at wall time `now` (Unix ms): larger than every version issued or observed before.
    pub fn next(&self, now: UnixMillis) -> u64 {
        let physical = now << Self::COUNTER_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = physical.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Makes every later version larger than `version`.
    pub fn observe(&self, version: u64) {
        self.last.fetch_max(version, Ordering::AcqRel);
    }

    /// The wall time (Unix ms) a version was issued at.
    pub fn millis_of(version: u64) -> UnixMillis {
        version >> Self::COUNTER_BITS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hlc_versions_increase_follow_wall_time_and_survive_a_clock_step_back() {
        let h = Hlc::new();
        let a = h.next(1_000);
        let b = h.next(1_000);
        assert!(b > a);
        assert_eq!(Hlc::millis_of(a), 1_000);
        let c = h.next(900); // the wall clock stepped back
        assert!(c > b);
        let d = h.next(2_000);
        assert_eq!(Hlc::millis_of(d), 2_000);
        h.observe(d + 10);
        assert!(h.next(2_000) > d + 10);
    }

    #[test]
    fn hlc_is_strictly_increasing_across_threads() {
        let h = std::sync::Arc::new(Hlc::new());
        let all: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let h = h.clone();
                    s.spawn(move || (0..10_000).map(|_| h.next(5)).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|j| j.join().unwrap())
                .collect()
        });
        let unique: std::collections::BTreeSet<u64> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "a version was issued twice");
    }

    #[test]
    fn manual_clock_moves_only_forward() {
        let c = ManualClock::new(1_000);
        c.advance(Duration::from_millis(500));
        assert_eq!(c.now(), 1_500);
        c.set(1_200);
        assert_eq!(c.now(), 1_500);
        c.set(2_000);
        assert_eq!(c.now(), 2_000);
    }

    #[test]
    fn system_clock_tracks_wall_time() {
        let c = SystemClock::new();
        let t0 = c.now();
        std::thread::sleep(Duration::from_millis(30));
        let dt = c.now() - t0;
        assert!(
            (25..1000).contains(&dt),
            "{dt}: recent time may trail by about a millisecond"
        );
        assert!(t0.abs_diff(unix_now_ms()) < 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_tokio_time() {
        let c = TokioClock::new();
        let t0 = c.now();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(c.now() - t0, 90_000);
    }
}
