//! PostgreSQL (a schema per test) and SQLite (a file per test) tables behind a namespace, in every write mode.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, SqlitePool};
use strata::{Cache, Error, Fetched, Namespace, Policy, Status, Tier, WriteMode};
use strata_core::{Clock, SharedError, Sink, Source};
use strata_sql::{PgTable, SqlError, SqliteTable, TableSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Price {
    price: i64,
    name: Option<String>,
}

fn price(p: i64) -> Price {
    Price {
        price: p,
        name: Some("TV 55".into()),
    }
}

fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "strata_{name}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn pg_url() -> String {
    std::env::var("STRATA_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema with a `price` table; PostgreSQL must be running (scripts/test.sh starts it).
async fn pg(test: &str) -> (PgPool, String) {
    let pool = PgPool::connect(&pg_url())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running at {}: {e}", pg_url()));
    let schema = unique(test);
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!(
            "CREATE TABLE {schema}.price (sku text PRIMARY KEY, price bigint NOT NULL, name text, \
             version bigint NOT NULL DEFAULT 1)"
        ),
    ] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    (pool, format!("{schema}.price"))
}

async fn sqlite(test: &str) -> (SqlitePool, String) {
    let path = std::env::temp_dir().join(format!("{}.db", unique(test)));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let pool = SqlitePool::connect(&url).await.unwrap();
    sqlx::query(
        "CREATE TABLE price (sku TEXT PRIMARY KEY, price INTEGER NOT NULL, name TEXT, \
         version INTEGER NOT NULL DEFAULT 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    (pool, "price".into())
}

fn namespace<S>(store: Arc<S>, mode: WriteMode) -> Namespace<Price>
where
    S: Source<Price> + Sink<Price>,
{
    Cache::new()
        .namespace::<Price>("price")
        .with_policy(Policy::builder().with_write_mode(mode).build().unwrap())
        .with_store(store)
        .build()
        .unwrap()
}

/// Every write mode against one store.
async fn write_modes<S>(store: Arc<S>)
where
    S: Source<Price> + Sink<Price>,
{
    // Aside: commit, then invalidate; the next read loads the committed row with its version.
    let ns = namespace(store.clone(), WriteMode::Aside);
    assert_eq!(ns.write("a", price(99)).await.unwrap(), 1);
    assert!(ns.get("a").is_none());
    let got = ns.fetch("a").await.unwrap();
    assert_eq!((got.value(), got.version()), (Some(&price(99)), Some(1)));
    assert_eq!(ns.write("a", price(129)).await.unwrap(), 2);
    let got = ns.fetch("a").await.unwrap();
    assert_eq!(
        (got.value(), got.status()),
        (Some(&price(129)), Status::Miss)
    );

    // Through: commit, then set the caches with the committed version.
    let ns = namespace(store.clone(), WriteMode::Through);
    assert_eq!(ns.write("t", price(5)).await.unwrap(), 1);
    let got = ns.fetch("t").await.unwrap();
    assert_eq!(
        (got.value(), got.version(), got.status()),
        (Some(&price(5)), Some(1), Status::Hit(Tier::L1))
    );

    // Around: commit only; the cached copy stays until its TTL (or an event).
    let ns = namespace(store.clone(), WriteMode::Around);
    ns.write("r", price(1)).await.unwrap();
    assert_eq!(ns.fetch("r").await.unwrap().value(), Some(&price(1)));
    ns.write("r", price(2)).await.unwrap();
    assert_eq!(ns.fetch("r").await.unwrap().value(), Some(&price(1)));

    // Delete: gone from the source and the caches; the tombstone refuses the deleted row's version.
    let ns = namespace(store.clone(), WriteMode::Aside);
    ns.fetch("a").await.unwrap();
    ns.delete("a").await.unwrap();
    assert!(
        !ns.insert_fetched("a", Fetched::value(price(129)).with_version(2))
            .await,
        "the deleted row's version was stored over the tombstone"
    );
    assert_eq!(ns.fetch("a").await.unwrap().value(), None);

    // Batches: one query for all misses.
    let counted = Arc::new(Counting {
        inner: store.clone(),
        calls: AtomicUsize::new(0),
    });
    let ns = Cache::new()
        .namespace::<Price>("batch")
        .with_source(counted.clone())
        .build()
        .unwrap();
    let got = ns.fetch_many(&["t", "r", "missing"]).await.unwrap();
    assert_eq!(got[0].value(), Some(&price(5)));
    assert_eq!(got[1].value(), Some(&price(2)));
    assert_eq!(got[2].value(), None);
    assert_eq!(counted.calls.load(Ordering::SeqCst), 1);
}

struct Counting<S> {
    inner: Arc<S>,
    calls: AtomicUsize,
}

impl<S: Source<Price>> Source<Price> for Counting<S> {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched<Price>, SharedError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.load(key)
    }
    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<std::collections::HashMap<String, Fetched<Price>>, SharedError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.load_many(keys)
    }
}

