//! Hot-key detection: which keys of a namespace are requested faster than a threshold.
//!
//! The sketch is HeavyKeeper (the `heavykeeper` crate: count-with-exponential-decay buckets plus a top-k heap, the
//! algorithm behind RedisBloom's `TOPK`), chosen over a plain count-min sketch because it keeps the heaviest keys'
//! counts nearly exact in a fixed, small memory (about 64 KiB here) while light keys decay out instead of
//! inflating the estimates.
//!
//! Counting happens in tumbling windows of [`HotKeyDetector::window`]: at the end of a window every key whose
//! count reached `threshold_per_sec × window` becomes hot for the next window, and the sketch starts afresh. A key
//! whose count reaches the threshold inside the current window turns hot at that request. So a key turns hot as
//! soon as it has been requested `threshold` times within one window, and cools down one window after it stops. The engine records
//! only requests that get past L1 (the ones that cost a remote read), so L1 hits stay free.
//!
//! Invariant: a key is reported hot only if, in the previous full window, the sketch counted at least the
//! threshold for it; HeavyKeeper never over-counts, so a cold key is never reported hot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use heavykeeper::TopK;
use parking_lot::{Mutex, RwLock};
use strata_core::{Clock, UnixMillis};

const TOP_K: usize = 32;
const WIDTH: usize = 1024;
const DEPTH: usize = 4;
const DECAY: f64 = 0.9;

/// Spots hot keys of one namespace. Thread-safe; `record` takes a short mutex.
pub struct HotKeyDetector {
    clock: Arc<dyn Clock>,
    window_ms: u64,
    threshold: u64,
    current: Mutex<Window>,
    hot: RwLock<Arc<HotSet>>,
}

struct Window {
    started: UnixMillis,
    sketch: TopK<String>,
}

#[derive(Default)]
struct HotSet {
    keys: HashMap<String, u64>,
    valid_until: UnixMillis,
}

