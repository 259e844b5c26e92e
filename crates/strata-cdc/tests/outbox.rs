//! The SQLite outbox: a write and its outbox row commit together, the relay invalidates every node (L1 through
//! the bus, L2 by tombstone) and deletes the row only afterwards; a relay that dies before applying leaves the
//! rows for the next one; a rolled-back write leaves nothing; malformed rows clear their namespace.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::SqlitePool;
use strata::codec::Json;
use strata::{Namespace, Policy};
use strata_cdc::{Applier, ApplyOptions, Outbox, OutboxRelay, RelayOptions};
use strata_core::SharedTier;
use strata_redis::{L2Options, RedisBus, RedisBusOptions, RedisL2};
use strata_testkit::bus::JammableBus;
use strata_testkit::cluster::{redis_url, Cluster, ClusterOptions};

async fn sqlite() -> SqlitePool {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let path = std::env::temp_dir().join(format!(
        "strata-outbox-{}-{nanos}-{}.db",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let pool = SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE price (sku TEXT PRIMARY KEY, price INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO price VALUES ('tv', 99), ('radio', 20)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

async fn load(pool: &SqlitePool, key: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT price FROM price WHERE sku = ?")
        .bind(key)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn read(nodes: &[Namespace<i64>], pool: &SqlitePool, key: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for ns in nodes {
        let (p, k) = (pool.clone(), key.to_owned());
        let l = ns
            .get_or_load(key, move || async move { load(&p, &k).await })
            .await
            .unwrap();
        out.push(l.value().copied().unwrap_or(-1));
    }
    out
}

async fn wait_evicted(nodes: &[Namespace<i64>], key: &str, old: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while nodes
        .iter()
        .any(|ns| ns.get(key).is_some_and(|l| l.value() == Some(&old)))
    {
        assert!(Instant::now() < deadline, "{key}={old} still in some L1");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Updates a price and records it in the outbox, in one transaction.
async fn write(pool: &SqlitePool, outbox: &Outbox, key: &str, price: i64, commit: bool) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("UPDATE price SET price = ? WHERE sku = ?")
        .bind(price)
        .bind(key)
        .execute(&mut *tx)
        .await
        .unwrap();
    outbox
        .key_changed(&mut tx, "price", key, None)
        .await
        .unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_invalidate_every_node_and_survive_a_relay_crash() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 2,
        name: "outbox".into(),
        ..ClusterOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("Redis must be running at {}: {e}", redis_url()));
    let nodes: Vec<Namespace<i64>> = cluster.namespace(
        "price",
        Policy::builder()
            .with_ttl(Duration::from_secs(300))
            .build()
            .unwrap(),
        Json,
    );
    let pool = sqlite().await;
    let outbox = Outbox::default();
    outbox.install(&pool).await.unwrap();
    let l2: Arc<dyn SharedTier> = Arc::new(
        RedisL2::connect(
            &redis_url(),
            L2Options {
                prefix: cluster.prefix.clone(),
                ..L2Options::default()
            },
        )
        .await
        .unwrap(),
    );
    let bus = || async {
        RedisBus::connect(
            &redis_url(),
            RedisBusOptions {
                stream: format!("{}:bus", cluster.prefix),
                ..RedisBusOptions::default()
            },
        )
        .await
        .unwrap()
    };
    assert_eq!(read(&nodes, &pool, "tv").await, vec![99, 99]);
    assert_eq!(read(&nodes, &pool, "radio").await, vec![20, 20]);

    // A rolled-back write leaves no outbox row.
    write(&pool, &outbox, "tv", 1, false).await;
    assert_eq!(outbox.pending(&pool).await.unwrap(), 0);

    // A relay that cannot publish keeps the row; it dies; the next relay delivers it.
    let jam = Arc::new(JammableBus::new(bus().await));
    jam.jam();
    let applier = Arc::new(Applier::new(
        Some(l2.clone()),
        jam,
        "relay",
        ApplyOptions::default(),
    ));
    let fast = RelayOptions {
        poll_interval: Duration::from_millis(10),
        ..RelayOptions::default()
    };
    let dying = OutboxRelay::spawn(pool.clone(), outbox.clone(), applier, fast.clone());
    write(&pool, &outbox, "tv", 129, true).await;
    dying.notify();
    let deadline = Instant::now() + Duration::from_secs(15);
    while dying.stats().failures == 0 {
        assert!(Instant::now() < deadline, "the relay never tried");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    dying.kill().await;
    assert_eq!(outbox.pending(&pool).await.unwrap(), 1);

    let applier = Arc::new(Applier::new(
        Some(l2.clone()),
        Arc::new(bus().await),
        "relay",
        ApplyOptions::default(),
    ));
    let relay = OutboxRelay::spawn(pool.clone(), outbox.clone(), applier, fast);
    wait_evicted(&nodes, "tv", 99).await;
    assert_eq!(read(&nodes, &pool, "tv").await, vec![129, 129]);
    assert!(nodes.iter().all(|ns| ns.get("radio").is_some()));

    // A malformed row clears its namespace.
    sqlx::query("INSERT INTO strata_outbox (namespace, kind) VALUES ('price', 'bogus')")
        .execute(&pool)
        .await
        .unwrap();
    relay.notify();
    wait_evicted(&nodes, "radio", 20).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while outbox.pending(&pool).await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "rows were not deleted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = relay.stats();
    assert_eq!((s.relayed, s.malformed), (2, 1), "{s:?}");
    relay.stop().await;
    cluster.shutdown().await;
}

#[test]
fn outbox_table_names_are_checked() {
    assert!(Outbox::new("strata_outbox").is_ok());
    assert!(Outbox::new("x; drop table y").is_err());
    assert!(Outbox::new("").is_err());
}
