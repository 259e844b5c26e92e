//! Model-based test: random operation sequences against a plain model of the policy.
//!
//! Policy under test: TTL 1 s (no jitter), fail-safe 2 s with retries throttled to one per 500 ms, negative TTL
//! 300 ms. After every step the engine's answer (value, status, whether the source was called) must equal the
//! model's. The model is written from the specification (DESIGN §4), not from the implementation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use strata::{Cache, ManualClock, Namespace, Policy, StaleReason, Status, Tier};
use strata_testkit::{Fault, FaultyLoader};

const TTL: u64 = 1_000;
const FAIL_SAFE: u64 = 2_000;
const RETRY: u64 = 500;
const NEG_TTL: u64 = 300;

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Load(u8, bool),
    Insert(u8, u32),
    Invalidate(u8),
    InvalidateAll,
    SetSource(u8, Option<u32>),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..4;
    prop_oneof![
        2 => key.clone().prop_map(Op::Get),
        6 => (key.clone(), prop::bool::weighted(0.3)).prop_map(|(k, f)| Op::Load(k, f)),
        1 => (key.clone(), 0u32..100).prop_map(|(k, v)| Op::Insert(k, v)),
        1 => key.clone().prop_map(Op::Invalidate),
        1 => Just(Op::InvalidateAll),
        2 => (key, prop::option::of(0u32..100)).prop_map(|(k, v)| Op::SetSource(k, v)),
        3 => prop_oneof![0u64..400, 400u64..3_500].prop_map(Op::Advance),
    ]
}

#[derive(Debug, Clone, Copy)]
struct ModelEntry {
    value: Option<u32>,
    fresh_until: u64,
    stale_until: u64,
    retry_after: u64,
}

#[derive(Default)]
struct Model {
    now: u64,
    cache: HashMap<u8, ModelEntry>,
    source: HashMap<u8, u32>,
}

impl Model {
    fn fill(&mut self, k: u8, value: Option<u32>) {
        let e = match value {
            Some(_) => ModelEntry {
                value,
                fresh_until: self.now + TTL,
                stale_until: self.now + TTL + FAIL_SAFE,
                retry_after: 0,
            },
            None => ModelEntry {
                value,
                fresh_until: self.now + NEG_TTL,
                stale_until: self.now + NEG_TTL,
                retry_after: 0,
            },
        };
        self.cache.insert(k, e);
    }

    /// Expected (value, status) or error, and whether the source is called.
    fn load(&mut self, k: u8, fail: bool) -> (Result<(Option<u32>, Status), ()>, bool) {
        let now = self.now;
        let source = self.source.get(&k).copied();
        match self.cache.get(&k).copied() {
            Some(e) if now < e.fresh_until => {
                let status = if e.value.is_some() {
                    Status::Hit(Tier::L1)
                } else {
                    Status::Negative
                };
                (Ok((e.value, status)), false)
            }
            Some(e) if e.value.is_some() && now < e.stale_until => {
                let stale = Ok((e.value, Status::Stale(StaleReason::FailSafe)));
                if now < e.retry_after {
                    (stale, false)
                } else if fail {
                    self.cache.get_mut(&k).unwrap().retry_after = now + RETRY;
                    (stale, true)
                } else {
                    self.fill(k, source);
                    (Ok((source, Status::Miss)), true)
                }
            }
            _ if fail => (Err(()), true),
            _ => {
                self.fill(k, source);
                (Ok((source, Status::Miss)), true)
            }
        }
    }

    fn get(&self, k: u8) -> Option<Option<u32>> {
        self.cache
            .get(&k)
            .filter(|e| self.now < e.fresh_until)
            .map(|e| e.value)
    }
}

fn key(k: u8) -> String {
    format!("k{k}")
}

async fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new(1_700_000_000_000);
    let ns: Namespace<u32> = Cache::builder()
        .with_clock(Arc::new(clock.clone()))
        .build()
        .namespace("m")
        .with_policy(
            Policy::builder()
                .with_ttl(Duration::from_millis(TTL))
                .with_jitter(0.0)
                .with_fail_safe_for(Duration::from_millis(FAIL_SAFE))
                .with_fail_safe_retry_every(Duration::from_millis(RETRY))
                .with_negative_ttl(Duration::from_millis(NEG_TTL))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let src = FaultyLoader::<u32>::new();
    let mut model = Model::default();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Get(k) => {
                let got = ns.get(&key(k)).map(|l| l.value().copied());
                prop_assert_eq!(got, model.get(k), "step {}: get k{}", step, k);
            }
            Op::Load(k, fail) => {
                src.set_fault(if fail {
                    Fault::Fail("down".into())
                } else {
                    Fault::None
                });
                let before = src.calls();
                let got = ns
                    .try_get_or_load(&key(k), || src.load(&key(k)))
                    .await
                    .map(|l| (l.value().copied(), l.status()))
                    .map_err(|_| ());
                let called = src.calls() > before;
                let (want, want_called) = model.load(k, fail);
                prop_assert_eq!(got, want, "step {}: load k{} fail={}", step, k, fail);
                prop_assert_eq!(called, want_called, "step {}: source called?", step);
            }
            Op::Insert(k, v) => {
                ns.insert(key(k), v).await;
                model.fill(k, Some(v));
            }
            Op::Invalidate(k) => {
                ns.invalidate(&key(k)).await;
                model.cache.remove(&k);
            }
            Op::InvalidateAll => {
                ns.invalidate_all().await;
                model.cache.clear();
            }
            Op::SetSource(k, v) => {
                match v {
                    Some(v) => src.set(key(k), v),
                    None => src.remove(&key(k)),
                }
                match v {
                    Some(v) => model.source.insert(k, v),
                    None => model.source.remove(&k),
                };
            }
            Op::Advance(ms) => {
                clock.advance(Duration::from_millis(ms));
                model.now += ms;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model(ops in prop::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(check(ops))?;
    }
}
