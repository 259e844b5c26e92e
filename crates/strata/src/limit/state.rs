//! One key's limiter state and the arithmetic of every algorithm — the one definition the Redis scripts
//! mirror (`strata_redis::limit`): times are integer milliseconds, bucket levels `f64` as in Lua.

use std::collections::VecDeque;
use std::time::Duration;

use strata_core::UnixMillis;

use super::{Algorithm, Decision, Quota};

/// One key's state (see [`State::decide`]).
#[derive(Debug, Clone, Default)]
pub struct State(Inner);

#[derive(Debug, Clone, Default)]
enum Inner {
    /// Nothing taken yet: a full quota.
    #[default]
    Whole,
    Bucket {
        tokens: f64,
        at: UnixMillis,
    },
    Leaky {
        level: f64,
        at: UnixMillis,
    },
    Window {
        window: u64,
        count: u64,
        prev: u64,
    },
    Log(VecDeque<(UnixMillis, u64)>),
}

/// Slack for `f64` rounding in the bucket comparisons, the same in Lua.
const EPSILON: f64 = 1e-9;

fn ms(v: f64) -> Duration {
    Duration::from_millis(v.max(0.0).ceil() as u64)
}

impl State {
    /// Takes `cost` units at `now` under `quota` with `algorithm`, or refuses (taking nothing).
    pub fn decide(
        &mut self,
        algorithm: Algorithm,
        quota: &Quota,
        now: UnixMillis,
        cost: u64,
    ) -> Decision {
        let period = quota.period_ms();
        let limit = quota.limit;
        match algorithm {
            Algorithm::TokenBucket => {
                let burst = quota.burst as f64;
                let rate = limit as f64 / period as f64;
                let (tokens, at) = match self.0 {
                    Inner::Bucket { tokens, at } => (tokens, at),
                    _ => (burst, now),
                };
                let tokens = (tokens + now.saturating_sub(at) as f64 * rate).min(burst);
                let c = cost as f64;
                let allowed = c <= tokens + EPSILON;
                let left = if allowed {
                    (tokens - c).max(0.0)
                } else {
                    tokens
                };
                self.0 = Inner::Bucket {
                    tokens: left,
                    at: now.max(at),
                };
                Decision {
                    allowed,
                    limit: quota.burst,
                    remaining: (left + EPSILON).floor() as u64,
                    reset: ms((burst - left) / rate),
                    retry_after: (!allowed && c <= burst).then(|| ms((c - tokens) / rate)),
                    fallback: false,
                }
            }
            Algorithm::LeakyBucket => {
                // The meter form: the water level and when it was last drained (small numbers, as in Lua,
                // where a GCRA timestamp near 1.7e12 ms would round).
                let capacity = quota.burst as f64;
                let rate = limit as f64 / period as f64;
                let (level, at) = match self.0 {
                    Inner::Leaky { level, at } => (level, at),
                    _ => (0.0, now),
                };
                let level = (level - now.saturating_sub(at) as f64 * rate).max(0.0);
                let c = cost as f64;
                let allowed = level + c <= capacity + EPSILON;
                let kept = if allowed { level + c } else { level };
                self.0 = Inner::Leaky {
                    level: kept,
                    at: now.max(at),
                };
                Decision {
                    allowed,
                    limit: quota.burst,
                    remaining: (capacity - kept + EPSILON).max(0.0).floor() as u64,
                    reset: ms(kept / rate),
                    retry_after: (!allowed && c <= capacity)
                        .then(|| ms((level + c - capacity) / rate)),
                    fallback: false,
                }
            }
            Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                let window = now / period;
                let (count, prev) = match self.0 {
                    Inner::Window {
                        window: w,
                        count,
                        prev,
                    } if w == window => (count, prev),
                    Inner::Window {
                        window: w, count, ..
                    } if w + 1 == window => (0, count),
                    _ => (0, 0),
                };
                let into = now - window * period;
                // The previous window's share still under the sliding window, in whole units (as in Lua).
                let weighted = if algorithm == Algorithm::SlidingWindow {
                    prev * (period - into) / period
                } else {
                    0
                };
                let used = count + weighted;
                let allowed = used + cost <= limit;
                let count = if allowed { count + cost } else { count };
                self.0 = Inner::Window {
                    window,
                    count,
                    prev,
                };
                let remaining = limit.saturating_sub(count + weighted);
                let to_edge = period - into;
                let retry_after = if allowed || cost > limit {
                    None
                } else if algorithm == Algorithm::FixedWindow {
                    Some(to_edge)
                } else if count + cost > limit {
                    // Into the next window, until this window's count (then the previous one) weighs at most
                    // `limit - cost`: the least x with count·(period − x) / period < limit − cost + 1.
                    let k = limit - cost;
                    Some(to_edge + period * (count - k - 1) / count + 1)
                } else {
                    // Until the previous window's weight falls to `limit - count - cost`.
                    let k = limit - count - cost;
                    let num = prev * (period - into) - (k + 1) * period;
                    Some((num / prev + 1).min(to_edge))
                }
                .map(Duration::from_millis);
                Decision {
                    allowed,
                    limit,
                    remaining,
                    reset: Duration::from_millis(
                        if algorithm == Algorithm::SlidingWindow && count > 0 {
                            to_edge + period
                        } else {
                            to_edge
                        },
                    ),
                    retry_after,
                    fallback: false,
                }
            }
            Algorithm::SlidingLog => {
                let mut log = match std::mem::take(&mut self.0) {
                    Inner::Log(log) => log,
                    _ => VecDeque::new(),
                };
                while log.front().is_some_and(|&(t, _)| t + period <= now) {
                    log.pop_front();
                }
                let used: u64 = log.iter().map(|&(_, c)| c).sum();
                let allowed = used + cost <= limit;
                if allowed && cost > 0 {
                    log.push_back((now, cost));
                }
                let used_now = if allowed { used + cost } else { used };
                let retry_after = if allowed || cost > limit {
                    None
                } else {
                    // Until enough of the oldest entries leave the window.
                    let mut freed = 0;
                    let mut at = now;
                    for &(t, c) in &log {
                        freed += c;
                        at = t + period;
                        if used - freed + cost <= limit {
                            break;
                        }
                    }
                    Some(Duration::from_millis(at - now))
                };
                let reset = log.back().map_or(Duration::ZERO, |&(t, _)| {
                    Duration::from_millis(t + period - now)
                });
                self.0 = Inner::Log(log);
                Decision {
                    allowed,
                    limit,
                    remaining: limit.saturating_sub(used_now),
                    reset,
                    retry_after,
                    fallback: false,
                }
            }
        }
    }

    /// Whether the state at `now` is that of a full quota (it may be forgotten). The state knows its
    /// algorithm.
    pub fn is_whole(&self, quota: &Quota, now: UnixMillis) -> bool {
        let period = quota.period_ms();
        match &self.0 {
            Inner::Whole => true,
            Inner::Bucket { tokens, at } => {
                let rate = quota.limit as f64 / period as f64;
                tokens + now.saturating_sub(*at) as f64 * rate >= quota.burst as f64
            }
            Inner::Leaky { level, at } => {
                let rate = quota.limit as f64 / period as f64;
                *level - now.saturating_sub(*at) as f64 * rate <= 0.0
            }
            Inner::Window { window, .. } => now / period > window + 1,
            Inner::Log(log) => log.back().is_none_or(|&(t, _)| t + period <= now),
        }
    }
}
