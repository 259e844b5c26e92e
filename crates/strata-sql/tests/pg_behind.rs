//! Write-behind against real PostgreSQL (a schema per test): the database unreachable for a while (a fault proxy
//! cuts every connection) is retried until it is back, and nothing acknowledged is lost; a poison write inside a
//! batch makes the batch fall back to single writes, is parked, and the rest flush.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use strata::behind::{WriteBehind, WriteBehindOptions};
use strata::codec::Json;
use strata::{Cache, Namespace, Policy, WriteMode};
use strata_sql::{PgTable, TableSpec};
use strata_testkit::pg::{unique_name as unique, url as pg_url};
use strata_testkit::proxy::{FaultProxy, LinkMode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Count {
    n: i64,
}

/// `host:port` of the PostgreSQL URL.
fn pg_addr() -> std::net::SocketAddr {
    let url = pg_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    host_port
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap_or_else(|_| panic!("a proxied test needs an ip:port PostgreSQL URL, got {url}"))
}

/// A schema with a `counter` table (n must not be negative).
async fn schema(test: &str) -> (PgPool, String) {
    let pool = PgPool::connect(&pg_url())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running at {}: {e}", pg_url()));
    let schema = unique(test);
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!(
            "CREATE TABLE {schema}.counter (id text PRIMARY KEY, n bigint NOT NULL CHECK (n >= 0), \
             version bigint NOT NULL DEFAULT 1)"
        ),
    ] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    (pool, format!("{schema}.counter"))
}

async fn stored(pool: &PgPool, table: &str, id: &str) -> Option<i64> {
    sqlx::query_scalar(&format!("SELECT n FROM {table} WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

fn namespace(wb: &WriteBehind, store: Arc<PgTable<Count>>) -> Namespace<Count> {
    Cache::new()
        .namespace::<Count>("counter")
        .with_policy(
            Policy::builder()
                .with_write_mode(WriteMode::Behind)
                .build()
                .unwrap(),
        )
        .with_store(store)
        .with_codec(Json)
        .with_write_behind(wb.clone())
        .build()
        .unwrap()
}

fn journal_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(unique(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_during_write_behind_is_retried_and_nothing_is_lost() {
    let (direct, table) = schema("unreachable").await;
    let proxy = FaultProxy::start(pg_addr()).await.unwrap();
    let proxied = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&format!("postgres://postgres@{}/test", proxy.addr()))
        .await
        .unwrap();
    let store = Arc::new(
        PgTable::<Count>::bind(proxied, TableSpec::new(&table, "id", "version"))
            .await
            .unwrap(),
    );
    let wb = WriteBehind::open(
        journal_dir("unreachable"),
        WriteBehindOptions {
            retry_base: Duration::from_millis(10),
            retry_max: Duration::from_millis(200),
            max_attempts: 10_000,
            ..WriteBehindOptions::default()
        },
    )
    .unwrap();
    let ns = namespace(&wb, store);
    for i in 0..20 {
        ns.write(&format!("k{i}"), Count { n: i }).await.unwrap();
    }
    assert!(wb.drain(Duration::from_secs(10)).await, "{:?}", wb.stats());

    // The database goes away: writes are still acknowledged (journaled) and readable here.
    proxy.set_mode(LinkMode::Cut);
    let started = Instant::now();
    for round in 1..=10 {
        for i in 0..20 {
            ns.write(&format!("k{i}"), Count { n: round * 100 + i })
                .await
                .unwrap();
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "acks waited for the database"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while wb.stats().failures < 5 {
        assert!(
            Instant::now() < deadline,
            "no failed flush: {:?}",
            wb.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stored(&direct, &table, "k3").await, Some(3));
    assert_eq!(
        ns.fetch("k3").await.unwrap().value(),
        Some(&Count { n: 1003 })
    );
    assert!(wb.stats().pending > 0);

    // It comes back: everything acknowledged arrives, newest value per key.
    proxy.set_mode(LinkMode::Pass);
    assert!(wb.drain(Duration::from_secs(30)).await, "{:?}", wb.stats());
    for i in 0..20 {
        assert_eq!(
            stored(&direct, &table, &format!("k{i}")).await,
            Some(1000 + i)
        );
    }
    let s = wb.stats();
    assert_eq!(s.dead_lettered, 0, "{s:?}");
    assert_eq!(s.acked, 220, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_write_in_a_batch_is_isolated_parked_and_the_rest_flush() {
    let (pool, table) = schema("poisonbatch").await;
    let store = Arc::new(
        PgTable::<Count>::bind(pool.clone(), TableSpec::new(&table, "id", "version"))
            .await
            .unwrap(),
    );
    let dir = journal_dir("poisonbatch");
    let wb = WriteBehind::open(
        &dir,
        WriteBehindOptions {
            // Long enough that every write below lands in the first round's batch.
            linger: Duration::from_millis(300),
            max_attempts: 3,
            retry_base: Duration::from_millis(5),
            retry_max: Duration::from_millis(20),
            ..WriteBehindOptions::default()
        },
    )
    .unwrap();
    let ns = namespace(&wb, store);
    for i in 0..50 {
        ns.write(&format!("k{i}"), Count { n: i }).await.unwrap();
    }
    // Violates the CHECK constraint: the batch statement fails as a whole.
    ns.write("bad", Count { n: -1 }).await.unwrap();
    assert!(wb.drain(Duration::from_secs(20)).await, "{:?}", wb.stats());
    for i in 0..50 {
        assert_eq!(stored(&pool, &table, &format!("k{i}")).await, Some(i));
    }
    assert_eq!(stored(&pool, &table, "bad").await, None);
    let s = wb.stats();
    assert!(s.batch_fallbacks >= 1, "{s:?}");
    assert_eq!(s.dead_lettered, 1, "{s:?}");
    let parked = std::fs::read_to_string(dir.join("dead-letter.jsonl")).unwrap();
    assert!(
        parked.contains("\"bad\"") && parked.contains("check"),
        "{parked}"
    );

    // With no poison, a round is one batch: 100 keys, no fallback.
    for i in 0..100 {
        ns.write(&format!("b{i}"), Count { n: i }).await.unwrap();
    }
    assert!(wb.drain(Duration::from_secs(20)).await, "{:?}", wb.stats());
    assert_eq!(wb.stats().batch_fallbacks, s.batch_fallbacks);
    assert_eq!(stored(&pool, &table, "b99").await, Some(99));
}
