//! The SQLite outbox: SQLite has no replication stream, so a writer records what it invalidates in an outbox
//! table *inside its own transaction*; a relay reads the committed rows in order, applies them (L2, then the bus,
//! see [`crate::apply`]) and deletes them only afterwards.
//!
//! Invariants:
//! - A committed change has its outbox row (same transaction); a rolled-back one has none.
//! - A row is deleted only after its invalidation was applied, so a relay killed at any point re-applies it on
//!   the next start (at least once; invalidations are idempotent).
//! - Rows are applied in id (commit) order, a batch at a time; a batch that fails is retried whole with backoff.
//! - A malformed row (unknown kind, missing key or tag) is logged and counted; when its namespace is known, the
//!   namespace is cleared instead, so a bad row never means a stale entry.
//!
//! Latency: the relay polls every `poll_interval` and wakes at once on [`RelayHandle::notify`] (call it after
//! committing).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Row, SqliteConnection, SqlitePool};
use tokio::sync::{watch, Notify};

use crate::apply::Applier;
use crate::mapping::Batch;

/// The outbox table.
#[derive(Debug, Clone)]
pub struct Outbox {
    table: String,
}

/// What a row asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Key,
    Tag,
    Clear,
}

impl Outbox {
    /// The outbox in `table` (default name: `strata_outbox`). The name must be a plain identifier.
    pub fn new(table: impl Into<String>) -> Result<Self, String> {
        let table = table.into();
        if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "outbox table {table:?}: use letters, digits and `_`"
            ));
        }
        Ok(Self { table })
    }

    /// Creates the table if it does not exist.
    pub async fn install(&self, pool: &SqlitePool) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "create table if not exists {} (
                id integer primary key autoincrement,
                namespace text not null,
                kind text not null,
                target text,
                version integer
            )",
            self.table
        ))
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn record(
        &self,
        conn: &mut SqliteConnection,
        ns: &str,
        kind: &str,
        target: Option<&str>,
        version: Option<u64>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "insert into {} (namespace, kind, target, version) values (?, ?, ?, ?)",
            self.table
        ))
        .bind(ns)
        .bind(kind)
        .bind(target)
        .bind(version.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Records that `key` of `ns` changed (to `version`, if known). Call inside the writing transaction.
    pub async fn key_changed(
        &self,
        conn: &mut SqliteConnection,
        ns: &str,
        key: &str,
        version: Option<u64>,
    ) -> Result<(), sqlx::Error> {
        self.record(conn, ns, "key", Some(key), version).await
    }

    /// Records that entries tagged `tag` in `ns` changed. Call inside the writing transaction.
    pub async fn tag_changed(
        &self,
        conn: &mut SqliteConnection,
        ns: &str,
        tag: &str,
    ) -> Result<(), sqlx::Error> {
        self.record(conn, ns, "tag", Some(tag), None).await
    }

    /// Records that everything in `ns` may have changed. Call inside the writing transaction.
    pub async fn namespace_changed(
        &self,
        conn: &mut SqliteConnection,
        ns: &str,
    ) -> Result<(), sqlx::Error> {
        self.record(conn, ns, "clear", None, None).await
    }

    /// Rows waiting to be relayed.
    pub async fn pending(&self, pool: &SqlitePool) -> Result<u64, sqlx::Error> {
        let n: i64 = sqlx::query_scalar(&format!("select count(*) from {}", self.table))
            .fetch_one(pool)
            .await?;
        Ok(n as u64)
    }
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            table: "strata_outbox".into(),
        }
    }
}

/// Relay options.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// How often the table is read when nobody calls [`RelayHandle::notify`]. Default: 100 ms.
    pub poll_interval: Duration,
    /// Rows per batch. Default: 500.
    pub batch: usize,
    /// The longest wait between retries. Default: 5 s.
    pub max_backoff: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(100),
            batch: 500,
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What the relay has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Rows applied and deleted.
    pub relayed: u64,
    /// Malformed rows (their namespace was cleared when known).
    pub malformed: u64,
    /// Failed attempts (retried).
    pub failures: u64,
}

#[derive(Default)]
struct Counters {
    relayed: AtomicU64,
    malformed: AtomicU64,
    failures: AtomicU64,
}

/// Relays an outbox.
pub struct OutboxRelay;

/// A running relay.
pub struct RelayHandle {
    counters: Arc<Counters>,
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
}