#[tokio::test]
async fn postgres_table_in_every_write_mode() {
    let (pool, table) = pg("modes").await;
    let store = PgTable::<Price>::bind(pool, TableSpec::new(&table, "sku", "version"))
        .await
        .unwrap();
    write_modes(Arc::new(store)).await;
}

#[tokio::test]
async fn sqlite_table_in_every_write_mode() {
    let (pool, table) = sqlite("modes").await;
    let store = SqliteTable::<Price>::bind(pool, TableSpec::new(&table, "sku", "version"))
        .await
        .unwrap();
    write_modes(Arc::new(store)).await;
}

/// Two writers set $99 and $129. The database decides the winner (the later commit); whatever order the cache
/// steps run in, and whether a reader loads in between, the cache never ends with the losing price.
#[tokio::test]
async fn concurrent_writers_never_leave_the_losing_price_in_any_interleaving() {
    let (pool, table) = pg("writers").await;
    let store = Arc::new(
        PgTable::<Price>::bind(pool, TableSpec::new(&table, "sku", "version"))
            .await
            .unwrap(),
    );
    let mut cases = 0;
    for mode in [WriteMode::Aside, WriteMode::Through] {
        for first_commit in [99, 129] {
            let second_commit = if first_commit == 99 { 129 } else { 99 };
            for cache_order in [[0, 1], [1, 0]] {
                for read_between in [false, true] {
                    cases += 1;
                    let key = format!("k{cases}");
                    let ns = namespace(store.clone(), mode);
                    ns.fetch(&key).await.unwrap(); // a cached "absent" to begin with
                    let commits = [
                        (
                            first_commit,
                            store.upsert(&key, &price(first_commit)).await.unwrap(),
                        ),
                        (
                            second_commit,
                            store.upsert(&key, &price(second_commit)).await.unwrap(),
                        ),
                    ];
                    if read_between {
                        // A reader that loads after both commits but before any cache step.
                        let _ = ns.fetch(&key).await.unwrap();
                    }
                    for i in cache_order {
                        let (p, v) = commits[i];
                        match mode {
                            WriteMode::Aside => ns.invalidate_version(&key, v).await,
                            _ => {
                                ns.insert_fetched(&key, Fetched::value(price(p)).with_version(v))
                                    .await;
                            }
                        }
                    }
                    let got = ns.fetch(&key).await.unwrap();
                    assert_eq!(
                        got.value().map(|p| p.price),
                        Some(second_commit),
                        "{mode:?}, committed {first_commit} then {second_commit}, cache order {cache_order:?}, \
                         read between: {read_between}"
                    );
                }
            }
        }
    }
    assert_eq!(cases, 16);
}

