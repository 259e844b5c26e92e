//! `strata cdc drop-slot`: removes the replication slot and the publication a CDC consumer created, so a cluster
//! that is gone does not keep PostgreSQL's WAL forever (an abandoned logical slot holds WAL until it is dropped).
//! It refuses while the slot is active: a running node is consuming it, and dropping it under that node would
//! make the node recreate it and clear every mapped namespace.

use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;

/// Drops `slot` and `publication` on the database at `url`; returns what it did, one line each. Fails, dropping
/// nothing, when the slot is still active after `grace`.
pub async fn drop_slot(
    url: &str,
    slot: &str,
    publication: &str,
    grace: Duration,
) -> anyhow::Result<Vec<String>> {
    let publication_sql = format!(
        "DROP PUBLICATION IF EXISTS {}",
        strata_sql::quote_ident("publication", publication)?
    );
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .context("connecting to PostgreSQL")?;
    let in_use = |pid: Option<i32>| {
        anyhow::anyhow!(
            "replication slot {slot:?} is active{}: a `strata serve` (or another consumer) is reading it. \
             Stop every node that uses it, then run this again; nothing was dropped",
            pid.map(|p| format!(" (PostgreSQL backend PID {p})"))
                .unwrap_or_default()
        )
    };
    // A consumer that has just stopped lets go of the slot a moment after its process exits (PostgreSQL's
    // walsender notices the closed connection): give it `grace` before calling the slot in use.
    let deadline = Instant::now() + grace;
    let row = loop {
        let row: Option<(bool, Option<i32>)> = sqlx::query_as(
            "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot)
        .fetch_optional(&pool)
        .await
        .context("looking up the replication slot")?;
        match row {
            Some((true, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            row => break row,
        }
    };
    let mut lines = Vec::new();
    match row {
        Some((true, pid)) => return Err(in_use(pid)),
        Some((false, _)) => {
            match sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(slot)
                .execute(&pool)
                .await
            {
                Ok(_) => lines.push(format!("dropped replication slot {slot}")),
                // It became active between the look-up and the drop.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55006") => {
                    return Err(in_use(None))
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("dropping replication slot {slot}"))
                }
            }
        }
        None => lines.push(format!("no replication slot {slot} (nothing to drop)")),
    }
    let existed: bool =
        sqlx::query_scalar("SELECT exists(SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(publication)
            .fetch_one(&pool)
            .await
            .context("looking up the publication")?;
    sqlx::query(&publication_sql)
        .execute(&pool)
        .await
        .with_context(|| format!("dropping publication {publication}"))?;
    lines.push(if existed {
        format!("dropped publication {publication}")
    } else {
        format!("no publication {publication} (nothing to drop)")
    });
    pool.close().await;
    Ok(lines)
}
