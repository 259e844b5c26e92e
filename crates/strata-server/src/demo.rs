//! The demo catalog behind the embedded default: six tables, one per classic caching choice, created and seeded
//! on first start (in SQLite by default, or in PostgreSQL with `strata serve --postgres URL`).
//!
//! | namespace | write mode | TTL | why |
//! |---|---|---|---|
//! | `product` | around | 60 s | listings change rarely; a minute of staleness is fine, writes need not touch the cache |
//! | `price` | through | 10 min | must never be stale after a write: the write sets every tier with its version |
//! | `inventory` | through | 10 min | same; other writers are caught by events (CDC with PostgreSQL) |
//! | `session` | through | 30 min | read after every write by the same user |
//! | `flag` | around | 5 min | feature flags: cheap to serve slightly late |
//! | `counter` | behind | 10 min | page views and likes: many small writes, batched to the database |

use sqlx::{PgPool, SqlitePool};

/// The embedded default's configuration (the data directory is set by the caller).
pub const EMBEDDED_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8700"

[l1]
budget = "128MiB"

[sources.catalog]
sqlite = "catalog.db"

[namespaces.product]
description = "Product listings: write-around, TTL 60 s"
source = "catalog"
write = "around"
ttl = "60s"
stale_for = "30s"
fail_safe_for = "10m"

[namespaces.price]
description = "Prices: write-through, invalidated by events"
source = "catalog"
write = "through"
ttl = "10m"

[namespaces.inventory]
description = "Stock levels: write-through, invalidated by events"
source = "catalog"
write = "through"
ttl = "10m"

[namespaces.session]
description = "Sessions: write-through, 30 min"
source = "catalog"
write = "through"
ttl = "30m"

[namespaces.flag]
description = "Feature flags: write-around, 5 min"
source = "catalog"
write = "around"
ttl = "5m"

[namespaces.counter]
description = "Counters: write-behind (journaled, batched)"
source = "catalog"
write = "behind"
ttl = "10m"
"#;

const CATEGORIES: &[&str] = &["tv", "audio", "camera", "phone", "laptop"];

/// Creates the demo tables in SQLite and seeds them if they are empty.
pub async fn seed_sqlite(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    for ddl in [
        "CREATE TABLE IF NOT EXISTS product (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, description TEXT, version INTEGER NOT NULL DEFAULT 1)",
        "CREATE TABLE IF NOT EXISTS price (id INTEGER PRIMARY KEY, cents INTEGER NOT NULL, currency TEXT NOT NULL DEFAULT 'EUR', version INTEGER NOT NULL DEFAULT 1)",
        "CREATE TABLE IF NOT EXISTS inventory (id INTEGER PRIMARY KEY, stock INTEGER NOT NULL, warehouse TEXT NOT NULL DEFAULT 'main', version INTEGER NOT NULL DEFAULT 1)",
        "CREATE TABLE IF NOT EXISTS session (id TEXT PRIMARY KEY, user_id INTEGER, data TEXT, version INTEGER NOT NULL DEFAULT 1)",
        "CREATE TABLE IF NOT EXISTS flag (id TEXT PRIMARY KEY, enabled INTEGER NOT NULL, rollout_pct INTEGER NOT NULL DEFAULT 100, version INTEGER NOT NULL DEFAULT 1)",
        "CREATE TABLE IF NOT EXISTS counter (id TEXT PRIMARY KEY, n INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 1)",
        "CREATE TABLE IF NOT EXISTS permission (id TEXT PRIMARY KEY, roles TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 1)",
    ] {
        sqlx::query(ddl).execute(pool).await?;
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM product")
        .fetch_one(pool)
        .await?;
    if n > 0 {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for id in 1..=1000i64 {
        let category = CATEGORIES[(id as usize) % CATEGORIES.len()];
        sqlx::query("INSERT INTO product (id, name, category, description) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(format!("Product {id}"))
            .bind(category)
            .bind(format!("A fine {category} (demo item {id})"))
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO price (id, cents) VALUES (?, ?)")
            .bind(id)
            .bind(999 + (id * 37) % 100_000)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO inventory (id, stock) VALUES (?, ?)")
            .bind(id)
            .bind((id * 13) % 250)
            .execute(&mut *tx)
            .await?;
    }
    for (flag, on) in [
        ("new-checkout", 1),
        ("dark-mode", 0),
        ("recommendations", 1),
    ] {
        sqlx::query("INSERT INTO flag (id, enabled) VALUES (?, ?)")
            .bind(flag)
            .bind(on)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Creates the demo tables in PostgreSQL (schema `public`) and seeds them if they are empty.
pub async fn seed_postgres(pool: &PgPool) -> Result<(), sqlx::Error> {
    for ddl in [
        "CREATE TABLE IF NOT EXISTS product (id bigint PRIMARY KEY, name text NOT NULL, category text NOT NULL, description text, version bigint NOT NULL DEFAULT 1)",
        "CREATE TABLE IF NOT EXISTS price (id bigint PRIMARY KEY, cents bigint NOT NULL, currency text NOT NULL DEFAULT 'EUR', version bigint NOT NULL DEFAULT 1)",
        "CREATE TABLE IF NOT EXISTS inventory (id bigint PRIMARY KEY, stock bigint NOT NULL, warehouse text NOT NULL DEFAULT 'main', version bigint NOT NULL DEFAULT 1)",
        "CREATE TABLE IF NOT EXISTS session (id text PRIMARY KEY, user_id bigint, data text, version bigint NOT NULL DEFAULT 1)",
        "CREATE TABLE IF NOT EXISTS flag (id text PRIMARY KEY, enabled bigint NOT NULL, rollout_pct bigint NOT NULL DEFAULT 100, version bigint NOT NULL DEFAULT 1)",
        "CREATE TABLE IF NOT EXISTS counter (id text PRIMARY KEY, n bigint NOT NULL, version bigint NOT NULL DEFAULT 1)",
        "CREATE TABLE IF NOT EXISTS permission (id text PRIMARY KEY, roles text NOT NULL, version bigint NOT NULL DEFAULT 1)",
    ] {
        sqlx::query(ddl).execute(pool).await?;
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM product")
        .fetch_one(pool)
        .await?;
    if n > 0 {
        return Ok(());
    }
    let cats = CATEGORIES
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(",");
    for sql in [
        format!(
            "INSERT INTO product (id, name, category, description) \
             SELECT i, 'Product ' || i, (ARRAY[{cats}])[1 + i % {n}], 'A fine ' || (ARRAY[{cats}])[1 + i % {n}] || ' (demo item ' || i || ')' \
             FROM generate_series(1, 1000) i ON CONFLICT DO NOTHING",
            n = CATEGORIES.len()
        ),
        "INSERT INTO price (id, cents) SELECT i, 999 + (i * 37) % 100000 FROM generate_series(1, 1000) i ON CONFLICT DO NOTHING".into(),
        "INSERT INTO inventory (id, stock) SELECT i, (i * 13) % 250 FROM generate_series(1, 1000) i ON CONFLICT DO NOTHING".into(),
        "INSERT INTO flag (id, enabled) VALUES ('new-checkout', 1), ('dark-mode', 0), ('recommendations', 1) ON CONFLICT DO NOTHING".into(),
    ] {
        sqlx::query(&sql).execute(pool).await?;
    }
    Ok(())
}
