//! The CDC consumer against real PostgreSQL (a schema, slot and publication per test) and real Redis (a key
//! prefix per test): changes made outside Strata — with `psql` — invalidate every node's L1 and L2; a consumer
//! killed mid-transaction and restarted misses nothing; a lost slot clears the namespaces and raises the alarm;
//! a change no rule can map clears its namespace and the consumer goes on; under `REPLICA IDENTITY FULL` the key
//! evicted is still the primary key; a standby consumer takes over within a second of the holder process being
//! killed.

use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use strata::codec::Json;
use strata::{Namespace, Policy};
use strata_cdc::{Applier, ApplyOptions, CdcHandle, PgCdc, PgCdcOptions, Rule};
use strata_core::{Bus, BusEvent, BusMessage, EnvelopeKind, Error, Invalidation, SharedTier};
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
                    // Looked at whether or not the node trusts it now: eviction is what is measured.
                    ns.l1()
                        .and_then(|l1| l1.peek(key))
                        .is_some_and(|e| e.value().is_some_and(|p| p.price == old_price))
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

    /// Applied bus messages per node.
    fn applied(&self) -> Vec<u64> {
        self.cluster
            .nodes
            .iter()
            .map(|n| n.bus_stats().map_or(0, |s| s.applied))
            .collect()
    }

    /// L2 holds a tombstone for `key`.
    async fn l2_tombstoned(&self, key: &str) -> bool {
        let (stamped, _) = self.l2.lookup("price", key).await.unwrap();
        stamped.is_some_and(|s| matches!(s.envelope.kind, EnvelopeKind::Tombstone))
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
    // Untouched keys stay cached (L1 answers once the node has confirmed bus contact: allow a busy scheduler).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.nodes.iter().all(|ns| ns.get("radio").is_some()) {
        assert!(
            Instant::now() < deadline,
            "an untouched key left L1: holds {:?}, bus {:?}",
            w.nodes
                .iter()
                .map(|ns| ns.l1_holds("radio"))
                .collect::<Vec<_>>(),
            w.cluster
                .nodes
                .iter()
                .map(|n| n.bus_stats())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

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
    assert!(w.nodes.iter().all(|ns| ns.l1_holds("tv")));

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

/// Forwards to a bus and remembers what was published.
struct Recording<B> {
    inner: B,
    sent: Mutex<Vec<BusMessage>>,
}

impl<B: Bus> Recording<B> {
    fn new(inner: B) -> Self {
        Self {
            inner,
            sent: Mutex::new(Vec::new()),
        }
    }

    /// The keys of the `Delete` messages published so far.
    fn deleted_keys(&self) -> Vec<String> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter_map(|m| match &m.what {
                Invalidation::Delete { key } => Some(key.clone()),
                _ => None,
            })
            .collect()
    }
}

impl<B: Bus> Recording<B> {
    /// Whether a mark of `feed` was published after the `Delete` of `key`.
    fn marked_after_delete_of(&self, key: &str, feed: &str) -> bool {
        let sent = self.sent.lock().unwrap();
        let Some(at) = sent
            .iter()
            .position(|m| matches!(&m.what, Invalidation::Delete { key: k } if k == key))
        else {
            return false;
        };
        sent[at..]
            .iter()
            .any(|m| matches!(&m.what, Invalidation::FeedMark { feed: f, .. } if f == feed))
    }
}

impl<B: Bus> Bus for Recording<B> {
    fn publish(&self, msg: BusMessage) -> BoxFuture<'_, Result<(), Error>> {
        self.sent.lock().unwrap().push(msg.clone());
        self.inner.publish(msg)
    }

    fn subscribe(&self) -> BoxStream<'static, BusEvent> {
        self.inner.subscribe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_replica_identity_full_an_update_evicts_the_primary_key_the_cache_uses() {
    let w = World::new("fullident").await;
    let bus = Arc::new(Recording::new(w.bus().await));
    // A tag over a non-key column: the consumer sets REPLICA IDENTITY FULL, and pgoutput then flags every column
    // as identity.
    let options = PgCdcOptions::new(pg_url(), &w.slot, &w.slot).rule(
        Rule::new(format!("{}.price", w.schema), "price")
            .version_column("version")
            .tag("category:{category}"),
    );
    let cdc = w.consumer(options, bus.clone()).await;
    let ident: String = sqlx::query_scalar(&format!(
        "select relreplident::text from pg_class where oid = '{}.price'::regclass",
        w.schema
    ))
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(ident, "f", "the consumer sets REPLICA IDENTITY FULL");
    assert_eq!(w.read_all("tv").await, vec![99, 99, 99]);
    assert!(!w.l2_tombstoned("tv").await);

    psql(&format!(
        "UPDATE {}.price SET price = 129, version = version + 1 WHERE sku = 'tv'",
        w.schema
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    while bus.deleted_keys().is_empty() {
        assert!(Instant::now() < deadline, "no key was invalidated");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Exactly `<ns>:<pk>`: "tv", not every column of the row ("tv:129:TV 55:video:2").
    assert_eq!(bus.deleted_keys(), vec!["tv".to_owned()]);
    // The holder marks its feed, and a mark emitted after the commit follows the commit's invalidation.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bus.marked_after_delete_of("tv", &w.slot) {
        assert!(
            Instant::now() < deadline,
            "no feed mark followed the invalidation"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(w.l2_tombstoned("tv").await, "L2 tombstones price:tv");
    w.wait_evicted("tv", 99).await;
    assert_eq!(w.read_all("tv").await, vec![129, 129, 129]);
    // A delete (the old row is the full row) evicts the same key.
    psql(&format!(
        "DELETE FROM {}.price WHERE sku = 'radio'",
        w.schema
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    while bus.deleted_keys().len() < 2 {
        assert!(Instant::now() < deadline, "the delete invalidated nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        bus.deleted_keys(),
        vec!["tv".to_owned(), "radio".to_owned()]
    );
    let s = cdc.stats();
    assert_eq!((s.unmapped, s.undecodable), (0, 0), "{s:?}");
    cdc.stop().await;
    w.cleanup().await;
}

#[tokio::test]
async fn a_mapped_table_without_a_primary_key_and_no_key_template_fails_the_start() {
    let pool = PgPool::connect(&pg_url()).await.unwrap();
    let schema = unique("nopk");
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.event (id bigint, body text)"),
    ] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    let applier = Arc::new(Applier::new(
        None,
        Arc::new(strata::bus::InProcessBus::new()),
        "t",
        ApplyOptions::default(),
    ));
    let e = PgCdc::start(
        PgCdcOptions::new(pg_url(), &schema, &schema)
            .rule(Rule::new(format!("{schema}.event"), "audit").key("e{id}"))
            .rule(Rule::new(format!("{schema}.event"), "event")),
        applier.clone(),
    )
    .await
    .err()
    .expect("no primary key, no key template: the start fails");
    let text = e.to_string();
    assert!(text.contains("rule 1"), "{text}");
    assert!(text.contains(&format!("{schema}.event")), "{text}");
    assert!(text.contains("PRIMARY KEY"), "{text}");
    // Nothing was set up.
    let slots: i64 =
        sqlx::query_scalar("select count(*) from pg_replication_slots where slot_name = $1")
            .bind(&schema)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(slots, 0);
    let e = PgCdc::start(
        PgCdcOptions::new(pg_url(), &schema, &schema)
            .rule(Rule::new(format!("{schema}.missing"), "m")),
        applier,
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("does not exist"), "{e}");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}

/// The environment variable that turns [`cdc_consumer_process`] into a consumer: `schema|slot|redis prefix`.
const CHILD_ENV: &str = "STRATA_CDC_TEST_CONSUMER";

/// Not a test: the failover test runs this binary again with [`CHILD_ENV`] set, as a consumer *process* it can
/// `kill -9` (so its PostgreSQL sessions end as a crashed node's do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process of the failover test"]
async fn cdc_consumer_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (schema, slot, prefix) = (parts[0], parts[1], parts[2]);
    let l2 = RedisL2::connect(
        &redis_url(),
        L2Options {
            prefix: prefix.to_owned(),
            ..L2Options::default()
        },
    )
    .await
    .unwrap();
    let bus = RedisBus::connect(
        &redis_url(),
        RedisBusOptions {
            stream: format!("{prefix}:bus"),
            ..RedisBusOptions::default()
        },
    )
    .await
    .unwrap();
    let applier = Applier::new(
        Some(Arc::new(l2) as Arc<dyn SharedTier>),
        Arc::new(bus),
        "cdc-child",
        ApplyOptions::default(),
    );
    let mut options = PgCdcOptions::new(pg_url(), slot, slot)
        .rule(Rule::new(format!("{schema}.price"), "price").version_column("version"));
    options.node = "child".into();
    let cdc = PgCdc::start(options, Arc::new(applier)).await.unwrap();
    println!("CONSUMER STARTED active={}", cdc.is_active());
    std::future::pending::<()>().await;
}

/// Kills the child process when dropped (a failing test leaves no consumer behind).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_within_a_second_of_the_holder_process_being_killed() {
    let w = World::new("failover").await;
    let before = w.applied();
    // The holder: another process.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "cdc_consumer_process",
            "--nocapture",
        ])
        .env(
            CHILD_ENV,
            format!("{}|{}|{}", w.schema, w.slot, w.cluster.prefix),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut child = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let line = tokio::task::block_in_place(|| {
        rx.recv_timeout(Duration::from_secs(60))
            .into_iter()
            .chain(rx.iter())
            .find(|l| l.contains("CONSUMER STARTED"))
    })
    .expect("the consumer process started");
    assert!(line.contains("active=true"), "{line}");
    // It streams (its walsender holds the slot), and its slot's clear reached every node.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let streaming: Option<String> = sqlx::query_scalar(
            "select a.application_name::text from pg_replication_slots s
               join pg_stat_activity a on a.pid = s.active_pid where s.slot_name = $1",
        )
        .bind(&w.slot)
        .fetch_optional(&w.pool)
        .await
        .unwrap();
        let cleared = w.applied().iter().zip(&before).all(|(a, b)| a > b);
        if cleared && streaming.as_deref() == Some("strata-cdc:child") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer process never streamed ({streaming:?}, cleared: {cleared})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The standby: this process.
    let mut options = w.options();
    options.node = "standby".into();
    let standby = w.consumer(options, Arc::new(w.bus().await)).await;
    let s = standby.stats();
    assert!(!s.active && !standby.is_active(), "{s:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let holder = standby.holder();
        if holder
            .as_ref()
            .is_some_and(|h| h.application_name.as_deref() == Some("strata-cdc:child"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby does not see the holder: {holder:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let child_pid = standby.stats().holder_pid.unwrap();
    assert_eq!(w.read_all("tv").await, vec![99, 99, 99]);
    assert!(!w.l2_tombstoned("tv").await);
    // Still a standby (it only waits, and says so in its stats).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = standby.stats();
    assert!(!s.active, "{s:?}");
    assert_eq!((s.transactions, s.takeovers), (0, 0), "{s:?}");

    // kill -9 the holder, and change a row right then.
    let killed = Instant::now();
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    sqlx::query(&format!(
        "UPDATE {}.price SET price = 111, version = version + 1 WHERE sku = 'tv'",
        w.schema
    ))
    .execute(&w.pool)
    .await
    .unwrap();
    let updated = killed.elapsed();
    let (mut active_at, mut l2_at) = (None, None);
    let evicted_at = loop {
        let now = killed.elapsed();
        if active_at.is_none() && standby.is_active() {
            active_at = Some(now);
        }
        if l2_at.is_none() && w.l2_tombstoned("tv").await {
            l2_at = Some(now);
        }
        let held = w.nodes.iter().any(|ns| {
            ns.get("tv")
                .is_some_and(|l| l.value().is_some_and(|p| p.price == 99))
        });
        if l2_at.is_some() && !held {
            break now;
        }
        assert!(
            now < Duration::from_secs(10),
            "no takeover: {:?}",
            standby.stats()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    println!(
        "takeover after kill -9: update committed at {updated:?}, standby holds the lock at {active_at:?}, \
         L2 tombstone at {l2_at:?}, every L1 evicted at {evicted_at:?}"
    );
    assert!(
        evicted_at < Duration::from_secs(1),
        "takeover took {evicted_at:?} (L2 at {l2_at:?})"
    );
    let s = standby.stats();
    assert!(s.active && s.takeovers == 1 && s.transactions >= 1, "{s:?}");
    let holder = standby.holder().unwrap();
    assert_ne!(holder.pid, child_pid);
    assert_eq!(
        holder.application_name.as_deref(),
        Some("strata-cdc:standby")
    );
    assert_eq!(w.read_all("tv").await, vec![111, 111, 111]);
    standby.stop().await;
    drop(child);
    w.cleanup().await;
}