#[tokio::test]
async fn bad_configuration_and_bad_data_are_named() {
    let (pool, table) = pg("bad").await;
    let err = PgTable::<Price>::bind(pool.clone(), TableSpec::new("no;table", "sku", "version"))
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::InvalidIdentifier { .. }), "{err}");
    let err = PgTable::<Price>::bind(
        pool.clone(),
        TableSpec::new("nosuchtable", "sku", "version"),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = PgTable::<Price>::bind(pool.clone(), TableSpec::new(&table, "sku", "rev"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no column \"rev\""), "{err}");

    let store = Arc::new(
        PgTable::<Price>::bind(pool.clone(), TableSpec::new(&table, "sku", "version"))
            .await
            .unwrap(),
    );
    // A value with a field that is not a column: refused before the database, naming key and field.
    #[derive(Serialize, Deserialize)]
    struct Typo {
        prise: i64,
    }
    let typo = Arc::new(
        PgTable::<Typo>::bind(pool.clone(), TableSpec::new(&table, "sku", "version"))
            .await
            .unwrap(),
    );
    let err = typo
        .upsert("x", &Typo { prise: 1 })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"x\"") && err.contains("prise"), "{err}");
    // A row the type cannot decode: the read fails naming the key, the cache keeps nothing.
    sqlx::query(&format!(
        "INSERT INTO {table} (sku, price, name) VALUES ('bad', 1, NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    #[derive(Debug, Serialize, Deserialize)]
    struct Strict {
        price: i64,
        name: String,
    }
    let strict = Arc::new(
        PgTable::<Strict>::bind(pool.clone(), TableSpec::new(&table, "sku", "version"))
            .await
            .unwrap(),
    );
    let ns = Cache::new()
        .namespace::<Strict>("strict")
        .with_source(strict)
        .build()
        .unwrap();
    let err = ns.fetch("bad").await.unwrap_err();
    assert!(matches!(err, Error::Load { .. }), "{err}");
    assert!(err.to_string().contains("\"bad\""), "{err}");
    assert!(ns.get("bad").is_none());
    // Without a sink, writes say so.
    let reader = Cache::new()
        .namespace::<Price>("reader")
        .with_source(store)
        .build()
        .unwrap();
    let err = reader.write("x", price(1)).await.unwrap_err();
    assert!(err.to_string().contains("no sink"), "{err}");
}

/// Fenced writes: an older version never overwrites a newer one, and a batch reports per item.
async fn fencing<S>(store: Arc<S>)
where
    S: Source<Price> + Sink<Price>,
{
    assert!(store.upsert_fenced("f", &price(10), 10).await.unwrap());
    assert!(!store.upsert_fenced("f", &price(5), 5).await.unwrap());
    assert!(
        !store.upsert_fenced("f", &price(10), 10).await.unwrap(),
        "a replay is a no-op"
    );
    let got = store.load("f").await.unwrap();
    assert_eq!((got.value, got.version), (Some(price(10)), Some(10)));
    let (a, b) = (price(1), price(2));
    let items = [("f", &a, 7), ("g", &b, 3)];
    assert_eq!(
        store.upsert_fenced_many(&items).await.unwrap(),
        vec![false, true]
    );
    assert_eq!(store.load("g").await.unwrap().value, Some(price(2)));
    assert_eq!(store.load("f").await.unwrap().value, Some(price(10)));
    // A delete older than the row leaves it; a newer one removes it.
    assert!(!store.delete_fenced("f", 9).await.unwrap());
    assert!(store.delete_fenced("f", 11).await.unwrap());
    assert_eq!(store.load("f").await.unwrap().value, None);
    // Hybrid-logical-clock versions fit the 64-bit columns.
    let v = strata_core::Hlc::new().next(strata_core::SystemClock::new().now());
    assert!(store.upsert_fenced("h", &price(3), v).await.unwrap());
    assert_eq!(store.load("h").await.unwrap().version, Some(v));
}

#[tokio::test]
async fn postgres_fenced_upserts_never_go_backwards() {
    let (pool, table) = pg("fenced").await;
    let store = PgTable::<Price>::bind(pool, TableSpec::new(&table, "sku", "version"))
        .await
        .unwrap();
    fencing(Arc::new(store)).await;
}

#[tokio::test]
async fn sqlite_fenced_upserts_never_go_backwards() {
    let (pool, table) = sqlite("fenced").await;
    let store = SqliteTable::<Price>::bind(pool, TableSpec::new(&table, "sku", "version"))
        .await
        .unwrap();
    fencing(Arc::new(store)).await;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Listing {
    name: Option<String>,
    price: i64,
    category: String,
}

#[tokio::test]
async fn a_query_is_a_read_only_source_on_postgres_and_sqlite() {
    use strata_sql::{PgQuery, SqliteQuery};
    let (pool, table) = pg("query").await;
    sqlx::query(&format!(
        "INSERT INTO {table} (sku, price, name) VALUES ('tv', 99, 'TV'), ('radio', 20, NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let sql = format!("SELECT sku, price, name, 'electronics' AS category, version FROM {table}");
    let q = PgQuery::<Listing>::bind(pool.clone(), &sql, "sku", "version")
        .await
        .unwrap();
    let got = q.load("tv").await.unwrap();
    assert_eq!(got.value.as_ref().map(|l| l.price), Some(99));
    assert_eq!(got.version, Some(1));
    let many = q
        .load_many(&["tv".into(), "radio".into(), "none".into()])
        .await
        .unwrap();
    assert_eq!(many.len(), 2);
    assert!(q.load("none").await.unwrap().value.is_none());
    let e = PgQuery::<Listing>::bind(pool.clone(), &sql, "id", "version")
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("no column \"id\""), "{e}");
    let e = PgQuery::<Listing>::bind(
        pool.clone(),
        "SELECT nonsense FROM nowhere",
        "sku",
        "version",
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("query `SELECT nonsense"), "{e}");
    assert!(
        PgQuery::<Listing>::bind(pool, "SELECT 1; DROP TABLE x", "sku", "version")
            .await
            .is_err()
    );

    let (pool, table) = sqlite("query").await;
    sqlx::query(&format!(
        "INSERT INTO {table} (sku, price, name) VALUES ('tv', 99, 'TV'), ('radio', 20, NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let sql = format!("SELECT sku, price, name, 'electronics' AS category FROM {table}");
    let q = SqliteQuery::<Listing>::bind(pool, &sql, "sku", "version")
        .await
        .unwrap();
    let got = q.load("radio").await.unwrap();
    assert_eq!(
        got.value,
        Some(Listing {
            name: None,
            price: 20,
            category: "electronics".into()
        })
    );
    assert_eq!(got.version, None, "the query has no version column");
}
