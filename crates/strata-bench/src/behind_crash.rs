//! `write-behind-crash`: a child process writes through write-behind (SQLite as the source) and prints each
//! acknowledged write; the parent `SIGKILL`s it at a random moment, again and again, each new child recovering
//! the journal of the last. At the end the parent recovers once more, drains, and checks that the table holds
//! every write that was acknowledged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use strata::behind::{WriteBehind, WriteBehindOptions};
use strata::codec::Json;
use strata::{Cache, Namespace, Policy, WriteMode};
use strata_sql::{SqliteTable, TableSpec};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The value written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Count {
    /// The write's number.
    pub n: i64,
}

/// The outcome.
#[derive(Debug, Clone)]
pub struct CrashReport {
    /// Kill cycles.
    pub cycles: usize,
    /// Writes the children acknowledged.
    pub acked_writes: usize,
    /// Acknowledged writes missing from (or wrong in) the table at the end.
    pub lost_acked_writes: usize,
}

impl std::fmt::Display for CrashReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "write_behind_crash cycles={} acked_writes={} lost_acked_writes={}",
            self.cycles, self.acked_writes, self.lost_acked_writes
        )
    }
}

async fn open(dir: &Path) -> (SqlitePool, WriteBehind, Namespace<Count>) {
    std::fs::create_dir_all(dir).expect("bench directory");
    // WAL with synchronous=NORMAL: a commit survives the process being killed (what this bench does); use
    // synchronous=FULL where the source must survive power loss too.
    let options = SqliteConnectOptions::new()
        .filename(dir.join("db.sqlite"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let pool = SqlitePool::connect_with(options).await.expect("sqlite");
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS counter (id TEXT PRIMARY KEY, n INTEGER NOT NULL, \
         version INTEGER NOT NULL DEFAULT 1)",
    )
    .execute(&pool)
    .await
    .expect("table");
    let table = Arc::new(
        SqliteTable::<Count>::bind(pool.clone(), TableSpec::new("counter", "id", "version"))
            .await
            .expect("bind"),
    );
    // A bounded backlog: children write faster than SQLite absorbs, and must wait rather than pile up.
    let options = WriteBehindOptions {
        max_pending: 2_000,
        overload_wait: Duration::from_secs(30),
        ..WriteBehindOptions::default()
    };
    let wb = WriteBehind::open(dir.join("journal"), options).expect("journal");
    let ns = Cache::new()
        .namespace::<Count>("counter")
        .with_policy(
            Policy::builder()
                .with_write_mode(WriteMode::Behind)
                .build()
                .expect("policy"),
        )
        .with_store(table)
        .with_codec(Json)
        .with_write_behind(wb.clone())
        .build()
        .expect("namespace");
    (pool, wb, ns)
}

/// The child: writes `k{i}` = i from `start` on, printing `ack i` after each acknowledgement, until killed.
pub async fn child(dir: PathBuf, start: i64) {
    let (_pool, _wb, ns) = open(&dir).await;
    let mut i = start;
    loop {
        // 8 writers at once, so that group commit and per-key coalescing are exercised too.
        let batch: Vec<_> = (i..i + 8)
            .map(|j| {
                let ns = ns.clone();
                tokio::spawn(
                    async move { ns.write(&format!("k{j}"), Count { n: j }).await.map(|_| j) },
                )
            })
            .collect();
        for t in batch {
            if let Ok(Ok(j)) = t.await {
                println!("ack {j}");
            }
        }
        i += 8;
    }
}

/// The parent: `cycles` kills, then the check.
pub async fn run(cycles: usize, dir: Option<PathBuf>) -> CrashReport {
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("strata-wb-crash-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let exe = std::env::current_exe().expect("own executable");
    let mut acked: BTreeMap<i64, ()> = BTreeMap::new();
    let mut next = 0i64;
    for _ in 0..cycles {
        let mut child = tokio::process::Command::new(&exe)
            .arg("write-behind-child")
            .arg("--dir")
            .arg(&dir)
            .arg("--start")
            .arg(next.to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn child");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let life = Duration::from_millis(50 + rand::random::<u64>() % 250);
        let _ = tokio::time::timeout(life, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(i) = line.strip_prefix("ack ").and_then(|s| s.parse().ok()) {
                    acked.insert(i, ());
                }
            }
        })
        .await;
        child.start_kill().expect("SIGKILL");
        // Acks printed before the kill are still in the pipe.
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(i) = line.strip_prefix("ack ").and_then(|s| s.parse().ok()) {
                acked.insert(i, ());
            }
        }
        let _ = child.wait().await;
        next = acked.keys().next_back().map_or(next, |m| m + 1).max(next) + 8;
    }
    let (pool, wb, _ns) = open(&dir).await;
    assert!(
        wb.drain(Duration::from_secs(120)).await,
        "recovered writes did not drain"
    );
    let rows = sqlx::query("SELECT id, n FROM counter")
        .fetch_all(&pool)
        .await
        .expect("rows");
    let table: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let lost = acked
        .keys()
        .filter(|i| table.get(&format!("k{i}")) != Some(i))
        .count();
    let _ = std::fs::remove_dir_all(&dir);
    CrashReport {
        cycles,
        acked_writes: acked.len(),
        lost_acked_writes: lost,
    }
}
