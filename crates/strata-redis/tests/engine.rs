//! The engine over a real Redis, several nodes per test (each test has its own key prefix and bus stream).

use std::time::{Duration, Instant};

use futures::future::join_all;
use redis::AsyncCommands;
use strata::codec::Json;
use strata::{Policy, Status, Tier};
use strata_core::{Compression, Envelope, EnvelopeKind, LeaseGrant};
use strata_testkit::cluster::{Cluster, ClusterOptions};
use strata_testkit::proxy::LinkMode;
use strata_testkit::{Fault, FaultyLoader};

async fn cluster(name: &str, nodes: usize, tweak: impl FnOnce(&mut ClusterOptions)) -> Cluster {
    let mut options = ClusterOptions {
        nodes,
        name: name.into(),
        ..ClusterOptions::default()
    };
    tweak(&mut options);
    Cluster::start(options)
        .await
        .expect("Redis must be running for these tests (scripts/test.sh starts it)")
}

fn policy() -> strata::PolicyBuilder {
    Policy::builder()
        .with_ttl(Duration::from_secs(60))
        .with_jitter(0.0)
}

/// Waits until `check` holds, up to `within`.
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_key_is_loaded_once_across_four_nodes() {
    let c = cluster("one-refill", 4, |_| {}).await;
    let p = policy().with_distributed_coalescing(true).build().unwrap();
    let nss = c.namespace::<u64>("price", p, Json);
    let source = FaultyLoader::new();
    source.set("sku-1", 129u64);
    source.set_fault(Fault::Delay(Duration::from_millis(100)));
    let reads = nss.iter().flat_map(|ns| {
        (0..50).map(|_| {
            let (ns, source) = (ns.clone(), source.clone());
            async move { ns.try_get_or_load("sku-1", || source.load("sku-1")).await }
        })
    });
    let answers = join_all(reads).await;
    assert!(answers
        .iter()
        .all(|a| a.as_ref().unwrap().value() == Some(&129)));
    assert_eq!(
        source.source_loads(),
        1,
        "the source was loaded more than once"
    );
    let l2_hits = answers
        .iter()
        .filter(|a| a.as_ref().unwrap().status() == Status::Hit(Tier::L2))
        .count();
    assert!(l2_hits >= 3, "the other nodes did not read L2: {l2_hits}");
    assert!(nss.iter().map(|n| n.stats().lease_waits).sum::<u64>() >= 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lease_holder_is_taken_over_after_its_lease_expires() {
    let c = cluster("dead-holder", 1, |_| {}).await;
    let p = policy()
        .with_distributed_coalescing(true)
        .with_lease_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let ns = c.namespace::<u64>("price", p, Json).remove(0);
    // A "node" takes the lease and dies.
    let grant = c.nodes[0]
        .l2
        .lease("price", "k", Duration::from_millis(300), Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(grant, LeaseGrant::Granted(_)));
    let source = FaultyLoader::new();
    source.set("k", 7u64);
    let started = Instant::now();
    let got = ns.try_get_or_load("k", || source.load("k")).await.unwrap();
    assert_eq!(got.value(), Some(&7));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "took over after {took:?}"
    );
    assert_eq!(source.source_loads(), 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_fails_or_panics_gives_its_lease_back_before_anyone_hears_of_it() {
    let c = cluster("lease-back", 1, |_| {}).await;
    let p = policy()
        .with_distributed_coalescing(true)
        .with_lease_grant_interval(Duration::ZERO)
        .build()
        .unwrap();
    let ns = c.namespace::<u64>("price", p, Json).remove(0);
    let source = FaultyLoader::<u64>::new();
    for fault in [Fault::Fail("down".into()), Fault::Panic] {
        source.set_fault(fault);
        assert!(ns.try_get_or_load("k", || source.load("k")).await.is_err());
        // The failed load held the key's lease; had it kept it, every node would wait it out.
        let grant = c.nodes[0]
            .l2
            .lease("price", "k", Duration::from_secs(1), Duration::ZERO)
            .await
            .unwrap();
        let LeaseGrant::Granted(token) = grant else {
            panic!("the lease was not given back: {grant:?}");
        };
        c.nodes[0].l2.release("price", "k", &token).await.unwrap();
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_began_before_an_invalidation_never_lands() {
    let c = cluster("stale-set", 3, |_| {}).await;
    let p = policy().with_distributed_coalescing(true).build().unwrap();
    let nss = c.namespace::<String>("price", p, Json);
    let source = FaultyLoader::new();
    source.set("k", "old".to_string());
    source.set_fault(Fault::Gate);
    // Node 0 starts a load that reads "old" and stalls.
    let slow = {
        let (ns, source) = (nss[0].clone(), source.clone());
        tokio::spawn(async move { ns.try_get_or_load("k", || source.load("k")).await })
    };
    assert!(eventually(Duration::from_secs(5), || source.source_loads() == 1).await);
    // The source changes; node 1 invalidates (L2 tombstone, lease voided, bus message).
    source.set("k", "new".to_string());
    source.set_fault(Fault::None);
    nss[1].invalidate("k").await;
    let applied = || c.nodes[0].bus_stats().unwrap().applied >= 1;
    assert!(eventually(Duration::from_secs(5), applied).await);
    // Now the slow load finishes with the old value: its caller gets what it read, but no tier keeps it.
    source.release(1);
    let old = slow.await.unwrap().unwrap();
    assert_eq!(old.value().map(String::as_str), Some("old"));
    let stored = c.nodes[2].l2.get("price", "k").await.unwrap();
    assert!(
        stored
            .as_ref()
            .is_none_or(|e| e.kind == EnvelopeKind::Tombstone),
        "the stale fill landed in L2: {stored:?}"
    );
    for ns in &nss {
        let got = ns.try_get_or_load("k", || source.load("k")).await.unwrap();
        assert_eq!(got.value().map(String::as_str), Some("new"));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_l2_bytes_are_a_miss_and_a_count() {
    let c = cluster("corrupt", 1, |o| o.bus = false).await;
    let ns = c
        .namespace::<u64>("price", policy().build().unwrap(), Json)
        .remove(0);
    let l2 = &c.nodes[0].l2;
    let mut conn = l2.connection();
    // Garbage under the key.
    let _: () = conn
        .set(l2.redis_key("price", "a"), b"\x00\x01garbage".to_vec())
        .await
        .unwrap();
    // A well-formed envelope whose value is not JSON for u64.
    let env = Envelope {
        created_at: 0,
        fresh_until: u64::MAX / 4,
        stale_until: u64::MAX / 4,
        version: None,
        tags: vec![],
        delta_ms: 0,
        etag: None,
        kind: EnvelopeKind::Value(b"{not json".to_vec()),
    };
    l2.write("price", "b", &env, Compression::None, 1)
        .await
        .unwrap();
    let source = FaultyLoader::new();
    source.set("a", 1u64);
    source.set("b", 2u64);
    for (key, want) in [("a", 1), ("b", 2)] {
        let got = ns.try_get_or_load(key, || source.load(key)).await.unwrap();
        assert_eq!((got.value(), got.status()), (Some(&want), Status::Miss));
    }
    assert_eq!(l2.stats().corrupt, 1);
    assert_eq!(c.nodes[0].cache.shared_stats().unwrap().corrupt, 1);
    // The loads overwrote the bad entries.
    assert!(l2.get("price", "a").await.unwrap().is_some());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_and_generation_barriers_reach_every_node_without_a_bus() {
    let c = cluster("barriers", 2, |o| o.bus = false).await;
    // L1 off: every read consults L2 and the barriers.
    let p = policy().with_l1(false).build().unwrap();
    let nss = c.namespace::<u64>("product", p, Json);
    let source = FaultyLoader::new();
    source.set("tv-1", 1u64);
    source.set("radio-1", 2u64);
    let load = |ns: &strata::Namespace<u64>, key: &'static str| {
        let (ns, source) = (ns.clone(), source.clone());
        async move {
            ns.try_get_or_load(key, || {
                let f = source.load(key);
                async move { f.await.map(|v| strata::Fetched::from(v).with_tags(["tv"])) }
            })
            .await
            .unwrap()
            .status()
        }
    };
    assert_eq!(load(&nss[0], "tv-1").await, Status::Miss);
    assert_eq!(load(&nss[1], "tv-1").await, Status::Hit(Tier::L2));
    nss[0].invalidate_tag("tv").await;
    // Node 1 heard nothing; its cached barriers are at most BARRIER_STALENESS old.
    tokio::time::sleep(strata::BARRIER_STALENESS + Duration::from_millis(50)).await;
    assert_eq!(load(&nss[1], "tv-1").await, Status::Miss);
    assert_eq!(load(&nss[0], "tv-1").await, Status::Hit(Tier::L2));
    // A generation bump hides everything older, on every node.
    assert_eq!(load(&nss[1], "radio-1").await, Status::Miss);
    nss[1].bump_generation().await;
    tokio::time::sleep(strata::BARRIER_STALENESS + Duration::from_millis(50)).await;
    assert_eq!(load(&nss[0], "radio-1").await, Status::Miss);
    assert_eq!(load(&nss[0], "tv-1").await, Status::Miss);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_bus_barriers_apply_at_once_including_l1() {
    let c = cluster("barriers-bus", 2, |_| {}).await;
    let nss = c.namespace::<u64>("product", policy().build().unwrap(), Json);
    let tagged = |v: u64| strata::Fetched::value(v).with_tags(["tv"]);
    nss[0].insert_fetched("tv-1", tagged(1)).await;
    // The insert's own bus message (drop your copy) must reach node 1 before it reads, or it would drop it after.
    let heard = || c.nodes[1].bus_stats().unwrap().applied >= 1;
    assert!(eventually(Duration::from_secs(3), heard).await);
    let got = nss[1]
        .get_or_load("tv-1", || async { strata::Fetched::<u64>::absent() })
        .await
        .unwrap();
    assert_eq!(got.status(), Status::Hit(Tier::L2));
    assert!(nss[1].l1_holds("tv-1"), "node 1 keeps it in L1");
    nss[0].invalidate_tag("tv").await;
    assert!(
        eventually(Duration::from_secs(3), || nss[1].get("tv-1").is_none()).await,
        "node 1 still serves the tagged entry from L1"
    );
    let got = nss[1]
        .get_or_load("tv-1", || async { Some(2u64) })
        .await
        .unwrap();
    assert_eq!((got.value(), got.status()), (Some(&2), Status::Miss));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cut_slows_nothing_down_and_leaves_no_stale_value_behind() {
    let c = cluster("cut", 2, |o| o.proxied = true).await;
    let nss = c.namespace::<String>("price", policy().build().unwrap(), Json);
    let source = FaultyLoader::new();
    source.set("k", "v1".to_string());
    for ns in &nss {
        let got = ns.try_get_or_load("k", || source.load("k")).await.unwrap();
        assert_eq!(got.value().map(String::as_str), Some("v1"));
    }
    // Node 0 loses Redis (L2 and bus) without a connection reset: the worst case, calls hang.
    c.nodes[0].set_link(LinkMode::Blackhole);
    // The source changes and node 0, the writer, invalidates: L2 is unreachable, so the tombstone is queued.
    source.set("k", "v2".to_string());
    let started = Instant::now();
    nss[0].invalidate("k").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "invalidate hung"
    );
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let key = format!("other-{i}");
        source.set(key.clone(), format!("o{i}"));
        let t = Instant::now();
        let got = nss[0].try_get_or_load(&key, || source.load(&key)).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(got.unwrap().value().cloned(), Some(format!("o{i}")));
        let got = nss[0].try_get_or_load("k", || source.load("k")).await;
        assert_eq!(got.unwrap().value().map(String::as_str), Some("v2"));
    }
    assert!(
        slowest < Duration::from_millis(800),
        "a read waited {slowest:?} on dead Redis"
    );
    let stats = c.nodes[0].cache.shared_stats().unwrap();
    assert!(stats.pending >= 1 && stats.breaker_opened >= 1, "{stats:?}");
    // Recovery: the queued tombstone reaches L2 and the bus; node 1 drops v1.
    c.nodes[0].set_link(LinkMode::Pass);
    assert!(
        eventually(Duration::from_secs(10), || {
            c.nodes[0].cache.shared_stats().unwrap().pending == 0
        })
        .await,
        "the queued invalidation was never replayed"
    );
    assert!(
        eventually(Duration::from_secs(5), || nss[1].get("k").is_none()).await,
        "node 1 still serves v1 after recovery"
    );
    let got = nss[1]
        .try_get_or_load("k", || source.load("k"))
        .await
        .unwrap();
    assert_eq!(got.value().map(String::as_str), Some("v2"));
    c.shutdown().await;
}

/// Redis goes away (connections reset) and comes back empty. While it is gone no node can hear of writes made
/// elsewhere, so none may answer from its L1 once the bus's bound has passed — not even from copies it refilled
/// from the source during the outage — and after it is back, no copy filled in the dark outlives the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_that_loses_everything_leaves_no_superseded_value_past_the_bound() {
    let c = cluster("restart", 2, |o| o.proxied = true).await;
    let nss = c.namespace::<u64>("price", policy().build().unwrap(), Json);
    let source = FaultyLoader::new();
    source.set("k", 1u64);
    let read = |i: usize| {
        let (ns, source) = (nss[i].clone(), source.clone());
        async move {
            let got = ns.try_get_or_load("k", || source.load("k")).await.unwrap();
            (*got.value().unwrap(), got.status())
        }
    };
    for i in 0..2 {
        read(i).await;
    }
    assert!(
        eventually(Duration::from_secs(2), || nss[1].get("k").is_some()).await,
        "node 1 never trusted its L1"
    );
    for node in &c.nodes {
        node.set_link(LinkMode::Cut);
    }
    let bound = Duration::from_millis(300 + 250); // the cluster's heartbeat + the bus timeout
    tokio::time::sleep(bound + Duration::from_millis(100)).await;
    // Writes on node 0 during the outage (their invalidations can only wait for replay); node 1 reads each one.
    for v in 2..5u64 {
        source.set("k", v);
        nss[0].invalidate("k").await;
        assert_eq!(
            read(1).await,
            (v, Status::Miss),
            "node 1 answered from a copy it cannot trust"
        );
    }
    // Redis comes back with nothing: no entries, no stream.
    let client = redis::Client::open(strata_testkit::cluster::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = conn.keys(format!("{}*", c.prefix)).await.unwrap();
    for k in keys {
        let _: () = conn.del(k).await.unwrap();
    }
    source.set("k", 5u64);
    for node in &c.nodes {
        node.set_link(LinkMode::Pass);
    }
    // Whatever node 1 filled before it heard again, it serves nothing older than the last write once the bound
    // has passed.
    tokio::time::sleep(bound + Duration::from_millis(100)).await;
    assert_eq!(read(1).await.0, 5);
    c.shutdown().await;
}

/// A write-through write while its node cannot reach Redis commits in the source but is not acknowledged: its
/// invalidation only waits for replay, so another node could still read the old value from L2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_cannot_reach_l2_is_not_acknowledged() {
    let c = cluster("not-propagated", 2, |o| o.proxied = true).await;
    let table = std::sync::Arc::new(strata_testkit::table::VersionedTable::<u64>::new());
    table.set("k", 1);
    let p = policy()
        .with_write_mode(strata::WriteMode::Through)
        .build()
        .unwrap();
    let nss: Vec<_> = c
        .nodes
        .iter()
        .map(|n| {
            n.cache
                .namespace::<u64>("price")
                .with_policy(p.clone())
                .with_codec(Json)
                .with_store(table.clone())
                .build()
                .unwrap()
        })
        .collect();
    assert_eq!(nss[0].write("k", 2).await.unwrap(), 2);
    c.nodes[0].set_link(LinkMode::Blackhole);
    let started = Instant::now();
    match nss[0].write("k", 3).await {
        Err(strata::Error::NotPropagated { version: 3, .. }) => {}
        other => panic!("expected NotPropagated, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the wait is bounded"
    );
    assert_eq!(table.get("k"), Some((3, 3)), "the source has the write");
    // Once Redis is reachable, the queued invalidation lands and writes are acknowledged again.
    c.nodes[0].set_link(LinkMode::Pass);
    let mut acked = false;
    for _ in 0..50 {
        if nss[0].write("k", 4).await.is_ok() {
            acked = true;
            break;
        }
    }
    assert!(acked, "writes stayed unacknowledged after Redis came back");
    let got = nss[1].fetch("k").await.unwrap();
    assert_eq!(got.value(), Some(&4));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refresh_reaches_the_source_and_l2_instead_of_copying_l2_back() {
    let c = cluster("early-refresh", 2, |_| {}).await;
    let p = policy()
        .with_ttl(Duration::from_secs(2))
        .with_early_refresh(strata::EarlyRefresh::Ratio(0.5))
        .with_distributed_coalescing(true)
        .build()
        .unwrap();
    let nss = c.namespace::<u64>("price", p, Json);
    let source = FaultyLoader::new();
    source.set("k", 1u64);
    // Node 1 loads; node 0 copies the entry from L2 (so node 0 holds L2's very entry).
    nss[1]
        .try_get_or_load("k", || source.load("k"))
        .await
        .unwrap();
    let got = nss[0]
        .try_get_or_load("k", || source.load("k"))
        .await
        .unwrap();
    assert_eq!(got.status(), Status::Hit(Tier::L2));
    source.set("k", 2u64);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Past half its life: node 0 answers from L1 and refreshes in the background, from the source.
    let got = nss[0]
        .try_get_or_load("k", || source.load("k"))
        .await
        .unwrap();
    assert_eq!(got.value(), Some(&1));
    assert!(
        eventually(Duration::from_secs(3), || source.source_loads() == 2).await,
        "the refresh never reached the source"
    );
    assert!(
        eventually(Duration::from_secs(3), || nss[0]
            .get("k")
            .and_then(|l| l.value().copied())
            == Some(2))
        .await
    );
    let stored = c.nodes[1].l2.get("price", "k").await.unwrap().unwrap();
    assert_eq!(stored.kind, EnvelopeKind::Value(b"2".to_vec()));
    c.shutdown().await;
}

mod model {
    //! Random sequences of reads, writes, inserts and generation bumps over two nodes with L1 off (every read goes
    //! to L2): after each write returns, every node must read the source's current value.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Read { node: usize, key: u8 },
        WriteThenInvalidate { node: usize, key: u8, value: u32 },
        Insert { node: usize, key: u8, value: u32 },
        BumpGeneration { node: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..2usize, 0..3u8).prop_map(|(node, key)| Op::Read { node, key }),
            2 => (0..2usize, 0..3u8, any::<u32>())
                .prop_map(|(node, key, value)| Op::WriteThenInvalidate { node, key, value }),
            2 => (0..2usize, 0..3u8, any::<u32>()).prop_map(|(node, key, value)| Op::Insert { node, key, value }),
            1 => (0..2usize).prop_map(|node| Op::BumpGeneration { node }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn every_node_reads_the_latest_write(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let c = cluster("model", 2, |o| o.bus = false).await;
                let p = policy()
                    .with_l1(false)
                    .with_distributed_coalescing(true)
                    .with_negative_ttl(Duration::from_secs(60))
                    .build()
                    .unwrap();
                let nss = c.namespace::<u32>("m", p, Json);
                let source = FaultyLoader::<u32>::new();
                for op in ops {
                    match op {
                        Op::Read { node, key } => {
                            let k = format!("k{key}");
                            let got = nss[node].try_get_or_load(&k, || source.load(&k)).await.unwrap();
                            let want = source.peek(&k);
                            assert_eq!(got.value().copied(), want, "node {node} read {k}");
                        }
                        Op::WriteThenInvalidate { node, key, value } => {
                            let k = format!("k{key}");
                            source.set(k.clone(), value);
                            nss[node].invalidate(&k).await;
                        }
                        Op::Insert { node, key, value } => {
                            let k = format!("k{key}");
                            source.set(k.clone(), value);
                            nss[node].insert(k, value).await;
                        }
                        Op::BumpGeneration { node } => nss[node].bump_generation().await,
                    }
                }
                c.shutdown().await;
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_key_replicas_serve_reads_and_are_tombstoned_by_writes() {
    let c = cluster("replicas", 2, |_| {}).await;
    let p = policy()
        .with_l1(false)
        .with_hot_keys(strata::HotKeys {
            enabled: true,
            threshold_per_sec: 50,
            pin_ttl: Duration::from_millis(300),
            l2_replicas: 4,
        })
        .build()
        .unwrap();
    let nss = c.namespace::<u64>("price", p, Json);
    let source = FaultyLoader::new();
    source.set("hot", 1u64);
    let replicas: Vec<String> = (0..4).map(|i| format!("hot\u{0}r{i}")).collect();
    let copies = |c: &Cluster| {
        let l2 = c.nodes[0].l2.clone();
        let replicas = replicas.clone();
        async move {
            let mut values = Vec::new();
            for r in &replicas {
                if let Some(e) = l2.get("price", r).await.unwrap() {
                    values.push(e.kind);
                }
            }
            values
        }
    };
    // Hot on node 0: reads past each pin go to a replica, filled from the primary.
    let mut before = Vec::new();
    for _ in 0..6 {
        for _ in 0..20 {
            nss[0]
                .try_get_or_load("hot", || source.load("hot"))
                .await
                .unwrap();
        }
        before.extend(copies(&c).await); // replicas live at most pin_ttl
        tokio::time::sleep(Duration::from_millis(320)).await;
    }
    assert!(
        before.contains(&EnvelopeKind::Value(b"1".to_vec())),
        "no replica was filled: {before:?}"
    );
    assert_eq!(
        source.source_loads(),
        1,
        "replicas must not cost source loads"
    );
    // A write through node 1 tombstones every replica; node 0 then reads the new value.
    source.set("hot", 2u64);
    nss[1].insert("hot", 2).await;
    let after = copies(&c).await;
    assert!(
        after.iter().all(|k| *k == EnvelopeKind::Tombstone),
        "a replica kept the old value: {after:?}"
    );
    assert!(
        eventually(Duration::from_secs(3), || nss[0].get("hot").is_none()).await,
        "node 0 kept its pin"
    );
    let got = nss[0]
        .try_get_or_load("hot", || source.load("hot"))
        .await
        .unwrap();
    assert_eq!(got.value(), Some(&2));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_loser_with_a_stale_value_answers_at_once() {
    let c = cluster("loser-stale", 2, |_| {}).await;
    let p = policy()
        .with_ttl(Duration::from_millis(200))
        .with_fail_safe_for(Duration::from_secs(60))
        .with_distributed_coalescing(true)
        .with_lease_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let nss = c.namespace::<u64>("price", p, Json);
    let source = FaultyLoader::new();
    source.set("k", 1u64);
    for ns in &nss {
        ns.try_get_or_load("k", || source.load("k")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Node 1 takes the lease and stalls in the source.
    source.set("k", 2u64);
    source.set_fault(Fault::Gate);
    let slow = {
        let (ns, source) = (nss[1].clone(), source.clone());
        tokio::spawn(async move { ns.try_get_or_load("k", || source.load("k")).await })
    };
    assert!(eventually(Duration::from_secs(5), || source.source_loads() == 2).await);
    // Node 0 loses the lease and answers with its stale value without waiting.
    let started = Instant::now();
    let got = nss[0]
        .try_get_or_load("k", || source.load("k"))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(got.value(), Some(&1));
    assert!(
        matches!(got.status(), Status::Stale(_)),
        "{:?}",
        got.status()
    );
    assert_eq!(source.source_loads(), 2, "the loser went to the source");
    source.release(1);
    assert_eq!(slow.await.unwrap().unwrap().value(), Some(&2));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_fields_in_the_barrier_hash_are_skipped_and_counted() {
    let c = cluster("bad-barriers", 1, |o| o.bus = false).await;
    let l2 = &c.nodes[0].l2;
    let mut conn = l2.connection();
    let hkey = format!("{}:barriers:{{price}}", c.prefix);
    let _: () = redis::cmd("HSET")
        .arg(&hkey)
        .arg("t:tv")
        .arg("garbage")
        .arg("someone-elses")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let barriers = l2.barriers("price").await.unwrap();
    assert!(
        barriers.tags.is_empty() && barriers.generation.is_none(),
        "{barriers:?}"
    );
    assert_eq!(l2.stats().corrupt, 1);
    // Reads still work.
    let ns = c
        .namespace::<u64>("price", policy().build().unwrap(), Json)
        .remove(0);
    let got = ns.get_or_load("k", || async { Some(1u64) }).await.unwrap();
    assert_eq!(got.value(), Some(&1));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purges_and_fenced_inserts_hold_for_a_node_that_heard_nothing() {
    let c = cluster("soft-fenced", 2, |o| o.bus = false).await;
    let nss = c.namespace::<u64>("page", policy().build().unwrap(), Json);
    fn tagged(v: u64) -> strata::Fetched<u64> {
        strata::Fetched::value(v).with_tags(["p"])
    }
    // A soft purge on node 0 is read from L2 by node 1, which loads the entry after it.
    nss[0]
        .try_get_or_load("a", || async { Ok::<_, std::io::Error>(tagged(1)) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    nss[0].soften_tag("p").await;
    let l = nss[1]
        .try_get_or_load("a", || async { Ok::<_, std::io::Error>(tagged(2)) })
        .await
        .unwrap();
    assert_eq!(
        (l.status(), l.value()),
        (Status::Hit(Tier::L2), Some(&1)),
        "a soft purge removes nothing"
    );
    let l = nss[1].get("a").expect("in node 1's L1 now");
    assert!(
        nss[1].soft_purged_at(&l).is_some(),
        "node 1 dates it from L2"
    );

    // A value read before node 1's tag invalidation does not land in L2 after it.
    let read_at = strata::Clock::now(nss[0].clock().as_ref());
    tokio::time::sleep(Duration::from_millis(5)).await;
    nss[1].invalidate_tag("p").await;
    nss[0].insert_fetched_since("k", tagged(7), read_at).await;
    let l = nss[1]
        .try_get_or_load("k", || async { Ok::<_, std::io::Error>(tagged(8)) })
        .await
        .unwrap();
    assert_eq!(
        l.value(),
        Some(&8),
        "the fenced value was hidden: {:?}",
        l.status()
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_won_by_one_node_until_it_ends_or_expires() {
    let c = cluster("claims", 3, |_| {}).await;
    let nss = c.namespace::<u64>("page", policy().build().unwrap(), Json);
    let ttl = Duration::from_millis(300);
    let claims = join_all(nss.iter().map(|ns| ns.claim("k", "revalidate", ttl))).await;
    let mut won: Vec<_> = claims
        .into_iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            strata::Claim::Won(t) => Some((i, t)),
            strata::Claim::Held => None,
        })
        .collect();
    assert_eq!(won.len(), 1, "exactly one of three nodes wins");
    let (winner, token) = won.pop().unwrap();
    let other = (winner + 1) % 3;
    assert!(
        matches!(
            nss[other].claim("k", "other work", ttl).await,
            strata::Claim::Won(_)
        ),
        "another piece of work on the key is another claim"
    );
    assert!(matches!(
        nss[other].claim("k", "revalidate", ttl).await,
        strata::Claim::Held
    ));
    nss[winner].end_claim(token).await;
    let strata::Claim::Won(_kept) = nss[other].claim("k", "revalidate", ttl).await else {
        panic!("an ended claim can be won at once");
    };
    // Never ended (a node that died): it expires with its TTL.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(matches!(
        nss[winner].claim("k", "revalidate", ttl).await,
        strata::Claim::Won(_)
    ));
    c.shutdown().await;
}
