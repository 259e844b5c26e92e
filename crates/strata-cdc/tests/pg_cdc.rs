//! The CDC consumer against real PostgreSQL (a schema, slot and publication per test) and real Redis (a key
//! prefix per test): changes made outside Strata — with `psql` — invalidate every node's L1 and L2; a consumer
//! killed mid-transaction and restarted misses nothing; a lost slot clears the namespaces and raises the alarm;
//! a change no rule can map clears its namespace and the consumer goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use strata::codec::Json;
use strata::{Namespace, Policy};
use strata_cdc::{Applier, ApplyOptions, CdcHandle, PgCdc, PgCdcOptions, Rule};
use strata_core::{Bus, EnvelopeKind, SharedTier};
use strata_redis::{L2Options, RedisBus, RedisBusOptions, RedisL2};
use strata_sql::{PgTable, TableSpec};
use strata_testkit::bus::JammableBus;
use strata_testkit::cluster::{redis_url, Cluster, ClusterOptions};
use strata_testkit::pg::{psql, unique_name as unique, url as pg_url};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Price {
    price: i64,
    name: Option<String>,
    category: Option<String>,
}

struct World {
    pool: PgPool,
    schema: String,
    slot: String,
    cluster: Cluster,
    nodes: Vec<Namespace<Price>>,
    l2: RedisL2,
}

impl World {
    async fn new(test: &str) -> Self {
        let pool = PgPool::connect(&pg_url())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL must be running at {}: {e}", pg_url()));
        let schema = unique(test);
        for sql in [
            format!("CREATE SCHEMA {schema}"),
            format!(
                "CREATE TABLE {schema}.price (sku text PRIMARY KEY, price bigint NOT NULL, name text, \
                 category text, version bigint NOT NULL DEFAULT 1)"
            ),
            format!(
                "INSERT INTO {schema}.price (sku, price, name, category) VALUES \
                 ('tv', 99, 'TV 55', 'video'), ('radio', 20, 'Radio', 'audio'), ('cam', 300, 'Camera', 'video')"
            ),
        ] {
            sqlx::query(&sql).execute(&pool).await.unwrap();
        }
        let cluster = Cluster::start(ClusterOptions {
            nodes: 3,
            name: test.into(),
            ..ClusterOptions::default()
        })
        .await
        .unwrap_or_else(|e| panic!("Redis must be running at {}: {e}", redis_url()));
        let table = Arc::new(
            PgTable::bind(
                pool.clone(),
                TableSpec::new(&format!("{schema}.price"), "sku", "version"),
            )
            .await
            .unwrap(),
        );
        let nodes = cluster
            .nodes
            .iter()
            .map(|n| {
                n.cache
                    .namespace::<Price>("price")
                    .with_policy(
                        Policy::builder()
                            .with_ttl(Duration::from_secs(300))
                            .build()
                            .unwrap(),
                    )
                    .with_codec(Json)
                    .with_source(table.clone())
                    .build()
                    .unwrap()
            })
            .collect();
        let l2 = RedisL2::connect(
            &redis_url(),
            L2Options {
                prefix: cluster.prefix.clone(),
                ..L2Options::default()
            },
        )
        .await
        .unwrap();
        Self {
            pool,
            slot: schema.clone(),
            schema,
            cluster,
            nodes,
            l2,
        }
    }

    async fn bus(&self) -> RedisBus {
        RedisBus::connect(
            &redis_url(),
            RedisBusOptions {
                stream: format!("{}:bus", self.cluster.prefix),
                ..RedisBusOptions::default()
            },
        )
        .await
        .unwrap()
    }

    fn options(&self) -> PgCdcOptions {
        PgCdcOptions::new(pg_url(), &self.slot, &self.slot)
            .rule(Rule::new(format!("{}.price", self.schema), "price").version_column("version"))
    }

