//! The injectable clock.
//!
//! Strata stores absolute deadlines (`fresh_until`, `stale_until`) as Unix milliseconds so that they mean the same
//! thing in every tier and on every node. All engine code reads time through [`Clock`]; nothing calls
//! `SystemTime::now()` directly.
//!
//! [`SystemClock`] anchors the wall clock once and then advances with Tokio's monotonic clock. That makes it immune
//! to wall-clock steps during a process's life, and it means `tokio::time::pause()` / `advance()` drive cache expiry
//! and load timeouts together in tests. [`ManualClock`] is for tests that want to move time by hand without Tokio.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// Wall clock anchored at construction, advanced by Tokio's monotonic clock (see the module docs).
#[derive(Debug, Clone)]
pub struct SystemClock {
    anchor_unix_ms: u64,
    anchor: tokio::time::Instant,
}

impl SystemClock {
    /// Anchors the clock at the current wall-clock time.
    pub fn new() -> Self {
        let anchor_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            anchor_unix_ms,
            anchor: tokio::time::Instant::now(),
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test(start_paused = true)]
    async fn system_clock_follows_paused_tokio_time() {
        let c = SystemClock::new();
        let t0 = c.now();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(c.now() - t0, 90_000);
    }
}