impl RelayHandle {
    /// Wakes the relay now (after a commit).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// What the relay has done.
    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            relayed: self.counters.relayed.load(Ordering::Relaxed),
            malformed: self.counters.malformed.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
        }
    }

    /// Stops after the current batch.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.wake.notify_one();
        let _ = self.join.await;
    }

    /// Ends the relay at once, as a crash would.
    pub async fn kill(self) {
        self.join.abort();
        let _ = self.join.await;
    }
}

impl OutboxRelay {
    /// Spawns a relay of `outbox` in `pool` through `applier`.
    pub fn spawn(
        pool: SqlitePool,
        outbox: Outbox,
        applier: Arc<Applier>,
        options: RelayOptions,
    ) -> RelayHandle {
        let counters = Arc::new(Counters::default());
        let wake = Arc::new(Notify::new());
        let (stop, mut stop_rx) = watch::channel(false);
        let (c, w) = (counters.clone(), wake.clone());
        let join = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(20);
            while !*stop_rx.borrow() {
                match relay_once(&pool, &outbox, &applier, &options, &c).await {
                    Ok(n) if n == options.batch => continue,
                    Ok(_) => {
                        backoff = Duration::from_millis(20);
                        tokio::select! {
                            _ = w.notified() => {}
                            _ = tokio::time::sleep(options.poll_interval) => {}
                            _ = stop_rx.changed() => {}
                        }
                    }
                    Err(e) => {
                        c.failures.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("strata_outbox_failures_total").increment(1);
                        tracing::warn!(error = %e, ?backoff, "outbox relay: batch failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop_rx.changed() => {}
                        }
                        backoff = (backoff * 2).min(options.max_backoff);
                    }
                }
            }
        });
        RelayHandle {
            counters,
            wake,
            stop,
            join,
        }
    }
}

/// Applies and deletes one batch of rows; returns how many rows it handled.
async fn relay_once(
    pool: &SqlitePool,
    outbox: &Outbox,
    applier: &Applier,
    options: &RelayOptions,
    c: &Counters,
) -> Result<usize, String> {
    let rows = sqlx::query(&format!(
        "select id, namespace, kind, target, version from {} order by id limit ?",
        outbox.table
    ))
    .bind(options.batch as i64)
    .fetch_all(pool)
    .await
    .map_err(|e| format!("reading {}: {e}", outbox.table))?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut batch = Batch::default();
    let mut last = 0i64;
    let mut malformed = 0u64;
    for row in &rows {
        let id: i64 = row.try_get("id").map_err(|e| e.to_string())?;
        last = last.max(id);
        let ns: Option<String> = row.try_get("namespace").ok();
        let kind: Option<String> = row.try_get("kind").ok();
        let target: Option<String> = row.try_get("target").ok().flatten();
        let version: Option<i64> = row.try_get("version").ok().flatten();
        let kind = match kind.as_deref() {
            Some("key") => Some(Kind::Key),
            Some("tag") => Some(Kind::Tag),
            Some("clear") => Some(Kind::Clear),
            _ => None,
        };
        let Some(ns) = ns.filter(|n| !n.is_empty()) else {
            malformed += 1;
            tracing::error!(id, table = %outbox.table, "outbox row without a namespace: skipped");
            continue;
        };
        match (kind, target.filter(|t| !t.is_empty())) {
            (Some(Kind::Key), Some(key)) => {
                let v = version.and_then(|v| u64::try_from(v).ok());
                batch.key(&ns, key, v, 0);
            }
            (Some(Kind::Tag), Some(tag)) => batch.tag(&ns, tag),
            (Some(Kind::Clear), _) => batch.clear(&ns),
            _ => {
                malformed += 1;
                tracing::error!(id, namespace = %ns, table = %outbox.table, "malformed outbox row: clearing its namespace");
                batch.clear(&ns);
            }
        }
    }
    applier
        .apply(&batch)
        .await
        .map_err(|e| format!("applying outbox rows up to id {last}: {e}"))?;
    sqlx::query(&format!("delete from {} where id <= ?", outbox.table))
        .bind(last)
        .execute(pool)
        .await
        .map_err(|e| format!("deleting relayed rows from {}: {e}", outbox.table))?;
    c.relayed.fetch_add(rows.len() as u64, Ordering::Relaxed);
    c.malformed.fetch_add(malformed, Ordering::Relaxed);
    metrics::counter!("strata_outbox_relayed_total").increment(rows.len() as u64);
    if malformed > 0 {
        metrics::counter!("strata_outbox_malformed_total").increment(malformed);
    }
    Ok(rows.len())
}