impl std::fmt::Debug for HotKeyDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotKeyDetector")
            .field("window_ms", &self.window_ms)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl HotKeyDetector {
    /// A detector for keys requested at least `threshold_per_sec` times per second, counted over `window`.
    pub fn new(clock: Arc<dyn Clock>, threshold_per_sec: u32, window: Duration) -> Self {
        let window_ms = (window.as_millis() as u64).max(1);
        let threshold = (u64::from(threshold_per_sec) * window_ms)
            .div_ceil(1000)
            .max(1);
        let now = clock.now();
        Self {
            clock,
            window_ms,
            threshold,
            current: Mutex::new(Window {
                started: now,
                sketch: TopK::new(TOP_K, WIDTH, DEPTH, DECAY),
            }),
            hot: RwLock::new(Arc::new(HotSet::default())),
        }
    }

    /// The counting window.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// Counts one request for `key`; returns whether `key` is hot now.
    pub fn record(&self, key: &str) -> bool {
        let now = self.clock.now();
        {
            let mut w = self.current.lock();
            if now >= w.started + self.window_ms {
                self.rotate(&mut w, now);
            }
            w.sketch.add(key, 1);
            // A key that already reached the threshold in this window is hot at once, not one window later.
            if w.sketch.count(key) >= self.threshold && !self.is_hot_at(key, now) {
                let mut hot = self.hot.write();
                let mut set = HotSet {
                    keys: if now < hot.valid_until {
                        hot.keys.clone()
                    } else {
                        HashMap::new()
                    },
                    valid_until: hot.valid_until.max(w.started + self.window_ms),
                };
                set.keys.insert(key.to_owned(), self.threshold);
                *hot = Arc::new(set);
                return true;
            }
        }
        self.is_hot_at(key, now)
    }

    /// Whether `key` is hot now.
    pub fn is_hot(&self, key: &str) -> bool {
        self.is_hot_at(key, self.clock.now())
    }

    /// The hot keys with their counts in the window that made them hot, heaviest first.
    pub fn hot_keys(&self) -> Vec<(String, u64)> {
        let now = self.clock.now();
        let set = self.hot.read().clone();
        if now >= set.valid_until {
            return Vec::new();
        }
        let mut keys: Vec<(String, u64)> = set.keys.iter().map(|(k, c)| (k.clone(), *c)).collect();
        keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        keys
    }

    fn is_hot_at(&self, key: &str, now: UnixMillis) -> bool {
        let set = self.hot.read();
        now < set.valid_until && set.keys.contains_key(key)
    }

    /// Ends the current window: its heavy keys become hot for one window, unless the window ended long ago (then
    /// nothing was counted in the window just past, and nothing is hot).
    fn rotate(&self, w: &mut Window, now: UnixMillis) {
        let ended = w.started + self.window_ms;
        let keys = if now < ended + self.window_ms {
            w.sketch
                .list()
                .into_iter()
                .filter(|n| n.count >= self.threshold)
                .map(|n| (n.item, n.count))
                .collect()
        } else {
            HashMap::new()
        };
        // Windows stay aligned to the first one so that a window is always `window_ms` long.
        let elapsed_windows = (now - w.started) / self.window_ms;
        w.started += elapsed_windows * self.window_ms;
        *self.hot.write() = Arc::new(HotSet {
            keys,
            valid_until: w.started + self.window_ms,
        });
        w.sketch = TopK::new(TOP_K, WIDTH, DEPTH, DECAY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use strata_core::ManualClock;

    fn detector(threshold: u32) -> (HotKeyDetector, ManualClock) {
        let clock = ManualClock::new(1_000_000);
        (
            HotKeyDetector::new(Arc::new(clock.clone()), threshold, Duration::from_secs(1)),
            clock,
        )
    }

    #[test]
    fn a_key_turns_hot_at_the_threshold_and_cools_after_a_quiet_window() {
        let (d, clock) = detector(1000);
        for i in 0..1500 {
            assert_eq!(d.record("hot"), i >= 999, "request {i}");
            d.record(&format!("cold-{i}"));
        }
        clock.advance(Duration::from_millis(1000));
        assert!(
            d.record("hot"),
            "1500 requests in 1 s did not make the key hot"
        );
        assert!(!d.is_hot("cold-1"));
        assert_eq!(d.hot_keys().first().map(|(k, _)| k.as_str()), Some("hot"));
        // A quiet window: the key cools down.
        clock.advance(Duration::from_millis(1000));
        assert!(!d.record("other"));
        assert!(!d.is_hot("hot"));
    }

    #[test]
    fn below_the_threshold_is_never_hot() {
        let (d, clock) = detector(1000);
        for _ in 0..999 {
            d.record("warm");
        }
        clock.advance(Duration::from_millis(1000));
        assert!(!d.record("warm"));
    }

    #[test]
    fn a_long_silence_forgets_old_heat() {
        let (d, clock) = detector(10);
        for _ in 0..100 {
            d.record("k");
        }
        clock.advance(Duration::from_secs(30));
        assert!(!d.record("k"), "heat from 30 s ago must not count");
        assert!(d.hot_keys().is_empty());
    }

    proptest! {
        /// Against exact counts per window: every key reported hot had at least the threshold in the previous
        /// window (no false positives), and a key at 3× the threshold is always found.
        #[test]
        fn hot_keys_match_exact_counts(
            stream in proptest::collection::vec((0u8..40, 0u64..30), 1..3000),
        ) {
            let threshold = 50u32;
            let (d, clock) = detector(threshold);
            let mut exact: HashMap<String, u64> = HashMap::new();
            let mut previous: HashMap<String, u64> = HashMap::new();
            let mut window_start = clock.now();
            for (key, advance_ms) in stream {
                clock.advance(Duration::from_millis(advance_ms));
                let now = clock.now();
                if now >= window_start + 1000 {
                    let windows = (now - window_start) / 1000;
                    previous = if windows == 1 { std::mem::take(&mut exact) } else { HashMap::new() };
                    exact.clear();
                    window_start += windows * 1000;
                }
                // Key 0 is requested 3× the threshold rate whenever it appears.
                let key = format!("k{key}");
                let hot = d.record(&key);
                *exact.entry(key.clone()).or_default() += 1;
                let had = previous.get(&key).copied().unwrap_or(0);
                if hot {
                    prop_assert!(had >= u64::from(threshold), "{key} hot with only {had} last window");
                }
                if had >= 3 * u64::from(threshold) {
                    prop_assert!(hot, "{key} had {had} last window but is not hot");
                }
            }
        }
    }
}