    async fn consumer(&self, options: PgCdcOptions, bus: Arc<dyn Bus>) -> CdcHandle {
        let applier = Applier::new(
            Some(Arc::new(self.l2.clone()) as Arc<dyn SharedTier>),
            bus,
            "cdc-test",
            ApplyOptions::default(),
        );
        let applied = |i: usize| self.cluster.nodes[i].bus_stats().map_or(0, |s| s.applied);
        let before: Vec<u64> = (0..self.nodes.len()).map(applied).collect();
        let handle = PgCdc::start(options, Arc::new(applier)).await.unwrap();
        if handle.stats().slots_created > 0 {
            // A new slot clears the namespace on every node: wait until they all have, so that the test's reads
            // come after it.
            let deadline = Instant::now() + Duration::from_secs(15);
            while (0..self.nodes.len()).any(|i| applied(i) <= before[i]) {
                assert!(Instant::now() < deadline, "the slot's clear never arrived");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        handle
    }

    /// Reads `key` on every node (filling L1 and L2); returns the prices.
    async fn read_all(&self, key: &str) -> Vec<i64> {
        let mut out = Vec::new();
        for ns in &self.nodes {
            let l = ns.fetch(key).await.unwrap();
            out.push(l.value().map_or(-1, |p| p.price));
        }
        out
    }

    /// Waits until no node's L1 holds `key` with `old_price`.
    async fn wait_evicted(&self, key: &str, old_price: i64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let held: Vec<usize> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, ns)| {
                    ns.get(key)
                        .is_some_and(|l| l.value().is_some_and(|p| p.price == old_price))
                })
                .map(|(i, _)| i)
                .collect();
            if held.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes {held:?} still hold {key}={old_price} in L1"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// L2 holds no value for `key` (tombstoned or behind a barrier).
    async fn assert_l2_has_no_value(&self, key: &str, old_price: i64) {
        let (stamped, _) = self.l2.lookup("price", key).await.unwrap();
        if let Some(s) = stamped {
            if let EnvelopeKind::Value(bytes) = &s.envelope.kind {
                let p: Price = serde_json::from_slice(bytes).unwrap();
                assert_ne!(p.price, old_price, "L2 still holds {key}={old_price}");
            }
        }
    }

    async fn cleanup(self) {
        let slot = self.slot.clone();
        // The slot may still be held for a moment by a walsender that is shutting down.
        for _ in 0..100 {
            let r = sqlx::query(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1",
            )
            .bind(&slot)
            .execute(&self.pool)
            .await;
            if r.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for sql in [
            format!("DROP PUBLICATION IF EXISTS {slot}"),
            format!("DROP SCHEMA {} CASCADE", self.schema),
        ] {
            sqlx::query(&sql).execute(&self.pool).await.unwrap();
        }
        self.cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_made_with_psql_invalidates_every_nodes_l1_and_l2() {
    let w = World::new("psql").await;
    let cdc = w.consumer(w.options(), Arc::new(w.bus().await)).await;
    assert_eq!(w.read_all("tv").await, vec![99, 99, 99]);
    assert_eq!(w.read_all("radio").await, vec![20, 20, 20]);

    psql(&format!(
        "UPDATE {}.price SET price = 129, version = version + 1 WHERE sku = 'tv'",
        w.schema
    ));
    w.wait_evicted("tv", 99).await;
    w.assert_l2_has_no_value("tv", 99).await;
    assert_eq!(w.read_all("tv").await, vec![129, 129, 129]);
    // Untouched keys stay cached.
    assert!(w.nodes.iter().all(|ns| ns.get("radio").is_some()));

    // Deletes and inserts too (an insert drops a cached "absent").
    assert!(w.nodes[0].fetch("new").await.unwrap().is_absent());
    psql(&format!(
        "BEGIN; DELETE FROM {s}.price WHERE sku = 'radio'; INSERT INTO {s}.price (sku, price) VALUES ('new', 5); COMMIT",
        s = w.schema
    ));
    w.wait_evicted("radio", 20).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while w.nodes[0].get("new").is_some_and(|l| l.is_absent()) {
        assert!(
            Instant::now() < deadline,
            "the insert did not drop the negative entry"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(w.read_all("radio").await, vec![-1, -1, -1]);
    assert_eq!(w.read_all("new").await, vec![5, 5, 5]);

    let s = cdc.stats();
    assert!(s.transactions >= 2, "{s:?}");
    assert_eq!(
        (s.undecodable, s.unmapped, s.slots_lost),
        (0, 0, 0),
        "{s:?}"
    );
    cdc.stop().await;
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_transaction_and_restarted_misses_nothing() {
    let w = World::new("restart").await;
    let jam = Arc::new(JammableBus::new(w.bus().await));
    let first = w.consumer(w.options(), jam.clone()).await;
    assert_eq!(w.read_all("tv").await, vec![99, 99, 99]);
    assert_eq!(w.read_all("radio").await, vec![20, 20, 20]);
    assert_eq!(w.read_all("cam").await, vec![300, 300, 300]);

    // The consumer receives this change but cannot publish it, and dies before acknowledging it.
    jam.jam();
    psql(&format!(
        "UPDATE {}.price SET price = 100, version = version + 1 WHERE sku = 'tv'",
        w.schema
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    while first.stats().apply_failures == 0 {
        assert!(
            Instant::now() < deadline,
            "the consumer never tried to apply"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().await;
    // While no consumer runs.
    psql(&format!(
        "UPDATE {}.price SET price = 21, version = version + 1 WHERE sku = 'radio'",
        w.schema
    ));
    // The L1 copies are still the old ones: nothing was published.
    assert!(w.nodes.iter().all(|ns| ns.get("tv").is_some()));

    let second = w.consumer(w.options(), Arc::new(w.bus().await)).await;
    w.wait_evicted("tv", 99).await;
    w.wait_evicted("radio", 20).await;
    assert_eq!(w.read_all("tv").await, vec![100, 100, 100]);
    assert_eq!(w.read_all("radio").await, vec![21, 21, 21]);
    assert_eq!(w.read_all("cam").await, vec![300, 300, 300]);
    let s = second.stats();
    assert!(s.transactions >= 2, "{s:?}");
    assert_eq!(s.slots_created, 0, "the slot survived the kill: {s:?}");
    second.stop().await;
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_raises_the_alarm_and_clears_the_namespace() {
    let w = World::new("lostslot").await;
    let cdc = w.consumer(w.options(), Arc::new(w.bus().await)).await;
    assert_eq!(cdc.stats().slots_created, 1);
    assert_eq!(w.read_all("cam").await, vec![300, 300, 300]);

    // The slot disappears under the running consumer (an operator dropped it); a change made meanwhile is not in
    // any slot.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let _ = sqlx::query(
            "select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1 and active_pid is not null",
        )
        .bind(&w.slot)
        .execute(&w.pool)
        .await;
        let dropped = sqlx::query("select pg_drop_replication_slot($1)")
            .bind(&w.slot)
            .execute(&w.pool)
            .await;
        if dropped.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "could not drop the slot: {dropped:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    psql(&format!(
        "UPDATE {}.price SET price = 310, version = version + 1 WHERE sku = 'cam'",
        w.schema
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    while cdc.stats().slots_lost == 0 {
        assert!(Instant::now() < deadline, "no alarm: {:?}", cdc.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The recreated slot cannot know the change above: the namespace was cleared instead.
    w.wait_evicted("cam", 300).await;
    assert_eq!(w.read_all("cam").await, vec![310, 310, 310]);
    let s = cdc.stats();
    assert_eq!((s.slots_lost, s.slots_created), (1, 2), "{s:?}");
    cdc.stop().await;
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_no_rule_can_map_clears_the_namespace_and_the_consumer_goes_on() {
    let w = World::new("unmapped").await;
    // The version "column" holds text: no version can be read from it.
    let options = PgCdcOptions::new(pg_url(), &w.slot, &w.slot)
        .rule(Rule::new(format!("{}.price", w.schema), "price").version_column("name"));
    let cdc = w.consumer(options, Arc::new(w.bus().await)).await;
    assert_eq!(w.read_all("tv").await, vec![99, 99, 99]);
    assert_eq!(w.read_all("radio").await, vec![20, 20, 20]);
    psql(&format!(
        "UPDATE {}.price SET price = 25 WHERE sku = 'radio'",
        w.schema
    ));
    // The whole namespace goes, including the untouched key.
    w.wait_evicted("tv", 99).await;
    w.wait_evicted("radio", 20).await;
    assert_eq!(w.read_all("radio").await, vec![25, 25, 25]);
    assert_eq!(cdc.stats().unmapped, 1);
    // And the consumer is still consuming.
    psql(&format!(
        "UPDATE {}.price SET price = 26 WHERE sku = 'radio'",
        w.schema
    ));
    w.wait_evicted("radio", 25).await;
    assert_eq!(w.read_all("radio").await, vec![26, 26, 26]);
    cdc.stop().await;
    w.cleanup().await;
}

#[tokio::test]
async fn bad_options_are_named() {
    let applier = Arc::new(Applier::new(
        None,
        Arc::new(strata::bus::InProcessBus::new()),
        "t",
        ApplyOptions::default(),
    ));
    let e = PgCdc::start(
        PgCdcOptions::new(pg_url(), "Bad-Slot", "p").rule(Rule::new("t", "ns")),
        applier.clone(),
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("slot"), "{e}");
    let e = PgCdc::start(PgCdcOptions::new(pg_url(), "s", "p"), applier.clone())
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("rules"), "{e}");
    let e = PgCdc::start(
        PgCdcOptions::new(pg_url(), "s", "p").rule(Rule::new("t", "ns").tag("category:{oops")),
        applier,
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("unclosed"), "{e}");
}
