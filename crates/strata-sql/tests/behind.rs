//! Write-behind over real tables: acknowledged writes reach the source through retries, crashes (journal
//! recovery), poison and backpressure.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::{Row, SqlitePool};
use strata::behind::{WriteBehind, WriteBehindOptions};
use strata::codec::Json;
use strata::{Cache, Error, Namespace, Policy, WriteMode};
use strata_core::{SharedError, Sink};
use strata_sql::{SqliteTable, TableSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Count {
    n: i64,
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "strata-behind-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ))
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn table(dir: &std::path::Path) -> (SqlitePool, Arc<SqliteTable<Count>>) {
    std::fs::create_dir_all(dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("db.sqlite").display());
    let pool = SqlitePool::connect(&url).await.unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS counter (id TEXT PRIMARY KEY, n INTEGER NOT NULL, \
         version INTEGER NOT NULL DEFAULT 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let t = SqliteTable::bind(pool.clone(), TableSpec::new("counter", "id", "version"))
        .await
        .unwrap();
    (pool, Arc::new(t))
}

async fn stored(pool: &SqlitePool, id: &str) -> Option<i64> {
    sqlx::query("SELECT n FROM counter WHERE id = ?1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// A sink that can hold every write, fail the first N, or always fail one key.
struct Faulty {
    inner: Arc<SqliteTable<Count>>,
    hold: AtomicBool,
    fail_first: AtomicUsize,
    poison: Option<String>,
}

impl Faulty {
    fn new(inner: Arc<SqliteTable<Count>>) -> Self {
        Self {
            inner,
            hold: AtomicBool::new(false),
            fail_first: AtomicUsize::new(0),
            poison: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("injected: {0}")]
struct Injected(&'static str);

impl Faulty {
    /// Holds, fails or refuses as configured before a write of `keys` reaches the table.
    async fn check(&self, keys: &[&str]) -> Result<(), SharedError> {
        while self.hold.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if keys.iter().any(|k| self.poison.as_deref() == Some(*k)) {
            return Err(Arc::new(Injected("poison")) as SharedError);
        }
        if self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Arc::new(Injected("database unreachable")) as SharedError);
        }
        Ok(())
    }
}

impl Sink<Count> for Faulty {
    fn upsert<'a>(
        &'a self,
        key: &'a str,
        value: &'a Count,
    ) -> BoxFuture<'a, Result<u64, SharedError>> {
        Box::pin(async move {
            self.check(&[key]).await?;
            self.inner.upsert(key, value).await
        })
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, SharedError>> {
        self.inner.delete(key)
    }
    fn upsert_fenced<'a>(
        &'a self,
        key: &'a str,
        value: &'a Count,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, SharedError>> {
        Box::pin(async move {
            self.check(&[key]).await?;
            self.inner.upsert_fenced(key, value, version).await
        })
    }
    fn upsert_fenced_many<'a>(
        &'a self,
        items: &'a [(&'a str, &'a Count, u64)],
    ) -> BoxFuture<'a, Result<Vec<bool>, SharedError>> {
        Box::pin(async move {
            let keys: Vec<&str> = items.iter().map(|(k, _, _)| *k).collect();
            self.check(&keys).await?;
            self.inner.upsert_fenced_many(items).await
        })
    }
    fn delete_fenced<'a>(
        &'a self,
        key: &'a str,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, SharedError>> {
        self.inner.delete_fenced(key, version)
    }
}

fn options() -> WriteBehindOptions {
    WriteBehindOptions {
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        ..WriteBehindOptions::default()
    }
}

fn namespace(
    wb: &WriteBehind,
    sink: Arc<Faulty>,
    store: Arc<SqliteTable<Count>>,
) -> Namespace<Count> {
    Cache::new()
        .namespace::<Count>("counter")
        .with_policy(
            Policy::builder()
                .with_write_mode(WriteMode::Behind)
                .build()
                .unwrap(),
        )
        .with_source(store)
        .with_sink(sink)
        .with_codec(Json)
        .with_write_behind(wb.clone())
        .build()
        .unwrap()
}

#[tokio::test]
async fn acknowledged_writes_reach_the_table_and_reads_see_them_before() {
    let dir = temp("basic");
    let (pool, store) = table(&dir).await;
    let sink = Arc::new(Faulty::new(store.clone()));
    sink.hold.store(true, Ordering::SeqCst);
    let wb = WriteBehind::open(dir.join("journal"), options()).unwrap();
    let ns = namespace(&wb, sink.clone(), store);
    for i in 0..100 {
        ns.write(&format!("c{}", i % 10), Count { n: i })
            .await
            .unwrap();
    }
    // Held: nothing in the table yet, but reads on this node see the pending writes.
    assert_eq!(stored(&pool, "c3").await, None);
    assert_eq!(
        ns.fetch("c3").await.unwrap().value(),
        Some(&Count { n: 93 })
    );
    sink.hold.store(false, Ordering::SeqCst);
    assert!(wb.drain(Duration::from_secs(10)).await, "{:?}", wb.stats());
    for k in 0..10 {
        assert_eq!(stored(&pool, &format!("c{k}")).await, Some(90 + k));
    }
    let s = wb.stats();
    assert_eq!((s.acked, s.pending, s.dead_lettered), (100, 0, 0));
    assert!(s.flushed >= 10 && s.flushed <= 100, "{s:?}");
}

#[tokio::test]
async fn an_unreachable_database_is_retried_and_nothing_is_lost() {
    let dir = temp("retry");
    let (pool, store) = table(&dir).await;
    let sink = Arc::new(Faulty::new(store.clone()));
    sink.fail_first.store(25, Ordering::SeqCst);
    let wb = WriteBehind::open(dir.join("journal"), options()).unwrap();
    let ns = namespace(&wb, sink, store);
    for i in 0..20 {
        ns.write(&format!("k{i}"), Count { n: i }).await.unwrap();
    }
    assert!(wb.drain(Duration::from_secs(10)).await, "{:?}", wb.stats());
    for i in 0..20 {
        assert_eq!(stored(&pool, &format!("k{i}")).await, Some(i));
    }
    assert!(wb.stats().failures >= 25);
    assert_eq!(wb.stats().dead_lettered, 0);
}

#[tokio::test]
async fn a_poison_write_is_parked_and_does_not_block_the_others() {
    let dir = temp("poison");
    let (pool, store) = table(&dir).await;
    let mut faulty = Faulty::new(store.clone());
    faulty.poison = Some("bad".into());
    let wb = WriteBehind::open(
        dir.join("journal"),
        WriteBehindOptions {
            max_attempts: 3,
            ..options()
        },
    )
    .unwrap();
    let ns = namespace(&wb, Arc::new(faulty), store);
    ns.write("bad", Count { n: 1 }).await.unwrap();
    ns.write("good", Count { n: 2 }).await.unwrap();
    assert!(wb.drain(Duration::from_secs(10)).await, "{:?}", wb.stats());
    assert_eq!(stored(&pool, "good").await, Some(2));
    assert_eq!(wb.stats().dead_lettered, 1);
    let dead = std::fs::read_to_string(dir.join("journal").join("dead-letter.jsonl")).unwrap();
    assert!(
        dead.contains("\"key\":\"bad\"") && dead.contains("poison"),
        "{dead}"
    );
}

#[tokio::test]
async fn journaled_writes_are_replayed_after_a_restart() {
    let dir = temp("replay");
    let (pool, store) = table(&dir).await;
    {
        let sink = Arc::new(Faulty::new(store.clone()));
        sink.hold.store(true, Ordering::SeqCst); // the source never gets them before the "crash"
        let wb = WriteBehind::open(dir.join("journal"), options()).unwrap();
        let ns = namespace(&wb, sink, store.clone());
        for i in 0..50 {
            ns.write(&format!("k{i}"), Count { n: i * 10 })
                .await
                .unwrap();
        }
        assert_eq!(stored(&pool, "k1").await, None);
    }
    let wb = WriteBehind::open(dir.join("journal"), options()).unwrap();
    assert_eq!(wb.stats().recovered, 50);
    let ns = namespace(&wb, Arc::new(Faulty::new(store.clone())), store);
    // Recovered writes are visible to readers at once, and flushed.
    assert_eq!(
        ns.fetch("k7").await.unwrap().value(),
        Some(&Count { n: 70 })
    );
    assert!(wb.drain(Duration::from_secs(10)).await, "{:?}", wb.stats());
    for i in 0..50 {
        assert_eq!(stored(&pool, &format!("k{i}")).await, Some(i * 10));
    }
    // Flushed writes are behind the checkpoint: a third start recovers nothing.
    drop(ns);
    assert_eq!(
        WriteBehind::open(dir.join("journal"), options())
            .unwrap()
            .stats()
            .recovered,
        0
    );
}

#[tokio::test]
async fn a_full_queue_makes_writers_wait_then_fail_with_overloaded() {
    let dir = temp("overload");
    let (_pool, store) = table(&dir).await;
    let sink = Arc::new(Faulty::new(store.clone()));
    sink.hold.store(true, Ordering::SeqCst);
    let wb = WriteBehind::open(
        dir.join("journal"),
        WriteBehindOptions {
            max_pending: 2,
            overload_wait: Duration::from_millis(100),
            ..options()
        },
    )
    .unwrap();
    let ns = namespace(&wb, sink.clone(), store);
    ns.write("a", Count { n: 1 }).await.unwrap();
    ns.write("b", Count { n: 2 }).await.unwrap();
    let err = ns.write("c", Count { n: 3 }).await.unwrap_err();
    assert!(matches!(err, Error::Overloaded(_)), "{err}");
    assert!(err.is_retryable());
    sink.hold.store(false, Ordering::SeqCst);
    assert!(wb.drain(Duration::from_secs(10)).await);
    ns.write("c", Count { n: 3 }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_one_key_end_the_same_in_every_tier_and_the_table() {
    let dir = temp("samekey");
    let (pool, store) = table(&dir).await;
    let sink = Arc::new(Faulty::new(store.clone()));
    let wb = WriteBehind::open(dir.join("journal"), options()).unwrap();
    let ns = namespace(&wb, sink, store);
    let tasks: Vec<_> = (0..16i64)
        .map(|w| {
            let ns = ns.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..50i64 {
                    let n = w * 1000 + i;
                    acked.push((ns.write("hot", Count { n }).await.unwrap(), n));
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    // The write with the highest version is the last one, everywhere.
    let (_, last) = *acked.iter().max().unwrap();
    let versions: std::collections::BTreeSet<u64> = acked.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions.len(), acked.len(), "a version was issued twice");
    assert!(wb.drain(Duration::from_secs(10)).await, "{:?}", wb.stats());
    assert_eq!(stored(&pool, "hot").await, Some(last));
    assert_eq!(
        ns.fetch("hot").await.unwrap().value(),
        Some(&Count { n: last })
    );
    let row_version: i64 = sqlx::query_scalar("SELECT version FROM counter WHERE id = 'hot'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(row_version as u64, *versions.last().unwrap());
}
